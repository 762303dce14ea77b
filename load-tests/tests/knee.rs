//! The knee finder against a tiny HTTP server on 127.0.0.1:0 with a known capacity of
//! `CAPACITY` requests per second (a token bucket). In one mode the server queues requests
//! beyond its capacity (latency grows), in the other it refuses them with 429 `overloaded`
//! (errors grow); either way the knee finder must find the capacity within one step. Also
//! checks the command line: the SVG plot is well-formed, the JSON report carries
//! `sustainable_rate_per_sec`, and bad arguments fail naming their flag.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use orderly_load::knee::{find_knee, KneeLimits, KneeReport};
use orderly_load::runner::RunConfig;
use orderly_load::scenario::Scenario;
use orderly_load::target::Target;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Requests per second the test server answers at most.
const CAPACITY: u64 = 200;
/// Requests the bucket lets through at once after an idle spell (absorbs timer jitter).
const BURST: u32 = 10;

/// A token bucket in virtual time: each request takes the next free slot, `1 / CAPACITY`
/// after the previous one (no earlier than `BURST` slots before now).
struct Bucket {
    next: Mutex<Option<Instant>>,
    /// When set, no bucket: every request is answered after this fixed time.
    fixed: Option<Duration>,
    /// Longest a request may wait for its slot; beyond it the request is refused with 429.
    max_wait: Duration,
}

impl Bucket {
    fn new(max_wait: Duration) -> Bucket {
        Bucket {
            next: Mutex::new(None),
            fixed: None,
            max_wait,
        }
    }

    /// The instant this request may be answered, or `None` if it is refused.
    fn reserve(&self) -> Option<Instant> {
        let period = Duration::from_secs(1) / CAPACITY as u32;
        let now = Instant::now();
        let earliest = now.checked_sub(period * BURST).unwrap_or(now);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = next.map_or(earliest, |n| n.max(earliest));
        if slot.saturating_duration_since(now) > self.max_wait {
            return None;
        }
        *next = Some(slot + period);
        Some(slot)
    }
}

fn response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers `POST /v1/orders` like Orderly (201 with an `order_id`), within the bucket's
/// capacity: a request beyond it waits for its slot or is refused with 429 `overloaded`.
async fn answer(
    request: Request<Incoming>,
    bucket: Arc<Bucket>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let _ = request.into_body().collect().await;
    if path != "/v1/orders" {
        return Ok(response(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no route"}}"#.into(),
        ));
    }
    if let Some(latency) = bucket.fixed {
        tokio::time::sleep(latency).await;
        return Ok(response(
            StatusCode::CREATED,
            r#"{"order_id":"o-1","status":"pending_payment"}"#.into(),
        ));
    }
    let Some(slot) = bucket.reserve() else {
        return Ok(response(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":{"code":"overloaded","message":"retry later"}}"#.into(),
        ));
    };
    tokio::time::sleep_until(slot).await;
    Ok(response(
        StatusCode::CREATED,
        r#"{"order_id":"o-1","status":"pending_payment"}"#.into(),
    ))
}

async fn spawn_server(max_wait: Duration) -> SocketAddr {
    spawn(Bucket::new(max_wait)).await
}

async fn spawn(bucket: Bucket) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("local address");
    let bucket = Arc::new(bucket);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let bucket = Arc::clone(&bucket);
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, Arc::clone(&bucket)));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

fn place_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join("place.toml")
}

/// 100, 150, 200, 250, ... arrivals/s, one second each, p99 <= 50 ms, at most 1% errors.
fn limits() -> KneeLimits {
    KneeLimits {
        start_rate: 100,
        step: 50,
        step_duration: Duration::from_secs(1),
        p99_ms: 50.0,
        error_rate_max: 0.01,
        max_steps: 8,
        max_rate: 1_000,
    }
}

async fn knee(address: SocketAddr) -> KneeReport {
    knee_with(address, limits(), 1024).await
}

async fn knee_with(address: SocketAddr, limits: KneeLimits, max_in_flight: usize) -> KneeReport {
    let base = RunConfig {
        target: Target::parse(&format!("http://{address}")).expect("loopback target"),
        scenario: Scenario::load(&place_file()).expect("shipped scenario loads"),
        rate_per_sec: 1,
        duration: Duration::from_secs(1),
        max_in_flight,
        request_timeout: Duration::from_secs(5),
        api_key: None,
        progress: false,
        redis: None,
    };
    // At most 8 steps of 1 s plus their drains.
    tokio::time::timeout(Duration::from_secs(60), find_knee(base, limits, |_| {}))
        .await
        .expect("the search stops by itself")
        .expect("the search succeeds")
}

/// The capacity, within one step: the last passing step is `CAPACITY` (or, on a noisy
/// machine, one step below it) and the next step failed.
fn assert_found_capacity(report: &KneeReport) {
    // Shown with `--nocapture`.
    eprintln!("{}", report.human());
    let step = limits().step;
    let sustainable = report
        .sustainable_rate_per_sec
        .unwrap_or_else(|| panic!("no passing step: {report:#?}"));
    assert!(
        (CAPACITY - step..=CAPACITY).contains(&sustainable),
        "sustainable {sustainable}/s, capacity {CAPACITY}/s: {}",
        report.human()
    );
    assert_eq!(
        report.knee_rate_per_sec,
        Some(sustainable + step),
        "{report:#?}"
    );
    assert_eq!(report.stopped_because, "knee");
    let last = report.steps.last().expect("steps");
    assert_eq!(last.verdict, "fail");
    assert!(report.steps[..report.steps.len() - 1]
        .iter()
        .all(|s| s.verdict == "pass"));
    assert_eq!(report.latency_kind, "place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knee_of_a_queueing_server_is_its_capacity_by_p99() {
    // Requests beyond the capacity wait (up to 10 s): latency grows, nothing is refused.
    let address = spawn_server(Duration::from_secs(10)).await;
    let report = knee(address).await;
    assert_found_capacity(&report);
    let last = report.steps.last().unwrap();
    assert!(last.p99_ms > 50.0, "{last:?}");
    assert_eq!(last.errors, 0, "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knee_of_a_refusing_server_is_its_capacity_by_errors() {
    // Requests beyond the capacity (and its burst) are refused with 429 at once.
    let address = spawn_server(Duration::ZERO).await;
    let report = knee(address).await;
    assert_found_capacity(&report);
    let last = report.steps.last().unwrap();
    assert!(last.error_rate > 0.01, "{last:?}");
    let json = serde_json::to_value(&report).expect("report serializes");
    assert_eq!(
        json["sustainable_rate_per_sec"].as_u64(),
        report.sustainable_rate_per_sec
    );
    let first = &json["steps"][0];
    for key in [
        "rate_per_sec",
        "achieved_rate_per_sec",
        "p50_ms",
        "p99_ms",
        "error_rate",
        "dropped",
        "verdict",
    ] {
        assert!(first.get(key).is_some(), "missing {key}: {first}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knee_at_the_in_flight_bound_is_found_by_dropped_arrivals() {
    // Every answer takes 100 ms and at most 20 arrivals may be outstanding: at most 200
    // arrivals/s fit (a little under, with the client's own overhead), beyond that arrivals
    // are dropped. The p99 bound is out of reach, so only drops can stop the search.
    let address = spawn(Bucket {
        fixed: Some(Duration::from_millis(100)),
        ..Bucket::new(Duration::ZERO)
    })
    .await;
    let limits = KneeLimits {
        p99_ms: 2_000.0,
        ..limits()
    };
    let report = knee_with(address, limits, 20).await;
    eprintln!("{}", report.human());
    let sustainable = report.sustainable_rate_per_sec.expect("a passing step");
    assert!((150..=200).contains(&sustainable), "{}", report.human());
    let last = report.steps.last().unwrap();
    assert!(last.dropped > 0, "{last:?}");
    assert_eq!(report.knee_rate_per_sec, Some(sustainable + 50));
}

/// Checks that `svg` is one `<svg>` element with balanced tags and quoted attributes.
fn assert_well_formed_svg(svg: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = svg.trim();
    assert!(rest.starts_with("<svg"), "root is not <svg>: {svg}");
    while let Some(open) = rest.find('<') {
        assert!(
            !stack.is_empty() || rest[..open].trim().is_empty(),
            "text outside the root: {:?}",
            &rest[..open]
        );
        let close = rest[open..].find('>').expect("unterminated tag") + open;
        let tag = &rest[open + 1..close];
        assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
            assert_eq!(top, name.trim(), "</{name}> closes <{top}>");
        } else {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            assert!(!name.is_empty(), "empty tag name: <{tag}>");
            if stack.is_empty() {
                roots += 1;
                assert_eq!(name, "svg", "root element");
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    assert_eq!(roots, 1, "one root element");
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    for (i, _) in svg.match_indices('&') {
        let entity = &svg[i..svg.len().min(i + 7)];
        assert!(
            ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| entity.starts_with(e)),
            "bare '&' at {i}"
        );
    }
}

#[test]
fn the_command_line_writes_a_report_and_a_well_formed_plot() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let address = runtime.block_on(spawn_server(Duration::ZERO));
    let dir = std::env::temp_dir().join(format!("orderly-load-knee-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (report_file, plot_file) = (dir.join("knee.json"), dir.join("knee.svg"));
    let output = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
        .args(["knee", "--scenario"])
        .arg(place_file())
        .args(["--p99-ms", "50", "--start-rate", "100", "--step", "100"])
        .args([
            "--step-duration",
            "500ms",
            "--max-steps",
            "5",
            "--quiet",
            "--json",
        ])
        .args(["--target", &format!("http://{address}")])
        .arg("--report")
        .arg(&report_file)
        .arg("--plot")
        .arg(&plot_file)
        .output()
        .expect("run orderly-load");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("stdout is one JSON object");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report written"))
            .expect("report file is JSON");
    assert_eq!(printed, written);
    // Capacity 200/s, steps of 100: 100 and 200 pass (or only 100 on a noisy machine), 300
    // fails.
    let sustainable = written["sustainable_rate_per_sec"]
        .as_u64()
        .expect("a sustainable rate");
    assert!((100..=200).contains(&sustainable), "{written}");
    let svg = std::fs::read_to_string(&plot_file).expect("plot written");
    assert_well_formed_svg(&svg);
    assert!(svg.contains("p99 bound 50 ms"), "{svg}");
    assert_eq!(
        svg.matches("<circle").count(),
        2 * written["steps"].as_array().expect("steps").len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_arguments_fail_naming_the_flag() {
    // Refused before anything is sent: the target is a closed port.
    for (args, flag) in [
        (["--step", "0", "--p99-ms", "50"], "--step"),
        (["--step", "10", "--p99-ms", "0"], "--p99-ms"),
        (["--step", "10", "--p99-ms", "-3"], "--p99-ms"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_orderly-load"))
            .args([
                "knee",
                "--scenario",
                "place",
                "--target",
                "http://127.0.0.1:1",
            ])
            .args(args)
            .output()
            .expect("run orderly-load");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
