//! Faults against LocalStack: late, duplicated and reordered messages, races of requests with
//! slices in flight, killed runners and throttled tables. Every case ends with exact counters
//! and the source and target compared item by item.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use shared::control::slice_message;
use shared::error::{AwsError, ErrorKind};
use shared::handlers::{cancel_job, create_job, pause_job, resume_job, CreateJobRequest, Deps};
use shared::messages::encode;
use shared::model::{
    Cursor, Item, Job, JobName, JobSpec, JobStatus, KeyAttribute, KeySchema, KeyType, OnItemError, Phase, StatusChange,
    TableName, VerifyMode,
};
use shared::queue::{Outbox, QueueKind, SqsOutbox};
use shared::scheduler::Entry;
use shared::store::{CursorStore, JobStore, Transition};
use tests::{
    assert_same_items, rekey_tables, request, runner_opts, scan_all, small_slices, wait_final, wait_for, wait_settled,
    World,
};

fn name(s: &str) -> JobName {
    JobName::parse(s).unwrap()
}

/// The first slice of every segment of `job`, as its start sent it.
async fn first_slices(w: &World, job: &str) -> Result<Vec<String>> {
    let j = w.deps.store.get_job(&name(job)).await?.expect("job");
    let tuning = &w.deps.config.tuning;
    Ok((0..j.spec.parallelism)
        .map(|segment| encode(&slice_message(&j, &Cursor::start(segment), 0, None, tuning, None)))
        .collect())
}

/// The slice every unfinished segment of `job` expects next (as a late launch would send it).
async fn next_slices(w: &World, job: &str) -> Result<Vec<String>> {
    let j = w.deps.store.get_job(&name(job)).await?.expect("job");
    let tuning = &w.deps.config.tuning;
    let cursors = w.deps.store.cursors(&j.name).await?;
    Ok(cursors
        .iter()
        .filter(|c| !c.done)
        .map(|c| encode(&slice_message(&j, c, c.seq, c.last_key.clone(), tuning, None)))
        .collect())
}

/// The application writes to the target after the copy: `n` items get a new attribute.
async fn application_updates(w: &World, target: &str, n: usize) -> Result<Vec<Item>> {
    let mut items = scan_all(&w.ddb, target).await?;
    items.sort_by_key(tests::canonical);
    let mut updated = Vec::new();
    for mut item in items.into_iter().take(n) {
        item.insert("app".into(), AttributeValue::S("written after cutover".into()));
        w.ddb.put_item().table_name(target).set_item(Some(item.clone())).send().await?;
        updated.push(item);
    }
    Ok(updated)
}

/// Send `bodies` to the copy-chunk queue and wait until the runner has handled them and
/// whatever they caused.
async fn deliver_late(w: &World, bodies: &[String]) -> Result<()> {
    for b in bodies {
        w.sqs.send_message().queue_url(&w.resources().copy_chunk_queue_url).message_body(b).send().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.queues_handled().await.context("the late messages were not handled")
}

/// Every item the application wrote is still in the target as it wrote it.
async fn assert_application_writes_kept(w: &World, target: &str, written: &[Item]) -> Result<()> {
    // (`written` may be every item of the target, or those the application changed.)
    let now: std::collections::HashSet<String> = scan_all(&w.ddb, target).await?.iter().map(tests::canonical).collect();
    let reverted = written.iter().filter(|i| !now.contains(&tests::canonical(i))).count();
    assert_eq!(reverted, 0, "{reverted} of {} application writes were reverted by a late slice", written.len());
    Ok(())
}

#[tokio::test]
async fn a_late_copy_chunk_message_after_completed_writes_nothing() -> Result<()> {
    let w = World::with_tuning("late-done", small_slices(50)).await?;
    let (src, dst) = rekey_tables(&w, "late-done", 1_000, &[]).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("late", &src, &dst)).await?;
    // (Settled: the move to Completed and the write that records it published are two
    // writes, and the control table is compared from the second one on.)
    let done = wait_settled(&w, "late", "a final state", |j| j.status.is_final()).await?;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 1_000);

    let control = w.control_items().await?;
    let written = application_updates(&w, &dst, 50).await?;
    deliver_late(&w, &first_slices(&w, "late").await?).await?;
    runner.stop().await;
    assert_application_writes_kept(&w, &dst, &written).await?;
    assert_eq!(scan_all(&w.ddb, &dst).await?.len(), 1_000);
    assert_eq!(w.control_items().await?, control, "the control table did not change");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn pause_and_resume_hammered_with_sixteen_segments_in_flight_still_completes() -> Result<()> {
    let w = World::with_tuning("hammer", small_slices(5)).await?;
    let tables = hammer(&w, 4_000).await?;
    w.cleanup(&[&tables.0, &tables.1]).await;
    Ok(())
}

#[tokio::test]
async fn pause_and_resume_hammered_on_a_throttled_control_table_still_completes() -> Result<()> {
    let faulty = tests::FaultyLocalStack::start(4568, "0.2")?;
    let sdk = tests::localstack_at(&faulty.endpoint).await?;
    let params = [("CopyChunkVisibilityTimeout".to_string(), "20".to_string())];
    let w = World::deploy_on(sdk, "hammer-thr", small_slices(10), &params).await?;
    let tables = hammer(&w, 2_000).await?;
    assert!(faulty.throttled_requests() > 10, "fault injection was active");
    w.cleanup(&[&tables.0, &tables.1]).await;
    Ok(())
}

/// Hammer pause and resume on a 16-segment copy of `total` items, then require it to
/// complete exactly. Returns the source and target tables.
async fn hammer(w: &World, total: u64) -> Result<(String, String)> {
    let (src, dst) = rekey_tables(w, "hammer", total, &[]).await?;
    let runner = w.start_runner(shared::runner::RunnerOptions { concurrency: 16, ..runner_opts() });
    create_job(&w.deps, CreateJobRequest { parallelism: Some(16), ..request("hammer", &src, &dst) }).await?;
    tests::wait_for(w, "hammer", "progress", |j| j.items_copied >= 100).await?;
    // Four tasks pause then resume at once, again and again, during the first three quarters
    // of the copy: resumes land while slices of a pause are still being checkpointed. A request the
    // job's state refuses at that moment (another task's pause won) is part of the race.
    let one = |task: u64| async move {
        let mut rounds = 0u32;
        while rounds < 150 && w.deps.store.get_job(&name("hammer")).await?.expect("job").items_copied < total * 3 / 4 {
            let _ = pause_job(&w.deps, &name("hammer")).await;
            if (rounds as u64 + task).is_multiple_of(3) {
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..30))).await;
            }
            let _ = resume_job(&w.deps, &name("hammer")).await;
            rounds += 1;
        }
        anyhow::Ok(rounds)
    };
    let rounds: Vec<u32> = futures::future::try_join_all((0..4).map(one)).await?;
    assert!(rounds.iter().sum::<u32>() >= 24, "only {rounds:?} rounds of pause and resume");
    // Whatever the last request was, the job ends up running.
    let last = w.deps.store.get_job(&name("hammer")).await?.expect("job");
    if last.status == JobStatus::Paused || last.pending.is_some() {
        resume_job(&w.deps, &name("hammer")).await?;
    }
    let done = wait_final(w, "hammer").await?;
    runner.stop().await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.items_copied, total, "every item counted once");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, total as usize);
    Ok((src, dst))
}

#[tokio::test]
async fn late_copy_chunk_messages_while_paused_and_after_cancelled_write_nothing() -> Result<()> {
    let w = World::with_tuning("late-stop", small_slices(50)).await?;
    let (src, dst) = rekey_tables(&w, "late-stop", 2_000, &[]).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("ls", &src, &dst)).await?;
    wait_for(&w, "ls", "progress", |j| j.items_copied >= 200).await?;
    pause_job(&w.deps, &name("ls")).await?;
    let paused = wait_settled(&w, "ls", "Paused", |j| j.status == JobStatus::Paused).await?;
    for state in [JobStatus::Paused, JobStatus::Cancelled] {
        if state == JobStatus::Cancelled {
            cancel_job(&w.deps, &name("ls"), false).await?;
        }
        let settled = wait_settled(&w, "ls", state.as_str(), |j| j.status == state).await?;
        assert_eq!(settled.status, state);
        let target = scan_all(&w.ddb, &dst).await?;
        assert_eq!(target.len() as u64, paused.items_copied, "{state}: the target holds what was counted");
        let control = w.control_items().await?;
        // The slices each segment expects next (a late launch), and the first ones again.
        let mut late = next_slices(&w, "ls").await?;
        late.extend(first_slices(&w, "ls").await?);
        deliver_late(&w, &late).await?;
        assert_application_writes_kept(&w, &dst, &target).await?;
        assert_eq!(scan_all(&w.ddb, &dst).await?.len(), target.len(), "{state}: nothing written");
        assert_eq!(w.control_items().await?, control, "{state}: the control table did not change");
    }
    runner.stop().await;
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

/// An outbox that delivers every slice result twice, each copy after a random delay of up
/// to 3 s: duplicated and reordered checkpoint messages, as SQS may deliver them.
struct Duplicating {
    inner: SqsOutbox,
    sqs: aws_sdk_sqs::Client,
    checkpoint_url: String,
}

#[async_trait]
impl Outbox for Duplicating {
    async fn send_delayed(&self, to: QueueKind, body: String, delay_seconds: u32) -> Result<(), AwsError> {
        self.inner.send_delayed(to, body, delay_seconds).await
    }

    async fn send(&self, to: QueueKind, bodies: Vec<String>) -> Result<(), AwsError> {
        if to != QueueKind::Checkpoint {
            return self.inner.send(to, bodies).await;
        }
        for body in bodies.iter().flat_map(|b| [b, b]) {
            self.sqs
                .send_message()
                .queue_url(&self.checkpoint_url)
                .message_body(body)
                .delay_seconds(rand::random_range(0..=3))
                .send()
                .await
                .map_err(|e| AwsError::new(ErrorKind::Transient, "sending a duplicate", e.to_string()))?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn duplicated_and_reordered_checkpoint_messages_count_every_item_once() -> Result<()> {
    let w = World::with_tuning("dup", small_slices(40)).await?;
    let (src, dst) = rekey_tables(&w, "dup", 2_000, &[]).await?;
    let d = &w.deps;
    let chaos = Arc::new(Deps {
        store: d.store.clone(),
        outbox: Duplicating {
            inner: d.outbox.clone(),
            sqs: w.sqs.clone(),
            checkpoint_url: w.resources().checkpoint_queue_url.clone(),
        },
        tables: d.tables.clone(),
        responder: d.responder.clone(),
        events: d.events.clone(),
        streams: d.streams.clone(),
        config: d.config.clone(),
    });
    let runner = w.start_runner_with(chaos, runner_opts());
    create_job(&w.deps, CreateJobRequest { parallelism: Some(6), ..request("dup", &src, &dst) }).await?;
    let done = wait_final(&w, "dup").await?;
    runner.stop().await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.items_copied, 2_000, "every item counted once");
    let cursors = w.deps.store.cursors(&done.name).await?;
    assert_eq!(cursors.iter().map(|c| c.items).sum::<u64>(), 2_000);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 2_000);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn the_runner_killed_three_times_at_random_points_still_copies_exactly() -> Result<()> {
    let w = World::with_tuning("kills", small_slices(30)).await?;
    let (src, dst) = rekey_tables(&w, "kills", 3_000, &[]).await?;
    create_job(&w.deps, request("kills", &src, &dst)).await?;
    for kill in 0..3 {
        let runner = w.start_runner(runner_opts());
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..2_500))).await;
        runner.kill().await;
        let j = w.deps.store.get_job(&name("kills")).await?.expect("job");
        assert!(!j.status.is_final(), "kill {kill}: the job finished before the runner was killed");
    }
    let runner = w.start_runner(runner_opts());
    let done = wait_final(&w, "kills").await?;
    runner.stop().await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.items_copied, 3_000, "every item counted exactly once");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 3_000);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn ten_creates_at_once_on_a_throttled_control_table_all_run_one_after_another() -> Result<()> {
    // A LocalStack that throttles one DynamoDB request in five, and functions whose control
    // table client tries each request at most 3 times: throttling reaches the handlers, and
    // their messages go back to their queues.
    let faulty = tests::FaultyLocalStack::start(4569, "0.2")?;
    let sdk = tests::localstack_at(&faulty.endpoint).await?;
    let params = [
        ("CopyChunkVisibilityTimeout".to_string(), "20".to_string()),
        ("CheckpointVisibilityTimeout".to_string(), "5".to_string()),
    ];
    let w = World::deploy_on(sdk, "ten-thr", small_slices(100), &params).await?;
    let (src, dst) = rekey_tables(&w, "ten-thr", 300, &[]).await?;
    let names: Vec<String> = (0..10).map(|i| format!("thr-{i}")).collect();
    // Ten create events at once on the requests queue, as the deployment's rule delivers them.
    let sends = names.iter().map(|j| {
        let detail = serde_json::json!({"jobName": j, "sourceTable": src, "targetTable": dst, "parallelism": 2});
        let event = serde_json::json!({"version": "0", "id": j, "detail-type": "tablecopy.CreateJob",
            "source": w.outputs["EventSource"], "account": "000000000000", "time": "2026-11-25T12:00:00Z",
            "region": "us-east-1", "resources": [], "detail": detail});
        w.sqs.send_message().queue_url(&w.resources().requests_queue_url).message_body(event.to_string()).send()
    });
    futures::future::try_join_all(sends).await?;
    let runner = w.start_runner_with(w.control_with_attempts(3), runner_opts());
    let mut jobs = Vec::new();
    for j in &names {
        for _ in 0..600 {
            if w.deps.store.get_job(&name(j)).await?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        jobs.push(wait_final(&w, j).await?);
    }
    runner.stop().await;
    jobs.sort_by_key(|j| j.created_at);
    for pair in jobs.windows(2) {
        assert_eq!(pair[1].status, JobStatus::Completed, "{:?}", pair[1].error);
        assert!(pair[0].completed_at <= pair[1].started_at, "{} and {} overlapped", pair[0].name, pair[1].name);
    }
    assert!(jobs.iter().all(|j| j.items_copied == 300 && j.status == JobStatus::Completed), "{jobs:?}");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 300);
    let sched = w.deps.store.scheduler().await?;
    assert!(sched.running.is_empty() && sched.queued.is_empty(), "{sched:?}");
    assert_eq!(w.queue_depth(&w.outputs["RequestsDeadLetterQueueUrl"]).await?, 0, "no request was lost");
    assert!(faulty.throttled_requests() > 10, "fault injection was active");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

/// A job as create records it (Queued, every cursor parked), copying `src` keyed `pk` into
/// `dst` keyed `customer` + `order_no`.
fn recorded(job: &str, src: &str, dst: &str, parallelism: u32) -> (Job, Vec<Cursor>) {
    let attr = |n: &str, kind| KeyAttribute { name: n.into(), kind };
    let now = chrono::Utc::now();
    let job = Job {
        name: name(job),
        spec: JobSpec {
            source: TableName::parse(src).unwrap(),
            target: TableName::parse(dst).unwrap(),
            parallelism,
            parallelism_from_size: false,
            on_item_error: OnItemError::Fail,
            max_write_rate: None,
            max_read_rate: None,
            slice: None,
            source_ttl: None,
            verify: VerifyMode::Full,
            repair: false,
            skip_expired: false,
            mode: Default::default(),
            stream: None,
            source_key: KeySchema { partition: attr("pk", KeyType::S), sort: None },
            target_key: KeySchema { partition: attr("customer", KeyType::S), sort: Some(attr("order_no", KeyType::N)) },
        },
        status: JobStatus::Queued,
        write_region: "us-east-1".into(),
        estimated_total: 0,
        estimated_bytes: 0,
        items_copied: 0,
        bytes_copied: 0,
        items_rejected: 0,
        items_expired: 0,
        throttles: 0,
        rejected_samples: vec![],
        segments_done: 0,
        progress_at: None,
        created_at: now,
        started_at: None,
        updated_at: now,
        completed_at: None,
        duration_ms: None,
        error: None,
        version: 0,
        epoch: 0,
        history: vec![StatusChange { status: JobStatus::Queued, at: now }],
        pending: None,
        launched_at: None,
        stalled: 0,
        announced: 0,
        origin: None,
        target_empty_at_start: Some(true),
        warnings: vec![],
        phase: Phase::Copying,
        verify_started_at: None,
        verification: None,
        replay_from: None,
        complete_requested_at: None,
        stream_listed_at: None,
        replay: None,
    };
    (job, (0..parallelism).map(Cursor::start).collect())
}

#[tokio::test]
async fn the_reconciler_finishes_a_job_never_scheduled_and_a_launch_that_sent_nothing() -> Result<()> {
    let tuning = shared::config::Tuning { launch_grace: Duration::from_secs(2), ..small_slices(100) };
    let w = World::with_tuning("reconcile", tuning).await?;
    let (src, dst) = rekey_tables(&w, "reconcile", 1_500, &[]).await?;
    let store = &w.deps.store;

    // A job recorded Queued, whose process died before scheduling it (a slot is free).
    let (job, cursors) = recorded("never-scheduled", &src, &dst, 4);
    let mut sched = store.scheduler().await?.next();
    sched.queued.push(Entry { job: job.name.clone(), region: "us-east-1".into() });
    store.insert_job(&job, &sched).await?;
    store.create_cursors(&job.name, &cursors).await?;
    let runner = w.start_runner(runner_opts());
    let done = wait_final(&w, "never-scheduled").await?;
    // Under load a launch can outlast its grace and be repeated: the duplicate slices change
    // nothing, but they must be handled before the next job's premise (no message anywhere).
    w.queues_handled().await?;
    runner.stop().await;
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 1_500), "{:?}", done.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 1_500);

    // A job started, whose process died before sending its first slices: Running, every
    // segment parked, no message anywhere.
    let dst2 = tests::unique("reconcile-dst2");
    tests::create_table(
        &w.ddb,
        &dst2,
        ("customer", aws_sdk_dynamodb::types::ScalarAttributeType::S),
        Some(("order_no", aws_sdk_dynamodb::types::ScalarAttributeType::N)),
    )
    .await?;
    let (job, cursors) = recorded("never-launched", &src, &dst2, 4);
    let mut sched = store.scheduler().await?.next();
    sched.queued.push(Entry { job: job.name.clone(), region: "us-east-1".into() });
    store.insert_job(&job, &sched).await?;
    store.create_cursors(&job.name, &cursors).await?;
    let mut started = sched.next();
    started.running.push(started.queued.remove(0));
    let start = Transition {
        from: JobStatus::Queued,
        to: JobStatus::Running,
        epoch: 0,
        at: chrono::Utc::now(),
        error: None,
        started: true,
        duration_ms: None,
        pending: None,
        progress: None,
        verification: None,
        scheduler: Some(started),
    };
    assert_eq!(store.transition(&job.name, &start).await?, shared::store::Applied::Yes);
    assert_eq!(w.queue_depth(&w.resources().copy_chunk_queue_url).await?, 0);
    let runner = w.start_runner(runner_opts());
    let done = wait_final(&w, "never-launched").await.context("the reconciler launches it")?;
    runner.stop().await;
    assert_eq!((done.status, done.items_copied), (JobStatus::Completed, 1_500), "{:?}", done.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst2).await?, 1_500);
    w.cleanup(&[&src, &dst, &dst2]).await;
    Ok(())
}
