use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::lifecycle::{current_region, schedule};
use super::Deps;
use crate::config::TableScope;
use crate::error::RequestError;
use crate::messages::{CopyChunk, SliceLimits, VERSION};
use crate::model::{
    Cursor, InvalidInput, Item, Job, JobName, JobSpec, JobStatus, OnItemError, StackOrigin, StatusChange, TableName,
    MAX_PARALLELISM,
};
use crate::queue::Outbox;
use crate::store::{conflict_pause, ControlStore, Entry, InsertError};
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
    if deps.store.get_job(&name).await?.is_some() {
        return Err(RequestError::JobExists(name.to_string()));
    }
    // Jobs of an old write region are failed by `schedule` below, before any job starts.
    let region = current_region(deps).await?;

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
        version: 0,
        history: vec![StatusChange { status: JobStatus::Queued, at: now }],
        pending: None,
        launched_at: None,
        origin,
    };
    let cursors: Vec<Cursor> = (0..parallelism).map(Cursor::start).collect();
    for attempt in 1.. {
        let mut next = deps.store.scheduler().await?.next();
        next.queued.push(Entry { job: name.clone(), region: region.clone() });
        let at = match next.last_created {
            Some(last) if last >= Utc::now() => last + chrono::Duration::milliseconds(1),
            _ => Utc::now(),
        };
        (job.created_at, job.updated_at, job.history[0].at) = (at, at, at);
        next.last_created = Some(at);
        match deps.store.insert_job(&job, &cursors, &next).await {
            Ok(()) => break,
            Err(InsertError::SchedulerChanged) => conflict_pause(attempt).await,
            Err(InsertError::JobExists) => return Err(RequestError::JobExists(name.to_string())),
            Err(InsertError::Aws(e)) => return Err(e.into()),
        }
    }
    tracing::info!(segments = parallelism, estimated_total = job.estimated_total, "job recorded");
    if let Err(e) = schedule(deps).await {
        // The job exists and waits; the next job event (or `resume`) starts it.
        return Err(RequestError::Incomplete(format!(
            "job {:?} was recorded but could not be started yet ({e}); run `tablecopy resume --job-name {name}` to try again",
            name.as_str()
        )));
    }
    let job = deps.store.get_job(&name).await?.ok_or_else(|| RequestError::JobNotFound(name.to_string()))?;
    tracing::info!(status = %job.status, "job created");
    Ok(job)
}

/// The copy-chunk message of a segment's slice `seq`, starting after `start_key`.
pub(crate) fn slice_message(
    job: &Job,
    segment: u32,
    seq: u64,
    start_key: Option<Item>,
    limits: SliceLimits,
) -> CopyChunk {
    CopyChunk {
        v: VERSION,
        job: job.name.clone(),
        segment,
        total_segments: job.spec.parallelism,
        seq,
        start_key: start_key.map(Into::into),
        source: job.spec.source.clone(),
        target: job.spec.target.clone(),
        source_key: job.spec.source_key.clone(),
        target_key: job.spec.target_key.clone(),
        on_item_error: job.spec.on_item_error,
        limits,
    }
}
