//! Runs `orderly-load`'s open-model loop for about a second against a tiny HTTP server on 127.0.0.1:0 that answers like Orderly, and checks that the report counts exactly the scheduled requests, their kinds, bulk lines, errors by status/code, and arrivals dropped at the in-flight bound with latencies measured from the intended send time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use orderly_load::report::Report;
use orderly_load::runner::{run, RunConfig};
use orderly_load::scenario::Scenario;
use orderly_load::target::Target;
use tokio::net::TcpListener;

/// How long a request under `/slow` takes to answer.
const SLOW: Duration = Duration::from_millis(300);

/// Requests the fake server saw, by endpoint.
#[derive(Default)]
struct Seen {
    place: AtomicU64,
    commands: AtomicU64,
    bulk_lines: AtomicU64,
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Answers like Orderly: 201 for a placement, 200 for commands and bulk (one result line per
/// input line, then a summary). Under `/slow` it answers after [`SLOW`]; under `/busy` it
/// refuses everything with 429 `overloaded`.
async fn answer(
    request: Request<Incoming>,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut path = request.uri().path().to_string();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if let Some(rest) = path.strip_prefix("/slow") {
        path = rest.to_string();
        tokio::time::sleep(SLOW).await;
    }
    if path.starts_with("/busy") {
        let error = r#"{"error":{"code":"overloaded","message":"retry later"}}"#;
        return Ok(response(
            StatusCode::TOO_MANY_REQUESTS,
            "application/json",
            error.into(),
        ));
    }
    let json = "application/json";
    Ok(match path.as_str() {
        "/v1/orders" => {
            let n = seen.place.fetch_add(1, Ordering::Relaxed);
            let body = format!(r#"{{"order_id":"o-{n}","status":"pending_payment"}}"#);
            response(StatusCode::CREATED, json, body)
        }
        "/v1/orders/bulk" => {
            let mut out = String::new();
            let mut lines = 0;
            for (i, line) in body.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                lines += 1;
                out.push_str(&format!(
                    "{{\"line\":{},\"status\":\"accepted\",\"order_id\":\"b-{i}\"}}\n",
                    i + 1
                ));
            }
            seen.bulk_lines.fetch_add(lines, Ordering::Relaxed);
            out.push_str(&format!(
                "{{\"summary\":{{\"lines\":{lines},\"accepted\":{lines},\"rejected\":0}}}}\n"
            ));
            response(StatusCode::OK, "application/x-ndjson", out)
        }
        p if p.starts_with("/v1/orders/o-") => {
            seen.commands.fetch_add(1, Ordering::Relaxed);
            response(StatusCode::OK, json, r#"{"status":"paid"}"#.into())
        }
        _ => response(
            StatusCode::NOT_FOUND,
            json,
            r#"{"error":{"code":"not_found","message":"no route"}}"#.into(),
        ),
    })
}

async fn spawn_server() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("local address");
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&server_seen);
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, Arc::clone(&seen)));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen)
}

fn scenario(name: &str) -> Scenario {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).expect("shipped scenario loads")
}

async fn load(base: String, scenario: Scenario, rate: u64, max_in_flight: usize) -> Report {
    let config = RunConfig {
        target: Target::parse(&base).expect("loopback target"),
        scenario,
        rate_per_sec: rate,
        duration: Duration::from_secs(1),
        max_in_flight,
        request_timeout: Duration::from_secs(5),
        api_key: Some("test-key".into()),
        progress: false,
        redis: None,
    };
    tokio::time::timeout(Duration::from_secs(30), run(config))
        .await
        .expect("the run stops by itself")
        .expect("the run succeeds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_place_run_sends_exactly_the_scheduled_requests() {
    let (address, seen) = spawn_server().await;
    let report = load(format!("http://{address}"), scenario("place"), 200, 64).await;

    assert_eq!(report.scheduled, 200);
    assert_eq!(
        (report.started, report.dropped, report.unfinished),
        (200, 0, 0)
    );
    assert_eq!(
        (report.requests, report.ok, report.error_count),
        (200, 200, 0)
    );
    assert_eq!(seen.place.load(Ordering::Relaxed), 200);
    assert_eq!(report.latency_ms["place"].count, 200);
    assert_eq!(report.achieved_rate_per_sec, 200.0);
    assert!(report.latency_ms["place"].max < 1000.0, "{report:?}");
    // The JSON report carries the fields scripts read.
    let json = serde_json::to_value(&report).expect("report serializes");
    for key in [
        "requests",
        "ok",
        "errors",
        "achieved_rate_per_sec",
        "latency_ms",
    ] {
        assert!(json.get(key).is_some(), "missing {key}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_run_sends_four_requests_per_arrival() {
    let (address, seen) = spawn_server().await;
    let report = load(format!("http://{address}"), scenario("lifecycle"), 50, 64).await;

    assert_eq!(
        (report.started, report.requests, report.ok),
        (50, 200, 50 * 4)
    );
    assert_eq!(seen.commands.load(Ordering::Relaxed), 150);
    for kind in ["place", "pay", "ship", "deliver", "flow"] {
        assert_eq!(report.latency_ms[kind].count, 50, "{kind}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_run_counts_result_lines() {
    let (address, seen) = spawn_server().await;
    let report = load(format!("http://{address}"), scenario("bulk-ingest"), 20, 64).await;

    assert_eq!((report.requests, report.ok), (20, 20));
    assert_eq!(report.bulk_lines.get("accepted"), Some(&20_000));
    assert_eq!(seen.bulk_lines.load(Ordering::Relaxed), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_status_and_code() {
    let (address, _) = spawn_server().await;
    let report = load(
        format!("http://{address}/busy"),
        scenario("lifecycle"),
        40,
        64,
    )
    .await;

    assert_eq!(
        (report.requests, report.ok),
        (40, 0),
        "later steps are not sent"
    );
    assert_eq!(report.errors.get("429 overloaded"), Some(&40));
    assert_eq!(report.latency_ms["place"].count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_beyond_the_in_flight_bound_are_dropped_and_latency_starts_at_the_intended_time() {
    let (address, _) = spawn_server().await;
    // 100 arrivals/s against a server that takes 300 ms, with at most 4 outstanding: about 4
    // arrivals per 300 ms can be sent, the rest are dropped rather than queued.
    let report = load(format!("http://{address}/slow"), scenario("place"), 100, 4).await;

    assert_eq!(report.scheduled, 100);
    assert_eq!(report.started + report.dropped, 100);
    assert!(
        (8..=24).contains(&report.started),
        "expected about 4 sends per {SLOW:?}: {report:?}"
    );
    assert_eq!(report.ok, report.started);
    let place = report.latency_ms["place"];
    assert!(place.p50 >= SLOW.as_millis() as f64, "{place:?}");
}
