//! In-memory fakes of the queues, the user's tables and CloudFormation's responses, for fast
//! handler tests. They follow the real adapters' contracts (a scan that can end on an exactly
//! full page, BatchWriteItem's refusal of duplicate keys, unprocessed items). The control
//! table's is [`crate::store::memory::MemoryStore`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::error::{AwsError, ErrorKind};
use crate::model::{render_key, Item, KeySchema, StreamSpec, StreamView, TableName};
use crate::queue::{Outbox, QueueKind};
use crate::responder::Responder;
use crate::streams::{self, Position, Record, RecordPage, Shard, StreamState, Streams};
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
    /// Its stream, when enabled.
    pub stream: Option<StreamSpec>,
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
            .insert(TableName::parse(name).unwrap(), FakeTable { key, ttl_attribute: None, items, stream: None });
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
            stream: t.stream.clone(),
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

    async fn delete(&self, table: &TableName, key: Item, owner: Option<Item>) -> Result<(), AwsError> {
        let mut tables = self.tables.lock().unwrap();
        let items = &mut tables.get_mut(table).expect("table exists").items;
        let k = render_key(&key);
        let owned = |item: &Item| owner.as_ref().is_none_or(|o| o.iter().all(|(a, v)| item.get(a) == Some(v)));
        if items.get(&k).is_some_and(owned) {
            items.remove(&k);
        }
        Ok(())
    }

    async fn enable_stream(&self, table: &TableName) -> Result<String, AwsError> {
        let mut tables = self.tables.lock().unwrap();
        let t = tables.get_mut(table).expect("table exists");
        let arn = format!("arn:fake:dynamodb:table/{table}/stream/1");
        t.stream = Some(StreamSpec { arn: arn.clone(), view: StreamView::NewAndOldImages });
        Ok(arn)
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

/// An in-memory DynamoDB stream, following the service's rules: every change of one item
/// goes to one shard lineage, in order (a key of a split parent goes on in one child); a
/// closed shard's last read has no next iterator; an open shard at its tip answers no record
/// with a next iterator; a position older than what the stream keeps is
/// `TrimmedDataAccessException` (but the trim horizon silently starts at the oldest record
/// left); iterators can expire. It produces what LocalStack cannot: splits, trimming, aged-out
/// parents and expired iterators.
pub struct FakeStream {
    pub arn: String,
    pub log: Mutex<StreamLog>,
}

pub struct StreamLog {
    pub enabled: bool,
    pub shards: Vec<FakeShard>,
    /// GetRecords calls that answer `ExpiredIteratorException`.
    pub expire_next: u32,
    /// Records per GetRecords answer at most (the service's 1,000; a call's limit may lower it).
    pub page: usize,
    /// Empty answers a new iterator gives before the records at its position ("it might take
    /// multiple calls to get to a portion of the shard that contains stream records").
    pub empty_pages: usize,
    /// The Lambda functions reading the stream.
    pub lambda_readers: Vec<String>,
    /// The error code every call answers, as long as it is set (a policy without
    /// `dynamodb:DescribeStream` and the rest: `AccessDeniedException`).
    pub refuse: Option<&'static str>,
    next_sequence: u64,
    iterators: HashMap<String, (usize, usize, usize)>,
}

pub struct FakeShard {
    pub id: String,
    pub parent: Option<String>,
    pub records: Vec<Record>,
    pub closed: bool,
    /// Records before this index are trimmed.
    pub trimmed: usize,
    /// DescribeStream still lists it (a shard ages out 24 hours after it closed).
    pub listed: bool,
}

impl FakeShard {
    fn new(id: &str, parent: Option<&str>) -> Self {
        Self { id: id.into(), parent: parent.map(Into::into), records: vec![], closed: false, trimmed: 0, listed: true }
    }
}

impl FakeStream {
    /// The stream of `table` in `tables` (enabled there, NEW_AND_OLD_IMAGES), with one open
    /// shard, `shard-0`.
    pub fn on(tables: &FakeTables, table: &str) -> Self {
        let arn = format!("arn:fake:dynamodb:table/{table}/stream/1");
        let spec = StreamSpec { arn: arn.clone(), view: StreamView::NewAndOldImages };
        tables.tables.lock().unwrap().get_mut(&TableName::parse(table).unwrap()).expect("table exists").stream =
            Some(spec);
        let log = StreamLog {
            enabled: true,
            shards: vec![FakeShard::new("shard-0", None)],
            expire_next: 0,
            page: 1_000,
            empty_pages: 0,
            lambda_readers: vec![],
            refuse: None,
            next_sequence: 1,
            iterators: HashMap::new(),
        };
        Self { arn, log: Mutex::new(log) }
    }

    /// The application writes `item` to `table`: the table changes and the stream records it
    /// (no record when the item is unchanged, as DynamoDB).
    pub fn put(&self, tables: &FakeTables, table: &str, item: Item) {
        let mut all = tables.tables.lock().unwrap();
        let t = all.get_mut(&TableName::parse(table).unwrap()).expect("table exists");
        let keys = t.key.key_of(&item);
        let old = t.items.insert(render_key(&keys), item.clone());
        if old.as_ref() != Some(&item) {
            self.record(keys, Some(item), old, false);
        }
    }

    /// The application deletes the item with `key` from `table`.
    pub fn remove(&self, tables: &FakeTables, table: &str, key: Item) {
        let mut all = tables.tables.lock().unwrap();
        let t = all.get_mut(&TableName::parse(table).unwrap()).expect("table exists");
        if let Some(old) = t.items.remove(&render_key(&key)) {
            self.record(key, None, Some(old), true);
        }
    }

    fn record(&self, keys: Item, new_image: Option<Item>, old_image: Option<Item>, remove: bool) {
        let mut log = self.log.lock().unwrap();
        let shard = log.shard_of(&render_key(&keys));
        let sequence = format!("{:021}", log.next_sequence);
        log.next_sequence += 1;
        let at = chrono::Utc::now();
        log.shards[shard].records.push(Record { sequence, at, remove, keys, new_image, old_image });
    }

    /// Close `parent` and open `children` under it (one: a rotation; two: a split).
    pub fn split(&self, parent: &str, children: &[&str]) {
        let mut log = self.log.lock().unwrap();
        log.shards.iter_mut().find(|s| s.id == parent).expect("shard exists").closed = true;
        for c in children {
            log.shards.push(FakeShard::new(c, Some(parent)));
        }
    }

    /// Trim the first `n` records of `shard` (older than 24 hours).
    pub fn trim(&self, shard: &str, n: usize) {
        let mut log = self.log.lock().unwrap();
        let s = log.shards.iter_mut().find(|s| s.id == shard).expect("shard exists");
        s.trimmed = n.min(s.records.len());
    }

    /// DescribeStream no longer lists `shard` (it aged out).
    pub fn age_out(&self, shard: &str) {
        self.log.lock().unwrap().shards.iter_mut().find(|s| s.id == shard).expect("shard exists").listed = false;
    }
}

impl StreamLog {
    /// The open shard a key's changes go to: down its lineage from a root, by hash at splits.
    fn shard_of(&self, key: &str) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let h = h.finish() as usize;
        let children = |id: Option<&str>| -> Vec<usize> {
            (0..self.shards.len()).filter(|&i| self.shards[i].parent.as_deref() == id).collect()
        };
        let mut at = children(None)[h % children(None).len()];
        while self.shards[at].closed {
            let next = children(Some(&self.shards[at].id));
            at = next[h % next.len()];
        }
        at
    }

    fn iterator(&mut self, shard: usize, position: usize, empty: usize) -> String {
        let id = format!("iterator-{}", self.iterators.len());
        self.iterators.insert(id.clone(), (shard, position, empty));
        id
    }
}

fn stream_error(code: &str, what: &str) -> AwsError {
    AwsError::new(ErrorKind::of_code(code), what.to_string(), code.to_string()).with_code(code)
}

#[async_trait]
impl Streams for FakeStream {
    async fn describe(&self, arn: &str) -> Result<StreamState, AwsError> {
        if arn != self.arn {
            return Err(stream_error("ResourceNotFoundException", "DescribeStream"));
        }
        let log = self.log.lock().unwrap();
        if let Some(code) = log.refuse {
            return Err(stream_error(code, "DescribeStream"));
        }
        let shards = log
            .shards
            .iter()
            .filter(|s| s.listed)
            .map(|s| Shard { id: s.id.clone(), parent: s.parent.clone() })
            .collect();
        Ok(StreamState { enabled: log.enabled, shards })
    }

    async fn iterator(&self, arn: &str, shard: &str, from: &Position) -> Result<String, AwsError> {
        let mut log = self.log.lock().unwrap();
        if let Some(code) = log.refuse {
            return Err(stream_error(code, "GetShardIterator"));
        }
        let Some(i) = log.shards.iter().position(|s| s.id == shard && s.listed).filter(|_| arn == self.arn) else {
            return Err(stream_error("ResourceNotFoundException", "GetShardIterator"));
        };
        let s = &log.shards[i];
        let position = match from {
            Position::TrimHorizon => s.trimmed,
            Position::After(seq) => match s.records.iter().position(|r| &r.sequence == seq) {
                Some(p) if p >= s.trimmed => p + 1,
                _ => return Err(stream_error(streams::TRIMMED, "GetShardIterator")),
            },
        };
        let empty = log.empty_pages;
        Ok(log.iterator(i, position, empty))
    }

    async fn records(&self, iterator: &str, limit: u32) -> Result<RecordPage, AwsError> {
        let mut log = self.log.lock().unwrap();
        if let Some(code) = log.refuse {
            return Err(stream_error(code, "GetRecords"));
        }
        if log.expire_next > 0 {
            log.expire_next -= 1;
            return Err(stream_error(streams::EXPIRED_ITERATOR, "GetRecords"));
        }
        let Some(&(shard, position, empty)) = log.iterators.get(iterator) else {
            return Err(stream_error(streams::EXPIRED_ITERATOR, "GetRecords"));
        };
        if empty > 0 {
            return Ok(RecordPage { records: vec![], next: Some(log.iterator(shard, position, empty - 1)) });
        }
        let s = &log.shards[shard];
        if position < s.trimmed {
            return Err(stream_error(streams::TRIMMED, "GetRecords"));
        }
        let end = (position + log.page.min(limit.clamp(1, 1_000) as usize)).min(s.records.len());
        let records = s.records[position..end].to_vec();
        let last = s.closed && end == s.records.len();
        let next = (!last).then(|| log.iterator(shard, end, 0));
        Ok(RecordPage { records, next })
    }

    async fn lambda_readers(&self, _arn: &str) -> Result<Vec<String>, AwsError> {
        Ok(self.log.lock().unwrap().lambda_readers.clone())
    }
}
