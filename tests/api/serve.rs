//! The `orderly serve` binary: prints its bound address, serves, refuses a public address
//! without keys, and shuts down cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the binary may take to start listening or to exit.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

fn orderly() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orderly"));
    command
        .env_remove("ORDERLY_LOG")
        .env("ORDERLY__ENGINE__SHARDS", "8")
        .env("ORDERLY__ENGINE__ARBITERS", "1")
        .env("ORDERLY__API__WORKERS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The child's stderr lines, as they come.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines_rx
}

/// Waits for the process to exit, killing it if it takes longer than [`PROCESS_TIMEOUT`].
fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PROCESS_TIMEOUT;
    for _ in 0..3_000 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("orderly serve did not exit within {PROCESS_TIMEOUT:?}");
}

#[actix_web::test]
async fn serve_prints_its_address_and_stops_on_sigterm() {
    let mut child = orderly()
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory"])
        .spawn()
        .expect("orderly starts");
    let lines_rx = stderr_lines(&mut child);
    let address = loop {
        match lines_rx.recv_timeout(PROCESS_TIMEOUT) {
            Ok(line) => {
                if let Some(address) = line.strip_prefix("listening on ") {
                    break address.to_string();
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no `listening on` line");
            }
        }
    };
    assert!(address.starts_with("http://127.0.0.1:"), "{address}");
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROCESS_TIMEOUT)
        .build()
        .expect("client");
    let health = client.get(format!("{address}/healthz")).send().await;
    let placed = client
        .post(format!("{address}/v1/orders"))
        .json(&crate::app::order_json(1))
        .send()
        .await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let status = wait_bounded(&mut child);
    assert_eq!(health.expect("healthz answered").status(), 200);
    assert_eq!(placed.expect("placement answered").status(), 201);
    assert!(status.success(), "exit status {status}");
}

/// `--log-format json`: one JSON object per line with the span list; spans are named by
/// operation; order contents never appear at INFO or above, even with DEBUG on.
#[actix_web::test]
async fn json_logs_carry_spans_and_no_order_contents_above_debug() {
    let mut child = orderly()
        .env("ORDERLY_LOG", "debug")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--log-format",
            "json",
        ])
        .spawn()
        .expect("orderly starts");
    let lines_rx = stderr_lines(&mut child);
    let mut lines = Vec::new();
    let address = loop {
        let line = lines_rx
            .recv_timeout(PROCESS_TIMEOUT)
            .unwrap_or_else(|_| panic!("no `listening on` line: {lines:?}"));
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.to_string();
        }
        lines.push(line);
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROCESS_TIMEOUT)
        .build()
        .expect("client");
    let mut order = crate::app::order_json(1);
    order["customer_id"] = "customer-in-no-info-log".into();
    let placed = client
        .post(format!("{address}/v1/orders"))
        .json(&order)
        .send()
        .await
        .expect("placement answered");
    assert_eq!(placed.status(), 201);
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    assert!(wait_bounded(&mut child).success());
    lines.extend(lines_rx.try_iter());
    let logs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        logs.iter().any(|l| l["level"] == "INFO"),
        "serve logs its start at INFO: {lines:?}"
    );
    let in_span = |name: &str| {
        logs.iter().any(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["name"] == name))
        })
    };
    assert!(
        in_span("http_request"),
        "HTTP events carry their span: {lines:?}"
    );
    for (line, log) in lines.iter().zip(&logs) {
        if log["level"] != "DEBUG" && log["level"] != "TRACE" {
            assert!(
                !line.contains("customer-in-no-info-log"),
                "order contents logged above DEBUG: {line}"
            );
        }
    }
}

#[actix_web::test]
async fn serve_refuses_a_public_address_without_keys() {
    let mut child = orderly()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .spawn()
        .expect("orderly starts");
    let status = wait_bounded(&mut child);
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            stderr.push_str(&line);
        }
    }
    assert!(!status.success());
    assert!(stderr.contains("refusing to listen"), "{stderr}");
}
