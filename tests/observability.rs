//! What operators read: `/metrics` after a run through the API (valid exposition, every
//! catalogue family, figures that match the run exactly, status counts that survive a restart
//! on Redis) and `/v1/stats` (rates that agree with the counters over the same window).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use orderly::telemetry::CATALOGUE;
use serde_json::{json, Value};
use support::receiver::{Behaviour, Receiver};
use support::redis_server::RedisServer;
use support::serve::{config_file, spawn_serve, Serve};

const SHARDS: u32 = 4;
const SECRET: &str = "observability-secret";

/// One order to place: (currency, payment method, [(quantity, unit price)]).
type Placement = (&'static str, &'static str, Vec<(u64, &'static str)>);

/// The orders placed.
fn orders() -> Vec<Placement> {
    (0..48)
        .map(|i| {
            let (currency, method) = match i % 3 {
                0 => ("USD", "card"),
                1 => ("EUR", "alipay"),
                _ => ("JPY", "wechat_pay"),
            };
            let price = match currency {
                "JPY" => "1250",
                "EUR" => "7.35",
                _ => "19.99",
            };
            let extra = if currency == "JPY" { "80" } else { "0.50" };
            (currency, method, vec![(1 + i % 4, price), (2, extra)])
        })
        .collect()
}

/// Minor units of a decimal price in `currency` (the test's prices have at most the
/// currency's decimals).
fn minor(currency: &str, price: &str) -> u64 {
    let exponent = if currency == "JPY" { 0 } else { 2 };
    let (whole, fraction) = price.split_once('.').unwrap_or((price, ""));
    let mut fraction = fraction.to_string();
    while fraction.len() < exponent {
        fraction.push('0');
    }
    let digits = format!("{whole}{fraction}");
    digits.parse().expect("price digits")
}

fn line(currency: &str, method: &str, items: &[(u64, &str)]) -> String {
    let items: Vec<Value> = items
        .iter()
        .map(|(q, p)| json!({"sku": "sku-1", "quantity": q, "unit_price": p}))
        .collect();
    json!({"customer_id": "c-1", "currency": currency, "payment_method": method, "items": items})
        .to_string()
}

/// The exposition parsed into series (`name{labels}` exactly as written) and values.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` with exactly these labels (in any order), or 0 when absent.
fn value(series: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|(key, _)| {
            let (n, rest) = key.split_once('{').unwrap_or((key.as_str(), "}"));
            if n != name {
                return false;
            }
            let body = rest.trim_end_matches('}');
            let have: Vec<&str> = if body.is_empty() {
                Vec::new()
            } else {
                body.split(',').collect()
            };
            have.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| have.contains(&format!("{k}=\"{v}\"").as_str()))
        })
        .map(|(_, v)| *v)
        .sum()
}

async fn get_text(client: &reqwest::Client, url: &str) -> String {
    let response = client.get(url).send().await.expect("GET");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.text().await.expect("body")
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> Value {
    let response = client.post(url).json(&body).send().await.expect("POST");
    let status = response.status();
    let body: Value = response.json().await.expect("JSON");
    assert!(status.is_success(), "{url}: {status} {body}");
    body
}

/// `promtool check metrics` over an exposition: the Prometheus project's own linter.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`: apt-get install -y prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write exposition");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn config(dir: &std::path::Path, hook: &Receiver) -> std::path::PathBuf {
    config_file(
        dir,
        "observability.toml",
        &format!(
            r#"
[webhooks]
timeout_ms = 1000
poll_interval_ms = 20

[[webhooks.receivers]]
name = "crm"
url = "{}"
secret = "{SECRET}"
events = ["order_placed", "order_paid"]
"#,
            hook.url
        ),
    )
}

/// Waits (bounded) until `/metrics` satisfies `done`; answers the last scrape.
async fn scrape_until(
    client: &reqwest::Client,
    serve: &Serve,
    what: &str,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> (String, HashMap<String, f64>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = get_text(client, &format!("{}/metrics", serve.base)).await;
        let series = scrape(&text);
        if done(&series) {
            return (text, series);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never true; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn metrics_after_an_api_run_match_it_exactly_and_status_counts_survive_a_restart() {
    let server = RedisServer::start();
    let hook = Receiver::start(SECRET, Behaviour::Healthy);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &hook);
    let mut serve = spawn_serve(&server.url(), "node-1", SHARDS, Some(&config));
    let client = reqwest::Client::new();

    // Place every order through bulk NDJSON, then drive a known share of them.
    let orders = orders();
    let body: String = orders
        .iter()
        .map(|(c, m, items)| line(c, m, items) + "\n")
        .collect();
    let response = client
        .post(format!("{}/v1/orders/bulk", serve.base))
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("bulk");
    assert!(response.status().is_success());
    let text = response.text().await.expect("bulk answer");
    let ids: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["status"] == "accepted")
        .map(|v| v["order_id"].as_str().expect("order_id").to_string())
        .collect();
    assert_eq!(ids.len(), orders.len(), "every line accepted: {text}");

    let mut expected_status: BTreeMap<&str, f64> = BTreeMap::new();
    let mut placed: BTreeMap<&str, u64> = BTreeMap::new();
    let mut paid: BTreeMap<&str, u64> = BTreeMap::new();
    let mut refunded: BTreeMap<&str, u64> = BTreeMap::new();
    let mut items = 0;
    for (i, (id, (currency, _, lines))) in ids.iter().zip(&orders).enumerate() {
        let total: u64 = lines.iter().map(|(q, p)| q * minor(currency, p)).sum();
        items += lines.iter().map(|(q, _)| q).sum::<u64>();
        *placed.entry(currency).or_default() += total;
        let url = |verb: &str| format!("{}/v1/orders/{id}/{verb}", serve.base);
        let status = match i % 6 {
            0 => "pending_payment",
            1 => {
                post(&client, &url("cancel"), json!({"reason": "changed mind"})).await;
                "cancelled"
            }
            _ => {
                let answer = post(&client, &url("pay"), json!({})).await;
                assert_eq!(answer["status"], "paid", "{answer}");
                *paid.entry(currency).or_default() += total;
                match i % 6 {
                    2 => "paid",
                    3 => {
                        post(&client, &url("ship"), json!({"tracking_number": "T-1"})).await;
                        "shipped"
                    }
                    4 => {
                        post(&client, &url("ship"), json!({"tracking_number": "T-2"})).await;
                        post(&client, &url("deliver"), json!({})).await;
                        "completed"
                    }
                    _ => {
                        // The answer comes once the refund is under way; its verdict follows.
                        let answer = post(&client, &url("refund"), json!({})).await;
                        assert!(
                            answer["status"] == "refunding" || answer["status"] == "refunded",
                            "{answer}"
                        );
                        *refunded.entry(currency).or_default() += total;
                        "refunded"
                    }
                }
            }
        };
        *expected_status.entry(status).or_default() += 1.0;
    }

    // Refund verdicts and webhooks finish in the background; wait until both show.
    let refunds_done = refunded.values().sum::<u64>() as f64;
    let (text, series) = scrape_until(
        &client,
        &serve,
        "refunds settled, webhooks delivered",
        |s| {
            let refunded_now: f64 = ["USD", "EUR", "JPY"]
                .iter()
                .map(|c| value(s, "orderly_refunded_value_minor_total", &[("currency", c)]))
                .sum();
            refunded_now == refunds_done
                && value(
                    s,
                    "orderly_webhook_deliveries_total",
                    &[("receiver", "crm"), ("outcome", "delivered")],
                ) > 0.0
        },
    )
    .await;
    promtool_check(&text);
    for family in CATALOGUE {
        let present = text.lines().any(|l| {
            l.strip_prefix(family.name)
                .is_some_and(|rest| rest.starts_with(['{', ' ', '_']))
        });
        assert!(present, "{} is missing from /metrics", family.name);
    }

    let n = orders.len() as f64;
    assert_eq!(
        value(
            &series,
            "orderly_bulk_lines_total",
            &[("status", "accepted")]
        ),
        n
    );
    assert_eq!(
        value(
            &series,
            "orderly_commands_total",
            &[("command", "place"), ("outcome", "ok")]
        ),
        n,
        "orders placed equals lines accepted"
    );
    assert_eq!(
        value(&series, "orderly_order_items_total", &[]),
        items as f64,
        "O"
    );
    for currency in ["USD", "EUR", "JPY"] {
        let c = [("currency", currency)];
        let get = |m: &BTreeMap<&str, u64>| m.get(currency).copied().unwrap_or(0) as f64;
        assert_eq!(
            value(&series, "orderly_order_value_minor_total", &c),
            get(&placed),
            "P {currency}"
        );
        assert_eq!(
            value(&series, "orderly_paid_value_minor_total", &c),
            get(&paid),
            "paid {currency}"
        );
        assert_eq!(
            value(&series, "orderly_refunded_value_minor_total", &c),
            get(&refunded),
            "refunded {currency}"
        );
    }
    assert_eq!(
        value(
            &series,
            "orderly_currency_info",
            &[("currency", "JPY"), ("minor_units", "0")]
        ),
        1.0
    );
    let statuses = |series: &HashMap<String, f64>| -> BTreeMap<String, f64> {
        orderly::domain::OrderStatus::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str().to_string(),
                    value(series, "orderly_orders", &[("status", s.as_str())]),
                )
            })
            .filter(|(_, n)| *n != 0.0)
            .collect()
    };
    let expected: BTreeMap<String, f64> = expected_status
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert_eq!(statuses(&series), expected, "orders by status");

    // A restart (kill -9, same node id: the leases come back at once) reads the counts back
    // from Redis; nothing is live, so they cannot come from the actors.
    serve.kill();
    let serve = spawn_serve(&server.url(), "node-1", SHARDS, Some(&config));
    let (_, after) = scrape_until(&client, &serve, "status counts read back", |s| {
        value(s, "orderly_shards_owned", &[]) == f64::from(SHARDS) && statuses(s) == expected
    })
    .await;
    assert_eq!(value(&after, "orderly_live_orders", &[]), 0.0);
    assert_eq!(
        value(
            &after,
            "orderly_commands_total",
            &[("command", "place"), ("outcome", "ok")]
        ),
        0.0,
        "counters are per process; the gauge is the store's"
    );
}

#[actix_rt::test]
async fn stats_rates_agree_with_the_counters_over_the_same_window() {
    let server = RedisServer::start();
    let serve = spawn_serve(&server.url(), "node-1", SHARDS, None);
    let client = reqwest::Client::new();
    let stats = |client: reqwest::Client, base: String| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let response = client
                .get(format!("{base}/v1/stats"))
                .send()
                .await
                .expect("GET");
            if response.status().is_success() {
                return response.json::<Value>().await.expect("JSON");
            }
            assert!(Instant::now() < deadline, "/v1/stats never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The first sample exists before the burst, so the window (10 s, or since the first
    // sample) covers all of it.
    let before = stats(client.clone(), serve.base.clone()).await;
    let k: u64 = 30;
    let body: String = (0..k)
        .map(|_| line("USD", "card", &[(2, "3.00")]) + "\n")
        .collect();
    let response = client
        .post(format!("{}/v1/orders/bulk", serve.base))
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .expect("bulk");
    assert!(response.status().is_success());
    response.text().await.expect("bulk answer");
    // Wait for a sample after the burst.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let now = stats(client.clone(), serve.base.clone()).await;
        if now["totals"]["orders_placed"].as_u64() == Some(k) {
            break now;
        }
        assert!(Instant::now() < deadline, "the burst never showed: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(after["at_ms"].as_i64() > before["at_ms"].as_i64());
    let window = after["window_s"].as_f64().expect("window_s");
    assert!(window > 0.0 && window <= 10.5, "window {window}");
    let placed_in_window = after["rates"]["orders_per_s"].as_f64().unwrap() * window;
    assert!(
        (placed_in_window - k as f64).abs() < 0.05,
        "orders/s × window = {placed_in_window}, placed {k}: {after}"
    );
    let metrics = scrape(&get_text(&client, &format!("{}/metrics", serve.base)).await);
    assert_eq!(
        value(
            &metrics,
            "orderly_commands_total",
            &[("command", "place"), ("outcome", "ok")]
        ),
        k as f64,
        "the counter /v1/stats derives from"
    );
    assert_eq!(after["totals"]["order_items"], 2 * k);
    let usd = after["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["currency"] == "USD")
        .cloned()
        .expect("USD");
    assert_eq!(usd["placed_minor"], 600 * k);
    assert_eq!(usd["minor_units"], 2);
    assert_eq!(after["orders"]["by_status"]["pending_payment"], k);
    assert!(after["latency_ms"]["by_command"]["place"]["p99"]
        .as_f64()
        .is_some());
    assert_eq!(after["store"], "redis");
    assert_eq!(after["store_up"], true);
    assert!(after["process"]["rss_bytes"].as_u64().unwrap() > 1_000_000);
    let series = after["series"]["orders_per_s"].as_array().unwrap();
    let summed: f64 = series.iter().filter_map(Value::as_f64).sum::<f64>();
    assert!(
        summed > 0.0,
        "the per-second series shows the burst: {series:?}"
    );
    // The document describes the endpoint.
    let openapi: Value = client
        .get(format!("{}/openapi.json", serve.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/stats"]["get"].is_object());
}
