//! `GET /v1/stats`: the compact figures the dashboard draws (rates, percentiles, gauges and the
//! last minutes as series), derived from the same metrics `/metrics` exposes.
//!
//! A sampler reads the exposition once a second (rendering and parsing it costs well under a
//! millisecond, whatever the number of orders: no metric has an order-id label) and keeps the
//! last [`SAMPLES_MAX`] samples, reduced to the few aggregates the page needs. Rates are
//! differences of counters between samples and percentiles come from histogram bucket
//! differences over the window, interpolated like PromQL's `histogram_quantile`, so the numbers
//! agree with what Prometheus computes from the same series.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use actix_web::{get, web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::ApiState;
use crate::domain::{Currency, OrderStatus};
use crate::store::SnapshotStore;
use crate::telemetry;

/// Samples kept: five minutes at one a second.
pub(crate) const SAMPLES_MAX: usize = 300;
/// How often the sampler reads the metrics.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The window of the rates and percentiles.
const WINDOW: Duration = Duration::from_secs(10);
/// How long the store's ping may take before it counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Gateway call outcomes that are failures of the call itself (not business answers such as
/// a decline).
const ERROR_OUTCOMES: &[&str] = &[
    "unknown",
    "not_sent",
    "rejected",
    "short_circuited",
    "failed",
    "unresolved",
];

/// Cumulative bucket counts of a histogram: (upper bound, count ≤ bound), ending with +Inf.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets(Vec<(f64, f64)>);

impl Buckets {
    fn add(&mut self, le: f64, count: f64) {
        match self.0.iter_mut().find(|(b, _)| *b == le) {
            Some(slot) => slot.1 += count,
            None => {
                self.0.push((le, count));
                self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// `self - earlier`, bucket by bucket (a bucket missing earlier counts from zero).
    fn since(&self, earlier: Option<&Buckets>) -> Buckets {
        let before = |le: f64| {
            earlier
                .and_then(|e| e.0.iter().find(|(b, _)| *b == le))
                .map_or(0.0, |(_, c)| *c)
        };
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| (le, (c - before(le)).max(0.0)))
                .collect(),
        )
    }

    fn total(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile in seconds, interpolated linearly within its bucket (as PromQL's
    /// `histogram_quantile`); None without observations. Past the highest finite bound it
    /// answers that bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, count) in &self.0 {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let in_bucket = count - below;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower + (le - lower) * (rank - below) / in_bucket);
            }
            lower = le;
            below = count;
        }
        Some(lower)
    }
}

/// What one gateway's series said at one sample.
#[derive(Debug, Clone, Default)]
struct GatewaySample {
    breaker: f64,
    calls: f64,
    errors: f64,
    retries: f64,
    call_seconds: Buckets,
}

/// The aggregates of one reading of the exposition.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Option<Instant>,
    at_ms: i64,
    orders_placed: f64,
    commands: f64,
    rejections: f64,
    http_requests: f64,
    http_errors: f64,
    overload: f64,
    timers_fired: f64,
    webhooks_delivered: f64,
    webhooks_dead: f64,
    order_items: f64,
    command_seconds: Buckets,
    command_seconds_by: HashMap<String, Buckets>,
    commit_seconds: Buckets,
    http_seconds: Buckets,
    timer_lag_seconds: Buckets,
    /// Per currency code: (placed, paid, refunded), minor units.
    money: HashMap<String, (f64, f64, f64)>,
    gateways: HashMap<String, GatewaySample>,
    live_actors: f64,
    by_status: [f64; OrderStatus::ALL.len()],
    timers_armed: f64,
    timers_overdue: f64,
    webhook_backlog: f64,
    store_up: bool,
    rss_bytes: f64,
    cpu_seconds: f64,
}

/// Splits `name{a="x",b="y"} value` into its parts (label values unescaped only for `\"`
/// and `\\`, enough for the labels Orderly emits).
/// A parsed exposition line: name, labels, value.
type Line<'a> = (&'a str, Vec<(&'a str, String)>, f64);

fn parse_line(line: &str) -> Option<Line<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series, Vec::new(), value));
    };
    let mut rest = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    while !rest.is_empty() {
        let eq = rest.find("=\"")?;
        let key = rest[..eq].trim_start_matches(',');
        let mut text = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest[eq + 2..].char_indices() {
            if escaped {
                text.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(eq + 2 + i);
                break;
            } else {
                text.push(c);
            }
        }
        labels.push((key, text));
        rest = &rest[end? + 1..];
    }
    Some((name, labels, value))
}

fn label<'a>(labels: &'a [(&str, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
}

fn bound(labels: &[(&str, String)]) -> Option<f64> {
    match label(labels, "le")? {
        "+Inf" => Some(f64::INFINITY),
        le => le.parse().ok(),
    }
}

impl Sample {
    /// Reduces an exposition to the aggregates.
    fn parse(text: &str) -> Sample {
        let mut s = Sample::default();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((name, labels, value)) = parse_line(line) else {
                continue;
            };
            s.add(name, &labels, value);
        }
        s
    }

    fn add(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        let l = |key| label(labels, key);
        match name {
            "orderly_commands_total" => {
                self.commands += value;
                if l("outcome") == Some("rejected") {
                    self.rejections += value;
                }
                if l("command") == Some("place") && l("outcome") == Some("ok") {
                    self.orders_placed += value;
                }
            }
            "orderly_http_requests_total" => {
                self.http_requests += value;
                if l("status") == Some("5xx") {
                    self.http_errors += value;
                }
            }
            "orderly_overload_rejections_total" => self.overload += value,
            "orderly_timers_fired_total" if l("outcome") == Some("fired") => {
                self.timers_fired += value
            }
            "orderly_webhook_deliveries_total" => match l("outcome") {
                Some("delivered") => self.webhooks_delivered += value,
                Some("dead_lettered") => self.webhooks_dead += value,
                _ => {}
            },
            "orderly_order_items_total" => self.order_items += value,
            "orderly_command_duration_seconds_bucket" => {
                if let Some(le) = bound(labels) {
                    self.command_seconds.add(le, value);
                    if let Some(verb) = l("command") {
                        self.command_seconds_by
                            .entry(verb.to_string())
                            .or_default()
                            .add(le, value);
                    }
                }
            }
            "orderly_commit_batch_duration_seconds_bucket" => {
                if let Some(le) = bound(labels) {
                    self.commit_seconds.add(le, value);
                }
            }
            "orderly_http_request_duration_seconds_bucket" => {
                if let Some(le) = bound(labels) {
                    self.http_seconds.add(le, value);
                }
            }
            "orderly_timer_lag_seconds_bucket" => {
                if let Some(le) = bound(labels) {
                    self.timer_lag_seconds.add(le, value);
                }
            }
            "orderly_order_value_minor_total"
            | "orderly_paid_value_minor_total"
            | "orderly_refunded_value_minor_total" => {
                if let Some(currency) = l("currency") {
                    let slot = self.money.entry(currency.to_string()).or_default();
                    match name {
                        "orderly_order_value_minor_total" => slot.0 += value,
                        "orderly_paid_value_minor_total" => slot.1 += value,
                        _ => slot.2 += value,
                    }
                }
            }
            "orderly_gateway_breaker_state"
            | "orderly_gateway_calls_total"
            | "orderly_payment_retries_total"
            | "orderly_gateway_call_duration_seconds_bucket" => {
                let Some(gateway) = l("gateway") else {
                    return;
                };
                let g = self.gateways.entry(gateway.to_string()).or_default();
                match name {
                    "orderly_gateway_breaker_state" => g.breaker = value,
                    "orderly_gateway_calls_total" => {
                        g.calls += value;
                        if l("outcome").is_some_and(|o| ERROR_OUTCOMES.contains(&o)) {
                            g.errors += value;
                        }
                    }
                    "orderly_payment_retries_total" => g.retries += value,
                    _ => {
                        if let Some(le) = bound(labels) {
                            g.call_seconds.add(le, value);
                        }
                    }
                }
            }
            "orderly_live_orders" => self.live_actors += value,
            "orderly_orders" => {
                if let Some(status) = l("status")
                    .and_then(|name| OrderStatus::ALL.iter().find(|s| s.as_str() == name))
                {
                    self.by_status[status.index()] += value;
                }
            }
            "orderly_timers_armed" => self.timers_armed += value,
            "orderly_timers_overdue" => self.timers_overdue += value,
            "orderly_webhook_backlog_entries" => self.webhook_backlog += value,
            _ => {}
        }
    }
}

/// The samples of the last minutes and the sampler's state.
pub(crate) struct Stats {
    started: Instant,
    node_id: String,
    store: &'static str,
    samples: Mutex<VecDeque<Sample>>,
}

impl Stats {
    /// Starts the sampler on the current actix system: it reads the metrics of `handle` and
    /// pings `store` once a second, until the returned value is dropped.
    pub(crate) fn start(
        handle: Option<PrometheusHandle>,
        store: Arc<dyn SnapshotStore>,
        node_id: String,
    ) -> Arc<Stats> {
        let stats = Arc::new(Stats {
            started: Instant::now(),
            node_id,
            store: store.kind(),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES_MAX + 1)),
        });
        if let Some(handle) = handle {
            let weak = Arc::downgrade(&stats);
            actix_rt::spawn(sample_every_second(weak, handle, store));
        }
        stats
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back(sample);
        while samples.len() > SAMPLES_MAX {
            samples.pop_front();
        }
    }

    /// The answer of `/v1/stats` from the samples so far (None before the first sample).
    fn report(&self) -> Option<StatsReport> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let last = samples.back()?;
        let last_at = last.at?;
        // The window starts at the newest sample at least WINDOW old (or the oldest one).
        let first = samples
            .iter()
            .rev()
            .find(|s| s.at.is_some_and(|at| last_at.duration_since(at) >= WINDOW))
            .or_else(|| samples.front())?;
        Some(report(self, first, last, &samples))
    }
}

async fn sample_every_second(
    stats: Weak<Stats>,
    handle: PrometheusHandle,
    store: Arc<dyn SnapshotStore>,
) {
    let mut next = Instant::now();
    loop {
        let up = matches!(
            tokio::time::timeout(PING_TIMEOUT, store.ping()).await,
            Ok(Ok(()))
        );
        telemetry::record_store_up(store.kind(), up);
        let Some(stats) = stats.upgrade() else {
            return;
        };
        stats.push(take_sample(&handle, up));
        drop(stats);
        next += SAMPLE_INTERVAL;
        let now = Instant::now();
        if next < now {
            next = now + SAMPLE_INTERVAL;
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

fn take_sample(handle: &PrometheusHandle, store_up: bool) -> Sample {
    telemetry::sample();
    let mut sample = Sample::parse(&handle.render());
    sample.at = Some(Instant::now());
    sample.at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    sample.store_up = store_up;
    if let Some(process) = telemetry::process::read() {
        sample.rss_bytes = process.resident_bytes as f64;
        sample.cpu_seconds = process.cpu_seconds;
    }
    sample
}

/// p50 and p99 in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub(crate) struct Percentiles {
    /// Median, ms (null without observations in the window).
    p50: Option<f64>,
    /// 99th percentile, ms.
    p99: Option<f64>,
}

impl Percentiles {
    fn of(buckets: &Buckets) -> Percentiles {
        let ms = |q| buckets.quantile(q).map(|s| round3(s * 1000.0));
        Percentiles {
            p50: ms(0.5),
            p99: ms(0.99),
        }
    }
}

/// Per-second rates over the window.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Rates {
    /// Orders placed (`orderly_commands_total{command="place",outcome="ok"}`).
    orders_per_s: f64,
    /// Commands answered, every verb and outcome.
    commands_per_s: f64,
    http_requests_per_s: f64,
    /// HTTP answers with a 5xx status.
    http_errors_per_s: f64,
    /// Commands refused by the domain (outcome `rejected`).
    rejections_per_s: f64,
    /// Commands refused for overload.
    overload_per_s: f64,
    timers_fired_per_s: f64,
    webhooks_delivered_per_s: f64,
}

/// Latency over the window.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Latencies {
    /// Every command, end to end in the engine.
    command: Percentiles,
    /// Commit batches (store write).
    commit: Percentiles,
    /// HTTP until the response head, every route.
    http: Percentiles,
    /// Per command verb seen in the window.
    by_command: HashMap<String, Percentiles>,
}

/// Totals since the process started.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Totals {
    orders_placed: u64,
    commands: u64,
    /// O: items of placed orders.
    order_items: u64,
    http_requests: u64,
}

/// Orders now.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct OrdersNow {
    /// Live order actors.
    live_actors: u64,
    /// Orders in each status across the store (the shards this node owns).
    by_status: HashMap<&'static str, i64>,
}

/// Money of one currency (minor units; never added across currencies).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CurrencyStats {
    currency: String,
    /// Decimal places of the minor unit.
    minor_units: u32,
    /// P: value placed.
    placed_minor: u64,
    paid_minor: u64,
    refunded_minor: u64,
    /// R = paid / placed since start (null when nothing was placed).
    success_rate: Option<f64>,
    /// R over the window (null when nothing was placed in it).
    success_rate_window: Option<f64>,
}

/// One gateway's health.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GatewayHealth {
    gateway: String,
    /// `closed`, `half_open` or `open`.
    breaker: &'static str,
    calls_per_s: f64,
    /// Calls that failed as calls (timeouts, unknown outcomes, refusals, short circuits).
    errors_per_s: f64,
    retries_per_s: f64,
    /// p99 of one call, ms (null without calls in the window).
    call_p99_ms: Option<f64>,
}

/// The process.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ProcessStats {
    rss_bytes: u64,
    /// CPU over the window, percent of one core.
    cpu_percent: f64,
}

/// Durable timers.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TimerStats {
    armed: u64,
    overdue: u64,
    /// p99 of the lag from due time to firing over the window, ms.
    lag_p99_ms: Option<f64>,
    fired_per_s: f64,
}

/// Webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct WebhookStats {
    /// Outbox entries not yet acknowledged by the receivers.
    backlog: u64,
    dead_lettered_total: u64,
    delivered_per_s: f64,
}

/// One point per second, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Series {
    /// Unix ms of each point.
    t_ms: Vec<i64>,
    orders_per_s: Vec<f64>,
    commands_per_s: Vec<f64>,
    /// Command latency p50 of that second, ms (null without commands).
    p50_ms: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
    rss_bytes: Vec<u64>,
    live_actors: Vec<u64>,
}

/// The answer of `GET /v1/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StatsReport {
    /// Unix ms of the newest sample.
    at_ms: i64,
    uptime_s: f64,
    /// Length of the window of the rates and percentiles, seconds.
    window_s: f64,
    /// `memory` or `redis`.
    store: &'static str,
    node_id: String,
    rates: Rates,
    latency_ms: Latencies,
    totals: Totals,
    orders: OrdersNow,
    /// Currencies with placed value, largest first.
    currencies: Vec<CurrencyStats>,
    gateways: Vec<GatewayHealth>,
    process: ProcessStats,
    timers: TimerStats,
    webhooks: WebhookStats,
    /// Whether the store answered its last ping.
    store_up: bool,
    series: Series,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rate(later: f64, earlier: f64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    round3((later - earlier).max(0.0) / seconds)
}

fn breaker_name(gauge: f64) -> &'static str {
    if gauge >= 2.0 {
        "open"
    } else if gauge >= 1.0 {
        "half_open"
    } else {
        "closed"
    }
}

fn report(stats: &Stats, first: &Sample, last: &Sample, samples: &VecDeque<Sample>) -> StatsReport {
    let seconds = match (first.at, last.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let r = |later: f64, earlier: f64| rate(later, earlier, seconds);
    let by_command = last
        .command_seconds_by
        .iter()
        .filter_map(|(verb, buckets)| {
            let window = buckets.since(first.command_seconds_by.get(verb));
            (window.total() > 0.0).then(|| (verb.clone(), Percentiles::of(&window)))
        })
        .collect();
    let mut currencies: Vec<CurrencyStats> = last
        .money
        .iter()
        .filter(|(_, (placed, ..))| *placed > 0.0)
        .map(|(code, &(placed, paid, refunded))| {
            let (placed_before, paid_before, _) =
                first.money.get(code).copied().unwrap_or_default();
            let placed_window = placed - placed_before;
            CurrencyStats {
                currency: code.clone(),
                minor_units: Currency::parse(code).map_or(2, |c| c.exponent()),
                placed_minor: placed as u64,
                paid_minor: paid as u64,
                refunded_minor: refunded as u64,
                success_rate: (placed > 0.0).then(|| round3(paid / placed)),
                success_rate_window: (placed_window > 0.0)
                    .then(|| round3((paid - paid_before) / placed_window)),
            }
        })
        .collect();
    currencies.sort_by_key(|c| std::cmp::Reverse(c.placed_minor));
    let mut gateways: Vec<GatewayHealth> = last
        .gateways
        .iter()
        .map(|(name, g)| {
            let before = first.gateways.get(name).cloned().unwrap_or_default();
            GatewayHealth {
                gateway: name.clone(),
                breaker: breaker_name(g.breaker),
                calls_per_s: r(g.calls, before.calls),
                errors_per_s: r(g.errors, before.errors),
                retries_per_s: r(g.retries, before.retries),
                call_p99_ms: g
                    .call_seconds
                    .since(Some(&before.call_seconds))
                    .quantile(0.99)
                    .map(|s| round3(s * 1000.0)),
            }
        })
        .collect();
    gateways.sort_by(|a, b| a.gateway.cmp(&b.gateway));
    let mut series = Series {
        t_ms: Vec::with_capacity(samples.len()),
        orders_per_s: Vec::with_capacity(samples.len()),
        commands_per_s: Vec::with_capacity(samples.len()),
        p50_ms: Vec::with_capacity(samples.len()),
        p99_ms: Vec::with_capacity(samples.len()),
        rss_bytes: Vec::with_capacity(samples.len()),
        live_actors: Vec::with_capacity(samples.len()),
    };
    for (earlier, later) in samples.iter().zip(samples.iter().skip(1)) {
        let dt = match (earlier.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => continue,
        };
        let second = later.command_seconds.since(Some(&earlier.command_seconds));
        let p = Percentiles::of(&second);
        series.t_ms.push(later.at_ms);
        series
            .orders_per_s
            .push(rate(later.orders_placed, earlier.orders_placed, dt));
        series
            .commands_per_s
            .push(rate(later.commands, earlier.commands, dt));
        series.p50_ms.push(p.p50);
        series.p99_ms.push(p.p99);
        series.rss_bytes.push(later.rss_bytes as u64);
        series.live_actors.push(later.live_actors.max(0.0) as u64);
    }
    StatsReport {
        at_ms: last.at_ms,
        uptime_s: round3(stats.started.elapsed().as_secs_f64()),
        window_s: round3(seconds),
        store: stats.store,
        node_id: stats.node_id.clone(),
        rates: Rates {
            orders_per_s: r(last.orders_placed, first.orders_placed),
            commands_per_s: r(last.commands, first.commands),
            http_requests_per_s: r(last.http_requests, first.http_requests),
            http_errors_per_s: r(last.http_errors, first.http_errors),
            rejections_per_s: r(last.rejections, first.rejections),
            overload_per_s: r(last.overload, first.overload),
            timers_fired_per_s: r(last.timers_fired, first.timers_fired),
            webhooks_delivered_per_s: r(last.webhooks_delivered, first.webhooks_delivered),
        },
        latency_ms: Latencies {
            command: Percentiles::of(&last.command_seconds.since(Some(&first.command_seconds))),
            commit: Percentiles::of(&last.commit_seconds.since(Some(&first.commit_seconds))),
            http: Percentiles::of(&last.http_seconds.since(Some(&first.http_seconds))),
            by_command,
        },
        totals: Totals {
            orders_placed: last.orders_placed as u64,
            commands: last.commands as u64,
            order_items: last.order_items as u64,
            http_requests: last.http_requests as u64,
        },
        orders: OrdersNow {
            live_actors: last.live_actors.max(0.0) as u64,
            by_status: OrderStatus::ALL
                .iter()
                .map(|s| (s.as_str(), last.by_status[s.index()] as i64))
                .collect(),
        },
        currencies,
        gateways,
        process: ProcessStats {
            rss_bytes: last.rss_bytes as u64,
            cpu_percent: if seconds > 0.0 {
                round3((last.cpu_seconds - first.cpu_seconds).max(0.0) * 100.0 / seconds)
            } else {
                0.0
            },
        },
        timers: TimerStats {
            armed: last.timers_armed.max(0.0) as u64,
            overdue: last.timers_overdue.max(0.0) as u64,
            lag_p99_ms: last
                .timer_lag_seconds
                .since(Some(&first.timer_lag_seconds))
                .quantile(0.99)
                .map(|s| round3(s * 1000.0)),
            fired_per_s: r(last.timers_fired, first.timers_fired),
        },
        webhooks: WebhookStats {
            backlog: last.webhook_backlog.max(0.0) as u64,
            dead_lettered_total: last.webhooks_dead as u64,
            delivered_per_s: r(last.webhooks_delivered, first.webhooks_delivered),
        },
        store_up: last.store_up,
        series,
    }
}

/// Current rates, percentiles and gauges, and the last minutes as per-second series, for the
/// dashboard at `/` (and for scripts that want figures without a Prometheus).
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "The figures of the last window", body = StatsReport),
    (status = 503, description = "No metrics recorder in this process, or no sample yet", body = ErrorBody),
))]
#[get("/v1/stats")]
pub(crate) async fn get_stats(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let report = state.stats.report().ok_or(ApiError::MetricsUnavailable)?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_with_labels_and_escapes() {
        let (name, labels, value) =
            parse_line(r#"orderly_x_bucket{a="1",route="/v1/{id}",le="+Inf"} 42"#).unwrap();
        assert_eq!(name, "orderly_x_bucket");
        assert_eq!(label(&labels, "a"), Some("1"));
        assert_eq!(label(&labels, "route"), Some("/v1/{id}"));
        assert_eq!(bound(&labels), Some(f64::INFINITY));
        assert_eq!(value, 42.0);
        let (_, labels, _) = parse_line(r#"m{k="a\"b",j="c"} 1"#).unwrap();
        assert_eq!(label(&labels, "k"), Some("a\"b"));
        assert_eq!(label(&labels, "j"), Some("c"));
        let (name, labels, value) = parse_line("plain 3.5").unwrap();
        assert_eq!((name, labels.len(), value), ("plain", 0, 3.5));
    }

    #[test]
    fn quantiles_interpolate_like_histogram_quantile() {
        let mut b = Buckets::default();
        for (le, c) in [
            (0.001, 50.0),
            (0.01, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ] {
            b.add(le, c);
        }
        // Rank 50 is the top of the first bucket; rank 99 is 9/10 into the third.
        assert!((b.quantile(0.5).unwrap() - 0.001).abs() < 1e-12);
        assert!((b.quantile(0.99).unwrap() - (0.01 + 0.09 * 0.9)).abs() < 1e-12);
        assert_eq!(Buckets::default().quantile(0.5), None);
        let earlier = b.clone();
        assert_eq!(b.since(Some(&earlier)).quantile(0.5), None);
    }

    #[test]
    fn a_sample_sums_the_series_it_needs() {
        let text = "\
# TYPE orderly_commands_total counter
orderly_commands_total{command=\"place\",outcome=\"ok\"} 10
orderly_commands_total{command=\"pay\",outcome=\"rejected\"} 2
orderly_orders{status=\"paid\"} 4
orderly_paid_value_minor_total{currency=\"USD\"} 700
orderly_gateway_calls_total{gateway=\"card\",operation=\"charge\",outcome=\"unknown\"} 3
orderly_gateway_calls_total{gateway=\"card\",operation=\"charge\",outcome=\"succeeded\"} 5
";
        let s = Sample::parse(text);
        assert_eq!(s.orders_placed, 10.0);
        assert_eq!(s.commands, 12.0);
        assert_eq!(s.rejections, 2.0);
        assert_eq!(s.by_status[OrderStatus::Paid.index()], 4.0);
        assert_eq!(s.money["USD"].1, 700.0);
        assert_eq!(s.gateways["card"].calls, 8.0);
        assert_eq!(s.gateways["card"].errors, 3.0);
    }
}
