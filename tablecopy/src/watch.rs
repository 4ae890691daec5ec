//! `tablecopy watch`: a live progress bar until the job is final.

use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shared::model::{Job, JobName, JobStatus};
use shared::store::{live_job, ControlStore};

use crate::render::thousands;

/// Poll the job every `interval_ms` and draw items copied / estimated total, items/s and ETA.
/// Without a terminal, prints a line every few seconds instead. Returns the job once it is
/// final, or `Paused` (settled, no pause pending) unless `wait_paused`.
pub async fn watch<S: ControlStore>(
    store: &S,
    name: &JobName,
    interval_ms: u64,
    wait_paused: bool,
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
        bar.set_message(job.status_label());
        let paused = job.status == JobStatus::Paused && !wait_paused;
        if !tty && (last_line.elapsed() >= Duration::from_secs(3) || job.status.is_final() || paused) {
            eprintln!(
                "{name}: {} {} / ~{} items ({:.1}%)",
                job.status_label(),
                thousands(done),
                thousands(job.estimated_total),
                job.percent()
            );
            last_line = std::time::Instant::now();
        }
        if job.status.is_final() || paused {
            bar.finish();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}
