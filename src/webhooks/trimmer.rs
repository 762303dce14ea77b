//! The outbox trimmer: a periodic task that removes, per shard stream, only the entries every
//! consumer group has acknowledged (`XTRIM MINID`), never per write and never anything unread.
//!
//! For each shard stream: `XINFO GROUPS`; no group → nothing is trimmed (nobody has read
//! anything; the cap and the overflow stream protect Redis). Otherwise the threshold is the
//! smallest, over the groups, of the oldest pending entry (`XPENDING` summary) or, for a group
//! with nothing pending, the entry right after its last delivered one. Entries below it were
//! delivered to and acknowledged by every group. A group only moves forward, so a threshold
//! computed a moment ago is still safe when several nodes trim the same stream.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::watch;

use super::stream::{parse_groups, parse_id};
use crate::clock::SharedClock;
use crate::store::redis::RedisStore;
use crate::telemetry;

/// Longest wait for one Redis call of the trimmer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The threshold below which every group acknowledged every entry of `key`, if any group
/// exists.
pub async fn safe_min_id(
    connection: &mut ConnectionManager,
    key: &str,
) -> Result<Option<(u64, u64)>, redis::RedisError> {
    let groups: Value = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(connection)
        .await
    {
        Ok(groups) => groups,
        // No stream yet.
        Err(error) if error.to_string().contains("no such key") => return Ok(None),
        Err(error) => return Err(error),
    };
    let groups = parse_groups(&groups);
    let mut threshold: Option<(u64, u64)> = None;
    for group in groups {
        let candidate = if group.pending > 0 {
            let summary: Value = redis::cmd("XPENDING")
                .arg(key)
                .arg(&group.name)
                .query_async(connection)
                .await?;
            let oldest = match &summary {
                Value::Array(items) => items.get(1).and_then(|v| match v {
                    Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(parse_id),
                    Value::SimpleString(s) => parse_id(s),
                    _ => None,
                }),
                _ => None,
            };
            // Unreadable: keep everything.
            oldest.unwrap_or((0, 0))
        } else {
            match parse_id(&group.last_delivered) {
                Some((ms, seq)) if seq == u64::MAX => (ms + 1, 0),
                Some((ms, seq)) => (ms, seq + 1),
                None => (0, 0),
            }
        };
        threshold = Some(threshold.map_or(candidate, |t| t.min(candidate)));
    }
    Ok(threshold)
}

/// Trims one shard stream down to what some group still needs; answers entries removed.
pub async fn trim_shard(
    connection: &mut ConnectionManager,
    key: &str,
) -> Result<u64, redis::RedisError> {
    let Some((ms, seq)) = safe_min_id(connection, key).await? else {
        return Ok(0);
    };
    if (ms, seq) <= (0, 1) {
        return Ok(0);
    }
    // Exact (no `~`): the trimmer runs every few seconds, not per write, so the cost of
    // splitting a node is negligible, and what stays is exactly what some group still needs.
    let removed: i64 = redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(connection)
        .await?;
    Ok(removed.max(0) as u64)
}

/// Runs the trimmer over `shards` every `interval` until `stop`.
pub(crate) async fn run(
    mut connection: ConnectionManager,
    prefix: String,
    shards: u32,
    interval: Duration,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = clock.sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let mut removed = 0;
        for shard in 0..shards {
            let key = RedisStore::events_key(&prefix, shard);
            match tokio::time::timeout(CALL_TIMEOUT, trim_shard(&mut connection, &key)).await {
                Ok(Ok(n)) => removed += n,
                Ok(Err(error)) => {
                    tracing::warn!(shard, %error, "outbox trim failed");
                    break;
                }
                Err(_) => {
                    tracing::warn!(shard, "outbox trim timed out");
                    break;
                }
            }
            if *stop.borrow() {
                return;
            }
        }
        if removed > 0 {
            telemetry::record_outbox_trimmed(removed);
        }
    }
}
