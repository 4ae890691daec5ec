//! The source's change feed (DynamoDB Streams): describe a stream's shards, get an iterator,
//! read records. The port is [`Streams`]; [`DynamoStreams`] is the SDK adapter and
//! `fakes::FakeStream` the in-memory one (shard splits, trimming and expired iterators, which
//! LocalStack cannot produce).

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::{OperationType, ShardIteratorType, StreamStatus};
use chrono::{DateTime, Utc};

use crate::error::{classify, AwsError, ErrorKind};
use crate::model::{Item, StreamSpec, StreamView, TableName};
use crate::tables::Tables;

/// The service's code for an iterator older than 15 minutes: get a new one from the cursor.
pub const EXPIRED_ITERATOR: &str = "ExpiredIteratorException";
/// The service's code for a position older than the stream's 24 hours.
pub const TRIMMED: &str = "TrimmedDataAccessException";

/// A shard as DescribeStream lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    pub parent: Option<String>,
}

/// A stream's state and its shards (every page of DescribeStream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// `ENABLED` or `ENABLING` (else it was disabled: its shards end and no new one comes).
    pub enabled: bool,
    pub shards: Vec<Shard>,
}

/// Where a read of a shard starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The oldest record the stream still holds.
    TrimHorizon,
    /// Right after the record with this sequence number.
    After(String),
}

/// One change of one item.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub sequence: String,
    /// ApproximateCreationDateTime: rounded down to the second.
    pub at: DateTime<Utc>,
    /// `REMOVE` (else `INSERT` or `MODIFY`).
    pub remove: bool,
    pub keys: Item,
    pub new_image: Option<Item>,
    pub old_image: Option<Item>,
}

/// One GetRecords answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordPage {
    pub records: Vec<Record>,
    /// Where to read next; `None`: the shard is closed and this was its end.
    pub next: Option<String>,
}

/// One capability: read a stream.
#[async_trait]
pub trait Streams: Send + Sync {
    async fn describe(&self, arn: &str) -> Result<StreamState, AwsError>;
    /// A shard iterator (valid for 15 minutes).
    async fn iterator(&self, arn: &str, shard: &str, from: &Position) -> Result<String, AwsError>;
    /// At most 1,000 records (and 1 MB) from `iterator`.
    async fn records(&self, iterator: &str) -> Result<RecordPage, AwsError>;
}

/// How long [`enable`] waits for a new stream to be readable.
const ENABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// Enable a `NEW_AND_OLD_IMAGES` stream on `table` and wait until its shards can be read: a
/// write made before then may never appear in the stream.
pub async fn enable<T: Tables + ?Sized, R: Streams + ?Sized>(
    tables: &T,
    streams: &R,
    table: &TableName,
) -> Result<StreamSpec, AwsError> {
    let arn = tables.enable_stream(table).await?;
    tracing::info!(%table, stream = %arn, "stream enabled; waiting until it can be read");
    let until = tokio::time::Instant::now() + ENABLE_WAIT;
    loop {
        let readable = match streams.describe(&arn).await {
            Ok(state) => match state.shards.first() {
                Some(shard) => streams.iterator(&arn, &shard.id, &Position::TrimHorizon).await.is_ok(),
                None => false,
            },
            Err(e) if e.is_retryable() || e.kind == ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        if readable {
            return Ok(StreamSpec { arn, view: StreamView::NewAndOldImages });
        }
        if tokio::time::Instant::now() >= until {
            return Err(AwsError::new(
                ErrorKind::Transient,
                format!("enabling the stream of {table}"),
                format!("its stream {arn} could not be read within {} s; it stays enabled: create the job again (without --enable-stream) in a minute", ENABLE_WAIT.as_secs()),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Whether `e` is the service's answer `code`.
pub fn is(e: &AwsError, code: &str) -> bool {
    e.code() == Some(code)
}

/// The SDK adapter.
#[derive(Clone)]
pub struct DynamoStreams {
    client: aws_sdk_dynamodbstreams::Client,
}

impl DynamoStreams {
    pub fn new(client: aws_sdk_dynamodbstreams::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Streams for DynamoStreams {
    async fn describe(&self, arn: &str) -> Result<StreamState, AwsError> {
        let mut state = StreamState { enabled: true, shards: vec![] };
        let mut start: Option<String> = None;
        loop {
            let out = self
                .client
                .describe_stream()
                .stream_arn(arn)
                .set_exclusive_start_shard_id(start)
                .send()
                .await
                .map_err(|e| classify(format!("describing stream {arn}"), e))?;
            let Some(d) = out.stream_description else { return Ok(state) };
            state.enabled = matches!(d.stream_status(), Some(StreamStatus::Enabled | StreamStatus::Enabling) | None);
            state.shards.extend(d.shards().iter().filter_map(|s| {
                Some(Shard { id: s.shard_id()?.to_string(), parent: s.parent_shard_id().map(str::to_string) })
            }));
            start = d.last_evaluated_shard_id().map(str::to_string);
            if start.is_none() {
                return Ok(state);
            }
        }
    }

    async fn iterator(&self, arn: &str, shard: &str, from: &Position) -> Result<String, AwsError> {
        let req = self.client.get_shard_iterator().stream_arn(arn).shard_id(shard);
        let req = match from {
            Position::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Position::After(seq) => {
                req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq)
            }
        };
        let out = req.send().await.map_err(|e| classify(format!("getting an iterator of shard {shard}"), e))?;
        out.shard_iterator.ok_or_else(|| {
            AwsError::new(ErrorKind::Other, format!("getting an iterator of shard {shard}"), "no iterator returned")
        })
    }

    async fn records(&self, iterator: &str) -> Result<RecordPage, AwsError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .send()
            .await
            .map_err(|e| classify("reading stream records", e))?;
        let records = out
            .records()
            .iter()
            .filter_map(|r| {
                let d = r.dynamodb()?;
                let image = |m: Option<&std::collections::HashMap<String, _>>| {
                    m.map(|m| Item::from(serde_dynamo::Item::from(m.clone())))
                };
                Some(Record {
                    sequence: d.sequence_number()?.to_string(),
                    at: d
                        .approximate_creation_date_time()
                        .and_then(|t| DateTime::from_timestamp_millis(t.to_millis().ok()?))
                        .unwrap_or_else(Utc::now),
                    remove: r.event_name() == Some(&OperationType::Remove),
                    keys: image(d.keys())?,
                    new_image: image(d.new_image()),
                    old_image: image(d.old_image()),
                })
            })
            .collect();
        Ok(RecordPage { records, next: out.next_shard_iterator })
    }
}
