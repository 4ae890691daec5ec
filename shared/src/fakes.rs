//! In-memory fakes of the queues, the user's tables and CloudFormation's responses, for fast
//! handler tests. They follow the real adapters' contracts (a scan that can end on an exactly
//! full page, BatchWriteItem's refusal of duplicate keys, unprocessed items). The control
//! table's is [`crate::store::memory::MemoryStore`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{AwsError, ErrorKind};
use crate::model::{render_key, Item, KeySchema, TableName};
use crate::queue::{Outbox, QueueKind};
use crate::responder::Responder;
use crate::tables::{ScanPage, TableInfo, Tables, WriteError};
use aws_lambda_events::event::cloudformation::CloudFormationCustomResourceResponse;

#[derive(Default)]
pub struct FakeOutbox {
    pub sent: Mutex<Vec<(QueueKind, String)>>,
    /// The queue and delay of each delayed message, in the order sent.
    pub delays: Mutex<Vec<(QueueKind, u32)>>,
    /// When set, every send fails with a retryable error.
    pub broken: std::sync::atomic::AtomicBool,
}

impl FakeOutbox {
    pub fn take(&self) -> Vec<(QueueKind, String)> {
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

#[async_trait]
impl Outbox for FakeOutbox {
    async fn send(&self, to: QueueKind, bodies: Vec<String>) -> Result<(), AwsError> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AwsError::new(ErrorKind::Transient, "send", "broken"));
        }
        self.sent.lock().unwrap().extend(bodies.into_iter().map(|b| (to, b)));
        Ok(())
    }

    /// Delivered as soon as the test delivers it: the handler tests do not wait.
    async fn send_delayed(&self, to: QueueKind, body: String, delay_seconds: u32) -> Result<(), AwsError> {
        self.send(to, vec![body]).await?;
        self.delays.lock().unwrap().push((to, delay_seconds));
        Ok(())
    }
}

/// Records every CloudFormation answer, by response URL.
#[derive(Default)]
pub struct FakeResponder {
    pub answers: Mutex<Vec<(String, CloudFormationCustomResourceResponse)>>,
}

impl FakeResponder {
    pub fn take(&self) -> Vec<(String, CloudFormationCustomResourceResponse)> {
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

#[async_trait]
impl Responder for FakeResponder {
    async fn respond(&self, url: &str, response: &CloudFormationCustomResourceResponse) -> Result<(), AwsError> {
        self.answers.lock().unwrap().push((url.to_string(), response.clone()));
        Ok(())
    }
}

pub struct FakeTable {
    pub key: KeySchema,
    /// The attribute its TTL expires items by (TTL enabled).
    pub ttl_attribute: Option<String>,
    /// Items by rendered key.
    pub items: BTreeMap<String, Item>,
}

#[derive(Default)]
pub struct FakeTables {
    pub tables: Mutex<HashMap<TableName, FakeTable>>,
    /// BatchWriteItem calls that leave their last item unprocessed (throttling).
    pub unprocessed_calls: Mutex<u32>,
    /// When set, BatchWriteItem calls after this many succeed no more: each leaves an item
    /// unprocessed (a target throttled for good).
    pub throttle_after: Mutex<Option<u32>>,
    /// BatchWriteItem calls refused as a whole (as DynamoDB refuses a batch holding an item it
    /// cannot store), so that the engine writes their items one by one.
    pub refused_batches: Mutex<u32>,
    /// PutItem calls that answer throttled.
    pub throttled_puts: Mutex<u32>,
    /// When set, the next BatchWriteItem call waits for this signal before it writes (to
    /// hold one copy of a slice in the middle of its write).
    pub hold_next_write: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl FakeTables {
    pub fn add(&self, name: &str, key: KeySchema, items: Vec<Item>) {
        let items = items.into_iter().map(|i| (render_key(&key.key_of(&i)), i)).collect();
        self.tables
            .lock()
            .unwrap()
            .insert(TableName::parse(name).unwrap(), FakeTable { key, ttl_attribute: None, items });
    }

    pub fn items(&self, name: &str) -> Vec<Item> {
        self.tables.lock().unwrap()[&TableName::parse(name).unwrap()].items.values().cloned().collect()
    }
}

fn segment_of(key: &str, total: u32) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % u64::from(total)) as u32
}

#[async_trait]
impl Tables for FakeTables {
    async fn describe(&self, table: &TableName) -> Result<Option<TableInfo>, AwsError> {
        Ok(self.tables.lock().unwrap().get(table).map(|t| TableInfo {
            key: t.key.clone(),
            item_count: t.items.len() as u64,
            size_bytes: t.items.values().map(crate::model::item_size).sum(),
            ttl_attribute: t.ttl_attribute.clone(),
            provisioned: None,
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
        let tables = self.tables.lock().unwrap();
        let t = &tables[table];
        let start = start_key.map(|k| render_key(&k));
        let items: Vec<(&String, &Item)> = t
            .items
            .iter()
            .filter(|(k, _)| segment_of(k, total_segments) == segment)
            .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
            .take(limit as usize)
            .collect();
        // Like LocalStack: an exactly full page carries a LastEvaluatedKey.
        let last_key = (items.len() == limit as usize).then(|| t.key.key_of(items.last().unwrap().1));
        Ok(ScanPage { items: items.into_iter().map(|(_, i)| i.clone()).collect(), last_key })
    }

    async fn batch_get(&self, table: &TableName, keys: Vec<Item>) -> Result<(Vec<Item>, Vec<Item>), AwsError> {
        let tables = self.tables.lock().unwrap();
        let t = &tables[table];
        let mut seen = std::collections::HashSet::new();
        let mut found = vec![];
        for k in &keys {
            let rendered = render_key(k);
            if !seen.insert(rendered.clone()) || keys.len() > 100 {
                let e = "Provided list of item keys contains duplicates (or more than 100 keys)";
                return Err(AwsError::new(ErrorKind::Validation, format!("BatchGetItem {table}"), e));
            }
            found.extend(t.items.get(&rendered).cloned());
        }
        Ok((found, vec![]))
    }

    async fn batch_put(&self, table: &TableName, mut items: Vec<Item>) -> Result<Vec<Item>, WriteError> {
        let hold = self.hold_next_write.lock().unwrap().take();
        if let Some(signal) = hold {
            let _ = signal.await;
        }
        {
            let mut refused = self.refused_batches.lock().unwrap();
            if *refused > 0 {
                *refused -= 1;
                return Err(WriteError::Rejected("Item size has exceeded the maximum allowed size".into()));
            }
        }
        let mut tables = self.tables.lock().unwrap();
        let t = tables.get_mut(table).expect("table exists");
        let mut seen = std::collections::HashSet::new();
        for i in &items {
            if let Some(reason) = t.key.rejection(i) {
                return Err(WriteError::Rejected(reason));
            }
            if !seen.insert(render_key(&t.key.key_of(i))) {
                return Err(WriteError::Rejected("Provided list of item keys contains duplicates".into()));
            }
        }
        let mut unprocessed = vec![];
        let mut budget = self.unprocessed_calls.lock().unwrap();
        let mut throttle = self.throttle_after.lock().unwrap();
        let throttled = match throttle.as_mut() {
            Some(0) => true,
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        };
        if (*budget > 0 || throttled) && !items.is_empty() {
            *budget = budget.saturating_sub(1);
            unprocessed.push(items.pop().unwrap());
        }
        for i in items {
            t.items.insert(render_key(&t.key.key_of(&i)), i);
        }
        Ok(unprocessed)
    }

    async fn delete(&self, table: &TableName, key: Item) -> Result<(), AwsError> {
        let mut tables = self.tables.lock().unwrap();
        tables.get_mut(table).expect("table exists").items.remove(&render_key(&key));
        Ok(())
    }

    async fn put(&self, table: &TableName, item: Item) -> Result<(), WriteError> {
        {
            let mut throttled = self.throttled_puts.lock().unwrap();
            if *throttled > 0 {
                *throttled -= 1;
                let e = AwsError::new(ErrorKind::Throttled, format!("PutItem {table}"), "throttled");
                return Err(WriteError::Aws(e));
            }
        }
        let mut tables = self.tables.lock().unwrap();
        let t = tables.get_mut(table).expect("table exists");
        if let Some(reason) = t.key.rejection(&item) {
            return Err(WriteError::Rejected(reason));
        }
        t.items.insert(render_key(&t.key.key_of(&item)), item);
        Ok(())
    }
}
