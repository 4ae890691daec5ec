//! Job lifecycle against LocalStack: pause, resume, cancel, the queue of jobs, write-region
//! changes, refused requests, requests as events, and listing. Each test deploys its own stack
//! and runs the functions' handlers through the local runner on the real queues.

use std::time::Duration;

use anyhow::Result;
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use futures::future::join_all;
use serde_json::json;
use shared::handlers::{
    cancel_job, create_job, create_job_invoke, pause_job, resume_job, set_write_region, CreateJobRequest,
};
use shared::model::{Job, JobName, JobStatus};
use shared::store::{CursorStore, JobStore, ListQuery};
use tests::{
    assert_same_items, create_table, put_items, rekey_tables, request, runner_opts, sample_item, scan_all,
    small_slices, unique, wait_final, wait_for, World,
};

fn name(s: &str) -> JobName {
    JobName::parse(s).unwrap()
}

async fn job(w: &World, j: &str) -> Result<Job> {
    Ok(w.deps.store.get_job(&name(j)).await?.expect("the job exists"))
}

/// A paused or cancelled job has nothing in flight: no cursor waits for a slice, its queues
/// are empty, and a while later its counters and its target have not moved and agree.
async fn assert_nothing_in_flight(w: &World, settled: &Job, target: &str) -> Result<()> {
    let cursors = w.deps.store.cursors(&settled.name).await?;
    assert!(cursors.iter().all(|c| !c.in_flight()), "{}: a cursor is in flight: {cursors:?}", settled.name);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for url in [&w.resources().copy_chunk_queue_url, &w.resources().checkpoint_queue_url] {
        assert_eq!(w.queue_depth(url).await?, 0, "{}: a message is left on {url}", settled.name);
    }
    let later = job(w, settled.name.as_str()).await?;
    assert_eq!(later.items_copied, settled.items_copied, "{}: counters moved after it settled", settled.name);
    let in_target = scan_all(&w.ddb, target).await?.len() as u64;
    assert_eq!(in_target, settled.items_copied, "{}: the target holds what the counters say", settled.name);
    Ok(())
}

fn states(j: &Job) -> Vec<JobStatus> {
    j.history.iter().map(|h| h.status).collect()
}

#[tokio::test]
async fn pause_then_resume_mid_copy_copies_every_item_once() -> Result<()> {
    let w = World::with_tuning("pause", small_slices(100)).await?;
    let (src, dst) = rekey_tables(&w, "pause", 3_000, &[]).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("p1", &src, &dst)).await?;
    wait_for(&w, "p1", "500 items copied", |j| j.items_copied >= 500).await?;

    let asked = pause_job(&w.deps, &name("p1")).await?;
    assert!(asked.pending == Some(JobStatus::Paused) || asked.status == JobStatus::Paused, "{asked:?}");
    let paused = wait_for(&w, "p1", "Paused", |j| j.status == JobStatus::Paused).await?;
    assert!(paused.items_copied < 3_000, "paused mid-copy ({} items)", paused.items_copied);
    assert_nothing_in_flight(&w, &paused, &dst).await?;

    let resumed = resume_job(&w.deps, &name("p1")).await?;
    assert_eq!(resumed.status, JobStatus::Running);
    let done = wait_final(&w, "p1").await?;
    runner.stop().await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(done.items_copied, 3_000, "nothing counted twice, nothing skipped");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 3_000);
    use JobStatus::*;
    assert_eq!(states(&done), [Queued, Running, Paused, Running, Completed]);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn cancel_mid_copy_keeps_what_was_copied_and_starts_the_next_queued_job() -> Result<()> {
    let w = World::with_tuning("cancel", small_slices(100)).await?;
    let (src, dst) = rekey_tables(&w, "cancel", 3_000, &[]).await?;
    let dst2 = unique("cancel-dst2");
    create_table(&w.ddb, &dst2, ("customer", T::S), Some(("order_no", T::N))).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("c1", &src, &dst)).await?;
    let next = create_job(&w.deps, request("c2", &src, &dst2)).await?;
    assert_eq!(next.status, JobStatus::Queued);
    wait_for(&w, "c1", "500 items copied", |j| j.items_copied >= 500).await?;

    cancel_job(&w.deps, &name("c1"), false).await?;
    let cancelled = wait_for(&w, "c1", "Cancelled", |j| j.status == JobStatus::Cancelled).await?;
    assert!(cancelled.items_copied < 3_000, "cancelled mid-copy");
    assert!(cancelled.error.is_none());
    let in_target = scan_all(&w.ddb, &dst).await?.len() as u64;
    assert_eq!(in_target, cancelled.items_copied, "what was copied stays, and the counters say how much");

    let second = wait_final(&w, "c2").await?;
    runner.stop().await;
    assert_eq!(second.status, JobStatus::Completed, "{:?}", second.error);
    assert!(second.started_at.unwrap() >= cancelled.completed_at.unwrap(), "c2 started after c1 was cancelled");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst2).await?, 3_000);
    // A cancelled job never changes (only its event bookkeeping catches up after the move).
    let later = job(&w, "c1").await?;
    assert_eq!(Job { announced: 0, ..later }, Job { announced: 0, ..cancelled }, "a cancelled job never changes");
    w.cleanup(&[&src, &dst, &dst2]).await;
    Ok(())
}

#[tokio::test]
async fn pause_and_cancel_requests_racing_with_in_flight_slices() -> Result<()> {
    // Eight segments of tiny slices: at any moment up to eight slices are in flight.
    let w = World::with_tuning("race", small_slices(40)).await?;
    let (src, dst) = rekey_tables(&w, "race", 4_000, &[]).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, CreateJobRequest { parallelism: Some(8), ..request("r1", &src, &dst) }).await?;
    let mut seen = 0;
    for round in 0..3 {
        wait_for(&w, "r1", "progress", |j| j.items_copied > seen).await?;
        pause_job(&w.deps, &name("r1")).await?;
        let paused = wait_for(&w, "r1", "Paused", |j| j.status == JobStatus::Paused).await?;
        assert_nothing_in_flight(&w, &paused, &dst).await?;
        seen = paused.items_copied;
        assert!(seen < 4_000, "round {round}: the job should still have work");
        resume_job(&w.deps, &name("r1")).await?;
    }
    // A pause withdrawn by a resume while its slices are still in flight: the job goes on.
    wait_for(&w, "r1", "progress", |j| j.items_copied > seen).await?;
    pause_job(&w.deps, &name("r1")).await?;
    let withdrawn = resume_job(&w.deps, &name("r1")).await?;
    assert_eq!(withdrawn.status, JobStatus::Running, "{withdrawn:?}");
    let moving = job(&w, "r1").await?.items_copied;
    wait_for(&w, "r1", "progress after the withdrawn pause", |j| j.items_copied > moving).await?;
    // A pause, and a cancel while the pause still waits for its slices: the cancel wins.
    seen = job(&w, "r1").await?.items_copied;
    wait_for(&w, "r1", "progress", |j| j.items_copied > seen).await?;
    let pausing = pause_job(&w.deps, &name("r1")).await?;
    let cancelling = cancel_job(&w.deps, &name("r1"), false).await?;
    let cancelled = wait_for(&w, "r1", "Cancelled", |j| j.status == JobStatus::Cancelled).await?;
    runner.stop().await;
    assert!(pausing.pending == Some(JobStatus::Paused) || pausing.status == JobStatus::Paused);
    assert!(cancelling.pending == Some(JobStatus::Cancelled) || cancelling.status == JobStatus::Cancelled);
    assert_nothing_in_flight(&w, &cancelled, &dst).await?;
    // Whatever landed in the target is exactly the source's items, each counted once.
    let target = scan_all(&w.ddb, &dst).await?;
    let source = scan_all(&w.ddb, &src).await?;
    let source: std::collections::HashSet<String> = source.iter().map(tests::canonical).collect();
    assert!(target.iter().all(|i| source.contains(&tests::canonical(i))), "only source items in the target");
    let cursors = w.deps.store.cursors(&name("r1")).await?;
    assert_eq!(cursors.iter().map(|c| c.items).sum::<u64>(), cancelled.items_copied);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

/// Jobs of `names`, checked to have run one at a time in creation order: each started after
/// the previous one completed.
fn assert_one_after_another(jobs: &[Job]) {
    let mut by_creation: Vec<&Job> = jobs.iter().collect();
    by_creation.sort_by_key(|j| j.created_at);
    for pair in by_creation.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert_eq!(b.status, JobStatus::Completed, "{:?}", b.error);
        assert!(
            a.completed_at.unwrap() <= b.started_at.unwrap(),
            "{} (created first) ended {:?}, after {} started {:?}",
            a.name,
            a.completed_at,
            b.name,
            b.started_at
        );
    }
}

#[tokio::test]
async fn three_jobs_created_together_run_strictly_one_after_another() -> Result<()> {
    let w = World::new("three").await?;
    let (src, _) = rekey_tables(&w, "three", 1_000, &[]).await?;
    let targets = [unique("three-a"), unique("three-b"), unique("three-c")];
    for t in &targets {
        create_table(&w.ddb, t, ("customer", T::S), Some(("order_no", T::N))).await?;
    }
    let names = ["t1", "t2", "t3"];
    let created = join_all(names.iter().zip(&targets).map(|(j, t)| create_job(&w.deps, request(j, &src, t)))).await;
    let statuses: Vec<JobStatus> = created.into_iter().map(|r| r.map(|j| j.status)).collect::<Result<_, _>>()?;
    assert_eq!(statuses.iter().filter(|s| **s == JobStatus::Running).count(), 1, "{statuses:?}");

    let runner = w.start_runner(runner_opts());
    let mut jobs = Vec::new();
    for j in names {
        jobs.push(wait_final(&w, j).await?);
    }
    runner.stop().await;
    assert_one_after_another(&jobs);
    for t in &targets {
        assert_eq!(assert_same_items(&w.ddb, &src, t).await?, 1_000);
    }
    w.cleanup(&[&src, &targets[0], &targets[1], &targets[2]]).await;
    Ok(())
}

#[tokio::test]
async fn ten_concurrent_creates_leave_one_running_and_nine_queued_in_order() -> Result<()> {
    let w = World::new("ten").await?;
    let (src, dst) = rekey_tables(&w, "ten", 200, &[]).await?;
    let names: Vec<String> = (0..10).map(|i| format!("ten-{i}")).collect();
    let created = join_all(names.iter().map(|j| create_job(&w.deps, request(j, &src, &dst)))).await;
    let created: Vec<Job> = created.into_iter().collect::<Result<_, _>>()?;

    let sched = w.deps.store.scheduler().await?;
    assert_eq!(sched.running.len(), 1, "{sched:?}");
    assert_eq!(sched.queued.len(), 9, "{sched:?}");
    let mut stored = Vec::new();
    for j in &names {
        stored.push(job(&w, j).await?);
    }
    assert_eq!(stored.iter().filter(|j| j.status == JobStatus::Running).count(), 1);
    assert_eq!(stored.iter().filter(|j| j.status == JobStatus::Queued).count(), 9);
    // The queue's order is the creation order, and the running job was created first.
    stored.sort_by_key(|j| j.created_at);
    let by_creation: Vec<&str> = stored.iter().map(|j| j.name.as_str()).collect();
    let scheduled: Vec<&str> = sched.running.iter().chain(&sched.queued).map(|e| e.job.as_str()).collect();
    assert_eq!(by_creation, scheduled);
    assert_eq!(created.iter().filter(|j| j.status == JobStatus::Running).count(), 1, "one create started its job");

    let runner = w.start_runner(runner_opts());
    let mut jobs = Vec::new();
    for j in &names {
        jobs.push(wait_final(&w, j).await?);
    }
    runner.stop().await;
    assert_one_after_another(&jobs);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 200);
    let sched = w.deps.store.scheduler().await?;
    assert!(sched.running.is_empty() && sched.queued.is_empty(), "{sched:?}");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn a_write_region_change_fails_the_running_and_queued_jobs_and_a_new_job_completes() -> Result<()> {
    let w = World::with_tuning("region", small_slices(100)).await?;
    let (src, dst) = rekey_tables(&w, "region", 2_000, &[]).await?;
    let runner = w.start_runner(runner_opts());
    for j in ["g1", "g2", "g3"] {
        create_job(&w.deps, request(j, &src, &dst)).await?;
    }
    wait_for(&w, "g1", "300 items copied", |j| j.items_copied >= 300).await?;
    // The account's write region changes (written as any tool would; no job is told): the
    // running job's next checkpoint finds it.
    w.deps.store.set_write_region("us-west-2", chrono::Utc::now()).await?;
    for j in ["g1", "g2", "g3"] {
        let failed = wait_final(&w, j).await?;
        assert_eq!(failed.status, JobStatus::Failed, "{j}");
        let e = failed.error.expect("a reason");
        assert_eq!(e.code, "WriteRegionChanged", "{j}");
        assert!(e.message.contains("from us-east-1 to us-west-2"), "{j}: {}", e.message);
        assert!(e.message.contains("Re-create the job"), "{j}: {}", e.message);
    }
    assert!(job(&w, "g1").await?.items_copied < 2_000, "g1 failed mid-copy");

    let fresh = create_job(&w.deps, request("g4", &src, &dst)).await?;
    assert_eq!((fresh.status, fresh.write_region.as_str()), (JobStatus::Running, "us-west-2"));
    let done = wait_final(&w, "g4").await?;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 2_000);

    // Setting it back through the CLI's path fails the incomplete jobs of us-west-2 at once.
    // (The runner stops first: its next checkpoint of g5 would otherwise notice the new region
    // and fail g5 itself, between the write of the region and the CLI's own pass.)
    runner.stop().await;
    let running = create_job(&w.deps, request("g5", &src, &dst)).await?;
    assert_eq!(running.status, JobStatus::Running);
    assert_eq!(set_write_region(&w.deps, "us-east-1").await?, 1);
    assert_eq!(job(&w, "g5").await?.error.expect("a reason").code, "WriteRegionChanged");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn every_invalid_transition_is_refused_with_the_current_state_and_changes_nothing() -> Result<()> {
    let w = World::new("refuse").await?;
    let (src, dst) = rekey_tables(&w, "refuse", 50, &[]).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("done", &src, &dst)).await?;
    assert_eq!(wait_final(&w, "done").await?.status, JobStatus::Completed);
    runner.stop().await;
    // No runner from here on: "run" stays Running.
    create_job(&w.deps, request("run", &src, &dst)).await?;
    create_job(&w.deps, request("wait", &src, &dst)).await?;
    create_job(&w.deps, request("gone", &src, &dst)).await?;
    assert_eq!(cancel_job(&w.deps, &name("gone"), false).await?.status, JobStatus::Cancelled);

    let before = w.control_items().await?;
    let depth = w.queue_depth(&w.resources().copy_chunk_queue_url).await?;
    let cases = [
        (
            resume_job(&w.deps, &name("run")).await,
            "cannot resume job \"run\": it is Running. Only a Paused job can be resumed",
        ),
        (
            pause_job(&w.deps, &name("done")).await,
            "cannot pause job \"done\": it is Completed, a final state that never changes",
        ),
        (
            cancel_job(&w.deps, &name("gone"), false).await,
            "cannot cancel job \"gone\": it is already Cancelled, a final state",
        ),
        (pause_job(&w.deps, &name("nope")).await, "job \"nope\" does not exist; `tablecopy list` shows the jobs"),
        (resume_job(&w.deps, &name("nope")).await, "job \"nope\" does not exist"),
        (cancel_job(&w.deps, &name("nope"), false).await, "job \"nope\" does not exist"),
        (
            pause_job(&w.deps, &name("wait")).await,
            "cannot pause job \"wait\": it is Queued. Only a Running job can be paused",
        ),
        (resume_job(&w.deps, &name("done")).await, "cannot resume job \"done\": it is Completed"),
        (cancel_job(&w.deps, &name("done"), false).await, "cannot cancel job \"done\": it is Completed"),
        (resume_job(&w.deps, &name("wait")).await, "it is Queued (place 1 in the queue) and starts by itself"),
    ];
    for (result, expected) in cases {
        let err = result.expect_err(expected).to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
    assert_eq!(w.control_items().await?, before, "no control-table item changed");
    assert_eq!(w.queue_depth(&w.resources().copy_chunk_queue_url).await?, depth, "no message sent");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

fn event(detail_type: &str, detail: serde_json::Value) -> serde_json::Value {
    json!({
        "version": "0", "id": "7bf73129-1428-4cd3-a780-95db273d1602", "detail-type": detail_type,
        "source": "com.example.app", "account": "000000000000", "time": "2026-11-23T12:00:00Z",
        "region": "us-east-1", "resources": [], "detail": detail
    })
}

#[tokio::test]
async fn events_and_invoke_payloads_create_pause_resume_and_cancel_jobs() -> Result<()> {
    let w = World::with_tuning("events", small_slices(100)).await?;
    let (src, dst) = rekey_tables(&w, "events", 2_000, &[]).await?;
    let runner = w.start_runner(runner_opts());
    let detail = json!({"jobName": "ev1", "sourceTable": src, "targetTable": dst, "parallelism": 4});
    let created = create_job_invoke(&w.deps, event("tablecopy.CreateJob", detail)).await?;
    assert_eq!(created["status"], "Running");
    wait_for(&w, "ev1", "progress", |j| j.items_copied >= 300).await?;
    create_job_invoke(&w.deps, event("tablecopy.PauseJob", json!({"jobName": "ev1"}))).await?;
    wait_for(&w, "ev1", "Paused", |j| j.status == JobStatus::Paused).await?;
    let resumed = create_job_invoke(&w.deps, json!({"action": "resume", "jobName": "ev1"})).await?;
    assert_eq!(resumed["status"], "Running");
    let done = wait_final(&w, "ev1").await?;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 2_000);

    // A second job by direct invoke, cancelled by event while it runs.
    create_job_invoke(&w.deps, json!({"jobName": "ev2", "sourceTable": src, "targetTable": dst})).await?;
    create_job_invoke(&w.deps, event("tablecopy.CancelJob", json!({"jobName": "ev2"}))).await?;
    assert_eq!(wait_final(&w, "ev2").await?.status, JobStatus::Cancelled);
    runner.stop().await;

    // The same validation and errors as the CLI's, from every source.
    let same = json!({"jobName": "ev3", "sourceTable": src, "targetTable": src});
    for payload in [event("tablecopy.CreateJob", same.clone()), same] {
        let err = create_job_invoke(&w.deps, payload).await.expect_err("same table").to_string();
        assert!(err.contains("source and target are the same table"), "{err}");
    }
    let err = create_job_invoke(&w.deps, event("tablecopy.ResumeJob", json!({"jobName": "ev1"}))).await;
    assert!(err.expect_err("final").to_string().contains("cannot resume job \"ev1\": it is Completed"));
    let err = create_job_invoke(&w.deps, event("tablecopy.StopJob", json!({"jobName": "ev1"}))).await;
    assert!(err.expect_err("unknown").to_string().contains("unknown detail-type \"tablecopy.StopJob\""));
    assert!(w.deps.store.get_job(&name("ev3")).await?.is_none());
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn list_pages_through_sixty_jobs_newest_first_with_a_status_filter() -> Result<()> {
    let w = World::new("list").await?;
    let (src, dst) = (unique("list-src"), unique("list-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    put_items(&w.ddb, &src, vec![sample_item(1, None)], 1).await?;
    // 60 jobs; no runner, so the first stays Running and the rest Queued; every 8th is cancelled.
    let total = 60;
    for i in 0..total {
        let j = format!("list-{i:03}");
        create_job(&w.deps, CreateJobRequest { parallelism: Some(1), ..request(&j, &src, &dst) }).await?;
        if i % 8 == 7 {
            cancel_job(&w.deps, &name(&j), false).await?;
        }
    }
    let all_pages = |status: Option<JobStatus>, limit: usize| {
        let store = &w.deps.store;
        async move {
            let mut query = ListQuery { status, limit, after: None };
            let (mut jobs, mut pages) = (Vec::new(), 0);
            loop {
                let page = store.list_jobs(&query).await?;
                assert!(page.jobs.len() <= limit);
                pages += 1;
                jobs.extend(page.jobs);
                match page.next {
                    Some(next) => query.after = Some(next),
                    None => return anyhow::Ok((jobs, pages)),
                }
            }
        }
    };
    let (jobs, pages) = all_pages(None, 25).await?;
    assert_eq!((jobs.len(), pages), (total, 3));
    let names: Vec<String> = jobs.iter().map(|j| j.name.to_string()).collect();
    let expected: Vec<String> = (0..total).rev().map(|i| format!("list-{i:03}")).collect();
    assert_eq!(names, expected, "every job once, newest first");

    let (cancelled, _) = all_pages(Some(JobStatus::Cancelled), 7).await?;
    assert_eq!(cancelled.len(), total / 8);
    assert!(cancelled.iter().all(|j| j.status == JobStatus::Cancelled));
    assert!(cancelled.windows(2).all(|p| p[0].created_at > p[1].created_at), "newest first");
    let (queued, _) = all_pages(Some(JobStatus::Queued), 100).await?;
    assert_eq!(queued.len(), total - total / 8 - 1);
    let (running, _) = all_pages(Some(JobStatus::Running), 10).await?;
    assert_eq!(running.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["list-000"]);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}
