//! Integration tests against LocalStack's real DynamoDB, SQS and CloudFormation. Each test
//! deploys its own stack from infra/template.yaml and creates its own uniquely named tables.
//! If LocalStack does not answer, every test fails (see `tests::localstack`).

use std::time::Duration;

use anyhow::Result;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use shared::handlers::{create_job, CreateJobRequest};
use shared::model::{Job, JobName, JobStatus, OnItemError, Pass};
use shared::runner::RunnerOptions;
use shared::store::{CursorStore, JobStore};
use tests::{
    assert_same_items, create_table, put_items, rekey_tables, request, runner_opts, sample_item, scan_all,
    small_slices, unique, wait_final, World,
};

#[tokio::test]
async fn full_copy_of_every_attribute_type_is_identical() -> Result<()> {
    let w = World::new("full").await?;
    let (src, dst) = (unique("full-src"), unique("full-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    // 2,000 items of every type, 3 of them about 390 KB.
    put_items(&w.ddb, &src, (0..2_000).map(|i| sample_item(i, Some(650))).collect(), 8).await?;

    let runner = w.start_runner(runner_opts());
    let created = create_job(&w.deps, request("full", &src, &dst)).await?;
    assert_eq!(created.status, JobStatus::Running);
    let job = wait_final(&w, "full").await?;
    runner.stop().await;

    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.items_copied, 2_000);
    assert_eq!(job.items_rejected, 0);
    // Verified: both tables read whole, the same count and checksum.
    let v = job.verification.clone().expect("verified");
    assert!(v.matched(), "{v:?}");
    assert_eq!((v.source.items, v.target.items), (2_000, 2_000));
    assert!(v.target.bytes > 3 * 390 * 1024);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 2_000);
    let big = scan_all(&w.ddb, &dst).await?.iter().filter(|i| i.contains_key("big")).count();
    assert_eq!(big, 3, "the items near the 400 KB limit were copied");
    assert!(job.bytes_copied > 3 * 390 * 1024);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

/// Copy 800 items re-keyed, paced by a read budget, and as soon as the verification begins
/// change one target item, delete another and add one no source item maps to. The job as it
/// ended.
async fn tampered_job(w: &World, tag: &str, repair: bool) -> Result<(Job, String, String)> {
    let (src, dst) = rekey_tables(w, tag, 800, &[]).await?;
    let runner = w.start_runner(runner_opts());
    // A read budget paces the verification too: its scans of the source take seconds.
    let req = CreateJobRequest { max_read_rate: Some(200), repair, ..request(tag, &src, &dst) };
    create_job(&w.deps, req).await?;
    let name = JobName::parse(tag)?;
    let mut verifying = false;
    for _ in 0..1_200 {
        let cursors = w.deps.store.cursors(&name).await?;
        if cursors.iter().any(|c| c.pass != Pass::Copy) {
            assert!(
                cursors.iter().all(|c| c.pass == Pass::VerifySource || c.pass == Pass::Copy),
                "caught early enough: {cursors:?}"
            );
            verifying = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(verifying, "the verification never began");
    let key = |customer: &str, order: u64| {
        std::collections::HashMap::from([
            ("customer".to_string(), AttributeValue::S(customer.into())),
            ("order_no".to_string(), AttributeValue::N(order.to_string())),
        ])
    };
    w.ddb
        .update_item()
        .table_name(&dst)
        .set_key(Some(key("cust-0001", 1)))
        .update_expression("SET note = :v")
        .expression_attribute_values(":v", AttributeValue::S("changed".into()))
        .send()
        .await?;
    w.ddb.delete_item().table_name(&dst).set_key(Some(key("cust-0002", 2))).send().await?;
    let mut extra = key("nobody", 7);
    extra.insert("pk".into(), AttributeValue::S("order-99999999".into()));
    w.ddb.put_item().table_name(&dst).set_item(Some(extra)).send().await?;
    let job = wait_final(w, tag).await?;
    runner.stop().await;
    Ok((job, src, dst))
}

#[tokio::test]
async fn verification_fails_on_a_target_tampered_with_during_the_job_and_names_the_items() -> Result<()> {
    let w = World::new("tamper").await?;
    let (job, src, dst) = tampered_job(&w, "tamper", false).await?;
    assert_eq!(job.status, JobStatus::Failed);
    let e = job.error.clone().expect("an error");
    assert_eq!(e.code, "VerificationFailed");
    let v = job.verification.clone().expect("verification recorded");
    assert_eq!((v.source.items, v.target.items), (800, 800));
    assert_eq!((v.missing, v.different, v.extra), (1, 1, 1), "{v:?}");
    for sample in [
        r#"missing {"pk":{"S":"order-00000002"}}"#,
        r#"different {"pk":{"S":"order-00000001"}}"#,
        r#"extra {"pk":{"S":"order-99999999"}}"#,
    ] {
        assert!(e.message.contains(sample), "{sample} in {}", e.message);
    }
    assert!(e.message.contains("800 items"), "{}", e.message);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn a_repair_makes_a_target_tampered_with_during_the_job_equal_to_the_source() -> Result<()> {
    let w = World::new("repair").await?;
    let (job, src, dst) = tampered_job(&w, "repair", true).await?;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    let v = job.verification.clone().expect("verification recorded");
    assert_eq!((v.repaired_put, v.repaired_deleted), (2, 1), "{v:?}");
    assert_eq!((v.missing, v.different, v.extra), (0, 0, 0), "checked again: {v:?}");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 800);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn colliding_source_items_are_refused_at_create_or_fail_the_job_naming_both() -> Result<()> {
    let w = World::new("collide").await?;
    let twin = || {
        let mut t = sample_item(7, None);
        t.insert("pk".into(), AttributeValue::S("order-twin".into()));
        t
    };
    // In create's sample: refused, nothing written.
    let (src, dst) = rekey_tables(&w, "collide", 300, &[]).await?;
    w.ddb.put_item().table_name(&src).set_item(Some(twin())).send().await?;
    let before = w.control_items().await?.len();
    let err = create_job(&w.deps, request("collide", &src, &dst)).await.unwrap_err().to_string();
    assert!(err.contains("1 share a target key with another source item"), "{err}");
    assert!(err.contains(r#"{"pk":{"S":"order-twin"}}"#) && err.contains(r#"{"pk":{"S":"order-00000007"}}"#), "{err}");
    assert_eq!(w.control_items().await?.len(), before, "nothing written");

    // Written after create sampled the source: the verification finds it and the job fails.
    let (src2, dst2) = rekey_tables(&w, "collide2", 300, &[]).await?;
    create_job(&w.deps, request("collide2", &src2, &dst2)).await?;
    w.ddb.put_item().table_name(&src2).set_item(Some(twin())).send().await?;
    let runner = w.start_runner(runner_opts());
    let job = wait_final(&w, "collide2").await?;
    runner.stop().await;
    assert_eq!(job.status, JobStatus::Failed);
    let e = job.error.clone().expect("an error");
    assert_eq!(e.code, "TargetKeyCollision", "{}", e.message);
    assert!(
        e.message.contains(r#"{"pk":{"S":"order-twin"}}"#) && e.message.contains(r#"{"pk":{"S":"order-00000007"}}"#),
        "{}",
        e.message
    );
    assert_eq!(job.verification.map(|v| v.collisions), Some(1));
    w.cleanup(&[&src, &dst, &src2, &dst2]).await;
    Ok(())
}

#[tokio::test]
async fn skip_expired_leaves_out_items_whose_ttl_passed_and_counts_them() -> Result<()> {
    let w = World::new("ttl").await?;
    let (src, dst) = (unique("ttl-src"), unique("ttl-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    let ttl = aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name("expires_at")
        .build()?;
    w.ddb.update_time_to_live().table_name(&src).time_to_live_specification(ttl).send().await?;
    let later = (chrono::Utc::now() + chrono::Duration::days(30)).timestamp();
    let items = (0..300)
        .map(|i| {
            let mut it = sample_item(i, None);
            let at = if i % 3 == 0 { 1_000 } else { later };
            it.insert("expires_at".into(), AttributeValue::N(at.to_string()));
            it
        })
        .collect();
    put_items(&w.ddb, &src, items, 8).await?;

    let runner = w.start_runner(runner_opts());
    let created = create_job(&w.deps, CreateJobRequest { skip_expired: true, ..request("ttl", &src, &dst) }).await?;
    assert_eq!(created.spec.source_ttl.as_deref(), Some("expires_at"));
    let job = wait_final(&w, "ttl").await?;
    runner.stop().await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!((job.items_copied, job.items_expired), (200, 100));
    let v = job.verification.clone().expect("verified");
    assert!(v.matched() && v.skipped == 100, "{v:?}");
    let copied = scan_all(&w.ddb, &dst).await?;
    assert_eq!(copied.len(), 200);
    assert!(copied.iter().all(|i| i["expires_at"] == AttributeValue::N(later.to_string())));
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn copy_into_a_target_with_another_key_schema() -> Result<()> {
    let w = World::new("rekey").await?;
    let (src, dst) = rekey_tables(&w, "rekey", 1_500, &[]).await?;

    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("rekey", &src, &dst)).await?;
    let job = wait_final(&w, "rekey").await?;
    runner.stop().await;

    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.spec.target_key.to_string(), "customer (S), order_no (N)");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 1_500);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn an_item_lacking_the_new_key_is_refused_at_create_or_fails_the_job() -> Result<()> {
    let w = World::new("reject").await?;
    // In create's sample of the source: refused, nothing written.
    let (src, dst) = rekey_tables(&w, "reject", 500, &[42]).await?;
    let before = w.control_items().await?.len();
    let err = create_job(&w.deps, request("reject", &src, &dst)).await.unwrap_err().to_string();
    assert!(err.starts_with(&format!("of the first 500 items of {src}, 1 do not fit the key of {dst}")), "{err}");
    assert!(err.contains(r#"{"pk":{"S":"order-00000042"}}"#), "{err}");
    assert!(err.contains("missing key attribute \"order_no\""), "{err}");
    assert!(err.contains("--on-item-error skip"), "{err}");
    assert_eq!(w.control_items().await?.len(), before, "nothing written");

    // Written after create sampled the source: the copy rejects it and the job fails.
    let (src2, dst2) = rekey_tables(&w, "reject2", 500, &[]).await?;
    create_job(&w.deps, request("reject2", &src2, &dst2)).await?;
    let mut lacking = sample_item(42, None);
    lacking.remove("order_no");
    w.ddb.put_item().table_name(&src2).set_item(Some(lacking)).send().await?;
    let runner = w.start_runner(runner_opts());
    let job = wait_final(&w, "reject2").await?;
    runner.stop().await;

    assert_eq!(job.status, JobStatus::Failed);
    let err = job.error.expect("an error");
    assert_eq!(err.code, "ItemsRejected");
    assert!(err.message.starts_with("1 item(s)"), "{}", err.message);
    assert!(err.message.contains(r#"{"pk":{"S":"order-00000042"}}"#), "{}", err.message);
    assert!(err.message.contains("missing key attribute \"order_no\""), "{}", err.message);
    assert!(err.message.contains("--on-item-error skip"), "{}", err.message);
    w.cleanup(&[&src, &dst, &src2, &dst2]).await;
    Ok(())
}

#[tokio::test]
async fn items_lacking_the_new_key_are_skipped_and_reported_on_request() -> Result<()> {
    let w = World::new("skip").await?;
    let lacking = [7, 42, 300];
    let (src, dst) = rekey_tables(&w, "skip", 500, &lacking).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, CreateJobRequest { on_item_error: OnItemError::Skip, ..request("skip", &src, &dst) }).await?;
    let job = wait_final(&w, "skip").await?;
    runner.stop().await;

    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!((job.items_copied, job.items_rejected), (497, 3));
    let mut sampled: Vec<&str> = job.rejected_samples.iter().map(|r| r.key.as_str()).collect();
    sampled.sort();
    assert_eq!(
        sampled,
        [r#"{"pk":{"S":"order-00000007"}}"#, r#"{"pk":{"S":"order-00000042"}}"#, r#"{"pk":{"S":"order-00000300"}}"#]
    );
    // The target holds exactly the other items.
    let source: Vec<_> = scan_all(&w.ddb, &src).await?.into_iter().filter(|i| i.contains_key("order_no")).collect();
    let target = scan_all(&w.ddb, &dst).await?;
    assert_eq!(tests::compare_items(&src, &source, &dst, &target)?, 497);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_leave_nothing_behind() -> Result<()> {
    let w = World::new("bad").await?;
    let (src, dst) = (unique("bad-src"), unique("bad-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    // A target whose key attribute the source's key holds with another type: no item fits.
    let binary = unique("bad-bin");
    create_table(&w.ddb, &binary, ("pk", T::B), None).await?;
    let missing = unique("missing");
    let cases = [
        (
            request("j1", &src, &binary),
            "the target's key attribute \"pk\" is of type B but the source's key attribute \"pk\" is of type S: no source item could be written. Create the target with \"pk\" of type S".to_string(),
        ),
        (request("j1", &missing, &dst), format!("Owner resource does not exist: the source table \"{missing}\"")),
        (request("j1", &src, &missing), format!("Owner resource does not exist: the target table \"{missing}\"")),
        (request("j1", &src, &src), "same table".to_string()),
        (request("no spaces please", &src, &dst), "invalid job name".to_string()),
        (request("j/1", &src, &dst), "invalid job name".to_string()),
    ];
    for (req, expected) in cases {
        let err = create_job(&w.deps, req).await.expect_err("must be refused").to_string();
        assert!(err.contains(&expected), "{err:?} should contain {expected:?}");
        assert!(err.contains("Create it first") || !expected.contains("Owner"), "{err}");
    }
    assert!(w.control_items().await?.is_empty(), "no job, cursor or scheduler item");
    for url in [&w.resources().copy_chunk_queue_url, &w.resources().checkpoint_queue_url] {
        assert_eq!(w.queue_depth(url).await?, 0, "no message on {url}");
    }

    // A duplicate name: the first job exists, the second create changes nothing.
    create_job(&w.deps, request("dup", &src, &dst)).await?;
    let control_before = w.control_items().await?.len();
    let depth_before = w.queue_depth(&w.resources().copy_chunk_queue_url).await?;
    let err = create_job(&w.deps, request("dup", &src, &dst)).await.expect_err("duplicate").to_string();
    assert!(err.contains("a job named \"dup\" already exists"), "{err}");
    assert_eq!(w.control_items().await?.len(), control_before);
    assert_eq!(w.queue_depth(&w.resources().copy_chunk_queue_url).await?, depth_before);
    w.cleanup(&[&src, &dst, &binary]).await;
    Ok(())
}

#[tokio::test]
async fn create_warns_of_a_target_that_is_not_empty_and_of_ttl_the_target_lacks() -> Result<()> {
    let w = World::new("warn").await?;
    let (src, dst, clean, plain) = (unique("warn-src"), unique("warn-dst"), unique("warn-clean"), unique("warn-plain"));
    for t in [&src, &dst, &clean, &plain] {
        create_table(&w.ddb, t, ("pk", T::S), None).await?;
    }
    w.ddb
        .update_time_to_live()
        .table_name(&src)
        .time_to_live_specification(
            aws_sdk_dynamodb::types::TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expires_at")
                .build()?,
        )
        .send()
        .await?;
    tests::put_items(&w.ddb, &src, (0..3).map(|i| tests::sample_item(i, None)).collect(), 1).await?;
    tests::put_items(&w.ddb, &dst, vec![tests::sample_item(99, None)], 1).await?;
    let job = create_job(&w.deps, request("warned", &src, &dst)).await?;
    assert_eq!(job.target_empty_at_start, Some(false));
    assert_eq!(job.spec.source_ttl.as_deref(), Some("expires_at"));
    let [not_empty, ttl] = job.warnings.as_slice() else { panic!("two warnings: {:?}", job.warnings) };
    assert!(not_empty.starts_with(&format!("the target {dst} is not empty")), "{not_empty}");
    assert!(ttl.contains(&format!("aws dynamodb update-time-to-live --table-name {dst} --time-to-live-specification Enabled=true,AttributeName=expires_at")), "{ttl}");
    // A table another unfinished job writes is no job's source.
    let err = create_job(&w.deps, request("reads-a-target", &dst, &clean)).await.unwrap_err().to_string();
    assert!(err.starts_with(r#"job "warned" (Running) copies "#), "{err}");
    let quiet = create_job(&w.deps, request("quiet", &plain, &clean)).await?;
    assert_eq!((quiet.target_empty_at_start, quiet.warnings.len(), quiet.spec.source_ttl), (Some(true), 0, None));
    w.cleanup(&[&src, &dst, &clean, &plain]).await;
    Ok(())
}

#[tokio::test]
async fn an_empty_source_completes_with_nothing_copied() -> Result<()> {
    let w = World::new("empty").await?;
    let (src, dst) = (unique("empty-src"), unique("empty-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("id", T::N), None).await?;
    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("empty", &src, &dst)).await?;
    let job = wait_final(&w, "empty").await?;
    runner.stop().await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!((job.items_copied, job.estimated_total, job.segments_done), (0, 0, 4));
    assert!(scan_all(&w.ddb, &dst).await?.is_empty());
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn a_job_survives_the_runner_dying_mid_copy() -> Result<()> {
    // Small slices, so the copy is many slices long and the kill lands in the middle.
    let tuning = small_slices(150);
    let w = World::with_tuning("redrive", tuning).await?;
    let (src, dst) = rekey_tables(&w, "redrive", 3_000, &[]).await?;

    let runner = w.start_runner(RunnerOptions { concurrency: 2, ..RunnerOptions::default() });
    create_job(&w.deps, CreateJobRequest { parallelism: Some(2), ..request("redrive", &src, &dst) }).await?;
    let name = JobName::parse("redrive")?;
    loop {
        let j = w.deps.store.get_job(&name).await?.expect("job");
        if j.items_copied >= 600 {
            break;
        }
        assert!(!j.status.is_final(), "the job finished before the runner could be killed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    runner.kill().await;
    let halfway = w.deps.store.get_job(&name).await?.expect("job");
    assert_eq!(halfway.status, JobStatus::Running);
    assert!(halfway.items_copied < 3_000, "killed mid-copy");

    // A new runner picks the messages up again (in-flight ones after their visibility timeout).
    let runner = w.start_runner(RunnerOptions { concurrency: 2, ..RunnerOptions::default() });
    let job = wait_final(&w, "redrive").await?;
    runner.stop().await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.items_copied, 3_000, "every item counted exactly once");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 3_000);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn an_unreadable_message_reaches_the_dead_letter_queue_through_the_redrive_policy() -> Result<()> {
    let w = World::new("dlq").await?;
    w.sqs.send_message().queue_url(&w.resources().checkpoint_queue_url).message_body("not a message").send().await?;
    let runner = w.start_runner(RunnerOptions { visibility_timeout: Some(1), ..runner_opts() });
    let dlq = w.outputs["CheckpointDeadLetterQueueUrl"].clone();
    let mut moved = false;
    for _ in 0..120 {
        if w.queue_depth(&dlq).await? == 1 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    runner.stop().await;
    assert!(moved, "the message should be in the DLQ after maxReceiveCount (5) receives");
    assert_eq!(w.queue_depth(&w.resources().checkpoint_queue_url).await?, 0);
    let got = w.sqs.receive_message().queue_url(&dlq).send().await?;
    assert_eq!(got.messages()[0].body(), Some("not a message"));
    w.cleanup(&[]).await;
    Ok(())
}

#[tokio::test]
async fn a_second_job_waits_queued_while_the_first_runs() -> Result<()> {
    let w = World::new("queued").await?;
    let (src, dst, dst2) = (unique("q-src"), unique("q-dst"), unique("q-dst2"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst2, ("pk", T::S), None).await?;
    let first = create_job(&w.deps, request("first", &src, &dst)).await?;
    let second = create_job(&w.deps, request("second", &src, &dst2)).await?;
    assert_eq!((first.status, second.status), (JobStatus::Running, JobStatus::Queued));
    let stored = w.deps.store.get_job(&second.name).await?.expect("job");
    assert_eq!(stored.status, JobStatus::Queued);
    assert_eq!(w.deps.store.cursors(&second.name).await?.len(), 4);
    assert_eq!(w.queue_depth(&w.resources().copy_chunk_queue_url).await?, 4, "only the first job's slices");
    w.cleanup(&[&src, &dst, &dst2]).await;
    Ok(())
}

#[tokio::test]
async fn throttled_reads_and_writes_are_retried_until_every_item_is_copied() -> Result<()> {
    // Its own LocalStack: one request in ten to DynamoDB fails with throttling, and
    // BatchWriteItem leaves one item in ten unprocessed.
    let faulty = tests::FaultyLocalStack::start(4567, "0.1")?;
    let sdk = tests::localstack_at(&faulty.endpoint).await?;
    let tuning = small_slices(400);
    let params = [("CopyChunkVisibilityTimeout".to_string(), "20".to_string())];
    let w = World::deploy_on(sdk, "throttle", tuning, &params).await?;
    let (src, dst) = rekey_tables(&w, "thr", 2_000, &[]).await?;

    let runner = w.start_runner(runner_opts());
    create_job(&w.deps, request("throttled", &src, &dst)).await?;
    let job = wait_final(&w, "throttled").await?;
    runner.stop().await;

    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(job.items_copied, 2_000, "every item counted exactly once");
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 2_000);
    assert!(faulty.throttled_requests() > 10, "fault injection was active");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}
