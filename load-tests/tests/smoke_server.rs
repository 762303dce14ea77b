//! The `smoke` scenario against a real `orderly serve` (memory store, `127.0.0.1:0`): the JSON
//! report parses, and the server's counter differences match what the tool sent (orders the
//! server placed = placements the tool got a 2xx for).
//!
//! The `orderly` binary is the workspace's root package; it is taken from
//! `$CARGO_TARGET_DIR/debug/orderly` (or `<workspace>/target/debug/orderly`) and built with
//! `cargo build --bin orderly` first if it is not there.

mod orderly_bin;
use orderly_bin::{start_server, wait_bounded};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn smoke_against_orderly_serve_matches_the_servers_counters() {
    let (_server, url) = start_server("memory", &[]);
    let dir = std::env::temp_dir().join(format!("orderly-load-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let report_path = dir.join("smoke.json");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/smoke.toml");
    let child = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .arg("run")
        .args(["--target", &url, "--quiet", "--timeout", "10s"])
        .arg("--scenario")
        .arg(&scenario)
        .arg("--report")
        .arg(&report_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orderly-load");
    let output = wait_bounded(child, Duration::from_secs(120), "orderly-load run smoke");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report_path).expect("the report is written");
    let report: serde_json::Value = serde_json::from_str(&text).expect("the report parses");
    let _ = std::fs::remove_dir_all(&dir);

    // smoke.toml: 10/s for 2 s, then 20/s for 2 s; five requests per arrival.
    assert_eq!(report["scenario"], "smoke");
    assert_eq!(report["scheduled"], 60, "{text}");
    assert_eq!(report["dropped"], 0, "{text}");
    assert_eq!(report["unfinished"], 0, "{text}");
    assert_eq!(report["error_count"], 0, "{}", report["errors"]);
    assert_eq!(report["ok"], 300, "{text}");
    let server = &report["server"];
    assert!(server["error"].is_null(), "{server}");
    let placed_2xx = report["latency_ms"]["place"]["count"].as_u64().unwrap();
    assert_eq!(placed_2xx, 60);
    assert_eq!(
        server["orders_placed"].as_f64(),
        Some(placed_2xx as f64),
        "the server placed what the tool got 2xx for: {server}"
    );
    let batches = server["commit_batches"].as_f64().expect("commit batches");
    // Commands and the payments' own records are committed in batches: at least one.
    assert!(batches >= 1.0, "{server}");
    assert_eq!(
        server["overload_rejections"].as_f64().unwrap_or(0.0),
        0.0,
        "{server}"
    );
    for rss in ["rss_bytes_before", "rss_bytes_after"] {
        assert!(
            server[rss].as_f64().is_some_and(|b| b > 0.0),
            "{rss}: {server}"
        );
    }
    assert!(
        report["series"].as_array().is_some_and(|s| s.len() >= 4),
        "{text}"
    );
}
