//! The scheduler: which jobs hold a running slot and which wait, in creation order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::JobName;

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

    /// A creation time for a job created now: strictly after the newest job's.
    pub fn creation_time(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.last_created {
            Some(last) if last >= now => last + chrono::Duration::milliseconds(1),
            _ => now,
        }
    }
}
