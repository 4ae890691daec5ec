//! Configuration: resource names (from the environment in Lambda, from the stack's outputs
//! for the CLI and the runner) and tuning knobs with defaults.

use std::collections::HashMap;
use std::time::Duration;

use crate::messages::SliceLimits;

/// Names of the deployment's resources. In the template's outputs they are
/// `ControlTableName`, `CopyChunkQueueUrl`, `CheckpointQueueUrl`, `FinalizeQueueUrl`,
/// `RequestsQueueUrl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    pub control_table: String,
    pub copy_chunk_queue_url: String,
    pub checkpoint_queue_url: String,
    pub finalize_queue_url: String,
    /// Job requests from EventBridge events, consumed by create-job.
    pub requests_queue_url: String,
    /// The `source` of the deployment's events: the requests it takes, and the job events it
    /// publishes on the default bus.
    pub event_source: String,
}

/// Environment variable → stack output, for each resource.
const RESOURCE_NAMES: [(&str, &str); 6] = [
    ("CONTROL_TABLE_NAME", "ControlTableName"),
    ("COPY_CHUNK_QUEUE_URL", "CopyChunkQueueUrl"),
    ("CHECKPOINT_QUEUE_URL", "CheckpointQueueUrl"),
    ("FINALIZE_QUEUE_URL", "FinalizeQueueUrl"),
    ("REQUESTS_QUEUE_URL", "RequestsQueueUrl"),
    ("EVENT_SOURCE", "EventSource"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(String),
    #[error("{name}={value:?} is not valid: {why}")]
    Invalid { name: String, value: String, why: String },
}

impl Resources {
    /// From `CONTROL_TABLE_NAME`, `COPY_CHUNK_QUEUE_URL`, `CHECKPOINT_QUEUE_URL`,
    /// `FINALIZE_QUEUE_URL`, `REQUESTS_QUEUE_URL`, `EVENT_SOURCE`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|env, _| std::env::var(env).ok(), "environment variable")
    }

    /// From a stack's outputs (`OutputKey` → `OutputValue`).
    pub fn from_outputs(outputs: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|_, out| outputs.get(out).cloned(), "stack output")
    }

    fn from_lookup(get: impl Fn(&str, &str) -> Option<String>, what: &str) -> Result<Self, ConfigError> {
        let [a, b, c, d, e, f] = RESOURCE_NAMES.map(|(env, out)| {
            get(env, out).ok_or_else(|| {
                ConfigError::Missing(format!("{what} {}", if what.starts_with("env") { env } else { out }))
            })
        });
        Ok(Self {
            control_table: a?,
            copy_chunk_queue_url: b?,
            checkpoint_queue_url: c?,
            finalize_queue_url: d?,
            requests_queue_url: e?,
            event_source: f?,
        })
    }
}

/// Tuning knobs. All have defaults; each can be set by the environment variable named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// `SLICE_MAX_ITEMS`, `SLICE_MAX_BYTES`: how much one copy-chunk invocation reads.
    pub slice: SliceLimits,
    /// `WRITE_CONCURRENCY`: concurrent BatchWriteItem calls within one slice.
    pub write_concurrency: usize,
    /// `DEFAULT_PARALLELISM`: scan segments of a job that does not say.
    pub default_parallelism: u32,
    /// `MAX_WRITE_ATTEMPTS`: attempts per batch (throttling, unprocessed items) before the
    /// slice is given back to its queue for a later retry.
    pub max_write_attempts: u32,
    /// `MAX_RUNNING_JOBS`: jobs that hold a running slot at once (Running or Paused); the
    /// others wait `Queued`.
    pub max_running_jobs: usize,
    /// `COPY_CHUNK_VISIBILITY_TIMEOUT`: the copy-chunk queue's visibility timeout. A slice
    /// ends (and its hold on its segment runs out) before SQS could deliver its message
    /// again, and a segment in flight without progress for [`Tuning::stall_after`] is
    /// shown stalled.
    pub copy_visibility: Duration,
    /// A launch that has not marked its segments in flight after this long is taken as
    /// interrupted (its process died) and done again by the scheduler or the reconciler.
    pub launch_grace: Duration,
    /// `WORKERS`: copy-chunk invocations that run at once (the template's `Workers`; the local
    /// runner's `--concurrency`). Paced slices grow with the segments each worker serves.
    pub workers: u32,
    /// `DRAIN_SETTLE_SECONDS`: after `complete`, a shard of an online job's stream is drained by
    /// a read at its tip (no record) this long after `complete` or later.
    pub drain_settle: Duration,
}

/// How long after `complete` an online job's shards drain, when nothing says otherwise.
pub const DRAIN_SETTLE_SECONDS: u64 = 10;

/// The copy-chunk queue's visibility timeout when nothing says otherwise (the template's).
pub const COPY_CHUNK_VISIBILITY_TIMEOUT: u64 = 900;

impl Default for Tuning {
    fn default() -> Self {
        Self {
            slice: SliceLimits { max_items: 5_000, max_bytes: 16 * 1024 * 1024 },
            write_concurrency: 8,
            default_parallelism: 4,
            max_write_attempts: 12,
            max_running_jobs: 1,
            copy_visibility: Duration::from_secs(COPY_CHUNK_VISIBILITY_TIMEOUT),
            launch_grace: Duration::from_secs(30),
            workers: 4,
            drain_settle: Duration::from_secs(DRAIN_SETTLE_SECONDS),
        }
    }
}

impl Tuning {
    /// A segment in flight without progress for this long is shown stalled (its slice is
    /// probably in the copy-chunk dead-letter queue): three deliveries of a slice.
    pub fn stall_after(&self) -> Duration {
        3 * self.copy_visibility
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            slice: SliceLimits {
                max_items: env_or("SLICE_MAX_ITEMS", d.slice.max_items)?,
                max_bytes: env_or("SLICE_MAX_BYTES", d.slice.max_bytes)?,
            },
            write_concurrency: env_or("WRITE_CONCURRENCY", d.write_concurrency)?,
            default_parallelism: env_or("DEFAULT_PARALLELISM", d.default_parallelism)?,
            max_write_attempts: env_or("MAX_WRITE_ATTEMPTS", d.max_write_attempts)?,
            max_running_jobs: match env_or("MAX_RUNNING_JOBS", d.max_running_jobs)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "MAX_RUNNING_JOBS".into(),
                        value: "0".into(),
                        why: "at least one job must be able to run".into(),
                    })
                }
                m => m,
            },
            copy_visibility: Duration::from_secs(env_or(
                "COPY_CHUNK_VISIBILITY_TIMEOUT",
                COPY_CHUNK_VISIBILITY_TIMEOUT,
            )?),
            launch_grace: d.launch_grace,
            workers: env_or("WORKERS", d.workers)?.max(1),
            drain_settle: Duration::from_secs(env_or("DRAIN_SETTLE_SECONDS", DRAIN_SETTLE_SECONDS)?),
        })
    }
}

/// The stack output `name`, a whole number of at least 1, if the stack has it.
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(
    outputs: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ConfigError> {
    let Some(v) = outputs.get(name) else { return Ok(None) };
    let n = v.parse().ok().filter(|n| *n >= T::from(1)).ok_or_else(|| ConfigError::Invalid {
        name: format!("stack output {name}"),
        value: v.clone(),
        why: "expected a whole number of at least 1".into(),
    })?;
    Ok(Some(n))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => {
            v.parse().map_err(|e: T::Err| ConfigError::Invalid { name: name.into(), value: v, why: e.to_string() })
        }
        Err(_) => Ok(default),
    }
}

/// The user tables a deployment may copy: those whose names start with a prefix (the
/// template's `TableNamePrefix`, which its IAM policies also enforce), or any (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TableScope {
    #[default]
    Any,
    Prefix(String),
}

impl TableScope {
    /// `*` (or nothing) means every table.
    pub fn parse(prefix: Option<&str>) -> Self {
        match prefix {
            None | Some("") | Some("*") => TableScope::Any,
            Some(p) => TableScope::Prefix(p.to_string()),
        }
    }

    pub fn allows(&self, table: &str) -> bool {
        match self {
            TableScope::Any => true,
            TableScope::Prefix(p) => table.starts_with(p.as_str()),
        }
    }
}

/// Everything a handler needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    pub resources: Resources,
    pub tuning: Tuning,
    /// The deployment's region: the default write region.
    pub region: String,
    /// `TABLE_NAME_PREFIX` / stack output `TableNamePrefix`.
    pub tables: TableScope,
}

impl Config {
    /// For the CLI, the runner and the tests: resource names, the deployment's
    /// `MaxRunningJobs`, `Workers` and its copy-chunk visibility timeout (the stall bound)
    /// from the stack's outputs (the functions run with the same figures). The CLI passes
    /// the defaults as `tuning`, which is what the functions run with: a job's settings never
    /// come from the caller's environment.
    pub fn from_outputs(
        outputs: &HashMap<String, String>,
        mut tuning: Tuning,
        region: String,
    ) -> Result<Self, ConfigError> {
        let resources = Resources::from_outputs(outputs)?;
        if let Some(max) = at_least_one(outputs, "MaxRunningJobs")? {
            tuning.max_running_jobs = max;
        }
        if let Some(v) = outputs.get("CopyChunkVisibilityTimeout") {
            tuning.copy_visibility = Duration::from_secs(v.parse().map_err(|_| ConfigError::Invalid {
                name: "stack output CopyChunkVisibilityTimeout".into(),
                value: v.clone(),
                why: "expected a whole number of seconds".into(),
            })?);
        }
        if let Some(workers) = at_least_one(outputs, "Workers")? {
            tuning.workers = workers;
        }
        let tables = TableScope::parse(outputs.get("TableNamePrefix").map(String::as_str));
        Ok(Self { resources, tuning, region, tables })
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            resources: Resources::from_env()?,
            tuning: Tuning::from_env()?,
            region: std::env::var("AWS_REGION").map_err(|_| ConfigError::Missing("AWS_REGION".into()))?,
            tables: TableScope::parse(std::env::var("TABLE_NAME_PREFIX").ok().as_deref()),
        })
    }
}

/// The HTTPS client of every AWS SDK client here: rustls with the ring provider (the SDK's
/// default would build aws-lc from C, the slowest step of every build). Connections and the
/// machine's trust roots are set up on first use.
pub fn https_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
}

/// The SDK configuration from the standard environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// credentials), with [`https_client`].
pub async fn sdk_from_env() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client()).load().await
}

/// Attempts the DynamoDB client makes per request (standard retry mode: exponential backoff
/// with jitter on throttling and transient errors) before an error reaches the handler.
pub const DYNAMODB_MAX_ATTEMPTS: u32 = 8;

/// The DynamoDB client every component uses: the SDK configuration, with more retry attempts
/// than the SDK's default of 3, since a copy job is expected to meet throttling.
pub fn dynamodb_client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(DYNAMODB_MAX_ATTEMPTS))
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}
