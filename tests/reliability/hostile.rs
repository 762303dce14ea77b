//! **Hostile input**: generated and mutated inputs (proptest, from a corpus of valid requests)
//! thrown at a real `orderly serve` over raw HTTP/1.1 on loopback, for each of: the NDJSON line
//! parser (bulk lines), the JSON bodies of every route, the headers (`Idempotency-Key`,
//! `Content-Type`, `Authorization`) and the path parameters. No answer may be a 5xx, the
//! process must stay up, and every rejection must carry a code the README's API error table
//! documents. The short version sends a few thousand inputs per kind; `RELIABILITY_LONG=1`
//! sends 250,000 per kind.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};

use crate::faults::long;
use crate::support::serve::{serve_command, spawn_serve_command, Serve};

const API_KEY: &str = "hostile-key";

/// The codes of the README's API error table (every backticked code of its first column, and
/// those listed in the "validation codes" row).
pub fn documented_codes() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("### API errors (stable codes)")
        .nth(1)
        .expect("the API error table")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    let mut codes = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').collect();
        let wanted = if cells.get(1).is_some_and(|c| c.contains("validation codes")) {
            cells.get(3).copied().unwrap_or_default()
        } else {
            cells.get(1).copied().unwrap_or_default()
        };
        for (i, part) in wanted.split('`').enumerate() {
            if i % 2 == 1 && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                codes.insert(part.to_string());
            }
        }
    }
    codes
}

/// One raw HTTP/1.1 connection with keep-alive, reopened when the server closes it.
struct Conn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

/// One answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    fn new(base: &str) -> Conn {
        Conn {
            addr: base.trim_start_matches("http://").to_string(),
            stream: None,
        }
    }

    fn open(&mut self) -> &mut BufReader<TcpStream> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr).expect("connect to orderly serve");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            stream.set_nodelay(true).expect("nodelay");
            self.stream = Some(BufReader::new(stream));
        }
        self.stream.as_mut().expect("open")
    }

    /// Sends `request` and reads the answer; a connection the server closed is reopened once.
    fn send(&mut self, request: &[u8]) -> Answer {
        for _ in 0..2 {
            match self.try_send(request) {
                Ok(answer) => return answer,
                Err(_) => self.stream = None,
            }
        }
        panic!(
            "no answer to {:?}",
            String::from_utf8_lossy(&request[..request.len().min(300)])
        );
    }

    fn try_send(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        let reader = self.open();
        reader.get_mut().write_all(request)?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(std::io::ErrorKind::InvalidData)?;
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        if close {
            self.stream = None;
        }
        Ok(Answer { status, body })
    }
}

/// A request with a `Content-Length`, bytes as given (headers may hold anything).
fn request(method: &str, path: &[u8], headers: &[(&[u8], &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

const AUTH: &[u8] = b"Bearer hostile-key";

/// The tally of one kind of input.
#[derive(Default)]
pub struct Tally {
    /// Inputs judged (for bulk: answer lines).
    pub inputs: u64,
    /// Inputs that must be judged (for bulk: the non-blank lines sent).
    pub expected: u64,
    /// Answers (or bulk lines) refused with a documented code.
    pub refused: u64,
    /// Accepted.
    pub accepted: u64,
    /// Violations: 5xx, undocumented codes, bodies that are not the error shape.
    pub violations: Vec<String>,
}

impl Tally {
    fn judge(&mut self, codes: &BTreeSet<String>, what: &str, answer: &Answer) {
        if answer.status >= 500 {
            self.violations.push(format!(
                "{what}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
            return;
        }
        if answer.status < 400 {
            self.accepted += 1;
            return;
        }
        if answer.body.is_empty() && matches!(answer.status, 400 | 431) {
            // Refused by the HTTP parser before the application saw a request (a header
            // that is not HTTP): the status is the whole answer.
            self.refused += 1;
            return;
        }
        match serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        {
            Some(code) if codes.contains(&code) => self.refused += 1,
            other => self.violations.push(format!(
                "{what}: {} with code {other:?}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            )),
        }
    }
}

/// A valid order body.
fn valid_order(n: u64) -> String {
    format!(
        r#"{{"customer_id":"c-{n}","currency":"USD","payment_method":"card","items":[{{"sku":"sku-{}","quantity":{},"unit_price":"19.99"}}],"metadata":{{"k":"v"}}}}"#,
        n % 9,
        n % 3 + 1
    )
}

/// Mutations of a valid input: byte flips, insertions (including control characters, quotes,
/// brackets and bytes that are not UTF-8), deletions, truncation, duplication of a slice, and
/// the replacement of a value by another JSON type.
fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    let interesting = prop_oneof![
        any::<u8>(),
        Just(0u8),
        Just(b'"'),
        Just(b'['),
        Just(b'{'),
        Just(b'\\'),
        Just(0xff),
        Just(0xc3),
        Just(b'\n'),
        Just(b'-'),
        Just(b'9'),
    ];
    let edit = (0..len, interesting, 0usize..4, 1usize..16);
    (prop::collection::vec(edit, 1..6), any::<bool>()).prop_map(move |(edits, truncate)| {
        let mut bytes = base.clone();
        for (at, byte, kind, span) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 => {
                    let end = (at + span).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => {
                    let end = (at + span).min(bytes.len());
                    let slice = bytes[at..end].to_vec();
                    bytes.splice(at..at, slice);
                }
            }
        }
        if truncate && !bytes.is_empty() {
            let cut = bytes.len() / 2;
            bytes.truncate(cut);
        }
        bytes
    })
}

/// Type and value swaps at a field of a valid order (`"quantity":[]`, huge numbers, ...).
fn swapped(n: u64) -> impl Strategy<Value = Vec<u8>> {
    let fields = [
        "\"c-",
        "\"USD\"",
        "\"card\"",
        "\"sku-",
        "\"19.99\"",
        "\"v\"",
    ];
    let values = prop_oneof![
        Just("null"),
        Just("[]"),
        Just("{}"),
        Just("true"),
        Just("-1"),
        Just("1e400"),
        Just("\"\\u0000\""),
        Just("\"\\ud800\""),
        Just("18446744073709551616"),
        Just("\"99999999999999999999999.99\""),
        Just("[[\"a\",1,\"1\"]]"),
        Just("\"\""),
    ];
    (0..fields.len(), values)
        .prop_map(move |(i, value)| valid_order(n).replacen(fields[i], value, 1).into_bytes())
}

fn runner(cases: u64) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases: cases as u32,
            failure_persistence: None,
            // Values are drawn one at a time from one runner: no strategy here filters, but
            // never let a count of rejects end a long run.
            max_local_rejects: u32::MAX,
            max_global_rejects: u32::MAX,
            ..Config::default()
        },
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    )
}

/// Draws one value of `strategy`.
fn draw<S: Strategy>(runner: &mut TestRunner, strategy: &S) -> S::Value {
    strategy.new_tree(runner).expect("a value").current()
}

/// A server with keys (so `Authorization` matters) on the memory store.
pub fn start_server() -> Serve {
    let mut command = serve_command("memory", "hostile", 4, None);
    command.env("ORDERLY__API__KEYS", format!("[\"{API_KEY}\"]"));
    spawn_serve_command(command)
}

/// Places one valid order through `conn`; its id.
fn place(conn: &mut Conn, n: u64) -> String {
    let body = valid_order(1_000_000 + n);
    let answer = conn.send(&request(
        "POST",
        b"/v1/orders",
        &[
            (b"Authorization", AUTH),
            (b"Content-Type", b"application/json"),
        ],
        body.as_bytes(),
    ));
    assert_eq!(
        answer.status,
        201,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let view: serde_json::Value = serde_json::from_slice(&answer.body).expect("order JSON");
    view["order_id"].as_str().expect("order_id").to_string()
}

/// Inputs per kind.
pub fn cases() -> u64 {
    if long() {
        250_000
    } else {
        10_000
    }
}

/// NDJSON lines: mutated and swapped orders, 500 lines per bulk request.
pub fn bulk_lines(serve: &Serve, codes: &BTreeSet<String>) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Conn::new(&serve.base);
    let mut runner = runner(cases());
    let lines = prop_oneof![
        3 => (0u64..1000).prop_flat_map(|n| mutate(valid_order(n).into_bytes())),
        2 => (0u64..1000).prop_flat_map(swapped),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ];
    let mut sent = 0;
    while sent < cases() {
        let batch = (cases() - sent).min(500);
        let mut body = Vec::new();
        for _ in 0..batch {
            let mut line = draw(&mut runner, &lines);
            line.retain(|b| *b != b'\n' && *b != b'\r');
            // The server skips blank lines (documented): they are not inputs.
            if !line.iter().all(u8::is_ascii_whitespace) {
                tally.expected += 1;
            }
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
        sent += batch;
        let answer = conn.send(&request(
            "POST",
            b"/v1/orders/bulk",
            &[
                (b"Authorization", AUTH),
                (b"Content-Type", b"application/x-ndjson"),
            ],
            &body,
        ));
        if answer.status != 200 {
            tally.judge(codes, "bulk request", &answer);
            continue;
        }
        for line in answer.body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let value: serde_json::Value = match serde_json::from_slice(line) {
                Ok(v) => v,
                Err(_) => {
                    tally.violations.push(format!(
                        "bulk answer line is not JSON: {}",
                        String::from_utf8_lossy(line)
                    ));
                    continue;
                }
            };
            if value.get("summary").is_some() {
                continue;
            }
            tally.inputs += 1;
            match value["status"].as_str() {
                Some("accepted") => tally.accepted += 1,
                Some("rejected") => match value["error"]["code"].as_str() {
                    Some(code) if codes.contains(code) => tally.refused += 1,
                    other => tally
                        .violations
                        .push(format!("bulk line refused with code {other:?}: {value}")),
                },
                _ => tally.violations.push(format!("bulk answer line {value}")),
            }
        }
    }
    tally
}

/// JSON bodies of every route: placements and every command on an existing order.
pub fn bodies(serve: &Serve, codes: &BTreeSet<String>) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Conn::new(&serve.base);
    let ids: Vec<String> = (0..8).map(|n| place(&mut conn, n)).collect();
    let mut runner = runner(cases());
    let command_bodies = [
        r#"{"payment_method":"card"}"#,
        r#"{"tracking_number":"T-1"}"#,
        r#"{}"#,
        r#"{"reason":"changed my mind"}"#,
        r#"{"amount":"1.00"}"#,
    ];
    let verbs = ["pay", "ship", "deliver", "cancel", "refund"];
    let inputs = prop_oneof![
        2 => (0u64..1000).prop_flat_map(|n| mutate(valid_order(n).into_bytes())).prop_map(|b| (None, b)),
        1 => (0u64..1000).prop_flat_map(swapped).prop_map(|b| (None, b)),
        3 => (0..verbs.len(), 0..ids.len())
            .prop_flat_map(move |(v, o)| mutate(command_bodies[v].as_bytes().to_vec()).prop_map(move |b| (Some((v, o)), b))),
        1 => (0..verbs.len(), 0..ids.len(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(v, o, b)| (Some((v, o)), b)),
    ];
    for _ in 0..cases() {
        let (target, body) = draw(&mut runner, &inputs);
        let path = match target {
            None => "/v1/orders".to_string(),
            Some((v, o)) => format!("/v1/orders/{}/{}", ids[o], verbs[v]),
        };
        let answer = conn.send(&request(
            "POST",
            path.as_bytes(),
            &[
                (b"Authorization", AUTH),
                (b"Content-Type", b"application/json"),
            ],
            &body,
        ));
        tally.inputs += 1;
        tally.expected += 1;
        tally.judge(
            codes,
            &format!("POST {path} {}", String::from_utf8_lossy(&body)),
            &answer,
        );
    }
    tally
}

/// Headers: `Idempotency-Key`, `Content-Type` and `Authorization` of arbitrary bytes, some of
/// them not HTTP at all.
pub fn headers(serve: &Serve, codes: &BTreeSet<String>) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Conn::new(&serve.base);
    let id = place(&mut conn, 100);
    let mut runner = runner(cases());
    let value = prop_oneof![
        3 => prop::collection::vec(0x20u8..0x7f, 0..80),
        2 => prop::collection::vec(any::<u8>().prop_map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }), 0..300),
        1 => Just(b"application/json; charset=utf-8".to_vec()),
        1 => Just(b"Bearer hostile-key".to_vec()),
        1 => Just(b"Bearer  hostile-key ".to_vec()),
        1 => Just(b"bearer hostile-key".to_vec()),
        1 => Just(b"application/x-ndjson".to_vec()),
        1 => Just(vec![b'k'; 256]),
    ];
    let inputs = (0usize..3, value, 0usize..3);
    let names: [&[u8]; 3] = [b"Idempotency-Key", b"Content-Type", b"Authorization"];
    for _ in 0..cases() {
        let (which, value, route) = draw(&mut runner, &inputs);
        let (path, body) = match route {
            0 => ("/v1/orders".to_string(), valid_order(7)),
            1 => (
                format!("/v1/orders/{id}/ship"),
                r#"{"tracking_number":"T"}"#.to_string(),
            ),
            _ => (format!("/v1/orders/{id}"), String::new()),
        };
        let mut headers: Vec<(&[u8], &[u8])> = vec![
            (b"Authorization", AUTH),
            (b"Content-Type", b"application/json"),
        ];
        headers.retain(|(n, _)| *n != names[which]);
        headers.push((names[which], &value));
        let method = if route == 2 { "GET" } else { "POST" };
        let answer = conn.send(&request(method, path.as_bytes(), &headers, body.as_bytes()));
        tally.inputs += 1;
        tally.expected += 1;
        tally.judge(
            codes,
            &format!(
                "{method} {path} with {}: {:?}",
                String::from_utf8_lossy(names[which]),
                String::from_utf8_lossy(&value)
            ),
            &answer,
        );
    }
    tally
}

/// Path parameters: arbitrary order ids, verbs and segments.
pub fn paths(serve: &Serve, codes: &BTreeSet<String>) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Conn::new(&serve.base);
    let id = place(&mut conn, 200);
    let mut runner = runner(cases());
    let segment = prop_oneof![
        3 => prop::collection::vec(0x21u8..0x7f, 0..60),
        1 => prop::collection::vec(any::<u8>().prop_map(|b| if b <= 0x20 || b == 0x7f { b'_' } else { b }), 0..60),
        1 => Just(id.clone().into_bytes()),
        1 => Just(b"..".to_vec()),
        1 => Just(b"%00".to_vec()),
        1 => Just(b"%2e%2e".to_vec()),
        1 => Just(b"00000000-0000-0000-0000-000000000000".to_vec()),
        1 => Just(id.to_uppercase().into_bytes()),
    ];
    let verb = prop_oneof![
        Just(&b""[..]),
        Just(&b"/pay"[..]),
        Just(&b"/ship"[..]),
        Just(&b"/refund"[..]),
        Just(&b"/cancel"[..]),
        Just(&b"/x/y"[..]),
        Just(&b"/"[..]),
    ];
    let inputs = (segment, verb, any::<bool>());
    for _ in 0..cases() {
        let (segment, verb, post) = draw(&mut runner, &inputs);
        let mut path = b"/v1/orders/".to_vec();
        path.extend_from_slice(&segment);
        path.extend_from_slice(verb);
        let method = if post { "POST" } else { "GET" };
        let body: &[u8] = if post { b"{}" } else { b"" };
        let answer = conn.send(&request(
            method,
            &path,
            &[
                (b"Authorization", AUTH),
                (b"Content-Type", b"application/json"),
            ],
            body,
        ));
        tally.inputs += 1;
        tally.expected += 1;
        tally.judge(
            codes,
            &format!("{method} {}", String::from_utf8_lossy(&path)),
            &answer,
        );
    }
    tally
}

/// One kind of hostile input: sends it to the server, judges the answers.
type Kind = fn(&Serve, &BTreeSet<String>) -> Tally;

/// Every kind of hostile input against one server, as rows of the suite's table.
pub fn rows() -> Vec<crate::faults::Row> {
    let codes = documented_codes();
    assert!(
        codes.len() > 20 && codes.contains("invalid_field") && codes.contains("store_full"),
        "the README's error table parses: {codes:?}"
    );
    let mut serve = start_server();
    let kinds: [(&'static str, Kind); 4] = [
        ("hostile input: NDJSON lines", bulk_lines),
        ("hostile input: JSON bodies of every route", bodies),
        ("hostile input: headers", headers),
        ("hostile input: path parameters", paths),
    ];
    let mut rows = Vec::new();
    for (fault, run) in kinds {
        let tally = run(&serve, &codes);
        let mut findings = crate::checker::Findings {
            acknowledged: tally.accepted as usize,
            ..Default::default()
        };
        findings.inconsistent = tally.violations.clone();
        if tally.inputs != tally.expected {
            findings.inconsistent.push(format!(
                "{} inputs were judged, {} were sent",
                tally.inputs, tally.expected
            ));
        }
        rows.push(crate::faults::Row {
            fault,
            injected: tally.inputs as u32,
            findings,
            recovery: None,
            notes: format!(
                "{} inputs: {} accepted, {} refused with a documented code, {} violations",
                tally.inputs,
                tally.accepted,
                tally.refused,
                tally.violations.len()
            ),
        });
    }
    let alive = serve.child.try_wait().map(|s| s.is_none()).unwrap_or(false);
    if !alive {
        rows[0]
            .findings
            .inconsistent
            .push("orderly serve exited during the hostile input".into());
    }
    serve.kill();
    rows
}
