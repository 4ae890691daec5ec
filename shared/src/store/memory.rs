//! The in-memory adapter of the control table, for fast handler tests. It enforces the same
//! rules ([`crate::rules`]) and conditions as the DynamoDB adapter, each write atomically
//! under one lock as DynamoDB applies one UpdateItem, so it is never more atomic than the
//! real store (`tests/store.rs` runs the same cases on both). Faults can be scripted per
//! operation to test what handlers do when the control table throttles.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Applied, CursorStore, InsertError, JobPage, JobStore, ListQuery, Milestone, SliceCommit, Transition};
use crate::error::{AwsError, ErrorKind};
use crate::model::{
    Cursor, Job, JobName, JobStatus, JobSummary, Pass, Progress, SegmentCheck, StatusChange, Verification,
    MAX_REJECTED_SAMPLES,
};
use crate::rules::{claim_applies, commit_rule, sync_applies, unpark_applies, Commit};
use crate::scheduler::Scheduler;

#[derive(Default)]
pub struct MemoryStore {
    pub state: Mutex<StoreState>,
    /// Scripted outcomes per operation name: each call takes the next; `Some(kind)` fails it.
    faults: Mutex<HashMap<&'static str, VecDeque<Option<ErrorKind>>>>,
    /// Commits whose answer is lost: each applies, and the caller gets the answer of the
    /// SDK's automatic retry of the same write (which finds the cursor moved on).
    lost_commit_answers: Mutex<u32>,
}

#[derive(Default, Clone, Debug)]
pub struct StoreState {
    pub jobs: BTreeMap<JobName, Job>,
    pub cursors: BTreeMap<(JobName, u32), Cursor>,
    pub scheduler: Scheduler,
    pub region: Option<String>,
    pub writes: u64,
}

impl StoreState {
    /// Write `next` if it is the version after the stored one.
    fn swap_scheduler(&mut self, next: &Scheduler) -> bool {
        if next.version != self.scheduler.version + 1 {
            return false;
        }
        self.scheduler = next.clone();
        true
    }

    /// One commit, as the DynamoDB store's conditional UpdateItem applies it.
    fn commit(&mut self, name: &JobName, c: &SliceCommit) -> Commit {
        let Some(cursor) = self.cursors.get_mut(&(name.clone(), c.segment)) else { return Commit::Stale };
        let decision = commit_rule(cursor, c.seq, &c.copy, c.at);
        if decision == Commit::Stale {
            return Commit::Stale;
        }
        cursor.seq += 1;
        cursor.last_key = if c.done || c.pass.is_some() { None } else { c.next_key.clone() };
        if let Some(pass) = c.pass {
            cursor.pass = pass;
        }
        if c.check.is_some() {
            cursor.check = c.check.clone();
        }
        if c.shard.is_some() {
            cursor.shard = c.shard.clone();
        }
        cursor.done = c.done;
        cursor.parked = decision == Commit::Parked;
        cursor.items += c.items;
        cursor.bytes += c.bytes;
        cursor.rejected += c.rejected;
        cursor.expired += c.expired;
        cursor.throttles += c.throttles;
        if c.rate.is_some() {
            cursor.rate = c.rate;
        }
        let room = MAX_REJECTED_SAMPLES.saturating_sub(cursor.samples.len());
        cursor.samples.extend(c.samples.iter().take(room).cloned());
        cursor.updated_at = Some(c.at);
        cursor.committed_by = Some(c.copy.clone());
        cursor.owner = None;
        cursor.lease_until = None;
        self.writes += 1;
        decision
    }

    fn job_at(&mut self, name: &JobName, status: JobStatus, epoch: u64) -> Option<&mut Job> {
        self.jobs.get_mut(name).filter(|j| j.status == status && j.epoch == epoch)
    }
}

impl MemoryStore {
    /// The next calls of `op` (a method name, e.g. `"scheduler"`) succeed or fail as
    /// `outcomes` says, in order; later calls succeed.
    pub fn script(&self, op: &'static str, outcomes: impl IntoIterator<Item = Option<ErrorKind>>) {
        self.faults.lock().unwrap().entry(op).or_default().extend(outcomes);
    }

    /// The next `n` commits apply but their answer is lost, as when DynamoDB applied a write
    /// whose response never arrived and the SDK sent it again.
    pub fn lose_commit_answers(&self, n: u32) {
        *self.lost_commit_answers.lock().unwrap() += n;
    }

    fn fault(&self, op: &'static str) -> Result<(), AwsError> {
        match self.faults.lock().unwrap().get_mut(op).and_then(VecDeque::pop_front).flatten() {
            Some(kind) => Err(AwsError::new(kind, op, format!("scripted {kind:?}"))),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl CursorStore for MemoryStore {
    async fn create_cursors(&self, name: &JobName, cursors: &[Cursor]) -> Result<(), AwsError> {
        self.fault("create_cursors")?;
        let mut s = self.state.lock().unwrap();
        for c in cursors {
            if let std::collections::btree_map::Entry::Vacant(e) = s.cursors.entry((name.clone(), c.segment)) {
                e.insert(c.clone());
                s.writes += 1;
            }
        }
        Ok(())
    }

    async fn cursor(&self, name: &JobName, segment: u32) -> Result<Option<Cursor>, AwsError> {
        self.fault("cursor")?;
        Ok(self.state.lock().unwrap().cursors.get(&(name.clone(), segment)).cloned())
    }

    async fn cursors(&self, name: &JobName) -> Result<Vec<Cursor>, AwsError> {
        self.fault("cursors")?;
        let s = self.state.lock().unwrap();
        Ok(s.cursors.iter().filter(|((j, _), _)| j == name).map(|(_, c)| c.clone()).collect())
    }

    async fn commit_slice(&self, name: &JobName, c: &SliceCommit) -> Result<Commit, AwsError> {
        self.fault("commit_slice")?;
        let mut s = self.state.lock().unwrap();
        let decision = s.commit(name, c);
        let mut lost = self.lost_commit_answers.lock().unwrap();
        if *lost > 0 && decision != Commit::Stale {
            *lost -= 1;
            return Ok(s.commit(name, c));
        }
        Ok(decision)
    }

    async fn sync_cursor(
        &self,
        name: &JobName,
        segment: u32,
        epoch: u64,
        stop: bool,
        _at: DateTime<Utc>,
    ) -> Result<Option<Cursor>, AwsError> {
        self.fault("sync_cursor")?;
        let mut s = self.state.lock().unwrap();
        let Some(cursor) = s.cursors.get_mut(&(name.clone(), segment)) else { return Ok(None) };
        if sync_applies(cursor, epoch) {
            cursor.epoch = epoch;
            cursor.stop = stop;
            let now = cursor.clone();
            s.writes += 1;
            return Ok(Some(now));
        }
        Ok(Some(cursor.clone()))
    }

    async fn unpark(
        &self,
        name: &JobName,
        segment: u32,
        seq: u64,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        self.fault("unpark")?;
        let mut s = self.state.lock().unwrap();
        let Some(cursor) = s.cursors.get_mut(&(name.clone(), segment)) else { return Ok(false) };
        if !unpark_applies(cursor, seq, epoch) {
            return Ok(false);
        }
        cursor.parked = false;
        cursor.updated_at = Some(at);
        s.writes += 1;
        Ok(true)
    }

    async fn claim(
        &self,
        name: &JobName,
        segment: u32,
        seq: u64,
        copy: &str,
        until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        self.fault("claim")?;
        let mut s = self.state.lock().unwrap();
        let Some(cursor) = s.cursors.get_mut(&(name.clone(), segment)) else { return Ok(false) };
        if !claim_applies(cursor, seq, copy, at) {
            return Ok(false);
        }
        cursor.parked = false;
        cursor.owner = Some(copy.to_string());
        cursor.lease_until = Some(until);
        cursor.updated_at = Some(at);
        s.writes += 1;
        Ok(true)
    }

    async fn begin_pass(
        &self,
        name: &JobName,
        segment: u32,
        from: Pass,
        to: Pass,
        check: &SegmentCheck,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        self.fault("begin_pass")?;
        let mut s = self.state.lock().unwrap();
        let Some(cursor) = s.cursors.get_mut(&(name.clone(), segment)) else { return Ok(false) };
        if !(cursor.done && cursor.pass == from) {
            return Ok(false);
        }
        cursor.pass = to;
        cursor.done = false;
        cursor.parked = true;
        cursor.check = Some(check.clone());
        cursor.updated_at = Some(at);
        cursor.seq += 1;
        cursor.last_key = None;
        cursor.owner = None;
        cursor.lease_until = None;
        s.writes += 1;
        Ok(true)
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn insert_job(&self, job: &Job, scheduler: &Scheduler) -> Result<(), InsertError> {
        self.fault("insert_job")?;
        let mut s = self.state.lock().unwrap();
        if s.jobs.contains_key(&job.name) {
            return Err(InsertError::JobExists);
        }
        if !s.swap_scheduler(scheduler) {
            return Err(InsertError::SchedulerChanged);
        }
        s.jobs.insert(job.name.clone(), job.clone());
        s.writes += 2;
        Ok(())
    }

    async fn get_job(&self, name: &JobName) -> Result<Option<Job>, AwsError> {
        self.fault("get_job")?;
        Ok(self.state.lock().unwrap().jobs.get(name).cloned())
    }

    async fn list_jobs(&self, q: &ListQuery) -> Result<JobPage, AwsError> {
        self.fault("list_jobs")?;
        let s = self.state.lock().unwrap();
        let mut jobs: Vec<JobSummary> =
            s.jobs.values().filter(|j| q.status.is_none_or(|st| j.status == st)).map(Job::summary).collect();
        jobs.sort_by(|a, b| (b.created_at, &b.name).cmp(&(a.created_at, &a.name)));
        let skip = q.after.as_ref().map_or(0, |a| jobs.iter().position(|j| j.name.as_str() == a).map_or(0, |i| i + 1));
        let rest: Vec<JobSummary> = jobs.into_iter().skip(skip).collect();
        let next = (rest.len() > q.limit).then(|| rest[q.limit - 1].name.to_string());
        Ok(JobPage { jobs: rest.into_iter().take(q.limit).collect(), next })
    }

    async fn transition(&self, name: &JobName, t: &Transition) -> Result<Applied, AwsError> {
        self.fault("transition")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.job_at(name, t.from, t.epoch) else { return Ok(Applied::JobChanged) };
        if t.pending.is_some() && job.pending != t.pending {
            return Ok(Applied::JobChanged);
        }
        assert!(t.from.can_become(t.to), "{} -> {}", t.from, t.to);
        if let Some(next) = &t.scheduler {
            if !s.swap_scheduler(next) {
                return Ok(Applied::SchedulerChanged);
            }
        }
        let mut job = s.jobs.remove(name).expect("checked above");
        if let Some(v) = &t.verification {
            job.verification = Some(v.clone());
        }
        if let Some(p) = &t.progress {
            job = job.with_progress(p);
            job.progress_at = Some(t.at);
        }
        job.status = t.to;
        job.updated_at = t.at;
        job.version += 1;
        job.epoch += 1;
        job.pending = None;
        job.history.push(StatusChange { status: t.to, at: t.at });
        if t.started {
            job.started_at = Some(t.at);
        }
        if t.to == JobStatus::Running {
            job.launched_at = Some(t.at);
        }
        if t.to.is_final() {
            job.completed_at = Some(t.at);
        }
        if t.duration_ms.is_some() {
            job.duration_ms = t.duration_ms;
        }
        if t.error.is_some() {
            job.error = t.error.clone();
        }
        s.jobs.insert(name.clone(), job);
        s.writes += 1 + u64::from(t.scheduler.is_some());
        Ok(Applied::Yes)
    }

    async fn request_stop(
        &self,
        name: &JobName,
        to: JobStatus,
        replaces: Option<JobStatus>,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        self.fault("request_stop")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.job_at(name, JobStatus::Running, epoch).filter(|j| j.pending == replaces) else {
            return Ok(false);
        };
        job.pending = Some(to);
        job.updated_at = at;
        job.epoch += 1;
        s.writes += 1;
        Ok(true)
    }

    async fn withdraw_stop(
        &self,
        name: &JobName,
        pending: JobStatus,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        self.fault("withdraw_stop")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.job_at(name, JobStatus::Running, epoch).filter(|j| j.pending == Some(pending)) else {
            return Ok(false);
        };
        job.pending = None;
        job.updated_at = at;
        job.launched_at = Some(at);
        job.epoch += 1;
        s.writes += 1;
        Ok(true)
    }

    async fn claim_progress(
        &self,
        name: &JobName,
        seen: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        self.fault("claim_progress")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.jobs.get_mut(name).filter(|j| j.progress_at == seen) else { return Ok(false) };
        job.progress_at = Some(at);
        s.writes += 1;
        Ok(true)
    }

    async fn write_progress(&self, name: &JobName, p: &Progress, claimed: DateTime<Utc>) -> Result<bool, AwsError> {
        self.fault("write_progress")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.jobs.remove(name) else { return Ok(false) };
        let applies = job.progress_at == Some(claimed);
        s.jobs.insert(name.clone(), if applies { job.with_progress(p) } else { job });
        s.writes += u64::from(applies);
        Ok(applies)
    }

    async fn mark_announced(&self, name: &JobName, announced: u64) -> Result<(), AwsError> {
        self.fault("mark_announced")?;
        let mut s = self.state.lock().unwrap();
        if let Some(job) = s.jobs.get_mut(name).filter(|j| j.announced < announced) {
            job.announced = announced;
            s.writes += 1;
        }
        Ok(())
    }

    async fn mark_listed(&self, name: &JobName, at: DateTime<Utc>) -> Result<(), AwsError> {
        self.fault("mark_listed")?;
        let mut s = self.state.lock().unwrap();
        if let Some(job) = s.jobs.get_mut(name) {
            job.stream_listed_at = Some(at);
            s.writes += 1;
        }
        Ok(())
    }

    async fn mark(&self, name: &JobName, milestone: Milestone, at: DateTime<Utc>) -> Result<bool, AwsError> {
        self.fault("mark")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.jobs.get_mut(name).filter(|j| milestone.applies(j.status)) else { return Ok(false) };
        let field = match milestone {
            Milestone::Verifying => &mut job.verify_started_at,
            Milestone::Replay => &mut job.replay_from,
            Milestone::Complete => &mut job.complete_requested_at,
        };
        if field.is_some() {
            return Ok(false);
        }
        *field = Some(at);
        s.writes += 1;
        Ok(true)
    }

    async fn set_verification(&self, name: &JobName, v: &Verification) -> Result<bool, AwsError> {
        self.fault("set_verification")?;
        let mut s = self.state.lock().unwrap();
        let Some(job) = s.jobs.get_mut(name).filter(|j| j.status == JobStatus::Running && j.verification.is_none())
        else {
            return Ok(false);
        };
        job.verification = Some(v.clone());
        s.writes += 1;
        Ok(true)
    }

    async fn set_stalled(&self, name: &JobName, stalled: u32) -> Result<(), AwsError> {
        self.fault("set_stalled")?;
        let mut s = self.state.lock().unwrap();
        if let Some(job) = s.jobs.get_mut(name) {
            job.stalled = stalled;
            s.writes += 1;
        }
        Ok(())
    }

    async fn scheduler(&self) -> Result<Scheduler, AwsError> {
        self.fault("scheduler")?;
        Ok(self.state.lock().unwrap().scheduler.clone())
    }

    async fn write_scheduler(&self, scheduler: &Scheduler) -> Result<bool, AwsError> {
        self.fault("write_scheduler")?;
        Ok(self.state.lock().unwrap().swap_scheduler(scheduler))
    }

    async fn write_region(&self) -> Result<Option<String>, AwsError> {
        self.fault("write_region")?;
        Ok(self.state.lock().unwrap().region.clone())
    }

    async fn set_write_region(&self, region: &str, _at: DateTime<Utc>) -> Result<(), AwsError> {
        self.fault("set_write_region")?;
        self.state.lock().unwrap().region = Some(region.to_string());
        Ok(())
    }

    async fn mark_answered(&self, name: &JobName) -> Result<bool, AwsError> {
        self.fault("mark_answered")?;
        let mut s = self.state.lock().unwrap();
        let Some(origin) = s.jobs.get_mut(name).and_then(|j| j.origin.as_mut()) else { return Ok(false) };
        if origin.answered {
            return Ok(false);
        }
        origin.answered = true;
        s.writes += 1;
        Ok(true)
    }
}
