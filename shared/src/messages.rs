//! The messages that chain the functions. Every body carries a version `v`; a body of an
//! unknown version is refused (it goes to the queue's DLQ) rather than misread.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::model::{
    Item, JobError, JobName, KeySchema, OnItemError, Pass, RejectedItem, SegmentCheck, ShardCursor, TableName,
};
use crate::pacing::Pace;

/// The message format version this build reads and writes.
pub const VERSION: u32 = 1;

/// A key carried in a message, as DynamoDB JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WireKey(pub serde_dynamo::Item);

impl From<Item> for WireKey {
    fn from(k: Item) -> Self {
        WireKey(k.into())
    }
}

impl From<WireKey> for Item {
    fn from(k: WireKey) -> Self {
        k.0.into()
    }
}

/// How much one slice may read before it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceLimits {
    pub max_items: u32,
    pub max_bytes: u64,
}

/// copy-chunk queue: copy one slice of a segment, starting after `start_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyChunk {
    pub v: u32,
    pub job: JobName,
    pub segment: u32,
    pub total_segments: u32,
    /// The slice's sequence number within its segment.
    pub seq: u64,
    pub start_key: Option<WireKey>,
    pub source: TableName,
    pub target: TableName,
    /// Names rejected items by their source key.
    pub source_key: KeySchema,
    pub target_key: KeySchema,
    pub on_item_error: OnItemError,
    pub limits: SliceLimits,
    /// The segment's pace under the job's rate budget (`None`: not paced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<Pace>,
    /// What the slice does: copy (absent), or read for the verification.
    #[serde(default, skip_serializing_if = "Pass::is_copy")]
    pub pass: Pass,
    /// The checksum buckets that differ: the only items a locating pass looks at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<u16>,
    /// A repairing slice may delete target items no source item maps to (the target was
    /// empty when the job was created).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete_extra: bool,
    /// `--skip-expired`: source items whose TTL attribute is before this cut are not copied
    /// (nor compared), and are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_expired: Option<ExpiryCut>,
    /// Verifying, repairing and locating slices of a source with TTL: items whose TTL falls
    /// before this cut (a day after the verification began) may be deleted by DynamoDB from
    /// either table at any moment, so they are compared on neither side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsettled: Option<ExpiryCut>,
    /// Online: the slice reads this shard of the source's stream (the replay pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRead>,
}

/// Online: what a replay slice reads, and the job's bounds on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRead {
    /// The stream's ARN.
    pub stream: String,
    /// The shard's cursor as the slice's segment expects it: it reads after its sequence.
    pub cursor: ShardCursor,
    /// Records changed before this (the job's start less a margin) are skipped: the snapshot
    /// read their effect.
    pub since: DateTime<Utc>,
    /// Nothing is written before this: every snapshot slice has stopped writing by then.
    pub replay_from: DateTime<Utc>,
    /// A read of the shard from its trim horizon (while no record of it was read) must start
    /// before this, or records the replay needs may have been trimmed (`StreamTrimmed`).
    pub trim_by: DateTime<Utc>,
    /// After `complete`: when the shard counts as drained (its cursor is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

/// After `complete` at `after`, a shard is drained once its reads at the tip have stayed empty
/// for `settle_ms` since `after` (or since its last record, if later), or once it reaches a
/// record changed `settle_ms` after `after` (a source that never goes quiet, e.g. TTL deletes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    pub after: DateTime<Utc>,
    pub settle_ms: u64,
}

impl Drain {
    /// Whether `cursor`, as a read left it at `now`, has drained.
    pub fn drained(&self, cursor: &ShardCursor, now: DateTime<Utc>) -> bool {
        let settle = chrono::Duration::milliseconds(self.settle_ms as i64);
        let quiet = cursor.empty_since.filter(|_| cursor.at_tip).is_some_and(|t| now - t.max(self.after) >= settle);
        let past = cursor.changed_at.is_some_and(|t| t >= self.after + settle);
        quiet || past
    }
}

/// Items whose TTL attribute (a number of seconds since the epoch, as DynamoDB TTL reads it)
/// is before `before` count as expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpiryCut {
    pub attribute: String,
    pub before: i64,
}

impl ExpiryCut {
    /// Whether DynamoDB TTL would take `item` as expired at the cut (an attribute that is not
    /// a number, as TTL ignores it, never expires).
    pub fn expired(&self, item: &Item) -> bool {
        item.get(&self.attribute)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|t| t < self.before as f64)
    }
}

/// checkpoint queue: what a slice wrote, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkResult {
    pub v: u32,
    /// The copy of the slice that wrote it (its invocation's token), recorded with its commit.
    #[serde(default)]
    pub copy: String,
    pub job: JobName,
    pub segment: u32,
    pub seq: u64,
    pub items_written: u64,
    pub bytes_written: u64,
    pub rejected_count: u64,
    pub rejected_samples: Vec<RejectedItem>,
    /// Where the next slice starts; `None` when the segment is finished (unless `partial`).
    pub next_key: Option<WireKey>,
    /// A failure that ends the job (e.g. the source table vanished).
    pub fatal: Option<JobError>,
    /// The slice ended early, at a page boundary: a pause, cancel or final move reached its
    /// segment, or its invocation's deadline came. `next_key` is where the next slice starts,
    /// `None` meaning the segment's start, never its end.
    #[serde(default)]
    pub partial: bool,
    /// Writes the target throttled during the slice (each retried).
    #[serde(default)]
    pub throttles: u64,
    /// The slice's pace, as its message carried it, and when the slice started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pace: Option<Pace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The slice's pass (absent: copy).
    #[serde(default, skip_serializing_if = "Pass::is_copy")]
    pub pass: Pass,
    /// Items a verifying or locating slice read (it writes none).
    #[serde(default)]
    pub items_read: u64,
    /// Expired items the slice left out (`--skip-expired`).
    #[serde(default)]
    pub expired: u64,
    /// The segment's verification state after this slice (verifying and locating passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<SegmentCheck>,
    /// A replay slice's shard cursor after it (`None`: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardCursor>,
}

impl ChunkResult {
    /// The slice reached the end of its pass's scan and the segment goes on with this pass.
    pub fn next_pass(&self) -> Option<Pass> {
        self.scan_ended().then(|| self.pass.then()).flatten()
    }

    /// The segment is finished (for its phase).
    pub fn segment_done(&self) -> bool {
        self.scan_ended() && self.pass.then().is_none()
    }

    fn scan_ended(&self) -> bool {
        self.next_key.is_none() && !self.partial && self.fatal.is_none()
    }
}

/// finalize queue: a [`Finalize`], or the reconciler's periodic pass (the template's
/// schedule sends `{"v": 1, "reconcile": true}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FinalizeQueue {
    Reconcile(Reconcile),
    Finalize(Finalize),
}

/// The reconciler's pass over every job holding a slot (see `handlers::reconcile`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    pub v: u32,
    pub reconcile: bool,
}

/// finalize queue: check the job and move it to its final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finalize {
    pub v: u32,
    pub job: JobName,
    /// Set when the job must fail for this reason.
    pub failure: Option<JobError>,
}

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message body is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("message version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
}

#[derive(Deserialize)]
struct Versioned {
    v: u32,
}

/// Decode a message body, refusing unknown versions.
pub fn decode<T: DeserializeOwned>(body: &str) -> Result<T, MessageError> {
    let Versioned { v } = serde_json::from_str(body)?;
    if v != VERSION {
        return Err(MessageError::Version(v));
    }
    Ok(serde_json::from_str(body)?)
}

pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::AttributeValue;

    #[test]
    fn keys_round_trip_as_dynamodb_json() {
        let mut key = Item::new();
        key.insert("pk".into(), AttributeValue::S("a".into()));
        key.insert("n".into(), AttributeValue::N("1.5".into()));
        key.insert("b".into(), AttributeValue::B(vec![0u8, 255].into()));
        let f = Finalize { v: VERSION, job: JobName::parse("j").unwrap(), failure: None };
        let r = ChunkResult {
            v: VERSION,
            copy: "c0ffee".into(),
            job: f.job.clone(),
            segment: 1,
            seq: 2,
            items_written: 3,
            bytes_written: 4,
            rejected_count: 0,
            rejected_samples: vec![],
            next_key: Some(key.clone().into()),
            fatal: None,
            partial: false,
            throttles: 0,
            pace: None,
            started_at: None,
            pass: Pass::Copy,
            items_read: 0,
            expired: 0,
            check: None,
            shard: None,
        };
        let body = encode(&r);
        assert!(body.contains(r#""S":"a""#), "{body}");
        let back: ChunkResult = decode(&body).unwrap();
        assert_eq!(Item::from(back.next_key.unwrap()), key);
        assert_eq!(decode::<Finalize>(&encode(&f)).unwrap(), f);
    }

    #[test]
    fn the_finalize_queue_carries_finalize_and_reconcile_messages() {
        let f = Finalize { v: VERSION, job: JobName::parse("j").unwrap(), failure: None };
        assert_eq!(decode::<FinalizeQueue>(&encode(&f)).unwrap(), FinalizeQueue::Finalize(f));
        assert_eq!(
            decode::<FinalizeQueue>(r#"{"v": 1, "reconcile": true}"#).unwrap(),
            FinalizeQueue::Reconcile(Reconcile { v: 1, reconcile: true })
        );
        // A result of an older build (no `partial`) still reads.
        let old = r#"{"v":1,"job":"j","segment":0,"seq":0,"items_written":1,"bytes_written":2,"rejected_count":0,"rejected_samples":[],"next_key":null,"fatal":null}"#;
        assert!(decode::<ChunkResult>(old).unwrap().segment_done());
    }

    #[test]
    fn unknown_versions_and_garbage_are_refused() {
        assert!(matches!(decode::<Finalize>(r#"{"v":2,"job":"j","failure":null}"#), Err(MessageError::Version(2))));
        assert!(matches!(decode::<Finalize>("not json"), Err(MessageError::Malformed(_))));
        assert!(matches!(decode::<Finalize>(r#"{"v":1,"job":"bad name"}"#), Err(MessageError::Malformed(_))));
    }
}
