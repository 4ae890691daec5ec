use super::custom_resource::answer_waiting;
use super::lifecycle::{current_region, move_job, schedule};
use super::Deps;
use crate::error::HandlerError;
use crate::messages::Finalize;
use crate::model::{JobError, JobStatus, OnItemError};
use crate::queue::Outbox;
use crate::store::ControlStore;

/// Move the job to its final state: `Failed` with the reason it was given or that its counters
/// show, else `Completed` once every segment is done and the counts agree. Then start the next
/// queued job. A final job whose CloudFormation resource waits gets its answer here (the
/// final move sends one more finalize message for it). A premature or duplicate finalize changes nothing (but still lets the
/// scheduler look for a queued job, which makes it a safe nudge).
pub async fn finalize<S: ControlStore, Q: Outbox, T>(deps: &Deps<S, Q, T>, msg: Finalize) -> Result<(), HandlerError> {
    let store = &deps.store;
    let job = store.get_job(&msg.job).await?.ok_or_else(|| HandlerError::JobNotFound(msg.job.to_string()))?;
    let region = current_region(deps).await?;
    if job.status.is_final() || job.write_region != region {
        tracing::info!(status = %job.status, "job already final (or of another write region); nothing to finalize");
        // A job made final elsewhere (cancel, region change) comes here to answer the
        // CloudFormation resource waiting for it.
        answer_waiting(deps, &job).await?;
        schedule(deps).await?;
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
    let to = if failure.is_some() { JobStatus::Failed } else { JobStatus::Completed };
    if move_job(deps, &job, to, failure.clone(), None).await? {
        match &failure {
            None => tracing::info!(items = job.items_copied, bytes = job.bytes_copied, "job completed"),
            Some(e) => tracing::error!(code = %e.code, message = %e.message, "job failed"),
        }
    } else {
        tracing::info!("job changed state meanwhile; nothing to do");
    }
    schedule(deps).await?;
    Ok(())
}
