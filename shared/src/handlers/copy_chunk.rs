use crate::config::Tuning;
use crate::engine::{copy_slice, SliceOutcome};
use crate::error::HandlerError;
use crate::messages::{encode, ChunkResult, CopyChunk, VERSION};
use crate::model::JobError;
use crate::queue::{Outbox, QueueKind};
use crate::tables::Tables;

/// Copy one slice, then report what was written and where the next slice starts to the
/// checkpoint queue. It never moves the cursor itself. A permanent failure (e.g. a table was
/// deleted) is reported too, so advance-checkpoint can fail the job with the reason.
pub async fn copy_chunk<T: Tables + ?Sized, Q: Outbox + ?Sized>(
    tables: &T,
    outbox: &Q,
    tuning: &Tuning,
    msg: CopyChunk,
) -> Result<(), HandlerError> {
    let (slice, fatal) = match copy_slice(tables, &msg, tuning).await {
        Ok(slice) => {
            tracing::info!(
                items = slice.items_written,
                bytes = slice.bytes_written,
                rejected = slice.rejected_count,
                segment_done = slice.next_key.is_none(),
                "slice copied"
            );
            (slice, None)
        }
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "slice failed permanently");
            let code = e.code().unwrap_or("CopyFailed").to_string();
            // The cursor stays where it was.
            let unchanged = SliceOutcome { next_key: msg.start_key.clone().map(Into::into), ..Default::default() };
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
    };
    outbox.send(QueueKind::Checkpoint, vec![encode(&result)]).await?;
    Ok(())
}
