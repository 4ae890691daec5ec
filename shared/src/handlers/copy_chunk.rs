use async_trait::async_trait;
use tokio::time::Instant;

use crate::config::Tuning;
use crate::engine::{copy_slice, Proceed, SliceControl, SliceOutcome};
use crate::error::{AwsError, HandlerError};
use crate::messages::{encode, ChunkResult, CopyChunk, VERSION};
use crate::model::JobError;
use crate::queue::{Outbox, QueueKind};
use crate::rules::{slice_rule, Guard};
use crate::store::CursorStore;
use crate::tables::Tables;

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
pub async fn copy_chunk<T: Tables + ?Sized, C: CursorStore + ?Sized, Q: Outbox + ?Sized>(
    tables: &T,
    cursors: &C,
    outbox: &Q,
    tuning: &Tuning,
    msg: CopyChunk,
    stop_at: Instant,
) -> Result<(), HandlerError> {
    let guard = Segment { cursors, msg: &msg };
    let outcome = match guard.check().await? {
        Proceed::Abandon => {
            tracing::info!("slice not expected (segment done, parked, or moved on); nothing written");
            return Ok(());
        }
        Proceed::Stop => Ok(Some(SliceOutcome::default().ended_at(msg.start_key.clone().map(Into::into)))),
        Proceed::Go => copy_slice(tables, &msg, tuning, &guard, stop_at).await,
    };
    let (slice, fatal) = match outcome {
        Ok(Some(slice)) => {
            tracing::info!(
                items = slice.items_written,
                bytes = slice.bytes_written,
                rejected = slice.rejected_count,
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
    let result = ChunkResult {
        v: VERSION,
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
    };
    outbox.send(QueueKind::Checkpoint, vec![encode(&result)]).await?;
    Ok(())
}

/// The slice's segment, asked whether the slice may write.
struct Segment<'a, C: ?Sized> {
    cursors: &'a C,
    msg: &'a CopyChunk,
}

impl<C: CursorStore + ?Sized> Segment<'_, C> {
    /// Before the first write: a parked cursor whose launch has not marked it yet is claimed.
    async fn check(&self) -> Result<Proceed, AwsError> {
        let (job, segment, seq) = (&self.msg.job, self.msg.segment, self.msg.seq);
        loop {
            let cursor = self.cursors.cursor(job, segment).await?;
            return Ok(match slice_rule(cursor.as_ref(), seq) {
                Guard::Go => Proceed::Go,
                Guard::Stop => Proceed::Stop,
                Guard::Drop => Proceed::Abandon,
                Guard::Claim => {
                    if self.cursors.unpark(job, segment, seq, chrono::Utc::now()).await? {
                        Proceed::Go
                    } else {
                        // It changed meanwhile (launched, stopped, or moved on): look again.
                        continue;
                    }
                }
            });
        }
    }
}

#[async_trait]
impl<C: CursorStore + ?Sized> SliceControl for Segment<'_, C> {
    /// Between pages. The slice marked its cursor in flight before its first write, and only
    /// a commit parks a cursor again (moving it on), so a parked cursor here means another
    /// copy of this slice committed: abandon.
    async fn proceed(&self) -> Result<Proceed, AwsError> {
        let cursor = self.cursors.cursor(&self.msg.job, self.msg.segment).await?;
        Ok(match slice_rule(cursor.as_ref(), self.msg.seq) {
            Guard::Go => Proceed::Go,
            Guard::Stop => Proceed::Stop,
            Guard::Drop | Guard::Claim => Proceed::Abandon,
        })
    }
}
