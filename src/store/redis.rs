//! The durable store: Redis. One plain string per order (its MessagePack snapshot, the version
//! inside), written in fenced batches.
//!
//! Keys are `<prefix>:{<shard>}:…`; the `{<shard>}` hash tag keeps one shard's keys (snapshots,
//! outbox, payments index, lease, epoch) in one Redis Cluster slot, so a batch is one atomic call.
//!
//! **Ownership.** A shard's lease `<prefix>:{<shard>}:lease` holds `<token>:<node-id>` with a TTL;
//! the token comes from `INCR <prefix>:{<shard>}:epoch` (no TTL) on every acquisition, so it only
//! grows even when a lease expires.
//!
//! **The batch write** covers a group of shards (the shards of one arbiter thread) and is one
//! `MULTI` / `MSET` / (`SADD`, `SREM` of each shard's payments index) / `XADD` per shard /
//! `EXEC`, guarded by a `WATCH` of every held lease, on a connection that belongs to the group
//! alone (WATCH state is per connection, so a shared multiplexed one cannot carry it). Every
//! transaction is followed, in the same pipeline, by `WATCH` + `MGET` of the leases: the next
//! batch is then guarded from the moment this one ended, and the `MGET` proves the watch started
//! while each lease was still ours. Anything that touches a lease in between (a takeover, a
//! release, its expiry: Redis ≥ 6.0.9 aborts `EXEC` on an expired watched key) aborts the next
//! `EXEC`, which then writes nothing; the writer forgets the shards whose lease moved, refuses
//! their part as `Fenced`, and retries the rest. So a batch costs one round trip and no
//! script, and each shard's token is checked once per batch.
//!
//! One transaction per group instead of one per shard: with 64 shards and the same orders in
//! flight, per-shard transactions were many and small (about 60 keys each in the default demo,
//! 1–4 with 256 orders in flight), and Redis spent more on the calls than on the keys.
//! Grouping the shards of a thread makes one call carry every shard's ready work. (On a Redis
//! Cluster a transaction cannot span slots; there each group must be the shards of one slot.)
//!
//! Measured inside Redis (AOF everysec, 256 keys of 200 B per call, 2-core machine, Redis CPU
//! per key written): a Lua compare-and-set per order (`HGET`+`HSET`, the previous layout) 5.1 µs;
//! Lua `GET` token + `MSET` + `XADD` 2.7 µs (moving arguments into Lua is most of it);
//! pipelined `SET` 2.1 µs; `WATCH`+`GET` then `MULTI`/`MSET`/`XADD`/`EXEC` 1.8 µs; a bare `MSET`
//! 1.5 µs. The WATCH transaction is the cheapest option that keeps the batch atomic and fenced.
//!
//! **Old layout.** Orders written by earlier releases are hashes (`v` = version, `s` =
//! snapshot); a load that meets one reads `s`, and the next write replaces it with a string.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncConnectionConfig;

use super::{IndexChange, Lease, LeaseOwner, ShardBatch, ShardWriter, SnapshotStore, StoreError};
use crate::config::RedisSettings;
use crate::domain::OrderId;

/// Takes a shard's lease if it is free, expired (gone: it has a TTL) or held under this node's
/// id, with a new token from the shard's epoch counter.
/// KEYS[1] = lease, KEYS[2] = epoch; ARGV[1] = node id, ARGV[2] = TTL ms.
/// Returns `{token, value}` when taken, `{0, current value}` when another node holds it.
const ACQUIRE_LUA: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local owner = string.match(current, '^%d+:(.*)$')
  if owner ~= ARGV[1] then return {0, current} end
end
local token = redis.call('INCR', KEYS[2])
local value = token .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {token, value}
"#;

/// Deletes the lease if it still holds ARGV[1] (graceful release).
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The field of an outbox stream entry that holds its events, one line
/// `<order-id>:<version>:<event>` each.
pub const OUTBOX_FIELD: &str = "events";

/// How often one batch is retried after its `EXEC` was aborted while the lease stayed ours
/// (our own renewal touched it); more means something else keeps touching the lease.
const ABORTED_RETRIES_MAX: u32 = 3;

/// Redis-backed snapshot store: a small pool of self-reconnecting multiplexed connections for
/// loads and scans, and one dedicated connection per shard writer.
pub struct RedisStore {
    client: redis::Client,
    connections: Vec<ConnectionManager>,
    prefix: Arc<str>,
    connect_timeout_ms: u64,
    command_timeout_ms: u64,
    outbox_maxlen: u64,
    acquire: Arc<redis::Script>,
    release: Arc<redis::Script>,
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
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
            client,
            connections,
            prefix: settings.key_prefix.as_str().into(),
            connect_timeout_ms: settings.connect_timeout_ms,
            command_timeout_ms: settings.command_timeout_ms,
            outbox_maxlen: settings.outbox_maxlen,
            acquire: Arc::new(redis::Script::new(ACQUIRE_LUA)),
            release: Arc::new(redis::Script::new(RELEASE_LUA)),
        })
    }

    /// The key of an order's snapshot.
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

    /// The key of a shard's lease (`<token>:<node-id>`, with a TTL).
    pub fn lease_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:lease")
    }

    /// The key of a shard's epoch counter, the source of fencing tokens (no TTL).
    pub fn epoch_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:epoch")
    }

    fn connection(&self, shard: u32) -> ConnectionManager {
        // Shards map to connections round-robin so one shard's large read does not sit in
        // front of every other shard's on a single socket.
        self.connections[shard as usize % self.connections.len()].clone()
    }
}

/// The writer of a group of shards: its own connection (never shared, so its WATCH is its own)
/// and what it knows of the group's leases.
struct RedisShardWriter {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    connect_timeout_ms: u64,
    timeout_ms: u64,
    outbox_maxlen: u64,
    owner: LeaseOwner,
    acquire: Arc<redis::Script>,
    release: Arc<redis::Script>,
    prefix: Arc<str>,
    /// Held leases by shard: the value (`<token>:<node-id>`) each held when last checked.
    held: BTreeMap<u32, String>,
    /// Whether this connection WATCHes exactly the held leases, armed while each still held
    /// its value.
    watching: bool,
    /// Timeouts in a row on this connection.
    timeouts: u32,
}

impl RedisShardWriter {
    async fn connection(&mut self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(self.connect_timeout_ms))
            .set_response_timeout(Duration::from_millis(self.timeout_ms + 1_000));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        self.watching = false;
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    /// After an error: a timeout keeps the connection once (a slow Redis still runs what was
    /// sent, in order, and the next call re-arms its watch behind it; dropping the socket would
    /// discard the queued transaction instead), a second timeout in a row or any other error
    /// drops it, and with it the WATCH state.
    fn after_error(&mut self, error: &StoreError) {
        self.watching = false;
        match error {
            StoreError::Timeout(_) if self.timeouts == 0 => self.timeouts += 1,
            _ => {
                self.timeouts = 0;
                self.connection = None;
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection().await?;
        let result = with_timeout(self.timeout_ms, async {
            pipe.query_async(&mut connection).await.map_err(unavailable)
        })
        .await;
        match result {
            Ok(value) => {
                self.timeouts = 0;
                Ok(value)
            }
            Err(error) => {
                self.after_error(&error);
                Err(error)
            }
        }
    }

    /// Appends `WATCH` + `MGET` of the held leases (nothing when none is held).
    fn watch_held(&self, pipe: &mut redis::Pipeline) -> Vec<u32> {
        let shards: Vec<u32> = self.held.keys().copied().collect();
        if shards.is_empty() {
            return shards;
        }
        let watch = pipe.cmd("WATCH");
        for &shard in &shards {
            watch.arg(RedisStore::lease_key(&self.prefix, shard));
        }
        watch.ignore();
        let mget = pipe.cmd("MGET");
        for &shard in &shards {
            mget.arg(RedisStore::lease_key(&self.prefix, shard));
        }
        shards
    }

    /// Compares the leases read by `MGET` with the held values; forgets and answers the shards
    /// whose lease moved or expired.
    fn check_leases(&mut self, shards: &[u32], values: Vec<Option<String>>) -> Vec<u32> {
        let mut lost = Vec::new();
        for (shard, value) in shards.iter().zip(values) {
            let ours = match (self.held.get(shard), &value) {
                (Some(held), Some(value)) => held == value,
                _ => false,
            };
            if !ours {
                tracing::debug!(shard, ?value, "shard lease moved");
                self.held.remove(shard);
                lost.push(*shard);
            }
        }
        lost
    }

    /// Arms a WATCH on exactly the held leases and checks each is still ours; answers the
    /// shards found lost. Bounded: every round either arms the watch or forgets a shard.
    async fn arm_watch(&mut self) -> Result<Vec<u32>, StoreError> {
        let mut lost = Vec::new();
        for _ in 0..=self.held.len() {
            let mut pipe = redis::pipe();
            pipe.cmd("UNWATCH").ignore();
            let shards = self.watch_held(&mut pipe);
            if shards.is_empty() {
                return Ok(lost);
            }
            let (values,): (Vec<Option<String>>,) = self.query(&pipe).await?;
            let moved = self.check_leases(&shards, values);
            if moved.is_empty() {
                self.watching = true;
                return Ok(lost);
            }
            // The watch covers a lease that is no longer ours: arm it again without it.
            lost.extend(moved);
        }
        Ok(lost)
    }

    /// Runs one fenced transaction over the group: the `batches` of held shards (possibly
    /// none) and a `PEXPIRE` of each lease in `renew`. Answers the shards refused or lost.
    /// Retries when `EXEC` was aborted, without the shards whose lease moved.
    async fn transact(
        &mut self,
        batches: &[ShardBatch],
        renew: &[u32],
    ) -> Result<Vec<u32>, StoreError> {
        let mut lost: Vec<u32> = Vec::new();
        for _ in 0..=ABORTED_RETRIES_MAX {
            if !self.watching {
                lost.extend(self.arm_watch().await?);
            }
            let writes: Vec<&ShardBatch> = batches
                .iter()
                .filter(|b| self.held.contains_key(&b.shard) && !b.writes.is_empty())
                .collect();
            let renewals: Vec<u32> = renew
                .iter()
                .copied()
                .filter(|s| self.held.contains_key(s))
                .collect();
            if writes.is_empty() && renewals.is_empty() {
                break;
            }
            let mut pipe = self.transaction(&writes, &renewals);
            let watched = self.watch_held(&mut pipe);
            let (exec, values): (redis::Value, Vec<Option<String>>) = if watched.is_empty() {
                let (exec,): (redis::Value,) = self.query(&pipe).await?;
                (exec, Vec::new())
            } else {
                self.query(&pipe).await?
            };
            // The pipeline armed the next WATCH; it guards the next call only if every lease
            // was still ours when it was armed.
            let moved = self.check_leases(&watched, values);
            self.watching = moved.is_empty() && !watched.is_empty();
            match exec {
                redis::Value::Array(_) => {
                    // Applied: EXEC ran with every watched lease untouched. A lease that moved
                    // right after is reported by the next call that needs it.
                    break;
                }
                redis::Value::Nil => {
                    // Aborted: nothing was written. Retry without the shards that moved.
                    lost.extend(moved);
                }
                other => {
                    self.after_error(&StoreError::Unavailable(String::new()));
                    return Err(StoreError::Unavailable(format!(
                        "unexpected EXEC answer {other:?}"
                    )));
                }
            }
        }
        // Every shard asked about that is not held now was refused (or lost before the call).
        let mut refused: Vec<u32> = batches
            .iter()
            .map(|b| b.shard)
            .chain(renew.iter().copied())
            .filter(|s| !self.held.contains_key(s))
            .collect();
        refused.sort_unstable();
        refused.dedup();
        Ok(refused)
    }

    /// The pipeline of one transaction (the WATCH + MGET that guard the next one follow).
    fn transaction(&self, batches: &[&ShardBatch], renew: &[u32]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI").ignore();
        if !batches.is_empty() {
            // Sized up front: a group write carries thousands of snapshots, and growing the
            // command buffer by doubling copied it several times over.
            let writes = batches.iter().map(|b| b.writes.len()).sum::<usize>();
            let bytes = batches
                .iter()
                .flat_map(|b| b.writes.iter())
                .map(|w| w.bytes.len() + self.prefix.len() + 56)
                .sum::<usize>();
            let mut mset = redis::Cmd::with_capacity(1 + 2 * writes, 4 + bytes);
            mset.arg("MSET");
            let mut key = String::with_capacity(self.prefix.len() + 60);
            for batch in batches {
                for write in &batch.writes {
                    key.clear();
                    push_order_key(&mut key, &self.prefix, batch.shard, write.order_id);
                    mset.arg(key.as_str()).arg(&write.bytes[..]);
                }
            }
            pipe.add_command(mset).ignore();
        }
        let mut field = String::with_capacity(48);
        for batch in batches {
            let payments = RedisStore::payments_key(&self.prefix, batch.shard);
            for (change, command) in [(IndexChange::Add, "SADD"), (IndexChange::Remove, "SREM")] {
                let mut members = batch
                    .writes
                    .iter()
                    .filter(|w| w.payments_index == change)
                    .peekable();
                if members.peek().is_some() {
                    let cmd = pipe.cmd(command).arg(&payments);
                    for write in members {
                        field.clear();
                        push_uuid(&mut field, write.order_id);
                        cmd.arg(field.as_str());
                    }
                    cmd.ignore();
                }
            }
            if self.outbox_maxlen > 0 && batch.writes.iter().any(|w| !w.events.is_empty()) {
                // One stream entry per shard per batch, with one field `events` whose value
                // has a line `<order-id>:<version>:<event>` per event, in commit order. Redis
                // pays per field of an entry: one field per event cost more than the
                // snapshots' MSET per key.
                let mut lines = String::with_capacity(batch.writes.len() * 64);
                for write in &batch.writes {
                    for event in &write.events {
                        push_uuid(&mut lines, write.order_id);
                        lines.push(':');
                        lines.push_str(itoa::Buffer::new().format(write.version));
                        lines.push(':');
                        lines.push_str(event);
                        lines.push('\n');
                    }
                }
                pipe.cmd("XADD")
                    .arg(RedisStore::events_key(&self.prefix, batch.shard))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.outbox_maxlen)
                    .arg("*")
                    .arg(OUTBOX_FIELD)
                    .arg(lines.as_str())
                    .ignore();
            }
        }
        for &shard in renew {
            pipe.cmd("PEXPIRE")
                .arg(RedisStore::lease_key(&self.prefix, shard))
                .arg(self.owner.ttl_ms)
                .ignore();
        }
        pipe.cmd("EXEC");
        pipe
    }
}

/// Appends `<prefix>:{<shard>}:order:<uuid>` without intermediate `String`s.
fn push_order_key(out: &mut String, prefix: &str, shard: u32, order_id: OrderId) {
    out.push_str(prefix);
    out.push_str(":{");
    out.push_str(itoa::Buffer::new().format(shard));
    out.push_str("}:order:");
    push_uuid(out, order_id);
}

/// Appends an order id in its hyphenated form without an intermediate `String`.
fn push_uuid(out: &mut String, order_id: OrderId) {
    let mut buffer = uuid::Uuid::encode_buffer();
    out.push_str(order_id.as_uuid().hyphenated().encode_lower(&mut buffer));
}

impl ShardWriter for RedisShardWriter {
    fn acquire(&mut self, shard: u32) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        async move {
            let mut connection = self.connection().await?;
            let lease_key = RedisStore::lease_key(&self.prefix, shard);
            let epoch_key = RedisStore::epoch_key(&self.prefix, shard);
            let mut invocation = self.acquire.key(&lease_key);
            invocation
                .key(&epoch_key)
                .arg(&*self.owner.node_id)
                .arg(self.owner.ttl_ms);
            let result: Result<(u64, String), StoreError> = with_timeout(self.timeout_ms, async {
                invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(unavailable)
            })
            .await;
            // The script may have touched a lease this connection watches: re-arm before the
            // next transaction.
            self.watching = false;
            match result {
                Ok((0, _)) => Ok(None),
                Ok((token, value)) => {
                    self.held.insert(shard, value);
                    Ok(Some(Lease { token }))
                }
                Err(error) => {
                    self.after_error(&error);
                    Err(error)
                }
            }
        }
        .boxed()
    }

    fn renew(&mut self, shards: &[u32]) -> BoxFuture<'_, Result<Vec<u32>, StoreError>> {
        let shards = shards.to_vec();
        async move { self.transact(&[], &shards).await }.boxed()
    }

    fn write(&mut self, batches: Vec<ShardBatch>) -> BoxFuture<'_, Result<Vec<u32>, StoreError>> {
        async move {
            if batches.iter().all(|b| b.writes.is_empty()) {
                return Ok(Vec::new());
            }
            self.transact(&batches, &[]).await
        }
        .boxed()
    }

    fn release(&mut self, shard: u32) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let Some(value) = self.held.remove(&shard) else {
                return Ok(());
            };
            self.watching = false;
            let mut connection = self.connection().await?;
            let lease_key = RedisStore::lease_key(&self.prefix, shard);
            let mut invocation = self.release.key(&lease_key);
            invocation.arg(&value);
            with_timeout(self.timeout_ms, async {
                let _: i64 = invocation
                    .invoke_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            })
            .await
        }
        .boxed()
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
            with_timeout(timeout_ms, async {
                let loaded: Result<Option<Vec<u8>>, redis::RedisError> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await;
                match loaded {
                    Ok(bytes) => Ok(bytes),
                    // Written by an earlier release as a hash (`v`, `s`): read its snapshot;
                    // the next write of the order replaces it with a plain value.
                    Err(error) if error.code() == Some("WRONGTYPE") => redis::cmd("HGET")
                        .arg(&key)
                        .arg("s")
                        .query_async(&mut connection)
                        .await
                        .map_err(unavailable),
                    Err(error) => Err(unavailable(error)),
                }
            })
            .await
        }
        .boxed()
    }

    fn shard_writer(&self, owner: &LeaseOwner) -> Box<dyn ShardWriter> {
        Box::new(RedisShardWriter {
            client: self.client.clone(),
            connection: None,
            connect_timeout_ms: self.connect_timeout_ms,
            timeout_ms: self.command_timeout_ms,
            outbox_maxlen: self.outbox_maxlen,
            owner: owner.clone(),
            acquire: Arc::clone(&self.acquire),
            release: Arc::clone(&self.release),
            prefix: Arc::clone(&self.prefix),
            held: BTreeMap::new(),
            watching: false,
            timeouts: 0,
        })
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
            with_timeout(timeout_ms, async {
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
            with_timeout(timeout_ms, async {
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
