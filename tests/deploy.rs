//! The SAM template on LocalStack's CloudFormation, and the ways of starting jobs it adds:
//! CloudFormation custom resources (answered at a presigned LocalStack S3 URL) and
//! EventBridge events (through the deployed rule and requests queue, played by the runner).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use aws_sdk_sqs::types::QueueAttributeName as A;
use serde_json::{json, Value};
use shared::handlers::create_job_entry;
use shared::model::{JobName, JobStatus};
use shared::store::JobStore;
use tests::{
    assert_same_items, create_table, localstack, put_items, runner_opts, sample_item, small_slices, unique, wait_final,
    World, DEFAULT_ENDPOINT,
};

/// create-job's Lambda entry point, as CloudFormation invokes it.
async fn invoke(w: &World, request: Value) -> Result<Value> {
    create_job_entry(&w.deps, request).await.map_err(|e| anyhow::anyhow!(e))
}

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string())
}

#[tokio::test]
async fn the_template_deploys_what_it_declares_and_deletes_cleanly() -> Result<()> {
    let w = World::new("deploy").await?;
    let o = &w.outputs;

    // Outputs: every resource the CLI and the runner need, and no function locally.
    for key in [
        "ControlTableName",
        "RequestsQueueUrl",
        "CopyChunkQueueUrl",
        "CheckpointQueueUrl",
        "FinalizeQueueUrl",
        "RequestsDeadLetterQueueUrl",
        "CopyChunkDeadLetterQueueUrl",
        "CheckpointDeadLetterQueueUrl",
        "FinalizeDeadLetterQueueUrl",
        "RequestsRuleName",
        "EventSource",
        "MaxRunningJobs",
        "TableNamePrefix",
        "CopyChunkVisibilityTimeout",
        "ReconcileScheduleName",
    ] {
        assert!(o.get(key).is_some_and(|v| !v.is_empty()), "output {key} missing: {o:?}");
    }
    assert!(!o.contains_key("CreateJobFunctionName"), "DeployFunctions=false deploys no function");

    // Queues: each with its DLQ through a redrive policy, SSE, and its visibility timeout.
    for (queue, dlq, visibility) in [
        ("RequestsQueueUrl", "RequestsDeadLetterQueueUrl", "10"),
        ("CopyChunkQueueUrl", "CopyChunkDeadLetterQueueUrl", "20"),
        ("CheckpointQueueUrl", "CheckpointDeadLetterQueueUrl", "10"),
        ("FinalizeQueueUrl", "FinalizeDeadLetterQueueUrl", "10"),
    ] {
        let attrs = queue_attributes(&w, &o[queue]).await?;
        let dlq_attrs = queue_attributes(&w, &o[dlq]).await?;
        let redrive: Value = serde_json::from_str(attrs.get(&A::RedrivePolicy).context("redrive policy")?)?;
        assert_eq!(redrive["deadLetterTargetArn"], dlq_attrs[&A::QueueArn].as_str(), "{queue}");
        assert_eq!(redrive["maxReceiveCount"].to_string(), "5", "{queue}");
        for (name, a) in [(queue, &attrs), (dlq, &dlq_attrs)] {
            assert_eq!(a.get(&A::SqsManagedSseEnabled).map(String::as_str), Some("true"), "{name} is encrypted");
            assert_eq!(a[&A::MessageRetentionPeriod], "1209600", "{name}");
        }
        assert_eq!(attrs[&A::VisibilityTimeout], visibility, "{queue}");
    }
    // Only the deployment's rule may send to the requests queue.
    let policy: Value = serde_json::from_str(&queue_attributes(&w, &o["RequestsQueueUrl"]).await?[&A::Policy])?;
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Principal"]["Service"], "events.amazonaws.com");
    assert!(statement["Condition"]["ArnEquals"]["aws:SourceArn"].as_str().unwrap().ends_with(&o["RequestsRuleName"]));
    // Only the reconciler's schedule may send to the finalize queue from EventBridge, and it
    // sends the reconcile message every minute.
    let policy: Value = serde_json::from_str(&queue_attributes(&w, &o["FinalizeQueueUrl"]).await?[&A::Policy])?;
    let statement = &policy["Statement"][0];
    assert_eq!(statement["Principal"]["Service"], "events.amazonaws.com");
    let schedule = &o["ReconcileScheduleName"];
    assert!(statement["Condition"]["ArnEquals"]["aws:SourceArn"].as_str().unwrap().ends_with(schedule.as_str()));
    let events = aws_sdk_eventbridge::Client::new(&w.sdk);
    let rule = events.describe_rule().name(schedule).send().await?;
    assert_eq!(rule.schedule_expression(), Some("rate(1 minute)"));
    let targets = events.list_targets_by_rule().rule(schedule).send().await?;
    let input: Value = serde_json::from_str(targets.targets()[0].input().context("the reconcile message")?)?;
    assert_eq!(input, json!({"v": 1, "reconcile": true}));

    // The control table: keys, the list index, on-demand, PITR, SSE, deletion protection off locally.
    let table = &o["ControlTableName"];
    let d = w.ddb.describe_table().table_name(table).send().await?.table.context("table")?;
    let keys: Vec<(String, String)> =
        d.key_schema().iter().map(|k| (k.attribute_name.clone(), k.key_type.as_str().to_string())).collect();
    assert_eq!(keys, [("pk".to_string(), "HASH".to_string()), ("sk".to_string(), "RANGE".to_string())]);
    // The list index: one, projecting only what list shows.
    let indexes = d.global_secondary_indexes();
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    assert_eq!(indexes[0].index_name(), Some(shared::store::LIST_INDEX));
    let projection = indexes[0].projection().context("the index's projection")?;
    assert_eq!(projection.projection_type().map(|p| p.as_str()), Some("INCLUDE"));
    let mut projected: Vec<&str> = projection.non_key_attributes().iter().map(String::as_str).collect();
    projected.sort();
    let mut listed = shared::model::JobSummary::ATTRIBUTES.to_vec();
    listed.sort();
    assert_eq!(projected, listed, "the index projects exactly what list reads");
    assert_eq!(d.billing_mode_summary().and_then(|b| b.billing_mode()).map(|m| m.as_str()), Some("PAY_PER_REQUEST"));
    assert_eq!(d.deletion_protection_enabled(), Some(false));
    let backups = w.ddb.describe_continuous_backups().table_name(table).send().await?;
    let status = backups.continuous_backups_description().map(|c| c.continuous_backups_status().as_str());
    assert_eq!(status, Some("ENABLED"));

    // What CloudFormation holds after the SAM transform. (LocalStack's table provider does not
    // apply PointInTimeRecoverySpecification, though its API supports PITR: the declaration is
    // checked here.) The functions are there, with their event sources, behind the condition.
    let cfn = aws_sdk_cloudformation::Client::new(&w.sdk);
    let processed = cfn
        .get_template()
        .stack_name(&w.stack)
        .template_stage(aws_sdk_cloudformation::types::TemplateStage::Processed)
        .send()
        .await?;
    let processed: Value = serde_json::from_str(processed.template_body().context("processed template")?)?;
    let res = &processed["Resources"];
    let pitr = &res["ControlTable"]["Properties"]["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"];
    assert_eq!(pitr, &json!(true), "PITR declared on the control table");
    for (function, binary, queue, batch) in [
        ("CreateJobFunction", "create-job", "RequestsQueue", 10),
        ("CopyChunkFunction", "copy-chunk", "CopyChunkQueue", 1),
        ("AdvanceCheckpointFunction", "advance-checkpoint", "CheckpointQueue", 10),
        ("FinalizeFunction", "finalize", "FinalizeQueue", 10),
    ] {
        let f = &res[function];
        assert_eq!(f["Type"], "AWS::Lambda::Function", "{function}");
        assert_eq!(f["Condition"], "DeployFunctions", "{function}");
        assert_eq!(f["Properties"]["Runtime"], "provided.al2023", "{function}");
        assert_eq!(f["Properties"]["Handler"], "bootstrap", "{function}");
        assert_eq!(f["Metadata"]["BuildProperties"]["Binary"], binary, "{function}");
        let mapping = res
            .as_object()
            .unwrap()
            .values()
            .find(|r| {
                r["Type"] == "AWS::Lambda::EventSourceMapping" && r["Properties"]["FunctionName"]["Ref"] == function
            })
            .with_context(|| format!("{function}'s SQS event source"))?;
        let p = &mapping["Properties"];
        assert_eq!(p["EventSourceArn"]["Fn::GetAtt"][0], queue, "{function}");
        assert_eq!(p["BatchSize"], batch, "{function}");
        assert_eq!(p["FunctionResponseTypes"], json!(["ReportBatchItemFailures"]), "{function}");
        assert!(
            p["ScalingConfig"]["MaximumConcurrency"].is_object()
                || p["ScalingConfig"]["MaximumConcurrency"].is_number(),
            "{function}: {p}"
        );
        assert_eq!(mapping["Condition"], "DeployFunctions", "{function}");
    }

    // Every resource the template declares for a local deployment, and the types it has.
    let resources = cfn.describe_stack_resources().stack_name(&w.stack).send().await?;
    let mut types: HashMap<String, usize> = HashMap::new();
    for r in resources.stack_resources() {
        assert_eq!(r.resource_status().map(|s| s.as_str()), Some("CREATE_COMPLETE"), "{r:?}");
        *types.entry(r.resource_type().unwrap_or_default().to_string()).or_default() += 1;
    }
    let expected = [
        ("AWS::DynamoDB::Table", 1),
        ("AWS::SQS::Queue", 8),
        ("AWS::SQS::QueuePolicy", 2),
        ("AWS::Events::Rule", 2),
        ("AWS::CloudWatch::Alarm", 4),
        ("AWS::CloudWatch::Dashboard", 1),
    ];
    assert_eq!(types, expected.iter().map(|(t, n)| (t.to_string(), *n)).collect(), "resources of the stack");

    // Delete: the stack and everything in it are gone.
    let (stack, sqs, ddb) = (w.stack.clone(), w.sqs.clone(), w.ddb.clone());
    shared::stack::delete(&cfn, &stack).await?;
    assert!(matches!(shared::stack::outputs(&cfn, &stack).await, Err(shared::stack::StackError::NotFound(_))));
    assert!(ddb.describe_table().table_name(table).send().await.is_err(), "the control table is deleted");
    let name = o["CopyChunkQueueUrl"].rsplit('/').next().unwrap();
    assert!(sqs.get_queue_url().queue_name(name).send().await.is_err(), "the queues are deleted");
    Ok(())
}

async fn queue_attributes(w: &World, url: &str) -> Result<HashMap<A, String>> {
    Ok(w.sqs.get_queue_attributes().queue_url(url).attribute_names(A::All).send().await?.attributes.unwrap_or_default())
}

#[tokio::test]
async fn a_copy_runs_against_resources_found_only_through_the_stack_outputs() -> Result<()> {
    // Deploy a stack, then forget everything but its name: the configuration comes back from
    // its outputs, as the CLI and `tablecopy local run` get it with --stack-name.
    let stack = World::new("outputs").await?.stack;
    let w = World::attach(localstack().await?, stack, small_slices(150)).await?;
    let (src, dst) = (unique("out-src"), unique("out-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    put_items(&w.ddb, &src, (0..900).map(|i| sample_item(i, None)).collect(), 8).await?;
    let runner = w.start_runner(runner_opts());
    shared::handlers::create_job(&w.deps, tests::request("by-outputs", &src, &dst)).await?;
    let job = wait_final(&w, "by-outputs").await?;
    runner.stop().await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 900);
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

/// A bucket on LocalStack's S3 standing in for CloudFormation's response bucket.
struct ResponseBucket {
    bucket: String,
}

/// Plain HTTP to LocalStack's S3 (path style, which it accepts unsigned), with curl.
async fn curl(method: &str, url: &str) -> Result<(u16, String)> {
    let args: Vec<String> =
        ["-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}", url].map(String::from).to_vec();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("curl").args(&args).output()).await??;
    if !out.status.success() {
        bail!("curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse()?, body.to_string()))
}

impl ResponseBucket {
    async fn new() -> Result<Self> {
        let b = Self { bucket: unique("cfn-responses") };
        let (code, body) = curl("PUT", &format!("{}/{}", endpoint(), b.bucket)).await?;
        if code != 200 {
            bail!("creating bucket {}: HTTP {code} {body}", b.bucket);
        }
        Ok(b)
    }

    /// A presigned PUT URL for `key`, signed as CloudFormation's are (SigV4 in the query).
    fn presigned_put(&self, key: &str) -> Result<String> {
        use aws_sigv4::http_request::{
            sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
            UriPathNormalizationMode,
        };
        let url = format!("{}/{}/{key}", endpoint(), self.bucket);
        let identity = aws_credential_types::Credentials::new("test", "test", None, None, "tests").into();
        let mut settings = SigningSettings::default();
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(7200));
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()?
            .into();
        let signable = SignableRequest::new("PUT", &url, std::iter::empty(), SignableBody::UnsignedPayload)?;
        let (instructions, _) = sign(signable, &params)?.into_parts();
        let mut request = http::Request::put(&url).body(())?;
        instructions.apply_to_request_http1x(&mut request);
        Ok(request.uri().to_string())
    }

    /// The response document CloudFormation would read, if one was put.
    async fn response(&self, key: &str) -> Result<Option<Value>> {
        let (code, body) = curl("GET", &format!("{}/{}/{key}", endpoint(), self.bucket)).await?;
        match code {
            200 => Ok(Some(serde_json::from_str(&body).with_context(|| format!("response body {body:?}"))?)),
            404 => Ok(None),
            other => bail!("reading response {key}: HTTP {other} {body}"),
        }
    }

    /// A CloudFormation request document whose ResponseURL is a presigned URL of this bucket.
    fn request(&self, kind: &str, id: &str, props: Value, physical: Option<&str>, old: Option<Value>) -> Result<Value> {
        let mut props = props;
        props["ServiceToken"] = "arn:aws:lambda:us-east-1:000000000000:function:tablecopy-create-job".into();
        let mut r = json!({
            "RequestType": kind,
            "ServiceToken": props["ServiceToken"],
            "ResponseURL": self.presigned_put(id)?,
            "StackId": "arn:aws:cloudformation:us-east-1:000000000000:stack/app/6f1c",
            "RequestId": id,
            "ResourceType": "Custom::TableCopyJob",
            "LogicalResourceId": "OrdersCopy",
            "ResourceProperties": props,
        });
        if let Some(p) = physical {
            r["PhysicalResourceId"] = p.into();
        }
        if let Some(old) = old {
            r["OldResourceProperties"] = old;
        }
        Ok(r)
    }
}

/// Check a response document: its status, that it echoes its request, and its physical ID.
fn check(response: &Value, id: &str, status: &str, physical: &str) {
    assert_eq!(response["Status"], status, "{response}");
    assert_eq!(response["RequestId"], id, "{response}");
    assert_eq!(response["LogicalResourceId"], "OrdersCopy", "{response}");
    assert_eq!(response["StackId"], "arn:aws:cloudformation:us-east-1:000000000000:stack/app/6f1c", "{response}");
    assert_eq!(response["PhysicalResourceId"], physical, "{response}");
}

#[tokio::test]
async fn custom_resource_create_update_and_delete_answer_at_the_response_url() -> Result<()> {
    let w = World::with_tuning("custom", small_slices(100)).await?;
    let bucket = ResponseBucket::new().await?;
    let (src, dst, dst2) = (unique("cr-src"), unique("cr-dst"), unique("cr-dst2"));
    for t in [&src, &dst, &dst2] {
        create_table(&w.ddb, t, ("pk", T::S), None).await?;
    }
    put_items(&w.ddb, &src, (0..600).map(|i| sample_item(i, None)).collect(), 8).await?;
    let job = unique("cr-job");
    let props = |target: &str| json!({"JobName": job, "SourceTable": src, "TargetTable": target, "Parallelism": "2"});

    // Create: a job starts and CloudFormation hears SUCCESS at once.
    invoke(&w, bucket.request("Create", "c1", props(&dst), None, None)?).await?;
    let r = bucket.response("c1").await?.context("the Create was answered")?;
    check(&r, "c1", "SUCCESS", &job);
    assert_eq!(r["Data"]["JobName"], job.as_str());
    assert_eq!(r["Reason"], format!("copy job {job} is Running"), "a reason even on success, never null");
    let stored = w.deps.store.get_job(&JobName::parse(&job)?).await?.context("job")?;
    assert_eq!(stored.status, JobStatus::Running);

    // Update with a new target: a new job under a derived name (names are never reused).
    let update = bucket.request("Update", "u1a2b3c4", props(&dst2), Some(&job), Some(props(&dst)))?;
    invoke(&w, update).await?;
    let r = bucket.response("u1a2b3c4").await?.context("the Update was answered")?;
    let new_job = format!("{job}-u1a2b3c4");
    check(&r, "u1a2b3c4", "SUCCESS", &new_job);
    assert_eq!(w.deps.store.get_job(&JobName::parse(&new_job)?).await?.context("new job")?.spec.target.as_str(), dst2);

    // Delete of the old physical ID (CloudFormation's cleanup after the update): the old job,
    // still running, is cancelled.
    invoke(&w, bucket.request("Delete", "d1", props(&dst), Some(&job), None)?).await?;
    check(&bucket.response("d1").await?.context("the Delete was answered")?, "d1", "SUCCESS", &job);
    let old = w.deps.store.get_job(&JobName::parse(&job)?).await?.context("job")?;
    assert!(old.pending == Some(JobStatus::Cancelled) || old.status == JobStatus::Cancelled, "{old:?}");

    // A Create that cannot work: FAILED with the reason, and nothing is written.
    let before = w.control_items().await?.len();
    let bad = json!({"JobName": unique("cr-bad"), "SourceTable": src, "TargetTable": "no-such-table"});
    invoke(&w, bucket.request("Create", "c2", bad, None, None)?).await?;
    let r = bucket.response("c2").await?.context("the failed Create was answered")?;
    check(&r, "c2", "FAILED", "not-created:c2");
    assert!(r["Reason"].as_str().unwrap().contains("\"no-such-table\" was not found"), "{r}");
    assert_eq!(w.control_items().await?.len(), before, "a refused Create writes nothing");
    // Its rollback's Delete succeeds and touches nothing.
    invoke(&w, bucket.request("Delete", "d2", json!({}), Some("not-created:c2"), None)?).await?;
    check(&bucket.response("d2").await?.context("answered")?, "d2", "SUCCESS", "not-created:c2");
    w.cleanup(&[&src, &dst, &dst2]).await;
    Ok(())
}

#[tokio::test]
async fn wait_for_completion_answers_when_the_job_completes_or_fails() -> Result<()> {
    let w = World::with_tuning("waitcr", small_slices(100)).await?;
    let bucket = ResponseBucket::new().await?;
    let (src, dst) = tests::rekey_tables(&w, "wait", 700, &[]).await?;
    let runner = w.start_runner(runner_opts());
    let job = unique("wait-job");
    let props = json!({"JobName": job, "SourceTable": src, "TargetTable": dst, "Parallelism": "3",
        "WaitForCompletion": "true"});
    invoke(&w, bucket.request("Create", "w1", props, None, None)?).await?;
    assert!(bucket.response("w1").await?.is_none(), "no answer while the job runs");
    let final_job = wait_final(&w, &job).await?;
    assert_eq!(final_job.status, JobStatus::Completed, "{:?}", final_job.error);
    // finalize answers right after the final move; give its message a moment.
    let r = poll_response(&bucket, "w1").await?;
    check(&r, "w1", "SUCCESS", &job);
    assert_eq!(r["Data"]["ItemsCopied"], "700");
    assert_eq!(r["Reason"], format!("copy job {job} is Completed: 700 items copied"));
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 700);

    // A job that would fail (items lacking the target's key, found by create's sample of the
    // source): FAILED at once with the reason, and no job recorded.
    let (src2, dst2) = tests::rekey_tables(&w, "waitf", 300, &[5, 50]).await?;
    let job2 = unique("wait-fail");
    let props = json!({"JobName": job2, "SourceTable": src2, "TargetTable": dst2, "WaitForCompletion": true});
    invoke(&w, bucket.request("Create", "w2", props, None, None)?).await?;
    let r = poll_response(&bucket, "w2").await?;
    assert_eq!(r["Status"], "FAILED", "{r}");
    let reason = r["Reason"].as_str().unwrap();
    assert!(reason.contains("2 do not fit the key of") && reason.contains("--on-item-error skip"), "{r}");
    assert!(w.deps.store.get_job(&shared::model::JobName::parse(&job2)?).await?.is_none());
    runner.stop().await;
    w.cleanup(&[&src, &dst, &src2, &dst2]).await;
    Ok(())
}

async fn poll_response(bucket: &ResponseBucket, key: &str) -> Result<Value> {
    for _ in 0..300 {
        if let Some(r) = bucket.response(key).await? {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no response {key} within 30 s of the job's end")
}

#[tokio::test]
async fn an_eventbridge_event_travels_through_the_rule_and_the_runner_creates_the_job() -> Result<()> {
    let w = World::with_tuning("events", small_slices(200)).await?;
    let (src, dst) = (unique("ev-src"), unique("ev-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    put_items(&w.ddb, &src, (0..500).map(|i| sample_item(i, None)).collect(), 8).await?;
    let runner = w.start_runner(runner_opts());
    let job = unique("ev-job");
    let events = aws_sdk_eventbridge::Client::new(&w.sdk);
    // A consumer of the job events: a rule on this deployment's source into a queue.
    let consumer = w.sqs.create_queue().queue_name(unique("ev-consumer")).send().await?;
    let consumer_url = consumer.queue_url().context("queue url")?.to_string();
    let consumer_arn = w
        .sqs
        .get_queue_attributes()
        .queue_url(&consumer_url)
        .attribute_names(A::QueueArn)
        .send()
        .await?
        .attributes()
        .and_then(|a| a.get(&A::QueueArn).cloned())
        .context("queue arn")?;
    let rule = unique("ev-consumer-rule");
    let pattern = json!({"source": [w.outputs["EventSource"]],
        "detail-type": ["tablecopy.JobStateChange", "tablecopy.RequestRejected"]});
    events.put_rule().name(&rule).event_pattern(pattern.to_string()).send().await?;
    let target = aws_sdk_eventbridge::types::Target::builder().id("consumer").arn(&consumer_arn).build()?;
    events.put_targets().rule(&rule).targets(target).send().await?;
    let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .source(&w.outputs["EventSource"])
        .detail_type("tablecopy.CreateJob")
        .detail(json!({"jobName": job, "sourceTable": src, "targetTable": dst, "parallelism": 2}).to_string())
        .build();
    let out = events.put_events().entries(entry).send().await?;
    assert_eq!(out.failed_entry_count(), 0, "{out:?}");
    // The event reaches the requests queue through the deployed rule; the runner plays
    // create-job on it.
    let name = JobName::parse(&job)?;
    let mut created = None;
    for _ in 0..200 {
        if let Some(j) = w.deps.store.get_job(&name).await? {
            created = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(created.is_some(), "the event created job {job}");
    let done = wait_final(&w, &job).await?;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    assert_eq!(assert_same_items(&w.ddb, &src, &dst).await?, 500);
    // An event of another source (another deployment's) does not reach this stack.
    let other = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .source("someone-else")
        .detail_type("tablecopy.CreateJob")
        .detail(json!({"jobName": unique("not-mine"), "sourceTable": src, "targetTable": dst}).to_string())
        .build();
    events.put_events().entries(other).send().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.queue_depth(&w.resources().requests_queue_url).await?, 0);
    assert_eq!(
        w.deps.store.list_jobs(&shared::store::ListQuery { limit: 50, ..Default::default() }).await?.jobs.len(),
        1,
        "only the event of this stack's source"
    );
    // A create event that is refused (its source table does not exist).
    let refused = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
        .source(&w.outputs["EventSource"])
        .detail_type("tablecopy.CreateJob")
        .detail(json!({"jobName": unique("refused"), "sourceTable": unique("missing"), "targetTable": dst}).to_string())
        .build();
    events.put_events().entries(refused).send().await?;

    // The consumer got the job's state changes, Completed with its counters, and the refusal.
    let mut received: Vec<Value> = Vec::new();
    for _ in 0..100 {
        let out = w
            .sqs
            .receive_message()
            .queue_url(&consumer_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await?;
        for m in out.messages() {
            received.push(serde_json::from_str(m.body().unwrap_or("{}"))?);
        }
        let rejected = received.iter().any(|e| e["detail-type"] == "tablecopy.RequestRejected");
        let completed = received.iter().any(|e| e["detail"]["to"] == "Completed");
        if rejected && completed {
            break;
        }
    }
    let mut changes: Vec<(u64, Value, Value)> = received
        .iter()
        .filter(|e| e["detail-type"] == "tablecopy.JobStateChange" && e["detail"]["job"] == job.as_str())
        .map(|e| (e["detail"]["version"].as_u64().unwrap_or(0), e["detail"]["from"].clone(), e["detail"]["to"].clone()))
        .collect();
    changes.sort_by_key(|c| c.0);
    changes.dedup_by_key(|c| c.0); // at least once: a duplicate has the same version
    assert_eq!(
        changes,
        [
            (1, Value::Null, json!("Queued")),
            (2, json!("Queued"), json!("Running")),
            (3, json!("Running"), json!("Completed"))
        ],
        "{received:#?}"
    );
    let completed = received.iter().find(|e| e["detail"]["to"] == "Completed").context("Completed")?;
    assert_eq!(completed["source"], w.outputs["EventSource"].as_str());
    assert_eq!(completed["detail"]["counters"]["itemsCopied"], 500);
    let rejected = received.iter().find(|e| e["detail-type"] == "tablecopy.RequestRejected").context("rejection")?;
    assert_eq!(rejected["detail"]["action"], "create");
    assert!(rejected["detail"]["reason"].as_str().unwrap_or("").contains("was not found"), "{rejected}");
    runner.stop().await;
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}
