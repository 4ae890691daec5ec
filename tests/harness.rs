//! Test harness: LocalStack connection, a stack per test deployed from infra/template.yaml,
//! user tables with unique names, sample items of every attribute type, an in-process runner
//! that can be stopped or killed, and item-by-item comparison of two tables.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest, ScalarAttributeType,
    WriteRequest,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use shared::config::{Config, Resources, Tuning};
use shared::handlers::{AwsDeps, CreateJobRequest, Deps};
use shared::model::{Item, Job, JobName, OnItemError};
use shared::runner::RunnerOptions;
use shared::store::{DynamoStore, JobStore};
use tokio_util::sync::CancellationToken;

pub mod bench_kit;
pub mod writer;

pub const TEMPLATE: &str = include_str!("../infra/template.yaml");
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";

/// Connect to LocalStack (`AWS_ENDPOINT_URL`, default http://127.0.0.1:4566). Fails loudly when
/// it does not answer: integration tests are never skipped silently.
pub async fn localstack() -> Result<SdkConfig> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_string());
    localstack_at(&endpoint).await
}

/// Connect to the LocalStack at `endpoint`; fails loudly when it does not answer.
pub async fn localstack_at(endpoint: &str) -> Result<SdkConfig> {
    let endpoint = endpoint.to_string();
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string());
    let health = format!("{endpoint}/_localstack/health");
    let ok = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(["-fsS", "--max-time", "5", &health]).output()
    })
    .await?
    .map(|o| o.status.success())
    .unwrap_or(false);
    if !ok {
        bail!("LocalStack does not answer at {endpoint}: start it with `scripts/localstack.sh start` (make test does)");
    }
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    }
    Ok(aws_config::defaults(BehaviorVersion::latest())
        .http_client(shared::config::https_client())
        .region(Region::new(region))
        .endpoint_url(endpoint)
        .load()
        .await)
}

/// A unique lowercase suffix for resource names.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// One test's world: its own stack (control table, queues) and clients.
pub struct World {
    pub sdk: SdkConfig,
    pub ddb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub stack: String,
    pub outputs: HashMap<String, String>,
    pub deps: Arc<AwsDeps>,
}

impl World {
    /// Deploy the template as a new stack with short visibility timeouts, so a killed
    /// runner's messages come back quickly (fine for the tests' small slices).
    pub async fn new(name: &str) -> Result<Self> {
        Self::with_tuning(name, Tuning::default()).await
    }

    pub async fn with_tuning(name: &str, tuning: Tuning) -> Result<Self> {
        let params = [
            ("CopyChunkVisibilityTimeout".to_string(), "20".to_string()),
            ("CheckpointVisibilityTimeout".to_string(), "10".to_string()),
        ];
        Self::deploy(name, tuning, &params).await
    }

    /// Deploy the template with these parameters (the template's defaults for the others).
    pub async fn deploy(name: &str, tuning: Tuning, params: &[(String, String)]) -> Result<Self> {
        Self::deploy_on(localstack().await?, name, tuning, params).await
    }

    /// Deploy on the LocalStack `sdk` points at.
    pub async fn deploy_on(sdk: SdkConfig, name: &str, tuning: Tuning, params: &[(String, String)]) -> Result<Self> {
        let stack = unique(&format!("tc-{name}"));
        let cfn = aws_sdk_cloudformation::Client::new(&sdk);
        // Every test stack has a rule on the one default bus: its own event source keeps
        // another test's events out of its requests queue.
        let mut params = params.to_vec();
        params.push(("EventSource".to_string(), stack.clone()));
        shared::stack::deploy_local(&cfn, &stack, TEMPLATE, &params).await.context("deploying the stack")?;
        Self::attach(sdk, stack, tuning).await
    }

    /// The world of an existing stack, known by name only: everything else comes from its
    /// outputs (as the CLI and the runner find it with --stack-name).
    pub async fn attach(sdk: SdkConfig, stack: String, tuning: Tuning) -> Result<Self> {
        let cfn = aws_sdk_cloudformation::Client::new(&sdk);
        let outputs = shared::stack::outputs(&cfn, &stack).await.context("reading the stack's outputs")?;
        let config = Config::from_outputs(&outputs, tuning, sdk.region().unwrap().to_string())?;
        Ok(Self {
            ddb: shared::config::dynamodb_client(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            deps: Arc::new(AwsDeps::new(&sdk, config)),
            sdk,
            stack,
            outputs,
        })
    }

    pub fn resources(&self) -> &Resources {
        &self.deps.config.resources
    }

    /// Start the local runner in this process.
    pub fn start_runner(&self, opts: RunnerOptions) -> Runner {
        self.start_runner_with(self.deps.clone(), opts)
    }

    /// Start the local runner with other capabilities (e.g. an outbox that misbehaves).
    pub fn start_runner_with<S, Q, T>(&self, deps: Arc<Deps<S, Q, T>>, opts: RunnerOptions) -> Runner
    where
        S: shared::store::ControlStore + 'static,
        Q: shared::queue::Outbox + 'static,
        T: shared::tables::Tables + 'static,
    {
        let token = CancellationToken::new();
        let handle = tokio::spawn(shared::runner::run(deps, self.sqs.clone(), opts, token.clone()));
        Runner { token, handle }
    }

    /// This world's functions with a control-table client that makes at most `attempts` SDK
    /// attempts per request, so that a throttling LocalStack's errors reach the handlers (the
    /// functions' own client tries 8 times).
    pub fn control_with_attempts(&self, attempts: u32) -> Arc<AwsDeps> {
        let conf = aws_sdk_dynamodb::config::Builder::from(&self.sdk)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(attempts))
            .build();
        let store = DynamoStore::new(aws_sdk_dynamodb::Client::from_conf(conf), self.resources().control_table.clone());
        let d = &self.deps;
        Arc::new(Deps {
            store,
            outbox: d.outbox.clone(),
            tables: d.tables.clone(),
            responder: d.responder.clone(),
            events: d.events.clone(),
            streams: d.streams.clone(),
            config: d.config.clone(),
        })
    }

    /// Messages waiting or in flight on a queue (approximate, as SQS counts).
    pub async fn queue_depth(&self, url: &str) -> Result<u64> {
        Ok(shared::queue::queue_depth(&self.sqs, url).await?)
    }

    /// Wait until the copy-chunk and checkpoint queues are empty (a running runner handled
    /// every message, late ones included) and stay so for two seconds.
    pub async fn queues_handled(&self) -> Result<()> {
        for _ in 0..900 {
            let mut depth = 0;
            for url in [&self.resources().copy_chunk_queue_url, &self.resources().checkpoint_queue_url] {
                depth += self.queue_depth(url).await?;
            }
            if depth == 0 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("messages were still on the copy-chunk or checkpoint queue after 3 minutes")
    }

    /// Every item of the control table.
    pub async fn control_items(&self) -> Result<Vec<Item>> {
        scan_all(&self.ddb, &self.resources().control_table).await
    }

    /// Delete the stack (best effort: a failed test still cleans up what it can).
    pub async fn cleanup(self, tables: &[&str]) {
        for t in tables {
            let _ = self.ddb.delete_table().table_name(*t).send().await;
        }
        let cfn = aws_sdk_cloudformation::Client::new(&self.sdk);
        let _ = shared::stack::delete(&cfn, &self.stack).await;
    }
}

/// A second LocalStack, on its own port, with DynamoDB fault injection
/// (`DYNAMODB_ERROR_PROBABILITY`): reads and writes throw ProvisionedThroughputExceeded and
/// BatchWriteItem leaves items unprocessed. Stopped when dropped.
pub struct FaultyLocalStack {
    pub endpoint: String,
    pub log: std::path::PathBuf,
}

impl FaultyLocalStack {
    pub fn start(port: u16, error_probability: &str) -> Result<Self> {
        let endpoint = format!("http://127.0.0.1:{port}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(root.join("scripts/localstack.sh"))
            .arg("start")
            .env("LOCALSTACK_ENDPOINT", &endpoint)
            .env("DYNAMODB_ERROR_PROBABILITY", error_probability)
            .status()
            .context("running scripts/localstack.sh")?;
        if !status.success() {
            bail!("could not start a LocalStack at {endpoint}");
        }
        Ok(Self { log: root.join(format!(".cache/localstack-{port}.log")), endpoint })
    }

    /// Requests LocalStack refused with ProvisionedThroughputExceededException so far.
    pub fn throttled_requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|l| l.lines().filter(|l| l.contains("ProvisionedThroughputExceededException")).count())
            .unwrap_or(0)
    }
}

impl Drop for FaultyLocalStack {
    fn drop(&mut self) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let _ = std::process::Command::new(root.join("scripts/localstack.sh"))
            .arg("stop")
            .env("LOCALSTACK_ENDPOINT", &self.endpoint)
            .status();
    }
}

/// An in-process runner.
pub struct Runner {
    token: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Runner {
    /// Stop after the batches in progress.
    pub async fn stop(self) {
        self.token.cancel();
        let _ = self.handle.await;
    }

    /// Die at once, wherever the handlers are (Lambda being killed between two lines).
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Create a table with the given partition key (and optional sort key) and wait until active.
pub async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
    hash: (&str, ScalarAttributeType),
    range: Option<(&str, ScalarAttributeType)>,
) -> Result<()> {
    let mut req = ddb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(AttributeDefinition::builder().attribute_name(hash.0).attribute_type(hash.1).build()?)
        .key_schema(KeySchemaElement::builder().attribute_name(hash.0).key_type(KeyType::Hash).build()?);
    if let Some((r, t)) = range {
        req = req
            .attribute_definitions(AttributeDefinition::builder().attribute_name(r).attribute_type(t).build()?)
            .key_schema(KeySchemaElement::builder().attribute_name(r).key_type(KeyType::Range).build()?);
    }
    req.send().await.with_context(|| format!("creating table {name}"))?;
    for _ in 0..100 {
        let d = ddb.describe_table().table_name(name).send().await?;
        if d.table.and_then(|t| t.table_status).map(|s| s.as_str() == "ACTIVE").unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("table {name} did not become active")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Item `i` of the sample set: key `pk` (S) for the source, `customer` (S) + `order_no` (N)
/// for a target with another key schema, and every attribute type DynamoDB has. Every
/// `big_every`-th item carries a ~390 KB string, close to DynamoDB's 400 KB item limit.
pub fn sample_item(i: u64, big_every: Option<u64>) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(format!("order-{i:08}")));
    item.insert("customer".into(), s(format!("cust-{:04}", i % 997)));
    item.insert("order_no".into(), n(i));
    item.insert("amount".into(), n(format!("{}.{:02}", i % 10_000, i % 100)));
    item.insert("payload".into(), AttributeValue::B(format!("bin-{i}").into_bytes().into()));
    item.insert("paid".into(), AttributeValue::Bool(i.is_multiple_of(2)));
    item.insert("coupon".into(), AttributeValue::Null(true));
    item.insert(
        "address".into(),
        AttributeValue::M(HashMap::from([
            ("city".to_string(), s(format!("city-{}", i % 50))),
            ("zip".to_string(), n(10_000 + i % 90_000)),
            ("geo".to_string(), AttributeValue::L(vec![n(i % 90), n(i % 180)])),
        ])),
    );
    item.insert("lines".into(), AttributeValue::L(vec![s("sku-1"), n(i % 7), AttributeValue::Bool(true)]));
    item.insert("tags".into(), AttributeValue::Ss(vec![format!("t{}", i % 5), "all".into()]));
    item.insert("scores".into(), AttributeValue::Ns(vec![(i % 3).to_string(), "100".into(), "-1.5".into()]));
    item.insert("blobs".into(), AttributeValue::Bs(vec![vec![1u8, 2, 3].into(), i.to_be_bytes().to_vec().into()]));
    item.insert("note".into(), s("x".repeat(600)));
    if big_every.is_some_and(|k| i % k == k - 1) {
        item.insert("big".into(), s("B".repeat(390 * 1024)));
    }
    item
}

/// Write items with BatchWriteItem, `concurrency` batches at a time, retrying unprocessed ones.
pub async fn put_items(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<Item>,
    concurrency: usize,
) -> Result<()> {
    let batches: Vec<Vec<Item>> = items.chunks(25).map(|c| c.to_vec()).collect();
    stream::iter(batches)
        .map(|batch| batch_write_all(ddb, table, batch))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// One BatchWriteItem, retried until nothing is unprocessed.
pub async fn batch_write_all(ddb: &aws_sdk_dynamodb::Client, table: &str, batch: Vec<Item>) -> Result<()> {
    let mut pending: Vec<WriteRequest> = batch
        .into_iter()
        .map(|i| WriteRequest::builder().put_request(PutRequest::builder().set_item(Some(i)).build().unwrap()).build())
        .collect();
    let mut attempt = 0;
    while !pending.is_empty() {
        let out = ddb.batch_write_item().request_items(table, pending.clone()).send().await;
        pending = match out {
            Ok(o) => o.unprocessed_items.unwrap_or_default().remove(table).unwrap_or_default(),
            Err(e) => {
                attempt += 1;
                if attempt > 10 {
                    return Err(e).context("BatchWriteItem");
                }
                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                continue;
            }
        };
    }
    Ok(())
}

/// Every item of a table (parallel scan).
pub async fn scan_all(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Result<Vec<Item>> {
    let segments = 4;
    let parts = futures::future::try_join_all((0..segments).map(|seg| async move {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = ddb
                .scan()
                .table_name(table)
                .segment(seg)
                .total_segments(segments)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .with_context(|| format!("scanning {table}"))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return anyhow::Ok(items);
            }
        }
    }))
    .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// A canonical text of an item: attribute names sorted, set members sorted.
pub fn canonical(item: &Item) -> String {
    fn value(v: &AttributeValue) -> serde_json::Value {
        use serde_json::json;
        match v {
            AttributeValue::S(x) => json!({ "S": x }),
            AttributeValue::N(x) => json!({ "N": x }),
            AttributeValue::B(x) => json!({ "B": x.as_ref() }),
            AttributeValue::Bool(x) => json!({ "BOOL": x }),
            AttributeValue::Null(x) => json!({ "NULL": x }),
            AttributeValue::M(m) => {
                json!({ "M": m.iter().map(|(k, v)| (k.clone(), value(v))).collect::<BTreeMap<_, _>>() })
            }
            AttributeValue::L(l) => json!({ "L": l.iter().map(value).collect::<Vec<_>>() }),
            AttributeValue::Ss(x) => json!({ "SS": sorted(x.clone()) }),
            AttributeValue::Ns(x) => json!({ "NS": sorted(x.clone()) }),
            AttributeValue::Bs(x) => json!({ "BS": sorted(x.iter().map(|b| b.as_ref().to_vec()).collect()) }),
            other => json!({ "?": format!("{other:?}") }),
        }
    }
    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }
    let m: BTreeMap<_, _> = item.iter().map(|(k, v)| (k.clone(), value(v))).collect();
    serde_json::to_string(&m).unwrap()
}

/// Compare two tables item by item. Returns the number of items; fails naming differences.
pub async fn assert_same_items(ddb: &aws_sdk_dynamodb::Client, source: &str, target: &str) -> Result<usize> {
    let (a, b) = tokio::try_join!(scan_all(ddb, source), scan_all(ddb, target))?;
    compare_items(source, &a, target, &b)
}

/// Compare two item sets as multisets of canonical items.
pub fn compare_items(source: &str, a: &[Item], target: &str, b: &[Item]) -> Result<usize> {
    let mut left: Vec<String> = a.iter().map(canonical).collect();
    let mut right: Vec<String> = b.iter().map(canonical).collect();
    left.sort();
    right.sort();
    if left != right {
        let only_left = left.iter().filter(|x| right.binary_search(x).is_err()).count();
        let only_right = right.iter().filter(|x| left.binary_search(x).is_err()).count();
        let sample =
            left.iter().find(|x| right.binary_search(x).is_err()).map(|x| x.chars().take(200).collect::<String>());
        bail!(
            "{source} has {} items, {target} has {}: {only_left} only in {source}, {only_right} only in {target}; e.g. {sample:?}",
            left.len(),
            right.len()
        );
    }
    Ok(left.len())
}

/// A create request with four segments that fails on rejected items.
pub fn request(job: &str, source: &str, target: &str) -> CreateJobRequest {
    CreateJobRequest {
        job_name: job.into(),
        source_table: source.into(),
        target_table: target.into(),
        parallelism: Some(4),
        on_item_error: OnItemError::Fail,
        ..Default::default()
    }
}

/// Poll the job until `done` holds; `what` names the wait in the error. The deadline only
/// guards against a hang.
pub async fn wait_for(w: &World, job: &str, what: &str, done: impl Fn(&Job) -> bool) -> Result<Job> {
    let name = JobName::parse(job)?;
    let mut last = None;
    for _ in 0..3000 {
        let j = w.deps.store.get_job(&name).await?.context("the job exists")?;
        if done(&j) {
            return Ok(j);
        }
        last = Some(j);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("job {job}: {what} did not happen within 5 minutes; last seen {last:?}")
}

/// Poll the job until it is final.
pub async fn wait_final(w: &World, job: &str) -> Result<Job> {
    wait_for(w, job, "a final state", |j| j.status.is_final()).await
}

/// Poll the job until `done` holds and every state change of it is published (recorded by a
/// write of its own right after the move, or by finalize later): from then on nothing but a
/// request changes its item.
pub async fn wait_settled(w: &World, job: &str, what: &str, done: impl Fn(&Job) -> bool) -> Result<Job> {
    wait_for(w, job, &format!("{what}, published"), |j| done(j) && !j.unannounced()).await
}

/// Small slices, so a copy is many slices long and requests or kills land in the middle of it.
pub fn small_slices(max_items: u32) -> Tuning {
    Tuning { slice: shared::messages::SliceLimits { max_items, max_bytes: 1 << 24 }, ..Tuning::default() }
}

/// The runner as the tests run it: four copy-chunk invocations at once, and the reconciler
/// every two seconds (the template's period is a minute).
pub fn runner_opts() -> RunnerOptions {
    RunnerOptions { concurrency: 4, reconcile_every: Some(Duration::from_secs(2)), ..RunnerOptions::default() }
}

/// A source keyed `pk` with sample items 0..n, and an empty target keyed `customer` +
/// `order_no` (one target item per source item); the items in `lacking` have no `order_no`
/// (the target's sort key).
pub async fn rekey_tables(w: &World, tag: &str, n: u64, lacking: &[u64]) -> Result<(String, String)> {
    let (src, dst) = (unique(&format!("{tag}-src")), unique(&format!("{tag}-dst")));
    create_table(&w.ddb, &src, ("pk", ScalarAttributeType::S), None).await?;
    create_table(&w.ddb, &dst, ("customer", ScalarAttributeType::S), Some(("order_no", ScalarAttributeType::N)))
        .await?;
    let items = (0..n)
        .map(|i| {
            let mut item = sample_item(i, None);
            if lacking.contains(&i) {
                item.remove("order_no");
            }
            item
        })
        .collect();
    put_items(&w.ddb, &src, items, 8).await?;
    Ok((src, dst))
}
