//! The durable store: Redis, one hash per order (`v` = version, `s` = snapshot bytes).
//!
//! Keys are `<prefix>:{<shard>}:order:<uuid>`; the `{<shard>}` hash tag keeps one shard's keys
//! in one Redis Cluster slot, so a shard's batch can be one script call. Each batch is one
//! `EVALSHA` of a compare-and-set script (as Orleans' Redis grain storage does): for every
//! order it checks the stored version and writes the new snapshot, then appends the events of
//! the written orders to the shard's capped outbox stream `<prefix>:{<shard>}:events` as one
//! entry per batch (field `<order-id>:<version>`, value the event name), and keeps the shard's
//! set `<prefix>:{<shard>}:payments` of orders with live gateway work, all atomically.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{IndexChange, SnapshotStore, SnapshotWrite, StoreError, WriteOutcome};
use crate::config::RedisSettings;
use crate::domain::OrderId;

/// Compare-and-set of a batch of snapshots plus their outbox events and the shard's index of
/// orders with live gateway work.
/// KEYS[1] = outbox stream, KEYS[2] = live-payments set, KEYS[3..] = order keys.
/// ARGV[1] = stream MAXLEN (0: no outbox), then per order: expected version, new version,
/// snapshot bytes, index change (0 none, 1 add, 2 remove), event count n, then n pairs
/// (`<order-id>:<version>`, event name).
/// Returns one integer per order: -1 written, otherwise the stored version (a conflict).
///
/// Events of all written orders go into ONE stream entry per batch (field = order:version,
/// value = event name, in commit order), and index changes into one SADD and one SREM per
/// batch: each `redis.call` costs about 2 µs of script overhead, and one XADD per order was a
/// third of the script's time. Only written orders change the index, so it always agrees with
/// the snapshots.
const WRITE_BATCH_LUA: &str = r#"
local maxlen = tonumber(ARGV[1])
local results = {}
local events = {}
local adds = {}
local removes = {}
local a = 2
for i = 3, #KEYS do
  local key = KEYS[i]
  local n = tonumber(ARGV[a + 4])
  local stored = tonumber(redis.call('HGET', key, 'v') or '0')
  if stored == tonumber(ARGV[a]) then
    redis.call('HSET', key, 'v', ARGV[a + 1], 's', ARGV[a + 2])
    for j = 1, 2 * n do
      events[#events + 1] = ARGV[a + 4 + j]
    end
    local change = ARGV[a + 3]
    if change == '1' then
      adds[#adds + 1] = string.sub(key, -36)
    elseif change == '2' then
      removes[#removes + 1] = string.sub(key, -36)
    end
    results[i - 2] = -1
  else
    results[i - 2] = stored
  end
  a = a + 5 + 2 * n
end
-- unpack() is bounded by Lua's C stack: send in chunks.
local chunk = 4000
for first = 1, #adds, chunk do
  redis.call('SADD', KEYS[2], unpack(adds, first, math.min(first + chunk - 1, #adds)))
end
for first = 1, #removes, chunk do
  redis.call('SREM', KEYS[2], unpack(removes, first, math.min(first + chunk - 1, #removes)))
end
if maxlen > 0 then
  for first = 1, #events, chunk do
    local last = math.min(first + chunk - 1, #events)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(events, first, last))
  end
end
return results
"#;

/// Redis-backed snapshot store with a small pool of self-reconnecting multiplexed connections.
pub struct RedisStore {
    connections: Vec<ConnectionManager>,
    script: Arc<redis::Script>,
    prefix: Arc<str>,
    command_timeout_ms: u64,
    outbox_maxlen: u64,
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl RedisStore {
    /// Connects `settings.connections` multiplexed connections to `url`. Each reconnects by
    /// itself after Redis restarts; commands in the meantime fail with a retryable error.
    pub async fn connect(url: &str, settings: &RedisSettings) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
            // Longer than our own per-command timeout, so a slow answer surfaces as
            // `StoreError::Timeout` (outcome unknown) rather than a generic client error.
            .set_response_timeout(Duration::from_millis(settings.command_timeout_ms + 1_000))
            .set_number_of_retries(2)
            .set_max_delay(500);
        let mut connections = Vec::with_capacity(settings.connections.max(1));
        for _ in 0..settings.connections.max(1) {
            let connection = ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .map_err(unavailable)?;
            connections.push(connection);
        }
        Ok(RedisStore {
            connections,
            script: Arc::new(redis::Script::new(WRITE_BATCH_LUA)),
            prefix: settings.key_prefix.as_str().into(),
            command_timeout_ms: settings.command_timeout_ms,
            outbox_maxlen: settings.outbox_maxlen,
        })
    }

    /// The key of an order's snapshot hash.
    pub fn order_key(prefix: &str, shard: u32, order_id: OrderId) -> String {
        format!("{prefix}:{{{shard}}}:order:{order_id}")
    }

    /// The key of a shard's outbox stream.
    pub fn events_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:events")
    }

    /// The key of a shard's set of orders with live gateway work (a live payment attempt or a
    /// pending refund), scanned on start to resume them.
    pub fn payments_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:payments")
    }

    fn connection(&self, shard: u32) -> ConnectionManager {
        // Shards map to connections round-robin so one shard's large batch does not sit in
        // front of every other shard's on a single socket.
        self.connections[shard as usize % self.connections.len()].clone()
    }

    async fn with_timeout<T>(
        timeout_ms: u64,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(timeout_ms)),
        }
    }
}

impl SnapshotStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn load(
        &self,
        shard: u32,
        order_id: OrderId,
    ) -> BoxFuture<'static, Result<Option<Vec<u8>>, StoreError>> {
        let mut connection = self.connection(shard);
        let key = RedisStore::order_key(&self.prefix, shard, order_id);
        let timeout_ms = self.command_timeout_ms;
        async move {
            RedisStore::with_timeout(timeout_ms, async {
                let bytes: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("s")
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                Ok(bytes)
            })
            .await
        }
        .boxed()
    }

    fn write_batch(
        &self,
        shard: u32,
        writes: Vec<SnapshotWrite>,
    ) -> BoxFuture<'static, Result<Vec<WriteOutcome>, StoreError>> {
        let mut connection = self.connection(shard);
        let script = Arc::clone(&self.script);
        let prefix = Arc::clone(&self.prefix);
        let timeout_ms = self.command_timeout_ms;
        let maxlen = self.outbox_maxlen;
        async move {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = script.prepare_invoke();
            invocation
                .key(RedisStore::events_key(&prefix, shard))
                .key(RedisStore::payments_key(&prefix, shard))
                .arg(maxlen);
            for write in &writes {
                let change = match write.payments_index {
                    IndexChange::Unchanged => 0,
                    IndexChange::Add => 1,
                    IndexChange::Remove => 2,
                };
                invocation
                    .key(RedisStore::order_key(&prefix, shard, write.order_id))
                    .arg(write.expected_version)
                    .arg(write.version)
                    .arg(&write.bytes[..])
                    .arg(change)
                    .arg(write.events.len());
                let field = format!("{}:{}", write.order_id, write.version);
                for event in &write.events {
                    invocation.arg(&field).arg(*event);
                }
            }
            let results: Vec<i64> = RedisStore::with_timeout(timeout_ms, async {
                invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(unavailable)
            })
            .await?;
            if results.len() != writes.len() {
                return Err(StoreError::Unavailable(format!(
                    "write script answered {} results for {} writes",
                    results.len(),
                    writes.len()
                )));
            }
            Ok(results
                .into_iter()
                .map(|r| {
                    if r < 0 {
                        WriteOutcome::Written
                    } else {
                        WriteOutcome::Conflict {
                            stored_version: r as u64,
                        }
                    }
                })
                .collect())
        }
        .boxed()
    }

    fn scan_live_payments(
        &self,
        shard: u32,
        cursor: u128,
        count: usize,
    ) -> BoxFuture<'static, Result<(u128, Vec<OrderId>), StoreError>> {
        let mut connection = self.connection(shard);
        let key = RedisStore::payments_key(&self.prefix, shard);
        let timeout_ms = self.command_timeout_ms;
        async move {
            RedisStore::with_timeout(timeout_ms, async {
                let (next, members): (u64, Vec<String>) = redis::cmd("SSCAN")
                    .arg(&key)
                    .arg(cursor as u64)
                    .arg("COUNT")
                    .arg(count.max(1))
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                // A member that is not an order id was not written by this engine: skip it.
                let ids = members.iter().filter_map(|m| OrderId::parse(m)).collect();
                Ok((u128::from(next), ids))
            })
            .await
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), StoreError>> {
        let mut connection = self.connection(0);
        let timeout_ms = self.command_timeout_ms;
        async move {
            RedisStore::with_timeout(timeout_ms, async {
                let _: String = redis::cmd("PING")
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            })
            .await
        }
        .boxed()
    }
}
