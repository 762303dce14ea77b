//! The embedded store: snapshots in process memory, with the same contract as Redis: shard
//! leases with fencing tokens that only grow, and batch writes checked once against the token.
//! Nothing survives the process. The default for demos and tests of the engine.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{self, BoxFuture, FutureExt};

use super::{
    DueTimer, Lease, LeaseOwner, ScanPage, ShardBatch, ShardWriter, SnapshotStore, StatusCounts,
    StatusUpdate, StoreError, StoredSnapshot, TimerChange, TimerCounts,
};
use crate::domain::{OrderId, Timestamp};

/// One shard: snapshots by order, the index of orders with live gateway work (ordered, so a
/// scan can resume after the last id it returned), and the shard's lease.
#[derive(Default)]
struct ShardMap {
    orders: HashMap<OrderId, Vec<u8>, ahash::RandomState>,
    /// The timer index: entries ordered by due time, and each order's entry.
    timers: BTreeSet<(Timestamp, OrderId)>,
    timer_of: HashMap<OrderId, Timestamp, ahash::RandomState>,
    /// How many orders are in each status.
    status: StatusCounts,
    /// The last token handed out (the `epoch` counter): only grows.
    epoch: u64,
    lease: Option<HeldLease>,
}

struct HeldLease {
    node_id: Arc<str>,
    token: u64,
    expires_at: Instant,
}

impl ShardMap {
    /// The lease if it has not expired.
    fn live_lease(&self, now: Instant) -> Option<&HeldLease> {
        self.lease.as_ref().filter(|l| l.expires_at > now)
    }

    fn check_token(&self, shard: u32, token: u64) -> Result<(), StoreError> {
        match self.live_lease(Instant::now()) {
            Some(lease) if lease.token == token => Ok(()),
            Some(lease) => Err(StoreError::Fenced {
                shard,
                detail: format!("held by {} under token {}", lease.node_id, lease.token),
            }),
            None => Err(StoreError::Fenced {
                shard,
                detail: "the lease expired".into(),
            }),
        }
    }
}

struct Shards {
    shards: Vec<Mutex<ShardMap>>,
}

impl Shards {
    fn shard(&self, shard: u32) -> std::sync::MutexGuard<'_, ShardMap> {
        let index = shard as usize % self.shards.len();
        // A poisoned lock only means another thread panicked mid-insert of a whole entry;
        // the map itself is still consistent, so keep serving.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// In-memory snapshot store, one lock per logical shard (each shard has one writer, so the
/// locks are uncontended).
pub struct MemoryStore {
    inner: Arc<Shards>,
}

impl MemoryStore {
    /// A store for `shards` logical shards.
    pub fn new(shards: u32) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Shards {
                shards: (0..shards.max(1))
                    .map(|_| Mutex::new(ShardMap::default()))
                    .collect(),
            }),
        }
    }

    /// Number of stored orders (for reports and tests).
    pub fn len(&self) -> usize {
        (0..self.inner.shards.len() as u32)
            .map(|s| self.inner.shard(s).orders.len())
            .sum()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops `shard`'s lease, as if it had expired: the next node to ask takes it (with a new
    /// token) and the previous holder's writes are refused. For takeover tests.
    pub fn expire_lease(&self, shard: u32) {
        self.inner.shard(shard).lease = None;
    }

    /// Hands every shard's lease to `node_id` under a new token, as a takeover by that node
    /// would: its engine then acquires the leases as its own, and the previous holder's
    /// writes and renewals are refused. For takeover tests.
    pub fn hand_leases_to(&self, node_id: &str, ttl_ms: u64) {
        for shard in 0..self.inner.shards.len() as u32 {
            let mut map = self.inner.shard(shard);
            map.epoch += 1;
            let token = map.epoch;
            map.lease = Some(HeldLease {
                node_id: node_id.into(),
                token,
                expires_at: Instant::now() + Duration::from_millis(ttl_ms),
            });
        }
    }

    /// The node id holding `shard`'s lease now, if any.
    pub fn lease_holder(&self, shard: u32) -> Option<String> {
        self.inner
            .shard(shard)
            .live_lease(Instant::now())
            .map(|l| l.node_id.to_string())
    }
}

/// The writer of a group of shards of a [`MemoryStore`].
struct MemoryShardWriter {
    inner: Arc<Shards>,
    owner: LeaseOwner,
    /// Held tokens by shard.
    tokens: HashMap<u32, u64, ahash::RandomState>,
}

impl MemoryShardWriter {
    fn ttl(&self) -> Duration {
        Duration::from_millis(self.owner.ttl_ms)
    }

    fn acquire_now(&mut self, shard: u32) -> Option<Lease> {
        let now = Instant::now();
        let mut map = self.inner.shard(shard);
        if let Some(lease) = map.live_lease(now) {
            if lease.node_id != self.owner.node_id {
                return None;
            }
        }
        map.epoch += 1;
        let token = map.epoch;
        map.lease = Some(HeldLease {
            node_id: Arc::clone(&self.owner.node_id),
            token,
            expires_at: now + self.ttl(),
        });
        self.tokens.insert(shard, token);
        Some(Lease { token })
    }

    /// Checks `shard`'s token under its lock; a refused shard is forgotten.
    fn check(&mut self, shard: u32, map: &ShardMap) -> bool {
        let ok = self
            .tokens
            .get(&shard)
            .is_some_and(|token| map.check_token(shard, *token).is_ok());
        if !ok {
            self.tokens.remove(&shard);
        }
        ok
    }

    fn renew_now(&mut self, shards: &[u32]) -> Vec<u32> {
        let ttl = self.ttl();
        let inner = Arc::clone(&self.inner);
        let mut lost = Vec::new();
        for &shard in shards {
            let mut map = inner.shard(shard);
            if !self.check(shard, &map) {
                lost.push(shard);
                continue;
            }
            if let Some(lease) = map.lease.as_mut() {
                lease.expires_at = Instant::now() + ttl;
            }
        }
        lost
    }

    fn write_now(&mut self, batches: Vec<ShardBatch>) -> Vec<u32> {
        let inner = Arc::clone(&self.inner);
        let mut refused = Vec::new();
        for batch in batches {
            let mut map = inner.shard(batch.shard);
            if !self.check(batch.shard, &map) {
                refused.push(batch.shard);
                continue;
            }
            match batch.status {
                StatusUpdate::Delta(delta) => map.status.add(&delta),
                StatusUpdate::Set(counts) => map.status = counts,
            }
            for write in batch.writes {
                match write.timer {
                    TimerChange::Unchanged => {}
                    TimerChange::Set(due) => {
                        if let Some(old) = map.timer_of.insert(write.order_id, due) {
                            map.timers.remove(&(old, write.order_id));
                        }
                        map.timers.insert((due, write.order_id));
                    }
                    TimerChange::Remove => {
                        if let Some(old) = map.timer_of.remove(&write.order_id) {
                            map.timers.remove(&(old, write.order_id));
                        }
                    }
                }
                map.orders.insert(write.order_id, write.bytes);
            }
        }
        refused
    }

    fn release_now(&mut self, shard: u32) {
        let Some(token) = self.tokens.remove(&shard) else {
            return;
        };
        let mut map = self.inner.shard(shard);
        if map.lease.as_ref().is_some_and(|l| l.token == token) {
            map.lease = None;
        }
    }
}

impl ShardWriter for MemoryShardWriter {
    fn acquire(&mut self, shard: u32) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        future::ready(Ok(self.acquire_now(shard))).boxed()
    }

    fn renew(&mut self, shards: &[u32]) -> BoxFuture<'_, Result<Vec<u32>, StoreError>> {
        future::ready(Ok(self.renew_now(shards))).boxed()
    }

    fn write(&mut self, batches: Vec<ShardBatch>) -> BoxFuture<'_, Result<Vec<u32>, StoreError>> {
        future::ready(Ok(self.write_now(batches))).boxed()
    }

    fn release(&mut self, shard: u32) -> BoxFuture<'_, Result<(), StoreError>> {
        self.release_now(shard);
        future::ready(Ok(())).boxed()
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
        let bytes = self.inner.shard(shard).orders.get(&order_id).cloned();
        future::ready(Ok(bytes)).boxed()
    }

    fn shard_writer(&self, owner: &LeaseOwner) -> Box<dyn ShardWriter> {
        Box::new(MemoryShardWriter {
            inner: Arc::clone(&self.inner),
            owner: owner.clone(),
            tokens: HashMap::default(),
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        future::ready(Ok(())).boxed()
    }

    fn due_timers(
        &self,
        shard: u32,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<DueTimer>, StoreError>> {
        let map = self.inner.shard(shard);
        let due = map
            .timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(limit)
            .map(|&(due_at, order_id)| DueTimer { order_id, due_at })
            .collect();
        future::ready(Ok(due)).boxed()
    }

    fn status_counts(&self, shard: u32) -> BoxFuture<'static, Result<StatusCounts, StoreError>> {
        future::ready(Ok(self.inner.shard(shard).status)).boxed()
    }

    fn timer_counts(
        &self,
        shard: u32,
        now: Timestamp,
    ) -> BoxFuture<'static, Result<TimerCounts, StoreError>> {
        let map = self.inner.shard(shard);
        let overdue = map
            .timers
            .range(..=(now, OrderId::from_u128(u128::MAX)))
            .count() as u64;
        let counts = TimerCounts {
            armed: map.timers.len() as u64,
            overdue,
        };
        future::ready(Ok(counts)).boxed()
    }

    fn scan_snapshots(
        &self,
        cursor: u64,
        count: usize,
    ) -> BoxFuture<'static, Result<ScanPage<StoredSnapshot>, StoreError>> {
        // The cursor is `shard << 32 | position` within the shard's map.
        let (mut shard, mut skip) = ((cursor >> 32) as usize, (cursor & 0xffff_ffff) as usize);
        let mut page = Vec::new();
        while shard < self.inner.shards.len() && page.len() < count.max(1) {
            let map = self.inner.shard(shard as u32);
            let take = count.max(1) - page.len();
            let before = page.len();
            page.extend(map.orders.iter().skip(skip).take(take).map(|(id, bytes)| {
                StoredSnapshot {
                    shard: shard as u32,
                    order_id: *id,
                    bytes: bytes.clone(),
                }
            }));
            skip += page.len() - before;
            if skip >= map.orders.len() {
                shard += 1;
                skip = 0;
            }
        }
        let next = if shard >= self.inner.shards.len() {
            0
        } else {
            ((shard as u64) << 32) | skip as u64
        };
        future::ready(Ok((next, page))).boxed()
    }
}
