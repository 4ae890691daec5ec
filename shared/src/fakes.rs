//! In-memory fakes of the capabilities, for fast handler tests. They follow the real
//! adapters' contracts (conditional commits, a scan that can end on an exactly full page).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::AwsError;
use crate::model::{render_key, Cursor, Item, Job, JobName, JobStatus, KeySchema, TableName};
use crate::queue::{Outbox, QueueKind};
use crate::responder::Responder;
use crate::store::{
    Applied, Commit, ControlStore, InsertError, JobPage, ListQuery, Scheduler, SliceCommit, Transition,
};
use crate::tables::{ScanPage, TableInfo, Tables, WriteError};
use aws_lambda_events::event::cloudformation::CloudFormationCustomResourceResponse;
use chrono::{DateTime, Utc};

#[derive(Default)]
pub struct FakeStore {
    pub state: Mutex<StoreState>,
}

#[derive(Default, Clone)]
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
}

#[async_trait]
impl ControlStore for FakeStore {
    async fn insert_job(&self, job: &Job, cursors: &[Cursor], scheduler: &Scheduler) -> Result<(), InsertError> {
        let mut s = self.state.lock().unwrap();
        if s.jobs.contains_key(&job.name) {
            return Err(InsertError::JobExists);
        }
        if !s.swap_scheduler(scheduler) {
            return Err(InsertError::SchedulerChanged);
        }
        s.jobs.insert(job.name.clone(), job.clone());
        for c in cursors {
            s.cursors.insert((job.name.clone(), c.segment), c.clone());
        }
        s.writes += 2 + cursors.len() as u64;
        Ok(())
    }

    async fn get_job(&self, name: &JobName) -> Result<Option<Job>, AwsError> {
        Ok(self.state.lock().unwrap().jobs.get(name).cloned())
    }

    async fn list_jobs(&self, q: &ListQuery) -> Result<JobPage, AwsError> {
        let s = self.state.lock().unwrap();
        let mut jobs: Vec<Job> =
            s.jobs.values().filter(|j| q.status.is_none_or(|st| j.status == st)).cloned().collect();
        jobs.sort_by(|a, b| (b.created_at, &b.name).cmp(&(a.created_at, &a.name)));
        let skip = q.after.as_ref().map_or(0, |a| jobs.iter().position(|j| j.name.as_str() == a).map_or(0, |i| i + 1));
        let rest: Vec<Job> = jobs.into_iter().skip(skip).collect();
        let next = (rest.len() > q.limit).then(|| rest[q.limit - 1].name.to_string());
        Ok(JobPage { jobs: rest.into_iter().take(q.limit).collect(), next })
    }

    async fn cursors(&self, name: &JobName) -> Result<Vec<Cursor>, AwsError> {
        let s = self.state.lock().unwrap();
        Ok(s.cursors.iter().filter(|((j, _), _)| j == name).map(|(_, c)| c.clone()).collect())
    }

    async fn commit_slice(&self, name: &JobName, c: &SliceCommit) -> Result<Commit, AwsError> {
        let mut s = self.state.lock().unwrap();
        let job = &s.jobs[name];
        let park = !(job.status == JobStatus::Running && job.pending.is_none());
        let cursor = s.cursors.get_mut(&(name.clone(), c.segment)).expect("cursor exists");
        if cursor.seq != c.seq || cursor.done {
            return Ok(Commit::Stale);
        }
        cursor.seq += 1;
        cursor.last_key = c.next_key.clone();
        cursor.done = c.next_key.is_none();
        cursor.items += c.items;
        cursor.parked = park;
        let done = cursor.done;
        let job = s.jobs.get_mut(name).expect("job exists");
        job.items_copied += c.items;
        job.bytes_copied += c.bytes;
        job.items_rejected += c.rejected;
        job.segments_done += u32::from(done);
        job.rejected_samples.extend(c.samples.iter().cloned());
        job.updated_at = c.at;
        s.writes += 2;
        Ok(if park { Commit::Parked } else { Commit::Continued })
    }

    async fn mark_answered(&self, name: &JobName) -> Result<bool, AwsError> {
        let mut s = self.state.lock().unwrap();
        let Some(origin) = s.jobs.get_mut(name).and_then(|j| j.origin.as_mut()) else { return Ok(false) };
        if origin.answered {
            return Ok(false);
        }
        origin.answered = true;
        s.writes += 1;
        Ok(true)
    }

    async fn unpark(&self, name: &JobName, segment: u32, seq: u64) -> Result<bool, AwsError> {
        let mut s = self.state.lock().unwrap();
        let cursor = s.cursors.get_mut(&(name.clone(), segment)).expect("cursor exists");
        if !(cursor.parked && cursor.seq == seq && !cursor.done) {
            return Ok(false);
        }
        cursor.parked = false;
        s.writes += 1;
        Ok(true)
    }

    async fn request_stop(
        &self,
        name: &JobName,
        to: JobStatus,
        replaces: Option<JobStatus>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let mut s = self.state.lock().unwrap();
        let job = s.jobs.get_mut(name).expect("job exists");
        if job.status != JobStatus::Running || job.pending != replaces {
            return Ok(false);
        }
        job.pending = Some(to);
        job.updated_at = at;
        s.writes += 1;
        Ok(true)
    }

    async fn withdraw_stop(&self, name: &JobName, pending: JobStatus, at: DateTime<Utc>) -> Result<bool, AwsError> {
        let mut s = self.state.lock().unwrap();
        let job = s.jobs.get_mut(name).expect("job exists");
        if job.status != JobStatus::Running || job.pending != Some(pending) {
            return Ok(false);
        }
        job.pending = None;
        job.updated_at = at;
        s.writes += 1;
        Ok(true)
    }

    async fn transition(&self, name: &JobName, t: &Transition) -> Result<Applied, AwsError> {
        let mut s = self.state.lock().unwrap();
        let job = &s.jobs[name];
        if job.status != t.from || (t.pending.is_some() && job.pending != t.pending) {
            return Ok(Applied::JobChanged);
        }
        assert!(t.from.can_become(t.to), "{} -> {}", t.from, t.to);
        if let Some(next) = &t.scheduler {
            if !s.swap_scheduler(next) {
                return Ok(Applied::SchedulerChanged);
            }
        }
        let job = s.jobs.get_mut(name).expect("job exists");
        job.status = t.to;
        job.updated_at = t.at;
        job.version += 1;
        job.pending = None;
        job.history.push(crate::model::StatusChange { status: t.to, at: t.at });
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
        s.writes += 1 + u64::from(t.scheduler.is_some());
        Ok(Applied::Yes)
    }

    async fn scheduler(&self) -> Result<Scheduler, AwsError> {
        Ok(self.state.lock().unwrap().scheduler.clone())
    }

    async fn write_scheduler(&self, scheduler: &Scheduler) -> Result<bool, AwsError> {
        Ok(self.state.lock().unwrap().swap_scheduler(scheduler))
    }

    async fn write_region(&self) -> Result<Option<String>, AwsError> {
        Ok(self.state.lock().unwrap().region.clone())
    }

    async fn set_write_region(&self, region: &str, _at: DateTime<Utc>) -> Result<(), AwsError> {
        self.state.lock().unwrap().region = Some(region.to_string());
        Ok(())
    }
}

#[derive(Default)]
pub struct FakeOutbox {
    pub sent: Mutex<Vec<(QueueKind, String)>>,
    /// When set, every send fails with a retryable error.
    pub broken: std::sync::atomic::AtomicBool,
}

impl FakeOutbox {
    pub fn take(&self) -> Vec<(QueueKind, String)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

#[async_trait]
impl Outbox for FakeOutbox {
    async fn send(&self, to: QueueKind, bodies: Vec<String>) -> Result<(), AwsError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AwsError::Retryable {
                context: "send".into(),
                detail: "broken".into(),
                source: "broken".into(),
            });
        }
        self.sent.lock().unwrap().extend(bodies.into_iter().map(|b| (to, b)));
        Ok(())
    }
}

/// Records every CloudFormation answer, by response URL.
#[derive(Default)]
pub struct FakeResponder {
    pub answers: Mutex<Vec<(String, CloudFormationCustomResourceResponse)>>,
}

impl FakeResponder {
    pub fn take(&self) -> Vec<(String, CloudFormationCustomResourceResponse)> {
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

#[async_trait]
impl Responder for FakeResponder {
    async fn respond(&self, url: &str, response: &CloudFormationCustomResourceResponse) -> Result<(), AwsError> {
        self.answers.lock().unwrap().push((url.to_string(), response.clone()));
        Ok(())
    }
}

pub struct FakeTable {
    pub key: KeySchema,
    /// Items by rendered key.
    pub items: BTreeMap<String, Item>,
}

#[derive(Default)]
pub struct FakeTables {
    pub tables: Mutex<HashMap<TableName, FakeTable>>,
    /// BatchWriteItem calls that leave their last item unprocessed (throttling).
    pub unprocessed_calls: Mutex<u32>,
}

impl FakeTables {
    pub fn add(&self, name: &str, key: KeySchema, items: Vec<Item>) {
        let items = items.into_iter().map(|i| (render_key(&key.key_of(&i)), i)).collect();
        self.tables.lock().unwrap().insert(TableName::parse(name).unwrap(), FakeTable { key, items });
    }

    pub fn items(&self, name: &str) -> Vec<Item> {
        self.tables.lock().unwrap()[&TableName::parse(name).unwrap()].items.values().cloned().collect()
    }
}

fn segment_of(key: &str, total: u32) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % u64::from(total)) as u32
}

#[async_trait]
impl Tables for FakeTables {
    async fn describe(&self, table: &TableName) -> Result<Option<TableInfo>, AwsError> {
        Ok(self
            .tables
            .lock()
            .unwrap()
            .get(table)
            .map(|t| TableInfo { key: t.key.clone(), item_count: t.items.len() as u64 }))
    }

    async fn scan_page(
        &self,
        table: &TableName,
        segment: u32,
        total_segments: u32,
        start_key: Option<Item>,
        limit: u32,
    ) -> Result<ScanPage, AwsError> {
        let tables = self.tables.lock().unwrap();
        let t = &tables[table];
        let start = start_key.map(|k| render_key(&k));
        let items: Vec<(&String, &Item)> = t
            .items
            .iter()
            .filter(|(k, _)| segment_of(k, total_segments) == segment)
            .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
            .take(limit as usize)
            .collect();
        // Like LocalStack: an exactly full page carries a LastEvaluatedKey.
        let last_key = (items.len() == limit as usize).then(|| t.key.key_of(items.last().unwrap().1));
        Ok(ScanPage { items: items.into_iter().map(|(_, i)| i.clone()).collect(), last_key })
    }

    async fn batch_put(&self, table: &TableName, mut items: Vec<Item>) -> Result<Vec<Item>, WriteError> {
        let mut tables = self.tables.lock().unwrap();
        let t = tables.get_mut(table).expect("table exists");
        let mut seen = std::collections::HashSet::new();
        for i in &items {
            if let Some(reason) = t.key.rejection(i) {
                return Err(WriteError::Rejected(reason));
            }
            if !seen.insert(render_key(&t.key.key_of(i))) {
                return Err(WriteError::Rejected("Provided list of item keys contains duplicates".into()));
            }
        }
        let mut unprocessed = vec![];
        let mut budget = self.unprocessed_calls.lock().unwrap();
        if *budget > 0 && !items.is_empty() {
            *budget -= 1;
            unprocessed.push(items.pop().unwrap());
        }
        for i in items {
            t.items.insert(render_key(&t.key.key_of(&i)), i);
        }
        Ok(unprocessed)
    }

    async fn put(&self, table: &TableName, item: Item) -> Result<(), WriteError> {
        let mut tables = self.tables.lock().unwrap();
        let t = tables.get_mut(table).expect("table exists");
        if let Some(reason) = t.key.rejection(&item) {
            return Err(WriteError::Rejected(reason));
        }
        t.items.insert(render_key(&t.key.key_of(&item)), item);
        Ok(())
    }
}
