//! Command-line definitions (dispatch lives in main.rs).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use shared::model::{JobStatus, Mode, OnItemError, VerifyMode};

#[derive(Debug, Parser)]
#[command(name = "tablecopy", version, about = "Managed, resumable copy jobs between DynamoDB tables")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, named as the AWS CLI names them.
#[derive(Debug, Args)]
pub struct Global {
    /// Send every AWS request to this URL (e.g. LocalStack's http://127.0.0.1:4566).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region (default: the profile's, or AWS_REGION).
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Named profile from the AWS config and credentials files.
    #[arg(long, global = true, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table, env = "TABLECOPY_OUTPUT")]
    pub output: Output,
    /// The deployment's CloudFormation stack; resource names are read from its outputs.
    #[arg(long, global = true, default_value = "tablecopy", env = "TABLECOPY_STACK_NAME")]
    pub stack_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Table,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a copy job (it starts at once, or waits Queued while another job runs).
    Create(CreateArgs),
    /// What a copy job would read, write, cost and take, after every check `create` makes;
    /// writes nothing.
    Plan(CopyArgs),
    /// Show a job: status, progress, rate, bytes, rejected items, times, error, history, and
    /// the depth of any dead-letter queue that is not empty.
    Show(ShowArgs),
    /// List jobs, newest first, a page at a time.
    List(ListArgs),
    /// Pause a running job: no new slice starts; it shows Paused once the slices in flight are
    /// checkpointed. It keeps its running slot.
    Pause(JobArg),
    /// Resume a paused job from its stored cursors.
    Resume(JobArg),
    /// Cancel a job for good, keeping what was copied; its slot goes to the next queued job.
    Cancel(CancelArgs),
    /// End an online job once the application has stopped writing to its source: its stream
    /// drains, the target is verified and repaired against the quiet source, and the job
    /// completes.
    Complete(CompleteArgs),
    /// The account's write region: jobs run only in the region they were created in.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Follow a job with a progress bar until it reaches a final state or Paused; exits 0
    /// only on Completed.
    Watch(WatchArgs),
    /// Run tablecopy locally (LocalStack, or any endpoint).
    #[command(subcommand)]
    Local(LocalCommand),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub job_name: String,
    #[command(flatten)]
    pub copy: CopyArgs,
    /// Check everything and print the plan (as `plan` does), writing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What to copy and how: the arguments `create` and `plan` share.
#[derive(Debug, Args)]
pub struct CopyArgs {
    #[arg(long)]
    pub source_table: String,
    #[arg(long)]
    pub target_table: String,
    /// Scan segments copied in parallel (1-1000). Default: one per 2 GiB of the source
    /// (DescribeTable's size estimate), at least 4 (DEFAULT_PARALLELISM).
    #[arg(long)]
    pub parallelism: Option<u32>,
    /// What to do with items the target's key schema refuses.
    #[arg(long, value_enum, default_value_t = ItemErrorArg::Fail)]
    pub on_item_error: ItemErrorArg,
    /// Items per second the job may write to the target, all segments together (no cap when
    /// absent). Throttling lowers the rate further, and it recovers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_write_rate: Option<u32>,
    /// Items per second the job may read from the source (no cap when absent).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_read_rate: Option<u32>,
    /// After the copy, compare every item of the target with the source (count and checksum,
    /// strongly consistent scans of both tables, then a keyed look at what differs) before the
    /// job completes: `full`, or `none` to complete as soon as every segment is copied.
    #[arg(long, value_enum, default_value_t = VerifyArg::Full)]
    pub verify: VerifyArg,
    /// When the verification finds differences, write the source's items that are missing or
    /// different in the target, delete target items no source item maps to (only if the
    /// target was empty at creation), and check those items again before completing.
    #[arg(long)]
    pub repair: bool,
    /// Leave out items the source's TTL has already expired but DynamoDB has not deleted yet
    /// (TTL attribute before the job's start), and count them. By default they are copied as
    /// they are (DynamoDB TTL is an absolute time: they expire in the target too).
    #[arg(long)]
    pub skip_expired: bool,
    /// `online`: the application keeps writing to the source while the job runs. The job
    /// copies a snapshot, then replays the source's stream (NEW_AND_OLD_IMAGES; NEW_IMAGE
    /// when both tables have the same key) until `tablecopy complete`, then verifies and
    /// repairs the target.
    #[arg(long, value_enum, default_value_t = ModeArg::Offline)]
    pub mode: ModeArg,
    /// Online, for a source without a stream: enable a NEW_AND_OLD_IMAGES stream on it first
    /// (and wait until it can be read).
    #[arg(long)]
    pub enable_stream: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// The source does not change while the job runs.
    Offline,
    /// The source keeps changing: its stream is replayed until `complete`.
    Online,
}

impl From<ModeArg> for Mode {
    fn from(a: ModeArg) -> Self {
        match a {
            ModeArg::Offline => Mode::Offline,
            ModeArg::Online => Mode::Online,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyArg {
    /// Count and checksum both tables; fail naming what differs.
    Full,
    /// Complete when every segment is copied.
    None,
}

impl From<VerifyArg> for VerifyMode {
    fn from(a: VerifyArg) -> Self {
        match a {
            VerifyArg::Full => VerifyMode::Full,
            VerifyArg::None => VerifyMode::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ItemErrorArg {
    /// Fail the job, naming sample keys and the count.
    Fail,
    /// Copy the rest and report the rejected items on the job.
    Skip,
}

impl From<ItemErrorArg> for OnItemError {
    fn from(a: ItemErrorArg) -> Self {
        match a {
            ItemErrorArg::Fail => OnItemError::Fail,
            ItemErrorArg::Skip => OnItemError::Skip,
        }
    }
}

#[derive(Debug, Args)]
pub struct JobArg {
    #[arg(long)]
    pub job_name: String,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub job_name: String,
    /// Also one line per segment: slice sequence, items, last progress, and in flight /
    /// parked / done / stalled.
    #[arg(long)]
    pub segments: bool,
}

#[derive(Debug, Args)]
pub struct CompleteArgs {
    #[arg(long)]
    pub job_name: String,
    /// Complete a job that is still copying its snapshot (only once every write to its source
    /// has stopped).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[arg(long)]
    pub job_name: String,
    /// End a running job now, without waiting for its slices in flight (e.g. stuck in the
    /// copy-chunk dead-letter queue): when they come back they write nothing.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub status: Option<StatusArg>,
    /// Jobs per page.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Continue after the page that printed this token.
    #[arg(long, conflicts_with = "all")]
    pub next_token: Option<String>,
    /// Every page, not just one.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl From<StatusArg> for JobStatus {
    fn from(a: StatusArg) -> Self {
        match a {
            StatusArg::Queued => JobStatus::Queued,
            StatusArg::Running => JobStatus::Running,
            StatusArg::Paused => JobStatus::Paused,
            StatusArg::Completed => JobStatus::Completed,
            StatusArg::Failed => JobStatus::Failed,
            StatusArg::Cancelled => JobStatus::Cancelled,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Print the current write region.
    Show,
    /// Set the write region. Every incomplete job of another region fails at once
    /// (WriteRegionChanged) and must be re-created.
    Set {
        /// e.g. us-west-2
        region: String,
    },
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[arg(long)]
    pub job_name: String,
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Keep watching a job that is Paused until it is resumed and ends (by default watch
    /// exits with status 1 on Paused, saying how to resume it).
    #[arg(long)]
    pub wait_paused: bool,
    /// Online jobs: return (status 0) once the snapshot is copied and the stream's lag is
    /// below --max-lag, so a script can stop the application's writes and run `complete`.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Seconds of lag `--until-caught-up` accepts.
    #[arg(long, default_value_t = 5, requires = "until_caught_up")]
    pub max_lag: u64,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Play the functions: long-poll the stack's queues and invoke the same handlers Lambda
    /// runs, as its SQS event source mapping would. Stops on Ctrl-C / SIGTERM and prints its
    /// counters (messages sent, control-table writes, peak RSS) as JSON.
    Run(RunArgs),
    /// Deploy infra/template.yaml as the stack (create or update) and print its outputs.
    Deploy(DeployArgs),
    /// Delete the stack.
    DeleteStack,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Concurrent copy-chunk invocations.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Records per copy-chunk invocation.
    #[arg(long, default_value_t = 1)]
    pub copy_batch_size: i32,
    /// Records per advance-checkpoint / finalize invocation.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_batch_size: i32,
    /// Override the queues' visibility timeout (seconds).
    #[arg(long)]
    pub visibility_timeout: Option<i32>,
    /// Seconds between the reconciler's passes (default: the stack's ReconcileMinutes).
    #[arg(long)]
    pub reconcile_seconds: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[arg(long, default_value = "infra/template.yaml")]
    pub template: PathBuf,
    /// Template parameter, KEY=VALUE (repeatable).
    #[arg(long = "parameter", value_parser = parse_kv)]
    pub parameters: Vec<(String, String)>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}
