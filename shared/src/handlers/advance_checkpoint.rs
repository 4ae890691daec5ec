use chrono::Utc;

use super::Deps;
use crate::control::slice_message;
use crate::error::HandlerError;
use crate::lineage::{self, Found};
use crate::messages::{encode, ChunkResult};
use crate::metrics::Metrics;
use crate::model::{Cursor, Item, Job, OnItemError};
use crate::pacing::{self, Pace};
use crate::queue::{Outbox, QueueKind};
use crate::replay::{self, TIP_POLL_SECONDS};
use crate::rules::committed_by;
use crate::store::{Commit, ControlStore, SliceCommit};
use crate::tables::Tables;

/// Commit a slice's result on its cursor exactly once, then send what comes next: the
/// segment's next slice, finalize when the job is done or must fail, or nothing when its
/// segment parked (the job is pausing, cancelling or final; the last segment to park settles
/// the request). The commit writes the cursor alone and decides from it
/// ([`crate::rules::commit_rule`]), so segments never contend for the job item.
///
/// A stale result changes no state and sends nothing. The one exception is a result whose
/// own commit is the cursor's last one (the cursor records the copy that wrote each commit):
/// an earlier delivery committed it and died before sending what follows, or the store's
/// answer was lost and its retry found its own write, so the follow-up is sent again (a
/// duplicate next slice is harmless: one copy at a time holds a segment).
pub async fn advance_checkpoint<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    msg: ChunkResult,
) -> Result<(), HandlerError> {
    let (store, control) = (&deps.store, deps.control());
    let job = store.get_job(&msg.job).await?.ok_or_else(|| HandlerError::JobNotFound(msg.job.to_string()))?;
    if job.owes_finalize() {
        // The final move's own finalize message may have died with its process: any later
        // result of the job asks again (finalize answers and publishes once).
        control.send_finalize(&job.name).await?;
    }
    let region = control.current_region().await?;
    if job.write_region != region && !job.status.is_final() {
        // The job fails now and its segments stop: the slice is still committed below (it parks).
        control.enforce_region(&region).await?;
    }

    if let Some(fatal) = msg.fatal.clone() {
        if !job.status.is_final() {
            tracing::error!(code = %fatal.code, message = %fatal.message, "slice failed; failing the job");
            control.send_failure(&job.name, Some(fatal)).await?;
        }
        return Ok(());
    }

    if job.spec.stream.is_some() && job.replay_from.is_none() && Utc::now() > replay::trim_by(&job) {
        // The snapshot outlasted what the stream keeps: the replay could not be complete.
        let error = replay::trimmed_error(&format!("its snapshot did not end by {}", replay::trim_by(&job)));
        control.send_failure(&job.name, Some(error)).await?;
    }
    let done = msg.segment_done();
    let (pace, delay) = paced(&job, &msg, deps.config.tuning.workers);
    let commit = SliceCommit {
        segment: msg.segment,
        seq: msg.seq,
        next_key: msg.next_key.clone().map(Item::from),
        done,
        items: msg.items_written,
        bytes: msg.bytes_written,
        rejected: msg.rejected_count,
        expired: msg.expired,
        throttles: msg.throttles,
        samples: msg.rejected_samples.clone(),
        at: Utc::now(),
        copy: msg.copy.clone(),
        rate: pace.as_ref().map(|p| p.rate),
        pass: msg.next_pass(),
        check: msg.check.clone(),
        shard: msg.shard.clone(),
    };
    let outcome = store.commit_slice(&msg.job, &commit).await?;
    let metrics = Metrics::new("advance-checkpoint", msg.job.as_str());
    match outcome {
        Commit::Stale => metrics.count("StaleResults", 1),
        Commit::Continued | Commit::Parked => metrics.count("Commits", 1),
    }
    .emit();
    match outcome {
        Commit::Continued => {
            tracing::info!(
                items = commit.items,
                rejected = commit.rejected,
                partial = msg.partial,
                "checkpoint advanced"
            );
            let cursor = Cursor {
                pass: commit.pass.unwrap_or(msg.pass),
                seq: msg.seq + 1,
                done,
                last_key: if commit.pass.is_some() { None } else { commit.next_key.clone() },
                shard: commit.shard.clone(),
                ..Cursor::start(msg.segment)
            };
            let next = Next { cursor, pace, delay: delay.max(tip_poll(&commit)) };
            follow_up(deps, &job, next, msg.rejected_count).await?;
            control.refresh_progress(&job, false).await?;
            Ok(())
        }
        Commit::Parked => {
            tracing::info!(items = commit.items, status = %job.status_label(), "checkpoint advanced; segment parked");
            parked(deps, &job, &commit).await
        }
        Commit::Stale => match store.cursor(&msg.job, msg.segment).await? {
            Some(c) if committed_by(&c, msg.seq, &msg.copy) && c.parked => parked(deps, &job, &commit).await,
            Some(c) if committed_by(&c, msg.seq, &msg.copy) => {
                tracing::info!("this result's commit is already on the cursor; sending its follow-up again");
                let next = Next { delay: delay.max(tip_poll(&commit)), cursor: c, pace };
                follow_up(deps, &job, next, msg.rejected_count).await
            }
            _ => {
                tracing::info!("stale or duplicate slice result ignored");
                Ok(())
            }
        },
    }
}

/// After a commit that parked its segment: items it rejected fail the job now (not after a
/// resume), the last segment to park settles a pending pause or cancel, and what a slice in
/// flight at a final move wrote is counted on the job.
async fn parked<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    job: &Job,
    commit: &SliceCommit,
) -> Result<(), HandlerError> {
    let control = deps.control();
    if commit.rejected > 0 && job.spec.on_item_error == OnItemError::Fail && !job.status.is_final() {
        control.send_finalize(&job.name).await?;
    }
    control.settle(&job.name).await?;
    if job.status.is_final() && commit.items + commit.rejected > 0 {
        control.refresh_progress(job, true).await?;
    }
    Ok(())
}

/// What a segment (or shard) that goes on owes next.
struct Next {
    /// Its cursor after the commit: where its next slice starts.
    cursor: Cursor,
    /// Its pace under the job's budget, and the seconds its next slice waits.
    pace: Option<Pace>,
    delay: u32,
}

/// A shard read to its tip is read again a little later, not at once.
fn tip_poll(commit: &SliceCommit) -> u32 {
    match &commit.shard {
        Some(s) if s.at_tip => TIP_POLL_SECONDS,
        _ => 0,
    }
}

/// The pace of the slice after `msg` under the job's budget, and the seconds it waits
/// (`None`, 0: not paced).
fn paced(job: &Job, msg: &ChunkResult, workers: u32) -> (Option<Pace>, u32) {
    let Some(pace) = &msg.pace else { return (None, 0) };
    let unfinished = job.spec.parallelism.saturating_sub(job.segments_done);
    let now = Utc::now();
    let items = msg.items_written + msg.rejected_count + msg.expired + msg.items_read;
    let started = msg.started_at.unwrap_or(now);
    let spec = pacing::for_pass(&job.spec, msg.pass);
    let (next, delay) = pacing::next(pace, &spec, unfinished, workers, items, msg.throttles, started, now);
    (Some(next), delay)
}

/// What a segment that goes on owes: its next slice, or, when it is done, finalize if it was
/// the last one. A segment in flight always gets its message, even if the job began pausing
/// meanwhile (that slice stops at once and its commit parks the segment).
async fn follow_up<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    job: &Job,
    next: Next,
    rejected: u64,
) -> Result<(), HandlerError> {
    if job.status.is_final() {
        tracing::info!(status = %job.status, "job is final; no further slice");
        return Ok(());
    }
    if rejected > 0 && job.spec.on_item_error == OnItemError::Fail {
        tracing::warn!(rejected, "items rejected; the job will fail");
        deps.control().send_finalize(&job.name).await?;
        return Ok(());
    }
    let c = &next.cursor;
    if !c.done {
        let msg = slice_message(job, c, c.seq, c.last_key.clone(), &deps.config.tuning, next.pace);
        if next.delay > 0 {
            deps.outbox.send_delayed(QueueKind::CopyChunk, encode(&msg), next.delay).await?;
        } else {
            deps.outbox.send(QueueKind::CopyChunk, vec![encode(&msg)]).await?;
        }
        return Ok(());
    }
    if c.shard.as_ref().is_some_and(|s| s.closed) && job.verify_started_at.is_none() {
        // A closed shard read to its end: its children are found and read now.
        match lineage::discover(&deps.store, &deps.tables, deps.streams.as_ref(), job).await? {
            Found::Lost(error) => return deps.control().send_failure(&job.name, Some(error)).await.map_err(Into::into),
            Found::Shards(_) => deps.control().launch(job).await?,
        }
    }
    // The segment is done: whoever sees every segment done sends finalize (two may: finalize
    // is idempotent).
    let cursors = deps.store.cursors(&job.name).await?;
    let done = cursors.iter().filter(|c| c.done).count();
    tracing::info!(segments_done = done, of = job.spec.parallelism, "segment done");
    if job.all_done(&cursors) {
        deps.control().send_finalize(&job.name).await?;
    }
    Ok(())
}
