//! What the benchmarks share: their items, the runner as a child process (`tablecopy local
//! run`, so its RSS and counters are its own), and waiting for a job while sampling it.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_dynamodb::types::AttributeValue;
use shared::model::{item_size, Item, Job, JobName};
use shared::store::JobStore;
use tokio::io::AsyncReadExt;

use crate::World;

/// Benchmark item `i`: about 1 KB.
pub fn item(i: u64) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(format!("item-{i:010}"))),
        ("n".to_string(), AttributeValue::N(i.to_string())),
        ("flag".to_string(), AttributeValue::Bool(i.is_multiple_of(3))),
        ("tags".to_string(), AttributeValue::Ss(vec!["bench".into(), format!("t{}", i % 10)])),
        ("body".to_string(), AttributeValue::S(format!("{i:x}{}", "x".repeat(960)))),
    ])
}

/// Items per second.
pub fn rate(items: u64, d: Duration) -> f64 {
    items as f64 / d.as_secs_f64()
}

/// What the runner process counted, printed as JSON when it stops.
#[derive(Debug, Clone, Default)]
pub struct RunnerStats {
    pub messages_sent: u64,
    pub control_writes: u64,
    pub control_conflicts: u64,
    pub peak_rss_kib: u64,
}

/// `tablecopy local run` against `w`'s stack, as a child process.
pub struct RunnerProcess {
    child: tokio::process::Child,
}

impl RunnerProcess {
    /// Start it with `concurrency` copy-chunk invocations and `env` on top of this process's
    /// environment (e.g. `SLICE_MAX_ITEMS`: the functions' tuning is theirs).
    pub async fn start(w: &World, concurrency: usize, env: &[(&str, String)]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let tablecopy = exe.with_file_name("tablecopy");
        if !tablecopy.exists() {
            bail!("{} not found: build it with the same profile (make bench does)", tablecopy.display());
        }
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| crate::DEFAULT_ENDPOINT.to_string());
        let region = w.sdk.region().context("region")?.to_string();
        let child = tokio::process::Command::new(&tablecopy)
            .args(["--endpoint-url", &endpoint, "--region", &region, "--stack-name", &w.stack])
            .args(["local", "run", "--concurrency", &concurrency.to_string()])
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the runner")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Self { child })
    }

    /// Poll job `name` until it is final; fails if the runner exits first.
    pub async fn wait_final(&mut self, w: &World, name: &JobName) -> Result<Job> {
        loop {
            let j = w.deps.store.get_job(name).await?.context("job")?;
            if j.status.is_final() {
                return Ok(j);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the runner exited ({status}) before the job finished");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop it (SIGTERM: it finishes its batches) and read its counters.
    pub async fn stop(mut self) -> Result<RunnerStats> {
        let pid = self.child.id().context("runner pid")?;
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        let mut out = String::new();
        self.child.stdout.take().context("stdout")?.read_to_string(&mut out).await?;
        self.child.wait().await?;
        let stats: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or("{}"))?;
        let n = |k: &str| stats[k].as_u64().unwrap_or(0);
        Ok(RunnerStats {
            messages_sent: n("messagesSent"),
            control_writes: n("controlTableItemWrites"),
            control_conflicts: n("controlTableConflicts"),
            peak_rss_kib: n("peakRssKiB"),
        })
    }
}

/// The size of job `name`'s item in control table `table`, as DynamoDB counts it.
pub async fn job_item_size(ddb: &aws_sdk_dynamodb::Client, table: &str, name: &JobName) -> Result<u64> {
    let out = ddb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(format!("JOB#{name}")))
        .key("sk", AttributeValue::S("JOB".into()))
        .send()
        .await?;
    Ok(out.item.as_ref().map(item_size).unwrap_or(0))
}
