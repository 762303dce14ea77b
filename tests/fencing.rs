//! Proves fenced shard ownership against a real, throw-away `redis-server` (and the memory
//! store): a shard's writer holds a lease whose token only grows; a writer whose lease moved is
//! refused as a whole and lands nothing; an engine taken over (by a forced takeover, or frozen
//! with SIGSTOP past its TTL) acknowledges nothing more and answers `shard_unavailable`; an
//! engine under load keeps its leases; a restart under the same node id takes its shards back
//! at once; and orders stored in the previous layout (a hash) load and are rewritten.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Process};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderly::config::Settings;
use orderly::domain::{Command, OrderId, OrderStatus};
use orderly::engine::{Admission, Engine, EngineError, Request};
use orderly::store::memory::MemoryStore;
use orderly::store::outbox::OutboxEvents;
use orderly::store::redis::RedisStore;
use orderly::store::{LeaseOwner, ShardBatch, SnapshotStore, SnapshotWrite};
use support::calls::{run, within, CALL_TIMEOUT};
use support::orders::new_order;
use support::redis_server::{RedisOptions, RedisServer};
use support::stored::{stored_order, stored_version};

const SHARDS: u32 = 8;

fn settings_for(url: &str, node_id: &str, lease_ttl_ms: u64) -> Settings {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.store.url = url.to_string();
    settings.engine.shards = SHARDS;
    settings.engine.arbiters = 2;
    settings.store.redis.connections = 2;
    settings.store.redis.connect_timeout_ms = 1000;
    settings.cluster.node_id = node_id.to_string();
    settings.cluster.lease_ttl_ms = lease_ttl_ms;
    settings
}

async fn open_store(settings: &Settings) -> Arc<dyn SnapshotStore> {
    within("open store", orderly::store::open(settings))
        .await
        .unwrap_or_else(|e| panic!("cannot open store {}: {e}", settings.store.url))
}

fn cancel() -> Command {
    Command::CancelOrder {
        reason: Some("test".into()),
    }
}

fn order_key(id: OrderId, engine: &Engine) -> String {
    RedisStore::order_key("orderly", engine.shard_of(id), id)
}

fn write(order_id: OrderId, version: u64, bytes: &[u8]) -> SnapshotWrite {
    SnapshotWrite {
        order_id,
        version,
        bytes: bytes.to_vec(),
        events: OutboxEvents::from_lines(
            format!("{{\"event_id\":\"{order_id}:{version}:0\",\"type\":\"order_placed\"}}\n")
                .as_bytes(),
        ),
        timer: Default::default(),
    }
}

fn owner(node_id: &str) -> LeaseOwner {
    LeaseOwner {
        node_id: node_id.into(),
        ttl_ms: 60_000,
    }
}

fn batch(shard: u32, writes: Vec<SnapshotWrite>) -> Vec<ShardBatch> {
    vec![ShardBatch::new(shard, writes)]
}

/// The store contract: one lease per shard, tokens that only grow, a stale writer refused as
/// a whole (its other shards unaffected), and a same-node writer that takes the lease at once.
/// `expire` makes the current lease of shard 3 go away as its TTL would.
async fn stale_tokens_are_refused(store: Arc<dyn SnapshotStore>, expire: impl Fn()) {
    let (shard, neighbour) = (3, 4);
    let kind = store.kind();
    let id = OrderId::new();
    let other = OrderId::new();
    let next_door = OrderId::new();
    let mut a = store.shard_writer(&owner("node-a"));
    let lease_a = within("acquire a", a.acquire(shard))
        .await
        .expect("acquire a")
        .expect("the lease is free");
    within("acquire a", a.acquire(neighbour))
        .await
        .expect("acquire a")
        .expect("the lease is free");
    let refused = within(
        "write a",
        a.write(batch(shard, vec![write(id, 1, b"a-v1")])),
    )
    .await
    .expect("A writes under its lease");
    assert!(refused.is_empty(), "{kind}: nothing refused");

    let mut b = store.shard_writer(&owner("node-b"));
    let taken = within("acquire b", b.acquire(shard))
        .await
        .expect("acquire b");
    assert_eq!(taken, None, "{kind}: B cannot take a live lease of A");

    expire();
    let lease_b = within("acquire b", b.acquire(shard))
        .await
        .expect("acquire b")
        .expect("the expired lease is free");
    assert!(lease_b.token > lease_a.token, "{kind}: tokens only grow");
    let refused = within(
        "write b",
        b.write(batch(shard, vec![write(id, 2, b"b-v2")])),
    )
    .await
    .expect("B writes under its lease");
    assert!(refused.is_empty());

    // A still believes it owns shard 3: that shard's whole part is refused, including the
    // write of an unrelated order, while its neighbour's part in the same call lands. Its
    // renewal is refused too.
    let mut batches = batch(
        shard,
        vec![write(id, 2, b"a-v2"), write(other, 1, b"other")],
    );
    batches.push(ShardBatch::new(
        neighbour,
        vec![write(next_door, 1, b"next-door")],
    ));
    let refused = within("stale write", a.write(batches))
        .await
        .expect("the call itself succeeds");
    assert_eq!(
        refused,
        vec![shard],
        "{kind}: only the stale shard is refused"
    );
    let lost = within("stale renew", a.renew(&[shard, neighbour]))
        .await
        .expect("renew");
    assert_eq!(lost, vec![shard], "{kind}: the stale renewal is refused");
    let stored = within("load", store.load(shard, id)).await.expect("load");
    assert_eq!(
        stored.as_deref(),
        Some(&b"b-v2"[..]),
        "{kind}: B's write kept"
    );
    let stored = within("load other", store.load(shard, other))
        .await
        .expect("load");
    assert_eq!(stored, None, "{kind}: nothing of A's refused part landed");
    let stored = within("load next door", store.load(neighbour, next_door))
        .await
        .expect("load");
    assert_eq!(
        stored.as_deref(),
        Some(&b"next-door"[..]),
        "{kind}: the neighbour's part landed"
    );

    // A restart of node B (same id) takes the lease at once, and fences B's old incarnation.
    let mut b_again = store.shard_writer(&owner("node-b"));
    let lease_b2 = within("acquire b again", b_again.acquire(shard))
        .await
        .expect("acquire")
        .expect("same node id takes its own lease");
    assert!(lease_b2.token > lease_b.token);
    let refused = within(
        "old incarnation",
        b.write(batch(shard, vec![write(id, 3, b"old-b")])),
    )
    .await
    .expect("call");
    assert_eq!(
        refused,
        vec![shard],
        "{kind}: the old incarnation is fenced"
    );
    let refused = within(
        "new incarnation",
        b_again.write(batch(shard, vec![write(id, 3, b"b-v3")])),
    )
    .await
    .expect("the new incarnation writes");
    assert!(refused.is_empty());
    // Released, the lease is free for anyone at once.
    within("release", b_again.release(shard))
        .await
        .expect("release");
    let mut c = store.shard_writer(&owner("node-c"));
    let lease_c = within("acquire c", c.acquire(shard))
        .await
        .expect("acquire c")
        .expect("a released lease is free");
    assert!(lease_c.token > lease_b2.token);
}

/// A stale token is refused by the Redis store (nothing lands, no outbox event) and by the
/// memory store alike.
#[actix_rt::test]
async fn a_stale_token_is_refused_by_the_store() {
    let server = RedisServer::start();
    let settings = settings_for(&server.url(), "unused", 10_000);
    let redis = within(
        "connect",
        RedisStore::connect(&server.url(), &settings.store.redis),
    )
    .await
    .expect("connect to harness redis");
    let lease = RedisStore::lease_key("orderly", 3);
    stale_tokens_are_refused(Arc::new(redis), || {
        server.command(&["DEL", &lease]);
    })
    .await;
    // Accepted parts appended one outbox entry each (A's v1, B's v2, B's v3); the refused
    // ones none.
    let events = RedisStore::events_key("orderly", 3);
    assert_eq!(server.command(&["XLEN", &events]).as_int(), Some(3));
    // Each entry has one field holding one JSON line per event.
    let entries = server.command(&["XRANGE", &events, "-", "+"]);
    let lines: Vec<String> = entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| {
            let fields = entry.as_array().expect("[id, fields]")[1]
                .as_array()
                .expect("fields");
            assert_eq!(
                fields[0].as_str(),
                Some(orderly::store::redis::OUTBOX_FIELD)
            );
            fields[1].as_str().expect("lines").to_string()
        })
        .collect();
    assert_eq!(lines.len(), 3);
    for (line, version) in lines.iter().zip(1..) {
        assert!(
            line.ends_with(&format!(":{version}:0\",\"type\":\"order_placed\"}}\n")),
            "outbox line {line:?}"
        );
    }
    let epoch = RedisStore::epoch_key("orderly", 3);
    assert_eq!(server.command(&["GET", &epoch]).as_int(), Some(4));
    assert_eq!(
        server.command(&["TTL", &epoch]).as_int(),
        Some(-1),
        "the epoch never expires"
    );

    let memory = Arc::new(MemoryStore::new(SHARDS));
    let handle = Arc::clone(&memory);
    stale_tokens_are_refused(memory, move || handle.expire_lease(3)).await;
}

/// Engine A owns the shards; B (another node id) takes them over. A's next command is refused
/// with `shard_unavailable`, never acknowledged, and lands nothing; B serves the order.
async fn taken_over_engine_is_fenced(
    settings_a: Settings,
    settings_b: Settings,
    store_a: Arc<dyn SnapshotStore>,
    store_b: Arc<dyn SnapshotStore>,
    take_over: impl Fn(),
    stored: impl Fn(&Engine, OrderId) -> Option<(u64, OrderStatus)>,
) {
    let engine_a = Engine::start(&settings_a, store_a);
    assert!(engine_a.wait_until_owned(CALL_TIMEOUT).await, "A owns");
    let placed = within("place", engine_a.place(new_order(1), Admission::Wait))
        .await
        .expect("A places");
    let id = placed.order.id();
    let engine_b = Engine::start(&settings_b, store_b);
    // B cannot take live leases of A.
    assert!(
        !engine_b.wait_until_owned(Duration::from_millis(300)).await,
        "B must not take A's live leases"
    );
    take_over();
    assert!(engine_b.wait_until_owned(CALL_TIMEOUT).await, "B owns");

    match run(&engine_a, id, cancel()).await {
        Err(EngineError::ShardUnavailable(_)) => {}
        other => panic!("A after the takeover must answer shard_unavailable, got {other:?}"),
    }
    assert_eq!(
        stored(&engine_a, id),
        Some((1, OrderStatus::PendingPayment))
    );
    let paid = run(&engine_b, id, Command::StartPayment { method: None })
        .await
        .expect("B pays");
    assert_eq!(paid.order.status, OrderStatus::Paid);
    assert_eq!(stored(&engine_b, id), Some((3, OrderStatus::Paid)));
    // A keeps refusing (B holds the leases, A's renewals are refused), never acknowledging.
    for _ in 0..3 {
        match run(&engine_a, id, cancel()).await {
            Err(EngineError::ShardUnavailable(_)) => {}
            other => panic!("A must keep refusing, got {other:?}"),
        }
    }
    assert_eq!(stored(&engine_b, id), Some((3, OrderStatus::Paid)));
    let stats = engine_a.shard_stats().await;
    assert!(stats.iter().all(|s| !s.owned), "A owns nothing");
    engine_a.stop();
    engine_b.stop();
}

/// Two engines on one Redis: a forced takeover (the leases handed to B under new tokens, as
/// B's acquisition after A's expiry would) fences the first.
#[actix_rt::test]
async fn a_taken_over_engine_is_fenced_on_redis() {
    let server = RedisServer::start();
    let settings_a = settings_for(&server.url(), "node-a", 3_000);
    let settings_b = settings_for(&server.url(), "node-b", 3_000);
    let store_a = open_store(&settings_a).await;
    let store_b = open_store(&settings_b).await;
    taken_over_engine_is_fenced(
        settings_a,
        settings_b,
        store_a,
        store_b,
        || {
            // What B's acquisition does once A's lease is gone: a new token under B's id.
            for shard in 0..SHARDS {
                let epoch = RedisStore::epoch_key("orderly", shard);
                let token = server.command(&["INCR", &epoch]).as_int().expect("token");
                let lease = RedisStore::lease_key("orderly", shard);
                let value = format!("{token}:node-b");
                server.command(&["SET", &lease, &value, "PX", "3000"]);
            }
        },
        |engine, id| stored_order(&server, &order_key(id, engine)).map(|o| (o.version, o.status)),
    )
    .await;
}

/// The memory store fences engines the same way.
#[actix_rt::test]
async fn a_taken_over_engine_is_fenced_on_the_memory_store() {
    let memory = Arc::new(MemoryStore::new(SHARDS));
    let settings_a = settings_for("memory", "node-a", 3_000);
    let settings_b = settings_for("memory", "node-b", 3_000);
    let reader: Arc<dyn SnapshotStore> = memory.clone();
    let expire = Arc::clone(&memory);
    taken_over_engine_is_fenced(
        settings_a,
        settings_b,
        memory.clone(),
        memory,
        move || expire.hand_leases_to("node-b", 3_000),
        move |engine, id| {
            let bytes = futures_util::FutureExt::now_or_never(reader.load(engine.shard_of(id), id))
                .expect("memory loads are immediate")
                .expect("memory load")?;
            let order = orderly::store::snapshot::decode(&bytes).expect("snapshot");
            Some((order.version, order.status))
        },
    )
    .await;
}

/// One engine under steady load keeps every lease for more than three TTLs: renewals and
/// batches never fence each other. Redis does not fsync here: this is about renewals, and an
/// `appendfsync always` stall of a third of the TTL on a busy disk would expire a lease for
/// a reason that has nothing to do with the engine.
#[actix_rt::test]
async fn an_engine_under_load_keeps_its_leases() {
    let server = RedisServer::start_with(RedisOptions {
        appendfsync: "no",
        ..RedisOptions::default()
    });
    let settings = settings_for(&server.url(), "node-a", 1_000);
    let engine = Engine::start(&settings, open_store(&settings).await);
    assert!(engine.wait_until_owned(CALL_TIMEOUT).await);
    let tokens: Vec<u64> = engine
        .shard_stats()
        .await
        .iter()
        .map(|s| s.lease_token)
        .collect();
    let deadline = Instant::now() + Duration::from_millis(3_300);
    let mut placed = 0_u64;
    while Instant::now() < deadline {
        let items = (0..64)
            .map(|i| orderly::engine::BatchItem::place(OrderId::new(), new_order(placed + i)))
            .collect();
        for result in within("batch", engine.execute_batch(items, Admission::Wait)).await {
            result.expect("placements are acknowledged while the engine owns its shards");
            placed += 1;
        }
    }
    let stats = engine.shard_stats().await;
    assert!(placed > 0);
    for (shard, s) in stats.iter().enumerate() {
        assert!(s.owned, "shard {shard} still owned");
        assert_eq!(s.lease_losses, 0, "shard {shard} never lost its lease");
        assert_eq!(s.lease_token, tokens[shard], "shard {shard} kept its token");
    }
    engine.stop();
}

/// A restart under the same node id (the leases were not released: a crash) takes every
/// shard back at once, far within the TTL, with a larger token.
#[actix_rt::test]
async fn a_restart_under_the_same_node_id_takes_the_shards_back_at_once() {
    let server = RedisServer::start();
    let settings = settings_for(&server.url(), "node-a", 60_000);
    let engine = Engine::start(&settings, open_store(&settings).await);
    assert!(engine.wait_until_owned(CALL_TIMEOUT).await);
    let before: Vec<u64> = engine
        .shard_stats()
        .await
        .iter()
        .map(|s| s.lease_token)
        .collect();
    let id = within("place", engine.place(new_order(2), Admission::Wait))
        .await
        .expect("placed")
        .order
        .id();
    engine.stop();

    let started = Instant::now();
    let again = Engine::start(&settings, open_store(&settings).await);
    assert!(again.wait_until_owned(Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(5), "no TTL wait");
    for (shard, s) in again.shard_stats().await.iter().enumerate() {
        assert!(
            s.lease_token > before[shard],
            "shard {shard}: a new, larger token"
        );
    }
    let cancelled = run(&again, id, cancel()).await.expect("served at once");
    assert_eq!(cancelled.order.status, OrderStatus::Cancelled);
    again.shutdown().await;
    // A graceful stop released every lease.
    for shard in 0..SHARDS {
        assert!(server
            .command(&["GET", &RedisStore::lease_key("orderly", shard)])
            .is_nil());
    }
}

/// Orders written by the previous release (a hash with `v` and `s`) load, and their next write
/// replaces the hash with a plain snapshot value.
#[actix_rt::test]
async fn orders_in_the_old_layout_load_and_are_upgraded() {
    let server = RedisServer::start();
    let settings = settings_for(&server.url(), "node-a", 10_000);
    let engine = Engine::start(&settings, open_store(&settings).await);
    let mut ids = Vec::new();
    for n in 0..20 {
        let placed = within("place", engine.place(new_order(n), Admission::Wait))
            .await
            .expect("placed");
        ids.push(placed.order.id());
    }
    engine.stop();
    // Rewrite every order as the previous release stored it.
    let client = redis::Client::open(server.url()).expect("redis url");
    let mut connection = within("connect", client.get_multiplexed_async_connection())
        .await
        .expect("connect");
    for id in &ids {
        let key = order_key(*id, &engine);
        let reply = server.command(&["GET", &key]);
        let bytes = reply.as_bytes().expect("a snapshot").to_vec();
        server.command(&["DEL", &key]);
        let _: i64 = within(
            "HSET",
            redis::cmd("HSET")
                .arg(&key)
                .arg("v")
                .arg(1)
                .arg("s")
                .arg(&bytes[..])
                .query_async(&mut connection),
        )
        .await
        .expect("seed the old layout");
        assert_eq!(server.command(&["TYPE", &key]).as_str(), Some("hash"));
    }
    let engine = Engine::start(&settings, open_store(&settings).await);
    for id in &ids {
        let read = within("read", engine.execute(*id, Request::Read, Admission::Wait))
            .await
            .expect("an old-layout order loads");
        assert_eq!(read.order.version, 1);
        assert_eq!(read.order.status, OrderStatus::PendingPayment);
        let cancelled = run(&engine, *id, cancel()).await.expect("cancelled");
        assert_eq!(cancelled.order.version, 2);
        let key = order_key(*id, &engine);
        assert_eq!(server.command(&["TYPE", &key]).as_str(), Some("string"));
        assert_eq!(stored_version(&server, &key), Some(2));
    }
    engine.stop();
}

/// Starts `orderly serve` on Redis under `node_id` with a short lease; returns the child and
/// its base URL.
fn spawn_serve(url: &str, node_id: &str, lease_ttl_ms: u64) -> (Child, String) {
    let mut child = support::serve::serve_command(url, node_id, SHARDS, None)
        .env("ORDERLY__CLUSTER__LEASE_TTL_MS", lease_ttl_ms.to_string())
        .spawn()
        .expect("orderly serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("listening on ") {
                let _ = tx.send(address.to_string());
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve prints its address");
    (child, address)
}

fn signal(child: &Child, name: &str) {
    let status = Process::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name}");
}

/// A real `orderly serve` frozen with SIGSTOP past its lease TTL while engine B takes over:
/// resumed with SIGCONT, it answers the command it was sent meanwhile with a retryable
/// `503 shard_unavailable`, and nothing of it lands.
#[actix_rt::test]
async fn a_frozen_engine_resumed_after_its_ttl_is_fenced() {
    let server = RedisServer::start();
    let (mut child, base) = spawn_serve(&server.url(), "node-a", 1_000);
    let client = reqwest::Client::new();
    let placed: serde_json::Value = within("place on A", async {
        client
            .post(format!("{base}/v1/orders"))
            .json(&serde_json::json!({
                "customer_id": "c-1", "currency": "USD", "payment_method": "card",
                "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "19.99"}]
            }))
            .send()
            .await
            .expect("A answers")
            .json()
            .await
            .expect("JSON")
    })
    .await;
    let id = OrderId::parse(placed["order_id"].as_str().expect("an order id")).expect("uuid");

    signal(&child, "STOP");
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let settings_b = settings_for(&server.url(), "node-b", 1_000);
    let engine_b = Engine::start(&settings_b, open_store(&settings_b).await);
    assert!(
        engine_b.wait_until_owned(CALL_TIMEOUT).await,
        "B takes the expired leases"
    );
    let cancelled_by_b = run(&engine_b, id, cancel()).await.expect("B cancels");
    assert_eq!(cancelled_by_b.order.version, 2);

    // A command sent to the frozen A waits in its socket until it resumes.
    let pay_on_a = {
        let client = client.clone();
        let url = format!("{base}/v1/orders/{id}/pay");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&serde_json::json!({}))
                .timeout(Duration::from_secs(20))
                .send()
                .await
                .expect("A answers after SIGCONT");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").is_some();
            let body: serde_json::Value = response.json().await.expect("JSON error");
            (status, retry_after, body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "CONT");
    let (status, retry_after, body) = within("A's answer", pay_on_a).await.expect("task");
    assert_eq!(status, 503, "A must not acknowledge: {body}");
    assert!(retry_after, "a retryable answer carries Retry-After");
    assert_eq!(body["error"]["code"], "shard_unavailable", "{body}");
    let key = order_key(id, &engine_b);
    let stored = stored_order(&server, &key).expect("stored");
    assert_eq!(stored.version, 2, "nothing of A's landed");
    assert_eq!(stored.status, OrderStatus::Cancelled);
    // The lease is B's: A's renewals were refused.
    let lease = server
        .command(&[
            "GET",
            &RedisStore::lease_key("orderly", engine_b.shard_of(id)),
        ])
        .as_str()
        .map(str::to_string)
        .unwrap_or_default();
    assert!(lease.ends_with(":node-b"), "lease held by B: {lease}");
    let _ = child.kill();
    let _ = child.wait();
    engine_b.stop();
}
