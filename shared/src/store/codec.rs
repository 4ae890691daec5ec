//! Control-table items ↔ the model: keys, job items, cursor items, the scheduler item.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use crate::error::{AwsError, ErrorKind};
use crate::model::{Cursor, Item, Job, JobName, JobSummary, Pass, RejectedItem, SegmentCheck, ShardCursor};
use crate::scheduler::Scheduler;

pub fn job_pk(name: &JobName) -> String {
    format!("JOB#{name}")
}
pub const JOB_SK: &str = "JOB";
pub fn segment_sk(segment: u32) -> String {
    format!("SEG#{segment:05}")
}
pub const SEGMENT_PREFIX: &str = "SEG#";
pub const SCHEDULER_PK: &str = "SCHEDULER";
pub const SCHEDULER_SK: &str = "RUNNING";
pub const CONFIG_PK: &str = "CONFIG";
pub const CONFIG_SK: &str = "ACCOUNT";
/// The index `list` queries: every job item under one key, sorted by creation.
pub const LIST_INDEX: &str = "by-created-v2";
pub const LIST_PK: &str = "JOB";

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
pub fn time(t: DateTime<Utc>) -> AttributeValue {
    s(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

pub fn cursor_key(name: &JobName, segment: u32) -> Item {
    key(job_pk(name), segment_sk(segment))
}

pub fn samples(list: &[RejectedItem]) -> AttributeValue {
    AttributeValue::L(list.iter().map(|r| serde_dynamo::to_attribute_value(r).expect("samples serialize")).collect())
}

/// A segment's verification state, as JSON text (one attribute, read and written whole).
pub fn check_value(check: &SegmentCheck) -> AttributeValue {
    s(serde_json::to_string(check).expect("checks serialize"))
}

/// A shard cursor's position, as JSON text (one attribute, read and written whole).
pub fn shard_value(shard: &ShardCursor) -> AttributeValue {
    s(serde_json::to_string(shard).expect("shard cursors serialize"))
}

pub fn cursor_to_item(name: &JobName, c: &Cursor) -> Item {
    let mut item = cursor_key(name, c.segment);
    item.insert("segment".into(), n(c.segment));
    item.insert("seq".into(), n(c.seq));
    item.insert("done".into(), AttributeValue::Bool(c.done));
    item.insert("parked".into(), AttributeValue::Bool(c.parked));
    item.insert("epoch".into(), n(c.epoch));
    item.insert("stop".into(), AttributeValue::Bool(c.stop));
    item.insert("items".into(), n(c.items));
    item.insert("bytes".into(), n(c.bytes));
    item.insert("rejected".into(), n(c.rejected));
    item.insert("expired".into(), n(c.expired));
    item.insert("throttles".into(), n(c.throttles));
    if let Some(r) = c.rate {
        item.insert("rate".into(), n(r));
    }
    item.insert("samples".into(), samples(&c.samples));
    item.insert("pass".into(), s(c.pass.as_str()));
    if let Some(check) = &c.check {
        item.insert("check".into(), check_value(check));
    }
    if let Some(shard) = &c.shard {
        item.insert("shard".into(), shard_value(shard));
    }
    if let Some(k) = &c.last_key {
        item.insert("last_key".into(), AttributeValue::M(k.clone()));
    }
    if let Some(t) = c.updated_at {
        item.insert("updated_at".into(), time(t));
    }
    if let Some(o) = &c.owner {
        item.insert("owner".into(), s(o.clone()));
    }
    if let Some(t) = c.lease_until {
        item.insert("lease_until".into(), time(t));
    }
    if let Some(o) = &c.committed_by {
        item.insert("committed_by".into(), s(o.clone()));
    }
    item
}

pub fn cursor_from_item(item: &Item) -> Option<Cursor> {
    let num = |k: &str| item.get(k)?.as_n().ok()?.parse::<u64>().ok();
    let flag = |k: &str| item.get(k).and_then(|v| v.as_bool().ok()).copied();
    let parked = flag("parked").unwrap_or(false);
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let at = |k: &str| text(k).and_then(|t| DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.with_timezone(&Utc));
    Some(Cursor {
        segment: num("segment")? as u32,
        seq: num("seq")?,
        last_key: item.get("last_key").and_then(|v| v.as_m().ok()).cloned(),
        done: flag("done")?,
        parked,
        epoch: num("epoch").unwrap_or(0),
        // A cursor written before cursors carried `stop` was parked only when its job stopped.
        stop: flag("stop").unwrap_or(parked),
        items: num("items").unwrap_or(0),
        bytes: num("bytes").unwrap_or(0),
        rejected: num("rejected").unwrap_or(0),
        expired: num("expired").unwrap_or(0),
        throttles: num("throttles").unwrap_or(0),
        rate: item.get("rate").and_then(|v| v.as_n().ok()).and_then(|r| r.parse().ok()),
        samples: item
            .get("samples")
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|v| serde_dynamo::from_attribute_value(v.clone()).ok()).collect())
            .unwrap_or_default(),
        // A cursor written before passes existed is in the copy pass.
        pass: text("pass").map(|p| Pass::parse(&p)).unwrap_or(Some(Pass::Copy))?,
        check: text("check").and_then(|c| serde_json::from_str(&c).ok()),
        shard: text("shard").and_then(|c| serde_json::from_str(&c).ok()),
        updated_at: at("updated_at"),
        owner: text("owner"),
        lease_until: at("lease_until"),
        committed_by: text("committed_by"),
    })
}

/// The list index's sort key: creation time, then name (names contain no `#`).
pub fn created_key(created_at: DateTime<Utc>, name: &JobName) -> String {
    format!("{}#{}", created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), name)
}

pub fn job_to_item(job: &Job) -> Item {
    let mut item: Item = serde_dynamo::to_item(job).expect("jobs always serialize");
    item.extend(key(job_pk(&job.name), JOB_SK));
    item.insert("list_pk".into(), s(LIST_PK));
    item.insert("created_key".into(), s(created_key(job.created_at, &job.name)));
    item
}

fn read_err(what: &str, e: serde_dynamo::Error) -> AwsError {
    AwsError::new(ErrorKind::Other, format!("reading {what}"), e.to_string())
}

pub fn job_from_item(item: Item) -> Result<Job, AwsError> {
    // A job written before job events existed has no `announced`: its past state changes are
    // not published now (a months-old `Completed` would set consumers off).
    let legacy = !item.contains_key("announced");
    let mut job: Job = serde_dynamo::from_item(item).map_err(|e| read_err("a job item", e))?;
    if legacy {
        job.announced = job.history.len() as u64;
    }
    Ok(job)
}

/// A job as the list index holds it (only [`JobSummary::ATTRIBUTES`]).
pub fn summary_from_item(item: Item) -> Result<JobSummary, AwsError> {
    serde_dynamo::from_item(item).map_err(|e| read_err("a job in the list index", e))
}

pub fn scheduler_to_item(sch: &Scheduler) -> Item {
    let mut item: Item = serde_dynamo::to_item(sch).expect("the scheduler serializes");
    item.extend(key(SCHEDULER_PK, SCHEDULER_SK));
    item
}

pub fn scheduler_from_item(item: Item) -> Result<Scheduler, AwsError> {
    serde_dynamo::from_item(item).map_err(|e| read_err("the scheduler item", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let name = JobName::parse("j").unwrap();
        let mut c = Cursor::start(7);
        c.seq = 3;
        c.last_key = Some(HashMap::from([("pk".to_string(), s("a"))]));
        c.epoch = 4;
        c.stop = false;
        c.parked = false;
        c.items = 10;
        c.bytes = 1000;
        c.rejected = 1;
        c.expired = 2;
        c.samples = vec![RejectedItem { key: "{}".into(), reason: "r".into() }];
        c.updated_at = Some(DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z").unwrap().with_timezone(&Utc));
        c.owner = Some("copy-1".into());
        c.lease_until = Some(DateTime::parse_from_rfc3339("2026-11-25T10:10:00Z").unwrap().with_timezone(&Utc));
        c.committed_by = Some("copy-0".into());
        c.pass = Pass::VerifyTarget;
        let mut check = SegmentCheck::default();
        check.found(crate::model::MismatchKind::Extra, "{}".into());
        c.check = Some(check);
        assert_eq!(cursor_from_item(&cursor_to_item(&name, &c)), Some(c.clone()));
        c.pass = Pass::Replay;
        c.shard = Some(ShardCursor {
            sequence: Some("000123".into()),
            changed_at: c.updated_at,
            at_tip: true,
            ..ShardCursor::new("shardId-1", Some("shardId-0".into()))
        });
        assert_eq!(cursor_from_item(&cursor_to_item(&name, &c)), Some(c));
    }

    #[test]
    fn a_cursor_of_an_older_version_stops_when_parked() {
        let mut old = key("JOB#j", "SEG#00001");
        old.insert("segment".into(), n(1));
        old.insert("seq".into(), n(2));
        old.insert("items".into(), n(5));
        old.insert("done".into(), AttributeValue::Bool(false));
        old.insert("parked".into(), AttributeValue::Bool(true));
        let c = cursor_from_item(&old).unwrap();
        assert_eq!((c.epoch, c.stop, c.items, c.seq), (0, true, 5, 2));
    }
}
