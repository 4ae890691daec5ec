//! Replay slices (online mode): read one shard of the source's stream from its cursor and
//! apply its records to the target in order, page by page, until the slice's limits, the
//! shard's tip, its end, a stop, or the deadline. A page is applied in parts (what the slice
//! writes at once), and the cursor moves past a part only once the part is applied: a part cut
//! at the deadline or by a write error leaves the cursor after the previous one, and the next
//! slice applies it again (applying a record twice, in order, ends in the same state). Records
//! older than the job's start less a margin are skipped: the snapshot read their effect.
//!
//! Within a part, the records of one source item collapse in order to its last state: a put
//! of its newest image, or its removal. With a target keyed by other attributes than the
//! source's key, every older target key the item had (from its old images) is deleted, only
//! while that target item still belongs to it (a condition on its source-key attributes), so a
//! delete never removes another source item's copy that took the key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::time::{timeout_at, Instant};

use crate::config::Tuning;
use crate::engine::{delete, write_page, Proceed, SliceControl, SliceOutcome, BATCH};
use crate::error::{AwsError, ErrorKind};
use crate::messages::{CopyChunk, Drain, ShardRead};
use crate::model::{render_key, Item, Job, JobError, KeySchema, ShardCursor};
use crate::streams::{is, Position, Record, Streams, EXPIRED_ITERATOR, TRIMMED};
use crate::tables::Tables;

/// The error code that fails a job whose stream no longer holds what its replay needs.
pub const STREAM_TRIMMED: &str = "StreamTrimmed";

/// Times a slice renews an expired iterator before it gives the message back.
const RENEWALS: u32 = 3;
/// A stored iterator is used for this long after it was issued (it expires after 15 minutes).
const ITERATOR_FRESH_MINUTES: i64 = 10;

/// Records changed up to this long before the job's start are replayed too: change times
/// are approximate and rounded down to the second (replaying a change the snapshot saw is
/// harmless; missing one is not).
pub const SINCE_MARGIN_SECONDS: i64 = 300;
/// DynamoDB Streams keeps a record 24 hours; the replay must begin this much earlier.
const RETENTION_SAFETY_SECONDS: i64 = 3_600;
/// A shard whose last read was at its tip is read again after this long.
pub const TIP_POLL_SECONDS: u32 = 1;

/// The oldest change an online job replays: its start (T0) less the margin.
pub fn since(job: &Job) -> DateTime<Utc> {
    job.started_at.unwrap_or_else(Utc::now) - chrono::Duration::seconds(SINCE_MARGIN_SECONDS)
}

/// The latest time the replay may begin reading a shard from its trim horizon: the records
/// from [`since`] are trimmed 24 hours after it (less a safety bound).
pub fn trim_by(job: &Job) -> DateTime<Utc> {
    read_by(since(job))
}

/// The latest time a read from a trim horizon still finds every record changed from `oldest`
/// on: they are trimmed 24 hours after it (less a safety bound).
fn read_by(oldest: DateTime<Utc>) -> DateTime<Utc> {
    oldest + chrono::Duration::hours(24) - chrono::Duration::seconds(RETENTION_SAFETY_SECONDS)
}

/// What a replay slice of `cursor`'s shard reads, for `job` as it is now (after `complete`,
/// its shards drain once they stay empty for `settle`).
///
/// A read of the shard from its trim horizon (while no record of it was read) must begin
/// within 23 hours of the oldest change it may hold that the job needs: [`since`], or the
/// shard's floor if later (see [`crate::model::ShardCursor::floor`]).
pub fn shard_read(job: &Job, cursor: &ShardCursor, settle: std::time::Duration) -> Option<ShardRead> {
    let since = since(job);
    Some(ShardRead {
        stream: job.spec.stream.as_ref()?.arn.clone(),
        cursor: cursor.clone(),
        since,
        replay_from: job.replay_from?,
        trim_by: read_by(cursor.floor.map_or(since, |floor| floor.max(since))),
        drain: job
            .complete_requested_at
            .map(|after| Drain { after, settle_ms: settle.as_millis().min(u128::from(u64::MAX)) as u64 }),
    })
}

/// The `StreamTrimmed` failure of a job, with what to do.
pub fn trimmed_error(detail: &str) -> JobError {
    JobError {
        code: STREAM_TRIMMED.into(),
        message: format!(
            "the source's stream may no longer hold the changes this job must replay ({detail}); DynamoDB Streams keeps them 24 hours. Re-create the job, with a higher --max-write-rate / --max-read-rate or more Workers so that its snapshot ends sooner"
        ),
    }
}

/// [`trimmed_error`] as a slice's permanent failure.
fn trimmed(shard: &str, detail: &str) -> AwsError {
    AwsError::new(
        ErrorKind::Other,
        format!("reading shard {shard} of the source's stream"),
        trimmed_error(detail).message,
    )
    .with_code(STREAM_TRIMMED)
}

/// Read and apply the slice `msg` describes (its `shard` is `read`), checking `control`
/// between pages. `None` when the slice was abandoned.
pub async fn replay_slice<T: Tables + ?Sized, R: Streams + ?Sized, C: SliceControl + ?Sized>(
    tables: &T,
    streams: &R,
    msg: &CopyChunk,
    read: &ShardRead,
    tuning: &Tuning,
    control: &C,
    stop_at: Instant,
) -> Result<Option<SliceOutcome>, AwsError> {
    let mut cursor = read.cursor.clone();
    // Whatever happens, the result carries the shard's cursor (its next slice needs it).
    let mut out = SliceOutcome { partial: true, shard: Some(cursor.clone()), ..Default::default() };
    // Every snapshot slice has stopped writing by `replay_from` (the launch delays the first
    // message until then; a message delivered early waits).
    let early = (read.replay_from - Utc::now()).to_std().unwrap_or_default();
    if !early.is_zero() {
        tokio::time::sleep_until(stop_at.min(Instant::now() + early)).await;
        if Utc::now() < read.replay_from {
            return Ok(Some(out));
        }
        match control.proceed().await? {
            Proceed::Go => {}
            Proceed::Stop => return Ok(Some(out)),
            Proceed::Abandon => return Ok(None),
        }
    }
    let throttles = AtomicU64::new(0);
    // Every call to the stream ends by the deadline too (a slow answer must not keep the slice
    // past it, holding its shard).
    let fresh = cursor.iterator_at.is_some_and(|t| Utc::now() - t < chrono::Duration::minutes(ITERATOR_FRESH_MINUTES));
    let stored = cursor.iterator.clone().filter(|_| fresh);
    let mut iterator = match stored {
        Some(stored) => stored,
        None => match timeout_at(stop_at, renew(streams, read, &cursor)).await {
            Err(_) => return Ok(Some(out)),
            Ok(renewed) => match renewed? {
                Some(iterator) => iterator,
                None => return Ok(Some(gone(out, cursor))),
            },
        },
    };
    let (mut records_read, mut renewals, mut refusals, mut first) = (0u64, 0u32, 0u32, true);
    'pages: loop {
        if Instant::now() >= stop_at {
            break;
        }
        // No more records than the slice has room for (it applies no more): the rest of a
        // longer page would only be read again by the next slice.
        let room = u32::try_from(u64::from(msg.limits.max_items).saturating_sub(records_read)).unwrap_or(0);
        let Ok(answer) = timeout_at(stop_at, streams.records(&iterator, room.max(1))).await else { break };
        let page = match answer {
            Ok(page) => page,
            Err(e) if (is(&e, EXPIRED_ITERATOR) || is(&e, TRIMMED)) && renewals < RENEWALS => {
                renewals += 1;
                match timeout_at(stop_at, renew(streams, read, &cursor)).await {
                    Err(_) => break,
                    Ok(renewed) => match renewed? {
                        Some(renewed) => iterator = renewed,
                        None => return Ok(Some(gone(out, cursor))),
                    },
                }
                continue;
            }
            Err(e) if is(&e, TRIMMED) => return Err(trimmed(&cursor.id, &e.to_string())),
            // Throttled (more than two readers of the shard) or slow: keep what was applied,
            // else wait a little and read again.
            Err(e) if e.is_retryable() && (records_read > 0 || refusals >= RENEWALS) => {
                if records_read > 0 {
                    break;
                }
                return Err(e);
            }
            Err(e) if e.is_retryable() => {
                refusals += 1;
                tokio::time::sleep(crate::engine::backoff(refusals + 2)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if !first {
            match control.proceed().await? {
                Proceed::Go => {}
                Proceed::Stop => break,
                Proceed::Abandon => return Ok(None),
            }
        }
        first = false;
        // The page (up to 1,000 records) is applied in parts, each what the slice writes at
        // once (its concurrent batches, at most its size), the cursor moving after each. A
        // slice that ends inside the page (a stop, its deadline, or a target still throttled
        // after every write attempt) keeps the parts it applied, and the next slice goes on
        // after them, from the sequence number (this page's iterator would skip the rest).
        // Left before the page, the cursor would make every next slice read the same page
        // again, and a page no slice can apply whole would hold the shard.
        let size = (msg.limits.max_items as usize).min(tuning.write_concurrency * BATCH).max(1);
        for (i, part) in page.records.chunks(size).enumerate() {
            if i > 0 {
                match control.proceed().await? {
                    Proceed::Go => {}
                    Proceed::Stop => break 'pages,
                    Proceed::Abandon => return Ok(None),
                }
            }
            if Instant::now() >= stop_at {
                break 'pages;
            }
            let fresh: Vec<&Record> = part.iter().filter(|r| r.at >= read.since).collect();
            match timeout_at(stop_at, apply(tables, msg, &fresh, tuning, &throttles)).await {
                Ok(Ok(applied)) => out.add(applied),
                // As a copy slice keeps its whole pages: with none applied, the message is
                // retried later.
                Ok(Err(e)) if e.is_retryable() && records_read > 0 => {
                    tracing::warn!(shard = %cursor.id, error = %e, "ending the slice after its last whole part");
                    break 'pages;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => break 'pages,
            }
            out.items_written += fresh.len() as u64;
            records_read += part.len() as u64;
            let last = part.last().expect("a part holds records");
            cursor.sequence = Some(last.sequence.clone());
            cursor.changed_at = Some(last.at);
            cursor.at_tip = false;
            cursor.empty_since = None;
            cursor.iterator = None;
            cursor.iterator_at = None;
        }
        let now = Utc::now();
        cursor.at_tip = page.records.is_empty();
        // Emptiness counts from the first empty read after the last record.
        cursor.empty_since = if cursor.at_tip { cursor.empty_since.or(Some(now)) } else { None };
        cursor.iterator = page.next.clone();
        cursor.iterator_at = Some(now);
        match page.next {
            None => {
                // A closed shard, read to its end.
                cursor.closed = true;
                out.partial = false;
                break;
            }
            Some(next) => iterator = next,
        }
        if let Some(drain) = &read.drain {
            if drain.drained(&cursor, now) {
                out.partial = false;
                break;
            }
        }
        if cursor.at_tip || records_read >= u64::from(msg.limits.max_items) {
            break;
        }
    }
    out.throttles = throttles.load(Ordering::Relaxed);
    out.shard = Some(cursor);
    Ok(Some(out))
}

/// The outcome of a slice whose shard no longer exists (it aged out of the stream with
/// nothing the job needs): the shard is done, as if read to its end.
fn gone(out: SliceOutcome, mut cursor: ShardCursor) -> SliceOutcome {
    tracing::warn!(shard = %cursor.id, "the shard aged out of the stream; it holds nothing the job needs");
    cursor.closed = true;
    SliceOutcome { partial: false, shard: Some(cursor), ..out }
}

/// An iterator from the cursor: after its last record, or from the trim horizon. `None` when
/// the shard no longer exists and held nothing the job needs.
///
/// While the stream still holds every change since the job's start (its oldest record is
/// younger than 24 hours; `since` is later than that), a position the stream trimmed, or a
/// shard it deleted, held only older changes: the read goes on from the trim horizon (or the
/// shard is done). Later, either means changes the job needs may be gone: `StreamTrimmed`.
async fn renew<R: Streams + ?Sized>(
    streams: &R,
    read: &ShardRead,
    cursor: &ShardCursor,
) -> Result<Option<String>, AwsError> {
    let from = cursor.sequence.clone().map_or(Position::TrimHorizon, Position::After);
    // A shard with no record read yet (never read, or read only at its empty tip, a position
    // no sequence number holds) is read from its trim horizon, which never reports what was
    // trimmed: it must still hold every change the shard may carry that the job needs (a job
    // paused for a day may find them gone).
    if from == Position::TrimHorizon && Utc::now() > read.trim_by {
        return Err(trimmed(&cursor.id, &format!("it is read from its start after {}", read.trim_by)));
    }
    let keeps_all = Utc::now() - chrono::Duration::hours(24) < read.since;
    match streams.iterator(&read.stream, &cursor.id, &from).await {
        Ok(iterator) => Ok(Some(iterator)),
        Err(e) if is(&e, TRIMMED) && keeps_all => {
            streams.iterator(&read.stream, &cursor.id, &Position::TrimHorizon).await.map(Some)
        }
        Err(e) if e.kind == ErrorKind::NotFound && keeps_all => Ok(None),
        Err(e) if is(&e, TRIMMED) || e.kind == ErrorKind::NotFound => Err(trimmed(&cursor.id, &e.to_string())),
        Err(e) => Err(e),
    }
}

/// What a run of records (a part of a page) leaves in the target: puts of items' newest
/// images, and deletes of target keys (each with the source key it must still belong to, when
/// the target is keyed otherwise than the source).
#[derive(Debug, Default, PartialEq)]
pub struct Writes {
    pub puts: Vec<Item>,
    pub deletes: Vec<(Item, Option<Item>)>,
}

/// One source item's records of a part, collapsed.
struct Collapsed<'a> {
    /// Its last record's place in the part.
    last: usize,
    /// Its newest image, `None` if its last record removed it.
    image: Option<&'a Item>,
    /// Target keys it had before (from old images, or its key when the target is keyed by
    /// the source's key).
    old: Vec<Item>,
    keys: &'a Item,
}

/// The writes `records` (in stream order) come to.
pub fn collapse(records: &[&Record], source_key: &KeySchema, target_key: &KeySchema, keyed_by_source: bool) -> Writes {
    let mut items: HashMap<String, Collapsed> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let e = items.entry(render_key(&source_key.key_of(&r.keys))).or_insert(Collapsed {
            last: i,
            image: None,
            old: vec![],
            keys: &r.keys,
        });
        e.last = i;
        let old = match (keyed_by_source, &r.old_image) {
            (true, _) if r.remove => Some(&r.keys),
            (false, Some(old)) => Some(old),
            _ => None,
        };
        if let Some(old) = old.filter(|o| target_key.rejection(o).is_none()) {
            e.old.push(target_key.key_of(old));
        }
        e.image = if r.remove { None } else { r.new_image.as_ref() };
    }
    let mut writes = Writes::default();
    let mut puts: HashMap<String, (usize, &Item)> = HashMap::new();
    for e in items.values() {
        let kept = e.image.map(|image| render_key(&target_key.key_of(image)));
        if let Some(image) = e.image {
            let at = puts.entry(kept.clone().expect("an image has a key")).or_insert((e.last, image));
            if at.0 <= e.last {
                *at = (e.last, image);
            }
        }
        let owner = (!keyed_by_source).then(|| source_key.key_of(e.keys));
        let mut seen: Vec<String> = kept.into_iter().collect();
        for old in &e.old {
            let k = render_key(old);
            if !seen.contains(&k) {
                seen.push(k);
                writes.deletes.push((old.clone(), owner.clone()));
            }
        }
    }
    let mut puts: Vec<(usize, &Item)> = puts.into_values().collect();
    puts.sort_by_key(|(i, _)| *i);
    writes.puts = puts.into_iter().map(|(_, item)| item.clone()).collect();
    writes
}

/// Apply one part of a page (its fresh records): its deletes, then its puts (distinct target
/// keys, so their order does not matter; a put of a key another item's conditional delete
/// names is safe either way).
async fn apply<T: Tables + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    records: &[&Record],
    tuning: &Tuning,
    throttles: &AtomicU64,
) -> Result<SliceOutcome, AwsError> {
    let writes = collapse(records, &msg.source_key, &msg.target_key, msg.target_key.same_attributes(&msg.source_key));
    stream::iter(writes.deletes)
        .map(|(key, owner)| delete(tables, &msg.target, key, owner, tuning))
        .buffer_unordered(tuning.write_concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    let written = write_page(tables, msg, writes.puts, tuning, throttles).await?;
    // The slice counts records applied, not items put.
    Ok(SliceOutcome { items_written: 0, ..written })
}
