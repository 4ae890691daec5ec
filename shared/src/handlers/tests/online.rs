//! Online jobs with an in-memory stream that follows DynamoDB Streams' rules (see
//! `fakes::FakeStream`): what LocalStack cannot produce (shard splits, aged-out parents,
//! trimmed records, expired iterators, a crash between two batches), and the refusals.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::*;
use crate::model::{Cursor, Job, Mode, StreamSpec, StreamView, TableName, VerifyMode};
use crate::replay::STREAM_TRIMMED;

/// `n` source items (keyed `pk`) with a stream, and an empty target keyed `customer` +
/// `order_no` (or `pk`, with `same_key`). Snapshot slices stop writing at once and shards
/// drain at the first read at their tip after `complete` (the waits are the deployment's).
fn online_world(n: u64, same_key: bool) -> (FakeDeps, Arc<FakeStream>) {
    let mut d = world(n, &[]);
    if same_key {
        d.tables.add("dst", schema(("pk", KeyType::S), None), vec![]);
    }
    d.config.tuning.copy_visibility = Duration::ZERO;
    d.config.tuning.drain_settle = Duration::ZERO;
    let stream = Arc::new(FakeStream::on(&d.tables, "src"));
    d.streams = stream.clone();
    (d, stream)
}

fn online(name: &str, parallelism: u32) -> CreateJobRequest {
    CreateJobRequest { mode: Mode::Online, ..request(name, parallelism, OnItemError::Fail) }
}

/// Deliver messages round by round (shuffled, as `drain`), calling `between` before each
/// round, until `done` holds of the job or no message is left. Returns the rounds run.
async fn run_until(
    d: &FakeDeps,
    name: &str,
    seed: u64,
    mut between: impl FnMut(usize),
    mut done: impl FnMut(&Job) -> bool,
) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut returned: Vec<(QueueKind, String, u32)> = Vec::new();
    for round in 0..20_000 {
        // As `show` sees it: with the counters summed from the cursors.
        let (live, _) = crate::store::live_job(&d.store, &JobName::parse(name).unwrap()).await.unwrap().unwrap();
        if done(&live) {
            return round;
        }
        between(round);
        let mut batch: Vec<(QueueKind, String, u32)> = d.outbox.take().into_iter().map(|(k, b)| (k, b, 1)).collect();
        batch.append(&mut returned);
        if batch.is_empty() {
            return round;
        }
        batch.shuffle(&mut rng);
        for (kind, body, attempt) in batch {
            match handle(d, kind, &body, attempt).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => returned.push((kind, body, attempt + 1)),
                Err(e) => panic!("{kind:?} failed permanently: {e}"),
            }
        }
    }
    panic!("job {name} never got there: {:?}", job(d, name).status_label())
}

/// A `done` for [`run_until`]: after `n` rounds.
fn rounds(n: usize) -> impl FnMut(&Job) -> bool {
    let mut k = 0;
    move |_| {
        k += 1;
        k > n
    }
}

fn caught_up(j: &Job) -> bool {
    j.replay_from.is_some() && j.replay.as_ref().is_some_and(|r| r.lag_ms == Some(0))
}

/// A `done` for [`run_until`]: the job ended, or caught up with `n` records applied.
fn ended_or_applied(n: u64) -> impl FnMut(&Job) -> bool {
    move |j| j.status.is_final() || (caught_up(j) && j.replay.as_ref().is_some_and(|r| r.records_applied >= n))
}

/// `complete` the job and run it to its end: it completes with the tables equal.
async fn complete_to_the_end(d: &FakeDeps, name: &str, seed: u64) {
    complete_job(d, &JobName::parse(name).unwrap(), false).await.unwrap();
    run_until(d, name, seed, |_| {}, |j| j.status.is_final()).await;
    let j = job(d, name);
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

/// A writer's change to the source: updates (moving the target key), deletes, re-inserts of
/// deleted keys and inserts, several to one item in a row.
struct Writer {
    rng: rand::rngs::StdRng,
    next: u64,
    deleted: Vec<Item>,
}

impl Writer {
    fn new(seed: u64, n: u64) -> Self {
        Self { rng: rand::rngs::StdRng::seed_from_u64(seed), next: n, deleted: vec![] }
    }

    fn write(&mut self, d: &FakeDeps, stream: &FakeStream, ops: usize) {
        for _ in 0..ops {
            let items = d.tables.items("src");
            match self.rng.random_range(0..10) {
                0..=4 if !items.is_empty() => {
                    let mut it = items[self.rng.random_range(0..items.len())].clone();
                    // Same item, several versions in a row; its target key moves.
                    for v in 0..self.rng.random_range(1..4) {
                        it.insert("customer".into(), AttributeValue::S(format!("c-{}", self.rng.random_range(0..9))));
                        it.insert("v".into(), AttributeValue::N(v.to_string()));
                        stream.put(&d.tables, "src", it.clone());
                    }
                }
                5 | 6 if !items.is_empty() => {
                    let it = items[self.rng.random_range(0..items.len())].clone();
                    stream.remove(&d.tables, "src", HashMap::from([("pk".to_string(), it["pk"].clone())]));
                    self.deleted.push(it);
                }
                7 if !self.deleted.is_empty() => {
                    let mut it = self.deleted.remove(0);
                    it.insert("v".into(), AttributeValue::S("again".into()));
                    stream.put(&d.tables, "src", it);
                }
                _ => {
                    self.next += 1;
                    stream.put(&d.tables, "src", item(self.next));
                }
            }
        }
    }
}

/// Once `name` is final, nothing more reaches the target: neither what is still queued (a
/// backstop finalize, a last slice) nor what the writer changes in the source afterwards.
async fn nothing_written_after_the_end(d: &FakeDeps, stream: &FakeStream, writer: &mut Writer, name: &str) {
    writer.write(d, stream, 5);
    let before = d.tables.items("dst");
    run_until(d, name, 8, |_| {}, |_| false).await;
    assert_eq!(sorted_canonical(d.tables.items("dst")), sorted_canonical(before), "{name}: written after its end");
}

/// Create, copy under writes, catch up under writes, `complete`, and run to the end.
async fn copy_online(d: &FakeDeps, stream: &FakeStream, name: &str, seed: u64) -> Job {
    let mut writer = Writer::new(seed, 1_000);
    create_job(d, online(name, 3)).await.unwrap();
    // Writes during the snapshot, then during the catch-up.
    run_until(d, name, seed, |r| writer.write(d, stream, usize::from(r % 3 == 0)), |j| j.replay_from.is_some()).await;
    for _ in 0..20 {
        run_until(d, name, seed, |r| writer.write(d, stream, usize::from(r < 3) * 2), rounds(4)).await;
        run_until(d, name, seed, |_| {}, caught_up).await;
    }
    complete_job(d, &JobName::parse(name).unwrap(), false).await.unwrap();
    run_until(d, name, seed, |_| {}, |j| j.status.is_final()).await;
    job(d, name)
}

#[tokio::test]
async fn an_online_job_ends_with_the_target_equal_to_a_source_that_changed_throughout() {
    for seed in 0..3 {
        let (d, stream) = online_world(40, false);
        let j = copy_online(&d, &stream, "live", seed).await;
        assert_eq!(j.status, JobStatus::Completed, "seed {seed}: {:?}", j.error);
        assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")), "seed {seed}");
        let v = j.verification.unwrap();
        assert!(v.passed, "seed {seed}: {}", v.summary());
        assert!(j.replay.unwrap().records_applied > 0);
        let labels: Vec<JobStatus> = j.history.iter().map(|h| h.status).collect();
        assert_eq!(labels, [JobStatus::Queued, JobStatus::Running, JobStatus::Completed]);
    }
}

#[tokio::test]
async fn with_the_same_key_the_replay_alone_makes_the_target_exact() {
    for seed in 0..3 {
        let (d, stream) = online_world(40, true);
        let j = copy_online(&d, &stream, "same", seed).await;
        assert_eq!(j.status, JobStatus::Completed, "seed {seed}: {:?}", j.error);
        assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
        let v = j.verification.unwrap();
        assert!(v.passed && v.differing_buckets.is_empty(), "seed {seed}: nothing to repair: {}", v.summary());
    }
}

#[tokio::test]
async fn the_status_shows_the_snapshot_the_catch_up_and_the_completion() {
    let (d, stream) = online_world(30, true);
    create_job(&d, online("st", 2)).await.unwrap();
    assert_eq!(job(&d, "st").status_label(), "Running (copying snapshot)");
    run_until(&d, "st", 1, |_| {}, caught_up).await;
    let (j, _) = crate::store::live_job(&d.store, &name("st")).await.unwrap().unwrap();
    assert_eq!(j.status_label(), "Running (catching up)");
    let r = j.replay.unwrap();
    assert_eq!((r.open_shards, r.shards, r.lag_ms), (1, 1, Some(0)));
    stream.put(&d.tables, "src", item(500));
    complete_job(&d, &name("st"), false).await.unwrap();
    assert_eq!(job(&d, "st").status_label(), "Running (completing)");
    // Asking again changes nothing.
    let again = complete_job(&d, &name("st"), false).await.unwrap();
    assert_eq!(again.complete_requested_at, job(&d, "st").complete_requested_at);
    run_until(&d, "st", 1, |_| {}, |j| j.status.is_final()).await;
    assert_eq!(job(&d, "st").status, JobStatus::Completed);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn split_shards_are_read_after_their_parent_and_found_while_the_job_runs() {
    let (d, stream) = online_world(30, true);
    let mut writer = Writer::new(7, 1_000);
    create_job(&d, online("split", 2)).await.unwrap();
    run_until(&d, "split", 2, |_| {}, caught_up).await;
    // Changes in the parent, then a split while the job reads, then changes of the same items
    // in the children, then one child rotates.
    writer.write(&d, &stream, 30);
    stream.split("shard-0", &["shard-1", "shard-2"]);
    writer.write(&d, &stream, 30);
    // The reconciler finds the children before the parent is read to its end: they wait.
    reconcile(&d).await.unwrap();
    let found = d.store.cursors(&name("split")).await.unwrap();
    let children: Vec<&Cursor> = found.iter().filter(|c| c.shard.as_ref().is_some_and(|s| s.id != "shard-0")).collect();
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(|c| c.parked && c.seq == 0), "not read before their parent");
    run_until(&d, "split", 2, |_| {}, |j| j.replay.as_ref().is_some_and(|r| r.shards == 3)).await;
    stream.split("shard-1", &["shard-3"]);
    writer.write(&d, &stream, 30);
    run_until(&d, "split", 2, |_| {}, |j| caught_up(j) && j.replay.as_ref().is_some_and(|r| r.shards == 4)).await;
    complete_job(&d, &name("split"), false).await.unwrap();
    run_until(&d, "split", 2, |_| {}, |j| j.status.is_final()).await;
    let j = job(&d, "split");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    // Same key: the replay alone converged, which it cannot if a child is read before its parent.
    assert!(j.verification.as_ref().unwrap().differing_buckets.is_empty(), "{}", j.verification.unwrap().summary());
    let shards: Vec<Cursor> =
        d.store.cursors(&name("split")).await.unwrap().into_iter().filter(|c| c.shard.is_some()).collect();
    let closed: Vec<&str> = shards
        .iter()
        .filter(|c| c.shard.as_ref().unwrap().closed)
        .map(|c| c.shard.as_ref().unwrap().id.as_str())
        .collect();
    assert_eq!(closed.len(), 2, "shard-0 and shard-1 read to their end: {closed:?}");
    assert!(shards.iter().all(|c| c.done));
}

#[tokio::test]
async fn a_parent_that_aged_out_counts_as_read() {
    let (d, stream) = online_world(20, true);
    stream.split("shard-0", &["shard-1"]);
    stream.age_out("shard-0");
    create_job(&d, online("aged", 1)).await.unwrap();
    run_until(&d, "aged", 3, |_| {}, caught_up).await;
    stream.put(&d.tables, "src", item(700));
    run_until(&d, "aged", 3, |_| {}, |j| j.replay.as_ref().is_some_and(|r| r.records_applied == 1)).await;
    let shards: Vec<Cursor> =
        d.store.cursors(&name("aged")).await.unwrap().into_iter().filter(|c| c.shard.is_some()).collect();
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].shard.as_ref().unwrap().parent, None, "its parent aged out");
    complete_job(&d, &name("aged"), false).await.unwrap();
    run_until(&d, "aged", 3, |_| {}, |j| j.status.is_final()).await;
    assert_eq!(job(&d, "aged").status, JobStatus::Completed);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn an_expired_iterator_is_renewed_from_the_cursor() {
    let (d, stream) = online_world(20, true);
    let mut writer = Writer::new(9, 1_000);
    create_job(&d, online("exp", 1)).await.unwrap();
    run_until(&d, "exp", 4, |_| {}, caught_up).await;
    stream.log.lock().unwrap().page = 3;
    writer.write(&d, &stream, 20);
    stream.log.lock().unwrap().expire_next = 2;
    run_until(&d, "exp", 4, |_| {}, |j| caught_up(j) && j.replay.as_ref().unwrap().records_applied > 0).await;
    assert_eq!(stream.log.lock().unwrap().expire_next, 0, "both expired answers were met");
    complete_job(&d, &name("exp"), false).await.unwrap();
    run_until(&d, "exp", 4, |_| {}, |j| j.status.is_final()).await;
    let j = job(&d, "exp");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    assert!(j.verification.unwrap().differing_buckets.is_empty());
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn records_applied_in_two_batches_by_a_slice_that_died_are_applied_again_in_order() {
    let (d, stream) = online_world(10, true);
    create_job(&d, online("crash", 1)).await.unwrap();
    run_until(&d, "crash", 5, |_| {}, caught_up).await;
    stream.log.lock().unwrap().page = 3;
    // Five versions of one item and a delete of another: two batches and more.
    for v in 0..5 {
        let mut it = item(1);
        it.insert("v".into(), AttributeValue::N(v.to_string()));
        stream.put(&d.tables, "src", it);
    }
    stream.remove(&d.tables, "src", HashMap::from([("pk".to_string(), item(2)["pk"].clone())]));
    // The next slice reads and applies them, then its process dies before reporting.
    let (kind, slice) = d.outbox.take().into_iter().find(|(k, _)| *k == QueueKind::CopyChunk).unwrap();
    handle(&d, kind, &slice, 1).await.unwrap();
    let lost = d.outbox.take();
    assert_eq!(lost.len(), 1, "its one result, lost with the process");
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    let msg: crate::messages::CopyChunk = decode(&slice).unwrap();
    {
        // Its hold runs out (the process is gone).
        let mut s = d.store.state.lock().unwrap();
        let c = s.cursors.get_mut(&(name("crash"), msg.segment)).unwrap();
        c.lease_until = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
    }
    // Meanwhile the item changes once more; SQS delivers the slice again.
    let mut it = item(1);
    it.insert("v".into(), AttributeValue::N("9".into()));
    stream.put(&d.tables, "src", it);
    handle(&d, QueueKind::CopyChunk, &slice, 2).await.unwrap();
    run_until(&d, "crash", 5, |_| {}, |j| caught_up(j) && j.replay.as_ref().unwrap().records_applied == 7).await;
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    complete_job(&d, &name("crash"), false).await.unwrap();
    run_until(&d, "crash", 5, |_| {}, |j| j.status.is_final()).await;
    let j = job(&d, "crash");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(j.replay.unwrap().records_applied, 7, "every record counted once");
}

#[tokio::test]
async fn a_replay_that_cannot_begin_within_the_streams_24_hours_fails_stream_trimmed() {
    let (d, _stream) = online_world(10, true);
    create_job(&d, online("late", 1)).await.unwrap();
    // The job started a day ago (its snapshot took that long).
    d.store.state.lock().unwrap().jobs.get_mut(&name("late")).unwrap().started_at =
        Some(chrono::Utc::now() - chrono::Duration::hours(24));
    run_until(&d, "late", 6, |_| {}, |j| j.status.is_final()).await;
    let j = job(&d, "late");
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, STREAM_TRIMMED);
    assert!(e.message.contains("Re-create the job"), "{}", e.message);
}

#[tokio::test]
async fn records_trimmed_after_the_cursor_fail_the_job_stream_trimmed() {
    let (d, stream) = online_world(10, true);
    create_job(&d, online("trim", 1)).await.unwrap();
    run_until(&d, "trim", 7, |_| {}, caught_up).await;
    stream.put(&d.tables, "src", item(800));
    run_until(&d, "trim", 7, |_| {}, |j| j.replay.as_ref().is_some_and(|r| r.records_applied == 1)).await;
    pause_job(&d, &name("trim")).await.unwrap();
    run_until(&d, "trim", 7, |_| {}, |j| j.status == JobStatus::Paused).await;
    // Paused for more than a day: the records after its cursor were trimmed.
    stream.put(&d.tables, "src", item(801));
    stream.trim("shard-0", 2);
    d.store.state.lock().unwrap().jobs.get_mut(&name("trim")).unwrap().started_at =
        Some(chrono::Utc::now() - chrono::Duration::hours(25));
    resume_job(&d, &name("trim")).await.unwrap();
    run_until(&d, "trim", 7, |_| {}, |j| j.status.is_final()).await;
    let j = job(&d, "trim");
    assert_eq!((j.status, j.error.unwrap().code.as_str()), (JobStatus::Failed, STREAM_TRIMMED));
}

#[tokio::test]
async fn pause_resume_and_cancel_work_while_catching_up() {
    let (d, stream) = online_world(20, false);
    let mut writer = Writer::new(11, 1_000);
    create_job(&d, online("prc", 2)).await.unwrap();
    run_until(&d, "prc", 8, |_| {}, caught_up).await;
    pause_job(&d, &name("prc")).await.unwrap();
    run_until(&d, "prc", 8, |_| {}, |j| j.status == JobStatus::Paused).await;
    writer.write(&d, &stream, 20);
    assert_eq!(d.outbox.take().len(), 0, "a paused job reads nothing");
    resume_job(&d, &name("prc")).await.unwrap();
    run_until(&d, "prc", 8, |_| {}, |j| caught_up(j) && j.replay.as_ref().unwrap().records_applied > 0).await;
    assert_eq!(job(&d, "prc").status, JobStatus::Running);
    cancel_job(&d, &name("prc"), false).await.unwrap();
    run_until(&d, "prc", 8, |_| {}, |j| j.status.is_final()).await;
    assert_eq!(job(&d, "prc").status, JobStatus::Cancelled);
    nothing_written_after_the_end(&d, &stream, &mut writer, "prc").await;
}

#[tokio::test]
async fn a_stream_disabled_or_replaced_while_the_job_runs_fails_it_with_the_reason() {
    for (code, lose) in [("StreamDisabled", 0), ("StreamReplaced", 1)] {
        let (d, stream) = online_world(10, true);
        create_job(&d, online("lost", 1)).await.unwrap();
        run_until(&d, "lost", 9, |_| {}, caught_up).await;
        {
            let mut tables = d.tables.tables.lock().unwrap();
            let src = tables.get_mut(&TableName::parse("src").unwrap()).unwrap();
            src.stream = (lose == 1).then(|| StreamSpec {
                arn: "arn:fake:dynamodb:table/src/stream/2".into(),
                view: StreamView::NewAndOldImages,
            });
        }
        stream.log.lock().unwrap().enabled = lose == 1;
        // The shard ends (a disabled stream's shards close); the job looks for its children.
        stream.split("shard-0", &[]);
        run_until(&d, "lost", 9, |_| {}, |j| j.status.is_final()).await;
        let j = job(&d, "lost");
        assert_eq!((j.status, j.error.as_ref().unwrap().code.as_str()), (JobStatus::Failed, code));
        assert!(j.error.unwrap().message.contains("re-create the job") || code == "StreamReplaced");
    }
}

#[tokio::test]
async fn bad_online_requests_are_refused_with_what_to_do_and_change_nothing() {
    let (d, _stream) = online_world(5, false);
    let set_stream = |view: Option<StreamView>| {
        let mut tables = d.tables.tables.lock().unwrap();
        tables.get_mut(&TableName::parse("src").unwrap()).unwrap().stream =
            view.map(|view| StreamSpec { arn: "arn:fake:dynamodb:table/src/stream/1".into(), view });
    };
    let refused = |e: RequestError| e.to_string();
    set_stream(None);
    let e = refused(create_job(&d, online("o1", 1)).await.unwrap_err());
    assert!(e.contains("aws dynamodb update-table --table-name src --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES") && e.contains("--enable-stream"), "{e}");
    for view in [StreamView::KeysOnly, StreamView::OldImage] {
        set_stream(Some(view));
        let e = refused(create_job(&d, online("o1", 1)).await.unwrap_err());
        assert!(e.contains(view.as_str()) && e.contains("NEW_AND_OLD_IMAGES"), "{e}");
    }
    // NEW_IMAGE: enough for the same key, not for a re-keyed target.
    set_stream(Some(StreamView::NewImage));
    let e = refused(create_job(&d, online("o1", 1)).await.unwrap_err());
    assert!(e.contains("NEW_IMAGE") && e.contains("old image"), "{e}");
    let e =
        refused(create_job(&d, CreateJobRequest { verify: VerifyMode::None, ..online("o1", 1) }).await.unwrap_err());
    assert!(e.contains("drop --verify none"), "{e}");
    let e = refused(
        create_job(&d, CreateJobRequest { enable_stream: true, ..request("o1", 1, OnItemError::Fail) })
            .await
            .unwrap_err(),
    );
    assert!(e.contains("--mode online"), "{e}");
    assert!(d.store.state.lock().unwrap().jobs.is_empty(), "nothing recorded");
    assert_eq!(d.outbox.take().len(), 0);

    // complete: unknown, offline, still copying its snapshot, final.
    let e = refused(complete_job(&d, &name("nope"), false).await.unwrap_err());
    assert!(e.contains("nope"), "{e}");
    create_job(&d, request("off", 1, OnItemError::Fail)).await.unwrap();
    let e = refused(complete_job(&d, &name("off"), false).await.unwrap_err());
    assert!(e.contains("offline job") && e.contains("--mode online"), "{e}");
    drain(&d, 1, false).await;
    set_stream(Some(StreamView::NewAndOldImages));
    create_job(&d, online("snap", 1)).await.unwrap();
    let e = refused(complete_job(&d, &name("snap"), false).await.unwrap_err());
    assert!(
        e.contains("still copying its snapshot") && e.contains("--until-caught-up") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(job(&d, "snap").complete_requested_at, None, "nothing changed");
    cancel_job(&d, &name("snap"), true).await.unwrap();
    let e = refused(complete_job(&d, &name("snap"), false).await.unwrap_err());
    assert!(e.contains("Cancelled, a final state"), "{e}");
}

#[tokio::test]
async fn enable_stream_enables_one_and_the_job_reads_it() {
    let (d, _) = online_world(10, true);
    d.tables.tables.lock().unwrap().get_mut(&TableName::parse("src").unwrap()).unwrap().stream = None;
    let j = create_job(&d, CreateJobRequest { enable_stream: true, ..online("en", 1) }).await.unwrap();
    let spec = j.spec.stream.unwrap();
    assert_eq!(spec.view, StreamView::NewAndOldImages);
    assert_eq!(
        d.tables.tables.lock().unwrap()[&TableName::parse("src").unwrap()].stream.as_ref().unwrap().arn,
        spec.arn
    );
}

#[tokio::test]
async fn complete_force_completes_a_job_still_copying_its_snapshot() {
    let (d, _stream) = online_world(30, true);
    create_job(&d, online("force", 2)).await.unwrap();
    let j = complete_job(&d, &name("force"), true).await.unwrap();
    assert!(j.complete_requested_at.is_some() && j.replay_from.is_none());
    run_until(&d, "force", 10, |_| {}, |j| j.status.is_final()).await;
    assert_eq!(job(&d, "force").status, JobStatus::Completed);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[test]
fn complete_and_mode_are_read_from_every_source() {
    use serde_json::json;
    let event = |detail_type: &str, detail: serde_json::Value| {
        json!({"version": "0", "id": "e1", "detail-type": detail_type, "source": "my.app", "account": "000000000000",
               "time": "2026-12-03T10:00:00Z", "region": "us-east-1", "resources": [], "detail": detail})
    };
    let complete = |force| JobRequest::Complete(CompleteRequest { job_name: "j1".into(), force });
    assert_eq!(JobRequest::parse(json!({"action": "complete", "jobName": "j1"})).unwrap(), complete(false));
    assert_eq!(
        JobRequest::parse(event("tablecopy.CompleteJob", json!({"jobName": "j1", "force": true}))).unwrap(),
        complete(true)
    );
    let body = json!({"jobName": "j1", "sourceTable": "a-src", "targetTable": "a-dst", "mode": "online", "enableStream": true});
    match JobRequest::parse(body).unwrap() {
        JobRequest::Create(c) => assert_eq!((c.mode, c.enable_stream), (Mode::Online, true)),
        other => panic!("{other:?}"),
    }
    let e = JobRequest::parse(json!({"jobName": "j1", "sourceTable": "a-src", "targetTable": "a-dst", "mode": "live"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown variant `live`, expected `offline` or `online`"), "{e}");

    let props = |extra: serde_json::Value| {
        let mut p = json!({"JobName": "j1", "SourceTable": "a-src", "TargetTable": "a-dst"});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        JobProperties::parse(&p)
    };
    assert_eq!(props(json!({"Mode": "online"})).unwrap().mode, Mode::Online);
    assert_eq!(props(json!({})).unwrap().mode, Mode::Offline);
    let e = props(json!({"Mode": "online", "WaitForCompletion": "true"})).unwrap_err().to_string();
    assert!(e.contains("drop WaitForCompletion"), "{e}");
    let e = props(json!({"Mode": "Online"})).unwrap_err().to_string();
    assert!(e.contains("Mode must be offline or online"), "{e}");
}

#[tokio::test]
async fn a_shard_drains_only_after_staying_empty_not_at_its_first_empty_page() {
    let (mut d, stream) = online_world(20, true);
    d.config.tuning.drain_settle = Duration::from_millis(300);
    create_job(&d, online("drain", 1)).await.unwrap();
    run_until(&d, "drain", 12, |_| {}, caught_up).await;
    // New iterators answer empty pages before the records behind them; the last changes come
    // just before `complete`, and the slice that reads them starts from a new iterator.
    stream.log.lock().unwrap().empty_pages = 3;
    stream.log.lock().unwrap().expire_next = 1;
    let mut writer = Writer::new(12, 1_000);
    writer.write(&d, &stream, 20);
    complete_job(&d, &name("drain"), false).await.unwrap();
    run_until(&d, "drain", 12, |_| {}, |j| j.status.is_final()).await;
    let j = job(&d, "drain");
    assert_eq!(j.status, JobStatus::Completed);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    // Same key: had the shard drained at an empty page, the verification would have found the
    // changes behind it missing and repaired them.
    let v = j.verification.unwrap();
    assert!(v.differing_buckets.is_empty(), "drained before its last records: {}", v.summary());
}

#[tokio::test]
async fn a_known_shard_that_ages_out_with_nothing_needed_counts_as_read() {
    let (d, stream) = online_world(20, true);
    create_job(&d, online("gone", 1)).await.unwrap();
    run_until(&d, "gone", 13, |_| {}, caught_up).await;
    stream.split("shard-0", &["shard-1"]);
    reconcile(&d).await.unwrap();
    // The parent is deleted from the stream before its end is read (its stored iterator
    // expires, and a new one cannot be had).
    stream.age_out("shard-0");
    stream.log.lock().unwrap().expire_next = 1;
    stream.put(&d.tables, "src", item(900));
    run_until(&d, "gone", 13, |_| {}, |j| j.replay.as_ref().is_some_and(|r| r.records_applied == 1)).await;
    complete_job(&d, &name("gone"), false).await.unwrap();
    run_until(&d, "gone", 13, |_| {}, |j| j.status.is_final()).await;
    assert_eq!(job(&d, "gone").status, JobStatus::Completed, "{:?}", job(&d, "gone").error);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[test]
fn a_target_keyed_by_part_of_the_source_key_deletes_only_what_still_belongs_to_the_item() {
    use crate::replay::collapse;
    use crate::streams::Record;
    let source = schema(("pk", KeyType::S), Some(("sk", KeyType::S)));
    let target = schema(("pk", KeyType::S), None);
    let it = |sk: &str| -> Item {
        HashMap::from([
            ("pk".to_string(), AttributeValue::S("p".into())),
            ("sk".to_string(), AttributeValue::S(sk.into())),
        ])
    };
    let remove = Record {
        sequence: "1".into(),
        at: chrono::Utc::now(),
        remove: true,
        keys: it("s1"),
        new_image: None,
        old_image: Some(it("s1")),
    };
    let same = target.same_attributes(&source);
    assert!(!same, "(pk) is not (pk, sk)");
    let writes = collapse(&[&remove], &source, &target, same);
    assert_eq!(writes.deletes.len(), 1);
    assert_eq!(writes.deletes[0].1, Some(it("s1")), "deleted only while it is (p, s1)'s copy");
}

#[tokio::test]
async fn a_stream_with_two_readers_already_gets_a_warning() {
    let (d, stream) = online_world(5, true);
    stream.log.lock().unwrap().lambda_readers = vec!["arn:aws:lambda:us-east-1:1:function:indexer".into()];
    let one = create_job(&d, online("r1", 1)).await.unwrap();
    assert!(one.warnings.iter().all(|w| !w.contains("readers")), "{:?}", one.warnings);
    // A second online job on the same source: the Lambda trigger and the first job read it.
    d.tables.add("dst2", schema(("pk", KeyType::S), None), vec![]);
    let two = create_job(&d, CreateJobRequest { target_table: "dst2".into(), ..online("r2", 1) }).await.unwrap();
    let w = two.warnings.iter().find(|w| w.contains("readers")).expect("a readers warning");
    assert!(
        w.contains("already has 2 readers (tablecopy job r1, Lambda arn:aws:lambda:us-east-1:1:function:indexer)"),
        "{w}"
    );
}

/// The hours-ago time `h`.
fn hours_ago(h: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    Some(chrono::Utc::now() - chrono::Duration::hours(h))
}

/// A job caught up with a record in its one shard, paused just after that shard ended in a
/// child (found before the pause, or only when the parent is read to its end after the
/// resume); then, while it is paused, its start moved `started` hours back, the replay's
/// `replay_from` `replay_from` hours back, and the parent's last record and what the job saw
/// of the stream (its last listing, the floors it gave shards) `seen` hours back.
async fn paused_at_a_split(name: &str, found_before: bool, started: i64, replay_from: i64, seen: i64) -> FakeDeps {
    let (d, stream) = online_world(10, true);
    create_job(&d, online(name, 1)).await.unwrap();
    run_until(&d, name, 14, |_| {}, caught_up).await;
    stream.put(&d.tables, "src", item(600));
    run_until(&d, name, 14, |_| {}, |j| caught_up(j) && j.replay.as_ref().unwrap().records_applied > 0).await;
    stream.split("shard-0", &["shard-1"]);
    stream.put(&d.tables, "src", item(601));
    if found_before {
        reconcile(&d).await.unwrap();
    }
    pause_job(&d, &JobName::parse(name).unwrap()).await.unwrap();
    run_until(&d, name, 14, |_| {}, |j| j.status == JobStatus::Paused).await;
    let mut s = d.store.state.lock().unwrap();
    let job = s.jobs.get_mut(&JobName::parse(name).unwrap()).unwrap();
    (job.started_at, job.replay_from) = (hours_ago(started), hours_ago(replay_from));
    job.stream_listed_at = hours_ago(seen);
    for shard in s.cursors.values_mut().filter_map(|c| c.shard.as_mut()) {
        shard.floor = shard.floor.and(hours_ago(seen));
        if shard.id == "shard-0" {
            shard.changed_at = hours_ago(seen);
        }
    }
    drop(s);
    d
}

#[tokio::test]
async fn a_child_first_read_more_than_a_day_after_its_parent_ended_fails_stream_trimmed() {
    // Paused for a day after the parent's last record: the child (found before the pause, or
    // found only at the resume, a day after it began) may have lost its first records.
    for found_before in [true, false] {
        let d = paused_at_a_split("child", found_before, 27, 26, 25).await;
        resume_job(&d, &name("child")).await.unwrap();
        run_until(&d, "child", 14, |_| {}, ended_or_applied(2)).await;
        let j = job(&d, "child");
        assert_eq!(
            (j.status, j.error.map(|e| e.code)),
            (JobStatus::Failed, Some(STREAM_TRIMMED.to_string())),
            "found before the pause: {found_before}"
        );
    }
}

#[tokio::test]
async fn a_child_whose_parent_ended_an_hour_ago_is_read_even_a_day_after_the_job_began() {
    // A snapshot of almost a day: the replay began just before the stream's 24 hours from the
    // job's start ran out, and read the root shard then. Its child is read after that bound,
    // but its records are an hour old at most: all of them are still in the stream.
    let d = paused_at_a_split("long", true, 23, 0, 1).await;
    resume_job(&d, &name("long")).await.unwrap();
    run_until(&d, "long", 15, |_| {}, ended_or_applied(2)).await;
    let j = job(&d, "long");
    assert_eq!(j.status, JobStatus::Running, "{:?}", j.error);
    complete_to_the_end(&d, "long", 15).await;
}

#[tokio::test]
async fn pause_resume_and_cancel_work_while_completing() {
    // Paused while draining, and paused while verifying: each resumes to the same end.
    for (tag, pause_after, label) in [("drain", 0, "Running (completing)"), ("verify", 1, "Running (verifying)")] {
        let (d, stream) = online_world(30, false);
        let mut writer = Writer::new(13, 1_000);
        create_job(&d, online(tag, 2)).await.unwrap();
        run_until(&d, tag, 3, |_| {}, caught_up).await;
        writer.write(&d, &stream, 15);
        complete_job(&d, &name(tag), false).await.unwrap();
        run_until(&d, tag, 3, |_| {}, |j| pause_after == 0 || j.verify_started_at.is_some()).await;
        pause_job(&d, &name(tag)).await.unwrap();
        run_until(&d, tag, 3, |_| {}, |j| j.status == JobStatus::Paused).await;
        let paused = job(&d, tag);
        assert!(paused.complete_requested_at.is_some(), "{tag}: the pause keeps the completion asked");
        assert_eq!(d.outbox.take().len(), 0, "{tag}: a paused job reads nothing");
        resume_job(&d, &name(tag)).await.unwrap();
        assert_eq!(job(&d, tag).status_label(), label, "{tag}: resumed where it paused");
        run_until(&d, tag, 3, |_| {}, |j| j.status.is_final()).await;
        let j = job(&d, tag);
        assert_eq!(j.status, JobStatus::Completed, "{tag}: {:?}", j.error);
        assert!(j.verification.unwrap().passed, "{tag}");
        assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")), "{tag}");
    }
    // Cancelled while completing: it ends Cancelled and nothing is written after.
    let (d, stream) = online_world(30, false);
    let mut writer = Writer::new(14, 1_000);
    create_job(&d, online("cc", 2)).await.unwrap();
    run_until(&d, "cc", 4, |_| {}, caught_up).await;
    writer.write(&d, &stream, 15);
    complete_job(&d, &name("cc"), false).await.unwrap();
    run_until(&d, "cc", 4, |_| {}, rounds(1)).await;
    cancel_job(&d, &name("cc"), false).await.unwrap();
    run_until(&d, "cc", 4, |_| {}, |j| j.status.is_final()).await;
    assert_eq!(job(&d, "cc").status, JobStatus::Cancelled);
    nothing_written_after_the_end(&d, &stream, &mut writer, "cc").await;
}

#[tokio::test]
async fn a_write_region_change_fails_an_online_job_like_an_offline_one() {
    for stage in ["snapshot", "catching up", "completing"] {
        let (d, stream) = online_world(30, false);
        let mut writer = Writer::new(15, 1_000);
        create_job(&d, online("wr", 2)).await.unwrap();
        if stage != "snapshot" {
            run_until(&d, "wr", 5, |_| {}, caught_up).await;
            writer.write(&d, &stream, 10);
        }
        if stage == "completing" {
            complete_job(&d, &name("wr"), false).await.unwrap();
        }
        d.store.set_write_region("us-west-2", chrono::Utc::now()).await.unwrap();
        run_until(&d, "wr", 5, |_| {}, |j| j.status.is_final()).await;
        let j = job(&d, "wr");
        assert_eq!(j.status, JobStatus::Failed, "{stage}");
        let e = j.error.unwrap();
        assert_eq!(e.code, "WriteRegionChanged", "{stage}");
        assert!(e.message.contains("from us-east-1 to us-west-2"), "{stage}: {e:?}");
        nothing_written_after_the_end(&d, &stream, &mut writer, "wr").await;
    }
}

#[tokio::test]
async fn a_child_of_a_shard_quiet_for_a_day_is_read_when_the_job_listed_the_stream_just_before() {
    // A job left catching up for more than a day; its shard had no write after the first hour
    // and ends now (DynamoDB rotates shards, written or not). The job listed the stream just
    // before (the reconciler does, every few minutes), without the child: its records are new.
    let (d, stream) = online_world(10, true);
    create_job(&d, online("idle", 1)).await.unwrap();
    run_until(&d, "idle", 16, |_| {}, caught_up).await;
    stream.put(&d.tables, "src", item(600));
    run_until(&d, "idle", 16, |_| {}, |j| caught_up(j) && j.replay.as_ref().unwrap().records_applied > 0).await;
    // (Paused a moment, so that no slice in flight holds the cursor whose times move back.)
    pause_job(&d, &name("idle")).await.unwrap();
    run_until(&d, "idle", 16, |_| {}, |j| j.status == JobStatus::Paused).await;
    {
        let mut s = d.store.state.lock().unwrap();
        let job = s.jobs.get_mut(&name("idle")).unwrap();
        (job.started_at, job.replay_from, job.stream_listed_at) = (hours_ago(30), hours_ago(29), hours_ago(29));
        let parent = s.cursors.values_mut().find_map(|c| c.shard.as_mut().filter(|s| s.id == "shard-0")).unwrap();
        parent.changed_at = hours_ago(29);
    }
    resume_job(&d, &name("idle")).await.unwrap();
    reconcile(&d).await.unwrap();
    stream.split("shard-0", &["shard-1"]);
    stream.put(&d.tables, "src", item(601));
    run_until(&d, "idle", 16, |_| {}, ended_or_applied(2)).await;
    let j = job(&d, "idle");
    assert_eq!(j.status, JobStatus::Running, "{:?}", j.error);
    complete_to_the_end(&d, "idle", 16).await;
}

#[tokio::test]
async fn a_shard_read_only_at_its_empty_tip_read_from_its_start_a_day_later_fails_stream_trimmed() {
    // A shard read only at its empty tip has no sequence number to go on from: after a pause
    // of a day it is read from its trim horizon, which may have silently lost its first records.
    let (d, stream) = online_world(10, true);
    create_job(&d, online("empty", 1)).await.unwrap();
    run_until(&d, "empty", 17, |_| {}, caught_up).await;
    pause_job(&d, &name("empty")).await.unwrap();
    run_until(&d, "empty", 17, |_| {}, |j| j.status == JobStatus::Paused).await;
    stream.put(&d.tables, "src", item(600));
    stream.put(&d.tables, "src", item(601));
    // The first change aged out while the job was paused.
    stream.trim("shard-0", 1);
    {
        let mut s = d.store.state.lock().unwrap();
        let job = s.jobs.get_mut(&name("empty")).unwrap();
        (job.started_at, job.replay_from, job.stream_listed_at) = (hours_ago(27), hours_ago(26), hours_ago(26));
        let shard = s.cursors.values_mut().find_map(|c| c.shard.as_mut()).unwrap();
        assert_eq!(shard.sequence, None, "read only at its empty tip");
        // Its last read, at its tip, was a day ago.
        shard.iterator_at = hours_ago(25);
    }
    resume_job(&d, &name("empty")).await.unwrap();
    run_until(&d, "empty", 17, |_| {}, ended_or_applied(1)).await;
    let j = job(&d, "empty");
    assert_eq!((j.status, j.error.map(|e| e.code)), (JobStatus::Failed, Some(STREAM_TRIMMED.to_string())));
}

#[tokio::test]
async fn a_stream_that_refuses_one_job_does_not_stop_the_reconciler_for_the_others() {
    let (mut d, stream) = online_world(10, true);
    d.config.tuning.max_running_jobs = 2;
    d.tables.add("dst2", schema(("pk", KeyType::S), None), vec![]);
    create_job(&d, online("refused", 1)).await.unwrap();
    run_until(&d, "refused", 9, |_| {}, caught_up).await;
    // A second job runs beside it; neither job's slices made progress for a day.
    let behind = CreateJobRequest { target_table: "dst2".into(), ..request("behind", 1, OnItemError::Fail) };
    create_job(&d, behind).await.unwrap();
    d.outbox.take();
    for c in d.store.state.lock().unwrap().cursors.values_mut() {
        c.updated_at = Some(chrono::Utc::now() - chrono::Duration::days(1));
    }
    // The first job's stream refuses every call from now on (a policy changed).
    stream.log.lock().unwrap().refuse = Some("AccessDeniedException");
    let e = reconcile(&d).await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"), "{e}");
    assert_eq!(job(&d, "behind").stalled, 1, "the other job's stall is recorded all the same");
    let refused = job(&d, "refused");
    assert_eq!((refused.status, refused.stalled), (JobStatus::Running, 1), "its own stalled shard too");
}

/// An online job of 10 items, caught up, then a backlog of 120 records that the stream
/// returns in one page (a page holds up to 1,000): puts of 60 new items, then an update of
/// each moving its target key, so that an item's records fall in different parts of the page.
async fn backlog_in_one_page(d: &FakeDeps, stream: &FakeStream) {
    create_job(d, online("backlog", 1)).await.unwrap();
    run_until(d, "backlog", 3, |_| {}, caught_up).await;
    for i in 100..160 {
        stream.put(&d.tables, "src", item(i));
    }
    for i in 100..160 {
        let mut moved = item(i);
        moved.insert("customer".into(), AttributeValue::S(format!("moved-{i}")));
        stream.put(&d.tables, "src", moved);
    }
}

/// The one slice result the outbox holds (a copy-chunk handler's message to advance-checkpoint).
fn take_result(d: &FakeDeps) -> String {
    let mut results = d.outbox.take().into_iter().filter(|(k, _)| *k == QueueKind::Checkpoint);
    let (_, result) = results.next().expect("a slice result");
    assert!(results.next().is_none(), "one slice result");
    result
}

/// The target takes two batches (one part of 50 records) from each slice, then throttles it
/// for good, and a slice may write `attempts` times: each slice must keep the part it applied,
/// its cursor after it, so that the next one goes on from there. (Left with its cursor at the
/// page's start, every slice read the same page again and none got further than the first.)
async fn a_page_no_slice_can_apply_whole_is_taken_up_part_by_part(attempts: u32) {
    let (mut d, stream) = online_world(10, false);
    d.config.tuning.slice.max_items = 200;
    d.config.tuning.write_concurrency = 2;
    d.config.tuning.max_write_attempts = attempts;
    backlog_in_one_page(&d, &stream).await;
    let tables = &d.tables;
    let mut rounds = 0;
    run_until(
        &d,
        "backlog",
        3,
        |_| *tables.throttle_after.lock().unwrap() = Some(2),
        |j| {
            rounds += 1;
            ended_or_applied(120)(j) || rounds > 30
        },
    )
    .await;
    *d.tables.throttle_after.lock().unwrap() = None;
    let (live, _) = crate::store::live_job(&d.store, &name("backlog")).await.unwrap().unwrap();
    assert_eq!(live.status, JobStatus::Running, "{:?}", live.error);
    assert_eq!(live.replay.as_ref().map(|r| r.records_applied), Some(120), "{:?}", live.replay);
    // The replay alone (one shard, in order) left the target equal to the source.
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    complete_to_the_end(&d, "backlog", 3).await;
}

#[tokio::test(start_paused = true)]
async fn a_page_no_slice_can_apply_whole_before_its_deadline_is_taken_up_part_by_part() {
    a_page_no_slice_can_apply_whole_is_taken_up_part_by_part(u32::MAX).await;
}

#[tokio::test(start_paused = true)]
async fn a_page_no_slice_can_write_whole_within_its_write_attempts_is_taken_up_part_by_part() {
    a_page_no_slice_can_apply_whole_is_taken_up_part_by_part(Tuning::default().max_write_attempts).await;
}

#[tokio::test]
async fn a_replay_slice_reads_and_applies_no_more_records_than_its_size() {
    let (mut d, stream) = online_world(10, true);
    d.config.tuning.slice.max_items = 50;
    backlog_in_one_page(&d, &stream).await;
    let slice = take_slices(&d).remove(0);
    assert_eq!(decode::<crate::messages::CopyChunk>(&slice).unwrap().limits.max_items, 50);
    handle(&d, QueueKind::CopyChunk, &slice, 1).await.unwrap();
    let result = take_result(&d);
    assert_eq!(decode::<crate::messages::ChunkResult>(&result).unwrap().items_written, 50, "one slice's records");
    assert_eq!(d.tables.items("dst").len(), 10 + 50);
    deliver(&d, QueueKind::Checkpoint, &result).await;
    run_until(&d, "backlog", 3, |_| {}, ended_or_applied(120)).await;
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    complete_to_the_end(&d, "backlog", 3).await;
}

#[tokio::test]
async fn a_pause_while_a_slice_applies_a_page_stops_it_after_the_part_it_is_writing() {
    let (mut d, stream) = online_world(10, true);
    d.config.tuning.slice.max_items = 200;
    d.config.tuning.write_concurrency = 2; // parts of 50 records
    backlog_in_one_page(&d, &stream).await;
    let slice = take_slices(&d).remove(0);
    // The slice's first write waits until the pause has landed.
    let (release, held) = tokio::sync::oneshot::channel();
    *d.tables.hold_next_write.lock().unwrap() = Some(held);
    let pause = async {
        let paused = pause_job(&d, &name("backlog")).await.unwrap();
        assert_eq!(paused.pending, Some(JobStatus::Paused), "the slice is in flight");
        release.send(()).unwrap();
    };
    let (sliced, ()) = tokio::join!(handle(&d, QueueKind::CopyChunk, &slice, 1), pause);
    sliced.unwrap();
    let result = take_result(&d);
    assert_eq!(decode::<crate::messages::ChunkResult>(&result).unwrap().items_written, 50, "the first part only");
    assert_eq!(d.tables.items("dst").len(), 10 + 50);
    deliver(&d, QueueKind::Checkpoint, &result).await;
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "backlog").status, JobStatus::Paused);
    resume_job(&d, &name("backlog")).await.unwrap();
    run_until(&d, "backlog", 3, |_| {}, ended_or_applied(120)).await;
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    complete_to_the_end(&d, "backlog", 3).await;
}
