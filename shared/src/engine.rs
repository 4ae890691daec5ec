//! The copy engine: read one bounded slice of a segment and write it to the target, retrying
//! throttling and unprocessed items with exponential backoff and full jitter, until every item
//! is written or permanently rejected, its segment says stop, or its deadline comes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::time::{timeout_at, Instant};

use crate::config::Tuning;
use crate::error::{AwsError, ErrorKind};
use crate::messages::CopyChunk;
use crate::model::{
    item_size, render_key, Item, RejectedItem, SegmentCheck, ShardCursor, TableName, MAX_REJECTED_SAMPLES,
};
use crate::tables::{Tables, WriteError};

/// BatchWriteItem's limit.
pub(crate) const BATCH: usize = 25;
/// Items asked of one Scan page (DynamoDB also ends a page at 1 MB).
pub(crate) const PAGE_LIMIT: u32 = 1_000;

/// What a slice did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliceOutcome {
    pub items_written: u64,
    pub bytes_written: u64,
    pub rejected_count: u64,
    pub rejected_samples: Vec<RejectedItem>,
    /// Where the next slice starts; `None` when the segment is finished (unless `partial`).
    pub next_key: Option<Item>,
    /// The slice ended early at a page boundary (a stop or its deadline): `next_key` is where
    /// the next slice starts, `None` meaning the segment's start.
    pub partial: bool,
    /// Answers of the target that throttled a write or left items unprocessed, counting those
    /// of pages the slice did not keep (cut at its deadline, or given up after the last attempt).
    pub throttles: u64,
    /// Items a verifying or locating slice read (it writes none).
    pub items_read: u64,
    /// Expired items left out (`--skip-expired`).
    pub expired: u64,
    /// The segment's verification state after a verifying or locating slice (`None`: as it was).
    pub check: Option<SegmentCheck>,
    /// A replay slice's shard cursor after it (`None`: as it was).
    pub shard: Option<ShardCursor>,
}

impl SliceOutcome {
    pub(crate) fn add(&mut self, page: SliceOutcome) {
        self.items_written += page.items_written;
        self.bytes_written += page.bytes_written;
        self.rejected_count += page.rejected_count;
        self.expired += page.expired;
        let room = MAX_REJECTED_SAMPLES.saturating_sub(self.rejected_samples.len());
        self.rejected_samples.extend(page.rejected_samples.into_iter().take(room));
    }

    /// What was written up to `position`, ending the slice there.
    pub fn ended_at(mut self, position: Option<Item>) -> Self {
        self.next_key = position;
        self.partial = true;
        self
    }
}

/// Whether a slice may go on writing: asked between its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proceed {
    Go,
    /// End the slice now and report what was written.
    Stop,
    /// Nobody expects this slice any more: end it and report nothing.
    Abandon,
}

/// Asked before every page of a slice but the first (which its caller checked).
#[async_trait]
pub trait SliceControl: Send + Sync {
    async fn proceed(&self) -> Result<Proceed, AwsError>;
}

/// Exponential backoff with full jitter: a random wait in `[0, min(cap, base·2^attempt))`.
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 25u64;
    let cap_ms = 2_000u64;
    let max = cap_ms.min(base_ms.saturating_mul(1u64 << attempt.min(20)));
    Duration::from_millis(rand::random_range(0..=max))
}

/// Copy the slice `msg` describes, page by page, until its limits, its segment's end, a stop
/// from `control`, or `stop_at`: a page whose reads and writes are not all done by then is
/// left to the next slice, which starts after the last whole page. `None` when the slice
/// was abandoned.
pub async fn copy_slice<T: Tables + ?Sized, C: SliceControl + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    tuning: &Tuning,
    control: &C,
    stop_at: Instant,
) -> Result<Option<SliceOutcome>, AwsError> {
    // Counted as the answers come, so that the pages a slice drops still slow its pace.
    let throttles = AtomicU64::new(0);
    let out = copy_pages(tables, msg, tuning, control, stop_at, &throttles).await?;
    Ok(out.map(|out| SliceOutcome { throttles: throttles.load(Ordering::Relaxed), ..out }))
}

async fn copy_pages<T: Tables + ?Sized, C: SliceControl + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    tuning: &Tuning,
    control: &C,
    stop_at: Instant,
    throttles: &AtomicU64,
) -> Result<Option<SliceOutcome>, AwsError> {
    let limits = msg.limits;
    let scan = |start: Option<Item>, read: u64| {
        let limit = PAGE_LIMIT.min(limits.max_items.saturating_sub(read as u32)).max(1);
        tables.scan_page(&msg.source, msg.segment, msg.total_segments, start, limit)
    };
    let mut out = SliceOutcome::default();
    let mut position: Option<Item> = msg.start_key.clone().map(Into::into);
    let mut read = 0u64;
    let mut read_bytes = 0u64;
    let mut page = match timeout_at(stop_at, scan(position.clone(), 0)).await {
        Ok(page) => page?,
        Err(_) => return Ok(Some(out.ended_at(position))),
    };
    let mut first = true;
    loop {
        if !first {
            if Instant::now() >= stop_at {
                return Ok(Some(out.ended_at(position)));
            }
            match control.proceed().await? {
                Proceed::Go => {}
                Proceed::Stop => return Ok(Some(out.ended_at(position))),
                Proceed::Abandon => return Ok(None),
            }
        }
        first = false;
        read += page.items.len() as u64;
        read_bytes += page.items.iter().map(item_size).sum::<u64>();
        let more = page.last_key.is_some() && read < u64::from(limits.max_items) && read_bytes < limits.max_bytes;
        let next_start = page.last_key.clone();
        // Write this page while the next one is read, both by the deadline.
        let both = async {
            tokio::join!(write_page(tables, msg, page.items, tuning, throttles), async {
                if more {
                    Some(scan(next_start, read).await)
                } else {
                    None
                }
            })
        };
        let (written, next) = match timeout_at(stop_at, both).await {
            Ok(done) => done,
            Err(_) => return Ok(Some(out.ended_at(position))),
        };
        match written {
            Ok(page) => out.add(page),
            // Still throttled after every attempt: keep the whole pages already written, and
            // leave the rest to the next slice; with none, the message is retried later.
            Err(e) if e.is_retryable() && out.items_written + out.rejected_count > 0 => {
                tracing::warn!(error = %e, "ending the slice after its last whole page");
                return Ok(Some(out.ended_at(position)));
            }
            Err(e) => return Err(e),
        }
        position = page.last_key;
        match next {
            Some(next) => page = next?,
            None => {
                out.next_key = position;
                return Ok(Some(out));
            }
        }
    }
}

/// Write one page: reject what cannot fit the target's key, write the rest in batches of 25
/// with distinct target keys, `tuning.write_concurrency` batches at a time.
pub(crate) async fn write_page<T: Tables + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    items: Vec<Item>,
    tuning: &Tuning,
    throttles: &AtomicU64,
) -> Result<SliceOutcome, AwsError> {
    let mut out = SliceOutcome::default();
    let mut batches: Vec<Vec<Item>> = Vec::new();
    let mut keys_in_batch: HashSet<String> = HashSet::new();
    for item in items {
        if msg.skip_expired.as_ref().is_some_and(|cut| cut.expired(&item)) {
            out.expired += 1;
            continue;
        }
        if let Some(reason) = msg.target_key.rejection(&item) {
            out.add(rejected(msg, &item, reason));
            continue;
        }
        // A batch may not hold two puts of one key (possible after a key-schema change).
        let key = render_key(&msg.target_key.key_of(&item));
        let full = batches.last().is_none_or(|b| b.len() == BATCH);
        if full || keys_in_batch.contains(&key) {
            batches.push(Vec::with_capacity(BATCH));
            keys_in_batch.clear();
        }
        keys_in_batch.insert(key);
        batches.last_mut().expect("a batch exists").push(item);
    }
    let pages: Vec<SliceOutcome> =
        stream::iter(batches.into_iter().map(|b| write_batch(tables, msg, b, tuning, throttles)))
            .buffer_unordered(tuning.write_concurrency.max(1))
            .try_collect()
            .await?;
    for p in pages {
        out.add(p);
    }
    Ok(out)
}

/// Delete one item (with `owner`, only while it holds those attribute values), retrying
/// throttling with backoff.
pub(crate) async fn delete<T: Tables + ?Sized>(
    tables: &T,
    table: &TableName,
    key: Item,
    owner: Option<Item>,
    tuning: &Tuning,
) -> Result<(), AwsError> {
    let mut attempt = 0;
    loop {
        match tables.delete(table, key.clone(), owner.clone()).await {
            Err(e) if e.is_retryable() && attempt + 1 < tuning.max_write_attempts => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt)).await;
            }
            other => return other,
        }
    }
}

fn rejected(msg: &CopyChunk, item: &Item, reason: String) -> SliceOutcome {
    SliceOutcome {
        rejected_count: 1,
        rejected_samples: vec![RejectedItem { key: render_key(&msg.source_key.key_of(item)), reason }],
        ..Default::default()
    }
}

fn gave_up(what: &str, attempts: u32, last: String) -> AwsError {
    AwsError::new(
        ErrorKind::Throttled,
        format!("{what}: still throttled or unprocessed after {attempts} attempts"),
        last,
    )
}

/// BatchWriteItem until nothing is unprocessed. A batch the service refuses as a whole is
/// written item by item to find the items it refuses.
async fn write_batch<T: Tables + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    batch: Vec<Item>,
    tuning: &Tuning,
    throttles: &AtomicU64,
) -> Result<SliceOutcome, AwsError> {
    let bytes: u64 = batch.iter().map(item_size).sum();
    let count = batch.len() as u64;
    let mut pending = batch;
    let mut attempt = 0;
    loop {
        let last = match tables.batch_put(&msg.target, pending.clone()).await {
            Ok(unprocessed) if unprocessed.is_empty() => {
                return Ok(SliceOutcome { items_written: count, bytes_written: bytes, ..Default::default() })
            }
            Ok(unprocessed) => {
                let last = format!("{} unprocessed item(s)", unprocessed.len());
                pending = unprocessed;
                last
            }
            Err(WriteError::Rejected(_)) => {
                return write_one_by_one(tables, msg, pending, count, bytes, tuning, throttles).await
            }
            Err(WriteError::Aws(e)) if e.is_retryable() => e.to_string(),
            Err(WriteError::Aws(e)) => return Err(e),
        };
        throttles.fetch_add(1, Ordering::Relaxed);
        attempt += 1;
        if attempt >= tuning.max_write_attempts {
            return Err(gave_up(&format!("BatchWriteItem to {}", msg.target), attempt, last));
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// `pending` is what is left of a batch of `count` items and `bytes` bytes (the rest is written).
async fn write_one_by_one<T: Tables + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    pending: Vec<Item>,
    count: u64,
    bytes: u64,
    tuning: &Tuning,
    throttles: &AtomicU64,
) -> Result<SliceOutcome, AwsError> {
    let mut out = SliceOutcome { items_written: count, bytes_written: bytes, ..Default::default() };
    for item in pending {
        let mut attempt = 0;
        loop {
            match tables.put(&msg.target, item.clone()).await {
                Ok(()) => break,
                Err(WriteError::Rejected(reason)) => {
                    out.items_written -= 1;
                    out.bytes_written -= item_size(&item);
                    out.add(rejected(msg, &item, reason));
                    break;
                }
                Err(WriteError::Aws(e)) if e.is_retryable() => {
                    throttles.fetch_add(1, Ordering::Relaxed);
                    attempt += 1;
                    if attempt >= tuning.max_write_attempts {
                        return Err(gave_up(&format!("PutItem to {}", msg.target), attempt, e.to_string()));
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(WriteError::Aws(e)) => return Err(e),
            }
        }
    }
    Ok(out)
}
