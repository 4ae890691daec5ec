use async_trait::async_trait;
use chrono::Utc;
use tokio::time::Instant;

use crate::config::Tuning;
use crate::engine::{copy_slice, Proceed, SliceControl, SliceOutcome};
use crate::error::{AwsError, HandlerError};
use crate::messages::{encode, ChunkResult, CopyChunk, VERSION};
use crate::metrics::Metrics;
use crate::model::{JobError, Pass, SegmentCheck};
use crate::queue::{Outbox, QueueKind};
use crate::replay::replay_slice;
use crate::rules::{slice_rule, Guard};
use crate::store::ControlStore;
use crate::streams::Streams;
use crate::tables::Tables;
use crate::verify::check_slice;

/// Copy one slice, then report what was written and where the next slice starts to the
/// checkpoint queue. It never moves the cursor itself.
///
/// It writes only while the slice's segment expects it ([`slice_rule`]), read consistently
/// from the cursor before the first write and again between pages: a late, duplicated or
/// redriven message of a finished, parked or final segment writes nothing to the user's
/// tables. When a pause, cancel or final move reaches the segment mid-slice, the slice stops
/// at a page boundary and still reports (with zero items if it wrote none), so the segment
/// parks. It ends at a page boundary by `stop_at`, well before its invocation's deadline.
/// A permanent failure (e.g. a table was deleted) is reported too, so the job fails with the
/// reason.
pub async fn copy_chunk<T: Tables + ?Sized, R: Streams + ?Sized, S: ControlStore + ?Sized, Q: Outbox + ?Sized>(
    tables: &T,
    streams: &R,
    store: &S,
    outbox: &Q,
    tuning: &Tuning,
    msg: CopyChunk,
    deadline: Instant,
) -> Result<(), HandlerError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let margin = super::stop_margin(deadline.saturating_duration_since(Instant::now()));
    let stop_at = deadline - margin;
    // The hold on the segment outlasts the slice's last write (cut at `stop_at`) and runs out
    // before the invocation's deadline, hence before SQS could deliver the message again.
    let hold_until = Utc::now()
        + chrono::Duration::from_std(stop_at.saturating_duration_since(Instant::now()) + margin / 2)
            .unwrap_or_default();
    let guard = Segment { store, msg: &msg, copy: new_copy_token() };
    let (proceed, check) = guard.check(hold_until).await?;
    let outcome = match proceed {
        Proceed::Abandon => {
            tracing::info!("slice not expected (job final, segment done, parked, or moved on); nothing written");
            return Ok(());
        }
        Proceed::Stop => Ok(Some(SliceOutcome {
            shard: msg.shard.as_ref().map(|s| s.cursor.clone()),
            ..SliceOutcome::default().ended_at(msg.start_key.clone().map(Into::into))
        })),
        Proceed::Go if msg.pass.is_copy() => copy_slice(tables, &msg, tuning, &guard, stop_at).await,
        Proceed::Go if msg.pass == Pass::Replay => match &msg.shard {
            Some(read) => replay_slice(tables, streams, &msg, read, tuning, &guard, stop_at).await,
            None => Err(AwsError::new(
                crate::error::ErrorKind::Other,
                format!("replaying segment {} of job {}", msg.segment, msg.job),
                "the message names no shard (the job has no stream or no replay start): the replay cannot go on",
            )),
        },
        Proceed::Go => check_slice(tables, &msg, check.unwrap_or_default(), tuning, &guard, stop_at).await,
    };
    let (slice, fatal) = match outcome {
        Ok(Some(slice)) => {
            tracing::info!(
                items = slice.items_written,
                bytes = slice.bytes_written,
                rejected = slice.rejected_count,
                read = slice.items_read,
                pass = msg.pass.as_str(),
                partial = slice.partial,
                segment_done = slice.next_key.is_none() && !slice.partial,
                "slice copied"
            );
            (slice, None)
        }
        Ok(None) => {
            tracing::info!("slice abandoned: its segment moved on meanwhile");
            return Ok(());
        }
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "slice failed permanently");
            let code = e.code().unwrap_or("CopyFailed").to_string();
            // The cursor stays where it was.
            let unchanged = SliceOutcome::default().ended_at(msg.start_key.clone().map(Into::into));
            (unchanged, Some(JobError { code, message: e.to_string() }))
        }
    };
    Metrics::new("copy-chunk", msg.job.as_str())
        .count("Slices", 1)
        .count("ItemsCopied", slice.items_written)
        .bytes("BytesCopied", slice.bytes_written)
        .count("ItemsRejected", slice.rejected_count)
        .count("ItemsVerified", slice.items_read)
        .count("ItemsExpired", slice.expired)
        .count("Throttles", slice.throttles)
        .millis("SliceDuration", started.elapsed().as_millis() as u64)
        .emit();
    let result = ChunkResult {
        v: VERSION,
        copy: guard.copy.clone(),
        job: msg.job,
        segment: msg.segment,
        seq: msg.seq,
        items_written: slice.items_written,
        bytes_written: slice.bytes_written,
        rejected_count: slice.rejected_count,
        rejected_samples: slice.rejected_samples,
        next_key: slice.next_key.map(Into::into),
        fatal,
        partial: slice.partial,
        throttles: slice.throttles,
        pace: msg.pace.clone(),
        started_at: Some(started_at),
        pass: msg.pass,
        items_read: slice.items_read,
        expired: slice.expired,
        check: slice.check,
        shard: slice.shard,
    };
    outbox.send(QueueKind::Checkpoint, vec![encode(&result)]).await?;
    Ok(())
}

/// A token of its own for each copy of a slice: the invocation that holds the segment.
fn new_copy_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The slice's segment, asked whether this copy of the slice may write.
struct Segment<'a, S: ?Sized> {
    store: &'a S,
    msg: &'a CopyChunk,
    copy: String,
}

impl<S: ControlStore + ?Sized> Segment<'_, S> {
    /// Before the first write: the job must not be final, and this copy takes the segment
    /// until `until` (by which it has stopped writing), so no other copy of the slice writes
    /// meanwhile. With the segment's verification state as the cursor holds it at this slice.
    async fn check(&self, until: chrono::DateTime<Utc>) -> Result<(Proceed, Option<SegmentCheck>), HandlerError> {
        let (job, segment, seq) = (&self.msg.job, self.msg.segment, self.msg.seq);
        // A final move stops the cursors after it is written; a crash in between must not let
        // a late slice write.
        if self.store.get_job(job).await?.is_none_or(|j| j.status.is_final()) {
            return Ok((Proceed::Abandon, None));
        }
        loop {
            let cursor = self.store.cursor(job, segment).await?;
            let check = cursor.as_ref().and_then(|c| c.check.clone());
            let now = Utc::now();
            let proceed = match slice_rule(cursor.as_ref(), self.msg.pass, seq, &self.copy, now) {
                Guard::Go => Proceed::Go,
                Guard::Stop => Proceed::Stop,
                Guard::Drop => Proceed::Abandon,
                Guard::Busy => {
                    let holder = cursor.and_then(|c| c.lease_until).unwrap_or(now);
                    return Err(HandlerError::Busy(format!(
                        "another copy of slice {seq} of segment {segment} holds it until {holder}; this message comes back later"
                    )));
                }
                Guard::Claim => {
                    if self.store.claim(job, segment, seq, &self.copy, until, now).await? {
                        Proceed::Go
                    } else {
                        // It changed meanwhile (taken, stopped, or moved on): look again.
                        continue;
                    }
                }
            };
            return Ok((proceed, check));
        }
    }
}

#[async_trait]
impl<S: ControlStore + ?Sized> SliceControl for Segment<'_, S> {
    /// Between pages: this copy still holds the segment, which still expects the slice.
    /// Anything else (another copy committed it, or took it after this one's lease ran out)
    /// abandons the slice.
    async fn proceed(&self) -> Result<Proceed, AwsError> {
        let cursor = self.store.cursor(&self.msg.job, self.msg.segment).await?;
        Ok(match slice_rule(cursor.as_ref(), self.msg.pass, self.msg.seq, &self.copy, Utc::now()) {
            Guard::Go => Proceed::Go,
            Guard::Stop => Proceed::Stop,
            Guard::Drop | Guard::Claim | Guard::Busy => Proceed::Abandon,
        })
    }
}
