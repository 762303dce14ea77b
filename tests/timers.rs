//! Proves the durable timers on a manual clock (no real sleeping for any time rule): every rule
//! fires when due and never before (payment reminders on a schedule, unpaid expiry, the ship
//! SLA alert, auto-complete); an expiry that comes due during a live payment attempt waits for
//! it and fires once the attempt fails with the order still unpaid; reminders stop after
//! payment; and, on a real redis-server, timers that came due while the engine was down fire
//! exactly once after a new engine starts, at the bounded catch-up rate.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderly::clock::{Clock, ManualClock};
use orderly::config::Settings;
use orderly::domain::{Command, CommandEnvelope, Order, OrderId, OrderStatus, Timestamp};
use orderly::engine::{Admission, BatchItem, Engine, Request};
use orderly::store::memory::MemoryStore;
use orderly::store::redis::RedisStore;
use orderly::store::SnapshotStore;
use support::orders::new_order;
use support::redis_server::RedisServer;

/// Longest wait (real time) for the engine to act on a clock step.
const SETTLE: Duration = Duration::from_secs(10);
/// How long (real time) nothing must happen to count as "did not fire".
const QUIET: Duration = Duration::from_millis(300);
const SHARDS: u32 = 4;

const MINUTE: i64 = 60_000;

fn settings() -> Settings {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.engine.shards = SHARDS;
    settings.engine.arbiters = 1;
    settings.orders.payment_reminders_after_ms = vec![MINUTE, 2 * MINUTE];
    settings.orders.unpaid_expiry_after_ms = 5 * MINUTE;
    settings.orders.ship_sla_ms = 10 * MINUTE;
    settings.orders.auto_complete_after_ms = 20 * MINUTE;
    // Poll on every step of the manual clock.
    settings.timers.poll_interval_ms = 1;
    settings.validate().expect("test settings are valid");
    settings
}

struct Harness {
    engine: Engine,
    clock: Arc<ManualClock>,
    start: Timestamp,
}

impl Harness {
    async fn start(settings: &Settings, store: Arc<dyn SnapshotStore>) -> Harness {
        let clock = ManualClock::starting_now();
        Harness::start_on(settings, store, clock).await
    }

    async fn start_on(
        settings: &Settings,
        store: Arc<dyn SnapshotStore>,
        clock: Arc<ManualClock>,
    ) -> Harness {
        let engine = Engine::start_with_clock(settings, store, clock.clone());
        assert!(engine.wait_until_owned(SETTLE).await, "shards owned");
        let start = clock.now();
        Harness {
            engine,
            clock,
            start,
        }
    }

    async fn place(&self, n: u64) -> OrderId {
        let placed = self
            .engine
            .place(new_order(n), Admission::Wait)
            .await
            .expect("placed");
        placed.order.id()
    }

    async fn command(&self, id: OrderId, command: Command) -> Arc<Order> {
        let result = self
            .engine
            .execute(
                id,
                Request::Command(CommandEnvelope::new(command)),
                Admission::Wait,
            )
            .await
            .expect("command applied");
        result.order
    }

    async fn read(&self, id: OrderId) -> Arc<Order> {
        self.engine
            .execute(id, Request::Read, Admission::Wait)
            .await
            .expect("order read")
            .order
    }

    /// Sends `pay` without waiting for its answer (it answers after the gateway's verdict).
    fn pay_in_background(&self, id: OrderId) {
        let engine = self.engine.clone();
        actix_rt::spawn(async move {
            let _ = engine
                .execute(
                    id,
                    Request::Command(CommandEnvelope::new(Command::StartPayment { method: None })),
                    Admission::Wait,
                )
                .await;
        });
    }

    /// Moves the clock to `start + at_ms`.
    fn at(&self, at_ms: i64) {
        self.clock.set(self.start.plus_ms(at_ms));
    }

    /// Waits (real time) until `id` reaches `version`; panics past the bound.
    async fn wait_version(&self, id: OrderId, version: u64) -> Arc<Order> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let order = self.read(id).await;
            if order.version >= version {
                assert_eq!(order.version, version, "fired more than once");
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} stayed at version {} (wanted {version}) at +{} ms",
                order.version,
                self.clock.now().0 - self.start.0
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (real time) until `id` is in `status`; panics past the bound.
    async fn wait_status(&self, id: OrderId, status: OrderStatus) -> Arc<Order> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let order = self.read(id).await;
            if order.status == status {
                return order;
            }
            assert!(
                Instant::now() < deadline,
                "order {id} stayed {:?} (wanted {status:?})",
                order.status
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asserts (for a while, real time) that `id` stays at `version`.
    async fn stays(&self, id: OrderId, version: u64) {
        tokio::time::sleep(QUIET).await;
        let order = self.read(id).await;
        assert_eq!(
            order.version,
            version,
            "fired early at +{} ms",
            self.clock.now().0 - self.start.0
        );
    }
}

fn paid(order: &Order) -> Command {
    Command::RecordPaymentResult {
        attempt_no: order.payments.len() as u16,
        result: orderly::domain::PaymentResult::Succeeded {
            amount_minor: order.header.total_minor,
            currency: order.header.currency,
        },
    }
}

#[actix_rt::test]
async fn reminders_and_expiry_fire_when_due_and_never_before() {
    let settings = settings();
    let store = Arc::new(MemoryStore::new(SHARDS));
    let h = Harness::start(&settings, store).await;
    let id = h.place(1).await;
    let placed = h.read(id).await;
    assert_eq!(placed.reminder_at, h.start.plus_ms(MINUTE));

    h.at(MINUTE - 1);
    h.stays(id, 1).await;
    h.at(MINUTE);
    let reminded = h.wait_version(id, 2).await;
    assert_eq!(reminded.status, OrderStatus::PendingPayment);
    assert_eq!(reminded.reminder_at, h.start.plus_ms(2 * MINUTE));

    h.at(2 * MINUTE - 1);
    h.stays(id, 2).await;
    h.at(2 * MINUTE);
    let second = h.wait_version(id, 3).await;
    assert_eq!(second.reminder_at, Timestamp(0), "the schedule is over");

    h.at(5 * MINUTE - 1);
    h.stays(id, 3).await;
    h.at(5 * MINUTE);
    let expired = h.wait_version(id, 4).await;
    assert_eq!(expired.status, OrderStatus::Expired);
    assert_eq!(expired.timer_indexed_at, Timestamp(0), "entry removed");

    // Nothing more ever fires.
    h.at(60 * MINUTE);
    h.stays(id, 4).await;
    h.engine.shutdown().await;
}

#[actix_rt::test]
async fn payment_stops_reminders_and_starts_ship_sla_then_auto_complete() {
    let settings = settings();
    let store = Arc::new(MemoryStore::new(SHARDS));
    let h = Harness::start(&settings, store).await;
    let id = h.place(2).await;
    // Paid at +30 s through an attempt the test resolves itself (the simulated gateway's own
    // verdict is a stale result once the test recorded one).
    h.at(30_000);
    let paying = h.command(id, Command::StartPayment { method: None }).await;
    let order = if paying.status == OrderStatus::Paid {
        paying
    } else {
        h.command(id, paid(&paying)).await
    };
    assert_eq!(order.status, OrderStatus::Paid);
    let version = order.version;
    assert_eq!(order.ship_sla_at, h.start.plus_ms(30_000 + 10 * MINUTE));

    // The reminder time passes: nothing fires for a paid order.
    h.at(3 * MINUTE);
    h.stays(id, version).await;
    // The ship SLA: an event, the state stays.
    h.at(30_000 + 10 * MINUTE - 1);
    h.stays(id, version).await;
    h.at(30_000 + 10 * MINUTE);
    let breached = h.wait_version(id, version + 1).await;
    assert_eq!(breached.status, OrderStatus::Paid);
    assert_eq!(breached.ship_sla_at, Timestamp(0), "alerts once");

    h.at(11 * MINUTE);
    let shipped = h
        .command(
            id,
            Command::ShipOrder {
                tracking_number: None,
            },
        )
        .await;
    assert_eq!(shipped.complete_at, h.start.plus_ms(31 * MINUTE));
    h.at(31 * MINUTE - 1);
    h.stays(id, shipped.version).await;
    h.at(31 * MINUTE);
    let completed = h.wait_version(id, shipped.version + 1).await;
    assert_eq!(completed.status, OrderStatus::Completed);
    h.engine.shutdown().await;
}

#[actix_rt::test]
async fn expiry_due_during_a_live_attempt_waits_for_it_then_fires() {
    let mut settings = settings();
    // The simulated gateway never answers within the test, so the attempt stays live until the
    // test records its verdict.
    settings
        .payments
        .fault_profiles
        .get_mut("healthy")
        .expect("healthy profile")
        .latency_base_ms = 60_000;
    settings.payments.attempt_timeout_ms = 120_000;
    let store = Arc::new(MemoryStore::new(SHARDS));
    let h = Harness::start(&settings, store).await;
    let id = h.place(3).await;
    h.at(4 * MINUTE);
    h.pay_in_background(id);
    let processing = h.wait_status(id, OrderStatus::PaymentProcessing).await;
    // Expiry (+5 min) passes while the attempt is live: nothing fires.
    h.at(6 * MINUTE);
    h.stays(id, processing.version).await;
    // The attempt fails softly: the order is unpaid again and the overdue expiry fires.
    let declined = h
        .command(
            id,
            Command::RecordPaymentResult {
                attempt_no: 1,
                result: orderly::domain::PaymentResult::Declined {
                    hard: false,
                    reason: "insufficient_funds".into(),
                },
            },
        )
        .await;
    assert_eq!(declined.status, OrderStatus::PendingPayment);
    h.at(6 * MINUTE + 1);
    let expired = h.wait_version(id, declined.version + 1).await;
    assert_eq!(expired.status, OrderStatus::Expired);
    h.engine.shutdown().await;
}

#[actix_rt::test]
async fn reminder_skips_to_the_last_overdue_one_instead_of_bursting() {
    let mut settings = settings();
    settings.orders.payment_reminders_after_ms = vec![MINUTE, 2 * MINUTE, 3 * MINUTE];
    let store = Arc::new(MemoryStore::new(SHARDS));
    let h = Harness::start(&settings, store).await;
    let id = h.place(4).await;
    // Down (no poll) through all three reminders: one reminder, not three.
    h.at(3 * MINUTE + 30_000);
    let reminded = h.wait_version(id, 2).await;
    assert_eq!(reminded.reminder_at, Timestamp(0));
    assert_eq!(reminded.reminder_no, 3, "schedule position past the end");
    h.at(4 * MINUTE);
    h.stays(id, 2).await;
    h.engine.shutdown().await;
}

/// Sums the timer index entries due at `now` over every shard.
async fn overdue(store: &dyn SnapshotStore, now: Timestamp) -> u64 {
    let mut total = 0;
    for shard in 0..SHARDS {
        total += store
            .timer_counts(shard, now)
            .await
            .expect("timer counts")
            .overdue;
    }
    total
}

#[actix_rt::test]
async fn timers_due_while_down_fire_once_after_restart_at_the_catch_up_rate() {
    const ORDERS: u64 = 10_000;
    const RATE: u32 = 2_000;
    let server = RedisServer::start();
    let mut settings = settings();
    settings.store.url = server.url();
    settings.cluster.node_id = "timer-node".into();
    settings.orders.payment_reminders_after_ms = vec![MINUTE];
    settings.timers.catch_up_per_s_max = RATE;
    settings.timers.fire_batch_max = 1_000;
    let clock = ManualClock::starting_now();
    let store: Arc<dyn SnapshotStore> = Arc::new(
        RedisStore::connect(&settings.store.url, &settings.store.redis)
            .await
            .expect("redis"),
    );
    let first = Harness::start_on(&settings, Arc::clone(&store), clock.clone()).await;
    let mut ids = Vec::with_capacity(ORDERS as usize);
    for chunk in 0..(ORDERS / 1_000) {
        let items: Vec<BatchItem> = (0..1_000)
            .map(|i| BatchItem::place(OrderId::new(), new_order(chunk * 1_000 + i)))
            .collect();
        for result in first.engine.execute_batch(items, Admission::Wait).await {
            ids.push(result.expect("placed").order.id());
        }
    }
    first.engine.shutdown().await;
    first.engine.stop();
    let start = first.start;
    drop(first);

    // Down across the reminder time.
    clock.set(start.plus_ms(2 * MINUTE));
    assert_eq!(overdue(&*store, clock.now()).await, ORDERS);
    let second = Harness::start_on(&settings, Arc::clone(&store), clock.clone()).await;
    // Steps of 100 ms of clock time: each lets at most RATE / 10 fire (after a first second's
    // burst), so the backlog drains in about 5 s of clock time, never at once.
    let mut fired_total = 0;
    let mut steps = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while fired_total < ORDERS {
        assert!(
            Instant::now() < deadline,
            "catch-up stalled at {fired_total}"
        );
        steps += 1;
        clock.advance(Duration::from_millis(100));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let left = overdue(&*store, start.plus_ms(2 * MINUTE)).await;
        fired_total = ORDERS - left;
        let allowed = u64::from(RATE) + u64::from(RATE) / 10 * steps;
        assert!(
            fired_total <= allowed,
            "{fired_total} fired after {steps} steps: more than the catch-up rate allows ({allowed})"
        );
    }
    assert!(
        steps >= 35,
        "drained in {steps} steps: too fast for the rate"
    );
    // Every order reminded exactly once (version 2: placed, reminded).
    for id in ids.iter().step_by(97) {
        let order = second.read(*id).await;
        assert_eq!(order.version, 2, "order {id}");
        assert_eq!(order.reminder_no, 1);
    }
    // Next: the expiry entries (+5 min), not yet due.
    assert_eq!(overdue(&*store, clock.now()).await, 0);
    second.engine.shutdown().await;
}

fn sum_zcard(server: &RedisServer) -> i64 {
    (0..SHARDS)
        .map(|shard| {
            server
                .command(&["ZCARD", &RedisStore::timers_key("orderly", shard)])
                .as_int()
                .expect("ZCARD answers an integer")
        })
        .sum()
}

fn admin_reindex(server: &RedisServer) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["admin", "reindex", "--page", "50", "--shards"])
        .arg(SHARDS.to_string())
        .arg("--store")
        .arg(server.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("orderly admin reindex runs")
}

#[actix_rt::test]
async fn admin_reindex_rebuilds_the_timer_index_from_the_snapshots() {
    let server = RedisServer::start();
    let mut settings = settings();
    settings.store.url = server.url();
    settings.cluster.node_id = "reindex-node".into();
    let store: Arc<dyn SnapshotStore> = Arc::new(
        RedisStore::connect(&settings.store.url, &settings.store.redis)
            .await
            .expect("redis"),
    );
    let h = Harness::start(&settings, Arc::clone(&store)).await;
    let unpaid: Vec<BatchItem> = (0..300)
        .map(|i| BatchItem::place(OrderId::new(), new_order(i)))
        .collect();
    let unpaid: Vec<OrderId> = h
        .engine
        .execute_batch(unpaid, Admission::Wait)
        .await
        .into_iter()
        .map(|r| r.expect("placed").order.id())
        .collect();
    // A few complete lifecycles: no timer left.
    for n in 0..20 {
        let id = h.place(1_000 + n).await;
        h.command(id, Command::StartPayment { method: None }).await;
        h.command(
            id,
            Command::ShipOrder {
                tracking_number: None,
            },
        )
        .await;
        let done = h.command(id, Command::ConfirmDelivery).await;
        assert_eq!(done.status, OrderStatus::Completed);
    }
    assert_eq!(sum_zcard(&server), 300, "one entry per unpaid order");

    // While the engine holds the leases the reindex refuses.
    let refused = admin_reindex(&server);
    assert!(!refused.status.success(), "reindex ran beside an engine");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("owned by another node"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    h.engine.shutdown().await;

    // The per-status counts the commits kept, summed over shards.
    let status_counts = |server: &RedisServer| -> std::collections::BTreeMap<String, i64> {
        let mut counts = std::collections::BTreeMap::new();
        for shard in 0..SHARDS {
            let reply = server.command(&["HGETALL", &RedisStore::status_key("orderly", shard)]);
            for pair in reply.as_array().expect("HGETALL").chunks(2) {
                let n: i64 = pair[1].as_str().unwrap().parse().unwrap();
                if n != 0 {
                    *counts
                        .entry(pair[0].as_str().unwrap().to_string())
                        .or_default() += n;
                }
            }
        }
        counts
    };
    let expected: std::collections::BTreeMap<String, i64> = [
        ("completed".to_string(), 20),
        ("pending_payment".to_string(), 300),
    ]
    .into();
    assert_eq!(status_counts(&server), expected, "kept by the commits");

    // Lose the indexes (as a store written before they existed), then rebuild them. A wrong
    // count left in a shard is replaced, not added to.
    for shard in 0..SHARDS {
        server.command(&["DEL", &RedisStore::timers_key("orderly", shard)]);
        server.command(&["DEL", &RedisStore::status_key("orderly", shard)]);
    }
    server.command(&[
        "HSET",
        &RedisStore::status_key("orderly", 0),
        "shipped",
        "7",
    ]);
    assert_eq!(sum_zcard(&server), 0);
    let rebuilt = admin_reindex(&server);
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&rebuilt.stdout).expect("reindex prints a JSON report");
    assert_eq!(report["scanned"], 320, "{report}");
    assert_eq!(report["timers_armed"], 300, "{report}");
    assert_eq!(report["by_status"]["pending_payment"], 300, "{report}");
    assert_eq!(sum_zcard(&server), 300);
    assert_eq!(
        status_counts(&server),
        expected,
        "rebuilt from the snapshots"
    );
    for id in unpaid.iter().step_by(29) {
        let shard = h.engine.shard_of(*id);
        let score = server.command(&[
            "ZSCORE",
            &RedisStore::timers_key("orderly", shard),
            &id.to_string(),
        ]);
        let order =
            support::stored::stored_order(&server, &RedisStore::order_key("orderly", shard, *id))
                .expect("stored");
        assert_eq!(
            score.as_str().and_then(|s| s.parse::<i64>().ok()),
            Some(order.reminder_at.0),
            "entry at the order's next timer"
        );
        assert_eq!(order.timer_indexed_at, order.reminder_at);
    }
}

#[actix_rt::test]
async fn gateway_retry_backoff_sleeps_on_the_engine_clock() {
    let mut settings = settings();
    // Every call provably fails before reaching the gateway: retried after a backoff.
    let healthy = settings
        .payments
        .fault_profiles
        .get_mut("healthy")
        .expect("healthy profile");
    healthy.not_sent_rate = 1.0;
    settings.payments.retry.initial_ms = 60_000;
    settings.payments.retry.cap_ms = 60_000;
    settings.payments.retry.multiplier = 1.0;
    settings.payments.retry.attempts_max = 2;
    settings.payments.retry.elapsed_max_ms = 3_600_000;
    let store = Arc::new(MemoryStore::new(SHARDS));
    let h = Harness::start(&settings, store).await;
    let id = h.place(5).await;
    h.pay_in_background(id);
    // The retry waits on the manual clock: in real time nothing moves.
    tokio::time::sleep(QUIET * 2).await;
    assert_eq!(h.read(id).await.status, OrderStatus::PaymentProcessing);
    h.clock.advance(Duration::from_millis(60_001));
    let retried = h.wait_status(id, OrderStatus::PendingPayment).await;
    assert!(retried.notes().last_payment_error.is_some());
    h.engine.shutdown().await;
}
