//! `make demo`'s data tool: seed a sample source table and a target with another key
//! schema, keep changing the source (`make demo-online`), and verify that the two hold the
//! same items.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use clap::{Parser, Subcommand};
use tests::{assert_same_items, create_table, localstack, put_items, sample_item};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create SOURCE (key: pk) with N sample items and an empty TARGET (key: customer + order_no).
    Seed {
        #[arg(long)]
        source: String,
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 50_000)]
        items: u64,
    },
    /// Keep changing SOURCE (seeded with ITEMS items) until SIGTERM / Ctrl-C, then print what
    /// was done: inserts, several updates of one item within a second, deletes, re-inserts.
    Write {
        #[arg(long)]
        source: String,
        #[arg(long, default_value_t = 50_000)]
        items: u64,
    },
    /// Compare SOURCE and TARGET item by item.
    Verify {
        #[arg(long)]
        source: String,
        #[arg(long)]
        target: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let sdk = localstack().await?;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    match Cli::parse().command {
        Command::Seed { source, target, items } => {
            for t in [&source, &target] {
                let _ = ddb.delete_table().table_name(t).send().await;
            }
            create_table(&ddb, &source, ("pk", T::S), None).await?;
            create_table(&ddb, &target, ("customer", T::S), Some(("order_no", T::N))).await?;
            let started = std::time::Instant::now();
            put_items(&ddb, &source, (0..items).map(|i| sample_item(i, Some(10_000))).collect(), 16).await?;
            println!(
                "seeded {source} with {items} items (every attribute type; {} near the 400 KB limit) in {:.1}s; created {target} keyed on customer + order_no",
                items / 10_000,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Write { source, items } => {
            let stop = Arc::new(AtomicBool::new(false));
            let writing = tests::writer::writer(&ddb, &source, items, items, stop.clone());
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            stop.store(true, Ordering::SeqCst);
            let log = writing.await??;
            println!(
                "the writer stopped: {} inserts, {} updates ({} within a second of the item's previous one), {} deletes, {} re-inserts of deleted keys",
                log.inserts, log.updates, log.same_second, log.deletes, log.reinserts
            );
        }
        Command::Verify { source, target } => {
            let n = assert_same_items(&ddb, &source, &target).await?;
            println!("verified: {source} and {target} hold the same {n} items, compared attribute by attribute");
        }
    }
    Ok(())
}
