//! Webhook delivery against a real, throw-away `redis-server` and real local HTTP receivers
//! that verify `Orderly-Signature` with their own HMAC code: a receiver failing its first
//! deliveries still gets every event (and the outbox is then trimmed); a receiver that never
//! answers ends in its dead-letter stream while a healthy one gets everything; a 410 disables
//! its receiver in Redis; two `orderly serve` processes share one receiver without loss.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use orderly::app::Orderly;
use orderly::config::{Settings, WebhookReceiver};
use orderly::domain::{Command, CommandEnvelope, OrderId};
use orderly::engine::{Admission, Engine, Request};
use serde_json::{json, Value};
use support::calls::{run, within};
use support::orders::new_order;
use support::outbox::all_events;
use support::receiver::{hmac_sha256, Behaviour, Receiver};
use support::redis_server::RedisServer;
use support::serve::{config_file, spawn_serve};

const SHARDS: u32 = 4;
const SECRET: &str = "whsec_test";

fn receiver(name: &str, url: &str) -> WebhookReceiver {
    WebhookReceiver {
        name: name.into(),
        url: url.into(),
        secret: SECRET.into(),
        events: Vec::new(),
    }
}

fn settings(url: &str, receivers: Vec<WebhookReceiver>) -> Settings {
    let mut settings = Settings::embedded_default().unwrap();
    settings.store.url = url.to_string();
    settings.engine.shards = SHARDS;
    settings.engine.arbiters = 1;
    settings.cluster.node_id = "node-1".into();
    settings.outbox.trim_interval_ms = 100;
    let webhooks = &mut settings.webhooks;
    webhooks.timeout_ms = 300;
    webhooks.attempts_max = 6;
    webhooks.retry_elapsed_max_ms = 5_000;
    webhooks.retry_initial_ms = 20;
    webhooks.retry_cap_ms = 100;
    webhooks.poll_interval_ms = 20;
    webhooks.claim_idle_ms = 1_000;
    webhooks.concurrency_max = 16;
    webhooks.receivers = receivers;
    settings.validate().expect("test settings are valid");
    settings
}

/// Places, pays and ships `n` orders; answers the ids of their events (one per version:
/// placed, payment started, paid, shipped), known before any is read (the trimmer may remove
/// delivered ones at once).
async fn run_orders(engine: &Engine, n: u64) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let id = OrderId::new();
        for version in 1..=4 {
            ids.insert(format!("{id}:{version}:0"));
        }
        for command in [
            Command::PlaceOrder(Box::new(new_order(i))),
            Command::StartPayment { method: None },
            Command::ShipOrder {
                tracking_number: Some(format!("T-{i}").into()),
            },
        ] {
            run(engine, id, command).await.expect("acknowledged");
        }
    }
    ids
}

fn all_ids(server: &RedisServer) -> BTreeSet<String> {
    all_events(server, SHARDS)
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect()
}

fn outbox_len(server: &RedisServer) -> i64 {
    (0..SHARDS)
        .map(|s| {
            server
                .command(&["XLEN", &format!("orderly:{{{s}}}:events")])
                .as_int()
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn the_test_hmac_matches_rfc_4231() {
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[actix_rt::test]
async fn a_receiver_failing_its_first_deliveries_still_gets_every_event() {
    let server = RedisServer::start();
    let flaky = Receiver::start(SECRET, Behaviour::FailFirst(5));
    let orderly = within(
        "start",
        Orderly::start(settings(&server.url(), vec![receiver("flaky", &flaky.url)])),
    )
    .await
    .expect("starts");
    let expected = run_orders(&orderly.engine, 10).await;
    assert!(
        flaky
            .wait_until(Duration::from_secs(15), |s| s.event_ids() == expected)
            .await,
        "every event arrives: {} of {}; missing {:?}",
        flaky.event_ids().len(),
        expected.len(),
        expected.difference(&flaky.event_ids()).collect::<Vec<_>>(),
    );
    {
        let seen = flaky.seen.lock().unwrap();
        assert_eq!(seen.bad_signatures, 0, "every signature verifies");
        assert!(
            seen.requests >= 45,
            "the first five failed and were retried"
        );
        let sample = &seen.accepted[0];
        for key in [
            "event_id",
            "type",
            "order_id",
            "order_version",
            "occurred_at",
            "data",
        ] {
            assert!(!sample[key].is_null(), "{key} in {sample}");
        }
    }
    assert_eq!(
        server
            .command(&["XLEN", "orderly:webhooks:flaky:dead"])
            .as_int(),
        Some(0)
    );
    // Everything is acknowledged now: the trimmer removes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while outbox_len(&server) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(outbox_len(&server), 0, "acknowledged entries are trimmed");
    orderly.shutdown().await;
}

#[actix_rt::test]
async fn a_receiver_that_never_answers_is_dead_lettered_while_a_healthy_one_gets_everything() {
    let server = RedisServer::start();
    let dead = Receiver::start(SECRET, Behaviour::Hang);
    let healthy = Receiver::start(SECRET, Behaviour::Healthy);
    let mut config = settings(
        &server.url(),
        vec![
            receiver("silent", &dead.url),
            receiver("healthy", &healthy.url),
        ],
    );
    config.webhooks.attempts_max = 2;
    let orderly = within("start", Orderly::start(config))
        .await
        .expect("starts");
    let expected = run_orders(&orderly.engine, 8).await;
    assert_eq!(
        all_ids(&server),
        expected,
        "nothing is trimmed before every group acked"
    );
    let started = std::time::Instant::now();
    assert!(
        healthy.wait_until(Duration::from_secs(3), |s| s.event_ids() == expected).await,
        "the healthy receiver gets everything on time: {} of {}; missing {:?}; requests {}, bad signatures {}",
        healthy.event_ids().len(),
        expected.len(),
        expected.difference(&healthy.event_ids()).collect::<Vec<_>>(),
        healthy.seen.lock().unwrap().requests,
        healthy.seen.lock().unwrap().bad_signatures,
    );
    let healthy_took = started.elapsed();
    let dead_key = "orderly:webhooks:silent:dead";
    let dead_letters = || server.command(&["XLEN", dead_key]).as_int().unwrap_or(0) as usize;
    assert!(
        dead_letters() < expected.len(),
        "the healthy receiver did not wait for the silent one ({healthy_took:?})"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dead_letters() < expected.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dead_letters(),
        expected.len(),
        "every event is dead-lettered"
    );
    let entries = server.command(&["XRANGE", dead_key, "-", "+", "COUNT", "1"]);
    let fields = entries.as_array().unwrap()[0].as_array().unwrap()[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>();
    assert_eq!(fields[0], "event");
    let event: Value = serde_json::from_str(&fields[1]).expect("the event itself");
    assert!(expected.contains(event["event_id"].as_str().unwrap()));
    assert_eq!(fields[4], "error");
    assert!(!fields[5].is_empty(), "the last error is kept: {fields:?}");
    assert!(dead.seen.lock().unwrap().bad_signatures == 0);
    orderly.shutdown().await;
}

#[actix_rt::test]
async fn a_receiver_answering_410_is_disabled_in_redis() {
    let server = RedisServer::start();
    let gone = Receiver::start(SECRET, Behaviour::Gone);
    let orderly = within(
        "start",
        Orderly::start(settings(&server.url(), vec![receiver("gone", &gone.url)])),
    )
    .await
    .expect("starts");
    let _ = run_orders(&orderly.engine, 5).await;
    let key = "orderly:webhooks:gone:disabled";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.command(&["EXISTS", key]).as_int() != Some(1)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.command(&["EXISTS", key]).as_int(), Some(1));
    let reason = server.command(&["GET", key]);
    assert!(reason.as_str().unwrap().contains("410"), "{reason}");
    // Disabled: no more requests, nothing dead-lettered, nothing acknowledged.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let requests = gone.seen.lock().unwrap().requests;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gone.seen.lock().unwrap().requests,
        requests,
        "no more deliveries"
    );
    assert!(
        requests <= 16,
        "at most one round of deliveries: {requests}"
    );
    assert_eq!(
        server
            .command(&["XLEN", "orderly:webhooks:gone:dead"])
            .as_int(),
        Some(0)
    );
    assert_eq!(
        all_events(&server, SHARDS).len(),
        20,
        "nothing trimmed for a disabled receiver"
    );
    orderly.shutdown().await;
}

#[actix_rt::test]
async fn two_serve_processes_share_one_receiver_without_loss() {
    let server = RedisServer::start();
    let hook = Receiver::start(SECRET, Behaviour::Healthy);
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "shared.toml",
        &format!(
            r#"
[webhooks]
timeout_ms = 1000
retry_initial_ms = 20
retry_cap_ms = 100
poll_interval_ms = 20
claim_idle_ms = 1000

[[webhooks.receivers]]
name = "crm"
url = "{}"
secret = "{SECRET}"
events = ["order_placed", "order_paid"]
"#,
            hook.url
        ),
    );
    let one = spawn_serve(&server.url(), "node-1", SHARDS, Some(&config));
    let two = spawn_serve(&server.url(), "node-2", SHARDS, Some(&config));
    let client = reqwest::Client::new();
    for n in 0..20 {
        let order = json!({
            "customer_id": format!("c-{n}"), "currency": "USD", "payment_method": "card",
            "items": [{"sku": "s", "quantity": 1, "unit_price": "2.50"}]
        });
        let placed = post_json(&client, &format!("{}/v1/orders", one.base), order).await;
        let id = placed["order_id"].as_str().unwrap();
        let paid = post_json(
            &client,
            &format!("{}/v1/orders/{id}/pay", one.base),
            json!({}),
        )
        .await;
        assert_eq!(paid["status"], "paid");
    }
    let expected: BTreeSet<String> = all_events(&server, SHARDS)
        .iter()
        .filter(|e| e["type"] == "order_placed" || e["type"] == "order_paid")
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(expected.len(), 40);
    assert!(
        hook.wait_until(Duration::from_secs(10), |s| s.event_ids() == expected)
            .await,
        "the union of both nodes' deliveries is every wanted event: {} of {}",
        hook.event_ids().len(),
        expected.len()
    );
    assert_eq!(hook.seen.lock().unwrap().bad_signatures, 0);
    // Both nodes consume the receiver's group, each under its node id.
    let consumers = server.command(&["XINFO", "CONSUMERS", "orderly:{0}:events", "webhook:crm"]);
    let names: BTreeSet<String> = consumers
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_array().unwrap()[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        ["node-1", "node-2"].map(String::from).into_iter().collect()
    );
    drop(one);
    drop(two);
}

#[actix_rt::test]
async fn entries_left_pending_by_a_dead_consumer_are_reclaimed() {
    let server = RedisServer::start();
    let hook = Receiver::start(SECRET, Behaviour::Healthy);
    // Orders first, with no receiver configured.
    let plain = within("start", Orderly::start(settings(&server.url(), Vec::new())))
        .await
        .expect("starts");
    let expected = run_orders(&plain.engine, 5).await;
    plain.shutdown().await;
    // A consumer of the receiver's group reads every entry, then dies without acknowledging.
    for s in 0..SHARDS {
        let key = format!("orderly:{{{s}}}:events");
        server.command(&["XGROUP", "CREATE", &key, "webhook:crm", "0", "MKSTREAM"]);
        server.command(&[
            "XREADGROUP",
            "GROUP",
            "webhook:crm",
            "ghost",
            "COUNT",
            "1000",
            "STREAMS",
            &key,
            ">",
        ]);
    }
    let orderly = within(
        "start",
        Orderly::start(settings(&server.url(), vec![receiver("crm", &hook.url)])),
    )
    .await
    .expect("starts");
    assert!(
        hook.wait_until(Duration::from_secs(10), |s| s.event_ids() == expected)
            .await,
        "the dead consumer's entries are claimed after claim_idle_ms and delivered: {} of {}",
        hook.event_ids().len(),
        expected.len()
    );
    orderly.shutdown().await;
}

#[actix_rt::test]
async fn retries_wait_on_the_clock() {
    use orderly::clock::{ManualClock, SharedClock};
    let server = RedisServer::start();
    let hook = Receiver::start(SECRET, Behaviour::FailFirst(1));
    let mut config = settings(&server.url(), vec![receiver("clocked", &hook.url)]);
    config.outbox.trim_interval_ms = 0;
    // Full jitter over ten minutes: the retry waits (almost surely) far longer than the test.
    config.webhooks.retry_initial_ms = 600_000;
    config.webhooks.retry_cap_ms = 600_000;
    config.webhooks.retry_elapsed_max_ms = 3_600_000;
    let plain = within("start", Orderly::start(settings(&server.url(), Vec::new())))
        .await
        .expect("starts");
    let id = OrderId::new();
    within(
        "place",
        plain.engine.execute(
            id,
            Request::Command(CommandEnvelope::new(Command::PlaceOrder(Box::new(
                new_order(1),
            )))),
            Admission::Wait,
        ),
    )
    .await
    .expect("placed");
    let clock = ManualClock::starting_now();
    let shared: SharedClock = clock.clone();
    let tasks = orderly::webhooks::start(&config, shared)
        .await
        .expect("starts")
        .expect("a receiver is configured");
    // The worker polls on the clock too: tick it until the first (failing) try happened.
    let mut ticks = 0;
    while hook.seen.lock().unwrap().requests == 0 && ticks < 500 {
        clock.advance(Duration::from_millis(50));
        tokio::time::sleep(Duration::from_millis(10)).await;
        ticks += 1;
    }
    assert_eq!(
        hook.seen.lock().unwrap().requests,
        1,
        "the first try failed"
    );
    // The clock stands still: the retry does not happen, however long the real wait.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        hook.seen.lock().unwrap().requests,
        1,
        "no retry before the clock moves"
    );
    clock.advance(Duration::from_secs(601));
    assert!(
        hook.wait_until(Duration::from_secs(5), |s| s.accepted.len() == 1)
            .await,
        "the retry runs once the clock passed its delay"
    );
    assert_eq!(
        hook.event_ids(),
        [format!("{id}:1:0")].into_iter().collect::<BTreeSet<_>>()
    );
    tasks.stop().await;
    plain.shutdown().await;
}

/// POSTs `body` to `url` and reads the JSON answer (bounded in time).
async fn post_json(client: &reqwest::Client, url: &str, body: Value) -> Value {
    within(url, async {
        client
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    })
    .await
}
