//! A shard's per-status order counts (`orderly_orders{status}`). The durable counts live in
//! the store beside the snapshots and move in the same atomic batch; the owner reads them when
//! it takes the lease, adds each durable batch's changes, and exports them while it owns the
//! shard, so the gauge covers every stored order, not only the live actors, and no two nodes
//! export the same shard.

use super::ShardCore;
use crate::store::StatusCounts;
use crate::telemetry;

impl ShardCore {
    /// Reads the durable counts (a new term of ownership) and exports them instead of what
    /// was exported before. On failure the shard's counts stay unexported until a later read
    /// (the timer poll asks again).
    pub(super) async fn load_status_counts(&self) {
        let started = std::time::Instant::now();
        let result = self.store.status_counts(self.shard).await;
        telemetry::record_store_request(
            self.store.kind(),
            "status_counts",
            started.elapsed().as_secs_f64(),
        );
        match result {
            Ok(counts) => {
                let mut change = counts;
                let mut before = self.status_counts.get();
                for n in before.0.iter_mut() {
                    *n = -*n;
                }
                change.add(&before);
                telemetry::record_status_counts_delta(&change);
                self.status_counts.set(counts);
                self.status_loaded.set(true);
            }
            Err(error) => {
                tracing::warn!(shard = self.shard, %error, "reading the status counts failed");
            }
        }
    }

    /// Whether the counts were read in this term of ownership.
    pub(super) fn status_counts_loaded(&self) -> bool {
        self.status_loaded.get()
    }

    /// Adds a durable batch's changes.
    pub(super) fn add_status_counts(&self, delta: &StatusCounts) {
        if delta.is_zero() {
            return;
        }
        let mut counts = self.status_counts.get();
        counts.add(delta);
        self.status_counts.set(counts);
        telemetry::record_status_counts_delta(delta);
    }

    /// The shard is no longer owned: stop exporting its counts.
    pub(super) fn forget_status_counts(&self) {
        let mut gone = self.status_counts.get();
        for n in gone.0.iter_mut() {
            *n = -*n;
        }
        telemetry::record_status_counts_delta(&gone);
        self.status_counts.set(StatusCounts::default());
        self.status_loaded.set(false);
    }
}
