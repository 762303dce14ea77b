//! The engine: actors that own orders, and the cloneable handle the edges talk to.
//!
//! `Engine` routes each request to its logical shard (`hash(order_id) % shards`); shards are
//! spread over one arbiter thread per core. Requests travel in batches (one message per shard
//! per call), because a sequential cross-thread ask costs tens of microseconds while pipelined
//! messages are cheap: bulk callers should use [`Engine::execute_batch`].

pub(crate) mod commit;
pub(crate) mod live_set;
pub mod messages;
pub mod order_actor;
pub mod shard;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter};
use tokio::sync::oneshot;

pub(crate) use commit::Figures;
pub use messages::{CommandOutcome, CommandResult, EngineError, Request};
pub use shard::ShardStats;

use crate::config::Settings;
use crate::domain::{Command, CommandEnvelope, NewOrder, OrderId};
use crate::gateway::Gateways;
use crate::store::{LeaseOwner, SnapshotStore};
use crate::telemetry;
use messages::{Dispatch, ReplyTo, Routed};
use shard::{GetShardStats, ReleaseLease, ShardActor, ShardLimits};

/// How a request waits for room in a full shard mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Wait for room (bulk paths that can slow their producer).
    Wait,
    /// Fail at once with [`EngineError::Overloaded`] (request/response paths: 429).
    FailFast,
}

struct EngineInner {
    shards: Vec<Addr<ShardActor>>,
    /// Shards that receive batch dispatches for their whole arbiter thread: `min(arbiters,
    /// shards)`.
    routers: usize,
    arbiters: Mutex<Vec<Arbiter>>,
    store: Arc<dyn SnapshotStore>,
    gateways: Gateways,
    node_id: Arc<str>,
}

/// Cloneable, `Send` handle to a running engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl Engine {
    /// Starts the shard actors on fresh arbiter threads. Must be called inside an actix
    /// `System`; gateway actors (one per gateway routed to in `[payments.routes]`) start on the
    /// current arbiter. Each shard then resumes the orders its store index lists with a live
    /// payment attempt or refund (after a crash): attempts are queried, never charged again.
    pub fn start(settings: &Settings, store: Arc<dyn SnapshotStore>) -> Engine {
        Engine::start_with_clock(settings, store, crate::clock::SystemClock::shared())
    }

    /// Starts the engine on `clock` (business time: the domain's `now`, timers, gateway
    /// backoff). Tests pass a [`crate::clock::ManualClock`].
    pub fn start_with_clock(
        settings: &Settings,
        store: Arc<dyn SnapshotStore>,
        clock: crate::clock::SharedClock,
    ) -> Engine {
        let arbiters: Vec<Arbiter> = (0..settings.arbiter_count())
            .map(|_| Arbiter::new())
            .collect();
        let gateways = Gateways::start_with_clock(settings, Arc::clone(&clock));
        let limits = ShardLimits::from_settings(settings);
        let policy = settings.policy();
        let timer_rate = Arc::new(shard::FireRate::new(settings.timers.catch_up_per_s_max));
        let mailbox = settings.engine.shard_mailbox_capacity;
        // Distinguishes this engine's commit groups from another engine's on the same thread.
        static ENGINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let engine_id = ENGINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        telemetry::start_store_series(store.kind());
        let owner = LeaseOwner {
            node_id: settings.cluster.effective_node_id().into(),
            ttl_ms: settings.cluster.lease_ttl_ms,
        };
        let shards: Vec<Addr<ShardActor>> = (0..settings.engine.shards)
            .map(|shard| {
                let arbiter = &arbiters[shard as usize % arbiters.len()];
                let store = Arc::clone(&store);
                let gateways = gateways.clone();
                let owner = owner.clone();
                let policy = policy.clone();
                let clock = Arc::clone(&clock);
                let timer_rate = Arc::clone(&timer_rate);
                ShardActor::start_in_arbiter(&arbiter.handle(), move |ctx| {
                    ctx.set_mailbox_capacity(mailbox);
                    ShardActor::new(
                        engine_id, shard, store, gateways, policy, limits, &owner, clock,
                        timer_rate,
                    )
                })
            })
            .collect();
        Engine {
            inner: Arc::new(EngineInner {
                node_id: Arc::clone(&owner.node_id),
                routers: arbiters.len().min(shards.len()).max(1),
                shards,
                arbiters: Mutex::new(arbiters),
                store,
                gateways,
            }),
        }
    }

    /// The logical shard of an order.
    pub fn shard_of(&self, order_id: OrderId) -> u32 {
        (order_id.route_hash() % self.inner.shards.len() as u64) as u32
    }

    /// Number of logical shards.
    pub fn shard_count(&self) -> u32 {
        self.inner.shards.len() as u32
    }

    /// The store kind (`memory`, `redis`).
    pub fn store_kind(&self) -> &'static str {
        self.inner.store.kind()
    }

    /// This node's id (`[cluster] node_id`).
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// The store, for readiness checks.
    pub fn store(&self) -> &Arc<dyn SnapshotStore> {
        &self.inner.store
    }

    async fn send(
        &self,
        shard: u32,
        dispatch: Dispatch,
        admission: Admission,
    ) -> Result<(), EngineError> {
        let addr = &self.inner.shards[shard as usize];
        // Counted before the send, so the shard's decrement can never come first.
        telemetry::MAILBOX_DEPTH.fetch_add(1, Ordering::Relaxed);
        let sent = match admission {
            Admission::Wait => addr.send(dispatch).await.map_err(|_| EngineError::Stopped),
            Admission::FailFast => addr.try_send(dispatch).map_err(|e| match e {
                actix::prelude::SendError::Full(_) => EngineError::Overloaded,
                actix::prelude::SendError::Closed(_) => EngineError::Stopped,
            }),
        };
        if sent.is_err() {
            telemetry::MAILBOX_DEPTH.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    /// Places a new order under a freshly minted id (no snapshot lookup needed).
    pub async fn place(&self, new_order: NewOrder, admission: Admission) -> CommandResult {
        let order_id = OrderId::new();
        let request = Request::Command(CommandEnvelope::new(Command::PlaceOrder(Box::new(
            new_order,
        ))));
        self.execute_routed(
            Routed {
                order_id,
                shard: self.shard_of(order_id),
                request,
                fresh: true,
                index: 0,
            },
            admission,
        )
        .await
    }

    /// Applies one request to an order and waits until its result is durable.
    pub async fn execute(
        &self,
        order_id: OrderId,
        request: Request,
        admission: Admission,
    ) -> CommandResult {
        self.execute_routed(
            Routed {
                order_id,
                shard: self.shard_of(order_id),
                request,
                fresh: false,
                index: 0,
            },
            admission,
        )
        .await
    }

    async fn execute_routed(&self, routed: Routed, admission: Admission) -> CommandResult {
        let started = Instant::now();
        let verb = routed.request.verb();
        let result = self.execute_routed_untimed(routed, admission).await;
        telemetry::record_command_latency(verb, started.elapsed().as_secs_f64());
        result
    }

    async fn execute_routed_untimed(&self, routed: Routed, admission: Admission) -> CommandResult {
        let (tx, rx) = oneshot::channel();
        let shard = self.shard_of(routed.order_id);
        self.send(
            shard,
            Dispatch {
                items: vec![routed],
                reply: ReplyTo::One(tx),
            },
            admission,
        )
        .await?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Applies many requests, one message per arbiter thread, and returns their results in input
    /// order. `fresh` marks ids just minted by the caller with [`OrderId::new`] for placement,
    /// which skips the snapshot lookup. The store checks the shard's fencing token, not each
    /// order's version, so a placement marked fresh under an id that exists would replace that
    /// order: only ids minted by [`OrderId::new`] (random UUIDv7) may be marked fresh.
    pub async fn execute_batch(
        &self,
        items: Vec<BatchItem>,
        admission: Admission,
    ) -> Vec<CommandResult> {
        self.execute_batch_timed(items, admission)
            .await
            .into_iter()
            .map(|(r, _)| r)
            .collect()
    }

    /// As [`Engine::execute_batch`], with each result's latency: the time from the call until
    /// the answer of the item's arbiter thread arrived (threads answer independently). The
    /// items travel as one message per arbiter thread, grouped by shard, and come back as one
    /// answer per thread: a cross-thread message costs a wake-up, and per-shard messages made
    /// the caller's thread wake up once per shard of every batch.
    pub async fn execute_batch_timed(
        &self,
        items: Vec<BatchItem>,
        admission: Admission,
    ) -> Vec<(CommandResult, Duration)> {
        let started = Instant::now();
        let total = items.len();
        // Shard s lives on arbiter s % arbiters, as does shard s % routers: that shard
        // receives the thread's message and hands each item to its own shard there.
        let routers = self.inner.routers;
        let mut per_router: Vec<Vec<Routed>> = (0..routers).map(|_| Vec::new()).collect();
        let verbs: Vec<&'static str> = items.iter().map(|i| i.request.verb()).collect();
        for (index, item) in items.into_iter().enumerate() {
            let shard = self.shard_of(item.order_id);
            per_router[shard as usize % routers].push(Routed {
                order_id: item.order_id,
                shard,
                request: item.request,
                fresh: item.fresh,
                index: index as u32,
            });
        }
        for routed in &mut per_router {
            // The receiving thread looks a shard up once per run of its items.
            routed.sort_by_key(|r| r.shard);
        }
        let mut results: Vec<Option<(CommandResult, Duration)>> =
            (0..total).map(|_| None).collect();
        let mut waits = Vec::new();
        for (router, routed) in per_router.into_iter().enumerate() {
            if routed.is_empty() {
                continue;
            }
            let indices: Vec<u32> = routed.iter().map(|r| r.index).collect();
            let (tx, rx) = oneshot::channel();
            let dispatch = Dispatch {
                items: routed,
                reply: ReplyTo::Many(tx),
            };
            match self.send(router as u32, dispatch, admission).await {
                Ok(()) => waits.push(async move {
                    let answers = rx.await;
                    (indices, answers, started.elapsed())
                }),
                Err(error) => {
                    for i in indices {
                        results[i as usize] = Some((Err(error.clone()), started.elapsed()));
                    }
                }
            }
        }
        for (indices, answers, elapsed) in futures_util::future::join_all(waits).await {
            match answers {
                Ok(answers) => {
                    for (i, result) in answers {
                        results[i as usize] = Some((result, elapsed));
                    }
                }
                Err(_) => {
                    for i in indices {
                        results[i as usize] = Some((Err(EngineError::Stopped), elapsed));
                    }
                }
            }
        }
        results
            .into_iter()
            .zip(verbs)
            .map(|(r, verb)| {
                let (result, elapsed) = r.unwrap_or((Err(EngineError::Stopped), started.elapsed()));
                telemetry::record_command_latency(verb, elapsed.as_secs_f64());
                (result, elapsed)
            })
            .collect()
    }

    /// Statistics of every shard.
    pub async fn shard_stats(&self) -> Vec<ShardStats> {
        let mut stats = Vec::with_capacity(self.inner.shards.len());
        for addr in &self.inner.shards {
            stats.push(addr.send(GetShardStats).await.unwrap_or_default());
        }
        stats
    }

    /// Statistics of every gateway actor, with the gateway side's own audit (charges,
    /// refused duplicates, refunds, double charges) where the gateway exposes one.
    pub async fn gateway_stats(&self) -> Vec<crate::gateway::GatewayStats> {
        self.inner.gateways.stats().await
    }

    /// Graceful stop: every shard finishes its queued batches and releases its lease (so the
    /// next owner need not wait for the TTL), then the arbiters stop. Requests arriving
    /// meanwhile are refused with `shard_unavailable`.
    pub async fn shutdown(&self) {
        let releases = self.inner.shards.iter().map(|addr| addr.send(ReleaseLease));
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(releases),
        )
        .await;
        self.stop();
    }

    /// Waits until every shard holds its lease (or `timeout` passes); true if all do. A start
    /// serves requests at once (they wait for the first acquisition), so this is for callers
    /// that want to know, such as readiness checks and tests.
    pub async fn wait_until_owned(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.shard_stats().await;
            if stats.iter().all(|s| s.owned) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the shard arbiters without releasing leases (a restart under the same node id
    /// takes them back at once; another node waits for their TTL). Acknowledged commands are
    /// already durable; unacknowledged ones are dropped (their callers see `Stopped`).
    pub fn stop(&self) {
        let arbiters = match self.inner.arbiters.lock() {
            Ok(mut guard) => std::mem::take(&mut *guard),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for arbiter in arbiters {
            arbiter.stop();
            let _ = arbiter.join();
        }
    }
}

/// One request of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// The order.
    pub order_id: OrderId,
    /// What to do.
    pub request: Request,
    /// The id was just minted with [`OrderId::new`] for a placement.
    pub fresh: bool,
}

impl BatchItem {
    /// A request for an existing order.
    pub fn existing(order_id: OrderId, request: Request) -> BatchItem {
        BatchItem {
            order_id,
            request,
            fresh: false,
        }
    }

    /// A placement under an id just minted with [`OrderId::new`] (never an id that may exist,
    /// such as one derived from an idempotency key: see [`Engine::execute_batch`]).
    pub fn place(order_id: OrderId, new_order: NewOrder) -> BatchItem {
        BatchItem {
            order_id,
            request: Request::Command(CommandEnvelope::new(Command::PlaceOrder(Box::new(
                new_order,
            )))),
            fresh: true,
        }
    }

    /// A command for an existing order with a fresh command id.
    pub fn command(order_id: OrderId, command: Command) -> BatchItem {
        BatchItem {
            order_id,
            request: Request::Command(CommandEnvelope::new(command)),
            fresh: false,
        }
    }
}
