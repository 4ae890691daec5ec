//! The four functions' handlers. Each takes only the capabilities it uses, so the same code
//! runs in Lambda, in the local runner and in unit tests with fakes.

mod advance_checkpoint;
mod copy_chunk;
mod create_job;
mod custom_resource;
mod finalize;
mod reconcile;
mod requests;
mod sqs;

pub use advance_checkpoint::advance_checkpoint;
pub use copy_chunk::copy_chunk;
pub use create_job::{check_create, create_job, Checked, CreateJobRequest};
pub use custom_resource::{answer_waiting, custom_resource, JobProperties, RESOURCE_TYPE};
pub use finalize::finalize;
pub use reconcile::{reconcile, Reconciled};
pub use requests::{
    cancel_job, complete_job, handle_request, parse_region, pause_job, resume_job, set_write_region, CancelRequest,
    CompleteRequest, JobRef, JobRequest, REQUEST_KINDS,
};
pub use sqs::{process_batch, process_batch_with};

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::{Config, ConfigError};
use crate::control::Control;
use crate::error::{HandlerError, RequestError};
use crate::events::{EventBridgeBus, EventBus, RequestRejected};
use crate::messages::{ChunkResult, CopyChunk, FinalizeQueue};
use crate::model::Job;
use crate::queue::{Outbox, SqsOutbox};
use crate::responder::{HttpResponder, Responder};
use crate::store::{ControlStore, DynamoStore};
use crate::streams::{DynamoStreams, Streams};
use crate::tables::{DynamoTables, Tables};

/// A function's dependencies: the capabilities and the configuration.
pub struct Deps<S, Q, T> {
    pub store: S,
    pub outbox: Q,
    pub tables: T,
    /// Answers CloudFormation custom resource requests.
    pub responder: Arc<dyn Responder>,
    /// Publishes job events.
    pub events: Arc<dyn EventBus>,
    /// Reads the source's stream (online jobs).
    pub streams: Arc<dyn Streams>,
    pub config: Config,
}

impl<S, Q, T> Deps<S, Q, T> {
    /// Job control over these dependencies.
    pub fn control(&self) -> Control<'_, S, Q> {
        Control { store: &self.store, outbox: &self.outbox, events: self.events.as_ref(), config: &self.config }
    }
}

/// The real adapters.
pub type AwsDeps = Deps<DynamoStore, SqsOutbox, DynamoTables>;

impl AwsDeps {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        let ddb = crate::config::dynamodb_client(sdk);
        Self {
            store: DynamoStore::new(ddb.clone(), config.resources.control_table.clone()),
            outbox: SqsOutbox::new(aws_sdk_sqs::Client::new(sdk), config.resources.clone()),
            tables: DynamoTables::new(ddb),
            responder: Arc::new(HttpResponder::default()),
            events: Arc::new(EventBridgeBus::new(
                aws_sdk_eventbridge::Client::new(sdk),
                "default",
                config.resources.event_source.clone(),
            )),
            streams: Arc::new(DynamoStreams::new(sdk)),
            config,
        }
    }

    /// Lambda's wiring: configuration from the environment, clients from the default chain.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let config = Config::from_env()?;
        let sdk = crate::config::sdk_from_env().await;
        Ok(Self::new(&sdk, config))
    }
}

/// create-job's entry point for a request the CLI built.
pub async fn request<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    request: JobRequest,
) -> Result<Job, RequestError> {
    let span = tracing::info_span!("create_job", job = %request.job_name(), segment = tracing::field::Empty, seq = tracing::field::Empty);
    handle_request(deps, request).instrument(span).await
}

/// create-job's Lambda entry point. It takes
/// - an SQS batch from the requests queue (EventBridge events the deployment's rule
///   forwarded; see [`requests_batch`]), answered with the batch's failures;
/// - a CloudFormation custom resource request (`Custom::TableCopyJob`), answered at its
///   `ResponseURL` (see [`custom_resource`]);
/// - a direct invoke payload or an EventBridge event, read by the one parser; the job is
///   returned as JSON.
pub async fn create_job_entry<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    payload: serde_json::Value,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    if payload.get("Records").is_some() {
        let event: SqsEvent = serde_json::from_value(payload)?;
        return Ok(serde_json::to_value(requests_batch(deps, event).await?)?);
    }
    if payload.get("RequestType").is_some() && payload.get("ResponseURL").is_some() {
        let request = serde_json::from_value(payload)?;
        let span = tracing::info_span!(
            "custom_resource",
            job = tracing::field::Empty,
            segment = tracing::field::Empty,
            seq = tracing::field::Empty
        );
        custom_resource(deps, request).instrument(span).await?;
        return Ok(serde_json::Value::Null);
    }
    Ok(create_job_invoke(deps, payload).await?)
}

/// A direct invoke payload or an EventBridge event, read by the one parser. Returns the job
/// as JSON.
pub async fn create_job_invoke<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    payload: serde_json::Value,
) -> Result<serde_json::Value, RequestError> {
    let job = request(deps, JobRequest::parse(payload)?).await.inspect_err(|e| {
        tracing::error!(error = %e, retryable = e.is_retryable(), "request refused");
    })?;
    Ok(serde_json::to_value(&job).expect("jobs serialize"))
}

/// create-job's requests queue: each body is an EventBridge event (or a direct invoke
/// payload). A refused request (bad input, a job in the wrong state) is logged and dropped:
/// sending it again gives the same answer. Every other failure (an AWS error of any kind)
/// leaves it on the queue, so it ends applied or, after maxReceiveCount, in the requests
/// dead-letter queue. A create delivered again that finds the job it made is applied.
pub async fn requests_batch<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    event: SqsEvent,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    Ok(process_batch_with(event, parse_queued_request, |r, attempt| queued_request(deps, r, attempt)).await)
}

fn parse_queued_request(body: &str) -> Result<JobRequest, String> {
    let value: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    JobRequest::parse(value).map_err(|e| e.to_string())
}

async fn queued_request<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    r: JobRequest,
    attempt: u32,
) -> Result<(), HandlerError> {
    let create = match &r {
        JobRequest::Create(c) => Some(c.clone()),
        _ => None,
    };
    let r_kind = (r.action().to_string(), r.job_name().to_string());
    match request(deps, r).await {
        Ok(job) => {
            tracing::info!(job = %job.name, status = %job.status_label(), "request from the queue carried out");
            Ok(())
        }
        Err(RequestError::JobExists(name)) if attempt > 1 => {
            // An earlier delivery may have created it and died before the message was deleted.
            let job = deps.store.get_job(&crate::model::JobName::parse(name.as_str()).expect("a job's name")).await?;
            match (create, job) {
                (Some(c), Some(job)) if c.describes(&job) => {
                    tracing::info!(job = %job.name, attempt, "a create delivered again found the job it made");
                    Ok(())
                }
                _ => refused(deps, &r_kind, RequestError::JobExists(name)).await,
            }
        }
        // Recorded; the reconciler starts it.
        Err(e @ RequestError::Incomplete(_)) => {
            tracing::warn!(error = %e, "request from the queue recorded; the job starts later");
            Ok(())
        }
        Err(e) if e.is_refusal() => refused(deps, &r_kind, e).await,
        Err(RequestError::Aws(e)) => Err(HandlerError::Aws(e)),
        Err(e) => unreachable!("every other error is a refusal: {e}"),
    }
}

/// A request from the queue refused for what it asks: reported as a `RequestRejected` event
/// (published at least once: if that fails, the request comes back and is refused again),
/// then dropped.
async fn refused<S, Q, T>(
    deps: &Deps<S, Q, T>,
    request: &(String, String),
    e: RequestError,
) -> Result<(), HandlerError> {
    tracing::error!(error = %e, "request from the queue refused; dropped");
    let (action, job) = request;
    deps.events.publish(vec![RequestRejected::event(action, Some(job), e.to_string())]).await?;
    Ok(())
}

/// copy-chunk's entry point: an SQS batch of [`CopyChunk`] messages, to be done by
/// `deadline` (Lambda's context deadline; the runner gives the same), or by the copy-chunk
/// visibility timeout if that comes first. Each slice ends at a page boundary
/// [`stop_margin`] before it.
pub async fn copy_chunk_batch<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    event: SqsEvent,
    deadline: Instant,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    // Never later than the message's visibility timeout: a slice ends, and its hold on its
    // segment runs out, before SQS could deliver it again.
    let deadline = deadline.min(Instant::now() + deps.config.tuning.copy_visibility);
    Ok(process_batch(event, |msg: CopyChunk, attempt| {
        count_retry("copy-chunk", &msg.job, attempt);
        let span = tracing::info_span!("copy_chunk", job = %msg.job, segment = msg.segment, seq = msg.seq);
        copy_chunk(&deps.tables, deps.streams.as_ref(), &deps.store, &deps.outbox, &deps.config.tuning, msg, deadline)
            .instrument(span)
    })
    .await)
}

/// A message SQS delivers again (its first receiver failed or died): the `Retries` metric.
fn count_retry(function: &'static str, job: &crate::model::JobName, attempt: u32) {
    if attempt > 1 {
        crate::metrics::Metrics::new(function, job.as_str()).count("Retries", 1).emit();
    }
}

/// How long before its deadline a slice stops starting pages: a quarter of its time, at most
/// 30 s (the last page's writes are cut there too, and its result must still be sent).
pub fn stop_margin(budget: Duration) -> Duration {
    (budget / 4).min(Duration::from_secs(30))
}

/// A Lambda context deadline (milliseconds since the epoch) as an instant.
pub fn deadline_from_epoch_ms(deadline_ms: u64) -> Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

/// advance-checkpoint's entry point: an SQS batch of [`ChunkResult`] messages.
pub async fn advance_checkpoint_batch<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    event: SqsEvent,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    Ok(process_batch(event, |msg: ChunkResult, attempt| {
        count_retry("advance-checkpoint", &msg.job, attempt);
        let span = tracing::info_span!("advance_checkpoint", job = %msg.job, segment = msg.segment, seq = msg.seq);
        advance_checkpoint(deps, msg).instrument(span)
    })
    .await)
}

/// finalize's entry point: an SQS batch of [`FinalizeQueue`] messages: finalize a job, or
/// the reconciler's periodic pass.
pub async fn finalize_batch<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    event: SqsEvent,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    Ok(process_batch(event, |msg: FinalizeQueue, _attempt| async move {
        match msg {
            FinalizeQueue::Finalize(msg) => {
                let span = tracing::info_span!("finalize", job = %msg.job, segment = tracing::field::Empty, seq = tracing::field::Empty);
                finalize(deps, msg).instrument(span).await
            }
            FinalizeQueue::Reconcile(_) => {
                let span = tracing::info_span!("reconcile", job = tracing::field::Empty, segment = tracing::field::Empty, seq = tracing::field::Empty);
                reconcile(deps).instrument(span).await.map(|_| ()).map_err(HandlerError::from)
            }
        }
    })
    .await)
}

#[cfg(test)]
mod tests;
