//! The control table: job items, segment cursors, the scheduler slot. Every write is
//! conditional, so a duplicate or late message finds its precondition false and changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{classify, AwsError};
use crate::model::{Cursor, Item, Job, JobError, JobName, JobStatus, RejectedItem, StatusChange};

/// A slice's outcome, to commit on its cursor and job exactly once.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceCommit {
    pub segment: u32,
    /// The slice's sequence number: the cursor must expect exactly this one.
    pub seq: u64,
    /// Where the next slice starts; `None` marks the segment done.
    pub next_key: Option<Item>,
    pub items: u64,
    pub bytes: u64,
    pub rejected: u64,
    /// Samples to append to the job's (the caller bounds them).
    pub samples: Vec<RejectedItem>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Committed while the job was `Running` with no pause or cancel request: the segment
    /// goes on (its next slice is owed).
    Continued,
    /// Committed while the job was paused, pausing, cancelling or finished: the cursor is
    /// parked and nothing follows.
    Parked,
    /// The cursor had moved on (or was done): a duplicate or stale result.
    Stale,
}

/// A job in the scheduler, with the write region it was created in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub job: JobName,
    pub region: String,
}

/// The scheduler item: the jobs holding a running slot (`Running` or `Paused`) and the queue
/// of waiting jobs in creation order. It is rewritten whole, conditional on `version`, in the
/// same transaction as the job's own change, so every slot decision is serialised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduler {
    pub version: u64,
    pub running: Vec<Entry>,
    pub queued: Vec<Entry>,
    /// Creation time of the newest job: a new job is created strictly after it, so creation
    /// times follow the queue's order even for jobs created at the same moment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_created: Option<DateTime<Utc>>,
}

impl Scheduler {
    /// The next version of this state, to be changed and written.
    pub fn next(&self) -> Scheduler {
        Scheduler { version: self.version + 1, ..self.clone() }
    }

    pub fn holds(&self, job: &JobName) -> bool {
        self.running.iter().chain(&self.queued).any(|e| &e.job == job)
    }

    /// The next version without `job` in either list.
    pub fn without(&self, job: &JobName) -> Scheduler {
        let mut next = self.next();
        next.running.retain(|e| &e.job != job);
        next.queued.retain(|e| &e.job != job);
        next
    }

    /// 1-based place of `job` in the queue.
    pub fn position(&self, job: &JobName) -> Option<usize> {
        self.queued.iter().position(|e| &e.job == job).map(|i| i + 1)
    }
}

/// A status change, applied only if the job is still in `from`. It removes any pending
/// request and, with `scheduler`, rewrites the scheduler in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: JobStatus,
    pub to: JobStatus,
    pub at: DateTime<Utc>,
    pub error: Option<JobError>,
    pub started: bool,
    pub duration_ms: Option<u64>,
    /// Apply only if this request is pending (settling a pause or cancel).
    pub pending: Option<JobStatus>,
    /// The scheduler's new state; written only if its version is still `version - 1`.
    pub scheduler: Option<Scheduler>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The job was not in `from` (or lacked the pending request).
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
    pub jobs: Vec<Job>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// One capability: the control table.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Insert a job and its cursors, and write the scheduler's new state, atomically.
    async fn insert_job(&self, job: &Job, cursors: &[Cursor], scheduler: &Scheduler) -> Result<(), InsertError>;
    async fn get_job(&self, name: &JobName) -> Result<Option<Job>, AwsError>;
    async fn list_jobs(&self, query: &ListQuery) -> Result<JobPage, AwsError>;
    async fn cursors(&self, name: &JobName) -> Result<Vec<Cursor>, AwsError>;
    /// Move a cursor by one slice and add to the job's counters, in one transaction.
    async fn commit_slice(&self, name: &JobName, commit: &SliceCommit) -> Result<Commit, AwsError>;
    /// Mark a parked cursor as having a slice in flight; `false` if it moved or was not parked.
    async fn unpark(&self, name: &JobName, segment: u32, seq: u64) -> Result<bool, AwsError>;
    /// Record a pause or cancel request on a `Running` job whose pending request is `replaces`
    /// (`None`: no request). `false` if the job was not in that state.
    async fn request_stop(
        &self,
        name: &JobName,
        to: JobStatus,
        replaces: Option<JobStatus>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError>;
    /// Withdraw the pending request `pending` of a `Running` job; `false` if it was settled
    /// or changed meanwhile.
    async fn withdraw_stop(&self, name: &JobName, pending: JobStatus, at: DateTime<Utc>) -> Result<bool, AwsError>;
    async fn transition(&self, name: &JobName, t: &Transition) -> Result<Applied, AwsError>;
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

pub fn job_pk(name: &JobName) -> String {
    format!("JOB#{name}")
}
const JOB_SK: &str = "JOB";
fn segment_sk(segment: u32) -> String {
    format!("SEG#{segment:05}")
}
const SCHEDULER_PK: &str = "SCHEDULER";
const SCHEDULER_SK: &str = "RUNNING";
const CONFIG_PK: &str = "CONFIG";
const CONFIG_SK: &str = "ACCOUNT";
/// The index `list` queries: every job item under one key, sorted by creation.
pub const LIST_INDEX: &str = "by-created";
const LIST_PK: &str = "JOB";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: impl Into<String>, sk: impl Into<String>) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn cursor_to_item(name: &JobName, c: &Cursor) -> Item {
    let mut item = key(job_pk(name), segment_sk(c.segment));
    item.insert("segment".into(), n(c.segment));
    item.insert("seq".into(), n(c.seq));
    item.insert("items".into(), n(c.items));
    item.insert("done".into(), AttributeValue::Bool(c.done));
    item.insert("parked".into(), AttributeValue::Bool(c.parked));
    if let Some(k) = &c.last_key {
        item.insert("last_key".into(), AttributeValue::M(k.clone()));
    }
    item
}

fn cursor_from_item(item: &Item) -> Option<Cursor> {
    let num = |k: &str| item.get(k)?.as_n().ok()?.parse::<u64>().ok();
    let flag = |k: &str| item.get(k).and_then(|v| v.as_bool().ok()).copied();
    Some(Cursor {
        segment: num("segment")? as u32,
        seq: num("seq")?,
        items: num("items")?,
        done: flag("done")?,
        parked: flag("parked").unwrap_or(false),
        last_key: item.get("last_key").and_then(|v| v.as_m().ok()).cloned(),
    })
}

/// The list index's sort key: creation time, then name (names contain no `#`).
fn created_key(job: &Job) -> String {
    format!("{}#{}", job.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), job.name)
}

fn job_to_item(job: &Job) -> Item {
    let mut item: Item = serde_dynamo::to_item(job).expect("jobs always serialize");
    item.extend(key(job_pk(&job.name), JOB_SK));
    item.insert("list_pk".into(), s(LIST_PK));
    item.insert("created_key".into(), s(created_key(job)));
    item
}

fn read_err(what: &str, e: serde_dynamo::Error) -> AwsError {
    AwsError::Permanent { context: format!("reading {what}"), detail: e.to_string(), source: Box::new(e) }
}

fn job_from_item(item: Item) -> Result<Job, AwsError> {
    serde_dynamo::from_item(item).map_err(|e| read_err("a job item", e))
}

fn history_entry(status: JobStatus, at: DateTime<Utc>) -> AttributeValue {
    AttributeValue::L(vec![serde_dynamo::to_attribute_value(StatusChange { status, at }).expect("serializes")])
}

fn put(table: &str, item: Item, condition: &str) -> TransactWriteItem {
    TransactWriteItem::builder()
        .put(
            Put::builder()
                .table_name(table)
                .set_item(Some(item))
                .condition_expression(condition)
                .build()
                .expect("valid put"),
        )
        .build()
}

const CONDITION_FAILED: &str = "ConditionalCheckFailed";
const CONFLICT: &str = "TransactionConflict";
/// Attempts of a transaction that meets a concurrent one on the same item.
const CONFLICT_ATTEMPTS: u32 = 8;

/// Wait a little before trying again after a conflict: 5-50 ms, more with each attempt.
pub async fn conflict_pause(attempt: u32) {
    let ms = rand::random_range(5..=10 * u64::from(attempt.clamp(1, 5)));
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

/// The DynamoDB adapter. Counts the items it writes (for the benchmark).
#[derive(Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    writes: Arc<AtomicU64>,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into(), writes: Arc::default() }
    }

    /// Item writes so far by this adapter (and its clones); a transaction counts each item.
    pub fn item_writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn count(&self, n: usize) {
        self.writes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Run a transaction; `Ok(Some(reasons))` when a condition failed (one code per item).
    /// A conflict with a concurrent write of the same item is retried here.
    async fn transact(&self, items: Vec<TransactWriteItem>, what: &str) -> Result<Option<Vec<String>>, AwsError> {
        let n = items.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.client.transact_write_items().set_transact_items(Some(items.clone())).send().await {
                Ok(_) => {
                    self.count(n);
                    return Ok(None);
                }
                Err(e) => e,
            };
            if let Some(TransactWriteItemsError::TransactionCanceledException(c)) = err.as_service_error() {
                let codes: Vec<String> =
                    c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_string()).collect();
                if codes.iter().any(|c| c == CONDITION_FAILED) {
                    return Ok(Some(codes));
                }
                if codes.iter().any(|c| c == CONFLICT) && attempt < CONFLICT_ATTEMPTS {
                    conflict_pause(attempt).await;
                    continue;
                }
            }
            if err.as_service_error().and_then(|e| e.meta().code()) == Some("TransactionConflictException")
                && attempt < CONFLICT_ATTEMPTS
            {
                conflict_pause(attempt).await;
                continue;
            }
            return Err(classify(what.to_string(), err));
        }
    }

    /// Run a single conditional update; `false` when its condition failed.
    async fn update(&self, update: Update, what: &str) -> Result<bool, AwsError> {
        match self.transact(vec![TransactWriteItem::builder().update(update).build()], what).await? {
            None => Ok(true),
            Some(_) => Ok(false),
        }
    }
}

#[async_trait]
impl ControlStore for DynamoStore {
    async fn insert_job(&self, job: &Job, cursors: &[Cursor], scheduler: &Scheduler) -> Result<(), InsertError> {
        let absent = "attribute_not_exists(pk)";
        let mut items = vec![put(&self.table, job_to_item(job), absent)];
        items.extend(cursors.iter().map(|c| put(&self.table, cursor_to_item(&job.name, c), absent)));
        items.push(self.scheduler_put(scheduler));
        match self.transact(items, &format!("creating job {}", job.name)).await? {
            None => Ok(()),
            Some(codes) if codes.first().map(String::as_str) == Some(CONDITION_FAILED) => Err(InsertError::JobExists),
            Some(_) => Err(InsertError::SchedulerChanged),
        }
    }

    async fn get_job(&self, name: &JobName) -> Result<Option<Job>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(format!("reading job {name}"), e))?;
        out.item.map(job_from_item).transpose()
    }

    async fn list_jobs(&self, q: &ListQuery) -> Result<JobPage, AwsError> {
        let limit = q.limit.max(1);
        let mut start = match &q.after {
            None => None,
            Some(token) => {
                let name = token.rsplit_once('#').and_then(|(_, n)| JobName::parse(n).ok()).ok_or_else(|| {
                    AwsError::Permanent {
                        context: "listing jobs".into(),
                        detail: format!("{token:?} is not a page token printed by `list`"),
                        source: "bad token".into(),
                    }
                })?;
                let mut k = key(job_pk(&name), JOB_SK);
                k.insert("list_pk".into(), s(LIST_PK));
                k.insert("created_key".into(), s(token.clone()));
                Some(k)
            }
        };
        let mut jobs = Vec::new();
        // One more than asked: it tells whether another page exists.
        while jobs.len() <= limit {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(LIST_INDEX)
                .key_condition_expression("list_pk = :l")
                .expression_attribute_values(":l", s(LIST_PK))
                .scan_index_forward(false)
                .limit((limit + 1 - jobs.len()).max(10) as i32)
                .set_exclusive_start_key(start);
            if let Some(status) = q.status {
                query = query
                    .filter_expression("#s = :s")
                    .expression_attribute_names("#s", "status")
                    .expression_attribute_values(":s", s(status.as_str()));
            }
            let out = query.send().await.map_err(|e| classify("listing jobs", e))?;
            for item in out.items.unwrap_or_default() {
                jobs.push(job_from_item(item)?);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let next = (jobs.len() > limit).then(|| created_key(&jobs[limit - 1]));
        jobs.truncate(limit);
        Ok(JobPage { jobs, next })
    }

    async fn cursors(&self, name: &JobName) -> Result<Vec<Cursor>, AwsError> {
        let mut cursors = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :seg)")
                .expression_attribute_values(":pk", s(job_pk(name)))
                .expression_attribute_values(":seg", s("SEG#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify(format!("reading the cursors of job {name}"), e))?;
            cursors.extend(out.items.unwrap_or_default().iter().filter_map(cursor_from_item));
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        Ok(cursors)
    }

    async fn commit_slice(&self, name: &JobName, c: &SliceCommit) -> Result<Commit, AwsError> {
        // First as a continuing commit (the job runs, nothing pending), else a parking one:
        // the job item's condition and the cursor move are one transaction, so a pause or
        // cancel request lands either before this commit (parked) or after it (its slice
        // follows, and the next commit parks).
        for park in [false, true] {
            let items = vec![
                TransactWriteItem::builder().update(self.cursor_commit(name, c, park)).build(),
                TransactWriteItem::builder().update(self.job_commit(name, c, park)).build(),
            ];
            let what = format!("committing slice {} of segment {}", c.seq, c.segment);
            match self.transact(items, &what).await? {
                None => return Ok(if park { Commit::Parked } else { Commit::Continued }),
                Some(codes) if codes.first().map(String::as_str) == Some(CONDITION_FAILED) => return Ok(Commit::Stale),
                Some(_) => {}
            }
        }
        Err(AwsError::Permanent {
            context: format!("committing slice {} of segment {}", c.seq, c.segment),
            detail: format!("job {name} does not exist"),
            source: "job item missing".into(),
        })
    }

    async fn unpark(&self, name: &JobName, segment: u32, seq: u64) -> Result<bool, AwsError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), segment_sk(segment))))
            .condition_expression("#p = :true AND #seq = :seq AND #done = :false")
            .update_expression("SET #p = :false")
            .expression_attribute_names("#p", "parked")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#done", "done")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":seq", n(seq))
            .build()
            .expect("valid update");
        self.update(update, &format!("launching segment {segment} of job {name}")).await
    }

    async fn mark_answered(&self, name: &JobName) -> Result<bool, AwsError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .condition_expression("origin.answered = :false")
            .update_expression("SET origin.answered = :true")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .build()
            .expect("valid update");
        self.update(update, &format!("recording the CloudFormation answer of job {name}")).await
    }

    async fn request_stop(
        &self,
        name: &JobName,
        to: JobStatus,
        replaces: Option<JobStatus>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .update_expression("SET #pending = :to, updated_at = :at")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#pending", "pending")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":at", s(at.to_rfc3339()));
        update = match replaces {
            None => update.condition_expression("#s = :running AND attribute_not_exists(#pending)"),
            Some(r) => update
                .condition_expression("#s = :running AND #pending = :r")
                .expression_attribute_values(":r", s(r.as_str())),
        };
        self.update(update.build().expect("valid update"), &format!("asking job {name} to stop")).await
    }

    async fn withdraw_stop(&self, name: &JobName, pending: JobStatus, at: DateTime<Utc>) -> Result<bool, AwsError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .condition_expression("#s = :running AND #pending = :p")
            .update_expression("SET updated_at = :at REMOVE #pending")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#pending", "pending")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":p", s(pending.as_str()))
            .expression_attribute_values(":at", s(at.to_rfc3339()))
            .build()
            .expect("valid update");
        self.update(update, &format!("withdrawing the request of job {name}")).await
    }

    async fn transition(&self, name: &JobName, t: &Transition) -> Result<Applied, AwsError> {
        let mut set =
            vec!["#s = :to", "updated_at = :at", "version = version + :one", "history = list_append(history, :h)"];
        let mut cond = "#s = :from".to_string();
        let mut job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#pending", "pending")
            .expression_attribute_values(":from", s(t.from.as_str()))
            .expression_attribute_values(":to", s(t.to.as_str()))
            .expression_attribute_values(":at", s(t.at.to_rfc3339()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":h", history_entry(t.to, t.at));
        if let Some(p) = t.pending {
            cond.push_str(" AND #pending = :p");
            job = job.expression_attribute_values(":p", s(p.as_str()));
        }
        if t.started {
            set.push("started_at = :at");
        }
        if t.to == JobStatus::Running {
            set.push("launched_at = :at");
        }
        if t.to.is_final() {
            set.push("completed_at = :at");
        }
        if let Some(d) = t.duration_ms {
            set.push("duration_ms = :d");
            job = job.expression_attribute_values(":d", n(d));
        }
        if let Some(e) = &t.error {
            set.push("#e = :e");
            job = job
                .expression_attribute_names("#e", "error")
                .expression_attribute_values(":e", serde_dynamo::to_attribute_value(e).expect("serializes"));
        }
        let job = job
            .condition_expression(cond)
            .update_expression(format!("SET {} REMOVE #pending", set.join(", ")))
            .build()
            .expect("valid update");
        let mut items = vec![TransactWriteItem::builder().update(job).build()];
        items.extend(t.scheduler.as_ref().map(|sch| self.scheduler_put(sch)));
        Ok(match self.transact(items, &format!("moving job {name} to {}", t.to)).await? {
            None => Applied::Yes,
            Some(codes) if codes.first().map(String::as_str) == Some(CONDITION_FAILED) => Applied::JobChanged,
            Some(_) => Applied::SchedulerChanged,
        })
    }

    async fn scheduler(&self) -> Result<Scheduler, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(SCHEDULER_PK, SCHEDULER_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("reading the scheduler", e))?;
        match out.item {
            None => Ok(Scheduler::default()),
            Some(item) => serde_dynamo::from_item(item).map_err(|e| read_err("the scheduler item", e)),
        }
    }

    async fn write_scheduler(&self, scheduler: &Scheduler) -> Result<bool, AwsError> {
        Ok(self.transact(vec![self.scheduler_put(scheduler)], "updating the scheduler").await?.is_none())
    }

    async fn write_region(&self) -> Result<Option<String>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(CONFIG_PK, CONFIG_SK)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify("reading the account config", e))?;
        Ok(out.item.and_then(|i| i.get("write_region")?.as_s().ok().cloned()))
    }

    async fn set_write_region(&self, region: &str, at: DateTime<Utc>) -> Result<(), AwsError> {
        let mut item = key(CONFIG_PK, CONFIG_SK);
        item.insert("write_region".into(), s(region));
        item.insert("updated_at".into(), s(at.to_rfc3339()));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| classify("writing the account config", e))?;
        self.count(1);
        Ok(())
    }
}

impl DynamoStore {
    /// The scheduler's new state, conditional on the version it was derived from.
    fn scheduler_put(&self, sch: &Scheduler) -> TransactWriteItem {
        let mut item: Item = serde_dynamo::to_item(sch).expect("the scheduler serializes");
        item.extend(key(SCHEDULER_PK, SCHEDULER_SK));
        let builder = Put::builder().table_name(&self.table).set_item(Some(item));
        let builder = if sch.version <= 1 {
            builder.condition_expression("attribute_not_exists(pk)")
        } else {
            builder.condition_expression("version = :v").expression_attribute_values(":v", n(sch.version - 1))
        };
        TransactWriteItem::builder().put(builder.build().expect("valid put")).build()
    }

    fn cursor_commit(&self, name: &JobName, c: &SliceCommit, park: bool) -> Update {
        let done = c.next_key.is_none();
        // Every attribute through a name placeholder: `items` is a reserved word.
        let cursor = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), segment_sk(c.segment))))
            .condition_expression("#seq = :seq AND #done = :false")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#items", "items")
            .expression_attribute_names("#p", "parked")
            .expression_attribute_names("#key", "last_key")
            .expression_attribute_values(":seq", n(c.seq))
            .expression_attribute_values(":next", n(c.seq + 1))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":done", AttributeValue::Bool(done))
            .expression_attribute_values(":park", AttributeValue::Bool(park))
            .expression_attribute_values(":items", n(c.items));
        let cursor = match &c.next_key {
            Some(k) => cursor
                .update_expression("SET #seq = :next, #done = :done, #p = :park, #key = :key, #items = #items + :items")
                .expression_attribute_values(":key", AttributeValue::M(k.clone())),
            None => cursor
                .update_expression("SET #seq = :next, #done = :done, #p = :park, #items = #items + :items REMOVE #key"),
        };
        cursor.build().expect("valid update")
    }

    fn job_commit(&self, name: &JobName, c: &SliceCommit, park: bool) -> Update {
        let done = c.next_key.is_none();
        let mut set = vec!["updated_at = :at"];
        let mut job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .expression_attribute_values(":at", s(c.at.to_rfc3339()))
            .expression_attribute_values(":items", n(c.items))
            .expression_attribute_values(":bytes", n(c.bytes))
            .expression_attribute_values(":rejected", n(c.rejected))
            .expression_attribute_values(":done", n(u32::from(done)));
        job = if park {
            job.condition_expression("attribute_exists(pk)")
        } else {
            job.condition_expression("#s = :running AND attribute_not_exists(#pending)")
                .expression_attribute_names("#s", "status")
                .expression_attribute_names("#pending", "pending")
                .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
        };
        if !c.samples.is_empty() {
            set.push("rejected_samples = list_append(if_not_exists(rejected_samples, :empty), :samples)");
            let samples = c.samples.iter().map(|r| serde_dynamo::to_attribute_value(r).expect("serializes")).collect();
            job = job
                .expression_attribute_values(":empty", AttributeValue::L(vec![]))
                .expression_attribute_values(":samples", AttributeValue::L(samples));
        }
        job.update_expression(format!(
            "SET {} ADD items_copied :items, bytes_copied :bytes, items_rejected :rejected, segments_done :done",
            set.join(", ")
        ))
        .build()
        .expect("valid update")
    }
}
