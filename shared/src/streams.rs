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
/// How long create waits for Lambda's list of a stream's event source mappings.
const READERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// At most `limit` records (the service takes 1 to 1,000, and at most 1 MB) from
    /// `iterator`.
    async fn records(&self, iterator: &str, limit: u32) -> Result<RecordPage, AwsError>;
    /// The Lambda functions that read the stream (its enabled event source mappings).
    async fn lambda_readers(&self, arn: &str) -> Result<Vec<String>, AwsError>;
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
    mappings: EventSourceMappings,
}

impl DynamoStreams {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self { client: aws_sdk_dynamodbstreams::Client::new(sdk), mappings: EventSourceMappings::of(sdk) }
    }
}

/// Lambda's ListEventSourceMappings, the one Lambda call tablecopy makes: a SigV4-signed GET
/// (no Lambda SDK crate, and its build time, for one call).
#[derive(Clone)]
struct EventSourceMappings {
    endpoint: String,
    region: String,
    credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
}

impl EventSourceMappings {
    fn of(sdk: &aws_config::SdkConfig) -> Self {
        let region = sdk.region().map_or_else(|| "us-east-1".to_string(), |r| r.to_string());
        let endpoint =
            sdk.endpoint_url().map_or_else(|| format!("https://lambda.{region}.amazonaws.com"), str::to_string);
        Self { endpoint: endpoint.trim_end_matches('/').to_string(), region, credentials: sdk.credentials_provider() }
    }

    /// The functions of the mappings of `arn` that read it (enabled, or being enabled).
    async fn readers(&self, arn: &str) -> Result<Vec<String>, AwsError> {
        use aws_credential_types::provider::ProvideCredentials;
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        use http_body_util::{BodyExt, Full};

        let context = format!("listing the Lambda event source mappings of {arn}");
        let fail = |kind, detail: String| AwsError::new(kind, context.clone(), detail);
        let provider =
            self.credentials.as_ref().ok_or_else(|| fail(ErrorKind::NoCredentials, "no credentials".into()))?;
        let identity =
            provider.provide_credentials().await.map_err(|e| fail(ErrorKind::NoCredentials, e.to_string()))?.into();
        let client = crate::responder::https_client().map_err(|e| fail(ErrorKind::Other, e))?;
        let (mut readers, mut marker) = (vec![], None::<String>);
        loop {
            let mut url =
                format!("{}/2015-03-31/event-source-mappings/?EventSourceArn={}", self.endpoint, query_encode(arn));
            if let Some(m) = &marker {
                url.push_str(&format!("&Marker={}", query_encode(m)));
            }
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region(&self.region)
                .name("lambda")
                .time(std::time::SystemTime::now())
                .settings(SigningSettings::default())
                .build()
                .map_err(|e| fail(ErrorKind::Other, e.to_string()))?
                .into();
            let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
                .map_err(|e| fail(ErrorKind::Validation, e.to_string()))?;
            let (instructions, _) =
                sign(signable, &params).map_err(|e| fail(ErrorKind::Other, e.to_string()))?.into_parts();
            let mut request = http::Request::get(&url)
                .body(Full::new(bytes::Bytes::new()))
                .map_err(|e| fail(ErrorKind::Validation, e.to_string()))?;
            instructions.apply_to_request_http1x(&mut request);
            let reply = client.request(request).await.map_err(|e| fail(ErrorKind::Transient, e.to_string()))?;
            let status = reply.status();
            let body = reply.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if !status.is_success() {
                let kind = match status.as_u16() {
                    403 => ErrorKind::AccessDenied,
                    429 => ErrorKind::Throttled,
                    s if s >= 500 => ErrorKind::Transient,
                    _ => ErrorKind::Other,
                };
                return Err(fail(kind, format!("HTTP {status}: {}", String::from_utf8_lossy(&body))));
            }
            let page: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| fail(ErrorKind::Other, e.to_string()))?;
            for m in page["EventSourceMappings"].as_array().into_iter().flatten() {
                let state = m["State"].as_str().unwrap_or("");
                if matches!(state, "Enabled" | "Enabling" | "Creating" | "Updating") {
                    readers.push(m["FunctionArn"].as_str().unwrap_or("a function").to_string());
                }
            }
            match page["NextMarker"].as_str() {
                Some(next) if !next.is_empty() => marker = Some(next.to_string()),
                _ => return Ok(readers),
            }
        }
    }
}

/// `s` percent-encoded for a URL query (every byte but the unreserved ones).
fn query_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
            // (A listing cut short would make shards found later look newer than they are.)
            let Some(d) = out.stream_description else {
                return Err(AwsError::new(
                    ErrorKind::Transient,
                    format!("describing stream {arn}"),
                    "the answer held no stream description",
                ));
            };
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

    async fn records(&self, iterator: &str, limit: u32) -> Result<RecordPage, AwsError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, 1_000) as i32)
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

    async fn lambda_readers(&self, arn: &str) -> Result<Vec<String>, AwsError> {
        // Create waits this long at most (Lambda may be unreachable, e.g. from a VPC without a
        // route to it): then it warns that it could not count the readers.
        match tokio::time::timeout(READERS_TIMEOUT, self.mappings.readers(arn)).await {
            Ok(readers) => readers,
            Err(_) => Err(AwsError::new(
                ErrorKind::Transient,
                format!("listing the Lambda event source mappings of {arn}"),
                format!("Lambda did not answer within {} s", READERS_TIMEOUT.as_secs()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unanswered_readers_count_ends_in_an_error_create_turns_into_a_warning() {
        // An endpoint that accepts connections and never answers (a Lambda out of reach).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut open = vec![];
            while let Ok((socket, _)) = silent.accept().await {
                open.push(socket);
            }
        });
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("id", "secret", None, None, "test"),
            ))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let streams = DynamoStreams::new(&sdk);
        let e = streams.lambda_readers("arn:aws:dynamodb:us-east-1:1:table/t/stream/x").await.unwrap_err();
        assert!(e.to_string().contains("did not answer within 5 s"), "{e}");
        held.abort();
    }

    #[tokio::test]
    async fn a_describe_stream_answer_without_a_description_is_an_error_not_an_empty_listing() {
        let http = aws_smithy_http_client::test_util::infallible_client_fn(|_req| {
            http::Response::builder()
                .status(200)
                .header("content-type", "application/x-amz-json-1.0")
                .body("{}".to_string())
                .unwrap()
        });
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("id", "secret", None, None, "test"),
            ))
            .http_client(http)
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let e = DynamoStreams::new(&sdk).describe("arn:aws:dynamodb:us-east-1:1:table/t/stream/x").await.unwrap_err();
        assert!(e.is_retryable() && e.to_string().contains("no stream description"), "{e}");
    }
}
