//! The `stream` step: orders `XADD`ed to Orderly's ingest stream, and their placements read
//! back from its outbox.
//!
//! Arrival `n` becomes one entry `order = <order JSON>` on the ingest stream, whose order
//! carries the tool's reference in its metadata (`load_ref = "<run>.<n>"`, `<run>` unique per
//! run). Orderly's stream consumer places it; once the placement is durable, the outbox holds an
//! `order_placed` event of that order with the same metadata. A reader follows every shard's
//! outbox stream (`<prefix>:{<shard>}:events`, plain `XREAD`, no consumer group, so it takes
//! nothing from the webhook workers) and, for each event carrying one of this run's references,
//! records the latency from the arrival's **intended** add time to the moment the event was
//! read: the placement as a platform reading the outbox sees it, an upper bound of the durable
//! placement time (the outbox entry is appended in the same transaction as the snapshot).
//!
//! Every arrival is accounted for: placed (a latency), failed (the `XADD` was refused: an error
//! by reason), dropped (over `max_in_flight`, never added), or unfinished (added, and no
//! placement seen within the drain time).
//!
//! Adds are batched: a writer task takes every arrival that is due and sends them as one
//! pipeline (at most `pipeline` per call), so the tool keeps up with 100,000+ orders/s on one
//! connection. The reader has a connection of its own, since a blocking `XREAD` holds up
//! whatever else is queued on its connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;
use redis::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::scenario::{OrderTemplate, StreamSettings};

/// The metadata key of the tool's reference.
pub const REFERENCE_KEY: &str = "load_ref";
/// Longest a single Redis call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one `XREAD` blocks when nothing is new.
const READ_BLOCK_MS: u64 = 20;
/// Entries read per shard stream per `XREAD`.
const READ_COUNT: usize = 1024;
/// Pause after an `XREAD` that found something, before the next one. One `XREAD` over the
/// 64 shard streams costs Redis about 100 µs whatever it returns; unpaced, it returned every
/// millisecond or so (each commit wakes it) and took 30% of Redis's CPU at 15,000 orders/s,
/// a load of the measuring tool on the system measured. Paced, it costs at most a tenth of
/// a core, and a placement is seen at most this much later (the latency stays an upper bound).
const READ_PACING: Duration = Duration::from_millis(2);

/// One arrival to add.
pub(crate) struct Arrival {
    /// Arrival number.
    pub(crate) n: u64,
    /// When it was due.
    pub(crate) intended: Instant,
    /// Its in-flight slot, held until its placement is seen or it fails.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// What the driver reports back to the run.
pub(crate) trait Sink: Send + Sync + 'static {
    /// `count` entries were sent to Redis.
    fn sent(&self, count: u64);
    /// The arrival's placement was seen `latency` after it was due.
    fn placed(&self, latency: Duration);
    /// The arrival's `XADD` failed (`reason` keys the error count).
    fn failed(&self, latency: Duration, reason: &str);
}

/// Added arrivals whose placement has not been seen yet, by arrival number.
type Pending = Arc<Mutex<HashMap<u64, (Instant, OwnedSemaphorePermit)>>>;

fn lock(pending: &Pending) -> MutexGuard<'_, HashMap<u64, (Instant, OwnedSemaphorePermit)>> {
    pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer and reader tasks of one run.
pub(crate) struct StreamDriver {
    arrivals: mpsc::UnboundedSender<Arrival>,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

/// Refuses a Redis URL that is not on this machine (load goes only to loopback).
pub fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("--redis {url:?}: expected redis://host:port[/db]"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !loopback {
        bail!("--redis {url:?}: load goes only to this machine (127.0.0.0/8, [::1], localhost)");
    }
    Ok(())
}

/// A reference unique to this run: the clock's nanoseconds and the process id, in hex.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    format!("{:x}", nanos ^ ((std::process::id() as u64) << 48))
}

/// The outbox stream of `shard` (Orderly's layout: `<prefix>:{<shard>}:events`).
fn events_key(prefix: &str, shard: u32) -> String {
    format!("{prefix}:{{{shard}}}:events")
}

async fn connect(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("--redis {url:?}"))?;
    tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("cannot connect to {url}"))
}

impl StreamDriver {
    /// Connects twice to `url`, notes where every outbox stream ends now (only events after
    /// that are read), and starts the writer and the reader.
    pub(crate) async fn start(
        url: &str,
        settings: &StreamSettings,
        shards: u32,
        template: &OrderTemplate,
        sink: Arc<dyn Sink>,
    ) -> anyhow::Result<StreamDriver> {
        check_loopback(url)?;
        let mut writer_connection = connect(url).await?;
        let mut reader_connection = connect(url).await?;
        let keys: Vec<String> = (0..shards)
            .map(|s| events_key(&settings.events_prefix, s))
            .collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let tails: Vec<Value> =
            tokio::time::timeout(CALL_TIMEOUT, pipe.query_async(&mut reader_connection))
                .await
                .context("reading the outbox streams' ends timed out")?
                .context("reading the outbox streams' ends")?;
        let cursors: Vec<String> = tails
            .iter()
            .map(|tail| last_id(tail).unwrap_or_else(|| "0-0".to_string()))
            .collect();
        // Fail before the run when the stream key is of another type, not on the first add.
        let kind: String = redis::cmd("TYPE")
            .arg(&settings.key)
            .query_async(&mut writer_connection)
            .await
            .context("TYPE of the ingest stream")?;
        if kind != "stream" && kind != "none" {
            bail!(
                "`stream.key` {:?} is a Redis {kind}, not a stream",
                settings.key
            );
        }
        let run = run_id();
        let pending: Pending = Arc::default();
        let (arrivals, receiver) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(
            writer_connection,
            receiver,
            Arc::clone(&pending),
            settings.clone(),
            template.clone(),
            run.clone(),
            Arc::clone(&sink),
        ));
        let reader = tokio::spawn(read_loop(
            reader_connection,
            keys,
            cursors,
            pending,
            format!("\"{REFERENCE_KEY}\":\"{run}."),
            sink,
        ));
        Ok(StreamDriver {
            arrivals,
            writer,
            reader,
        })
    }

    /// Queues one arrival for adding (the writer sends what is queued as one pipeline).
    pub(crate) fn submit(&self, arrival: Arrival) {
        // The writer only ends when the driver is stopped; a send after that has nowhere to
        // go, and its permit is released with it.
        let _ = self.arrivals.send(arrival);
    }

    /// Stops both tasks; arrivals still pending keep their permits until the driver is dropped
    /// (they are the run's `unfinished`).
    pub(crate) fn stop(self) {
        self.writer.abort();
        self.reader.abort();
    }
}

/// The id of the only entry of an `XREVRANGE … COUNT 1` reply.
fn last_id(reply: &Value) -> Option<String> {
    match reply {
        Value::Array(entries) => match entries.first()? {
            Value::Array(entry) => text(entry.first()?),
            _ => None,
        },
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

async fn write_loop(
    mut connection: MultiplexedConnection,
    mut receiver: mpsc::UnboundedReceiver<Arrival>,
    pending: Pending,
    settings: StreamSettings,
    template: OrderTemplate,
    run: String,
    sink: Arc<dyn Sink>,
) {
    let mut batch: Vec<Arrival> = Vec::with_capacity(settings.pipeline);
    loop {
        batch.clear();
        if receiver.recv_many(&mut batch, settings.pipeline).await == 0 {
            return;
        }
        let mut pipe = redis::pipe();
        let mut numbers = Vec::with_capacity(batch.len());
        {
            // Pending before sent: the placement can be read before the add's reply arrives.
            let mut waiting = lock(&pending);
            for arrival in batch.drain(..) {
                let reference = format!("{run}.{}", arrival.n);
                let order = crate::payload::order_json_with(
                    &template,
                    arrival.n,
                    &[(REFERENCE_KEY, &reference)],
                );
                pipe.cmd("XADD")
                    .arg(&settings.key)
                    .arg("*")
                    .arg("order")
                    .arg(order)
                    .ignore();
                numbers.push(arrival.n);
                waiting.insert(arrival.n, (arrival.intended, arrival.permit));
            }
        }
        sink.sent(numbers.len() as u64);
        let outcome =
            tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut connection)).await;
        let reason = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => format!("redis {}", error.code().unwrap_or("error")),
            Err(_) => "timeout".to_string(),
        };
        // The adds may or may not have been applied; an order that is placed anyway is still
        // read (its number is no longer pending, so it is not counted twice).
        let now = Instant::now();
        let mut waiting = lock(&pending);
        for n in numbers {
            if let Some((intended, _permit)) = waiting.remove(&n) {
                sink.failed(now.saturating_duration_since(intended), &reason);
            }
        }
    }
}

async fn read_loop(
    mut connection: MultiplexedConnection,
    keys: Vec<String>,
    mut cursors: Vec<String>,
    pending: Pending,
    marker: String,
    sink: Arc<dyn Sink>,
) {
    let index: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), i))
        .collect();
    let mut last_read: Option<Instant> = None;
    loop {
        if let Some(at) = last_read {
            tokio::time::sleep_until(at + READ_PACING).await;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK_MS)
            .arg("STREAMS")
            .arg(&keys)
            .arg(&cursors);
        let reply =
            match tokio::time::timeout(CALL_TIMEOUT, cmd.query_async::<Value>(&mut connection))
                .await
            {
                Ok(Ok(reply)) => reply,
                // A failed read is retried; arrivals not seen by the end are `unfinished`.
                _ => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
        let now = Instant::now();
        // A read that timed out empty (nothing new for `READ_BLOCK_MS`) is followed at once.
        last_read = (!matches!(reply, Value::Nil)).then_some(now);
        let mut placed = Vec::new();
        for_each_entry(&reply, |key, id, events| {
            if let Some(&i) = index.get(key) {
                cursors[i] = id.to_string();
            }
            references(events, &marker, &mut placed);
        });
        if placed.is_empty() {
            continue;
        }
        let mut waiting = lock(&pending);
        for n in placed {
            if let Some((intended, _permit)) = waiting.remove(&n) {
                sink.placed(now.saturating_duration_since(intended));
            }
        }
    }
}

/// Calls `f(stream key, entry id, events field)` for every entry of an `XREAD` reply (RESP2
/// arrays or a RESP3 map).
fn for_each_entry(reply: &Value, mut f: impl FnMut(&str, &str, &[u8])) {
    let streams: Vec<(&Value, &Value)> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => Some((&pair[0], &pair[1])),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        _ => return,
    };
    for (key, entries) in streams {
        let (Some(key), Value::Array(entries)) = (text(key), entries) else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let (Some(id), Some(Value::Array(fields))) =
                (parts.first().and_then(text), parts.get(1))
            else {
                continue;
            };
            for pair in fields.chunks(2) {
                if let [Value::BulkString(name), Value::BulkString(value)] = pair {
                    if name == b"events" {
                        f(&key, &id, value);
                    }
                }
            }
        }
    }
}

/// The arrival numbers of this run's `order_placed` events among `events` (one compact JSON
/// array per line: `["<order-id>",version,index,"order_placed",…,{metadata},…]`). A plain byte
/// search for the run's marker: the reader must keep up with 100,000+ events a second.
fn references(events: &[u8], marker: &str, out: &mut Vec<u64>) {
    let marker = marker.as_bytes();
    for line in events.split(|&b| b == b'\n') {
        if !contains(line, b",\"order_placed\",") {
            continue;
        }
        let Some(at) = find(line, marker) else {
            continue;
        };
        let digits = &line[at + marker.len()..];
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        if end == 0 || digits.get(end) != Some(&b'"') {
            continue;
        }
        if let Some(n) = std::str::from_utf8(&digits[..end])
            .ok()
            .and_then(|d| d.parse().ok())
        {
            out.push(n);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_runs_placements_are_taken() {
        let events = concat!(
            r#"["o1",1,0,"order_placed",1,"pending_payment",1999,"USD","c",{"load_ref":"ab.17"},null,null,null]"#,
            "\n",
            r#"["o2",1,0,"order_placed",1,"pending_payment",1999,"USD","c",{"load_ref":"zz.18"},null,null,null]"#,
            "\n",
            r#"["o1",2,0,"order_paid",1,"paid",1999,"USD","c",{"load_ref":"ab.17"},null,null,null]"#,
            "\n",
            r#"["o3",1,0,"order_placed",1,"pending_payment",1999,"USD","c",{"load_ref":"ab.5x"},null,null,null]"#,
            "\n",
            r#"["o4",1,0,"order_placed",1,"pending_payment",1999,"USD","c",{"a":"b","load_ref":"ab.4"},null,null,null]"#,
        );
        let mut out = Vec::new();
        references(events.as_bytes(), "\"load_ref\":\"ab.", &mut out);
        assert_eq!(out, vec![17, 4]);
    }

    #[test]
    fn only_loopback_redis_is_accepted() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://localhost:1",
            "redis://[::1]:7000",
            "redis://user:pw@127.0.0.2:1/3",
        ] {
            check_loopback(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "redis://10.0.0.1:6379",
            "http://127.0.0.1:1",
            "redis://example.com",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn xread_replies_are_walked_in_both_protocols() {
        let entry = |id: &str, events: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"events".to_vec()),
                    Value::BulkString(events.as_bytes().to_vec()),
                ]),
            ])
        };
        let key = Value::BulkString(b"orderly:{3}:events".to_vec());
        let entries = Value::Array(vec![entry("1-1", "a"), entry("1-2", "b")]);
        for reply in [
            Value::Array(vec![Value::Array(vec![key.clone(), entries.clone()])]),
            Value::Map(vec![(key.clone(), entries.clone())]),
        ] {
            let mut seen = Vec::new();
            for_each_entry(&reply, |k, id, events| {
                seen.push(format!("{k} {id} {}", String::from_utf8_lossy(events)))
            });
            assert_eq!(
                seen,
                ["orderly:{3}:events 1-1 a", "orderly:{3}:events 1-2 b"]
            );
        }
    }
}
