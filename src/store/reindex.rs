//! Rebuilding a store's timer index and per-status order counts from its snapshots (`orderly admin reindex`), for every
//! shard. The index also schedules the payment checks that resume live gateway work, so this
//! is what an upgrade from a release without it runs once. For orders stored before the timer index existed,
//! and for disaster recovery.
//!
//! It takes every shard's lease first (under its own node id), so no engine can write while
//! it runs and its writes are fenced like an engine's: it refuses to start while another node
//! holds a shard. It then walks the snapshots with a bounded scan (`SCAN … COUNT` on Redis),
//! and rewrites each page's orders in one fenced batch per page: the same snapshot (same
//! version) recording what the index now holds, with the order's timer entry set to its next
//! timer (or removed).

use std::collections::BTreeMap;

use super::{
    LeaseOwner, ShardBatch, SnapshotStore, SnapshotWrite, StatusCounts, StatusUpdate, StoreError,
    TimerChange,
};
use crate::domain::next_due;
use crate::store::snapshot;

/// What a reindex did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReindexReport {
    /// Snapshots read.
    pub scanned: u64,
    /// Orders that have an armed timer (now in the timer index).
    pub timers_armed: u64,
    /// Orders with live gateway work (their payment check is in the timer index).
    pub live_payments: u64,
    /// Snapshots that could not be decoded (left untouched).
    pub unreadable: u64,
    /// Orders by status: the per-shard status counts were rebuilt from these.
    pub by_status: BTreeMap<&'static str, u64>,
}

/// Why a reindex stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    /// Another node holds a shard's lease: stop the engines first.
    #[error("shard {0} is owned by another node; stop every engine on this store first")]
    Owned(u32),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rebuilds the indexes of `shards` shards of `store`, scanning `page` snapshots at a time.
pub async fn reindex(
    store: &dyn SnapshotStore,
    shards: u32,
    owner: &LeaseOwner,
    page: usize,
) -> Result<ReindexReport, ReindexError> {
    let mut writer = store.shard_writer(owner);
    let mut held = Vec::new();
    let mut outcome = Ok(());
    for shard in 0..shards {
        match writer.acquire(shard).await {
            Ok(Some(_)) => held.push(shard),
            Ok(None) => {
                outcome = Err(ReindexError::Owned(shard));
                break;
            }
            Err(error) => {
                outcome = Err(error.into());
                break;
            }
        }
    }
    let mut report = ReindexReport::default();
    if outcome.is_ok() {
        outcome = walk(store, &mut *writer, shards, page, &mut report).await;
    }
    for shard in held {
        let _ = writer.release(shard).await;
    }
    outcome.map(|()| report)
}

async fn walk(
    store: &dyn SnapshotStore,
    writer: &mut dyn super::ShardWriter,
    shards: u32,
    page: usize,
    report: &mut ReindexReport,
) -> Result<(), ReindexError> {
    let mut cursor = 0;
    let mut counts = vec![StatusCounts::default(); shards as usize];
    loop {
        let (next, snapshots) = store.scan_snapshots(cursor, page).await?;
        let mut by_shard: BTreeMap<u32, Vec<SnapshotWrite>> = BTreeMap::new();
        for stored in snapshots {
            report.scanned += 1;
            let Ok(mut order) = snapshot::decode(&stored.bytes) else {
                report.unreadable += 1;
                continue;
            };
            if let Some(shard_counts) = counts.get_mut(stored.shard as usize) {
                shard_counts.record(None, order.status);
            }
            *report.by_status.entry(order.status.as_str()).or_default() += 1;
            let timer = match next_due(&order) {
                Some(due) => {
                    report.timers_armed += 1;
                    order.timer_indexed_at = due;
                    TimerChange::Set(due)
                }
                None => {
                    order.timer_indexed_at = crate::domain::Timestamp(0);
                    TimerChange::Remove
                }
            };
            let live = order.live_attempt().is_some() || order.pending_refund().is_some();
            report.live_payments += u64::from(live);
            by_shard
                .entry(stored.shard)
                .or_default()
                .push(SnapshotWrite {
                    order_id: stored.order_id,
                    version: order.version,
                    bytes: snapshot::encode(&order),
                    events: Default::default(),
                    timer,
                });
        }
        if !by_shard.is_empty() {
            let batches: Vec<ShardBatch> = by_shard
                .into_iter()
                .map(|(shard, writes)| ShardBatch::new(shard, writes))
                .collect();
            if let Some(&shard) = writer.write(batches).await?.first() {
                return Err(ReindexError::Owned(shard));
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // Every shard's counts are replaced, so counts left by a shard with no order now are
    // cleared too.
    let batches: Vec<ShardBatch> = counts
        .into_iter()
        .enumerate()
        .map(|(shard, counts)| ShardBatch {
            shard: shard as u32,
            writes: Vec::new(),
            status: StatusUpdate::Set(counts),
        })
        .collect();
    if let Some(&shard) = writer.write(batches).await?.first() {
        return Err(ReindexError::Owned(shard));
    }
    Ok(())
}
