//! How jobs move between states outside a slice's own commit: starting queued jobs when a
//! slot is free, launching a job's segments, settling a pause or cancel once nothing is in
//! flight, and failing every incomplete job when the account's write region changes.
//!
//! Every move is a conditional transaction with the scheduler item, retried on a conflict,
//! and every step can run again after a crash: launching re-sends only parked segments, and
//! a duplicate slice this causes is dropped at its checkpoint (see advance-checkpoint).

use chrono::{DateTime, Utc};

use super::create_job::slice_message;
use super::Deps;
use crate::error::AwsError;
use crate::messages::{encode, Finalize, VERSION};
use crate::model::{Job, JobError, JobName, JobStatus, StackOrigin};
use crate::queue::{Outbox, QueueKind};
use crate::store::{conflict_pause, Applied, ControlStore, Scheduler, Transition};

/// A launch that has not unparked its segments after this long is taken as interrupted
/// (the process died between its transition and its messages) and is done again.
pub const LAUNCH_GRACE_SECONDS: i64 = 30;

/// The account's write region: the control table's account config, else the deployment's.
pub async fn current_region<S: ControlStore, Q, T>(deps: &Deps<S, Q, T>) -> Result<String, AwsError> {
    Ok(deps.store.write_region().await?.unwrap_or_else(|| deps.config.region.clone()))
}

fn duration_ms(job: &Job, now: DateTime<Utc>) -> Option<u64> {
    job.started_at.map(|s| (now - s).num_milliseconds().max(0) as u64)
}

/// Move `job` from its current status to `to`, updating the scheduler in the same
/// transaction: a final job leaves it (freeing its slot or its place in the queue). With
/// `pending`, the move applies only while that request is pending. `false` if the job had
/// changed meanwhile. A job whose CloudFormation resource waits for it gets a finalize
/// message when it becomes final, whatever made it final: finalize answers CloudFormation.
pub async fn move_job<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    job: &Job,
    to: JobStatus,
    error: Option<JobError>,
    pending: Option<JobStatus>,
) -> Result<bool, AwsError> {
    let now = Utc::now();
    for attempt in 1.. {
        let scheduler = if to.is_final() {
            let s = deps.store.scheduler().await?;
            s.holds(&job.name).then(|| s.without(&job.name))
        } else {
            None
        };
        let t = Transition {
            from: job.status,
            to,
            at: now,
            error: error.clone(),
            started: false,
            duration_ms: if to.is_final() { duration_ms(job, now) } else { None },
            pending,
            scheduler,
        };
        match deps.store.transition(&job.name, &t).await? {
            Applied::Yes => {
                tracing::info!(job = %job.name, from = %job.status, %to, "job moved");
                if to.is_final() && StackOrigin::awaits_answer(job) {
                    send_finalize(deps, &job.name).await?;
                }
                return Ok(true);
            }
            Applied::JobChanged => return Ok(false),
            Applied::SchedulerChanged => conflict_pause(attempt).await,
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Ask finalize to look at the job: complete or fail it, or answer the waiting CloudFormation
/// resource of a final job.
pub(crate) async fn send_finalize<S, Q: Outbox, T>(deps: &Deps<S, Q, T>, name: &JobName) -> Result<(), AwsError> {
    let f = Finalize { v: VERSION, job: name.clone(), failure: None };
    deps.outbox.send(QueueKind::Finalize, vec![encode(&f)]).await
}

/// Start queued jobs, oldest first, while a running slot is free, and re-launch a running job
/// whose launch was interrupted. Idempotent: any function may call it after a job event.
pub async fn schedule<S: ControlStore, Q: Outbox, T>(deps: &Deps<S, Q, T>) -> Result<(), AwsError> {
    let region = current_region(deps).await?;
    enforce_region(deps, &region).await?;
    let max = deps.config.tuning.max_running_jobs.max(1);
    let mut attempt = 0;
    loop {
        let sched = deps.store.scheduler().await?;
        if sched.running.len() >= max || sched.queued.is_empty() {
            return repair_launches(deps, &sched).await;
        }
        let entry = &sched.queued[0];
        let job = deps.store.get_job(&entry.job).await?;
        let mut next = sched.next();
        let started = next.queued.remove(0);
        let Some(job) = job.filter(|j| j.status == JobStatus::Queued) else {
            // Not queued any more (it cannot happen through this code): drop the entry.
            tracing::warn!(job = %started.job, "scheduler entry without a queued job removed");
            deps.store.write_scheduler(&next).await?;
            continue;
        };
        next.running.push(started);
        let now = Utc::now();
        let t = Transition {
            from: JobStatus::Queued,
            to: JobStatus::Running,
            at: now,
            error: None,
            started: true,
            duration_ms: None,
            pending: None,
            scheduler: Some(next),
        };
        match deps.store.transition(&job.name, &t).await? {
            Applied::Yes => {
                tracing::info!(job = %job.name, "queued job started");
                let job = Job { status: JobStatus::Running, started_at: Some(now), launched_at: Some(now), ..job };
                launch(deps, &job).await?;
            }
            Applied::JobChanged | Applied::SchedulerChanged => {
                attempt += 1;
                conflict_pause(attempt).await;
            }
        }
    }
}

/// Re-launch running jobs that have parked, unfinished segments well after their launch.
async fn repair_launches<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    sched: &Scheduler,
) -> Result<(), AwsError> {
    let now = Utc::now();
    for entry in &sched.running {
        let Some(job) = deps.store.get_job(&entry.job).await? else { continue };
        let stale = job.launched_at.is_some_and(|at| (now - at).num_seconds() > LAUNCH_GRACE_SECONDS);
        if job.status == JobStatus::Running && job.pending.is_none() && stale {
            let cursors = deps.store.cursors(&job.name).await?;
            if cursors.iter().any(|c| c.parked && !c.done) {
                tracing::warn!(job = %job.name, "an interrupted launch is done again");
                launch(deps, &job).await?;
            }
        }
    }
    Ok(())
}

/// Send the next slice of every parked, unfinished segment of a running job, then mark each
/// as in flight; a job whose segments are all done is sent to finalize. The messages go
/// first: if the process dies before the marks, the launch is repeated and the duplicate
/// slice is dropped at its checkpoint, whereas a mark without its message would stall.
pub async fn launch<S: ControlStore, Q: Outbox, T>(deps: &Deps<S, Q, T>, job: &Job) -> Result<(), AwsError> {
    let cursors = deps.store.cursors(&job.name).await?;
    if cursors.iter().all(|c| c.done) {
        return send_finalize(deps, &job.name).await;
    }
    let idle: Vec<_> = cursors.iter().filter(|c| c.parked && !c.done).collect();
    if idle.is_empty() {
        return Ok(());
    }
    let slice = deps.config.tuning.slice;
    let bodies =
        idle.iter().map(|c| encode(&slice_message(job, c.segment, c.seq, c.last_key.clone(), slice))).collect();
    deps.outbox.send(QueueKind::CopyChunk, bodies).await?;
    for c in &idle {
        deps.store.unpark(&job.name, c.segment, c.seq).await?;
    }
    tracing::info!(job = %job.name, segments = idle.len(), "segments launched");
    Ok(())
}

/// Complete a pending pause or cancel once no slice of the job is in flight. Called by the
/// request itself and after every parking commit: the last one to look sees every cursor.
pub async fn settle<S: ControlStore, Q: Outbox, T>(deps: &Deps<S, Q, T>, name: &JobName) -> Result<(), AwsError> {
    let Some(job) = deps.store.get_job(name).await? else { return Ok(()) };
    let (JobStatus::Running, Some(to)) = (job.status, job.pending) else { return Ok(()) };
    let cursors = deps.store.cursors(name).await?;
    let in_flight = cursors.iter().filter(|c| c.in_flight()).count();
    if in_flight > 0 {
        tracing::info!(job = %name, in_flight, pending = %to, "waiting for in-flight slices");
        return Ok(());
    }
    if move_job(deps, &job, to, None, Some(to)).await? && to == JobStatus::Cancelled {
        schedule(deps).await?;
    }
    Ok(())
}

/// If the scheduler holds jobs of another write region than `current`, fail every one of them
/// that is incomplete (`WriteRegionChanged`). Returns how many jobs failed.
pub async fn enforce_region<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    current: &str,
) -> Result<usize, AwsError> {
    let mut failed = 0;
    loop {
        let sched = deps.store.scheduler().await?;
        let Some(entry) = sched.running.iter().chain(&sched.queued).find(|e| e.region != current).cloned() else {
            return Ok(failed);
        };
        match deps.store.get_job(&entry.job).await? {
            Some(job) if !job.status.is_final() => {
                let error = JobError {
                    code: "WriteRegionChanged".into(),
                    message: format!(
                        "the account's write region changed from {} to {current} while this job was {}; a job runs only in the write region it was created in. Re-create the job to copy in {current}",
                        job.write_region, job.status
                    ),
                };
                tracing::error!(job = %job.name, from = %job.write_region, to = current, "write region changed; failing the job");
                if move_job(deps, &job, JobStatus::Failed, Some(error), None).await? {
                    failed += 1;
                }
            }
            // Already final or gone: only its entry remains to drop.
            _ => {
                deps.store.write_scheduler(&sched.without(&entry.job)).await?;
            }
        }
    }
}
