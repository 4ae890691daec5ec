//! The rules that decide what happens to a segment, each written once as a pure function of
//! the cursor. The stores only enforce them: the in-memory store applies them under its lock,
//! and the DynamoDB store writes each as the condition of one UpdateItem on the cursor item,
//! so neither can be more atomic than the other, and a test that passes on one holds on the
//! other (`tests/store.rs` runs the same cases on both).
//!
//! How the job reaches its segments without a transaction on the job item: every change of
//! what the segments must do (start, pause, resume, cancel, a final move) raises the job's
//! control epoch in one conditional write of the job item, then brings every cursor to that
//! epoch ([`sync_applies`]: only a cursor that has not seen it or a later one). A cursor at
//! epoch `e` says what the job wanted at `e` (`stop`), and its commit decides from that
//! ([`commit_rule`]). An interrupted propagation is finished by the next request or by the
//! reconciler, which brings every cursor to its job's epoch.

use chrono::{DateTime, Utc};

use crate::model::{Cursor, JobStatus, Pass};

/// What a slice's commit did to its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The job wants its segments to go on: the cursor moved and stays in flight (its next
    /// slice is owed).
    Continued,
    /// The job wants its segments to stop (pausing, paused, cancelling, final): the cursor
    /// moved and parked; nothing follows.
    Parked,
    /// The cursor had moved on or was done: a duplicate or late result. Nothing changed.
    Stale,
}

/// The commit of slice `seq`, written by copy `copy`, on cursor `c` at `now`: stale unless the
/// cursor expects exactly this slice and no other copy holds it (the holder commits its own
/// result: a result whose copy's hold ran out and was taken over must not end the holder's
/// slice under it); then continue or park as the cursor's `stop` says at the moment of the
/// write.
pub fn commit_rule(c: &Cursor, seq: u64, copy: &str, now: DateTime<Utc>) -> Commit {
    if c.done || c.seq != seq || held_by_another(c, copy, now) {
        Commit::Stale
    } else if c.stop {
        Commit::Parked
    } else {
        Commit::Continued
    }
}

/// What copy-chunk may do with slice `seq` of a segment whose cursor is `c` (checked before
/// the slice writes anything, and again between its pages). `copy` is this invocation's
/// token and `now` the time of the read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The slice is expected and this copy holds it: copy.
    Go,
    /// The slice is expected and nobody holds it (its launch may not even have marked the
    /// cursor in flight yet): take it ([`claim_applies`]), then copy.
    Claim,
    /// Another copy of this slice holds the segment and its lease runs: write nothing now,
    /// and let the message come back later (by then the holder has committed, or died and
    /// its lease expired).
    Busy,
    /// A pause, cancel or final move reached the segment while this slice is in flight: write
    /// nothing more, and report what was written (maybe nothing) so the segment parks.
    Stop,
    /// Nobody expects this slice (the job is gone, the segment is done or parked for a stop,
    /// or the cursor expects another slice): write nothing, report nothing.
    Drop,
}

pub fn slice_rule(c: Option<&Cursor>, pass: Pass, seq: u64, copy: &str, now: DateTime<Utc>) -> Guard {
    match c {
        None => Guard::Drop,
        Some(c) if c.done || c.seq != seq || c.pass != pass => Guard::Drop,
        Some(c) if c.stop && c.parked => Guard::Drop,
        Some(c) if held_by_another(c, copy, now) => Guard::Busy,
        Some(c) if c.stop => Guard::Stop,
        Some(c) if holds(c, copy, now) => Guard::Go,
        Some(_) => Guard::Claim,
    }
}

/// `copy` holds the cursor (in flight) and its lease has not run out.
fn holds(c: &Cursor, copy: &str, now: DateTime<Utc>) -> bool {
    !c.parked && c.owner.as_deref() == Some(copy) && c.lease_until.is_some_and(|t| t > now)
}

/// Another copy holds the cursor and its lease has not run out.
fn held_by_another(c: &Cursor, copy: &str, now: DateTime<Utc>) -> bool {
    c.owner.as_deref().is_some_and(|o| o != copy) && c.lease_until.is_some_and(|t| t > now)
}

/// Whether copy `copy` may take the cursor `c` for slice `seq` at `now` (and mark it in
/// flight): the segment goes on, expects that slice, and no other copy's lease runs.
pub fn claim_applies(c: &Cursor, seq: u64, copy: &str, now: DateTime<Utc>) -> bool {
    !c.done && !c.stop && c.seq == seq && !held_by_another(c, copy, now)
}

/// Whether the result of copy `copy` for slice `seq` is already committed on `c`: the last
/// commit was its own (a delivery whose first attempt committed and then died, or whose
/// answer was lost and whose retry found its own write).
pub fn committed_by(c: &Cursor, seq: u64, copy: &str) -> bool {
    !copy.is_empty() && c.seq == seq + 1 && c.committed_by.as_deref() == Some(copy)
}

/// Whether a job in this state wants its segments to stop: everything but running with no
/// pause or cancel pending.
pub fn wants_stop(status: JobStatus, pending: Option<JobStatus>) -> bool {
    !(status == JobStatus::Running && pending.is_none())
}

/// Whether the control change of `epoch` applies to `c`: only to a cursor that has not seen it
/// or a later one, so a late propagation of an older change never undoes a newer one.
pub fn sync_applies(c: &Cursor, epoch: u64) -> bool {
    c.epoch < epoch
}

/// Whether the launch at control epoch `epoch` may mark the parked cursor `c` in flight with
/// slice `seq` (whose message it sent): only while the segment is to go on at that very epoch
/// and still expects that slice. A launch's mark that comes late, after a newer control
/// change, applies to nothing.
pub fn unpark_applies(c: &Cursor, seq: u64, epoch: u64) -> bool {
    c.parked && !c.done && !c.stop && c.seq == seq && c.epoch == epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(seq: u64, done: bool, parked: bool, stop: bool) -> Cursor {
        Cursor { seq, done, parked, stop, ..Cursor::start(0) }
    }

    #[test]
    fn a_commit_continues_parks_or_is_stale_from_the_cursor_alone() {
        let now = Utc::now();
        let rule = |c: &Cursor, seq| commit_rule(c, seq, "me", now);
        assert_eq!(rule(&cursor(3, false, false, false), 3), Commit::Continued);
        assert_eq!(rule(&cursor(3, false, false, true), 3), Commit::Parked);
        // A launch's message that arrived before the launch marked the cursor still commits.
        assert_eq!(rule(&cursor(3, false, true, false), 3), Commit::Continued);
        assert_eq!(rule(&cursor(4, false, false, false), 3), Commit::Stale);
        assert_eq!(rule(&cursor(3, true, false, false), 3), Commit::Stale);
        let held = |owner: &str, lease_s| Cursor {
            owner: Some(owner.into()),
            lease_until: Some(now + chrono::Duration::seconds(lease_s)),
            ..cursor(3, false, false, false)
        };
        assert_eq!(rule(&held("me", 60), 3), Commit::Continued, "the holder's own result");
        assert_eq!(rule(&held("other", 60), 3), Commit::Stale, "another copy holds the slice");
        assert_eq!(rule(&held("other", -1), 3), Commit::Continued, "its hold ran out");
    }

    #[test]
    fn a_slice_writes_only_while_its_segment_expects_it_and_only_one_copy_at_a_time() {
        let now = Utc::now();
        let rule = |c: &Cursor, seq| slice_rule(Some(c), Pass::Copy, seq, "me", now);
        let mine = |c: Cursor| Cursor {
            owner: Some("me".into()),
            lease_until: Some(now + chrono::Duration::seconds(60)),
            ..c
        };
        let lapsed =
            |c: Cursor| Cursor { owner: Some("me".into()), lease_until: Some(now - chrono::Duration::seconds(1)), ..c };
        let theirs = |c: Cursor, lease_s: i64| Cursor {
            owner: Some("other".into()),
            lease_until: Some(now + chrono::Duration::seconds(lease_s)),
            ..c
        };
        assert_eq!(rule(&mine(cursor(2, false, false, false)), 2), Guard::Go);
        assert_eq!(rule(&lapsed(cursor(2, false, false, false)), 2), Guard::Claim, "its own hold ran out");
        assert_eq!(rule(&cursor(2, false, false, false), 2), Guard::Claim, "launched, not yet taken");
        assert_eq!(rule(&cursor(2, false, true, false), 2), Guard::Claim, "not yet marked by its launch");
        assert_eq!(rule(&theirs(cursor(2, false, false, false), 60), 2), Guard::Busy);
        assert_eq!(rule(&theirs(cursor(2, false, false, false), -1), 2), Guard::Claim, "its lease ran out");
        assert_eq!(rule(&mine(cursor(2, false, false, true)), 2), Guard::Stop);
        assert_eq!(rule(&cursor(2, false, false, true), 2), Guard::Stop);
        assert_eq!(rule(&theirs(cursor(2, false, false, true), 60), 2), Guard::Busy, "the holder reports the stop");
        assert_eq!(rule(&cursor(2, false, true, true), 2), Guard::Drop);
        assert_eq!(rule(&cursor(3, false, false, false), 2), Guard::Drop);
        assert_eq!(rule(&cursor(2, true, false, false), 2), Guard::Drop);
        assert_eq!(slice_rule(None, Pass::Copy, 0, "me", now), Guard::Drop);
        let verifying = Cursor { pass: Pass::VerifySource, ..mine(cursor(2, false, false, false)) };
        assert_eq!(slice_rule(Some(&verifying), Pass::Copy, 2, "me", now), Guard::Drop, "a slice of another pass");
        assert_eq!(slice_rule(Some(&verifying), Pass::VerifySource, 2, "me", now), Guard::Go);

        assert!(claim_applies(&cursor(2, false, true, false), 2, "me", now));
        assert!(claim_applies(&theirs(cursor(2, false, false, false), -1), 2, "me", now));
        assert!(!claim_applies(&theirs(cursor(2, false, false, false), 60), 2, "me", now));
        assert!(!claim_applies(&cursor(2, false, true, true), 2, "me", now), "stopped");
        assert!(!claim_applies(&cursor(3, false, true, false), 2, "me", now), "another slice");
    }

    #[test]
    fn a_result_recognises_its_own_commit() {
        let c = Cursor { committed_by: Some("me".into()), ..cursor(3, false, false, false) };
        assert!(committed_by(&c, 2, "me"));
        assert!(!committed_by(&c, 2, "other"));
        assert!(!committed_by(&c, 3, "me"), "not committed yet");
        assert!(!committed_by(&c, 1, "me"));
        assert!(!committed_by(&Cursor { committed_by: None, ..c }, 2, ""));
    }

    #[test]
    fn only_a_running_job_with_nothing_pending_wants_its_segments_to_go_on() {
        use JobStatus::*;
        assert!(!wants_stop(Running, None));
        for (s, p) in [(Running, Some(Paused)), (Running, Some(Cancelled)), (Queued, None), (Paused, None)] {
            assert!(wants_stop(s, p), "{s} {p:?}");
        }
        for s in [Completed, Failed, Cancelled] {
            assert!(wants_stop(s, None));
        }
    }

    #[test]
    fn control_changes_apply_in_epoch_order_and_launches_only_to_segments_that_go_on() {
        let c = Cursor { epoch: 4, ..cursor(2, false, true, false) };
        assert!(sync_applies(&c, 5) && !sync_applies(&c, 4) && !sync_applies(&c, 3));
        assert!(unpark_applies(&c, 2, 4));
        assert!(!unpark_applies(&c, 2, 3), "a launch of an older epoch");
        assert!(!unpark_applies(&c, 1, 4), "another slice");
        assert!(!unpark_applies(&Cursor { stop: true, ..c.clone() }, 2, 4), "stopped");
        assert!(!unpark_applies(&Cursor { parked: false, ..c.clone() }, 2, 4), "already in flight");
        assert!(!unpark_applies(&Cursor { done: true, ..c }, 2, 4), "done");
    }
}
