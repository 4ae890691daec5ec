//! The source sample `create` reads before it records a job whose target has another key
//! schema: a bounded Scan of the source's first items, checked for items the target's key
//! cannot hold and for target-key collisions (two source items that would become one target
//! item). A job that would fail on them is refused before anything is written.

use std::collections::HashMap;

use crate::error::AwsError;
use crate::model::{render_key, Item, KeySchema, OnItemError, TableName};
use crate::tables::Tables;

/// How many source items `create` samples.
pub const SAMPLE_ITEMS: u32 = 1_000;
/// Samples named in a refusal or warning.
const NAMED: usize = 3;

/// What the sample found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleReport {
    /// Items read.
    pub sampled: u64,
    /// Items the target's key cannot hold, and up to [`NAMED`] of them (source key, reason).
    pub unfit: u64,
    pub unfit_samples: Vec<(String, String)>,
    /// Source items whose target key an earlier sampled item has, and up to [`NAMED`] pairs
    /// (the two source keys, the target key).
    pub collisions: u64,
    pub collision_samples: Vec<(String, String, String)>,
}

impl SampleReport {
    /// Check `items` of a source keyed `source` against a target keyed `target`.
    pub fn of(items: &[Item], source: &KeySchema, target: &KeySchema) -> Self {
        let mut r = SampleReport { sampled: items.len() as u64, ..Default::default() };
        let mut owners: HashMap<String, String> = HashMap::new();
        for item in items {
            let key = render_key(&source.key_of(item));
            if let Some(reason) = target.rejection(item) {
                r.unfit += 1;
                if r.unfit_samples.len() < NAMED {
                    r.unfit_samples.push((key, reason));
                }
                continue;
            }
            let target_key = render_key(&target.key_of(item));
            match owners.get(&target_key) {
                Some(first) => {
                    r.collisions += 1;
                    if r.collision_samples.len() < NAMED {
                        r.collision_samples.push((first.clone(), key, target_key));
                    }
                }
                None => {
                    owners.insert(target_key, key);
                }
            }
        }
        r
    }

    fn found(&self) -> bool {
        self.unfit + self.collisions > 0
    }

    /// What the sample found, in one sentence (empty when nothing).
    fn describe(&self, source: &TableName, target: &TableName, target_key: &KeySchema) -> String {
        let mut parts = vec![];
        if self.unfit > 0 {
            let named: Vec<String> = self.unfit_samples.iter().map(|(k, why)| format!("{k} ({why})")).collect();
            parts.push(format!("{} do not fit the key of {target} [{target_key}] ({})", self.unfit, named.join("; ")));
        }
        if self.collisions > 0 {
            let named: Vec<String> =
                self.collision_samples.iter().map(|(a, b, k)| format!("{a} and {b} both map to {k}")).collect();
            parts.push(format!(
                "{} share a target key with another source item, so the target would keep only one of them ({})",
                self.collisions,
                named.join("; ")
            ));
        }
        format!("of the first {} items of {source}, {}", self.sampled, parts.join(", and "))
    }

    /// Why `create` refuses the job (`on_item_error` fail and something found), if it does.
    pub fn refusal(
        &self,
        on_item_error: OnItemError,
        source: &TableName,
        target: &TableName,
        target_key: &KeySchema,
    ) -> Option<String> {
        (self.found() && on_item_error == OnItemError::Fail).then(|| {
            format!(
                "{}: the job would fail. Fix those items or the target's key schema, or create the job with --on-item-error skip to copy the rest and report them",
                self.describe(source, target, target_key)
            )
        })
    }

    /// What a job that skips such items is warned of, if anything was found.
    pub fn warning(&self, source: &TableName, target: &TableName, target_key: &KeySchema) -> Option<String> {
        self.found().then(|| {
            format!(
                "{}: they will be skipped and reported (--on-item-error skip)",
                self.describe(source, target, target_key)
            )
        })
    }
}

/// Read up to [`SAMPLE_ITEMS`] items of `table` from its start.
pub async fn sample<T: Tables + ?Sized>(tables: &T, table: &TableName) -> Result<Vec<Item>, AwsError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let want = SAMPLE_ITEMS - items.len() as u32;
        let page = tables.scan_page(table, 0, 1, start, want).await?;
        items.extend(page.items);
        match page.last_key {
            Some(k) if (items.len() as u32) < SAMPLE_ITEMS => start = Some(k),
            _ => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyAttribute, KeyType};
    use aws_sdk_dynamodb::types::AttributeValue;

    fn attr(name: &str, kind: KeyType) -> KeyAttribute {
        KeyAttribute { name: name.into(), kind }
    }

    #[test]
    fn a_sample_names_items_that_do_not_fit_and_target_keys_two_items_share() {
        let source = KeySchema { partition: attr("pk", KeyType::S), sort: None };
        let target = KeySchema { partition: attr("email", KeyType::S), sort: None };
        let item = |pk: &str, email: Option<&str>| {
            let mut i = Item::from([("pk".to_string(), AttributeValue::S(pk.into()))]);
            if let Some(e) = email {
                i.insert("email".into(), AttributeValue::S(e.into()));
            }
            i
        };
        let items = vec![item("a", Some("x@")), item("b", None), item("c", Some("x@")), item("d", Some("y@"))];
        let r = SampleReport::of(&items, &source, &target);
        assert_eq!((r.sampled, r.unfit, r.collisions), (4, 1, 1));
        let (s, t) = (TableName::parse("users").unwrap(), TableName::parse("by-email").unwrap());
        let refusal = r.refusal(OnItemError::Fail, &s, &t, &target).unwrap();
        assert!(refusal.starts_with("of the first 4 items of users, 1 do not fit the key of by-email"), "{refusal}");
        assert!(
            refusal.contains(r#"{"pk":{"S":"a"}} and {"pk":{"S":"c"}} both map to {"email":{"S":"x@"}}"#),
            "{refusal}"
        );
        assert!(refusal.contains("--on-item-error skip"), "{refusal}");
        assert_eq!(r.refusal(OnItemError::Skip, &s, &t, &target), None);
        assert!(r.warning(&s, &t, &target).unwrap().contains("skipped and reported"));
        let clean = SampleReport::of(&items[3..], &source, &target);
        assert_eq!((clean.refusal(OnItemError::Fail, &s, &t, &target), clean.warning(&s, &t, &target)), (None, None));
    }
}
