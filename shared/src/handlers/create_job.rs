use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::Deps;
use crate::config::TableScope;
use crate::error::RequestError;
use crate::model::{
    parallelism_for_size, InvalidInput, Job, JobName, JobSpec, JobStatus, Mode, OnItemError, Phase, StackOrigin,
    StatusChange, StreamSpec, StreamView, TableName, VerifyMode, MAX_PARALLELISM,
};
use crate::pacing;
use crate::preflight::{self, SampleReport};
use crate::queue::Outbox;
use crate::scheduler::Entry;
use crate::store::{conflict_pause, ControlStore, InsertError};
use crate::streams;
use crate::tables::{TableInfo, Tables};

/// A request to create a copy job: the CLI's call, a direct invoke payload, an event's detail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobRequest {
    pub job_name: String,
    pub source_table: String,
    pub target_table: String,
    /// Scan segments; the deployment's default when absent.
    #[serde(default)]
    pub parallelism: Option<u32>,
    #[serde(default)]
    pub on_item_error: OnItemError,
    /// Items per second the job may write (all segments together); no cap when absent.
    #[serde(default)]
    pub max_write_rate: Option<u32>,
    /// Items per second the job may read from the source; no cap when absent.
    #[serde(default)]
    pub max_read_rate: Option<u32>,
    /// Whether the job verifies the target before it completes (`full` when absent).
    #[serde(default)]
    pub verify: VerifyMode,
    /// Repair what the verification finds different before the job's final move.
    #[serde(default)]
    pub repair: bool,
    /// Leave out items the source's TTL already expired (not yet deleted by DynamoDB).
    #[serde(default)]
    pub skip_expired: bool,
    /// `online`: the source keeps changing; its stream is replayed until `complete`.
    #[serde(default)]
    pub mode: Mode,
    /// Online, for a source without a stream: enable one (`NEW_AND_OLD_IMAGES`) first.
    #[serde(default)]
    pub enable_stream: bool,
}

impl CreateJobRequest {
    /// Whether `job` is the copy this request asks for (a request without a parallelism
    /// describes a job whose parallelism was chosen from its source's size).
    pub fn describes(&self, job: &Job) -> bool {
        job.name.as_str() == self.job_name
            && job.spec.source.as_str() == self.source_table
            && job.spec.target.as_str() == self.target_table
            && match self.parallelism {
                Some(p) => p == job.spec.parallelism && !job.spec.parallelism_from_size,
                None => job.spec.parallelism_from_size,
            }
            && self.on_item_error == job.spec.on_item_error
            && self.max_write_rate == job.spec.max_write_rate
            && self.max_read_rate == job.spec.max_read_rate
            && self.verify == job.spec.verify
            && self.repairs() == job.spec.repair
            && self.skip_expired == job.spec.skip_expired
            && self.mode == job.spec.mode
    }

    /// Whether the job repairs: asked for, or online (whose `complete` ends with a repair).
    pub fn repairs(&self) -> bool {
        self.repair || self.mode == Mode::Online
    }
}

/// Validate everything, then record the job `Queued` (at the end of the queue, with one
/// parked cursor per segment) and let the scheduler start the oldest queued job if a running
/// slot is free. Nothing is written when validation fails.
pub async fn create_job<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    req: CreateJobRequest,
) -> Result<Job, RequestError> {
    create_job_from(deps, req, None).await
}

/// A create request that passed every check `create` makes before it writes, with what the
/// checks read (`create --dry-run` and `plan` stop here).
#[derive(Debug, Clone)]
pub struct Checked {
    pub name: JobName,
    pub source: TableName,
    pub target: TableName,
    pub source_info: TableInfo,
    pub target_info: TableInfo,
    pub parallelism: u32,
    pub target_empty: bool,
    pub warnings: Vec<String>,
    /// Online: the source's stream as it is (`None`: to be enabled, `--enable-stream`).
    pub stream: Option<StreamSpec>,
}

/// Every check of a create request (names, ranges, tables, key types, the source sample,
/// rates), reading but never writing; the warnings `create` would record.
pub async fn check_create<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    req: &CreateJobRequest,
) -> Result<Checked, RequestError> {
    let name = JobName::parse(req.job_name.clone())?;
    let source = TableName::parse(req.source_table.clone())?;
    let target = TableName::parse(req.target_table.clone())?;
    if source == target {
        return Err(InvalidInput(format!(
            "source and target are the same table ({source}); copy into a different, existing table"
        ))
        .into());
    }
    if req.repair && req.verify == VerifyMode::None {
        return Err(InvalidInput(
            "repair needs verification: it writes what the verification finds different. Drop --verify none, or --repair"
                .into(),
        )
        .into());
    }
    if req.mode == Mode::Online && req.verify == VerifyMode::None {
        return Err(InvalidInput(
            "an online job ends with a verification and repair of the target on the quiet source (the stream alone cannot prove the target exact): drop --verify none".into(),
        )
        .into());
    }
    if req.enable_stream && req.mode != Mode::Online {
        return Err(InvalidInput(
            "--enable-stream is for online jobs: add --mode online, or drop --enable-stream".into(),
        )
        .into());
    }
    for (role, table) in [("source", &source), ("target", &target)] {
        if !deps.config.tables.allows(table.as_str()) {
            let TableScope::Prefix(prefix) = &deps.config.tables else { unreachable!("Any allows every table") };
            return Err(InvalidInput(format!(
                "the {role} table {table} is outside this deployment: it may copy only tables whose names start with {prefix:?} (template parameter TableNamePrefix)"
            ))
            .into());
        }
    }
    if let Some(p) = req.parallelism.filter(|p| !(1..=MAX_PARALLELISM).contains(p)) {
        return Err(InvalidInput(format!(
            "parallelism {p} is out of range: use 1 to {MAX_PARALLELISM}, or leave it out to get one segment per 2 GiB of the source (at least {})",
            deps.config.tuning.default_parallelism
        ))
        .into());
    }
    for (option, rate) in [("maxWriteRate", req.max_write_rate), ("maxReadRate", req.max_read_rate)] {
        if rate == Some(0) {
            return Err(InvalidInput(format!(
                "{option} 0 would never copy anything: give at least 1 item per second, or leave it out for no cap"
            ))
            .into());
        }
    }
    let not_found = |role, table: &TableName| RequestError::TableNotFound {
        role,
        table: table.to_string(),
        region: deps.config.region.clone(),
    };
    // A table another unfinished job writes is no other job's source (it would change while
    // read and verified), and a repairing job's target has no other writer (its repair would
    // delete the other's items, or the other overwrite what it verified).
    let sched = deps.store.scheduler().await?;
    // Unfinished online jobs reading the same source's stream.
    let mut stream_jobs = vec![];
    for entry in sched.running.iter().chain(&sched.queued).filter(|e| e.job != name) {
        if let Some(other) = deps.store.get_job(&entry.job).await?.filter(|j| !j.status.is_final()) {
            if other.spec.mode == Mode::Online && other.spec.source == source {
                stream_jobs.push(format!("tablecopy job {}", other.name));
            }
            let (s, t) = (&other.spec.source, &other.spec.target);
            let shared_repaired_target = t == &target && (req.repairs() || other.spec.repair);
            if shared_repaired_target || t == &source || s == &target {
                return Err(InvalidInput(format!(
                    "job {:?} ({}) copies {s} into {t}: a table a job writes is no other job's source, and a job with --repair is its target's only writer, until it ends. Wait for it to end, or cancel it (tablecopy cancel --job-name {})",
                    other.name.as_str(),
                    other.status_label(),
                    other.name
                ))
                .into());
            }
        }
    }
    let source_info = deps.tables.describe(&source).await?.ok_or_else(|| not_found("source", &source))?;
    let target_info = deps.tables.describe(&target).await?.ok_or_else(|| not_found("target", &target))?;
    if req.skip_expired && source_info.ttl_attribute.is_none() {
        return Err(InvalidInput(format!(
            "the source {source} has no TTL, so no item of it is expired: drop --skip-expired, or enable TTL on the source first (aws dynamodb update-time-to-live --table-name {source} --time-to-live-specification Enabled=true,AttributeName=ATTRIBUTE)"
        ))
        .into());
    }
    if let Some(conflict) = target_info.key.conflict_with(&source_info.key) {
        return Err(InvalidInput(conflict).into());
    }
    let mut readers = None;
    if req.mode == Mode::Online {
        stream_refusal(req, &source, &source_info, &target_info)?;
        if let Some(stream) = &source_info.stream {
            readers = readers_warning(deps.streams.as_ref(), &source, stream, stream_jobs).await;
        }
    }
    // A target keyed otherwise: a sample of the source for items its key cannot hold and for
    // target keys two source items share.
    let sample = match source_info.key == target_info.key {
        true => None,
        false => {
            let items = preflight::sample(&deps.tables, &source).await?;
            Some(SampleReport::of(&items, &source_info.key, &target_info.key))
        }
    };
    if let Some(why) = sample.as_ref().and_then(|r| r.refusal(req.on_item_error, &source, &target, &target_info.key)) {
        return Err(InvalidInput(why).into());
    }
    let parallelism = req
        .parallelism
        .unwrap_or_else(|| parallelism_for_size(source_info.size_bytes, deps.config.tuning.default_parallelism));
    // Each segment copies at least MIN_SLICE_ITEMS per slice and waits at most
    // MAX_DELAY_SECONDS between slices: a lower share could not be held.
    let lowest = f64::from(parallelism) * f64::from(pacing::MIN_SLICE_ITEMS) / f64::from(pacing::MAX_DELAY_SECONDS);
    for (option, rate) in [("maxWriteRate", req.max_write_rate), ("maxReadRate", req.max_read_rate)] {
        if let Some(rate) = rate.filter(|r| f64::from(*r) < lowest) {
            return Err(InvalidInput(format!(
                "{option} {rate} is below what {parallelism} segments can be paced to (each copies at least {} items per {} s, {} items/s in all): raise it, or give a lower parallelism",
                pacing::MIN_SLICE_ITEMS,
                pacing::MAX_DELAY_SECONDS,
                lowest.ceil()
            ))
            .into());
        }
    }
    let target_empty = deps.tables.is_empty(&target).await?;
    let mut warnings = warnings(&source, &source_info, &target, &target_info, target_empty);
    warnings.extend(sample.and_then(|r| r.warning(&source, &target, &target_info.key)));
    warnings.extend(readers);
    let stream = source_info.stream.clone().filter(|_| req.mode == Mode::Online);
    Ok(Checked { name, source, target, source_info, target_info, parallelism, target_empty, warnings, stream })
}

/// Online: a warning when the source's stream already has two readers or more (DynamoDB
/// Streams throttles a shard read by more than two), or when they cannot be counted. The
/// readers are `jobs` (tablecopy's own online jobs on the source) and Lambda's event source
/// mappings of the stream.
async fn readers_warning(
    streams: &dyn crate::streams::Streams,
    source: &TableName,
    stream: &StreamSpec,
    jobs: Vec<String>,
) -> Option<String> {
    let mut readers = jobs;
    match streams.lambda_readers(&stream.arn).await {
        Ok(functions) => readers.extend(functions.into_iter().map(|f| format!("Lambda {f}"))),
        Err(e) => {
            return Some(format!(
                "could not count the readers of the stream of {source} ({e}); DynamoDB Streams throttles a shard read by more than two readers: check its triggers with aws lambda list-event-source-mappings --event-source-arn {}",
                stream.arn
            ))
        }
    }
    (readers.len() >= 2).then(|| {
        format!(
            "the stream of {source} already has {} readers ({}): DynamoDB Streams throttles a shard read by more than two, so this job's replay and theirs will be slowed; disable a trigger while the job runs if you can",
            readers.len(),
            readers.join(", ")
        )
    })
}

/// Online: the source's stream must carry what the replay needs, new images (and old ones
/// when the target is keyed otherwise: a move of an item's target key deletes its old one).
fn stream_refusal(
    req: &CreateJobRequest,
    source: &TableName,
    info: &TableInfo,
    target: &TableInfo,
) -> Result<(), RequestError> {
    let enable = format!(
        "aws dynamodb update-table --table-name {source} --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES"
    );
    let why = match &info.stream {
        None if req.enable_stream => return Ok(()),
        None => format!(
            "online mode reads the source's stream, and {source} has none. Enable one with\n  {enable}\nor add --enable-stream to let tablecopy enable it"
        ),
        Some(s) if matches!(s.view, StreamView::KeysOnly | StreamView::OldImage) => format!(
            "the stream of {source} is {}: its records lack the new images online mode writes. A stream's view type cannot change in place: disable it (aws dynamodb update-table --table-name {source} --stream-specification StreamEnabled=false), then\n  {enable}\n(its other readers must move to the new stream)",
            s.view.as_str()
        ),
        Some(s) if s.view == StreamView::NewImage && !target.key.same_attributes(&info.key) => format!(
            "the stream of {source} is NEW_IMAGE, but the target is keyed by [{}], not by the source's key [{}]: moving an item's target key needs its old image. Replace the stream with a NEW_AND_OLD_IMAGES one (disable it, then\n  {enable})",
            target.key, info.key
        ),
        Some(_) => return Ok(()),
    };
    Err(InvalidInput(why).into())
}

/// [`create_job`] for a CloudFormation resource, which is recorded on the job.
pub(crate) async fn create_job_from<S: ControlStore, Q: Outbox, T: Tables>(
    deps: &Deps<S, Q, T>,
    req: CreateJobRequest,
    origin: Option<StackOrigin>,
) -> Result<Job, RequestError> {
    let control = deps.control();
    let name = JobName::parse(req.job_name.clone())?;
    if deps.store.get_job(&name).await?.is_some() {
        // A create delivered again after a crash may find its own job not started yet.
        control.schedule().await?;
        return Err(RequestError::JobExists(name.to_string()));
    }
    let Checked { name, source, target, source_info, target_info, parallelism, target_empty, warnings, stream } =
        check_create(deps, &req).await?;
    let stream = match (req.mode, stream) {
        (Mode::Online, None) => Some(streams::enable(&deps.tables, deps.streams.as_ref(), &source).await?),
        (_, stream) => stream,
    };
    // Jobs of an old write region are failed by `schedule` below, before any job starts.
    let region = control.current_region().await?;

    let now = Utc::now();
    let mut job = Job {
        name: name.clone(),
        spec: JobSpec {
            source,
            target,
            parallelism,
            parallelism_from_size: req.parallelism.is_none(),
            on_item_error: req.on_item_error,
            source_key: source_info.key,
            target_key: target_info.key,
            max_write_rate: req.max_write_rate,
            max_read_rate: req.max_read_rate,
            slice: Some(deps.config.tuning.slice),
            source_ttl: source_info.ttl_attribute.clone(),
            verify: req.verify,
            repair: req.repairs(),
            skip_expired: req.skip_expired,
            mode: req.mode,
            stream,
        },
        status: JobStatus::Queued,
        write_region: region.clone(),
        estimated_total: source_info.item_count,
        estimated_bytes: source_info.size_bytes,
        items_copied: 0,
        bytes_copied: 0,
        items_rejected: 0,
        items_expired: 0,
        throttles: 0,
        rejected_samples: vec![],
        segments_done: 0,
        created_at: now,
        started_at: None,
        updated_at: now,
        completed_at: None,
        duration_ms: None,
        error: None,
        progress_at: None,
        version: 0,
        epoch: 0,
        history: vec![StatusChange { status: JobStatus::Queued, at: now }],
        pending: None,
        launched_at: None,
        stalled: 0,
        announced: 0,
        origin,
        target_empty_at_start: Some(target_empty),
        warnings,
        phase: Phase::Copying,
        verify_started_at: None,
        verification: None,
        replay_from: None,
        complete_requested_at: None,
        stream_listed_at: None,
        replay: None,
    };
    for attempt in 1.. {
        let mut next = deps.store.scheduler().await?.next();
        next.queued.push(Entry { job: name.clone(), region: region.clone() });
        let at = next.creation_time(Utc::now());
        (job.created_at, job.updated_at, job.history[0].at) = (at, at, at);
        next.last_created = Some(at);
        match deps.store.insert_job(&job, &next).await {
            Ok(()) => break,
            Err(InsertError::SchedulerChanged) => conflict_pause(attempt).await,
            Err(InsertError::JobExists) => {
                control.schedule().await?;
                return Err(RequestError::JobExists(name.to_string()));
            }
            Err(InsertError::Aws(e)) => return Err(e.into()),
        }
    }
    tracing::info!(
        segments = parallelism,
        from_size = job.spec.parallelism_from_size,
        estimated_total = job.estimated_total,
        estimated_bytes = job.estimated_bytes,
        "job recorded"
    );
    // Its cursors, in pages. A crash before they are all there leaves a queued job that
    // `schedule` completes before it starts it.
    let created = control.create_cursors(&job).await;
    if created.is_ok() {
        control.announce_now(&name).await;
    }
    if let Err(e) = created.and(control.schedule().await) {
        // The job exists and waits; the reconciler starts it when a slot is free.
        return Err(RequestError::Incomplete(format!(
            "job {:?} was recorded but could not be started yet ({e}); it starts by itself within a minute (the reconciler), or run `tablecopy resume --job-name {name}`",
            name.as_str()
        )));
    }
    let job = deps.store.get_job(&name).await?.ok_or_else(|| RequestError::JobNotFound(name.to_string()))?;
    tracing::info!(status = %job.status, "job created");
    Ok(job)
}

/// What a user should know before trusting the copy: a target that already holds items, and
/// TTL that differs between the tables.
fn warnings(
    source: &TableName,
    source_info: &TableInfo,
    target: &TableName,
    target_info: &TableInfo,
    target_empty: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if !target_empty {
        out.push(format!(
            "the target {target} is not empty: source items overwrite target items of the same key, and the target's other items stay"
        ));
    }
    match (&source_info.ttl_attribute, &target_info.ttl_attribute) {
        (Some(attr), None) => out.push(format!(
            "the source {source} expires items by TTL (attribute {attr:?}) but the target {target} has no TTL: copied items will never expire there. Enable it: aws dynamodb update-time-to-live --table-name {target} --time-to-live-specification Enabled=true,AttributeName={attr}"
        )),
        (Some(a), Some(b)) if a != b => out.push(format!(
            "the source {source} expires items by TTL attribute {a:?} but the target {target} by {b:?}: copied items expire there by {b:?}"
        )),
        _ => {}
    }
    out
}
