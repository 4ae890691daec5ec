//! tablecopy: the CLI. Definitions in cli.rs, rendering in render.rs, everything else in the
//! shared library; this file only dispatches.

mod cli;
mod render;
mod watch;

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use aws_config::{BehaviorVersion, Region};
use chrono::Utc;
use clap::Parser;
use shared::config::{Config, Tuning};
use shared::error::{AwsError, ErrorKind, RequestError};
use shared::handlers::{
    request, set_write_region, AwsDeps, CancelRequest, CompleteRequest, CreateJobRequest, JobRef, JobRequest,
};
use shared::model::JobName;
use shared::runner::{run, RunnerOptions};
use shared::store::{live_job, JobStore, ListQuery};
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, CopyArgs, Global, LocalCommand, Output, RegionCommand};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let endpoint = cli.global.endpoint_url.clone();
    match dispatch(cli).await {
        Ok(code) => code,
        // The reader of our output went away (`tablecopy list | head -1`): stop quietly.
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e, endpoint.as_deref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// The AWS error an error comes from, if one does.
fn aws_cause(e: &anyhow::Error) -> Option<&AwsError> {
    e.chain().find_map(|c| {
        c.downcast_ref::<AwsError>()
            .or_else(|| match c.downcast_ref::<RequestError>()? {
                RequestError::Aws(a) => Some(a),
                _ => None,
            })
            .or_else(|| match c.downcast_ref::<shared::stack::StackError>()? {
                shared::stack::StackError::Aws(a) => Some(a),
                _ => None,
            })
    })
}

/// An error as a person reads it: the chain of what failed, or for an endpoint that cannot
/// be reached or missing credentials, what to do.
fn report(e: &anyhow::Error, endpoint: Option<&str>) -> String {
    match aws_cause(e) {
        Some(a) if a.kind == ErrorKind::Unreachable => match endpoint {
            Some(url) => format!(
                "cannot reach {url} ({}): start LocalStack (`make localstack`) or check --endpoint-url",
                a.detail
            ),
            None => format!("cannot reach AWS ({}; {}): check the network, --region and --endpoint-url", a.detail, a.context),
        },
        Some(a) if a.kind == ErrorKind::NoCredentials => format!(
            "no AWS credentials ({}): pass --profile, set AWS_PROFILE, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on LocalStack: eval \"$(scripts/localstack.sh env)\")",
            a.detail
        ),
        _ => format!("{e:#}"),
    }
}

/// Print to stdout, reporting a closed reader as an error (`println!` would panic).
fn out(text: impl AsRef<str>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_ref().as_bytes())?;
    stdout.flush()?;
    Ok(())
}

async fn sdk_config(g: &Global) -> Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(shared::config::https_client());
    if let Some(r) = &g.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = &g.profile {
        loader = loader.profile_name(p);
    }
    if let Some(e) = &g.endpoint_url {
        loader = loader.endpoint_url(e);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        bail!("no AWS region: pass --region, set AWS_REGION, or configure a profile");
    }
    Ok(sdk)
}

/// Clients and resource names, read from the stack's outputs.
async fn deps(g: &Global) -> Result<(aws_config::SdkConfig, AwsDeps)> {
    let (sdk, deps, _) = deployment(g, Tuning::default()).await?;
    Ok((sdk, deps))
}

/// [`deps`] with `tuning` under the deployment's figures, and the stack's outputs. The
/// commands take the functions' defaults, never the caller's environment; only the local
/// runner, which plays the functions, reads theirs.
async fn deployment(g: &Global, tuning: Tuning) -> Result<(aws_config::SdkConfig, AwsDeps, HashMap<String, String>)> {
    let sdk = sdk_config(g).await?;
    let cfn = shared::stack::CfnClient::new(&sdk);
    let outputs = shared::stack::outputs(&cfn, &g.stack_name).await?;
    let region = sdk.region().expect("checked").to_string();
    let config = Config::from_outputs(&outputs, tuning, region)?;
    let deps = AwsDeps::new(&sdk, config);
    Ok((sdk, deps, outputs))
}

/// The dead-letter queues of the stack that hold messages, with their depth.
async fn dead_letters(sdk: &aws_config::SdkConfig, outputs: &HashMap<String, String>) -> Result<Vec<(String, u64)>> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut found = Vec::new();
    for (output, queue) in render::DEAD_LETTER_QUEUES {
        if let Some(url) = outputs.get(output) {
            let depth = shared::queue::queue_depth(&sqs, url).await?;
            if depth > 0 {
                found.push((queue.to_string(), depth));
            }
        }
    }
    Ok(found)
}

/// Every JSON document the CLI prints has camelCase keys (see [`render::camel_case_keys`]).
fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let v = render::camel_case_keys(serde_json::to_value(v)?);
    out(serde_json::to_string_pretty(&v)? + "\n")
}

/// A job as `show` prints it, in the chosen format.
fn print_job(output: Output, job: &shared::model::Job) -> Result<()> {
    match output {
        Output::Json => print_json(&render::JobView::new(job, Utc::now())),
        Output::Table => out(render::job_table(job, None, Utc::now())),
    }
}

fn create_request(job_name: String, a: CopyArgs) -> CreateJobRequest {
    CreateJobRequest {
        job_name,
        source_table: a.source_table,
        target_table: a.target_table,
        parallelism: a.parallelism,
        on_item_error: a.on_item_error.into(),
        max_write_rate: a.max_write_rate,
        max_read_rate: a.max_read_rate,
        verify: a.verify.into(),
        repair: a.repair,
        skip_expired: a.skip_expired,
        mode: a.mode.into(),
        enable_stream: a.enable_stream,
    }
}

/// The plan of a job, after every check `create` makes; nothing is written.
async fn print_plan(output: Output, deps: &AwsDeps, req: &CreateJobRequest) -> Result<()> {
    let checked = shared::handlers::check_create(deps, req).await?;
    let plan = shared::plan::plan(&checked, req, deps.config.tuning.workers);
    match output {
        Output::Json => print_json(&plan),
        Output::Table => out(render::plan_table(&plan)),
    }
}

/// Pause, resume or cancel, through the same handler create-job's entry point runs.
async fn job_request(g: &Global, req: JobRequest) -> Result<()> {
    let (_, deps) = deps(g).await?;
    print_job(g.output, &request(&deps, req).await?)
}

async fn dispatch(cli: Cli) -> Result<std::process::ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Create(a) => {
            let (_, deps) = deps(g).await?;
            let req = create_request(a.job_name, a.copy);
            if a.dry_run {
                let name = JobName::parse(req.job_name.clone())?;
                if deps.store.get_job(&name).await?.is_some() {
                    bail!(RequestError::JobExists(name.to_string()));
                }
                print_plan(g.output, &deps, &req).await?;
            } else {
                print_job(g.output, &request(&deps, JobRequest::Create(req)).await?)?;
            }
        }
        Command::Plan(a) => {
            let (_, deps) = deps(g).await?;
            print_plan(g.output, &deps, &create_request("plan".into(), a)).await?;
        }
        Command::Pause(a) => job_request(g, JobRequest::Pause(JobRef { job_name: a.job_name })).await?,
        Command::Resume(a) => job_request(g, JobRequest::Resume(JobRef { job_name: a.job_name })).await?,
        Command::Cancel(a) => {
            job_request(g, JobRequest::Cancel(CancelRequest { job_name: a.job_name, force: a.force })).await?
        }
        Command::Complete(a) => {
            job_request(g, JobRequest::Complete(CompleteRequest { job_name: a.job_name, force: a.force })).await?
        }
        Command::Show(a) => {
            let (sdk, deps, outputs) = deployment(g, Tuning::default()).await?;
            let name = JobName::parse(a.job_name)?;
            let Some((job, cursors)) = live_job(&deps.store, &name).await? else {
                bail!(RequestError::JobNotFound(name.to_string()))
            };
            let dlqs = dead_letters(&sdk, &outputs).await?;
            let now = Utc::now();
            let stall = deps.config.tuning.stall_after();
            match g.output {
                Output::Json => {
                    let mut view = serde_json::to_value(render::JobView::new(&job, now))?;
                    view["allowedRate"] = serde_json::json!(render::allowed_rate(&cursors));
                    view["deadLetterQueues"] =
                        dlqs.iter().map(|(q, n)| serde_json::json!({"queue": q, "messages": n})).collect();
                    if a.segments {
                        view["segments"] = serde_json::to_value(render::segment_views(&cursors, now, stall))?;
                    }
                    print_json(&view)?;
                }
                Output::Table => {
                    let mut text = render::job_table(&job, Some(&cursors), now);
                    for (queue, depth) in &dlqs {
                        text += &format!("Dead letters    {depth} message(s) in the {queue} dead-letter queue\n");
                    }
                    if a.segments {
                        text += &render::segments_table(&cursors, now, stall);
                    }
                    out(text)?;
                }
            }
        }
        Command::List(a) => {
            let (_, deps) = deps(g).await?;
            let mut query =
                ListQuery { status: a.status.map(Into::into), limit: usize::from(a.limit), after: a.next_token };
            let mut jobs = Vec::new();
            let next = loop {
                let page = deps.store.list_jobs(&query).await?;
                jobs.extend(page.jobs);
                match page.next {
                    Some(next) if a.all => query.after = Some(next),
                    next => break next,
                }
            };
            // The list index holds no phase: a running job (at most MaxRunningJobs of them) is
            // read whole for its label (`Running (catching up)`, `Running (verifying)`).
            let mut labels = Vec::with_capacity(jobs.len());
            for j in &jobs {
                labels.push(match j.status {
                    shared::model::JobStatus::Running => {
                        deps.store.get_job(&j.name).await?.map(|job| job.status_label())
                    }
                    _ => None,
                });
            }
            let views: Vec<_> = jobs.iter().zip(labels).map(|(j, label)| render::SummaryView::new(j, label)).collect();
            match g.output {
                Output::Json => print_json(&serde_json::json!({ "jobs": views, "nextToken": next }))?,
                Output::Table => {
                    out(render::jobs_table(&views))?;
                    if let Some(t) = next {
                        eprintln!("more jobs: add --next-token {t:?} (or --all)");
                    }
                }
            }
        }
        Command::Region(RegionCommand::Show) => {
            let (_, deps) = deps(g).await?;
            let set = deps.store.write_region().await?;
            let region = set.clone().unwrap_or_else(|| deps.config.region.clone());
            match g.output {
                Output::Json => print_json(&serde_json::json!({ "writeRegion": region, "default": set.is_none() }))?,
                Output::Table if set.is_none() => out(format!("{region} (the deployment's region; never set)\n"))?,
                Output::Table => out(format!("{region}\n"))?,
            }
        }
        Command::Region(RegionCommand::Set { region }) => {
            let (_, deps) = deps(g).await?;
            let failed = set_write_region(&deps, &region).await?;
            match g.output {
                Output::Json => print_json(&serde_json::json!({ "writeRegion": region, "jobsFailed": failed }))?,
                Output::Table => out(format!(
                    "write region set to {region}; {failed} incomplete job(s) of another region failed (WriteRegionChanged)\n"
                ))?,
            }
        }
        Command::Watch(a) => {
            let (_, deps) = deps(g).await?;
            let name = JobName::parse(a.job_name)?;
            let tty = std::io::stderr().is_terminal();
            let until = watch::Until {
                paused: !a.wait_paused,
                caught_up: a.until_caught_up.then(|| std::time::Duration::from_secs(a.max_lag)),
            };
            if a.until_caught_up {
                match deps.store.get_job(&name).await? {
                    Some(job) if job.spec.mode == shared::model::Mode::Offline => anyhow::bail!(
                        "job {name} is an offline job: it has no stream to catch up with. Watch it without --until-caught-up"
                    ),
                    _ => {}
                }
            }
            let job = watch::watch(&deps.store, &name, a.interval_ms, until, tty).await?;
            // The exit status says how the job ended, even if nobody reads the output.
            match print_job(g.output, &job) {
                Err(e) if !broken_pipe(&e) => return Err(e),
                _ => {}
            }
            if job.status == shared::model::JobStatus::Paused {
                eprintln!(
                    "job {name} is Paused: `tablecopy resume --job-name {name}` continues it (watch --wait-paused waits through pauses)"
                );
            }
            if until.caught_up.is_some_and(|lag| watch::caught_up(&job, lag)) && !job.status.is_final() {
                eprintln!(
                    "job {name} has caught up with its stream: stop the application's writes to {}, then `tablecopy complete --job-name {name}`",
                    job.spec.source
                );
                return Ok(std::process::ExitCode::SUCCESS);
            }
            if job.status != shared::model::JobStatus::Completed {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Local(LocalCommand::Run(a)) => {
            shared::logging::init();
            let (sdk, mut deps, outputs) = deployment(g, Tuning::from_env()?).await?;
            // The runner's copy-chunk concurrency is its workers (the template's `Workers`).
            deps.config.tuning.workers = a.concurrency.max(1) as u32;
            let minutes = outputs.get("ReconcileMinutes").and_then(|m| m.parse::<u64>().ok()).unwrap_or(1);
            let reconcile = std::time::Duration::from_secs(a.reconcile_seconds.unwrap_or(60 * minutes).max(1));
            let outbox = deps.outbox.clone();
            let store = deps.store.clone();
            let shutdown = CancellationToken::new();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
                stop.cancel();
            });
            let opts = RunnerOptions {
                concurrency: a.concurrency,
                copy_batch_size: a.copy_batch_size,
                checkpoint_batch_size: a.checkpoint_batch_size,
                visibility_timeout: a.visibility_timeout,
                reconcile_every: Some(reconcile),
                ..RunnerOptions::default()
            };
            run(Arc::new(deps), aws_sdk_sqs::Client::new(&sdk), opts, shutdown).await;
            let stats = serde_json::json!({
                "messagesSent": outbox.messages_sent(),
                "controlTableItemWrites": store.item_writes(),
                "controlTableConflicts": store.conflicts(),
                "peakRssKiB": shared::runner::peak_rss_kib(),
            });
            out(format!("{stats}\n"))?;
        }
        Command::Local(LocalCommand::Deploy(a)) => {
            let sdk = sdk_config(g).await?;
            let template = std::fs::read_to_string(&a.template)
                .with_context(|| format!("reading the template {}", a.template.display()))?;
            let outputs = shared::stack::deploy_local(
                &shared::stack::CfnClient::new(&sdk),
                &g.stack_name,
                &template,
                &a.parameters,
            )
            .await?;
            let mut outputs: Vec<_> = outputs.into_iter().collect();
            outputs.sort();
            match g.output {
                Output::Json => print_json(&outputs.into_iter().collect::<std::collections::BTreeMap<_, _>>())?,
                Output::Table => out(outputs.iter().map(|(k, v)| format!("{k:<30} {v}\n")).collect::<String>())?,
            }
        }
        Command::Local(LocalCommand::DeleteStack) => {
            let sdk = sdk_config(g).await?;
            shared::stack::delete(&shared::stack::CfnClient::new(&sdk), &g.stack_name).await?;
            eprintln!("stack {} deleted", g.stack_name);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
