//! `make bench`: copy N items (~1 KB each) on LocalStack through the four handlers (played by a
//! `tablecopy local run` child process) and print, in one run, the job's items/s next to the raw
//! BatchWriteItem ceiling of the same LocalStack, their ratio, SQS messages and control-table
//! writes per 1,000 items, and the runner's peak RSS. Not a test: it asserts only that the
//! copy is complete and equal.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_sdk_dynamodb::types::{AttributeValue, ScalarAttributeType as T};
use clap::Parser;
use shared::handlers::{create_job, CreateJobRequest};
use shared::model::{Item, JobName, JobStatus, OnItemError};
use shared::store::JobStore;
use tests::{assert_same_items, create_table, put_items, unique, World};
use tokio::io::AsyncReadExt;

#[derive(Parser)]
struct Args {
    /// Items to copy.
    #[arg(long, default_value_t = 100_000)]
    items: u64,
    /// Scan segments of the job.
    #[arg(long, default_value_t = 4)]
    parallelism: u32,
    /// Concurrent copy-chunk invocations of the runner.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// BatchWriteItem concurrencies tried for the raw ceiling (the best one counts).
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    ceiling_concurrency: Vec<usize>,
    /// Items written per ceiling trial.
    #[arg(long, default_value_t = 20_000)]
    ceiling_items: u64,
}

/// Item `i`: about 1 KB.
fn item(i: u64) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(format!("item-{i:010}"))),
        ("n".to_string(), AttributeValue::N(i.to_string())),
        ("flag".to_string(), AttributeValue::Bool(i.is_multiple_of(3))),
        ("tags".to_string(), AttributeValue::Ss(vec!["bench".into(), format!("t{}", i % 10)])),
        ("body".to_string(), AttributeValue::S(format!("{i:x}{}", "x".repeat(960)))),
    ])
}

/// Items/s of BatchWriteItem at concurrency `c` into a fresh table.
async fn ceiling(w: &World, c: usize, n: u64) -> Result<f64> {
    let table = unique("bench-ceiling");
    create_table(&w.ddb, &table, ("pk", T::S), None).await?;
    let items: Vec<Item> = (0..n).map(item).collect();
    let t = Instant::now();
    put_items(&w.ddb, &table, items, c).await?;
    let r = rate(n, t.elapsed());
    w.ddb.delete_table().table_name(&table).send().await?;
    Ok(r)
}

fn rate(items: u64, d: Duration) -> f64 {
    items as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    // The template's own visibility timeouts: a slice must never be re-delivered while it runs.
    let w = World::deploy("bench", shared::config::Tuning::from_env()?, &[]).await?;
    let (src, dst) = (unique("bench-src"), unique("bench-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    println!("tablecopy benchmark: {} items of ~{} B on LocalStack", a.items, shared::model::item_size(&item(0)));

    // 1. The raw BatchWriteItem ceiling: pre-generated items, each concurrency on a fresh table.
    //    LocalStack's rate drifts between runs, so it is measured again after the copy and
    //    the higher figure is used (the conservative ratio).
    let mut best = (0.0f64, 0usize);
    for &c in &a.ceiling_concurrency {
        let r = ceiling(&w, c, a.ceiling_items).await?;
        println!("  raw BatchWriteItem, concurrency {c:>3}: {r:>8.0} items/s");
        if r > best.0 {
            best = (r, c);
        }
    }

    // 2. The source table.
    let t = Instant::now();
    put_items(&w.ddb, &src, (0..a.items).map(item).collect(), best.1).await?;
    println!("  seeded the source in {:.1}s", t.elapsed().as_secs_f64());

    // 3. The runner, as its own process (its RSS and counters are its own).
    let exe = std::env::current_exe()?;
    let tablecopy = exe.with_file_name("tablecopy");
    if !tablecopy.exists() {
        bail!("{} not found: build it with the same profile (make bench does)", tablecopy.display());
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| tests::DEFAULT_ENDPOINT.to_string());
    let region = w.sdk.region().context("region")?.to_string();
    let concurrency = a.concurrency.to_string();
    let mut runner = tokio::process::Command::new(&tablecopy)
        .args(["--endpoint-url", &endpoint, "--region", &region, "--stack-name", &w.stack])
        .args(["local", "run", "--concurrency", &concurrency])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the runner")?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 4. The job, timed from create to Completed.
    let started = Instant::now();
    let req = CreateJobRequest {
        job_name: "bench".into(),
        source_table: src.clone(),
        target_table: dst.clone(),
        parallelism: Some(a.parallelism),
        on_item_error: OnItemError::Fail,
    };
    create_job(&w.deps, req).await?;
    let name = JobName::parse("bench")?;
    let job = loop {
        let j = w.deps.store.get_job(&name).await?.context("job")?;
        if j.status.is_final() {
            break j;
        }
        if let Some(status) = runner.try_wait()? {
            bail!("the runner exited ({status}) before the job finished");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let elapsed = started.elapsed();
    if job.status != JobStatus::Completed {
        bail!("the job ended {}: {:?}", job.status, job.error);
    }

    // 5. The runner's counters.
    let pid = runner.id().context("runner pid")?;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    let mut out = String::new();
    runner.stdout.take().context("stdout")?.read_to_string(&mut out).await?;
    runner.wait().await?;
    let stats: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or("{}"))?;
    let runner_messages = stats["messagesSent"].as_u64().unwrap_or(0);
    let runner_writes = stats["controlTableItemWrites"].as_u64().unwrap_or(0);
    // create-job ran here: add its messages and writes.
    let messages = runner_messages + w.deps.outbox.messages_sent();
    let writes = runner_writes + w.deps.store.item_writes();

    let after = ceiling(&w, best.1, a.ceiling_items).await?;
    println!("  raw BatchWriteItem, concurrency {:>3}: {after:>8.0} items/s (after the copy)", best.1);
    best.0 = best.0.max(after);
    let compared = assert_same_items(&w.ddb, &src, &dst).await?;
    let copy_rate = rate(job.items_copied, elapsed);
    let per_k = |x: u64| x as f64 * 1000.0 / job.items_copied.max(1) as f64;
    println!();
    println!(
        "  job items/s (create → Completed)     {copy_rate:>10.0}   ({} items in {:.1}s)",
        job.items_copied,
        elapsed.as_secs_f64()
    );
    println!(
        "  raw BatchWriteItem ceiling           {:>10.0}   (concurrency {}, best of before/after)",
        best.0, best.1
    );
    println!("  ratio                                {:>10.2}   (target ≥ 0.70)", copy_rate / best.0);
    println!("  SQS messages per 1,000 items         {:>10.2}   ({messages} sent; target ≤ 3)", per_k(messages));
    println!("  control-table writes per 1,000 items {:>10.2}   ({writes} item writes; target ≤ 1)", per_k(writes));
    println!("  peak RSS of the runner process       {:>10} KiB", stats["peakRssKiB"]);
    println!("  verified: source and target hold the same {compared} items");
    println!(
        "  settings: parallelism {}, runner concurrency {}, slice {:?}",
        a.parallelism, a.concurrency, w.deps.config.tuning.slice
    );
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}
