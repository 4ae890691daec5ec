//! Metrics a user can graph, as CloudWatch Embedded Metric Format (EMF) lines: one JSON object
//! per line, in namespace `tablecopy` with the dimension `Job`, written to standard error
//! beside the JSON logs. In Lambda both streams go to the function's log group, where
//! CloudWatch Logs extracts the metrics (no PutMetricData call, no extra permission); the
//! local runner prints the same lines in its log. The template's dashboard graphs them for one
//! job. The format is the documented one (`_aws.CloudWatchMetrics`), written with serde_json:
//! a dozen lines did not justify a crate.

use serde_json::{json, Map, Value};

pub const NAMESPACE: &str = "tablecopy";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Bytes => "Bytes",
            Unit::Milliseconds => "Milliseconds",
        }
    }
}

/// The metrics of one event (a slice copied, a slice committed) of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    function: &'static str,
    job: String,
    values: Vec<(&'static str, f64, Unit)>,
}

impl Metrics {
    /// Metrics of `job`, from `function` (kept as a property, not a dimension).
    pub fn new(function: &'static str, job: &str) -> Self {
        Self { function, job: job.to_string(), values: Vec::new() }
    }

    pub fn count(mut self, name: &'static str, value: u64) -> Self {
        self.values.push((name, value as f64, Unit::Count));
        self
    }

    pub fn bytes(mut self, name: &'static str, value: u64) -> Self {
        self.values.push((name, value as f64, Unit::Bytes));
        self
    }

    pub fn millis(mut self, name: &'static str, value: u64) -> Self {
        self.values.push((name, value as f64, Unit::Milliseconds));
        self
    }

    /// The EMF line at `timestamp_ms` (milliseconds since the epoch).
    pub fn line(&self, timestamp_ms: i64) -> String {
        let definitions: Vec<Value> =
            self.values.iter().map(|(name, _, unit)| json!({"Name": name, "Unit": unit.as_str()})).collect();
        let mut doc = Map::new();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [["Job"]], "Metrics": definitions}],
            }),
        );
        doc.insert("Job".into(), json!(self.job));
        doc.insert("Function".into(), json!(self.function));
        for (name, value, _) in &self.values {
            doc.insert((*name).into(), json!(value));
        }
        Value::Object(doc).to_string()
    }

    /// Write the line now (nothing when there is no value).
    pub fn emit(&self) {
        if !self.values.is_empty() {
            eprintln!("{}", self.line(chrono::Utc::now().timestamp_millis()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_an_emf_document_with_the_job_as_dimension() {
        let line = Metrics::new("copy-chunk", "j1").count("ItemsCopied", 500).bytes("BytesCopied", 1024).line(42);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 42);
        let m = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(m["Namespace"], "tablecopy");
        assert_eq!(m["Dimensions"], json!([["Job"]]));
        assert_eq!(
            m["Metrics"],
            json!([{"Name": "ItemsCopied", "Unit": "Count"}, {"Name": "BytesCopied", "Unit": "Bytes"}])
        );
        assert_eq!((v["Job"].as_str(), v["Function"].as_str()), (Some("j1"), Some("copy-chunk")));
        assert_eq!((v["ItemsCopied"].as_f64(), v["BytesCopied"].as_f64()), (Some(500.0), Some(1024.0)));
        assert!(!line.contains('\n'), "one line");
    }
}
