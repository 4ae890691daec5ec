//! Verification slices: read one bounded slice of a segment of the source or of the target,
//! strongly consistent, and add it to the segment's checksums (the verifying passes), or look
//! up the other side of every item of a bucket whose checksums differ (the locating passes).
//! The repairing passes look up the same way and write what differs: the source item as the
//! Scan read it, and (only for a target that was empty at start) deletes of target items no
//! source item maps to. Nothing else writes to the user's tables. Like a copy slice, a slice keeps only whole pages:
//! a page cut at the deadline or by a stop leaves no trace, and the next slice reads it again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{timeout_at, Instant};

use crate::checksum::{bucket_of, item_hash};
use crate::config::Tuning;
use crate::engine::{backoff, delete, write_page, Proceed, SliceControl, SliceOutcome, PAGE_LIMIT};
use crate::error::{AwsError, ErrorKind};
use crate::messages::CopyChunk;
use crate::model::{item_size, render_key, Item, KeySchema, MismatchKind, Pass, SegmentCheck, TableName};
use crate::tables::Tables;

/// BatchGetItem's limit.
const GET_BATCH: usize = 100;

/// Read the slice `msg` describes, starting from the segment's verification state `check`,
/// until its limits, its segment's end, a stop from `control`, or `stop_at`. `None` when the
/// slice was abandoned.
pub async fn check_slice<T: Tables + ?Sized, C: SliceControl + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    check: SegmentCheck,
    tuning: &Tuning,
    control: &C,
    stop_at: Instant,
) -> Result<Option<SliceOutcome>, AwsError> {
    let table = if msg.pass.scans_target() { &msg.target } else { &msg.source };
    let mut position: Option<Item> = msg.start_key.clone().map(Into::into);
    let mut out = SliceOutcome { check: Some(check), ..Default::default() };
    let (mut read, mut read_bytes) = (0u64, 0u64);
    // What the repair wrote, counted as it is written: a page cut at the deadline is read
    // again by the next slice, which finds it repaired and writes (and counts) nothing.
    let repairs = Repairs::default();
    let finish = |mut out: SliceOutcome| {
        if let Some(c) = out.check.as_mut() {
            c.put += repairs.put.load(Ordering::Relaxed);
            c.deleted += repairs.deleted.load(Ordering::Relaxed);
        }
        out.throttles = repairs.throttles.load(Ordering::Relaxed);
        Some(out)
    };
    let mut first = true;
    loop {
        if !first {
            if Instant::now() >= stop_at {
                return Ok(finish(out.ended_at(position)));
            }
            match control.proceed().await? {
                Proceed::Go => {}
                Proceed::Stop => return Ok(finish(out.ended_at(position))),
                Proceed::Abandon => return Ok(None),
            }
        }
        first = false;
        let limit = PAGE_LIMIT.min(msg.limits.max_items.saturating_sub(read as u32)).max(1);
        let scan = tables.scan_page(table, msg.segment, msg.total_segments, position.clone(), limit);
        let page = match timeout_at(stop_at, scan).await {
            Ok(page) => page?,
            Err(_) => return Ok(finish(out.ended_at(position))),
        };
        let mut next = out.check.clone().unwrap_or_default();
        match timeout_at(stop_at, add_page(tables, msg, &page.items, &mut next, tuning, &repairs)).await {
            Ok(done) => done?,
            Err(_) => return Ok(finish(out.ended_at(position))),
        }
        out.check = Some(next);
        read += page.items.len() as u64;
        read_bytes += page.items.iter().map(item_size).sum::<u64>();
        out.items_read = read;
        position = page.last_key;
        if position.is_none() || read >= u64::from(msg.limits.max_items) || read_bytes >= msg.limits.max_bytes {
            out.next_key = position;
            return Ok(finish(out));
        }
    }
}

/// What a repairing slice wrote, and the throttled answers it met.
#[derive(Default)]
struct Repairs {
    put: AtomicU64,
    deleted: AtomicU64,
    throttles: AtomicU64,
}

/// Add one page of the slice's table to the segment's verification state.
async fn add_page<T: Tables + ?Sized>(
    tables: &T,
    msg: &CopyChunk,
    items: &[Item],
    check: &mut SegmentCheck,
    tuning: &Tuning,
    repairs: &Repairs,
) -> Result<(), AwsError> {
    let in_buckets = |item: &Item| msg.buckets.contains(&(bucket_of(item, &msg.source_key) as u16));
    // Items DynamoDB TTL may delete from either table while the verification runs are not
    // compared on either side (see `CopyChunk::unsettled`).
    let unsettled = |item: &Item| msg.unsettled.as_ref().is_some_and(|cut| cut.expired(item));
    match msg.pass {
        Pass::Copy | Pass::Replay => unreachable!("copy and replay slices are the engine's and the replay's"),
        Pass::VerifySource => {
            for item in items {
                // The copy does not write what does not fit the target's key, nor what it left
                // out as expired: not differences.
                let expired = msg.skip_expired.as_ref().is_some_and(|cut| cut.expired(item));
                if expired || unsettled(item) || msg.target_key.rejection(item).is_some() {
                    check.skipped += 1;
                } else {
                    check.source.add_item(item, &msg.source_key);
                }
            }
        }
        Pass::VerifyTarget => {
            items.iter().filter(|i| !unsettled(i)).for_each(|item| check.target.add_item(item, &msg.source_key))
        }
        Pass::LocateSource | Pass::RepairSource => {
            let copied = |i: &Item| {
                msg.target_key.rejection(i).is_none()
                    && !msg.skip_expired.as_ref().is_some_and(|cut| cut.expired(i))
                    && !unsettled(i)
            };
            let wanted: Vec<&Item> = items.iter().filter(|i| in_buckets(i) && copied(i)).collect();
            let found = get_all(tables, &msg.target, &msg.target_key, &wanted, tuning).await?;
            // A target item under an item's target key that carries another source key may be
            // another source item's copy (a collision): those source items, to be sure.
            let differing: Vec<(&Item, &Item)> = wanted
                .iter()
                .filter_map(|i| found.get(&render_key(&msg.target_key.key_of(i))).map(|t| (*i, t)))
                .filter(|(i, t)| item_hash(t) != item_hash(i))
                .collect();
            let holders: Vec<&Item> = differing
                .iter()
                .filter(|(i, t)| {
                    msg.source_key.rejection(t).is_none() && msg.source_key.key_of(t) != msg.source_key.key_of(i)
                })
                .map(|(_, t)| *t)
                .collect();
            let holders = get_all(tables, &msg.source, &msg.source_key, &holders, tuning).await?;
            let mut to_write = vec![];
            for item in wanted {
                let source_key = render_key(&msg.source_key.key_of(item));
                let (kind, other) = match found.get(&render_key(&msg.target_key.key_of(item))) {
                    None => (MismatchKind::Missing, None),
                    Some(t) if item_hash(t) != item_hash(item) => {
                        // A collision only if the target item is exactly its holder's copy.
                        let holder_key = render_key(&msg.source_key.key_of(t));
                        match holders.get(&holder_key) {
                            Some(h) if holder_key != source_key && item_hash(h) == item_hash(t) => {
                                (MismatchKind::Collision, Some(holder_key))
                            }
                            _ => (MismatchKind::Different, None),
                        }
                    }
                    Some(_) => continue,
                };
                check.found_with(kind, source_key, other);
                // Writing one of two colliding items over the other would only swap them.
                if kind != MismatchKind::Collision {
                    to_write.push(item.clone());
                }
            }
            if msg.pass == Pass::RepairSource && !to_write.is_empty() {
                // The source item as this strongly consistent Scan read it, written whole.
                let written = write_page(tables, msg, to_write, tuning, &repairs.throttles).await?;
                repairs.put.fetch_add(written.items_written, Ordering::Relaxed);
            }
        }
        Pass::LocateTarget | Pass::RepairTarget => {
            let wanted: Vec<&Item> = items.iter().filter(|i| in_buckets(i) && !unsettled(i)).collect();
            let keyed: Vec<&Item> = wanted.iter().copied().filter(|t| msg.source_key.rejection(t).is_none()).collect();
            let found = get_all(tables, &msg.source, &msg.source_key, &keyed, tuning).await?;
            for t in wanted {
                // Extra: no source item has its source key, or that source item maps to
                // another target item.
                let source = found.get(&render_key(&msg.source_key.key_of(t)));
                let belongs = source.is_some_and(|s| {
                    msg.source_key.rejection(t).is_none()
                        && !msg.skip_expired.as_ref().is_some_and(|cut| cut.expired(s))
                        && render_key(&msg.target_key.key_of(s)) == render_key(&msg.target_key.key_of(t))
                });
                if !belongs {
                    check.found(MismatchKind::Extra, render_key(&msg.source_key.key_of(t)));
                    if msg.pass == Pass::RepairTarget && msg.delete_extra {
                        delete(tables, &msg.target, msg.target_key.key_of(t), None, tuning).await?;
                        repairs.deleted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The items of `table` (keyed `key`) with the keys of `items`, strongly consistent, by their
/// rendered key; unprocessed keys are asked again with backoff.
async fn get_all<T: Tables + ?Sized>(
    tables: &T,
    table: &TableName,
    key: &KeySchema,
    items: &[&Item],
    tuning: &Tuning,
) -> Result<HashMap<String, Item>, AwsError> {
    let mut seen = HashSet::new();
    let keys: Vec<Item> = items.iter().map(|i| key.key_of(i)).filter(|k| seen.insert(render_key(k))).collect();
    let mut found = HashMap::new();
    for chunk in keys.chunks(GET_BATCH) {
        let mut pending = chunk.to_vec();
        let mut attempt = 0;
        while !pending.is_empty() {
            let (items, unprocessed) = tables.batch_get(table, pending).await?;
            found.extend(items.into_iter().map(|i| (render_key(&key.key_of(&i)), i)));
            pending = unprocessed;
            if !pending.is_empty() {
                attempt += 1;
                if attempt >= tuning.max_write_attempts {
                    return Err(AwsError::new(
                        ErrorKind::Throttled,
                        format!("BatchGetItem {table}"),
                        format!("{} key(s) still unprocessed after {attempt} attempts", pending.len()),
                    ));
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    Ok(found)
}
