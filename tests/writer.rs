//! A writer that keeps changing a source table of sample items (the online tests' and
//! `make demo-online`'s): inserts, several updates of one item within a second that move its
//! target key (`customer`), deletes, and re-inserts of deleted keys, with a log of what it did.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use aws_sdk_dynamodb::types::AttributeValue;
use rand::{Rng, SeedableRng};
use shared::model::Item;

use crate::sample_item;

/// What the writer did.
#[derive(Debug, Default)]
pub struct Log {
    pub inserts: u64,
    pub updates: u64,
    /// Updates of one item within the same second as its previous update.
    pub same_second: u64,
    pub deletes: u64,
    pub reinserts: u64,
}

/// Change `src` (sample items `0..n`) until `stop`: ~30 operations a second over those items
/// and new ones.
pub fn writer(
    ddb: &aws_sdk_dynamodb::Client,
    src: &str,
    n: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<Log>> {
    let (ddb, src) = (ddb.clone(), src.to_string());
    tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut log = Log::default();
        let mut deleted: Vec<u64> = vec![];
        let mut next = 1_000_000 + n;
        while !stop.load(Ordering::SeqCst) {
            let put = |item: Item| ddb.put_item().table_name(&src).set_item(Some(item)).send();
            match rng.random_range(0..10) {
                0..=4 => {
                    // One item, two to four versions within a second; its target key moves.
                    let i = rng.random_range(0..n);
                    if deleted.contains(&i) {
                        continue;
                    }
                    let mut item = sample_item(i, None);
                    for v in 0..rng.random_range(2..5) {
                        item.insert("customer".into(), AttributeValue::S(format!("moved-{}", rng.random_range(0..50))));
                        item.insert("version".into(), AttributeValue::N(v.to_string()));
                        put(item.clone()).await?;
                        log.updates += 1;
                        log.same_second += u64::from(v > 0);
                    }
                }
                5 | 6 => {
                    let i = rng.random_range(0..n);
                    let key = sample_item(i, None)["pk"].clone();
                    ddb.delete_item().table_name(&src).key("pk", key).send().await?;
                    deleted.push(i);
                    log.deletes += 1;
                }
                7 if !deleted.is_empty() => {
                    let i = deleted.remove(rng.random_range(0..deleted.len()));
                    let mut item = sample_item(i, None);
                    item.insert("version".into(), AttributeValue::S("re-inserted".into()));
                    put(item).await?;
                    log.reinserts += 1;
                }
                _ => {
                    next += 1;
                    put(sample_item(next, None)).await?;
                    log.inserts += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Ok(log)
    })
}
