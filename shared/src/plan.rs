//! The plan `tablecopy plan` and `create --dry-run` print: what a copy job would read and
//! write, what that costs on demand at list prices, and how long it would take, from
//! DescribeTable's estimates and the request. Pure arithmetic over what the checks read;
//! every assumption is a named constant, shown with the plan (docs/scale.md derives them).

use serde::Serialize;

use crate::handlers::{Checked, CreateJobRequest};
use crate::model::VerifyMode;
use crate::tables::TableInfo;

/// On-demand list prices, us-east-1, USD per million request units (after DynamoDB's
/// November 2024 price cut; other regions differ).
pub const USD_PER_MILLION_WRU: f64 = 0.625;
pub const USD_PER_MILLION_RRU: f64 = 0.125;
pub const PRICES: &str = "DynamoDB on-demand list prices in us-east-1 (since November 2024): $0.625 per million write request units, $0.125 per million read request units; other regions and provisioned capacity differ; tablecopy's own Lambda, SQS and control-table cost is a few percent of this (docs/scale.md)";
/// Items per second one copy-chunk worker copies (docs/scale.md's working figure).
pub const ITEMS_PER_WORKER: f64 = 3_000.0;
/// Writes per second a new on-demand table takes before it scales up (unless pre-warmed).
pub const NEW_ON_DEMAND_WRITES: f64 = 4_000.0;

/// One phase of the job: what it reads and writes, costs and lasts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhasePlan {
    /// Read request units (strongly consistent: one per 4 KB read).
    pub read_units: u64,
    /// Write request units (one per item per KB).
    pub write_units: u64,
    pub dollars: f64,
    pub items_per_second: f64,
    pub seconds: f64,
    /// What sets the rate.
    pub limited_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub source: String,
    pub target: String,
    /// DescribeTable's estimates (DynamoDB refreshes them about every six hours).
    pub estimated_items: u64,
    pub estimated_bytes: u64,
    pub average_item_bytes: u64,
    pub parallelism: u32,
    pub parallelism_from_size: bool,
    pub workers: u32,
    pub copy: PhasePlan,
    /// `None` with `--verify none`.
    pub verification: Option<PhasePlan>,
    pub total_dollars: f64,
    pub total_seconds: f64,
    pub prices: &'static str,
    /// What `create` would warn of.
    pub warnings: Vec<String>,
}

/// The plan of the job `req` describes, checked as `c`, on a deployment with `workers`
/// copy-chunk workers.
pub fn plan(c: &Checked, req: &CreateJobRequest, workers: u32) -> Plan {
    let items = c.source_info.item_count;
    let bytes = c.source_info.size_bytes;
    let average = if items == 0 { 0 } else { bytes.div_ceil(items) };
    let workers_rate = (ITEMS_PER_WORKER * f64::from(workers.max(1)), format!("{} workers", workers.max(1)));
    let read_units = bytes.div_ceil(4096);

    let mut copy_limits = vec![workers_rate.clone()];
    copy_limits.extend(req.max_write_rate.map(|r| (f64::from(r), "--max-write-rate".to_string())));
    copy_limits.extend(req.max_read_rate.map(|r| (f64::from(r), "--max-read-rate".to_string())));
    copy_limits.extend(read_capacity(&c.source_info, average).map(|r| (r, "the source's provisioned reads".into())));
    match c.target_info.provisioned {
        Some((_, write)) if write > 0 => copy_limits
            .push((write as f64 / average.div_ceil(1024).max(1) as f64, "the target's provisioned writes".into())),
        _ => copy_limits
            .push((NEW_ON_DEMAND_WRITES, "a new on-demand target's first writes/s (pre-warm it for more)".into())),
    }
    let write_units = items * average.div_ceil(1024).max(1);
    let copy = phase(items, read_units, write_units, copy_limits);

    let verification = (req.verify == VerifyMode::Full).then(|| {
        let mut limits = vec![workers_rate];
        limits.extend(req.max_read_rate.map(|r| (f64::from(r), "--max-read-rate".to_string())));
        limits.extend(read_capacity(&c.source_info, average).map(|r| (r, "the source's provisioned reads".into())));
        limits.extend(read_capacity(&c.target_info, average).map(|r| (r, "the target's provisioned reads".into())));
        // Both tables read once: twice the items, twice the bytes.
        phase(2 * items, 2 * read_units, 0, limits)
    });
    let total_dollars = copy.dollars + verification.as_ref().map_or(0.0, |v| v.dollars);
    let total_seconds = copy.seconds + verification.as_ref().map_or(0.0, |v| v.seconds);
    Plan {
        source: c.source.to_string(),
        target: c.target.to_string(),
        estimated_items: items,
        estimated_bytes: bytes,
        average_item_bytes: average,
        parallelism: c.parallelism,
        parallelism_from_size: req.parallelism.is_none(),
        workers,
        copy,
        verification,
        total_dollars,
        total_seconds,
        prices: PRICES,
        warnings: c.warnings.clone(),
    }
}

/// Items per second a table's provisioned read capacity allows (strongly consistent reads).
fn read_capacity(table: &TableInfo, average: u64) -> Option<f64> {
    table.provisioned.filter(|(read, _)| *read > 0).map(|(read, _)| read as f64 * 4096.0 / average.max(1) as f64)
}

fn phase(items: u64, read_units: u64, write_units: u64, limits: Vec<(f64, String)>) -> PhasePlan {
    let (rate, by) =
        limits.into_iter().min_by(|a, b| a.0.total_cmp(&b.0)).unwrap_or((ITEMS_PER_WORKER, "one worker".into()));
    let rate = rate.max(1.0);
    PhasePlan {
        read_units,
        write_units,
        dollars: (read_units as f64 * USD_PER_MILLION_RRU + write_units as f64 * USD_PER_MILLION_WRU) / 1e6,
        items_per_second: rate,
        seconds: items as f64 / rate,
        limited_by: by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JobName, KeyAttribute, KeySchema, KeyType, TableName};

    fn checked(items: u64, bytes: u64, target_provisioned: Option<(u64, u64)>) -> Checked {
        let key = KeySchema { partition: KeyAttribute { name: "pk".into(), kind: KeyType::S }, sort: None };
        let info = |p| TableInfo {
            key: key.clone(),
            item_count: items,
            size_bytes: bytes,
            ttl_attribute: None,
            provisioned: p,
            stream: None,
        };
        Checked {
            name: JobName::parse("plan").unwrap(),
            source: TableName::parse("src").unwrap(),
            target: TableName::parse("dst").unwrap(),
            source_info: info(None),
            target_info: info(target_provisioned),
            parallelism: 500,
            target_empty: true,
            warnings: vec![],
            stream: None,
        }
    }

    #[test]
    fn the_one_terabyte_table_of_docs_scale_costs_what_the_document_says() {
        // 10^9 items of 1,000 bytes, 36,000 items/s, 16 workers: docs/scale.md.
        let req = CreateJobRequest { max_write_rate: Some(36_000), ..Default::default() };
        let p = plan(&checked(1_000_000_000, 1_000_000_000_000, Some((0, 40_000))), &req, 16);
        assert_eq!(p.average_item_bytes, 1_000);
        assert_eq!((p.copy.read_units, p.copy.write_units), (244_140_625, 1_000_000_000));
        assert!((p.copy.dollars - 655.5).abs() < 0.1, "{}", p.copy.dollars);
        assert_eq!(p.copy.limited_by, "--max-write-rate");
        assert!((p.copy.seconds / 3600.0 - 7.7).abs() < 0.05, "{}", p.copy.seconds / 3600.0);
        let v = p.verification.unwrap();
        assert!((v.dollars - 61.0).abs() < 0.1, "{}", v.dollars);
        assert_eq!((v.write_units, v.limited_by.as_str()), (0, "16 workers"));
    }

    #[test]
    fn a_new_on_demand_target_or_few_workers_set_the_rate_and_no_verification_costs_nothing() {
        let req = CreateJobRequest { verify: VerifyMode::None, ..Default::default() };
        let p = plan(&checked(100_000, 250_000_000, None), &req, 4);
        assert_eq!(p.average_item_bytes, 2_500);
        assert_eq!(p.copy.write_units, 300_000, "2,500 bytes are 3 write units");
        assert!(p.copy.limited_by.starts_with("a new on-demand target"), "{}", p.copy.limited_by);
        assert_eq!(p.verification, None);
        let p = plan(&checked(100_000, 250_000_000, None), &CreateJobRequest::default(), 1);
        assert_eq!(p.copy.limited_by, "1 workers");
    }
}
