//! `orderly events`: prints the outbox as NDJSON, one event per line, for people and scripts.
//! It reads each shard stream with plain `XREAD` / `XRANGE` (no consumer group), so it never
//! takes events from the webhook workers and never holds back trimming.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use redis::Value;

use super::CommonArgs;
use crate::store::redis::RedisStore;
use crate::webhooks::stream::{parse_entries, parse_read};

/// Arguments of `events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events as they are appended (until interrupted).
    #[arg(long)]
    pub follow: bool,
    /// With `--follow`: print what the outbox already holds first (default: only new events).
    #[arg(long)]
    pub from_start: bool,
    /// Pause between polls while following.
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub poll_ms: u64,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Entries read per shard per call.
const PAGE: usize = 512;

/// Runs `events`.
pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let settings = args.common.settings()?;
    if !settings.store.url.starts_with("redis://") {
        anyhow::bail!("`orderly events` reads the Redis outbox: pass --store redis://…");
    }
    let client = redis::Client::open(settings.store.url.as_str())?;
    let mut connection = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting to Redis timed out")?
    .with_context(|| format!("connecting to {}", settings.store.url))?;
    let prefix = &settings.store.redis.key_prefix;
    let keys: Vec<String> = (0..settings.engine.shards)
        .map(|s| RedisStore::events_key(prefix, s))
        .collect();
    // Where each shard's reading starts: the beginning, or (following new events only) the
    // last entry there now.
    let mut last: Vec<String> = vec!["0-0".to_string(); keys.len()];
    if args.follow && !args.from_start {
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Value> = pipe.query_async(&mut connection).await?;
        for (i, reply) in replies.iter().enumerate() {
            if let Some(entry) = parse_entries(reply).pop() {
                last[i] = entry.id;
            }
        }
    }
    let stdout = std::io::stdout();
    loop {
        let mut pipe = redis::pipe();
        for (key, from) in keys.iter().zip(&last) {
            pipe.cmd("XREAD")
                .arg("COUNT")
                .arg(PAGE)
                .arg("STREAMS")
                .arg(key)
                .arg(from);
        }
        let replies: Vec<Value> = pipe.query_async(&mut connection).await?;
        let mut printed = 0;
        {
            let mut out = std::io::BufWriter::new(stdout.lock());
            for (i, reply) in replies.iter().enumerate() {
                for entry in parse_read(reply) {
                    for line in entry.lines() {
                        out.write_all(&line)?;
                        out.write_all(b"\n")?;
                        printed += 1;
                    }
                    last[i] = entry.id;
                }
            }
            match out.flush() {
                Ok(()) => {}
                // The reader went away (`| head`): done.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        }
        if printed == 0 {
            if !args.follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        }
    }
}
