//! Proves that orders fed through a Redis Stream consumer group are persisted exactly once: valid entries become orders, invalid ones land in the dead-letter stream with their reason, nothing stays pending, and entries abandoned by a consumer that died mid-batch (read, even persisted, but never acknowledged) are reclaimed by another consumer without creating a second order.

mod support;

use std::future::Future;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderly::config::Settings;
use orderly::domain::{Command, CommandEnvelope, CommandId, NewOrder, NewOrderRequest, OrderId};
use orderly::engine::{Admission, BatchItem, Engine, Request};
use orderly::ingest::{IngestHandle, IngestStats, StreamConsumer};
use orderly::store::redis::RedisStore;
use orderly::store::SnapshotStore;
use support::redis_server::{RedisServer, RespValue};

/// Longest wait for any single call, and for a consumer to drain a stream.
const WAIT: Duration = Duration::from_secs(60);
/// Pause between polls of a consumer's progress.
const POLL: Duration = Duration::from_millis(20);
const STREAM: &str = "test:orders";
const DEAD: &str = "test:orders:dead";
const GROUP: &str = "engines";

/// The JSON of a valid order; `n` varies it.
fn order_json(n: usize) -> String {
    format!(
        r#"{{"customer_id":"c-{n}","currency":"USD","payment_method":"card","items":[{{"sku":"sku-{}","quantity":{},"unit_price":"19.99"}}],"metadata":{{}}}}"#,
        n % 7,
        n % 3 + 1
    )
}

/// Embedded defaults with the Redis store at `url`, sized for a 2-core machine, and the stream
/// consumer tuned for quick tests: small batches, short blocking reads, fast reclaim.
fn settings_for(url: &str, consumer: &str) -> Settings {
    let mut settings = support::settings::for_store(url);
    settings.ingest.enabled = true;
    settings.ingest.url = url.to_string();
    settings.ingest.stream = STREAM.into();
    settings.ingest.dead_letter_stream = DEAD.into();
    settings.ingest.group = GROUP.into();
    settings.ingest.consumer = consumer.into();
    settings.ingest.batch_size = 128;
    settings.ingest.block_ms = 100;
    settings.ingest.claim_idle_ms = 200;
    settings
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    support::calls::within_for(what, WAIT, future).await
}

async fn start_engine(settings: &Settings) -> Engine {
    let store: Arc<dyn SnapshotStore> = within("open store", orderly::store::open(settings))
        .await
        .unwrap_or_else(|e| panic!("cannot open store {}: {e}", settings.store.url));
    Engine::start(settings, store)
}

async fn start_consumer(engine: &Engine, settings: &Settings) -> IngestHandle {
    within(
        "start consumer",
        StreamConsumer::start(engine.clone(), &settings.ingest, &settings.ingest.url),
    )
    .await
    .unwrap_or_else(|e| panic!("consumer did not start: {e}"))
}

/// Appends one entry per order JSON in a single script call; returns the entry ids in order.
fn xadd_orders(redis: &RedisServer, orders: &[String]) -> Vec<String> {
    let script = "local ids = {} for i = 1, #ARGV do \
                  ids[i] = redis.call('XADD', KEYS[1], '*', 'order', ARGV[i]) end return ids";
    let mut args = vec!["EVAL", script, "1", STREAM];
    args.extend(orders.iter().map(String::as_str));
    let reply = redis.command(&args);
    reply
        .as_array()
        .unwrap_or_else(|| panic!("XADD script failed: {reply}"))
        .iter()
        .map(|id| id.as_str().expect("entry id is text").to_string())
        .collect()
}

/// Appends one entry with arbitrary fields; returns its id.
fn xadd_fields(redis: &RedisServer, fields: &[(&str, &str)]) -> String {
    let mut args = vec!["XADD", STREAM, "*"];
    for (field, value) in fields {
        args.push(field);
        args.push(value);
    }
    let reply = redis.command(&args);
    reply
        .as_str()
        .unwrap_or_else(|| panic!("XADD failed: {reply}"))
        .to_string()
}

/// Entries of the group that were delivered but not acknowledged.
fn pending_count(redis: &RedisServer) -> i64 {
    let reply = redis.command(&["XPENDING", STREAM, GROUP]);
    reply
        .as_array()
        .and_then(|summary| summary.first())
        .and_then(RespValue::as_int)
        .unwrap_or_else(|| panic!("XPENDING: unexpected reply {reply}"))
}

use support::stored::order_keys;

/// The order id the consumer derives for an entry without an idempotency key (the contract
/// that makes re-deliveries reach the same order).
fn derived_order_id(entry_id: &str) -> OrderId {
    OrderId::from_idempotency_key(&format!("stream:{STREAM}"), entry_id)
}

/// Stored version of the order an entry derives, read straight from Redis.
fn stored_version(redis: &RedisServer, engine: &Engine, entry_id: &str) -> Option<i64> {
    let id = derived_order_id(entry_id);
    let key = RedisStore::order_key("orderly", engine.shard_of(id), id);
    support::stored::stored_version(redis, &key)
}

/// Polls until the consumer has acknowledged `entries` entries and nothing is pending.
async fn wait_until_drained(redis: &RedisServer, handle: &IngestHandle, entries: u64) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if handle.stats().acknowledged() >= entries && pending_count(redis) == 0 {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "consumer did not drain {entries} entries within {WAIT:?}: {:?}, {} pending",
        handle.stats(),
        pending_count(redis)
    );
}

async fn stop(handle: IngestHandle) -> IngestStats {
    within("stop consumer", handle.stop())
        .await
        .unwrap_or_else(|e| panic!("consumer did not stop cleanly: {e}"))
}

/// The dead-letter stream as (entry id, reason, raw order) triples.
fn dead_letters(redis: &RedisServer) -> Vec<(String, String, String)> {
    let reply = redis.command(&["XRANGE", DEAD, "-", "+"]);
    let entries = reply.as_array().expect("XRANGE answers a list");
    entries
        .iter()
        .map(|entry| {
            let parts = entry.as_array().expect("entry is [id, fields]");
            let fields = parts[1].as_array().expect("fields");
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair[0].as_str() == Some(name))
                    .and_then(|pair| pair[1].as_str())
                    .unwrap_or_else(|| panic!("dead letter without `{name}`: {entry}"))
                    .to_string()
            };
            (field("entry"), field("reason"), field("order"))
        })
        .collect()
}

#[actix_rt::test]
async fn valid_entries_become_orders_and_invalid_ones_are_dead_lettered() {
    let redis = RedisServer::start();
    let settings = settings_for(&redis.url(), "consumer-1");
    let engine = start_engine(&settings).await;

    let valid: Vec<String> = (0..1000).map(order_json).collect();
    let valid_ids = xadd_orders(&redis, &valid[..500]);
    let invalid: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("order", "{not json".into())], "invalid_json"),
        (
            vec![("order", order_json(1).replace("\"metadata\"", "\"bogus\""))],
            "invalid_json",
        ),
        (vec![("order", "[]".into())], "invalid_json"),
        (vec![("payload", order_json(2))], "missing_field"),
        (
            vec![("order", order_json(3).replace("USD", "XXX"))],
            "unknown_currency",
        ),
        (
            vec![("order", order_json(4).replace("\"card\"", "\"cash\""))],
            "unknown_payment_method",
        ),
        (
            vec![(
                "order",
                order_json(5).replace("\"quantity\":3", "\"quantity\":0"),
            )],
            "invalid_quantity",
        ),
        (
            vec![("order", order_json(6).replace("19.99", "19.999"))],
            "too_many_decimals",
        ),
        (
            vec![("order", order_json(7).replace("\"c-7\"", "\"\""))],
            "missing_field",
        ),
        (
            vec![("order", order_json(8)), ("idempotency_key", String::new())],
            "invalid_idempotency_key",
        ),
    ];
    // Invalid entries sit between two runs of valid ones, so one batch mixes both kinds.
    let mut expected_dead = Vec::new();
    for (fields, reason) in &invalid {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        expected_dead.push((xadd_fields(&redis, &fields), reason.to_string()));
    }
    let mut valid_ids = valid_ids;
    valid_ids.extend(xadd_orders(&redis, &valid[500..]));

    let handle = start_consumer(&engine, &settings).await;
    wait_until_drained(&redis, &handle, 1010).await;
    let stats = stop(handle).await;

    assert_eq!(stats.accepted, 1000, "{stats:?}");
    assert_eq!(stats.duplicate, 0, "{stats:?}");
    assert_eq!(stats.dead_lettered, 10, "{stats:?}");
    assert_eq!(pending_count(&redis), 0);
    assert_eq!(order_keys(&redis).len(), 1000);
    for entry_id in &valid_ids {
        assert_eq!(
            stored_version(&redis, &engine, entry_id),
            Some(1),
            "entry {entry_id} has no order at version 1"
        );
    }
    // The engine answers from the stored order, with the content of the entry.
    let first = derived_order_id(&valid_ids[0]);
    let read = within(
        "read",
        engine.execute(first, Request::Read, Admission::Wait),
    )
    .await
    .expect("order is readable");
    assert_eq!(&*read.order.header.customer_id, "c-0");

    let mut dead = dead_letters(&redis);
    dead.sort();
    expected_dead.sort();
    assert_eq!(
        dead.iter()
            .map(|(id, reason, _)| (id.clone(), reason.clone()))
            .collect::<Vec<_>>(),
        expected_dead
    );
    // The raw order travels with the dead letter so it can be fixed and replayed.
    assert!(dead.iter().any(|(_, _, raw)| raw == "{not json"));
    engine.stop();
}

#[actix_rt::test]
async fn entries_of_a_consumer_killed_mid_batch_are_reclaimed_and_persisted_once() {
    let redis = RedisServer::start();
    let settings = settings_for(&redis.url(), "survivor");
    let engine = start_engine(&settings).await;

    let orders: Vec<String> = (0..400).map(order_json).collect();
    let entry_ids = xadd_orders(&redis, &orders);
    let created = redis.command(&["XGROUP", "CREATE", STREAM, GROUP, "0", "MKSTREAM"]);
    assert!(created.is_ok(), "XGROUP CREATE: {created}");

    // Consumer "dead" reads 300 entries, so they are pending on it, persists the first 150 of
    // them exactly as a consumer does (same derived order and command ids), then dies before
    // acknowledging anything.
    let read = redis.command(&[
        "XREADGROUP",
        "GROUP",
        GROUP,
        "dead",
        "COUNT",
        "300",
        "STREAMS",
        STREAM,
        ">",
    ]);
    assert!(read.as_array().is_some(), "XREADGROUP: {read}");
    assert_eq!(pending_count(&redis), 300);
    let persisted_by_dead: Vec<BatchItem> = entry_ids[..150]
        .iter()
        .zip(&orders)
        .map(|(entry_id, json)| {
            let request: NewOrderRequest = serde_json::from_str(json).expect("valid JSON");
            let new_order = NewOrder::parse(&request).expect("valid order");
            let order_id = derived_order_id(entry_id);
            BatchItem::existing(
                order_id,
                Request::Command(CommandEnvelope {
                    id: CommandId::from_key(order_id, entry_id),
                    command: Command::PlaceOrder(Box::new(new_order)),
                }),
            )
        })
        .collect();
    for result in within(
        "dead consumer's batch",
        engine.execute_batch(persisted_by_dead, Admission::Wait),
    )
    .await
    {
        result.expect("the dead consumer's placements are durable");
    }
    assert_eq!(order_keys(&redis).len(), 150);

    // The survivor reclaims the 300 abandoned entries once they are idle for 200 ms, and
    // reads the 100 nobody has seen.
    let handle = start_consumer(&engine, &settings).await;
    wait_until_drained(&redis, &handle, 400).await;
    let stats = stop(handle).await;

    assert_eq!(stats.accepted, 250, "{stats:?}");
    assert_eq!(stats.duplicate, 150, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(pending_count(&redis), 0);
    assert_eq!(order_keys(&redis).len(), 400, "one order per entry");
    for entry_id in &entry_ids {
        assert_eq!(
            stored_version(&redis, &engine, entry_id),
            Some(1),
            "entry {entry_id}: expected exactly one placement (version 1)"
        );
    }
    engine.stop();
}

#[actix_rt::test]
async fn a_batch_in_flight_when_its_engine_stops_is_finished_by_another_consumer() {
    // The stream and the store live on separate servers, so the store can be paused while
    // the stream keeps working: that holds consumer A's batch inside the engine.
    let stream_redis = RedisServer::start();
    let store_redis = RedisServer::start();
    let settings_for_consumer = |consumer: &str| {
        let mut settings = settings_for(&store_redis.url(), consumer);
        settings.ingest.url = stream_redis.url();
        settings.ingest.batch_size = 64;
        settings
    };
    let settings_a = settings_for_consumer("consumer-a");
    let engine_a = start_engine(&settings_a).await;
    let orders: Vec<String> = (0..3000).map(order_json).collect();
    let entry_ids = xadd_orders(&stream_redis, &orders);

    let handle_a = start_consumer(&engine_a, &settings_a).await;
    let deadline = Instant::now() + WAIT;
    while handle_a.stats().acknowledged() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Writes to the store now hang, so the next batch A reads stays in flight in the engine.
    let paused = store_redis.command(&["CLIENT", "PAUSE", "10000", "WRITE"]);
    assert!(paused.is_ok(), "CLIENT PAUSE: {paused}");
    let deadline = Instant::now() + WAIT;
    while pending_count(&stream_redis) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(pending_count(&stream_redis) > 0, "A never read a batch");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A's engine goes away under the batch: it fails, is not acknowledged, and stays pending
    // on consumer A. Its writes may still land once the store resumes.
    engine_a.stop();
    let stats_a = stop(handle_a).await;
    let unpaused = store_redis.command(&["CLIENT", "UNPAUSE"]);
    assert!(unpaused.is_ok(), "CLIENT UNPAUSE: {unpaused}");
    assert!(stats_a.acknowledged() >= 300, "{stats_a:?}");
    assert!(
        stats_a.retry > 0,
        "A's last batch was not in flight: {stats_a:?}"
    );

    let settings_b = settings_for_consumer("consumer-b");
    let engine_b = start_engine(&settings_b).await;
    let handle_b = start_consumer(&engine_b, &settings_b).await;
    let remaining = 3000 - stats_a.acknowledged();
    wait_until_drained(&stream_redis, &handle_b, remaining).await;
    let stats_b = stop(handle_b).await;

    assert_eq!(pending_count(&stream_redis), 0);
    assert_eq!(stats_b.dead_lettered, 0, "{stats_b:?}");
    // An order whose write landed after engine A stopped was never answered, so A could not
    // count it; B finds it in place and counts a duplicate.
    assert_eq!(
        stats_a.accepted + stats_b.accepted + stats_b.duplicate,
        3000,
        "every entry is settled once: {stats_a:?} {stats_b:?}"
    );
    assert_eq!(order_keys(&store_redis).len(), 3000);
    for entry_id in &entry_ids {
        assert_eq!(stored_version(&store_redis, &engine_b, entry_id), Some(1));
    }
    engine_b.stop();
}

#[actix_rt::test]
async fn an_idempotency_key_places_one_order_and_refuses_a_different_payload() {
    let redis = RedisServer::start();
    let settings = settings_for(&redis.url(), "consumer-1");
    let engine = start_engine(&settings).await;

    let first = xadd_fields(
        &redis,
        &[("order", &order_json(1)), ("idempotency_key", "k-1")],
    );
    let replay = xadd_fields(
        &redis,
        &[("idempotency_key", "k-1"), ("order", &order_json(1))],
    );
    let reused = xadd_fields(
        &redis,
        &[("order", &order_json(2)), ("idempotency_key", "k-1")],
    );

    let handle = start_consumer(&engine, &settings).await;
    wait_until_drained(&redis, &handle, 3).await;
    let stats = stop(handle).await;

    assert_eq!(
        (stats.accepted, stats.duplicate, stats.dead_lettered),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(order_keys(&redis).len(), 1);
    let dead = dead_letters(&redis);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].0.as_str(), dead[0].1.as_str()),
        (reused.as_str(), "idempotency_key_reused")
    );
    assert_ne!(first, replay);
    engine.stop();
}

/// After a read that filled less than half a batch, the consumer waits `linger_ms` before
/// reading again, so entries that trickle in meanwhile are placed as one batch; with no
/// linger, each trickle is a batch of its own.
#[actix_rt::test]
async fn entries_that_trickle_in_during_the_linger_are_read_as_one_batch() {
    let redis = RedisServer::start();
    for (linger_ms, batches_for_three_trickles) in [(900, 1), (0, 3)] {
        let mut settings = settings_for(&redis.url(), &format!("consumer-linger-{linger_ms}"));
        settings.ingest.linger_ms = linger_ms;
        let engine = start_engine(&settings).await;
        let handle = start_consumer(&engine, &settings).await;
        let base = (linger_ms as usize + 1) * 10;
        let done_before = handle.stats().acknowledged();
        // A small first read: the next one lingers (when `linger_ms` > 0).
        xadd_orders(&redis, &[order_json(base)]);
        wait_until_drained(&redis, &handle, done_before + 1).await;
        let batches_before = handle.stats().batches;
        for trickle in 0..3 {
            let orders: Vec<String> = (0..4)
                .map(|i| order_json(base + 1 + trickle * 4 + i))
                .collect();
            xadd_orders(&redis, &orders);
            // Far less than the linger, far more than a read and a placement take here.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        wait_until_drained(&redis, &handle, done_before + 13).await;
        let stats = stop(handle).await;
        assert_eq!(
            stats.batches - batches_before,
            batches_for_three_trickles,
            "linger_ms = {linger_ms}: {stats:?}"
        );
        engine.stop();
    }
}

/// A child process that is killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the group exists, nothing is pending and `orders` orders are stored.
fn settled(redis: &RedisServer, orders: usize) -> bool {
    let pending = redis.command(&["XPENDING", STREAM, GROUP]);
    let none_pending = pending
        .as_array()
        .and_then(|summary| summary.first())
        .and_then(RespValue::as_int)
        == Some(0);
    none_pending && order_keys(redis).len() == orders
}

#[test]
fn serve_consumes_the_stream_when_ingest_is_enabled() {
    let redis = RedisServer::start();
    let orders: Vec<String> = (0..50).map(order_json).collect();
    xadd_orders(&redis, &orders);
    let log = tempfile::NamedTempFile::new().expect("temp file for the server log");
    let stderr = log.reopen().expect("server log file");
    let child = Process::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &redis.url()])
        .env_remove("ORDERLY_LOG")
        .env("ORDERLY__ENGINE__SHARDS", "8")
        .env("ORDERLY__ENGINE__ARBITERS", "1")
        .env("ORDERLY__API__WORKERS", "1")
        .env("ORDERLY__INGEST__ENABLED", "true")
        .env("ORDERLY__INGEST__STREAM", STREAM)
        .env("ORDERLY__INGEST__GROUP", GROUP)
        .env("ORDERLY__INGEST__DEAD_LETTER_STREAM", DEAD)
        .env("ORDERLY__INGEST__BLOCK_MS", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("orderly serve starts");
    let mut child = KillOnDrop(child);
    let server_log = || std::fs::read_to_string(log.path()).unwrap_or_default();

    let deadline = Instant::now() + WAIT;
    while !settled(&redis, 50) {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("orderly serve exited ({status}):\n{}", server_log());
        }
        assert!(
            Instant::now() < deadline,
            "the stream was not consumed within {WAIT:?}:\n{}",
            server_log()
        );
        std::thread::sleep(POLL);
    }

    // A graceful stop (SIGTERM) stops the consumer before the engine, and exits cleanly.
    let pid = child.0.id().to_string();
    let signalled = Process::new("kill").args(["-TERM", &pid]).status();
    assert!(signalled.is_ok_and(|s| s.success()), "cannot signal {pid}");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "orderly serve did not stop within {WAIT:?}:\n{}",
            server_log()
        );
        std::thread::sleep(POLL);
    };
    assert!(status.success(), "exit {status}:\n{}", server_log());
}
