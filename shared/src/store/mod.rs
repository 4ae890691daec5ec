//! The control table: job items, segment cursors, the scheduler item and the account config.
//! Every write is conditional, so a duplicate or late message finds its precondition false
//! and changes nothing. This module is the port (the capabilities and their types); the
//! DynamoDB adapter is [`dynamodb`], the item codecs [`codec`], and the in-memory adapter for
//! tests [`memory`]. The rules the conditions enforce live in [`crate::rules`].

pub(crate) mod codec;
mod dynamodb;
#[cfg(any(test, feature = "fakes"))]
pub mod memory;

pub use codec::LIST_INDEX;
pub use dynamodb::DynamoStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::AwsError;
use crate::model::{
    Cursor, Item, Job, JobError, JobName, JobStatus, JobSummary, Pass, Progress, RejectedItem, SegmentCheck,
    ShardCursor, Verification,
};
pub use crate::rules::Commit;
use crate::scheduler::Scheduler;

/// A slice's outcome, to commit on its cursor exactly once.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceCommit {
    pub segment: u32,
    /// The slice's sequence number: the cursor must expect exactly this one.
    pub seq: u64,
    /// Where the next slice starts (`None`: the segment's start, unless `done`).
    pub next_key: Option<Item>,
    /// The segment is finished.
    pub done: bool,
    pub items: u64,
    pub bytes: u64,
    pub rejected: u64,
    /// Writes the target throttled during the slice.
    pub throttles: u64,
    /// Expired items the slice left out (`--skip-expired`).
    pub expired: u64,
    /// Samples to keep on the cursor (the store keeps at most [`crate::model::MAX_REJECTED_SAMPLES`]).
    pub samples: Vec<RejectedItem>,
    pub at: DateTime<Utc>,
    /// The copy that wrote the slice (its token), recorded as the cursor's `committed_by`.
    pub copy: String,
    /// The segment's rate under the job's budget from now on (items per second), if paced.
    pub rate: Option<f64>,
    /// The slice reached the end of its pass's scan and the segment goes on with this pass,
    /// from the segment's start.
    pub pass: Option<Pass>,
    /// The segment's verification state after the slice (verifying and locating passes).
    pub check: Option<SegmentCheck>,
    /// A shard cursor's position after the slice (replay pass).
    pub shard: Option<ShardCursor>,
}

/// A status change, applied only if the job is still in `from` at control epoch `epoch`
/// (and, with `pending`, has that request pending). It raises the epoch, removes any pending
/// request and, with `scheduler`, rewrites the scheduler in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: JobStatus,
    pub to: JobStatus,
    /// The epoch the job was read at; the job's epoch becomes `epoch + 1`.
    pub epoch: u64,
    pub at: DateTime<Utc>,
    pub error: Option<JobError>,
    pub started: bool,
    pub duration_ms: Option<u64>,
    /// Apply only if this request is pending (settling a pause or cancel).
    pub pending: Option<JobStatus>,
    /// The job's counters, summed from its cursors, recorded with the move.
    pub progress: Option<Progress>,
    /// The verification's outcome, recorded with the move.
    pub verification: Option<Verification>,
    /// The scheduler's new state; written only if its version is still `version - 1`.
    pub scheduler: Option<Scheduler>,
}

/// A moment of a job's life, recorded once on the job item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Milestone {
    /// The copy ended and the verification begins (`verify_started_at`; running jobs).
    Verifying,
    /// Online: the replay of the stream begins at this time (`replay_from`; running jobs).
    Replay,
    /// Online: `complete` was asked for (`complete_requested_at`; running or paused jobs).
    Complete,
}

impl Milestone {
    /// The job item's attribute.
    pub fn attribute(self) -> &'static str {
        match self {
            Milestone::Verifying => "verify_started_at",
            Milestone::Replay => "replay_from",
            Milestone::Complete => "complete_requested_at",
        }
    }

    /// The states a job may record it in.
    pub fn applies(self, status: JobStatus) -> bool {
        status == JobStatus::Running || (self == Milestone::Complete && status == JobStatus::Paused)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The job was not in `from` at that epoch (or lacked the pending request).
    JobChanged,
    /// The scheduler changed meanwhile: read it again and retry.
    SchedulerChanged,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("job exists")]
    JobExists,
    #[error("the scheduler changed meanwhile")]
    SchedulerChanged,
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// Which jobs `list` returns: newest first, optionally one status, a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub limit: usize,
    /// The `next` token of the previous page.
    pub after: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobPage {
    pub jobs: Vec<JobSummary>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One capability: a job's segment cursors. The only part of the control table a slice's
/// copy and commit touch.
#[async_trait]
pub trait CursorStore: Send + Sync {
    /// Create these cursors of a job, each only if it does not exist yet (a repeated creation
    /// after a crash never resets a cursor).
    async fn create_cursors(&self, name: &JobName, cursors: &[Cursor]) -> Result<(), AwsError>;
    /// One cursor, read consistently; `None` if it does not exist.
    async fn cursor(&self, name: &JobName, segment: u32) -> Result<Option<Cursor>, AwsError>;
    /// Every cursor of a job, read consistently, in segment order.
    async fn cursors(&self, name: &JobName) -> Result<Vec<Cursor>, AwsError>;
    /// Commit a slice on its cursor alone: move it by one slice, add to its counters, record
    /// the copy that wrote it and release the copy's hold, as [`crate::rules::commit_rule`]
    /// decides from the cursor at the moment of the write.
    async fn commit_slice(&self, name: &JobName, commit: &SliceCommit) -> Result<Commit, AwsError>;
    /// Bring a cursor to control epoch `epoch` with `stop`, if [`crate::rules::sync_applies`];
    /// the cursor as it is afterwards (`None` if it does not exist).
    async fn sync_cursor(
        &self,
        name: &JobName,
        segment: u32,
        epoch: u64,
        stop: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<Cursor>, AwsError>;
    /// Mark a parked cursor as having slice `seq` in flight, for the launch at control epoch
    /// `epoch`, if [`crate::rules::unpark_applies`]; `false` if it did not.
    async fn unpark(
        &self,
        name: &JobName,
        segment: u32,
        seq: u64,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
    /// Start pass `to` (from the segment's start, parked until its launch, the slice sequence
    /// moved on so no message of an earlier pass is expected) on a segment done with pass
    /// `from`, its verification state becoming `check`; `false` if it was not done with `from`.
    async fn begin_pass(
        &self,
        name: &JobName,
        segment: u32,
        from: Pass,
        to: Pass,
        check: &SegmentCheck,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
    /// Let copy `copy` take the cursor for slice `seq` until `until` (marking it in flight),
    /// if [`crate::rules::claim_applies`] at `at`; `false` if it did not.
    async fn claim(
        &self,
        name: &JobName,
        segment: u32,
        seq: u64,
        copy: &str,
        until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
}

/// One capability: jobs, the scheduler and the account config.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Insert a job and write the scheduler's new state, atomically. Its cursors are created
    /// apart ([`CursorStore::create_cursors`]), in pages: a job may have 1,000 of them.
    async fn insert_job(&self, job: &Job, scheduler: &Scheduler) -> Result<(), InsertError>;
    async fn get_job(&self, name: &JobName) -> Result<Option<Job>, AwsError>;
    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage, AwsError>;
    async fn transition(&self, name: &JobName, t: &Transition) -> Result<Applied, AwsError>;
    /// Record a pause or cancel request of a `Running` job at control epoch `epoch` whose
    /// pending request is `replaces` (`None`: no request), raising the epoch. `false` if the
    /// job was not in that state.
    async fn request_stop(
        &self,
        name: &JobName,
        to: JobStatus,
        replaces: Option<JobStatus>,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
    /// Withdraw the pending request `pending` of a `Running` job at epoch `epoch`, raising the
    /// epoch (the job is launched again); `false` if it was settled or changed meanwhile.
    async fn withdraw_stop(
        &self,
        name: &JobName,
        pending: JobStatus,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
    /// Take the turn to refresh the job's counters: only if they were last refreshed at
    /// `seen` (so one caller refreshes at a time); `false` if another caller took it.
    async fn claim_progress(
        &self,
        name: &JobName,
        seen: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
    /// Write the counters of the turn taken at `claimed`, if no later turn was taken.
    async fn write_progress(&self, name: &JobName, p: &Progress, claimed: DateTime<Utc>) -> Result<bool, AwsError>;
    /// Record that the first `n` entries of the job's history were published as events, if
    /// fewer were recorded so far.
    async fn mark_announced(&self, name: &JobName, n: u64) -> Result<(), AwsError>;
    /// Online: record that the job listed its stream's shards at `at` (see
    /// [`crate::model::Job::stream_listed_at`]).
    async fn mark_listed(&self, name: &JobName, at: DateTime<Utc>) -> Result<(), AwsError>;
    /// Record a moment of a job's life once; `false` if it was recorded already or the job is
    /// not in a state it applies to ([`Milestone::applies`]).
    async fn mark(&self, name: &JobName, milestone: Milestone, at: DateTime<Utc>) -> Result<bool, AwsError>;
    /// Record a running job's verification outcome once (the keyed pass reads its buckets);
    /// `false` if one was recorded already or the job is not running.
    async fn set_verification(&self, name: &JobName, v: &Verification) -> Result<bool, AwsError>;
    /// Record how many segments the reconciler found stalled.
    async fn set_stalled(&self, name: &JobName, stalled: u32) -> Result<(), AwsError>;
    async fn scheduler(&self) -> Result<Scheduler, AwsError>;
    /// Write the scheduler alone (`false` if its version moved meanwhile).
    async fn write_scheduler(&self, scheduler: &Scheduler) -> Result<bool, AwsError>;
    /// The account's write region, if one was set.
    async fn write_region(&self) -> Result<Option<String>, AwsError>;
    async fn set_write_region(&self, region: &str, at: DateTime<Utc>) -> Result<(), AwsError>;
    /// Record that the CloudFormation request waiting on the job was answered; `false` if it
    /// already was.
    async fn mark_answered(&self, name: &JobName) -> Result<bool, AwsError>;
}

/// Wait a little before trying again after a conflict: 5-50 ms, more with each attempt.
pub async fn conflict_pause(attempt: u32) {
    let ms = rand::random_range(5..=10 * u64::from(attempt.clamp(1, 5)));
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// The whole control table.
pub trait ControlStore: JobStore + CursorStore {}
impl<T: JobStore + CursorStore> ControlStore for T {}

/// A job with its counters summed from its cursors (exact at this moment, where the job
/// item's own are refreshed every few seconds), and its cursors.
pub async fn live_job<S: ControlStore + ?Sized>(
    store: &S,
    name: &JobName,
) -> Result<Option<(Job, Vec<Cursor>)>, AwsError> {
    let Some(job) = store.get_job(name).await? else { return Ok(None) };
    let cursors = store.cursors(name).await?;
    Ok(Some((job.with_progress(&Progress::of(&cursors)), cursors)))
}
