//! Online jobs against LocalStack's DynamoDB Streams: a writer changes the source during the
//! whole snapshot and catch-up (inserts, several updates of one item within a second, deletes,
//! re-inserts of deleted keys), then stops; `complete` drains the stream, verifies and
//! repairs, and the target must equal the source item by item. Once with the same key, once
//! re-keyed (the writer moves items' target keys), once with the runner killed twice during
//! the catch-up. And the refusals a user meets first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType as T,
    StreamSpecification, StreamViewType,
};
use shared::handlers::{complete_job, create_job, CreateJobRequest};
use shared::model::{render_key, Item, Job, JobName, JobStatus, Mode};
use shared::store::live_job;
use shared::streams::{DynamoStreams, Position, Streams};
use shared::tables::{DynamoTables, Tables};
use tests::writer::{writer, Log};
use tests::{
    assert_same_items, canonical, create_table, put_items, request, runner_opts, sample_item, scan_all, small_slices,
    unique, wait_final, World,
};

fn name(s: &str) -> JobName {
    JobName::parse(s).unwrap()
}

/// A world whose slices live at most 30 s (the stack's copy-chunk visibility), so the replay
/// begins 30 s after the snapshot (a replay slice must have time for a slow stream answer when
/// LocalStack shares the cores with other suites), and whose shards drain 3 s after `complete`.
/// Its slices hold 250 items (the snapshot's 600 items are 4 slices, one per segment) or stream
/// records: with 100, a replay under the writer took half as long again to catch up.
async fn world(tag: &str) -> Result<World> {
    let tuning = shared::config::Tuning {
        copy_visibility: Duration::from_secs(30),
        drain_settle: Duration::from_secs(3),
        ..small_slices(250)
    };
    let params = [
        ("CopyChunkVisibilityTimeout".to_string(), "30".to_string()),
        ("CheckpointVisibilityTimeout".to_string(), "10".to_string()),
    ];
    World::deploy(tag, tuning, &params).await
}

/// A source keyed `pk` with a NEW_AND_OLD_IMAGES stream and `n` sample items, and an empty
/// target keyed `pk` (or `customer` + `order_no`, `rekeyed`).
async fn tables(w: &World, tag: &str, n: u64, rekeyed: bool) -> Result<(String, String)> {
    let (src, dst) = (unique(&format!("{tag}-src")), unique(&format!("{tag}-dst")));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    match rekeyed {
        true => create_table(&w.ddb, &dst, ("customer", T::S), Some(("order_no", T::N))).await?,
        false => create_table(&w.ddb, &dst, ("pk", T::S), None).await?,
    }
    // Enabled the way --enable-stream does it: writes before the stream can be read are lost.
    let source = shared::model::TableName::parse(src.clone())?;
    let streams = DynamoStreams::new(&w.sdk);
    shared::streams::enable(&DynamoTables::new(w.ddb.clone()), &streams, &source).await?;
    recorded(w, &src).await?;
    put_items(&w.ddb, &src, (0..n).map(|i| sample_item(i, None)).collect(), 8).await?;
    Ok((src, dst))
}

/// Wait until a write to `src` appears in its stream (a probe item, written and deleted; the
/// replay applies both). LocalStack's stream can accept reads before it records writes.
async fn recorded(w: &World, src: &str) -> Result<()> {
    let probe = HashMap::from([("pk".to_string(), AttributeValue::S("probe".into()))]);
    w.ddb.put_item().table_name(src).set_item(Some(probe.clone())).send().await?;
    for _ in 0..120 {
        if stream_states(w, src).await?.contains_key(&render_key(&probe)) {
            w.ddb.delete_item().table_name(src).set_key(Some(probe)).send().await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("LocalStack's stream of {src} records no write after a minute (restart LocalStack)")
}

/// The copies under a writer run one at a time: LocalStack's stream loses records when its
/// Kinesis backend starves for CPU.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn online(job: &str, src: &str, dst: &str) -> CreateJobRequest {
    CreateJobRequest { mode: Mode::Online, ..request(job, src, dst) }
}

/// The job as `show` sees it (counters summed from the cursors).
async fn live(w: &World, job: &str) -> Result<Job> {
    Ok(live_job(&w.deps.store, &name(job)).await?.expect("the job exists").0)
}

/// Wait until the job has caught up with its stream (lag at most `max_lag_ms`).
async fn caught_up(w: &World, job: &str, max_lag_ms: u64) -> Result<Job> {
    let mut last = None;
    for _ in 0..1_200 {
        let j = live(w, job).await?;
        anyhow::ensure!(!j.status.is_final(), "job {job} ended while catching up: {:?}", j.error);
        if j.replay_from.is_some() && j.replay.as_ref().and_then(|r| r.lag_ms).is_some_and(|l| l <= max_lag_ms) {
            return Ok(j);
        }
        last = Some((j.status_label(), j.items_copied, j.replay_from, j.replay));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("job {job} did not catch up within 5 minutes; last seen {last:?}")
}

/// Copy `src` into `dst` online under a writer, with `kills` runner deaths during the
/// catch-up; `complete`; check the outcome item by item.
async fn copy_under_writes(w: &World, job: &str, src: &str, dst: &str, n: u64, kills: usize) -> Result<(Job, Log)> {
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(&w.ddb, src, n, n, stop.clone());
    let mut runner = w.start_runner(runner_opts());
    let created = create_job(&w.deps, online(job, src, dst)).await?;
    assert_eq!(created.status_label(), "Running (copying snapshot)");
    // The stream's readers were counted (a signed ListEventSourceMappings): none.
    assert!(created.warnings.iter().all(|w| !w.contains("readers")), "{:?}", created.warnings);
    caught_up(w, job, 5_000).await?;
    for _ in 0..kills {
        // Catching up under writes when the runner dies; a new one takes over.
        tokio::time::sleep(Duration::from_secs(3)).await;
        runner.kill().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        runner = w.start_runner(runner_opts());
        caught_up(w, job, 5_000).await?;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let log = writing.await??;
    // The writes are stopped once the stream holds them: a starved LocalStack publishes
    // records seconds late, which a user's DynamoDB does not (see `published`).
    published(w, src).await?;
    let j = live(w, job).await?;
    // (`show` may add "stalled" while a killed runner's slices wait for their visibility.)
    assert_eq!(j.online_stage(), Some("catching up"), "{}", j.status_label());
    assert!(j.replay.as_ref().unwrap().records_applied > 0, "{:?}", j.replay);
    let completing = complete_job(&w.deps, &name(job), false).await?;
    assert_eq!(completing.status_label(), "Running (completing)");
    let done = wait_final(w, job).await?;
    runner.stop().await;
    Ok((done, log))
}

/// Wait until the stream of `src` holds as many records three seconds apart (at most a
/// minute).
async fn published(w: &World, src: &str) -> Result<()> {
    let count = || async { Ok::<u64, anyhow::Error>(stream_states(w, src).await?.values().map(|(_, n)| n).sum()) };
    let mut last = count().await?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = count().await?;
        if now == last {
            return Ok(());
        }
        last = now;
    }
    anyhow::bail!("LocalStack's stream of {src} was still publishing records a minute after the writes stopped")
}

/// The state the source's stream leaves each item in: the last record of each key (`None`:
/// removed), and how many records the key has, read from every shard.
async fn stream_states(w: &World, src: &str) -> Result<HashMap<String, (Option<Item>, u64)>> {
    let streams = DynamoStreams::new(&w.sdk);
    let table = DynamoTables::new(w.ddb.clone()).describe(&shared::model::TableName::parse(src)?).await?;
    let arn = table.and_then(|t| t.stream).expect("the source has a stream").arn;
    let mut last = HashMap::new();
    for shard in streams.describe(&arn).await?.shards {
        let mut iterator = streams.iterator(&arn, &shard.id, &Position::TrimHorizon).await?;
        // A shard may answer empty pages before its next records: read on through a few.
        let mut empty = 0;
        while empty < 5 {
            let page = streams.records(&iterator, 1_000).await?;
            for r in &page.records {
                let state = last.entry(render_key(&r.keys)).or_insert((None, 0));
                *state = (if r.remove { None } else { r.new_image.clone() }, state.1 + 1);
            }
            empty = if page.records.is_empty() { empty + 1 } else { 0 };
            match page.next {
                Some(next) => iterator = next,
                None => break,
            }
        }
    }
    Ok(last)
}

/// `item` with its numbers as DynamoDB stores them (no trailing zeros after the point), in
/// canonical form.
fn normalized(item: &Item) -> String {
    fn number(n: &str) -> String {
        match n.contains('.') {
            true => n.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => n.to_string(),
        }
    }
    fn value(v: &AttributeValue) -> AttributeValue {
        match v {
            AttributeValue::N(n) => AttributeValue::N(number(n)),
            AttributeValue::Ns(ns) => AttributeValue::Ns(ns.iter().map(|n| number(n)).collect()),
            AttributeValue::L(l) => AttributeValue::L(l.iter().map(value).collect()),
            AttributeValue::M(m) => AttributeValue::M(m.iter().map(|(k, v)| (k.clone(), value(v))).collect()),
            other => other.clone(),
        }
    }
    canonical(&item.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

/// The job completed verified, the writer did every kind of change, and every write of the
/// repair is explained by an item whose last stream record is not its state in the source
/// (or that has no record): what LocalStack's stream got out of order (DESIGN.md §8) or lost,
/// not what the replay missed. Such
/// an item needs one put with the same key; re-keyed, also a delete of each target key its
/// out-of-order records may have left (at most one per record).
async fn check(w: &World, src: &str, done: &Job, log: &Log, rekeyed: bool) -> Result<()> {
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    let v = done.verification.as_ref().expect("verified");
    assert!(v.passed, "{}", v.summary());
    assert!(
        log.updates > 0 && log.same_second > 0 && log.deletes > 0 && log.inserts > 0 && log.reinserts > 0,
        "{log:?}"
    );
    let source: HashMap<String, Item> = scan_all(&w.ddb, src)
        .await?
        .into_iter()
        .map(|i| (render_key(&HashMap::from([("pk".to_string(), i["pk"].clone())])), i))
        .collect();
    let states = stream_states(w, src).await?;
    // The table stores numbers normalized (680.80 as 680.8); LocalStack's stream keeps them
    // as written.
    let same = |a: Option<&Item>, b: Option<&Item>| a.map(normalized) == b.map(normalized);
    // An item of the source of which the stream holds no record (LocalStack lost them) is
    // stale too.
    let unrecorded = source.keys().filter(|k| !states.contains_key(*k)).map(|_| 0);
    let stale: Vec<u64> = states
        .iter()
        .filter(|(k, (state, _))| !same(state.as_ref(), source.get(*k)))
        .map(|(_, (_, n))| *n)
        .chain(unrecorded)
        .collect();
    let bound = if rekeyed { stale.iter().map(|n| 1 + n).sum() } else { stale.len() as u64 };
    let stale = stale.len();
    eprintln!(
        "{stale} item(s) whose last stream record is not their state; repaired {} put, {} deleted",
        v.repaired_put, v.repaired_deleted
    );
    assert!(
        v.repaired_put + v.repaired_deleted <= bound,
        "the replay missed changes the stream holds: {stale} stale, {}",
        v.summary()
    );
    Ok(())
}

/// One online copy of `n` sample items under a writer (one at a time, see [`ONE_AT_A_TIME`]),
/// into a target keyed `pk` or re-keyed, with `kills` runner deaths during the catch-up: it
/// ends `Completed`, verified, every repair explained, the target equal to the source.
async fn online_copy(tag: &str, n: u64, rekeyed: bool, kills: usize) -> Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let w = world(&format!("on-{tag}")).await?;
    let (src, dst) = tables(&w, &format!("on-{tag}"), n, rekeyed).await?;
    let (done, log) = copy_under_writes(&w, tag, &src, &dst, n, kills).await?;
    check(&w, &src, &done, &log, rekeyed).await?;
    let items = assert_same_items(&w.ddb, &src, &dst).await?;
    eprintln!(
        "{tag}: {items} items, writer {log:?}, replay {:?}, verification {}",
        done.replay,
        done.verification.unwrap().summary()
    );
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn an_online_copy_under_a_writer_ends_with_the_target_equal_to_the_source() -> Result<()> {
    online_copy("same", 600, false, 0).await
}

#[tokio::test]
async fn an_online_copy_into_a_rekeyed_target_under_a_writer_ends_exact() -> Result<()> {
    online_copy("rekey", 600, true, 0).await
}

#[tokio::test]
async fn an_online_copy_survives_the_runner_killed_twice_during_the_catch_up() -> Result<()> {
    online_copy("kill", 600, true, 2).await
}

#[tokio::test]
async fn online_refusals_name_what_to_do_and_create_nothing() -> Result<()> {
    let w = world("on-bad").await?;
    let dst = unique("on-bad-dst");
    create_table(&w.ddb, &dst, ("customer", T::S), Some(("order_no", T::N))).await?;
    let mut tables = vec![dst.clone()];
    // No stream, a KEYS_ONLY one, a NEW_IMAGE one for a re-keyed target. (Each table gets its
    // stream at creation: LocalStack's stream forwarding is fragile when a stream is disabled
    // and enabled again.)
    for view in [None, Some(StreamViewType::KeysOnly), Some(StreamViewType::NewImage)] {
        let src = unique("on-bad-src");
        let mut create = w
            .ddb
            .create_table()
            .table_name(&src)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(AttributeDefinition::builder().attribute_name("pk").attribute_type(T::S).build()?)
            .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build()?);
        if let Some(v) = &view {
            create = create.stream_specification(
                StreamSpecification::builder().stream_enabled(true).stream_view_type(v.clone()).build()?,
            );
        }
        create.send().await?;
        tables.push(src.clone());
        let e = create_job(&w.deps, online("bad", &src, &dst)).await.unwrap_err().to_string();
        match view {
            None => assert!(
                e.contains(&format!(
                    "aws dynamodb update-table --table-name {src} --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES"
                )) && e.contains("--enable-stream"),
                "{e}"
            ),
            Some(v) => assert!(e.contains(v.as_str()) && e.contains("NEW_AND_OLD_IMAGES"), "{e}"),
        }
    }
    // complete: an unknown job, an offline one.
    let e = complete_job(&w.deps, &name("bad"), false).await.unwrap_err().to_string();
    assert!(e.contains("\"bad\""), "{e}");
    assert!(w.control_items().await?.iter().all(|i| !i["pk"].as_s().unwrap().starts_with("JOB#")), "no job recorded");
    let refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    w.cleanup(&refs).await;
    Ok(())
}
