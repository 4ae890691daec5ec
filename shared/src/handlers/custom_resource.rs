//! Copy jobs as infrastructure: create-job's handling of CloudFormation custom resource
//! requests (`Custom::TableCopyJob`).
//!
//! - Create starts a job named `JobName`; the job's name is the resource's physical ID.
//! - Update starts a new job when the properties describe a different copy than the job the
//!   resource has (a new `JobName`, or the same name with another source, target,
//!   parallelism or item policy: then the job is `<JobName>-<8 characters of the request>`,
//!   since job names are never reused). CloudFormation then deletes the old physical ID,
//!   which cancels the old job if it is still incomplete.
//! - Delete cancels the resource's job if it is incomplete, and otherwise succeeds.
//! - With `WaitForCompletion: true`, Create and Update answer only when the job is final:
//!   every final move of such a job sends a finalize message, and finalize answers
//!   (`SUCCESS` for `Completed`, `FAILED` with the reason otherwise).
//!
//! Every request gets exactly one answer, errors included (`FAILED` with the message), so a
//! stack never waits for CloudFormation's timeout. A repeated delivery of a request finds
//! the job it made and answers the same way.

use std::collections::HashMap;

use aws_lambda_events::event::cloudformation::{
    CloudFormationCustomResourceRequest as CfnRequest, CloudFormationCustomResourceResponse as CfnResponse,
    CloudFormationCustomResourceResponseStatus as CfnStatus,
};
use serde_json::Value;

use super::create_job::{create_job_from, CreateJobRequest};
use super::requests::cancel_job;
use super::Deps;
use crate::error::{AwsError, RequestError};
use crate::model::{InvalidInput, Job, JobName, JobStatus, Mode, OnItemError, StackOrigin, VerifyMode};
use crate::queue::Outbox;
use crate::store::ControlStore;
use crate::tables::Tables;

/// The resource type this handler answers.
pub const RESOURCE_TYPE: &str = "Custom::TableCopyJob";

/// The properties a `Custom::TableCopyJob` takes (CloudFormation passes numbers and booleans
/// as strings; both forms are read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProperties {
    pub job_name: String,
    pub source_table: String,
    pub target_table: String,
    pub parallelism: Option<u32>,
    pub on_item_error: OnItemError,
    pub max_write_rate: Option<u32>,
    pub max_read_rate: Option<u32>,
    pub verify: VerifyMode,
    pub repair: bool,
    pub skip_expired: bool,
    pub mode: Mode,
    pub wait_for_completion: bool,
}

const PROPERTIES: [&str; 12] = [
    "JobName",
    "SourceTable",
    "TargetTable",
    "Parallelism",
    "OnItemError",
    "MaxWriteRate",
    "MaxReadRate",
    "Verify",
    "Repair",
    "SkipExpired",
    "Mode",
    "WaitForCompletion",
];
/// Set by CloudFormation itself.
const CLOUDFORMATION_PROPERTIES: [&str; 2] = ["ServiceToken", "ServiceTimeout"];

impl JobProperties {
    pub fn parse(props: &Value) -> Result<Self, InvalidInput> {
        let empty = serde_json::Map::new();
        let map = match props {
            Value::Object(m) => m,
            Value::Null => &empty,
            other => return Err(InvalidInput(format!("ResourceProperties must be an object, found {other}"))),
        };
        if let Some(k) =
            map.keys().find(|k| !PROPERTIES.contains(&k.as_str()) && !CLOUDFORMATION_PROPERTIES.contains(&k.as_str()))
        {
            return Err(InvalidInput(format!(
                "unknown property {k:?} of {RESOURCE_TYPE}: use {}",
                PROPERTIES.join(", ")
            )));
        }
        let text = |k: &str| -> Result<Option<String>, InvalidInput> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(Value::Bool(b)) => Ok(Some(b.to_string())),
                Some(other) => Err(InvalidInput(format!("property {k} must be a string, found {other}"))),
            }
        };
        let required =
            |k: &str| text(k)?.ok_or_else(|| InvalidInput(format!("property {k} of {RESOURCE_TYPE} is required")));
        let number = |k: &str| -> Result<Option<u32>, InvalidInput> {
            text(k)?
                .map(|p| {
                    p.parse::<u32>()
                        .map_err(|_| InvalidInput(format!("property {k} must be a whole number, found {p:?}")))
                })
                .transpose()
        };
        let parallelism = number("Parallelism")?;
        let on_item_error = match text("OnItemError")?.as_deref() {
            None | Some("fail") => OnItemError::Fail,
            Some("skip") => OnItemError::Skip,
            Some(o) => return Err(InvalidInput(format!("property OnItemError must be fail or skip, found {o:?}"))),
        };
        let verify = match text("Verify")?.as_deref() {
            None | Some("full") => VerifyMode::Full,
            Some("none") => VerifyMode::None,
            Some(o) => return Err(InvalidInput(format!("property Verify must be full or none, found {o:?}"))),
        };
        let flag = |k: &str| match text(k)?.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(o) => Err(InvalidInput(format!("property {k} must be true or false, found {o:?}"))),
        };
        let (repair, skip_expired) = (flag("Repair")?, flag("SkipExpired")?);
        let wait_for_completion = match text("WaitForCompletion")?.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(o) => {
                return Err(InvalidInput(format!("property WaitForCompletion must be true or false, found {o:?}")))
            }
        };
        let mode = match text("Mode")?.as_deref() {
            None | Some("offline") => Mode::Offline,
            Some("online") => Mode::Online,
            Some(o) => return Err(InvalidInput(format!("property Mode must be offline or online, found {o:?}"))),
        };
        if mode == Mode::Online && wait_for_completion {
            return Err(InvalidInput(
                "an online job ends only when `tablecopy complete` (or a CompleteJob request) asks it to, so a stack cannot wait for it: drop WaitForCompletion, or use Mode: offline".into(),
            ));
        }
        Ok(Self {
            job_name: required("JobName")?,
            source_table: required("SourceTable")?,
            target_table: required("TargetTable")?,
            parallelism,
            on_item_error,
            max_write_rate: number("MaxWriteRate")?,
            max_read_rate: number("MaxReadRate")?,
            verify,
            repair,
            skip_expired,
            mode,
            wait_for_completion,
        })
    }

    /// Whether `job` is the copy these properties describe (its name aside).
    fn describes(&self, job: &Job) -> bool {
        job.spec.source.as_str() == self.source_table
            && job.spec.target.as_str() == self.target_table
            && self.parallelism.is_none_or(|p| p == job.spec.parallelism)
            && self.on_item_error == job.spec.on_item_error
            && self.max_write_rate == job.spec.max_write_rate
            && self.max_read_rate == job.spec.max_read_rate
            && self.verify == job.spec.verify
            && (self.repair || self.mode == Mode::Online) == job.spec.repair
            && self.skip_expired == job.spec.skip_expired
            && self.mode == job.spec.mode
    }
}

/// What every answer repeats from its request.
struct Head {
    request_id: String,
    response_url: String,
    stack_id: String,
    logical_resource_id: String,
}

impl Head {
    fn new(request_id: &str, response_url: &str, stack_id: &str, logical_resource_id: &str) -> Self {
        Self {
            request_id: request_id.into(),
            response_url: response_url.into(),
            stack_id: stack_id.into(),
            logical_resource_id: logical_resource_id.into(),
        }
    }

    /// The job was made by this resource (of this stack).
    fn owns(&self, job: &Job) -> bool {
        job.origin
            .as_ref()
            .is_some_and(|o| o.stack_id == self.stack_id && o.logical_resource_id == self.logical_resource_id)
    }
}

/// The answer to send now, or none: finalize sends it when the job is final.
enum Outcome {
    Answer { status: CfnStatus, reason: Option<String>, physical_id: String, data: HashMap<String, String> },
    Wait,
}

fn success(job_name: &str, status: &str) -> Outcome {
    Outcome::Answer {
        status: CfnStatus::Success,
        // Never null: CloudFormation shows the reason in the stack's events.
        reason: Some(format!("copy job {job_name} is {status}")),
        physical_id: job_name.to_string(),
        data: HashMap::from([("JobName".into(), job_name.to_string()), ("Status".into(), status.to_string())]),
    }
}

fn failed(physical_id: String, reason: impl std::fmt::Display) -> Outcome {
    Outcome::Answer { status: CfnStatus::Failed, reason: Some(reason.to_string()), physical_id, data: HashMap::new() }
}

/// The physical ID of a resource whose job was not created: never a valid job name, so its
/// Delete touches no job.
fn not_created(head: &Head) -> String {
    format!("not-created:{}", head.request_id)
}

/// CloudFormation's limit on a whole response is 4 KB; the reason stays well within it.
fn short(reason: &str) -> String {
    reason.chars().take(1000).collect()
}

fn response(
    head: &Head,
    status: CfnStatus,
    reason: Option<String>,
    physical_id: String,
    data: HashMap<String, String>,
) -> CfnResponse {
    let mut r = CfnResponse::default();
    r.status = status;
    r.reason = reason.map(|s| short(&s));
    r.physical_resource_id = physical_id;
    r.stack_id = head.stack_id.clone();
    r.request_id = head.request_id.clone();
    r.logical_resource_id = head.logical_resource_id.clone();
    r.data = data;
    r
}

/// Handle one custom resource request and answer it (unless it waits for its job). An error
/// means the answer could not be delivered; the invocation fails so Lambda retries it.
pub async fn custom_resource<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    request: CfnRequest,
) -> Result<(), AwsError> {
    let head = match &request {
        CfnRequest::Create(r) => Head::new(&r.request_id, &r.response_url, &r.stack_id, &r.logical_resource_id),
        CfnRequest::Update(r) => Head::new(&r.request_id, &r.response_url, &r.stack_id, &r.logical_resource_id),
        CfnRequest::Delete(r) => Head::new(&r.request_id, &r.response_url, &r.stack_id, &r.logical_resource_id),
        other => {
            tracing::error!(request = ?other, "unknown CloudFormation request type; nothing to answer");
            return Ok(());
        }
    };
    let outcome = match &request {
        CfnRequest::Create(r) => match JobProperties::parse(&r.resource_properties) {
            Ok(props) => {
                let name = props.job_name.clone();
                start(deps, &head, props, name, not_created(&head)).await
            }
            Err(e) => failed(not_created(&head), e),
        },
        CfnRequest::Update(r) => update(deps, &head, &r.physical_resource_id, &r.resource_properties).await,
        CfnRequest::Delete(r) => delete(deps, &head, &r.physical_resource_id).await,
        _ => unreachable!("other request types returned above"),
    };
    match outcome {
        Outcome::Wait => {
            tracing::info!(request_id = %head.request_id, "waiting for the job: finalize answers CloudFormation");
            Ok(())
        }
        Outcome::Answer { status, reason, physical_id, data } => {
            tracing::info!(request_id = %head.request_id, ?status, reason = reason.as_deref().unwrap_or(""), %physical_id, "answering CloudFormation");
            let r = response(&head, status, reason, physical_id, data);
            deps.responder.respond(&head.response_url, &r).await
        }
    }
}

/// Create the job `name` for this resource. `failed_id` is the physical ID a refusal keeps.
async fn start<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    head: &Head,
    props: JobProperties,
    name: String,
    failed_id: String,
) -> Outcome {
    let wait = props.wait_for_completion;
    let origin = StackOrigin {
        stack_id: head.stack_id.clone(),
        logical_resource_id: head.logical_resource_id.clone(),
        request_id: head.request_id.clone(),
        response_url: wait.then(|| head.response_url.clone()),
        answered: false,
    };
    let request = CreateJobRequest {
        job_name: name.clone(),
        source_table: props.source_table.clone(),
        target_table: props.target_table.clone(),
        parallelism: props.parallelism,
        on_item_error: props.on_item_error,
        max_write_rate: props.max_write_rate,
        max_read_rate: props.max_read_rate,
        verify: props.verify,
        repair: props.repair,
        skip_expired: props.skip_expired,
        mode: props.mode,
        enable_stream: false,
    };
    match create_job_from(deps, request, Some(origin)).await {
        Ok(_) | Err(RequestError::Incomplete(_)) if wait => Outcome::Wait,
        Ok(job) => success(&name, &job.status_label()),
        // Recorded Queued; the next job event (or `resume`) starts it.
        Err(RequestError::Incomplete(_)) => success(&name, JobStatus::Queued.as_str()),
        Err(RequestError::JobExists(e)) => match existing(deps, &name).await {
            // A repeated delivery of this request, or a rollback to the job this resource made.
            Ok(Some(job)) if head.owns(&job) && props.describes(&job) => {
                let same_request = job.origin.as_ref().is_some_and(|o| o.request_id == head.request_id);
                if wait && same_request && StackOrigin::awaits_answer(&job) {
                    if job.status.is_final() {
                        // Answered by finalize; nudging it is harmless if it already did.
                        return deps
                            .control()
                            .send_finalize(&job.name)
                            .await
                            .map_or_else(|e| failed(failed_id, e), |_| Outcome::Wait);
                    }
                    Outcome::Wait
                } else {
                    success(&name, &job.status_label())
                }
            }
            Ok(_) => failed(failed_id, RequestError::JobExists(e)),
            Err(e) => failed(failed_id, e),
        },
        Err(e) => failed(failed_id, e),
    }
}

async fn existing<S: ControlStore, Q, T>(deps: &Deps<S, Q, T>, name: &str) -> Result<Option<Job>, AwsError> {
    match JobName::parse(name) {
        Ok(n) => deps.store.get_job(&n).await,
        Err(_) => Ok(None),
    }
}

async fn update<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    head: &Head,
    physical_id: &str,
    props: &Value,
) -> Outcome {
    // A failed update keeps the old physical ID: the resource still is its old job.
    let props = match JobProperties::parse(props) {
        Ok(p) => p,
        Err(e) => return failed(physical_id.to_string(), e),
    };
    let current = match existing(deps, physical_id).await {
        Ok(job) => job,
        Err(e) => return failed(physical_id.to_string(), e),
    };
    if let Some(job) = current.as_ref().filter(|j| props.job_name == physical_id && props.describes(j)) {
        // The same copy (only WaitForCompletion or CloudFormation's own properties changed).
        return success(physical_id, &job.status_label());
    }
    let name = if props.job_name != physical_id {
        props.job_name.clone()
    } else {
        let suffix: String = head.request_id.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
        let base: String = props.job_name.chars().take(64 - 1 - suffix.len()).collect();
        format!("{base}-{}", suffix.to_ascii_lowercase())
    };
    start(deps, head, props, name, physical_id.to_string()).await
}

async fn delete<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    head: &Head,
    physical_id: &str,
) -> Outcome {
    let done = |status: &str| success(physical_id, status);
    let job = match existing(deps, physical_id).await {
        Ok(Some(job)) => job,
        Ok(None) => return done("NotFound"),
        Err(e) => return failed(physical_id.to_string(), e),
    };
    if !head.owns(&job) {
        tracing::warn!(job = %job.name, "job was not created by this resource; left alone");
        return done(&job.status_label());
    }
    if job.status.is_final() {
        return done(&job.status_label());
    }
    match cancel_job(deps, &job.name, false).await {
        Ok(job) => done(&job.status_label()),
        // It became final meanwhile.
        Err(RequestError::NotAllowed(_)) => done("Final"),
        Err(e) => failed(physical_id.to_string(), e),
    }
}

/// Answer the CloudFormation request waiting on `job` once the job is final: `SUCCESS` when
/// it completed, `FAILED` with the reason otherwise. Called by finalize; sends at most once
/// per final job (it is recorded as answered; a crash between the answer and the record
/// sends the same answer again, which CloudFormation tolerates).
pub async fn answer_waiting<S: ControlStore, Q, T>(deps: &Deps<S, Q, T>, job: &Job) -> Result<(), AwsError> {
    let (Some(origin), true) = (job.origin.as_ref(), job.status.is_final()) else { return Ok(()) };
    let (Some(url), false) = (origin.response_url.as_deref(), origin.answered) else { return Ok(()) };
    let head = Head::new(&origin.request_id, url, &origin.stack_id, &origin.logical_resource_id);
    let (status, reason) = match (job.status, &job.error) {
        (JobStatus::Completed, _) => {
            (CfnStatus::Success, Some(format!("copy job {} is Completed: {} items copied", job.name, job.items_copied)))
        }
        (s, Some(e)) => (CfnStatus::Failed, Some(format!("copy job {} is {s} ({}): {}", job.name, e.code, e.message))),
        (s, None) => (CfnStatus::Failed, Some(format!("copy job {} is {s}", job.name))),
    };
    let data = HashMap::from([
        ("JobName".to_string(), job.name.to_string()),
        ("Status".to_string(), job.status.to_string()),
        ("ItemsCopied".to_string(), job.items_copied.to_string()),
    ]);
    let r = response(&head, status, reason, job.name.to_string(), data);
    match deps.responder.respond(url, &r).await {
        Ok(()) => tracing::info!(status = %job.status, "CloudFormation answered"),
        Err(e) if e.is_retryable() => return Err(e),
        // An expired or refused URL never works: CloudFormation gave up on this request.
        Err(e) => tracing::error!(error = %e, "CloudFormation refused the answer; not trying again"),
    }
    deps.store.mark_answered(&job.name).await?;
    Ok(())
}
