//! Criterion benchmark of a `/metrics` scrape with 1,000,000 orders stored: the exposition a
//! Prometheus reads every few seconds must stay cheap however many orders the store holds.
//! `orderly_orders{status}` comes from each shard's durable counts, not from a scan, so the
//! scrape's cost follows the number of series (bounded labels), never the number of orders.
//!
//! Run: `cargo bench --bench metrics -- --warm-up-time 1 --measurement-time 3`
//! (`ORDERLY_BENCH_ORDERS` changes the number of stored orders).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

use orderly::config::Settings;
use orderly::domain::{
    apply, Command, CommandEnvelope, LineItemRequest, NewOrder, NewOrderRequest, OrderId,
    OrderPolicy, OrderStatus, Timestamp,
};
use orderly::engine::{Admission, BatchItem, Engine};
use orderly::store::memory::MemoryStore;
use orderly::store::snapshot::encode;
use orderly::store::{
    LeaseOwner, ShardBatch, SnapshotStore, SnapshotWrite, StatusCounts, StatusUpdate,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHARDS: u32 = 64;
const NODE: &str = "bench-node";
const WRITE_BATCH: usize = 4096;

fn stored_orders() -> usize {
    std::env::var("ORDERLY_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn new_order(n: usize) -> NewOrder {
    let currency = ["USD", "EUR", "JPY"][n % 3];
    let price = if currency == "JPY" { "2500" } else { "19.99" };
    NewOrder::parse(&NewOrderRequest {
        customer_id: format!("customer-{}", n % 1000),
        currency: currency.into(),
        payment_method: "card".into(),
        items: vec![LineItemRequest {
            sku: "sku-1".into(),
            quantity: 2,
            unit_price: price.into(),
        }],
        metadata: Default::default(),
    })
    .expect("valid order")
}

/// Writes `n` placed orders straight into the store, with their shards' status counts, as
/// the engine's commits would have left them.
async fn fill(store: &MemoryStore, n: usize) {
    let policy = OrderPolicy::default();
    let template = {
        let envelope = CommandEnvelope::new(Command::PlaceOrder(Box::new(new_order(0))));
        apply(
            None,
            OrderId::new(),
            &envelope,
            Timestamp(1_700_000_000_000),
            &policy,
        )
        .expect("place applies")
        .order
    };
    let owner = LeaseOwner {
        node_id: NODE.into(),
        ttl_ms: 600_000,
    };
    let mut writer = store.shard_writer(&owner);
    for shard in 0..SHARDS {
        writer
            .acquire(shard)
            .await
            .expect("acquire")
            .expect("free");
    }
    let mut written = 0;
    while written < n {
        let mut per_shard: Vec<Vec<SnapshotWrite>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for _ in 0..WRITE_BATCH.min(n - written) {
            let mut order = template.clone();
            let mut header = (*order.header).clone();
            header.id = OrderId::new();
            order.header = Arc::new(header);
            let shard = (order.id().route_hash() % u64::from(SHARDS)) as u32;
            per_shard[shard as usize].push(SnapshotWrite {
                order_id: order.id(),
                version: 1,
                bytes: encode(&order),
                events: Default::default(),
                timer: Default::default(),
            });
            written += 1;
        }
        let batches: Vec<ShardBatch> = per_shard
            .into_iter()
            .enumerate()
            .map(|(shard, writes)| {
                let mut counts = StatusCounts::default();
                for _ in &writes {
                    counts.record(None, OrderStatus::PendingPayment);
                }
                ShardBatch {
                    shard: shard as u32,
                    writes,
                    status: StatusUpdate::Delta(counts),
                }
            })
            .collect();
        writer.write(batches).await.expect("write");
    }
    for shard in 0..SHARDS {
        writer.release(shard).await.expect("release");
    }
}

fn bench_scrape(c: &mut Criterion) {
    let handle = orderly::api::prometheus_handle().expect("recorder");
    let n = stored_orders();
    let system = actix_rt::System::new();
    let engine = system.block_on(async {
        let store = Arc::new(MemoryStore::new(SHARDS));
        fill(&store, n).await;
        let mut settings = Settings::embedded_default().expect("embedded settings load");
        settings.engine.shards = SHARDS;
        settings.cluster.node_id = NODE.into();
        let engine = Engine::start(&settings, store as Arc<dyn SnapshotStore>);
        assert!(engine.wait_until_owned(Duration::from_secs(30)).await);
        // Some traffic, so the command, commit and gateway series hold data.
        let items = (0..2000)
            .map(|i| BatchItem::place(OrderId::new(), new_order(i)))
            .collect();
        for result in engine.execute_batch(items, Admission::Wait).await {
            result.expect("placed");
        }
        // The shards read their counts on acquisition; give the last ones a moment.
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        engine
    });
    let text = orderly::telemetry::render(&handle);
    let pending: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("orderly_orders{status=\"pending_payment\"} "))
        .and_then(|v| v.parse().ok())
        .expect("the status gauge is exposed");
    assert_eq!(
        pending as usize,
        n + 2000,
        "the gauge counts every stored order"
    );
    eprintln!(
        "exposition: {} bytes, {} series, {} orders stored",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count(),
        n + 2000
    );
    let mut group = c.benchmark_group("metrics_scrape");
    group.bench_function(format!("render_{n}_orders_stored"), |b| {
        b.iter(|| black_box(orderly::telemetry::render(&handle)))
    });
    group.finish();
    system.block_on(engine.shutdown());
}

criterion_group!(benches, bench_scrape);
criterion_main!(benches);
