//! `make bench`: copy N items (~1 KB each) on LocalStack through the four handlers (played by a
//! `tablecopy local run` child process) and print, in one run, the job's items/s next to the raw
//! BatchWriteItem ceiling of the same LocalStack, their ratio, SQS messages and control-table
//! writes per 1,000 items, and the runner's peak RSS; once at the chosen parallelism and once
//! at parallelism 16. The job's two phases are reported apart: the copy against the raw
//! BatchWriteItem ceiling, the verification (both tables read whole) against the raw parallel
//! consistent-Scan ceiling of the same LocalStack. Not a test: it asserts only that each copy
//! is complete, verified and equal.

use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use clap::Parser;
use shared::handlers::{create_job, CreateJobRequest};
use shared::model::{Item, JobName, JobStatus};
use tests::bench_kit::{item, rate, RunnerProcess};
use tests::{assert_same_items, create_table, put_items, unique, World};

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
    /// A second copy at this parallelism, with as many runner invocations (0: none).
    #[arg(long, default_value_t = 16)]
    also_parallelism: u32,
    /// BatchWriteItem concurrencies tried for the raw ceiling (the best one counts).
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    ceiling_concurrency: Vec<usize>,
    /// Items written per ceiling trial.
    #[arg(long, default_value_t = 20_000)]
    ceiling_items: u64,
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

/// Items/s of a strongly consistent parallel Scan of `table` in `segments` segments, all at once.
async fn scan_ceiling(w: &World, table: &str, segments: u32) -> Result<f64> {
    let t = Instant::now();
    let name = shared::model::TableName::parse(table)?;
    let tables = shared::tables::DynamoTables::new(w.ddb.clone());
    let counts = futures::future::try_join_all((0..segments).map(|s| {
        let (tables, name) = (&tables, &name);
        async move {
            let (mut n, mut start) = (0u64, None);
            loop {
                let page = shared::tables::Tables::scan_page(tables, name, s, segments, start, 1_000).await?;
                n += page.items.len() as u64;
                match page.last_key {
                    Some(k) => start = Some(k),
                    None => return Ok::<u64, shared::error::AwsError>(n),
                }
            }
        }
    }))
    .await?;
    Ok(rate(counts.iter().sum(), t.elapsed()))
}

/// One copy of `src` into a fresh table, timed from create to `Completed`, with its
/// counters.
struct Run {
    parallelism: u32,
    concurrency: usize,
    items: u64,
    elapsed: std::time::Duration,
    /// The copy phase (create → the verification's start) and the verification (its start →
    /// `Completed`), from the job's own timestamps; the items the verification read.
    copy_s: f64,
    verify_s: f64,
    verified_items: u64,
    /// The raw parallel Scan ceiling at the job's parallelism, measured right after it.
    scan_ceiling: f64,
    messages: u64,
    writes: u64,
    peak_rss_kib: u64,
    compared: usize,
}

async fn copy(w: &World, src: &str, job: &str, parallelism: u32, concurrency: usize) -> Result<Run> {
    let dst = unique("bench-dst");
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    // The runner, as its own process (its RSS and counters are its own).
    let mut runner = RunnerProcess::start(w, concurrency, &[]).await?;
    // create-job runs here: its messages and writes count too.
    let (messages_before, writes_before) = (w.deps.outbox.messages_sent(), w.deps.store.item_writes());
    let started = Instant::now();
    let req = CreateJobRequest { parallelism: Some(parallelism), ..tests::request(job, src, &dst) };
    create_job(&w.deps, req).await?;
    let done = runner.wait_final(w, &JobName::parse(job)?).await?;
    let elapsed = started.elapsed();
    if done.status != JobStatus::Completed {
        bail!("the job ended {}: {:?}", done.status, done.error);
    }
    let stats = runner.stop().await?;
    let verify_start = done.verify_started_at.context("the job verified")?;
    let v = done.verification.clone().context("the job's verification")?;
    if !v.matched() {
        bail!("the verification did not match: {}", v.summary());
    }
    let seconds = |d: chrono::TimeDelta| d.num_milliseconds() as f64 / 1000.0;
    let copy_s = seconds(verify_start - done.created_at);
    let verify_s = seconds(done.completed_at.context("completed")? - verify_start);
    let scan_ceiling = scan_ceiling(w, src, parallelism).await?;
    let compared = assert_same_items(&w.ddb, src, &dst).await?;
    w.ddb.delete_table().table_name(&dst).send().await?;
    Ok(Run {
        parallelism,
        concurrency,
        items: done.items_copied,
        elapsed,
        messages: stats.messages_sent + w.deps.outbox.messages_sent() - messages_before,
        writes: stats.control_writes + w.deps.store.item_writes() - writes_before,
        peak_rss_kib: stats.peak_rss_kib,
        compared,
        copy_s,
        verify_s,
        verified_items: v.source.items + v.target.items,
        scan_ceiling,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    // The template's own visibility timeouts: a slice must never be re-delivered while it runs.
    let w = World::deploy("bench", shared::config::Tuning::from_env()?, &[]).await?;
    let src = unique("bench-src");
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    println!("tablecopy benchmark: {} items of ~{} B on LocalStack", a.items, shared::model::item_size(&item(0)));

    // 1. The raw BatchWriteItem ceiling: pre-generated items, each concurrency on a fresh table.
    //    LocalStack's rate drifts between runs, so it is measured again after the copies and
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

    // 3. The copies: the chosen settings, then parallelism 16 with as many workers.
    let mut runs = vec![copy(&w, &src, "bench", a.parallelism, a.concurrency).await?];
    if a.also_parallelism > 0 {
        let p = a.also_parallelism;
        runs.push(copy(&w, &src, "bench-wide", p, p as usize).await?);
    }

    let after = ceiling(&w, best.1, a.ceiling_items).await?;
    println!("  raw BatchWriteItem, concurrency {:>3}: {after:>8.0} items/s (after the copies)", best.1);
    best.0 = best.0.max(after);
    println!(
        "  raw BatchWriteItem ceiling           {:>10.0}   (concurrency {}, best of before/after)",
        best.0, best.1
    );
    for r in &runs {
        let copy_rate = r.items as f64 / r.copy_s.max(0.001);
        let per_k = |x: u64| x as f64 * 1000.0 / r.items.max(1) as f64;
        println!();
        println!("  parallelism {}, runner concurrency {}", r.parallelism, r.concurrency);
        println!(
            "  job, create → Completed              {:>10.1} s ({} items; copy and verification below)",
            r.elapsed.as_secs_f64(),
            r.items
        );
        println!("  copy items/s (create → verifying)    {copy_rate:>10.0}   ({:.1}s)", r.copy_s);
        println!("  copy ratio to BatchWriteItem ceiling {:>10.2}   (target ≥ 0.70)", copy_rate / best.0);
        let verify_rate = r.verified_items as f64 / r.verify_s.max(0.001);
        println!(
            "  verification items read/s            {verify_rate:>10.0}   ({} items of both tables in {:.1}s)",
            r.verified_items, r.verify_s
        );
        println!("  raw consistent Scan, {:>3} segments   {:>10.0}   items/s", r.parallelism, r.scan_ceiling);
        println!("  verification ratio to Scan ceiling   {:>10.2}", verify_rate / r.scan_ceiling);
        println!(
            "  SQS messages per 1,000 items         {:>10.2}   ({} sent; target ≤ 3)",
            per_k(r.messages),
            r.messages
        );
        println!(
            "  control-table writes per 1,000 items {:>10.2}   ({} item writes; target ≤ 1)",
            per_k(r.writes),
            r.writes
        );
        println!("  peak RSS of the runner process       {:>10} KiB", r.peak_rss_kib);
        println!("  verified: source and target hold the same {} items", r.compared);
    }
    println!("  slice {:?}", w.deps.config.tuning.slice);
    w.cleanup(&[&src]).await;
    Ok(())
}
