//! The CLI as a user runs it: the `tablecopy` binary, against LocalStack (a stack per test)
//! or against nothing at all.

use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result};
use aws_sdk_dynamodb::types::ScalarAttributeType as T;
use serde_json::{json, Value};
use shared::handlers::create_job_entry;
use shared::model::{JobName, JobStatus};
use shared::store::JobStore;
use tests::{create_table, put_items, sample_item, unique, World, DEFAULT_ENDPOINT};

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string())
}

/// `tablecopy` with the world's stack and endpoint, and `env` on top of the environment.
fn tablecopy(w: &World, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tablecopy"));
    cmd.args(["--endpoint-url", &endpoint(), "--region", "us-east-1", "--stack-name", &w.stack]).args(args);
    cmd.envs(env.iter().copied()).env("AWS_ACCESS_KEY_ID", "test").env("AWS_SECRET_ACCESS_KEY", "test");
    cmd
}

/// Run `cmd` to its end; a command still running after two minutes is killed and fails the
/// test (a `watch` that never returns must not hang the suite).
async fn run(mut cmd: Command) -> Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    for _ in 0..1200 {
        if child.try_wait()?.is_some() {
            return Ok(tokio::task::spawn_blocking(move || child.wait_with_output()).await??);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    child.kill()?;
    anyhow::bail!("{cmd:?} did not end within two minutes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn an_unreachable_endpoint_is_one_line_that_says_what_to_do() -> Result<()> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tablecopy"));
    cmd.args(["--endpoint-url", "http://127.0.0.1:1", "--region", "us-east-1", "list"]);
    cmd.env("AWS_ACCESS_KEY_ID", "test").env("AWS_SECRET_ACCESS_KEY", "test");
    let out = run(cmd).await?;
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "error: cannot reach http://127.0.0.1:1 (connection refused): start LocalStack (`make localstack`) or check --endpoint-url\n"
    );
    Ok(())
}

#[tokio::test]
async fn output_into_a_reader_that_went_away_ends_quietly_and_a_missing_stack_says_how_to_deploy() -> Result<()> {
    let w = World::new("cli-pipe").await?;
    // `tablecopy list | head -0`: the reader is gone before the first line.
    let mut cmd = tablecopy(&w, &["list"], &[]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    drop(child.stdout.take());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    assert_eq!(text(&out.stderr), "", "no panic, no backtrace");
    assert!(out.status.success(), "{:?}", out.status);

    let mut missing = tablecopy(&w, &["list"], &[]);
    missing.args(["--stack-name", "no-such-stack"]);
    let err = text(&run(missing).await?.stderr);
    assert!(err.contains("`tablecopy local deploy`") && err.contains("`sam deploy --guided`"), "{err}");
    assert!(!err.contains("make deploy-local"), "{err}");
    w.cleanup(&[]).await;
    Ok(())
}

/// A source keyed `pk` holding `items` sample items and an empty target with the same key.
async fn tables(w: &World, items: u64) -> Result<(String, String)> {
    let (src, dst) = (unique("cli-src"), unique("cli-dst"));
    create_table(&w.ddb, &src, ("pk", T::S), None).await?;
    create_table(&w.ddb, &dst, ("pk", T::S), None).await?;
    put_items(&w.ddb, &src, (0..items).map(|i| sample_item(i, None)).collect(), 4).await?;
    Ok((src, dst))
}

/// A job created by a `Custom::TableCopyJob` that waits for its completion: the job holds the
/// presigned URL CloudFormation waits at.
async fn waiting_resource_job(w: &World, src: &str, dst: &str) -> Result<String> {
    let job = unique("cli-cr");
    let request = json!({
        "RequestType": "Create",
        "ServiceToken": "arn:aws:lambda:us-east-1:000000000000:function:tablecopy-create-job",
        "ResponseURL": "https://cloudformation-custom-resource-response.example/stack?X-Amz-Signature=SECRET",
        "StackId": "arn:aws:cloudformation:us-east-1:000000000000:stack/app/6f1c",
        "RequestId": "r1",
        "ResourceType": "Custom::TableCopyJob",
        "LogicalResourceId": "OrdersCopy",
        "ResourceProperties": {
            "ServiceToken": "arn:aws:lambda:us-east-1:000000000000:function:tablecopy-create-job",
            "JobName": job, "SourceTable": src, "TargetTable": dst, "WaitForCompletion": "true"
        },
    });
    create_job_entry(&w.deps, request).await.map_err(|e| anyhow::anyhow!(e))?;
    let stored = w.deps.store.get_job(&JobName::parse(job.as_str())?).await?.context("the job exists")?;
    assert!(stored.origin.and_then(|o| o.response_url).is_some(), "the job keeps where to answer");
    Ok(job)
}

/// Every key of a JSON document, at every depth.
fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| {
            out.push(k.clone());
            keys(v, out)
        }),
        Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn json_is_camel_case_everywhere_and_never_prints_the_response_url() -> Result<()> {
    let w = World::new("cli-json").await?;
    let (src, dst) = tables(&w, 20).await?;
    let job = waiting_resource_job(&w, &src, &dst).await?;
    for args in [vec!["show", "--job-name", &job, "--segments"], vec!["list"]] {
        let mut all = vec!["--output", "json"];
        all.extend(args.iter().copied());
        let out = run(tablecopy(&w, &all, &[])).await?;
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(!stdout.contains("SECRET") && !stdout.contains("example/stack"), "a credential was printed: {stdout}");
        let mut found = Vec::new();
        keys(&serde_json::from_str(&stdout)?, &mut found);
        assert!(found.contains(&"itemsCopied".to_string()), "{stdout}");
        let snake: Vec<_> = found.iter().filter(|k| k.contains('_')).collect();
        assert!(snake.is_empty(), "{args:?} prints snake_case keys {snake:?}");
    }
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn a_jobs_settings_come_from_the_deployment_never_from_the_callers_environment() -> Result<()> {
    let w = World::new("cli-env").await?;
    let (src, dst) = tables(&w, 0).await?;
    let job = unique("cli-env");
    let env = [("SLICE_MAX_ITEMS", "3"), ("DEFAULT_PARALLELISM", "9"), ("MAX_RUNNING_JOBS", "5")];
    let args = ["--output", "json", "create", "--job-name", &job, "--source-table", &src, "--target-table", &dst];
    let out = run(tablecopy(&w, &args, &env)).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: Value = serde_json::from_str(&text(&out.stdout))?;
    let defaults = shared::config::Tuning::default();
    assert_eq!(created["spec"]["parallelism"], defaults.default_parallelism, "{created}");
    assert_eq!(created["spec"]["slice"]["maxItems"], defaults.slice.max_items, "{created}");
    let table = text(&run(tablecopy(&w, &["show", "--job-name", &job], &env)).await?.stdout);
    let slices = table.lines().find(|l| l.starts_with("Slices ")).context("a Slices row")?;
    assert!(slices.ends_with("  up to 5,000 items or 16.0 MiB each"), "{table}");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn watch_exits_non_zero_on_paused_and_says_how_to_resume() -> Result<()> {
    let w = World::new("cli-watch").await?;
    let (src, dst) = tables(&w, 20).await?;
    let job = unique("cli-watch");
    let create = ["create", "--job-name", &job, "--source-table", &src, "--target-table", &dst];
    assert!(run(tablecopy(&w, &create, &[])).await?.status.success());
    // Paused before the runner starts: its first slices find the pause and park, copying nothing.
    assert!(run(tablecopy(&w, &["pause", "--job-name", &job], &[])).await?.status.success());
    let runner = w.start_runner(tests::runner_opts());
    let paused = tests::wait_for(&w, &job, "Paused", |j| j.status.is_final() || j.status == JobStatus::Paused).await?;
    runner.stop().await;
    assert_eq!(paused.status, JobStatus::Paused);
    let out = run(tablecopy(&w, &["watch", "--job-name", &job, "--interval-ms", "100"], &[])).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("`tablecopy resume --job-name {job}`")), "{err}");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}

#[tokio::test]
async fn plan_and_a_dry_run_print_costs_and_write_nothing_and_show_prints_what_verification_read() -> Result<()> {
    let w = World::new("cli-plan").await?;
    let (src, dst) = tables(&w, 50).await?;
    let job = unique("cli-plan");
    let copy = ["--source-table", src.as_str(), "--target-table", dst.as_str(), "--max-write-rate", "100"];
    let mut args = vec!["--output", "json", "plan"];
    args.extend(copy);
    let out = run(tablecopy(&w, &args, &[])).await?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_str(&text(&out.stdout))?;
    let items = plan["estimatedItems"].as_u64().context("estimatedItems")?;
    let per_item = plan["averageItemBytes"].as_u64().context("averageItemBytes")?.div_ceil(1024).max(1);
    assert_eq!(plan["copy"]["writeUnits"].as_u64(), Some(items * per_item), "{plan}");
    assert_eq!(
        (plan["copy"]["itemsPerSecond"].as_f64(), plan["copy"]["limitedBy"].as_str()),
        (Some(100.0), Some("--max-write-rate")),
        "{plan}"
    );
    assert_eq!(plan["verification"]["writeUnits"], 0, "{plan}");
    assert_eq!(plan["verification"]["readUnits"], 2 * plan["copy"]["readUnits"].as_u64().unwrap(), "{plan}");
    assert!(plan["prices"].as_str().unwrap().contains("us-east-1"), "{plan}");

    // create --dry-run: the same checks and plan, and no job.
    let mut args = vec!["create", "--dry-run", "--job-name", job.as_str()];
    args.extend(copy);
    let out = run(tablecopy(&w, &args, &[])).await?;
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(table.contains("Nothing was written") && table.lines().any(|l| l.starts_with("Copy ")), "{table}");
    assert!(w.deps.store.get_job(&JobName::parse(job.as_str())?).await?.is_none(), "a dry run records nothing");
    let refused = run(tablecopy(&w, &["plan", "--source-table", &src, "--target-table", "no-such-table"], &[])).await?;
    assert!(!refused.status.success() && text(&refused.stderr).contains("no-such-table"), "{}", text(&refused.stderr));

    // The job itself, verified: show prints what the verification read.
    let mut args = vec!["create", "--job-name", job.as_str()];
    args.extend(copy);
    assert!(run(tablecopy(&w, &args, &[])).await?.status.success());
    let runner = w.start_runner(tests::runner_opts());
    let done = tests::wait_final(&w, &job).await?;
    runner.stop().await;
    assert_eq!(done.status, JobStatus::Completed, "{:?}", done.error);
    let table = text(&run(tablecopy(&w, &["show", "--job-name", &job], &[])).await?.stdout);
    let row = |name: &str| table.lines().find(|l| l.starts_with(name)).map(str::to_string).unwrap_or_default();
    assert!(row("Verification ").contains("verified: 50 items, hash "), "{table}");
    assert!(row("Verification read").contains("50 items"), "{table}");
    assert!(row("Verification read").contains("strongly consistent scans"), "{table}");
    w.cleanup(&[&src, &dst]).await;
    Ok(())
}
