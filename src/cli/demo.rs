//! `orderly demo`: N orders through place → pay → ship → deliver, in-process, with a progress
//! bar on stderr and a final report (human, and with `--json` one JSON object as the last line
//! of stdout).
//!
//! The driver keeps `--concurrency` batches of `--batch` orders in flight. Each order's steps
//! are sequential (a step starts only after the previous one was acknowledged, i.e. durable), as
//! a real client's would be; throughput comes from many orders in flight, not from skipping
//! acknowledgements.
//!
//! Payments go through the gateway actors (`--gateway`, `--fault-profile`). A `pay` answers
//! once the gateway's first verdict is durable; an order left in `payment_processing` (its
//! outcome unknown and being queried) is polled until it settles (bounded by
//! `--settle-timeout-ms`), and an order back in `pending_payment` after a soft decline, a
//! reversal or a call that was never sent pays again, at most `--pay-tries` times in all; a
//! hard decline is final. The report's `payments` section carries the gateways' counts and
//! the double charges counted on the gateway side.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
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
    /// Orders per engine call (one message per arbiter thread per call). The default keeps
    /// 8,192 orders in flight (`--batch` × `--concurrency`): enough to fill large fenced
    /// batches, few enough that a lifecycle step waits tens of milliseconds, not hundreds.
    #[arg(long, default_value_t = 256)]
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
    /// Which gateway takes the payments: `card`, `alipay` or `wechat` (every order pays with
    /// that method on its simulated gateway), `mix` (methods rotate over the three), or `http`
    /// (every method through the HTTP gateway, see `--gateway-url`).
    #[arg(long, value_parser = ["card", "alipay", "wechat", "mix", "http"], default_value = "mix")]
    pub gateway: String,
    /// Fault profile of the simulated gateways (`healthy`, `flaky`, `outage`, `slow`, or any
    /// `[payments.fault_profiles.NAME]`); default: the config's.
    #[arg(long, value_name = "NAME")]
    pub fault_profile: Option<String>,
    /// Base URL of the payment service for `--gateway http` (overrides `[gateways.http]`).
    #[arg(long, value_name = "URL")]
    pub gateway_url: Option<String>,
    /// Most `pay` commands per order (a soft decline, reversal or unsent charge pays again).
    #[arg(long, default_value_t = 3)]
    pub pay_tries: u32,
    /// Longest wait for an order whose payment outcome is unknown to settle.
    #[arg(long, default_value_t = 60_000)]
    pub settle_timeout_ms: u64,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// How often an order whose payment outcome is unknown is read again.
const SETTLE_POLL: Duration = Duration::from_millis(100);

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
    pay_commands: u64,
    declined_hard: u64,
    unsettled: u64,
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
            pay_commands: 0,
            declined_hard: 0,
            unsettled: 0,
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
    /// Most orders in flight at once (`--batch` × `--concurrency`): batching never buys
    /// throughput with more queueing than this.
    pub in_flight_max: u64,
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
    /// Payments: gateway attempts, retries, unknown outcomes, reversals, reviews, declines,
    /// and the double charges the gateway side counted (must be 0).
    pub payments: PaymentsReport,
}

/// The payments part of the demo report.
#[derive(Debug, Default, Serialize)]
pub struct PaymentsReport {
    /// `--gateway`.
    pub gateway: String,
    /// Fault profile of the simulated gateways.
    pub fault_profile: String,
    /// `pay` commands sent by the driver.
    pub pay_commands: u64,
    /// Payment attempts handed to gateways.
    pub attempts: u64,
    /// Attempts per placed order.
    pub attempts_per_order: f64,
    /// Retries of gateway calls that were not sent.
    pub retries: u64,
    /// Attempts whose outcome was unknown after the charge call.
    pub unknown: u64,
    /// Status queries made.
    pub queries: u64,
    /// Attempts reversed after their outcome stayed unknown.
    pub reversed: u64,
    /// Attempts and refunds left for review.
    pub needs_review: u64,
    /// Attempts declined.
    pub declined: u64,
    /// Orders whose last attempt was declined for good (not paid again).
    pub declined_hard_orders: u64,
    /// Attempts never sent within the retry budget.
    pub not_sent: u64,
    /// Orders still in payment_processing when the settle timeout ran out.
    pub unsettled: u64,
    /// Times a gateway's circuit breaker opened.
    pub breaker_opened: u64,
    /// Charges the gateway side recorded (distinct idempotency keys).
    pub gateway_charges: u64,
    /// Repeated keys the gateway side answered from its records instead of charging.
    pub duplicates_refused: u64,
    /// Orders charged more than once, counted by the gateway side. Must be 0.
    pub double_charges: u64,
    /// Per-gateway statistics.
    pub gateways: Vec<crate::gateway::GatewayStats>,
}

/// A deterministic, varied order: 1–3 lines, quantities 1–4, a handful of prices; paid with
/// `method`, or the methods in rotation.
fn make_order(n: u64, method: Option<PaymentMethod>) -> NewOrder {
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
        payment_method: method.unwrap_or(PaymentMethod::ALL[(n % 3) as usize]),
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

/// How the driver pays.
#[derive(Clone, Copy)]
struct PayPlan {
    method: Option<PaymentMethod>,
    tries: u32,
    settle_timeout: Duration,
}

/// Where an order stands after a `pay` answer or a read.
enum PayState {
    Paid,
    Processing,
    /// Back in pending_payment after something the customer may retry.
    Retry,
    /// Declined for good, on hold, or anything else: not paid in this run.
    GiveUp {
        declined_hard: bool,
    },
}

fn pay_state(order: &crate::domain::Order) -> PayState {
    match order.status {
        OrderStatus::Paid => PayState::Paid,
        OrderStatus::PaymentProcessing => PayState::Processing,
        OrderStatus::PendingPayment => {
            let hard = order
                .payments
                .last()
                .is_some_and(|a| a.status == crate::domain::AttemptStatus::DeclinedHard);
            if hard {
                PayState::GiveUp {
                    declined_hard: true,
                }
            } else {
                PayState::Retry
            }
        }
        _ => PayState::GiveUp {
            declined_hard: false,
        },
    }
}

/// Pays `orders` (tries, polls unknown outcomes until they settle) and returns the paid ones.
async fn pay_all(
    engine: &Engine,
    tally: &RefCell<Tally>,
    orders: Vec<OrderId>,
    plan: PayPlan,
) -> Vec<OrderId> {
    let mut paid = Vec::with_capacity(orders.len());
    let mut to_pay = orders;
    for _ in 0..plan.tries.max(1) {
        if to_pay.is_empty() {
            break;
        }
        let items = to_pay
            .iter()
            .map(|id| BatchItem::command(*id, Command::StartPayment { method: None }))
            .collect();
        tally.borrow_mut().pay_commands += to_pay.len() as u64;
        let results = run_batch(engine, tally, 1, items).await;
        let mut processing = Vec::new();
        let mut retry = Vec::new();
        let mut sort = |id: OrderId,
                        order: &crate::domain::Order,
                        processing: &mut Vec<OrderId>,
                        paid: &mut Vec<OrderId>| match pay_state(order) {
            PayState::Paid => {
                tally.borrow_mut().value_paid_minor += order.paid_minor;
                paid.push(id);
            }
            PayState::Processing => processing.push(id),
            PayState::Retry => retry.push(id),
            PayState::GiveUp { declined_hard } => {
                tally.borrow_mut().declined_hard += u64::from(declined_hard);
            }
        };
        for (id, result) in to_pay.iter().zip(results) {
            if let Ok(outcome) = result {
                sort(*id, &outcome.order, &mut processing, &mut paid);
            }
        }
        // Unknown outcomes settle by themselves (query, then reverse): wait for them, bounded.
        let deadline = Instant::now() + plan.settle_timeout;
        while !processing.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(SETTLE_POLL).await;
            let reads = processing
                .iter()
                .map(|id| BatchItem::existing(*id, crate::engine::Request::Read))
                .collect();
            let answers = engine.execute_batch(reads, Admission::Wait).await;
            let waiting = std::mem::take(&mut processing);
            for (id, result) in waiting.iter().zip(answers) {
                match result {
                    Ok(outcome) => sort(*id, &outcome.order, &mut processing, &mut paid),
                    // A read that failed is retried at the next poll.
                    Err(_) => processing.push(*id),
                }
            }
        }
        tally.borrow_mut().unsettled += processing.len() as u64;
        to_pay = retry;
    }
    paid
}

/// Runs one batch of orders through the lifecycle.
async fn lifecycle(
    engine: &Engine,
    tally: &RefCell<Tally>,
    first: u64,
    count: u64,
    last_step: usize,
    plan: PayPlan,
) {
    let ids: Vec<OrderId> = (0..count).map(|_| OrderId::new()).collect();
    let place = ids
        .iter()
        .enumerate()
        .map(|(i, id)| BatchItem::place(*id, make_order(first + i as u64, plan.method)))
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
    if last_step >= 1 {
        alive = pay_all(engine, tally, alive, plan).await;
    }
    let steps: [Step; 2] = [
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
    let mut settings = args.common.settings()?;
    if let Some(profile) = &args.fault_profile {
        anyhow::ensure!(
            settings.payments.fault_profiles.contains_key(profile),
            "unknown fault profile {profile:?} (configured: {:?})",
            settings.payments.fault_profiles.keys().collect::<Vec<_>>()
        );
        settings.payments.fault_profile = profile.clone();
        // The flag wins over profiles pinned per gateway.
        for gateway in settings.gateways.values_mut() {
            gateway.fault_profile.clear();
        }
    }
    let method = match args.gateway.as_str() {
        "http" => {
            if let Some(url) = &args.gateway_url {
                let http = settings
                    .gateways
                    .get_mut("http")
                    .context("no [gateways.http] configured")?;
                http.base_url = url.clone();
            }
            settings.payments.routes = crate::config::PaymentRoutes::all_to("http");
            None
        }
        "mix" => None,
        name => PaymentMethod::parse(name),
    };
    let plan = PayPlan {
        method,
        tries: args.pay_tries.clamp(1, 100),
        settle_timeout: Duration::from_millis(args.settle_timeout_ms),
    };
    let store_url = settings.store.url.clone();
    let orderly = crate::app::Orderly::start(settings.clone())
        .await
        .with_context(|| format!("opening store {store_url}"))?;
    let engine = orderly.engine.clone();
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
                lifecycle(&engine, &tally, first, count, last_step, plan).await;
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
    let gateways = engine.gateway_stats().await;
    engine.shutdown().await;
    let t = tally.borrow();
    let mut payments = PaymentsReport {
        gateway: args.gateway.clone(),
        // An external payment service injects its own faults, whatever the config says.
        fault_profile: if args.gateway == "http" {
            "external".into()
        } else {
            settings.payments.fault_profile.clone()
        },
        pay_commands: t.pay_commands,
        declined_hard_orders: t.declined_hard,
        unsettled: t.unsettled,
        ..PaymentsReport::default()
    };
    for g in &gateways {
        payments.attempts += g.attempts;
        payments.retries += g.retries;
        payments.unknown += g.unknown;
        payments.queries += g.queries;
        payments.reversed += g.reversed;
        payments.needs_review += g.needs_review;
        payments.declined += g.declined;
        payments.not_sent += g.not_sent;
        payments.breaker_opened += g.breaker_transitions.opened;
        if let Some(audit) = g.audit {
            payments.gateway_charges += audit.charges;
            payments.duplicates_refused += audit.duplicates_refused;
            payments.double_charges += audit.double_charges;
        }
    }
    payments.attempts_per_order = payments.attempts as f64 / args.orders.max(1) as f64;
    payments.gateways = gateways;
    let secs = elapsed.as_secs_f64();
    let value = Money::from_minor_units(t.value_total_minor, Currency::USD)
        .unwrap_or_else(|_| Money::zero(Currency::USD));
    Ok(DemoReport {
        orders: args.orders,
        completed: t.completed,
        in_flight_max: batch * args.concurrency.clamp(1, 4096) as u64,
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
        store: orderly.store.kind(),
        until: args.until.clone(),
        shards: settings.engine.shards,
        arbiters: settings.arbiter_count(),
        live_orders,
        rss_bytes,
        peak_rss_bytes,
        errors: t.errors.clone(),
        payments,
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
        "  throughput: {:.0} lifecycles/s, {:.0} commands/s, at most {} orders in flight\n",
        report.orders_per_sec, report.commands_per_sec, report.in_flight_max
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
    let p = &report.payments;
    text.push_str(&format!(
        "  payments ({} gateway, {} faults): {} attempts ({:.3}/order), {} retries, {} unknown, {} queries, {} reversed, {} needs review, {} declined ({} orders for good), {} never sent, {} unsettled, breaker opened {}x\n  gateway side: {} charges, {} duplicates refused, {} double charges\n",
        p.gateway, p.fault_profile, p.attempts, p.attempts_per_order, p.retries, p.unknown, p.queries, p.reversed, p.needs_review, p.declined, p.declined_hard_orders, p.not_sent, p.unsettled, p.breaker_opened, p.gateway_charges, p.duplicates_refused, p.double_charges
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
