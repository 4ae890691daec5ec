//! Handler tests with in-memory fakes: fast, no network. The proof that copies work is the
//! LocalStack suite in tests/; these pin down the handlers' logic, including duplicate and
//! out-of-order deliveries.

use std::collections::HashMap;

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use aws_sdk_dynamodb::types::AttributeValue;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::*;
use crate::config::{Resources, Tuning};
use crate::fakes::{FakeOutbox, FakeResponder, FakeStream, FakeTables};
use crate::messages::{decode, encode, SliceLimits, VERSION};
use crate::model::{render_key, Item, JobError, JobName, JobStatus, KeyAttribute, KeySchema, KeyType, OnItemError};
use crate::queue::QueueKind;
use crate::store::memory::MemoryStore;
use crate::store::{CursorStore, JobStore};

type FakeDeps = Deps<MemoryStore, FakeOutbox, FakeTables>;

fn schema(p: (&str, KeyType), s: Option<(&str, KeyType)>) -> KeySchema {
    KeySchema {
        partition: KeyAttribute { name: p.0.into(), kind: p.1 },
        sort: s.map(|(n, k)| KeyAttribute { name: n.into(), kind: k }),
    }
}

fn item(i: u64) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(format!("o-{i:04}"))),
        ("customer".to_string(), AttributeValue::S(format!("c-{}", i % 7))),
        ("order_no".to_string(), AttributeValue::N(i.to_string())),
        ("tags".to_string(), AttributeValue::Ss(vec!["a".into(), format!("t{i}")])),
    ])
}

/// `n` source items keyed on `pk`, an empty target keyed on `customer` + `order_no`; items in
/// `without_order_no` lack the target's sort key.
fn world(n: u64, without_order_no: &[u64]) -> FakeDeps {
    let tables = FakeTables::default();
    let items = (0..n)
        .map(|i| {
            let mut it = item(i);
            if without_order_no.contains(&i) {
                it.remove("order_no");
            }
            it
        })
        .collect();
    tables.add("src", schema(("pk", KeyType::S), None), items);
    tables.add("dst", schema(("customer", KeyType::S), Some(("order_no", KeyType::N))), vec![]);
    let resources = Resources {
        control_table: "control".into(),
        copy_chunk_queue_url: "q1".into(),
        checkpoint_queue_url: "q2".into(),
        finalize_queue_url: "q3".into(),
        requests_queue_url: "q4".into(),
        event_source: "tablecopy".into(),
    };
    let tuning = Tuning { slice: SliceLimits { max_items: 7, max_bytes: 1 << 20 }, ..Tuning::default() };
    let stream = std::sync::Arc::new(FakeStream::on(&tables, "src"));
    Deps {
        store: MemoryStore::default(),
        outbox: FakeOutbox::default(),
        tables,
        responder: std::sync::Arc::new(FakeResponder::default()),
        events: std::sync::Arc::new(crate::events::RecordedEvents::default()),
        streams: stream,
        config: Config { resources, tuning, region: "us-east-1".into(), tables: Default::default() },
    }
}

fn request(name: &str, parallelism: u32, on_item_error: OnItemError) -> CreateJobRequest {
    CreateJobRequest {
        job_name: name.into(),
        source_table: "src".into(),
        target_table: "dst".into(),
        parallelism: Some(parallelism),
        on_item_error,
        ..Default::default()
    }
}

/// Deliver a message for the first time.
async fn deliver(d: &FakeDeps, kind: QueueKind, body: &str) {
    deliver_nth(d, kind, body, 1).await
}

/// Deliver a message that SQS has delivered `attempt - 1` times before.
async fn deliver_nth(d: &FakeDeps, kind: QueueKind, body: &str, attempt: u32) {
    handle(d, kind, body, attempt).await.unwrap();
}

/// Hand a message to its handler, as the runner and Lambda do (with 600 s left).
async fn handle(d: &FakeDeps, kind: QueueKind, body: &str, attempt: u32) -> Result<(), HandlerError> {
    let _ = attempt;
    match kind {
        QueueKind::CopyChunk => {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
            copy_chunk(
                &d.tables,
                d.streams.as_ref(),
                &d.store,
                &d.outbox,
                &d.config.tuning,
                decode(body).unwrap(),
                deadline,
            )
            .await
        }
        QueueKind::Checkpoint => advance_checkpoint(d, decode(body).unwrap()).await,
        QueueKind::Finalize => match decode(body).unwrap() {
            crate::messages::FinalizeQueue::Finalize(f) => finalize(d, f).await,
            crate::messages::FinalizeQueue::Reconcile(_) => reconcile(d).await.map(|_| ()).map_err(Into::into),
        },
        QueueKind::Requests => panic!("no handler sends to the requests queue"),
    }
}

/// Deliver queued messages until none is left. Each round's messages are shuffled (SQS is not
/// FIFO) and, with `duplicate`, every message is delivered twice (at-least-once; the second
/// delivery has receive count 2). A message whose handler fails with a retryable error comes
/// back in a later round, as SQS returns it after its visibility timeout.
async fn drain(d: &FakeDeps, seed: u64, duplicate: bool) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut delivered = 0;
    let mut returned: Vec<(QueueKind, String, u32)> = Vec::new();
    for _round in 0..10_000 {
        let mut batch: Vec<(QueueKind, String, u32)> = d.outbox.take().into_iter().map(|(k, b)| (k, b, 1)).collect();
        if duplicate {
            let again: Vec<_> = batch.iter().map(|(k, b, _)| (*k, b.clone(), 2)).collect();
            batch.extend(again);
        }
        batch.append(&mut returned);
        if batch.is_empty() {
            return delivered;
        }
        batch.shuffle(&mut rng);
        for (kind, body, attempt) in batch {
            match handle(d, kind, &body, attempt).await {
                Ok(()) => delivered += 1,
                Err(e) if e.is_retryable() => returned.push((kind, body, attempt + 1)),
                Err(e) => panic!("{kind:?} failed permanently: {e}"),
            }
        }
    }
    panic!("messages kept coming back: {returned:?}")
}

fn job(d: &FakeDeps, name: &str) -> Job {
    d.store.state.lock().unwrap().jobs[&JobName::parse(name).unwrap()].clone()
}

fn sorted_canonical(items: Vec<Item>) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|i| {
            let mut kv: Vec<String> = i.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            kv.sort();
            kv.join(",")
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_job_copies_every_item_and_completes() {
    let d = world(50, &[]);
    let created = create_job(&d, request("j1", 3, OnItemError::Fail)).await.unwrap();
    assert_eq!(created.status, JobStatus::Running);
    assert_eq!(created.estimated_total, 50);
    assert_eq!(d.outbox.sent.lock().unwrap().len(), 3, "one first slice per segment");
    drain(&d, 1, false).await;

    let j = job(&d, "j1");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    assert_eq!((j.items_copied, j.items_rejected, j.segments_done), (50, 0, 3));
    assert!(j.bytes_copied > 0 && j.duration_ms.is_some() && j.completed_at.is_some());
    let states: Vec<JobStatus> = j.history.iter().map(|h| h.status).collect();
    assert_eq!(states, [JobStatus::Queued, JobStatus::Running, JobStatus::Completed]);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    assert_eq!(d.store.state.lock().unwrap().scheduler.running, [], "the running slot is released");
}

#[tokio::test]
async fn duplicate_and_out_of_order_deliveries_count_every_item_once() {
    for seed in 0..5 {
        let d = world(60, &[]);
        create_job(&d, request("dup", 4, OnItemError::Fail)).await.unwrap();
        drain(&d, seed, true).await;
        let j = job(&d, "dup");
        assert_eq!(j.status, JobStatus::Completed, "seed {seed}: {:?}", j.error);
        assert_eq!(j.items_copied, 60, "seed {seed}");
        assert_eq!(j.segments_done, 4, "seed {seed}");
        let cursors = d.store.cursors(&j.name).await.unwrap();
        assert_eq!(cursors.iter().map(|c| c.items).sum::<u64>(), 60);
        assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    }
}

#[tokio::test]
async fn a_stale_result_changes_nothing_and_sends_nothing() {
    let d = world(30, &[]);
    create_job(&d, request("st", 1, OnItemError::Fail)).await.unwrap();
    // Slice 0 copied and committed; its follow-up (slice 1) copied and committed too.
    let first = d.outbox.take().remove(0).1;
    deliver(&d, QueueKind::CopyChunk, &first).await;
    let result0 = d.outbox.take().remove(0).1;
    deliver(&d, QueueKind::Checkpoint, &result0).await;
    let slice1 = d.outbox.take().remove(0).1;
    deliver(&d, QueueKind::CopyChunk, &slice1).await;
    let result1 = d.outbox.take().remove(0).1;
    deliver(&d, QueueKind::Checkpoint, &result1).await;
    d.outbox.take();
    let before = d.store.state.lock().unwrap().clone();

    // Result 0 arrives again, late: no state changes, no message.
    deliver(&d, QueueKind::Checkpoint, &result0).await;
    let after = d.store.state.lock().unwrap().clone();
    assert_eq!(before.jobs, after.jobs);
    assert_eq!(before.cursors, after.cursors);
    assert_eq!(before.writes, after.writes, "no control-table write");
    assert!(d.outbox.take().is_empty());

    // A result of slice 1 written by another copy (the segment's holder made the commit): its
    // work is not on the cursor, so it is dropped.
    let mut other: crate::messages::ChunkResult = decode(&result1).unwrap();
    other.copy = "another copy".into();
    deliver(&d, QueueKind::Checkpoint, &encode(&other)).await;
    assert!(d.outbox.take().is_empty());

    // Result 1 delivered again (its first receiver may have died between the commit and the
    // send): the cursor's last commit is its own, so state is unchanged and its follow-up is
    // sent again, whatever the receive count says (a redrive from the DLQ starts at 1).
    deliver(&d, QueueKind::Checkpoint, &result1).await;
    let again = d.store.state.lock().unwrap().clone();
    assert_eq!(before.jobs, again.jobs);
    assert_eq!(before.cursors, again.cursors);
    let sent = d.outbox.take();
    assert_eq!(sent.len(), 1);
    let next: crate::messages::CopyChunk = decode(&sent[0].1).unwrap();
    assert_eq!((sent[0].0, next.seq), (QueueKind::CopyChunk, 2));
}

#[tokio::test]
async fn items_that_do_not_fit_the_target_key_fail_the_job_by_default() {
    let d = world(40, &[]);
    create_job(&d, request("rej", 2, OnItemError::Fail)).await.unwrap();
    // Written after create's sample of the source.
    strip_order_no(&d, &[3, 17, 25]);
    drain(&d, 7, false).await;
    let j = job(&d, "rej");
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, "ItemsRejected");
    assert!(e.message.contains("missing key attribute \"order_no\""), "{}", e.message);
    assert!(e.message.contains("o-00"), "names sample keys: {}", e.message);
    assert!(e.message.contains("--on-item-error skip"), "{}", e.message);
    assert!(j.items_rejected >= 1);
    assert_eq!(d.store.state.lock().unwrap().scheduler.running, []);
}

#[tokio::test]
async fn skipped_items_are_reported_and_the_rest_copied() {
    let d = world(40, &[3, 17, 25]);
    create_job(&d, request("skip", 2, OnItemError::Skip)).await.unwrap();
    drain(&d, 7, true).await;
    let j = job(&d, "skip");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    assert_eq!((j.items_copied, j.items_rejected), (37, 3));
    let mut keys: Vec<&str> = j.rejected_samples.iter().map(|r| r.key.as_str()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, [r#"{"pk":{"S":"o-0003"}}"#, r#"{"pk":{"S":"o-0017"}}"#, r#"{"pk":{"S":"o-0025"}}"#]);
    assert_eq!(d.tables.items("dst").len(), 37);
}

#[tokio::test]
async fn invalid_requests_get_clear_errors_and_leave_nothing_behind() {
    let d = world(5, &[]);
    create_job(&d, request("taken", 1, OnItemError::Fail)).await.unwrap();
    d.outbox.take();
    let before = d.store.state.lock().unwrap().clone();
    let cases: Vec<(CreateJobRequest, &str)> = vec![
        (CreateJobRequest { target_table: "src".into(), ..request("same", 1, OnItemError::Fail) }, "same table"),
        (request("bad name!", 1, OnItemError::Fail), "invalid job name"),
        (
            CreateJobRequest { source_table: "nope".into(), ..request("j", 1, OnItemError::Fail) },
            "source table \"nope\"",
        ),
        (
            CreateJobRequest { target_table: "missing".into(), ..request("j", 1, OnItemError::Fail) },
            "Owner resource does not exist: the target table \"missing\"",
        ),
        (CreateJobRequest { target_table: "a".into(), ..request("j", 1, OnItemError::Fail) }, "invalid table name"),
        (request("j", 0, OnItemError::Fail), "parallelism 0 is out of range"),
        (request("j", 1001, OnItemError::Fail), "parallelism 1001 is out of range"),
        (request("taken", 1, OnItemError::Fail), "a job named \"taken\" already exists"),
    ];
    for (req, expected) in cases {
        let err = create_job(&d, req).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        let after = d.store.state.lock().unwrap().clone();
        assert_eq!(before.jobs, after.jobs);
        assert_eq!(before.cursors, after.cursors);
        assert!(d.outbox.take().is_empty());
    }
}

#[tokio::test]
async fn a_second_job_waits_queued_while_one_runs() {
    let d = world(5, &[]);
    create_job(&d, request("first", 2, OnItemError::Fail)).await.unwrap();
    d.outbox.take();
    let second = create_job(&d, request("second", 2, OnItemError::Fail)).await.unwrap();
    assert_eq!(second.status, JobStatus::Queued);
    assert_eq!(second.started_at, None);
    assert!(d.outbox.take().is_empty(), "a queued job sends nothing");
    assert_eq!(d.store.cursors(&second.name).await.unwrap().len(), 2, "its cursors exist");
    let sched = d.store.state.lock().unwrap().scheduler.clone();
    assert_eq!(sched.running.iter().map(|e| e.job.as_str()).collect::<Vec<_>>(), ["first"]);
    assert_eq!(sched.queued.iter().map(|e| e.job.as_str()).collect::<Vec<_>>(), ["second"]);
}

#[tokio::test]
async fn unprocessed_items_are_retried_until_written() {
    let d = world(60, &[]);
    *d.tables.unprocessed_calls.lock().unwrap() = 6;
    create_job(&d, request("thr", 2, OnItemError::Fail)).await.unwrap();
    drain(&d, 3, false).await;
    assert_eq!(job(&d, "thr").status, JobStatus::Completed);
    assert_eq!(*d.tables.unprocessed_calls.lock().unwrap(), 0, "the fake did leave items unprocessed");
    assert_eq!(d.tables.items("dst").len(), 60);
}

#[tokio::test]
async fn a_fatal_slice_error_fails_the_job_with_its_reason() {
    let d = world(10, &[]);
    create_job(&d, request("fatal", 1, OnItemError::Fail)).await.unwrap();
    d.outbox.take();
    let result = crate::messages::ChunkResult {
        v: VERSION,
        copy: "c1".into(),
        job: JobName::parse("fatal").unwrap(),
        segment: 0,
        seq: 0,
        items_written: 0,
        bytes_written: 0,
        rejected_count: 0,
        rejected_samples: vec![],
        next_key: None,
        fatal: Some(JobError { code: "ResourceNotFoundException".into(), message: "table dst was deleted".into() }),
        partial: false,
        throttles: 0,
        pace: None,
        started_at: None,
        pass: Default::default(),
        items_read: 0,
        expired: 0,
        check: None,
        shard: None,
    };
    deliver(&d, QueueKind::Checkpoint, &encode(&result)).await;
    drain(&d, 0, true).await;
    let j = job(&d, "fatal");
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.unwrap().code, "ResourceNotFoundException");
    assert_eq!(j.items_copied, 0, "nothing was committed");
}

#[tokio::test]
async fn finalize_before_the_end_or_after_it_changes_nothing() {
    let d = world(10, &[]);
    create_job(&d, request("fin", 2, OnItemError::Fail)).await.unwrap();
    let early = encode(&crate::messages::Finalize { v: VERSION, job: JobName::parse("fin").unwrap(), failure: None });
    deliver(&d, QueueKind::Finalize, &early).await;
    assert_eq!(job(&d, "fin").status, JobStatus::Running);
    drain(&d, 0, false).await;
    let done = job(&d, "fin");
    assert_eq!(done.status, JobStatus::Completed);
    deliver(&d, QueueKind::Finalize, &early).await;
    assert_eq!(job(&d, "fin"), done);
}

#[tokio::test]
async fn a_job_that_cannot_send_its_first_slices_says_so_and_resume_launches_it() {
    let d = world(10, &[]);
    d.outbox.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = create_job(&d, request("nostart", 2, OnItemError::Fail)).await.unwrap_err().to_string();
    assert!(err.contains("could not be started yet") && err.contains("tablecopy resume"), "{err}");
    let j = job(&d, "nostart");
    assert_eq!(j.status, JobStatus::Running);
    assert!(d.store.cursors(&j.name).await.unwrap().iter().all(|c| c.parked), "nothing in flight");

    d.outbox.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    let resumed = resume_job(&d, &j.name).await.unwrap();
    assert_eq!(resumed.status, JobStatus::Running);
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "nostart").status, JobStatus::Completed);
    assert_eq!(d.tables.items("dst").len(), 10);
}

#[tokio::test]
async fn a_batch_reports_only_its_failed_records() {
    let d = world(10, &[]);
    let good =
        encode(&crate::messages::Finalize { v: VERSION, job: JobName::parse("unknown").unwrap(), failure: None });
    let records = [("m1", good.as_str()), ("m2", "garbage"), ("m3", r#"{"v":9}"#)]
        .into_iter()
        .map(|(id, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(id.into());
            m.body = Some(body.into());
            m
        })
        .collect();
    let mut event = SqsEvent::default();
    event.records = records;
    let response = finalize_batch(&d, event).await.unwrap();
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    // m1 names an unknown job: permanent, acknowledged. m2 and m3 cannot be read: to the DLQ.
    assert_eq!(failed, ["m2", "m3"]);
}

fn name(s: &str) -> JobName {
    JobName::parse(s).unwrap()
}

/// Deliver only the messages queued now (one hop), not what they send.
async fn step(d: &FakeDeps) -> Vec<QueueKind> {
    let batch = d.outbox.take();
    for (kind, body) in &batch {
        deliver(d, *kind, body).await;
    }
    batch.into_iter().map(|(k, _)| k).collect()
}

#[tokio::test]
async fn pause_waits_for_in_flight_slices_and_resume_copies_the_rest_once() {
    let d = world(100, &[]);
    create_job(&d, request("p", 3, OnItemError::Fail)).await.unwrap();
    step(&d).await; // three slices copied; their results are in flight
    let pausing = pause_job(&d, &name("p")).await.unwrap();
    assert_eq!((pausing.status, pausing.pending), (JobStatus::Running, Some(JobStatus::Paused)));
    assert_eq!(pausing.status_label(), "Running (pausing)");

    let kinds = step(&d).await; // the three results are checkpointed: nothing follows them
    assert_eq!(kinds, [QueueKind::Checkpoint; 3]);
    assert!(d.outbox.take().is_empty(), "no slice is issued after a pause");
    let paused = job(&d, "p");
    assert_eq!((paused.status, paused.pending), (JobStatus::Paused, None));
    assert_eq!(paused.items_copied, 21, "three slices of 7");
    assert_eq!(d.tables.items("dst").len() as u64, paused.items_copied, "the counters tell what is in the target");
    assert!(d.store.cursors(&paused.name).await.unwrap().iter().all(|c| !c.in_flight()));

    let resumed = resume_job(&d, &name("p")).await.unwrap();
    assert_eq!(resumed.status, JobStatus::Running);
    drain(&d, 4, true).await;
    let done = job(&d, "p");
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.items_copied, 100);
    let states: Vec<JobStatus> = done.history.iter().map(|h| h.status).collect();
    use JobStatus::*;
    assert_eq!(states, [Queued, Running, Paused, Running, Completed]);
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn resume_while_pausing_withdraws_the_pause_and_the_parked_segments_go_on() {
    let d = world(90, &[]);
    create_job(&d, request("w", 3, OnItemError::Fail)).await.unwrap();
    step(&d).await; // three slices copied
    pause_job(&d, &name("w")).await.unwrap();
    let batch = d.outbox.take();
    deliver(&d, batch[0].0, &batch[0].1).await; // one segment parks; two are still in flight
    assert_eq!(d.store.cursors(&name("w")).await.unwrap().iter().filter(|c| c.parked).count(), 1);
    let resumed = resume_job(&d, &name("w")).await.unwrap();
    assert_eq!((resumed.status, resumed.pending), (JobStatus::Running, None));
    for (kind, body) in &batch[1..] {
        deliver(&d, *kind, body).await;
    }
    drain(&d, 2, false).await;
    let j = job(&d, "w");
    assert_eq!((j.status, j.items_copied), (JobStatus::Completed, 90));
    use JobStatus::*;
    assert_eq!(states(&j), [Queued, Running, Completed], "the pause never took effect");
}

fn states(j: &Job) -> Vec<JobStatus> {
    j.history.iter().map(|h| h.status).collect()
}

#[tokio::test]
async fn a_pause_that_lands_after_a_commit_stops_the_next_slice_before_it_writes() {
    let d = world(60, &[]);
    create_job(&d, request("late", 1, OnItemError::Fail)).await.unwrap();
    step(&d).await; // slice 0 copied
    step(&d).await; // slice 0 committed (continued); slice 1 sent
    pause_job(&d, &name("late")).await.unwrap();
    assert_eq!(job(&d, "late").status, JobStatus::Running, "slice 1 is in flight");
    step(&d).await; // slice 1 finds its segment stopping: it writes nothing and reports so
    assert_eq!(d.tables.items("dst").len(), 7, "slice 1 wrote nothing");
    step(&d).await; // slice 1's empty result parks the segment, and the job settles
    assert!(d.outbox.take().is_empty());
    let j = job(&d, "late");
    assert_eq!((j.status, j.items_copied), (JobStatus::Paused, 7));
    let c = d.store.cursors(&j.name).await.unwrap().remove(0);
    assert_eq!((c.seq, c.items, c.parked, c.last_key.is_some()), (2, 7, true, true), "resumes after slice 0's items");
    resume_job(&d, &name("late")).await.unwrap();
    drain(&d, 0, true).await;
    let j = job(&d, "late");
    assert_eq!((j.status, j.items_copied), (JobStatus::Completed, 60));
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn cancel_keeps_what_was_copied_and_starts_the_next_queued_job() {
    let d = world(80, &[]);
    create_job(&d, request("c1", 2, OnItemError::Fail)).await.unwrap();
    let queued = create_job(&d, CreateJobRequest { target_table: "dst".into(), ..request("c2", 2, OnItemError::Fail) })
        .await
        .unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    step(&d).await;
    let cancelling = cancel_job(&d, &name("c1"), false).await.unwrap();
    assert_eq!(cancelling.status_label(), "Running (cancelling)");
    assert_eq!(job(&d, "c2").status, JobStatus::Queued, "the slot is held until nothing is in flight");
    step(&d).await; // c1's results park it; it is cancelled and c2 starts
    let c1 = job(&d, "c1");
    assert_eq!((c1.status, c1.items_copied), (JobStatus::Cancelled, 14));
    assert_eq!(job(&d, "c2").status, JobStatus::Running);
    drain(&d, 1, false).await;
    assert_eq!(job(&d, "c1"), c1, "a cancelled job never changes");
    assert_eq!(job(&d, "c2").status, JobStatus::Completed);
    let sched = d.store.state.lock().unwrap().scheduler.clone();
    assert!(sched.running.is_empty() && sched.queued.is_empty(), "{sched:?}");
    assert_eq!(sched.version, 6, "two inserts, a start, the cancel, a start, the completion");
}

#[tokio::test]
async fn queued_and_paused_jobs_cancel_at_once() {
    let d = world(30, &[]);
    create_job(&d, request("a", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("b", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("c", 1, OnItemError::Fail)).await.unwrap();
    assert_eq!(cancel_job(&d, &name("b"), false).await.unwrap().status, JobStatus::Cancelled);
    pause_job(&d, &name("a")).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "a").status, JobStatus::Paused);
    assert_eq!(job(&d, "c").status, JobStatus::Queued, "a paused job keeps its slot");
    assert_eq!(cancel_job(&d, &name("a"), false).await.unwrap().status, JobStatus::Cancelled);
    assert_eq!(job(&d, "c").status, JobStatus::Running, "the freed slot goes to the next queued job");
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "c").status, JobStatus::Completed);
}

#[tokio::test]
async fn requests_in_the_wrong_state_are_refused_with_the_state_and_change_nothing() {
    let d = world(30, &[]);
    create_job(&d, request("run", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("wait", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("gone", 1, OnItemError::Fail)).await.unwrap();
    cancel_job(&d, &name("gone"), false).await.unwrap();
    d.outbox.take();
    let before = d.store.state.lock().unwrap().clone();
    let cases: Vec<(JobRequest, &str)> = vec![
        (
            JobRequest::Resume(JobRef { job_name: "run".into() }),
            "cannot resume job \"run\": it is Running. Only a Paused job can be resumed",
        ),
        (
            JobRequest::Pause(JobRef { job_name: "wait".into() }),
            "cannot pause job \"wait\": it is Queued. Only a Running job can be paused",
        ),
        (
            JobRequest::Resume(JobRef { job_name: "wait".into() }),
            "it is Queued (place 1 in the queue) and starts by itself",
        ),
        (
            JobRequest::Cancel(CancelRequest { job_name: "gone".into(), force: false }),
            "cannot cancel job \"gone\": it is already Cancelled, a final state",
        ),
        (
            JobRequest::Pause(JobRef { job_name: "gone".into() }),
            "cannot pause job \"gone\": it is Cancelled, a final state that never changes",
        ),
        (JobRequest::Pause(JobRef { job_name: "nope".into() }), "job \"nope\" does not exist; `tablecopy list`"),
        (JobRequest::Cancel(CancelRequest { job_name: "bad name".into(), force: false }), "invalid job name"),
    ];
    for (req, expected) in cases {
        let err = handle_request(&d, req.clone()).await.unwrap_err().to_string();
        assert!(err.contains(expected), "{req:?}: {err:?} should contain {expected:?}");
        let after = d.store.state.lock().unwrap().clone();
        assert_eq!((&before.jobs, &before.cursors, &before.scheduler), (&after.jobs, &after.cursors, &after.scheduler));
        assert!(d.outbox.take().is_empty());
    }
    pause_job(&d, &name("run")).await.unwrap();
    let err = pause_job(&d, &name("run")).await.unwrap_err().to_string();
    assert!(err.contains("it is Running and already pausing"), "{err}");
    cancel_job(&d, &name("run"), false).await.unwrap();
    let err = cancel_job(&d, &name("run"), false).await.unwrap_err().to_string();
    assert!(err.contains("already being cancelled"), "{err}");
    let err = resume_job(&d, &name("run")).await.unwrap_err().to_string();
    assert!(err.contains("cannot resume job \"run\": it is Running and already being cancelled"), "{err}");
}

#[tokio::test]
async fn a_write_region_change_fails_every_incomplete_job_and_new_jobs_run() {
    let d = world(50, &[]);
    for j in ["r1", "r2", "r3"] {
        create_job(&d, request(j, 2, OnItemError::Fail)).await.unwrap();
    }
    step(&d).await; // r1's first slices copied
    d.store.set_write_region("us-west-2", chrono::Utc::now()).await.unwrap();
    drain(&d, 0, false).await; // r1's checkpoint finds the change
    for j in ["r1", "r2", "r3"] {
        let failed = job(&d, j);
        assert_eq!(failed.status, JobStatus::Failed, "{j}");
        let e = failed.error.unwrap();
        assert_eq!(e.code, "WriteRegionChanged");
        assert!(e.message.contains("from us-east-1 to us-west-2") && e.message.contains("Re-create the job"), "{e:?}");
    }
    assert_eq!(job(&d, "r1").items_copied, 14, "what was copied is counted");
    let fresh = create_job(&d, request("r4", 2, OnItemError::Fail)).await.unwrap();
    assert_eq!((fresh.status, fresh.write_region.as_str()), (JobStatus::Running, "us-west-2"));
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "r4").status, JobStatus::Completed);
}

#[tokio::test]
async fn queued_jobs_run_one_after_another_in_creation_order() {
    let d = world(40, &[]);
    let names = ["q1", "q2", "q3", "q4"];
    for j in names {
        create_job(&d, request(j, 2, OnItemError::Fail)).await.unwrap();
    }
    let sched = d.store.state.lock().unwrap().scheduler.clone();
    assert_eq!(sched.running.len(), 1);
    assert_eq!(sched.queued.iter().map(|e| e.job.as_str()).collect::<Vec<_>>(), ["q2", "q3", "q4"]);
    let created: Vec<_> = names.iter().map(|j| job(&d, j).created_at).collect();
    assert!(created.windows(2).all(|w| w[0] < w[1]), "creation times follow the queue: {created:?}");
    drain(&d, 9, true).await;
    let jobs: Vec<Job> = names.iter().map(|j| job(&d, j)).collect();
    for pair in jobs.windows(2) {
        assert_eq!(pair[1].status, JobStatus::Completed);
        assert!(
            pair[0].completed_at.unwrap() <= pair[1].started_at.unwrap(),
            "{} overlaps {}",
            pair[0].name,
            pair[1].name
        );
    }
}

#[test]
fn requests_parse_from_invoke_payloads_and_eventbridge_events() {
    use serde_json::json;
    let create = JobRequest::Create(CreateJobRequest {
        job_name: "j1".into(),
        source_table: "orders".into(),
        target_table: "orders-v2".into(),
        parallelism: Some(8),
        on_item_error: OnItemError::Skip,
        ..Default::default()
    });
    let body = json!({"jobName": "j1", "sourceTable": "orders", "targetTable": "orders-v2", "parallelism": 8, "onItemError": "skip"});
    assert_eq!(JobRequest::parse(body.clone()).unwrap(), create);
    let mut with_action = body.clone();
    with_action["action"] = json!("create");
    assert_eq!(JobRequest::parse(with_action).unwrap(), create);
    let event = |detail_type: &str, detail: serde_json::Value| {
        json!({"version": "0", "id": "e1", "detail-type": detail_type, "source": "my.app", "account": "000000000000",
               "time": "2026-11-23T10:00:00Z", "region": "us-east-1", "resources": [], "detail": detail})
    };
    assert_eq!(JobRequest::parse(event("tablecopy.CreateJob", body)).unwrap(), create);
    let j = || JobRef { job_name: "j1".into() };
    assert_eq!(
        JobRequest::parse(event("tablecopy.PauseJob", json!({"jobName": "j1"}))).unwrap(),
        JobRequest::Pause(j())
    );
    assert_eq!(
        JobRequest::parse(event("tablecopy.ResumeJob", json!({"jobName": "j1"}))).unwrap(),
        JobRequest::Resume(j())
    );
    let cancel = |force| JobRequest::Cancel(CancelRequest { job_name: "j1".into(), force });
    assert_eq!(JobRequest::parse(event("tablecopy.CancelJob", json!({"jobName": "j1"}))).unwrap(), cancel(false));
    assert_eq!(JobRequest::parse(json!({"action": "cancel", "jobName": "j1"})).unwrap(), cancel(false));
    assert_eq!(
        JobRequest::parse(event("tablecopy.CancelJob", json!({"jobName": "j1", "force": true}))).unwrap(),
        cancel(true)
    );

    let errors = [
        (
            event("tablecopy.DeleteJob", json!({})),
            "unknown detail-type \"tablecopy.DeleteJob\": use one of tablecopy.CreateJob",
        ),
        (
            json!({"action": "stop", "jobName": "j1"}),
            "unknown action \"stop\": use one of create, pause, resume, cancel",
        ),
        (
            json!({"jobName": "j1", "sourceTabel": "a", "targetTable": "b"}),
            "invalid create request: unknown field `sourceTabel`",
        ),
        (event("tablecopy.PauseJob", json!({})), "invalid pause request: missing field `jobName`"),
        (json!({"action": 3}), "\"action\" must be a string"),
    ];
    for (payload, expected) in errors {
        let err = JobRequest::parse(payload).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
}

#[test]
fn region_names_are_checked() {
    for ok in ["us-west-2", "eu-central-1", "ap-southeast-1", "us-gov-west-1"] {
        assert_eq!(parse_region(ok).unwrap(), ok);
    }
    for bad in ["", "us", "US-WEST-2", "us-west", "us-west-2a", "mars-1"] {
        assert!(parse_region(bad).unwrap_err().to_string().contains("is not an AWS region name"), "{bad}");
    }
}

#[tokio::test]
async fn with_two_running_slots_two_jobs_run_and_the_third_waits() {
    let mut d = world(30, &[]);
    d.config.tuning.max_running_jobs = 2;
    let statuses: Vec<JobStatus> = {
        let mut v = vec![];
        for j in ["m1", "m2", "m3"] {
            v.push(create_job(&d, request(j, 1, OnItemError::Fail)).await.unwrap().status);
        }
        v
    };
    assert_eq!(statuses, [JobStatus::Running, JobStatus::Running, JobStatus::Queued]);
    pause_job(&d, &name("m1")).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "m1").status, JobStatus::Paused);
    assert_eq!(job(&d, "m2").status, JobStatus::Completed);
    let m3 = job(&d, "m3");
    assert_eq!(m3.status, JobStatus::Completed, "m2's slot went to m3");
    assert!(m3.started_at.unwrap() >= job(&d, "m2").completed_at.unwrap());
}

// ---------------------------------------------------------------- CloudFormation custom resources

/// A world whose CloudFormation answers can be read.
fn cfn_world(n: u64, without_order_no: &[u64]) -> (FakeDeps, std::sync::Arc<FakeResponder>) {
    let mut d = world(n, without_order_no);
    let responder = std::sync::Arc::new(FakeResponder::default());
    d.responder = responder.clone();
    (d, responder)
}

/// A CloudFormation request document as CloudFormation sends it (numbers and booleans as strings).
fn cfn_request(kind: &str, request_id: &str, props: serde_json::Value, physical: Option<&str>) -> serde_json::Value {
    let mut props = props;
    props["ServiceToken"] = "arn:aws:lambda:us-east-1:000000000000:function:create-job".into();
    let mut r = serde_json::json!({
        "RequestType": kind,
        "ServiceToken": props["ServiceToken"],
        "ResponseURL": format!("https://cfn.example/{request_id}"),
        "StackId": "arn:aws:cloudformation:us-east-1:000000000000:stack/app/1",
        "RequestId": request_id,
        "ResourceType": RESOURCE_TYPE,
        "LogicalResourceId": "OrdersCopy",
        "ResourceProperties": props,
    });
    if let Some(p) = physical {
        r["PhysicalResourceId"] = p.into();
    }
    if kind == "Update" {
        r["OldResourceProperties"] = serde_json::json!({});
    }
    r
}

fn props(job: &str, wait: bool) -> serde_json::Value {
    serde_json::json!({"JobName": job, "SourceTable": "src", "TargetTable": "dst", "Parallelism": "2",
        "WaitForCompletion": if wait { "true" } else { "false" }})
}

/// The answers sent so far: (request id, status, physical id, reason, data).
type Answer = (String, String, String, String, std::collections::HashMap<String, String>);
fn answers(r: &FakeResponder) -> Vec<Answer> {
    r.take()
        .into_iter()
        .map(|(url, a)| {
            assert_eq!(url, format!("https://cfn.example/{}", a.request_id), "answered at the request's own URL");
            let status = serde_json::to_value(&a.status).unwrap().as_str().unwrap().to_string();
            (a.request_id, status, a.physical_resource_id, a.reason.unwrap_or_default(), a.data)
        })
        .collect()
}

#[tokio::test]
async fn a_custom_resource_create_starts_a_job_and_answers_at_once() {
    let (d, r) = cfn_world(30, &[]);
    let out = create_job_entry(&d, cfn_request("Create", "r1", props("cr1", false), None)).await.unwrap();
    assert_eq!(out, serde_json::Value::Null);
    let a = answers(&r);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].1.as_str(), a[0].2.as_str()), ("SUCCESS", "cr1"));
    assert_eq!(a[0].4["JobName"], "cr1");
    assert_eq!(a[0].4["Status"], "Running");
    let origin = job(&d, "cr1").origin.unwrap();
    assert_eq!((origin.logical_resource_id.as_str(), origin.response_url), ("OrdersCopy", None));
    // A repeated delivery of the same request makes no second job and answers the same way.
    create_job_entry(&d, cfn_request("Create", "r1", props("cr1", false), None)).await.unwrap();
    assert_eq!(answers(&r)[0].1, "SUCCESS");
    drain(&d, 3, false).await;
    assert_eq!(job(&d, "cr1").status, JobStatus::Completed);
    assert!(r.take().is_empty(), "a resource that does not wait gets no second answer");
}

#[tokio::test]
async fn wait_for_completion_answers_once_when_the_job_completes() {
    let (d, r) = cfn_world(40, &[]);
    create_job_entry(&d, cfn_request("Create", "w1", props("wait1", true), None)).await.unwrap();
    assert!(r.take().is_empty(), "no answer while the job runs");
    // Every message delivered twice: still exactly one answer.
    drain(&d, 5, true).await;
    let a = answers(&r);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].0.as_str(), a[0].1.as_str(), a[0].2.as_str()), ("w1", "SUCCESS", "wait1"));
    assert_eq!(a[0].4["ItemsCopied"], "40");
    assert!(job(&d, "wait1").origin.unwrap().answered);
    // A late finalize changes nothing and answers nothing.
    deliver(
        &d,
        QueueKind::Finalize,
        &encode(&crate::messages::Finalize { v: VERSION, job: name("wait1"), failure: None }),
    )
    .await;
    assert!(r.take().is_empty());
}

#[tokio::test]
async fn wait_for_completion_answers_failed_when_the_job_fails_or_is_cancelled() {
    let (d, r) = cfn_world(40, &[]);
    create_job_entry(&d, cfn_request("Create", "f1", props("fails", true), None)).await.unwrap();
    strip_order_no(&d, &[3, 17]);
    drain(&d, 9, false).await;
    let a = answers(&r);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].1, "FAILED");
    assert!(a[0].3.contains("ItemsRejected") && a[0].3.contains("--on-item-error skip"), "{}", a[0].3);

    // A waiting job cancelled by the stack's Delete (e.g. a rollback): the Delete succeeds at
    // once and the waiting Create gets FAILED.
    let (d, r) = cfn_world(40, &[]);
    create_job_entry(&d, cfn_request("Create", "c1", props("cancelled", true), None)).await.unwrap();
    step(&d).await;
    create_job_entry(&d, cfn_request("Delete", "c2", props("cancelled", true), Some("cancelled"))).await.unwrap();
    drain(&d, 2, false).await;
    assert_eq!(job(&d, "cancelled").status, JobStatus::Cancelled);
    let mut a = answers(&r);
    a.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!((a[0].0.as_str(), a[0].1.as_str()), ("c1", "FAILED"));
    assert!(a[0].3.contains("Cancelled"), "{}", a[0].3);
    assert_eq!((a[1].0.as_str(), a[1].1.as_str(), a[1].2.as_str()), ("c2", "SUCCESS", "cancelled"));
}

#[tokio::test]
async fn bad_custom_resource_requests_answer_failed_and_change_nothing() {
    let (d, r) = cfn_world(10, &[]);
    let before = d.store.state.lock().unwrap().jobs.len();
    let cases = [
        (serde_json::json!({"JobName": "x1", "SourceTable": "src"}), "TargetTable"),
        (
            serde_json::json!({"JobName": "x2", "SourceTable": "src", "TargetTable": "dst", "Workers": "3"}),
            "unknown property \"Workers\"",
        ),
        (
            serde_json::json!({"JobName": "x3", "SourceTable": "src", "TargetTable": "dst", "Parallelism": "many"}),
            "Parallelism",
        ),
        (serde_json::json!({"JobName": "x4", "SourceTable": "src", "TargetTable": "src"}), "same table"),
        (serde_json::json!({"JobName": "x5", "SourceTable": "src", "TargetTable": "missing"}), "was not found"),
    ];
    for (i, (p, why)) in cases.into_iter().enumerate() {
        create_job_entry(&d, cfn_request("Create", &format!("b{i}"), p, None)).await.unwrap();
        let a = answers(&r);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1, "FAILED");
        assert!(a[0].3.contains(why), "{} should mention {why}", a[0].3);
        assert!(a[0].2.starts_with("not-created:"), "{}", a[0].2);
        // The rollback's Delete of that physical ID succeeds and touches nothing.
        create_job_entry(&d, cfn_request("Delete", &format!("d{i}"), serde_json::json!({}), Some(&a[0].2)))
            .await
            .unwrap();
        assert_eq!(answers(&r)[0].1, "SUCCESS");
    }
    assert_eq!(d.store.state.lock().unwrap().jobs.len(), before);
    assert!(d.outbox.take().is_empty());
    // A job of the same name made by someone else is refused, and the Delete leaves it alone.
    create_job(&d, request("taken", 1, OnItemError::Fail)).await.unwrap();
    create_job_entry(&d, cfn_request("Create", "t1", props("taken", false), None)).await.unwrap();
    let a = answers(&r);
    assert!(a[0].1 == "FAILED" && a[0].3.contains("already exists"), "{a:?}");
    create_job_entry(&d, cfn_request("Delete", "t2", serde_json::json!({}), Some("taken"))).await.unwrap();
    assert_eq!(answers(&r)[0].1, "SUCCESS");
    assert_eq!(job(&d, "taken").status, JobStatus::Running, "not this resource's job");
}

#[tokio::test]
async fn updates_start_a_new_job_only_when_the_copy_changes() {
    let (d, r) = cfn_world(20, &[]);
    create_job_entry(&d, cfn_request("Create", "u0", props("orders", false), None)).await.unwrap();
    answers(&r);
    drain(&d, 1, false).await;
    // Only WaitForCompletion changed: the same job.
    create_job_entry(&d, cfn_request("Update", "u1", props("orders", true), Some("orders"))).await.unwrap();
    let a = answers(&r);
    assert_eq!((a[0].1.as_str(), a[0].2.as_str(), a[0].4["Status"].as_str()), ("SUCCESS", "orders", "Completed"));
    assert_eq!(d.store.state.lock().unwrap().jobs.len(), 1);
    // Another parallelism under the same name: a new job (names are never reused).
    let mut p = props("orders", false);
    p["Parallelism"] = "3".into();
    create_job_entry(&d, cfn_request("Update", "U2-abcdefgh-1", p, Some("orders"))).await.unwrap();
    let a = answers(&r);
    assert_eq!((a[0].1.as_str(), a[0].2.as_str()), ("SUCCESS", "orders-u2abcdef"));
    assert_eq!(job(&d, "orders-u2abcdef").spec.parallelism, 3);
    // A new JobName: a job of that name.
    create_job_entry(&d, cfn_request("Update", "u3", props("orders-v3", false), Some("orders-u2abcdef")))
        .await
        .unwrap();
    assert_eq!(answers(&r)[0].2, "orders-v3");
    // The rollback of that update goes back to the job it had: no new job.
    let mut p = props("orders", false);
    p["Parallelism"] = "3".into();
    p["JobName"] = "orders-u2abcdef".into();
    create_job_entry(&d, cfn_request("Update", "u4", p, Some("orders-v3"))).await.unwrap();
    let a = answers(&r);
    assert_eq!((a[0].1.as_str(), a[0].2.as_str()), ("SUCCESS", "orders-u2abcdef"), "{a:?}");
    assert_eq!(d.store.state.lock().unwrap().jobs.len(), 3);
}

#[tokio::test]
async fn the_requests_queue_carries_out_events_and_drops_refused_ones() {
    let d = world(10, &[]);
    let event = |kind: &str, detail: serde_json::Value| {
        serde_json::json!({"version": "0", "id": "1", "detail-type": kind, "source": "my.app", "account": "1",
            "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": detail})
        .to_string()
    };
    let bodies = [
        (
            "m1",
            event(
                "tablecopy.CreateJob",
                serde_json::json!({"jobName": "ev1", "sourceTable": "src", "targetTable": "dst"}),
            ),
        ),
        ("m2", event("tablecopy.PauseJob", serde_json::json!({"jobName": "nope"}))),
        ("m3", "not json".to_string()),
    ];
    let records = bodies
        .iter()
        .map(|(id, body)| {
            let mut m = SqsMessage::default();
            m.message_id = Some(id.to_string());
            m.body = Some(body.clone());
            m.event_source = Some("aws:sqs".into());
            m
        })
        .collect();
    let mut e = SqsEvent::default();
    e.records = records;
    let out = create_job_entry(&d, serde_json::to_value(&e).unwrap()).await.unwrap();
    let response: SqsBatchResponse = serde_json::from_value(out).unwrap();
    let failed: Vec<&str> = response.batch_item_failures.iter().map(|f| f.item_identifier.as_str()).collect();
    // m2 names an unknown job: refused and dropped. m3 cannot be read: to the DLQ.
    assert_eq!(failed, ["m3"]);
    assert_eq!(job(&d, "ev1").status, JobStatus::Running);
}

#[tokio::test]
async fn tables_outside_the_deployments_prefix_are_refused() {
    let mut d = world(5, &[]);
    d.config.tables = crate::config::TableScope::parse(Some("sr"));
    let e = create_job(&d, request("outside", 1, OnItemError::Fail)).await.unwrap_err();
    assert!(e.to_string().contains("the target table dst is outside this deployment"), "{e}");
    assert!(e.to_string().contains("TableNamePrefix"), "{e}");
    assert!(d.store.state.lock().unwrap().jobs.is_empty() && d.outbox.take().is_empty());
    d.config.tables = crate::config::TableScope::parse(Some("*"));
    create_job(&d, request("inside", 1, OnItemError::Fail)).await.unwrap();
}

#[tokio::test]
async fn a_lost_finalize_message_of_a_waiting_job_is_sent_again_by_a_redelivered_result() {
    let (d, r) = cfn_world(30, &[]);
    let mut p = props("lost", true);
    p["Parallelism"] = "1".into();
    create_job_entry(&d, cfn_request("Create", "l1", p, None)).await.unwrap();
    step(&d).await; // the slice is copied; its result waits on the checkpoint queue
    cancel_job(&d, &name("lost"), false).await.unwrap();
    let result = d.outbox.take();
    assert_eq!(result.len(), 1);
    deliver(&d, QueueKind::Checkpoint, &result[0].1).await; // parks: the job moves to Cancelled
    assert_eq!(job(&d, "lost").status, JobStatus::Cancelled);
    // The process dies before its finalize message is sent: the message is lost, and so is
    // the move's delayed backstop (the worst case).
    let lost = d.outbox.take();
    assert_eq!(lost.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [QueueKind::Finalize, QueueKind::Finalize]);
    assert!(r.take().is_empty());
    // SQS delivers the result again (its handler never finished): it asks finalize again.
    deliver_nth(&d, QueueKind::Checkpoint, &result[0].1, 2).await;
    drain(&d, 1, false).await;
    let a = answers(&r);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].0.as_str(), a[0].1.as_str()), ("l1", "FAILED"));
}

// ---------------------------------------------------------------- late messages, races, faults

/// The copy-chunk messages `d` sent so far, taken off its outbox.
fn take_slices(d: &FakeDeps) -> Vec<String> {
    d.outbox.take().into_iter().filter(|(k, _)| *k == QueueKind::CopyChunk).map(|(_, b)| b).collect()
}

/// The application writes to the target after the copy: every item gets a new attribute.
fn application_writes(d: &FakeDeps) -> Vec<Item> {
    let mut tables = d.tables.tables.lock().unwrap();
    let t = tables.get_mut(&crate::model::TableName::parse("dst").unwrap()).unwrap();
    for item in t.items.values_mut() {
        item.insert("app".into(), AttributeValue::S("written after cutover".into()));
    }
    t.items.values().cloned().collect()
}

#[tokio::test]
async fn late_copy_chunk_messages_of_a_completed_cancelled_or_paused_job_write_nothing() {
    // Completed: every first slice delivered again after the application wrote to the target.
    let d = world(40, &[]);
    create_job(&d, request("done", 2, OnItemError::Fail)).await.unwrap();
    let first = d.outbox.sent.lock().unwrap().iter().map(|(_, b)| b.clone()).collect::<Vec<_>>();
    drain(&d, 1, false).await;
    assert_eq!(job(&d, "done").status, JobStatus::Completed);
    let written = application_writes(&d);
    let control = d.store.state.lock().unwrap().clone();
    for body in &first {
        deliver(&d, QueueKind::CopyChunk, body).await;
    }
    assert!(d.outbox.take().is_empty(), "no result: nobody expects these slices");
    assert_eq!(sorted_canonical(d.tables.items("dst")), sorted_canonical(written), "the application's writes stay");
    assert_eq!(d.store.state.lock().unwrap().cursors, control.cursors);
    assert_eq!(d.store.state.lock().unwrap().jobs, control.jobs);

    // Paused, then Cancelled: the slices that were in flight are delivered once more each time.
    let d = world(60, &[]);
    create_job(&d, request("stop", 2, OnItemError::Fail)).await.unwrap();
    step(&d).await; // first slices copied
    step(&d).await; // committed; second slices sent
    let in_flight = take_slices(&d);
    assert_eq!(in_flight.len(), 2);
    pause_job(&d, &name("stop")).await.unwrap();
    for body in &in_flight {
        deliver(&d, QueueKind::CopyChunk, body).await; // they stop: zero items, reported
    }
    drain(&d, 0, false).await; // the empty results park the segments
    let paused = job(&d, "stop");
    assert_eq!((paused.status, paused.items_copied), (JobStatus::Paused, 14));
    for stopped in [JobStatus::Paused, JobStatus::Cancelled] {
        if stopped == JobStatus::Cancelled {
            cancel_job(&d, &name("stop"), false).await.unwrap();
            d.outbox.take(); // the final move's backstop finalize
        }
        let before = d.store.state.lock().unwrap().clone();
        for body in &in_flight {
            deliver_nth(&d, QueueKind::CopyChunk, body, 3).await;
        }
        assert!(d.outbox.take().is_empty(), "{stopped}: nothing reported");
        assert_eq!(d.tables.items("dst").len(), 14, "{stopped}: nothing written");
        assert_eq!(d.store.state.lock().unwrap().cursors, before.cursors, "{stopped}");
        assert_eq!(job(&d, "stop").status, stopped);
    }
}

#[tokio::test]
async fn a_resume_landing_anywhere_around_a_slices_commit_never_strands_a_segment() {
    // The race of defect 2: a slice is in flight when a pause comes; the resume that withdraws
    // it runs its steps (withdraw, bring the cursors to its epoch, launch the parked ones)
    // while the slice's result commits. Every order ends with the job completing.
    for commit_after in 0..3 {
        let d = world(50, &[]);
        create_job(&d, request("race", 1, OnItemError::Fail)).await.unwrap();
        step(&d).await; // slice 0 copied; its result is in flight
        let result = d.outbox.take().remove(0).1;
        pause_job(&d, &name("race")).await.unwrap();
        let pausing = job(&d, "race");
        assert_eq!(pausing.pending, Some(JobStatus::Paused));
        let control = d.control();
        let mut committed = false;
        let mut commit_now = |at: usize| at == commit_after && !std::mem::replace(&mut committed, true);
        // resume_job's steps, one at a time.
        if commit_now(0) {
            deliver(&d, QueueKind::Checkpoint, &result).await; // parks: the pause still holds
        }
        // As resume_job: a job that settled meanwhile is resumed, else the pause is withdrawn.
        let now = job(&d, "race");
        if now.status == JobStatus::Paused {
            assert!(control.move_job(&now, JobStatus::Running, None, None, None).await.unwrap());
        } else {
            assert!(d
                .store
                .withdraw_stop(&name("race"), JobStatus::Paused, pausing.epoch, chrono::Utc::now())
                .await
                .unwrap());
        }
        if commit_now(1) {
            deliver(&d, QueueKind::Checkpoint, &result).await; // parks: its cursor has not heard of the resume
        }
        let resumed = job(&d, "race");
        let cursors = control.sync_cursors(&resumed.name, resumed.epoch, false).await.unwrap();
        assert!(cursors.iter().all(|c| !c.stop));
        if commit_now(2) {
            deliver(&d, QueueKind::Checkpoint, &result).await; // continues: the cursor says go on
        }
        control.launch(&resumed).await.unwrap();
        if !committed {
            deliver(&d, QueueKind::Checkpoint, &result).await;
        }
        drain(&d, commit_after as u64, true).await;
        let j = job(&d, "race");
        assert_eq!((j.status, j.items_copied), (JobStatus::Completed, 50), "commit after step {commit_after}");
        assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    }
}

#[tokio::test]
async fn pause_and_resume_hammered_between_every_delivery_still_completes_exactly() {
    for seed in 0..6u64 {
        let d = world(120, &[]);
        create_job(&d, request("h", 6, OnItemError::Fail)).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..200 {
            let mut batch = d.outbox.take();
            if batch.is_empty() {
                break;
            }
            batch.shuffle(&mut rng);
            let (kind, body) = batch.remove(0);
            d.outbox.sent.lock().unwrap().extend(batch);
            deliver(&d, kind, &body).await;
            match rand::Rng::random_range(&mut rng, 0..4) {
                0 => {
                    let _ = pause_job(&d, &name("h")).await;
                }
                1 => {
                    let _ = resume_job(&d, &name("h")).await;
                }
                _ => {}
            }
        }
        let j = job(&d, "h");
        if j.status == JobStatus::Paused || j.pending.is_some() {
            resume_job(&d, &name("h")).await.unwrap();
        }
        drain(&d, seed, true).await;
        let j = job(&d, "h");
        assert_eq!((j.status, j.items_copied), (JobStatus::Completed, 120), "seed {seed}: {:?}", j.pending);
        assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
    }
}

/// A requests-queue batch of one EventBridge event, delivered for the `attempt`-th time.
fn queued(detail_type: &str, detail: serde_json::Value, attempt: u32) -> SqsEvent {
    let body = serde_json::json!({"version": "0", "id": "1", "detail-type": detail_type, "source": "my.app",
        "account": "1", "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": detail});
    let mut m = SqsMessage::default();
    m.message_id = Some("m1".into());
    m.body = Some(body.to_string());
    m.attributes.insert("ApproximateReceiveCount".into(), attempt.to_string());
    let mut e = SqsEvent::default();
    e.records = vec![m];
    e
}

#[tokio::test]
async fn a_cancel_whose_schedule_fails_is_retried_and_its_retry_starts_the_next_job() {
    let d = world(30, &[]);
    create_job(&d, request("a", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("b", 1, OnItemError::Fail)).await.unwrap();
    pause_job(&d, &name("a")).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "a").status, JobStatus::Paused);
    // The cancel's move reads the scheduler (fine); the scheduling after it is throttled.
    d.store.script("scheduler", [None, None, Some(crate::error::ErrorKind::Throttled)]);
    let cancel = serde_json::json!({"jobName": "a"});
    let r = requests_batch(&d, queued("tablecopy.CancelJob", cancel.clone(), 1)).await.unwrap();
    assert_eq!(job(&d, "a").status, JobStatus::Cancelled);
    assert_eq!(r.batch_item_failures.len(), 1, "the request goes back to its queue");
    assert_eq!(job(&d, "b").status, JobStatus::Queued);
    // Its second delivery is refused (already Cancelled) but schedules: the slot goes on.
    let r = requests_batch(&d, queued("tablecopy.CancelJob", cancel, 2)).await.unwrap();
    assert!(r.batch_item_failures.is_empty(), "refused, not retried");
    assert_eq!(job(&d, "b").status, JobStatus::Running);
}

#[tokio::test]
async fn a_throttled_create_from_the_requests_queue_is_retried_and_applied_once() {
    let d = world(20, &[]);
    let create = serde_json::json!({"jobName": "ev", "sourceTable": "src", "targetTable": "dst", "parallelism": 2});
    d.store.script("insert_job", [Some(crate::error::ErrorKind::Throttled)]);
    let r = requests_batch(&d, queued("tablecopy.CreateJob", create.clone(), 1)).await.unwrap();
    assert_eq!(r.batch_item_failures.len(), 1, "an AWS error is never dropped");
    assert!(d.store.state.lock().unwrap().jobs.is_empty());
    let r = requests_batch(&d, queued("tablecopy.CreateJob", create.clone(), 2)).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    assert_eq!(job(&d, "ev").status, JobStatus::Running);
    // Delivered once more (its deletion was lost): it finds the job it made, and is done.
    let r = requests_batch(&d, queued("tablecopy.CreateJob", create, 3)).await.unwrap();
    assert!(r.batch_item_failures.is_empty());
    // A permanent AWS error (no permission) is not dropped either: it ends in the DLQ.
    d.store.script("get_job", [Some(crate::error::ErrorKind::AccessDenied)]);
    let r = requests_batch(&d, queued("tablecopy.PauseJob", serde_json::json!({"jobName": "ev"}), 1)).await.unwrap();
    assert_eq!(r.batch_item_failures.len(), 1);
    drain(&d, 0, false).await;
    assert_eq!((job(&d, "ev").status, job(&d, "ev").items_copied), (JobStatus::Completed, 20));
}

/// Move a job's launch back in time, as if it happened well before now.
fn launched_long_ago(d: &FakeDeps, j: &str) {
    let mut s = d.store.state.lock().unwrap();
    let job = s.jobs.get_mut(&name(j)).unwrap();
    job.launched_at = job.launched_at.map(|t| t - chrono::Duration::minutes(5));
}

#[tokio::test]
async fn the_reconciler_repairs_an_interrupted_launch_a_stranded_pause_a_lost_finalize_and_a_crash_before_scheduling() {
    // A launch whose messages were never sent (the process died): the job waits Running with
    // every segment parked; the reconciler launches it again.
    let d = world(30, &[]);
    d.outbox.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = create_job(&d, request("launch", 2, OnItemError::Fail)).await.unwrap_err().to_string();
    assert!(err.contains("starts by itself within a minute"), "{err}");
    d.outbox.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    reconcile(&d).await.unwrap();
    assert!(d.outbox.take().is_empty(), "not before the launch's grace period");
    launched_long_ago(&d, "launch");
    reconcile(&d).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!((job(&d, "launch").status, job(&d, "launch").items_copied), (JobStatus::Completed, 30));

    // A pause recorded on the job whose process died before it reached the cursors: the
    // slices go on until the reconciler stops them; then the job settles.
    let d = world(60, &[]);
    create_job(&d, request("p", 2, OnItemError::Fail)).await.unwrap();
    let j = job(&d, "p");
    assert!(d.store.request_stop(&j.name, JobStatus::Paused, None, j.epoch, chrono::Utc::now()).await.unwrap());
    step(&d).await;
    step(&d).await; // committed and continued: the cursors did not hear of the pause
    reconcile(&d).await.unwrap();
    drain(&d, 0, false).await;
    let paused = job(&d, "p");
    assert_eq!(paused.status, JobStatus::Paused);
    assert_eq!(d.tables.items("dst").len() as u64, paused.items_copied);

    // Every segment done but the finalize message lost: the reconciler asks again.
    let d = world(20, &[]);
    create_job(&d, request("fin", 2, OnItemError::Fail)).await.unwrap();
    loop {
        let batch: Vec<_> = d.outbox.take().into_iter().filter(|(k, _)| *k != QueueKind::Finalize).collect();
        if batch.is_empty() {
            break;
        }
        for (k, b) in batch {
            deliver(&d, k, &b).await;
        }
    }
    assert_eq!(job(&d, "fin").status, JobStatus::Running);
    reconcile(&d).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "fin").status, JobStatus::Completed);

    // A job recorded Queued while a slot is free (the process died before scheduling it).
    let d = world(20, &[]);
    create_job(&d, request("first", 1, OnItemError::Fail)).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "first").status, JobStatus::Completed);
    // The checks and the insert read the scheduler (fine); the scheduling after it is throttled.
    d.store.script("scheduler", [None, None, Some(crate::error::ErrorKind::Throttled)]);
    let err = create_job(&d, request("second", 1, OnItemError::Fail)).await.unwrap_err().to_string();
    assert!(err.contains("was recorded but could not be started yet"), "{err}");
    assert_eq!(job(&d, "second").status, JobStatus::Queued);
    reconcile(&d).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "second").status, JobStatus::Completed);
}

#[tokio::test]
async fn the_reconciler_shows_segments_without_progress_as_stalled() {
    let mut d = world(40, &[]);
    d.config.tuning.copy_visibility = std::time::Duration::from_secs(20);
    create_job(&d, request("st", 2, OnItemError::Fail)).await.unwrap();
    let slices = take_slices(&d); // the slices end in the copy-chunk DLQ
    reconcile(&d).await.unwrap();
    assert_eq!(job(&d, "st").stalled, 0, "not before the bound");
    for c in d.store.state.lock().unwrap().cursors.values_mut() {
        c.updated_at = c.updated_at.map(|t| t - chrono::Duration::minutes(2));
    }
    let found = reconcile(&d).await.unwrap();
    assert_eq!(found.stalled, 2);
    let j = job(&d, "st");
    assert_eq!(j.status_label(), "Running (stalled: 2 segments, see the copy-chunk DLQ)");
    // The DLQ is redriven: the job goes on and the mark goes away.
    for body in &slices {
        deliver(&d, QueueKind::CopyChunk, body).await;
    }
    drain(&d, 0, false).await;
    let j = job(&d, "st");
    assert_eq!(j.status, JobStatus::Completed);
}

#[tokio::test]
async fn cancel_force_ends_a_job_whose_slices_are_stuck_and_they_write_nothing_when_redriven() {
    let d = world(40, &[]);
    create_job(&d, request("stuck", 2, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("next", 2, OnItemError::Fail)).await.unwrap();
    let stuck = take_slices(&d); // in the copy-chunk DLQ
    cancel_job(&d, &name("stuck"), false).await.unwrap();
    assert_eq!(job(&d, "stuck").status_label(), "Running (cancelling)", "waits for its slices");
    let err = cancel_job(&d, &name("stuck"), false).await.unwrap_err().to_string();
    assert!(err.contains("`tablecopy cancel --force` ends it now"), "{err}");
    let forced = cancel_job(&d, &name("stuck"), true).await.unwrap();
    assert_eq!(forced.status, JobStatus::Cancelled);
    assert_eq!(job(&d, "next").status, JobStatus::Running, "the slot goes on");
    d.outbox.take();
    // The DLQ is redriven: the slices write nothing.
    for body in &stuck {
        deliver(&d, QueueKind::CopyChunk, body).await;
    }
    assert!(d.tables.items("dst").is_empty(), "a redriven slice of a final job writes nothing");
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "stuck"), forced, "a cancelled job never changes");
}

/// A one-segment job of 2,500 items with 3,000-item slices (pages of 1,000), whose target
/// accepts the first page (40 batches) and then throttles for good; its first slice.
async fn throttled_after_one_page(d: &mut FakeDeps) -> crate::messages::CopyChunk {
    d.config.tuning.slice = SliceLimits { max_items: 3_000, max_bytes: 1 << 30 };
    create_job(d, request("dl", 1, OnItemError::Fail)).await.unwrap();
    *d.tables.throttle_after.lock().unwrap() = Some(40);
    decode(&take_slices(d)[0]).unwrap()
}

/// The slice's result reports the whole first page and nothing more; once the target
/// recovers, the rest is copied from the end of that page, each item once.
async fn the_rest_is_copied_once(d: &FakeDeps, min_throttles: u64) {
    let sent = d.outbox.take();
    let result: crate::messages::ChunkResult = decode(&sent[0].1).unwrap();
    assert!(result.partial && result.next_key.is_some());
    assert_eq!(result.items_written, 1_000, "the whole first page, nothing of the second");
    // The first page was never throttled: these are the dropped page's, which must slow the pace.
    assert!(result.throttles >= min_throttles, "{} throttles reported", result.throttles);
    *d.tables.throttle_after.lock().unwrap() = None;
    deliver(d, QueueKind::Checkpoint, &sent[0].1).await;
    drain(d, 0, false).await;
    let j = job(d, "dl");
    assert_eq!((j.status, j.items_copied), (JobStatus::Completed, 2_500));
    assert_eq!(d.tables.items("dst").len(), 2_500);
}

#[tokio::test(start_paused = true)]
async fn a_slice_under_endless_throttling_ends_at_a_page_boundary_before_its_deadline() {
    let mut d = world(2_500, &[]);
    d.config.tuning.max_write_attempts = u32::MAX;
    let slice = throttled_after_one_page(&mut d).await;
    let started = tokio::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(20);
    let stop_at = deadline - stop_margin(deadline - started);
    copy_chunk(&d.tables, d.streams.as_ref(), &d.store, &d.outbox, &d.config.tuning, slice, deadline).await.unwrap();
    let ended = tokio::time::Instant::now();
    assert!(ended >= stop_at && ended < deadline, "ended {:?} after its start", ended - started);
    the_rest_is_copied_once(&d, 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_slice_that_runs_out_of_write_attempts_keeps_its_whole_pages() {
    let mut d = world(2_500, &[]);
    let slice = throttled_after_one_page(&mut d).await;
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3_600);
    copy_chunk(&d.tables, d.streams.as_ref(), &d.store, &d.outbox, &d.config.tuning, slice, far).await.unwrap();
    the_rest_is_copied_once(&d, u64::from(d.config.tuning.max_write_attempts)).await;
}

#[tokio::test(start_paused = true)]
async fn throttled_item_by_item_writes_of_a_refused_batch_count_as_throttles() {
    let d = world(7, &[]);
    create_job(&d, request("one", 1, OnItemError::Fail)).await.unwrap();
    let slice = decode(&take_slices(&d)[0]).unwrap();
    *d.tables.refused_batches.lock().unwrap() = 1;
    *d.tables.throttled_puts.lock().unwrap() = 2;
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3_600);
    copy_chunk(&d.tables, d.streams.as_ref(), &d.store, &d.outbox, &d.config.tuning, slice, far).await.unwrap();
    let result: crate::messages::ChunkResult = decode(&d.outbox.take()[0].1).unwrap();
    assert_eq!((result.items_written, result.rejected_count), (7, 0));
    assert_eq!(result.throttles, 2, "two PutItem calls were throttled");
    assert_eq!(d.tables.items("dst").len(), 7);
}

#[tokio::test]
async fn while_one_copy_of_a_slice_writes_another_copy_of_it_writes_nothing() {
    let mut d = world(20, &[]);
    d.config.tuning.slice.max_items = 1_000; // the whole segment is one slice of one page
    create_job(&d, request("twice", 1, OnItemError::Fail)).await.unwrap();
    let slice = take_slices(&d).remove(0);
    let (release, held) = tokio::sync::oneshot::channel();
    *d.tables.hold_next_write.lock().unwrap() = Some(held);
    let (first, (second, written_meanwhile)) = tokio::join!(
        // The first copy takes the segment and is held in the middle of its write.
        handle(&d, QueueKind::CopyChunk, &slice, 1),
        async {
            // The same slice again (a duplicate message, or a redelivery) meanwhile.
            let second = handle(&d, QueueKind::CopyChunk, &slice, 1).await;
            let written = d.tables.items("dst").len();
            release.send(()).unwrap();
            (second, written)
        }
    );
    first.unwrap();
    assert_eq!(written_meanwhile, 0, "the second copy wrote while the first held the segment");
    assert!(matches!(second, Err(HandlerError::Busy(_))), "it comes back later: {second:?}");
    drain(&d, 0, false).await;
    let done = job(&d, "twice");
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 20));
    // When it comes back, after the job completed and the application wrote: nothing.
    let written = application_writes(&d);
    handle(&d, QueueKind::CopyChunk, &slice, 2).await.unwrap();
    assert!(d.outbox.take().is_empty());
    assert_eq!(sorted_canonical(d.tables.items("dst")), sorted_canonical(written), "the application's writes stay");
}

#[tokio::test]
async fn a_commit_whose_answer_was_lost_still_sends_what_follows() {
    let d = world(40, &[]);
    create_job(&d, request("lost-answer", 2, OnItemError::Fail)).await.unwrap();
    // Every commit applies, and its answer is lost: the SDK's retry of the same conditional
    // write finds the cursor moved on.
    d.store.lose_commit_answers(u32::MAX);
    drain(&d, 4, false).await;
    let done = job(&d, "lost-answer");
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 40));
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn a_launch_mark_that_lands_after_a_newer_control_change_strands_nothing() {
    let mut d = world(20, &[]);
    d.config.tuning.launch_grace = std::time::Duration::ZERO;
    // The start's launch sends the first slice, and its mark of the cursor is delayed.
    d.store.script("unpark", [Some(crate::error::ErrorKind::Throttled)]);
    let _ = create_job(&d, request("late-mark", 1, OnItemError::Fail)).await;
    let first = take_slices(&d);
    assert_eq!(first.len(), 1);
    let launched_at = job(&d, "late-mark").epoch;
    pause_job(&d, &name("late-mark")).await.unwrap();
    assert_eq!(job(&d, "late-mark").status, JobStatus::Paused);
    deliver(&d, QueueKind::CopyChunk, &first[0]).await; // parked for a pause: dropped
    assert!(d.outbox.take().is_empty());
    // A resume that dies after bringing the cursor to its epoch, before sending anything.
    d.outbox.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(resume_job(&d, &name("late-mark")).await.is_err());
    d.outbox.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    // The first launch's delayed mark lands now.
    let _ = d.store.unpark(&name("late-mark"), 0, 0, launched_at, chrono::Utc::now()).await;
    // The reconciler finishes the interrupted resume.
    reconcile(&d).await.unwrap();
    drain(&d, 0, false).await;
    let done = job(&d, "late-mark");
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 20), "{:?}", done.error);
}

#[tokio::test]
async fn items_rejected_by_a_slice_that_parks_for_a_pause_fail_the_job_at_once() {
    let d = world(40, &[]);
    create_job(&d, request("rej-pause", 1, OnItemError::Fail)).await.unwrap();
    strip_order_no(&d, &[3]);
    step(&d).await; // the first slice is copied and rejects item 3; its result waits
    pause_job(&d, &name("rej-pause")).await.unwrap();
    drain(&d, 0, false).await; // its commit parks the segment
    let j = job(&d, "rej-pause");
    assert_eq!(j.status, JobStatus::Failed, "not left Paused to fail only after a resume");
    assert_eq!(j.error.unwrap().code, "ItemsRejected");
}

#[tokio::test]
async fn a_result_whose_copy_lost_its_hold_does_not_end_the_slice_under_the_copy_holding_it_now() {
    let mut d = world(20, &[]);
    d.config.tuning.slice.max_items = 1_000; // the whole segment is one slice
    create_job(&d, request("handover", 1, OnItemError::Fail)).await.unwrap();
    let slice = take_slices(&d).remove(0);
    deliver(&d, QueueKind::CopyChunk, &slice).await; // copy B writes the slice and reports
    let result = d.outbox.take().remove(0).1;
    // B's result waits (its checkpoint keeps failing) until B's hold ran out; then another
    // copy D of the slice takes the segment and starts writing.
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let until = later + chrono::Duration::minutes(10);
    assert!(d.store.claim(&name("handover"), 0, 0, "copy D", until, later).await.unwrap());
    // Now B's result arrives: it must not end the slice D is writing (D commits its own).
    deliver(&d, QueueKind::Checkpoint, &result).await;
    assert!(d.outbox.take().is_empty(), "no finalize while D writes");
    assert_eq!(job(&d, "handover").status, JobStatus::Running);
    let c = d.store.cursor(&name("handover"), 0).await.unwrap().unwrap();
    assert_eq!((c.seq, c.done, c.owner.as_deref()), (0, false, Some("copy D")));
}

// ---------------------------------------------------------------- events, budget

/// Job events as published: (detail-type, job, from, to, version).
fn published(events: &[crate::events::Event]) -> Vec<(String, String, String, String, u64)> {
    events
        .iter()
        .map(|e| {
            let d = &e.detail;
            let text = |k: &str| d[k].as_str().unwrap_or("-").to_string();
            (e.detail_type.to_string(), text("job"), text("from"), text("to"), d["version"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// Let `d` record its events; what it published is the returned bus's `take()`.
fn record_events(d: &mut FakeDeps) -> std::sync::Arc<crate::events::RecordedEvents> {
    let bus = std::sync::Arc::new(crate::events::RecordedEvents::default());
    d.events = bus.clone();
    bus
}

#[tokio::test]
async fn every_state_change_of_a_job_is_published_once_with_its_version() {
    let mut d = world(40, &[]);
    let bus = record_events(&mut d);
    create_job(&d, request("ev", 2, OnItemError::Fail)).await.unwrap();
    drain(&d, 3, true).await;
    let events = bus.take();
    let change = |from: &str, to: &str, v| {
        ("tablecopy.JobStateChange".to_string(), "ev".to_string(), from.to_string(), to.to_string(), v)
    };
    assert_eq!(
        published(&events),
        [change("-", "Queued", 1), change("Queued", "Running", 2), change("Running", "Completed", 3)]
    );
    assert_eq!(events[2].detail["counters"]["itemsCopied"], 40);
    assert_eq!(job(&d, "ev").announced, 3);
}

/// An event bus that refuses the next `failures` publications.
#[derive(Default)]
struct FlakyBus {
    failures: std::sync::atomic::AtomicU32,
    inner: crate::events::RecordedEvents,
}

#[async_trait::async_trait]
impl crate::events::EventBus for FlakyBus {
    async fn publish(&self, events: Vec<crate::events::Event>) -> Result<(), crate::error::AwsError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.failures.load(SeqCst) > 0 {
            self.failures.fetch_sub(1, SeqCst);
            return Err(crate::error::AwsError::new(crate::error::ErrorKind::Transient, "publish", "refused"));
        }
        self.inner.publish(events).await
    }
}

#[tokio::test]
async fn events_that_could_not_be_published_when_the_job_moved_are_published_later() {
    let mut d = world(20, &[]);
    let bus = std::sync::Arc::new(FlakyBus::default());
    d.events = bus.clone();
    create_job(&d, request("late-ev", 1, OnItemError::Fail)).await.unwrap();
    assert_eq!(job(&d, "late-ev").announced, 2, "Queued and Running published");
    // The completion's publication fails twice: when the job moves, and finalize's first try.
    bus.failures.store(2, std::sync::atomic::Ordering::SeqCst);
    while job(&d, "late-ev").status != JobStatus::Completed {
        step(&d).await;
    }
    assert!(job(&d, "late-ev").announced < 3, "the completion was not published when it happened");
    drain(&d, 0, false).await; // finalize, retried until it can publish
    let all = bus.inner.take();
    let versions: Vec<u64> = published(&all).iter().map(|e| e.4).collect();
    assert_eq!(versions, [1, 2, 3], "{:?}", published(&all));
    assert_eq!(job(&d, "late-ev").announced, 3);
}

#[tokio::test]
async fn a_refused_request_from_the_queue_is_published_as_rejected() {
    let mut d = world(10, &[]);
    let bus = record_events(&mut d);
    let create = serde_json::json!({"jobName": "nope", "sourceTable": "missing", "targetTable": "dst"});
    let r = requests_batch(&d, queued("tablecopy.CreateJob", create, 1)).await.unwrap();
    assert!(r.batch_item_failures.is_empty(), "refused, not retried");
    let events = bus.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail_type, "tablecopy.RequestRejected");
    assert_eq!((events[0].detail["action"].as_str(), events[0].detail["job"].as_str()), (Some("create"), Some("nope")));
    assert!(events[0].detail["reason"].as_str().unwrap().contains("was not found"), "{:?}", events[0]);
}

#[tokio::test]
async fn a_budgeted_job_paces_each_segment_with_delays_and_halves_its_rate_when_throttled() {
    let mut d = world(300, &[]);
    d.config.tuning.slice.max_items = 1_000;
    // Without verification: its launch would start the segments' pace afresh.
    let req = CreateJobRequest {
        max_write_rate: Some(40),
        verify: crate::model::VerifyMode::None,
        ..request("paced", 2, OnItemError::Fail)
    };
    create_job(&d, req).await.unwrap();
    let first: Vec<crate::messages::CopyChunk> = take_slices(&d).iter().map(|b| decode(b).unwrap()).collect();
    // 40 items/s shared by 2 segments: 20/s each, slices of 2 s worth (at least 25 items).
    assert!(
        first.iter().all(|m| m.pace.as_ref().map(|p| p.rate) == Some(20.0) && m.limits.max_items == 40),
        "{first:?}"
    );
    for m in &first {
        deliver(&d, QueueKind::CopyChunk, &encode(m)).await;
    }
    // A throttled slice: the next one of its segment runs at half the rate.
    *d.tables.unprocessed_calls.lock().unwrap() = 1;
    drain(&d, 1, false).await;
    let done = job(&d, "paced");
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 300));
    assert!(done.throttles >= 1);
    let delays: Vec<u32> =
        d.outbox.delays.lock().unwrap().iter().filter(|(q, _)| *q == QueueKind::CopyChunk).map(|(_, s)| *s).collect();
    // The handler tests deliver at once, so each segment runs ahead of its schedule and its
    // delays grow: the last ones cover what the segment copied at its rate (about 150 items at
    // 20/s or less: 7 s or more).
    assert!(!delays.is_empty() && *delays.iter().max().unwrap() >= 6, "{delays:?}");
    let cursors = d.store.cursors(&name("paced")).await.unwrap();
    assert!(cursors.iter().any(|c| c.rate.is_some_and(|r| r < 20.0)), "a segment was slowed: {cursors:?}");
}

#[tokio::test]
async fn a_job_whose_cursors_were_created_half_way_is_completed_before_it_starts() {
    let d = world(60, &[]);
    // The creation dies after the job is recorded: its cursors cannot be written.
    d.store
        .script("create_cursors", [Some(crate::error::ErrorKind::Throttled), Some(crate::error::ErrorKind::Throttled)]);
    let r = create_job(&d, request("half", 4, OnItemError::Fail)).await;
    assert!(matches!(r, Err(RequestError::Incomplete(_))), "{r:?}");
    assert_eq!(job(&d, "half").status, JobStatus::Queued, "never started without its cursors");
    // Half of them were written before it died.
    let half = [crate::model::Cursor::start(0), crate::model::Cursor::start(1)];
    d.store.create_cursors(&name("half"), &half).await.unwrap();
    assert_eq!(job(&d, "half").status, JobStatus::Queued);
    reconcile(&d).await.unwrap();
    let started = job(&d, "half");
    assert_eq!(started.status, JobStatus::Running);
    assert_eq!(d.store.cursors(&name("half")).await.unwrap().len(), 4, "every cursor exists before the start");
    drain(&d, 2, false).await;
    let done = job(&d, "half");
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 60));
    assert_eq!(sorted_canonical(d.tables.items("src")), sorted_canonical(d.tables.items("dst")));
}

#[tokio::test]
async fn a_job_may_have_a_thousand_segments() {
    let d = world(50, &[]);
    let r = create_job(&d, request("wide", 1_001, OnItemError::Fail)).await;
    assert!(matches!(&r, Err(RequestError::Invalid(e)) if e.0.contains("use 1 to 1000")), "{r:?}");
    assert!(d.store.state.lock().unwrap().jobs.is_empty(), "nothing written");
    create_job(&d, request("wide", 1_000, OnItemError::Fail)).await.unwrap();
    assert_eq!(d.store.cursors(&name("wide")).await.unwrap().len(), 1_000);
    drain(&d, 5, false).await;
    let done = job(&d, "wide");
    assert_eq!((done.status, done.items_copied, done.segments_done), (JobStatus::Completed, 50, 1_000));
    // Without a parallelism: the deployment's default for a small table, said to come from its size.
    create_job(&d, CreateJobRequest { parallelism: None, ..request("sized", 1, OnItemError::Fail) }).await.unwrap();
    let sized = job(&d, "sized");
    assert_eq!((sized.spec.parallelism, sized.spec.parallelism_from_size), (4, true));
}

#[tokio::test]
async fn a_final_move_first_queues_a_delayed_finalize_that_publishes_what_a_dead_process_did_not() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut d = world(10, &[]);
    let bus = record_events(&mut d);
    create_job(&d, request("first", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("second", 1, OnItemError::Fail)).await.unwrap();
    assert_eq!(job(&d, "second").status, JobStatus::Queued);
    d.outbox.take();
    // Without its backstop on the queue, a final move does not happen.
    d.outbox.broken.store(true, SeqCst);
    assert!(cancel_job(&d, &name("second"), false).await.is_err());
    assert_eq!(job(&d, "second").status, JobStatus::Queued);
    d.outbox.broken.store(false, SeqCst);
    cancel_job(&d, &name("second"), false).await.unwrap();
    assert!(d
        .outbox
        .delays
        .lock()
        .unwrap()
        .contains(&(QueueKind::Finalize, crate::control::FINALIZE_BACKSTOP_SECONDS)));
    // The process died right after the move, before publishing it: as if `Cancelled` was never
    // announced. The backstop publishes it when it arrives.
    let announced = job(&d, "second").announced;
    d.store.state.lock().unwrap().jobs.get_mut(&name("second")).unwrap().announced = announced - 1;
    bus.take();
    drain(&d, 0, false).await;
    let events = bus.take();
    let cancelled: Vec<_> = published(&events).into_iter().filter(|e| e.1 == "second").collect();
    assert_eq!(cancelled.len(), 1, "{events:?}");
    assert_eq!((cancelled[0].3.as_str(), cancelled[0].4), ("Cancelled", announced));
    assert_eq!(job(&d, "second").announced, announced);
}

#[tokio::test]
async fn a_failing_event_bus_does_not_stop_the_reconciler() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut d = world(10, &[]);
    let bus = std::sync::Arc::new(FlakyBus::default());
    d.events = bus.clone();
    create_job(&d, request("stuck", 1, OnItemError::Fail)).await.unwrap();
    create_job(&d, request("behind", 1, OnItemError::Fail)).await.unwrap();
    d.outbox.take();
    // "stuck" has a segment in flight that made no progress for a day, and the bus refuses
    // its JobStalled event: the pass still ends (for "behind" and every other job).
    {
        let mut state = d.store.state.lock().unwrap();
        for c in state.cursors.values_mut() {
            c.updated_at = Some(chrono::Utc::now() - chrono::Duration::days(1));
        }
    }
    bus.failures.store(1, SeqCst);
    reconcile(&d).await.unwrap();
    assert_eq!(job(&d, "stuck").stalled, 0, "not recorded: the next pass publishes it again");
    reconcile(&d).await.unwrap();
    assert_eq!(job(&d, "stuck").stalled, 1);
    let stalled: Vec<_> = bus.inner.take().into_iter().filter(|e| e.detail_type == "tablecopy.JobStalled").collect();
    assert_eq!(stalled.len(), 1);
}

#[tokio::test]
async fn a_budget_too_low_for_its_segments_is_refused_before_anything_is_written() {
    let d = world(10, &[]);
    let req = CreateJobRequest { max_write_rate: Some(20), ..request("slow", 1000, OnItemError::Fail) };
    let err = create_job(&d, req).await.unwrap_err().to_string();
    assert!(err.contains("maxWriteRate 20 is below what 1000 segments can be paced to"), "{err}");
    assert!(err.contains("28 items/s in all"), "{err}");
    assert!(d.store.state.lock().unwrap().jobs.is_empty());
    let req = CreateJobRequest { max_write_rate: Some(28), ..request("slow", 1000, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
}

#[tokio::test]
async fn a_job_written_before_job_events_does_not_publish_its_past() {
    let d = world(10, &[]);
    create_job(&d, request("old", 1, OnItemError::Fail)).await.unwrap();
    let mut item = crate::store::codec::job_to_item(&job(&d, "old"));
    item.remove("announced");
    let read = crate::store::codec::job_from_item(item).unwrap();
    assert_eq!(read.announced as usize, read.history.len());
    assert!(!read.unannounced());
}

#[tokio::test]
async fn a_failing_event_bus_does_not_hold_back_a_waiting_resources_answer() {
    use std::sync::atomic::Ordering::SeqCst;
    let (mut d, r) = cfn_world(30, &[]);
    let bus = std::sync::Arc::new(FlakyBus::default());
    bus.failures.store(1_000_000, SeqCst); // EventBridge refuses everything
    d.events = bus.clone();
    let mut p = props("waits", true);
    p["Parallelism"] = "1".into();
    create_job_entry(&d, cfn_request("Create", "w9", p, None)).await.unwrap();
    // Every message once; a handler that fails (on publishing) is not retried here.
    for _ in 0..50 {
        for (kind, body) in d.outbox.take() {
            let _ = handle(&d, kind, &body, 1).await;
        }
    }
    assert_eq!(job(&d, "waits").status, JobStatus::Completed);
    let a = answers(&r);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].0.as_str(), a[0].1.as_str()), ("w9", "SUCCESS"));
}

#[tokio::test]
async fn paced_slices_span_the_segments_each_worker_serves() {
    let mut d = world(400, &[]);
    d.config.tuning.slice.max_items = 1_000;
    d.config.tuning.workers = 2;
    let req = CreateJobRequest { max_write_rate: Some(80), ..request("span", 8, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
    let first: Vec<crate::messages::CopyChunk> = take_slices(&d).iter().map(|b| decode(b).unwrap()).collect();
    // 80 items/s over 8 segments: 10/s each; 4 segments a worker: slices spanning 8 s, 80 items.
    assert_eq!(first.len(), 8);
    assert!(
        first.iter().all(|m| m.limits.max_items == 80 && m.pace.as_ref().map(|p| p.span) == Some(8.0)),
        "{first:?}"
    );
    for m in &first {
        deliver(&d, QueueKind::CopyChunk, &encode(m)).await;
    }
    drain(&d, 2, false).await;
    assert_eq!(job(&d, "span").items_copied, 400);
    assert_eq!(d.tables.items("dst").len(), 400);
}

#[tokio::test]
async fn a_resumed_job_keeps_the_slice_size_it_was_created_with_whoever_resumes_it() {
    let mut d = world(60, &[]);
    create_job(&d, request("fixed", 2, OnItemError::Fail)).await.unwrap(); // slices of 7 items
    pause_job(&d, &name("fixed")).await.unwrap();
    drain(&d, 0, false).await;
    assert_eq!(job(&d, "fixed").status, JobStatus::Paused);
    // Resumed by a process whose own setting differs (another caller's environment).
    d.config.tuning.slice = SliceLimits { max_items: 1_000, max_bytes: 1 << 30 };
    resume_job(&d, &name("fixed")).await.unwrap();
    let slices = take_slices(&d);
    assert!(!slices.is_empty());
    for body in &slices {
        let msg: crate::messages::CopyChunk = decode(body).unwrap();
        assert_eq!(msg.limits.max_items, 7, "the job's own slice size");
    }
    // Their follow-ups too: every slice of the rest of the copy.
    for body in &slices {
        deliver(&d, QueueKind::CopyChunk, body).await;
    }
    let mut follow_ups = 0;
    loop {
        let sent = d.outbox.take();
        if sent.is_empty() {
            break;
        }
        for (kind, body) in sent {
            if kind == QueueKind::CopyChunk {
                let msg: crate::messages::CopyChunk = decode(&body).unwrap();
                assert_eq!(msg.limits.max_items, 7, "a follow-up of the job's own slice size");
                follow_ups += 1;
            }
            deliver(&d, kind, &body).await;
        }
    }
    assert!(follow_ups >= 6, "{follow_ups} follow-up slices");
    let j = job(&d, "fixed");
    assert_eq!((j.status, j.items_copied), (JobStatus::Completed, 60));
}

/// Deliver every message, as `drain` does without duplicates, and call `before_verifying` once,
/// when the first slice of the verification is about to run (the copy is done).
async fn drain_tampering(d: &FakeDeps, before_verifying: impl FnOnce(&FakeDeps)) {
    let mut tamper = Some(before_verifying);
    for _round in 0..10_000 {
        let batch = d.outbox.take();
        if batch.is_empty() {
            return;
        }
        for (kind, body) in batch {
            if kind == QueueKind::CopyChunk {
                let msg: crate::messages::CopyChunk = decode(&body).unwrap();
                if msg.pass != crate::model::Pass::Copy {
                    if let Some(f) = tamper.take() {
                        f(d);
                    }
                }
            }
            deliver(d, kind, &body).await;
        }
    }
    panic!("messages kept coming");
}

fn target_items(d: &FakeDeps) -> std::sync::MutexGuard<'_, HashMap<crate::model::TableName, crate::fakes::FakeTable>> {
    d.tables.tables.lock().unwrap()
}

fn dst() -> crate::model::TableName {
    crate::model::TableName::parse("dst").unwrap()
}

#[tokio::test]
async fn a_job_verifies_every_item_of_its_copy_before_it_completes() {
    let d = world(60, &[5]);
    create_job(&d, request("checked", 3, OnItemError::Skip)).await.unwrap();
    drain(&d, 7, true).await;
    let j = job(&d, "checked");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.expect("verification recorded");
    assert!(v.matched(), "{v:?}");
    // The item that does not fit the target's key is not a difference.
    assert_eq!((v.source.items, v.target.items, v.skipped), (59, 59, 1));
    assert_eq!(v.source.hash, v.target.hash);
    assert!(v.summary().starts_with("verified: 59 items, hash "), "{}", v.summary());
    assert_eq!(sorted_canonical(d.tables.items("dst")).len(), 59);
}

#[tokio::test]
async fn a_target_tampered_with_during_the_copy_fails_verification_naming_the_items() {
    let d = world(60, &[]);
    create_job(&d, request("tampered", 3, OnItemError::Fail)).await.unwrap();
    drain_tampering(&d, tamper_with_target).await;
    let j = job(&d, "tampered");
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.clone().unwrap();
    assert_eq!(e.code, "VerificationFailed");
    let v = j.verification.clone().expect("verification recorded");
    assert_eq!((v.missing, v.different, v.extra), (1, 1, 1), "{v:?}");
    assert_eq!((v.source.items, v.target.items), (60, 60));
    assert!(e.message.contains("1 missing, 1 different, 1 extra"), "{}", e.message);
    assert!(e.message.contains(r#"extra {"pk":{"S":"o-0999"}}"#), "{}", e.message);
    assert!(!v.differing_buckets.is_empty() && v.differing_buckets.len() <= 3, "{v:?}");
}

#[tokio::test]
async fn items_a_target_held_before_the_job_are_reported_not_failed() {
    let d = world(40, &[]);
    let mut old = item(500);
    old.insert("customer".into(), AttributeValue::S("from before".into()));
    {
        let mut tables = target_items(&d);
        tables.get_mut(&dst()).unwrap().items.insert("old".into(), old);
    }
    create_job(&d, request("prefilled", 2, OnItemError::Fail)).await.unwrap();
    drain(&d, 3, false).await;
    let j = job(&d, "prefilled");
    assert_eq!(j.target_empty_at_start, Some(false));
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.unwrap();
    assert_eq!((v.missing, v.different, v.extra, v.target.items), (0, 0, 1, 41), "{v:?}");
}

#[tokio::test]
async fn a_job_paused_while_it_verifies_resumes_its_verification_where_it_stopped() {
    let d = world(80, &[]);
    create_job(&d, request("paused-check", 2, OnItemError::Fail)).await.unwrap();
    let mut paused = false;
    for _ in 0..10_000 {
        let batch = d.outbox.take();
        if batch.is_empty() {
            break;
        }
        for (kind, body) in batch {
            let verifying = kind == QueueKind::CopyChunk
                && decode::<crate::messages::CopyChunk>(&body).unwrap().pass == crate::model::Pass::VerifyTarget;
            if verifying && !paused {
                paused = true;
                pause_job(&d, &name("paused-check")).await.unwrap();
            }
            deliver(&d, kind, &body).await;
        }
    }
    let j = job(&d, "paused-check");
    assert_eq!((j.status, j.phase), (JobStatus::Paused, crate::model::Phase::Verifying));
    resume_job(&d, &name("paused-check")).await.unwrap();
    drain(&d, 5, true).await;
    let j = job(&d, "paused-check");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.unwrap();
    assert_eq!((v.source.items, v.target.items), (80, 80), "read once each, however often it paused");
}

#[tokio::test]
async fn a_job_without_verification_completes_when_copied() {
    let d = world(20, &[]);
    let req = CreateJobRequest { verify: crate::model::VerifyMode::None, ..request("unchecked", 2, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
    drain(&d, 1, false).await;
    let j = job(&d, "unchecked");
    assert_eq!((j.status, j.verification), (JobStatus::Completed, None));
}

/// One item changed, one deleted and one that no source item maps to, in the target.
fn tamper_with_target(d: &FakeDeps) {
    let mut tables = target_items(d);
    let t = tables.get_mut(&dst()).unwrap();
    let keys: Vec<String> = t.items.keys().cloned().collect();
    t.items.get_mut(&keys[0]).unwrap().insert("v".into(), AttributeValue::S("changed".into()));
    t.items.remove(&keys[1]);
    let mut extra = item(999);
    extra.insert("customer".into(), AttributeValue::S("nobody".into()));
    t.items.insert(render_key(&extra_key(&extra)), extra);
}

fn extra_key(item: &Item) -> Item {
    ["customer", "order_no"].iter().map(|k| (k.to_string(), item[*k].clone())).collect()
}

#[tokio::test]
async fn a_repair_writes_what_differs_deletes_extras_and_checks_again_before_completing() {
    let d = world(60, &[]);
    let req = CreateJobRequest { repair: true, ..request("repaired", 3, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
    drain_tampering(&d, tamper_with_target).await;
    let j = job(&d, "repaired");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.clone().unwrap();
    assert_eq!((v.repaired_put, v.repaired_deleted), (2, 1), "{v:?}");
    assert_eq!((v.missing, v.different, v.extra), (0, 0, 0), "checked again after the repair: {v:?}");
    assert!(v.summary().starts_with("verified after repair: 60 items, 2 put and 1 deleted"), "{}", v.summary());
    assert_eq!(sorted_canonical(d.tables.items("dst")), sorted_canonical(d.tables.items("src")));
    assert!(j.history.iter().all(|h| h.status != JobStatus::Failed));
}

#[tokio::test]
async fn a_repair_leaves_the_items_a_target_held_before_the_job() {
    let d = world(30, &[]);
    let mut old = item(500);
    old.insert("customer".into(), AttributeValue::S("from before".into()));
    target_items(&d).get_mut(&dst()).unwrap().items.insert(render_key(&extra_key(&old)), old.clone());
    let req = CreateJobRequest { repair: true, ..request("kept", 2, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
    drain(&d, 9, true).await;
    let j = job(&d, "kept");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.unwrap();
    assert_eq!((v.repaired_put, v.repaired_deleted, v.extra), (0, 0, 1), "{v:?}");
    assert!(d.tables.items("dst").contains(&old), "an item of the target from before the job is never deleted");
}

#[tokio::test]
async fn repair_without_verification_is_refused_and_nothing_is_written() {
    let d = world(5, &[]);
    let req = CreateJobRequest {
        repair: true,
        verify: crate::model::VerifyMode::None,
        ..request("contradiction", 1, OnItemError::Fail)
    };
    let err = create_job(&d, req).await.unwrap_err().to_string();
    assert!(err.contains("repair needs verification"), "{err}");
    assert!(d.store.state.lock().unwrap().jobs.is_empty());
}

/// A source item that maps to the same target key (`customer`, `order_no`) as item 3.
fn colliding_item() -> Item {
    let mut twin = item(3);
    twin.insert("pk".into(), AttributeValue::S("o-twin".into()));
    twin.insert("note".into(), AttributeValue::S("another item, the same target key".into()));
    twin
}

fn add_to_source(d: &FakeDeps, it: Item) {
    let mut tables = target_items(d);
    let src = tables.get_mut(&crate::model::TableName::parse("src").unwrap()).unwrap();
    src.items.insert(render_key(&src.key.key_of(&it)), it);
}

#[tokio::test]
async fn two_source_items_with_one_target_key_fail_the_job_naming_both() {
    let d = world(40, &[]);
    create_job(&d, request("collide", 3, OnItemError::Fail)).await.unwrap();
    // Written after create's sample of the source (a collision its sample did not see).
    add_to_source(&d, colliding_item());
    drain(&d, 11, true).await;
    let j = job(&d, "collide");
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.clone().unwrap();
    assert_eq!(e.code, "TargetKeyCollision", "{}", e.message);
    let v = j.verification.unwrap();
    assert_eq!((v.collisions, v.missing, v.different, v.extra), (1, 0, 0, 0), "{v:?}");
    assert!(e.message.starts_with("1 source item(s) of src map to a target key"), "{}", e.message);
    // Whichever of the two the target kept, both source keys are named.
    assert!(
        e.message.contains(r#"{"pk":{"S":"o-0003"}}"#) && e.message.contains(r#"{"pk":{"S":"o-twin"}}"#),
        "{}",
        e.message
    );
    assert!(e.message.contains("--on-item-error skip"), "{}", e.message);
}

#[tokio::test]
async fn with_skip_colliding_items_are_reported_and_the_job_completes() {
    let d = world(40, &[]);
    create_job(&d, request("collide-skip", 2, OnItemError::Skip)).await.unwrap();
    add_to_source(&d, colliding_item());
    drain(&d, 12, false).await;
    let j = job(&d, "collide-skip");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.unwrap();
    assert_eq!((v.collisions, v.source.items, v.target.items), (1, 41, 40), "{v:?}");
    assert!(v
        .summary()
        .contains("1 source item(s) not in the target because another source item has the same target key"));
}

/// Source items `which` lose the target's sort key (after create sampled the source).
fn strip_order_no(d: &FakeDeps, which: &[u64]) {
    let mut tables = target_items(d);
    let src = tables.get_mut(&crate::model::TableName::parse("src").unwrap()).unwrap();
    for i in which {
        let mut it = item(*i);
        it.remove("order_no");
        src.items.insert(render_key(&src.key.key_of(&it)), it);
    }
}

#[tokio::test]
async fn create_refuses_a_job_whose_source_sample_holds_items_the_target_cannot_hold_or_collisions() {
    for (lacking, twin) in [(vec![3, 17], false), (vec![], true)] {
        let d = world(40, &lacking);
        if twin {
            add_to_source(&d, colliding_item());
        }
        let before = d.store.state.lock().unwrap().clone();
        let err = create_job(&d, request("doomed", 2, OnItemError::Fail)).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("of the first {} items of src, ", 40 + u64::from(twin))), "{err}");
        if twin {
            assert!(err.contains("1 share a target key with another source item"), "{err}");
            assert!(err.contains(r#"{"pk":{"S":"o-twin"}}"#) && err.contains(r#"{"pk":{"S":"o-0003"}}"#), "{err}");
        } else {
            assert!(err.contains(r#"2 do not fit the key of dst [customer (S), order_no (N)]"#), "{err}");
            assert!(err.contains("missing key attribute \"order_no\""), "{err}");
        }
        assert!(err.contains("--on-item-error skip"), "{err}");
        let after = d.store.state.lock().unwrap().clone();
        assert_eq!(
            (before.jobs, before.cursors, before.writes),
            (after.jobs, after.cursors, after.writes),
            "nothing written"
        );
        assert!(d.outbox.take().is_empty());
        // With skip the job is created, warned of what the sample found.
        let j = create_job(&d, request("doomed", 2, OnItemError::Skip)).await.unwrap();
        assert!(j.warnings.iter().any(|w| w.contains("skipped and reported")), "{:?}", j.warnings);
    }
}

#[tokio::test]
async fn skip_expired_leaves_out_items_whose_ttl_passed_before_the_job_and_counts_them() {
    let d = world(30, &[]);
    let later = (chrono::Utc::now() + chrono::Duration::days(30)).timestamp();
    {
        let mut tables = target_items(&d);
        let src = tables.get_mut(&crate::model::TableName::parse("src").unwrap()).unwrap();
        src.ttl_attribute = Some("expires_at".into());
        for (i, it) in src.items.values_mut().enumerate() {
            match i {
                0..10 => it.insert("expires_at".into(), AttributeValue::N("1000".into())),
                10..20 => it.insert("expires_at".into(), AttributeValue::N(later.to_string())),
                // Not a number: TTL ignores it.
                _ => it.insert("expires_at".into(), AttributeValue::S("1000".into())),
            };
        }
    }
    // Refused where the source has no TTL: the target has none.
    let refused = CreateJobRequest {
        source_table: "dst".into(),
        target_table: "src".into(),
        skip_expired: true,
        ..request("no-ttl", 1, OnItemError::Skip)
    };
    let err = create_job(&d, refused).await.unwrap_err().to_string();
    assert!(err.contains("the source dst has no TTL") && err.contains("drop --skip-expired"), "{err}");

    let req = CreateJobRequest { skip_expired: true, ..request("fresh", 3, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
    drain(&d, 4, true).await;
    let j = job(&d, "fresh");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    assert_eq!((j.items_copied, j.items_expired), (20, 10));
    let v = j.verification.unwrap();
    assert!(v.matched() && v.skipped == 10, "{v:?}");
    let copied = d.tables.items("dst");
    assert_eq!(copied.len(), 20);
    assert!(copied.iter().all(|i| i["expires_at"] != AttributeValue::N("1000".into())));

    // By default they are copied as they are.
    let d = world(5, &[]);
    target_items(&d).get_mut(&crate::model::TableName::parse("src").unwrap()).unwrap().ttl_attribute =
        Some("expires_at".into());
    create_job(&d, request("as-is", 1, OnItemError::Fail)).await.unwrap();
    drain(&d, 4, false).await;
    assert_eq!((job(&d, "as-is").items_copied, job(&d, "as-is").items_expired), (5, 0));
}

#[tokio::test]
async fn a_collision_with_repair_is_counted_once_and_never_written_over_its_twin() {
    let d = world(40, &[]);
    let req = CreateJobRequest { repair: true, ..request("collide-repair", 2, OnItemError::Fail) };
    create_job(&d, req).await.unwrap();
    add_to_source(&d, colliding_item());
    drain(&d, 13, true).await;
    let j = job(&d, "collide-repair");
    let e = j.error.clone().unwrap();
    assert_eq!(e.code, "TargetKeyCollision", "{}", e.message);
    assert!(e.message.starts_with("1 source item(s)"), "counted once: {}", e.message);
    assert_eq!(j.verification.unwrap().repaired_put, 0, "neither twin is written over the other");
}

#[tokio::test]
async fn a_target_item_carrying_another_source_key_but_not_its_content_is_different_not_a_collision() {
    let d = world(30, &[]);
    // With skip, a collision is reported and allowed: a wrong item must not pass as one.
    create_job(&d, request("impostor", 2, OnItemError::Skip)).await.unwrap();
    drain_tampering(&d, |d| {
        let mut tables = target_items(d);
        let t = tables.get_mut(&dst()).unwrap();
        let key = render_key(&extra_key(&item(5)));
        let it = t.items.get_mut(&key).unwrap();
        it.insert("pk".into(), AttributeValue::S("o-0006".into()));
    })
    .await;
    let j = job(&d, "impostor");
    assert_eq!(j.status, JobStatus::Failed);
    let v = j.verification.unwrap();
    assert_eq!((v.different, v.collisions), (1, 0), "{v:?}");
}

#[tokio::test]
async fn a_job_with_repair_is_its_targets_only_writer_and_no_job_reads_a_table_being_written() {
    let d = world(10, &[]);
    {
        let mut tables = target_items(&d);
        let key = tables[&dst()].key.clone();
        tables.insert(
            crate::model::TableName::parse("other").unwrap(),
            crate::fakes::FakeTable { key, ttl_attribute: None, items: Default::default(), stream: None },
        );
    }
    create_job(&d, CreateJobRequest { repair: true, ..request("a", 1, OnItemError::Fail) }).await.unwrap();
    let cases = [
        CreateJobRequest { ..request("into-the-same", 1, OnItemError::Fail) },
        CreateJobRequest {
            source_table: "dst".into(),
            target_table: "other".into(),
            ..request("from-its-target", 1, OnItemError::Fail)
        },
    ];
    for req in cases {
        let err = create_job(&d, req).await.unwrap_err().to_string();
        assert!(
            err.starts_with(r#"job "a" (Running) copies src into dst: "#)
                && err.contains("tablecopy cancel --job-name a"),
            "{err}"
        );
    }
    assert_eq!(d.store.state.lock().unwrap().jobs.len(), 1);
}

#[tokio::test]
async fn items_ttl_may_delete_during_the_verification_are_compared_on_neither_side() {
    let d = world(30, &[]);
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp();
    {
        let mut tables = target_items(&d);
        let src = tables.get_mut(&crate::model::TableName::parse("src").unwrap()).unwrap();
        src.ttl_attribute = Some("expires_at".into());
        for it in src.items.values_mut().take(5) {
            it.insert("expires_at".into(), AttributeValue::N(in_an_hour.to_string()));
        }
    }
    create_job(&d, request("ttl-race", 2, OnItemError::Fail)).await.unwrap();
    // DynamoDB TTL deletes one of them from the source after the copy, before the verification.
    drain_tampering(&d, |d| {
        let mut tables = target_items(d);
        let src = tables.get_mut(&crate::model::TableName::parse("src").unwrap()).unwrap();
        let doomed = src.items.iter().find(|(_, i)| i.contains_key("expires_at")).map(|(k, _)| k.clone()).unwrap();
        src.items.remove(&doomed);
    })
    .await;
    let j = job(&d, "ttl-race");
    assert_eq!(j.status, JobStatus::Completed, "{:?}", j.error);
    let v = j.verification.unwrap();
    assert_eq!((v.source.items, v.target.items, v.skipped), (25, 25, 4), "{v:?}");
}

mod online;
