//! The user's tables: describe, scan a page of a segment, write items.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    BillingMode, KeyType as DdbKeyType, KeysAndAttributes, PutRequest, ScalarAttributeType, TimeToLiveStatus,
    WriteRequest,
};

use crate::error::{classify, AwsError, ErrorKind};
use crate::model::{Item, KeyAttribute, KeySchema, KeyType, StreamSpec, StreamView, TableName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub key: KeySchema,
    /// DynamoDB's estimate, refreshed about every six hours.
    pub item_count: u64,
    /// DynamoDB's estimate of the table's size in bytes, refreshed likewise.
    pub size_bytes: u64,
    /// The attribute its TTL expires items by, when TTL is enabled (or being enabled).
    pub ttl_attribute: Option<String>,
    /// Read and write capacity units of a provisioned table (`None`: on demand).
    pub provisioned: Option<(u64, u64)>,
    /// Its stream, when one is enabled.
    pub stream: Option<StreamSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    pub items: Vec<Item>,
    pub last_key: Option<Item>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request was refused as a whole (e.g. an item does not fit the key schema).
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// One capability: read and write the user's tables.
#[async_trait]
pub trait Tables: Send + Sync {
    /// `None` when the table does not exist.
    async fn describe(&self, table: &TableName) -> Result<Option<TableInfo>, AwsError>;
    /// One page of a parallel scan, strongly consistent.
    async fn scan_page(
        &self,
        table: &TableName,
        segment: u32,
        total_segments: u32,
        start_key: Option<Item>,
        limit: u32,
    ) -> Result<ScanPage, AwsError>;
    /// Whether the table holds no item: consistent Scans of one item, following a page that
    /// came back empty with a key to go on from (after a few such pages, taken as not empty).
    async fn is_empty(&self, table: &TableName) -> Result<bool, AwsError> {
        let mut start = None;
        for _ in 0..8 {
            let page = self.scan_page(table, 0, 1, start, 1).await?;
            if !page.items.is_empty() {
                return Ok(false);
            }
            match page.last_key {
                None => return Ok(true),
                next => start = next,
            }
        }
        Ok(false)
    }
    /// BatchGetItem of at most 100 distinct keys, strongly consistent: the items found, and
    /// the keys left unprocessed (to ask again).
    async fn batch_get(&self, table: &TableName, keys: Vec<Item>) -> Result<(Vec<Item>, Vec<Item>), AwsError>;
    /// BatchWriteItem of at most 25 puts; returns the unprocessed items.
    async fn batch_put(&self, table: &TableName, items: Vec<Item>) -> Result<Vec<Item>, WriteError>;
    /// PutItem of one item.
    async fn put(&self, table: &TableName, item: Item) -> Result<(), WriteError>;
    /// DeleteItem of the item with this key (nothing if there is none) and, with `owner`,
    /// only if the item holds these attribute values (nothing if it does not).
    async fn delete(&self, table: &TableName, key: Item, owner: Option<Item>) -> Result<(), AwsError>;
    /// Enable a `NEW_AND_OLD_IMAGES` stream on the table; its ARN.
    async fn enable_stream(&self, table: &TableName) -> Result<String, AwsError>;
}

/// The DynamoDB adapter.
#[derive(Clone)]
pub struct DynamoTables {
    client: aws_sdk_dynamodb::Client,
}

impl DynamoTables {
    pub fn new(client: aws_sdk_dynamodb::Client) -> Self {
        Self { client }
    }
}

fn write_error(err: AwsError) -> WriteError {
    match err.kind {
        ErrorKind::Validation => WriteError::Rejected(err.to_string()),
        _ => WriteError::Aws(err),
    }
}

#[async_trait]
impl Tables for DynamoTables {
    async fn describe(&self, table: &TableName) -> Result<Option<TableInfo>, AwsError> {
        let out = match self.client.describe_table().table_name(table.as_str()).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => return Ok(None),
            Err(e) => return Err(classify(format!("DescribeTable {table}"), e)),
        };
        let Some(desc) = out.table else { return Ok(None) };
        let defs = desc.attribute_definitions();
        let attr = |name: &str| -> KeyAttribute {
            let kind = match defs.iter().find(|d| d.attribute_name() == name).map(|d| d.attribute_type()) {
                Some(ScalarAttributeType::N) => KeyType::N,
                Some(ScalarAttributeType::B) => KeyType::B,
                _ => KeyType::S,
            };
            KeyAttribute { name: name.to_string(), kind }
        };
        let schema = desc.key_schema();
        let hash = schema.iter().find(|k| k.key_type() == &DdbKeyType::Hash);
        let range = schema.iter().find(|k| k.key_type() == &DdbKeyType::Range);
        let Some(hash) = hash else { return Ok(None) };
        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(table.as_str())
            .send()
            .await
            .map_err(|e| classify(format!("DescribeTimeToLive {table}"), e))?;
        let ttl_attribute = ttl
            .time_to_live_description
            .filter(|d| matches!(d.time_to_live_status(), Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)))
            .and_then(|d| d.attribute_name);
        Ok(Some(TableInfo {
            key: KeySchema { partition: attr(hash.attribute_name()), sort: range.map(|r| attr(r.attribute_name())) },
            item_count: desc.item_count().unwrap_or(0).max(0) as u64,
            size_bytes: desc.table_size_bytes().unwrap_or(0).max(0) as u64,
            ttl_attribute,
            provisioned: match desc.billing_mode_summary().and_then(|b| b.billing_mode()) {
                Some(BillingMode::PayPerRequest) => None,
                _ => desc.provisioned_throughput().map(|p| {
                    (
                        p.read_capacity_units().unwrap_or(0).max(0) as u64,
                        p.write_capacity_units().unwrap_or(0).max(0) as u64,
                    )
                }),
            }
            .filter(|(r, w)| r + w > 0),
            stream: desc
                .stream_specification()
                .filter(|s| s.stream_enabled())
                .and_then(|s| s.stream_view_type())
                .and_then(|v| StreamView::parse(v.as_str()))
                .zip(desc.latest_stream_arn())
                .map(|(view, arn)| StreamSpec { arn: arn.to_string(), view }),
        }))
    }

    async fn scan_page(
        &self,
        table: &TableName,
        segment: u32,
        total_segments: u32,
        start_key: Option<Item>,
        limit: u32,
    ) -> Result<ScanPage, AwsError> {
        let out = self
            .client
            .scan()
            .table_name(table.as_str())
            .segment(segment as i32)
            .total_segments(total_segments as i32)
            .set_exclusive_start_key(start_key)
            .limit(limit as i32)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(format!("Scan {table} segment {segment}"), e))?;
        Ok(ScanPage { items: out.items.unwrap_or_default(), last_key: out.last_evaluated_key })
    }

    async fn batch_get(&self, table: &TableName, keys: Vec<Item>) -> Result<(Vec<Item>, Vec<Item>), AwsError> {
        let request = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(|e| AwsError::new(ErrorKind::Other, format!("BatchGetItem {table}"), e.to_string()))?;
        let out = self
            .client
            .batch_get_item()
            .request_items(table.as_str(), request)
            .send()
            .await
            .map_err(|e| classify(format!("BatchGetItem {table}"), e))?;
        let found = out.responses.unwrap_or_default().into_values().flatten().collect();
        let unprocessed = out.unprocessed_keys.unwrap_or_default().into_values().flat_map(|k| k.keys).collect();
        Ok((found, unprocessed))
    }

    async fn batch_put(&self, table: &TableName, items: Vec<Item>) -> Result<Vec<Item>, WriteError> {
        let requests = items
            .into_iter()
            .map(|item| {
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(item)).build().expect("item is set"))
                    .build()
            })
            .collect();
        let out = self
            .client
            .batch_write_item()
            .request_items(table.as_str(), requests)
            .send()
            .await
            .map_err(|e| write_error(classify(format!("BatchWriteItem {table}"), e)))?;
        Ok(out
            .unprocessed_items
            .unwrap_or_default()
            .into_values()
            .flatten()
            .filter_map(|w| w.put_request.map(|p| p.item))
            .collect())
    }

    async fn put(&self, table: &TableName, item: Item) -> Result<(), WriteError> {
        self.client
            .put_item()
            .table_name(table.as_str())
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| write_error(classify(format!("PutItem {table}"), e)))
    }

    async fn delete(&self, table: &TableName, key: Item, owner: Option<Item>) -> Result<(), AwsError> {
        let mut req = self.client.delete_item().table_name(table.as_str()).set_key(Some(key));
        if let Some(owner) = owner {
            let mut conditions = vec![];
            for (i, (name, value)) in owner.into_iter().enumerate() {
                conditions.push(format!("#o{i} = :o{i}"));
                req = req
                    .expression_attribute_names(format!("#o{i}"), name)
                    .expression_attribute_values(format!(":o{i}"), value);
            }
            req = req.condition_expression(conditions.join(" AND "));
        }
        match req.send().await.map_err(|e| classify(format!("DeleteItem {table}"), e)) {
            Err(e) if e.kind == ErrorKind::ConditionFailed => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn enable_stream(&self, table: &TableName) -> Result<String, AwsError> {
        let spec = aws_sdk_dynamodb::types::StreamSpecification::builder()
            .stream_enabled(true)
            .stream_view_type(aws_sdk_dynamodb::types::StreamViewType::NewAndOldImages)
            .build()
            .map_err(|e| AwsError::new(ErrorKind::Other, "building a stream specification", e.to_string()))?;
        let out = self
            .client
            .update_table()
            .table_name(table.as_str())
            .stream_specification(spec)
            .send()
            .await
            .map_err(|e| classify(format!("enabling the stream of {table}"), e))?;
        out.table_description.and_then(|d| d.latest_stream_arn).ok_or_else(|| {
            AwsError::new(ErrorKind::Other, format!("enabling the stream of {table}"), "no stream ARN returned")
        })
    }
}
