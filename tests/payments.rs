//! Proves the payment rules end to end against the mock payment service over real HTTP
//! (`load-tests/src/bin/mock_payments.rs`, started in-process on a loopback port): a charge
//! whose answer was lost is resolved by a query with exactly one charge recorded; a 5xx storm
//! opens the circuit breaker and half-open probes close it again; a hard decline is never
//! retried; a late success after cancel is refunded; a mismatched captured amount puts the
//! order on hold; partial refunds go through; and a restarted engine resumes a live attempt by
//! querying it, never by charging it again. With the simulated gateways: a slow gateway never
//! holds up another, and the concurrency and rate limits shape a gateway's calls.

mod support;

#[path = "../load-tests/src/bin/mock_payments.rs"]
#[allow(dead_code)]
mod mock_payments;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mock_payments::{Faults, MockConfig, RunningMock};
use orderly::config::{PaymentRoutes, Settings};
use orderly::domain::{AttemptStatus, Command, CommandEnvelope, Order, OrderId, OrderStatus};
use orderly::engine::{Admission, BatchItem, CommandResult, Engine, Request};
use orderly::store::memory::MemoryStore;
use orderly::store::SnapshotStore;
use serde_json::Value;
use support::calls::within;
use support::orders::new_order;

/// Longest wait for an order to reach an expected state.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const API_KEY: &str = "test-key";

/// Embedded defaults with every method routed to the `http` gateway at `url`, and short
/// timeouts, backoffs and breaker periods so the tests run in seconds.
fn http_settings(url: &str) -> Settings {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.engine.shards = 4;
    settings.engine.arbiters = 1;
    settings.payments.routes = PaymentRoutes::all_to("http");
    let http = settings
        .gateways
        .get_mut("http")
        .expect("an http gateway is configured");
    http.base_url = url.to_string();
    http.api_key = API_KEY.to_string();
    settings.payments.attempt_timeout_ms = 300;
    settings.payments.retry.initial_ms = 20;
    settings.payments.retry.cap_ms = 200;
    settings.payments.retry.elapsed_max_ms = 2_000;
    settings.payments.sync.initial_ms = 50;
    settings.payments.sync.cap_ms = 200;
    settings.payments.sync.window_ms = 8_000;
    settings.payments.sync.queries_max = 200;
    settings.payments.breaker.failures_to_open = 3;
    settings.payments.breaker.open_ms = 300;
    settings.payments.breaker.half_open_probes = 2;
    settings
}

fn start_mock(faults: Faults) -> RunningMock {
    mock_payments::spawn(MockConfig {
        api_key: Some(API_KEY.to_string()),
        faults,
        seed: 7,
    })
    .expect("mock payment service starts")
}

fn acked(result: CommandResult, what: &str) -> Arc<Order> {
    result
        .unwrap_or_else(|e| panic!("{what}: expected an acknowledgement, got {e:?}"))
        .order
}

async fn run(engine: &Engine, id: OrderId, command: Command) -> Arc<Order> {
    let verb = command.verb();
    acked(
        within(
            verb,
            engine.execute(
                id,
                Request::Command(CommandEnvelope::new(command)),
                Admission::Wait,
            ),
        )
        .await,
        verb,
    )
}

async fn place(engine: &Engine, n: u64) -> OrderId {
    acked(
        within("place", engine.place(new_order(n), Admission::Wait)).await,
        "place",
    )
    .id()
}

fn pay() -> Command {
    Command::StartPayment { method: None }
}

/// Reads the order until `done` holds, bounded by [`SETTLE_TIMEOUT`].
async fn wait_for(
    engine: &Engine,
    id: OrderId,
    what: &str,
    done: impl Fn(&Order) -> bool,
) -> Arc<Order> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let order = acked(
            within("read", engine.execute(id, Request::Read, Admission::Wait)).await,
            "read",
        );
        if done(&order) {
            return order;
        }
        assert!(
            Instant::now() < deadline,
            "order {id} never reached {what}; it is {:?} with attempts {:?}",
            order.status,
            order.payments
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small client for the mock's own endpoints.
struct MockClient {
    http: reqwest::Client,
    url: String,
}

impl MockClient {
    fn new(mock: &RunningMock) -> MockClient {
        MockClient {
            http: reqwest::Client::new(),
            url: mock.url(),
        }
    }

    async fn set_faults(&self, faults: Faults) {
        let response = within(
            "set faults",
            self.http
                .post(format!("{}/v1/faults", self.url))
                .json(&faults)
                .send(),
        )
        .await
        .expect("mock answers");
        assert!(response.status().is_success(), "set faults: {response:?}");
    }

    async fn get(&self, path: &str) -> Value {
        within(path, self.http.get(format!("{}{path}", self.url)).send())
            .await
            .expect("mock answers")
            .json()
            .await
            .expect("mock answers JSON")
    }

    async fn stats(&self) -> Value {
        self.get("/v1/stats").await
    }

    /// The mock's records of one order's charges.
    async fn charges_of(&self, id: OrderId) -> Vec<Value> {
        let all = self.get("/v1/charges").await;
        all.as_array()
            .expect("a list of charges")
            .iter()
            .filter(|c| c["order_id"] == id.to_string())
            .cloned()
            .collect()
    }
}

fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("stats lack {name}: {stats}"))
}

async fn engine_with(settings: &Settings) -> (Engine, Arc<dyn SnapshotStore>) {
    let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new(settings.engine.shards));
    (Engine::start(settings, Arc::clone(&store)), store)
}

/// The gateway takes the charge but its answer never arrives: the attempt is reported
/// unknown, queried, and the order ends Paid with exactly one charge at the gateway.
#[actix_rt::test]
async fn timeout_after_the_charge_was_taken_is_resolved_by_query() {
    let mock = start_mock(Faults {
        timeout_rate: 1.0,
        hang_ms: 3_000,
        ..Faults::default()
    });
    let client = MockClient::new(&mock);
    let (engine, _) = engine_with(&http_settings(&mock.url())).await;
    let id = place(&engine, 1).await;

    let answered = run(&engine, id, pay()).await;
    assert_eq!(answered.status, OrderStatus::PaymentProcessing);
    assert_eq!(answered.payments[0].status, AttemptStatus::Unknown);

    let paid = wait_for(&engine, id, "paid", |o| o.status == OrderStatus::Paid).await;
    assert_eq!(paid.paid_minor, paid.header.total_minor);
    assert_eq!(paid.payments.len(), 1, "no second attempt was started");

    let stats = client.stats().await;
    assert_eq!(
        stat(&stats, "charge_requests"),
        1,
        "never charged again: {stats}"
    );
    assert_eq!(stat(&stats, "charges"), 1);
    assert!(stat(&stats, "queries") >= 1);
    assert_eq!(stat(&stats, "double_charges"), 0);
    let records = client.charges_of(id).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], "captured");
    assert_eq!(records[0]["key"], format!("{id}:1"));
    engine.stop();
}

/// Every call answers 503: the breaker opens (calls stop reaching the gateway), and once the
/// gateway recovers, half-open probes close it again; every order then settles and is paid
/// exactly once.
#[actix_rt::test]
async fn a_5xx_storm_opens_the_breaker_and_probes_close_it() {
    let mock = start_mock(Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    });
    let client = MockClient::new(&mock);
    let (engine, _) = engine_with(&http_settings(&mock.url())).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(place(&engine, n).await);
    }
    let pays = ids
        .iter()
        .map(|id| BatchItem::command(*id, pay()))
        .collect();
    for result in within("pay batch", engine.execute_batch(pays, Admission::Wait)).await {
        let order = acked(result, "pay during the storm");
        assert_eq!(order.status, OrderStatus::PaymentProcessing);
        assert_eq!(order.payments[0].status, AttemptStatus::Unknown);
    }

    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let opened = loop {
        let stats = within("gateway stats", engine.gateway_stats()).await;
        let http = stats[0].clone();
        if http.breaker_transitions.opened >= 1 {
            break http;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker never opened: {http:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("breaker opened: {opened:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = client.stats().await;
    let storm = within("gateway stats", engine.gateway_stats()).await[0].clone();
    assert!(
        storm.short_circuited > 0,
        "an open breaker refuses calls without I/O: {storm:?}"
    );

    client.set_faults(Faults::default()).await;
    let mut settled = Vec::new();
    for id in &ids {
        settled.push(
            wait_for(&engine, *id, "settled", |o| {
                o.status != OrderStatus::PaymentProcessing
            })
            .await,
        );
    }
    let after = within("gateway stats", engine.gateway_stats()).await[0].clone();
    assert_eq!(
        after.breaker,
        Some(orderly::gateway::breaker::BreakerState::Closed)
    );
    assert!(after.breaker_transitions.half_opened >= 1, "{after:?}");
    assert!(after.breaker_transitions.closed >= 1, "{after:?}");
    eprintln!("after the storm: {after:?}; mock during: {during}");

    // Orders whose charge never landed were reversed back to pending payment: pay again.
    for order in settled {
        match order.status {
            OrderStatus::Paid => {}
            OrderStatus::PendingPayment => {
                let paid = run(&engine, order.id(), pay()).await;
                assert_eq!(paid.status, OrderStatus::Paid, "{paid:?}");
            }
            other => panic!("order {} settled as {other:?}", order.id()),
        }
    }
    for id in &ids {
        let captured: Vec<Value> = client
            .charges_of(*id)
            .await
            .into_iter()
            .filter(|c| c["status"] == "captured")
            .collect();
        assert_eq!(captured.len(), 1, "order {id}: {captured:?}");
    }
    assert_eq!(stat(&client.stats().await, "double_charges"), 0);
    engine.stop();
}

/// A hard decline is final: one charge request, no retry, the order back to pending payment
/// with the attempt declined for good.
#[actix_rt::test]
async fn a_hard_decline_is_never_retried() {
    let mock = start_mock(Faults {
        decline_hard_rate: 1.0,
        ..Faults::default()
    });
    let client = MockClient::new(&mock);
    let (engine, _) = engine_with(&http_settings(&mock.url())).await;
    let id = place(&engine, 3).await;

    let declined = run(&engine, id, pay()).await;
    assert_eq!(declined.status, OrderStatus::PendingPayment);
    assert_eq!(declined.payments.len(), 1);
    assert_eq!(declined.payments[0].status, AttemptStatus::DeclinedHard);
    assert!(declined.notes().last_payment_error.is_some());

    // Give a (wrong) retry every chance to happen before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = client.stats().await;
    assert_eq!(stat(&stats, "charge_requests"), 1, "{stats}");
    assert_eq!(stat(&stats, "queries"), 0, "{stats}");
    let gateway = within("gateway stats", engine.gateway_stats()).await[0].clone();
    assert_eq!((gateway.retries, gateway.declined), (0, 1), "{gateway:?}");
    assert_eq!(
        gateway.breaker_transitions.opened, 0,
        "declines never count against the breaker"
    );
    engine.stop();
}

/// The charge stays pending at the gateway; the customer cancels meanwhile; the capture lands
/// later, is learned by a query, and is refunded automatically: the order ends Refunded.
#[actix_rt::test]
async fn a_late_success_after_cancel_ends_refunded() {
    let mock = start_mock(Faults {
        late_success_rate: 1.0,
        late_ms: 800,
        ..Faults::default()
    });
    let client = MockClient::new(&mock);
    let (engine, _) = engine_with(&http_settings(&mock.url())).await;
    let id = place(&engine, 4).await;

    let pending = run(&engine, id, pay()).await;
    assert_eq!(pending.status, OrderStatus::PaymentProcessing);
    let cancelled = run(
        &engine,
        id,
        Command::CancelOrder {
            reason: Some("changed my mind".into()),
        },
    )
    .await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled);

    let refunded = wait_for(&engine, id, "refunded", |o| {
        o.status == OrderStatus::Refunded
    })
    .await;
    assert_eq!(refunded.paid_minor, refunded.header.total_minor);
    assert_eq!(refunded.refunded_minor, refunded.paid_minor);
    let stats = client.stats().await;
    assert_eq!(stat(&stats, "refunds"), 1, "{stats}");
    let records = client.charges_of(id).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["refunded_minor"], records[0]["amount_minor"]);
    engine.stop();
}

/// The gateway captures a different amount than asked: the order goes on hold for review.
#[actix_rt::test]
async fn a_mismatched_amount_ends_on_hold() {
    let mock = start_mock(Faults {
        amount_skew_minor: 1,
        ..Faults::default()
    });
    let (engine, _) = engine_with(&http_settings(&mock.url())).await;
    let id = place(&engine, 5).await;
    let held = run(&engine, id, pay()).await;
    assert_eq!(held.status, OrderStatus::OnHold);
    assert_eq!(held.paid_minor, held.header.total_minor + 1);
    assert!(held.notes().reason.is_some());
    engine.stop();
}

/// Partial refunds go to the gateway under `order:r<n>` keys, up to the paid amount.
#[actix_rt::test]
async fn partial_refunds_go_through_the_gateway() {
    let mock = start_mock(Faults::default());
    let client = MockClient::new(&mock);
    let (engine, _) = engine_with(&http_settings(&mock.url())).await;
    let id = place(&engine, 6).await;
    let paid = run(&engine, id, pay()).await;
    assert_eq!(paid.status, OrderStatus::Paid);

    let refunding = run(
        &engine,
        id,
        Command::RefundOrder {
            amount_minor: Some(500),
        },
    )
    .await;
    assert_eq!(refunding.status, OrderStatus::Refunding);
    let partial = wait_for(&engine, id, "partially refunded", |o| {
        o.status == OrderStatus::PartiallyRefunded
    })
    .await;
    assert_eq!(partial.refunded_minor, 500);
    run(&engine, id, Command::RefundOrder { amount_minor: None }).await;
    let refunded = wait_for(&engine, id, "refunded", |o| {
        o.status == OrderStatus::Refunded
    })
    .await;
    assert_eq!(refunded.refunded_minor, refunded.paid_minor);
    assert_eq!(stat(&client.stats().await, "refunds"), 2);
    engine.stop();
}

/// An engine stopped while an attempt's outcome is unknown leaves the order in
/// PaymentProcessing; a new engine on the same store finds it in the live-payments index,
/// queries the attempt (never charges it again) and settles it.
#[actix_rt::test]
async fn a_restarted_engine_resumes_a_live_attempt_by_querying_it() {
    let mock = start_mock(Faults {
        timeout_rate: 1.0,
        hang_ms: 2_000,
        ..Faults::default()
    });
    let client = MockClient::new(&mock);
    let mut settings = http_settings(&mock.url());
    // Engine A would query only after a long pause: it is stopped before that.
    settings.payments.sync.initial_ms = 60_000;
    settings.payments.sync.cap_ms = 60_000;
    let (engine_a, store) = engine_with(&settings).await;
    let id = place(&engine_a, 7).await;
    let unknown = run(&engine_a, id, pay()).await;
    assert_eq!(unknown.payments[0].status, AttemptStatus::Unknown);
    engine_a.stop();

    let settings = http_settings(&mock.url());
    let engine_b = Engine::start(&settings, store);
    let paid = wait_for(&engine_b, id, "paid", |o| o.status == OrderStatus::Paid).await;
    assert_eq!(paid.payments.len(), 1);
    let stats = client.stats().await;
    assert_eq!(stat(&stats, "charge_requests"), 1, "{stats}");
    assert!(stat(&stats, "queries") >= 1, "{stats}");
    engine_b.stop();
}

/// Embedded defaults (simulated gateways) where `card` answers every call after `latency_ms`.
fn simulated_settings(card_latency_ms: u64) -> Settings {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.engine.shards = 4;
    settings.engine.arbiters = 1;
    settings.payments.fault_profiles.insert(
        "test_slow".into(),
        orderly::config::FaultProfile {
            latency_base_ms: card_latency_ms,
            ..Default::default()
        },
    );
    settings
        .gateways
        .get_mut("card")
        .expect("card gateway configured")
        .fault_profile = "test_slow".into();
    settings
}

async fn place_with(engine: &Engine, n: u64, method: &str) -> OrderId {
    let mut order = new_order(n);
    order.payment_method =
        orderly::domain::PaymentMethod::parse(method).expect("a known payment method");
    acked(
        within("place", engine.place(order, Admission::Wait)).await,
        "place",
    )
    .id()
}

/// Each gateway is its own actor with async I/O: while the card gateway takes 1.5 s per
/// charge, alipay payments are answered at once.
#[actix_rt::test]
async fn a_slow_gateway_does_not_hold_up_the_others() {
    let (engine, _) = engine_with(&simulated_settings(1_500)).await;
    let mut card = Vec::new();
    let mut alipay = Vec::new();
    for n in 0..5 {
        card.push(place_with(&engine, n, "card").await);
        alipay.push(place_with(&engine, 100 + n, "alipay").await);
    }
    let slow = {
        let engine = engine.clone();
        let items = card
            .iter()
            .map(|id| BatchItem::command(*id, pay()))
            .collect();
        actix_rt::spawn(async move { engine.execute_batch(items, Admission::Wait).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let items = alipay
        .iter()
        .map(|id| BatchItem::command(*id, pay()))
        .collect();
    for result in within("alipay pays", engine.execute_batch(items, Admission::Wait)).await {
        assert_eq!(acked(result, "alipay pay").status, OrderStatus::Paid);
    }
    let fast = started.elapsed();
    assert!(
        !slow.is_finished(),
        "the slow card payments finished before the alipay ones ({fast:?})"
    );
    assert!(fast < Duration::from_millis(1_000), "alipay took {fast:?}");
    for result in within("card pays", slow).await.expect("card task") {
        assert_eq!(acked(result, "card pay").status, OrderStatus::Paid);
    }
    engine.stop();
}

/// The concurrency limit and the token bucket shape a gateway's calls: with one call at a
/// time of 100 ms, five charges take at least 500 ms; at 10 calls/s with a burst of 1, they take
/// at least 400 ms even with no latency.
#[actix_rt::test]
async fn concurrency_and_rate_limits_shape_a_gateway() {
    let mut settings = simulated_settings(100);
    settings
        .gateways
        .get_mut("card")
        .expect("card gateway configured")
        .concurrency_max = 1;
    let limited = settings
        .gateways
        .get_mut("alipay")
        .expect("alipay gateway configured");
    limited.rate_limit_per_s = 10;
    limited.rate_limit_burst = 1;
    let (engine, _) = engine_with(&settings).await;
    for method in ["card", "alipay"] {
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(place_with(&engine, n, method).await);
        }
        let started = Instant::now();
        let items = ids
            .iter()
            .map(|id| BatchItem::command(*id, pay()))
            .collect();
        for result in within("pays", engine.execute_batch(items, Admission::Wait)).await {
            assert_eq!(acked(result, "pay").status, OrderStatus::Paid);
        }
        let took = started.elapsed();
        let floor = if method == "card" { 500 } else { 400 };
        assert!(
            took >= Duration::from_millis(floor),
            "{method}: five charges took only {took:?}"
        );
    }
    engine.stop();
}
