use chrono::Utc;

use crate::error::HandlerError;
use crate::messages::Finalize;
use crate::model::{JobError, JobStatus, OnItemError};
use crate::store::{ControlStore, Transition};

/// Move the job to its final state: `Failed` with the reason it was given or that its counters
/// show, else `Completed` once every segment is done and the counts agree. A premature or
/// duplicate finalize changes nothing.
pub async fn finalize<S: ControlStore + ?Sized>(store: &S, msg: Finalize) -> Result<(), HandlerError> {
    let job = store.get_job(&msg.job).await?.ok_or_else(|| HandlerError::JobNotFound(msg.job.to_string()))?;
    if job.status.is_final() {
        tracing::info!(status = %job.status, "job already final; nothing to do");
        return Ok(());
    }
    let failure = if let Some(f) = msg.failure {
        Some(f)
    } else if job.items_rejected > 0 && job.spec.on_item_error == OnItemError::Fail {
        Some(JobError { code: "ItemsRejected".into(), message: job.rejected_message() })
    } else {
        if job.status != JobStatus::Running {
            tracing::info!(status = %job.status, "job is not running; not completing it");
            return Ok(());
        }
        let cursors = store.cursors(&msg.job).await?;
        let done = cursors.iter().filter(|c| c.done).count();
        if done < job.spec.parallelism as usize {
            tracing::info!(done, of = job.spec.parallelism, "segments still running; not final yet");
            return Ok(());
        }
        let counted: u64 = cursors.iter().map(|c| c.items).sum();
        (counted != job.items_copied).then(|| JobError {
            code: "CountMismatch".into(),
            message: format!(
                "the segments counted {counted} items but the job counted {}; re-create the job to copy again",
                job.items_copied
            ),
        })
    };
    let now = Utc::now();
    let to = if failure.is_some() { JobStatus::Failed } else { JobStatus::Completed };
    let t = Transition {
        from: job.status,
        to,
        at: now,
        error: failure,
        started: false,
        duration_ms: job.started_at.map(|s| (now - s).num_milliseconds().max(0) as u64),
        release_slot: matches!(job.status, JobStatus::Running | JobStatus::Paused),
    };
    if store.transition(&msg.job, &t).await? {
        match &t.error {
            None => tracing::info!(
                items = job.items_copied,
                bytes = job.bytes_copied,
                duration_ms = t.duration_ms,
                "job completed"
            ),
            Some(e) => tracing::error!(code = %e.code, message = %e.message, "job failed"),
        }
    } else {
        tracing::info!("job changed state meanwhile; nothing to do");
    }
    Ok(())
}
