//! `POST /v1/orders/bulk`: NDJSON streamed in and out.
//!
//! The body is never buffered whole. A background task reads it chunk by chunk, splits it into
//! lines ([`LineSplitter`]: LF or CRLF ends, blank lines skipped, overlong lines cut off and
//! reported), parses each line into a [`NewOrder`] ([`parse_line`]), and hands batches of
//! `bulk_batch_size` orders to the engine with `Admission::Wait`. At most
//! [`BATCHES_IN_FLIGHT_MAX`] batches are in flight, so a saturated engine stops the reading of
//! the body (TCP pushes back on the client) instead of growing a queue. Results go out in input
//! order as one NDJSON line per non-blank input line, then a summary line.
//!
//! A bad line rejects that line only. Request-level limits end the stream with an error line:
//! more than `bulk_lines_max` lines (`too_many_lines`) or more than `bulk_body_bytes_max` bytes
//! without a `Content-Length` (`body_too_large`; with a `Content-Length` it is a 413 up front).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{post, web, HttpRequest, HttpResponse};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::body::{content_length, content_type, parse_json};
use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::ApiState;
use crate::domain::{NewOrder, NewOrderRequest, OrderId};
use crate::engine::{Admission, BatchItem};
use crate::telemetry;

/// Batches handed to the engine but not yet answered; bounds memory and couples the reading of
/// the body to the engine's pace.
pub(crate) const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Result chunks waiting for a slow client before the task stops reading the body.
const OUTPUT_CHUNKS_MAX: usize = 8;
/// A partial batch waits at most this long for more lines, so a client that trickles lines
/// gets answers without waiting for a full batch.
const PARTIAL_BATCH_WAIT: Duration = Duration::from_millis(2);
/// Lines (good or bad) per batch at most, so a run of bad lines cannot grow one batch unbounded.
const LINES_PER_BATCH_FACTOR: usize = 4;

/// Media types accepted for the bulk body.
const NDJSON_TYPES: [&str; 3] = [
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
];

/// Parses one NDJSON line (without its line end) into a validated order. Never panics; every
/// error is a client error (4xx code).
pub(crate) fn parse_line(line: &[u8]) -> Result<NewOrder, ApiError> {
    let request: NewOrderRequest = parse_json(line)?;
    Ok(NewOrder::parse(&request)?)
}

/// What the splitter found: a line's 1-based number and its bytes (line end removed), or the
/// number of a line longer than the limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SplitLine<'a> {
    /// A non-blank line.
    Content(u64, &'a [u8]),
    /// A line longer than the limit; its bytes were discarded as they arrived.
    TooLong(u64),
}

/// Splits a byte stream into lines across chunk boundaries, keeping at most `max + 1` bytes of
/// the current line (the extra byte is a possible `\r`).
pub(crate) struct LineSplitter {
    current: Vec<u8>,
    overflow: bool,
    lines_ended: u64,
    max: usize,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes.
    pub(crate) fn new(max: usize) -> LineSplitter {
        LineSplitter {
            current: Vec::new(),
            overflow: false,
            lines_ended: 0,
            max,
        }
    }

    /// Feeds a chunk; calls `on_line` for every line it completes. Stops early (and returns
    /// false) when `on_line` returns false.
    pub(crate) fn push(
        &mut self,
        mut chunk: &[u8],
        on_line: &mut impl FnMut(SplitLine<'_>) -> bool,
    ) -> bool {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            chunk = rest;
            // Completed lines read straight from the chunk need no copy.
            if ended && self.current.is_empty() && !self.overflow {
                self.lines_ended += 1;
                if !self.emit(part, on_line) {
                    return false;
                }
                continue;
            }
            if !self.overflow {
                if self.current.len() + part.len() > self.max + 1 {
                    self.overflow = true;
                    self.current = Vec::new();
                } else {
                    self.current.extend_from_slice(part);
                }
            }
            if ended {
                self.lines_ended += 1;
                let current = std::mem::take(&mut self.current);
                if !self.emit(&current, on_line) {
                    return false;
                }
                self.current = current;
                self.current.clear();
            }
        }
        true
    }

    /// Ends the stream: a last line without a line end is still a line.
    pub(crate) fn finish(&mut self, on_line: &mut impl FnMut(SplitLine<'_>) -> bool) -> bool {
        if self.current.is_empty() && !self.overflow {
            return true;
        }
        self.lines_ended += 1;
        let current = std::mem::take(&mut self.current);
        self.emit(&current, on_line)
    }

    fn emit(&mut self, line: &[u8], on_line: &mut impl FnMut(SplitLine<'_>) -> bool) -> bool {
        let number = self.lines_ended;
        if std::mem::take(&mut self.overflow) {
            return on_line(SplitLine::TooLong(number));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max {
            return on_line(SplitLine::TooLong(number));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        on_line(SplitLine::Content(number, line))
    }
}

/// One result line of the response.
#[derive(Debug, Serialize)]
struct LineResult {
    line: u64,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail>,
}

/// Counts for the summary line.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Summary {
    lines: u64,
    accepted: u64,
    rejected: u64,
    duplicate: u64,
}

/// The last line of the response.
#[derive(Debug, Serialize)]
struct SummaryLine {
    summary: Summary,
}

impl Summary {
    fn add(&mut self, other: Summary) {
        self.lines += other.lines;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.duplicate += other.duplicate;
    }
}

/// A line of a batch, in input order.
enum Entry {
    /// Parsed; its result comes from the engine (the index into the batch's items).
    Parsed(u64),
    /// Refused at the edge.
    Rejected(u64, ErrorDetail),
}

/// A contiguous run of input lines and the placements among them.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    items: Vec<BatchItem>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

type Pending = FuturesOrdered<LocalBoxFuture<'static, (Bytes, Summary)>>;

fn write_line(out: &mut Vec<u8>, value: &impl Serialize) {
    // Serializing these plain structs into a Vec cannot fail; an empty line is the fallback.
    let _ = serde_json::to_writer(&mut *out, value);
    out.push(b'\n');
}

/// Sends a batch to the engine and renders its result lines.
fn run_batch(state: Arc<ApiState>, batch: Batch) -> LocalBoxFuture<'static, (Bytes, Summary)> {
    Box::pin(async move {
        let ids: Vec<OrderId> = batch.items.iter().map(|i| i.order_id).collect();
        let results = if batch.items.is_empty() {
            Vec::new()
        } else {
            state
                .engine
                .execute_batch(batch.items, Admission::Wait)
                .await
        };
        let mut results = results.into_iter();
        let mut ids = ids.into_iter();
        let mut out = Vec::with_capacity(batch.entries.len() * 72);
        let mut summary = Summary::default();
        for entry in batch.entries {
            summary.lines += 1;
            let line = match entry {
                Entry::Rejected(line, error) => {
                    summary.rejected += 1;
                    LineResult {
                        line,
                        status: "rejected",
                        order_id: None,
                        error: Some(error),
                    }
                }
                Entry::Parsed(line) => {
                    let id = ids.next();
                    match results.next() {
                        Some(Ok(outcome)) => {
                            summary.accepted += 1;
                            summary.duplicate += u64::from(outcome.duplicate);
                            LineResult {
                                line,
                                status: "accepted",
                                order_id: id.map(|id| id.to_string()),
                                error: None,
                            }
                        }
                        Some(Err(error)) => {
                            summary.rejected += 1;
                            LineResult {
                                line,
                                status: "rejected",
                                order_id: None,
                                error: Some(ApiError::Engine(error).detail()),
                            }
                        }
                        None => {
                            summary.rejected += 1;
                            LineResult {
                                line,
                                status: "rejected",
                                order_id: None,
                                error: Some(
                                    ApiError::Engine(crate::engine::EngineError::Stopped).detail(),
                                ),
                            }
                        }
                    }
                }
            };
            write_line(&mut out, &line);
        }
        telemetry::record_bulk_lines(summary.accepted, summary.rejected);
        (Bytes::from(out), summary)
    })
}

/// A stream-ending error line, ordered after every earlier result.
fn stop_line(error: ApiError) -> LocalBoxFuture<'static, (Bytes, Summary)> {
    let mut out = Vec::new();
    write_line(
        &mut out,
        &ErrorBody {
            error: error.detail(),
        },
    );
    Box::pin(std::future::ready((Bytes::from(out), Summary::default())))
}

/// The reading side of one bulk request.
struct Reader {
    state: Arc<ApiState>,
    batch: Batch,
    lines_seen: u64,
    /// Set when a request-level limit ended the stream.
    stopped: Option<ApiError>,
}

impl Reader {
    /// Takes one split line; false once the line limit is reached.
    fn on_line(&mut self, line: SplitLine<'_>, pending: &mut Pending) -> bool {
        if self.lines_seen >= self.state.settings.bulk_lines_max {
            self.stopped = Some(ApiError::Shape {
                code: "too_many_lines",
                field: None,
                message: format!(
                    "a bulk request has at most {} lines; the rest was not read",
                    self.state.settings.bulk_lines_max
                ),
            });
            return false;
        }
        self.lines_seen += 1;
        match line {
            SplitLine::TooLong(number) => {
                let error = ApiError::Shape {
                    code: "line_too_long",
                    field: None,
                    message: format!(
                        "line exceeds {} bytes",
                        self.state.settings.bulk_line_bytes_max
                    ),
                };
                self.batch
                    .entries
                    .push(Entry::Rejected(number, error.detail()));
            }
            SplitLine::Content(number, bytes) => match parse_line(bytes) {
                Ok(new_order) => {
                    self.batch.entries.push(Entry::Parsed(number));
                    self.batch
                        .items
                        .push(BatchItem::place(OrderId::new(), new_order));
                }
                Err(error) => self
                    .batch
                    .entries
                    .push(Entry::Rejected(number, error.detail())),
            },
        }
        let batch_size = self.state.settings.bulk_batch_size.max(1);
        if self.batch.items.len() >= batch_size
            || self.batch.entries.len() >= batch_size * LINES_PER_BATCH_FACTOR
        {
            self.close_batch(pending);
        }
        true
    }

    fn close_batch(&mut self, pending: &mut Pending) {
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            pending.push_back(run_batch(Arc::clone(&self.state), batch));
        }
    }
}

/// Reads the body, runs the batches and sends the result chunks, in order, to `out`.
async fn pump(state: Arc<ApiState>, mut payload: web::Payload, out: mpsc::Sender<Bytes>) {
    let body_max = state.settings.bulk_body_bytes_max;
    let mut splitter = LineSplitter::new(state.settings.bulk_line_bytes_max);
    let mut reader = Reader {
        state,
        batch: Batch::default(),
        lines_seen: 0,
        stopped: None,
    };
    let mut pending: Pending = FuturesOrdered::new();
    let mut body_bytes: u64 = 0;
    let mut reading = true;
    let mut summary = Summary::default();
    let flush = tokio::time::sleep(PARTIAL_BATCH_WAIT);
    tokio::pin!(flush);
    let mut flush_armed = false;
    loop {
        tokio::select! {
            biased;
            Some((chunk, counts)) = pending.next() => {
                summary.add(counts);
                if out.send(chunk).await.is_err() {
                    // The client went away: stop reading and drop the rest.
                    return;
                }
            }
            chunk = payload.next(), if reading && pending.len() < BATCHES_IN_FLIGHT_MAX => {
                let was_empty = reader.batch.is_empty();
                match chunk {
                    None => {
                        reading = false;
                        splitter.finish(&mut |line| reader.on_line(line, &mut pending));
                    }
                    Some(Err(error)) => {
                        reading = false;
                        reader.stopped = Some(ApiError::BodyUnreadable(error.to_string()));
                    }
                    Some(Ok(bytes)) => {
                        body_bytes += bytes.len() as u64;
                        if body_bytes > body_max {
                            reading = false;
                            reader.stopped = Some(ApiError::BodyTooLarge { limit: body_max });
                        } else {
                            let mut on_line = |line: SplitLine<'_>| reader.on_line(line, &mut pending);
                            reading = splitter.push(&bytes, &mut on_line);
                        }
                    }
                }
                if reader.stopped.is_some() {
                    reading = false;
                }
                if !reading {
                    flush_armed = false;
                    reader.close_batch(&mut pending);
                    if let Some(error) = reader.stopped.take() {
                        pending.push_back(stop_line(error));
                    }
                } else if was_empty && !reader.batch.is_empty() {
                    flush.as_mut().reset(tokio::time::Instant::now() + PARTIAL_BATCH_WAIT);
                    flush_armed = true;
                } else if reader.batch.is_empty() {
                    flush_armed = false;
                }
            }
            // After the body branch, so a partial batch is only sent early when the client
            // has nothing more for now, and not while the engine is the one holding us back.
            _ = &mut flush, if flush_armed && pending.len() < BATCHES_IN_FLIGHT_MAX => {
                flush_armed = false;
                reader.close_batch(&mut pending);
            }
            else => break,
        }
    }
    let mut last = Vec::new();
    write_line(&mut last, &SummaryLine { summary });
    let _ = out.send(Bytes::from(last)).await;
}

/// Places many orders from an NDJSON body (one order per line), streaming one result line per
/// non-blank input line, in input order, then a summary line.
#[utoipa::path(
    tag = "orders",
    request_body(content = String, content_type = "application/x-ndjson",
        description = "One order per line, same shape as POST /v1/orders; CRLF accepted, blank lines skipped."),
    responses(
        (status = 200, content_type = "application/x-ndjson",
            description = "Streamed: {\"line\":N,\"status\":\"accepted\",\"order_id\":\"…\"} or {\"line\":N,\"status\":\"rejected\",\"error\":{…}} per line, then {\"summary\":{\"lines\":…,\"accepted\":…,\"rejected\":…,\"duplicate\":…}}",
            body = String),
        (status = 413, description = "Content-Length over bulk_body_bytes_max", body = ErrorBody),
        (status = 415, description = "Not application/x-ndjson", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders/bulk")]
pub(crate) async fn bulk_place(
    req: HttpRequest,
    state: web::Data<ApiState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !content_type(&req).is_some_and(|t| NDJSON_TYPES.contains(&t.as_str())) {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/x-ndjson",
        });
    }
    let body_max = state.settings.bulk_body_bytes_max;
    if content_length(&req).is_some_and(|n| n > body_max) {
        return Err(ApiError::BodyTooLarge { limit: body_max });
    }
    let (tx, rx) = mpsc::channel::<Bytes>(OUTPUT_CHUNKS_MAX);
    actix_web::rt::spawn(pump(state.into_inner(), payload, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/x-ndjson"))
        .streaming(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = r#"{"customer_id":"c-42","currency":"USD","payment_method":"card","items":[{"sku":"sku-1","quantity":2,"unit_price":"19.99"}],"metadata":{"k":"v"}}"#;

    /// Every line the splitter reports for `chunks`, as (number, Some(bytes)) or (number, None)
    /// for overlong lines.
    fn split(chunks: &[&[u8]], max: usize) -> Vec<(u64, Option<Vec<u8>>)> {
        let mut lines = Vec::new();
        let mut splitter = LineSplitter::new(max);
        let mut collect = |line: SplitLine<'_>| {
            lines.push(match line {
                SplitLine::Content(n, bytes) => (n, Some(bytes.to_vec())),
                SplitLine::TooLong(n) => (n, None),
            });
            true
        };
        for chunk in chunks {
            splitter.push(chunk, &mut collect);
        }
        splitter.finish(&mut collect);
        lines
    }

    #[test]
    fn crlf_blank_and_last_lines() {
        let lines = split(&[b"a\r\n\r\n  \nb\n", b"c"], 10);
        assert_eq!(
            lines,
            vec![
                (1, Some(b"a".to_vec())),
                (4, Some(b"b".to_vec())),
                (5, Some(b"c".to_vec()))
            ]
        );
    }

    #[test]
    fn overlong_lines_are_reported_with_their_number() {
        let lines = split(&[b"0123", b"456789ABC\nok\n"], 5);
        assert_eq!(lines, vec![(1, None), (2, Some(b"ok".to_vec()))]);
        // Exactly `max` bytes plus CRLF is fine.
        let lines = split(&[b"12345\r\n"], 5);
        assert_eq!(lines, vec![(1, Some(b"12345".to_vec()))]);
    }

    #[test]
    fn the_valid_example_parses() {
        let order = parse_line(VALID.as_bytes()).expect("valid");
        assert_eq!(order.items.len(), 1);
    }

    /// A valid line with one random edit: a byte replaced, a range deleted, bytes inserted.
    fn mutated_valid() -> impl Strategy<Value = Vec<u8>> {
        let len = VALID.len();
        (
            0..len,
            0..len,
            prop::collection::vec(any::<u8>(), 0..8),
            0..3u8,
        )
            .prop_map(move |(a, b, insert, kind)| {
                let mut bytes = VALID.as_bytes().to_vec();
                let (lo, hi) = (a.min(b), a.max(b));
                match kind {
                    0 => bytes[lo] = insert.first().copied().unwrap_or(b'"'),
                    1 => {
                        bytes.drain(lo..hi);
                    }
                    _ => {
                        bytes.splice(lo..lo, insert);
                    }
                }
                bytes
            })
    }

    /// A valid line with one value swapped for a random JSON value.
    fn swapped_value() -> impl Strategy<Value = Vec<u8>> {
        let fields = [
            "\"c-42\"",
            "\"USD\"",
            "\"card\"",
            "\"sku-1\"",
            "2",
            "\"19.99\"",
        ];
        let values = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            "[a-zA-Z0-9.\\-]{0,24}".prop_map(|s| format!("\"{s}\"")),
            Just("null".to_string()),
            Just("[]".to_string()),
            Just("{}".to_string()),
            Just("\"-0.001\"".to_string()),
            Just("\"1e5\"".to_string()),
            Just("\"99999999999999999999.99\"".to_string()),
        ];
        (0..fields.len(), values)
            .prop_map(move |(i, value)| VALID.replacen(fields[i], &value, 1).into_bytes())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Err(error) = parse_line(&bytes) {
                prop_assert!(actix_web::ResponseError::status_code(&error).is_client_error(), "{}", error.code());
            }
        }

        #[test]
        fn mutated_orders_parse_or_fail_as_client_errors(bytes in prop_oneof![mutated_valid(), swapped_value()]) {
            match parse_line(&bytes) {
                Ok(order) => prop_assert!(!order.items.is_empty()),
                Err(error) => prop_assert!(
                    actix_web::ResponseError::status_code(&error).is_client_error(),
                    "{} for {}", error.code(), String::from_utf8_lossy(&bytes)
                ),
            }
        }

        #[test]
        fn chunk_boundaries_do_not_change_the_lines(
            body in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), Just(b'x')], 0..200),
            cuts in prop::collection::vec(0usize..200, 0..6),
        ) {
            let whole = split(&[&body], 8);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&body[start..cut]);
                start = cut;
            }
            chunks.push(&body[start..]);
            prop_assert_eq!(split(&chunks, 8), whole);
        }
    }
}
