//! A job's rate budget (`--max-write-rate`, `--max-read-rate`, items per second), kept
//! without paying for idle Lambda time: no function sleeps. Each segment carries its pace in
//! its messages: its current rate and the time its slice was due. A slice copies at full speed
//! a number of items that lasts about [`SLICE_SECONDS`] at that rate (longer when each worker
//! serves several segments, see [`span`]); advance-checkpoint then
//! sends the next slice with an SQS `DelaySeconds` that brings the segment back to its
//! schedule. Under pacing every unfinished segment is in flight at once (waiting in the queue
//! between its slices), so the budget is shared by the unfinished segments: together they never
//! exceed it, whatever the workers and the parallelism. Throttling of a slice halves its
//! segment's rate (multiplicative decrease); each slice without throttling raises it by a tenth
//! of its share, up to the share (additive increase). Without a budget nothing is paced.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{JobSpec, Pass};

/// About how long a paced slice's items last at its segment's rate.
pub const SLICE_SECONDS: f64 = 2.0;
/// How far behind its schedule a segment may fall and still make the time up (by waiting less
/// before its next slices): one slice's time. This pays back the moments between a slice's due
/// time and its start (queue delivery, the checkpoint hop) that would otherwise be lost on
/// every slice; a segment later than that (it waited for a worker) is paced from its real
/// start less this bound, so it never bursts more than one slice ahead of the budget.
pub const CATCH_UP_SECONDS: f64 = SLICE_SECONDS;
/// A paced slice copies at least one BatchWriteItem's worth of items.
pub const MIN_SLICE_ITEMS: u32 = 25;
/// SQS's longest message delay.
pub const MAX_DELAY_SECONDS: u32 = 900;

/// A segment's pace, carried by its messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pace {
    /// The segment's current rate in items per second: at most its share of the budget.
    pub rate: f64,
    /// When this slice was due to start, on the segment's schedule.
    pub due: DateTime<Utc>,
    /// Seconds a slice's items last at `rate` (see [`span`]).
    #[serde(default = "default_span")]
    pub span: f64,
}

fn default_span() -> f64 {
    SLICE_SECONDS
}

/// How many seconds a paced slice's items last at its segment's rate: [`SLICE_SECONDS`] when
/// every unfinished segment has a worker, longer when each worker serves several segments
/// (`unfinished / workers` × [`SLICE_SECONDS`], at most [`MAX_DELAY_SECONDS`]). The workers
/// then run fewer, bigger slices (a slice's cost to tablecopy is per slice, not per item) and
/// can keep every segment on its schedule; the budget holds over each span.
pub fn span(unfinished: u32, workers: u32) -> f64 {
    let per_worker = f64::from(unfinished.max(1)) / f64::from(workers.max(1));
    (SLICE_SECONDS * per_worker.max(1.0)).min(f64::from(MAX_DELAY_SECONDS))
}

/// The items per second a job may process: the lower of its write and read budgets (a slice
/// reads as many items as it writes or rejects). `None`: no budget.
pub fn budget(spec: &JobSpec) -> Option<f64> {
    match (spec.max_write_rate, spec.max_read_rate) {
        (None, None) => None,
        (w, r) => Some(f64::from(w.unwrap_or(u32::MAX).min(r.unwrap_or(u32::MAX)))),
    }
}

/// The budget that paces a pass: both rates for the passes that write (the copy, the
/// repair), the read rate alone for those that only read.
pub fn for_pass(spec: &JobSpec, pass: Pass) -> JobSpec {
    match pass {
        Pass::Copy | Pass::RepairSource | Pass::RepairTarget => spec.clone(),
        _ => JobSpec { max_write_rate: None, ..spec.clone() },
    }
}

/// One segment's share of the budget when `unfinished` segments remain.
pub fn share(budget: f64, unfinished: u32) -> f64 {
    budget / f64::from(unfinished.max(1))
}

/// The pace of a segment's first slice (a launch, or a resume), due `now`.
pub fn start(spec: &JobSpec, unfinished: u32, workers: u32, now: DateTime<Utc>) -> Option<Pace> {
    budget(spec).map(|b| Pace { rate: share(b, unfinished), due: now, span: span(unfinished, workers) })
}

/// After a slice paced by `pace`, started at `started`, that processed `items` and met
/// `throttles` throttled writes: the next slice's pace, and the whole seconds to delay it.
#[allow(clippy::too_many_arguments)]
pub fn next(
    pace: &Pace,
    spec: &JobSpec,
    unfinished: u32,
    workers: u32,
    items: u64,
    throttles: u64,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Pace, u32) {
    let cap = budget(spec).map_or(pace.rate, |b| share(b, unfinished));
    let rate = if throttles > 0 { pace.rate / 2.0 } else { (pace.rate + cap / 10.0).min(cap) }.max(0.001);
    // A late segment makes up at most CATCH_UP_SECONDS: it never bursts to catch up more.
    let earliest = started - Duration::microseconds((CATCH_UP_SECONDS * 1e6) as i64);
    let due = pace.due.max(earliest) + Duration::microseconds((items as f64 / pace.rate * 1e6) as i64);
    let wait = (due - now).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
    (Pace { rate, due, span: span(unfinished, workers) }, dither(wait).min(MAX_DELAY_SECONDS))
}

/// Whole seconds (SQS delays are whole) whose average is `seconds`: the fraction becomes one
/// more second with its probability.
fn dither(seconds: f64) -> u32 {
    let whole = seconds.floor();
    let extra = rand::random::<f64>() < seconds - whole;
    whole as u32 + u32::from(extra)
}

/// Items of a paced slice: its span at its rate, within `[MIN_SLICE_ITEMS, max]`.
pub fn slice_items(pace: &Pace, max: u32) -> u32 {
    ((pace.rate * pace.span).round() as u32).clamp(MIN_SLICE_ITEMS.min(max), max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeyAttribute, KeySchema, KeyType, OnItemError, TableName};

    fn spec(write: Option<u32>, read: Option<u32>) -> JobSpec {
        let key = KeySchema { partition: KeyAttribute { name: "pk".into(), kind: KeyType::S }, sort: None };
        JobSpec {
            source: TableName::parse("src").unwrap(),
            target: TableName::parse("dst").unwrap(),
            parallelism: 4,
            parallelism_from_size: false,
            on_item_error: OnItemError::Fail,
            source_key: key.clone(),
            target_key: key,
            max_write_rate: write,
            max_read_rate: read,
            slice: None,
            source_ttl: None,
            verify: crate::model::VerifyMode::Full,
            repair: false,
            skip_expired: false,
            mode: Default::default(),
            stream: None,
        }
    }

    #[test]
    fn the_passes_that_write_keep_the_write_budget_and_the_others_only_the_read_budget() {
        let s = spec(Some(40), Some(500));
        for pass in [Pass::Copy, Pass::RepairSource, Pass::RepairTarget] {
            assert_eq!(budget(&for_pass(&s, pass)), Some(40.0), "{pass:?}");
        }
        for pass in [Pass::VerifySource, Pass::VerifyTarget, Pass::LocateSource, Pass::LocateTarget] {
            assert_eq!(budget(&for_pass(&s, pass)), Some(500.0), "{pass:?}");
        }
        assert_eq!(budget(&for_pass(&spec(Some(40), None), Pass::VerifySource)), None);
    }

    #[test]
    fn the_budget_is_the_lower_rate_shared_by_the_unfinished_segments() {
        assert_eq!(budget(&spec(None, None)), None);
        assert_eq!(budget(&spec(Some(500), None)), Some(500.0));
        assert_eq!(budget(&spec(Some(500), Some(300))), Some(300.0));
        let now = Utc::now();
        assert_eq!(start(&spec(Some(500), None), 4, 4, now), Some(Pace { rate: 125.0, due: now, span: 2.0 }));
        assert_eq!(start(&spec(None, None), 4, 4, now), None);
        assert_eq!(share(500.0, 0), 500.0);
    }

    #[test]
    fn a_segment_waits_until_its_items_are_paid_for_and_never_bursts_to_catch_up() {
        let s = spec(Some(400), None);
        let t0 = Utc::now();
        let pace = Pace { rate: 100.0, due: t0, span: 2.0 };
        // 250 items at 100/s are paid for at t0 + 2.5 s; the slice ended at t0 + 0.5 s.
        let (next_pace, delay) = next(&pace, &s, 4, 4, 250, 0, t0, t0 + Duration::milliseconds(500));
        assert_eq!(next_pace.due, t0 + Duration::milliseconds(2_500));
        assert!(delay == 2 || delay == 3, "{delay}");
        // A slice that started a second late (delivery, the checkpoint hop) makes it up.
        let (next_pace, _) = next(&pace, &s, 4, 4, 100, 0, t0 + Duration::seconds(1), t0 + Duration::seconds(1));
        assert_eq!(next_pace.due, t0 + Duration::seconds(1));
        // A slice that started much later (it waited for a worker) makes up one slice's time
        // at most, never the whole delay.
        let late = t0 + Duration::seconds(10);
        let (next_pace, delay) = next(&pace, &s, 4, 4, 100, 0, late, late + Duration::seconds(3));
        assert_eq!((next_pace.due, delay), (late - Duration::seconds(1), 0));
        // Delays never pass SQS's limit.
        let slow = Pace { rate: 0.01, due: t0, span: 2.0 };
        assert_eq!(next(&slow, &s, 4, 4, 1_000, 0, t0, t0).1, MAX_DELAY_SECONDS);
    }

    #[test]
    fn throttling_halves_the_rate_and_calm_slices_raise_it_back_to_the_share() {
        let s = spec(Some(400), None);
        let t0 = Utc::now();
        let mut pace = Pace { rate: 100.0, due: t0, span: 2.0 };
        pace = next(&pace, &s, 4, 4, 10, 3, t0, t0).0;
        assert_eq!(pace.rate, 50.0);
        pace = next(&pace, &s, 4, 4, 10, 1, t0, t0).0;
        assert_eq!(pace.rate, 25.0);
        for expected in [35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0, 100.0, 100.0] {
            pace = next(&pace, &s, 4, 4, 10, 0, t0, t0).0;
            assert!((pace.rate - expected).abs() < 1e-9, "{} != {expected}", pace.rate);
        }
        // A share below one item per second is halved too, never raised.
        let tiny = Pace { rate: 0.5, due: t0, span: 2.0 };
        assert_eq!(next(&tiny, &spec(Some(2), None), 4, 4, 10, 1, t0, t0).0.rate, 0.25);
        // Fewer unfinished segments: a larger share.
        assert_eq!(next(&pace, &s, 2, 4, 10, 0, t0, t0).0.rate, 120.0);
    }

    #[test]
    fn dithered_delays_average_to_the_wait() {
        let n = 20_000;
        let total: u32 = (0..n).map(|_| dither(1.3)).sum();
        let mean = f64::from(total) / f64::from(n);
        assert!((mean - 1.3).abs() < 0.03, "{mean}");
        assert!((0..100).all(|_| dither(2.0) == 2));
    }

    fn at(rate: f64) -> Pace {
        Pace { rate, due: Utc::now(), span: SLICE_SECONDS }
    }

    #[test]
    fn a_paced_slice_lasts_about_two_seconds_at_its_rate() {
        assert_eq!(slice_items(&at(125.0), 5_000), 250);
        assert_eq!(slice_items(&at(1.0), 5_000), MIN_SLICE_ITEMS);
        assert_eq!(slice_items(&at(10_000.0), 5_000), 5_000);
        assert_eq!(slice_items(&at(1.0), 7), 7);
    }

    #[test]
    fn slices_grow_with_the_segments_each_worker_serves_and_the_budget_holds_over_a_span() {
        assert_eq!(span(4, 4), SLICE_SECONDS);
        assert_eq!(span(2, 16), SLICE_SECONDS);
        assert_eq!(span(500, 12), SLICE_SECONDS * 500.0 / 12.0);
        assert_eq!(span(100_000, 1), f64::from(MAX_DELAY_SECONDS));
        // 36,000 items/s over 500 segments and 12 workers: 72 items/s a segment, in slices of
        // about 6,000 items (capped at the slice limit), one every ~83 s.
        let s = spec(Some(36_000), None);
        let t0 = Utc::now();
        let first = start(&s, 500, 12, t0).unwrap();
        assert_eq!(slice_items(&first, 5_000), 5_000);
        assert_eq!(slice_items(&first, 10_000), 6_000);
        // Whatever the span, the next slice is due when the items copied are paid for.
        let (next_pace, _) = next(&first, &s, 500, 12, 5_000, 0, t0, t0);
        let paid = (next_pace.due - t0).num_milliseconds();
        assert!((paid - 69_444).abs() <= 1, "{paid}");
    }
}
