//! Reading the outbox of a harness Redis in tests (XRANGE over every shard stream).

use std::collections::BTreeMap;

use super::redis_server::RedisServer;

/// Every event line in the shard outbox streams `<prefix>:{0..shards}:events` (or their
/// overflow streams), parsed.
pub fn read_stream_events(server: &RedisServer, key: &str) -> Vec<serde_json::Value> {
    let entries = server.command(&["XRANGE", key, "-", "+"]);
    let mut events = Vec::new();
    for entry in entries.as_array().unwrap_or(&[]) {
        let fields = entry.as_array().expect("[id, fields]")[1]
            .as_array()
            .expect("fields");
        let lines = fields[1].as_str().expect("events field");
        for line in lines.lines().filter(|l| !l.is_empty()) {
            let expanded = orderly::store::outbox::expand(line.as_bytes())
                .expect("an event line in the stored form");
            events.push(serde_json::from_slice(&expanded).expect("an event is JSON"));
        }
    }
    events
}

/// Every outbox event of `shards` shards under prefix `orderly`.
pub fn all_events(server: &RedisServer, shards: u32) -> Vec<serde_json::Value> {
    (0..shards)
        .flat_map(|s| read_stream_events(server, &format!("orderly:{{{s}}}:events")))
        .collect()
}

/// Events by order id, each order's sorted by version then event id.
pub fn by_order(events: &[serde_json::Value]) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut map: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for event in events {
        let id = event["order_id"].as_str().expect("order_id").to_string();
        map.entry(id).or_default().push(event.clone());
    }
    for list in map.values_mut() {
        list.sort_by_key(|e| {
            (
                e["order_version"].as_u64().unwrap_or(0),
                e["event_id"].as_str().unwrap_or("").to_string(),
            )
        });
    }
    map
}

/// Panics on a duplicate `event_id`.
pub fn assert_unique_ids(events: &[serde_json::Value]) {
    let mut seen = std::collections::BTreeSet::new();
    for event in events {
        let id = event["event_id"].as_str().expect("event_id");
        assert!(seen.insert(id.to_string()), "duplicate event_id {id}");
    }
}
