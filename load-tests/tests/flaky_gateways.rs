//! `flaky-gateways` against a real `orderly serve` whose http gateway points at a real
//! `mock_payments` child with faults (charges whose answer hangs past the attempt timeout,
//! 503s, throttling): the report's `payments` section is the mock's own ledger difference, and
//! there is no double charge. The `orderly` binary is found (or built) as in smoke_server.rs.

mod orderly_bin;
use orderly_bin::{wait_bounded, Server};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `orderly serve` (memory store) with every payment method through the http gateway at
/// `mock`, and short attempts so that hung charges time out.
fn start_server(mock: &str) -> (Server, String) {
    orderly_bin::start_server(
        "memory",
        &[
            ("ORDERLY__PAYMENTS__ROUTES__CARD", "http"),
            ("ORDERLY__PAYMENTS__ROUTES__ALIPAY", "http"),
            ("ORDERLY__PAYMENTS__ROUTES__WECHAT", "http"),
            ("ORDERLY__GATEWAYS__HTTP__BASE_URL", mock),
            ("ORDERLY__PAYMENTS__ATTEMPT_TIMEOUT_MS", "300"),
        ],
    )
}

/// Starts `mock_payments` on a free loopback port and returns it with its base URL.
fn start_mock() -> (Server, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mock_payments"))
        .args(["--listen", "127.0.0.1:0", "--fault-profile", "healthy"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mock_payments");
    let stdout = child.stdout.take().expect("stdout");
    let mock = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("mock_payments prints `listening on http://…`");
    (mock, url)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn stats(mock: &str) -> serde_json::Value {
    block_on(async {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap()
                .get(format!("{mock}/v1/stats"))
                .send(),
        )
        .await
        .expect("stats within 10 s")
        .expect("stats");
        response.json().await.expect("stats JSON")
    })
}

#[test]
fn flaky_gateways_reports_the_mocks_counters_and_no_double_charge() {
    let (_mock, mock) = start_mock();
    // Charges taken whose answer hangs past the attempt timeout, 503s (half of them after
    // charging), throttling.
    block_on(async {
        let faults = serde_json::json!({
            "latency_base_ms": 1,
            "timeout_rate": 0.1,
            "hang_ms": 1000,
            "server_error_rate": 0.1,
            "not_sent_rate": 0.05,
        });
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{mock}/v1/faults"))
            .json(&faults)
            .send()
            .await
            .expect("set faults");
        assert!(response.status().is_success(), "{}", response.status());
    });
    let (_server, url) = start_server(&mock);
    let before = stats(&mock);
    let dir = std::env::temp_dir().join(format!("orderly-load-flaky-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let report_path = dir.join("flaky.json");
    let md_path = dir.join("flaky.md");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/flaky-gateways.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .arg("run")
        .args(["--target", &url, "--quiet", "--timeout", "15s"])
        .args(["--rate", "20", "--duration", "3s", "--mock-payments", &mock])
        .arg("--scenario")
        .arg(&scenario)
        .arg("--report")
        .arg(&report_path)
        .arg("--report-md")
        .arg(&md_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orderly-load");
    let output = wait_bounded(
        child,
        Duration::from_secs(120),
        "orderly-load run flaky-gateways",
    );
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = stats(&mock);
    let text = std::fs::read_to_string(&report_path).expect("the report is written");
    let md = std::fs::read_to_string(&md_path).expect("the markdown is written");
    let _ = std::fs::remove_dir_all(&dir);
    let report: serde_json::Value = serde_json::from_str(&text).expect("the report parses");
    let payments = &report["payments"];
    assert_eq!(payments["double_charges"], 0, "{payments}");
    let diff = |key: &str| after[key].as_u64().unwrap() - before[key].as_u64().unwrap();
    assert_eq!(
        payments["charges"].as_u64(),
        Some(diff("charges")),
        "{payments}"
    );
    assert_eq!(
        payments["duplicates_refused"].as_u64(),
        Some(diff("duplicates_refused")),
        "{payments}"
    );
    assert!(diff("charges") > 0, "{after}");
    assert_eq!(after["double_charges"], 0, "{after}");
    assert!(stdout.contains("payments: "), "{stdout}");
    assert!(md.contains("Mock payment service"), "{md}");
}
