//! The faults, each injected into real processes on loopback: `orderly serve` (a child
//! process), redis-server (a child process on a free port with its own temp dir) and the mock
//! payment service (a real HTTP server on a loopback port). Each returns its [`Row`] of the
//! suite's table and the checker's findings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::checker::{self, Charge, Findings, Stored};
use crate::driver::{self, Journal, Load, Target};
use crate::mock_payments::{self, Faults, MockConfig, RunningMock};
use crate::support::redis_server::{RedisOptions, RedisServer};
use crate::support::serve::{serve_command, spawn_serve_command, Serve};
use crate::support::{outbox, stored};

/// Shards of every server in the suite.
pub const SHARDS: u32 = 8;
const MOCK_KEY: &str = "reliability-key";

/// Scale of a run: `RELIABILITY_LONG=1` runs the long version.
pub fn long() -> bool {
    std::env::var("RELIABILITY_LONG").is_ok_and(|v| v == "1")
}

/// One line of the suite's table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The fault.
    pub fault: &'static str,
    /// Times it was injected.
    pub injected: u32,
    /// The checker's findings.
    pub findings: Findings,
    /// Longest time from the end of a fault to the first acknowledged command after it.
    pub recovery: Option<Duration>,
    /// What else was checked, in words.
    pub notes: String,
}

/// A running `orderly serve` on a harness Redis, paying through the mock payment service.
pub struct Node {
    pub serve: Serve,
    pub target: Target,
    node_id: &'static str,
    redis_url: String,
    mock_url: String,
    extra_env: Vec<(String, String)>,
}

impl Node {
    /// Starts `orderly serve` (node `node_id`) against `redis` and `mock`.
    pub fn start(
        node_id: &'static str,
        redis: &RedisServer,
        mock: &RunningMock,
        extra_env: &[(&str, &str)],
    ) -> Node {
        let extra_env: Vec<(String, String)> = extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (redis_url, mock_url) = (redis.url(), mock.url());
        let serve = spawn(node_id, &redis_url, &mock_url, &extra_env);
        let target = Target::new(&serve.base);
        Node {
            serve,
            target,
            node_id,
            redis_url,
            mock_url,
            extra_env,
        }
    }

    /// SIGKILLs the server.
    pub fn kill9(&mut self) {
        self.serve.kill();
    }

    /// Starts it again under the same node id (it takes its leases back at once) and points
    /// the load at its new address.
    pub fn restart(&mut self) {
        self.serve = spawn(
            self.node_id,
            &self.redis_url,
            &self.mock_url,
            &self.extra_env,
        );
        self.target.set(&self.serve.base);
    }

    /// The server's RSS from `/metrics`.
    pub async fn rss_bytes(&self) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.serve.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())
    }
}

fn spawn(node_id: &str, redis_url: &str, mock_url: &str, extra_env: &[(String, String)]) -> Serve {
    let mut command = serve_command(redis_url, node_id, SHARDS, None);
    command
        .env("ORDERLY__PAYMENTS__ROUTES__CARD", "http")
        .env("ORDERLY__PAYMENTS__ROUTES__ALIPAY", "http")
        .env("ORDERLY__PAYMENTS__ROUTES__WECHAT", "http")
        .env("ORDERLY__GATEWAYS__HTTP__BASE_URL", mock_url)
        .env("ORDERLY__GATEWAYS__HTTP__API_KEY", MOCK_KEY)
        .env("ORDERLY__PAYMENTS__ATTEMPT_TIMEOUT_MS", "1000")
        .env("ORDERLY__PAYMENTS__SYNC__WINDOW_MS", "5000")
        .env("ORDERLY__PAYMENTS__SYNC__CAP_MS", "500")
        // Abandoned carts: a reminder after 2 s, expiry after 5 s; timers polled every 200 ms.
        .env("ORDERLY__ORDERS__PAYMENT_REMINDERS_AFTER_MS", "[2000]")
        .env("ORDERLY__ORDERS__UNPAID_EXPIRY_AFTER_MS", "5000")
        .env("ORDERLY__TIMERS__POLL_INTERVAL_MS", "200")
        .env("ORDERLY__API__REQUEST_TIMEOUT_MS", "3000");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    spawn_serve_command(command)
}

/// The mock payment service with `faults`.
pub fn mock(faults: Faults) -> RunningMock {
    mock_payments::spawn(MockConfig {
        api_key: Some(MOCK_KEY.to_string()),
        faults,
        seed: 11,
    })
    .expect("mock payment service starts")
}

/// A small, realistic latency at the mock: 1-4 ms.
pub fn healthy_mock() -> RunningMock {
    mock(Faults {
        latency_base_ms: 1,
        latency_jitter_ms: 3,
        ..Faults::default()
    })
}

/// The mock's charge records.
pub async fn charges(mock: &RunningMock) -> Vec<Charge> {
    let records: Value = reqwest::Client::new()
        .get(format!("{}/v1/charges", mock.url()))
        .bearer_auth(MOCK_KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("mock answers")
        .json()
        .await
        .expect("charges are JSON");
    records
        .as_array()
        .expect("an array of charges")
        .iter()
        .map(|r| Charge {
            key: r["key"].as_str().unwrap_or_default().to_string(),
            order_id: r["order_id"].as_str().unwrap_or_default().to_string(),
            status: r["status"].as_str().unwrap_or_default().to_string(),
            refunded_minor: r["refunded_minor"].as_i64().unwrap_or(0),
        })
        .collect()
}

/// Every order in the store, read from Redis directly.
pub fn stored_orders(redis: &RedisServer) -> HashMap<String, Stored> {
    stored::order_keys(redis)
        .iter()
        .filter_map(|key| stored::stored_order(redis, key))
        .map(|order| {
            (
                order.id().to_string(),
                Stored {
                    status: order.status.as_str().to_string(),
                    version: order.version,
                    paid_minor: order.paid_minor,
                },
            )
        })
        .collect()
}

/// Event types of every order in the outbox.
pub fn outbox_events(redis: &RedisServer) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    // The shard streams and, past their cap (`[outbox] max_entries_per_shard`), their
    // overflow streams: an event is delivered from either.
    let events = (0..SHARDS).flat_map(|s| {
        let mut events = outbox::read_stream_events(redis, &format!("orderly:{{{s}}}:events"));
        events.extend(outbox::read_stream_events(
            redis,
            &format!("orderly:{{{s}}}:events:overflow"),
        ));
        events
    });
    for event in events {
        let id = event["order_id"].as_str().unwrap_or_default().to_string();
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        map.entry(id).or_default().push(kind);
    }
    map
}

/// Waits (bounded) until no stored order is in `payment_processing` or `pending_payment`
/// (abandoned carts expire): the sync window and the expiry timers have run.
pub async fn settle(redis: &RedisServer, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let open = stored_orders(redis)
            .values()
            .filter(|s| s.status == "payment_processing" || s.status == "pending_payment")
            .count();
        if open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the checker over everything the run left.
pub async fn check(journal: &Journal, redis: &RedisServer, mock: &RunningMock) -> Findings {
    let acks = journal.acks();
    let store = stored_orders(redis);
    let events = outbox_events(redis);
    let charges = charges(mock).await;
    checker::check(&acks, &store, Some(&events), Some(&charges))
}

/// The lifecycle load of a fault: `workers` clients, `(short, long)` lifecycles (one cart in
/// ten abandoned), at most 60 s (300 s in the long run).
fn start_load(
    node: &Node,
    journal: &Arc<Journal>,
    workers: usize,
    (short, long_run): (u64, u64),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(driver::run(
        node.target.clone(),
        Arc::clone(journal),
        Load {
            workers,
            lifecycles: if long() { long_run } else { short },
            abandon_every: 10,
            deadline: Duration::from_secs(if long() { 300 } else { 60 }),
        },
    ))
}

/// After the load: waits for the store to settle (bounded by `limit`), runs the checker and
/// flags every answer outside `allowed`.
async fn finish(
    journal: &Journal,
    redis: &RedisServer,
    mock: &RunningMock,
    limit: Duration,
    allowed: &[&str],
) -> Findings {
    settle(redis, limit).await;
    let mut findings = check(journal, redis, mock).await;
    flag_unexpected(&mut findings, journal, allowed);
    findings
}

/// Adds the answers the fault must not cause (beyond the `allowed` retryable ones) to the
/// findings.
fn flag_unexpected(findings: &mut Findings, journal: &Journal, allowed: &[&str]) {
    let unexpected = journal.unexpected(allowed);
    if !unexpected.is_empty() {
        findings
            .inconsistent
            .push(format!("unexpected answers {unexpected:?}"));
    }
}

/// The time from `since` until the journal holds more than `before` acknowledgements.
async fn first_ack_after(
    journal: &Journal,
    before: usize,
    since: Instant,
    limit: Duration,
) -> Duration {
    while since.elapsed() < limit {
        if journal.acks().len() > before {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    limit
}

/// **Engine crash**: SIGKILL `orderly serve` at random moments of a lifecycle load, `times`
/// times in a row, restarting it each time under the same node id.
pub async fn engine_crash() -> Row {
    let times = if long() { 20 } else { 5 };
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: "everysec",
        ..RedisOptions::default()
    });
    let mock = healthy_mock();
    let mut node = Node::start("reliability-crash", &redis, &mock, &[]);
    let journal = Arc::new(Journal::default());
    let load = start_load(&node, &journal, 24, (2_500, 40_000));
    let mut recovery = Duration::ZERO;
    for _ in 0..times {
        tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(0..900))).await;
        node.kill9();
        let before = journal.acks().len();
        let down = Instant::now();
        node.restart();
        recovery =
            recovery.max(first_ack_after(&journal, before, down, Duration::from_secs(20)).await);
    }
    let _ = load.await;
    let findings = finish(
        &journal,
        &redis,
        &mock,
        Duration::from_secs(20),
        &[
            "503 shard_unavailable",
            "503 store_unavailable",
            "503 request_timeout",
            "503 engine_stopped",
            "503 conflict_retry",
        ],
    )
    .await;
    Row {
        fault: "engine SIGKILL (restart, same node id)",
        injected: times,
        notes: format!(
            "{} lifecycles finished; outcomes {:?}",
            journal.finished.load(std::sync::atomic::Ordering::Relaxed),
            journal.outcomes(),
        ),
        findings,
        recovery: Some(recovery),
    }
}

/// **Redis restart** (`appendfsync always`): stop Redis under load, keep it away, start it
/// again. While it is away the engine answers 503 or 429 and acknowledges nothing it did not
/// store; it reconnects by itself within 2 s of Redis returning.
pub async fn redis_restart() -> Row {
    let times = if long() { 10 } else { 2 };
    let mut redis = RedisServer::start_with(RedisOptions {
        appendfsync: "always",
        ..RedisOptions::default()
    });
    let mock = healthy_mock();
    let node = Node::start("reliability-redis", &redis, &mock, &[]);
    let journal = Arc::new(Journal::default());
    let load = start_load(&node, &journal, 16, (2_000, 20_000));
    let mut recovery = Duration::ZERO;
    let mut acked_while_away = 0;
    for _ in 0..times {
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.kill9();
        let away_from = journal.acks().len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Answers in flight when Redis died may still arrive: allow those that were stored
        // before it died, which the checker verifies against the store anyway.
        acked_while_away += journal.acks().len().saturating_sub(away_from);
        let before = journal.acks().len();
        redis.start_again();
        let back = Instant::now();
        recovery =
            recovery.max(first_ack_after(&journal, before, back, Duration::from_secs(10)).await);
    }
    let _ = load.await;
    let mut findings = finish(
        &journal,
        &redis,
        &mock,
        Duration::from_secs(20),
        &[
            "503 store_unavailable",
            "503 shard_unavailable",
            "503 request_timeout",
            "503 conflict_retry",
        ],
    )
    .await;
    if recovery > Duration::from_secs(2) {
        findings.inconsistent.push(format!(
            "the first acknowledgement after Redis returned took {recovery:?} (more than 2 s)"
        ));
    }
    drop(node);
    Row {
        fault: "Redis SIGKILL + restart (appendfsync always)",
        injected: times,
        notes: format!(
            "{} lifecycles finished; {acked_while_away} answers arrived while Redis was away \
             (checked against the store); outcomes {:?}",
            journal.finished.load(std::sync::atomic::Ordering::Relaxed),
            journal.outcomes(),
        ),
        findings,
        recovery: Some(recovery),
    }
}

/// **Redis slow or full**: `DEBUG SLEEP`, `CLIENT PAUSE WRITE`, and a `maxmemory` with
/// `noeviction` that runs out, each under load. Backpressure holds (answers are 429/503, not
/// hangs), an out-of-memory store answers `503 store_full`, nothing acknowledged is lost, and
/// the process stays up with RSS at most 1.5× its level before the fault.
pub async fn redis_slow_or_full() -> Row {
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: "everysec",
        extra_args: vec![
            "--enable-debug-command".into(),
            "local".into(),
            "--maxmemory-policy".into(),
            "noeviction".into(),
        ],
    });
    let mock = healthy_mock();
    let node = Node::start("reliability-slow", &redis, &mock, &[]);
    let journal = Arc::new(Journal::default());
    let load = start_load(&node, &journal, 16, (3_000, 20_000));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_before = node.rss_bytes().await.unwrap_or(0.0);
    let mut recovery = Duration::ZERO;
    // 1. The server stops answering for a second.
    let before = journal.acks().len();
    redis.command(&["DEBUG", "SLEEP", "1"]);
    let back = Instant::now();
    recovery = recovery.max(first_ack_after(&journal, before, back, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 2. Writes paused for 1.5 s.
    redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = journal.acks().len();
    let back = Instant::now();
    recovery = recovery.max(first_ack_after(&journal, before, back, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 3. Memory runs out: maxmemory just above what is used now.
    let used = info_field(&redis, "memory", "used_memory").unwrap_or(2_000_000);
    redis.command(&[
        "CONFIG",
        "SET",
        "maxmemory",
        &(used + 256 * 1024).to_string(),
    ]);
    let full_deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < full_deadline && !journal.outcomes().contains_key("503 store_full") {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saw_full = journal
        .outcomes()
        .get("503 store_full")
        .copied()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_during = node.rss_bytes().await;
    let before = journal.acks().len();
    redis.command(&["CONFIG", "SET", "maxmemory", "0"]);
    let back = Instant::now();
    recovery = recovery.max(first_ack_after(&journal, before, back, Duration::from_secs(10)).await);
    let _ = load.await;
    let rss_after = node.rss_bytes().await;
    settle(&redis, Duration::from_secs(20)).await;
    let mut findings = check(&journal, &redis, &mock).await;
    let up = rss_after.is_some();
    let rss_peak = rss_during.unwrap_or(0.0).max(rss_after.unwrap_or(0.0));
    if !up {
        findings
            .lost
            .push("orderly serve did not survive the faults".into());
    }
    if saw_full == 0 {
        findings
            .inconsistent
            .push("a full store never answered 503 store_full".into());
    }
    if rss_before > 0.0 && rss_peak > rss_before * 1.5 {
        findings.inconsistent.push(format!(
            "RSS grew from {rss_before} to {rss_peak} bytes (more than 1.5x)"
        ));
    }
    flag_unexpected(
        &mut findings,
        &journal,
        &[
            "503 store_unavailable",
            "503 store_full",
            "503 shard_unavailable",
            "503 request_timeout",
            "503 conflict_retry",
        ],
    );
    Row {
        fault: "Redis DEBUG SLEEP, CLIENT PAUSE, maxmemory full",
        injected: 3,
        notes: format!(
            "{} lifecycles finished; {saw_full} × 503 store_full; RSS {:.1} MB before, {:.1} MB \
             peak; outcomes {:?}",
            journal.finished.load(std::sync::atomic::Ordering::Relaxed),
            rss_before / 1e6,
            rss_peak / 1e6,
            journal.outcomes()
        ),
        findings,
        recovery: Some(recovery),
    }
}

/// A numeric field of `INFO section`.
fn info_field(redis: &RedisServer, section: &str, field: &str) -> Option<u64> {
    let reply = redis.command(&["INFO", section]);
    let text = reply.as_str()?.to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// A counter or gauge of `/metrics` (summed over series matching `labels`).
async fn metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Ok(response) = reqwest::get(format!("{}/metrics", node.serve.base)).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sets the mock's faults.
async fn set_mock_faults(mock: &RunningMock, faults: &Faults) {
    reqwest::Client::new()
        .post(format!("{}/v1/faults", mock.url()))
        .bearer_auth(MOCK_KEY)
        .json(faults)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("mock takes new faults");
}

/// **Gateway chaos**: the mock payment service takes 30% of charges and never answers them
/// (the call times out), answers 10% with a 5xx, answers slowly, and then is fully out for a
/// while. Zero double charges; every order ends consistent with the mock's ledger; the breaker
/// opens during the outage and closes after it.
pub async fn gateway_chaos() -> Row {
    let chaos = Faults {
        latency_base_ms: 5,
        latency_jitter_ms: 40,
        latency_tail_rate: 0.05,
        latency_tail_ms: 400,
        timeout_rate: 0.3,
        server_error_rate: 0.1,
        hang_ms: 1500,
        ..Faults::default()
    };
    let outage = Faults {
        not_sent_rate: 1.0,
        ..Faults::default()
    };
    let outage_for = Duration::from_secs(if long() { 10 } else { 4 });
    let mock = mock(chaos.clone());
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: "everysec",
        ..RedisOptions::default()
    });
    let node = Node::start(
        "reliability-chaos",
        &redis,
        &mock,
        &[
            ("ORDERLY__PAYMENTS__BREAKER__FAILURES_TO_OPEN", "10"),
            ("ORDERLY__PAYMENTS__BREAKER__OPEN_MS", "1000"),
        ],
    );
    let journal = Arc::new(Journal::default());
    let load = start_load(&node, &journal, 24, (600, 5_000));
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_mock_faults(&mock, &outage).await;
    tokio::time::sleep(outage_for).await;
    set_mock_faults(&mock, &chaos).await;
    let before = journal.acks().len();
    let back = Instant::now();
    let recovery = first_ack_after(&journal, before, back, Duration::from_secs(20)).await;
    let _ = load.await;
    settle(&redis, Duration::from_secs(30)).await;
    let mut findings = check(&journal, &redis, &mock).await;
    let opened = metric(
        &node,
        "orderly_gateway_breaker_transitions_total",
        &[("to", "open")],
    )
    .await;
    let closed = metric(
        &node,
        "orderly_gateway_breaker_transitions_total",
        &[("to", "closed")],
    )
    .await;
    if opened < 1.0 || closed < 1.0 {
        findings.inconsistent.push(format!(
            "the breaker opened {opened} and closed {closed} times (each must be at least 1)"
        ));
    }
    flag_unexpected(
        &mut findings,
        &journal,
        &[
            "503 store_unavailable",
            "503 request_timeout",
            "409 illegal_transition",
        ],
    );
    Row {
        fault: "gateway chaos: 30% timeouts after charging, 10% 5xx, slow, outage",
        injected: 1,
        notes: format!(
            "{} lifecycles finished; outage {} s; breaker opened {opened} / closed {closed}; \
             outcomes {:?}",
            journal.finished.load(std::sync::atomic::Ordering::Relaxed),
            outage_for.as_secs(),
            journal.outcomes()
        ),
        findings,
        recovery: Some(recovery),
    }
}
