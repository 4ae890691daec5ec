use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::Deps;
use crate::error::CreateJobError;
use crate::messages::{encode, CopyChunk, VERSION};
use crate::model::{
    Cursor, InvalidInput, Job, JobError, JobName, JobSpec, JobStatus, OnItemError, StatusChange, TableName,
    MAX_PARALLELISM,
};
use crate::queue::{Outbox, QueueKind};
use crate::store::{ControlStore, InsertError, Transition};
use crate::tables::Tables;

/// A request to create a copy job: the CLI's call and a direct invoke payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

/// Validate everything, then record the job with one cursor per segment and, if the running
/// slot is free, start it. Nothing is written when an error is returned before the job exists.
pub async fn create_job<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    req: CreateJobRequest,
) -> Result<Job, CreateJobError> {
    let name = JobName::parse(req.job_name)?;
    let source = TableName::parse(req.source_table)?;
    let target = TableName::parse(req.target_table)?;
    if source == target {
        return Err(InvalidInput(format!(
            "source and target are the same table ({source}); copy into a different, existing table"
        ))
        .into());
    }
    let parallelism = req.parallelism.unwrap_or(deps.config.tuning.default_parallelism);
    if !(1..=MAX_PARALLELISM).contains(&parallelism) {
        return Err(
            InvalidInput(format!("parallelism {parallelism} is out of range: use 1 to {MAX_PARALLELISM}")).into()
        );
    }
    let region = deps.config.region.clone();
    let not_found = |role, table: &TableName| CreateJobError::TableNotFound {
        role,
        table: table.to_string(),
        region: region.clone(),
    };
    let source_info = deps.tables.describe(&source).await?.ok_or_else(|| not_found("source", &source))?;
    let target_info = deps.tables.describe(&target).await?.ok_or_else(|| not_found("target", &target))?;
    if deps.store.get_job(&name).await?.is_some() {
        return Err(CreateJobError::JobExists(name.to_string()));
    }

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
        status: JobStatus::Running,
        write_region: region.clone(),
        estimated_total: source_info.item_count,
        items_copied: 0,
        bytes_copied: 0,
        items_rejected: 0,
        rejected_samples: vec![],
        segments_done: 0,
        created_at: now,
        started_at: Some(now),
        updated_at: now,
        completed_at: None,
        duration_ms: None,
        error: None,
        version: 0,
        history: vec![
            StatusChange { status: JobStatus::Queued, at: now },
            StatusChange { status: JobStatus::Running, at: now },
        ],
    };
    let cursors: Vec<Cursor> = (0..parallelism).map(Cursor::start).collect();
    match deps.store.insert_job(&job, &cursors).await {
        Ok(()) => {}
        Err(InsertError::SlotTaken) => {
            // Another job runs: this one waits its turn.
            job.status = JobStatus::Queued;
            job.started_at = None;
            job.history.truncate(1);
            match deps.store.insert_job(&job, &cursors).await {
                Ok(()) => {
                    tracing::info!(status = %job.status, "job created; it waits for the running job");
                    return Ok(job);
                }
                Err(InsertError::JobExists) => return Err(CreateJobError::JobExists(name.to_string())),
                Err(InsertError::SlotTaken) => unreachable!("a queued job takes no slot"),
                Err(InsertError::Aws(e)) => return Err(e.into()),
            }
        }
        Err(InsertError::JobExists) => return Err(CreateJobError::JobExists(name.to_string())),
        Err(InsertError::Aws(e)) => return Err(e.into()),
    }

    let first_slices: Vec<String> = (0..parallelism).map(|segment| encode(&first_slice(deps, &job, segment))).collect();
    if let Err(e) = deps.outbox.send(QueueKind::CopyChunk, first_slices).await {
        // Without its first messages the job would never move: fail it, with the reason.
        let failed = Transition {
            from: JobStatus::Running,
            to: JobStatus::Failed,
            at: Utc::now(),
            error: Some(JobError { code: "StartFailed".into(), message: format!("could not start the job: {e}") }),
            started: false,
            duration_ms: Some(0),
            release_slot: true,
        };
        deps.store.transition(&name, &failed).await?;
        return Err(e.into());
    }
    tracing::info!(status = %job.status, segments = parallelism, estimated_total = job.estimated_total, "job created and started");
    Ok(job)
}

/// The copy-chunk message of a segment's first slice.
pub(crate) fn first_slice<S, Q, T>(deps: &Deps<S, Q, T>, job: &Job, segment: u32) -> CopyChunk {
    slice_message(job, segment, 0, None, deps.config.tuning.slice)
}

pub(crate) fn slice_message(
    job: &Job,
    segment: u32,
    seq: u64,
    start_key: Option<crate::model::Item>,
    limits: crate::messages::SliceLimits,
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
