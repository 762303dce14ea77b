//! Reads orders straight from a harness Redis, bypassing the engine: what is durable is what
//! these helpers see.

use std::collections::HashSet;

use orderly::domain::Order;

use super::redis_server::RedisServer;

/// The order stored under `key` (a plain MessagePack snapshot), or None if the key is absent.
pub fn stored_order(server: &RedisServer, key: &str) -> Option<Order> {
    let reply = server.command(&["GET", key]);
    if reply.is_nil() {
        return None;
    }
    let bytes = reply
        .as_bytes()
        .unwrap_or_else(|| panic!("GET {key}: unexpected reply {reply}"));
    Some(
        orderly::store::snapshot::decode(bytes)
            .unwrap_or_else(|e| panic!("GET {key}: not a snapshot: {e}")),
    )
}

/// The version of the order stored under `key`, or None if the key is absent.
pub fn stored_version(server: &RedisServer, key: &str) -> Option<i64> {
    stored_order(server, key).map(|order| order.version as i64)
}

/// Every order snapshot key in the store (`orderly:{<shard>}:order:<uuid>`), by a bounded SCAN
/// (never `KEYS`, which blocks the server on a large keyspace).
pub fn order_keys(server: &RedisServer) -> HashSet<String> {
    let mut keys = HashSet::new();
    let mut cursor = "0".to_string();
    for _ in 0..100_000 {
        let reply = server.command(&[
            "SCAN",
            &cursor,
            "MATCH",
            "orderly:*:order:*",
            "COUNT",
            "1000",
        ]);
        let parts = reply
            .as_array()
            .unwrap_or_else(|| panic!("SCAN: unexpected reply {reply}"));
        cursor = parts[0].as_str().expect("SCAN cursor").to_string();
        for key in parts[1].as_array().expect("SCAN keys") {
            keys.insert(key.as_str().expect("key is text").to_string());
        }
        if cursor == "0" {
            return keys;
        }
    }
    panic!("SCAN did not finish in 100,000 calls");
}
