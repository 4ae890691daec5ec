//! The queues that chain the functions: one capability, send messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::config::Resources;
use crate::error::{classify, AwsError, ErrorKind};

/// Which queue a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    CopyChunk,
    Checkpoint,
    Finalize,
    /// Job requests (EventBridge events), consumed by create-job; no function sends to it.
    Requests,
}

impl QueueKind {
    pub const ALL: [QueueKind; 4] =
        [QueueKind::CopyChunk, QueueKind::Checkpoint, QueueKind::Finalize, QueueKind::Requests];

    pub fn url(self, r: &Resources) -> &str {
        match self {
            QueueKind::CopyChunk => &r.copy_chunk_queue_url,
            QueueKind::Checkpoint => &r.checkpoint_queue_url,
            QueueKind::Finalize => &r.finalize_queue_url,
            QueueKind::Requests => &r.requests_queue_url,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QueueKind::CopyChunk => "copy-chunk",
            QueueKind::Checkpoint => "advance-checkpoint",
            QueueKind::Finalize => "finalize",
            QueueKind::Requests => "requests",
        }
    }
}

/// One capability: put message bodies on a queue.
#[async_trait]
pub trait Outbox: Send + Sync {
    async fn send(&self, to: QueueKind, bodies: Vec<String>) -> Result<(), AwsError>;
    /// Put one message body on a queue, to be delivered no sooner than `delay_seconds` from
    /// now (at most 900).
    async fn send_delayed(&self, to: QueueKind, body: String, delay_seconds: u32) -> Result<(), AwsError>;
}

/// The SQS adapter. Counts the messages it sends (for the benchmark).
#[derive(Clone)]
pub struct SqsOutbox {
    client: aws_sdk_sqs::Client,
    resources: Resources,
    sent: Arc<AtomicU64>,
}

impl SqsOutbox {
    pub fn new(client: aws_sdk_sqs::Client, resources: Resources) -> Self {
        Self { client, resources, sent: Arc::default() }
    }

    /// Messages sent so far by this adapter (and its clones).
    pub fn messages_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Outbox for SqsOutbox {
    async fn send(&self, to: QueueKind, bodies: Vec<String>) -> Result<(), AwsError> {
        let url = to.url(&self.resources);
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, body)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .build()
                        .expect("id and body are set")
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(format!("SendMessageBatch to the {} queue", to.name()), e))?;
            if let Some(failed) = out.failed.first() {
                // A sender fault (a bad message) never succeeds; the others are the service's.
                let kind = match ErrorKind::of_code(&failed.code) {
                    ErrorKind::Other if failed.sender_fault => ErrorKind::Validation,
                    ErrorKind::Other => ErrorKind::Transient,
                    kind => kind,
                };
                let detail = format!("{}: {}", failed.code, failed.message.as_deref().unwrap_or(""));
                return Err(AwsError::new(kind, format!("SendMessageBatch to the {} queue", to.name()), detail)
                    .with_code(failed.code.clone()));
            }
            self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn send_delayed(&self, to: QueueKind, body: String, delay_seconds: u32) -> Result<(), AwsError> {
        self.client
            .send_message()
            .queue_url(to.url(&self.resources))
            .message_body(body)
            .delay_seconds(delay_seconds.min(900) as i32)
            .send()
            .await
            .map_err(|e| classify(format!("SendMessage to the {} queue", to.name()), e))?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Messages waiting or in flight on a queue, as SQS counts them (approximately).
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<u64, AwsError> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|e| classify(format!("reading the depth of {url}"), e))?;
    let attrs = out.attributes.unwrap_or_default();
    let get = |a: &A| attrs.get(a).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(get(&A::ApproximateNumberOfMessages) + get(&A::ApproximateNumberOfMessagesNotVisible))
}
