//! SQS batches the way Lambda's event source mapping delivers them: each record is parsed and
//! handled on its own, and only the failed ones are reported back.

use std::future::Future;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::join_all;
use serde::de::DeserializeOwned;

use crate::error::HandlerError;
use crate::messages::decode;

/// Handle every record of `event` concurrently; the handler gets the message and how many
/// times it has been received. A record whose body cannot be read, or whose
/// handler failed with a retryable error, is reported as a batch item failure: it returns to
/// its queue and, after the queue's maxReceiveCount, to its DLQ. A permanent handler error is
/// logged and the record acknowledged, so it does not loop.
pub async fn process_batch<M, F, Fut>(event: SqsEvent, handler: F) -> SqsBatchResponse
where
    M: DeserializeOwned,
    F: Fn(M, u32) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    process_batch_with(event, |body| decode::<M>(body).map_err(|e| e.to_string()), handler).await
}

/// [`process_batch`] with the body read by `parse` instead of as a versioned message.
pub async fn process_batch_with<M, P, F, Fut>(event: SqsEvent, parse: P, handler: F) -> SqsBatchResponse
where
    P: Fn(&str) -> Result<M, String>,
    F: Fn(M, u32) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let outcomes = join_all(event.records.into_iter().map(|record| handle_record(record, &parse, &handler))).await;
    let mut response = SqsBatchResponse::default();
    for failed in outcomes.into_iter().flatten() {
        response.add_failure(failed);
    }
    response
}

/// `Some(message id)` when the record must be retried.
async fn handle_record<M, P, F, Fut>(record: SqsMessage, parse: &P, handler: &F) -> Option<String>
where
    P: Fn(&str) -> Result<M, String>,
    F: Fn(M, u32) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let id = record.message_id.clone().unwrap_or_default();
    let msg = match parse(record.body.as_deref().unwrap_or("")) {
        Ok(msg) => msg,
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "unreadable message; it will reach the dead-letter queue");
            return Some(id);
        }
    };
    // Lambda and the local runner both pass SQS's ApproximateReceiveCount: 1 on a first delivery.
    let attempt = record.attributes.get("ApproximateReceiveCount").and_then(|c| c.parse().ok()).unwrap_or(1);
    match handler(msg, attempt).await {
        Ok(()) => None,
        Err(e) if e.is_retryable() => {
            tracing::warn!(message_id = %id, error = %e, "retryable failure; the message returns to its queue");
            Some(id)
        }
        Err(e) => {
            tracing::error!(message_id = %id, error = %e, "permanent failure; message dropped");
            None
        }
    }
}
