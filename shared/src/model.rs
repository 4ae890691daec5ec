//! Job model: validated names, the job state machine, key schemas, cursors.

use std::collections::HashMap;
use std::fmt;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;

/// A DynamoDB item or key as the SDK represents it.
pub type Item = HashMap<String, AttributeValue>;

/// Highest number of scan segments a job may use (one cursor and one in-flight slice each).
pub const MAX_PARALLELISM: u32 = 1_000;
/// A job created without a parallelism gets one segment per this much of its source (at least
/// the deployment's default).
pub const BYTES_PER_SEGMENT: u64 = 2 << 30;

/// The parallelism of a job created without one: one segment per [`BYTES_PER_SEGMENT`] of
/// the source's size (DescribeTable's estimate), at least `minimum`, at most
/// [`MAX_PARALLELISM`].
pub fn parallelism_for_size(size_bytes: u64, minimum: u32) -> u32 {
    let by_size = size_bytes.div_ceil(BYTES_PER_SEGMENT).min(u64::from(MAX_PARALLELISM)) as u32;
    by_size.max(minimum).clamp(1, MAX_PARALLELISM)
}
/// How many rejected items a job keeps as samples.
pub const MAX_REJECTED_SAMPLES: usize = 10;

/// Input the user got wrong. Each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

/// A job name: 1-64 characters, letters, digits, `-` and `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobName(String);

impl JobName {
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        let ok_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let ok_start = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
        if s.is_empty() || s.len() > 64 || !ok_chars || !ok_start {
            return Err(InvalidInput(format!(
                "invalid job name {s:?}: use 1-64 characters (letters, digits, '-' and '_'), starting with a letter or digit"
            )));
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A DynamoDB table name: 3-255 characters of `a-z A-Z 0-9 _ - .`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TableName(String);

impl TableName {
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        let ok_chars = s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !(3..=255).contains(&s.len()) || !ok_chars {
            return Err(InvalidInput(format!(
                "invalid table name {s:?}: DynamoDB table names have 3-255 characters of a-z, A-Z, 0-9, '_', '-' and '.'"
            )));
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = InvalidInput;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $t {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}
string_newtype_impls!(JobName);
string_newtype_impls!(TableName);

/// The job states (docs/design.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Paused,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }

    /// `Queued → Running → Completed`, `Running ⇄ Paused`, `Cancelled`/`Failed` from every
    /// non-final state. Final states never change.
    pub fn can_become(self, to: JobStatus) -> bool {
        use JobStatus::*;
        match (self, to) {
            (from, _) if from.is_final() => false,
            (_, Cancelled | Failed) => true,
            (Queued, Running) | (Running, Paused) | (Paused, Running) | (Running, Completed) => true,
            _ => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "Queued",
            JobStatus::Running => "Running",
            JobStatus::Paused => "Paused",
            JobStatus::Completed => "Completed",
            JobStatus::Failed => "Failed",
            JobStatus::Cancelled => "Cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with items the target rejects (e.g. missing its key attributes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnItemError {
    /// Fail the job, naming sample keys and the count.
    #[default]
    Fail,
    /// Copy the rest and report the rejected items on the job.
    Skip,
}

/// How a job copies: a snapshot of a quiet source, or a live one through its change feed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The source must not change while the job runs; the job completes by itself.
    #[default]
    Offline,
    /// The application keeps writing to the source: the job copies a snapshot, then replays
    /// the source's stream until `complete`, then verifies and repairs the target.
    Online,
}

impl Mode {
    pub fn is_offline(&self) -> bool {
        *self == Mode::Offline
    }
}

/// What a DynamoDB stream's records carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StreamView {
    KeysOnly,
    NewImage,
    OldImage,
    NewAndOldImages,
}

impl StreamView {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamView::KeysOnly => "KEYS_ONLY",
            StreamView::NewImage => "NEW_IMAGE",
            StreamView::OldImage => "OLD_IMAGE",
            StreamView::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [StreamView::KeysOnly, StreamView::NewImage, StreamView::OldImage, StreamView::NewAndOldImages]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// The source's stream an online job reads (the one enabled when the job was created).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSpec {
    pub arn: String,
    pub view: StreamView,
}

/// Whether a job verifies its target against its source before it completes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Count and checksum every item of both tables (consistent reads), and name what differs.
    #[default]
    Full,
    /// Complete when every segment is copied.
    None,
}

impl VerifyMode {
    /// What a job created before verification existed does.
    fn legacy() -> Self {
        VerifyMode::None
    }
}

/// What a segment's slices do: copy, then (verifying) checksum the source's and the target's
/// segment, then (only when the checksums differ) locate the items that differ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Pass {
    #[default]
    Copy,
    VerifySource,
    VerifyTarget,
    RepairSource,
    RepairTarget,
    LocateSource,
    LocateTarget,
    /// Online: a shard cursor's reads of the source's stream, applied to the target.
    Replay,
}

impl Pass {
    pub fn is_copy(&self) -> bool {
        *self == Pass::Copy
    }

    /// The pass a segment goes on to when this one reaches the end of its segment (`None`: the
    /// segment is done for its phase).
    pub fn then(self) -> Option<Pass> {
        match self {
            Pass::VerifySource => Some(Pass::VerifyTarget),
            Pass::RepairSource => Some(Pass::RepairTarget),
            Pass::LocateSource => Some(Pass::LocateTarget),
            _ => None,
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            Pass::Copy => Phase::Copying,
            Pass::VerifySource | Pass::VerifyTarget => Phase::Verifying,
            Pass::RepairSource | Pass::RepairTarget => Phase::Repairing,
            Pass::LocateSource | Pass::LocateTarget => Phase::Locating,
            // Shard cursors do not make the segments' phase (see `Progress::of`).
            Pass::Replay => Phase::Copying,
        }
    }

    /// Whether its slices scan the target (else the source).
    pub fn scans_target(self) -> bool {
        matches!(self, Pass::VerifyTarget | Pass::RepairTarget | Pass::LocateTarget)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Copy => "copy",
            Pass::VerifySource => "verifySource",
            Pass::VerifyTarget => "verifyTarget",
            Pass::RepairSource => "repairSource",
            Pass::RepairTarget => "repairTarget",
            Pass::LocateSource => "locateSource",
            Pass::LocateTarget => "locateTarget",
            Pass::Replay => "replay",
        }
    }

    pub fn parse(s: &str) -> Option<Pass> {
        [
            Pass::Copy,
            Pass::VerifySource,
            Pass::VerifyTarget,
            Pass::RepairSource,
            Pass::RepairTarget,
            Pass::LocateSource,
            Pass::LocateTarget,
            Pass::Replay,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// What a running job is doing, from the passes of its segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    #[default]
    Copying,
    Verifying,
    /// Writing what differs from the source (and deleting extras), bucket by bucket.
    Repairing,
    Locating,
}

impl Phase {
    /// The first pass of its segments.
    pub fn first_pass(self) -> Pass {
        match self {
            Phase::Copying => Pass::Copy,
            Phase::Verifying => Pass::VerifySource,
            Phase::Repairing => Pass::RepairSource,
            Phase::Locating => Pass::LocateSource,
        }
    }

    fn is_copying(&self) -> bool {
        *self == Phase::Copying
    }
}

/// How an item of one table differs from the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MismatchKind {
    /// A source item whose target item does not exist.
    Missing,
    /// A source item whose target item holds something else.
    Different,
    /// A target item that no source item maps to.
    Extra,
    /// A source item whose target key another source item maps to as well (after a change
    /// of key schema): the target holds only one of them.
    Collision,
}

impl MismatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::Missing => "missing",
            MismatchKind::Different => "different",
            MismatchKind::Extra => "extra",
            MismatchKind::Collision => "collision",
        }
    }
}

/// A sample of what verification found: the item's source key, as DynamoDB JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub key: String,
    /// For a collision: the source key of the item the target holds under that target key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.key)?;
        if let Some(other) = &self.other {
            write!(f, " (its target key holds {other})")?;
        }
        Ok(())
    }
}

/// What a segment's verification read and found so far (kept on its cursor).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentCheck {
    pub source: Checksum,
    pub target: Checksum,
    /// Source items the copy does not write (they do not fit the target's key).
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub missing: u64,
    #[serde(default)]
    pub different: u64,
    #[serde(default)]
    pub extra: u64,
    #[serde(default)]
    pub collisions: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Mismatch>,
    /// Items the repair wrote to the target, and target items it deleted.
    #[serde(default)]
    pub put: u64,
    #[serde(default)]
    pub deleted: u64,
}

impl SegmentCheck {
    /// Record a mismatch, keeping at most [`MAX_REJECTED_SAMPLES`] samples.
    pub fn found(&mut self, kind: MismatchKind, key: String) {
        self.found_with(kind, key, None)
    }

    /// [`Self::found`], with the other item's source key of a collision.
    pub fn found_with(&mut self, kind: MismatchKind, key: String, other: Option<String>) {
        match kind {
            MismatchKind::Missing => self.missing += 1,
            MismatchKind::Different => self.different += 1,
            MismatchKind::Extra => self.extra += 1,
            MismatchKind::Collision => self.collisions += 1,
        }
        if self.samples.len() < MAX_REJECTED_SAMPLES {
            self.samples.push(Mismatch { kind, key, other });
        }
    }

    /// Every segment's check together.
    pub fn sum<'a>(checks: impl Iterator<Item = &'a SegmentCheck>) -> SegmentCheck {
        let mut all = SegmentCheck::default();
        for c in checks {
            all.source.merge(&c.source);
            all.target.merge(&c.target);
            all.skipped += c.skipped;
            all.missing += c.missing;
            all.different += c.different;
            all.extra += c.extra;
            all.collisions += c.collisions;
            all.put += c.put;
            all.deleted += c.deleted;
            let room = MAX_REJECTED_SAMPLES.saturating_sub(all.samples.len());
            all.samples.extend(c.samples.iter().take(room).cloned());
        }
        all
    }
}

/// The outcome of a job's verification, kept on the job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// What the verification read of each table (totals, without buckets).
    pub source: Checksum,
    pub target: Checksum,
    /// Source items not copied by design (they do not fit the target's key).
    #[serde(default)]
    pub skipped: u64,
    /// The buckets whose items differ: the keyed second pass reads only those.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub differing_buckets: Vec<u16>,
    /// What the keyed second pass found (when the checksums differed).
    #[serde(default)]
    pub missing: u64,
    #[serde(default)]
    pub different: u64,
    #[serde(default)]
    pub extra: u64,
    /// Source items whose target key another source item maps to as well.
    #[serde(default)]
    pub collisions: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Mismatch>,
    /// What the repair wrote and deleted (with `--repair`), before the keyed pass checked
    /// the differing buckets again.
    #[serde(default)]
    pub repaired_put: u64,
    /// The verification found the target equal to the source (the job completed).
    #[serde(default)]
    pub passed: bool,
    #[serde(default)]
    pub repaired_deleted: u64,
}

impl Verification {
    /// The checksums of both sides agree.
    pub fn matched(&self) -> bool {
        self.source.matches(&self.target)
    }

    /// `verified: N items, hash 1a2b…` (or what differs).
    pub fn summary(&self) -> String {
        let repaired = self.repaired_put + self.repaired_deleted > 0;
        let mut extra = match self.extra {
            0 => String::new(),
            n => format!(", {n} extra target item(s) from before the job left"),
        };
        if self.collisions > 0 {
            extra.push_str(&format!(
                ", {} source item(s) not in the target because another source item has the same target key (--on-item-error skip)",
                self.collisions
            ));
        }
        if self.matched() {
            format!("verified: {} items, hash {}", self.source.items, short_hash(&self.source))
        } else if !self.passed {
            self.differences()
        } else if repaired {
            format!(
                "verified after repair: {} items, {} put and {} deleted in the target, then checked again{extra}",
                self.source.items, self.repaired_put, self.repaired_deleted
            )
        } else {
            format!("verified: {} items, the buckets that differed checked item by item{extra}", self.source.items)
        }
    }

    fn differences(&self) -> String {
        format!(
            "source {} items (hash {}), target {} items (hash {}): {} missing, {} different, {} extra, {} colliding",
            self.source.items,
            short_hash(&self.source),
            self.target.items,
            short_hash(&self.target),
            self.missing,
            self.different,
            self.extra,
            self.collisions
        )
    }
}

fn short_hash(c: &Checksum) -> String {
    c.hash.to_string()[..16].to_string()
}

/// Scalar types a key attribute can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    S,
    N,
    B,
}

impl KeyType {
    fn matches(self, v: &AttributeValue) -> bool {
        match (self, v) {
            (KeyType::S, AttributeValue::S(s)) => !s.is_empty(),
            (KeyType::N, AttributeValue::N(_)) => true,
            (KeyType::B, AttributeValue::B(b)) => !b.as_ref().is_empty(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttribute {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: KeyType,
}

/// A table's primary key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySchema {
    pub partition: KeyAttribute,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<KeyAttribute>,
}

impl KeySchema {
    /// Both keys are made of the same attributes (of the same types), in whatever roles: a
    /// source item keeps its target key for life, and no two source items share one.
    pub fn same_attributes(&self, other: &KeySchema) -> bool {
        let within = |a: &KeySchema, b: &KeySchema| a.attributes().all(|x| b.attributes().any(|y| x == y));
        within(self, other) && within(other, self)
    }

    pub fn attributes(&self) -> impl Iterator<Item = &KeyAttribute> {
        std::iter::once(&self.partition).chain(self.sort.as_ref())
    }

    /// Why `item` cannot be written to a table with this key, if it cannot.
    pub fn rejection(&self, item: &Item) -> Option<String> {
        for attr in self.attributes() {
            match item.get(&attr.name) {
                None => return Some(format!("missing key attribute {:?}", attr.name)),
                Some(v) if !attr.kind.matches(v) => {
                    return Some(format!(
                        "key attribute {:?} must be a non-empty {:?}, found {}",
                        attr.name,
                        attr.kind,
                        type_name(v)
                    ))
                }
                Some(_) => {}
            }
        }
        None
    }

    /// Why no item of a table keyed `source` could be written to a table with this key: a
    /// key attribute of this schema is one of the source's key attributes with another type
    /// (every source item has it, with the wrong type).
    pub fn conflict_with(&self, source: &KeySchema) -> Option<String> {
        let (ours, theirs) = self
            .attributes()
            .find_map(|a| source.attributes().find(|s| s.name == a.name && s.kind != a.kind).map(|s| (a, s)))?;
        Some(format!(
            "the target's key attribute {:?} is of type {:?} but the source's key attribute {:?} is of type {:?}: no source item could be written. Create the target with {:?} of type {:?}, or copy to another table",
            ours.name, ours.kind, theirs.name, theirs.kind, ours.name, theirs.kind
        ))
    }

    /// The key attributes of `item` (those it has).
    pub fn key_of(&self, item: &Item) -> Item {
        self.attributes().filter_map(|a| item.get(&a.name).map(|v| (a.name.clone(), v.clone()))).collect()
    }
}

impl fmt::Display for KeySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.partition.name, self.partition.kind)?;
        if let Some(s) = &self.sort {
            write!(f, ", {} ({:?})", s.name, s.kind)?;
        }
        Ok(())
    }
}

/// The DynamoDB type name of a value, for messages.
pub fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::M(_) => "M",
        AttributeValue::L(_) => "L",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        _ => "unknown",
    }
}

/// Size of an item as DynamoDB counts it (attribute names plus values), in bytes.
pub fn item_size(item: &Item) -> u64 {
    item.iter().map(|(k, v)| k.len() as u64 + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> u64 {
    match v {
        AttributeValue::S(s) => s.len() as u64,
        AttributeValue::N(n) => (n.len() as u64).div_ceil(2) + 1,
        AttributeValue::B(b) => b.as_ref().len() as u64,
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() as u64 + value_size(v)).sum::<u64>(),
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<u64>(),
        AttributeValue::Ss(s) => s.iter().map(|x| x.len() as u64).sum(),
        AttributeValue::Ns(s) => s.iter().map(|x| (x.len() as u64).div_ceil(2) + 1).sum(),
        AttributeValue::Bs(s) => s.iter().map(|x| x.as_ref().len() as u64).sum(),
        _ => 0,
    }
}

/// A key rendered as DynamoDB JSON with its attributes in name order: the same key always
/// renders the same (samples, logs, and the duplicate check of a batch rely on it).
pub fn render_key(key: &Item) -> String {
    let sorted: std::collections::BTreeMap<&String, serde_dynamo::AttributeValue> =
        key.iter().map(|(k, v)| (k, serde_dynamo::AttributeValue::from(v.clone()))).collect();
    serde_json::to_string(&sorted).unwrap_or_else(|_| "<unrenderable key>".into())
}

/// An item the target table refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedItem {
    /// The item's source key, as DynamoDB JSON.
    pub key: String,
    pub reason: String,
}

/// A machine-readable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub source: TableName,
    pub target: TableName,
    /// Number of scan segments (parallel slices).
    pub parallelism: u32,
    /// The parallelism was chosen from the source's size (the request gave none).
    #[serde(default)]
    pub parallelism_from_size: bool,
    pub on_item_error: OnItemError,
    pub source_key: KeySchema,
    pub target_key: KeySchema,
    /// Items per second the job may write to the target, all segments together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_write_rate: Option<u32>,
    /// Items per second the job may read from the source, all segments together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_read_rate: Option<u32>,
    /// How much one slice reads: the creator's deployment's setting, fixed for the job's
    /// life whoever launches its slices (absent on jobs created before it was kept here: the
    /// launcher's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<crate::messages::SliceLimits>,
    /// The attribute the source's TTL expires items by, when it has TTL at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ttl: Option<String>,
    /// Whether the job verifies the target before it completes (jobs created before
    /// verification existed do not).
    #[serde(default = "VerifyMode::legacy")]
    pub verify: VerifyMode,
    /// A verification that finds differences repairs them before the job's final move.
    #[serde(default)]
    pub repair: bool,
    /// Items whose TTL attribute (`source_ttl`) is before the job's start are left out.
    #[serde(default)]
    pub skip_expired: bool,
    /// Offline, or online through the source's stream.
    #[serde(default, skip_serializing_if = "Mode::is_offline")]
    pub mode: Mode,
    /// The stream an online job reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: JobStatus,
    pub at: DateTime<Utc>,
}

/// The job item of the control table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub name: JobName,
    pub spec: JobSpec,
    pub status: JobStatus,
    /// The account's write region when the job was created.
    pub write_region: String,
    /// DescribeTable's ItemCount of the source at creation: an estimate, updated by DynamoDB
    /// about every six hours.
    pub estimated_total: u64,
    /// DescribeTable's TableSizeBytes of the source at creation: an estimate, like the count.
    #[serde(default)]
    pub estimated_bytes: u64,
    /// What the job has copied: the sum of its cursors, refreshed here at most every few
    /// seconds while it runs and exactly at every move to `Paused` or a final state (`show`
    /// reads the cursors themselves).
    #[serde(default)]
    pub items_copied: u64,
    #[serde(default)]
    pub bytes_copied: u64,
    #[serde(default)]
    pub items_rejected: u64,
    /// Source items left out as expired (`--skip-expired`).
    #[serde(default)]
    pub items_expired: u64,
    /// Writes the target throttled (each retried with backoff).
    #[serde(default)]
    pub throttles: u64,
    #[serde(default)]
    pub rejected_samples: Vec<RejectedItem>,
    #[serde(default)]
    pub segments_done: u32,
    /// When the counters above were last refreshed from the cursors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<JobError>,
    #[serde(default)]
    pub version: u64,
    /// The control epoch: raised by every change of what the segments must do (start,
    /// pause, resume, cancel, a final move), each a write conditional on the epoch read.
    /// Every cursor is brought to the job's epoch (see [`crate::rules`]).
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub history: Vec<StatusChange>,
    /// A pause or cancel request of a `Running` job, waiting for its in-flight slices to be
    /// checkpointed: `Paused` or `Cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<JobStatus>,
    /// When the job last started running (created, started from the queue, or resumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launched_at: Option<DateTime<Utc>>,
    /// Segments the reconciler found with no progress for longer than the stall bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stalled: u32,
    /// How many entries of `history` were published as job events.
    #[serde(default)]
    pub announced: u64,
    /// The CloudFormation resource (`Custom::TableCopyJob`) that created the job, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<StackOrigin>,
    /// Whether the target held no item when the job was created (`None` on older jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_empty_at_start: Option<bool>,
    /// What `create` found worth a warning (a target that is not empty, TTL settings that
    /// differ); the job runs regardless.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// What the segments are doing (from their cursors, refreshed with the counters).
    #[serde(default, skip_serializing_if = "Phase::is_copying")]
    pub phase: Phase,
    /// When the copy ended and the verification began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_started_at: Option<DateTime<Utc>>,
    /// The verification's outcome: recorded when the checksums differ (the keyed pass reads
    /// the buckets it names) and with the final move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Online: the snapshot's end, plus the longest a snapshot slice can still write: the
    /// replay of the stream starts then, never before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_from: Option<DateTime<Utc>>,
    /// Online: when `complete` was asked for (the shards drain, then the job verifies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_requested_at: Option<DateTime<Utc>>,
    /// Online: when the job last listed its stream's shards (a DescribeStream issued then, every
    /// shard of whose answer has a cursor). A shard found later did not exist then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_listed_at: Option<DateTime<Utc>>,
    /// Online: what the replay did, summed from the shard cursors with the counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplayProgress>,
}

/// Online: what the replay of the stream did and where it stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayProgress {
    /// Stream records written to the target.
    pub records_applied: u64,
    /// Shards not read to their end (or drained) yet.
    pub open_shards: u32,
    pub shards: u32,
    /// The worst lag of a shard, in milliseconds, as of the cursors' last commits: 0 for a
    /// shard whose last read at its tip returned no record, else the age of the change
    /// time of its last applied record (`None`: no shard read yet).
    pub lag_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The `Custom::TableCopyJob` resource that created a job, and, when it waits for the job's
/// completion, where CloudFormation waits for the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackOrigin {
    pub stack_id: String,
    pub logical_resource_id: String,
    /// The Create or Update request that created the job (a repeated delivery of it finds
    /// the job it already made).
    pub request_id: String,
    /// Set when the resource waits for completion: the presigned URL finalize answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_url: Option<String>,
    /// The waiting request has been answered.
    #[serde(default)]
    pub answered: bool,
}

impl StackOrigin {
    /// A final job whose resource still waits for its answer.
    pub fn awaits_answer(job: &Job) -> bool {
        job.origin.as_ref().is_some_and(|o| o.response_url.is_some() && !o.answered)
    }
}

impl Job {
    /// A final job that finalize still owes something: its waiting CloudFormation resource's
    /// answer, or the events of its last state changes.
    pub fn owes_finalize(&self) -> bool {
        self.status.is_final() && (StackOrigin::awaits_answer(self) || self.unannounced())
    }

    /// Some of its state changes were not published as events yet.
    pub fn unannounced(&self) -> bool {
        (self.announced as usize) < self.history.len()
    }
}

impl Job {
    /// Every segment of the job is done (all its cursors exist and are done), and so is
    /// every shard an online job reads.
    pub fn all_done(&self, cursors: &[Cursor]) -> bool {
        let segments = cursors.iter().filter(|c| c.shard.is_none()).count();
        segments == self.spec.parallelism as usize && cursors.iter().all(|c| c.done)
    }

    /// Online: where the job stands before its verification.
    pub fn online_stage(&self) -> Option<&'static str> {
        if self.spec.mode.is_offline() || self.phase != Phase::Copying {
            return None;
        }
        Some(match (self.replay_from, self.complete_requested_at) {
            (None, _) => "copying snapshot",
            (Some(_), None) => "catching up",
            (Some(_), Some(_)) => "completing",
        })
    }

    /// The status as people read it: `Running (pausing)` while a request waits, `Running
    /// (stalled: ...)` when the reconciler found segments without progress.
    pub fn status_label(&self) -> String {
        match (status_label(self.status, self.pending, self.stalled), self.phase) {
            (label, Phase::Copying) => match self.online_stage() {
                Some(stage) if self.status == JobStatus::Running && self.pending.is_none() && self.stalled == 0 => {
                    format!("Running ({stage})")
                }
                _ => label,
            },
            (label, _) if self.status != JobStatus::Running || self.pending.is_some() => label,
            (_, Phase::Verifying) => "Running (verifying)".into(),
            (_, Phase::Repairing) => "Running (repairing)".into(),
            (_, Phase::Locating) => "Running (verifying: locating differences)".into(),
        }
    }

    /// What `list` shows of it.
    pub fn summary(&self) -> JobSummary {
        JobSummary {
            name: self.name.clone(),
            spec: self.spec.clone(),
            status: self.status,
            pending: self.pending,
            stalled: self.stalled,
            estimated_total: self.estimated_total,
            items_copied: self.items_copied,
            items_rejected: self.items_rejected,
            created_at: self.created_at,
        }
    }

    /// The job with its counters set to `p`.
    pub fn with_progress(mut self, p: &Progress) -> Self {
        self.items_copied = p.items;
        self.bytes_copied = p.bytes;
        self.items_rejected = p.rejected;
        self.items_expired = p.expired;
        self.throttles = p.throttles;
        self.rejected_samples = p.samples.clone();
        self.segments_done = p.segments_done;
        self.phase = p.phase;
        self.replay = p.replay.clone();
        self
    }

    /// Processed share of the estimate, in percent (100 when completed).
    pub fn percent(&self) -> f64 {
        percent(self.status, self.items_copied + self.items_rejected, self.estimated_total)
    }

    /// Elapsed running time: to completion, or to `now` while running.
    pub fn elapsed_ms(&self, now: DateTime<Utc>) -> Option<u64> {
        let start = self.started_at?;
        let end = self.completed_at.unwrap_or(if self.status.is_final() { self.updated_at } else { now });
        Some((end - start).num_milliseconds().max(0) as u64)
    }

    /// The copy phase's running time: from the start to the verification's start, or as
    /// [`Self::elapsed_ms`] when the job has not verified.
    pub fn copy_ms(&self, now: DateTime<Utc>) -> Option<u64> {
        match self.verify_started_at {
            Some(end) => Some((end - self.started_at?).num_milliseconds().max(0) as u64),
            None => self.elapsed_ms(now),
        }
    }

    /// The verification phase's running time so far (to completion once final).
    pub fn verify_ms(&self, now: DateTime<Utc>) -> Option<u64> {
        let start = self.verify_started_at?;
        let end = self.completed_at.unwrap_or(if self.status.is_final() { self.updated_at } else { now });
        Some((end - start).num_milliseconds().max(0) as u64)
    }

    /// Average copy rate of the copy phase.
    pub fn items_per_second(&self, now: DateTime<Utc>) -> Option<f64> {
        let ms = self.copy_ms(now)?;
        (ms > 0).then(|| self.items_copied as f64 * 1000.0 / ms as f64)
    }

    /// A sample-naming message for rejected items.
    pub fn rejected_message(&self) -> String {
        let samples: Vec<String> =
            self.rejected_samples.iter().take(3).map(|r| format!("{} ({})", r.key, r.reason)).collect();
        format!(
            "{} item(s) of {} do not fit the key schema of {} [{}]; samples: {}. Fix the items or the target's key schema, or re-create the job with --on-item-error skip to copy the rest",
            self.items_rejected,
            self.spec.source,
            self.spec.target,
            self.spec.target_key,
            samples.join("; ")
        )
    }
}

/// A segment's read cursor. It is the only item a slice's commit writes, and it carries what
/// the job wants of its segment (the job's control epoch it last heard of, and whether the
/// segment must stop), so a commit decides continue / park / stale from it alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub segment: u32,
    /// Sequence number of the next slice to commit.
    pub seq: u64,
    /// Last committed `LastEvaluatedKey`; `None` = start of the segment (or end, when done).
    pub last_key: Option<Item>,
    pub done: bool,
    /// No slice of this segment is in flight and none will be sent until the job is launched
    /// (started or resumed). A new job's cursors start parked.
    pub parked: bool,
    /// The job's control epoch this cursor was last brought to.
    pub epoch: u64,
    /// At that epoch the job wants no further slice (paused, pausing, cancelled, final, or
    /// not started): a commit parks the segment, and copy-chunk writes nothing.
    pub stop: bool,
    /// What this segment copied.
    pub items: u64,
    pub bytes: u64,
    pub rejected: u64,
    /// Expired items it left out (`--skip-expired`).
    pub expired: u64,
    /// Writes the target throttled during this segment's slices.
    pub throttles: u64,
    /// The segment's rate under the job's budget (items per second) as of its last commit.
    pub rate: Option<f64>,
    /// Up to [`MAX_REJECTED_SAMPLES`] rejected items of this segment.
    pub samples: Vec<RejectedItem>,
    /// What its slices do now.
    pub pass: Pass,
    /// What its verification read and found so far (verifying and locating passes).
    pub check: Option<SegmentCheck>,
    /// Online: the cursor is a shard's of the source's stream (its `items` count the records
    /// it applied), not a scan segment's.
    pub shard: Option<ShardCursor>,
    /// The last progress: a commit, a launch, or a copy claiming the slice.
    pub updated_at: Option<DateTime<Utc>>,
    /// The copy of the expected slice that holds the segment (each copy-chunk invocation has
    /// its own token), until `lease_until`: another copy of that slice (a duplicate message,
    /// or a redelivery while the first still runs) writes nothing meanwhile.
    pub owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    /// The copy whose result made the last commit: a result delivered again (its first
    /// delivery committed and died, or lost the answer) recognises its own commit.
    pub committed_by: Option<String>,
}

impl Cursor {
    /// A new job's cursor: at the segment's start, parked, and stopped until the job starts.
    pub fn start(segment: u32) -> Self {
        Self {
            segment,
            seq: 0,
            last_key: None,
            done: false,
            parked: true,
            epoch: 0,
            stop: true,
            items: 0,
            bytes: 0,
            rejected: 0,
            expired: 0,
            throttles: 0,
            rate: None,
            samples: vec![],
            pass: Pass::Copy,
            check: None,
            shard: None,
            updated_at: None,
            owner: None,
            lease_until: None,
            committed_by: None,
        }
    }

    /// A new shard cursor (at the shard's trim horizon), numbered `number`.
    pub fn shard(number: u32, shard: ShardCursor) -> Self {
        Self { pass: Pass::Replay, shard: Some(shard), ..Self::start(number) }
    }

    /// A slice of this segment is in flight (or owed: its follow-up is being sent).
    pub fn in_flight(&self) -> bool {
        !self.done && !self.parked
    }
}

/// Online: where a shard cursor reads the source's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardCursor {
    pub id: String,
    /// The parent shard, read to its end before this one (`None`: it has none, or it had
    /// aged out of the stream when this shard was found, which counts as read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The sequence number of the last record read (every record up to it is in the target);
    /// `None`: the shard is read from its trim horizon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    /// The change time of the last record read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<DateTime<Utc>>,
    /// The last read was at the shard's tip: it returned no record.
    #[serde(default)]
    pub at_tip: bool,
    /// Since when its reads have returned no record (`None`: its last read returned some).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since: Option<DateTime<Utc>>,
    /// The shard is closed and was read to its end (a done cursor that is not closed was
    /// drained after `complete`).
    #[serde(default)]
    pub closed: bool,
    /// Where the last read left off (every record before it is in the target), and when it
    /// was issued: the next read goes on from it while it is fresh (a shard may answer empty
    /// pages before its next records, and this keeps their way), else from `sequence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterator_at: Option<DateTime<Utc>>,
    /// No record of the shard changed before this: it did not exist when the job listed the
    /// stream before finding it (set when its cursor is created), and a child begins when its
    /// parent ends, after its parent's last record and floor (raised when it is launched).
    /// `None` for a shard found at the first listing, without a parent known to the job (the
    /// job's `since` bounds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<DateTime<Utc>>,
}

impl ShardCursor {
    pub fn new(id: impl Into<String>, parent: Option<String>) -> Self {
        Self {
            id: id.into(),
            parent,
            sequence: None,
            changed_at: None,
            at_tip: false,
            empty_since: None,
            closed: false,
            iterator: None,
            iterator_at: None,
            floor: None,
        }
    }

    /// Its lag at `now`, in milliseconds: 0 at its tip, else the age of its last record
    /// (`None`: not read yet).
    pub fn lag_ms(&self, now: DateTime<Utc>) -> Option<u64> {
        if self.at_tip {
            return Some(0);
        }
        self.changed_at.map(|t| (now - t).num_milliseconds().max(0) as u64)
    }
}

/// The status as people read it: `Running (pausing)`, `Running (stalled: 2 segments, ...)`.
fn status_label(status: JobStatus, pending: Option<JobStatus>, stalled: u32) -> String {
    match (status, pending) {
        (JobStatus::Running, Some(JobStatus::Paused)) => "Running (pausing)".into(),
        (JobStatus::Running, Some(JobStatus::Cancelled)) => "Running (cancelling)".into(),
        (JobStatus::Running, None) if stalled > 0 => format!(
            "Running (stalled: {stalled} segment{}, see the copy-chunk DLQ)",
            if stalled == 1 { "" } else { "s" }
        ),
        (s, _) => s.to_string(),
    }
}

/// Percent of the estimated total processed (100 once completed, below it until then).
fn percent(status: JobStatus, processed: u64, estimated_total: u64) -> f64 {
    if status == JobStatus::Completed {
        return 100.0;
    }
    if estimated_total == 0 {
        return 0.0;
    }
    (processed as f64 / estimated_total as f64 * 100.0).min(99.9)
}

/// What `list` shows of a job: the job item's attributes that the control table's `by-created`
/// index projects (list never reads whole job items).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub name: JobName,
    pub spec: JobSpec,
    pub status: JobStatus,
    #[serde(default)]
    pub pending: Option<JobStatus>,
    #[serde(default)]
    pub stalled: u32,
    pub estimated_total: u64,
    #[serde(default)]
    pub items_copied: u64,
    #[serde(default)]
    pub items_rejected: u64,
    pub created_at: DateTime<Utc>,
}

impl JobSummary {
    /// The job item attributes the list index projects (besides its keys).
    pub const ATTRIBUTES: [&'static str; 9] = [
        "name",
        "spec",
        "status",
        "pending",
        "stalled",
        "estimated_total",
        "items_copied",
        "items_rejected",
        "created_at",
    ];

    pub fn status_label(&self) -> String {
        status_label(self.status, self.pending, self.stalled)
    }

    pub fn percent(&self) -> f64 {
        percent(self.status, self.items_copied + self.items_rejected, self.estimated_total)
    }
}

/// What a job has copied: the sum of its cursors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub items: u64,
    pub bytes: u64,
    pub rejected: u64,
    pub expired: u64,
    pub throttles: u64,
    /// Up to [`MAX_REJECTED_SAMPLES`], in segment order.
    pub samples: Vec<RejectedItem>,
    pub segments_done: u32,
    /// The earliest phase of a segment.
    pub phase: Phase,
    /// Online: the shard cursors' sum (`None`: no shard read yet).
    pub replay: Option<ReplayProgress>,
}

impl Progress {
    pub fn of(cursors: &[Cursor]) -> Self {
        let now = Utc::now();
        let mut p = Progress::default();
        let mut replay = ReplayProgress::default();
        for c in cursors {
            p.rejected += c.rejected;
            p.throttles += c.throttles;
            let room = MAX_REJECTED_SAMPLES.saturating_sub(p.samples.len());
            p.samples.extend(c.samples.iter().take(room).cloned());
            let Some(shard) = &c.shard else {
                p.items += c.items;
                p.bytes += c.bytes;
                p.expired += c.expired;
                p.segments_done += u32::from(c.done);
                continue;
            };
            replay.records_applied += c.items;
            replay.shards += 1;
            if !c.done {
                replay.open_shards += 1;
                replay.lag_ms = replay.lag_ms.max(shard.lag_ms(now));
            }
        }
        p.replay = (replay.shards > 0).then_some(replay);
        p.phase = cursors.iter().filter(|c| c.shard.is_none()).map(|c| c.pass.phase()).min().unwrap_or_default();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_without_a_parallelism_gets_one_segment_per_two_gib_of_its_source() {
        const GIB: u64 = 1 << 30;
        assert_eq!(parallelism_for_size(0, 4), 4);
        assert_eq!(parallelism_for_size(7 * GIB, 4), 4);
        assert_eq!(parallelism_for_size(9 * GIB, 4), 5);
        assert_eq!(parallelism_for_size(1_000 * GIB, 4), 500);
        assert_eq!(parallelism_for_size(10_000 * GIB, 4), MAX_PARALLELISM);
        assert_eq!(parallelism_for_size(0, 0), 1);
    }

    #[test]
    fn names_are_validated() {
        assert!(JobName::parse("j1").is_ok());
        assert!(JobName::parse("job_2024-01").is_ok());
        for bad in ["", "-x", "has space", "a/b", &"x".repeat(65)] {
            let err = JobName::parse(bad).unwrap_err();
            assert!(err.0.contains("invalid job name"), "{err}");
        }
        assert!(TableName::parse("orders.v2_x-y").is_ok());
        assert!(TableName::parse("ab").is_err());
        assert!(TableName::parse("a b c").is_err());
    }

    #[test]
    fn state_machine_follows_design() {
        use JobStatus::*;
        assert!(Queued.can_become(Running));
        assert!(Running.can_become(Paused) && Paused.can_become(Running));
        assert!(Running.can_become(Completed));
        assert!(!Queued.can_become(Completed) && !Paused.can_become(Completed));
        for s in [Queued, Running, Paused] {
            assert!(s.can_become(Failed) && s.can_become(Cancelled));
        }
        for f in [Completed, Failed, Cancelled] {
            for t in JobStatus::ALL {
                assert!(!f.can_become(t), "{f} -> {t}");
            }
        }
    }

    #[test]
    fn key_schema_rejections_name_the_attribute() {
        let ks = KeySchema {
            partition: KeyAttribute { name: "customer".into(), kind: KeyType::S },
            sort: Some(KeyAttribute { name: "ts".into(), kind: KeyType::N }),
        };
        let mut item: Item = HashMap::new();
        item.insert("customer".into(), AttributeValue::S("c1".into()));
        assert_eq!(ks.rejection(&item).unwrap(), "missing key attribute \"ts\"");
        item.insert("ts".into(), AttributeValue::S("x".into()));
        assert!(ks.rejection(&item).unwrap().contains("must be a non-empty N, found S"));
        item.insert("ts".into(), AttributeValue::N("5".into()));
        assert_eq!(ks.rejection(&item), None);
        assert_eq!(ks.key_of(&item).len(), 2);
    }

    #[test]
    fn keys_render_the_same_whatever_the_map_order() {
        let a: Item = [("b", "2"), ("a", "1"), ("c", "3")]
            .iter()
            .map(|(k, v)| (k.to_string(), AttributeValue::N(v.to_string())))
            .collect();
        let mut b = Item::new();
        for k in ["c", "a", "b"] {
            b.insert(k.to_string(), a[k].clone());
        }
        assert_eq!(render_key(&a), r#"{"a":{"N":"1"},"b":{"N":"2"},"c":{"N":"3"}}"#);
        assert_eq!(render_key(&a), render_key(&b));
    }
}
