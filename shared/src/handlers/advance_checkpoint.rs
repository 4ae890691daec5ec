use chrono::Utc;

use super::create_job::slice_message;
use crate::config::Tuning;
use crate::error::HandlerError;
use crate::messages::{encode, ChunkResult, Finalize, VERSION};
use crate::model::{Cursor, Item, Job, JobStatus, OnItemError, MAX_REJECTED_SAMPLES};
use crate::queue::{Outbox, QueueKind};
use crate::store::{Commit, ControlStore, SliceCommit};

/// Commit a slice's result on its cursor and the job's counters exactly once, then send what
/// comes next: the segment's next slice, or finalize when the job is done or must fail.
///
/// A duplicate or stale result changes no state. If it is a duplicate of the slice committed
/// last, the follow-up message is sent again: the first delivery may have died between its
/// commit and its send, and a repeated follow-up is harmless (its own result would be stale).
pub async fn advance_checkpoint<S: ControlStore + ?Sized, Q: Outbox + ?Sized>(
    store: &S,
    outbox: &Q,
    tuning: &Tuning,
    msg: ChunkResult,
) -> Result<(), HandlerError> {
    let job = store.get_job(&msg.job).await?.ok_or_else(|| HandlerError::JobNotFound(msg.job.to_string()))?;

    if let Some(fatal) = msg.fatal {
        if !job.status.is_final() {
            tracing::error!(code = %fatal.code, message = %fatal.message, "slice failed; failing the job");
            let f = Finalize { v: VERSION, job: msg.job, failure: Some(fatal) };
            outbox.send(QueueKind::Finalize, vec![encode(&f)]).await?;
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
    let (cursor, rejected_total) = match store.commit_slice(&msg.job, &commit).await? {
        Commit::Applied => {
            tracing::info!(items = commit.items, rejected = commit.rejected, "checkpoint advanced");
            let cursor = Cursor {
                segment: msg.segment,
                seq: msg.seq + 1,
                done: commit.next_key.is_none(),
                last_key: commit.next_key,
                items: 0,
            };
            (cursor, job.items_rejected + commit.rejected)
        }
        Commit::Stale => {
            let cursor = store.cursors(&msg.job).await?.into_iter().find(|c| c.segment == msg.segment);
            match cursor {
                Some(c) if c.seq == msg.seq + 1 => {
                    tracing::info!("duplicate of the last committed slice; sending its follow-up again");
                    (c, job.items_rejected)
                }
                _ => {
                    tracing::info!("stale slice result ignored");
                    return Ok(());
                }
            }
        }
    };
    follow_up(store, outbox, tuning, &job, &cursor, rejected_total).await
}

async fn follow_up<S: ControlStore + ?Sized, Q: Outbox + ?Sized>(
    store: &S,
    outbox: &Q,
    tuning: &Tuning,
    job: &Job,
    cursor: &Cursor,
    rejected_total: u64,
) -> Result<(), HandlerError> {
    if job.status != JobStatus::Running {
        tracing::info!(status = %job.status, "job is not running; no further slice");
        return Ok(());
    }
    let finalize = || encode(&Finalize { v: VERSION, job: job.name.clone(), failure: None });
    if rejected_total > 0 && job.spec.on_item_error == OnItemError::Fail {
        tracing::warn!(rejected = rejected_total, "items rejected; the job will fail");
        outbox.send(QueueKind::Finalize, vec![finalize()]).await?;
        return Ok(());
    }
    if !cursor.done {
        let next = slice_message(job, cursor.segment, cursor.seq, cursor.last_key.clone(), tuning.slice);
        outbox.send(QueueKind::CopyChunk, vec![encode(&next)]).await?;
        return Ok(());
    }
    // The segment is done: the last one to finish sends finalize.
    let now = store.get_job(&job.name).await?.ok_or_else(|| HandlerError::JobNotFound(job.name.to_string()))?;
    tracing::info!(segments_done = now.segments_done, of = now.spec.parallelism, "segment done");
    if now.segments_done >= now.spec.parallelism {
        outbox.send(QueueKind::Finalize, vec![finalize()]).await?;
    }
    Ok(())
}
