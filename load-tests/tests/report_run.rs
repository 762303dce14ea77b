//! Coordinated omission against a server that stalls once, the output files of `run` (`--report`,
//! `--report-md`, `--plot`, `--hgrm`) and a ramp's stages in the time series, and bad scenario
//! files refused naming the key. Loopback only, each test bounded in time.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{check_xml, spawn_server, temp_dir, Stall};
use orderly_load::runner::{run, RunConfig};
use orderly_load::scenario::Scenario;
use orderly_load::target::Target;

/// Runs the `orderly-load` binary with `args`, killing it after `limit`.
fn orderly_load(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orderly-load");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("orderly-load {args:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// The server holds every request that reaches it between 0.5 s and 1.5 s after its first
/// one until 1.5 s. The open-model schedule keeps sending at 200/s, and each arrival is timed
/// from its intended time: the arrivals due in the stalled second wait from ~1 s (the first)
/// down to ~0 (the last), evenly, and the maximum is ~1 s. A closed-loop client would have
/// sent nothing during the stall and recorded one slow request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_as_latencies_from_one_second_down_to_zero() {
    let stall = Stall {
        after: Duration::from_millis(500),
        length: Duration::from_secs(1),
    };
    let (address, seen) = spawn_server(Some(stall), false).await;
    let scenario = Scenario::parse("place", r#"steps = ["place"]"#).expect("scenario");
    let config = RunConfig {
        target: Target::parse(&format!("http://{address}")).expect("target"),
        scenario,
        rate_per_sec: 200,
        duration: Duration::from_millis(2500),
        max_in_flight: 1000,
        request_timeout: Duration::from_secs(5),
        api_key: None,
        progress: false,
        redis: None,
    };
    let report = tokio::time::timeout(Duration::from_secs(30), run(config))
        .await
        .expect("the run stops by itself")
        .expect("the run succeeds");
    assert_eq!(
        (report.scheduled, report.started, report.ok),
        (500, 500, 500)
    );
    assert_eq!(report.dropped, 0);
    assert_eq!(seen.place.load(std::sync::atomic::Ordering::Relaxed), 500);
    let place = report.latency_ms["place"];
    assert!(
        (950.0..=1150.0).contains(&place.max),
        "the longest wait is the stall: {place:?}"
    );
    // 200 arrivals were due in the stalled second; their latencies spread evenly over
    // 0..1 s: about 20 in every 100 ms band from 100 ms up.
    let h = &report.histograms["place"];
    for band in 1..10u64 {
        let (low, high) = (band * 100_000, (band + 1) * 100_000);
        let n = h.count_between(low, high - 1);
        assert!(
            (12..=28).contains(&n),
            "{n} latencies in {}..{} ms (expected ~20): {place:?}",
            band * 100,
            (band + 1) * 100
        );
    }
    let slow = h.count_between(100_000, 2_000_000);
    assert!(
        (170..=200).contains(&slow),
        "{slow} arrivals waited 100 ms .. 1 s"
    );
    // The arrivals outside the stall were fast.
    assert!(place.p50 < 100.0, "{place:?}");
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}

/// A two-stage ramp through the binary: every output file is written and parses, and the
/// stages show in the per-second series (the rate steps up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_writes_report_markdown_svg_and_hgrm() {
    let (address, _) = spawn_server(None, false).await;
    let dir = temp_dir("outputs");
    let scenario = write(
        &dir,
        "ramp.toml",
        "steps = [\"place\", \"pay\"]\n\
         [[stages]]\nrate = 50\nduration = \"2s\"\n\
         [[stages]]\nrate = 150\nduration = \"2s\"\n",
    );
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (report, md, svg, hgrm) = (file("r.json"), file("r.md"), file("r.svg"), file("r.hgrm"));
    let target = format!("http://{address}");
    let output = tokio::task::spawn_blocking(move || {
        orderly_load(
            &[
                "run",
                "--target",
                &target,
                "--scenario",
                &scenario,
                "--report",
                &report,
                "--report-md",
                &md,
                "--plot",
                &svg,
                "--hgrm",
                &hgrm,
            ],
            Duration::from_secs(60),
        )
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // stderr is a pipe, not a terminal: no progress line.
    assert!(!stderr.contains("in-flight"), "{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file("r.json")).unwrap()).unwrap();
    assert_eq!(report["scheduled"], 400);
    assert_eq!(report["ok"], 800);
    assert_eq!(report["stages"][0]["rate_per_sec"], 50);
    assert_eq!(report["stages"][1]["rate_per_sec"], 150);
    assert_eq!(report["target_rate_per_sec"], 100.0);
    assert_eq!(report["outcomes"]["ok"], 800);
    assert_eq!(report["flow_latency_ms"]["ramp"]["count"], 400);
    for kind in ["place", "pay", "flow"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            assert!(report["latency_ms"][kind][p].is_f64(), "{kind} {p}");
        }
    }
    // The test server has no /metrics: the counters say why they are missing.
    assert!(
        report["server"]["error"].is_string(),
        "{}",
        report["server"]
    );
    let rates: Vec<u64> = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["achieved_rate_per_sec"].as_u64().unwrap())
        .collect();
    assert!(rates.len() >= 4, "{rates:?}");
    for r in &rates[..2] {
        assert!((45..=55).contains(r), "first stage at 50/s: {rates:?}");
    }
    for r in &rates[2..4] {
        assert!((140..=160).contains(r), "second stage at 150/s: {rates:?}");
    }
    let started: u64 = rates.iter().sum();
    assert_eq!(started, 400, "{rates:?}");

    let md = std::fs::read_to_string(file("r.md")).unwrap();
    assert!(md.starts_with("# orderly-load: ramp"), "{md}");
    assert!(md.contains("| place |"), "{md}");
    assert!(md.contains("50/s for 2.0 s, then 150/s for 2.0 s"), "{md}");

    let svg = std::fs::read_to_string(file("r.svg")).unwrap();
    let (root, attributes) = check_xml(&svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
    assert_eq!(root, "svg");
    assert!(attributes.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.matches("<polyline").count() >= 4, "{svg}");

    let hgrm = std::fs::read_to_string(file("r.hgrm")).unwrap();
    let mut lines = hgrm.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let mut last = (0.0, 0u64);
    let mut rows = 0;
    for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let cols: Vec<f64> = line
            .split_whitespace()
            .map(|c| c.parse().unwrap_or_else(|_| panic!("{line}")))
            .collect();
        // The last row (percentile 1.0) has no 1/(1-Percentile), as HdrHistogram writes it.
        assert!(
            cols.len() == 4 || (cols.len() == 3 && cols[1] == 1.0),
            "{line}"
        );
        assert!(cols[1] >= last.0 && cols[2] as u64 >= last.1, "{line}");
        last = (cols[1], cols[2] as u64);
        rows += 1;
    }
    assert!(rows > 5, "{hgrm}");
    assert_eq!(
        last,
        (1.0, 400),
        "the flow histogram ends at 100% of 400: {hgrm}"
    );
    assert!(hgrm.contains("#[Mean    ="), "{hgrm}");
    assert!(hgrm.contains("Total count    =          400]"), "{hgrm}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scenario with `sample_interval` (as `soak.toml` has, every minute) samples the server's
/// RSS and the client's p99 into the report; the counters are differences over the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_run_records_rss_and_p99_and_counter_differences() {
    let (address, _) = spawn_server(None, true).await;
    let scenario = Scenario::parse(
        "soakish",
        "steps = [\"place\"]\nsample_interval = \"1s\"\n[[stages]]\nrate = 40\nduration = \"3s\"\n",
    )
    .expect("scenario");
    let config = RunConfig {
        target: Target::parse(&format!("http://{address}")).expect("target"),
        scenario,
        rate_per_sec: 40,
        duration: Duration::from_secs(99),
        max_in_flight: 100,
        request_timeout: Duration::from_secs(5),
        api_key: None,
        progress: false,
        redis: None,
    };
    let report = tokio::time::timeout(Duration::from_secs(30), run(config))
        .await
        .expect("the run stops by itself")
        .expect("the run succeeds");
    assert_eq!(
        report.scheduled, 120,
        "the stage's duration, not `duration`"
    );
    assert!(
        (2..=3).contains(&report.samples.len()),
        "{:?}",
        report.samples
    );
    for sample in &report.samples {
        assert_eq!(sample.rss_bytes, Some(12_345_678.0), "{sample:?}");
        assert!(sample.p99_ms.is_some(), "{sample:?}");
    }
    let server = report.server.expect("scraped");
    assert_eq!(server.error, None);
    assert_eq!(server.orders_placed, Some(120.0));
    assert_eq!(server.rss_bytes_after, Some(12_345_678.0));
}

#[test]
fn bad_scenario_files_fail_naming_the_key() {
    let dir = temp_dir("bad");
    let cases = [
        (
            "unknown-key.toml",
            "steps = [\"place\"]\nspeed = 5\n",
            "unknown field `speed`",
        ),
        (
            "zero-rate.toml",
            "steps = [\"place\"]\n[[stages]]\nrate = 0\nduration = \"1s\"\n",
            "`stages[0].rate`",
        ),
        (
            "pay-first.toml",
            "steps = [\"pay\", \"place\"]\n",
            "`steps[0]`: `pay` before `place`",
        ),
        (
            "no-lines.toml",
            "steps = [\"bulk\"]\n",
            "[bulk] section with `lines`",
        ),
        (
            "teleport.toml",
            "steps = [\"place\", \"teleport\"]\n",
            "teleport",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write(&dir, name, text);
        // The target port is closed: a scenario error must come before any request.
        let output = orderly_load(
            &["run", "--target", "http://127.0.0.1:1", "--scenario", &path],
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(stderr.contains(name), "{name}: the file is named: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
