//! Reading the shard outbox streams: entry parsing shared by the webhook worker, the trimmer
//! and `orderly events`. Every command names one shard stream (one Redis Cluster slot); reads
//! of several shards are pipelined, never one command across shards.

use bytes::Bytes;
use redis::Value;

use crate::store::redis::OUTBOX_FIELD;

/// One stream entry: its id and the events field (JSON lines), `None` when the entry was
/// deleted while pending.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream entry id (`<ms>-<seq>`).
    pub id: String,
    /// The `events` field: one JSON event per line.
    pub events: Option<Bytes>,
}

impl Entry {
    /// The entry's events, each expanded from its stored form into the delivered JSON
    /// (see [`crate::store::outbox::expand`]); a line that cannot be read is skipped.
    pub fn lines(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.stored_lines()
            .filter_map(|line| crate::store::outbox::expand(&line).map(Bytes::from))
    }

    /// The entry's stored event lines (without their `\n`).
    fn stored_lines(&self) -> impl Iterator<Item = Bytes> + '_ {
        let events = self.events.clone().unwrap_or_default();
        let mut start = 0;
        std::iter::from_fn(move || {
            while start < events.len() {
                let end = events[start..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(events.len(), |p| start + p);
                let line = events.slice(start..end);
                start = end + 1;
                if !line.is_empty() {
                    return Some(line);
                }
            }
            None
        })
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses `[[id, [field, value, …]], …]` (an XRANGE reply, or one stream of XREAD).
pub fn parse_entries(value: &Value) -> Vec<Entry> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let events = match pair.get(1) {
                Some(Value::Array(fields)) => fields
                    .chunks(2)
                    .find(|kv| text(&kv[0]).as_deref() == Some(OUTBOX_FIELD))
                    .and_then(|kv| match kv.get(1) {
                        Some(Value::BulkString(bytes)) => Some(Bytes::from(bytes.clone())),
                        _ => None,
                    }),
                _ => None,
            };
            Some(Entry { id, events })
        })
        .collect()
}

/// Parses an XREAD / XREADGROUP reply for one stream (nil: nothing new).
pub fn parse_read(value: &Value) -> Vec<Entry> {
    match value {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|stream| match stream {
                Value::Array(kv) if kv.len() == 2 => parse_entries(&kv[1]),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses an XAUTOCLAIM reply: the next cursor and the claimed entries.
pub fn parse_autoclaim(value: &Value) -> (String, Vec<Entry>) {
    match value {
        Value::Array(items) if items.len() >= 2 => (
            text(&items[0]).unwrap_or_else(|| "0-0".into()),
            parse_entries(&items[1]),
        ),
        _ => ("0-0".into(), Vec::new()),
    }
}

/// A stream id as `(ms, seq)`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One consumer group of a stream, as XINFO GROUPS tells.
#[derive(Debug, Clone, Default)]
pub struct GroupInfo {
    /// Group name.
    pub name: String,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
    /// The last entry delivered to the group.
    pub last_delivered: String,
    /// Entries not yet delivered to the group (None: Redis cannot tell).
    pub lag: Option<u64>,
}

/// Parses an XINFO GROUPS reply (RESP2 flat arrays or RESP3 maps).
pub fn parse_groups(value: &Value) -> Vec<GroupInfo> {
    let Value::Array(groups) = value else {
        return Vec::new();
    };
    groups
        .iter()
        .map(|group| {
            let pairs: Vec<(String, &Value)> = match group {
                Value::Array(flat) => flat
                    .chunks(2)
                    .filter(|kv| kv.len() == 2)
                    .filter_map(|kv| Some((text(&kv[0])?, &kv[1])))
                    .collect(),
                Value::Map(map) => map
                    .iter()
                    .filter_map(|(k, v)| Some((text(k)?, v)))
                    .collect(),
                _ => Vec::new(),
            };
            let mut info = GroupInfo::default();
            for (key, value) in pairs {
                match (key.as_str(), value) {
                    ("name", v) => info.name = text(v).unwrap_or_default(),
                    ("pending", Value::Int(n)) => info.pending = (*n).max(0) as u64,
                    ("last-delivered-id", v) => info.last_delivered = text(v).unwrap_or_default(),
                    ("lag", Value::Int(n)) => info.lag = Some((*n).max(0) as u64),
                    _ => {}
                }
            }
            info
        })
        .collect()
}
