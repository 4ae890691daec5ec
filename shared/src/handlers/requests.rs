//! create-job's requests: create, pause, resume, cancel, complete. One parser reads them from every
//! source (the CLI builds them directly; a direct Lambda invoke sends the JSON body; an
//! EventBridge event carries it as its `detail`), so every source gets the same validation
//! and the same errors.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::create_job::{create_job, CreateJobRequest};
use super::Deps;
use crate::error::{AwsError, ErrorKind, RequestError};
use crate::lineage;
use crate::model::{InvalidInput, Job, JobName, JobStatus, Mode, Progress};
use crate::queue::Outbox;
use crate::store::{conflict_pause, ControlStore, Milestone};
use crate::tables::Tables;

/// A request naming an existing job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobRef {
    pub job_name: String,
}

/// A cancel request. `force` ends a running job at once, without waiting for its slices in
/// flight (for slices stuck in a dead-letter queue): they write nothing when they come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CancelRequest {
    pub job_name: String,
    #[serde(default)]
    pub force: bool,
}

/// A complete request (online jobs). `force` completes a job still copying its snapshot,
/// for a user who has stopped every write to the source already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompleteRequest {
    pub job_name: String,
    #[serde(default)]
    pub force: bool,
}

/// Everything create-job's entry point accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRequest {
    Create(CreateJobRequest),
    Pause(JobRef),
    Resume(JobRef),
    Cancel(CancelRequest),
    Complete(CompleteRequest),
}

/// EventBridge `detail-type` of each request, and the `action` of a direct invoke payload.
pub const REQUEST_KINDS: [(&str, &str); 5] = [
    ("tablecopy.CreateJob", "create"),
    ("tablecopy.PauseJob", "pause"),
    ("tablecopy.ResumeJob", "resume"),
    ("tablecopy.CancelJob", "cancel"),
    ("tablecopy.CompleteJob", "complete"),
];

impl JobRequest {
    /// Read a request from a direct invoke payload (`{"action": "pause", "jobName": ...}`;
    /// without `action` it is a create) or from an EventBridge event whose `detail-type` is
    /// one of [`REQUEST_KINDS`] and whose `detail` is the same body.
    pub fn parse(payload: Value) -> Result<Self, InvalidInput> {
        if payload.get("detail-type").is_some() {
            let event: EventBridgeEvent<Value> =
                serde_json::from_value(payload).map_err(|e| InvalidInput(format!("invalid EventBridge event: {e}")))?;
            let action =
                REQUEST_KINDS.iter().find(|(t, _)| *t == event.detail_type).map(|(_, a)| *a).ok_or_else(|| {
                    InvalidInput(format!(
                        "unknown detail-type {:?}: use one of {}",
                        event.detail_type,
                        REQUEST_KINDS.map(|(t, _)| t).join(", ")
                    ))
                })?;
            return Self::from_body(action, event.detail);
        }
        let mut body = payload;
        let action = match body.as_object_mut().and_then(|o| o.remove("action")) {
            None => "create".to_string(),
            Some(Value::String(a)) => a,
            Some(other) => return Err(InvalidInput(format!("\"action\" must be a string, found {other}"))),
        };
        Self::from_body(&action, body)
    }

    fn from_body(action: &str, body: Value) -> Result<Self, InvalidInput> {
        let invalid = |e: serde_json::Error| InvalidInput(format!("invalid {action} request: {e}"));
        Ok(match action {
            "create" => JobRequest::Create(serde_json::from_value(body).map_err(invalid)?),
            "pause" => JobRequest::Pause(serde_json::from_value(body).map_err(invalid)?),
            "resume" => JobRequest::Resume(serde_json::from_value(body).map_err(invalid)?),
            "cancel" => JobRequest::Cancel(serde_json::from_value(body).map_err(invalid)?),
            "complete" => JobRequest::Complete(serde_json::from_value(body).map_err(invalid)?),
            other => {
                return Err(InvalidInput(format!(
                    "unknown action {other:?}: use one of {}",
                    REQUEST_KINDS.map(|(_, a)| a).join(", ")
                )))
            }
        })
    }

    /// What it asks: create, pause, resume or cancel.
    pub fn action(&self) -> &'static str {
        match self {
            JobRequest::Create(_) => "create",
            JobRequest::Pause(_) => "pause",
            JobRequest::Resume(_) => "resume",
            JobRequest::Cancel(_) => "cancel",
            JobRequest::Complete(_) => "complete",
        }
    }

    pub fn job_name(&self) -> &str {
        match self {
            JobRequest::Create(r) => &r.job_name,
            JobRequest::Pause(r) | JobRequest::Resume(r) => &r.job_name,
            JobRequest::Cancel(r) => &r.job_name,
            JobRequest::Complete(r) => &r.job_name,
        }
    }
}

/// Carry out a request; the job as it is afterwards.
pub async fn handle_request<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    request: JobRequest,
) -> Result<Job, RequestError> {
    match request {
        JobRequest::Create(r) => create_job(deps, r).await,
        JobRequest::Pause(r) => pause_job(deps, &JobName::parse(r.job_name)?).await,
        JobRequest::Resume(r) => resume_job(deps, &JobName::parse(r.job_name)?).await,
        JobRequest::Cancel(r) => cancel_job(deps, &JobName::parse(r.job_name)?, r.force).await,
        JobRequest::Complete(r) => complete_job(deps, &JobName::parse(r.job_name)?, r.force).await,
    }
}

/// How often a request re-reads the job when it changed between the read and the write.
const REQUEST_ATTEMPTS: u32 = 8;

async fn existing<S: ControlStore, Q, T>(deps: &Deps<S, Q, T>, name: &JobName) -> Result<Job, RequestError> {
    deps.store.get_job(name).await?.ok_or_else(|| RequestError::JobNotFound(name.to_string()))
}

/// Fail the jobs of an old write region first, so a request sees the truth.
async fn check_region<S: ControlStore, Q: Outbox, T>(deps: &Deps<S, Q, T>) -> Result<(), RequestError> {
    let control = deps.control();
    control.enforce_region(&control.current_region().await?).await?;
    Ok(())
}

/// The refusal of `action` on `job` as it is, naming its state.
fn refuse(action: &str, job: &Job) -> RequestError {
    let state = match (job.status, job.pending) {
        (s, _) if s.is_final() && action == "cancel" && s == JobStatus::Cancelled => {
            "it is already Cancelled, a final state".to_string()
        }
        (s, _) if s.is_final() => format!("it is {s}, a final state that never changes"),
        (JobStatus::Running, Some(JobStatus::Paused)) => {
            "it is Running and already pausing: it shows Paused once its in-flight slices are checkpointed".into()
        }
        (JobStatus::Running, Some(JobStatus::Cancelled)) => {
            "it is Running and already being cancelled: it shows Cancelled once its in-flight slices are checkpointed (if they are stuck in the copy-chunk dead-letter queue, `tablecopy cancel --force` ends it now)"
                .into()
        }
        (s, _) => format!("it is {s}"),
    };
    let rule = match action {
        "pause" => "Only a Running job can be paused",
        "resume" => "Only a Paused job can be resumed",
        "complete" => "Only a Running or Paused online job can be completed",
        _ => "Only a Queued, Running or Paused job can be cancelled",
    };
    RequestError::NotAllowed(format!("cannot {action} job {:?}: {state}. {rule}", job.name.as_str()))
}

/// Run `action` on the job as it is now: `step` gets the freshly read job and returns the job
/// afterwards, or `None` when a conditional write found it changed meanwhile (it is read again).
/// A request refused for the job's state still runs the scheduler: it may be the repeated
/// delivery of a request whose first run made the job final and died before scheduling.
async fn on_current_job<S: ControlStore, Q: Outbox, T, F, Fut>(
    deps: &Deps<S, Q, T>,
    name: &JobName,
    action: &str,
    step: F,
) -> Result<Job, RequestError>
where
    F: Fn(Job) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Job>, RequestError>>,
{
    check_region(deps).await?;
    for attempt in 1..=REQUEST_ATTEMPTS {
        let job = existing(deps, name).await?;
        if job.owes_finalize() {
            // A repeated request after a crash: the final move's finalize message may be lost.
            deps.control().send_finalize(name).await?;
        }
        match step(job).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => conflict_pause(attempt).await,
            Err(e @ RequestError::NotAllowed(_)) => {
                deps.control().schedule().await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    // Not a refusal: from the requests queue it comes back and tries again.
    Err(RequestError::Aws(AwsError::new(
        ErrorKind::Conflict,
        format!("cannot {action} job {:?}", name.as_str()),
        "it kept changing state meanwhile; try again",
    )))
}

/// Pause a running job: no new slice is issued; it shows `Paused` once the slices in flight
/// are checkpointed. It keeps its running slot.
pub async fn pause_job<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    name: &JobName,
) -> Result<Job, RequestError> {
    on_current_job(deps, name, "pause", |job| async move {
        if (job.status, job.pending) != (JobStatus::Running, None) {
            return Err(refuse("pause", &job));
        }
        if !deps.store.request_stop(name, JobStatus::Paused, None, job.epoch, Utc::now()).await? {
            return Ok(None);
        }
        tracing::info!(job = %name, "pause requested");
        let control = deps.control();
        control.stop_cursors(name, job.epoch + 1).await?;
        control.settle(name).await?;
        Ok(Some(existing(deps, name).await?))
    })
    .await
}

/// Resume a paused job: every unfinished segment continues from its stored cursor. A job still
/// pausing has its pause withdrawn (segments that already parked go on). A running job whose
/// launch was interrupted gets its idle segments launched; a queued job starts if a running
/// slot is free.
pub async fn resume_job<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    name: &JobName,
) -> Result<Job, RequestError> {
    on_current_job(deps, name, "resume", |job| async move {
        let control = deps.control();
        let moved = match (job.status, job.pending) {
            (JobStatus::Paused, _) => control.move_job(&job, JobStatus::Running, None, None, None).await?,
            (JobStatus::Running, Some(JobStatus::Paused)) => {
                deps.store.withdraw_stop(name, JobStatus::Paused, job.epoch, Utc::now()).await?
            }
            (JobStatus::Running, None) => {
                let cursors = deps.store.cursors(name).await?;
                let owed = cursors
                    .iter()
                    .filter(|c| !c.done && ((c.parked && lineage::ready(c, &cursors)) || c.epoch < job.epoch))
                    .count();
                if owed == 0 {
                    return Err(refuse("resume", &job));
                }
                tracing::warn!(job = %name, owed, "running job with segments a launch still owes: launching them");
                true
            }
            (JobStatus::Queued, _) => {
                control.schedule().await?;
                let job = existing(deps, name).await?;
                if job.status != JobStatus::Queued {
                    return Ok(Some(job));
                }
                let place = deps.store.scheduler().await?.position(name).unwrap_or(0);
                return Err(RequestError::NotAllowed(format!(
                    "cannot resume job {:?}: it is Queued (place {place} in the queue) and starts by itself when a running slot frees. Only a Paused job can be resumed",
                    name.as_str()
                )));
            }
            _ => return Err(refuse("resume", &job)),
        };
        if !moved {
            return Ok(None);
        }
        tracing::info!(job = %name, "job resumed");
        control.launch(&existing(deps, name).await?).await?;
        Ok(Some(existing(deps, name).await?))
    })
    .await
}

/// Cancel a job for good, keeping what was copied. A queued or paused job is cancelled at
/// once; a running one once its in-flight slices are checkpointed, or at once with `force`
/// (its slices in flight, e.g. stuck in a dead-letter queue, write nothing when they come
/// back). Its slot goes to the next queued job.
pub async fn cancel_job<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    name: &JobName,
    force: bool,
) -> Result<Job, RequestError> {
    on_current_job(deps, name, "cancel", |job| async move {
        let control = deps.control();
        match (job.status, job.pending) {
            (JobStatus::Queued | JobStatus::Paused, _) => {
                if !control.move_job(&job, JobStatus::Cancelled, None, None, None).await? {
                    return Ok(None);
                }
                control.schedule().await?;
            }
            (JobStatus::Running, _) if force => {
                let progress = Progress::of(&deps.store.cursors(name).await?);
                if !control.move_job(&job, JobStatus::Cancelled, None, None, Some(progress)).await? {
                    return Ok(None);
                }
                tracing::warn!(job = %name, "cancelled without waiting for its slices in flight");
                control.schedule().await?;
            }
            (JobStatus::Running, pending @ (None | Some(JobStatus::Paused))) => {
                if !deps.store.request_stop(name, JobStatus::Cancelled, pending, job.epoch, Utc::now()).await? {
                    return Ok(None);
                }
                tracing::info!(job = %name, "cancel requested");
                control.stop_cursors(name, job.epoch + 1).await?;
                control.settle(name).await?;
            }
            _ => return Err(refuse("cancel", &job)),
        }
        Ok(Some(existing(deps, name).await?))
    })
    .await
}

/// Complete an online job: the application has stopped writing to the source. Its shards
/// drain (a read at each one's tip, [`crate::config::Tuning::drain_settle`] after this or
/// later, that returns nothing), then the target is verified and repaired against the quiet
/// source, and the job completes. Refused for an offline job, a final or queued one, and one
/// still copying its snapshot unless `force`. Asking again while it completes changes nothing.
pub async fn complete_job<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    name: &JobName,
    force: bool,
) -> Result<Job, RequestError> {
    on_current_job(deps, name, "complete", |job| async move {
        if job.spec.mode == Mode::Offline {
            return Err(RequestError::NotAllowed(format!(
                "cannot complete job {:?}: it is an offline job, which completes by itself once copied and verified. `complete` ends online jobs (create --mode online)",
                name.as_str()
            )));
        }
        if !matches!(job.status, JobStatus::Running | JobStatus::Paused) {
            return Err(refuse("complete", &job));
        }
        if job.complete_requested_at.is_some() {
            return Ok(Some(job));
        }
        if job.replay_from.is_none() && !force {
            return Err(RequestError::NotAllowed(format!(
                "cannot complete job {:?}: it is still copying its snapshot of {} ({} items so far); it catches up with the stream after that. Wait for `tablecopy watch --job-name {} --until-caught-up`, or, if every write to {} has stopped already, use complete --force",
                name.as_str(),
                job.spec.source,
                job.items_copied,
                name,
                job.spec.source
            )));
        }
        if !deps.store.mark(name, Milestone::Complete, Utc::now()).await? {
            return Ok(None);
        }
        tracing::info!(job = %name, force, "complete requested: the shards drain, then the target is verified");
        // Shards read their tip again within a second; if every one had ended already,
        // finalize goes on to the verification.
        deps.control().send_finalize(name).await?;
        Ok(Some(existing(deps, name).await?))
    })
    .await
}

/// Check that `region` looks like an AWS region name (`us-west-2`, `ap-southeast-1`, ...).
pub fn parse_region(region: &str) -> Result<String, InvalidInput> {
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].len() <= 2
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if !ok {
        return Err(InvalidInput(format!(
            "{region:?} is not an AWS region name; use a name like us-west-2 or eu-central-1"
        )));
    }
    Ok(region.to_string())
}

/// Set the account's write region. Every incomplete job created in another region fails at
/// once (`WriteRegionChanged`); returns how many did.
pub async fn set_write_region<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    region: &str,
) -> Result<usize, RequestError> {
    let region = parse_region(region)?;
    deps.store.set_write_region(&region, Utc::now()).await?;
    tracing::info!(%region, "write region set");
    let control = deps.control();
    let failed = control.enforce_region(&region).await?;
    control.schedule().await?;
    Ok(failed)
}
