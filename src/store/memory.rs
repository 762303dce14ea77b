//! The embedded store: snapshots in process memory. Same contract as Redis (version-checked
//! batch writes), nothing survives the process. The default for demos and tests of the engine.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use futures_util::future::{self, BoxFuture, FutureExt};

use super::{IndexChange, SnapshotStore, SnapshotWrite, StoreError, WriteOutcome};
use crate::domain::OrderId;

/// One shard: snapshots by order, and the index of orders with live gateway work (ordered, so
/// a scan can resume after the last id it returned).
#[derive(Default)]
struct ShardMap {
    orders: HashMap<OrderId, (u64, Vec<u8>), ahash::RandomState>,
    live_payments: BTreeSet<OrderId>,
}

/// In-memory snapshot store, one lock per logical shard (each shard has one writer, so the
/// locks are uncontended).
pub struct MemoryStore {
    shards: Vec<Mutex<ShardMap>>,
}

impl MemoryStore {
    /// A store for `shards` logical shards.
    pub fn new(shards: u32) -> MemoryStore {
        MemoryStore {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(ShardMap::default()))
                .collect(),
        }
    }

    fn shard(&self, shard: u32) -> std::sync::MutexGuard<'_, ShardMap> {
        let index = shard as usize % self.shards.len();
        // A poisoned lock only means another thread panicked mid-insert of a whole entry;
        // the map itself is still consistent, so keep serving.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Number of stored orders (for reports and tests).
    pub fn len(&self) -> usize {
        (0..self.shards.len() as u32)
            .map(|s| self.shard(s).orders.len())
            .sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Version-checked batch write, synchronously.
    pub fn write_now(&self, shard: u32, writes: Vec<SnapshotWrite>) -> Vec<WriteOutcome> {
        let mut map = self.shard(shard);
        writes
            .into_iter()
            .map(|write| {
                let stored = map.orders.get(&write.order_id).map_or(0, |(v, _)| *v);
                if stored == write.expected_version {
                    map.orders
                        .insert(write.order_id, (write.version, write.bytes));
                    match write.payments_index {
                        IndexChange::Unchanged => {}
                        IndexChange::Add => {
                            map.live_payments.insert(write.order_id);
                        }
                        IndexChange::Remove => {
                            map.live_payments.remove(&write.order_id);
                        }
                    }
                    WriteOutcome::Written
                } else {
                    WriteOutcome::Conflict {
                        stored_version: stored,
                    }
                }
            })
            .collect()
    }
}

impl SnapshotStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn load(
        &self,
        shard: u32,
        order_id: OrderId,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let bytes = self
            .shard(shard)
            .orders
            .get(&order_id)
            .map(|(_, b)| b.clone());
        future::ready(Ok(bytes)).boxed()
    }

    fn write_batch(
        &self,
        shard: u32,
        writes: Vec<SnapshotWrite>,
    ) -> BoxFuture<'static, Result<Vec<WriteOutcome>, StoreError>> {
        future::ready(Ok(self.write_now(shard, writes))).boxed()
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        future::ready(Ok(())).boxed()
    }

    fn scan_live_payments(
        &self,
        shard: u32,
        cursor: u128,
        count: usize,
    ) -> BoxFuture<'static, Result<(u128, Vec<OrderId>), StoreError>> {
        // The cursor is the last id returned: the next page starts after it.
        let map = self.shard(shard);
        let start = std::ops::Bound::Excluded(OrderId::from_u128(cursor));
        let ids: Vec<OrderId> = map
            .live_payments
            .range((start, std::ops::Bound::Unbounded))
            .take(count.max(1))
            .copied()
            .collect();
        let next = if ids.len() < count.max(1) {
            0
        } else {
            ids.last().map_or(0, |id| id.as_uuid().as_u128())
        };
        future::ready(Ok((next, ids))).boxed()
    }
}
