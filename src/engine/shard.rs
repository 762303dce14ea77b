//! Shard actors: one per logical shard. A shard routes requests to its order actors,
//! activates them on first use (loading their snapshot), passivates idle and least recently used
//! ones within a bound, supervises them (reload from the last snapshot after a failure), and
//! runs group commit: the snapshots its orders produce are written in one batch per flush and
//! only then answered.
//!
//! A shard and all its order actors live on one arbiter thread, so they share the shard's
//! state (`ShardCore`) through `Rc` without locks or messages.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, Handler, Message};
use slab::Slab;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::Notify;

use super::commit::{coalesce, settle, BatchCollector, CommitEntry, PendingReply};
use super::live_set::LiveSet;
use super::messages::{
    CommandResult, Deliver, Dispatch, EngineError, Origin, Reload, ReplyTo, Request, Routed,
    ShardControl, Work, DETACHED,
};
use super::order_actor::OrderActor;
use crate::config::Settings;
use crate::domain::{Command, CommandEnvelope, OrderId, OrderPolicy, PaymentMethod};
use crate::gateway::{GatewayJob, GatewayWork, Gateways};
use crate::store::SnapshotStore;
use crate::telemetry::{self, CommandTally};

/// How many entries eviction looks at before giving up (bounded work per activation).
const EVICTION_SCAN_MAX: usize = 64;
/// How many idle orders one idle sweep passivates at most.
const IDLE_SWEEP_MAX: usize = 4096;
/// How often a gateway verdict whose write failed is delivered again (no client retries it;
/// after this, the order resumes on the next engine start).
const REDELIVERIES_MAX: u8 = 5;
/// Pause before delivering a verdict again, times its redelivery count.
const REDELIVERY_PAUSE: Duration = Duration::from_millis(500);
/// Most pages one payment recovery scan reads (a page is `recovery_batch_size` orders).
const RECOVERY_PAGES_MAX: usize = 1_000_000;
/// Failed page reads after which a recovery scan gives up (the next start tries again).
const RECOVERY_FAILURES_MAX: u32 = 10;
/// Longest wait for one recovery page to be resumed before reading the next.
const RECOVERY_PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bounds a shard applies, copied from settings.
#[derive(Clone, Copy)]
pub(crate) struct ShardLimits {
    pub(crate) max_live_orders: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) in_flight_max: u32,
    pub(crate) waiting_max: usize,
    pub(crate) batch_size_max: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) recovery_batch_size: usize,
}

impl ShardLimits {
    pub(crate) fn from_settings(settings: &Settings) -> ShardLimits {
        ShardLimits {
            max_live_orders: settings.engine.max_live_orders_per_shard,
            idle_timeout: Duration::from_millis(settings.engine.idle_timeout_ms),
            in_flight_max: settings.engine.order_commands_in_flight_max,
            waiting_max: settings.engine.waiting_commands_max,
            batch_size_max: settings.commit.batch_size_max,
            flush_interval: Duration::from_micros(settings.commit.flush_interval_us),
            recovery_batch_size: settings.payments.recovery_batch_size.max(1),
        }
    }
}

/// A request parked until the live set has room.
struct Parked {
    order_id: OrderId,
    work: Work,
    fresh: bool,
    token: usize,
    forwarded: bool,
    origin: Origin,
}

/// Statistics of one shard, for reports and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    /// Live order actors now.
    pub live: usize,
    /// Most live order actors ever seen at once.
    pub live_high_water: usize,
    /// Requests parked now.
    pub waiting: usize,
    /// Activations so far.
    pub activations: u64,
    /// Passivations so far.
    pub passivations: u64,
}

/// The state a shard shares with its order actors (same thread).
pub(crate) struct ShardCore {
    pub(crate) shard: u32,
    pub(crate) store: Arc<dyn SnapshotStore>,
    pub(crate) policy: OrderPolicy,
    limits: ShardLimits,
    gateways: Gateways,
    live: RefCell<LiveSet>,
    replies: RefCell<Slab<PendingReply>>,
    queue: RefCell<VecDeque<CommitEntry>>,
    waiting: RefCell<VecDeque<Parked>>,
    wakeup: Notify,
    control: UnboundedSender<ShardControl>,
    origin: Instant,
    stats: Cell<ShardStats>,
}

impl ShardCore {
    fn now_s(&self) -> u32 {
        self.origin.elapsed().as_secs() as u32
    }

    fn update_stats(&self, f: impl FnOnce(&mut ShardStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Accepts a dispatch from the engine handle.
    fn dispatch(self: &Rc<Self>, dispatch: Dispatch) {
        match dispatch.reply {
            ReplyTo::One(tx) => {
                if let Some(item) = dispatch.items.into_iter().next() {
                    let token = self.replies.borrow_mut().insert(PendingReply::One(tx));
                    self.route(
                        item.order_id,
                        Work::Request(item.request),
                        item.fresh,
                        token,
                        Origin::Client,
                    );
                }
            }
            ReplyTo::Many(tx) => {
                let collector = Rc::new(RefCell::new(BatchCollector {
                    results: Vec::with_capacity(dispatch.items.len()),
                    remaining: dispatch.items.len(),
                    reply: Some(tx),
                }));
                if dispatch.items.is_empty() {
                    if let Some(reply) = collector.borrow_mut().reply.take() {
                        let _ = reply.send(Vec::new());
                    }
                    return;
                }
                for Routed {
                    order_id,
                    request,
                    fresh,
                    index,
                } in dispatch.items
                {
                    let reply = PendingReply::Many {
                        collector: Rc::clone(&collector),
                        index,
                    };
                    let token = self.replies.borrow_mut().insert(reply);
                    self.route(
                        order_id,
                        Work::Request(request),
                        fresh,
                        token,
                        Origin::Client,
                    );
                }
            }
        }
    }

    fn resolve(&self, token: usize, result: CommandResult) {
        let reply = self.replies.borrow_mut().try_remove(token);
        if let Some(reply) = reply {
            reply.send(result);
        }
    }

    /// Sends work to its order actor, activating it (within the bound) if needed.
    fn route(
        self: &Rc<Self>,
        order_id: OrderId,
        work: Work,
        fresh: bool,
        token: usize,
        origin: Origin,
    ) {
        // `pay` answers after the gateway's verdict, so its reply travels with the charge.
        let forwarded = matches!(
            &work,
            Work::Request(Request::Command(CommandEnvelope {
                command: Command::StartPayment { .. },
                ..
            }))
        );
        self.route_parked(
            Parked {
                order_id,
                work,
                fresh,
                token,
                forwarded,
                origin,
            },
            false,
        );
    }

    fn route_parked(self: &Rc<Self>, parked: Parked, from_waiting: bool) {
        let now_s = self.now_s();
        let mut live = self.live.borrow_mut();
        if let Some(entry) = live.touch(&parked.order_id, now_s) {
            if entry.in_flight >= self.limits.in_flight_max {
                drop(live);
                telemetry::record_overload();
                self.resolve(parked.token, Err(EngineError::Overloaded));
                return;
            }
            entry.in_flight += 1;
            let message = Deliver {
                token: parked.token,
                work: parked.work,
                forwarded: parked.forwarded,
                origin: parked.origin,
            };
            if entry.addr.try_send(message).is_err() {
                // The actor is gone (it cannot be full: in-flight is bounded below its mailbox).
                entry.in_flight -= 1;
                live.remove(&parked.order_id);
                drop(live);
                self.resolve(
                    parked.token,
                    Err(EngineError::Internal("order actor unavailable".into())),
                );
            }
            return;
        }
        // Keep per-order order: while anything is parked, new activations queue behind it.
        let must_park = (!from_waiting && !self.waiting.borrow().is_empty())
            || live.len() >= self.limits.max_live_orders;
        if must_park && !self.make_room(&mut live) {
            drop(live);
            let mut waiting = self.waiting.borrow_mut();
            if waiting.len() >= self.limits.waiting_max {
                drop(waiting);
                telemetry::record_overload();
                self.resolve(parked.token, Err(EngineError::Overloaded));
            } else {
                waiting.push_back(parked);
            }
            return;
        }
        let core = Rc::clone(self);
        let mailbox = self.limits.in_flight_max as usize + 4;
        let (order_id, fresh) = (parked.order_id, parked.fresh);
        let addr = OrderActor::create(move |ctx| {
            ctx.set_mailbox_capacity(mailbox);
            OrderActor::new(order_id, core, fresh, 0)
        });
        telemetry::record_activation();
        let entry = live.insert(order_id, addr, 0, now_s);
        entry.in_flight = 1;
        let message = Deliver {
            token: parked.token,
            work: parked.work,
            forwarded: parked.forwarded,
            origin: parked.origin,
        };
        let sent = entry.addr.try_send(message).is_ok();
        let len = live.len();
        drop(live);
        self.update_stats(|s| {
            s.activations += 1;
            s.live = len;
            s.live_high_water = s.live_high_water.max(len);
        });
        if !sent {
            self.live.borrow_mut().remove(&order_id);
            self.resolve(
                parked.token,
                Err(EngineError::Internal("order actor unavailable".into())),
            );
        }
    }

    /// Frees a slot in the live set if the set is at its bound; false if every candidate is
    /// busy.
    fn make_room(&self, live: &mut LiveSet) -> bool {
        while live.len() >= self.limits.max_live_orders {
            match live.eviction_candidate(EVICTION_SCAN_MAX) {
                Some(victim) => {
                    live.remove(&victim);
                    telemetry::record_passivation("capacity");
                    self.update_stats(|s| s.passivations += 1);
                }
                None => return false,
            }
        }
        true
    }

    /// Retries parked requests in arrival order while there is room.
    fn drain_waiting(self: &Rc<Self>) {
        loop {
            let next = {
                let mut waiting = self.waiting.borrow_mut();
                let Some(front) = waiting.front() else { break };
                let mut live = self.live.borrow_mut();
                let is_live = live.get_mut(&front.order_id).is_some();
                if !is_live && !self.make_room(&mut live) {
                    break;
                }
                waiting.pop_front()
            };
            let Some(parked) = next else { break };
            // The front is live or there is room, so this does not park again.
            self.route_parked(parked, true);
        }
    }

    /// Called by order actors: queue an entry for the next commit.
    pub(crate) fn enqueue(&self, entry: CommitEntry) {
        self.queue.borrow_mut().push_back(entry);
        self.wakeup.notify_one();
    }

    /// The group-commit loop of this shard: one write in flight at a time; entries that arrive
    /// meanwhile form the next batch.
    async fn run_commits(self: Rc<Self>) {
        loop {
            self.wakeup.notified().await;
            loop {
                let queued = self.queue.borrow().len();
                if queued == 0 {
                    break;
                }
                if queued < self.limits.batch_size_max {
                    if self.limits.flush_interval.is_zero() {
                        // Let the order actors that are ready run first, so their snapshots
                        // join this batch.
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(self.limits.flush_interval).await;
                    }
                }
                self.commit_once().await;
            }
        }
    }

    async fn commit_once(self: &Rc<Self>) {
        let mut entries: Vec<CommitEntry> = {
            let mut queue = self.queue.borrow_mut();
            let n = queue.len().min(self.limits.batch_size_max);
            queue.drain(..n).collect()
        };
        // Entries an actor produced before it was told to reload are built on state that was
        // never made durable: refuse them.
        let stale: Vec<bool> = {
            let mut live = self.live.borrow_mut();
            entries
                .iter()
                .map(|e| {
                    live.get_mut(&e.order_id)
                        .is_none_or(|l| l.incarnation != e.incarnation)
                })
                .collect()
        };
        let batch = coalesce(&mut entries, &stale);
        let snapshots = batch.writes.len();
        let events: usize = batch.writes.iter().map(|w| w.events.len()).sum();
        let started = Instant::now();
        let outcome = if batch.writes.is_empty() {
            Ok(Vec::new())
        } else {
            self.store.write_batch(self.shard, batch.writes).await
        };
        if snapshots > 0 {
            telemetry::record_commit(
                self.store.kind(),
                snapshots,
                events,
                started.elapsed().as_secs_f64(),
                outcome.is_ok(),
            );
        }
        let mut tally = CommandTally::default();
        let mut jobs: Vec<GatewayJob> = Vec::new();
        let mut reloads: Vec<(OrderId, &'static str)> = Vec::new();
        let mut redeliveries: Vec<(OrderId, CommandEnvelope, u8)> = Vec::new();
        let mut conflicts = 0;
        for ((mut entry, write), stale) in entries.into_iter().zip(batch.write_of_entry).zip(stale)
        {
            let (result, failed) = if stale {
                (Err(EngineError::Conflict(entry.order_id)), false)
            } else {
                settle(entry.result, entry.order_id, write, &outcome)
            };
            if failed {
                let reason = if outcome.is_err() {
                    "store_error"
                } else {
                    "conflict"
                };
                if reason == "conflict" {
                    conflicts += 1;
                }
                reloads.push((entry.order_id, reason));
            } else if entry.reload {
                reloads.push((entry.order_id, "panic_or_load_error"));
            }
            if failed || stale {
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
        if conflicts > 0 {
            telemetry::record_conflicts(conflicts);
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

    /// Answers a request and updates the order's bookkeeping.
    fn finish(
        &self,
        order_id: OrderId,
        token: usize,
        result: CommandResult,
        exists: bool,
        settled: bool,
    ) {
        self.resolve(token, result);
        let mut live = self.live.borrow_mut();
        let Some(entry) = live.get_mut(&order_id) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        let idle = entry.in_flight == 0;
        if idle && !exists {
            // A request for an order that does not exist: nothing worth keeping live.
            live.remove(&order_id);
            telemetry::record_passivation("unknown_order");
        } else {
            live.set_settled(&order_id, settled);
        }
        let len = live.len();
        drop(live);
        self.update_stats(|s| s.live = len);
    }

    /// Tells an order actor to drop its state and reload the last durable snapshot.
    fn reload(&self, order_id: OrderId, reason: &'static str) {
        let mut live = self.live.borrow_mut();
        let Some(entry) = live.get_mut(&order_id) else {
            return;
        };
        entry.incarnation = entry.incarnation.wrapping_add(1);
        telemetry::record_restart(reason);
        if entry
            .addr
            .try_send(Reload {
                incarnation: entry.incarnation,
            })
            .is_err()
        {
            // Mailbox gone or full: drop the actor; the next request activates a fresh one.
            if entry.in_flight == 0 {
                live.remove(&order_id);
            }
        }
    }

    /// Keeps `extra` more in-flight slots of an order for gateway jobs beyond the one its
    /// entry already holds.
    fn hold(&self, order_id: OrderId, extra: usize) {
        if extra == 0 {
            return;
        }
        if let Some(entry) = self.live.borrow_mut().get_mut(&order_id) {
            entry.in_flight += extra as u32;
        }
    }

    /// Frees the in-flight slot of a gateway job that ended without a final verdict.
    fn release(&self, order_id: OrderId) {
        let mut live = self.live.borrow_mut();
        if let Some(entry) = live.get_mut(&order_id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }

    /// Hands jobs to their gateway actors: one message per gateway per commit.
    fn send_jobs(&self, jobs: Vec<GatewayJob>) {
        if jobs.is_empty() {
            return;
        }
        let mut by_method: [Vec<GatewayJob>; 3] = Default::default();
        for job in jobs {
            by_method[job.method.code() as usize].push(job);
        }
        for (method, jobs) in PaymentMethod::ALL.into_iter().zip(by_method) {
            if jobs.is_empty() {
                continue;
            }
            let addr = self.gateways.for_method(method);
            let work = GatewayWork {
                jobs,
                reply_to: self.control.clone(),
            };
            match addr.try_send(work) {
                Ok(()) => {}
                Err(actix::prelude::SendError::Full(work)) => {
                    // `send().await` waits for room in the gateway's bounded mailbox; the
                    // number of such waits is bounded by the jobs in flight.
                    let addr = addr.clone();
                    actix_rt::spawn(async move {
                        let _ = addr.send(work).await;
                    });
                }
                Err(actix::prelude::SendError::Closed(work)) => self.gateway_gone(work.jobs),
            }
        }
    }

    /// The gateway actor is gone (shutdown): charges were provably not sent; other jobs end
    /// without a verdict and resume on the next start.
    fn gateway_gone(&self, jobs: Vec<GatewayJob>) {
        let mut verdicts = Vec::new();
        let mut released = Vec::new();
        for job in jobs {
            match job.kind {
                crate::gateway::JobKind::Charge { attempt_no } => {
                    verdicts.push(super::messages::Verdict {
                        order_id: job.order_id,
                        fact: super::messages::VerdictFact::Payment {
                            attempt_no,
                            result: crate::domain::PaymentResult::FailedNotSent {
                                reason: "gateway unavailable".into(),
                            },
                        },
                        token: job.token,
                        last: true,
                    })
                }
                _ => released.push(job.order_id),
            }
        }
        let _ = self.control.send(ShardControl::Verdicts(verdicts));
        let _ = self.control.send(ShardControl::Released(released));
    }

    /// Delivers a gateway verdict again after a pause (its write failed).
    fn redeliver_later(&self, order_id: OrderId, envelope: CommandEnvelope, redeliveries: u8) {
        if redeliveries >= REDELIVERIES_MAX {
            tracing::warn!(order = %order_id, "gateway verdict not durable after redeliveries; the order resumes on the next start");
            return;
        }
        let control = self.control.clone();
        let pause = REDELIVERY_PAUSE * (u32::from(redeliveries) + 1);
        actix_rt::spawn(async move {
            tokio::time::sleep(pause).await;
            let _ = control.send(ShardControl::Redeliver {
                order_id,
                envelope,
                redeliveries: redeliveries + 1,
            });
        });
    }

    /// Delivers a job's final verdict to its order, taking over the in-flight slot the job
    /// held (so the order cannot have been passivated meanwhile).
    fn deliver_held(self: &Rc<Self>, order_id: OrderId, work: Work, token: usize) {
        let origin = Origin::Gateway { redeliveries: 0 };
        let mut live = self.live.borrow_mut();
        let Some(entry) = live.touch(&order_id, self.now_s()) else {
            drop(live);
            self.route(order_id, work, false, token, origin);
            return;
        };
        let message = Deliver {
            token,
            work,
            forwarded: false,
            origin,
        };
        if let Err(error) = entry.addr.try_send(message) {
            // The actor is gone: drop it and its held slot, and let a fresh one load the
            // order from its snapshot.
            live.remove(&order_id);
            drop(live);
            let message = match error {
                actix::prelude::SendError::Full(m) | actix::prelude::SendError::Closed(m) => m,
            };
            self.route(order_id, message.work, false, token, origin);
        }
    }

    /// Control messages (gateway verdicts) are routed ahead of bulk work: they arrive on their
    /// own channel, not behind creates in the shard's mailbox.
    fn handle_control(self: &Rc<Self>, message: ShardControl) {
        match message {
            ShardControl::Verdicts(verdicts) => {
                for verdict in verdicts {
                    let work =
                        Work::Request(Request::Command(verdict.fact.envelope(verdict.order_id)));
                    if verdict.last {
                        self.deliver_held(verdict.order_id, work, verdict.token);
                    } else {
                        self.route(
                            verdict.order_id,
                            work,
                            false,
                            verdict.token,
                            Origin::Gateway { redeliveries: 0 },
                        );
                    }
                }
            }
            ShardControl::Released(order_ids) => {
                for order_id in order_ids {
                    self.release(order_id);
                }
            }
            ShardControl::Redeliver {
                order_id,
                envelope,
                redeliveries,
            } => self.route(
                order_id,
                Work::Request(Request::Command(envelope)),
                false,
                DETACHED,
                Origin::Gateway { redeliveries },
            ),
        }
    }

    /// Resumes the gateway work of every order in this shard's index of live payments: each
    /// page of ids is activated with a `Resume` (query the live attempt, re-send the pending
    /// refund) and answered before the next page is read, so recovery never floods the live
    /// set. Bounded in pages and failures.
    async fn recover_payments(self: Rc<Self>) {
        let page = self.limits.recovery_batch_size;
        let mut cursor = 0_u128;
        let mut resumed = 0_u64;
        let mut failures = 0;
        for _ in 0..RECOVERY_PAGES_MAX {
            match self
                .store
                .scan_live_payments(self.shard, cursor, page)
                .await
            {
                Ok((next, ids)) => {
                    failures = 0;
                    if !ids.is_empty() {
                        resumed += ids.len() as u64;
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        self.resume_page(ids, tx);
                        let _ = tokio::time::timeout(RECOVERY_PAGE_TIMEOUT, rx).await;
                    }
                    cursor = next;
                    if next == 0 {
                        break;
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(shard = self.shard, %error, "payment recovery scan failed");
                    if failures >= RECOVERY_FAILURES_MAX {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        if resumed > 0 {
            tracing::info!(
                shard = self.shard,
                resumed,
                "resumed orders with live payments"
            );
            telemetry::record_payments_resumed(resumed);
        }
    }

    fn resume_page(
        self: &Rc<Self>,
        ids: Vec<OrderId>,
        reply: tokio::sync::oneshot::Sender<Vec<(u32, CommandResult)>>,
    ) {
        let collector = Rc::new(RefCell::new(BatchCollector {
            results: Vec::with_capacity(ids.len()),
            remaining: ids.len(),
            reply: Some(reply),
        }));
        for (index, order_id) in ids.into_iter().enumerate() {
            let token = self.replies.borrow_mut().insert(PendingReply::Many {
                collector: Rc::clone(&collector),
                index: index as u32,
            });
            self.route(order_id, Work::Resume, false, token, Origin::Client);
        }
    }

    fn passivate_idle(&self) {
        let now_s = self.now_s();
        let idle_s = self.limits.idle_timeout.as_secs() as u32;
        if now_s < idle_s {
            return;
        }
        let mut live = self.live.borrow_mut();
        let victims = live.idle(now_s - idle_s, IDLE_SWEEP_MAX);
        for id in &victims {
            live.remove(id);
            telemetry::record_passivation("idle");
        }
        let len = live.len();
        drop(live);
        let n = victims.len() as u64;
        self.update_stats(|s| {
            s.passivations += n;
            s.live = len;
        });
    }
}

fn outcome_label(result: &CommandResult) -> &'static str {
    match result {
        Ok(outcome) if outcome.duplicate => "duplicate",
        Ok(_) => "ok",
        Err(EngineError::Rejected(_)) => "rejected",
        Err(_) => "error",
    }
}

/// The shard actor: the actix face of a `ShardCore`.
pub struct ShardActor {
    core: Rc<ShardCore>,
    control_rx: Option<UnboundedReceiver<ShardControl>>,
}

impl ShardActor {
    pub(crate) fn new(
        shard: u32,
        store: Arc<dyn SnapshotStore>,
        gateways: Gateways,
        policy: OrderPolicy,
        limits: ShardLimits,
    ) -> ShardActor {
        let (control, control_rx) = unbounded_channel();
        let core = Rc::new(ShardCore {
            shard,
            store,
            policy,
            limits,
            gateways,
            live: RefCell::new(LiveSet::new()),
            replies: RefCell::new(Slab::new()),
            queue: RefCell::new(VecDeque::new()),
            waiting: RefCell::new(VecDeque::new()),
            wakeup: Notify::new(),
            control,
            origin: Instant::now(),
            stats: Cell::new(ShardStats::default()),
        });
        ShardActor {
            core,
            control_rx: Some(control_rx),
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        actix_rt::spawn(Rc::clone(&self.core).run_commits());
        actix_rt::spawn(Rc::clone(&self.core).recover_payments());
        if let Some(mut rx) = self.control_rx.take() {
            let core = Rc::clone(&self.core);
            actix_rt::spawn(async move {
                while let Some(message) = rx.recv().await {
                    core.handle_control(message);
                }
            });
        }
        let sweep = (self.core.limits.idle_timeout / 4).max(Duration::from_millis(250));
        ctx.run_interval(sweep, |actor, _| actor.core.passivate_idle());
    }
}

impl Handler<Dispatch> for ShardActor {
    type Result = ();

    fn handle(&mut self, dispatch: Dispatch, _: &mut Context<Self>) {
        self.core.dispatch(dispatch);
    }
}

/// Asks a shard for its statistics.
pub(crate) struct GetShardStats;

impl Message for GetShardStats {
    type Result = ShardStats;
}

impl Handler<GetShardStats> for ShardActor {
    type Result = actix::MessageResult<GetShardStats>;

    fn handle(&mut self, _: GetShardStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.core.stats.get();
        stats.live = self.core.live.borrow().len();
        stats.waiting = self.core.waiting.borrow().len();
        actix::MessageResult(stats)
    }
}
