//! Shard actors: one per logical shard. A shard owns its shard's lease (fenced ownership),
//! routes requests to its order actors, activates them on first use (loading their snapshot),
//! passivates idle and least recently used ones within a bound, supervises them (reload from
//! the last snapshot after a failure), and runs group commit: the snapshots its orders produce
//! are written in one fenced batch per flush and only then answered.
//!
//! A shard and all its order actors live on one arbiter thread, so they share the shard's
//! state (`ShardCore`) through `Rc` without locks or messages. The concerns live in one file
//! each:
//! - `routing`: dispatches from the engine handle, activation, parking while the live set is
//!   full or the lease is being acquired;
//! - `commit_loop`: the commit group of a thread: leases (acquire, renew, lose, release) and
//!   group commit of its shards' batches in one fenced write;
//! - `gateway_link`: jobs to the gateway actors and their verdicts back;
//! - `passivation`: the idle sweep and eviction;
//! - `timers`: polling the shard's durable timer index and firing due timers.

mod commit_loop;
mod gateway_link;
mod passivation;
mod routing;
mod status;
mod timers;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, AsyncContext, Context, Handler, Message};
use slab::Slab;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::commit::{CommitEntry, PendingReply};
use super::live_set::LiveSet;
use super::messages::{CommandResult, Dispatch, EngineError, Origin, Redelivery, Reload, Work};
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::domain::{OrderId, OrderPolicy};
use crate::gateway::{GatewayReply, Gateways, ReplySender};
use crate::store::{LeaseOwner, SnapshotStore, StatusCounts};
use crate::telemetry;
use commit_loop::CommitGroup;
pub(crate) use timers::FireRate;
use timers::{TimerLimits, TimerState};

/// Bounds a shard applies, copied from settings.
#[derive(Clone, Copy)]
pub(crate) struct ShardLimits {
    pub(crate) max_live_orders: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) passivate_settled: bool,
    pub(crate) in_flight_max: u32,
    pub(crate) waiting_max: usize,
    pub(crate) batch_size_max: usize,
    pub(crate) flush_interval: Duration,
    /// Wait `flush_interval` only below this many queued snapshots.
    pub(crate) linger_batch_below: usize,
    /// How often the lease is renewed (and, while another node holds it, asked for again).
    pub(crate) lease_renew_interval: Duration,
    /// Arbiter threads the shards are spread over.
    pub(crate) arbiters: u32,
    /// Commit groups (each one write in flight, on its own connection) per arbiter thread.
    pub(crate) commit_groups_per_thread: u32,
    /// Durable timer polling.
    pub(crate) timers: TimerLimits,
}

impl ShardLimits {
    pub(crate) fn from_settings(settings: &Settings) -> ShardLimits {
        ShardLimits {
            max_live_orders: settings.engine.max_live_orders_per_shard,
            idle_timeout: Duration::from_millis(settings.engine.idle_timeout_ms),
            passivate_settled: settings.engine.passivate_settled,
            in_flight_max: settings.engine.order_commands_in_flight_max,
            waiting_max: settings.engine.waiting_commands_max,
            batch_size_max: settings.commit.batch_size_max,
            flush_interval: Duration::from_micros(settings.commit.flush_interval_us),
            linger_batch_below: settings.commit.linger_batch_below,
            lease_renew_interval: Duration::from_millis(
                settings.cluster.effective_renew_interval_ms(),
            ),
            arbiters: settings.arbiter_count() as u32,
            commit_groups_per_thread: settings.commit.groups_per_thread,
            timers: TimerLimits {
                poll_interval: Duration::from_millis(settings.timers.poll_interval_ms),
                fire_batch_max: settings.timers.fire_batch_max,
            },
        }
    }
}

/// Where this node stands with the shard's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// Starting: the first acquisition is under way; requests wait (bounded) for it.
    Acquiring,
    /// This node holds the lease: requests are served.
    Owned,
    /// Another node holds the lease, or it was lost: requests are refused with
    /// `shard_unavailable` until it is acquired again.
    Lost,
    /// The lease was released for a graceful stop.
    Released,
}

/// A request parked until the live set has room (or the lease is acquired).
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
    /// Whether this node holds the shard's lease now.
    pub owned: bool,
    /// The fencing token of the held lease (0: none held yet).
    pub lease_token: u64,
    /// Times the lease was lost (refused write or renewal).
    pub lease_losses: u64,
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
    /// The commit group of this shard's thread: it writes this shard's batches together with
    /// its neighbours', under each shard's own lease.
    group: Rc<CommitGroup>,
    /// The engine instance this shard belongs to.
    engine_id: u64,
    /// Where gateways send their verdicts on this shard's orders.
    gateway_replies: ReplySender,
    /// Verdicts whose write failed, delivered again after a pause.
    redeliveries: UnboundedSender<Redelivery>,
    origin: Instant,
    stats: Cell<ShardStats>,
    ownership: Cell<Ownership>,
    /// Source of order actor incarnations, unique within the shard for its whole life: an
    /// entry produced by an actor that was reloaded or dropped (a lost lease) can never be
    /// mistaken for the current actor's.
    next_incarnation: Cell<u32>,
    /// A graceful stop waiting for the commit loop to release the lease.
    release_request: RefCell<Option<oneshot::Sender<()>>>,
    /// Why the last lease acquisition failed, when the store could not be asked: requests
    /// are then refused as `store_unavailable`, not as `shard_unavailable`.
    acquire_error: RefCell<Option<crate::store::StoreError>>,
    /// The engine's clock (business time: the domain's `now`, timers).
    clock: SharedClock,
    /// Timer fires in flight and orders waiting to be tried again.
    timers: RefCell<TimerState>,
    /// The node-wide catch-up rate of timer fires.
    timer_rate: Arc<FireRate>,
    /// The shard's per-status order counts as this owner knows them (the durable ones, plus
    /// what its batches added), exported while the shard is owned; and whether they were read
    /// from the store in this term.
    status_counts: Cell<StatusCounts>,
    status_loaded: Cell<bool>,
}

impl ShardCore {
    fn now_s(&self) -> u32 {
        self.group
            .now()
            .1
            .saturating_duration_since(self.origin)
            .as_secs() as u32
    }

    /// Now for the domain (see `CommitGroup::now`).
    pub(crate) fn now(&self) -> crate::domain::Timestamp {
        self.group.now().0
    }

    fn update_stats(&self, f: impl FnOnce(&mut ShardStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// Why requests are refused while the shard is not owned.
    fn not_owned(&self) -> EngineError {
        match &*self.acquire_error.borrow() {
            Some(error) => EngineError::Store(error.clone()),
            None => EngineError::ShardUnavailable(self.shard),
        }
    }

    /// A new incarnation number for an order actor (created or reloaded).
    fn incarnation(&self) -> u32 {
        let next = self.next_incarnation.get().wrapping_add(1);
        self.next_incarnation.set(next);
        next
    }

    fn resolve(&self, token: usize, result: CommandResult) {
        let reply = self.replies.borrow_mut().try_remove(token);
        match reply {
            Some(PendingReply::Timer { order_id }) => self.timer_done(order_id, &result),
            Some(reply) => reply.send(result),
            None => {}
        }
    }

    /// Called by order actors: queue an entry for the next commit. While the shard is not
    /// owned nothing can become durable, so the entry is refused at once.
    pub(crate) fn enqueue(&self, entry: CommitEntry) {
        if self.ownership.get() != Ownership::Owned {
            self.resolve(entry.token, Err(self.not_owned()));
            return;
        }
        self.queue.borrow_mut().push_back(entry);
        self.group.wakeup.notify_one();
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
        } else if idle && settled && self.limits.passivate_settled {
            // It can never change again: its snapshot in the store is all it is.
            live.remove(&order_id);
            telemetry::record_passivation("settled");
        } else {
            live.set_settled(&order_id, settled);
        }
        let len = live.len();
        drop(live);
        self.update_stats(|s| s.live = len);
    }

    /// Tells an order actor to drop its state and reload the last durable snapshot.
    fn reload(&self, order_id: OrderId, reason: &'static str) {
        let incarnation = self.incarnation();
        let mut live = self.live.borrow_mut();
        let Some(entry) = live.get_mut(&order_id) else {
            return;
        };
        entry.incarnation = incarnation;
        telemetry::record_restart(reason);
        if entry.addr.try_send(Reload { incarnation }).is_err() {
            // Mailbox gone or full: drop the actor; the next request activates a fresh one.
            if entry.in_flight == 0 {
                live.remove(&order_id);
            }
        }
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
    gateway_rx: Option<UnboundedReceiver<GatewayReply>>,
    redelivery_rx: Option<UnboundedReceiver<Redelivery>>,
}

impl ShardActor {
    /// A shard of engine `engine_id`; must be called on the arbiter thread that will run it
    /// (it joins that thread's commit group).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        engine_id: u64,
        shard: u32,
        store: Arc<dyn SnapshotStore>,
        gateways: Gateways,
        policy: OrderPolicy,
        limits: ShardLimits,
        owner: &LeaseOwner,
        clock: SharedClock,
        timer_rate: Arc<FireRate>,
    ) -> ShardActor {
        let (gateway_replies, gateway_rx) = unbounded_channel();
        let (redeliveries, redelivery_rx) = unbounded_channel();
        // Shard s lives on arbiter s % arbiters; the shards of one thread are spread over its
        // commit groups in turn.
        let group_index = (shard / limits.arbiters.max(1)) % limits.commit_groups_per_thread.max(1);
        let group = CommitGroup::on_this_thread(engine_id, group_index, limits, &clock, || {
            store.shard_writer(owner)
        });
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
            group,
            engine_id,
            gateway_replies,
            redeliveries,
            origin: Instant::now(),
            stats: Cell::new(ShardStats::default()),
            ownership: Cell::new(Ownership::Acquiring),
            next_incarnation: Cell::new(0),
            release_request: RefCell::new(None),
            acquire_error: RefCell::new(None),
            clock,
            timers: RefCell::new(TimerState::default()),
            timer_rate,
            status_counts: Cell::new(StatusCounts::default()),
            status_loaded: Cell::new(false),
        });
        core.group.register(engine_id, &core);
        ShardActor {
            core,
            gateway_rx: Some(gateway_rx),
            redelivery_rx: Some(redelivery_rx),
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.core.group.start();
        self.core.adopt_parked();
        // Gateway verdicts and redeliveries arrive on their own channels, never behind bulk
        // work in the shard's mailbox.
        if let Some(mut rx) = self.gateway_rx.take() {
            let core = Rc::clone(&self.core);
            actix_rt::spawn(async move {
                while let Some(reply) = rx.recv().await {
                    core.handle_gateway_reply(reply);
                }
            });
        }
        if let Some(mut rx) = self.redelivery_rx.take() {
            let core = Rc::clone(&self.core);
            actix_rt::spawn(async move {
                while let Some(redelivery) = rx.recv().await {
                    core.handle_redelivery(redelivery);
                }
            });
        }
        actix_rt::spawn(ShardCore::run_timers(
            Rc::downgrade(&self.core),
            Arc::clone(&self.core.clock),
            self.core.limits.timers,
        ));
        let sweep = (self.core.limits.idle_timeout / 4).max(Duration::from_millis(250));
        ctx.run_interval(sweep, |actor, _| actor.core.passivate_idle());
    }
}

impl Handler<Dispatch> for ShardActor {
    type Result = ();

    fn handle(&mut self, dispatch: Dispatch, _: &mut Context<Self>) {
        telemetry::MAILBOX_DEPTH.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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
        stats.owned = self.core.ownership.get() == Ownership::Owned;
        actix::MessageResult(stats)
    }
}

/// Asks a shard to finish its in-flight batch and release its lease (graceful stop); answered
/// once released. Requests after it are refused with `shard_unavailable`.
pub(crate) struct ReleaseLease;

impl Message for ReleaseLease {
    type Result = ();
}

impl Handler<ReleaseLease> for ShardActor {
    type Result = actix::ResponseFuture<()>;

    fn handle(&mut self, _: ReleaseLease, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        *self.core.release_request.borrow_mut() = Some(tx);
        self.core.group.wakeup.notify_one();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
