//! Proves that payments survive a crash of the engine: an `orderly demo --until pay` process
//! paying 1,000 orders through the `http` gateway is killed with SIGKILL while its charges are
//! in flight at the mock payment service; an engine started afterwards on the same Redis finds
//! every order left with a live attempt in the shards' live-payments index, queries (never
//! re-charges) it, and settles it. Every order then ends Paid or PendingPayment (OnHold only for
//! review) consistently with the payment service's records, and no idempotency key was charged
//! twice.

mod support;

#[path = "../load-tests/src/bin/mock_payments.rs"]
#[allow(dead_code)]
mod mock_payments;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mock_payments::{Faults, MockConfig};
use orderly::config::{PaymentRoutes, Settings};
use orderly::domain::{AttemptStatus, OrderId, OrderStatus};
use orderly::engine::{Admission, BatchItem, Engine, Request};
use serde_json::Value;
use support::redis_server::RedisServer;

const ORDERS: u64 = 1_000;
const SHARDS: u32 = 8;
/// Charges the mock must have seen before the engine is killed.
const CHARGES_BEFORE_KILL: u64 = 200;

async fn mock_get(client: &reqwest::Client, url: &str) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        client
            .get(url)
            .send()
            .await
            .expect("mock answers")
            .json::<Value>()
            .await
            .expect("mock answers JSON")
    })
    .await
    .expect("mock answers in time")
}

/// Stored orders with a live payment attempt or a pending refund.
fn live_payments(server: &RedisServer) -> i64 {
    support::stored::order_keys(server)
        .iter()
        .filter_map(|k| support::stored::stored_order(server, k))
        .filter(|o| o.live_attempt().is_some() || o.pending_refund().is_some())
        .count() as i64
}

#[actix_rt::test]
async fn a_killed_engine_resumes_payments_without_double_charges() {
    let server = RedisServer::start();
    let mock = mock_payments::spawn(MockConfig {
        api_key: None,
        // Charges are recorded on arrival and answered 100–500 ms later (a few hang), so the
        // kill finds many taken but unanswered.
        faults: Faults {
            latency_base_ms: 100,
            latency_jitter_ms: 400,
            timeout_rate: 0.05,
            hang_ms: 3_000,
            ..Faults::default()
        },
        seed: 11,
    })
    .expect("mock payment service starts");
    let client = reqwest::Client::new();
    let stats_url = format!("{}/v1/stats", mock.url());

    let mut child = Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args([
            "demo",
            "--orders",
            &ORDERS.to_string(),
            "--batch",
            &ORDERS.to_string(),
            "--concurrency",
            "1",
            "--until",
            "pay",
            "--gateway",
            "http",
            "--gateway-url",
            &mock.url(),
            "--store",
            &server.url(),
            "--shards",
            &SHARDS.to_string(),
        ])
        .env("ORDERLY__PAYMENTS__ATTEMPT_TIMEOUT_MS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("orderly demo starts");

    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let stats = mock_get(&client, &stats_url).await;
        let seen = stats["charge_requests"].as_u64().unwrap_or(0);
        if seen >= CHARGES_BEFORE_KILL {
            break seen;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the engine exited ({status}) before the kill; mock saw {seen} charges");
        }
        assert!(Instant::now() < deadline, "only {seen} charges after 120 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    child.kill().expect("SIGKILL the engine");
    let _ = child.wait();
    let live_at_kill = live_payments(&server);
    eprintln!("killed the engine after {seen} charges; {live_at_kill} orders with live payments");
    assert!(live_at_kill > 0, "nothing was in flight at the kill");

    // A new engine on the same Redis resumes every live payment by itself.
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.store.url = server.url();
    settings.engine.shards = SHARDS;
    settings.payments.routes = PaymentRoutes::all_to("http");
    settings
        .gateways
        .get_mut("http")
        .expect("http gateway configured")
        .base_url = mock.url();
    settings.payments.attempt_timeout_ms = 1_000;
    settings.payments.sync.initial_ms = 50;
    settings.payments.sync.cap_ms = 500;
    let store = tokio::time::timeout(Duration::from_secs(15), orderly::store::open(&settings))
        .await
        .expect("store opens in time")
        .expect("store opens");
    let engine = Engine::start(&settings, Arc::clone(&store));
    let deadline = Instant::now() + Duration::from_secs(90);
    while live_payments(&server) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} orders still have live payments after 90 s",
            live_payments(&server)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every stored order, read through the engine.
    let ids: Vec<OrderId> = support::stored::order_keys(&server)
        .iter()
        .filter_map(|k| OrderId::parse(&k[k.len().saturating_sub(36)..]))
        .collect();
    assert!(!ids.is_empty(), "no orders were stored");
    let reads = ids
        .iter()
        .map(|id| BatchItem::existing(*id, Request::Read))
        .collect();
    let orders = tokio::time::timeout(
        Duration::from_secs(30),
        engine.execute_batch(reads, Admission::Wait),
    )
    .await
    .expect("reads answer in time");

    // The payment service's records, by order: captured (and not voided) keys.
    let records = mock_get(&client, &format!("{}/v1/charges", mock.url())).await;
    let mut captured: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for record in records.as_array().expect("a list of charges") {
        if record["status"] == "captured" {
            captured
                .entry(record["order_id"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push((
                    record["key"].as_str().unwrap_or_default().to_string(),
                    record["amount_minor"].as_i64().unwrap_or(0),
                ));
        }
    }

    let mut by_status: HashMap<&'static str, u64> = HashMap::new();
    for (id, result) in ids.iter().zip(orders) {
        let order = result
            .unwrap_or_else(|e| panic!("read of {id}: {e:?}"))
            .order;
        *by_status.entry(order.status.as_str()).or_default() += 1;
        let charges = captured.get(&id.to_string()).cloned().unwrap_or_default();
        match order.status {
            OrderStatus::Paid => {
                let attempt = order
                    .payments
                    .iter()
                    .find(|a| a.status == AttemptStatus::Succeeded)
                    .expect("a paid order has a succeeded attempt");
                assert_eq!(
                    charges,
                    vec![(attempt.idempotency_key(*id), order.header.total_minor)],
                    "paid order {id} must be charged exactly once, by its attempt"
                );
            }
            OrderStatus::PendingPayment => {
                assert!(
                    charges.is_empty(),
                    "order {id} is pending payment but the gateway holds {charges:?}"
                );
                assert!(order.live_attempt().is_none());
            }
            OrderStatus::OnHold => {
                assert!(
                    order
                        .payments
                        .iter()
                        .any(|a| a.status == AttemptStatus::NeedsReview),
                    "order {id} on hold without an attempt under review"
                );
                assert!(charges.len() <= 1, "order {id}: {charges:?}");
            }
            other => panic!("order {id} ended {other:?} after recovery"),
        }
    }
    let stats = mock_get(&client, &stats_url).await;
    eprintln!("after recovery: orders by status {by_status:?}; mock {stats}");
    assert_eq!(stats["double_charges"].as_u64(), Some(0), "{stats}");
    assert_eq!(
        stats["duplicates_refused"].as_u64(),
        Some(0),
        "no idempotency key was sent twice (recovery queries, never re-charges): {stats}"
    );
    assert!(by_status.get("paid").copied().unwrap_or(0) > 0);
    engine.stop();
}
