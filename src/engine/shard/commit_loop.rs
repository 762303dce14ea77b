//! The commit loop of a commit group: the shards of one arbiter thread share one writer, and
//! with it their leases. The loop acquires the leases, renews them every
//! `lease_renew_interval_ms`, and group-commits: one fenced write in flight at a time, carrying
//! the ready work of every shard of the group; entries that arrive meanwhile form the next
//! write. A shard whose write or renewal is refused has lost its lease to another owner: that
//! shard stops at once (drops its live actors, refuses what waits with `shard_unavailable`,
//! acknowledges nothing) and then asks for its lease again; once it has it, orders reload lazily
//! from the store. The other shards of the group go on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::Instrument;

use super::{outcome_label, Ownership, ShardCore, ShardLimits};
use crate::domain::{CommandEnvelope, OrderId};
use crate::engine::commit::{coalesce, settle, CommitEntry, Figures};
use crate::engine::live_set::LiveSet;
use crate::engine::messages::EngineError;
use crate::gateway::GatewayJob;
use crate::store::{Lease, ShardBatch, ShardWriter, StatusCounts, StatusUpdate, StoreError};
use crate::telemetry::{self, CommandTally, LeaseEvent};

/// Pause before asking again for a lease that could not be asked for (store unreachable).
const ACQUIRE_ERROR_PAUSE: Duration = Duration::from_millis(500);

thread_local! {
    /// The commit groups of each engine on this arbiter thread, by engine instance and group.
    static GROUPS: RefCell<HashMap<(u64, u32), Weak<CommitGroup>>> = RefCell::new(HashMap::new());
    /// Every shard of each engine on this thread, whatever its group: a dispatch for this
    /// thread reaches its shards through it.
    static SHARDS: RefCell<HashMap<(u64, u32), Weak<ShardCore>>> = RefCell::new(HashMap::new());
    /// Work routed to a shard of this thread before its actor was created (a router can start
    /// first), by engine and shard; the shard takes it when it starts.
    static PARKED: RefCell<HashMap<(u64, u32), Vec<ParkedWork>>> = RefCell::new(HashMap::new());
}

/// One request waiting for its shard to start: order, request, fresh, where the answer goes.
pub(super) type ParkedWork = (
    OrderId,
    crate::engine::messages::Request,
    bool,
    crate::engine::commit::PendingReply,
);

/// Most requests parked per shard before its actor starts; past it they are refused.
const PARKED_MAX: usize = 65_536;

/// Parks `work` until shard `shard` of engine `engine_id` starts on this thread.
pub(super) fn park_for_shard(engine_id: u64, shard: u32, work: ParkedWork) {
    PARKED.with(|parked| {
        let mut parked = parked.borrow_mut();
        let queue = parked.entry((engine_id, shard)).or_default();
        if queue.len() >= PARKED_MAX {
            work.3.send(Err(EngineError::Internal(format!(
                "shard {shard} has not started on this thread"
            ))));
        } else {
            queue.push(work);
        }
    });
}

/// The work parked for a shard that just started.
pub(super) fn take_parked(engine_id: u64, shard: u32) -> Vec<ParkedWork> {
    PARKED.with(|parked| {
        parked
            .borrow_mut()
            .remove(&(engine_id, shard))
            .unwrap_or_default()
    })
}

/// The shard `shard` of engine `engine_id`, if it lives on this thread.
pub(super) fn shard_on_this_thread(engine_id: u64, shard: u32) -> Option<Rc<ShardCore>> {
    SHARDS.with(|shards| {
        shards
            .borrow()
            .get(&(engine_id, shard))
            .and_then(Weak::upgrade)
    })
}

/// The shards of one engine on one arbiter thread, committed together by one loop.
pub(crate) struct CommitGroup {
    shards: RefCell<Vec<Weak<ShardCore>>>,
    /// The thread's clock, read at most once per dispatch or commit round: commands applied
    /// in one round share a timestamp (it lags by at most a round, about a millisecond, and
    /// never runs ahead). Reading the clock per command was 3% of the CPU profile.
    clock: std::cell::Cell<Option<(crate::domain::Timestamp, Instant)>>,
    /// Woken by the shards when they queue an entry or ask for a release.
    pub(super) wakeup: Notify,
    limits: ShardLimits,
    writer: RefCell<Option<Box<dyn ShardWriter>>>,
    /// The engine's clock.
    wall: crate::clock::SharedClock,
}

impl CommitGroup {
    /// Group `index` of engine `engine_id` on this thread, created (with `writer`) on first
    /// use.
    pub(super) fn on_this_thread(
        engine_id: u64,
        index: u32,
        limits: ShardLimits,
        clock: &crate::clock::SharedClock,
        writer: impl FnOnce() -> Box<dyn ShardWriter>,
    ) -> Rc<CommitGroup> {
        GROUPS.with(|groups| {
            let mut groups = groups.borrow_mut();
            if let Some(group) = groups.get(&(engine_id, index)).and_then(Weak::upgrade) {
                return group;
            }
            let group = Rc::new(CommitGroup {
                shards: RefCell::new(Vec::new()),
                clock: std::cell::Cell::new(None),
                wakeup: Notify::new(),
                limits,
                writer: RefCell::new(Some(writer())),
                wall: std::sync::Arc::clone(clock),
            });
            groups.retain(|_, g| g.strong_count() > 0);
            groups.insert((engine_id, index), Rc::downgrade(&group));
            group
        })
    }

    /// Adds a shard of engine `engine_id` to the group (and to this thread's shards).
    pub(super) fn register(&self, engine_id: u64, core: &Rc<ShardCore>) {
        self.shards.borrow_mut().push(Rc::downgrade(core));
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            shards.retain(|_, s| s.strong_count() > 0);
            shards.insert((engine_id, core.shard), Rc::downgrade(core));
        });
        self.wakeup.notify_one();
    }

    /// Starts the group's loop (once; later calls do nothing).
    pub(super) fn start(self: &Rc<Self>) {
        if let Some(writer) = self.writer.borrow_mut().take() {
            actix_rt::spawn(Rc::clone(self).run(writer));
        }
    }

    /// Now, as of this round (see `clock`).
    pub(super) fn now(&self) -> (crate::domain::Timestamp, Instant) {
        if let Some(now) = self.clock.get() {
            return now;
        }
        let now = (self.wall.now(), Instant::now());
        self.clock.set(Some(now));
        now
    }

    /// Starts a new round: the next `now` reads the clock again.
    pub(super) fn tick(&self) {
        self.clock.set(None);
    }

    fn cores(&self) -> Vec<Rc<ShardCore>> {
        self.shards
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    async fn run(self: Rc<Self>, mut writer: Box<dyn ShardWriter>) {
        let renew_every = self.limits.lease_renew_interval;
        let mut next_renewal = Instant::now() + renew_every;
        let mut next_acquire = Instant::now();
        loop {
            self.serve_releases(&mut writer).await;
            let cores = self.cores();
            if cores.is_empty() && Rc::strong_count(&self) == 1 {
                // Every shard is gone (the engine stopped): nothing left to commit.
                return;
            }
            // A shard just started asks at once; a shard that lost its lease asks again after
            // a pause.
            let starting = cores
                .iter()
                .any(|c| c.ownership.get() == Ownership::Acquiring);
            let lost = cores.iter().any(|c| c.ownership.get() == Ownership::Lost);
            if starting || (lost && Instant::now() >= next_acquire) {
                let pause = self.acquire_all(&mut writer, &cores, lost).await;
                if lost || cores.iter().any(|c| c.ownership.get() == Ownership::Lost) {
                    next_acquire = next_acquire.max(Instant::now() + pause);
                }
            }
            let unowned = cores
                .iter()
                .any(|c| matches!(c.ownership.get(), Ownership::Acquiring | Ownership::Lost));
            let wake_at = if unowned {
                next_renewal.min(next_acquire)
            } else {
                next_renewal
            };
            drop(cores);
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
            loop {
                self.tick();
                let cores = self.cores();
                if cores.iter().any(|c| c.release_request.borrow().is_some()) {
                    break;
                }
                if Instant::now() >= next_renewal {
                    next_renewal = Instant::now() + renew_every;
                    self.renew(&mut writer, &cores).await;
                }
                let queued: usize = cores
                    .iter()
                    .filter(|c| c.ownership.get() == Ownership::Owned)
                    .map(|c| c.queue.borrow().len())
                    .sum();
                if queued == 0 {
                    break;
                }
                let store = cores[0].store.kind();
                drop(cores);
                if queued < self.limits.linger_batch_below && !self.limits.flush_interval.is_zero()
                {
                    // A small batch: wait for more, since the fence and the round trip cost
                    // the store about as much for 3 snapshots as for 50.
                    telemetry::record_commit_linger(store);
                    tokio::time::sleep(self.limits.flush_interval).await;
                } else if queued < self.limits.batch_size_max {
                    // Let the order actors that are ready run first, so their snapshots join
                    // this write.
                    tokio::task::yield_now().await;
                }
                self.commit_once(&mut writer, None).await;
            }
        }
    }

    /// Asks for the lease of every shard not owned; answers how long to wait before asking
    /// again for those still not owned.
    async fn acquire_all(
        &self,
        writer: &mut Box<dyn ShardWriter>,
        cores: &[Rc<ShardCore>],
        include_lost: bool,
    ) -> Duration {
        let mut pause = self.limits.lease_renew_interval;
        for core in cores {
            let ask = match core.ownership.get() {
                Ownership::Acquiring => true,
                Ownership::Lost => include_lost,
                Ownership::Owned | Ownership::Released => false,
            };
            if !ask {
                continue;
            }
            match writer.acquire(core.shard).await {
                Ok(Some(lease)) => {
                    *core.acquire_error.borrow_mut() = None;
                    core.gain(lease);
                    // Read before this group's next write, so no batch of the new term is
                    // missed or counted twice.
                    core.load_status_counts().await;
                }
                Ok(None) => {
                    *core.acquire_error.borrow_mut() = None;
                    core.refuse_acquiring();
                }
                Err(error) => {
                    tracing::warn!(shard = core.shard, %error, "lease acquisition failed");
                    *core.acquire_error.borrow_mut() = Some(error);
                    core.refuse_acquiring();
                    pause = pause.min(ACQUIRE_ERROR_PAUSE);
                }
            }
        }
        pause
    }

    /// Renews the leases of the owned shards; shards whose renewal is refused stop.
    async fn renew(&self, writer: &mut Box<dyn ShardWriter>, cores: &[Rc<ShardCore>]) {
        let owned: Vec<u32> = cores
            .iter()
            .filter(|c| c.ownership.get() == Ownership::Owned)
            .map(|c| c.shard)
            .collect();
        if owned.is_empty() {
            return;
        }
        match writer.renew(&owned).await {
            Ok(lost) => {
                for core in cores {
                    if lost.contains(&core.shard) {
                        tracing::warn!(shard = core.shard, "lease renewal refused");
                        core.lose(LeaseEvent::RenewalRefused);
                    } else if owned.contains(&core.shard) {
                        telemetry::record_lease(LeaseEvent::Renewed);
                    }
                }
            }
            Err(error) => {
                // The store is unreachable: the leases may still be ours. Writes stay fenced
                // by the store itself, so keep going; a write or renewal that finds a lease
                // gone stops its shard.
                tracing::warn!(%error, "lease renewal failed");
                for _ in &owned {
                    telemetry::record_lease(LeaseEvent::RenewalFailed);
                }
            }
        }
    }

    /// Serves graceful stops: a shard asked to release first commits what it queued (accepted
    /// before the stop), then releases its lease and refuses whatever comes after.
    async fn serve_releases(&self, writer: &mut Box<dyn ShardWriter>) {
        for core in self.cores() {
            let Some(reply) = core.release_request.borrow_mut().take() else {
                continue;
            };
            while core.ownership.get() == Ownership::Owned && !core.queue.borrow().is_empty() {
                self.commit_once(writer, Some(core.shard)).await;
            }
            if core.ownership.get() == Ownership::Owned {
                if let Err(error) = writer.release(core.shard).await {
                    tracing::warn!(shard = core.shard, %error, "lease release failed");
                } else {
                    telemetry::record_lease(LeaseEvent::Released);
                }
            }
            core.ownership.set(Ownership::Released);
            core.forget_status_counts();
            core.refuse_waiting();
            let _ = reply.send(());
        }
    }

    /// One group write: the ready entries of every owned shard (or of `only` that shard), each
    /// shard's writes checked against its own lease, all in one atomic call.
    async fn commit_once(&self, writer: &mut Box<dyn ShardWriter>, only: Option<u32>) {
        let mut parts: Vec<Part> = Vec::new();
        let mut batches: Vec<ShardBatch> = Vec::new();
        for core in self.cores() {
            if core.ownership.get() != Ownership::Owned || only.is_some_and(|s| s != core.shard) {
                continue;
            }
            let mut entries: Vec<CommitEntry> = {
                let mut queue = core.queue.borrow_mut();
                let n = queue.len().min(self.limits.batch_size_max);
                queue.drain(..n).collect()
            };
            if entries.is_empty() {
                continue;
            }
            let stale = core.stale_entries(&entries);
            let batch = coalesce(&mut entries, &stale);
            batches.push(ShardBatch {
                shard: core.shard,
                writes: batch.writes,
                status: StatusUpdate::Delta(batch.status),
            });
            parts.push(Part {
                core,
                entries,
                write_of_entry: batch.write_of_entry,
                stale,
                status: batch.status,
                figures: batch.figures,
            });
        }
        if parts.is_empty() {
            return;
        }
        let snapshots: usize = batches.iter().map(|b| b.writes.len()).sum();
        let events: usize = batches
            .iter()
            .flat_map(|b| b.writes.iter())
            .map(|w| w.events.len())
            .sum();
        let started = Instant::now();
        let outcome = if snapshots == 0 {
            Ok(Vec::new())
        } else {
            let span = tracing::debug_span!("commit_batch", shards = batches.len(), snapshots);
            writer.write(batches).instrument(span).await
        };
        if snapshots > 0 {
            telemetry::record_commit(
                parts[0].core.store.kind(),
                snapshots,
                events,
                started.elapsed().as_secs_f64(),
                outcome.is_ok(),
            );
        }
        for part in parts {
            let shard_outcome = match &outcome {
                Err(error) => Err(error.clone()),
                Ok(refused) if refused.contains(&part.core.shard) => Err(StoreError::Fenced {
                    shard: part.core.shard,
                    detail: "the lease moved".into(),
                }),
                Ok(_) => Ok(()),
            };
            if shard_outcome.is_ok() {
                part.core.add_status_counts(&part.status);
                telemetry::record_figures(&part.figures);
            }
            part.core
                .settle_batch(part.entries, part.write_of_entry, part.stale, shard_outcome);
        }
    }
}

/// One shard's share of a group write.
struct Part {
    core: Rc<ShardCore>,
    entries: Vec<CommitEntry>,
    write_of_entry: Vec<Option<usize>>,
    stale: Vec<bool>,
    status: StatusCounts,
    figures: Figures,
}

impl ShardCore {
    fn gain(self: &Rc<Self>, lease: Lease) {
        self.ownership.set(Ownership::Owned);
        self.update_stats(|s| s.lease_token = lease.token);
        telemetry::record_lease(LeaseEvent::Acquired);
        tracing::debug!(
            shard = self.shard,
            token = lease.token,
            "shard lease acquired"
        );
        // Requests that waited for the first acquisition go now.
        self.drain_waiting();
        // Live payments resume through their durable payment-check timers (see `timers`):
        // no scan at start.
    }

    /// The first acquisition found the lease held by another node (or could not ask): refuse
    /// what waited for it.
    fn refuse_acquiring(&self) {
        if self.ownership.get() == Ownership::Acquiring {
            self.ownership.set(Ownership::Lost);
            self.refuse_waiting();
        }
    }

    fn refuse_waiting(&self) {
        let waiting: Vec<_> = self.waiting.borrow_mut().drain(..).collect();
        for parked in waiting {
            self.resolve(parked.token, Err(self.not_owned()));
        }
    }

    /// The lease is gone: stop serving at once. Live actors are dropped (their state may be
    /// behind the new owner's), queued and parked requests are refused, nothing is
    /// acknowledged. Gateway verdicts still in flight are refused when they arrive; the
    /// payments index resumes them after the next acquisition.
    fn lose(&self, reason: LeaseEvent) {
        self.ownership.set(Ownership::Lost);
        telemetry::record_lease(reason);
        self.forget_status_counts();
        let dropped = std::mem::replace(&mut *self.live.borrow_mut(), LiveSet::new());
        telemetry::record_lease_lost_actors(dropped.len());
        drop(dropped);
        let queued: Vec<CommitEntry> = self.queue.borrow_mut().drain(..).collect();
        for entry in queued {
            self.resolve(entry.token, Err(EngineError::ShardUnavailable(self.shard)));
        }
        self.refuse_waiting();
        self.update_stats(|s| {
            s.live = 0;
            s.lease_losses += 1;
        });
    }

    /// Entries an actor produced before it was told to reload (or before the shard lost its
    /// lease) are built on state that was never made durable: they are refused.
    fn stale_entries(&self, entries: &[CommitEntry]) -> Vec<bool> {
        let mut live = self.live.borrow_mut();
        entries
            .iter()
            .map(|e| {
                live.get_mut(&e.order_id)
                    .is_none_or(|l| l.incarnation != e.incarnation)
            })
            .collect()
    }

    /// Answers the entries of this shard's part of a group write, given its outcome, and
    /// carries out what follows: reloads, redeliveries, gateway jobs, parked requests.
    fn settle_batch(
        self: &Rc<Self>,
        entries: Vec<CommitEntry>,
        write_of_entry: Vec<Option<usize>>,
        stale: Vec<bool>,
        outcome: Result<(), StoreError>,
    ) {
        let fenced = matches!(outcome, Err(StoreError::Fenced { .. }));
        let outcome = outcome.map_err(|error| match error {
            StoreError::Fenced { .. } => EngineError::ShardUnavailable(self.shard),
            other => EngineError::Store(other),
        });
        let mut tally = CommandTally::default();
        let mut jobs: Vec<GatewayJob> = Vec::new();
        let mut reloads: Vec<(OrderId, &'static str)> = Vec::new();
        let mut redeliveries: Vec<(OrderId, CommandEnvelope, u8)> = Vec::new();
        for ((mut entry, write), stale) in entries.into_iter().zip(write_of_entry).zip(stale) {
            let (result, failed) = if stale {
                (Err(EngineError::Conflict(entry.order_id)), false)
            } else {
                settle(entry.result, write, &outcome)
            };
            if failed && !fenced {
                reloads.push((entry.order_id, "store_error"));
            } else if entry.reload && !fenced {
                reloads.push((entry.order_id, "panic_or_load_error"));
            }
            if (failed || stale) && !fenced {
                // A gateway verdict that did not become durable: no client will retry it.
                if let Some((envelope, n)) = entry.redeliver.take() {
                    redeliveries.push((entry.order_id, envelope, n));
                }
            }
            tally.add(entry.verb, outcome_label(&result));
            if result.is_ok() && !entry.jobs.is_empty() {
                // Durable (e.g. in PaymentProcessing with a Sending attempt): only now may the
                // gateway be asked. The answer to `pay` waits for the charge's verdict; any
                // other answer goes now. Each job keeps an in-flight slot of the order until
                // its final verdict takes it over, so the order stays live meanwhile.
                let mut entry_jobs = std::mem::take(&mut entry.jobs);
                if entry.forwarded || entry.resend {
                    entry_jobs[0].token = entry.token;
                } else {
                    self.resolve(entry.token, result);
                }
                self.hold(entry.order_id, entry_jobs.len() - 1);
                jobs.extend(entry_jobs);
                continue;
            }
            self.finish(
                entry.order_id,
                entry.token,
                result,
                entry.exists,
                entry.settled,
            );
        }
        tally.emit();
        if fenced {
            tracing::warn!(
                shard = self.shard,
                "batch write refused: the shard's lease moved; stopping the shard"
            );
            self.lose(LeaseEvent::WriteRefused);
            return;
        }
        for (order_id, reason) in reloads {
            self.reload(order_id, reason);
        }
        for (order_id, envelope, n) in redeliveries {
            self.redeliver_later(order_id, envelope, n);
        }
        self.send_jobs(jobs);
        self.drain_waiting();
    }
}
