use super::custom_resource::answer_waiting;
use super::Deps;
use crate::error::{AwsError, ErrorKind, HandlerError};
use crate::lineage::{self, Found};
use crate::messages::Finalize;
use crate::model::{
    Cursor, Job, JobError, JobStatus, MismatchKind, OnItemError, Phase, Progress, SegmentCheck, Verification,
    VerifyMode,
};
use crate::queue::Outbox;
use crate::replay;
use crate::store::{conflict_pause, ControlStore, Milestone};
use crate::tables::Tables;
use chrono::Utc;

/// How often finalize reads the job again when it changed between its read and its move.
const FINALIZE_ATTEMPTS: u32 = 8;

/// Move the job to its final state: `Failed` with the reason it was given or that its cursors
/// show (rejected items), else `Completed` once every segment is done. The counters recorded
/// with the move are the sum of the cursors. Then start the next queued job. A final job
/// whose CloudFormation resource waits gets its answer here (the final move sends one more
/// finalize message for it). A premature or duplicate finalize changes nothing (but still lets
/// the scheduler look for a queued job, which makes it a safe nudge).
pub async fn finalize<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    msg: Finalize,
) -> Result<(), HandlerError> {
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
        let mut failure = msg.failure.clone().or_else(|| {
            rejected.then(|| JobError {
                code: "ItemsRejected".into(),
                message: job.clone().with_progress(&progress).rejected_message(),
            })
        });
        let mut verification = None;
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
            // Online: the snapshot is followed by the replay of the stream until `complete`.
            if job.spec.stream.is_some() && progress.phase == Phase::Copying {
                match replay_step(deps, &job).await? {
                    Step::Wait => break,
                    Step::Retry => {
                        conflict_pause(attempt).await;
                        continue;
                    }
                    Step::Fail(error) => failure = Some(error),
                    Step::Verify => {}
                }
            }
            // Shard cursors take no part in the verification.
            let segments: Vec<Cursor> = cursors.iter().filter(|c| c.shard.is_none()).cloned().collect();
            if failure.is_none() && job.spec.verify == VerifyMode::Full {
                match verified(&job, &segments) {
                    Verdict::Begin(phase) => {
                        // The copy ends here: recorded once, before any segment verifies (a job
                        // that changed meanwhile, e.g. paused, is read again).
                        let unmarked = phase == Phase::Verifying && job.verify_started_at.is_none();
                        if unmarked && !store.mark(&job.name, Milestone::Verifying, chrono::Utc::now()).await? {
                            conflict_pause(attempt).await;
                            continue;
                        }
                        control.begin_phase(&job, &segments, phase).await?;
                        break;
                    }
                    Verdict::Differs(v) => {
                        // Recorded once (the keyed pass reads its buckets); a job that
                        // changed meanwhile is read again.
                        if store.set_verification(&job.name, &v).await? {
                            tracing::warn!(summary = %v.summary(), repair = job.spec.repair, "checksums differ; locating the items");
                            control.begin_phase(&job, &segments, after_checksums(&job)).await?;
                            break;
                        }
                        conflict_pause(attempt).await;
                        continue;
                    }
                    Verdict::Final(v, error) => {
                        failure = error;
                        verification = Some(v);
                    }
                }
            }
        }
        let to = if failure.is_some() { JobStatus::Failed } else { JobStatus::Completed };
        if control.end_job(&job, to, failure.clone(), None, Some(progress.clone()), verification).await? {
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

/// What an online job whose snapshot is copied does next.
enum Step {
    /// Nothing now: its shards are read (or wait for `complete`).
    Wait,
    /// The job changed meanwhile: read it again.
    Retry,
    Fail(JobError),
    /// Every shard drained after `complete`: verify.
    Verify,
}

/// Online, every segment copied: begin the replay (once no snapshot slice can still write:
/// the longest a slice lives, from now), give every shard of the stream a cursor and read
/// them; once every shard drained after `complete`, verify.
async fn replay_step<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    job: &Job,
) -> Result<Step, HandlerError> {
    let (store, control) = (&deps.store, deps.control());
    if job.replay_from.is_none() {
        let wait = chrono::Duration::from_std(deps.config.tuning.copy_visibility).unwrap_or_default();
        let from = Utc::now() + wait;
        if from > replay::trim_by(job) {
            return Ok(Step::Fail(replay::trimmed_error(&format!(
                "its replay would begin after {}",
                replay::trim_by(job)
            ))));
        }
        if !store.mark(&job.name, Milestone::Replay, from).await? {
            return Ok(Step::Retry);
        }
        tracing::info!(job = %job.name, replay_from = %from, "snapshot copied; the replay of the stream begins");
    }
    let Some(job) = store.get_job(&job.name).await? else { return Ok(Step::Wait) };
    match lineage::discover(store, &deps.tables, deps.streams.as_ref(), &job).await? {
        Found::Lost(error) => return Ok(Step::Fail(error)),
        Found::Shards(0) => {}
        Found::Shards(_) => {
            control.launch(&job).await?;
            return Ok(Step::Wait);
        }
    }
    if !job.all_done(&store.cursors(&job.name).await?) {
        control.launch(&job).await?;
        return Ok(Step::Wait);
    }
    if job.complete_requested_at.is_none() {
        // Every shard known ended and no child is listed yet: the reconciler looks again.
        return Ok(Step::Wait);
    }
    tracing::info!(job = %job.name, "every shard drained; the verification begins");
    Ok(Step::Verify)
}

/// What a job whose segments are all done in their phase does next, when it verifies.
enum Verdict {
    /// Start this phase on its segments.
    Begin(Phase),
    /// The checksums differ: record this and locate the items that differ.
    Differs(Verification),
    /// The job ends: `Completed` with this verification, or `Failed` with the error.
    Final(Verification, Option<JobError>),
}

fn verified(job: &Job, cursors: &[Cursor]) -> Verdict {
    let phase = cursors.iter().map(|c| c.pass.phase()).min().unwrap_or_default();
    let latest = cursors.iter().map(|c| c.pass.phase()).max().unwrap_or_default();
    let sum = SegmentCheck::sum(cursors.iter().filter_map(|c| c.check.as_ref()));
    match phase {
        Phase::Copying => Verdict::Begin(Phase::Verifying),
        // The keyed pass was decided (a finalize died while starting it): finish starting it.
        Phase::Verifying if job.verification.is_some() || latest > Phase::Verifying => {
            Verdict::Begin(after_checksums(job))
        }
        // What the repair wrote is checked again, bucket by bucket.
        Phase::Repairing => Verdict::Begin(Phase::Locating),
        Phase::Verifying => {
            let v = Verification {
                source: sum.source.total(),
                target: sum.target.total(),
                skipped: sum.skipped,
                differing_buckets: sum.source.differing_buckets(&sum.target),
                ..Default::default()
            };
            if v.matched() {
                Verdict::Final(Verification { passed: true, ..v }, None)
            } else {
                Verdict::Differs(v)
            }
        }
        Phase::Locating => {
            let v = Verification {
                missing: sum.missing,
                different: sum.different,
                extra: sum.extra,
                collisions: sum.collisions,
                samples: sum.samples.clone(),
                repaired_put: sum.put,
                repaired_deleted: sum.deleted,
                ..job.verification.clone().unwrap_or_default()
            };
            // Items the target held before the job are not the copy's: reported, not failed.
            let extra_allowed = job.target_empty_at_start == Some(false);
            let nothing_found = v.missing + v.different + v.extra + v.collisions == 0;
            // Colliding items fail the job unless it skips items the target cannot hold.
            let collisions_fail = v.collisions > 0 && job.spec.on_item_error == OnItemError::Fail;
            // Without a repair in between, a keyed pass that finds nothing where the checksums
            // differed means a table changed meanwhile.
            let failed = v.missing + v.different > 0
                || (v.extra > 0 && !extra_allowed)
                || collisions_fail
                || (nothing_found && !job.spec.repair);
            let v = Verification { passed: !failed, ..v };
            let error = failed.then(|| {
                let only_collisions = v.missing + v.different == 0 && (v.extra == 0 || extra_allowed);
                match collisions_fail && only_collisions {
                    true => JobError { code: "TargetKeyCollision".into(), message: collision_message(job, &v) },
                    false => JobError { code: "VerificationFailed".into(), message: failed_message(job, &v) },
                }
            });
            Verdict::Final(v, error)
        }
    }
}

/// The phase after checksums that differ: the repair (which the keyed pass then checks), or
/// the keyed pass alone.
fn after_checksums(job: &Job) -> Phase {
    if job.spec.repair {
        Phase::Repairing
    } else {
        Phase::Locating
    }
}

fn collision_message(job: &Job, v: &Verification) -> String {
    let samples: Vec<String> = v
        .samples
        .iter()
        .filter(|m| m.kind == MismatchKind::Collision)
        .map(|m| format!("{} and {}", m.key, m.other.as_deref().unwrap_or("?")))
        .collect();
    format!(
        "{} source item(s) of {} map to a target key of {} [{}] that another source item maps to as well, so the target holds only one of each pair; samples: {}. Choose a target key that is unique per source item, or re-create the job with --on-item-error skip to keep one item per target key",
        v.collisions,
        job.spec.source,
        job.spec.target,
        job.spec.target_key,
        samples.join("; ")
    )
}

fn failed_message(job: &Job, v: &Verification) -> String {
    let counts = format!(
        "verification failed: {} has {} items (hash {}), {} has {} items (hash {})",
        job.spec.source,
        v.source.items,
        &v.source.hash.to_string()[..16],
        job.spec.target,
        v.target.items,
        &v.target.hash.to_string()[..16],
    );
    if v.missing + v.different + v.extra == 0 {
        return format!(
            "{counts}, but a second, keyed look found no item that differs: a table changed while the job verified it. Stop every write to both tables and re-create the job"
        );
    }
    let samples: Vec<String> = v.samples.iter().map(ToString::to_string).collect();
    format!(
        "{counts}; {} missing, {} different, {} extra in the target, {} colliding{}; samples: {}. The target does not equal the source: find what wrote to either table during the copy, then empty the target and re-create the job{}",
        v.missing,
        v.different,
        v.extra,
        v.collisions,
        if job.spec.repair {
            format!(" after a repair that put {} and deleted {} item(s)", v.repaired_put, v.repaired_deleted)
        } else {
            String::new()
        },
        samples.join("; "),
        if job.spec.repair { "" } else { " (or with --repair, to write what differs)" }
    )
}
