//! Webhook delivery of outbox events, and the outbox trimmer.
//!
//! Each configured receiver (`[[webhooks.receivers]]`) has one consumer group per shard
//! outbox stream, `webhook:<receiver>`, so it acknowledges on its own; every node runs a task
//! per receiver under its node id as consumer name, so several nodes share a receiver's work.
//! A task reads its group on every shard stream (pipelined, one command per shard: one slot
//! each on a Redis Cluster), `POST`s each event of an entry (filtered by the receiver's
//! `events`), and acknowledges the entry once each of its events was delivered or
//! dead-lettered. Entries another consumer left pending longer than `claim_idle_ms` are
//! reclaimed with `XAUTOCLAIM`; a restarted node first re-reads its own pending entries.
//!
//! Delivery is at least once (a crash between a delivery and its acknowledgement delivers
//! again) and unordered across retries: receivers dedupe by `event_id` and order by
//! `order_version`.
//!
//! A failed try (timeout, connection error, non-2xx) is retried with full-jitter exponential
//! backoff, sleeping through the [`crate::clock::Clock`], within `attempts_max` tries and
//! `retry_elapsed_max_ms`; then the event goes to `<prefix>:webhooks:<receiver>:dead` with
//! its last status and error. A `410 Gone` disables the receiver: the key
//! `<prefix>:webhooks:<receiver>:disabled` is set, and every node reads it before delivering;
//! its entries stay unacknowledged (nothing is trimmed unread) until it is deleted.

pub mod stream;
pub mod trimmer;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::Sha256;
use tokio::sync::watch;

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::store::StoreError;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Orderly-Signature";

/// The `Orderly-Signature` value of `body` sent at `t` (Unix seconds):
/// `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>" under secret>`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(itoa::Buffer::new().format(t).as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(80);
    out.push_str("t=");
    out.push_str(itoa::Buffer::new().format(t));
    out.push_str(",v1=");
    for b in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

/// The consumer group of a receiver on every shard stream.
pub fn group_name(receiver: &str) -> String {
    format!("webhook:{receiver}")
}

/// The dead-letter stream of a receiver.
pub fn dead_letter_key(prefix: &str, receiver: &str) -> String {
    format!("{prefix}:webhooks:{receiver}:dead")
}

/// The key that disables a receiver while it exists (set on a `410 Gone`).
pub fn disabled_key(prefix: &str, receiver: &str) -> String {
    format!("{prefix}:webhooks:{receiver}:disabled")
}

/// The running webhook workers and the outbox trimmer of this node.
pub struct OutboxTasks {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl OutboxTasks {
    /// Stops the tasks (deliveries in flight are abandoned unacknowledged: they are
    /// delivered again) and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

async fn connect(url: &str) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(10))
        .set_number_of_retries(2)
        .set_max_delay(500);
    match tokio::time::timeout(
        Duration::from_secs(5),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(error)) => Err(StoreError::Unavailable(error.to_string())),
        Err(_) => Err(StoreError::Timeout(5_000)),
    }
}

/// Starts, on a Redis store with the outbox on, the trimmer (when `[outbox] trim_interval_ms`
/// is not 0) and a delivery task per configured receiver. `None`: nothing to run.
pub async fn start(
    settings: &Settings,
    clock: SharedClock,
) -> Result<Option<OutboxTasks>, StoreError> {
    let url = &settings.store.url;
    if !url.starts_with("redis://") || !settings.outbox.enabled {
        return Ok(None);
    }
    let receivers = &settings.webhooks.receivers;
    if receivers.is_empty() && settings.outbox.trim_interval_ms == 0 {
        return Ok(None);
    }
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let prefix = settings.store.redis.key_prefix.clone();
    let shards = settings.engine.shards;
    if settings.outbox.trim_interval_ms > 0 {
        let connection = connect(url).await?;
        tasks.push(tokio::spawn(trimmer::run(
            connection,
            prefix.clone(),
            shards,
            Duration::from_millis(settings.outbox.trim_interval_ms),
            Arc::clone(&clock),
            stop_rx.clone(),
        )));
    }
    let consumer: Arc<str> = settings.cluster.effective_node_id().into();
    for receiver in receivers {
        // A connection per receiver: a slow one never queues behind another's reads.
        let connection = connect(url).await?;
        let worker = worker::Worker::new(
            receiver,
            &settings.webhooks,
            prefix.clone(),
            shards,
            Arc::clone(&consumer),
            connection,
            Arc::clone(&clock),
            stop_rx.clone(),
        )?;
        tasks.push(tokio::spawn(worker.run()));
    }
    if !receivers.is_empty() {
        tracing::info!(receivers = receivers.len(), "webhook delivery started");
    }
    Ok(Some(OutboxTasks { stop, tasks }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_has_the_documented_shape() {
        let s = signature(b"secret", 1, b"{}");
        assert!(s.starts_with("t=1,v1="), "{s}");
        assert_eq!(s.len(), "t=1,v1=".len() + 64);
        assert_eq!(s, signature(b"secret", 1, b"{}"));
        assert_ne!(s, signature(b"secret", 2, b"{}"));
        assert_ne!(s, signature(b"other", 1, b"{}"));
    }
}
