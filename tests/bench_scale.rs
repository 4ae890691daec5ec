//! `make bench-scale`: many segments on one job. Copies a table (50,000 items of ~1 KB by
//! default) with small slices, once per segment count (256 and 1,000 by default), each into a
//! fresh target, and prints for each: the time from create to `Completed`, the conflicts the
//! control table met (commits whose cursor changed under them, cancelled transactions), the
//! control-table writes and SQS messages per 1,000 items, and the peak size of the job item.
//! Not a test: it asserts only that each copy is complete and equal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use clap::Parser;
use shared::handlers::{create_job, CreateJobRequest};
use shared::model::{JobName, JobStatus};
use tests::bench_kit::{item, job_item_size, rate, RunnerProcess};
use tests::{assert_same_items, create_table, put_items, small_slices, unique, World};

#[derive(Parser)]
struct Args {
    /// Items to copy.
    #[arg(long, default_value_t = 50_000)]
    items: u64,
    /// Segment counts, one job each.
    #[arg(long, value_delimiter = ',', default_value = "256,1000")]
    segments: Vec<u32>,
    /// Items per slice (small, so each segment takes several slices).
    #[arg(long, default_value_t = 25)]
    slice_items: u32,
    /// Concurrent copy-chunk invocations of the runner (the deployment's Workers).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let w = World::deploy("bench-scale", small_slices(a.slice_items), &[]).await?;
    let src = unique("scale-src");
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    put_items(&w.ddb, &src, (0..a.items).map(item).collect(), 16).await?;
    println!(
        "tablecopy scale benchmark: {} items of ~{} B on LocalStack, slices of {} items, runner concurrency {}",
        a.items,
        shared::model::item_size(&item(0)),
        a.slice_items,
        a.concurrency
    );
    println!();
    println!(
        "{:>9} {:>9} {:>8} {:>10} {:>22} {:>22} {:>15}",
        "segments", "time (s)", "items/s", "conflicts", "control writes / 1k", "SQS messages / 1k", "job item (B)"
    );
    for &segments in &a.segments {
        let dst = unique("scale-dst");
        create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
        // The functions' tuning is their own: the runner gets the same small slices.
        let env = [("SLICE_MAX_ITEMS", a.slice_items.to_string())];
        let mut runner = RunnerProcess::start(&w, a.concurrency, &env).await?;
        let (messages_before, writes_before, conflicts_before) =
            (w.deps.outbox.messages_sent(), w.deps.store.item_writes(), w.deps.store.conflicts());
        let job = format!("scale-{segments}");
        let name = JobName::parse(&job)?;
        let started = Instant::now();
        // The copy's commit path alone (`make bench` reports the verification phase).
        let req = CreateJobRequest {
            parallelism: Some(segments),
            verify: shared::model::VerifyMode::None,
            ..tests::request(&job, &src, &dst)
        };
        create_job(&w.deps, req).await?;
        // The job item's size, sampled while the job runs and once at its end.
        let peak = Arc::new(AtomicU64::new(0));
        let (ddb, table) = (w.ddb.clone(), w.resources().control_table.clone());
        let sampler = {
            let (peak, ddb, table, name) = (peak.clone(), ddb.clone(), table.clone(), name.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(size) = job_item_size(&ddb, &table, &name).await {
                        peak.fetch_max(size, Ordering::Relaxed);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            })
        };
        let done = runner.wait_final(&w, &name).await?;
        let elapsed = started.elapsed();
        sampler.abort();
        let peak = peak.load(Ordering::Relaxed).max(job_item_size(&ddb, &table, &name).await?);
        if done.status != JobStatus::Completed {
            bail!("job {job} ended {}: {:?}", done.status, done.error);
        }
        let stats = runner.stop().await?;
        let compared = assert_same_items(&w.ddb, &src, &dst).await?;
        let messages = stats.messages_sent + w.deps.outbox.messages_sent() - messages_before;
        let writes = stats.control_writes + w.deps.store.item_writes() - writes_before;
        let conflicts = stats.control_conflicts + w.deps.store.conflicts() - conflicts_before;
        let per_k = |x: u64| x as f64 * 1000.0 / done.items_copied.max(1) as f64;
        println!(
            "{segments:>9} {:>9.1} {:>8.0} {conflicts:>10} {:>22.2} {:>22.2} {peak:>15}",
            elapsed.as_secs_f64(),
            rate(done.items_copied, elapsed),
            per_k(writes),
            per_k(messages)
        );
        assert_eq!(compared as u64, a.items, "every item copied");
        w.ddb.delete_table().table_name(&dst).send().await?;
    }
    w.cleanup(&[&src]).await;
    Ok(())
}
