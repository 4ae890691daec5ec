//! The reconciler: a periodic pass (the template's schedule sends it to the finalize queue
//! every `ReconcileMinutes`; the local runner runs it on the same period) so that nothing
//! depends on "the next event". It starts queued jobs when a slot is free and repairs
//! interrupted launches ([`crate::control::Control::schedule`]), finishes interrupted pauses,
//! resumes and cancels (every cursor brought to its job's epoch, a pending request settled
//! once nothing is in flight), asks finalize for a running job whose segments are all done,
//! looks for new shards of an online job's stream (and reports its replay's lag),
//! and records the segments that made no progress for longer than the stall bound.

use chrono::Utc;

use super::Deps;
use crate::error::AwsError;
use crate::events::JobStalled;
use crate::lineage::{self, Found};
use crate::metrics::Metrics;
use crate::model::{JobName, JobStatus, Progress};
use crate::queue::Outbox;
use crate::store::ControlStore;
use crate::tables::Tables;

/// What a pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Jobs holding a running slot that were looked at.
    pub jobs: usize,
    /// Segments without progress for longer than the stall bound, over all jobs.
    pub stalled: u32,
}

/// One pass. A job whose look fails (its stream refused, the control table throttled) is
/// logged and passed over, so that it does not hold up the other jobs; the pass then
/// returns the first such error once every job was looked at.
pub async fn reconcile<S: ControlStore, Q: Outbox, T: Tables>(deps: &Deps<S, Q, T>) -> Result<Reconciled, AwsError> {
    let (store, control) = (&deps.store, deps.control());
    control.schedule().await?;
    let mut found = Reconciled::default();
    let sched = store.scheduler().await?;
    for entry in sched.running.iter().chain(&sched.queued) {
        // State changes whose events a dead process did not publish.
        control.announce_now(&entry.job).await;
    }
    let mut first_error = None;
    for entry in sched.running {
        match reconcile_job(deps, &entry.job).await {
            Ok(None) => {}
            Ok(Some(stalled)) => {
                found.jobs += 1;
                found.stalled += stalled;
            }
            Err(e) => {
                tracing::error!(job = %entry.job, error = %e, "the reconciler could not look at this job; the other jobs go on");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// Look at one job holding a running slot (`None`: it is gone); returns its segments without
/// progress for longer than the stall bound. A stream that cannot be read is reported after
/// the rest of the look (a stream refused for good leaves the shards stalled, and that is
/// recorded).
async fn reconcile_job<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    name: &JobName,
) -> Result<Option<u32>, AwsError> {
    let Some(job) = deps.store.get_job(name).await? else { return Ok(None) };
    let job = &job;
    let mut unreadable = None;
    let (store, control) = (&deps.store, deps.control());
    let cursors = match (job.status, job.pending) {
        (JobStatus::Running, Some(_)) => {
            control.settle(&job.name).await?;
            store.cursors(&job.name).await?
        }
        (JobStatus::Paused, _) => control.stop_cursors(&job.name, job.epoch).await?,
        (JobStatus::Running, None) => {
            if job.replay_from.is_some() && job.verify_started_at.is_none() {
                // Online, catching up or completing: shards the stream began since (and a
                // stream lost meanwhile). Not once the verification began: nothing may
                // write to the target then but the repair.
                match lineage::discover(store, &deps.tables, deps.streams.as_ref(), job).await {
                    Ok(Found::Lost(error)) => control.send_failure(&job.name, Some(error)).await?,
                    Ok(Found::Shards(0)) => {}
                    Ok(Found::Shards(_)) => control.launch(job).await?,
                    Err(e) => unreadable = Some(e),
                }
            }
            let cursors = store.cursors(&job.name).await?;
            if let Some(replay) = Progress::of(&cursors).replay {
                Metrics::new("reconcile", job.name.as_str())
                    .millis("ReplayLag", replay.lag_ms.unwrap_or(0))
                    .count("OpenShards", u64::from(replay.open_shards))
                    .emit();
            }
            if job.all_done(&cursors) {
                tracing::warn!(job = %job.name, "every segment is done but the job is not final: asking finalize");
                control.send_finalize(&job.name).await?;
            }
            cursors
        }
        _ => return Ok(Some(0)),
    };
    let stall_after = chrono::Duration::from_std(deps.config.tuning.stall_after()).unwrap_or(chrono::Duration::MAX);
    let now = Utc::now();
    let stalled =
        cursors.iter().filter(|c| c.in_flight() && c.updated_at.is_some_and(|t| now - t > stall_after)).count() as u32;
    if stalled != job.stalled {
        if stalled > job.stalled {
            tracing::warn!(job = %job.name, stalled, "segments without progress: see the copy-chunk dead-letter queue");
            // An event bus that fails must not stop the pass for the other jobs: the count
            // is then not recorded, so the next pass publishes it again.
            if let Err(e) = deps.events.publish(vec![JobStalled::event(job.name.as_str(), stalled)]).await {
                tracing::warn!(job = %job.name, error = %e, "could not publish JobStalled; the next pass tries again");
                return unreadable.map_or(Ok(Some(stalled)), Err);
            }
        }
        store.set_stalled(&job.name, stalled).await?;
    }
    unreadable.map_or(Ok(Some(stalled)), Err)
}
