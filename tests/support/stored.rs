//! Reads orders straight from a harness Redis, bypassing the engine: what is durable is what
//! these helpers see.

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
