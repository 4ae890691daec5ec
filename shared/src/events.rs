//! Job events on the deployment's EventBridge bus, for users who chain their next step on a
//! copy: every state change of a job (`tablecopy.JobStateChange`), a refused request
//! (`tablecopy.RequestRejected`) and segments found stalled (`tablecopy.JobStalled`). Their
//! `source` is the deployment's `EventSource`. Delivery is at least once and unordered: a
//! state change carries its `version` (its place in the job's history), so consumers drop
//! duplicates. No event carries a CloudFormation response URL or any other credential.

use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::{classify, AwsError, ErrorKind};
use crate::model::{Job, JobError, JobStatus};

pub const JOB_STATE_CHANGE: &str = "tablecopy.JobStateChange";
pub const REQUEST_REJECTED: &str = "tablecopy.RequestRejected";
pub const JOB_STALLED: &str = "tablecopy.JobStalled";
/// The detail's format.
pub const EVENT_VERSION: u32 = 1;

/// One event: its detail-type and its detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub detail_type: &'static str,
    pub detail: serde_json::Value,
}

/// A job's counters as events carry them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub items_copied: u64,
    pub bytes_copied: u64,
    pub items_rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStateChange {
    pub v: u32,
    pub job: String,
    /// `None` for the job's creation (`to` = Queued).
    pub from: Option<JobStatus>,
    pub to: JobStatus,
    pub at: DateTime<Utc>,
    /// The change's place in the job's history (1: its creation): drop an event whose
    /// version you have seen.
    pub version: u64,
    pub counters: Counters,
    /// The job's error, on a move to `Failed`.
    pub error: Option<JobError>,
}

impl JobStateChange {
    /// The events of `job`'s history entries from the `from`-th on (0-based), with its
    /// current counters.
    pub fn of(job: &Job, from: usize) -> Vec<Event> {
        let counters = Counters {
            items_copied: job.items_copied,
            bytes_copied: job.bytes_copied,
            items_rejected: job.items_rejected,
        };
        (from..job.history.len())
            .map(|i| {
                let to = job.history[i].status;
                let change = JobStateChange {
                    v: EVENT_VERSION,
                    job: job.name.to_string(),
                    from: i.checked_sub(1).map(|p| job.history[p].status),
                    to,
                    at: job.history[i].at,
                    version: i as u64 + 1,
                    counters: counters.clone(),
                    error: if to == JobStatus::Failed { job.error.clone() } else { None },
                };
                Event { detail_type: JOB_STATE_CHANGE, detail: serde_json::to_value(change).expect("serializes") }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRejected {
    pub v: u32,
    /// What was asked: create, pause, resume, cancel.
    pub action: String,
    pub job: Option<String>,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl RequestRejected {
    pub fn event(action: &str, job: Option<&str>, reason: String) -> Event {
        let r = RequestRejected {
            v: EVENT_VERSION,
            action: action.to_string(),
            job: job.map(str::to_string),
            reason,
            at: Utc::now(),
        };
        Event { detail_type: REQUEST_REJECTED, detail: serde_json::to_value(r).expect("serializes") }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStalled {
    pub v: u32,
    pub job: String,
    pub stalled_segments: u32,
    pub at: DateTime<Utc>,
}

impl JobStalled {
    pub fn event(job: &str, stalled_segments: u32) -> Event {
        let s = JobStalled { v: EVENT_VERSION, job: job.to_string(), stalled_segments, at: Utc::now() };
        Event { detail_type: JOB_STALLED, detail: serde_json::to_value(s).expect("serializes") }
    }
}

/// One capability: publish events.
#[async_trait]
pub trait EventBus: Send + Sync {
    async fn publish(&self, events: Vec<Event>) -> Result<(), AwsError>;
}

/// The EventBridge adapter: PutEvents on the bus, with the deployment's `source`.
#[derive(Clone)]
pub struct EventBridgeBus {
    client: aws_sdk_eventbridge::Client,
    bus: String,
    source: String,
}

impl EventBridgeBus {
    pub fn new(client: aws_sdk_eventbridge::Client, bus: impl Into<String>, source: impl Into<String>) -> Self {
        Self { client, bus: bus.into(), source: source.into() }
    }
}

/// PutEvents takes at most 10 entries.
const EVENTS_PER_CALL: usize = 10;

#[async_trait]
impl EventBus for EventBridgeBus {
    async fn publish(&self, events: Vec<Event>) -> Result<(), AwsError> {
        for chunk in events.chunks(EVENTS_PER_CALL) {
            let entries = chunk
                .iter()
                .map(|e| {
                    PutEventsRequestEntry::builder()
                        .event_bus_name(&self.bus)
                        .source(&self.source)
                        .detail_type(e.detail_type)
                        .detail(e.detail.to_string())
                        .build()
                })
                .collect();
            let out = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify("publishing job events", e))?;
            if out.failed_entry_count() > 0 {
                let why: Vec<String> = out
                    .entries()
                    .iter()
                    .filter_map(|e| e.error_code().map(|c| format!("{c}: {}", e.error_message().unwrap_or_default())))
                    .collect();
                return Err(AwsError::new(
                    ErrorKind::Transient,
                    "publishing job events",
                    format!("{} of {} events refused ({})", out.failed_entry_count(), chunk.len(), why.join("; ")),
                ));
            }
        }
        Ok(())
    }
}

/// Records what was published (for tests, and for a CLI that publishes nowhere).
#[derive(Default)]
pub struct RecordedEvents {
    pub events: Mutex<Vec<Event>>,
}

impl RecordedEvents {
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

#[async_trait]
impl EventBus for RecordedEvents {
    async fn publish(&self, events: Vec<Event>) -> Result<(), AwsError> {
        self.events.lock().unwrap().extend(events);
        Ok(())
    }
}
