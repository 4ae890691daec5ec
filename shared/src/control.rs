//! Job control: every move of a job outside a slice's own commit (starting queued jobs when a
//! slot is free, launching, pausing, settling a pause or cancel once nothing is in flight,
//! final moves, failing the jobs of an old write region), and how each move reaches the
//! job's segments. The handlers (create, requests, advance-checkpoint, finalize, the
//! reconciler) all call this module; it calls none of them.
//!
//! A move is one conditional write of the job item (on its status and control epoch) that
//! raises the epoch, with the scheduler in the same transaction when a slot changes. Then the
//! new epoch is brought to every unfinished cursor ([`sync_cursors`]), which is what a slice's
//! commit and copy-chunk read. Every step can run again after a crash: a sync applies only to
//! cursors behind the epoch, launching sends only parked segments, and the reconciler
//! finishes what a dead process left half done.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::config::{Config, Tuning};
use crate::error::AwsError;
use crate::events::{EventBus, JobStateChange};
use crate::lineage;
use crate::messages::{encode, CopyChunk, ExpiryCut, Finalize, VERSION};
use crate::model::{
    Cursor, Item, Job, JobError, JobName, JobStatus, Pass, Phase, Progress, SegmentCheck, StackOrigin, Verification,
};
use crate::pacing::{self, Pace};
use crate::queue::{Outbox, QueueKind};
use crate::replay;
use crate::rules::{sync_applies, wants_stop};
use crate::store::{conflict_pause, Applied, ControlStore, Transition};

/// How long after a final move its backstop finalize message arrives (see [`Control::move_job`]).
pub const FINALIZE_BACKSTOP_SECONDS: u32 = 30;

/// The job item's counters are refreshed from the cursors at most this often while it runs.
pub const PROGRESS_EVERY_MS: i64 = 3_000;
/// Cursor writes of one propagation in flight at once.
const CURSOR_WRITES_AT_ONCE: usize = 16;

/// What job control needs: the control table, the queues, the event bus and the
/// configuration.
pub struct Control<'a, S, Q> {
    pub store: &'a S,
    pub outbox: &'a Q,
    pub events: &'a dyn EventBus,
    pub config: &'a Config,
}

impl<S, Q> Clone for Control<'_, S, Q> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S, Q> Copy for Control<'_, S, Q> {}

impl<'a, S: ControlStore, Q: Outbox> Control<'a, S, Q> {
    /// The account's write region: the control table's account config, else the deployment's.
    pub async fn current_region(self) -> Result<String, AwsError> {
        Ok(self.store.write_region().await?.unwrap_or_else(|| self.config.region.clone()))
    }

    /// Ask finalize to look at the job: complete or fail it, or answer the waiting
    /// CloudFormation resource of a final job.
    pub async fn send_finalize(self, name: &JobName) -> Result<(), AwsError> {
        self.send_failure(name, None).await
    }

    /// Ask finalize to fail the job with `failure` (or look at it, without one).
    pub async fn send_failure(self, name: &JobName, failure: Option<JobError>) -> Result<(), AwsError> {
        let f = Finalize { v: VERSION, job: name.clone(), failure };
        self.outbox.send(QueueKind::Finalize, vec![encode(&f)]).await
    }

    /// Move `job` (as read: its status and epoch) to `to`. A final move also leaves the
    /// scheduler, in the same transaction. With `pending`, the move applies only while that
    /// request is pending. `false` if the job changed meanwhile. A move to a state that stops
    /// the segments brings the new epoch to every cursor; a move to `Running` leaves that to
    /// the launch that follows it. A job whose CloudFormation resource waits for it gets a
    /// finalize message when it becomes final, whatever made it final.
    ///
    /// Before a final move, a finalize message is sent with a delay of
    /// [`FINALIZE_BACKSTOP_SECONDS`]: if this process dies between the move and publishing its
    /// event (or answering a waiting resource), that message does both. If the move does not
    /// happen, it is a harmless nudge.
    pub async fn move_job(
        self,
        job: &Job,
        to: JobStatus,
        error: Option<JobError>,
        pending: Option<JobStatus>,
        progress: Option<Progress>,
    ) -> Result<bool, AwsError> {
        self.end_job(job, to, error, pending, progress, None).await
    }

    /// [`Self::move_job`], recording the verification's outcome with the move.
    pub async fn end_job(
        self,
        job: &Job,
        to: JobStatus,
        error: Option<JobError>,
        pending: Option<JobStatus>,
        progress: Option<Progress>,
        verification: Option<Verification>,
    ) -> Result<bool, AwsError> {
        let now = Utc::now();
        if to.is_final() {
            let f = Finalize { v: VERSION, job: job.name.clone(), failure: None };
            self.outbox.send_delayed(QueueKind::Finalize, encode(&f), FINALIZE_BACKSTOP_SECONDS).await?;
        }
        for attempt in 1.. {
            let scheduler = if to.is_final() {
                let s = self.store.scheduler().await?;
                s.holds(&job.name).then(|| s.without(&job.name))
            } else {
                None
            };
            let t = Transition {
                from: job.status,
                to,
                epoch: job.epoch,
                at: now,
                error: error.clone(),
                started: false,
                duration_ms: if to.is_final() { duration_ms(job, now) } else { None },
                pending,
                progress: progress.clone(),
                verification: verification.clone(),
                scheduler,
            };
            match self.store.transition(&job.name, &t).await? {
                Applied::Yes => {
                    tracing::info!(job = %job.name, from = %job.status, %to, "job moved");
                    if wants_stop(to, None) {
                        self.stop_cursors(&job.name, job.epoch + 1).await?;
                    }
                    let announced = self.announce_now(&job.name).await;
                    // finalize answers a waiting resource, and publishes what could not be
                    // published here (it is retried until it can).
                    if to.is_final() && (StackOrigin::awaits_answer(job) || !announced) {
                        self.send_finalize(&job.name).await?;
                    }
                    return Ok(true);
                }
                Applied::JobChanged => return Ok(false),
                Applied::SchedulerChanged => conflict_pause(attempt).await,
            }
        }
        unreachable!("the loop only ends by returning")
    }

    /// Publish the job's state changes that were not published yet (every one, in order,
    /// each with its place in the history as its version), then record them as published.
    /// A crash in between publishes them again: delivery is at least once.
    pub async fn announce(self, name: &JobName) -> Result<(), AwsError> {
        let Some(job) = self.store.get_job(name).await? else { return Ok(()) };
        if !job.unannounced() {
            return Ok(());
        }
        self.events.publish(JobStateChange::of(&job, job.announced as usize)).await?;
        self.store.mark_announced(name, job.history.len() as u64).await
    }

    /// [`Self::announce`] right after a move, whose own outcome it must not change: `false`
    /// (logged) if it failed; finalize (final moves) or the reconciler publishes later.
    pub async fn announce_now(self, name: &JobName) -> bool {
        match self.announce(name).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "job events not published yet; they will be");
                false
            }
        }
    }

    /// Bring every unfinished cursor of the job to control epoch `epoch` with `stop` (those
    /// already there or later are left alone). Returns every cursor as it is afterwards.
    pub async fn sync_cursors(self, name: &JobName, epoch: u64, stop: bool) -> Result<Vec<Cursor>, AwsError> {
        let cursors = self.store.cursors(name).await?;
        let now = Utc::now();
        stream::iter(cursors)
            .map(|c| async move {
                if c.done || !sync_applies(&c, epoch) {
                    return Ok(c);
                }
                Ok(self.store.sync_cursor(name, c.segment, epoch, stop, now).await?.unwrap_or(c))
            })
            .buffered(CURSOR_WRITES_AT_ONCE)
            .try_collect()
            .await
    }

    /// [`Self::sync_cursors`] with `stop`: no segment starts another slice, and a slice in
    /// flight writes nothing more and parks at its commit.
    pub async fn stop_cursors(self, name: &JobName, epoch: u64) -> Result<Vec<Cursor>, AwsError> {
        self.sync_cursors(name, epoch, true).await
    }

    /// Launch a running job with nothing pending (`job` as read at its epoch): bring every
    /// cursor to its epoch, then send the next slice of every parked, unfinished segment and
    /// mark it in flight. A job whose segments are all done is sent to finalize. The messages
    /// go before the marks: if the process dies in between, the cursors stay parked and the
    /// launch is repeated (the one duplicate slice is dropped at its checkpoint), whereas a
    /// mark without its message would stall. A slice that arrives before its mark claims the
    /// cursor itself (see copy-chunk).
    pub async fn launch(self, job: &Job) -> Result<(), AwsError> {
        if wants_stop(job.status, job.pending) {
            tracing::info!(job = %job.name, status = %job.status_label(), "the job does not run now; nothing to launch");
            return Ok(());
        }
        let mut cursors = self.sync_cursors(&job.name, job.epoch, false).await?;
        if cursors.len() < job.spec.parallelism as usize {
            self.create_cursors(job).await?;
            cursors = self.sync_cursors(&job.name, job.epoch, false).await?;
        }
        if cursors.iter().any(|c| c.epoch > job.epoch) {
            tracing::info!(job = %job.name, "the job changed while launching; the newer change goes on");
            return Ok(());
        }
        if job.all_done(&cursors) {
            return self.send_finalize(&job.name).await;
        }
        let idle: Vec<&Cursor> =
            cursors.iter().filter(|c| c.parked && !c.done && !c.stop && lineage::ready(c, &cursors)).collect();
        if idle.is_empty() {
            return Ok(());
        }
        let unfinished = cursors.iter().filter(|c| !c.done && c.shard.is_none()).count() as u32;
        let now = Utc::now();
        let mut bodies = vec![];
        for c in &idle {
            let c = &lineage::with_floor(c, &cursors);
            let pace = match c.shard {
                Some(_) => None,
                None => {
                    pacing::start(&pacing::for_pass(&job.spec, c.pass), unfinished, self.config.tuning.workers, now)
                }
            };
            let body = encode(&slice_message(job, c, c.seq, c.last_key.clone(), &self.config.tuning, pace));
            // A replay waits until every snapshot slice has stopped writing.
            match job.replay_from.filter(|_| c.shard.is_some()).map(|t| (t - now).num_seconds() + 1) {
                Some(wait) if wait > 0 => {
                    self.outbox.send_delayed(QueueKind::CopyChunk, body, wait.min(900) as u32).await?
                }
                _ => bodies.push(body),
            }
        }
        if !bodies.is_empty() {
            self.outbox.send(QueueKind::CopyChunk, bodies).await?;
        }
        let now = Utc::now();
        let marks: Vec<(u32, u64)> = idle.iter().map(|c| (c.segment, c.seq)).collect();
        stream::iter(marks)
            .map(|(segment, seq)| self.store.unpark(&job.name, segment, seq, job.epoch, now))
            .buffer_unordered(CURSOR_WRITES_AT_ONCE)
            .try_collect::<Vec<bool>>()
            .await?;
        tracing::info!(job = %job.name, segments = idle.len(), "segments launched");
        Ok(())
    }

    /// Start phase `to` on every segment of `job` done with the phase before it (the
    /// verification after the copy, the keyed second pass after the checksums), then launch
    /// them. Idempotent: a segment already moved on is left alone, so a second finalize, or
    /// one after a crash half-way, finishes the move.
    pub async fn begin_phase(self, job: &Job, cursors: &[Cursor], to: Phase) -> Result<(), AwsError> {
        let now = Utc::now();
        let moves: Vec<(u32, Pass, SegmentCheck)> = cursors
            .iter()
            .filter(|c| c.done && c.pass.phase() < to)
            .map(|c| {
                // The keyed passes keep what the checksums read (and what a repair wrote); a
                // new verification starts afresh.
                let check = match to {
                    Phase::Repairing | Phase::Locating => SegmentCheck {
                        missing: 0,
                        different: 0,
                        extra: 0,
                        collisions: 0,
                        samples: vec![],
                        ..c.check.clone().unwrap_or_default()
                    },
                    _ => SegmentCheck::default(),
                };
                (c.segment, c.pass, check)
            })
            .collect();
        stream::iter(moves)
            .map(|(segment, from, check)| async move {
                self.store.begin_pass(&job.name, segment, from, to.first_pass(), &check, now).await
            })
            .buffer_unordered(CURSOR_WRITES_AT_ONCE)
            .try_collect::<Vec<bool>>()
            .await?;
        tracing::info!(job = %job.name, phase = ?to, "segments begin a new phase");
        match self.store.get_job(&job.name).await? {
            Some(job) => self.launch(&job).await,
            None => Ok(()),
        }
    }

    /// Complete a pending pause or cancel once no slice of the job is in flight. Called by the
    /// request itself, after every parking commit, and by the reconciler: the last one to look
    /// sees every cursor parked.
    pub async fn settle(self, name: &JobName) -> Result<(), AwsError> {
        let Some(job) = self.store.get_job(name).await? else { return Ok(()) };
        let (JobStatus::Running, Some(to)) = (job.status, job.pending) else { return Ok(()) };
        // Idempotent: finishes the request's own propagation if it was interrupted.
        let cursors = self.stop_cursors(name, job.epoch).await?;
        if cursors.iter().any(|c| c.epoch > job.epoch) {
            return Ok(());
        }
        let in_flight = cursors.iter().filter(|c| c.in_flight()).count();
        if in_flight > 0 {
            tracing::info!(job = %name, in_flight, pending = %to, "waiting for in-flight slices");
            return Ok(());
        }
        let progress = Progress::of(&cursors);
        if self.move_job(&job, to, None, Some(to), Some(progress)).await? && to == JobStatus::Cancelled {
            self.schedule().await?;
        }
        Ok(())
    }

    /// Create every cursor of `job` that does not exist yet (all of them for a new job; the
    /// rest of them after a creation that died half-way). Returns the job's cursors.
    pub async fn create_cursors(self, job: &Job) -> Result<Vec<Cursor>, AwsError> {
        let mut cursors = self.store.cursors(&job.name).await?;
        let have: std::collections::HashSet<u32> = cursors.iter().map(|c| c.segment).collect();
        let missing: Vec<Cursor> = (0..job.spec.parallelism).filter(|s| !have.contains(s)).map(Cursor::start).collect();
        if !missing.is_empty() {
            if !have.is_empty() {
                tracing::warn!(job = %job.name, missing = missing.len(), "a creation died half-way: creating the rest of its cursors");
            }
            self.store.create_cursors(&job.name, &missing).await?;
            cursors = self.store.cursors(&job.name).await?;
        }
        Ok(cursors)
    }

    /// Start queued jobs, oldest first, while a running slot is free, and re-launch a running
    /// job whose launch was interrupted. Idempotent: any handler may call it after a job event.
    pub async fn schedule(self) -> Result<(), AwsError> {
        let region = self.current_region().await?;
        self.enforce_region(&region).await?;
        let max = self.config.tuning.max_running_jobs.max(1);
        let mut attempt = 0;
        loop {
            let sched = self.store.scheduler().await?;
            if sched.running.len() >= max || sched.queued.is_empty() {
                return self.repair_launches(&sched).await;
            }
            let entry = &sched.queued[0];
            let job = self.store.get_job(&entry.job).await?;
            let mut next = sched.next();
            let started = next.queued.remove(0);
            let Some(job) = job.filter(|j| j.status == JobStatus::Queued) else {
                // Not queued any more (it cannot happen through this code): drop the entry.
                tracing::warn!(job = %started.job, "scheduler entry without a queued job removed");
                self.store.write_scheduler(&next).await?;
                continue;
            };
            next.running.push(started);
            // Never started half-way: every cursor exists first.
            self.create_cursors(&job).await?;
            let now = Utc::now();
            let t = Transition {
                from: JobStatus::Queued,
                to: JobStatus::Running,
                epoch: job.epoch,
                at: now,
                error: None,
                started: true,
                duration_ms: None,
                pending: None,
                progress: None,
                verification: None,
                scheduler: Some(next),
            };
            match self.store.transition(&job.name, &t).await? {
                Applied::Yes => {
                    tracing::info!(job = %job.name, "queued job started");
                    self.announce_now(&job.name).await;
                    let job = Job {
                        status: JobStatus::Running,
                        started_at: Some(now),
                        launched_at: Some(now),
                        epoch: job.epoch + 1,
                        ..job
                    };
                    self.launch(&job).await?;
                }
                Applied::JobChanged | Applied::SchedulerChanged => {
                    attempt += 1;
                    conflict_pause(attempt).await;
                }
            }
        }
    }

    /// Re-launch running jobs, longer than the launch grace after their launch, that have
    /// segments a launch still owes (parked and unfinished, or behind the job's epoch).
    async fn repair_launches(self, sched: &crate::scheduler::Scheduler) -> Result<(), AwsError> {
        let now = Utc::now();
        let grace = chrono::Duration::from_std(self.config.tuning.launch_grace).unwrap_or(chrono::Duration::MAX);
        for entry in &sched.running {
            let Some(job) = self.store.get_job(&entry.job).await? else { continue };
            let stale = job.launched_at.is_none_or(|at| now - at > grace);
            if job.status == JobStatus::Running && job.pending.is_none() && stale {
                let cursors = self.store.cursors(&job.name).await?;
                let owed = |c: &Cursor| !c.done && ((c.parked && lineage::ready(c, &cursors)) || c.epoch < job.epoch);
                if cursors.iter().any(owed) {
                    tracing::warn!(job = %job.name, "an interrupted launch is done again");
                    self.launch(&job).await?;
                }
            }
        }
        Ok(())
    }

    /// If the scheduler holds jobs of another write region than `current`, fail every one of
    /// them that is incomplete (`WriteRegionChanged`). Returns how many jobs failed.
    pub async fn enforce_region(self, current: &str) -> Result<usize, AwsError> {
        let mut failed = 0;
        loop {
            let sched = self.store.scheduler().await?;
            let Some(entry) = sched.running.iter().chain(&sched.queued).find(|e| e.region != current).cloned() else {
                return Ok(failed);
            };
            match self.store.get_job(&entry.job).await? {
                Some(job) if !job.status.is_final() => {
                    let error = JobError {
                        code: "WriteRegionChanged".into(),
                        message: format!(
                            "the account's write region changed from {} to {current} while this job was {}; a job runs only in the write region it was created in. Re-create the job to copy in {current}",
                            job.write_region, job.status
                        ),
                    };
                    tracing::error!(job = %job.name, from = %job.write_region, to = current, "write region changed; failing the job");
                    if self.fail(&job, error).await? {
                        failed += 1;
                    }
                }
                // Already final or gone: only its entry remains to drop.
                _ => {
                    self.store.write_scheduler(&sched.without(&entry.job)).await?;
                }
            }
        }
    }

    /// Fail `job` now with `error`: its segments stop (a slice in flight writes nothing more
    /// after its next page, and parks at its commit).
    pub async fn fail(self, job: &Job, error: JobError) -> Result<bool, AwsError> {
        let progress = Progress::of(&self.store.cursors(&job.name).await?);
        self.move_job(job, JobStatus::Failed, Some(error), None, Some(progress)).await
    }

    /// Refresh the job item's counters from its cursors if they are older than
    /// [`PROGRESS_EVERY_MS`] (or `always`), one caller at a time.
    pub async fn refresh_progress(self, job: &Job, always: bool) -> Result<(), AwsError> {
        let now = Utc::now();
        let due = job.progress_at.is_none_or(|t| (now - t).num_milliseconds() >= PROGRESS_EVERY_MS);
        if !(due || always) || !self.store.claim_progress(&job.name, job.progress_at, now).await? {
            return Ok(());
        }
        let progress = Progress::of(&self.store.cursors(&job.name).await?);
        self.store.write_progress(&job.name, &progress, now).await?;
        Ok(())
    }
}

fn duration_ms(job: &Job, now: DateTime<Utc>) -> Option<u64> {
    job.started_at.map(|s| (now - s).num_milliseconds().max(0) as u64)
}

/// The copy-chunk message of slice `seq` of `cursor`'s segment (or shard), starting after
/// `start_key`; a paced slice (`pace`) reads about as many items as last its span at its rate.
pub fn slice_message(
    job: &Job,
    cursor: &Cursor,
    seq: u64,
    start_key: Option<Item>,
    tuning: &Tuning,
    pace: Option<Pace>,
) -> CopyChunk {
    let (segment, pass) = (cursor.segment, cursor.pass);
    // The job's own slice size; the deployment's only for jobs created before it was kept.
    let mut limits = job.spec.slice.unwrap_or(tuning.slice);
    if let Some(p) = &pace {
        limits.max_items = pacing::slice_items(p, limits.max_items);
    }
    CopyChunk {
        v: VERSION,
        job: job.name.clone(),
        segment,
        total_segments: job.spec.parallelism,
        seq,
        start_key: start_key.map(Into::into),
        source: job.spec.source.clone(),
        target: job.spec.target.clone(),
        source_key: job.spec.source_key.clone(),
        target_key: job.spec.target_key.clone(),
        on_item_error: job.spec.on_item_error,
        limits,
        pace,
        pass,
        buckets: match pass.phase() {
            Phase::Repairing | Phase::Locating => {
                job.verification.as_ref().map(|v| v.differing_buckets.clone()).unwrap_or_default()
            }
            Phase::Copying | Phase::Verifying => vec![],
        },
        delete_extra: pass == Pass::RepairTarget && job.target_empty_at_start == Some(true),
        // The cut is the job's start: the copy and the verification leave out the same items.
        skip_expired: job
            .spec
            .source_ttl
            .clone()
            .filter(|_| job.spec.skip_expired)
            .map(|attribute| ExpiryCut { attribute, before: job.started_at.unwrap_or_else(Utc::now).timestamp() }),
        unsettled: job.spec.source_ttl.clone().filter(|_| !pass.is_copy() && pass != Pass::Replay).map(|attribute| {
            ExpiryCut {
                attribute,
                before: (job.verify_started_at.unwrap_or_else(Utc::now) + chrono::Duration::days(1)).timestamp(),
            }
        }),
        shard: cursor.shard.as_ref().and_then(|s| replay::shard_read(job, s, tuning.drain_settle)),
    }
}
