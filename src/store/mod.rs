//! The snapshot store port and its implementations.
//!
//! A store keeps one snapshot per order under a logical shard. Writes come in per-shard
//! batches (group commit) and are version-checked: a write names the version it replaces, and a
//! stale writer (one whose expected version is not the stored one) is refused, so two writers
//! can never silently overwrite each other.

pub mod memory;
pub mod redis;
pub mod snapshot;

use futures_util::future::BoxFuture;

use crate::domain::OrderId;

/// One version-checked snapshot write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWrite {
    /// The order.
    pub order_id: OrderId,
    /// The version the store must hold now (0: the order must not exist yet).
    pub expected_version: u64,
    /// The version being written.
    pub version: u64,
    /// Encoded snapshot (see [`snapshot`]).
    pub bytes: Vec<u8>,
    /// Outbox events produced by the commands this write makes durable, by wire name.
    pub events: Vec<&'static str>,
}

/// The verdict on one write of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored.
    Written,
    /// Refused: the store holds `stored_version`, not the expected one.
    Conflict {
        /// What the store holds (0: nothing).
        stored_version: u64,
    },
}

/// Why the store could not do what was asked. Every variant is retryable by the client: the
/// command was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer in time; the outcome of a write is unknown.
    #[error("store timed out after {0} ms")]
    Timeout(u64),
    /// A stored snapshot could not be decoded.
    #[error("stored snapshot is unreadable: {0}")]
    Corrupt(String),
}

/// The snapshot store port: an embedded implementation ([`memory::MemoryStore`]) and a
/// durable one ([`redis::RedisStore`]).
pub trait SnapshotStore: Send + Sync + 'static {
    /// Short name for reports and metrics labels (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Loads the snapshot bytes of `order_id` (None: no such order).
    fn load(
        &self,
        shard: u32,
        order_id: OrderId,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>>;

    /// Writes a batch of snapshots of one shard, each version-checked. The batch is applied as
    /// a unit of IO (one round trip); each write gets its own outcome.
    fn write_batch(
        &self,
        shard: u32,
        writes: Vec<SnapshotWrite>,
    ) -> BoxFuture<'static, Result<Vec<WriteOutcome>, StoreError>>;

    /// Checks the store is reachable (for readiness).
    fn ping(&self) -> BoxFuture<'static, Result<(), StoreError>>;
}

/// Opens the store named by `settings.store.url` (`memory` or `redis://…`).
pub async fn open(
    settings: &crate::config::Settings,
) -> Result<std::sync::Arc<dyn SnapshotStore>, StoreError> {
    if settings.store.url == "memory" {
        Ok(std::sync::Arc::new(memory::MemoryStore::new(
            settings.engine.shards,
        )))
    } else {
        let store = redis::RedisStore::connect(&settings.store.url, &settings.store.redis).await?;
        Ok(std::sync::Arc::new(store))
    }
}
