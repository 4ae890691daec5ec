//! `tablecopy watch`: a live progress bar until the job is final.

use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shared::model::{Job, JobName, JobStatus};
use shared::store::{live_job, ControlStore};

use crate::render::thousands;

/// When `watch` returns besides a final state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Until {
    /// Return on `Paused` too.
    pub paused: bool,
    /// Online: return once the snapshot is copied and the replay's lag is at most this.
    pub caught_up: Option<Duration>,
}

/// Whether an online job has caught up with its stream: its snapshot is copied, every shard
/// was read, and its worst lag is at most `max_lag`.
pub fn caught_up(job: &Job, max_lag: Duration) -> bool {
    job.replay_from.is_some()
        && job.replay.as_ref().and_then(|r| r.lag_ms).is_some_and(|lag| lag <= max_lag.as_millis() as u64)
}

/// Poll the job every `interval_ms` and draw items copied / estimated total, items/s and ETA
/// (and, online, the replay's records and lag). Without a terminal, prints a line every few
/// seconds instead. Returns the job once it is final, or when `until` says.
pub async fn watch<S: ControlStore>(
    store: &S,
    name: &JobName,
    interval_ms: u64,
    until: Until,
    tty: bool,
) -> Result<Job> {
    let bar = if tty { ProgressBar::new(0) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:17} [{elapsed_precise}] [{bar:40.cyan/blue}] {human_pos}/~{human_len} items  {rate}  ETA {eta}",
        )
        .expect("valid template")
        .with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0} items/s", s.per_sec());
        })
        .progress_chars("=> "),
    );
    let mut last_line = std::time::Instant::now();
    loop {
        let Some((job, _)) = live_job(store, name).await? else { bail!("job {name} not found") };
        let done = job.items_copied + job.items_rejected;
        bar.set_length(job.estimated_total.max(done));
        bar.set_position(done);
        let label = match &job.replay {
            Some(r) => format!("{} ({})", job.status_label(), crate::render::replay_line(r)),
            None => job.status_label(),
        };
        bar.set_message(label.clone());
        let paused = job.status == JobStatus::Paused && until.paused;
        let caught = until.caught_up.is_some_and(|lag| caught_up(&job, lag));
        if !tty && (last_line.elapsed() >= Duration::from_secs(3) || job.status.is_final() || paused || caught) {
            eprintln!(
                "{name}: {} {} / ~{} items ({:.1}%)",
                label,
                thousands(done),
                thousands(job.estimated_total),
                job.percent()
            );
            last_line = std::time::Instant::now();
        }
        if job.status.is_final() || paused || caught {
            bar.finish();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::model::ReplayProgress;

    #[test]
    fn a_job_has_caught_up_once_its_snapshot_is_copied_and_its_lag_is_low() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "name": "j", "status": "Running", "write_region": "us-east-1", "estimated_total": 0,
            "created_at": "2026-12-03T00:00:00Z", "updated_at": "2026-12-03T00:00:00Z",
            "spec": {"source": "src", "target": "dst", "parallelism": 1, "on_item_error": "fail",
                     "source_key": {"partition": {"name": "pk", "type": "S"}},
                     "target_key": {"partition": {"name": "pk", "type": "S"}}, "mode": "online"}
        }))
        .unwrap();
        let max = Duration::from_secs(5);
        assert!(!caught_up(&job, max), "still copying its snapshot");
        let replay = |lag_ms| Some(ReplayProgress { records_applied: 1, open_shards: 1, shards: 1, lag_ms });
        let replaying = Job { replay_from: Some(chrono::Utc::now()), replay: replay(None), ..job };
        assert!(!caught_up(&replaying, max), "no shard read yet");
        assert!(!caught_up(&Job { replay: replay(Some(5_001)), ..replaying.clone() }, max));
        assert!(caught_up(&Job { replay: replay(Some(5_000)), ..replaying }, max));
    }
}
