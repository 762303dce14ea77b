//! Shared pieces of the integration tests: a tiny hyper server that answers like Orderly, and a
//! minimal XML well-formedness check for the SVG plot.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A stall the server makes once: `/v1/` requests that arrive from `after` the first one until
/// `after + length` are all held until the end of that window.
#[derive(Clone, Copy)]
pub struct Stall {
    pub after: Duration,
    pub length: Duration,
}

/// What the fake server saw.
#[derive(Default)]
pub struct Seen {
    pub place: AtomicU64,
    pub commands: AtomicU64,
    first: Mutex<Option<Instant>>,
}

fn response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn answer(
    request: Request<Incoming>,
    seen: Arc<Seen>,
    stall: Option<Stall>,
    metrics: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    if metrics && path == "/metrics" {
        let placed = seen.place.load(Ordering::Relaxed);
        return Ok(response(
            StatusCode::OK,
            format!(
                "# TYPE orderly_commands_total counter\n\
                 orderly_commands_total{{command=\"place\",outcome=\"ok\"}} {placed}\n\
                 process_resident_memory_bytes 12345678\n"
            ),
        ));
    }
    let _ = request.into_body().collect().await;
    // Only the load's own requests start the stall's clock (not a scrape of /metrics).
    if let Some(stall) = stall.filter(|_| path.starts_with("/v1/")) {
        let now = Instant::now();
        let first = *seen
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(now);
        let (from, until) = (first + stall.after, first + stall.after + stall.length);
        if now >= from && now < until {
            tokio::time::sleep_until(until.into()).await;
        }
    }
    Ok(match path.as_str() {
        "/v1/orders" => {
            let n = seen.place.fetch_add(1, Ordering::Relaxed);
            response(
                StatusCode::CREATED,
                format!(r#"{{"order_id":"o-{n}","status":"pending_payment"}}"#),
            )
        }
        p if p.starts_with("/v1/orders/o-") => {
            seen.commands.fetch_add(1, Ordering::Relaxed);
            response(StatusCode::OK, r#"{"status":"paid"}"#.into())
        }
        _ => response(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no route"}}"#.into(),
        ),
    })
}

/// Starts the fake server on 127.0.0.1:0 (on the current runtime); with `metrics` it serves a
/// `/metrics` page with the placements it answered and a fixed RSS.
pub async fn spawn_server(stall: Option<Stall>, metrics: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let seen = Arc::new(Seen::default());
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&server_seen);
            tokio::spawn(async move {
                let service = service_fn(move |r| answer(r, Arc::clone(&seen), stall, metrics));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, seen)
}

/// Checks that `text` is well-formed XML (declaration, balanced elements, quoted attributes,
/// escaped text) and returns the root element's name and attributes' text.
pub fn check_xml(text: &str) -> Result<(String, String), String> {
    let mut rest = text.trim_start();
    if let Some(after) = rest.strip_prefix("<?xml") {
        let end = after.find("?>").ok_or("unterminated XML declaration")?;
        rest = &after[end + 2..];
    }
    let mut stack: Vec<String> = Vec::new();
    let mut root: Option<(String, String)> = None;
    loop {
        let Some(open) = rest.find('<') else {
            if rest.trim().is_empty() || !stack.is_empty() {
                break;
            }
            return Err(format!("text after the root: {rest:?}"));
        };
        let text_part = &rest[..open];
        if text_part.contains('>') {
            return Err(format!("stray '>' in text {text_part:?}"));
        }
        for (i, _) in text_part.match_indices('&') {
            let entity = &text_part[i..];
            if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                .iter()
                .any(|e| entity.starts_with(e))
            {
                return Err(format!("bad entity in {text_part:?}"));
            }
        }
        if stack.is_empty() && root.is_some() && !text_part.trim().is_empty() {
            return Err("text after the root element".into());
        }
        let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack
                .pop()
                .ok_or(format!("</{name}> without an open element"))?;
            if top != name.trim() {
                return Err(format!("</{name}> closes <{top}>"));
            }
            continue;
        }
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = &body[..name_end];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':')
        {
            return Err(format!("bad element name in <{tag}>"));
        }
        let attributes = body[name_end..].trim();
        if !attributes.matches('"').count().is_multiple_of(2) || attributes.contains('<') {
            return Err(format!("bad attributes in <{tag}>"));
        }
        if stack.is_empty() {
            if root.is_some() {
                return Err(format!("a second root element <{name}>"));
            }
            root = Some((name.to_string(), attributes.to_string()));
        }
        if !self_closing {
            stack.push(name.to_string());
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{open}> is never closed"));
    }
    root.ok_or_else(|| "no root element".into())
}

/// A fresh directory under the system temp dir for one test.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orderly-load-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
