//! The snapshot store port and its implementations.
//!
//! A store keeps one snapshot per order under a logical shard. Writes come in per-shard
//! batches (group commit) and are version-checked: a write names the version it replaces, and a
//! stale writer (one whose expected version is not the stored one) is refused, so two writers
//! can never silently overwrite each other.

pub mod memory;
pub mod redis;
pub mod snapshot;

use futures_util::future::{BoxFuture, FutureExt};

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
    /// How this write changes the shard's index of orders with live gateway work (a live
    /// payment attempt or a pending refund), applied atomically with the snapshot.
    pub payments_index: IndexChange,
}

/// A change to a shard's index of orders with live gateway work; the index is what a restarted
/// engine scans to resume payments, so it changes in the same atomic write as the snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IndexChange {
    /// No change (the common case: most writes neither start nor settle gateway work).
    #[default]
    Unchanged,
    /// The order now has live gateway work.
    Add,
    /// The order's gateway work is settled.
    Remove,
}

impl IndexChange {
    /// The change from an order having live gateway work `before` a write to `after` it.
    pub fn between(before: bool, after: bool) -> IndexChange {
        match (before, after) {
            (false, true) => IndexChange::Add,
            (true, false) => IndexChange::Remove,
            _ => IndexChange::Unchanged,
        }
    }
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

    /// One page of the shard's index of orders with live gateway work: at most about `count`
    /// ids from `cursor` (0 starts a scan) and the cursor of the next page (0: done). An order
    /// in the index for the whole scan is returned at least once; ids may repeat.
    fn scan_live_payments(
        &self,
        shard: u32,
        cursor: u128,
        count: usize,
    ) -> BoxFuture<'static, Result<(u128, Vec<OrderId>), StoreError>> {
        let _ = (shard, cursor, count);
        futures_util::future::ready(Ok((0, Vec::new()))).boxed()
    }
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
