//! The DynamoDB adapter of the control table. A slice's commit, a cursor's sync and an unpark
//! are each one conditional UpdateItem of the cursor item whose condition is the rule of
//! [`crate::rules`]; job moves are conditional on the job's status and control epoch, and
//! slot decisions on the scheduler's version (in one transaction with the job's move).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::codec::*;
use super::{
    conflict_pause, Applied, CursorStore, InsertError, JobPage, JobStore, ListQuery, Milestone, SliceCommit, Transition,
};
use crate::error::{classify, AwsError, ErrorKind};
use crate::model::{
    Cursor, Item, Job, JobName, JobStatus, Pass, Progress, SegmentCheck, StatusChange, Verification,
    MAX_REJECTED_SAMPLES,
};
use crate::rules::{commit_rule, Commit};
use crate::scheduler::Scheduler;

/// Cursor puts in flight at once when a job's cursors are created.
const CURSOR_PUTS_AT_ONCE: usize = 16;
/// Attempts of a transaction that meets a concurrent one on the same item.
const CONFLICT_ATTEMPTS: u32 = 8;
/// Attempts of a commit whose cursor changed between its read and its write (a control
/// change each time: pause, resume and cancel are human-paced, so a few attempts suffice).
const COMMIT_ATTEMPTS: u32 = 8;

/// `stop` as a condition, for each value. A cursor written before cursors carried `stop` has
/// none: it stopped when it was parked (as the codec reads it).
const STOP_TRUE: &str = "(#stop = :true OR (attribute_not_exists(#stop) AND #parked = :true))";
const STOP_FALSE: &str = "(#stop = :false OR (attribute_not_exists(#stop) AND #parked = :false))";

/// No copy but `:copy` holds the cursor at `:at` (no holder, or its lease ran out).
const NOT_HELD_BY_ANOTHER: &str =
    "(attribute_not_exists(#owner) OR #owner = :copy OR attribute_not_exists(#lease) OR #lease <= :at)";

/// A time as the job item holds it (serde's form, so conditions on it compare equal).
fn job_time(t: DateTime<Utc>) -> AttributeValue {
    serde_dynamo::to_attribute_value(t).expect("times serialize")
}

/// The condition on a job's control epoch (a job written before epochs has none: epoch 0).
fn epoch_condition(epoch: u64) -> &'static str {
    if epoch == 0 {
        "(attribute_not_exists(#epoch) OR #epoch = :epoch)"
    } else {
        "#epoch = :epoch"
    }
}

/// What a conditional UpdateItem did.
enum Updated {
    /// Applied; the item as it is now (when asked for).
    Yes(Option<Item>),
    /// The condition was false; the item as it was (`None`: it does not exist).
    No(Option<Item>),
}

/// The DynamoDB adapter. Counts the items it writes and the conflicts it met (for the
/// benchmarks).
#[derive(Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    writes: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
}

impl DynamoStore {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self { client, table: table.into(), writes: Arc::default(), conflicts: Arc::default() }
    }

    /// Writes that met a concurrent change and were tried again so far: a slice commit whose
    /// cursor changed between its decision and its write, or a transaction cancelled for a
    /// conflict.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Item writes so far by this adapter (and its clones); a transaction counts each item.
    pub fn item_writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn count(&self, n: usize) {
        self.writes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// An UpdateItem of `key`, returning the item as it was when its condition fails.
    fn update_item(&self, key: Item) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    async fn run(&self, update: UpdateItemFluentBuilder, what: &str) -> Result<Updated, AwsError> {
        match update.send().await {
            Ok(out) => {
                self.count(1);
                Ok(Updated::Yes(out.attributes))
            }
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(c)) => Ok(Updated::No(c.item.clone())),
                _ => Err(classify(what.to_string(), e)),
            },
        }
    }

    /// Run a transaction; `Ok(Some(reasons))` when a condition failed (one code per item).
    /// A conflict with a concurrent write of the same item is retried here; throttling and
    /// conflicts that outlast the attempts are retryable errors, as the reasons say.
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
            let cancelled = match err.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                    let codes: Vec<String> =
                        c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None").to_string()).collect();
                    let kind = ErrorKind::of_cancellations(codes.iter().map(String::as_str));
                    if kind == ErrorKind::ConditionFailed {
                        return Ok(Some(codes));
                    }
                    Some(kind)
                }
                _ => None,
            };
            let mut e = classify(what.to_string(), err);
            e.kind = cancelled.unwrap_or(e.kind);
            if e.kind == ErrorKind::Conflict {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            if e.kind == ErrorKind::Conflict && attempt < CONFLICT_ATTEMPTS {
                conflict_pause(attempt).await;
                continue;
            }
            return Err(e);
        }
    }

    /// Put a new cursor unless it exists.
    async fn put_cursor(&self, name: &JobName, c: &Cursor) -> Result<(), AwsError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(cursor_to_item(name, c)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {
                self.count(1);
                Ok(())
            }
            Err(e) if e.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(e) => Err(classify(format!("creating cursor {} of job {name}", c.segment), e)),
        }
    }

    /// The scheduler's new state, conditional on the version it was derived from.
    fn scheduler_put(&self, sch: &Scheduler) -> TransactWriteItem {
        let builder = Put::builder().table_name(&self.table).set_item(Some(scheduler_to_item(sch)));
        let builder = if sch.version <= 1 {
            builder.condition_expression("attribute_not_exists(pk)")
        } else {
            builder.condition_expression("version = :v").expression_attribute_values(":v", n(sch.version - 1))
        };
        TransactWriteItem::builder().put(builder.build().expect("valid put")).build()
    }

    fn put(&self, item: Item, condition: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .build()
                    .expect("valid put"),
            )
            .build()
    }

    /// One commit attempt: the cursor expects slice `c.seq`, is not done, and its `stop` is
    /// what `decision` needs (park: true, continue: false).
    async fn try_commit(&self, name: &JobName, c: &SliceCommit, decision: Commit) -> Result<Updated, AwsError> {
        let park = decision == Commit::Parked;
        let mut set = vec!["#seq = :next", "#done = :done", "#parked = :park", "#at = :at", "#by = :copy"];
        let mut update = self
            .update_item(cursor_key(name, c.segment))
            .condition_expression(format!(
                "#seq = :seq AND #done = :false AND {} AND {NOT_HELD_BY_ANOTHER}",
                if park { STOP_TRUE } else { STOP_FALSE }
            ))
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#parked", "parked")
            .expression_attribute_names("#stop", "stop")
            .expression_attribute_names("#at", "updated_at")
            .expression_attribute_names("#items", "items")
            .expression_attribute_names("#bytes", "bytes")
            .expression_attribute_names("#rejected", "rejected")
            .expression_attribute_names("#expired", "expired")
            .expression_attribute_names("#throttles", "throttles")
            .expression_attribute_names("#key", "last_key")
            .expression_attribute_names("#by", "committed_by")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#lease", "lease_until")
            .expression_attribute_values(":copy", s(c.copy.clone()))
            .expression_attribute_values(":seq", n(c.seq))
            .expression_attribute_values(":next", n(c.seq + 1))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":done", AttributeValue::Bool(c.done))
            .expression_attribute_values(":park", AttributeValue::Bool(park))
            .expression_attribute_values(":at", time(c.at))
            .expression_attribute_values(":items", n(c.items))
            .expression_attribute_values(":bytes", n(c.bytes))
            .expression_attribute_values(":rejected", n(c.rejected))
            .expression_attribute_values(":expired", n(c.expired))
            .expression_attribute_values(":throttles", n(c.throttles));
        if let Some(pass) = c.pass {
            set.push("#pass = :pass");
            update = update
                .expression_attribute_names("#pass", "pass")
                .expression_attribute_values(":pass", s(pass.as_str()));
        }
        if let Some(check) = &c.check {
            set.push("#check = :check");
            update = update
                .expression_attribute_names("#check", "check")
                .expression_attribute_values(":check", check_value(check));
        }
        if let Some(shard) = &c.shard {
            set.push("#shard = :shard");
            update = update
                .expression_attribute_names("#shard", "shard")
                .expression_attribute_values(":shard", shard_value(shard));
        }
        if let Some(rate) = c.rate {
            set.push("#rate = :rate");
            update = update.expression_attribute_names("#rate", "rate").expression_attribute_values(":rate", n(rate));
        }
        if park {
            // Only STOP_TRUE names it: DynamoDB refuses values an expression does not use.
            update = update.expression_attribute_values(":true", AttributeValue::Bool(true));
        }
        if !c.samples.is_empty() {
            set.push("#samples = list_append(if_not_exists(#samples, :empty), :samples)");
            update = update
                .expression_attribute_names("#samples", "samples")
                .expression_attribute_values(":empty", AttributeValue::L(vec![]))
                .expression_attribute_values(":samples", samples(&c.samples));
        }
        let remove = match (&c.next_key, c.done) {
            (Some(k), false) if c.pass.is_none() => {
                set.push("#key = :key");
                update = update.expression_attribute_values(":key", AttributeValue::M(k.clone()));
                ""
            }
            _ => ", #key",
        };
        let expr = format!(
            "SET {} ADD #items :items, #bytes :bytes, #rejected :rejected, #expired :expired, #throttles :throttles REMOVE #owner, #lease{remove}",
            set.join(", ")
        );
        self.run(update.update_expression(expr), &format!("committing slice {} of segment {}", c.seq, c.segment)).await
    }
}

#[async_trait]
impl CursorStore for DynamoStore {
    async fn create_cursors(&self, name: &JobName, cursors: &[Cursor]) -> Result<(), AwsError> {
        // Boxed: the trait's future must be `Send` for every lifetime of the borrows.
        let puts: Vec<futures::future::BoxFuture<'_, Result<(), AwsError>>> =
            cursors.iter().map(|c| Box::pin(self.put_cursor(name, c)) as _).collect();
        stream::iter(puts).buffer_unordered(CURSOR_PUTS_AT_ONCE).try_collect::<Vec<()>>().await?;
        Ok(())
    }

    async fn cursor(&self, name: &JobName, segment: u32) -> Result<Option<Cursor>, AwsError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(cursor_key(name, segment)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(format!("reading cursor {segment} of job {name}"), e))?;
        Ok(out.item.as_ref().and_then(cursor_from_item))
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
                .expression_attribute_values(":seg", s(SEGMENT_PREFIX))
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
        let mut commit = c.clone();
        if !c.samples.is_empty() {
            // Rejections are rare: read the cursor to keep at most MAX_REJECTED_SAMPLES on it.
            // Only a commit of this very slice could add samples meanwhile, and it would make
            // this one stale.
            match self.cursor(name, c.segment).await? {
                Some(cur) if commit_rule(&cur, c.seq, &c.copy, c.at) != Commit::Stale => {
                    commit.samples.truncate(MAX_REJECTED_SAMPLES.saturating_sub(cur.samples.len()))
                }
                _ => return Ok(Commit::Stale),
            }
        }
        // The common case first; a failed condition returns the cursor, which decides again.
        let mut decision = Commit::Continued;
        for _ in 0..COMMIT_ATTEMPTS {
            match self.try_commit(name, &commit, decision).await? {
                Updated::Yes(_) => return Ok(decision),
                Updated::No(None) => return Ok(Commit::Stale),
                Updated::No(Some(item)) => {
                    let cur = cursor_from_item(&item).ok_or_else(|| {
                        AwsError::new(
                            ErrorKind::Other,
                            format!("reading cursor {} of job {name}", c.segment),
                            "malformed",
                        )
                    })?;
                    decision = commit_rule(&cur, c.seq, &c.copy, c.at);
                    if decision == Commit::Stale {
                        return Ok(Commit::Stale);
                    }
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(AwsError::new(
            ErrorKind::Conflict,
            format!("committing slice {} of segment {}", c.seq, c.segment),
            "the cursor kept changing; the result is retried",
        ))
    }

    async fn sync_cursor(
        &self,
        name: &JobName,
        segment: u32,
        epoch: u64,
        stop: bool,
        _at: DateTime<Utc>,
    ) -> Result<Option<Cursor>, AwsError> {
        let update = self
            .update_item(cursor_key(name, segment))
            .condition_expression("attribute_exists(pk) AND (attribute_not_exists(#epoch) OR #epoch < :epoch)")
            .update_expression("SET #epoch = :epoch, #stop = :stop")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_names("#stop", "stop")
            .expression_attribute_values(":epoch", n(epoch))
            .expression_attribute_values(":stop", AttributeValue::Bool(stop))
            .return_values(ReturnValue::AllNew);
        let item = match self.run(update, &format!("bringing segment {segment} of job {name} to epoch {epoch}")).await?
        {
            Updated::Yes(item) | Updated::No(item) => item,
        };
        Ok(item.as_ref().and_then(cursor_from_item))
    }

    async fn unpark(
        &self,
        name: &JobName,
        segment: u32,
        seq: u64,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let update = self
            .update_item(cursor_key(name, segment))
            .condition_expression(format!(
                "#parked = :true AND #done = :false AND #seq = :seq AND {STOP_FALSE} AND {}",
                epoch_condition(epoch)
            ))
            .update_expression("SET #parked = :false, #at = :at")
            .expression_attribute_names("#parked", "parked")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#stop", "stop")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_names("#at", "updated_at")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":seq", n(seq))
            .expression_attribute_values(":epoch", n(epoch))
            .expression_attribute_values(":at", time(at));
        Ok(matches!(self.run(update, &format!("launching segment {segment} of job {name}")).await?, Updated::Yes(_)))
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
        let update = self
            .update_item(cursor_key(name, segment))
            .condition_expression(format!("#done = :false AND #seq = :seq AND {STOP_FALSE} AND {NOT_HELD_BY_ANOTHER}"))
            .update_expression("SET #parked = :false, #owner = :copy, #lease = :until, #at = :at")
            .expression_attribute_names("#parked", "parked")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#stop", "stop")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#lease", "lease_until")
            .expression_attribute_names("#at", "updated_at")
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":seq", n(seq))
            .expression_attribute_values(":copy", s(copy))
            .expression_attribute_values(":until", time(until))
            .expression_attribute_values(":at", time(at));
        let what = format!("taking slice {seq} of segment {segment} of job {name}");
        Ok(matches!(self.run(update, &what).await?, Updated::Yes(_)))
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
        // A cursor written before passes existed has none: it is in the copy pass.
        let pass = if from.is_copy() { "(attribute_not_exists(#pass) OR #pass = :from)" } else { "#pass = :from" };
        let update = self
            .update_item(cursor_key(name, segment))
            .condition_expression(format!("#done = :true AND {pass}"))
            .update_expression(
                "SET #pass = :to, #done = :false, #parked = :true, #check = :check, #at = :at ADD #seq :one REMOVE #key, #owner, #lease",
            )
            .expression_attribute_names("#pass", "pass")
            .expression_attribute_names("#done", "done")
            .expression_attribute_names("#parked", "parked")
            .expression_attribute_names("#check", "check")
            .expression_attribute_names("#at", "updated_at")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_names("#key", "last_key")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#lease", "lease_until")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .expression_attribute_values(":from", s(from.as_str()))
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":check", check_value(check))
            .expression_attribute_values(":at", time(at))
            .expression_attribute_values(":one", n(1));
        let what = format!("starting the {} pass of segment {segment} of job {name}", to.as_str());
        Ok(matches!(self.run(update, &what).await?, Updated::Yes(_)))
    }
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn insert_job(&self, job: &Job, scheduler: &Scheduler) -> Result<(), InsertError> {
        let items = vec![self.put(job_to_item(job), "attribute_not_exists(pk)"), self.scheduler_put(scheduler)];
        match self.transact(items, &format!("creating job {}", job.name)).await? {
            None => Ok(()),
            Some(codes) if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") => {
                Err(InsertError::JobExists)
            }
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
                    AwsError::new(
                        ErrorKind::Validation,
                        "listing jobs",
                        format!("{token:?} is not a page token that list printed"),
                    )
                })?;
                let mut k = key(job_pk(&name), JOB_SK);
                k.insert("list_pk".into(), s(LIST_PK));
                k.insert("created_key".into(), s(token.clone()));
                Some(k)
            }
        };
        let mut jobs = Vec::new();
        // One more than a page tells whether another page follows.
        while jobs.len() <= limit {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(LIST_INDEX)
                .key_condition_expression("list_pk = :p")
                .expression_attribute_values(":p", s(LIST_PK))
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
                jobs.push(summary_from_item(item)?);
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let next = (jobs.len() > limit).then(|| created_key(jobs[limit - 1].created_at, &jobs[limit - 1].name));
        jobs.truncate(limit);
        Ok(JobPage { jobs, next })
    }

    async fn transition(&self, name: &JobName, t: &Transition) -> Result<Applied, AwsError> {
        let mut set = vec![
            "#s = :to",
            "updated_at = :at",
            "version = if_not_exists(version, :zero) + :one",
            "#epoch = :next",
            "history = list_append(history, :h)",
        ];
        let mut cond = format!("#s = :from AND {}", epoch_condition(t.epoch));
        let history =
            AttributeValue::L(vec![
                serde_dynamo::to_attribute_value(StatusChange { status: t.to, at: t.at }).expect("serializes")
            ]);
        let mut job = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(job_pk(name), JOB_SK)))
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#pending", "pending")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_values(":from", s(t.from.as_str()))
            .expression_attribute_values(":to", s(t.to.as_str()))
            .expression_attribute_values(":at", job_time(t.at))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":epoch", n(t.epoch))
            .expression_attribute_values(":next", n(t.epoch + 1))
            .expression_attribute_values(":h", history);
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
        if let Some(v) = &t.verification {
            set.push("verification = :v");
            job = job.expression_attribute_values(":v", serde_dynamo::to_attribute_value(v).expect("serializes"));
        }
        if let Some(p) = &t.progress {
            set.extend(PROGRESS_SET);
            set.push("progress_at = :at");
            for (k, v) in progress_values(p) {
                job = job.expression_attribute_values(k, v);
            }
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
            Some(codes) if codes.first().map(String::as_str) == Some("ConditionalCheckFailed") => Applied::JobChanged,
            Some(_) => Applied::SchedulerChanged,
        })
    }

    async fn request_stop(
        &self,
        name: &JobName,
        to: JobStatus,
        replaces: Option<JobStatus>,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let pending = match replaces {
            None => "attribute_not_exists(#pending)",
            Some(_) => "#pending = :r",
        };
        let mut update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression(format!("#s = :running AND {pending} AND {}", epoch_condition(epoch)))
            .update_expression("SET #pending = :to, updated_at = :at, #epoch = :next")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#pending", "pending")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":to", s(to.as_str()))
            .expression_attribute_values(":at", job_time(at))
            .expression_attribute_values(":epoch", n(epoch))
            .expression_attribute_values(":next", n(epoch + 1));
        if let Some(r) = replaces {
            update = update.expression_attribute_values(":r", s(r.as_str()));
        }
        Ok(matches!(self.run(update, &format!("asking job {name} to stop")).await?, Updated::Yes(_)))
    }

    async fn withdraw_stop(
        &self,
        name: &JobName,
        pending: JobStatus,
        epoch: u64,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression(format!("#s = :running AND #pending = :p AND {}", epoch_condition(epoch)))
            .update_expression("SET updated_at = :at, launched_at = :at, #epoch = :next REMOVE #pending")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#pending", "pending")
            .expression_attribute_names("#epoch", "epoch")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":p", s(pending.as_str()))
            .expression_attribute_values(":at", job_time(at))
            .expression_attribute_values(":epoch", n(epoch))
            .expression_attribute_values(":next", n(epoch + 1));
        Ok(matches!(self.run(update, &format!("withdrawing the request of job {name}")).await?, Updated::Yes(_)))
    }

    async fn claim_progress(
        &self,
        name: &JobName,
        seen: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<bool, AwsError> {
        let mut update = self
            .update_item(key(job_pk(name), JOB_SK))
            .update_expression("SET progress_at = :at")
            .expression_attribute_values(":at", job_time(at));
        update = match seen {
            None => update.condition_expression("attribute_exists(pk) AND attribute_not_exists(progress_at)"),
            Some(t) => {
                update.condition_expression("progress_at = :seen").expression_attribute_values(":seen", job_time(t))
            }
        };
        Ok(matches!(self.run(update, &format!("refreshing the counters of job {name}")).await?, Updated::Yes(_)))
    }

    async fn write_progress(&self, name: &JobName, p: &Progress, claimed: DateTime<Utc>) -> Result<bool, AwsError> {
        let mut update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("progress_at = :at")
            .update_expression(format!("SET {}", PROGRESS_SET.join(", ")))
            .expression_attribute_values(":at", job_time(claimed));
        for (k, v) in progress_values(p) {
            update = update.expression_attribute_values(k, v);
        }
        Ok(matches!(self.run(update, &format!("refreshing the counters of job {name}")).await?, Updated::Yes(_)))
    }

    async fn mark_announced(&self, name: &JobName, announced: u64) -> Result<(), AwsError> {
        let update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("attribute_exists(pk) AND (attribute_not_exists(announced) OR announced < :n)")
            .update_expression("SET announced = :n")
            .expression_attribute_values(":n", n(announced));
        self.run(update, &format!("recording the published events of job {name}")).await?;
        Ok(())
    }

    async fn mark_listed(&self, name: &JobName, at: DateTime<Utc>) -> Result<(), AwsError> {
        // Unconditional but for the job's existence: a slower lister writing an earlier time
        // only makes the bound it gives stricter.
        let update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET stream_listed_at = :at")
            .expression_attribute_values(":at", job_time(at));
        self.run(update, &format!("recording when job {name} listed its stream")).await?;
        Ok(())
    }

    async fn mark(&self, name: &JobName, milestone: Milestone, at: DateTime<Utc>) -> Result<bool, AwsError> {
        let mut update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("(#s = :running OR #s = :paused) AND attribute_not_exists(#m)")
            .update_expression("SET #m = :at")
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#m", milestone.attribute())
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":at", job_time(at));
        // Only the milestones that apply to paused jobs may find one.
        let paused = if milestone.applies(JobStatus::Paused) { JobStatus::Paused } else { JobStatus::Running };
        update = update.expression_attribute_values(":paused", s(paused.as_str()));
        Ok(matches!(
            self.run(update, &format!("recording job {name}'s {}", milestone.attribute())).await?,
            Updated::Yes(_)
        ))
    }

    async fn set_verification(&self, name: &JobName, v: &Verification) -> Result<bool, AwsError> {
        let update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("#s = :running AND attribute_not_exists(verification)")
            .update_expression("SET verification = :v")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":running", s(JobStatus::Running.as_str()))
            .expression_attribute_values(":v", serde_dynamo::to_attribute_value(v).expect("serializes"));
        Ok(matches!(self.run(update, &format!("recording the verification of job {name}")).await?, Updated::Yes(_)))
    }

    async fn set_stalled(&self, name: &JobName, stalled: u32) -> Result<(), AwsError> {
        let update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("attribute_exists(pk)")
            .update_expression("SET stalled = :n")
            .expression_attribute_values(":n", n(stalled));
        self.run(update, &format!("recording stalled segments of job {name}")).await?;
        Ok(())
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
        out.item.map(scheduler_from_item).transpose().map(Option::unwrap_or_default)
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
        item.insert("updated_at".into(), time(at));
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

    async fn mark_answered(&self, name: &JobName) -> Result<bool, AwsError> {
        let update = self
            .update_item(key(job_pk(name), JOB_SK))
            .condition_expression("origin.answered = :false")
            .update_expression("SET origin.answered = :true")
            .expression_attribute_values(":true", AttributeValue::Bool(true))
            .expression_attribute_values(":false", AttributeValue::Bool(false));
        Ok(matches!(
            self.run(update, &format!("recording the CloudFormation answer of job {name}")).await?,
            Updated::Yes(_)
        ))
    }
}

/// The job item's counters, set from a [`Progress`] by [`progress_values`].
const PROGRESS_SET: [&str; 9] = [
    "items_expired = :expired",
    "phase = :phase",
    "items_copied = :items",
    "bytes_copied = :bytes",
    "items_rejected = :rejected",
    "throttles = :throttles",
    "rejected_samples = :samples",
    "segments_done = :done",
    "replay = :replay",
];

fn progress_values(p: &Progress) -> [(&'static str, AttributeValue); 9] {
    [
        (":expired", n(p.expired)),
        (":phase", serde_dynamo::to_attribute_value(p.phase).expect("serializes")),
        (":items", n(p.items)),
        (":bytes", n(p.bytes)),
        (":rejected", n(p.rejected)),
        (":throttles", n(p.throttles)),
        (":samples", samples(&p.samples)),
        (":done", n(p.segments_done)),
        (":replay", serde_dynamo::to_attribute_value(&p.replay).expect("serializes")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DynamoStore whose every request is answered with `status` and the JSON `body`.
    fn answering(status: u16, body: String) -> DynamoStore {
        let http = aws_smithy_http_client::test_util::infallible_client_fn(move |_req| {
            http::Response::builder()
                .status(status)
                .header("content-type", "application/x-amz-json-1.0")
                .body(body.clone())
                .unwrap()
        });
        let conf = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::for_tests())
            .http_client(http)
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build();
        DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(conf), "control")
    }

    fn cancelled(reasons: &str) -> String {
        format!(
            r#"{{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled","CancellationReasons":[{reasons}]}}"#
        )
    }

    /// DynamoDB's own error documents, which LocalStack never sends (its fault injection
    /// throttles whole requests): a transaction cancelled for throttling or a conflict is
    /// retryable, one cancelled for a failed condition is an answer, one for validation is
    /// permanent.
    #[tokio::test]
    async fn transactions_cancelled_for_throttling_or_conflicts_are_retryable() {
        let sch = Scheduler { version: 3, ..Default::default() };
        for reason in ["ThrottlingError", "TransactionConflict", "ProvisionedThroughputExceeded"] {
            let store = answering(400, cancelled(&format!(r#"{{"Code":"None"}},{{"Code":"{reason}","Message":"x"}}"#)));
            let err = store.write_scheduler(&sch).await.unwrap_err();
            assert!(err.is_retryable(), "{reason}: {err}");
        }
        let store = answering(400, cancelled(r#"{"Code":"ConditionalCheckFailed"}"#));
        assert!(!store.write_scheduler(&sch).await.unwrap(), "a failed condition is an answer");
        let store = answering(400, cancelled(r#"{"Code":"ValidationError","Message":"too big"}"#));
        let err = store.write_scheduler(&sch).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation, "{err}");
        let store = answering(
            400,
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#
                .into(),
        );
        let err = store.get_job(&JobName::parse("j").unwrap()).await.unwrap_err();
        assert_eq!((err.kind, err.code()), (ErrorKind::Throttled, Some("ProvisionedThroughputExceededException")));
    }
}
