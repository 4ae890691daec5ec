use super::custom_resource::answer_waiting;
use super::Deps;
use crate::error::{AwsError, ErrorKind, HandlerError};
use crate::messages::Finalize;
use crate::model::{JobError, JobStatus, OnItemError, Progress};
use crate::queue::Outbox;
use crate::store::{conflict_pause, ControlStore};

/// How often finalize reads the job again when it changed between its read and its move.
const FINALIZE_ATTEMPTS: u32 = 8;

/// Move the job to its final state: `Failed` with the reason it was given or that its cursors
/// show (rejected items), else `Completed` once every segment is done. The counters recorded
/// with the move are the sum of the cursors. Then start the next queued job. A final job
/// whose CloudFormation resource waits gets its answer here (the final move sends one more
/// finalize message for it). A premature or duplicate finalize changes nothing (but still lets
/// the scheduler look for a queued job, which makes it a safe nudge).
pub async fn finalize<S: ControlStore, Q: Outbox, T>(deps: &Deps<S, Q, T>, msg: Finalize) -> Result<(), HandlerError> {
    let (store, control) = (&deps.store, deps.control());
    for attempt in 1..=FINALIZE_ATTEMPTS {
        let job = store.get_job(&msg.job).await?.ok_or_else(|| HandlerError::JobNotFound(msg.job.to_string()))?;
        let region = control.current_region().await?;
        if job.status.is_final() || job.write_region != region {
            tracing::info!(status = %job.status, "job already final (or of another write region); nothing to finalize");
            // A job made final elsewhere (cancel, region change) comes here to answer the
            // CloudFormation resource waiting for it, and to publish its last state changes
            // if that could not be done when it moved.
            // The answer first: an event bus that fails must not hold a stack back.
            answer_waiting(deps, &job).await?;
            control.announce(&job.name).await?;
            break;
        }
        let cursors = store.cursors(&job.name).await?;
        let progress = Progress::of(&cursors);
        let rejected = progress.rejected > 0 && job.spec.on_item_error == OnItemError::Fail;
        let failure = msg.failure.clone().or_else(|| {
            rejected.then(|| JobError {
                code: "ItemsRejected".into(),
                message: job.clone().with_progress(&progress).rejected_message(),
            })
        });
        if failure.is_none() {
            if job.status != JobStatus::Running {
                tracing::info!(status = %job.status, "job is not running; not completing it");
                break;
            }
            let done = cursors.iter().filter(|c| c.done).count();
            if !job.all_done(&cursors) {
                tracing::info!(done, of = job.spec.parallelism, "segments still running; not final yet");
                break;
            }
        }
        let to = if failure.is_some() { JobStatus::Failed } else { JobStatus::Completed };
        if control.move_job(&job, to, failure.clone(), None, Some(progress.clone())).await? {
            match &failure {
                None => tracing::info!(items = progress.items, bytes = progress.bytes, "job completed"),
                Some(e) => tracing::error!(code = %e.code, message = %e.message, "job failed"),
            }
            break;
        }
        if attempt == FINALIZE_ATTEMPTS {
            // Never drop it: the message comes back and looks again.
            return Err(AwsError::new(
                ErrorKind::Conflict,
                format!("finalizing job {}", job.name),
                "the job kept changing state; the message is retried",
            )
            .into());
        }
        tracing::info!(attempt, "job changed state meanwhile; looking again");
        conflict_pause(attempt).await;
    }
    control.schedule().await?;
    Ok(())
}
