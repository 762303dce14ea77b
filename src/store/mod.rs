//! The snapshot store port and its implementations.
//!
//! A store keeps one snapshot per order under a logical shard. A shard has exactly one writer:
//! the node holding the shard's lease. The lease carries a fencing token taken from a
//! per-shard counter that only grows, and every batch write is checked against the token once,
//! inside the same atomic call, so a stale owner (one paused past its TTL, or replaced by a
//! restart) can never overwrite what the new owner wrote. Orders are not compare-and-set one by
//! one: fencing the owner is enough, as Temporal fences a history shard by its range id.

pub mod memory;
pub mod outbox;
pub mod redis;
pub mod reindex;
mod resp;
pub mod snapshot;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::domain::{OrderId, OrderStatus};

/// One snapshot write of a batch. The order's version travels inside the snapshot bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWrite {
    /// The order written.
    pub order_id: OrderId,
    /// The version being written (one more than the last durable one).
    pub version: u64,
    /// Encoded snapshot (see [`snapshot`]).
    pub bytes: Vec<u8>,
    /// Outbox events produced by the commands this write makes durable, pre-encoded (each
    /// names the version its own command produced, see [`outbox`]).
    pub events: outbox::OutboxEvents,
    /// How this write changes the shard's durable timer index, applied atomically with the
    /// snapshot.
    pub timer: TimerChange,
}

/// A change to a shard's durable timer index: per order, one entry scored by a due time no
/// later than the order's earliest armed timer (see `crate::engine` timers). A sorted set
/// `<prefix>:{<shard>}:timers` on Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimerChange {
    /// No change.
    #[default]
    Unchanged,
    /// The order's entry is now due at this time.
    Set(crate::domain::Timestamp),
    /// The order has no entry any more.
    Remove,
}

/// One stored snapshot, as a scan of the whole store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The order's shard.
    pub shard: u32,
    /// The order.
    pub order_id: OrderId,
    /// Its snapshot bytes.
    pub bytes: Vec<u8>,
}

/// A page of a scan: the next cursor (0: done) and the items.
pub type ScanPage<T> = (u64, Vec<T>);

/// One entry of a shard's timer index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueTimer {
    /// The order.
    pub order_id: OrderId,
    /// When the entry is due.
    pub due_at: crate::domain::Timestamp,
}

/// The size of a shard's timer index now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerCounts {
    /// Entries in the index.
    pub armed: u64,
    /// Entries already due.
    pub overdue: u64,
}

/// Who asks for shard leases, and for how long a lease lives without renewal.
#[derive(Debug, Clone)]
pub struct LeaseOwner {
    /// This node's id (`[cluster] node_id`).
    pub node_id: Arc<str>,
    /// Lease lifetime without renewal.
    pub ttl_ms: u64,
}

/// A held shard lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token: strictly greater than any token an earlier owner of the shard held.
    pub token: u64,
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
    /// The store refused the write for lack of memory (Redis at `maxmemory` with the
    /// `noeviction` policy): nothing of it was stored. Retryable once memory is freed or raised.
    #[error("store is full: {0}")]
    Full(String),
    /// A stored snapshot could not be decoded.
    #[error("stored snapshot is unreadable: {0}")]
    Corrupt(String),
    /// This node does not hold the shard's lease (it expired, or another owner took it): the
    /// write was refused as a whole and nothing of it was stored.
    #[error("shard {shard} is not owned by this node: {detail}")]
    Fenced {
        /// The shard.
        shard: u32,
        /// Who holds it now, as far as the store told.
        detail: String,
    },
}

/// The writes of one shard within a group write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardBatch {
    /// The shard written.
    pub shard: u32,
    /// Its writes, in commit order.
    pub writes: Vec<SnapshotWrite>,
    /// How the shard's durable per-status order counts follow, applied atomically with the
    /// writes (`HINCRBY` of `<prefix>:{<shard>}:status` on Redis).
    pub status: StatusUpdate,
}

impl ShardBatch {
    /// Writes of `shard` that move no order between statuses (the deltas are zero).
    pub fn new(shard: u32, writes: Vec<SnapshotWrite>) -> ShardBatch {
        ShardBatch {
            shard,
            writes,
            status: StatusUpdate::default(),
        }
    }
}

/// How many orders of a shard are in each status (indexed like [`OrderStatus::ALL`]); also
/// used for signed changes of those counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts(pub [i64; OrderStatus::ALL.len()]);

impl StatusCounts {
    /// One order moved from `from` (None: it is new) to `to`.
    pub fn record(&mut self, from: Option<OrderStatus>, to: OrderStatus) {
        if from == Some(to) {
            return;
        }
        if let Some(from) = from {
            self.0[from.index()] -= 1;
        }
        self.0[to.index()] += 1;
    }

    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &StatusCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    /// Whether every count is zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }

    /// The count of `status`.
    pub fn get(&self, status: OrderStatus) -> i64 {
        self.0[status.index()]
    }

    /// Every status with its count.
    pub fn iter(&self) -> impl Iterator<Item = (OrderStatus, i64)> + '_ {
        OrderStatus::ALL.iter().copied().zip(self.0.iter().copied())
    }
}

/// A change of a shard's durable per-status counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusUpdate {
    /// Add these (signed) changes; what every commit batch carries.
    Delta(StatusCounts),
    /// Replace the counts (`orderly admin reindex`, rebuilt from the snapshots).
    Set(StatusCounts),
}

impl Default for StatusUpdate {
    fn default() -> StatusUpdate {
        StatusUpdate::Delta(StatusCounts::default())
    }
}

/// The writer of a group of shards (the shards of one arbiter thread): it acquires, renews
/// and releases their leases and writes their batches together, as one atomic call in which
/// each shard's token is checked once. Its commit loop owns it; calls never overlap. One
/// writer per group (not per shard) lets one round trip carry every shard's ready work, so
/// Redis sees a few large transactions instead of many small ones.
pub trait ShardWriter: Send + 'static {
    /// Takes `shard`'s lease when it is free, expired, or held under this node's id (a
    /// restart of the same node), with a new token. `Ok(None)`: another node holds it.
    fn acquire(&mut self, shard: u32) -> BoxFuture<'_, Result<Option<Lease>, StoreError>>;

    /// Extends the held leases of `shards` by their TTL. Answers the shards whose lease moved
    /// or expired (now lost); the others were renewed.
    fn renew(&mut self, shards: &[u32]) -> BoxFuture<'_, Result<Vec<u32>, StoreError>>;

    /// Writes the batches (snapshots, outbox events, payments index of each shard) as one
    /// atomic unit, checking each shard's token once. Answers the shards refused because their
    /// lease moved (nothing of theirs was written; every other batch was). On `Err` nothing is
    /// acknowledged; on `Timeout` the outcome is unknown.
    fn write(&mut self, batches: Vec<ShardBatch>) -> BoxFuture<'_, Result<Vec<u32>, StoreError>>;

    /// Gives `shard`'s lease up (graceful stop), if still held, so the next owner need not
    /// wait.
    fn release(&mut self, shard: u32) -> BoxFuture<'_, Result<(), StoreError>>;
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

    /// A writer for a group of shards, on behalf of `owner`. It holds no lease until
    /// [`ShardWriter::acquire`].
    fn shard_writer(&self, owner: &LeaseOwner) -> Box<dyn ShardWriter>;

    /// Checks the store is reachable (for readiness).
    fn ping(&self) -> BoxFuture<'static, Result<(), StoreError>>;

    /// At most `limit` entries of the shard's timer index due at `now` or earlier, earliest
    /// first. Entries stay until a write of their order changes them.
    fn due_timers(
        &self,
        shard: u32,
        now: crate::domain::Timestamp,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<DueTimer>, StoreError>>;

    /// How many entries the shard's timer index holds, and how many are due at `now`.
    fn timer_counts(
        &self,
        shard: u32,
        now: crate::domain::Timestamp,
    ) -> BoxFuture<'static, Result<TimerCounts, StoreError>>;

    /// The shard's durable per-status order counts (read when a shard is acquired).
    fn status_counts(&self, shard: u32) -> BoxFuture<'static, Result<StatusCounts, StoreError>>;

    /// One page of every stored order's snapshot (for `orderly admin reindex`): at most about
    /// `count` snapshots from `cursor` (0 starts), and the next cursor (0: done).
    fn scan_snapshots(
        &self,
        cursor: u64,
        count: usize,
    ) -> BoxFuture<'static, Result<ScanPage<StoredSnapshot>, StoreError>>;
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
        let store = redis::RedisStore::connect(&settings.store.url, &settings.store.redis)
            .await?
            .with_outbox(&settings.outbox);
        Ok(std::sync::Arc::new(store))
    }
}
