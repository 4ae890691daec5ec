//! Online: which shards of the source's stream a job reads, and when. Every shard the stream
//! lists gets a cursor (found when the replay begins, when a shard ends, and by the
//! reconciler); a shard is read only once its parent's cursor is done. A parent the stream no
//! longer lists (aged out) counts as read: the child's cursor records no parent.
//!
//! A shard's cursor number is derived from its id (so two processes that find the same shard
//! create one cursor): a hash into `[SHARD_BASE, 2 * SHARD_BASE)`, or the next free number
//! after it when another shard has that one.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::error::AwsError;
use crate::model::{Cursor, Job, JobError, ShardCursor};
use crate::store::{CursorStore, JobStore};
use crate::streams::Streams;
use crate::tables::Tables;

/// Shard cursors are numbered from here (scan segments are below 1,000).
pub const SHARD_BASE: u32 = 1_000_000_000;

/// `c` as its slice reads it: a shard cursor's floor raised to its done parent's last record
/// and floor (see [`ShardCursor::floor`]). Every other cursor as it is.
pub fn with_floor(c: &Cursor, cursors: &[Cursor]) -> Cursor {
    let mut c = c.clone();
    if let Some(shard) = c.shard.as_mut() {
        let parent = shard
            .parent
            .as_ref()
            .and_then(|p| cursors.iter().filter(|o| o.done).filter_map(|o| o.shard.as_ref()).find(|s| &s.id == p));
        if let Some(p) = parent {
            shard.floor = shard.floor.max(p.changed_at).max(p.floor);
        }
    }
    c
}

/// What a look at the stream found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// The stream is the job's and enabled; this many shards got a cursor.
    Shards(usize),
    /// The job cannot go on: its stream was disabled or replaced.
    Lost(JobError),
}

/// Whether a shard cursor may be read now: it has no parent to wait for, or its parent's
/// cursor is done. (A scan segment's cursor always may.)
pub fn ready(c: &Cursor, cursors: &[Cursor]) -> bool {
    match c.shard.as_ref().and_then(|s| s.parent.as_ref()) {
        None => true,
        Some(parent) => cursors.iter().any(|o| o.done && o.shard.as_ref().is_some_and(|s| &s.id == parent)),
    }
}

/// Give every shard of the job's stream a cursor (parked, at its trim horizon), if the stream
/// is still the job's and enabled. `cursors` are the job's cursors as read.
pub async fn discover<S: CursorStore + JobStore + ?Sized, T: Tables + ?Sized, R: Streams + ?Sized>(
    store: &S,
    tables: &T,
    streams: &R,
    job: &Job,
) -> Result<Found, AwsError> {
    let Some(spec) = &job.spec.stream else { return Ok(Found::Shards(0)) };
    let current = tables.describe(&job.spec.source).await?.and_then(|t| t.stream);
    match current {
        Some(s) if s.arn == spec.arn => {}
        Some(s) => {
            return Ok(Found::Lost(JobError {
                code: "StreamReplaced".into(),
                message: format!(
                    "the stream of {} was replaced while the job ran (it read {}, the table now has {}): the changes made in between cannot be read. Re-create the job",
                    job.spec.source, spec.arn, s.arn
                ),
            }))
        }
        None => return Ok(Found::Lost(disabled(job))),
    }
    // Every shard this listing misses is created after it (DescribeStream lists a new shard
    // within moments; the hour kept from the stream's 24 covers a slower listing).
    let listed_at = chrono::Utc::now();
    let state = streams.describe(&spec.arn).await?;
    if !state.enabled {
        return Ok(Found::Lost(disabled(job)));
    }
    let mut created = 0;
    for _ in 0..8 {
        let cursors = store.cursors(&job.name).await?;
        let known: HashMap<&str, u32> =
            cursors.iter().filter_map(|c| Some((c.shard.as_ref()?.id.as_str(), c.segment))).collect();
        let listed: Vec<&str> = state.shards.iter().map(|s| s.id.as_str()).collect();
        let mut taken: std::collections::HashSet<u32> = cursors.iter().map(|c| c.segment).collect();
        let new: Vec<Cursor> = state
            .shards
            .iter()
            .filter(|s| !known.contains_key(s.id.as_str()))
            .map(|s| {
                // A parent neither listed nor read (aged out) counts as read.
                let parent =
                    s.parent.clone().filter(|p| listed.contains(&p.as_str()) || known.contains_key(p.as_str()));
                let number = free_number(&s.id, &taken);
                taken.insert(number);
                // It was not there when the job last listed the stream.
                Cursor::shard(
                    number,
                    ShardCursor { floor: job.stream_listed_at, ..ShardCursor::new(s.id.clone(), parent) },
                )
            })
            .collect();
        if new.is_empty() {
            // Every shard of this listing has a cursor: a shard found later was not in it.
            store.mark_listed(&job.name, listed_at).await?;
            return Ok(Found::Shards(created));
        }
        tracing::info!(job = %job.name, shards = new.len(), "shards of the source's stream found");
        // Each only if its number is free: a number another process took meanwhile (for
        // another shard) is found on the next round.
        store.create_cursors(&job.name, &new).await?;
        created += new.len();
    }
    Ok(Found::Shards(created))
}

fn disabled(job: &Job) -> JobError {
    JobError {
        code: "StreamDisabled".into(),
        message: format!(
            "the stream of {} was disabled while the job ran: its changes can no longer be read. Enable it (NEW_AND_OLD_IMAGES) and re-create the job",
            job.spec.source
        ),
    }
}

/// The number of shard `id`'s cursor: its hash, or the next number not `taken`.
fn free_number(id: &str, taken: &std::collections::HashSet<u32>) -> u32 {
    let digest = Sha256::digest(id.as_bytes());
    let h = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]) % SHARD_BASE;
    let mut n = SHARD_BASE + h;
    while taken.contains(&n) {
        n = SHARD_BASE + (n - SHARD_BASE + 1) % SHARD_BASE;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_number_is_its_hash_or_the_next_free_one() {
        let none = std::collections::HashSet::new();
        let n = free_number("shardId-0001", &none);
        assert!((SHARD_BASE..2 * SHARD_BASE).contains(&n));
        assert_eq!(free_number("shardId-0001", &none), n, "the same for every process");
        assert_eq!(free_number("shardId-0001", &[n].into()), n + 1);
    }

    #[test]
    fn a_shard_waits_for_its_parent_only_while_the_parent_is_unread() {
        let parent = Cursor::shard(SHARD_BASE, ShardCursor::new("p", None));
        let child = Cursor::shard(SHARD_BASE + 1, ShardCursor::new("c", Some("p".into())));
        let orphan = Cursor::shard(SHARD_BASE + 2, ShardCursor::new("o", Some("gone".into())));
        assert!(ready(&parent, &[parent.clone(), child.clone()]));
        assert!(!ready(&child, &[parent.clone(), child.clone()]));
        let done = Cursor { done: true, ..parent };
        assert!(ready(&child, &[done, child.clone()]));
        assert!(!ready(&orphan, std::slice::from_ref(&orphan)), "a parent without a cursor yet is waited for");
    }
}
