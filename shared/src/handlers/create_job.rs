use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::Deps;
use crate::config::TableScope;
use crate::error::RequestError;
use crate::model::{
    Cursor, InvalidInput, Job, JobName, JobSpec, JobStatus, OnItemError, StackOrigin, StatusChange, TableName,
    MAX_PARALLELISM,
};
use crate::queue::Outbox;
use crate::scheduler::Entry;
use crate::store::{conflict_pause, ControlStore, InsertError};
use crate::tables::Tables;

/// A request to create a copy job: the CLI's call, a direct invoke payload, an event's detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobRequest {
    pub job_name: String,
    pub source_table: String,
    pub target_table: String,
    /// Scan segments; the deployment's default when absent.
    #[serde(default)]
    pub parallelism: Option<u32>,
    #[serde(default)]
    pub on_item_error: OnItemError,
}

impl CreateJobRequest {
    /// Whether `job` is the copy this request asks for (a deployment's default parallelism
    /// stands in for a request without one).
    pub fn describes(&self, job: &Job, default_parallelism: u32) -> bool {
        job.name.as_str() == self.job_name
            && job.spec.source.as_str() == self.source_table
            && job.spec.target.as_str() == self.target_table
            && self.parallelism.unwrap_or(default_parallelism) == job.spec.parallelism
            && self.on_item_error == job.spec.on_item_error
    }
}

/// Validate everything, then record the job `Queued` (at the end of the queue, with one
/// parked cursor per segment) and let the scheduler start the oldest queued job if a running
/// slot is free. Nothing is written when validation fails.
pub async fn create_job<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    req: CreateJobRequest,
) -> Result<Job, RequestError> {
    create_job_from(deps, req, None).await
}

/// [`create_job`] for a CloudFormation resource, which is recorded on the job.
pub(crate) async fn create_job_from<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    req: CreateJobRequest,
    origin: Option<StackOrigin>,
) -> Result<Job, RequestError> {
    let name = JobName::parse(req.job_name)?;
    let source = TableName::parse(req.source_table)?;
    let target = TableName::parse(req.target_table)?;
    if source == target {
        return Err(InvalidInput(format!(
            "source and target are the same table ({source}); copy into a different, existing table"
        ))
        .into());
    }
    for (role, table) in [("source", &source), ("target", &target)] {
        if !deps.config.tables.allows(table.as_str()) {
            let TableScope::Prefix(prefix) = &deps.config.tables else { unreachable!("Any allows every table") };
            return Err(InvalidInput(format!(
                "the {role} table {table} is outside this deployment: it may copy only tables whose names start with {prefix:?} (template parameter TableNamePrefix)"
            ))
            .into());
        }
    }
    let parallelism = req.parallelism.unwrap_or(deps.config.tuning.default_parallelism);
    if !(1..=MAX_PARALLELISM).contains(&parallelism) {
        return Err(
            InvalidInput(format!("parallelism {parallelism} is out of range: use 1 to {MAX_PARALLELISM}")).into()
        );
    }
    let not_found = |role, table: &TableName| RequestError::TableNotFound {
        role,
        table: table.to_string(),
        region: deps.config.region.clone(),
    };
    let source_info = deps.tables.describe(&source).await?.ok_or_else(|| not_found("source", &source))?;
    let target_info = deps.tables.describe(&target).await?.ok_or_else(|| not_found("target", &target))?;
    let control = deps.control();
    if deps.store.get_job(&name).await?.is_some() {
        // A create delivered again after a crash may find its own job not started yet.
        control.schedule().await?;
        return Err(RequestError::JobExists(name.to_string()));
    }
    // Jobs of an old write region are failed by `schedule` below, before any job starts.
    let region = control.current_region().await?;

    let now = Utc::now();
    let mut job = Job {
        name: name.clone(),
        spec: JobSpec {
            source,
            target,
            parallelism,
            on_item_error: req.on_item_error,
            source_key: source_info.key,
            target_key: target_info.key,
        },
        status: JobStatus::Queued,
        write_region: region.clone(),
        estimated_total: source_info.item_count,
        items_copied: 0,
        bytes_copied: 0,
        items_rejected: 0,
        rejected_samples: vec![],
        segments_done: 0,
        created_at: now,
        started_at: None,
        updated_at: now,
        completed_at: None,
        duration_ms: None,
        error: None,
        progress_at: None,
        version: 0,
        epoch: 0,
        history: vec![StatusChange { status: JobStatus::Queued, at: now }],
        pending: None,
        launched_at: None,
        stalled: 0,
        origin,
    };
    let cursors: Vec<Cursor> = (0..parallelism).map(Cursor::start).collect();
    for attempt in 1.. {
        let mut next = deps.store.scheduler().await?.next();
        next.queued.push(Entry { job: name.clone(), region: region.clone() });
        let at = next.creation_time(Utc::now());
        (job.created_at, job.updated_at, job.history[0].at) = (at, at, at);
        next.last_created = Some(at);
        match deps.store.insert_job(&job, &cursors, &next).await {
            Ok(()) => break,
            Err(InsertError::SchedulerChanged) => conflict_pause(attempt).await,
            Err(InsertError::JobExists) => {
                control.schedule().await?;
                return Err(RequestError::JobExists(name.to_string()));
            }
            Err(InsertError::Aws(e)) => return Err(e.into()),
        }
    }
    tracing::info!(segments = parallelism, estimated_total = job.estimated_total, "job recorded");
    if let Err(e) = control.schedule().await {
        // The job exists and waits; the reconciler starts it when a slot is free.
        return Err(RequestError::Incomplete(format!(
            "job {:?} was recorded but could not be started yet ({e}); it starts by itself within a minute (the reconciler), or run `tablecopy resume --job-name {name}`",
            name.as_str()
        )));
    }
    let job = deps.store.get_job(&name).await?.ok_or_else(|| RequestError::JobNotFound(name.to_string()))?;
    tracing::info!(status = %job.status, "job created");
    Ok(job)
}
