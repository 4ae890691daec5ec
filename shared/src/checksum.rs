//! Order-independent checksums of a table's items, for verification (docs/design.md §7):
//! the item count and the sum, mod 2^256, of the SHA-256 of each item's canonical encoding.
//! Sums add in any order, so each segment sums its own items and the job adds the segments;
//! a second sum per bucket (by a hash of the item's *source* key, which target items carry
//! too) says where the two tables differ.

use std::fmt;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{Item, KeySchema};

/// Buckets of a checksum: the keyed second pass reads only the buckets that differ.
pub const BUCKETS: usize = 64;

/// A sum of 256-bit hashes, mod 2^256 (four little-endian 64-bit limbs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum256([u64; 4]);

impl Sum256 {
    fn of(hash: &[u8; 32]) -> Self {
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            *limb = u64::from_be_bytes(hash[24 - 8 * i..32 - 8 * i].try_into().expect("8 bytes"));
        }
        Self(limbs)
    }

    fn add(&mut self, other: &Sum256) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }
}

impl fmt::Display for Sum256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for limb in self.0.iter().rev() {
            write!(f, "{limb:016x}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Sum256 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() != 64 {
            return Err(format!("a checksum has 64 hex digits, not {}", s.len()));
        }
        let mut limbs = [0u64; 4];
        for (i, limb) in limbs.iter_mut().enumerate() {
            let part = &s[64 - 16 * (i + 1)..64 - 16 * i];
            *limb = u64::from_str_radix(part, 16).map_err(|e| format!("checksum {s:?}: {e}"))?;
        }
        Ok(Self(limbs))
    }
}

impl Serialize for Sum256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Sum256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// What one side of a verification read: items, their bytes, the sum of their hashes, and
/// per bucket the item count and the low 64 bits of the bucket's hash sum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub items: u64,
    pub bytes: u64,
    pub hash: Sum256,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<[u64; 2]>,
}

impl Checksum {
    /// Count `item`, whose source key is keyed by `source_key`.
    pub fn add_item(&mut self, item: &Item, source_key: &KeySchema) {
        let hash = item_hash(item);
        let sum = Sum256::of(&hash);
        self.items += 1;
        self.bytes += crate::model::item_size(item);
        self.hash.add(&sum);
        if self.buckets.len() != BUCKETS {
            self.buckets.resize(BUCKETS, [0, 0]);
        }
        let b = &mut self.buckets[bucket_of(item, source_key)];
        b[0] += 1;
        b[1] = b[1].wrapping_add(sum.0[0]);
    }

    /// Both checksums together.
    pub fn merge(&mut self, other: &Checksum) {
        self.items += other.items;
        self.bytes += other.bytes;
        self.hash.add(&other.hash);
        if other.buckets.is_empty() {
            return;
        }
        if self.buckets.len() != BUCKETS {
            self.buckets.resize(BUCKETS, [0, 0]);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a[0] += b[0];
            a[1] = a[1].wrapping_add(b[1]);
        }
    }

    /// The same items on both sides (as far as a 256-bit sum of SHA-256 can tell).
    pub fn matches(&self, other: &Checksum) -> bool {
        self.items == other.items && self.hash == other.hash
    }

    /// The buckets whose items differ between the two sides.
    pub fn differing_buckets(&self, other: &Checksum) -> Vec<u16> {
        let bucket = |c: &Checksum, i: usize| c.buckets.get(i).copied().unwrap_or_default();
        (0..BUCKETS).filter(|&i| bucket(self, i) != bucket(other, i)).map(|i| i as u16).collect()
    }

    /// Without its buckets (what the job keeps).
    pub fn total(&self) -> Checksum {
        Checksum { buckets: vec![], ..self.clone() }
    }
}

/// The bucket of an item: a hash of its source-key attributes, which a target item carries
/// too whatever its own key.
pub fn bucket_of(item: &Item, source_key: &KeySchema) -> usize {
    let mut h = Sha256::new();
    for attr in source_key.attributes() {
        let mut out = Vec::new();
        if let Some(v) = item.get(&attr.name) {
            encode(v, &mut out);
        }
        h.update((out.len() as u32).to_be_bytes());
        h.update(&out);
    }
    let digest: [u8; 32] = h.finalize().into();
    usize::from(digest[0]) % BUCKETS
}

/// SHA-256 of the item's canonical encoding: attribute names in order, set members in
/// order, every part length-prefixed, so equal items hash equal however they were read.
pub fn item_hash(item: &Item) -> [u8; 32] {
    let mut out = Vec::with_capacity(256);
    encode_map(item.iter(), &mut out);
    Sha256::digest(&out).into()
}

fn bytes(tag: u8, b: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend((b.len() as u32).to_be_bytes());
    out.extend(b);
}

fn encode_map<'a>(entries: impl Iterator<Item = (&'a String, &'a AttributeValue)>, out: &mut Vec<u8>) {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'M');
    out.extend((entries.len() as u32).to_be_bytes());
    for (k, v) in entries {
        bytes(b'k', k.as_bytes(), out);
        encode(v, out);
    }
}

fn encode_set<'a>(tag: u8, members: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    let mut members: Vec<&[u8]> = members.collect();
    members.sort();
    out.push(tag);
    out.extend((members.len() as u32).to_be_bytes());
    for m in members {
        bytes(b'.', m, out);
    }
}

fn encode(v: &AttributeValue, out: &mut Vec<u8>) {
    match v {
        AttributeValue::S(s) => bytes(b's', s.as_bytes(), out),
        AttributeValue::N(n) => bytes(b'n', n.as_bytes(), out),
        AttributeValue::B(b) => bytes(b'b', b.as_ref(), out),
        AttributeValue::Bool(b) => out.push(if *b { b'T' } else { b'F' }),
        AttributeValue::Null(_) => out.push(b'0'),
        AttributeValue::M(m) => encode_map(m.iter(), out),
        AttributeValue::L(l) => {
            out.push(b'L');
            out.extend((l.len() as u32).to_be_bytes());
            for v in l {
                encode(v, out);
            }
        }
        AttributeValue::Ss(s) => encode_set(b'S', s.iter().map(|x| x.as_bytes()), out),
        AttributeValue::Ns(s) => encode_set(b'N', s.iter().map(|x| x.as_bytes()), out),
        AttributeValue::Bs(s) => encode_set(b'B', s.iter().map(|x| x.as_ref()), out),
        other => bytes(b'?', format!("{other:?}").as_bytes(), out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyAttribute, KeyType};

    fn key() -> KeySchema {
        KeySchema { partition: KeyAttribute { name: "pk".into(), kind: KeyType::S }, sort: None }
    }

    fn item(pk: &str, v: &str) -> Item {
        Item::from([
            ("pk".to_string(), AttributeValue::S(pk.into())),
            ("v".to_string(), AttributeValue::S(v.into())),
            ("tags".to_string(), AttributeValue::Ss(vec!["b".into(), "a".into()])),
        ])
    }

    #[test]
    fn equal_items_hash_equal_whatever_their_order_of_attributes_or_set_members() {
        let a = item("1", "x");
        let mut b = Item::new();
        b.insert("tags".into(), AttributeValue::Ss(vec!["a".into(), "b".into()]));
        b.insert("v".into(), a["v"].clone());
        b.insert("pk".into(), a["pk"].clone());
        assert_eq!(item_hash(&a), item_hash(&b));
        assert_ne!(item_hash(&a), item_hash(&item("1", "y")));
        // A string and a number of the same text differ; so do a list and a set.
        let s = Item::from([("a".to_string(), AttributeValue::S("1".into()))]);
        let n = Item::from([("a".to_string(), AttributeValue::N("1".into()))]);
        assert_ne!(item_hash(&s), item_hash(&n));
    }

    #[test]
    fn checksums_add_in_any_order_and_find_the_bucket_that_differs() {
        let items: Vec<Item> = (0..200).map(|i| item(&i.to_string(), "v")).collect();
        let (mut whole, mut a, mut b) = (Checksum::default(), Checksum::default(), Checksum::default());
        for (i, it) in items.iter().enumerate() {
            whole.add_item(it, &key());
            if i % 3 == 0 { &mut a } else { &mut b }.add_item(it, &key());
        }
        let mut parts = Checksum::default();
        parts.merge(&b);
        parts.merge(&a);
        assert_eq!(parts, whole);
        assert!(parts.matches(&whole) && parts.differing_buckets(&whole).is_empty());

        let mut changed = Checksum::default();
        for (i, it) in items.iter().enumerate() {
            changed.add_item(if i == 17 { &items[0] } else { it }, &key());
        }
        let mut tampered = Checksum::default();
        let changed_17 = item("17", "changed");
        for (i, it) in items.iter().enumerate() {
            tampered.add_item(if i == 17 { &changed_17 } else { it }, &key());
        }
        assert!(!tampered.matches(&whole));
        assert_eq!(tampered.differing_buckets(&whole), vec![bucket_of(&items[17], &key()) as u16]);
        assert!(!changed.matches(&whole), "two items swapped for one another's copy");
    }

    #[test]
    fn sums_wrap_and_round_trip_as_hex() {
        let mut s = Sum256([u64::MAX; 4]);
        s.add(&Sum256([1, 0, 0, 0]));
        assert_eq!(s, Sum256::default());
        let x = Sum256([1, 2, 3, u64::MAX]);
        assert_eq!(x.to_string().parse::<Sum256>().unwrap(), x);
        assert_eq!(serde_json::from_str::<Sum256>(&serde_json::to_string(&x).unwrap()).unwrap(), x);
        assert!("zz".parse::<Sum256>().is_err());
    }
}
