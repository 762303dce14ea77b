//! `orderly demo`: N orders through place → pay → ship → deliver, in-process, with a progress
//! bar on stderr and a final report (human, and with `--json` one JSON object as the last line
//! of stdout).
//!
//! The driver keeps `--concurrency` batches of `--batch` orders in flight. Each order's steps
//! are sequential (a step starts only after the previous one was acknowledged, i.e. durable), as
//! a real client's would be; throughput comes from many orders in flight, not from skipping
//! acknowledgements.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::Serialize;

use super::CommonArgs;
use crate::domain::{
    Command, Currency, LineItem, Money, NewOrder, OrderId, OrderStatus, PaymentMethod, Quantity,
};
use crate::engine::{Admission, BatchItem, CommandResult, Engine};

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Orders to run through the whole lifecycle.
    #[arg(long, default_value_t = 100_000)]
    pub orders: u64,
    /// Orders per engine call (one message per shard per call).
    #[arg(long, default_value_t = 512)]
    pub batch: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Stop each order's lifecycle after this step (place, pay, ship or deliver), e.g. to
    /// measure placement alone or the memory of orders that are still in flight.
    #[arg(long, value_parser = ["place", "pay", "ship", "deliver"], default_value = "deliver")]
    pub until: String,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

const STEPS: [&str; 4] = ["place", "pay", "ship", "deliver"];

struct Tally {
    latency_us: Vec<Histogram<u64>>,
    completed: u64,
    rejected: u64,
    commands: u64,
    order_count_o: u64,
    value_total_minor: i64,
    value_paid_minor: i64,
    errors: std::collections::BTreeMap<&'static str, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        let mut latency_us = Vec::new();
        for _ in STEPS {
            latency_us.push(Histogram::new_with_bounds(1, 120_000_000, 3)?);
        }
        Ok(Tally {
            latency_us,
            completed: 0,
            rejected: 0,
            commands: 0,
            order_count_o: 0,
            value_total_minor: 0,
            value_paid_minor: 0,
            errors: Default::default(),
        })
    }
}

/// Latency percentiles of one command, milliseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// The demo's machine-readable report.
#[derive(Debug, Serialize)]
pub struct DemoReport {
    /// Orders attempted.
    pub orders: u64,
    /// Orders that completed every requested step (`--until`, by default through Completed).
    pub completed: u64,
    /// Orders that did not (a step was refused or failed).
    pub rejected: u64,
    /// Wall time.
    pub elapsed_s: f64,
    /// Completed lifecycles (through the `--until` step) per second.
    pub orders_per_sec: f64,
    /// Acknowledged commands per second (a lifecycle is 4 client commands; `pay` includes the
    /// gateway verdict, itself a durable command).
    pub commands_per_sec: f64,
    /// Per-command latency (client call to durable answer), ms.
    pub latency_ms: std::collections::BTreeMap<&'static str, Percentiles>,
    /// O = Σqᵢ over all placed orders.
    pub order_count_o: u64,
    /// P = Σpᵢ·qᵢ over all placed orders (USD).
    pub order_value_p: String,
    /// R = P_paid / P_total, by value.
    pub payment_success_rate_r: f64,
    /// Store kind.
    pub store: &'static str,
    /// Last lifecycle step run (`--until`).
    pub until: String,
    /// Logical shards.
    pub shards: u32,
    /// Arbiter threads.
    pub arbiters: usize,
    /// Live order actors at the end.
    pub live_orders: usize,
    /// Resident set size at the end, bytes.
    pub rss_bytes: u64,
    /// Peak resident set size, bytes.
    pub peak_rss_bytes: u64,
    /// Errors by code.
    pub errors: std::collections::BTreeMap<&'static str, u64>,
}

/// A deterministic, varied order: 1–3 lines, quantities 1–4, a handful of prices.
fn make_order(n: u64) -> NewOrder {
    const PRICES: [(i64, u32); 5] = [(999, 2), (1999, 2), (450, 2), (12000, 2), (35, 1)];
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let lines = 1 + (next() % 3) as usize;
    let items = (0..lines)
        .map(|_| {
            let (mantissa, scale) = PRICES[(next() % PRICES.len() as u64) as usize];
            LineItem {
                sku: format!("sku-{}", next() % 10_000).into(),
                quantity: Quantity::new(1 + (next() % 4) as i64, "quantity")
                    .unwrap_or_else(|_| unreachable_quantity()),
                unit_price: Decimal::new(mantissa, scale),
            }
        })
        .collect();
    NewOrder {
        customer_id: format!("c-{}", n % 100_000).into(),
        currency: Currency::USD,
        payment_method: PaymentMethod::ALL[(n % 3) as usize],
        items,
        metadata: Box::new([]),
    }
}

fn unreachable_quantity() -> Quantity {
    // 1..=4 is always a valid quantity; this keeps the generator total without a panic path.
    Quantity::new(1, "quantity").unwrap_or_else(|_| unreachable_quantity())
}

fn read_rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn run_batch(
    engine: &Engine,
    tally: &RefCell<Tally>,
    step: usize,
    items: Vec<BatchItem>,
) -> Vec<CommandResult> {
    let answers = engine.execute_batch_timed(items, Admission::Wait).await;
    let mut tally = tally.borrow_mut();
    let mut results = Vec::with_capacity(answers.len());
    for (result, latency) in answers {
        let _ = tally.latency_us[step].record((latency.as_micros() as u64).max(1));
        tally.commands += 1;
        if let Err(error) = &result {
            *tally.errors.entry(error.code()).or_default() += 1;
        }
        results.push(result);
    }
    results
}

/// One lifecycle step after placement: its index, how to build its command, the status a
/// successful answer must show.
type Step = (usize, fn(OrderId) -> Command, OrderStatus);

/// Runs one batch of orders through the lifecycle.
async fn lifecycle(
    engine: &Engine,
    tally: &RefCell<Tally>,
    first: u64,
    count: u64,
    last_step: usize,
) {
    let ids: Vec<OrderId> = (0..count).map(|_| OrderId::new()).collect();
    let place = ids
        .iter()
        .enumerate()
        .map(|(i, id)| BatchItem::place(*id, make_order(first + i as u64)))
        .collect();
    let mut alive: Vec<OrderId> = Vec::with_capacity(ids.len());
    for (id, result) in ids.iter().zip(run_batch(engine, tally, 0, place).await) {
        if let Ok(outcome) = result {
            let mut t = tally.borrow_mut();
            t.order_count_o += outcome.order.header.item_count;
            t.value_total_minor += outcome.order.header.total_minor;
            alive.push(*id);
        }
    }
    let steps: [Step; 3] = [
        (
            1,
            |_| Command::StartPayment { method: None },
            OrderStatus::Paid,
        ),
        (
            2,
            |id| Command::ShipOrder {
                tracking_number: Some(
                    format!("TRK-{}", id.as_uuid().as_u64_pair().1 % 1_000_000_000).into(),
                ),
            },
            OrderStatus::Shipped,
        ),
        (3, |_| Command::ConfirmDelivery, OrderStatus::Completed),
    ];
    for (step, make, expected) in steps {
        if step > last_step {
            break;
        }
        let items = alive
            .iter()
            .map(|id| BatchItem::command(*id, make(*id)))
            .collect();
        let results = run_batch(engine, tally, step, items).await;
        let mut next = Vec::with_capacity(alive.len());
        for (id, result) in alive.iter().zip(results) {
            if let Ok(outcome) = result {
                if outcome.order.status == expected {
                    if step == 1 {
                        tally.borrow_mut().value_paid_minor += outcome.order.paid_minor;
                    }
                    next.push(*id);
                }
            }
        }
        alive = next;
    }
    let mut t = tally.borrow_mut();
    t.completed += alive.len() as u64;
    t.rejected += count - alive.len() as u64;
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Percentiles {
        p50: ms(h.value_at_quantile(0.5)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Runs the demo inside the current actix system.
pub async fn run(args: DemoArgs) -> anyhow::Result<DemoReport> {
    let settings = args.common.settings()?;
    let store = crate::store::open(&settings)
        .await
        .with_context(|| format!("opening store {}", settings.store.url))?;
    let engine = Engine::start(&settings, Arc::clone(&store));
    let tally = Rc::new(RefCell::new(Tally::new()?));
    let next = Rc::new(Cell::new(0_u64));
    let batch = args.batch.clamp(1, 100_000) as u64;
    let last_step = STEPS
        .iter()
        .position(|s| *s == args.until)
        .unwrap_or(STEPS.len() - 1);
    let progress = indicatif::ProgressBar::new(args.orders);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} orders {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.clamp(1, 4096) {
        let (engine, tally, next, progress) = (
            engine.clone(),
            Rc::clone(&tally),
            Rc::clone(&next),
            progress.clone(),
        );
        let total = args.orders;
        workers.push(actix_rt::spawn(async move {
            loop {
                let first = next.get();
                if first >= total {
                    break;
                }
                let count = batch.min(total - first);
                next.set(first + count);
                lifecycle(&engine, &tally, first, count, last_step).await;
                progress.inc(count);
            }
        }));
    }
    for worker in workers {
        worker.await.context("demo worker failed")?;
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    progress.finish_and_clear();
    let live_orders = engine.shard_stats().await.iter().map(|s| s.live).sum();
    let (rss_bytes, peak_rss_bytes) = read_rss();
    engine.stop();
    let t = tally.borrow();
    let secs = elapsed.as_secs_f64();
    let value = Money::from_minor_units(t.value_total_minor, Currency::USD)
        .unwrap_or_else(|_| Money::zero(Currency::USD));
    Ok(DemoReport {
        orders: args.orders,
        completed: t.completed,
        rejected: t.rejected,
        elapsed_s: secs,
        orders_per_sec: t.completed as f64 / secs,
        commands_per_sec: t.commands as f64 / secs,
        latency_ms: STEPS
            .iter()
            .zip(&t.latency_us)
            .map(|(s, h)| (*s, percentiles(h)))
            .collect(),
        order_count_o: t.order_count_o,
        order_value_p: crate::domain::money::format_amount(&value),
        payment_success_rate_r: if t.value_total_minor > 0 {
            t.value_paid_minor as f64 / t.value_total_minor as f64
        } else {
            0.0
        },
        store: store.kind(),
        until: args.until.clone(),
        shards: settings.engine.shards,
        arbiters: settings.arbiter_count(),
        live_orders,
        rss_bytes,
        peak_rss_bytes,
        errors: t.errors.clone(),
    })
}

/// Prints the human report.
pub fn print_human(report: &DemoReport, to_stderr: bool) {
    let mut text = String::new();
    text.push_str(&format!(
        "orderly demo: {} orders, {} completed, {} rejected in {:.2}s ({} store, {} shards on {} arbiters)\n",
        report.orders, report.completed, report.rejected, report.elapsed_s, report.store, report.shards, report.arbiters
    ));
    text.push_str(&format!(
        "  throughput: {:.0} lifecycles/s, {:.0} commands/s\n",
        report.orders_per_sec, report.commands_per_sec
    ));
    for (step, p) in &report.latency_ms {
        text.push_str(&format!(
            "  {step:<8} p50 {:>8.3} ms  p99 {:>8.3} ms  p99.9 {:>8.3} ms  max {:>8.3} ms\n",
            p.p50, p.p99, p.p999, p.max
        ));
    }
    text.push_str(&format!(
        "  O = {} items, P = {} USD, R = {:.4}\n  live orders {}, RSS {:.1} MiB (peak {:.1} MiB)\n",
        report.order_count_o,
        report.order_value_p,
        report.payment_success_rate_r,
        report.live_orders,
        report.rss_bytes as f64 / 1048576.0,
        report.peak_rss_bytes as f64 / 1048576.0
    ));
    if !report.errors.is_empty() {
        text.push_str(&format!("  errors: {:?}\n", report.errors));
    }
    if to_stderr {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}
