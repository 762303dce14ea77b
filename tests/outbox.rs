//! The outbox against a real, throw-away `redis-server`: every acknowledged transition has its
//! event (read back through `orderly events`), with a unique `event_id`, also across a SIGKILL
//! of `orderly serve` mid-load and in a mixed run with flaky payments, cancels, refunds,
//! reminders and expiries (the events replay every acknowledged status); nothing is trimmed
//! unread; past the cap events land in the
//! overflow stream and are counted; `orderly events --follow` shows a short run; bad webhook
//! and outbox settings fail at start naming the key.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderly::config::Settings;
use orderly::domain::{Command, OrderId};
use orderly::engine::{Admission, Engine, Request};
use orderly::store::redis::RedisStore;
use serde_json::{json, Value};
use support::calls::{run, within, CALL_TIMEOUT};
use support::orders::new_order;
use support::outbox::{all_events, assert_unique_ids, by_order};
use support::redis_server::RedisServer;
use support::serve::{config_file, serve_fails, spawn_serve};
use support::stored::stored_version;

/// What a client was told: (order id, version, status) per acknowledged answer.
type Log = Vec<(String, u64, String)>;

/// Checks the outbox against the client log: for each acknowledged (version, status), the
/// order's last event at or before that version has that `data.status`; event ids are unique and
/// deterministic; each order's events start at version 1 and none is past its stored version.
fn check_outbox(server: &RedisServer, shards: u32, events: &[Value], log: &Log) {
    assert_unique_ids(events);
    let orders = by_order(events);
    for (id, version, status) in log {
        let of_order = orders
            .get(id)
            .unwrap_or_else(|| panic!("no event at all for acknowledged order {id}"));
        // The events replay the status history: the latest event at or before the
        // acknowledged version carries the acknowledged status (a version that changed only
        // bookkeeping, such as an attempt's outcome becoming unknown, emits nothing).
        let latest = of_order
            .iter()
            .rfind(|e| e["order_version"].as_u64().unwrap_or(0) <= *version);
        assert!(
            latest.is_some_and(|e| e["data"]["status"] == status.as_str()),
            "order {id}: the events up to acknowledged version {version} do not end in {status}; events: {of_order:#?}"
        );
    }
    for (id, of_order) in &orders {
        let order_id = OrderId::parse(id).expect("uuid");
        let shard = (order_id.route_hash() % u64::from(shards)) as u32;
        let stored = stored_version(server, &RedisStore::order_key("orderly", shard, order_id))
            .expect("an order with events is stored") as u64;
        let versions: BTreeSet<u64> = of_order
            .iter()
            .map(|e| e["order_version"].as_u64().unwrap())
            .collect();
        // Some commands change only bookkeeping (an attempt's outcome became unknown, say) and
        // emit nothing, so versions may have gaps; none is beyond what is stored.
        assert!(
            versions.contains(&1) && versions.iter().all(|v| *v <= stored),
            "order {id}: event versions {versions:?} vs stored version {stored}; events {:?}; told {:?}",
            of_order
                .iter()
                .map(|e| (e["order_version"].clone(), e["type"].clone()))
                .collect::<Vec<_>>(),
            log.iter().filter(|l| &l.0 == id).collect::<Vec<_>>()
        );
        for event in of_order {
            let event_id = event["event_id"].as_str().unwrap();
            let index_part = event_id.rsplit(':').next().unwrap();
            assert_eq!(
                event_id,
                format!("{id}:{}:{index_part}", event["order_version"]),
                "event ids are <order>:<version>:<index>"
            );
            assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
        }
    }
}

/// Applies `steps` to `id` in turn and logs every acknowledged answer.
async fn run_logged(engine: &Engine, id: OrderId, steps: Vec<Command>, log: &mut Log) {
    for command in steps {
        if let Ok(outcome) = run(engine, id, command).await {
            log.push((
                id.to_string(),
                outcome.order.version,
                outcome.order.status.as_str().to_string(),
            ));
        }
    }
}

/// Runs `orderly events` (without `--follow`) and parses its NDJSON.
fn events_command(url: &str, shards: u32) -> Vec<Value> {
    let output = Process::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["events", "--store", url])
        .env("ORDERLY__ENGINE__SHARDS", shards.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("orderly events runs");
    assert!(
        output.status.success(),
        "orderly events: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect()
}

#[actix_rt::test]
async fn every_acknowledged_transition_has_exactly_one_event() {
    let server = RedisServer::start();
    let shards = 4;
    let mut settings = Settings::embedded_default().unwrap();
    settings.store.url = server.url();
    settings.engine.shards = shards;
    settings.engine.arbiters = 2;
    let store = within("open", orderly::store::open(&settings))
        .await
        .unwrap();
    let engine = Engine::start(&settings, store);
    assert!(engine.wait_until_owned(CALL_TIMEOUT).await);
    let mut log: Log = Vec::new();
    for n in 0..24_u64 {
        let id = OrderId::new();
        let mut order = new_order(n);
        order.metadata = vec![("campaign".into(), format!("c\"{n}").into())].into();
        let mut steps = vec![Command::PlaceOrder(Box::new(order))];
        match n % 4 {
            0 => steps.push(Command::CancelOrder {
                reason: Some("changed mind".into()),
            }),
            1 => steps.extend([
                Command::StartPayment { method: None },
                Command::ShipOrder {
                    tracking_number: Some(format!("TRK-{n}").into()),
                },
                Command::ConfirmDelivery,
            ]),
            2 => steps.extend([
                Command::StartPayment { method: None },
                Command::ShipOrder {
                    tracking_number: None,
                },
            ]),
            _ => steps.extend([
                Command::StartPayment { method: None },
                Command::RefundOrder { amount_minor: None },
            ]),
        }
        run_logged(&engine, id, steps, &mut log).await;
    }
    // Let gateway verdicts that answer after their command settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.stop();
    let events = events_command(&server.url(), shards);
    assert_eq!(
        events.len(),
        all_events(&server, shards).len(),
        "orderly events prints every event in the streams"
    );
    check_outbox(&server, shards, &events, &log);
    // What a CRM needs is in `data`.
    let shipped: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "order_shipped" && e["data"]["tracking_number"].is_string())
        .collect();
    assert_eq!(
        shipped.len(),
        6,
        "six orders shipped with a tracking number"
    );
    let placed = events.iter().find(|e| e["type"] == "order_placed").unwrap();
    assert_eq!(placed["data"]["currency"], "USD");
    assert!(placed["data"]["customer_id"]
        .as_str()
        .unwrap()
        .starts_with("customer-"));
    assert!(placed["data"]["amount"].as_str().unwrap().contains('.'));
    assert!(placed["data"]["metadata"]["campaign"]
        .as_str()
        .unwrap()
        .starts_with("c\""));
    let completed = events
        .iter()
        .filter(|e| e["type"] == "order_completed")
        .collect::<Vec<_>>();
    assert_eq!(completed.len(), 6);
    assert!(completed.iter().all(|e| e["data"]["reason"] == "delivered"));
    let refunds = events
        .iter()
        .filter(|e| e["type"] == "refund_started")
        .collect::<Vec<_>>();
    assert_eq!(refunds.len(), 6);
    assert!(refunds
        .iter()
        .all(|e| e["data"]["refund_amount"].is_string()));
}

/// One HTTP client's loop: place, pay, ship; logs every acknowledged answer.
async fn client_loop(base: Arc<Mutex<String>>, log: Arc<Mutex<Log>>, until: Instant, n: u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut i = 0;
    while Instant::now() < until && i < 2_000 {
        i += 1;
        let base = base.lock().unwrap().clone();
        let answer = |response: reqwest::Result<reqwest::Response>| async move {
            let response = response.ok()?;
            if !response.status().is_success() {
                return None;
            }
            response.json::<Value>().await.ok()
        };
        let body = json!({
            "customer_id": format!("c-{n}-{i}"), "currency": "USD", "payment_method": "card",
            "items": [{"sku": "sku-1", "quantity": 1, "unit_price": "5.00"}]
        });
        let Some(placed) = answer(
            client
                .post(format!("{base}/v1/orders"))
                .json(&body)
                .send()
                .await,
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = placed["order_id"].as_str().unwrap().to_string();
        let record = |view: &Value| {
            log.lock().unwrap().push((
                id.clone(),
                view["version"].as_u64().unwrap(),
                view["status"].as_str().unwrap().to_string(),
            ))
        };
        record(&placed);
        for step in ["pay", "ship"] {
            let url = format!("{base}/v1/orders/{id}/{step}");
            match answer(client.post(url).json(&json!({})).send().await).await {
                Some(view) => record(&view),
                None => break,
            }
        }
    }
}

#[actix_rt::test]
async fn a_sigkilled_serve_loses_no_acknowledged_event() {
    let server = RedisServer::start();
    let shards = 4;
    let mut serve = spawn_serve(&server.url(), "node-1", shards, None);
    let base = Arc::new(Mutex::new(serve.base.clone()));
    let log = Arc::new(Mutex::new(Log::new()));
    let until = Instant::now() + Duration::from_millis(3_500);
    let clients: Vec<_> = (0..4)
        .map(|n| tokio::spawn(client_loop(Arc::clone(&base), Arc::clone(&log), until, n)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    serve.kill();
    let before = log.lock().unwrap().len();
    assert!(before > 20, "load ran before the kill: {before} answers");
    let again = spawn_serve(&server.url(), "node-1", shards, None);
    *base.lock().unwrap() = again.base.clone();
    for client in clients {
        within("clients", client).await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert!(log.len() > before, "load went on after the restart");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(again);
    check_outbox(&server, shards, &all_events(&server, shards), &log);
}

fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn place_http(client: &reqwest::Client, base: &str, n: usize) -> String {
    let body = json!({
        "customer_id": format!("c-{n}"), "currency": "EUR", "payment_method": "card",
        "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "1.50"}]
    });
    let placed: Value = within("place", async {
        client
            .post(format!("{base}/v1/orders"))
            .json(&body)
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("JSON")
    })
    .await;
    placed["order_id"].as_str().expect("order id").to_string()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(-1.0)
}

#[actix_rt::test]
async fn nothing_is_trimmed_unread_and_past_the_cap_events_overflow() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "down.toml",
        &format!(
            r#"
[outbox]
max_entries_per_shard = 5
trim_interval_ms = 50

[webhooks]
timeout_ms = 200
attempts_max = 100
retry_elapsed_max_ms = 600000
retry_initial_ms = 20
retry_cap_ms = 50
poll_interval_ms = 20

[[webhooks.receivers]]
name = "down"
url = "http://127.0.0.1:{}/hook"
secret = "s3cret"
"#,
            closed_port()
        ),
    );
    let serve = spawn_serve(&server.url(), "node-1", 1, Some(&config));
    let client = reqwest::Client::new();
    let mut placed = Vec::new();
    for n in 0..4 {
        placed.push(place_http(&client, &serve.base, n).await);
    }
    // Several trim rounds while the receiver is down: nothing it has not acknowledged goes.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = "orderly:{0}:events";
    let overflow = "orderly:{0}:events:overflow";
    assert_eq!(server.command(&["XLEN", events]).as_int(), Some(4));
    let pending = server.command(&["XPENDING", events, "webhook:down"]);
    assert!(
        pending.as_array().unwrap()[0].as_int() >= Some(1),
        "the receiver's group read entries and acknowledged none: {pending}"
    );
    for n in 4..10 {
        placed.push(place_http(&client, &serve.base, n).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        server.command(&["XLEN", events]).as_int(),
        Some(5),
        "the stream stops at its cap"
    );
    assert_eq!(
        server.command(&["XLEN", overflow]).as_int(),
        Some(5),
        "past the cap, entries go to the overflow stream"
    );
    let mut ids: Vec<String> = support::outbox::read_stream_events(&server, events)
        .into_iter()
        .chain(support::outbox::read_stream_events(&server, overflow))
        .map(|e| e["order_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    placed.sort();
    assert_eq!(
        ids, placed,
        "every order_placed is kept, in one stream or the other"
    );
    let metrics = within("metrics", async {
        client
            .get(format!("{}/metrics", serve.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await;
    assert_eq!(metric(&metrics, "orderly_outbox_overflowed_total"), 5.0);
    assert_eq!(
        metric(
            &metrics,
            "orderly_outbox_appended_total{type=\"order_placed\"}"
        ),
        10.0
    );
}

#[actix_rt::test]
async fn events_follow_prints_a_short_run() {
    let server = RedisServer::start();
    let serve = spawn_serve(&server.url(), "node-1", 2, None);
    let mut follower = Process::new(env!("CARGO_BIN_EXE_orderly"))
        .args([
            "events",
            "--follow",
            "--poll-ms",
            "20",
            "--store",
            &server.url(),
        ])
        .env("ORDERLY__ENGINE__SHARDS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("orderly events --follow starts");
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Let it find the (empty) end of each stream before events arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = reqwest::Client::new();
    let mut placed = BTreeSet::new();
    for n in 0..3 {
        placed.insert(place_http(&client, &serve.base, n).await);
    }
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let event: Value = serde_json::from_str(&line).expect("NDJSON");
            seen.insert(event["order_id"].as_str().unwrap().to_string(), event);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), placed);
    assert!(seen.values().all(|e| e["type"] == "order_placed"));
}

#[test]
fn bad_webhook_and_outbox_settings_fail_at_start_naming_the_key() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "ftp",
            "[[webhooks.receivers]]\nurl = \"ftp://example.com/x\"\nsecret = \"s\"\n",
            "webhooks.receivers[0].url",
        ),
        (
            "secret",
            "[[webhooks.receivers]]\nurl = \"http://127.0.0.1:9/x\"\n",
            "webhooks.receivers[0].secret",
        ),
        (
            "filter",
            "[[webhooks.receivers]]\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"s\"\nevents = [\"order_teleported\"]\n",
            "webhooks.receivers[0].events",
        ),
        (
            "off",
            "[outbox]\nenabled = false\n[[webhooks.receivers]]\nurl = \"http://127.0.0.1:9/x\"\nsecret = \"s\"\n",
            "outbox.enabled",
        ),
    ];
    for (name, text, key) in cases {
        let path = config_file(dir.path(), &format!("{name}.toml"), text);
        let stderr = serve_fails(&server.url(), &path);
        assert!(
            stderr.contains(key),
            "{name}: stderr names `{key}`: {stderr}"
        );
    }
}

#[actix_rt::test]
async fn a_mixed_run_with_flaky_payments_reminders_and_expiries_matches_the_client_log() {
    let server = RedisServer::start();
    let shards = 4;
    let mut settings = Settings::embedded_default().unwrap();
    settings.store.url = server.url();
    settings.engine.shards = shards;
    settings.engine.arbiters = 2;
    settings.payments.fault_profile = "flaky".into();
    settings.payments.attempt_timeout_ms = 500;
    settings.orders.payment_reminders_after_ms = vec![600];
    settings.orders.unpaid_expiry_after_ms = 1_500;
    settings.timers.poll_interval_ms = 50;
    settings.validate().unwrap();
    let store = within("open", orderly::store::open(&settings))
        .await
        .unwrap();
    let engine = Engine::start(&settings, store);
    assert!(engine.wait_until_owned(CALL_TIMEOUT).await);
    let mut log: Log = Vec::new();
    let mut ids = Vec::new();
    for n in 0..60_u64 {
        let id = OrderId::new();
        ids.push(id);
        let mut steps = vec![Command::PlaceOrder(Box::new(new_order(n)))];
        match n % 5 {
            // Left unpaid: reminded, then expired by the timers.
            0 | 1 => {}
            2 => steps.push(Command::CancelOrder { reason: None }),
            3 => steps.extend([
                Command::StartPayment { method: None },
                Command::StartPayment { method: None },
                Command::ShipOrder {
                    tracking_number: None,
                },
            ]),
            _ => steps.extend([
                Command::StartPayment { method: None },
                Command::RefundOrder { amount_minor: None },
            ]),
        }
        run_logged(&engine, id, steps, &mut log).await;
    }
    // The timers run on their own: wait until every unpaid order expired, and log what the
    // reads say (a read is an acknowledged answer too).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut expired = 0;
    for (n, id) in ids.iter().enumerate() {
        if n % 5 > 1 {
            continue;
        }
        loop {
            let order = within("read", engine.execute(*id, Request::Read, Admission::Wait))
                .await
                .expect("read")
                .order;
            if order.status == orderly::domain::OrderStatus::Expired {
                log.push((id.to_string(), order.version, "expired".into()));
                expired += 1;
                break;
            }
            assert!(Instant::now() < deadline, "order {id} never expired");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(expired, 24);
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.stop();
    let events = events_command(&server.url(), shards);
    check_outbox(&server, shards, &events, &log);
    let of_type = |t: &str| events.iter().filter(|e| e["type"] == t).count();
    assert_eq!(of_type("order_placed"), 60);
    assert!(of_type("order_expired") >= 24, "every unpaid order expired");
    assert!(of_type("payment_reminder") >= 24, "reminded before expiry");
    // Each order was reminded at most once and expired at most once.
    for of_order in by_order(&events).values() {
        let count = |t: &str| of_order.iter().filter(|e| e["type"] == t).count();
        assert!(count("payment_reminder") <= 1 && count("order_expired") <= 1);
    }
}
