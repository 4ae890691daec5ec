//! The control table: job items, segment cursors, the scheduler slot. Every write is
//! conditional, so a duplicate or late message finds its precondition false and changes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

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
    Applied,
    /// The cursor had moved on (or was done): a duplicate or stale result.
    Stale,
}

/// A status change, applied only if the job is still in `from`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: JobStatus,
    pub to: JobStatus,
    pub at: DateTime<Utc>,
    pub error: Option<JobError>,
    pub started: bool,
    pub duration_ms: Option<u64>,
    /// Give the scheduler slot back (the job held it).
    pub release_slot: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("job exists")]
    JobExists,
    #[error("another job holds the running slot")]
    SlotTaken,
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// One capability: the control table.
#[async_trait]
pub trait ControlStore: Send + Sync {
    /// Insert a job and its cursors atomically. A `Running` job also takes the scheduler slot.
    async fn insert_job(&self, job: &Job, cursors: &[Cursor]) -> Result<(), InsertError>;
    async fn get_job(&self, name: &JobName) -> Result<Option<Job>, AwsError>;
    async fn list_jobs(&self) -> Result<Vec<Job>, AwsError>;
    async fn cursors(&self, name: &JobName) -> Result<Vec<Cursor>, AwsError>;
    /// Move a cursor by one slice and add to the job's counters, in one transaction.
    async fn commit_slice(&self, name: &JobName, commit: &SliceCommit) -> Result<Commit, AwsError>;
    /// Apply a status change; `false` if the job was no longer in `from`.
    async fn transition(&self, name: &JobName, t: &Transition) -> Result<bool, AwsError>;
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
    if let Some(k) = &c.last_key {
        item.insert("last_key".into(), AttributeValue::M(k.clone()));
    }
    item
}

fn cursor_from_item(item: &Item) -> Option<Cursor> {
    let num = |k: &str| item.get(k)?.as_n().ok()?.parse::<u64>().ok();
    Some(Cursor {
        segment: num("segment")? as u32,
        seq: num("seq")?,
        items: num("items")?,
        done: *item.get("done")?.as_bool().ok()?,
        last_key: item.get("last_key").and_then(|v| v.as_m().ok()).cloned(),
    })
}

fn job_to_item(job: &Job) -> Item {
    let mut item: Item = serde_dynamo::to_item(job).expect("jobs always serialize");
    item.extend(key(job_pk(&job.name), JOB_SK));
    item
}

fn job_from_item(item: Item) -> Result<Job, AwsError> {
    serde_dynamo::from_item(item).map_err(|e| AwsError::Permanent {
        context: "reading a job item".into(),
        detail: e.to_string(),
        source: Box::new(e),
    })
}

fn history_entry(status: JobStatus, at: DateTime<Utc>) -> AttributeValue {
    AttributeValue::L(vec![serde_dynamo::to_attribute_value(StatusChange { status, at }).expect("serializes")])
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
    async fn transact(&self, items: Vec<TransactWriteItem>, what: &str) -> Result<Option<Vec<String>>, AwsError> {
        let n = items.len();
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => {
                self.count(n);
                Ok(None)
            }
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) = e.as_service_error() {
                    let codes: Vec<String> =
                        c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_string()).collect();
                    if codes.iter().any(|c| c == "ConditionalCheckFailed")
                        && codes.iter().all(|c| c == "ConditionalCheckFailed" || c == "None")
                    {
                        return Ok(Some(codes));
                    }
                }
                Err(classify(what.to_string(), e))
            }
        }
    }
}

#[async_trait]
impl ControlStore for DynamoStore {
    async fn insert_job(&self, job: &Job, cursors: &[Cursor]) -> Result<(), InsertError> {
        let mut items = vec![TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(job_to_item(job)))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .expect("valid put"),
            )
            .build()];
        for c in cursors {
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(cursor_to_item(&job.name, c)))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .expect("valid put"),
                    )
                    .build(),
            );
        }
        let takes_slot = job.status == JobStatus::Running;
        if takes_slot {
            let mut slot = key(SCHEDULER_PK, SCHEDULER_SK);
            slot.insert("job".into(), s(job.name.as_str()));
            slot.insert("since".into(), s(job.created_at.to_rfc3339()));
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(slot))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .expect("valid put"),
                    )
                    .build(),
            );
        }
        match self.transact(items, &format!("creating job {}", job.name)).await? {
            None => Ok(()),
            Some(codes) if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") => {
                Err(InsertError::JobExists)
            }
            Some(codes) if takes_slot && codes.last().map(String::as_str) == Some("ConditionalCheckFailed") => {
                Err(InsertError::SlotTaken)
            }
            Some(_) => Err(InsertError::JobExists),
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

    async fn list_jobs(&self) -> Result<Vec<Job>, AwsError> {
        let mut jobs = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :job")
                .expression_attribute_values(":job", s(JOB_SK))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| classify("listing jobs", e))?;
            for item in out.items.unwrap_or_default() {
                jobs.push(job_from_item(item)?);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at));
        Ok(jobs)
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
        let done = c.next_key.is_none();
        // Every attribute through a name placeholder: `items` is a reserved word.
        let mut cursor = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), segment_sk(c.segment))))
            .condition_expression("#seq = :seq AND #done = :false")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#items", "items")
            .expression_attribute_values(":seq", n(c.seq))
            .expression_attribute_values(":next", n(c.seq + 1))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":done", AttributeValue::Bool(done))
            .expression_attribute_values(":items", n(c.items));
        cursor = match &c.next_key {
            Some(k) => cursor
                .update_expression("SET #seq = :next, #done = :done, #key = :key, #items = #items + :items")
                .expression_attribute_names("#key", "last_key")
                .expression_attribute_values(":key", AttributeValue::M(k.clone())),
            None => cursor
                .update_expression("SET #seq = :next, #done = :done, #items = #items + :items REMOVE #key")
                .expression_attribute_names("#key", "last_key"),
        };
        let mut set = vec!["updated_at = :at"];
        let mut job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":at", s(c.at.to_rfc3339()))
            .expression_attribute_values(":items", n(c.items))
            .expression_attribute_values(":bytes", n(c.bytes))
            .expression_attribute_values(":rejected", n(c.rejected))
            .expression_attribute_values(":done", n(u32::from(done)));
        if !c.samples.is_empty() {
            set.push("rejected_samples = list_append(if_not_exists(rejected_samples, :empty), :samples)");
            let samples = c.samples.iter().map(|r| serde_dynamo::to_attribute_value(r).expect("serializes")).collect();
            job = job
                .expression_attribute_values(":empty", AttributeValue::L(vec![]))
                .expression_attribute_values(":samples", AttributeValue::L(samples));
        }
        let job = job.update_expression(format!(
            "SET {} ADD items_copied :items, bytes_copied :bytes, items_rejected :rejected, segments_done :done",
            set.join(", ")
        ));
        let items = vec![
            TransactWriteItem::builder().update(cursor.build().expect("valid update")).build(),
            TransactWriteItem::builder().update(job.build().expect("valid update")).build(),
        ];
        Ok(match self.transact(items, &format!("committing slice {} of segment {}", c.seq, c.segment)).await? {
            None => Commit::Applied,
            Some(_) => Commit::Stale,
        })
    }

    async fn transition(&self, name: &JobName, t: &Transition) -> Result<bool, AwsError> {
        let mut set =
            vec!["#s = :to", "updated_at = :at", "version = version + :one", "history = list_append(history, :h)"];
        let mut job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .condition_expression("#s = :from")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":from", s(t.from.as_str()))
            .expression_attribute_values(":to", s(t.to.as_str()))
            .expression_attribute_values(":at", s(t.at.to_rfc3339()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":h", history_entry(t.to, t.at));
        if t.started {
            set.push("started_at = :at");
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
        let job = job.update_expression(format!("SET {}", set.join(", "))).build().expect("valid update");
        let mut items = vec![TransactWriteItem::builder().update(job).build()];
        if t.release_slot {
            items.push(
                TransactWriteItem::builder()
                    .delete(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(SCHEDULER_PK, SCHEDULER_SK)))
                            .condition_expression("attribute_not_exists(pk) OR job = :job")
                            .expression_attribute_values(":job", s(name.as_str()))
                            .build()
                            .expect("valid delete"),
                    )
                    .build(),
            );
        }
        Ok(self.transact(items, &format!("moving job {name} to {}", t.to)).await?.is_none())
    }
}
