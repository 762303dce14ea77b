//! Bulk ingestion from a Redis Stream with a consumer group: the path that scales out across
//! engine processes (DESIGN.md §4).
//!
//! Producers `XADD` entries with a field `order` (the order JSON, the shape of
//! [`crate::domain::NewOrderRequest`]) and, optionally, `idempotency_key`. Every process runs a
//! [`StreamConsumer`] in the same consumer group under its own consumer name; each entry is
//! acknowledged (`XACK`) only once its order is durable, or once it has been copied to the
//! dead-letter stream with the reason it can never be placed. An entry's order id is derived
//! from the entry (or its key), so an entry that is delivered twice (its consumer died after
//! persisting and before acknowledging, and another consumer reclaimed it) reaches the same
//! order and is answered as a duplicate: every order is persisted exactly once.
//!
//! - [`entry`]: decoding one entry into a placement or a dead-letter reason (no IO).
//! - [`stream`]: the consumer loop: reclaim, read, place, dead-letter, acknowledge.

pub(crate) mod entry;
pub mod stream;

pub use stream::StreamConsumer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// Why a consumer could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting is out of its bounds.
    #[error("invalid setting `ingest.{field}`: {message}")]
    InvalidSettings {
        /// The offending key under `[ingest]`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Redis could not be reached, or refused to create the consumer group.
    #[error("cannot start stream ingestion from {url}: {message}")]
    Redis {
        /// The stream's Redis URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The consumer task ended abnormally (a panic).
    #[error("stream consumer task failed: {0}")]
    TaskFailed(String),
}

/// Counts of entries handled since the consumer started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Entries whose order was placed by this consumer.
    pub accepted: u64,
    /// Entries whose order already existed with the same content (a re-delivery).
    pub duplicate: u64,
    /// Entries copied to the dead-letter stream, then acknowledged.
    pub dead_lettered: u64,
    /// Times an entry was left pending after a retryable failure (it is retried later).
    pub retry: u64,
    /// Batches handled.
    pub batches: u64,
}

impl IngestStats {
    /// Entries acknowledged: they will not be delivered again.
    pub fn acknowledged(&self) -> u64 {
        self.accepted + self.duplicate + self.dead_lettered
    }
}

/// Lock-free counters shared between the consumer task and its handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    duplicate: AtomicU64,
    dead_lettered: AtomicU64,
    retry: AtomicU64,
    batches: AtomicU64,
}

impl Counters {
    pub(crate) fn add(&self, batch: &IngestStats) {
        self.accepted.fetch_add(batch.accepted, Ordering::Relaxed);
        self.duplicate.fetch_add(batch.duplicate, Ordering::Relaxed);
        self.dead_lettered
            .fetch_add(batch.dead_lettered, Ordering::Relaxed);
        self.retry.fetch_add(batch.retry, Ordering::Relaxed);
        self.batches.fetch_add(batch.batches, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> IngestStats {
        IngestStats {
            accepted: self.accepted.load(Ordering::Relaxed),
            duplicate: self.duplicate.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retry: self.retry.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

/// A running consumer. Stop it with [`IngestHandle::stop`]; dropping the handle also stops the
/// consumer (at its next step), without waiting for it.
#[derive(Debug)]
pub struct IngestHandle {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: tokio::task::JoinHandle<()>,
    pub(crate) counters: Arc<Counters>,
}

impl IngestHandle {
    /// Counts so far.
    pub fn stats(&self) -> IngestStats {
        self.counters.snapshot()
    }

    /// Asks the consumer to stop and waits until it has: the batch in hand is finished and
    /// acknowledged first, and a blocking read is abandoned at once (anything Redis delivered to
    /// it stays pending for this consumer name and is picked up on the next start, or
    /// reclaimed by another consumer). Returns the final counts.
    pub async fn stop(self) -> Result<IngestStats, IngestError> {
        // An error means the task has already ended; waiting for it below still applies.
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(()) => Ok(self.counters.snapshot()),
            Err(error) => Err(IngestError::TaskFailed(error.to_string())),
        }
    }
}
