//! A real Prometheus (Debian's `prometheus`) scrapes a real `orderly serve` every second while
//! the test drives orders through the HTTP API, the bulk endpoint and the Redis Stream ingest.
//! Then, through Prometheus' HTTP API, every PromQL expression of the Grafana dashboard and of
//! the recording rules must return data, every recorded series must exist, and every rule of
//! `config/prometheus/rules` (alerts included) must evaluate without error against real
//! series: a many-to-many join or a wrong label only shows up there, never in `promtool`.
//!
//! The engine runs on a throw-away `redis-server` with a webhook receiver, stream ingest and
//! short timers, so that the outbox, webhook, ingest and timer panels have series to show, as
//! they would in production.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderly::telemetry::{Kind, CATALOGUE};
use serde_json::{json, Value};
use support::receiver::{Behaviour, Receiver};
use support::redis_server::{RedisOptions, RedisServer};
use support::serve::{config_file, spawn_serve};

/// How long the load runs: several 1 s scrapes and rule evaluations.
const LOAD_FOR: Duration = Duration::from_secs(8);
/// Most lifecycles driven through the single-order API.
const LIFECYCLES_MAX: u64 = 300;
/// Concurrent API clients.
const CLIENTS: usize = 4;
/// Longest wait for Prometheus to start and answer `/-/ready`.
const PROMETHEUS_READY: Duration = Duration::from_secs(30);
/// Longest wait, after the load, for every expression to return data (the last scrapes, rule
/// evaluations and timers land within a few seconds).
const DATA_WAIT: Duration = Duration::from_secs(45);
/// Longest wait for one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The webhook receiver's secret.
const SECRET: &str = "whsec_prometheus_test";
/// The ingest stream the engine consumes.
const INGEST_STREAM: &str = "test:ingest";
/// The datasource uid of config/grafana/provisioning/datasources/prometheus.yml.
const DATASOURCE_UID: &str = "orderly-prometheus";

/// Grafana's variables and the fixed values they take here: a 30 s rate window spans many 1 s
/// scrapes, as `$__rate_interval` spans at least four in Grafana.
const SUBSTITUTIONS: [(&str, &str); 4] = [
    ("__rate_interval", "30s"),
    ("__interval", "5s"),
    ("__range", "1m"),
    ("currency", "USD"),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A loopback port the OS reports free now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A `prometheus` child with its own config and data directory, killed on drop (the
/// directory goes after it).
struct Prometheus {
    child: Child,
    base: String,
    _dir: Option<tempfile::TempDir>,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second and evaluating the repo's
    /// rule files every second; waits until it is ready.
    async fn start(client: &reqwest::Client, target: &str) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("orderly-prometheus-")
            .tempdir()
            .expect("temp dir for prometheus");
        let rule_files = rule_files();
        assert!(
            !rule_files.is_empty(),
            "no rule files in config/prometheus/rules"
        );
        let rules: String = rule_files
            .iter()
            .map(|p| format!("  - {:?}\n", p.display().to_string()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{rules}\
             scrape_configs:\n  - job_name: orderly\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        // Another process may take the port between the probe and the bind: try a few.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("prometheus-{port}.log"));
            let log = File::create(&log_path).expect("prometheus log file");
            let spawned = Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn();
            let child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                    "`prometheus` is not on PATH: install Debian's `prometheus` package \
                     (apt-get install -y prometheus)"
                ),
                Err(e) => panic!("cannot start prometheus: {e}"),
            };
            let mut prometheus = Prometheus {
                child,
                base: format!("http://127.0.0.1:{port}"),
                _dir: None,
            };
            match prometheus.wait_ready(client).await {
                Ok(()) => {
                    prometheus._dir = Some(dir);
                    return prometheus;
                }
                Err(why) => {
                    prometheus.stop();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    if !log.contains("address already in use") {
                        panic!("prometheus did not start: {why}\n{log}");
                    }
                    failures.push(format!("port {port}: {why}"));
                }
            }
        }
        panic!("prometheus found no free port: {failures:?}");
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> Result<(), String> {
        let deadline = Instant::now() + PROMETHEUS_READY;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait prometheus") {
                return Err(format!("exited with {status}"));
            }
            if let Ok(response) = client.get(format!("{}/-/ready", self.base)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not ready within {PROMETHEUS_READY:?}"))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Evaluates `expr` now; answers the result list (a scalar counts as one result) or the
    /// error Prometheus gave.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Result<Vec<Value>, String> {
        let response = client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match &body["data"]["result"] {
            Value::Array(results) if body["data"]["resultType"] == "scalar" => {
                Ok(vec![Value::Array(results.clone())])
            }
            Value::Array(results) => Ok(results.clone()),
            other => Err(format!("unexpected result {other}")),
        }
    }

    /// The loaded rule groups (`/api/v1/rules`).
    async fn rule_groups(&self, client: &reqwest::Client) -> Vec<Value> {
        let body: Value = client
            .get(format!("{}/api/v1/rules", self.base))
            .send()
            .await
            .expect("GET /api/v1/rules")
            .json()
            .await
            .expect("rules JSON");
        body["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no rule groups: {body}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The repo's rule files, by absolute path.
fn rule_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("config/prometheus/rules"))
        .expect("config/prometheus/rules")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Replaces Grafana's `$name` and `${name}` variables with [`SUBSTITUTIONS`].
fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (name, value) in SUBSTITUTIONS {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// One PromQL expression to evaluate, and where it comes from.
struct Expression {
    origin: String,
    expr: String,
}

/// Every target expression of the dashboard's panels, rows' nested panels included.
fn dashboard_expressions(dashboard: &Value) -> Vec<Expression> {
    fn walk(panels: &Value, out: &mut Vec<Expression>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push(Expression {
                        origin: format!("dashboard panel {title:?} target {}", target["refId"]),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Checks the dashboard's conventions: every panel and target uses the provisioned datasource
/// uid, and every range in a `rate`/`increase` comes from a Grafana variable.
fn check_dashboard_conventions(dashboard: &Value, expressions: &[Expression]) {
    let provisioned = std::fs::read_to_string(
        repo().join("config/grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("datasource provisioning");
    assert!(
        provisioned.contains(&format!("uid: {DATASOURCE_UID}")),
        "the provisioned datasource has uid {DATASOURCE_UID}"
    );
    let mut wrong = Vec::new();
    fn uids(value: &Value, path: &str, wrong: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(ds) = map.get("datasource") {
                    if ds["uid"] != DATASOURCE_UID {
                        wrong.push(format!("{path}: datasource {ds}"));
                    }
                }
                for (k, v) in map {
                    if k != "datasource" {
                        uids(v, &format!("{path}.{k}"), wrong);
                    }
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    uids(v, &format!("{path}[{i}]"), wrong);
                }
            }
            _ => {}
        }
    }
    uids(dashboard, "dashboard", &mut wrong);
    assert!(
        wrong.is_empty(),
        "datasources other than {DATASOURCE_UID}: {wrong:#?}"
    );
    let mut fixed = Vec::new();
    for e in expressions {
        for (i, _) in e.expr.match_indices('[') {
            let window = &e.expr[i + 1..];
            if !window.starts_with('$') {
                fixed.push(format!("{}: {}", e.origin, e.expr));
            }
        }
    }
    assert!(
        fixed.is_empty(),
        "dashboard ranges must be $__rate_interval or $__range: {fixed:#?}"
    );
}

/// The metric names `expr` uses that are not in the catalogue (`telemetry::CATALOGUE`;
/// histograms by their `_bucket`, `_sum` and `_count` series). Recorded series (names with a
/// colon) are checked against Prometheus instead.
fn unknown_metrics(expr: &str) -> Vec<String> {
    let known = |name: &str| {
        CATALOGUE.iter().any(|f| {
            f.name == name
                || (f.kind == Kind::Histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(f.name)))
        })
    };
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut unknown = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| is_ident(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        // Inside a string (a label value such as "orderly:webhooks:crm:dead") nothing counts.
        let quoted = rest[..start].matches('"').count() % 2 == 1;
        if !quoted
            && !word.contains(':')
            && (word.starts_with("orderly_") || word.starts_with("process_"))
            && !known(word)
        {
            unknown.push(word.to_string());
        }
        rest = &tail[end..];
    }
    unknown
}

/// The dashboard's template variables as `(name, metric, label)` from
/// `label_values(metric, label)`.
fn label_values_variables(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = variable["name"].as_str().unwrap_or("?").to_string();
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: expected label_values(…), got {query}"));
        let (metric, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: label_values needs a metric: {query}"));
        out.push((name, metric.trim().to_string(), label.trim().to_string()));
    }
    out
}

/// Counts of what the load did, for the failure messages.
#[derive(Default)]
struct Driven {
    placed: AtomicU64,
    paid: AtomicU64,
    refunded: AtomicU64,
    bulk_lines: AtomicU64,
    stream_entries: AtomicU64,
}

impl std::fmt::Debug for Driven {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "placed {} (single), paid {}, refunded {}, bulk lines {}, stream entries {}",
            self.placed.load(Ordering::Relaxed),
            self.paid.load(Ordering::Relaxed),
            self.refunded.load(Ordering::Relaxed),
            self.bulk_lines.load(Ordering::Relaxed),
            self.stream_entries.load(Ordering::Relaxed),
        )
    }
}

/// An order body; `n` varies the currency (a quarter in JPY), the payment method and the items.
fn order(n: u64) -> Value {
    let (currency, price) = if n % 4 == 3 {
        ("JPY", "1200")
    } else {
        ("USD", "19.99")
    };
    let method = ["card", "alipay", "wechat"][(n % 3) as usize];
    json!({
        "customer_id": format!("c-{n}"),
        "currency": currency,
        "payment_method": method,
        "items": [{"sku": format!("sku-{}", n % 7), "quantity": n % 3 + 1, "unit_price": price}],
        "metadata": {}
    })
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One order's life through the single-order API; `n` picks how far it gets, so that every
/// status, timer and money counter moves: unpaid (reminder, expiry), paid then refunded, paid
/// only (ship SLA), shipped only (auto-complete), cancelled, and most delivered.
async fn lifecycle(client: &reqwest::Client, base: &str, n: u64, driven: &Driven) {
    let (status, placed) = post(client, format!("{base}/v1/orders"), order(n)).await;
    assert_eq!(status, 201, "place: {placed}");
    driven.placed.fetch_add(1, Ordering::Relaxed);
    let id = placed["order_id"].as_str().expect("order_id").to_string();
    let order_url = format!("{base}/v1/orders/{id}");
    let read = client.get(&order_url).send().await.expect("GET order");
    assert_eq!(read.status(), 200);
    match n % 10 {
        0 => return,
        1 => {
            let (status, _) = post(client, format!("{order_url}/cancel"), json!({})).await;
            assert_eq!(status, 200, "cancel");
            return;
        }
        _ => {}
    }
    // The simulated gateways decline some charges: a customer tries once more.
    let mut paid = false;
    for _ in 0..2 {
        let (_, body) = post(client, format!("{order_url}/pay"), json!({})).await;
        if body["status"] == "paid" {
            paid = true;
            break;
        }
    }
    if !paid {
        return;
    }
    driven.paid.fetch_add(1, Ordering::Relaxed);
    match n % 10 {
        2 => {
            let (status, body) = post(client, format!("{order_url}/refund"), json!({})).await;
            assert_eq!(status, 200, "refund: {body}");
            driven.refunded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        3 => return,
        5 => {
            // Paying twice is refused by the domain: a rejected command and a 4xx.
            let (status, _) = post(client, format!("{order_url}/pay"), json!({})).await;
            assert!((400..500).contains(&status), "second pay answered {status}");
        }
        _ => {}
    }
    let (status, _) = post(
        client,
        format!("{order_url}/ship"),
        json!({"tracking_number": format!("t-{n}")}),
    )
    .await;
    assert_eq!(status, 200, "ship");
    if n % 10 == 4 {
        return;
    }
    let (status, _) = post(client, format!("{order_url}/deliver"), json!({})).await;
    assert_eq!(status, 200, "deliver");
}

/// One bulk request of `lines` valid orders and one invalid line.
async fn bulk(client: &reqwest::Client, base: &str, first: u64, lines: u64, driven: &Driven) {
    let mut body = String::new();
    for n in first..first + lines {
        body.push_str(&order(n).to_string());
        body.push('\n');
    }
    body.push_str("{\"customer_id\":\"c-bad\",\"currency\":\"XXX\"}\n");
    let response = client
        .post(format!("{base}/v1/orders/bulk"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("POST /v1/orders/bulk");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("bulk response");
    assert!(text.contains("\"summary\""), "bulk summary missing: {text}");
    driven.bulk_lines.fetch_add(lines + 1, Ordering::Relaxed);
}

/// Appends `count` orders and one undecodable entry to the ingest stream.
fn ingest(redis: &RedisServer, first: u64, count: u64, driven: &Driven) {
    for n in first..first + count {
        let reply = redis.command(&["XADD", INGEST_STREAM, "*", "order", &order(n).to_string()]);
        assert!(reply.as_str().is_some(), "XADD: {reply}");
    }
    let reply = redis.command(&["XADD", INGEST_STREAM, "*", "order", "not json"]);
    assert!(reply.as_str().is_some(), "XADD: {reply}");
    driven
        .stream_entries
        .fetch_add(count + 1, Ordering::Relaxed);
}

/// Drives the load for [`LOAD_FOR`]: [`CLIENTS`] single-order clients, and a bulk request and
/// a few stream entries every half second.
async fn drive_load(client: &reqwest::Client, base: &str, redis: &RedisServer) -> Arc<Driven> {
    let driven = Arc::new(Driven::default());
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + LOAD_FOR;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, base, driven, next) = (
            client.clone(),
            base.to_string(),
            Arc::clone(&driven),
            Arc::clone(&next),
        );
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= LIFECYCLES_MAX {
                    break;
                }
                lifecycle(&client, &base, n, &driven).await;
            }
        }));
    }
    // Ids far from the single-order ones: each line is a distinct customer.
    let mut n = 1_000_000;
    while Instant::now() < deadline {
        bulk(client, base, n, 20, &driven).await;
        n += 20;
        tokio::task::block_in_place(|| ingest(redis, n, 5, &driven));
        n += 5;
        // A 404: the HTTP panels see a 4xx class.
        let missing = client
            .get(format!("{base}/v1/orders/not-an-order"))
            .send()
            .await
            .expect("GET missing order");
        assert_eq!(missing.status(), 404);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for task in clients {
        task.await.expect("client task");
    }
    driven
}

/// What is still wrong with the data in Prometheus; empty once everything has data.
async fn problems(
    prometheus: &Prometheus,
    client: &reqwest::Client,
    expressions: &[Expression],
    variables: &[(String, String, String)],
) -> Vec<String> {
    let mut problems = Vec::new();
    match prometheus.query(client, "up{job=\"orderly\"} == 1").await {
        Ok(r) if !r.is_empty() => {}
        other => problems.push(format!("the orderly target is not up: {other:?}")),
    }
    for e in expressions {
        match prometheus.query(client, &e.expr).await {
            Ok(results) if !results.is_empty() => {}
            Ok(_) => problems.push(format!("no data: {}: {}", e.origin, e.expr)),
            Err(error) => problems.push(format!("error: {}: {}: {error}", e.origin, e.expr)),
        }
    }
    for (name, metric, label) in variables {
        let values: BTreeSet<String> = prometheus
            .query(client, metric)
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["metric"][label.as_str()].as_str().map(str::to_string))
            .collect();
        if values.is_empty() {
            problems.push(format!(
                "variable ${name}: label_values({metric}, {label}) is empty"
            ));
        }
    }
    // Every rule of every file is loaded, evaluated and healthy; every recording rule's query
    // returns data and its series exists.
    let groups = prometheus.rule_groups(client).await;
    let files: BTreeSet<String> = groups
        .iter()
        .filter_map(|g| g["file"].as_str().map(str::to_string))
        .collect();
    for file in rule_files() {
        if !files.contains(&file.display().to_string()) {
            problems.push(format!("rule file not loaded: {}", file.display()));
        }
    }
    for group in &groups {
        for rule in group["rules"].as_array().into_iter().flatten() {
            let name = rule["name"].as_str().unwrap_or("?");
            for metric in unknown_metrics(rule["query"].as_str().unwrap_or_default()) {
                problems.push(format!("rule {name} uses {metric}, not in the catalogue"));
            }
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {name} ({}): health {}, last error {}",
                    group["name"], rule["health"], rule["lastError"]
                ));
            }
            if rule["type"] != "recording" {
                continue;
            }
            let query = rule["query"].as_str().unwrap_or_default();
            match prometheus.query(client, query).await {
                Ok(results) if !results.is_empty() => {}
                Ok(_) => problems.push(format!("no data: recording rule {name}: {query}")),
                Err(error) => problems.push(format!("error: recording rule {name}: {error}")),
            }
            match prometheus.query(client, name).await {
                Ok(results) if !results.is_empty() => {}
                other => problems.push(format!("recorded series {name} missing: {other:?}")),
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_recording_rule_expression_returns_data_in_a_real_prometheus() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("config/grafana/dashboards/orderly.json"))
            .expect("config/grafana/dashboards/orderly.json"),
    )
    .expect("the dashboard is JSON");
    let raw = dashboard_expressions(&dashboard);
    assert!(!raw.is_empty(), "the dashboard has no PromQL targets");
    check_dashboard_conventions(&dashboard, &raw);
    let outside: Vec<String> = raw
        .iter()
        .flat_map(|e| {
            unknown_metrics(&e.expr)
                .into_iter()
                .map(move |m| format!("{}: {m}", e.origin))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "dashboard metrics outside the catalogue: {outside:#?}"
    );
    let expressions: Vec<Expression> = raw
        .iter()
        .map(|e| Expression {
            origin: e.origin.clone(),
            expr: substitute(&e.expr),
        })
        .collect();
    let unknown: Vec<&Expression> = expressions
        .iter()
        .filter(|e| e.expr.contains('$'))
        .collect();
    assert!(
        unknown.is_empty(),
        "variables without a test value: {:?}",
        unknown.iter().map(|e| &e.expr).collect::<Vec<_>>()
    );
    let variables = label_values_variables(&dashboard);

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client");
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: "everysec",
        ..RedisOptions::default()
    });
    let hook = Receiver::start(SECRET, Behaviour::Healthy);
    let dir = tempfile::tempdir().expect("temp dir");
    // Timers short enough to fire during the run; a fault profile that declines and drops a
    // few charges, so that R is below 1 and retries happen, as in production.
    let config = config_file(
        dir.path(),
        "prometheus-test.toml",
        &format!(
            r#"
[orders]
payment_reminders_after_ms = [1000]
unpaid_expiry_after_ms = 3000
auto_complete_after_ms = 2000
ship_sla_ms = 2000

[timers]
poll_interval_ms = 200

[ingest]
enabled = true
stream = "{INGEST_STREAM}"
dead_letter_stream = "{INGEST_STREAM}:dead"
block_ms = 100
batch_size = 64

[payments]
fault_profile = "some_declines"

[payments.fault_profiles.some_declines]
decline_hard_rate = 0.05
decline_soft_rate = 0.05
not_sent_rate = 0.05

[webhooks]
poll_interval_ms = 50
retry_initial_ms = 20
retry_cap_ms = 100

[[webhooks.receivers]]
name = "crm"
url = "{}"
secret = "{SECRET}"
"#,
            hook.url
        ),
    );
    let serve = spawn_serve(&redis.url(), "node-1", 4, Some(&config));
    let target = serve
        .base
        .strip_prefix("http://")
        .expect("serve prints an http:// address")
        .to_string();
    let prometheus = Prometheus::start(&client, &target).await;

    let driven = drive_load(&client, &serve.base, &redis).await;
    assert!(
        driven.paid.load(Ordering::Relaxed) > 0,
        "the load paid no order: {driven:?}"
    );

    let deadline = Instant::now() + DATA_WAIT;
    let mut remaining = problems(&prometheus, &client, &expressions, &variables).await;
    while !remaining.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        remaining = problems(&prometheus, &client, &expressions, &variables).await;
    }
    assert!(
        remaining.is_empty(),
        "{} problems after {DATA_WAIT:?} (load: {driven:?}; {} dashboard expressions; \
         webhook events delivered: {}):\n{}\nserve log tail:\n{}",
        remaining.len(),
        expressions.len(),
        hook.event_ids().len(),
        remaining.join("\n"),
        log_tail(&serve.log.lock().unwrap(), 20),
    );
}

fn log_tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn the_catalogue_check_sees_unknown_names_and_ignores_label_values_and_recorded_series() {
    assert_eq!(
        unknown_metrics(
            "sum(rate(orderly_no_such_total[5m])) / orderly_commit_batch_duration_seconds_bucket"
        ),
        vec!["orderly_no_such_total".to_string()]
    );
    assert!(unknown_metrics(
        r#"orderly_webhook_deliveries_total{receiver="orderly_x"} and on () currency:orderly_x:rate5m"#
    )
    .is_empty());
}
