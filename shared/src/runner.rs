//! The local runner: plays Lambda's SQS event source mapping against real queues (LocalStack's
//! or AWS's) and invokes the same handlers the functions run. Per queue it long-polls with the
//! function's batch size, leaves failed records on the queue (they come back after the
//! visibility timeout and reach the DLQ through the queue's own redrive policy after
//! maxReceiveCount), and deletes the others. A copy-chunk batch gets a deadline as Lambda
//! gives one (the function's timeout, and never past the message's visibility timeout). It
//! also runs the reconciler on the template's period, as its EventBridge schedule does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handlers::{advance_checkpoint_batch, copy_chunk_batch, finalize_batch, reconcile, requests_batch, Deps};
use crate::queue::{Outbox, QueueKind};
use crate::store::ControlStore;
use crate::tables::Tables;

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Concurrent copy-chunk invocations (Lambda's MaximumConcurrency).
    pub concurrency: usize,
    /// Records per copy-chunk invocation.
    pub copy_batch_size: i32,
    /// Records per advance-checkpoint and finalize invocation.
    pub checkpoint_batch_size: i32,
    /// Long-poll wait (Lambda uses 20 s; shorter makes stopping quicker).
    pub wait_seconds: i32,
    /// Overrides the queue's visibility timeout when set.
    pub visibility_timeout: Option<i32>,
    /// copy-chunk's timeout (the template's 600 s): a slice's deadline.
    pub copy_timeout: Duration,
    /// The reconciler's period (the template's `ReconcileMinutes`); `None`: never.
    pub reconcile_every: Option<Duration>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            copy_batch_size: 1,
            checkpoint_batch_size: 10,
            wait_seconds: 1,
            visibility_timeout: None,
            copy_timeout: Duration::from_secs(600),
            reconcile_every: Some(Duration::from_secs(60)),
        }
    }
}

/// Poll every queue until `shutdown` is cancelled; a batch in progress is finished first.
pub async fn run<S, Q, T>(
    deps: Arc<Deps<S, Q, T>>,
    sqs: aws_sdk_sqs::Client,
    opts: RunnerOptions,
    shutdown: CancellationToken,
) where
    S: ControlStore + 'static,
    Q: Outbox + 'static,
    T: Tables + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(every) = opts.reconcile_every {
        tasks.spawn(reconciler(deps.clone(), every, shutdown.clone()));
    }
    let pollers = [
        (QueueKind::CopyChunk, opts.concurrency.max(1), opts.copy_batch_size),
        (QueueKind::Checkpoint, opts.concurrency.div_ceil(4).max(1), opts.checkpoint_batch_size),
        (QueueKind::Finalize, 1, opts.checkpoint_batch_size),
        (QueueKind::Requests, 1, opts.checkpoint_batch_size),
    ];
    for (kind, count, batch) in pollers {
        for _ in 0..count {
            tasks.spawn(poll(deps.clone(), sqs.clone(), kind, batch, opts.clone(), shutdown.clone()));
        }
    }
    tracing::info!(concurrency = opts.concurrency, "local runner polling the queues");
    while tasks.join_next().await.is_some() {}
}

/// The reconciler every `every`, as the template's schedule runs it.
async fn reconciler<S: ControlStore, Q: Outbox, T: Tables>(
    deps: Arc<Deps<S, Q, T>>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match reconcile(&deps).await {
            Ok(found) => tracing::debug!(jobs = found.jobs, stalled = found.stalled, "reconciled"),
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed; the next one tries again"),
        }
    }
}

async fn poll<S, Q, T>(
    deps: Arc<Deps<S, Q, T>>,
    sqs: aws_sdk_sqs::Client,
    kind: QueueKind,
    batch_size: i32,
    opts: RunnerOptions,
    shutdown: CancellationToken,
) where
    S: ControlStore,
    Q: Outbox,
    T: Tables,
{
    let url = kind.url(&deps.config.resources).to_string();
    let attributes = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::VisibilityTimeout)
        .send()
        .await
        .ok()
        .and_then(|o| o.attributes)
        .unwrap_or_default();
    let arn = attributes.get(&QueueAttributeName::QueueArn).cloned();
    let visibility = opts
        .visibility_timeout
        .or_else(|| attributes.get(&QueueAttributeName::VisibilityTimeout)?.parse().ok())
        .map(|s: i32| Duration::from_secs(s.max(1) as u64));
    let budget = visibility.map_or(opts.copy_timeout, |v| v.min(opts.copy_timeout));
    while !shutdown.is_cancelled() {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sqs.receive_message()
                .queue_url(&url)
                .max_number_of_messages(batch_size.clamp(1, 10))
                .wait_time_seconds(opts.wait_seconds)
                .set_visibility_timeout(opts.visibility_timeout)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send() => r,
        };
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(queue = kind.name(), error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receive failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let received = Instant::now();
        let mut event = SqsEvent::default();
        event.records = messages.iter().map(|m| to_record(m, arn.as_deref(), &deps.config.region)).collect();
        let response = match kind {
            QueueKind::CopyChunk => copy_chunk_batch(&deps, event, received + budget).await,
            QueueKind::Checkpoint => advance_checkpoint_batch(&deps, event).await,
            QueueKind::Finalize => finalize_batch(&deps, event).await,
            QueueKind::Requests => requests_batch(&deps, event).await,
        };
        let failed: HashSet<String> = match response {
            Ok(r) => r.batch_item_failures.into_iter().map(|f| f.item_identifier).collect(),
            // A failed invocation returns the whole batch to the queue.
            Err(_) => messages.iter().filter_map(|m| m.message_id.clone()).collect(),
        };
        let done: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .filter(|m| !m.message_id.as_ref().is_some_and(|id| failed.contains(id)))
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle.clone()?)
                    .build()
                    .ok()
            })
            .collect();
        if !done.is_empty() {
            if let Err(e) = sqs.delete_message_batch().queue_url(&url).set_entries(Some(done)).send().await {
                tracing::warn!(queue = kind.name(), error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "delete failed; the messages will be delivered again");
            }
        }
    }
}

/// An SQS API message as Lambda hands it to a function.
fn to_record(m: &aws_sdk_sqs::types::Message, arn: Option<&str>, region: &str) -> SqsMessage {
    let mut r = SqsMessage::default();
    r.message_id = m.message_id.clone();
    r.receipt_handle = m.receipt_handle.clone();
    r.body = m.body.clone();
    r.md5_of_body = m.md5_of_body.clone();
    r.attributes = m.attributes.iter().flatten().map(|(k, v)| (k.as_str().to_string(), v.clone())).collect();
    r.event_source = Some("aws:sqs".into());
    r.event_source_arn = arn.map(str::to_string);
    r.aws_region = Some(region.to_string());
    r
}

/// This process's peak resident set size (VmHWM), in KiB, where /proc tells it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
