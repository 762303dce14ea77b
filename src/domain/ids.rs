//! Identifiers: order ids, command ids and timestamps.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for ids derived from client idempotency keys (UUIDv5); fixed forever, since
/// changing it would route replays of old keys to different orders.
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_726c_7900_8000_0000_0000_0001);

/// The unique id of an order: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(Uuid);

impl OrderId {
    /// A fresh, time-ordered id.
    pub fn new() -> OrderId {
        OrderId(Uuid::now_v7())
    }

    /// The id derived from a client's idempotency key, so a replay reaches the same order.
    pub fn from_idempotency_key(tenant: &str, key: &str) -> OrderId {
        let name = format!("{tenant}\u{0}{key}");
        OrderId(Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()))
    }

    /// Parses the hyphenated text form.
    pub fn parse(text: &str) -> Option<OrderId> {
        Uuid::parse_str(text).ok().map(OrderId)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// Builds an id from its 128-bit value (snapshots store ids as integers).
    pub fn from_u128(value: u128) -> OrderId {
        OrderId(Uuid::from_u128(value))
    }

    /// A well-mixed 64-bit hash of the id, used to pick the order's shard.
    pub fn route_hash(&self) -> u64 {
        let (hi, lo) = self.0.as_u64_pair();
        // UUIDv7 puts the timestamp in the high bits and randomness in the low bits; mixing
        // both with a multiplicative hash spreads ids evenly even for derived (v5) ids.
        (hi ^ lo.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

impl Default for OrderId {
    fn default() -> Self {
        OrderId::new()
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The id of one command; re-applying a command with an id the order has already applied is a
/// no-op, which is what makes client retries safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandId(Uuid);

impl CommandId {
    /// A fresh random id.
    pub fn new() -> CommandId {
        CommandId(Uuid::new_v4())
    }

    /// A deterministic id derived from a client key (e.g. an `Idempotency-Key` header).
    pub fn from_key(order: OrderId, key: &str) -> CommandId {
        CommandId(Uuid::new_v5(&order.as_uuid(), key.as_bytes()))
    }

    /// A deterministic id for an engine-generated command, e.g. the result of payment
    /// attempt `n`: the same fact always carries the same id, so it is applied once.
    pub fn derived(order: OrderId, purpose: &str, n: u32) -> CommandId {
        let mut name = String::with_capacity(purpose.len() + 11);
        name.push_str(purpose);
        name.push(':');
        name.push_str(&n.to_string());
        CommandId(Uuid::new_v5(&order.as_uuid(), name.as_bytes()))
    }

    /// The 64-bit fingerprint kept in an order's bounded set of recent command ids.
    pub fn fingerprint(&self) -> u64 {
        let (hi, lo) = self.0.as_u64_pair();
        // Zero marks an empty slot in the recent-ids ring, so never produce it.
        (hi ^ lo).max(1)
    }
}

impl Default for CommandId {
    fn default() -> Self {
        CommandId::new()
    }
}

/// Milliseconds since the Unix epoch; integer so snapshots stay small and fast to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_millis() as i64)
    }

    /// This time plus `ms` milliseconds (saturating).
    pub fn plus_ms(self, ms: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }
}
