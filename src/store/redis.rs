//! The durable store: Redis. One plain string per order (its MessagePack snapshot, the version
//! inside), written in fenced batches.
//!
//! Keys are `<prefix>:{<shard>}:…`; the `{<shard>}` hash tag keeps one shard's keys (snapshots,
//! outbox, timer index, lease, epoch) in one Redis Cluster slot, so a batch is one atomic call.
//!
//! **Ownership.** A shard's lease `<prefix>:{<shard>}:lease` holds `<token>:<node-id>` with a TTL;
//! the token comes from `INCR <prefix>:{<shard>}:epoch` (no TTL) on every acquisition, so it only
//! grows even when a lease expires.
//!
//! **The batch write** covers a group of shards (the shards of one arbiter thread) and is one
//! `MULTI` / `MSET` / (`ZADD`, `ZREM` of each shard's timer index) / `XADD` + `XLEN` per
//! shard / `EXEC`, guarded by a `WATCH` of every held lease, on a connection that belongs to
//! the group alone (WATCH state is per connection, so a shared multiplexed one cannot carry
//! it). Every transaction is followed, in the same pipeline, by `WATCH` + `MGET` of the
//! leases: the next batch is then guarded from the moment this one ended, and the `MGET`
//! proves the watch started while each lease was still ours. Anything that touches a lease in between (a takeover, a
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
//! **Timer index.** `<prefix>:{<shard>}:timers` is a sorted set of order ids scored by a due
//! time no later than the order's earliest armed timer. It is written only when an order's
//! next timer moves earlier than its entry (placement, a payment attempt failing back to
//! unpaid) and removed when the order settles, so a typical lifecycle costs one `ZADD` and one
//! `ZREM`; a timer that moved later (paid, then the ship SLA) is corrected when its stale entry
//! comes due. Shards read due entries with `ZRANGE … BYSCORE LIMIT`.
//!
//! **The outbox.** Each shard has one stream, `<prefix>:{<shard>}:events`, in the shard's slot.
//! A batch appends one entry per shard (not one per event: Redis pays per entry and per field,
//! and a stream entry per event cost more than the snapshots' `MSET`), with one field `events`
//! holding the batch's events as JSON lines (see [`super::outbox`]: each names its own
//! order version and carries a deterministic `event_id`). Readers split an entry into events
//! and acknowledge the entry once each of its events is handled. There is no `MAXLEN` on the
//! hot path: nothing is trimmed unread. The trimmer (`crate::webhooks::trimmer`, every few
//! seconds) removes per shard only what every consumer group acknowledged (`XTRIM MINID`). The
//! hard cap `[outbox] max_entries_per_shard` protects Redis: the transaction also queues an
//! `XLEN` of each stream it appended to, and once a stream is at its cap the writer's next
//! entries for that shard go to `<prefix>:{<shard>}:events:overflow` (counted by
//! `orderly_outbox_overflowed_total`), until trimming makes room. Measured with a tiny run
//! (5,000 orders, 25,000 events): about 9 events per entry, 308 bytes of JSON and about 400 bytes
//! of Redis memory per event.
//!
//! **Old layout.** Orders written by earlier releases are hashes (`v` = version, `s` =
//! snapshot); a load that meets one reads `s`, and the next write replaces it with a string.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::resp::{Reply, Request, RespConnection};
use super::{
    DueTimer, Lease, LeaseOwner, ScanPage, ShardBatch, ShardWriter, SnapshotStore, StatusCounts,
    StatusUpdate, StoreError, StoredSnapshot, TimerChange, TimerCounts,
};
use crate::config::RedisSettings;
use crate::domain::{OrderId, OrderStatus, Timestamp};

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

/// The field of an outbox stream entry that holds its events: one JSON event per line (see
/// [`super::outbox`]), the events of one shard's batch in commit order.
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
    outbox: OutboxConfig,
}

/// What the writers need of `[outbox]`.
#[derive(Debug, Clone, Copy)]
struct OutboxConfig {
    enabled: bool,
    max_entries_per_shard: u64,
}

fn unavailable(error: redis::RedisError) -> StoreError {
    if error.code() == Some("OOM") {
        return StoreError::Full(error.to_string());
    }
    StoreError::Unavailable(error.to_string())
}

/// A Redis error reply as a store error: `OOM …` (alone, or as the cause of an `EXECABORT`) is
/// [`StoreError::Full`], anything else [`StoreError::Unavailable`].
fn reply_error(text: String) -> StoreError {
    if text.starts_with("OOM ") || text.contains("(OOM ") {
        StoreError::Full(text)
    } else {
        StoreError::Unavailable(text)
    }
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
            outbox: OutboxConfig {
                enabled: true,
                max_entries_per_shard: 100_000,
            },
        })
    }

    /// Applies `[outbox]`: whether writes append events, and each shard stream's hard cap.
    pub fn with_outbox(mut self, settings: &crate::config::OutboxSettings) -> RedisStore {
        self.outbox = OutboxConfig {
            enabled: settings.enabled,
            max_entries_per_shard: settings.max_entries_per_shard,
        };
        self
    }

    /// The key of an order's snapshot.
    pub fn order_key(prefix: &str, shard: u32, order_id: OrderId) -> String {
        format!("{prefix}:{{{shard}}}:order:{order_id}")
    }

    /// The key of a shard's outbox stream.
    pub fn events_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:events")
    }

    /// The key of a shard's overflow stream: events appended while the outbox stream was at
    /// its cap (`[outbox] max_entries_per_shard`). Nothing reads or trims it by itself.
    pub fn overflow_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:events:overflow")
    }

    /// The key of a shard's durable timer index: a sorted set of order ids scored by due time
    /// (milliseconds since the epoch).
    pub fn timers_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:timers")
    }

    /// The key of a shard's per-status order counts: a hash of status name to count, changed
    /// by `HINCRBY` in the same transaction as the snapshots that move orders.
    pub fn status_key(prefix: &str, shard: u32) -> String {
        format!("{prefix}:{{{shard}}}:status")
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
    info: redis::ConnectionInfo,
    connection: Option<RespConnection>,
    connect_timeout: Duration,
    timeout: Duration,
    outbox: OutboxConfig,
    /// Each shard stream's length after this writer's last append (`XLEN` in the same
    /// transaction): past the cap, the next append goes to the overflow stream.
    outbox_len: BTreeMap<u32, u64>,
    /// The `XLEN`s of the transaction being built: (shard, index in the `EXEC` reply).
    lengths: Vec<(u32, usize)>,
    owner: LeaseOwner,
    prefix: Arc<str>,
    /// Held leases by shard: the value (`<token>:<node-id>`) each held when last checked.
    held: BTreeMap<u32, String>,
    /// Whether this connection WATCHes exactly the held leases, armed while each still held
    /// its value.
    watching: bool,
    /// The request buffer, reused: it keeps its capacity across writes.
    request: Request,
    /// Reused text buffers for keys and outbox lines.
    text: String,
}

/// What one transaction's replies say.
struct Transaction {
    /// The `EXEC` reply: `Some` applied, `None` aborted (a watched lease was touched).
    applied: bool,
    /// The leases as read right after, in `watched` order.
    leases: Vec<Option<String>>,
    /// The replies of the queued commands, when applied.
    results: Vec<Reply>,
}

impl RedisShardWriter {
    async fn connection(&mut self) -> Result<&mut RespConnection, StoreError> {
        if self.connection.is_none() {
            let connection =
                RespConnection::connect(&self.info, self.connect_timeout, self.timeout).await?;
            self.watching = false;
            self.connection = Some(connection);
        }
        match self.connection.as_mut() {
            Some(connection) => Ok(connection),
            None => Err(StoreError::Unavailable("no connection".into())),
        }
    }

    /// Sends the built request and reads its replies. A timeout keeps the connection (a slow
    /// Redis still runs what it was sent, in order, and the next call skips the replies it
    /// still owes); any other error drops it. Either way the WATCH state is unknown after.
    async fn call(&mut self) -> Result<Vec<Reply>, StoreError> {
        let request = std::mem::take(&mut self.request);
        let timeout = self.timeout;
        let result = match self.connection().await {
            Ok(connection) => connection.call(&request, timeout).await,
            Err(error) => Err(error),
        };
        self.request = request;
        if let Err(error) = &result {
            self.watching = false;
            if !matches!(error, StoreError::Timeout(_)) {
                self.connection = None;
            }
        }
        result
    }

    /// Appends `WATCH` + `MGET` of the held leases (nothing when none is held).
    fn watch_held(&mut self) -> Vec<u32> {
        let shards: Vec<u32> = self.held.keys().copied().collect();
        if shards.is_empty() {
            return shards;
        }
        for command in ["WATCH", "MGET"] {
            self.request.command(1 + shards.len()).arg(command);
            for &shard in &shards {
                self.text.clear();
                push_lease_key(&mut self.text, &self.prefix, shard);
                self.request.arg(self.text.as_bytes());
            }
        }
        shards
    }

    /// Compares the leases read by `MGET` with the held values; forgets and answers the shards
    /// whose lease moved or expired.
    fn check_leases(&mut self, shards: &[u32], values: Vec<Option<String>>) -> Vec<u32> {
        let mut lost = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            let value = values.get(i).cloned().flatten();
            let ours = matches!((self.held.get(shard), &value), (Some(h), Some(v)) if h == v);
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
            self.request.clear();
            self.request.command(1).arg("UNWATCH");
            let shards = self.watch_held();
            if shards.is_empty() {
                return Ok(lost);
            }
            let replies = self.call().await?;
            let values = lease_values(replies.into_iter().last())?;
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
        for _ in 0..=ABORTED_RETRIES_MAX {
            if !self.watching {
                self.arm_watch().await?;
            }
            let writes: Vec<&ShardBatch> = batches
                .iter()
                .filter(|b| {
                    self.held.contains_key(&b.shard)
                        && (!b.writes.is_empty() || b.status != StatusUpdate::default())
                })
                .collect();
            let renewals: Vec<u32> = renew
                .iter()
                .copied()
                .filter(|s| self.held.contains_key(s))
                .collect();
            if writes.is_empty() && renewals.is_empty() {
                break;
            }
            self.request.clear();
            let queued = self.transaction(&writes, &renewals);
            let watched = self.watch_held();
            let replies = self.call().await?;
            let outcome = read_transaction(replies, queued, !watched.is_empty())?;
            // The pipeline armed the next WATCH; it guards the next call only if every lease
            // was still ours when it was armed.
            let moved = self.check_leases(&watched, outcome.leases);
            self.watching = moved.is_empty() && !watched.is_empty();
            if outcome.applied {
                // EXEC ran with every watched lease untouched. A lease that moved right
                // after is reported by the next call that needs it.
                self.appended(&writes, &outcome.results);
                break;
            }
            // Aborted: nothing was written. Retry without the shards that moved.
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

    /// Records what an applied transaction appended to the outbox: each shard stream's new
    /// length, and the events appended and overflowed.
    fn appended(&mut self, batches: &[&ShardBatch], results: &[Reply]) {
        let mut overflowed = 0_u64;
        let mut by_type = [0_u64; crate::domain::OrderEvent::ALL.len()];
        for batch in batches {
            let events: usize = batch.writes.iter().map(|w| w.events.len()).sum();
            if events == 0 {
                continue;
            }
            if self.outbox_len.get(&batch.shard).copied().unwrap_or(0)
                >= self.outbox.max_entries_per_shard
            {
                overflowed += events as u64;
            }
            for write in &batch.writes {
                for kind in &write.events.kinds {
                    if let Some(i) = crate::domain::OrderEvent::ALL
                        .iter()
                        .position(|e| e == kind)
                    {
                        by_type[i] += 1;
                    }
                }
            }
        }
        for &(shard, index) in &self.lengths {
            if let Some(Reply::Int(len)) = results.get(index) {
                self.outbox_len.insert(shard, (*len).max(0) as u64);
            }
        }
        crate::telemetry::record_outbox_appended(&by_type, overflowed);
    }

    /// Writes `MULTI`, the commands of one transaction and `EXEC` into the request; answers
    /// how many commands were queued between them. (The WATCH + MGET that guard the next
    /// transaction follow.)
    fn transaction(&mut self, batches: &[&ShardBatch], renew: &[u32]) -> usize {
        let mut queued = 0;
        self.lengths.clear();
        let request = &mut self.request;
        let text = &mut self.text;
        request.command(1).arg("MULTI");
        let writes = batches.iter().map(|b| b.writes.len()).sum::<usize>();
        if writes > 0 {
            let bytes = batches
                .iter()
                .flat_map(|b| b.writes.iter())
                .map(|w| w.bytes.len() + self.prefix.len() + 80)
                .sum::<usize>();
            request.reserve(bytes);
            request.command(1 + 2 * writes).arg("MSET");
            for batch in batches {
                for write in &batch.writes {
                    text.clear();
                    push_order_key(text, &self.prefix, batch.shard, write.order_id);
                    request.arg(text.as_bytes()).arg(&write.bytes);
                }
            }
            queued += 1;
        }
        for batch in batches {
            // The per-status counts: one HINCRBY per status whose count moved in the batch
            // (a lifecycle batch moves a few statuses, whatever its size).
            match &batch.status {
                StatusUpdate::Delta(delta) => {
                    for (status, n) in delta.iter().filter(|(_, n)| *n != 0) {
                        request
                            .command(4)
                            .arg("HINCRBY")
                            .arg(RedisStore::status_key(&self.prefix, batch.shard).as_bytes())
                            .arg(status.as_str().as_bytes())
                            .signed(n);
                        queued += 1;
                    }
                }
                StatusUpdate::Set(counts) => {
                    let key = RedisStore::status_key(&self.prefix, batch.shard);
                    request.command(2).arg("DEL").arg(key.as_bytes());
                    request
                        .command(2 + 2 * counts.0.len())
                        .arg("HSET")
                        .arg(key.as_bytes());
                    for (status, n) in counts.iter() {
                        request.arg(status.as_str().as_bytes()).signed(n);
                    }
                    queued += 2;
                }
            }
            // The timer index: one ZADD of every order whose entry moved and one ZREM of the
            // removed ones. When an order's entry changes twice in one batch only its last
            // change counts (the writes are in commit order).
            if batch
                .writes
                .iter()
                .any(|w| w.timer != TimerChange::Unchanged)
            {
                let mut last: Vec<(OrderId, TimerChange)> = Vec::new();
                for write in batch.writes.iter().rev() {
                    if write.timer != TimerChange::Unchanged
                        && !last.iter().any(|(id, _)| *id == write.order_id)
                    {
                        last.push((write.order_id, write.timer));
                    }
                }
                let timers = RedisStore::timers_key(&self.prefix, batch.shard);
                let sets = last
                    .iter()
                    .filter(|(_, c)| matches!(c, TimerChange::Set(_)))
                    .count();
                if sets > 0 {
                    request.command(2 + 2 * sets).arg("ZADD").arg(&timers);
                    for (order_id, change) in &last {
                        if let TimerChange::Set(due) = change {
                            text.clear();
                            push_uuid(text, *order_id);
                            request.int(due.0.max(0) as u64).arg(text.as_bytes());
                        }
                    }
                    queued += 1;
                }
                let removes = last.len() - sets;
                if removes > 0 {
                    request.command(2 + removes).arg("ZREM").arg(&timers);
                    for (order_id, change) in &last {
                        if *change == TimerChange::Remove {
                            text.clear();
                            push_uuid(text, *order_id);
                            request.arg(text.as_bytes());
                        }
                    }
                    queued += 1;
                }
            }
            if self.outbox.enabled && batch.writes.iter().any(|w| !w.events.is_empty()) {
                // One stream entry per shard per batch, with one field `events` holding one
                // JSON line per event, in commit order. Redis pays per entry and per field:
                // one entry per event cost more than the snapshots' MSET per key. No MAXLEN:
                // nothing is trimmed unread (the trimmer removes what every consumer group
                // acknowledged); past the hard cap the entry goes to the overflow stream.
                let full = self.outbox_len.get(&batch.shard).copied().unwrap_or(0)
                    >= self.outbox.max_entries_per_shard;
                let events = RedisStore::events_key(&self.prefix, batch.shard);
                let target = if full {
                    RedisStore::overflow_key(&self.prefix, batch.shard)
                } else {
                    events.clone()
                };
                request
                    .command(5)
                    .arg("XADD")
                    .arg(&target)
                    .arg("*")
                    .arg(OUTBOX_FIELD)
                    .arg_parts(batch.writes.iter().map(|w| &w.events.lines[..]));
                queued += 1;
                request.command(2).arg("XLEN").arg(&events);
                self.lengths.push((batch.shard, queued));
                queued += 1;
            }
        }
        for &shard in renew {
            request
                .command(3)
                .arg("PEXPIRE")
                .arg(RedisStore::lease_key(&self.prefix, shard))
                .int(self.owner.ttl_ms);
            queued += 1;
        }
        request.command(1).arg("EXEC");
        queued
    }

    /// Runs a script (`EVAL`: lease acquisition and release are rare).
    async fn eval(
        &mut self,
        script: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<Reply, StoreError> {
        self.request.clear();
        self.request
            .command(3 + keys.len() + args.len())
            .arg("EVAL")
            .arg(script)
            .arg(itoa::Buffer::new().format(keys.len()));
        for key in keys {
            self.request.arg(key);
        }
        for arg in args {
            self.request.arg(arg);
        }
        // The script may touch a lease this connection watches: re-arm before the next
        // transaction.
        self.watching = false;
        let reply = self.call().await?.pop().unwrap_or(Reply::Array(None));
        match reply.first_error() {
            Some(error) => Err(reply_error(error.to_string())),
            None => Ok(reply),
        }
    }
}

/// The values of an `MGET` reply.
fn lease_values(reply: Option<Reply>) -> Result<Vec<Option<String>>, StoreError> {
    match reply {
        Some(Reply::Array(Some(items))) => Ok(items.into_iter().map(Reply::into_string).collect()),
        Some(Reply::Error(error)) => Err(reply_error(error)),
        other => Err(StoreError::Unavailable(format!(
            "unexpected MGET answer {other:?}"
        ))),
    }
}

/// Reads the replies of `MULTI`, `queued` commands, `EXEC` and, if `watched`, `WATCH` + `MGET`.
fn read_transaction(
    replies: Vec<Reply>,
    queued: usize,
    watched: bool,
) -> Result<Transaction, StoreError> {
    let expected = 2 + queued + if watched { 2 } else { 0 };
    if replies.len() != expected {
        return Err(StoreError::Unavailable(format!(
            "a transaction answered {} replies, not {expected}",
            replies.len()
        )));
    }
    let mut replies = replies.into_iter();
    // MULTI and the queued commands: a command refused while queueing (out of memory, say)
    // makes EXEC abort the whole transaction with EXECABORT, reported below.
    let queue_error = replies
        .by_ref()
        .take(1 + queued)
        .find_map(|r| r.first_error().map(str::to_string));
    let exec = replies.next().unwrap_or(Reply::Array(None));
    let mut results = Vec::new();
    let applied = match &exec {
        Reply::Array(Some(_)) => match exec.first_error() {
            Some(error) => return Err(reply_error(error.to_string())),
            None => true,
        },
        Reply::Array(None) => false,
        Reply::Error(error) => {
            return Err(reply_error(match queue_error {
                Some(cause) => format!("{error} ({cause})"),
                None => error.clone(),
            }))
        }
        other => {
            return Err(StoreError::Unavailable(format!(
                "unexpected EXEC answer {other:?}"
            )))
        }
    };
    if let Reply::Array(Some(items)) = exec {
        results = items;
    }
    let leases = if watched {
        let _watch = replies.next();
        lease_values(replies.next())?
    } else {
        Vec::new()
    };
    Ok(Transaction {
        applied,
        leases,
        results,
    })
}

/// Appends `<prefix>:{<shard>}:order:<uuid>` without intermediate `String`s.
fn push_order_key(out: &mut String, prefix: &str, shard: u32, order_id: OrderId) {
    out.push_str(prefix);
    out.push_str(":{");
    out.push_str(itoa::Buffer::new().format(shard));
    out.push_str("}:order:");
    push_uuid(out, order_id);
}

/// Appends `<prefix>:{<shard>}:lease`.
fn push_lease_key(out: &mut String, prefix: &str, shard: u32) {
    out.push_str(prefix);
    out.push_str(":{");
    out.push_str(itoa::Buffer::new().format(shard));
    out.push_str("}:lease");
}

/// Appends an order id in its hyphenated form without an intermediate `String`.
/// Parses `<prefix>:{<shard>}:order:<uuid>`.
fn parse_order_key(prefix: &str, key: &str) -> Option<(u32, OrderId)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(":{")?;
    let (shard, rest) = rest.split_once('}')?;
    let id = rest.strip_prefix(":order:")?;
    Some((shard.parse().ok()?, OrderId::parse(id)?))
}

fn push_uuid(out: &mut String, order_id: OrderId) {
    let mut buffer = uuid::Uuid::encode_buffer();
    out.push_str(order_id.as_uuid().hyphenated().encode_lower(&mut buffer));
}

impl ShardWriter for RedisShardWriter {
    fn acquire(&mut self, shard: u32) -> BoxFuture<'_, Result<Option<Lease>, StoreError>> {
        async move {
            let lease_key = RedisStore::lease_key(&self.prefix, shard);
            let epoch_key = RedisStore::epoch_key(&self.prefix, shard);
            let node_id = Arc::clone(&self.owner.node_id);
            let ttl = self.owner.ttl_ms.to_string();
            let reply = self
                .eval(ACQUIRE_LUA, &[&lease_key, &epoch_key], &[&node_id, &ttl])
                .await?;
            let Reply::Array(Some(items)) = reply else {
                return Err(StoreError::Unavailable(format!(
                    "unexpected lease answer {reply:?}"
                )));
            };
            let mut items = items.into_iter();
            match (items.next(), items.next().and_then(Reply::into_string)) {
                (Some(Reply::Int(0)), _) => Ok(None),
                (Some(Reply::Int(token)), Some(value)) if token > 0 => {
                    self.held.insert(shard, value);
                    Ok(Some(Lease {
                        token: token as u64,
                    }))
                }
                other => Err(StoreError::Unavailable(format!(
                    "unexpected lease answer {other:?}"
                ))),
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
            if batches
                .iter()
                .all(|b| b.writes.is_empty() && b.status == StatusUpdate::default())
            {
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
            let lease_key = RedisStore::lease_key(&self.prefix, shard);
            self.eval(RELEASE_LUA, &[&lease_key], &[&value]).await?;
            Ok(())
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
            info: self.client.get_connection_info().clone(),
            connection: None,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            timeout: Duration::from_millis(self.command_timeout_ms),
            outbox: self.outbox,
            outbox_len: BTreeMap::new(),
            lengths: Vec::new(),
            owner: owner.clone(),
            prefix: Arc::clone(&self.prefix),
            held: BTreeMap::new(),
            watching: false,
            request: Request::default(),
            text: String::with_capacity(4096),
        })
    }

    fn due_timers(
        &self,
        shard: u32,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<DueTimer>, StoreError>> {
        let mut connection = self.connection(shard);
        let key = RedisStore::timers_key(&self.prefix, shard);
        let timeout_ms = self.command_timeout_ms;
        async move {
            with_timeout(timeout_ms, async {
                let entries: Vec<(String, f64)> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now.0)
                    .arg("BYSCORE")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.max(1))
                    .arg("WITHSCORES")
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                // A member that is not an order id was not written by this engine: skip it.
                Ok(entries
                    .iter()
                    .filter_map(|(member, score)| {
                        Some(DueTimer {
                            order_id: OrderId::parse(member)?,
                            due_at: Timestamp(*score as i64),
                        })
                    })
                    .collect())
            })
            .await
        }
        .boxed()
    }

    fn status_counts(&self, shard: u32) -> BoxFuture<'static, Result<StatusCounts, StoreError>> {
        let mut connection = self.connection(shard);
        let key = RedisStore::status_key(&self.prefix, shard);
        let timeout_ms = self.command_timeout_ms;
        async move {
            with_timeout(timeout_ms, async {
                let fields: Vec<(String, i64)> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                let mut counts = StatusCounts::default();
                for (name, n) in fields {
                    if let Some(status) = OrderStatus::ALL.iter().find(|s| s.as_str() == name) {
                        counts.0[status.index()] = n;
                    }
                }
                Ok(counts)
            })
            .await
        }
        .boxed()
    }

    fn timer_counts(
        &self,
        shard: u32,
        now: Timestamp,
    ) -> BoxFuture<'static, Result<TimerCounts, StoreError>> {
        let mut connection = self.connection(shard);
        let key = RedisStore::timers_key(&self.prefix, shard);
        let timeout_ms = self.command_timeout_ms;
        async move {
            with_timeout(timeout_ms, async {
                let (armed, overdue): (u64, u64) = redis::pipe()
                    .cmd("ZCARD")
                    .arg(&key)
                    .cmd("ZCOUNT")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now.0)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                Ok(TimerCounts { armed, overdue })
            })
            .await
        }
        .boxed()
    }

    fn scan_snapshots(
        &self,
        cursor: u64,
        count: usize,
    ) -> BoxFuture<'static, Result<ScanPage<StoredSnapshot>, StoreError>> {
        let mut connection = self.connection(0);
        let pattern = format!("{}:{{*}}:order:*", self.prefix);
        let prefix = Arc::clone(&self.prefix);
        let timeout_ms = self.command_timeout_ms;
        async move {
            with_timeout(timeout_ms, async {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(count.max(1))
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                let mut page = Vec::with_capacity(keys.len());
                for key in keys {
                    let Some((shard, order_id)) = parse_order_key(&prefix, &key) else {
                        continue;
                    };
                    // Loaded one by one through `load`'s logic, so old-layout hashes read too.
                    let loaded: Result<Option<Vec<u8>>, redis::RedisError> = redis::cmd("GET")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await;
                    let bytes = match loaded {
                        Ok(bytes) => bytes,
                        Err(error) if error.code() == Some("WRONGTYPE") => redis::cmd("HGET")
                            .arg(&key)
                            .arg("s")
                            .query_async(&mut connection)
                            .await
                            .map_err(unavailable)?,
                        Err(error) => return Err(unavailable(error)),
                    };
                    if let Some(bytes) = bytes {
                        page.push(StoredSnapshot {
                            shard,
                            order_id,
                            bytes,
                        });
                    }
                }
                Ok((next, page))
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
