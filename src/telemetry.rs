//! Every metric Orderly emits: names (constants), descriptions and histogram buckets live here
//! and nowhere else. Names follow `orderly_<name>_<unit>` (`_total` for counters); labels are
//! low-cardinality (command verb, outcome, gateway, store kind), never an order id.
//!
//! Hot paths aggregate locally and emit once per commit batch, so a command costs no metrics
//! lookups of its own.

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

/// Commands answered, by `command` verb and `outcome` (`ok`, `duplicate`, `rejected`, `error`).
pub const COMMANDS_TOTAL: &str = "orderly_commands_total";
/// Snapshots written by group commit.
pub const SNAPSHOTS_WRITTEN_TOTAL: &str = "orderly_snapshots_written_total";
/// Shard lease events, by `event` ([`LeaseEvent`]).
pub const LEASE_EVENTS_TOTAL: &str = "orderly_shard_lease_events_total";
/// Shards whose lease this node holds now.
pub const SHARDS_OWNED: &str = "orderly_shards_owned";
/// Commit batches that failed in the store.
pub const COMMIT_FAILURES_TOTAL: &str = "orderly_commit_failures_total";
/// Snapshots per commit batch.
pub const COMMIT_BATCH_SIZE: &str = "orderly_commit_batch_size";
/// Commit batches that waited `[commit] flush_interval_us` for more snapshots.
pub const COMMIT_LINGERS_TOTAL: &str = "orderly_commit_lingers_total";
/// Store write latency of one commit batch.
pub const COMMIT_BATCH_SECONDS: &str = "orderly_commit_batch_duration_seconds";
/// Order actors activated (created or loaded).
pub const ACTIVATIONS_TOTAL: &str = "orderly_order_activations_total";
/// Order actors passivated, by `reason` (`capacity`, `idle`, `unknown_order`, `settled`,
/// `lease_lost`).
pub const PASSIVATIONS_TOTAL: &str = "orderly_order_passivations_total";
/// Order actors reloaded from their last snapshot, by `reason` (`store_error`,
/// `panic_or_load_error`).
pub const RESTARTS_TOTAL: &str = "orderly_order_restarts_total";
/// Live order actors, per shard summed by the scrape.
pub const LIVE_ORDERS: &str = "orderly_live_orders";
/// Commands parked while the live set was full.
pub const WAITING_COMMANDS: &str = "orderly_waiting_commands";
/// Commands refused for overload.
pub const OVERLOAD_REJECTIONS_TOTAL: &str = "orderly_overload_rejections_total";
/// Payment attempts, by `gateway` and `outcome`.
pub const PAYMENT_ATTEMPTS_TOTAL: &str = "orderly_payment_attempts_total";
/// Outbox events written with snapshots, by store (see [`OUTBOX_APPENDED_TOTAL`] for the
/// events that reached a Redis outbox stream, by type).
pub const EVENTS_TOTAL: &str = "orderly_outbox_events_total";
/// HTTP requests answered, by `route` pattern (`/v1/orders/{id}`, never a concrete id) and
/// `status` class (`2xx`, `4xx`, `5xx`).
pub const HTTP_REQUESTS_TOTAL: &str = "orderly_http_requests_total";
/// HTTP latency until the response head, by `route` pattern (a streamed bulk body is not
/// included: its length depends on the client).
pub const HTTP_REQUEST_SECONDS: &str = "orderly_http_request_duration_seconds";
/// Lines of bulk NDJSON requests, by `status` (`accepted`, `rejected`).
pub const BULK_LINES_TOTAL: &str = "orderly_bulk_lines_total";

/// Items of placed orders, Σ quantities (O), counted once the placement is durable.
pub const ORDER_ITEMS_TOTAL: &str = "orderly_order_items_total";
/// Value of placed orders, Σ unit price × quantity (P), in the `currency`'s minor units.
pub const ORDER_VALUE_TOTAL: &str = "orderly_order_value_minor_total";
/// Value paid, by `currency`, minor units.
pub const PAID_VALUE_TOTAL: &str = "orderly_paid_value_minor_total";
/// Value refunded, by `currency`, minor units.
pub const REFUNDED_VALUE_TOTAL: &str = "orderly_refunded_value_minor_total";
/// A constant 1 per `currency`, with its `minor_units` (decimal places), so dashboards can
/// show major units.
pub const CURRENCY_INFO: &str = "orderly_currency_info";
/// Orders in each `status` across the store (every order, not only the live actors), from
/// the per-shard durable counts of the shards this node owns.
pub const ORDERS: &str = "orderly_orders";
/// End-to-end latency of a command in the engine, by `command` verb: from the call until its
/// answer (durable, or refused).
pub const COMMAND_SECONDS: &str = "orderly_command_duration_seconds";
/// Store round trips other than commit batches, by `store` and `operation` (`load`,
/// `due_timers`, `timer_counts`, `status_counts`, `ping`).
pub const STORE_REQUEST_SECONDS: &str = "orderly_store_request_duration_seconds";
/// 1 while the store answers its ping, by `store`.
pub const STORE_UP: &str = "orderly_store_up";
/// Messages waiting in the shards' mailboxes, summed over shards (a message may carry a batch).
pub const SHARD_MAILBOX_DEPTH: &str = "orderly_shard_mailbox_depth";
/// Resident memory of the process (the Prometheus process-metrics convention).
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
/// CPU time of the process, user + system.
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";
/// Start time of the process, seconds since the epoch.
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";
/// Open file descriptors of the process.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";

/// Buckets for command latency, seconds (50 µs .. 10 s).
pub const COMMAND_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Buckets for commit batch latency, seconds (50 µs .. 2.5 s).
pub const COMMIT_SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];
/// Buckets for HTTP latency, seconds (100 µs .. 10 s; the top matches the request timeout).
pub const HTTP_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];
/// Buckets for batch sizes.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Registers descriptions with the installed recorder (call once after installing one).
pub fn describe() {
    describe_counter!(
        COMMANDS_TOTAL,
        Unit::Count,
        "Commands answered, by command verb and outcome."
    );
    describe_counter!(
        SNAPSHOTS_WRITTEN_TOTAL,
        Unit::Count,
        "Order snapshots written by group commit."
    );
    describe_counter!(
        LEASE_EVENTS_TOTAL,
        Unit::Count,
        "Shard lease events: acquired, renewed, renewal_failed (store unreachable), renewal_refused and write_refused (the lease moved: the shard stopped), released."
    );
    describe_gauge!(
        SHARDS_OWNED,
        Unit::Count,
        "Shards whose lease this node holds now."
    );
    describe_counter!(
        COMMIT_FAILURES_TOTAL,
        Unit::Count,
        "Commit batches that failed in the store."
    );
    describe_counter!(
        COMMIT_LINGERS_TOTAL,
        Unit::Count,
        "Commit batches that waited [commit] flush_interval_us for more snapshots (fewer than linger_batch_below were queued)."
    );
    describe_histogram!(
        COMMIT_BATCH_SIZE,
        Unit::Count,
        "Snapshots per commit batch."
    );
    describe_histogram!(
        COMMIT_BATCH_SECONDS,
        Unit::Seconds,
        "Store write latency per commit batch."
    );
    describe_counter!(ACTIVATIONS_TOTAL, Unit::Count, "Order actors activated.");
    describe_counter!(
        PASSIVATIONS_TOTAL,
        Unit::Count,
        "Order actors passivated, by reason."
    );
    describe_counter!(
        RESTARTS_TOTAL,
        Unit::Count,
        "Order actors reloaded from their last snapshot, by reason."
    );
    describe_gauge!(LIVE_ORDERS, Unit::Count, "Live order actors.");
    describe_gauge!(
        WAITING_COMMANDS,
        Unit::Count,
        "Commands parked while the live set was full."
    );
    describe_counter!(
        OVERLOAD_REJECTIONS_TOTAL,
        Unit::Count,
        "Commands refused for overload."
    );
    describe_counter!(
        PAYMENT_ATTEMPTS_TOTAL,
        Unit::Count,
        "Payment attempts by gateway and outcome."
    );
    describe_counter!(
        EVENTS_TOTAL,
        Unit::Count,
        "Outbox events written with snapshots."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests answered, by route pattern and status class."
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP latency until the response head, by route pattern."
    );
    describe_counter!(
        BULK_LINES_TOTAL,
        Unit::Count,
        "Bulk NDJSON lines, by status (accepted, rejected)."
    );
}

/// Installs the Prometheus recorder with this module's buckets; returns the handle that renders
/// the text exposition.
pub fn install_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .map_err(|e| e.to_string())?;
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    describe();
    describe_payments();
    describe_outbox();
    describe_timers();
    describe_business();
    describe_ingest();
    describe_engine();
    resolve_command_histograms();
    Ok(handle)
}

/// Every histogram and its buckets: each is a Prometheus histogram (never a summary), so
/// percentiles aggregate across nodes and over any window.
pub const BUCKETS: &[(&str, &[f64])] = &[
    (COMMAND_SECONDS, COMMAND_SECONDS_BUCKETS),
    (COMMIT_BATCH_SECONDS, COMMIT_SECONDS_BUCKETS),
    (COMMIT_BATCH_SIZE, BATCH_SIZE_BUCKETS),
    (STORE_REQUEST_SECONDS, COMMIT_SECONDS_BUCKETS),
    (HTTP_REQUEST_SECONDS, HTTP_SECONDS_BUCKETS),
    (GATEWAY_CALL_SECONDS, GATEWAY_SECONDS_BUCKETS),
    (WEBHOOK_DELIVERY_SECONDS, WEBHOOK_SECONDS_BUCKETS),
    (TIMER_LAG_SECONDS, TIMER_LAG_BUCKETS),
    (INGEST_BATCH_SECONDS, COMMIT_SECONDS_BUCKETS),
];

/// Registers the business and status metrics and starts every known series at zero.
fn describe_business() {
    describe_counter!(
        ORDER_ITEMS_TOTAL,
        Unit::Count,
        "Items of placed orders (O = sum of quantities), counted once durable."
    );
    describe_counter!(
        ORDER_VALUE_TOTAL,
        Unit::Count,
        "Value of placed orders (P = sum of unit price x quantity), by currency, in minor units."
    );
    describe_counter!(
        PAID_VALUE_TOTAL,
        Unit::Count,
        "Value paid, by currency, in minor units. R = rate(paid) / rate(placed) per currency."
    );
    describe_counter!(
        REFUNDED_VALUE_TOTAL,
        Unit::Count,
        "Value refunded, by currency, in minor units."
    );
    describe_gauge!(
        CURRENCY_INFO,
        Unit::Count,
        "1 per currency, labelled with its minor units (decimal places)."
    );
    describe_gauge!(
        ORDERS,
        Unit::Count,
        "Orders in each status across the store (durable per-shard counts of the shards this node owns)."
    );
    counter!(ORDER_ITEMS_TOTAL).increment(0);
    for currency in crate::domain::Currency::ALL {
        let code = currency.code();
        counter!(ORDER_VALUE_TOTAL, "currency" => code).increment(0);
        counter!(PAID_VALUE_TOTAL, "currency" => code).increment(0);
        counter!(REFUNDED_VALUE_TOTAL, "currency" => code).increment(0);
        gauge!(CURRENCY_INFO, "currency" => code, "minor_units" => minor_units_label(currency.exponent()))
            .set(1.0);
    }
    for status in crate::domain::OrderStatus::ALL {
        gauge!(ORDERS, "status" => status.as_str()).set(0.0);
    }
}

fn minor_units_label(exponent: u32) -> &'static str {
    match exponent {
        0 => "0",
        1 => "1",
        2 => "2",
        3 => "3",
        _ => "4",
    }
}

/// Registers the engine-wide metrics and starts their series.
fn describe_engine() {
    describe_histogram!(
        COMMAND_SECONDS,
        Unit::Seconds,
        "End-to-end latency of a command in the engine, by command verb."
    );
    describe_histogram!(
        STORE_REQUEST_SECONDS,
        Unit::Seconds,
        "Store round trips other than commit batches, by store and operation."
    );
    describe_gauge!(STORE_UP, Unit::Count, "1 while the store answers its ping.");
    describe_gauge!(
        SHARD_MAILBOX_DEPTH,
        Unit::Count,
        "Messages waiting in the shard mailboxes, summed over shards."
    );
    for verb in COMMAND_VERBS {
        counter!(COMMANDS_TOTAL, "command" => verb, "outcome" => "ok").increment(0);
    }
    counter!(OVERLOAD_REJECTIONS_TOTAL).increment(0);
    counter!(ACTIVATIONS_TOTAL).increment(0);
    gauge!(LIVE_ORDERS).increment(0.0);
    gauge!(SHARD_MAILBOX_DEPTH).set(0.0);
    for event in LeaseEvent::ALL {
        counter!(LEASE_EVENTS_TOTAL, "event" => event.as_str()).increment(0);
    }
    for status in ["accepted", "rejected"] {
        counter!(BULK_LINES_TOTAL, "status" => status).increment(0);
    }
    for reason in ["capacity", "idle", "unknown_order", "settled", "lease_lost"] {
        counter!(PASSIVATIONS_TOTAL, "reason" => reason).increment(0);
    }
    for reason in ["store_error", "panic_or_load_error"] {
        counter!(RESTARTS_TOTAL, "reason" => reason).increment(0);
    }
    gauge!(WAITING_COMMANDS).increment(0.0);
    gauge!(SHARDS_OWNED).increment(0.0);
    counter!(PAYMENTS_RESUMED_TOTAL).increment(0);
    sample();
}

/// Every command verb (the `command` label), so each series exists before its first command.
pub const COMMAND_VERBS: [&str; 15] = [
    "place",
    "pay",
    "record_payment",
    "ship",
    "deliver",
    "cancel",
    "refund",
    "record_refund",
    "release_hold",
    "remind",
    "expire",
    "auto_complete",
    "ship_sla",
    "read",
    "timer",
];

/// The command latency histograms, resolved once after the recorder is installed so that a
/// command costs a bucket increment, not a registry lookup. Empty (nothing recorded) when no
/// recorder was installed, as in `orderly demo`, which reports its own percentiles.
static COMMAND_HISTOGRAMS: std::sync::OnceLock<Vec<(&'static str, metrics::Histogram)>> =
    std::sync::OnceLock::new();

fn resolve_command_histograms() {
    COMMAND_HISTOGRAMS.get_or_init(|| {
        COMMAND_VERBS
            .iter()
            .map(|&verb| (verb, histogram!(COMMAND_SECONDS, "command" => verb)))
            .collect()
    });
}

/// Records one command's end-to-end latency.
pub(crate) fn record_command_latency(verb: &str, seconds: f64) {
    if let Some(histograms) = COMMAND_HISTOGRAMS.get() {
        if let Some((_, h)) = histograms.iter().find(|(v, _)| *v == verb) {
            h.record(seconds);
        }
    }
}

/// Starts the series of a store (called when an engine starts on it): its commit and
/// round-trip histograms render, empty, before the first write.
pub(crate) fn start_store_series(store: &'static str) {
    let _ = histogram!(COMMIT_BATCH_SIZE, "store" => store);
    let _ = histogram!(COMMIT_BATCH_SECONDS, "store" => store);
    counter!(COMMIT_FAILURES_TOTAL, "store" => store).increment(0);
    counter!(COMMIT_LINGERS_TOTAL, "store" => store).increment(0);
    counter!(SNAPSHOTS_WRITTEN_TOTAL, "store" => store).increment(0);
    counter!(EVENTS_TOTAL, "store" => store).increment(0);
    for operation in ["load", "due_timers", "timer_counts", "status_counts"] {
        let _ = histogram!(STORE_REQUEST_SECONDS, "store" => store, "operation" => operation);
    }
}

/// Records one store round trip (other than a commit batch).
pub(crate) fn record_store_request(store: &'static str, operation: &'static str, seconds: f64) {
    histogram!(STORE_REQUEST_SECONDS, "store" => store, "operation" => operation).record(seconds);
}

/// Records whether the store answered its ping.
pub(crate) fn record_store_up(store: &'static str, up: bool) {
    gauge!(STORE_UP, "store" => store).set(if up { 1.0 } else { 0.0 });
}

/// Records the business figures of one durable batch (per currency; money never adds across
/// currencies).
pub(crate) fn record_figures(figures: &crate::engine::Figures) {
    if figures.items > 0 {
        counter!(ORDER_ITEMS_TOTAL).increment(figures.items);
    }
    for &(currency, placed, paid, refunded) in &figures.by_currency {
        let code = currency.code();
        if placed > 0 {
            counter!(ORDER_VALUE_TOTAL, "currency" => code).increment(placed as u64);
        }
        if paid > 0 {
            counter!(PAID_VALUE_TOTAL, "currency" => code).increment(paid as u64);
        }
        if refunded > 0 {
            counter!(REFUNDED_VALUE_TOTAL, "currency" => code).increment(refunded as u64);
        }
    }
}

/// Records a change of the per-status counts this node exports.
pub(crate) fn record_status_counts_delta(delta: &crate::store::StatusCounts) {
    for (status, n) in delta.iter() {
        if n != 0 {
            gauge!(ORDERS, "status" => status.as_str()).increment(n as f64);
        }
    }
}

/// Messages in flight to shard mailboxes (sent, not yet handled), over every engine of the
/// process; exported as [`SHARD_MAILBOX_DEPTH`] when metrics are sampled.
pub(crate) static MAILBOX_DEPTH: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(0);

/// Samples what is read rather than counted (the shard mailbox depth) into its gauge; called
/// before every render of the exposition and by the stats sampler.
pub fn sample() {
    gauge!(SHARD_MAILBOX_DEPTH).set(
        MAILBOX_DEPTH
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(0) as f64,
    );
}

/// The exposition: every `orderly_` metric, then the process metrics, written here because
/// `process_cpu_seconds_total` is a fractional counter, which the metrics facade cannot hold.
pub fn render(handle: &metrics_exporter_prometheus::PrometheusHandle) -> String {
    use std::fmt::Write;
    sample();
    let mut text = handle.render();
    let Some(stats) = process::read() else {
        return text;
    };
    let mut family = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    };
    family(
        PROCESS_RESIDENT_MEMORY,
        "gauge",
        "Resident memory size in bytes.",
        stats.resident_bytes as f64,
    );
    family(
        PROCESS_CPU_SECONDS,
        "counter",
        "Total user and system CPU time spent in seconds.",
        stats.cpu_seconds,
    );
    family(
        PROCESS_OPEN_FDS,
        "gauge",
        "Number of open file descriptors.",
        stats.open_fds as f64,
    );
    if let Some(start) = process::start_time_seconds() {
        family(
            PROCESS_START_TIME,
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    text
}

/// Reads `/proc/self` (Linux); elsewhere the process metrics are absent.
pub mod process {
    /// What `/proc/self` says of this process now.
    pub struct ProcessStats {
        /// Resident set size.
        pub resident_bytes: u64,
        /// User + system CPU time.
        pub cpu_seconds: f64,
        /// Open file descriptors.
        pub open_fds: u64,
    }

    /// Clock ticks per second of `/proc/self/stat` times (USER_HZ, 100 on Linux).
    const TICKS_PER_SECOND: f64 = 100.0;
    /// Page size for `/proc/self/statm`.
    const PAGE_BYTES: u64 = 4096;

    /// Reads the process's stats (None off Linux).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after the name.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Some(ProcessStats {
            resident_bytes: resident_pages * PAGE_BYTES,
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            open_fds,
        })
    }

    /// Start time of the process, seconds since the epoch (boot time + start ticks).
    pub fn start_time_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime + start_ticks / TICKS_PER_SECOND)
    }
}

/// Per-batch tallies of command outcomes, emitted once per commit.
#[derive(Default)]
pub(crate) struct CommandTally {
    counts: Vec<(&'static str, &'static str, u64)>,
}

impl CommandTally {
    pub(crate) fn add(&mut self, verb: &'static str, outcome: &'static str) {
        if let Some(slot) = self
            .counts
            .iter_mut()
            .find(|(v, o, _)| *v == verb && *o == outcome)
        {
            slot.2 += 1;
        } else {
            self.counts.push((verb, outcome, 1));
        }
    }

    pub(crate) fn emit(self) {
        for (verb, outcome, n) in self.counts {
            counter!(COMMANDS_TOTAL, "command" => verb, "outcome" => outcome).increment(n);
        }
    }
}

/// Records a commit batch that waits for more snapshots.
pub(crate) fn record_commit_linger(store: &'static str) {
    counter!(COMMIT_LINGERS_TOTAL, "store" => store).increment(1);
}

/// Records one commit batch.
pub(crate) fn record_commit(
    store: &'static str,
    snapshots: usize,
    events: usize,
    seconds: f64,
    ok: bool,
) {
    histogram!(COMMIT_BATCH_SIZE, "store" => store).record(snapshots as f64);
    histogram!(COMMIT_BATCH_SECONDS, "store" => store).record(seconds);
    if ok {
        counter!(SNAPSHOTS_WRITTEN_TOTAL, "store" => store).increment(snapshots as u64);
        counter!(EVENTS_TOTAL, "store" => store).increment(events as u64);
    } else {
        counter!(COMMIT_FAILURES_TOTAL, "store" => store).increment(1);
    }
}

/// What happened to a shard lease; the `event` label of [`LEASE_EVENTS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Taken (free, expired, or held under this node's id), with a new token.
    Acquired,
    /// Extended by its TTL.
    Renewed,
    /// The store could not be asked; the lease may still be held.
    RenewalFailed,
    /// The store refused the renewal: the lease moved. The shard stopped.
    RenewalRefused,
    /// The store refused a batch: the lease moved. The shard stopped.
    WriteRefused,
    /// Given up for a graceful stop.
    Released,
}

impl LeaseEvent {
    /// Every event, so each series exists before its first occurrence.
    pub const ALL: [LeaseEvent; 6] = [
        LeaseEvent::Acquired,
        LeaseEvent::Renewed,
        LeaseEvent::RenewalFailed,
        LeaseEvent::RenewalRefused,
        LeaseEvent::WriteRefused,
        LeaseEvent::Released,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseEvent::Acquired => "acquired",
            LeaseEvent::Renewed => "renewed",
            LeaseEvent::RenewalFailed => "renewal_failed",
            LeaseEvent::RenewalRefused => "renewal_refused",
            LeaseEvent::WriteRefused => "write_refused",
            LeaseEvent::Released => "released",
        }
    }
}

/// Records a lease event (and the owned-shards gauge it changes).
pub(crate) fn record_lease(event: LeaseEvent) {
    counter!(LEASE_EVENTS_TOTAL, "event" => event.as_str()).increment(1);
    match event {
        LeaseEvent::Acquired => gauge!(SHARDS_OWNED).increment(1.0),
        LeaseEvent::RenewalRefused | LeaseEvent::WriteRefused | LeaseEvent::Released => {
            gauge!(SHARDS_OWNED).decrement(1.0)
        }
        LeaseEvent::Renewed | LeaseEvent::RenewalFailed => {}
    }
}

/// Records the live actors a shard dropped when it lost its lease.
pub(crate) fn record_lease_lost_actors(n: usize) {
    counter!(PASSIVATIONS_TOTAL, "reason" => "lease_lost").increment(n as u64);
    gauge!(LIVE_ORDERS).decrement(n as f64);
}

/// Records activations and the live count of one shard (gauge per shard label would be high
/// cardinality at 64+ shards, so the gauge is incremented/decremented instead).
pub(crate) fn record_activation() {
    counter!(ACTIVATIONS_TOTAL).increment(1);
    gauge!(LIVE_ORDERS).increment(1.0);
}

/// Records a passivation.
pub(crate) fn record_passivation(reason: &'static str) {
    counter!(PASSIVATIONS_TOTAL, "reason" => reason).increment(1);
    gauge!(LIVE_ORDERS).decrement(1.0);
}

/// Records an order reload.
pub(crate) fn record_restart(reason: &'static str) {
    counter!(RESTARTS_TOTAL, "reason" => reason).increment(1);
}

/// Records an overload refusal.
pub(crate) fn record_overload() {
    counter!(OVERLOAD_REJECTIONS_TOTAL).increment(1);
}

/// Records payment attempt outcomes of one gateway batch.
pub fn record_payment_attempts(gateway: &'static str, outcome: &'static str, n: u64) {
    counter!(PAYMENT_ATTEMPTS_TOTAL, "gateway" => gateway, "outcome" => outcome).increment(n);
}

/// Records one answered HTTP request; `route` is the matched pattern, never a concrete path.
pub(crate) fn record_http_request(route: &'static str, status: u16, seconds: f64) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    histogram!(HTTP_REQUEST_SECONDS, "route" => route).record(seconds);
    counter!(HTTP_REQUESTS_TOTAL, "route" => route, "status" => class).increment(1);
}

/// Records the lines of one bulk batch (once per batch, not per line).
pub(crate) fn record_bulk_lines(accepted: u64, rejected: u64) {
    if accepted > 0 {
        counter!(BULK_LINES_TOTAL, "status" => "accepted").increment(accepted);
    }
    if rejected > 0 {
        counter!(BULK_LINES_TOTAL, "status" => "rejected").increment(rejected);
    }
}

/// Redis Stream entries handled by the ingest consumer, by `outcome` (`accepted`,
/// `duplicate`, `dead_lettered`, `retry`: left pending after a retryable failure).
pub const INGEST_ENTRIES_TOTAL: &str = "orderly_ingest_entries_total";
/// Redis Stream entries read by the ingest consumer (new, its own pending and reclaimed).
pub const INGEST_READ_TOTAL: &str = "orderly_ingest_entries_read_total";
/// Entries acknowledged (`XACK`): placed, duplicates or dead-lettered.
pub const INGEST_ACKNOWLEDGED_TOTAL: &str = "orderly_ingest_entries_acknowledged_total";
/// Entries of the ingest stream not yet delivered to the consumer group (its lag).
pub const INGEST_LAG: &str = "orderly_ingest_consumer_lag_entries";
/// Time to handle one batch of stream entries: placement, dead letters and acknowledgement.
pub const INGEST_BATCH_SECONDS: &str = "orderly_ingest_batch_duration_seconds";
/// Reads of new entries that waited `[ingest] linger_ms` first (the read before filled less
/// than half a batch).
pub const INGEST_LINGERS_TOTAL: &str = "orderly_ingest_lingers_total";

/// Registers the ingest metrics' descriptions with the installed recorder (called when a
/// stream consumer starts; describing twice is harmless).
pub(crate) fn describe_ingest() {
    describe_counter!(
        INGEST_ENTRIES_TOTAL,
        Unit::Count,
        "Redis Stream entries handled by the ingest consumer, by outcome."
    );
    describe_histogram!(
        INGEST_BATCH_SECONDS,
        Unit::Seconds,
        "Time to place, dead-letter and acknowledge one batch of stream entries."
    );
    describe_counter!(
        INGEST_READ_TOTAL,
        Unit::Count,
        "Redis Stream entries read by the ingest consumer."
    );
    describe_counter!(
        INGEST_ACKNOWLEDGED_TOTAL,
        Unit::Count,
        "Redis Stream entries acknowledged by the ingest consumer."
    );
    describe_counter!(
        INGEST_LINGERS_TOTAL,
        Unit::Count,
        "Reads of new stream entries that waited `[ingest] linger_ms` for more entries first."
    );
    describe_gauge!(
        INGEST_LAG,
        Unit::Count,
        "Entries of the ingest stream not yet delivered to the consumer group."
    );
    for outcome in ["accepted", "duplicate", "dead_lettered", "retry"] {
        counter!(INGEST_ENTRIES_TOTAL, "outcome" => outcome).increment(0);
    }
    let _ = histogram!(INGEST_BATCH_SECONDS);
    counter!(INGEST_READ_TOTAL).increment(0);
    counter!(INGEST_ACKNOWLEDGED_TOTAL).increment(0);
    counter!(INGEST_LINGERS_TOTAL).increment(0);
    gauge!(INGEST_LAG).increment(0.0);
}

/// Records the ingest consumer group's lag.
/// A read of new stream entries waits `[ingest] linger_ms` first.
pub(crate) fn record_ingest_linger() {
    counter!(INGEST_LINGERS_TOTAL).increment(1);
}

pub(crate) fn record_ingest_lag(entries: u64) {
    gauge!(INGEST_LAG).set(entries as f64);
}

/// Records one ingest batch: the count per outcome (zero counts are skipped) and its duration.
pub(crate) fn record_ingest_batch(
    read: u64,
    acknowledged: u64,
    outcomes: [(&'static str, u64); 4],
    seconds: f64,
) {
    counter!(INGEST_READ_TOTAL).increment(read);
    counter!(INGEST_ACKNOWLEDGED_TOTAL).increment(acknowledged);
    for (outcome, n) in outcomes {
        if n > 0 {
            counter!(INGEST_ENTRIES_TOTAL, "outcome" => outcome).increment(n);
        }
    }
    histogram!(INGEST_BATCH_SECONDS).record(seconds);
}

/// Gateway calls by `gateway`, `operation` (`charge`, `query`, `reverse`, `refund`) and
/// `outcome`; a charge's outcome is the payment attempt's (`succeeded`, `declined_hard`,
/// `declined_soft`, `not_sent`, `unknown`, `voided`, `rejected`, `short_circuited`).
pub const GATEWAY_CALLS_TOTAL: &str = "orderly_gateway_calls_total";
/// Retries of calls that were not sent, by `gateway`.
pub const PAYMENT_RETRIES_TOTAL: &str = "orderly_payment_retries_total";
/// Status queries of attempts with an unknown outcome, by `gateway` and `outcome`.
pub const PAYMENT_QUERIES_TOTAL: &str = "orderly_payment_queries_total";
/// Reversals (voids) of attempts whose outcome stayed unknown, by `gateway` and `outcome`
/// (`voided`, `failed`).
pub const PAYMENT_REVERSALS_TOTAL: &str = "orderly_payment_reversals_total";
/// Attempts and refunds that neither query nor reversal settled, by `gateway`: a human must
/// look.
pub const PAYMENT_NEEDS_REVIEW_TOTAL: &str = "orderly_payment_needs_review_total";
/// Refunds by `gateway` and `outcome` (`succeeded`, `failed`, `unresolved`).
pub const PAYMENT_REFUNDS_TOTAL: &str = "orderly_payment_refunds_total";
/// Circuit breaker state per `gateway`: 0 closed, 1 half-open, 2 open.
pub const GATEWAY_BREAKER_STATE: &str = "orderly_gateway_breaker_state";
/// Circuit breaker transitions by `gateway` and `to` (`open`, `half_open`, `closed`).
pub const GATEWAY_BREAKER_TRANSITIONS_TOTAL: &str = "orderly_gateway_breaker_transitions_total";
/// The `operation` label of gateway calls.
pub const GATEWAY_OPERATIONS: [&str; 4] = ["charge", "query", "reverse", "refund"];
/// Latency of one gateway call (one try), by `gateway` and `operation`.
pub const GATEWAY_CALL_SECONDS: &str = "orderly_gateway_call_duration_seconds";
/// Records on a simulated gateway's books, by `gateway`.
pub const SIMULATED_LEDGER_RECORDS: &str = "orderly_simulated_gateway_records";
/// Records a simulated gateway dropped past `[payments] simulated_ledger_retention_ms`, by
/// `gateway`.
pub const SIMULATED_LEDGER_EVICTED_TOTAL: &str = "orderly_simulated_gateway_evicted_total";
/// Orders with a live payment attempt or refund resumed when a shard started.
pub const PAYMENTS_RESUMED_TOTAL: &str = "orderly_payments_resumed_total";

/// Buckets for gateway call latency, seconds (100 µs .. 30 s: simulated gateways answer in
/// microseconds, real ones in hundreds of milliseconds, timeouts reach tens of seconds).
pub const GATEWAY_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Registers the payment gateway metrics' descriptions (called when gateway actors start;
/// describing twice is harmless).
pub(crate) fn describe_payments() {
    describe_counter!(
        GATEWAY_CALLS_TOTAL,
        Unit::Count,
        "Gateway calls by gateway, operation and outcome."
    );
    describe_counter!(
        PAYMENT_RETRIES_TOTAL,
        Unit::Count,
        "Retries of gateway calls that were not sent, by gateway."
    );
    describe_counter!(
        PAYMENT_QUERIES_TOTAL,
        Unit::Count,
        "Status queries of payment attempts with an unknown outcome, by gateway and outcome."
    );
    describe_counter!(
        PAYMENT_REVERSALS_TOTAL,
        Unit::Count,
        "Reversals of payment attempts whose outcome stayed unknown, by gateway and outcome."
    );
    describe_counter!(
        PAYMENT_NEEDS_REVIEW_TOTAL,
        Unit::Count,
        "Payment attempts and refunds left for a human to review, by gateway."
    );
    describe_counter!(
        PAYMENT_REFUNDS_TOTAL,
        Unit::Count,
        "Refunds by gateway and outcome."
    );
    describe_gauge!(
        GATEWAY_BREAKER_STATE,
        Unit::Count,
        "Circuit breaker state per gateway: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        GATEWAY_BREAKER_TRANSITIONS_TOTAL,
        Unit::Count,
        "Circuit breaker transitions by gateway and target state."
    );
    describe_histogram!(
        GATEWAY_CALL_SECONDS,
        Unit::Seconds,
        "Latency of one gateway call (one try), by gateway and operation."
    );
    describe_counter!(
        PAYMENTS_RESUMED_TOTAL,
        Unit::Count,
        "Orders with a live payment attempt or refund resumed when a shard started."
    );
}

/// Registers the simulated gateways' ledger metrics' descriptions.
pub(crate) fn describe_simulated_ledger() {
    describe_gauge!(
        SIMULATED_LEDGER_RECORDS,
        Unit::Count,
        "Records on a simulated gateway's books (charges, reversal blocks, refunds), by gateway."
    );
    describe_counter!(
        SIMULATED_LEDGER_EVICTED_TOTAL,
        Unit::Count,
        "Records a simulated gateway dropped past payments.simulated_ledger_retention_ms, by gateway."
    );
}

/// Metric handles of one gateway, resolved once when its actor starts so that a call costs
/// atomic increments, not registry lookups.
pub(crate) struct GatewayMetrics {
    gateway: String,
    /// By operation, in [`GATEWAY_OPERATIONS`] order.
    call_seconds: [metrics::Histogram; 4],
    breaker_state: metrics::Gauge,
    retries: metrics::Counter,
    needs_review: metrics::Counter,
}

impl GatewayMetrics {
    pub(crate) fn new(gateway: &str) -> GatewayMetrics {
        let label = gateway.to_string();
        // The main series of each kind start at zero, so rates and alerts see them at once.
        for (operation, outcome) in [
            ("charge", "succeeded"),
            ("charge", "unknown"),
            ("query", "captured"),
            ("reverse", "voided"),
            ("refund", "succeeded"),
        ] {
            counter!(GATEWAY_CALLS_TOTAL, "gateway" => label.clone(), "operation" => operation, "outcome" => outcome)
                .increment(0);
        }
        counter!(PAYMENT_ATTEMPTS_TOTAL, "gateway" => label.clone(), "outcome" => "succeeded")
            .increment(0);
        counter!(PAYMENT_QUERIES_TOTAL, "gateway" => label.clone(), "outcome" => "captured")
            .increment(0);
        counter!(PAYMENT_REVERSALS_TOTAL, "gateway" => label.clone(), "outcome" => "voided")
            .increment(0);
        counter!(PAYMENT_REFUNDS_TOTAL, "gateway" => label.clone(), "outcome" => "succeeded")
            .increment(0);
        for to in ["open", "half_open", "closed"] {
            counter!(GATEWAY_BREAKER_TRANSITIONS_TOTAL, "gateway" => label.clone(), "to" => to)
                .increment(0);
        }
        GatewayMetrics {
            gateway: label.clone(),
            call_seconds: GATEWAY_OPERATIONS.map(|operation| {
                histogram!(GATEWAY_CALL_SECONDS, "gateway" => label.clone(), "operation" => operation)
            }),
            breaker_state: gauge!(GATEWAY_BREAKER_STATE, "gateway" => label.clone()),
            retries: counter!(PAYMENT_RETRIES_TOTAL, "gateway" => label.clone()),
            needs_review: counter!(PAYMENT_NEEDS_REVIEW_TOTAL, "gateway" => label),
        }
    }

    /// One call's latency.
    pub(crate) fn call_seconds(&self, operation: &'static str, seconds: f64) {
        if let Some(i) = GATEWAY_OPERATIONS.iter().position(|o| *o == operation) {
            self.call_seconds[i].record(seconds);
        }
    }

    /// `n` calls with one outcome (`operation` and `outcome` are bounded sets of static
    /// names); the actor tallies per flushed batch of verdicts and calls this once per pair.
    pub(crate) fn calls(&self, operation: &'static str, outcome: &'static str, n: u64) {
        let gateway = self.gateway.clone();
        counter!(GATEWAY_CALLS_TOTAL, "gateway" => gateway.clone(), "operation" => operation, "outcome" => outcome)
            .increment(n);
        let per_operation = match operation {
            "charge" => PAYMENT_ATTEMPTS_TOTAL,
            "query" => PAYMENT_QUERIES_TOTAL,
            "reverse" => PAYMENT_REVERSALS_TOTAL,
            "refund" => PAYMENT_REFUNDS_TOTAL,
            _ => return,
        };
        counter!(per_operation, "gateway" => gateway, "outcome" => outcome).increment(n);
    }

    /// A retry of a call that was not sent.
    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }

    /// An attempt or refund left for review.
    pub(crate) fn needs_review(&self) {
        self.needs_review.increment(1);
    }

    /// The breaker's state is `gauge_value` (0 closed, 1 half-open, 2 open), e.g. at start.
    pub(crate) fn breaker_state(&self, gauge_value: f64) {
        self.breaker_state.set(gauge_value);
    }

    /// The breaker's state changed to `to` (`gauge`: 0 closed, 1 half-open, 2 open).
    pub(crate) fn breaker(&self, to: &'static str, gauge_value: f64) {
        self.breaker_state.set(gauge_value);
        counter!(GATEWAY_BREAKER_TRANSITIONS_TOTAL, "gateway" => self.gateway.clone(), "to" => to)
            .increment(1);
    }
}

/// Records orders resumed by a shard's payment recovery scan.
pub(crate) fn record_payments_resumed(n: u64) {
    counter!(PAYMENTS_RESUMED_TOTAL).increment(n);
}

/// Outbox events appended to a shard's outbox stream, by event `type` (the Redis store).
pub const OUTBOX_APPENDED_TOTAL: &str = "orderly_outbox_appended_total";
/// Outbox events appended to an overflow stream because their shard's outbox stream was at
/// its cap (`[outbox] max_entries_per_shard`).
pub const OUTBOX_OVERFLOWED_TOTAL: &str = "orderly_outbox_overflowed_total";
/// Outbox stream entries removed by the trimmer after every consumer group acknowledged them.
pub const OUTBOX_TRIMMED_TOTAL: &str = "orderly_outbox_trimmed_entries_total";
/// Webhook deliveries by `receiver` and `outcome` ([`DeliveryOutcome`]).
pub const WEBHOOK_DELIVERIES_TOTAL: &str = "orderly_webhook_deliveries_total";
/// Latency of one webhook request (one try), by `receiver`.
pub const WEBHOOK_DELIVERY_SECONDS: &str = "orderly_webhook_delivery_duration_seconds";
/// Outbox entries not yet acknowledged by a receiver (lag + pending of its consumer groups,
/// summed over shards), by `receiver`.
pub const WEBHOOK_BACKLOG: &str = "orderly_webhook_backlog_entries";
/// Whether a receiver is disabled (it answered 410 Gone), by `receiver`: 0 or 1.
pub const WEBHOOK_DISABLED: &str = "orderly_webhook_receiver_disabled";

/// Buckets for webhook latency, seconds (1 ms .. 30 s).
pub const WEBHOOK_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// What became of one webhook delivery try; the `outcome` label of
/// [`WEBHOOK_DELIVERIES_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// The try failed (timeout, connection error, non-2xx) and another will follow.
    Retried,
    /// Tries or time ran out: the event went to the receiver's dead-letter stream.
    DeadLettered,
    /// The receiver answered 410 Gone and was disabled.
    Gone,
}

impl DeliveryOutcome {
    /// Every outcome, so each series exists before its first occurrence.
    pub const ALL: [DeliveryOutcome; 4] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Retried,
        DeliveryOutcome::DeadLettered,
        DeliveryOutcome::Gone,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retried => "retried",
            DeliveryOutcome::DeadLettered => "dead_lettered",
            DeliveryOutcome::Gone => "gone",
        }
    }
}

/// Registers the outbox and webhook metrics' descriptions and starts the outbox series at
/// zero (called when a Redis store opens; describing twice is harmless).
pub fn describe_outbox() {
    describe_counter!(
        OUTBOX_APPENDED_TOTAL,
        Unit::Count,
        "Outbox events appended to the shard outbox streams, by event type."
    );
    describe_counter!(
        OUTBOX_OVERFLOWED_TOTAL,
        Unit::Count,
        "Outbox events appended to an overflow stream because their shard stream was at its cap."
    );
    describe_counter!(
        OUTBOX_TRIMMED_TOTAL,
        Unit::Count,
        "Outbox stream entries trimmed after every consumer group acknowledged them."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        Unit::Count,
        "Webhook delivery tries by receiver and outcome (delivered, retried, dead_lettered, gone)."
    );
    describe_histogram!(
        WEBHOOK_DELIVERY_SECONDS,
        Unit::Seconds,
        "Latency of one webhook request, by receiver."
    );
    describe_gauge!(
        WEBHOOK_BACKLOG,
        Unit::Count,
        "Outbox entries a receiver has not acknowledged yet (consumer group lag plus pending)."
    );
    describe_gauge!(
        WEBHOOK_DISABLED,
        Unit::Count,
        "1 while a receiver is disabled (it answered 410 Gone)."
    );
    let mut seen: Vec<&str> = Vec::new();
    for event in crate::domain::OrderEvent::ALL {
        if !seen.contains(&event.as_str()) {
            seen.push(event.as_str());
            counter!(OUTBOX_APPENDED_TOTAL, "type" => event.as_str()).increment(0);
        }
    }
    counter!(OUTBOX_OVERFLOWED_TOTAL).increment(0);
    counter!(OUTBOX_TRIMMED_TOTAL).increment(0);
}

/// Records what one applied transaction appended: counts by index in `OrderEvent::ALL`, and
/// how many went to overflow streams.
pub(crate) fn record_outbox_appended(by_type: &[u64], overflowed: u64) {
    for (event, &n) in crate::domain::OrderEvent::ALL.iter().zip(by_type) {
        if n > 0 {
            counter!(OUTBOX_APPENDED_TOTAL, "type" => event.as_str()).increment(n);
        }
    }
    if overflowed > 0 {
        counter!(OUTBOX_OVERFLOWED_TOTAL).increment(overflowed);
    }
}

/// Records entries removed by the trimmer.
pub(crate) fn record_outbox_trimmed(n: u64) {
    counter!(OUTBOX_TRIMMED_TOTAL).increment(n);
}

/// Metric handles of one webhook receiver, resolved once when its worker starts.
pub(crate) struct WebhookMetrics {
    outcomes: [metrics::Counter; 4],
    seconds: metrics::Histogram,
    backlog: metrics::Gauge,
    disabled: metrics::Gauge,
}

impl WebhookMetrics {
    pub(crate) fn new(receiver: &str) -> WebhookMetrics {
        let label = receiver.to_string();
        let outcomes = DeliveryOutcome::ALL.map(|o| {
            let c = counter!(WEBHOOK_DELIVERIES_TOTAL, "receiver" => label.clone(), "outcome" => o.as_str());
            c.increment(0);
            c
        });
        let backlog = gauge!(WEBHOOK_BACKLOG, "receiver" => label.clone());
        backlog.set(0.0);
        let disabled = gauge!(WEBHOOK_DISABLED, "receiver" => label.clone());
        disabled.set(0.0);
        WebhookMetrics {
            outcomes,
            seconds: histogram!(WEBHOOK_DELIVERY_SECONDS, "receiver" => label),
            backlog,
            disabled,
        }
    }

    pub(crate) fn outcome(&self, outcome: DeliveryOutcome) {
        let i = DeliveryOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.outcomes[i].increment(1);
    }

    pub(crate) fn seconds(&self, seconds: f64) {
        self.seconds.record(seconds);
    }

    pub(crate) fn backlog(&self, entries: u64) {
        self.backlog.set(entries as f64);
    }

    pub(crate) fn disabled(&self, disabled: bool) {
        self.disabled.set(if disabled { 1.0 } else { 0.0 });
    }
}

/// Durable timers fired, by `timer` (the command verb: `remind`, `expire`, `auto_complete`,
/// `ship_sla`) and `outcome` (`fired`, `refused`: the domain refused it; its entry was removed
/// and the order's next transition re-arms it).
pub const TIMERS_FIRED_TOTAL: &str = "orderly_timers_fired_total";
/// Lag from a timer's due time to its firing.
pub const TIMER_LAG_SECONDS: &str = "orderly_timer_lag_seconds";
/// Stale timer index entries corrected (the order's next timer had moved later or gone).
pub const TIMERS_REINDEXED_TOTAL: &str = "orderly_timers_reindexed_total";
/// Entries in the timer indexes of the shards this node owns.
pub const TIMERS_ARMED: &str = "orderly_timers_armed";
/// Of those, entries already due (the backlog the catch-up rate works through).
pub const TIMERS_OVERDUE: &str = "orderly_timers_overdue";
/// Due timers left for a later poll because the node's catch-up rate was spent.
pub const TIMERS_THROTTLED_TOTAL: &str = "orderly_timers_throttled_total";

/// Buckets for timer lag, seconds (10 ms .. 1 h: a catch-up after an outage lags by minutes).
pub const TIMER_LAG_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The timer verbs, for labels that start at zero.
const TIMER_VERBS: [&str; 5] = [
    "remind",
    "expire",
    "auto_complete",
    "ship_sla",
    "payment_check",
];

pub(crate) fn describe_timers() {
    describe_counter!(
        TIMERS_FIRED_TOTAL,
        Unit::Count,
        "Durable timers fired, by timer (remind, expire, auto_complete, ship_sla, payment_check) and outcome (fired, refused)."
    );
    describe_histogram!(
        TIMER_LAG_SECONDS,
        Unit::Seconds,
        "Lag from a timer's due time to its firing, by timer."
    );
    describe_counter!(
        TIMERS_REINDEXED_TOTAL,
        Unit::Count,
        "Stale timer index entries moved to the order's next timer or removed."
    );
    describe_gauge!(
        TIMERS_ARMED,
        Unit::Count,
        "Timer index entries in the shards this node owns."
    );
    describe_gauge!(
        TIMERS_OVERDUE,
        Unit::Count,
        "Timer index entries already due in the shards this node owns."
    );
    describe_counter!(
        TIMERS_THROTTLED_TOTAL,
        Unit::Count,
        "Due timers left for a later poll because the catch-up rate was spent."
    );
    for timer in TIMER_VERBS {
        for outcome in ["fired", "refused"] {
            counter!(TIMERS_FIRED_TOTAL, "timer" => timer, "outcome" => outcome).increment(0);
        }
    }
    for timer in TIMER_VERBS {
        let _ = histogram!(TIMER_LAG_SECONDS, "timer" => timer);
    }
    counter!(TIMERS_REINDEXED_TOTAL).increment(0);
    counter!(TIMERS_THROTTLED_TOTAL).increment(0);
    gauge!(TIMERS_ARMED).set(0.0);
    gauge!(TIMERS_OVERDUE).set(0.0);
}

/// Records one timer firing and its lag.
pub(crate) fn record_timer_fired(timer: &'static str, outcome: &'static str, lag_seconds: f64) {
    counter!(TIMERS_FIRED_TOTAL, "timer" => timer, "outcome" => outcome).increment(1);
    if outcome == "fired" {
        histogram!(TIMER_LAG_SECONDS, "timer" => timer).record(lag_seconds);
    }
}

/// Records a stale timer index entry corrected.
pub(crate) fn record_timer_reindexed() {
    counter!(TIMERS_REINDEXED_TOTAL).increment(1);
}

/// Records due timers left for a later poll.
pub(crate) fn record_timers_throttled(n: u64) {
    counter!(TIMERS_THROTTLED_TOTAL).increment(n);
}

/// Records the change of one shard's timer index sizes (the gauges sum every owned shard).
pub(crate) fn record_timer_counts_delta(armed: f64, overdue: f64) {
    gauge!(TIMERS_ARMED).increment(armed);
    gauge!(TIMERS_OVERDUE).increment(overdue);
}

/// A metric family's kind in the exposition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Explicit buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One entry of the catalogue: name, kind, labels, meaning, and whether every process exposes
/// it (`false`: only with a feature configured, such as stream ingest, webhook receivers or
/// the Redis outbox).
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub meaning: &'static str,
    /// Exposed by every `orderly serve`, from start.
    pub always: bool,
}

const fn family(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    meaning: &'static str,
    always: bool,
) -> Family {
    Family {
        name,
        kind,
        labels,
        meaning,
        always,
    }
}

/// Every metric family Orderly exposes: the README's table is generated from it, and the tests
/// check that `/metrics` holds each one.
pub const CATALOGUE: &[Family] = &[
    // Business.
    family(ORDER_ITEMS_TOTAL, Kind::Counter, &[], "O: items of placed orders (Σ quantities), counted once durable", true),
    family(ORDER_VALUE_TOTAL, Kind::Counter, &["currency"], "P: value of placed orders (Σ price × quantity), minor units", true),
    family(PAID_VALUE_TOTAL, Kind::Counter, &["currency"], "value paid, minor units; R = rate(paid) / rate(placed) per currency", true),
    family(REFUNDED_VALUE_TOTAL, Kind::Counter, &["currency"], "value refunded, minor units", true),
    family(CURRENCY_INFO, Kind::Gauge, &["currency", "minor_units"], "1 per currency; `minor_units` converts minor to major units", true),
    family(ORDERS, Kind::Gauge, &["status"], "orders in each status across the store (durable per-shard counts of the shards this node owns)", true),
    // Commands and commits.
    family(COMMANDS_TOTAL, Kind::Counter, &["command", "outcome"], "commands answered; orders placed = `{command=\"place\",outcome=\"ok\"}`", true),
    family(COMMAND_SECONDS, Kind::Histogram, &["command"], "command latency in the engine, call to durable answer", true),
    family(COMMIT_BATCH_SIZE, Kind::Histogram, &["store"], "snapshots per commit batch", true),
    family(COMMIT_BATCH_SECONDS, Kind::Histogram, &["store"], "store write latency of one commit batch", true),
    family(COMMIT_FAILURES_TOTAL, Kind::Counter, &["store"], "commit batches the store failed", true),
    family(COMMIT_LINGERS_TOTAL, Kind::Counter, &["store"], "commit batches that waited `[commit] flush_interval_us` for more snapshots (fewer than `linger_batch_below` queued)", true),
    family(SNAPSHOTS_WRITTEN_TOTAL, Kind::Counter, &["store"], "snapshots written", true),
    family(EVENTS_TOTAL, Kind::Counter, &["store"], "outbox events written with the snapshots", true),
    family(STORE_REQUEST_SECONDS, Kind::Histogram, &["store", "operation"], "store round trips besides commits: load, due_timers, timer_counts, status_counts", true),
    family(STORE_UP, Kind::Gauge, &["store"], "1 while the store answers its ping (sampled each second)", true),
    // HTTP.
    family(HTTP_REQUESTS_TOTAL, Kind::Counter, &["route", "status"], "HTTP answers by route pattern and status class", true),
    family(HTTP_REQUEST_SECONDS, Kind::Histogram, &["route"], "HTTP latency until the response head", true),
    // Engine.
    family(LIVE_ORDERS, Kind::Gauge, &[], "live order actors", true),
    family(ACTIVATIONS_TOTAL, Kind::Counter, &[], "order actors activated (created or loaded)", true),
    family(PASSIVATIONS_TOTAL, Kind::Counter, &["reason"], "order actors passivated: capacity, idle, unknown_order, settled, lease_lost", true),
    family(RESTARTS_TOTAL, Kind::Counter, &["reason"], "order actors reloaded from their snapshot: store_error, panic_or_load_error", true),
    family(SHARD_MAILBOX_DEPTH, Kind::Gauge, &[], "messages waiting in the shard mailboxes", true),
    family(WAITING_COMMANDS, Kind::Gauge, &[], "commands parked while the live set was full", true),
    family(OVERLOAD_REJECTIONS_TOTAL, Kind::Counter, &[], "commands refused for overload (429)", true),
    family(LEASE_EVENTS_TOTAL, Kind::Counter, &["event"], "shard leases acquired, renewed, renewal_failed, renewal_refused / write_refused (lost), released", true),
    family(SHARDS_OWNED, Kind::Gauge, &[], "shards whose lease this node holds", true),
    family(PROCESS_RESIDENT_MEMORY, Kind::Gauge, &[], "resident memory of the process", true),
    family(PROCESS_CPU_SECONDS, Kind::Counter, &[], "CPU time of the process, user + system", true),
    family(PROCESS_OPEN_FDS, Kind::Gauge, &[], "open file descriptors", true),
    family(PROCESS_START_TIME, Kind::Gauge, &[], "start time, seconds since the epoch", true),
    // Ingest.
    family(BULK_LINES_TOTAL, Kind::Counter, &["status"], "bulk NDJSON lines accepted / rejected", true),
    family(INGEST_ENTRIES_TOTAL, Kind::Counter, &["outcome"], "stream entries by outcome: accepted, duplicate, dead_lettered, retry", true),
    family(INGEST_READ_TOTAL, Kind::Counter, &[], "stream entries read", true),
    family(INGEST_ACKNOWLEDGED_TOTAL, Kind::Counter, &[], "stream entries acknowledged", true),
    family(INGEST_LAG, Kind::Gauge, &[], "entries of the ingest stream not yet delivered to the group", true),
    family(INGEST_BATCH_SECONDS, Kind::Histogram, &[], "time to place and acknowledge one batch of entries", true),
    family(INGEST_LINGERS_TOTAL, Kind::Counter, &[], "reads of new entries that waited `[ingest] linger_ms` first (the read before filled less than half a batch)", true),
    // Payments.
    family(GATEWAY_CALLS_TOTAL, Kind::Counter, &["gateway", "operation", "outcome"], "gateway calls: charge, query, reverse, refund", true),
    family(GATEWAY_CALL_SECONDS, Kind::Histogram, &["gateway", "operation"], "latency of one gateway call (one try)", true),
    family(PAYMENT_ATTEMPTS_TOTAL, Kind::Counter, &["gateway", "outcome"], "payment attempts by outcome", true),
    family(PAYMENT_RETRIES_TOTAL, Kind::Counter, &["gateway"], "retries of calls that were not sent", true),
    family(PAYMENT_QUERIES_TOTAL, Kind::Counter, &["gateway", "outcome"], "status queries of attempts with an unknown outcome", true),
    family(PAYMENT_REVERSALS_TOTAL, Kind::Counter, &["gateway", "outcome"], "reversals of attempts whose outcome stayed unknown", true),
    family(PAYMENT_REFUNDS_TOTAL, Kind::Counter, &["gateway", "outcome"], "refunds by outcome", true),
    family(PAYMENT_NEEDS_REVIEW_TOTAL, Kind::Counter, &["gateway"], "attempts and refunds left for a human", true),
    family(GATEWAY_BREAKER_STATE, Kind::Gauge, &["gateway"], "circuit breaker: 0 closed, 1 half-open, 2 open", true),
    family(GATEWAY_BREAKER_TRANSITIONS_TOTAL, Kind::Counter, &["gateway", "to"], "breaker transitions", true),
    family(PAYMENTS_RESUMED_TOTAL, Kind::Counter, &[], "orders with live gateway work resumed by a payment check", true),
    family(SIMULATED_LEDGER_RECORDS, Kind::Gauge, &["gateway"], "records on a simulated gateway's books (kept `[payments] simulated_ledger_retention_ms` after last use, at most twice that)", true),
    family(SIMULATED_LEDGER_EVICTED_TOTAL, Kind::Counter, &["gateway"], "records a simulated gateway dropped past its retention", true),
    // Timers.
    family(TIMERS_FIRED_TOTAL, Kind::Counter, &["timer", "outcome"], "durable timers fired / refused", true),
    family(TIMER_LAG_SECONDS, Kind::Histogram, &["timer"], "lag from a timer's due time to its firing", true),
    family(TIMERS_ARMED, Kind::Gauge, &[], "timer index entries of the owned shards", true),
    family(TIMERS_OVERDUE, Kind::Gauge, &[], "of those, entries already due", true),
    family(TIMERS_REINDEXED_TOTAL, Kind::Counter, &[], "stale timer entries corrected", true),
    family(TIMERS_THROTTLED_TOTAL, Kind::Counter, &[], "due timers left for later by the catch-up rate", true),
    // Outbox and webhooks (Redis store; webhook series per configured receiver).
    family(OUTBOX_APPENDED_TOTAL, Kind::Counter, &["type"], "events appended to the shard outbox streams", true),
    family(OUTBOX_OVERFLOWED_TOTAL, Kind::Counter, &[], "events sent to an overflow stream (outbox at its cap)", true),
    family(OUTBOX_TRIMMED_TOTAL, Kind::Counter, &[], "outbox entries trimmed after every group acknowledged them", true),
    family(WEBHOOK_DELIVERIES_TOTAL, Kind::Counter, &["receiver", "outcome"], "webhook tries: delivered, retried, dead_lettered, gone", false),
    family(WEBHOOK_DELIVERY_SECONDS, Kind::Histogram, &["receiver"], "latency of one webhook request", false),
    family(WEBHOOK_BACKLOG, Kind::Gauge, &["receiver"], "outbox entries a receiver has not acknowledged", false),
    family(WEBHOOK_DISABLED, Kind::Gauge, &["receiver"], "1 while a receiver is disabled (410 Gone)", false),
];

/// The catalogue as the README's Markdown table.
pub fn catalogue_markdown() -> String {
    let mut table = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for f in CATALOGUE {
        let labels = if f.labels.is_empty() {
            "–".to_string()
        } else {
            f.labels.join(", ")
        };
        table.push_str(&format!(
            "| `{}` | {} | {} | {}{} |\n",
            f.name,
            f.kind.as_str(),
            labels,
            f.meaning.replace('|', "\\|"),
            if f.always {
                ""
            } else {
                " (per configured webhook receiver)"
            },
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_histogram_has_explicit_buckets() {
        for f in CATALOGUE.iter().filter(|f| f.kind == Kind::Histogram) {
            assert!(
                BUCKETS.iter().any(|(name, _)| *name == f.name),
                "{} has no buckets",
                f.name
            );
        }
        for (name, buckets) in BUCKETS {
            assert!(buckets.windows(2).all(|w| w[0] < w[1]), "{name}");
        }
    }

    #[test]
    fn names_follow_the_conventions() {
        let mut seen = std::collections::HashSet::new();
        for f in CATALOGUE {
            assert!(seen.insert(f.name), "{} twice", f.name);
            assert!(
                f.name.starts_with("orderly_") || f.name.starts_with("process_"),
                "{}",
                f.name
            );
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                f.name
            );
            assert!(!f.labels.contains(&"order_id"), "{}", f.name);
        }
    }

    #[test]
    fn the_readme_table_is_the_catalogue() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let table = catalogue_markdown();
        assert!(
            readme.contains(&table),
            "README.md's metrics table is out of date; replace it with:\n\n{table}"
        );
    }
}
