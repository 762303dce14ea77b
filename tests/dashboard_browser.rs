//! A real browser loads the live dashboard of an `orderly serve` under load: Debian's headless
//! Chromium, driven through Debian's `chromedriver` (W3C WebDriver, JSON over HTTP).
//!
//! - load goes through the HTTP API in the background (place, pay, ship, deliver), bounded in
//!   count and time;
//! - the rendered orders/s becomes non-zero and agrees with `GET /v1/stats` read at the same
//!   moment;
//! - the browser logs no console error (SEVERE) and no request of the page fails;
//! - a screenshot is saved to `target/test-artifacts/dashboard.png` (under `CARGO_TARGET_DIR`
//!   when set).
//!
//! Needs the Debian packages `chromium chromium-driver` (`.ci/run` installs them).

mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use support::serve::{spawn_serve, Serve};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for chromedriver to answer `/status`, and for a new browser session.
const DRIVER_START: Duration = Duration::from_secs(60);
/// Longest wait for the dashboard to show a non-zero orders/s.
const RENDER_WAIT: Duration = Duration::from_secs(45);
/// The page must poll this many more times, within this long, once it shows orders (it polls
/// once a second).
const UPDATES: f64 = 3.0;
const UPDATE_WAIT: Duration = Duration::from_secs(15);
/// Longest search for a moment when the page shows the sample `/v1/stats` answers.
const MATCH_WAIT: Duration = Duration::from_secs(10);
/// Bounds of the background load: orders, and seconds.
const LOAD_ORDERS_MAX: u64 = 20_000;
const LOAD_TIME_MAX: Duration = Duration::from_secs(120);
/// Concurrent lifecycles of the load, and the pause after each (keeps a 2-core machine usable
/// for the browser: at most about 4 × 1000 / 20 = 200 orders/s).
const LOAD_WORKERS: usize = 4;
const LOAD_PAUSE: Duration = Duration::from_millis(20);

/// Fails the test, naming the Debian packages, when the browser or its driver is missing.
fn require_browser() {
    for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
        assert!(
            Path::new(path).exists(),
            "{path} ({what}) is missing: this test needs the Debian packages `chromium chromium-driver` \
             (apt-get install -y chromium chromium-driver)"
        );
    }
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A running chromedriver in its own process group, so that the Chromium it starts (which
/// outlives a killed chromedriver) dies with it. Killed on drop, even on panic.
struct Driver {
    child: Child,
    base: String,
    /// The browser profile and the driver's log; removed after the processes are killed.
    dir: tempfile::TempDir,
}

impl Driver {
    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every Chromium process it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free loopback port and waits (bounded) until it is ready.
async fn start_driver(http: &reqwest::Client) -> Driver {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("chromedriver.log")).expect("driver log");
    let mut command = Command::new(CHROMEDRIVER);
    command
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().expect("chromedriver starts");
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
        dir,
    };
    let deadline = Instant::now() + DRIVER_START;
    loop {
        if let Ok(response) = http.get(format!("{}/status", driver.base)).send().await {
            if let Ok(status) = response.json::<Value>().await {
                if status["value"]["ready"] == true {
                    return driver;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver not ready within {DRIVER_START:?}; its log:\n{}",
            driver.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One WebDriver session.
struct Session<'a> {
    http: &'a reqwest::Client,
    driver: &'a Driver,
    id: String,
}

impl<'a> Session<'a> {
    async fn new(http: &'a reqwest::Client, driver: &'a Driver) -> Session<'a> {
        let profile = driver.dir.path().join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,1000",
                ],
            },
            // browser: the console; performance: the network events (failed requests).
            "goog:loggingPrefs": {"browser": "ALL", "performance": "ALL"},
        }}});
        let answer = tokio::time::timeout(
            DRIVER_START,
            http.post(format!("{}/session", driver.base))
                .json(&capabilities)
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("no browser session within {DRIVER_START:?}"))
        .expect("POST /session");
        let status = answer.status();
        let body: Value = answer.json().await.expect("session JSON");
        assert!(
            status.is_success(),
            "chromedriver refused the session ({status}): {body}\nits log:\n{}",
            driver.log_tail()
        );
        let id = body["value"]["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        Session { http, driver, id }
    }

    /// A WebDriver command; panics with the driver's error on failure; answers `value`.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.id);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
        let status = response.status();
        let mut body: Value = response.json().await.expect("WebDriver JSON");
        assert!(status.is_success(), "{method} {path} ({status}): {body}");
        body["value"].take()
    }

    async fn execute(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// The log entries of `kind` (`browser`, `performance`) since the last read.
    async fn log(&self, kind: &str) -> Vec<Value> {
        match self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": kind})),
            )
            .await
        {
            Value::Array(entries) => entries,
            other => panic!("log {kind}: {other}"),
        }
    }

    async fn close(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.driver.base, self.id))
            .timeout(Duration::from_secs(15))
            .send()
            .await;
    }
}

/// What the page shows: the headline numbers' `data-value`s and the sample they come from.
const READ_PAGE: &str = r#"
const value = name => {
  const el = document.querySelector(`[data-stat="${name}"]`);
  return el ? el.dataset.value : null;
};
return {
  state: document.body.dataset.state || null,
  at_ms: document.body.dataset.atMs || null,
  polls: document.body.dataset.polls || null,
  failures: document.body.dataset.failures || null,
  render_errors: document.body.dataset.renderErrors || '',
  orders_per_s: value('orders_per_s'),
  commands_per_s: value('commands_per_s'),
  command_p99_ms: value('command_p99_ms'),
  success_rate: value('success_rate'),
  live_actors: value('live_actors'),
  rss_bytes: value('rss_bytes'),
};
"#;

/// A `data-value` as a number (None when empty or absent).
fn number(page: &Value, key: &str) -> Option<f64> {
    page[key].as_str().and_then(|text| text.parse().ok())
}

/// Background load: `LOAD_WORKERS` loops of place → pay → ship → deliver until `stop`, the
/// order bound or the time bound.
fn start_load(
    http: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    placed: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let deadline = Instant::now() + LOAD_TIME_MAX;
    (0..LOAD_WORKERS)
        .map(|worker| {
            let (http, base, stop, placed) =
                (http.clone(), base.clone(), stop.clone(), placed.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && placed.load(Ordering::Relaxed) < LOAD_ORDERS_MAX
                {
                    n += 1;
                    lifecycle(&http, &base, worker, n, &placed).await;
                    tokio::time::sleep(LOAD_PAUSE).await;
                }
            })
        })
        .collect()
}

/// One order's life over HTTP; a step that fails ends it (the load only needs throughput).
async fn lifecycle(http: &reqwest::Client, base: &str, worker: usize, n: u64, placed: &AtomicU64) {
    let body = json!({
        "customer_id": format!("dash-{worker}-{n}"),
        "currency": "USD",
        "payment_method": "card",
        "items": [{"sku": format!("sku-{}", n % 7), "quantity": n % 3 + 1, "unit_price": "19.99"}],
    });
    let Ok(response) = http
        .post(format!("{base}/v1/orders"))
        .json(&body)
        .send()
        .await
    else {
        return;
    };
    if response.status() != 201 {
        return;
    }
    placed.fetch_add(1, Ordering::Relaxed);
    let Ok(order) = response.json::<Value>().await else {
        return;
    };
    let Some(id) = order["order_id"].as_str() else {
        return;
    };
    for (step, body) in [
        ("pay", json!({"payment_method": "card"})),
        (
            "ship",
            json!({"tracking_number": format!("T-{worker}-{n}")}),
        ),
        ("deliver", json!({})),
    ] {
        let url = format!("{base}/v1/orders/{id}/{step}");
        let request = if step == "deliver" {
            http.post(url)
        } else {
            http.post(url).json(&body)
        };
        match request.send().await {
            Ok(response) if response.status().is_success() => {}
            _ => return,
        }
    }
}

/// Where test artifacts go: `$CARGO_TARGET_DIR/test-artifacts`, else the crate's `target/`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-artifacts")
}

/// Standard base64 (the WebDriver screenshot encoding).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        if c == b'=' {
            break;
        }
        let Some(v) = value(c) else {
            assert!(c.is_ascii_whitespace(), "not base64: {:?}", c as char);
            continue;
        };
        buffer = (buffer << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    out
}

/// The throughput shown and the throughput served agree. When the page shows a sample the test
/// read from `/v1/stats` too (same `at_ms`), they are equal: the endpoint derives its rates from
/// the kept samples alone. Otherwise they are about one poll apart (the page polls once a
/// second), and a 10 s window rate moves little in a second under steady load: within 25 % or
/// 1/s, whichever is larger.
fn assert_agree(what: &str, shown: f64, served: f64, same_sample: bool) {
    if same_sample {
        assert!(
            (shown - served).abs() <= 1e-9 * served.abs().max(1.0),
            "{what}: the page shows {shown} for the sample /v1/stats answers {served} for"
        );
    } else {
        let tolerance = (served.abs() * 0.25).max(1.0);
        assert!(
            (shown - served).abs() <= tolerance,
            "{what}: the page shows {shown}, /v1/stats {served} about a poll apart (tolerance {tolerance})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser_under_load() {
    require_browser();
    let serve: Serve = spawn_serve("memory", "dashboard-node", 4, None);
    let base = serve.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");

    let stop = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    let load = start_load(http.clone(), base.clone(), stop.clone(), placed.clone());

    // The sampler's first reading (before it, /v1/stats answers 503 and the page, rightly,
    // shows the error and the browser logs the failed request).
    let deadline = Instant::now() + RENDER_WAIT;
    loop {
        let status = http
            .get(format!("{base}/v1/stats"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!(status, Ok(200)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/v1/stats answers no sample within {RENDER_WAIT:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let driver = start_driver(&http).await;
    let session = Session::new(&http, &driver).await;
    session
        .call(
            reqwest::Method::POST,
            "/url",
            Some(json!({"url": format!("{base}/")})),
        )
        .await;

    // Wait (bounded) for a non-zero orders/s on the page.
    let deadline = Instant::now() + RENDER_WAIT;
    let mut page = session.execute(READ_PAGE).await;
    while number(&page, "orders_per_s").unwrap_or(0.0) <= 0.0 {
        assert!(
            Instant::now() < deadline,
            "the dashboard shows no orders/s within {RENDER_WAIT:?} ({} orders placed); page: {page}",
            placed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        page = session.execute(READ_PAGE).await;
    }
    assert_eq!(page["state"], "live", "the page is connected: {page}");

    // It keeps updating: a few more polls, each showing a newer sample.
    let first_polls = number(&page, "polls").unwrap_or(0.0);
    let first_at = number(&page, "at_ms").unwrap_or(0.0);
    let deadline = Instant::now() + UPDATE_WAIT;
    while number(&page, "polls").unwrap_or(0.0) < first_polls + UPDATES
        || number(&page, "at_ms").unwrap_or(0.0) <= first_at
    {
        assert!(
            Instant::now() < deadline,
            "the dashboard does not keep updating within {UPDATE_WAIT:?}: first {first_polls} polls \
             at {first_at}, now {page}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        page = session.execute(READ_PAGE).await;
    }

    // The page and /v1/stats at the same moment. The test reads the endpoint every 100 ms, so it
    // sees every sample (one a second), and the page at once after each read: as soon as the page
    // shows a sample the test has read too (same at_ms), the two must be equal. Should that not
    // happen within MATCH_WAIT, the last readings are compared within a tolerance instead.
    let mut served_by_at: HashMap<u64, Value> = HashMap::new();
    let deadline = Instant::now() + MATCH_WAIT;
    let compared = loop {
        let stats: Value = http
            .get(format!("{base}/v1/stats"))
            .send()
            .await
            .expect("GET /v1/stats")
            .json()
            .await
            .expect("stats JSON");
        let shown = session.execute(READ_PAGE).await;
        if let Some(at) = stats["at_ms"].as_u64() {
            served_by_at.insert(at, stats.clone());
        }
        let shown_at = number(&shown, "at_ms").map(|at| at as u64);
        if let Some(served) = shown_at.and_then(|at| served_by_at.get(&at)) {
            break (shown, served.clone(), true);
        }
        if Instant::now() >= deadline {
            break (shown, stats, false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (shown, stats, same_sample) = compared;
    for key in ["orders_per_s", "commands_per_s"] {
        let shown_value =
            number(&shown, key).unwrap_or_else(|| panic!("{key} on the page: {shown}"));
        let served = stats["rates"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("rates.{key} in /v1/stats: {stats}"));
        assert!(shown_value > 0.0, "{key} shown is non-zero: {shown}");
        assert_agree(key, shown_value, served, same_sample);
    }
    println!(
        "the page shows {} orders/s and {} commands/s; /v1/stats {} and {} ({})",
        shown["orders_per_s"],
        shown["commands_per_s"],
        stats["rates"]["orders_per_s"],
        stats["rates"]["commands_per_s"],
        if same_sample {
            "the same sample"
        } else {
            "about one poll apart"
        }
    );
    for key in ["live_actors", "rss_bytes", "command_p99_ms"] {
        assert!(number(&shown, key).is_some(), "{key} is shown: {shown}");
    }
    assert_eq!(shown["render_errors"], "", "every section renders: {shown}");
    assert_eq!(shown["failures"], "0", "no poll failed: {shown}");

    // No console error, and no request of the page failed.
    let console = session.log("browser").await;
    let severe: Vec<&Value> = console.iter().filter(|e| e["level"] == "SEVERE").collect();
    assert!(severe.is_empty(), "console errors: {severe:#?}");
    let mut urls = HashMap::new();
    let mut failed = Vec::new();
    let mut polls = 0;
    let performance = session.log("performance").await;
    for entry in performance {
        let Some(message) = entry["message"]
            .as_str()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
        else {
            continue;
        };
        let (method, params) = (&message["message"]["method"], &message["message"]["params"]);
        let request_id = params["requestId"].as_str().unwrap_or_default().to_string();
        match method.as_str() {
            Some("Network.requestWillBeSent") => {
                let url = params["request"]["url"].as_str().unwrap_or_default();
                if url.starts_with(&base) {
                    urls.insert(request_id, url.to_string());
                }
            }
            Some("Network.responseReceived") => {
                let url = params["response"]["url"].as_str().unwrap_or_default();
                let status = params["response"]["status"].as_f64().unwrap_or(0.0);
                if url.starts_with(&base) {
                    polls += usize::from(url.ends_with("/v1/stats"));
                    if status >= 400.0 {
                        failed.push(format!("{url}: HTTP {status}"));
                    }
                }
            }
            Some("Network.loadingFailed") => {
                if let Some(url) = urls.get(&request_id) {
                    failed.push(format!("{url}: {}", params["errorText"]));
                }
            }
            _ => {}
        }
    }
    assert!(
        failed.is_empty(),
        "failed requests of the page: {failed:#?}"
    );
    assert!(
        polls >= 2,
        "the page polled /v1/stats ({polls} answers seen)"
    );

    // The screenshot artifact.
    let png = base64_decode(
        session
            .call(reqwest::Method::GET, "/screenshot", None)
            .await
            .as_str()
            .expect("base64 screenshot"),
    );
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("dashboard screenshot: {}", path.display());

    stop.store(true, Ordering::Relaxed);
    for worker in load {
        let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    }
    println!("load: {} orders placed", placed.load(Ordering::Relaxed));
    session.close().await;
    drop(driver);
    drop(serve);
}
