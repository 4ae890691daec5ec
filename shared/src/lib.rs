//! tablecopy: managed, resumable copy jobs between DynamoDB tables.
//!
//! The library behind the four functions, the CLI and the local runner: the job model and
//! state machine ([`model`]), the versioned messages ([`messages`]), the control-table store
//! ([`store`]), the queues ([`queue`]), the user's tables ([`tables`]), the copy engine
//! ([`engine`]), CloudFormation's answers ([`responder`]), the handlers ([`handlers`]) and the
//! local runner ([`runner`]).

pub mod config;
pub mod engine;
pub mod error;
pub mod handlers;
pub mod logging;
pub mod messages;
pub mod model;
pub mod queue;
pub mod responder;
pub mod runner;
pub mod stack;
pub mod store;
pub mod tables;

#[cfg(test)]
mod fakes;
