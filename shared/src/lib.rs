//! tablecopy: managed, resumable copy jobs between DynamoDB tables.
//!
//! The library behind the four functions, the CLI and the local runner: the job model and
//! state machine ([`model`]), the rules that decide a segment's fate ([`rules`]), the
//! scheduler ([`scheduler`]), the versioned messages ([`messages`]), the control-table store
//! ([`store`]), the queues ([`queue`]), the user's tables ([`tables`]), the copy engine
//! ([`engine`]), online mode's stream ([`streams`]), shards ([`lineage`]) and replay ([`replay`]), job control ([`control`]), CloudFormation's answers ([`responder`]), the
//! handlers ([`handlers`]) and the local runner ([`runner`]).

pub mod checksum;
pub mod config;
pub mod control;
pub mod engine;
pub mod error;
pub mod events;
pub mod handlers;
pub mod lineage;
pub mod logging;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod pacing;
pub mod plan;
pub mod preflight;
pub mod queue;
pub mod replay;
pub mod responder;
pub mod rules;
pub mod runner;
pub mod scheduler;
pub mod stack;
pub mod store;
pub mod streams;
pub mod tables;
pub mod verify;

/// In-memory fakes of the queues, the user's tables and CloudFormation's responses (the
/// control table's is [`store::memory`]), for handler tests here and in `tests/`.
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
