//! The control table's contract, run on both adapters: LocalStack's real DynamoDB through
//! `DynamoStore`, and the in-memory `MemoryStore` the handler tests use. Each case records
//! what every call returned and what the cursors and the job look like after it; the two
//! transcripts must be equal, and each is checked against what the rules say. So the fake
//! decides continue / park / stale, epochs and conditions exactly as the real store does.

use std::collections::HashMap;

use anyhow::Result;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use shared::model::{
    Cursor, Item, Job, JobName, JobSpec, JobStatus, KeyAttribute, KeySchema, KeyType, MismatchKind, OnItemError, Pass,
    Phase, Progress, RejectedItem, SegmentCheck, StatusChange, TableName, Verification, VerifyMode,
};
use shared::scheduler::{Entry, Scheduler};
use shared::store::memory::MemoryStore;
use shared::store::{ControlStore, SliceCommit, Transition};
use tests::World;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, second).unwrap()
}

fn key(k: &str) -> Item {
    HashMap::from([("pk".to_string(), AttributeValue::S(k.into()))])
}

fn job(name: &str) -> Job {
    let schema = KeySchema { partition: KeyAttribute { name: "pk".into(), kind: KeyType::S }, sort: None };
    Job {
        name: JobName::parse(name).unwrap(),
        spec: JobSpec {
            source: TableName::parse("src-table").unwrap(),
            target: TableName::parse("dst-table").unwrap(),
            parallelism: 2,
            parallelism_from_size: false,
            on_item_error: OnItemError::Skip,
            max_write_rate: None,
            max_read_rate: None,
            slice: None,
            source_ttl: None,
            verify: VerifyMode::Full,
            repair: false,
            skip_expired: false,
            mode: Default::default(),
            stream: None,
            source_key: schema.clone(),
            target_key: schema,
        },
        status: JobStatus::Queued,
        write_region: "us-east-1".into(),
        estimated_total: 10,
        estimated_bytes: 1_000,
        items_copied: 0,
        bytes_copied: 0,
        items_rejected: 0,
        items_expired: 0,
        throttles: 0,
        rejected_samples: vec![],
        segments_done: 0,
        progress_at: None,
        created_at: at(0),
        started_at: None,
        updated_at: at(0),
        completed_at: None,
        duration_ms: None,
        error: None,
        version: 0,
        epoch: 0,
        history: vec![StatusChange { status: JobStatus::Queued, at: at(0) }],
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
    }
}

fn commit(segment: u32, seq: u64, next: Option<&str>, done: bool, items: u64, samples: usize) -> SliceCommit {
    SliceCommit {
        segment,
        seq,
        next_key: next.map(key),
        done,
        items,
        bytes: items * 100,
        rejected: samples as u64,
        throttles: seq,
        expired: 0,
        samples: (0..samples).map(|i| RejectedItem { key: format!("k{seq}-{i}"), reason: "r".into() }).collect(),
        at: at(10 + seq as u32),
        copy: format!("copy-{segment}-{seq}"),
        rate: (seq == 2).then_some(12.5),
        pass: None,
        check: None,
        shard: None,
    }
}

/// What a store answered and held, call by call.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    fn note(&mut self, what: &str, value: impl std::fmt::Debug) {
        self.0.push(format!("{what}: {value:?}"));
    }
}

/// The cursor as the transcript shows it (everything a rule reads, and the counters).
fn shown(c: &Cursor) -> String {
    format!(
        "seg {} seq {} key {:?} done {} parked {} epoch {} stop {} items {} bytes {} rejected {} samples {} at {:?} \
         owner {:?} lease {:?} committed by {:?} pass {:?} check {:?}",
        c.segment,
        c.seq,
        c.last_key.as_ref().and_then(|k| k.get("pk")).map(|v| v.as_s().unwrap().clone()),
        c.done,
        c.parked,
        c.epoch,
        c.stop,
        c.items,
        c.bytes,
        c.rejected,
        c.samples.len(),
        c.updated_at,
        c.owner,
        c.lease_until,
        c.committed_by,
        c.pass,
        c.check
    )
}

async fn cursor<S: ControlStore>(s: &S, name: &JobName, segment: u32) -> Result<String> {
    Ok(s.cursor(name, segment).await?.as_ref().map(shown).unwrap_or_else(|| "none".into()))
}

/// The contract, on one store; returns the transcript.
async fn contract<S: ControlStore>(s: &S, name: &str) -> Result<Transcript> {
    let mut t = Transcript::default();
    let j = job(name);
    let n = j.name.clone();
    let mut sched = Scheduler::default().next();
    sched.queued.push(Entry { job: n.clone(), region: "us-east-1".into() });
    s.insert_job(&j, &sched).await?;
    s.create_cursors(&j.name, &[Cursor::start(0), Cursor::start(1)]).await?;
    t.note("create again", s.create_cursors(&j.name, &[Cursor { seq: 9, ..Cursor::start(1) }]).await.is_ok());
    t.note("insert again", matches!(s.insert_job(&j, &sched.next()).await, Err(shared::store::InsertError::JobExists)));
    t.note("new cursor", cursor(s, &n, 0).await?);

    // A new job's cursors are stopped: a commit of its slice 0 would park.
    t.note("commit while stopped", s.commit_slice(&n, &commit(1, 0, Some("a"), false, 1, 0)).await?);
    t.note("cursor 1", cursor(s, &n, 1).await?);

    // The job starts (epoch 0 -> 1): a wrong epoch is refused, the right one applies.
    let start = |epoch| Transition {
        from: JobStatus::Queued,
        to: JobStatus::Running,
        epoch,
        at: at(1),
        error: None,
        started: true,
        duration_ms: None,
        pending: None,
        progress: None,
        verification: None,
        scheduler: None,
    };
    t.note("start at a wrong epoch", s.transition(&n, &start(5)).await?);
    t.note("start", s.transition(&n, &start(0)).await?);
    let running = s.get_job(&n).await?.unwrap();
    t.note("job", (running.status, running.epoch, running.started_at, running.launched_at));

    // Launch: bring cursor 0 to epoch 1 going on; older or equal epochs change nothing.
    t.note("sync 0 to 1", s.sync_cursor(&n, 0, 1, false, at(2)).await?.as_ref().map(shown));
    t.note("sync 0 to 1 again, stop", s.sync_cursor(&n, 0, 1, true, at(2)).await?.as_ref().map(shown));
    t.note("sync 0 to 0, stop", s.sync_cursor(&n, 0, 0, true, at(2)).await?.as_ref().map(shown));
    t.note("sync a missing cursor", s.sync_cursor(&n, 7, 1, false, at(2)).await?.as_ref().map(shown));
    t.note("unpark another slice", s.unpark(&n, 0, 3, 1, at(3)).await?);
    t.note("unpark for an older epoch", s.unpark(&n, 0, 0, 0, at(3)).await?);
    t.note("unpark", s.unpark(&n, 0, 0, 1, at(3)).await?);
    t.note("unpark again", s.unpark(&n, 0, 0, 1, at(3)).await?);

    // Copies of slice 0 take the segment one at a time, each until its lease runs out.
    t.note("claim another slice", s.claim(&n, 0, 5, "a", at(9), at(4)).await?);
    t.note("claim", s.claim(&n, 0, 0, "a", at(9), at(4)).await?);
    t.note("claim held by another", s.claim(&n, 0, 0, "b", at(12), at(5)).await?);
    t.note("claim again by its holder", s.claim(&n, 0, 0, "a", at(9), at(5)).await?);
    t.note("cursor 0", cursor(s, &n, 0).await?);
    t.note("claim after the lease", s.claim(&n, 0, 0, "copy-0-0", at(12), at(9)).await?);
    t.note("cursor 0", cursor(s, &n, 0).await?);

    // Commits: continue, stale duplicate, with samples (at most 10 kept), park under stop.
    let by_another = SliceCommit { copy: "copy-x".into(), ..commit(0, 0, Some("b"), false, 5, 0) };
    t.note("commit 0 by a copy that does not hold it", s.commit_slice(&n, &by_another).await?);
    t.note("commit 0", s.commit_slice(&n, &commit(0, 0, Some("b"), false, 5, 0)).await?);
    t.note("commit 0 again", s.commit_slice(&n, &commit(0, 0, Some("b"), false, 5, 0)).await?);
    let c0 = s.cursor(&n, 0).await?.unwrap();
    t.note("commit 0 is its own", shared::rules::committed_by(&c0, 0, "copy-0-0"));
    t.note("commit 0 is another copy's", shared::rules::committed_by(&c0, 0, "copy-0-1"));
    t.note("commit 1", s.commit_slice(&n, &commit(0, 1, Some("c"), false, 5, 7)).await?);
    t.note("commit 2", s.commit_slice(&n, &commit(0, 2, Some("d"), false, 5, 7)).await?);
    t.note("cursor 0", cursor(s, &n, 0).await?);
    t.note("sync 0 to 2, stop", s.sync_cursor(&n, 0, 2, true, at(20)).await?.as_ref().map(shown));
    t.note("claim while stopped", s.claim(&n, 0, 3, "c", at(30), at(20)).await?);
    t.note("commit 3 parks", s.commit_slice(&n, &commit(0, 3, Some("e"), false, 5, 0)).await?);
    t.note("unpark while stopped", s.unpark(&n, 0, 4, 2, at(21)).await?);
    // A partial slice at a segment's start keeps the cursor at the start, not done.
    t.note("sync 1 to 2, go", s.sync_cursor(&n, 1, 2, false, at(22)).await?.as_ref().map(shown));
    t.note("partial at the start", s.commit_slice(&n, &commit(1, 1, None, false, 0, 0)).await?);
    t.note("cursor 1", cursor(s, &n, 1).await?);
    t.note("segment done", s.commit_slice(&n, &commit(1, 2, None, true, 4, 0)).await?);
    t.note("commit after done", s.commit_slice(&n, &commit(1, 3, Some("z"), false, 4, 0)).await?);
    // Verification: a done segment begins its next pass from its start, once.
    let mut check = SegmentCheck::default();
    check.found(MismatchKind::Missing, "k".into());
    t.note(
        "begin a pass it is not done with",
        s.begin_pass(&n, 1, Pass::VerifySource, Pass::VerifyTarget, &check, at(23)).await?,
    );
    t.note("begin a pass", s.begin_pass(&n, 1, Pass::Copy, Pass::VerifySource, &check, at(23)).await?);
    t.note("begin the pass again", s.begin_pass(&n, 1, Pass::Copy, Pass::VerifySource, &check, at(23)).await?);
    t.note("cursor 1", cursor(s, &n, 1).await?);
    t.note("commit 3 of the old pass", s.commit_slice(&n, &commit(1, 3, Some("y"), false, 0, 0)).await?);
    let onwards = SliceCommit {
        pass: Some(Pass::VerifyTarget),
        check: Some(SegmentCheck { skipped: 3, ..check.clone() }),
        ..commit(1, 4, Some("x"), false, 0, 0)
    };
    t.note("commit 4 ends the pass's scan", s.commit_slice(&n, &onwards).await?);
    t.note("cursor 1", cursor(s, &n, 1).await?);
    let verification = Verification { skipped: 3, differing_buckets: vec![1, 2], ..Default::default() };
    t.note("record the verification", s.set_verification(&n, &verification).await?);
    t.note("record it again", s.set_verification(&n, &verification).await?);
    t.note("cursor 1", cursor(s, &n, 1).await?);
    t.note("commit on a missing cursor", s.commit_slice(&n, &commit(9, 0, None, true, 1, 0)).await?);
    let all = s.cursors(&n).await?;
    t.note("cursors", all.iter().map(shown).collect::<Vec<_>>());
    t.note("progress", Progress::of(&all));

    // Requests on the job: conditional on its state and epoch, each raising the epoch.
    t.note("pause at a wrong epoch", s.request_stop(&n, JobStatus::Paused, None, 0, at(30)).await?);
    t.note("pause", s.request_stop(&n, JobStatus::Paused, None, 1, at(30)).await?);
    t.note("pause again", s.request_stop(&n, JobStatus::Paused, None, 2, at(30)).await?);
    t.note(
        "cancel replacing the pause",
        s.request_stop(&n, JobStatus::Cancelled, Some(JobStatus::Paused), 2, at(31)).await?,
    );
    t.note("withdraw a pause", s.withdraw_stop(&n, JobStatus::Paused, 3, at(32)).await?);
    t.note("withdraw the cancel", s.withdraw_stop(&n, JobStatus::Cancelled, 3, at(32)).await?);
    t.note("cancel", s.request_stop(&n, JobStatus::Cancelled, None, 4, at(33)).await?);
    let j = s.get_job(&n).await?.unwrap();
    t.note("job", (j.status, j.pending, j.epoch, j.launched_at, j.updated_at));

    // Counters: one refresher at a time, and only the one that claimed writes.
    t.note("claim", s.claim_progress(&n, None, at(40)).await?);
    t.note("claim with an old view", s.claim_progress(&n, None, at(41)).await?);
    t.note("write another turn", s.write_progress(&n, &Progress::of(&all), at(39)).await?);
    t.note("write", s.write_progress(&n, &Progress::of(&all), at(40)).await?);
    t.note("claim the next turn", s.claim_progress(&n, Some(at(40)), at(45)).await?);
    s.set_stalled(&n, 2).await?;
    let j = s.get_job(&n).await?.unwrap();
    t.note(
        "job",
        (
            j.items_copied,
            j.bytes_copied,
            j.items_rejected,
            j.rejected_samples.len(),
            j.segments_done,
            j.progress_at,
            j.stalled,
        ),
    );

    // When an online job last listed its stream: recorded as given (a job that does not exist
    // gets nothing).
    s.mark_listed(&n, at(45)).await?;
    t.note("stream listed", s.get_job(&n).await?.unwrap().stream_listed_at);
    let absent = JobName::parse("absent").unwrap();
    s.mark_listed(&absent, at(45)).await?;
    t.note("stream listed, no such job", s.get_job(&absent).await?.is_none());

    // A final move with its counters, the pending request required, and the scheduler.
    let mut done = sched.next();
    done.queued.clear();
    let finish = |pending| Transition {
        from: JobStatus::Running,
        to: JobStatus::Cancelled,
        epoch: 5,
        at: at(50),
        error: None,
        started: false,
        duration_ms: Some(49_000),
        pending: Some(pending),
        progress: Some(Progress::of(&all)),
        verification: Some(verification.clone()),
        scheduler: Some(done.clone()),
    };
    t.note("settle a request that is not pending", s.transition(&n, &finish(JobStatus::Paused)).await?);
    let mut stale = finish(JobStatus::Cancelled);
    stale.scheduler = Some(sched.clone());
    t.note("with a stale scheduler", s.transition(&n, &stale).await?);
    t.note("settle the cancel", s.transition(&n, &finish(JobStatus::Cancelled)).await?);
    let j = s.get_job(&n).await?.unwrap();
    t.note(
        "final job",
        (
            j.status,
            j.pending,
            j.epoch,
            j.version,
            j.completed_at,
            j.duration_ms,
            j.items_copied,
            j.progress_at,
            j.history.len(),
        ),
    );
    t.note("scheduler", s.scheduler().await?.version);
    t.note("verification", j.verification);
    Ok(t)
}

#[tokio::test]
async fn both_control_stores_keep_the_same_contract() -> Result<()> {
    let w = World::new("store").await?;
    let memory = contract(&MemoryStore::default(), "contract").await?;
    let dynamo = contract(&w.deps.store, "contract").await?;
    for (i, (m, d)) in memory.0.iter().zip(&dynamo.0).enumerate() {
        assert_eq!(m, d, "step {i}: the in-memory store and DynamoDB disagree");
    }
    assert_eq!(memory.0.len(), dynamo.0.len());
    println!("{}", memory.0.join("\n"));
    let expect = |what: &str, value: &str| {
        let line = memory.0.iter().find(|l| l.starts_with(&format!("{what}: "))).unwrap();
        assert!(line.ends_with(value), "{line} should end with {value}");
    };
    expect("commit while stopped", "Parked");
    expect("start at a wrong epoch", "JobChanged");
    expect("unpark for an older epoch", "false");
    expect("unpark", "true");
    expect("claim another slice", "false");
    expect("claim", "true");
    expect("claim held by another", "false");
    expect("claim again by its holder", "true");
    expect("claim after the lease", "true");
    expect("claim while stopped", "false");
    expect("commit 0 is its own", "true");
    expect("commit 0 is another copy's", "false");
    expect("unpark again", "false");
    expect("commit 0 by a copy that does not hold it", "Stale");
    expect("commit 0", "Continued");
    expect("commit 0 again", "Stale");
    expect("commit 3 parks", "Parked");
    expect("unpark while stopped", "false");
    expect("segment done", "Continued");
    expect("commit after done", "Stale");
    expect("commit on a missing cursor", "Stale");
    expect("begin a pass it is not done with", "false");
    expect("begin a pass", "true");
    expect("begin the pass again", "false");
    expect("commit 3 of the old pass", "Stale");
    expect("commit 4 ends the pass's scan", "Continued");
    expect("record the verification", "true");
    expect("record it again", "false");
    assert!(
        memory
            .0
            .iter()
            .any(|l| l.starts_with(r#"cursor 1: "seg 1 seq 5 key None done false"#) && l.contains("pass VerifyTarget")),
        "a pass's end starts the next pass at the segment's start: {:#?}",
        memory.0
    );
    expect("pause at a wrong epoch", "false");
    expect("pause again", "false");
    expect("withdraw a pause", "false");
    expect("claim with an old view", "false");
    expect("write another turn", "false");
    expect("withdraw the cancel", "true");
    expect("cancel", "true");
    expect("settle a request that is not pending", "JobChanged");
    expect("with a stale scheduler", "SchedulerChanged");
    expect("settle the cancel", "Yes");
    assert!(memory.0.iter().any(|l| l.contains("samples 10")), "samples are bounded: {:#?}", memory.0);
    w.cleanup(&[]).await;
    Ok(())
}
