//! `stream-ingest` against a real `orderly serve` on a real redis-server (AOF everysec) with
//! stream ingestion on: every arrival is accounted for (each order's placement was read from
//! the outbox and has a latency; none dropped, failed or unfinished), the server placed exactly
//! as many orders as the tool added, and the ingest stream holds exactly those entries, all
//! acknowledged.

mod orderly_bin;
use orderly_bin::{start_server, wait_bounded, Redis};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn redis_cli(redis: &Redis, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli");
    assert!(output.status.success(), "redis-cli {args:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn stream_ingest_accounts_for_every_orders_latency() {
    let redis = Redis::start();
    let store = redis.url();
    let (_server, url) = start_server(
        &store,
        &[
            ("ORDERLY__INGEST__ENABLED", "true"),
            ("ORDERLY__ENGINE__SHARDS", "8"),
            ("ORDERLY__INGEST__BLOCK_MS", "50"),
        ],
    );
    let dir = std::env::temp_dir().join(format!("orderly-load-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let report_path = dir.join("stream.json");
    let hgrm_path = dir.join("stream.hgrm");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/stream-ingest.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .arg("run")
        .args([
            "--target",
            &url,
            "--redis",
            &store,
            "--quiet",
            "--timeout",
            "10s",
        ])
        .args(["--rate", "300", "--duration", "2s"])
        .arg("--scenario")
        .arg(&scenario)
        .arg("--report")
        .arg(&report_path)
        .arg("--hgrm")
        .arg(&hgrm_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orderly-load");
    let output = wait_bounded(child, Duration::from_secs(120), "orderly-load run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "orderly-load failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report_path).expect("report written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    assert_eq!(report["scenario"], "stream-ingest");
    assert_eq!(report["scheduled"], 600, "{text}");
    assert_eq!(report["started"], 600, "{text}");
    assert_eq!(report["dropped"], 0, "{text}");
    assert_eq!(report["unfinished"], 0, "{text}");
    assert_eq!(report["error_count"], 0, "{}", report["errors"]);
    // Every order's placement was seen, each with its own latency.
    assert_eq!(report["ok"], 600, "{text}");
    let latency = &report["latency_ms"]["stream"];
    assert_eq!(latency["count"], 600, "{latency}");
    let (p50, max) = (
        latency["p50"].as_f64().unwrap(),
        latency["max"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= max && max < 10_000.0, "{latency}");
    // The server saw the same: 600 placements, and the stream holds 600 entries, none pending.
    let server = &report["server"];
    assert!(server["error"].is_null(), "{server}");
    assert_eq!(server["orders_placed"], 600.0, "{server}");
    assert_eq!(redis_cli(&redis, &["XLEN", "orderly:ingest"]), "600");
    let pending = redis_cli(&redis, &["XPENDING", "orderly:ingest", "orderly"]);
    assert!(
        pending.starts_with('0'),
        "entries left unacknowledged: {pending}"
    );
    // The .hgrm is of the stream latency and ends with the totals line.
    let hgrm = std::fs::read_to_string(&hgrm_path).expect("hgrm written");
    let totals = hgrm
        .lines()
        .find(|l| l.contains("Total count"))
        .unwrap_or_default();
    assert!(totals.trim_end().ends_with(" 600]"), "{hgrm}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stream_ingest_without_redis_is_refused_before_anything_is_sent() {
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/stream-ingest.toml");
    let output = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .arg("run")
        .args([
            "--target",
            "http://127.0.0.1:9",
            "--quiet",
            "--duration",
            "1s",
        ])
        .arg("--scenario")
        .arg(&scenario)
        .stdin(Stdio::null())
        .output()
        .expect("run orderly-load");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--redis"), "{stderr}");
    let output = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .arg("run")
        .args([
            "--target",
            "http://127.0.0.1:9",
            "--quiet",
            "--duration",
            "1s",
        ])
        .args(["--redis", "redis://10.1.2.3:6379/0"])
        .arg("--scenario")
        .arg(&scenario)
        .stdin(Stdio::null())
        .output()
        .expect("run orderly-load");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("only to this machine"), "{stderr}");
}
