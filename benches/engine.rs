//! Criterion benchmarks of the order engine: the pure state machine per command, the snapshot
//! codec, full lifecycles through the in-process engine on the memory store, and Redis batch
//! writes (only when a throw-away `redis-server` can be started on 127.0.0.1).
//!
//! Run: `cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::future::join_all;

use orderly::config::Settings;
use orderly::domain::{
    apply, Command, CommandEnvelope, LineItemRequest, NewOrder, NewOrderRequest, Order, OrderId,
    OrderPolicy, OrderStatus, PaymentResult, Timestamp,
};
use orderly::engine::{Admission, BatchItem, Engine};
use orderly::store::memory::MemoryStore;
use orderly::store::redis::RedisStore;
use orderly::store::snapshot::{decode, encode};
use orderly::store::{LeaseOwner, ShardBatch, SnapshotStore, SnapshotWrite};

// Same allocator as the `orderly` binary, so the numbers match what it would see.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Orders per lifecycle-bench iteration.
const LIFECYCLE_ORDERS: usize = 2048;
/// Orders per `execute_batch` call (as the demo's default).
const LIFECYCLE_BATCH: usize = 512;
/// Snapshots per Redis batch write.
const REDIS_BATCH: usize = 256;
/// Fixed clock for the pure benches.
const NOW: Timestamp = Timestamp(1_700_000_000_000);

/// A realistic new order: three USD lines, one metadata pair.
fn new_order(n: usize) -> NewOrder {
    let request = NewOrderRequest {
        customer_id: format!("customer-{}", n % 100_000),
        currency: "USD".into(),
        payment_method: "card".into(),
        items: vec![
            LineItemRequest {
                sku: format!("sku-{:05}", n % 10_000),
                quantity: 2,
                unit_price: "19.99".into(),
            },
            LineItemRequest {
                sku: "sku-00042".into(),
                quantity: 1,
                unit_price: "4.50".into(),
            },
            LineItemRequest {
                sku: "sku-31337".into(),
                quantity: 3,
                unit_price: "120.00".into(),
            },
        ],
        metadata: [("channel".to_string(), "web".to_string())]
            .into_iter()
            .collect(),
    };
    NewOrder::parse(&request).expect("the bench order is valid")
}

fn place_envelope(n: usize) -> CommandEnvelope {
    CommandEnvelope::new(Command::PlaceOrder(Box::new(new_order(n))))
}

fn pay_envelope() -> CommandEnvelope {
    CommandEnvelope::new(Command::StartPayment { method: None })
}

fn record_success_envelope(order: &Order) -> CommandEnvelope {
    CommandEnvelope::new(Command::RecordPaymentResult {
        attempt_no: 1,
        result: PaymentResult::Succeeded {
            amount_minor: order.header.total_minor,
            currency: order.currency(),
        },
    })
}

fn ship_envelope() -> CommandEnvelope {
    CommandEnvelope::new(Command::ShipOrder {
        tracking_number: Some("1Z999AA10123456784".into()),
    })
}

fn deliver_envelope() -> CommandEnvelope {
    CommandEnvelope::new(Command::ConfirmDelivery)
}

/// The order after each lifecycle step: pending, processing, paid, shipped.
struct Prepared {
    id: OrderId,
    pending: Order,
    processing: Order,
    paid: Order,
    shipped: Order,
}

fn prepare() -> Prepared {
    let policy = OrderPolicy::default();
    let id = OrderId::new();
    let step = |order: Option<&Order>, envelope: &CommandEnvelope, expected: OrderStatus| {
        let applied = apply(order, id, envelope, NOW, &policy).expect("lifecycle step applies");
        assert_eq!(applied.order.status, expected);
        applied.order
    };
    let pending = step(None, &place_envelope(1), OrderStatus::PendingPayment);
    let processing = step(
        Some(&pending),
        &pay_envelope(),
        OrderStatus::PaymentProcessing,
    );
    let paid = step(
        Some(&processing),
        &record_success_envelope(&processing),
        OrderStatus::Paid,
    );
    let shipped = step(Some(&paid), &ship_envelope(), OrderStatus::Shipped);
    Prepared {
        id,
        pending,
        processing,
        paid,
        shipped,
    }
}

fn bench_apply(c: &mut Criterion) {
    let policy = OrderPolicy::default();
    let prepared = prepare();
    let id = prepared.id;
    let mut group = c.benchmark_group("apply");
    group.throughput(Throughput::Elements(1));

    let place = place_envelope(1);
    group.bench_function("place", |b| {
        b.iter(|| apply(None, id, black_box(&place), NOW, &policy))
    });
    let cases = [
        ("pay", &prepared.pending, pay_envelope()),
        (
            "record_payment_success",
            &prepared.processing,
            record_success_envelope(&prepared.processing),
        ),
        ("ship", &prepared.paid, ship_envelope()),
        ("deliver", &prepared.shipped, deliver_envelope()),
    ];
    for (name, order, envelope) in &cases {
        // Each iteration applies the same command to the same prepared state: never a
        // duplicate, never a rejection.
        let applied = apply(Some(order), id, envelope, NOW, &policy).expect("step applies");
        assert!(!applied.duplicate);
        group.bench_function(*name, |b| {
            b.iter(|| {
                apply(
                    black_box(Some(*order)),
                    id,
                    black_box(envelope),
                    NOW,
                    &policy,
                )
            })
        });
    }
    group.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let order = prepare().shipped;
    assert_eq!(order.header.items.len(), 3);
    assert_eq!(order.payments.len(), 1);
    let bytes = encode(&order);
    assert_eq!(decode(&bytes).expect("round trip"), order);
    eprintln!(
        "snapshot: a shipped order (3 items, 1 payment attempt, tracking number) encodes to {} bytes",
        bytes.len()
    );
    let mut group = c.benchmark_group("snapshot");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| b.iter(|| encode(black_box(&order))));
    group.bench_function("decode", |b| b.iter(|| decode(black_box(&bytes))));
    group.finish();
}

/// Runs `orders` through place → pay → ship → deliver, each step one `execute_batch` call;
/// returns how many reached `Completed`.
async fn lifecycle_batch(engine: &Engine, orders: Vec<NewOrder>) -> usize {
    let ids: Vec<OrderId> = orders.iter().map(|_| OrderId::new()).collect();
    let place = ids
        .iter()
        .zip(orders)
        .map(|(id, order)| BatchItem::place(*id, order))
        .collect();
    let mut alive: Vec<OrderId> = ids
        .iter()
        .zip(engine.execute_batch(place, Admission::Wait).await)
        .filter(|(_, result)| result.is_ok())
        .map(|(id, _)| *id)
        .collect();
    let steps: [(fn() -> Command, OrderStatus); 3] = [
        (|| Command::StartPayment { method: None }, OrderStatus::Paid),
        (
            || Command::ShipOrder {
                tracking_number: Some("1Z999AA10123456784".into()),
            },
            OrderStatus::Shipped,
        ),
        (|| Command::ConfirmDelivery, OrderStatus::Completed),
    ];
    for (make, expected) in steps {
        let items = alive
            .iter()
            .map(|id| BatchItem::command(*id, make()))
            .collect();
        let results = engine.execute_batch(items, Admission::Wait).await;
        alive = alive
            .iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, Ok(outcome) if outcome.order.status == expected))
            .map(|(id, _)| *id)
            .collect();
    }
    alive.len()
}

/// `iters` rounds of `LIFECYCLE_ORDERS` lifecycles on a fresh engine and memory store,
/// `LIFECYCLE_ORDERS / LIFECYCLE_BATCH` batches concurrently; returns the time of the rounds.
fn run_lifecycles(settings: &Settings, iters: u64) -> Duration {
    actix_rt::System::new().block_on(async {
        let store: Arc<dyn SnapshotStore> = Arc::new(MemoryStore::new(settings.engine.shards));
        let engine = Engine::start(settings, store);
        // Validated orders are built once; each round clones them (as a client would build
        // them), which costs far less than the engine work measured.
        let template: Vec<NewOrder> = (0..LIFECYCLE_ORDERS).map(new_order).collect();
        let started = Instant::now();
        for _ in 0..iters {
            let batches = template
                .chunks(LIFECYCLE_BATCH)
                .map(|chunk| lifecycle_batch(&engine, chunk.to_vec()));
            let completed: usize = join_all(batches).await.into_iter().sum();
            assert_eq!(completed, LIFECYCLE_ORDERS, "every lifecycle completes");
        }
        let elapsed = started.elapsed();
        engine.stop();
        elapsed
    })
}

fn bench_engine_memory_lifecycle(c: &mut Criterion) {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.store.url = "memory".into();
    let mut group = c.benchmark_group("engine_memory_lifecycle");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LIFECYCLE_ORDERS as u64));
    group.bench_function(
        BenchmarkId::new("place_pay_ship_deliver", LIFECYCLE_ORDERS),
        |b| b.iter_custom(|iters| run_lifecycles(&settings, iters)),
    );
    group.finish();
}

/// A throw-away `redis-server` on a free loopback port with its own data directory; killed
/// on drop.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one, or explains why not (`redis-server` missing, or it never answered).
    fn start() -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port()?;
        let child = Process::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let mut server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        // Bounded wait for PING: at most 200 probes of 25 ms (5 s).
        for _ in 0..200 {
            if ping(port) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("redis-server exited early: {status}"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = server.child.kill();
        Err("redis-server did not answer PING within 5 s".into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port other than the shared Redis's 6379.
fn free_port() -> Result<u16, String> {
    for _ in 0..10 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot bind a loopback port: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

/// Whether a server on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0_u8; 7];
    let mut read = 0;
    // A reply arrives in at most a few reads; bounded anyway.
    for _ in 0..4 {
        match stream.read(&mut reply[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        if read >= 7 {
            break;
        }
    }
    reply.starts_with(b"+PONG")
}

fn bench_redis_batch_write(c: &mut Criterion) {
    let server = match RedisServer::start() {
        Ok(server) => server,
        Err(why) => {
            eprintln!("redis_batch_write: skipped ({why})");
            return;
        }
    };
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.store.url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let store = runtime
        .block_on(RedisStore::connect(
            &settings.store.url,
            &settings.store.redis,
        ))
        .expect("connect to the throw-away redis-server");

    // 256 realistic shipped orders of one shard; every write moves each order one version up
    // and the key count stays fixed. The writer holds the shard's lease: each batch is one
    // fenced MULTI/EXEC.
    let template = prepare().shipped;
    let shard = 0;
    let orders: Vec<(OrderId, Vec<u8>)> = (0..REDIS_BATCH)
        .map(|_| {
            let mut order = template.clone();
            let mut header = (*order.header).clone();
            header.id = OrderId::new();
            order.header = Arc::new(header);
            (order.id(), encode(&order))
        })
        .collect();
    let mut version = 0_u64;
    let mut next_batch = || {
        version += 1;
        orders
            .iter()
            .map(|(order_id, bytes)| SnapshotWrite {
                order_id: *order_id,
                version,
                bytes: bytes.clone(),
                events: orderly::store::outbox::OutboxEvents::from_lines(
                    format!(
                        "{{\"event_id\":\"{order_id}:{version}:0\",\"type\":\"order_shipped\",\"order_id\":\"{order_id}\",\"order_version\":{version},\"occurred_at\":\"2026-01-01T00:00:00.000Z\",\"data\":{{\"customer_id\":\"c-1\",\"status\":\"shipped\",\"amount\":\"39.98\",\"currency\":\"USD\",\"metadata\":{{}}}}}}\n"
                    )
                    .as_bytes(),
                ),
                timer: Default::default(),
            })
            .collect::<Vec<_>>()
    };

    let owner = LeaseOwner {
        node_id: "bench".into(),
        ttl_ms: 600_000,
    };
    let mut writer = store.shard_writer(&owner);
    runtime
        .block_on(writer.acquire(shard))
        .expect("acquire the lease")
        .expect("the lease is free");
    let mut group = c.benchmark_group("redis_batch_write");
    // A batch takes milliseconds: 20 samples (210 batches at least) fit a 3 s measurement.
    group.sample_size(20);
    group.throughput(Throughput::Elements(REDIS_BATCH as u64));
    group.bench_function(BenchmarkId::new("write_batch", REDIS_BATCH), |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut measured = Duration::ZERO;
                for _ in 0..iters {
                    let writes = next_batch();
                    let started = Instant::now();
                    let refused = writer
                        .write(vec![ShardBatch::new(shard, writes)])
                        .await
                        .expect("fenced batch write");
                    assert!(refused.is_empty(), "the bench holds the lease");
                    measured += started.elapsed();
                }
                measured
            })
        })
    });
    group.finish();
    drop(writer);
    drop(store);
    drop(runtime);
    drop(server);
}

criterion_group!(
    benches,
    bench_apply,
    bench_snapshot,
    bench_engine_memory_lifecycle,
    bench_redis_batch_write
);
criterion_main!(benches);
