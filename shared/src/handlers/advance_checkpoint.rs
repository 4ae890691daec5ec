use chrono::Utc;

use super::create_job::slice_message;
use super::lifecycle::{current_region, enforce_region, send_finalize, settle};
use super::Deps;
use crate::error::HandlerError;
use crate::messages::{encode, ChunkResult, Finalize, VERSION};
use crate::model::{Cursor, Item, Job, OnItemError, StackOrigin, MAX_REJECTED_SAMPLES};
use crate::queue::{Outbox, QueueKind};
use crate::store::{Commit, ControlStore, SliceCommit};

/// Commit a slice's result on its cursor and the job's counters exactly once, then send what
/// comes next: the segment's next slice, finalize when the job is done or must fail, or
/// nothing when the job is pausing or cancelling (the cursor parks, and the last one to park
/// settles the request).
///
/// A stale result changes no state and sends nothing. The one exception is a result that was
/// delivered before (`attempt` > 1) and is the segment's last committed one: the earlier
/// delivery may have died between its commit and its send, so the follow-up is sent again.
/// A first delivery of a duplicate (two copies of one slice were sent, e.g. by a repeated
/// launch) is dropped, so duplicates die out after one slice.
pub async fn advance_checkpoint<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    msg: ChunkResult,
    attempt: u32,
) -> Result<(), HandlerError> {
    let store = &deps.store;
    let job = store.get_job(&msg.job).await?.ok_or_else(|| HandlerError::JobNotFound(msg.job.to_string()))?;
    if job.status.is_final() && StackOrigin::awaits_answer(&job) {
        // The final move's own finalize message may have died with its process: any later
        // result of the job asks again (finalize answers once).
        send_finalize(deps, &job.name).await?;
    }
    let region = current_region(deps).await?;
    if job.write_region != region && !job.status.is_final() {
        // The job fails now; the slice is still committed below (it parks).
        enforce_region(deps, &region).await?;
    }

    if let Some(fatal) = msg.fatal {
        if !job.status.is_final() {
            tracing::error!(code = %fatal.code, message = %fatal.message, "slice failed; failing the job");
            let f = Finalize { v: VERSION, job: msg.job, failure: Some(fatal) };
            deps.outbox.send(QueueKind::Finalize, vec![encode(&f)]).await?;
        }
        return Ok(());
    }

    let room = MAX_REJECTED_SAMPLES.saturating_sub(job.rejected_samples.len());
    let commit = SliceCommit {
        segment: msg.segment,
        seq: msg.seq,
        next_key: msg.next_key.map(Item::from),
        items: msg.items_written,
        bytes: msg.bytes_written,
        rejected: msg.rejected_count,
        samples: msg.rejected_samples.into_iter().take(room).collect(),
        at: Utc::now(),
    };
    match store.commit_slice(&msg.job, &commit).await? {
        Commit::Continued => {
            tracing::info!(items = commit.items, rejected = commit.rejected, "checkpoint advanced");
            let cursor = Cursor {
                segment: msg.segment,
                seq: msg.seq + 1,
                done: commit.next_key.is_none(),
                last_key: commit.next_key,
                items: 0,
                parked: false,
            };
            follow_up(deps, &job, &cursor, job.items_rejected + commit.rejected).await
        }
        Commit::Parked => {
            tracing::info!(items = commit.items, status = %job.status, "checkpoint advanced; segment parked");
            Ok(settle(deps, &msg.job).await?)
        }
        Commit::Stale if attempt > 1 => {
            let cursor = store.cursors(&msg.job).await?.into_iter().find(|c| c.segment == msg.segment);
            match cursor {
                Some(c) if c.seq == msg.seq + 1 && c.parked => Ok(settle(deps, &msg.job).await?),
                Some(c) if c.seq == msg.seq + 1 => {
                    tracing::info!(attempt, "redelivery of the last committed slice; sending its follow-up again");
                    follow_up(deps, &job, &c, job.items_rejected).await
                }
                _ => {
                    tracing::info!(attempt, "stale slice result ignored");
                    Ok(())
                }
            }
        }
        Commit::Stale => {
            tracing::info!("stale or duplicate slice result ignored");
            Ok(())
        }
    }
}

/// What an unparked cursor owes: its next slice, or, when its segment is done, finalize if it
/// was the last one. A cursor left unparked always gets its message, even if the job began
/// pausing meanwhile (that slice's commit will park it).
async fn follow_up<S: ControlStore, Q: Outbox, T>(
    deps: &Deps<S, Q, T>,
    job: &Job,
    cursor: &Cursor,
    rejected_total: u64,
) -> Result<(), HandlerError> {
    if job.status.is_final() {
        tracing::info!(status = %job.status, "job is final; no further slice");
        return Ok(());
    }
    if rejected_total > 0 && job.spec.on_item_error == OnItemError::Fail {
        tracing::warn!(rejected = rejected_total, "items rejected; the job will fail");
        send_finalize(deps, &job.name).await?;
        return Ok(());
    }
    if !cursor.done {
        let next = slice_message(job, cursor.segment, cursor.seq, cursor.last_key.clone(), deps.config.tuning.slice);
        deps.outbox.send(QueueKind::CopyChunk, vec![encode(&next)]).await?;
        return Ok(());
    }
    // The segment is done: the last one to finish sends finalize.
    let now = deps.store.get_job(&job.name).await?.ok_or_else(|| HandlerError::JobNotFound(job.name.to_string()))?;
    tracing::info!(segments_done = now.segments_done, of = now.spec.parallelism, "segment done");
    if now.segments_done >= now.spec.parallelism {
        send_finalize(deps, &job.name).await?;
    }
    Ok(())
}
