//! How jobs are printed: a JSON document or an aligned table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::model::{Cursor, Job, JobSummary, Mode, Phase, ReplayProgress, SegmentCheck, Verification, VerifyMode};

/// The stack outputs of the dead-letter queues, and the queue each serves.
pub const DEAD_LETTER_QUEUES: [(&str, &str); 4] = [
    ("CopyChunkDeadLetterQueueUrl", "copy-chunk"),
    ("CheckpointDeadLetterQueueUrl", "checkpoint"),
    ("FinalizeDeadLetterQueueUrl", "finalize"),
    ("RequestsDeadLetterQueueUrl", "requests"),
];

/// A job with its derived figures, as `show --output json` prints it. The presigned URL a
/// waiting CloudFormation resource is answered at is a credential: it is never printed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    #[serde(flatten)]
    pub job: Job,
    pub percent: f64,
    pub items_per_second: Option<f64>,
}

impl JobView {
    pub fn new(job: &Job, now: DateTime<Utc>) -> Self {
        let mut job = job.clone();
        if let Some(origin) = job.origin.as_mut() {
            origin.response_url = None;
        }
        Self { percent: job.percent(), items_per_second: job.items_per_second(now), job }
    }
}

/// Every object key of `v` in camelCase (`items_copied` → `itemsCopied`), the request
/// format's convention, so that each JSON document the CLI prints uses one. The documents
/// hold no map keyed by user data (attribute names), only field names.
pub fn camel_case_keys(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (camel(&k), camel_case_keys(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(camel_case_keys).collect()),
        other => other,
    }
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        match c {
            '_' if !out.is_empty() => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// A job as `list --output json` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryView<'a> {
    #[serde(flatten)]
    pub job: &'a JobSummary,
    pub percent: f64,
    /// The status as `show` prints it (a running job's phase included).
    pub status_label: String,
}

impl<'a> SummaryView<'a> {
    /// `job`, with its full status label when one was read (`label`), else the list index's.
    pub fn new(job: &'a JobSummary, label: Option<String>) -> Self {
        Self { job, percent: job.percent(), status_label: label.unwrap_or_else(|| job.status_label()) }
    }
}

pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{:.1}s", ms as f64 / 1000.0),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m {:02}s", s / 3600, (s % 3600) / 60, s % 60),
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).unwrap_or_else(|| "-".into())
}

/// How many segments are done, and where the job's parallelism came from.
fn segments(job: &Job) -> String {
    let chosen = if job.spec.parallelism_from_size {
        format!(
            "  (chosen from the source's size, ~{}: one segment per {}, at least the deployment's default)",
            bytes(job.estimated_bytes),
            bytes(shared::model::BYTES_PER_SEGMENT)
        )
    } else {
        String::new()
    };
    let phase = match job.phase {
        Phase::Copying => "",
        Phase::Verifying => " verifying",
        Phase::Repairing => " repairing",
        Phase::Locating => " locating differences",
    };
    format!("{} done{phase} of {}{chosen}", job.segments_done, job.spec.parallelism)
}

/// What the verification read and found (or what it is doing, from the cursors).
fn verification_rows(job: &Job, cursors: Option<&[Cursor]>, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
    let read = |what: &str, v: &Verification| {
        format!(
            "{what}: {} items ({}) of {}, {} items ({}) of {}, strongly consistent scans",
            thousands(v.source.items),
            bytes(v.source.bytes),
            job.spec.source,
            thousands(v.target.items),
            bytes(v.target.bytes),
            job.spec.target
        )
    };
    if job.spec.verify == VerifyMode::None {
        return vec![("Verification", "none (created with --verify none)".into())];
    }
    let Some(v) = &job.verification else {
        let so_far = cursors.map(|c| SegmentCheck::sum(c.iter().filter_map(|c| c.check.as_ref())));
        return match (job.phase, so_far) {
            (Phase::Copying, _) | (_, None) => vec![("Verification", "full, after the copy".into())],
            (_, Some(sum)) => {
                let v = Verification { source: sum.source, target: sum.target, ..Default::default() };
                vec![("Verification", read("reading", &v))]
            }
        };
    };
    let mut rows = vec![("Verification", v.summary()), ("Verification read", read("read", v))];
    if let Some(ms) = job.verify_ms(now) {
        let items = v.source.items + v.target.items;
        let rate = if ms > 0 { items as f64 * 1000.0 / ms as f64 } else { 0.0 };
        rows.push(("Verification time", format!("{} ({rate:.0} items read/s)", duration(ms))));
    }
    if job.spec.repair || v.repaired_put + v.repaired_deleted > 0 {
        let repair = if v.matched() {
            "on (nothing to repair)".to_string()
        } else {
            format!(
                "{} item(s) put, {} deleted in the target",
                thousands(v.repaired_put),
                thousands(v.repaired_deleted)
            )
        };
        rows.push(("Repair", repair));
    }
    if v.skipped > 0 {
        rows.push((
            "  not compared",
            format!("{} source items that do not fit the target's key", thousands(v.skipped)),
        ));
    }
    if !v.matched() && job.phase >= Phase::Repairing && !job.status.is_final() {
        rows.push((
            "  locating",
            format!("{} of {} buckets differ", v.differing_buckets.len(), shared::checksum::BUCKETS),
        ));
    }
    for m in v.samples.iter().take(10) {
        rows.push(("  sample", m.to_string()));
    }
    rows
}

/// How much one slice of the job reads.
fn slices(job: &Job) -> String {
    match job.spec.slice {
        Some(s) => format!("up to {} items or {} each", thousands(u64::from(s.max_items)), bytes(s.max_bytes)),
        None => "the deployment's (SLICE_MAX_ITEMS, SLICE_MAX_BYTES)".into(),
    }
}

/// What the job's segments may use now under its budget (their paced rates, lowered by
/// throttling), from its cursors.
pub fn allowed_rate(cursors: &[Cursor]) -> Option<f64> {
    let rates: Vec<f64> = cursors.iter().filter(|c| !c.done).filter_map(|c| c.rate).collect();
    (!rates.is_empty()).then(|| rates.iter().sum())
}

/// The job's rate budget, and with its cursors the rate its segments may use now.
fn budget(job: &Job, cursors: Option<&[Cursor]>) -> String {
    let caps: Vec<String> = [("write", job.spec.max_write_rate), ("read", job.spec.max_read_rate)]
        .iter()
        .filter_map(|(what, cap)| cap.map(|c| format!("{what} ≤ {} items/s", thousands(u64::from(c)))))
        .collect();
    if caps.is_empty() {
        return "none (as fast as the tables and the workers allow)".into();
    }
    match cursors.and_then(allowed_rate) {
        Some(now) => format!("{}; segments now paced at {now:.0} items/s in all", caps.join(", ")),
        None => caps.join(", "),
    }
}

/// The `show` table (with the job's cursors when they were read).
pub fn job_table(job: &Job, cursors: Option<&[Cursor]>, now: DateTime<Utc>) -> String {
    let processed = job.items_copied + job.items_rejected;
    let mut rows: Vec<(&str, String)> = vec![
        ("Job", job.name.to_string()),
        ("Status", job.status_label()),
        ("Source", format!("{}  [key: {}]", job.spec.source, job.spec.source_key)),
        ("Target", format!("{}  [key: {}]", job.spec.target, job.spec.target_key)),
        (
            "Processed",
            format!(
                "{} / ~{} (estimated total, from DescribeTable)  {:.1}%",
                thousands(processed),
                thousands(job.estimated_total),
                job.percent()
            ),
        ),
        ("Items copied", thousands(job.items_copied)),
        (
            "Items/s",
            job.items_per_second(now)
                .map(|r| {
                    format!(
                        "{r:.0} ({}{})",
                        if job.spec.mode == Mode::Online { "snapshot and catch-up" } else { "copy phase" },
                        job.copy_ms(now).map(|ms| format!(", {}", duration(ms))).unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        ("Bytes", bytes(job.bytes_copied)),
        ("Rate budget", budget(job, cursors)),
        ("Throttled writes", format!("{} (each retried with backoff)", thousands(job.throttles))),
        ("Rejected items", format!("{} (on item error: {:?})", thousands(job.items_rejected), job.spec.on_item_error)),
    ];
    for r in job.rejected_samples.iter().take(5) {
        rows.push(("  sample", format!("{} — {}", r.key, r.reason)));
    }
    if let Some(stream) = &job.spec.stream {
        rows.push(("Mode", format!("online, through {} ({})", stream.arn, stream.view.as_str())));
        rows.push((
            "Replay",
            match &job.replay {
                Some(r) => replay_line(r),
                None if job.replay_from.is_some() => format!("begins {}", time(job.replay_from)),
                None => "after the snapshot".into(),
            },
        ));
        if let Some(at) = job.complete_requested_at {
            rows.push(("Complete asked", time(Some(at))));
        }
    }
    rows.extend(verification_rows(job, cursors, now));
    rows.extend([
        ("Segments", segments(job)),
        ("Slices", slices(job)),
        (
            "Source TTL",
            match (&job.spec.source_ttl, job.spec.skip_expired) {
                (Some(attr), false) => format!("by {attr:?} (items already expired are copied as they are)"),
                (Some(attr), true) => format!(
                    "by {attr:?}: {} item(s) expired before the job started left out (--skip-expired)",
                    thousands(job.items_expired)
                ),
                (None, _) => "none".into(),
            },
        ),
        (
            "Target at start",
            match job.target_empty_at_start {
                Some(true) => "empty".into(),
                Some(false) => "not empty".into(),
                None => "-".into(),
            },
        ),
        ("Write region", job.write_region.clone()),
        ("Created", time(Some(job.created_at))),
        ("Started", time(job.started_at)),
        ("Last updated", time(Some(job.updated_at))),
        ("Completed", time(job.completed_at)),
        ("Duration", job.duration_ms.or_else(|| job.elapsed_ms(now)).map(duration).unwrap_or_else(|| "-".into())),
        ("Error code", job.error.as_ref().map(|e| e.code.clone()).unwrap_or_else(|| "-".into())),
        ("Error message", job.error.as_ref().map(|e| e.message.clone()).unwrap_or_else(|| "-".into())),
    ]);
    for w in &job.warnings {
        rows.push(("Warning", w.clone()));
    }
    rows.push(("History", String::new()));
    for h in &job.history {
        rows.push(("", format!("{}  {}", time(Some(h.at)), h.status)));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_string() + "\n").collect()
}

/// An online job's replay in a line: records applied, worst lag, open shards.
pub fn replay_line(r: &ReplayProgress) -> String {
    let lag = match (r.open_shards, r.lag_ms) {
        (0, _) => "none (every shard drained or read to its end)".to_string(),
        (_, Some(ms)) => format!("{:.1} s", ms as f64 / 1000.0),
        (_, None) => "not read yet".into(),
    };
    format!(
        "{} records applied, lag {lag}, {} of {} shard(s) open",
        thousands(r.records_applied),
        r.open_shards,
        r.shards
    )
}

/// One segment as `show --segments` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentView {
    pub segment: u32,
    pub seq: u64,
    pub items: u64,
    pub last_progress: Option<DateTime<Utc>>,
    pub state: &'static str,
    /// Online: the stream's shard this cursor reads (its `items` are records applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// A segment's state: done, parked, stopping (in flight, its job pausing or cancelling),
/// stalled (in flight without progress for longer than `stall`), or in flight.
fn segment_state(c: &Cursor, cursors: &[Cursor], now: DateTime<Utc>, stall: Duration) -> &'static str {
    let stall = chrono::Duration::from_std(stall).unwrap_or(chrono::Duration::MAX);
    match c {
        c if c.done && c.shard.as_ref().is_some_and(|s| s.closed) => "closed, read to its end",
        c if c.done && c.shard.is_some() => "drained",
        c if c.done => "done",
        c if c.parked && !shared::lineage::ready(c, cursors) => "waiting for its parent shard",
        c if c.parked => "parked",
        c if c.updated_at.is_some_and(|t| now - t > stall) => "stalled",
        c if c.stop => "stopping",
        _ => "in flight",
    }
}

pub fn segment_views(cursors: &[Cursor], now: DateTime<Utc>, stall: Duration) -> Vec<SegmentView> {
    cursors
        .iter()
        .map(|c| SegmentView {
            segment: c.segment,
            seq: c.seq,
            items: c.items,
            last_progress: c.updated_at,
            state: segment_state(c, cursors, now, stall),
            shard: c.shard.as_ref().map(|s| s.id.clone()),
        })
        .collect()
}

/// The `show --segments` table.
pub fn segments_table(cursors: &[Cursor], now: DateTime<Utc>, stall: Duration) -> String {
    let mut out =
        format!("\n{:>7}  {:>6}  {:>12}  {:<24}  {}\n", "SEGMENT", "SLICE", "ITEMS", "LAST PROGRESS", "STATE");
    for v in segment_views(cursors, now, stall) {
        let state = match &v.shard {
            Some(id) => format!("shard {id}: {}", v.state),
            None => v.state.to_string(),
        };
        out.push_str(&format!(
            "{:>7}  {:>6}  {:>12}  {:<24}  {}\n",
            v.segment,
            v.seq,
            thousands(v.items),
            time(v.last_progress),
            state
        ));
    }
    out
}

/// The `list` table.
pub fn jobs_table(jobs: &[SummaryView]) -> String {
    let mut out =
        format!("{:<24} {:<28} {:<45} {:>7}  {}\n", "NAME", "STATUS", "SOURCE -> TARGET", "PERCENT", "CREATED");
    for v in jobs {
        let j = v.job;
        out.push_str(&format!(
            "{:<24} {:<28} {:<45} {:>6.1}%  {}\n",
            j.name.as_str(),
            v.status_label,
            format!("{} -> {}", j.spec.source, j.spec.target),
            j.percent(),
            time(Some(j.created_at))
        ));
    }
    out
}

/// The `plan` table.
pub fn plan_table(p: &shared::plan::Plan) -> String {
    let phase = |ph: &shared::plan::PhasePlan| {
        format!(
            "{} read units, {} write units, ${:.2}; {:.0} items/s (limited by {}), {}",
            thousands(ph.read_units),
            thousands(ph.write_units),
            ph.dollars,
            ph.items_per_second,
            ph.limited_by,
            duration((ph.seconds * 1000.0) as u64)
        )
    };
    let mut rows: Vec<(&str, String)> = vec![
        ("Source", p.source.clone()),
        ("Target", p.target.clone()),
        (
            "Items",
            format!(
                "~{} (estimate: DescribeTable, refreshed by DynamoDB about every six hours)",
                thousands(p.estimated_items)
            ),
        ),
        ("Bytes", format!("~{} (estimate), ~{} an item", bytes(p.estimated_bytes), bytes(p.average_item_bytes))),
        (
            "Segments",
            format!(
                "{}{} on {} workers",
                p.parallelism,
                if p.parallelism_from_size { " (one per 2 GiB of the source, at least the default)" } else { "" },
                p.workers
            ),
        ),
        ("Copy", phase(&p.copy)),
        ("Verification", p.verification.as_ref().map(phase).unwrap_or_else(|| "none (--verify none)".into())),
        ("Total", format!("${:.2}, {}", p.total_dollars, duration((p.total_seconds * 1000.0) as u64))),
        ("Prices", p.prices.to_string()),
    ];
    rows.extend(p.warnings.iter().map(|w| ("Warning", w.clone())));
    rows.push(("", "Nothing was written: `create` without --dry-run starts the job.".into()));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter().map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_string() + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_show_their_state() {
        let now = Utc::now();
        let mut c = Cursor::start(0);
        let stall = Duration::from_secs(60);
        assert_eq!(segment_state(&c, &[], now, stall), "parked");
        c.parked = false;
        c.stop = false;
        c.updated_at = Some(now);
        assert_eq!(segment_state(&c, &[], now, stall), "in flight");
        c.stop = true;
        assert_eq!(segment_state(&c, &[], now, stall), "stopping");
        c.updated_at = Some(now - chrono::Duration::minutes(2));
        assert_eq!(segment_state(&c, &[], now, stall), "stalled");
        c.done = true;
        assert_eq!(segment_state(&c, &[], now, stall), "done");
        let table = segments_table(&[Cursor { items: 1234, seq: 7, ..Cursor::start(3) }], now, stall);
        assert!(table.contains("      3       7         1,234  -                         parked"), "{table}");
    }

    #[test]
    fn json_keys_are_camel_case_and_values_untouched() {
        let v = serde_json::json!({"items_copied": 1, "itemsPerSecond": 2.0, "spec": {"source_key": {"partition": {"name": "order_no"}}}, "history": [{"at_time": "a_b"}], "ControlTableName": "x"});
        let want = serde_json::json!({"itemsCopied": 1, "itemsPerSecond": 2.0, "spec": {"sourceKey": {"partition": {"name": "order_no"}}}, "history": [{"atTime": "a_b"}], "ControlTableName": "x"});
        assert_eq!(camel_case_keys(v), want);
    }

    #[test]
    fn shard_cursors_and_the_replay_read_well() {
        let now = Utc::now();
        let stall = Duration::from_secs(60);
        let parent = Cursor::shard(1_000_000_001, shared::model::ShardCursor::new("shard-p", None));
        let child = Cursor::shard(1_000_000_002, shared::model::ShardCursor::new("shard-c", Some("shard-p".into())));
        let both = [parent.clone(), child.clone()];
        assert_eq!(segment_state(&child, &both, now, stall), "waiting for its parent shard");
        let mut read = parent.clone();
        read.done = true;
        read.shard.as_mut().unwrap().closed = true;
        assert_eq!(segment_state(&read, &both, now, stall), "closed, read to its end");
        let table = segments_table(&[read, child], now, stall);
        assert!(table.contains("shard shard-p: closed, read to its end"), "{table}");
        let r = ReplayProgress { records_applied: 1234, open_shards: 2, shards: 3, lag_ms: Some(1500) };
        assert_eq!(replay_line(&r), "1,234 records applied, lag 1.5 s, 2 of 3 shard(s) open");
        let drained = ReplayProgress { open_shards: 0, lag_ms: None, ..r };
        assert!(replay_line(&drained).contains("lag none (every shard drained or read to its end)"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(duration(1500), "1.5s");
        assert_eq!(duration(61_000), "1m 01s");
        assert_eq!(duration(3_725_000), "1h 02m 05s");
    }
}
