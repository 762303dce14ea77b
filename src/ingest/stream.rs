//! The Redis Stream consumer loop.
//!
//! One step of the loop takes at most `batch_size` entries from one source, in this order of
//! preference:
//! 1. this consumer's own pending entries (`XREADGROUP … 0`): left by a previous process with
//!    the same consumer name, or left by this one after a retryable failure;
//! 2. entries pending longer than `claim_idle_ms` on any consumer (`XAUTOCLAIM`): those of a
//!    consumer that died; a scan runs at start and then every few seconds;
//! 3. new entries (`XREADGROUP … >`, blocking at most `block_ms`). After a read of new entries
//!    that filled less than half a batch, the next one waits `linger_ms` first: a placement's
//!    share of the engine's commit write (its cost to Redis is per shard written and per
//!    call) shrinks as the batch grows, so a few milliseconds of latency buy capacity.
//!
//! The batch goes to the engine in one `execute_batch` call with [`Admission::Wait`], and the
//! next batch is read only after it has been answered, so a saturated engine slows the reading
//! instead of growing a queue. Entries whose order is durable are acknowledged; invalid ones
//! are copied to the dead-letter stream first; entries that failed for a retryable reason
//! (store unavailable, overload, conflict) stay pending and are read again after a bounded
//! back-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::sync::watch;

use super::entry::{
    decode, parse_autoclaim_reply, parse_read_reply, DeadLetter, Decoded, Placement, StreamEntry,
    ORDER_FIELD,
};
use super::{Counters, IngestError, IngestHandle, IngestStats};
use crate::config::IngestSettings;
use crate::domain::Rejection;
use crate::engine::{Admission, BatchItem, CommandResult, Engine, EngineError, Request};
use crate::telemetry;

/// Largest accepted `ingest.batch_size`; the engine's own commit batches are at most 10,000.
const BATCH_SIZE_MAX: usize = 10_000;
/// Largest accepted `ingest.block_ms`: a stop request waits at most this long on a quiet
/// stream when the read cannot be abandoned.
const BLOCK_MS_MAX: u64 = 60_000;
/// Largest accepted `ingest.linger_ms`: it adds to the latency of every placement at low rates.
const LINGER_MS_MAX: u64 = 1_000;
/// How often the consumer group's lag is read.
const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Budget of one non-blocking Redis call (XACK, XADD, XAUTOCLAIM, XGROUP).
const REDIS_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for connecting to Redis at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for the engine to answer one batch. With `Admission::Wait` a saturated engine may
/// hold a batch for a while; past this the whole batch is treated as retryable (it stays
/// pending, and a re-delivery is recognised as a duplicate).
const ENGINE_BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// First pause after a retryable failure; doubled on each consecutive failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause after consecutive retryable failures.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Shortest and longest interval between scans for entries abandoned by dead consumers
/// (half of `claim_idle_ms` within these bounds): an abandoned entry waits at most about
/// `claim_idle_ms` plus this before it is reclaimed.
const RECLAIM_INTERVAL_MIN: Duration = Duration::from_millis(50);
const RECLAIM_INTERVAL_MAX: Duration = Duration::from_secs(5);
/// Approximate cap of the dead-letter stream.
const DEAD_LETTER_MAXLEN: u64 = 100_000;
/// An entry whose placement hits an internal engine error (a caught panic) this many times in
/// a row is dead-lettered, so one poison entry cannot stall the consumer forever.
const INTERNAL_ATTEMPTS_MAX: u32 = 3;
/// Most entries whose internal-error attempts are remembered; the map is cleared beyond it.
const INTERNAL_TRACKED_MAX: usize = 10_000;

/// Consumes orders from a Redis Stream through a consumer group and places them in the
/// engine; see the [module docs](super) for the delivery guarantees.
pub struct StreamConsumer {
    engine: Engine,
    connection: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    dead_letter_stream: String,
    batch_size: usize,
    block_ms: u64,
    linger: Duration,
    /// Whether the last read of new entries filled less than half a batch.
    last_read_small: bool,
    claim_idle_ms: u64,
    reclaim_interval: Duration,
    stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
    /// Where to continue reading this consumer's own pending entries; `None` once they are
    /// all handled.
    own_pending_after: Option<String>,
    /// The XAUTOCLAIM cursor of a scan in progress.
    reclaim_cursor: Option<String>,
    next_reclaim_at: Instant,
    backoff: Duration,
    internal_attempts: HashMap<String, u32>,
}

/// Why one step of the loop failed (it is retried after a back-off).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Shape(#[from] super::entry::ReplyShapeError),
}

impl StepError {
    /// The stream or the group was deleted under us; the group must be created again.
    fn is_missing_group(&self) -> bool {
        matches!(self, StepError::Redis(e) if e.code() == Some("NOGROUP"))
    }
}

/// What became of one entry of a batch.
#[derive(Debug, Clone)]
enum Verdict {
    Accepted,
    Duplicate,
    DeadLetter(DeadLetter),
    /// Deleted from the stream while pending: acknowledge only.
    Gone,
    /// An internal engine error: retried a bounded number of times.
    Internal(String),
    Retry,
}

fn invalid(field: &'static str, message: impl Into<String>) -> IngestError {
    IngestError::InvalidSettings {
        field,
        message: message.into(),
    }
}

fn validate(settings: &IngestSettings) -> Result<(), IngestError> {
    if settings.batch_size == 0 || settings.batch_size > BATCH_SIZE_MAX {
        return Err(invalid(
            "batch_size",
            format!("must be 1..={BATCH_SIZE_MAX}"),
        ));
    }
    // BLOCK 0 would block forever, and then the loop could never notice a stop request.
    if settings.block_ms == 0 || settings.block_ms > BLOCK_MS_MAX {
        return Err(invalid("block_ms", format!("must be 1..={BLOCK_MS_MAX}")));
    }
    if settings.linger_ms > LINGER_MS_MAX {
        return Err(invalid("linger_ms", format!("must be 0..={LINGER_MS_MAX}")));
    }
    if settings.claim_idle_ms == 0 {
        return Err(invalid("claim_idle_ms", "must be at least 1"));
    }
    for (field, value) in [
        ("stream", &settings.stream),
        ("group", &settings.group),
        ("consumer", &settings.consumer),
        ("dead_letter_stream", &settings.dead_letter_stream),
    ] {
        if value.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
    }
    if settings.dead_letter_stream == settings.stream {
        return Err(invalid(
            "dead_letter_stream",
            "must differ from `ingest.stream`, or dead letters would be read back as orders",
        ));
    }
    Ok(())
}

async fn bounded<T>(
    budget: Duration,
    work: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(budget, work).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StepError::Timeout(budget)),
    }
}

/// Resolves once a stop is requested or the handle is dropped.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // `wait_for` fails only when the sender (the handle) is gone, which also means "stop".
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn create_group(
    connection: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<(), StepError> {
    let result: Result<Value, StepError> = bounded(
        REDIS_CALL_TIMEOUT,
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(connection),
    )
    .await;
    match result {
        Ok(_) => Ok(()),
        // Another consumer (or an earlier run) created it: exactly what we want.
        Err(StepError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

impl StreamConsumer {
    /// Connects to the stream's Redis at `url`, creates the consumer group if needed
    /// (`XGROUP CREATE … 0 MKSTREAM`: a new group starts from the beginning of the stream),
    /// and starts consuming on the current actix arbiter. Must be called inside an actix
    /// `System`. Fails at once when a setting is out of bounds or Redis cannot be reached;
    /// after that, Redis outages are ridden out with a bounded back-off.
    pub async fn start(
        engine: Engine,
        settings: &IngestSettings,
        url: &str,
    ) -> Result<IngestHandle, IngestError> {
        validate(settings)?;
        let redis_error = |message: String| IngestError::Redis {
            url: url.to_string(),
            message,
        };
        let client = redis::Client::open(url).map_err(|e| redis_error(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            // A blocking read legitimately takes `block_ms`; our own per-call budgets are the
            // real bounds, so the client's must be longer than all of them.
            .set_response_timeout(Duration::from_millis(settings.block_ms) + REDIS_CALL_TIMEOUT * 2)
            .set_number_of_retries(2)
            .set_max_delay(500);
        // A dedicated connection: a blocking XREADGROUP would stall every other user of a
        // shared multiplexed connection for up to `block_ms`.
        let mut connection = match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => return Err(redis_error(e.to_string())),
            Err(_) => {
                return Err(redis_error(format!(
                    "no connection within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        create_group(&mut connection, &settings.stream, &settings.group)
            .await
            .map_err(|e| redis_error(e.to_string()))?;
        telemetry::describe_ingest();

        let (stop_tx, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let reclaim_interval = (Duration::from_millis(settings.claim_idle_ms) / 2)
            .clamp(RECLAIM_INTERVAL_MIN, RECLAIM_INTERVAL_MAX);
        let consumer = StreamConsumer {
            engine,
            connection,
            stream: settings.stream.clone(),
            group: settings.group.clone(),
            consumer: settings.consumer.clone(),
            dead_letter_stream: settings.dead_letter_stream.clone(),
            batch_size: settings.batch_size,
            block_ms: settings.block_ms,
            linger: Duration::from_millis(settings.linger_ms),
            last_read_small: false,
            claim_idle_ms: settings.claim_idle_ms,
            reclaim_interval,
            stop: stop_rx,
            counters: Arc::clone(&counters),
            // Start with what a previous process of the same name left pending.
            own_pending_after: Some("0".to_string()),
            reclaim_cursor: None,
            next_reclaim_at: Instant::now(),
            backoff: Duration::ZERO,
            internal_attempts: HashMap::new(),
        };
        tracing::info!(
            stream = %settings.stream,
            group = %settings.group,
            consumer = %settings.consumer,
            "stream ingestion started"
        );
        let task = actix_rt::spawn(consumer.run());
        Ok(IngestHandle {
            stop: stop_tx,
            task,
            counters,
        })
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn run(mut self) {
        let mut next_lag_sample = Instant::now();
        while !self.stopping() {
            if Instant::now() >= next_lag_sample {
                next_lag_sample = Instant::now() + LAG_SAMPLE_INTERVAL;
                self.sample_lag().await;
            }
            let span = tracing::debug_span!("ingest_batch", stream = %self.stream);
            match self.step().instrument(span).await {
                Ok(retry) if retry => self.back_off().await,
                Ok(_) => self.backoff = Duration::ZERO,
                Err(error) => {
                    tracing::warn!(stream = %self.stream, %error, "stream ingestion step failed");
                    if error.is_missing_group() {
                        if let Err(error) =
                            create_group(&mut self.connection, &self.stream, &self.group).await
                        {
                            tracing::warn!(%error, "cannot re-create the consumer group");
                        }
                    }
                    self.back_off().await;
                }
            }
        }
        tracing::info!(stream = %self.stream, consumer = %self.consumer, "stream ingestion stopped");
    }

    /// Sleeps for the next back-off period, or less if a stop is requested.
    async fn back_off(&mut self) {
        self.backoff = (self.backoff * 2).clamp(BACKOFF_INITIAL, BACKOFF_MAX);
        let pause = self.backoff;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop_requested(&mut self.stop) => {}
        }
    }

    /// Reads and handles one batch. Returns whether some entry was left for a retry.
    async fn step(&mut self) -> Result<bool, StepError> {
        let entries = if let Some(after) = self.own_pending_after.clone() {
            let entries = self.read_own_pending(&after).await?;
            self.own_pending_after = entries.last().map(|e| e.id.clone());
            entries
        } else if self.reclaim_cursor.is_some() || Instant::now() >= self.next_reclaim_at {
            let cursor = self.reclaim_cursor.take().unwrap_or_else(|| "0-0".into());
            let (next, entries) = self.reclaim(&cursor).await?;
            if next == "0-0" {
                self.next_reclaim_at = Instant::now() + self.reclaim_interval;
            } else {
                self.reclaim_cursor = Some(next);
            }
            entries
        } else {
            if self.last_read_small && !self.linger.is_zero() {
                telemetry::record_ingest_linger();
                tokio::select! {
                    _ = tokio::time::sleep(self.linger) => {}
                    _ = stop_requested(&mut self.stop) => return Ok(false),
                }
            }
            match self.read_new().await? {
                Some(entries) => {
                    self.last_read_small = entries.len() < self.batch_size.div_ceil(2);
                    entries
                }
                None => return Ok(false),
            }
        };
        if entries.is_empty() {
            return Ok(false);
        }
        let batch = self.handle(entries).await?;
        self.counters.add(&batch);
        if batch.retry > 0 {
            // Read our pending entries again from the start after the back-off.
            self.own_pending_after = Some("0".to_string());
        }
        Ok(batch.retry > 0)
    }

    async fn read_own_pending(&mut self, after: &str) -> Result<Vec<StreamEntry>, StepError> {
        let reply: Value = bounded(
            REDIS_CALL_TIMEOUT,
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(self.batch_size)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(after)
                .query_async(&mut self.connection),
        )
        .await?;
        Ok(parse_read_reply(&reply)?)
    }

    async fn reclaim(&mut self, cursor: &str) -> Result<(String, Vec<StreamEntry>), StepError> {
        let reply: Value = bounded(
            REDIS_CALL_TIMEOUT,
            redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_idle_ms)
                .arg(cursor)
                .arg("COUNT")
                .arg(self.batch_size)
                .query_async(&mut self.connection),
        )
        .await?;
        let (next, entries) = parse_autoclaim_reply(&reply)?;
        if !entries.is_empty() {
            tracing::info!(
                stream = %self.stream,
                count = entries.len(),
                "reclaimed entries abandoned by another consumer"
            );
        }
        Ok((next, entries))
    }

    /// Reads new entries, blocking at most `block_ms`. `None` when a stop was requested while
    /// waiting: the read is abandoned, and anything Redis delivered to it stays pending for
    /// this consumer name.
    async fn read_new(&mut self) -> Result<Option<Vec<StreamEntry>>, StepError> {
        let budget = Duration::from_millis(self.block_ms) + REDIS_CALL_TIMEOUT;
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.batch_size)
            .arg("BLOCK")
            .arg(self.block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">");
        let read = bounded(budget, command.query_async::<Value>(&mut connection));
        tokio::select! {
            reply = read => Ok(Some(parse_read_reply(&reply?)?)),
            _ = stop_requested(&mut self.stop) => Ok(None),
        }
    }

    /// Places a batch, dead-letters what is invalid and acknowledges what is settled.
    async fn handle(&mut self, entries: Vec<StreamEntry>) -> Result<IngestStats, StepError> {
        let started = Instant::now();
        let decoded: Vec<Decoded> = entries.iter().map(|e| decode(&self.stream, e)).collect();
        let mut verdicts: Vec<Verdict> = decoded
            .iter()
            .map(|d| match d {
                Decoded::Place(_) => Verdict::Retry,
                Decoded::Invalid(dead) => Verdict::DeadLetter(dead.clone()),
                Decoded::Gone => Verdict::Gone,
            })
            .collect();

        let placements: Vec<(usize, &Placement)> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match d {
                Decoded::Place(p) => Some((i, p)),
                _ => None,
            })
            .collect();
        let items = placements
            .iter()
            .map(|(_, p)| BatchItem::existing(p.order_id, Request::Command(p.envelope())))
            .collect();
        // On timeout every placement keeps its `Retry` verdict.
        if let Some(results) = self.execute(items).await {
            for ((i, _), result) in placements.iter().zip(results) {
                verdicts[*i] = classify_placement(&result);
            }
        }
        self.limit_internal_retries(&entries, &mut verdicts);

        let mut batch = IngestStats {
            batches: 1,
            ..IngestStats::default()
        };
        let dead: Vec<(&StreamEntry, &DeadLetter)> = entries
            .iter()
            .zip(&verdicts)
            .filter_map(|(e, v)| match v {
                Verdict::DeadLetter(dead) => Some((e, dead)),
                _ => None,
            })
            .collect();
        // Dead letters must be stored before their entries are acknowledged; if they cannot
        // be, those entries stay pending like any other retryable failure.
        let dead_stored = dead.is_empty() || self.write_dead_letters(&dead).await.is_ok();
        let mut ack_ids: Vec<&str> = Vec::with_capacity(entries.len());
        for (entry, verdict) in entries.iter().zip(&verdicts) {
            match verdict {
                Verdict::Accepted => batch.accepted += 1,
                Verdict::Duplicate => batch.duplicate += 1,
                Verdict::DeadLetter(_) if dead_stored => batch.dead_lettered += 1,
                Verdict::Gone => {}
                Verdict::DeadLetter(_) | Verdict::Internal(_) | Verdict::Retry => {
                    batch.retry += 1;
                    continue;
                }
            }
            ack_ids.push(&entry.id);
        }
        if !ack_ids.is_empty() {
            if let Err(error) = self.acknowledge(&ack_ids).await {
                // The orders are durable; unacknowledged entries are simply delivered again and
                // recognised as duplicates.
                tracing::warn!(stream = %self.stream, %error, "XACK failed; entries stay pending");
                batch.retry += batch.accepted + batch.duplicate + batch.dead_lettered;
                batch.accepted = 0;
                batch.duplicate = 0;
                batch.dead_lettered = 0;
            }
        }
        telemetry::record_ingest_batch(
            entries.len() as u64,
            batch.accepted + batch.duplicate + batch.dead_lettered,
            [
                ("accepted", batch.accepted),
                ("duplicate", batch.duplicate),
                ("dead_lettered", batch.dead_lettered),
                ("retry", batch.retry),
            ],
            started.elapsed().as_secs_f64(),
        );
        Ok(batch)
    }

    async fn execute(&self, items: Vec<BatchItem>) -> Option<Vec<CommandResult>> {
        if items.is_empty() {
            return Some(Vec::new());
        }
        let call = self.engine.execute_batch(items, Admission::Wait);
        match tokio::time::timeout(ENGINE_BATCH_TIMEOUT, call).await {
            Ok(results) => Some(results),
            Err(_) => {
                tracing::warn!(
                    stream = %self.stream,
                    "engine did not answer a batch within {ENGINE_BATCH_TIMEOUT:?}; retrying it"
                );
                None
            }
        }
    }

    /// Turns the internal errors of entries that already failed that way too often into dead
    /// letters, and the others into plain retries.
    fn limit_internal_retries(&mut self, entries: &[StreamEntry], verdicts: &mut [Verdict]) {
        for (entry, verdict) in entries.iter().zip(verdicts.iter_mut()) {
            match verdict {
                Verdict::Internal(message) => {
                    if self.internal_attempts.len() >= INTERNAL_TRACKED_MAX {
                        self.internal_attempts.clear();
                    }
                    let attempts = self.internal_attempts.entry(entry.id.clone()).or_insert(0);
                    *attempts += 1;
                    if *attempts >= INTERNAL_ATTEMPTS_MAX {
                        let message = format!(
                            "internal engine error on {INTERNAL_ATTEMPTS_MAX} attempts: {message}"
                        );
                        self.internal_attempts.remove(&entry.id);
                        *verdict = Verdict::DeadLetter(DeadLetter::new("internal_error", message));
                    } else {
                        *verdict = Verdict::Retry;
                    }
                }
                Verdict::Retry => {}
                _ => {
                    if !self.internal_attempts.is_empty() {
                        self.internal_attempts.remove(&entry.id);
                    }
                }
            }
        }
    }

    async fn write_dead_letters(
        &mut self,
        dead: &[(&StreamEntry, &DeadLetter)],
    ) -> Result<(), StepError> {
        let mut pipe = redis::pipe();
        for (entry, letter) in dead {
            pipe.cmd("XADD")
                .arg(&self.dead_letter_stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTER_MAXLEN)
                .arg("*")
                .arg("entry")
                .arg(&entry.id)
                .arg("reason")
                .arg(letter.reason)
                .arg("message")
                .arg(&letter.message)
                .arg(ORDER_FIELD)
                .arg(entry.raw_order())
                .ignore();
        }
        let result: Result<(), StepError> =
            bounded(REDIS_CALL_TIMEOUT, pipe.query_async(&mut self.connection)).await;
        if let Err(error) = &result {
            tracing::warn!(stream = %self.dead_letter_stream, %error, "cannot store dead letters");
        }
        result
    }

    /// Reads the consumer group's lag (entries added but not yet delivered to it; Redis 7
    /// reports it in `XINFO GROUPS`) into its gauge. A failure leaves the last value.
    async fn sample_lag(&mut self) {
        let groups: Result<Vec<std::collections::HashMap<String, redis::Value>>, StepError> =
            bounded(
                REDIS_CALL_TIMEOUT,
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&self.stream)
                    .query_async(&mut self.connection),
            )
            .await;
        let lag = groups.ok().and_then(|groups| {
            let group = groups.into_iter().find(|g| {
                g.get("name")
                    .and_then(|v| redis::from_redis_value::<String>(v).ok())
                    .is_some_and(|name| name == self.group)
            })?;
            redis::from_redis_value::<i64>(group.get("lag")?).ok()
        });
        if let Some(lag) = lag {
            telemetry::record_ingest_lag(lag.max(0) as u64);
        }
    }

    async fn acknowledge(&mut self, ids: &[&str]) -> Result<(), StepError> {
        let _: i64 = bounded(
            REDIS_CALL_TIMEOUT,
            redis::cmd("XACK")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(ids)
                .query_async(&mut self.connection),
        )
        .await?;
        Ok(())
    }
}

fn reused_key() -> Verdict {
    Verdict::DeadLetter(DeadLetter::new(
        "idempotency_key_reused",
        "an order with this key (or entry id) exists with different content",
    ))
}

/// Decides what the engine's answer to a placement means for the entry. The order recognises a
/// re-delivery itself: the same content is a duplicate (however long ago it was placed), other
/// content under the same derived id is refused as `OrderAlreadyExists`.
fn classify_placement(result: &CommandResult) -> Verdict {
    match result {
        Ok(outcome) if outcome.duplicate => Verdict::Duplicate,
        Ok(_) => Verdict::Accepted,
        Err(EngineError::Rejected(Rejection::OrderAlreadyExists(_))) => reused_key(),
        Err(EngineError::Rejected(rejection)) => {
            Verdict::DeadLetter(DeadLetter::new(rejection.code(), rejection.to_string()))
        }
        Err(EngineError::Internal(message)) => Verdict::Internal(message.clone()),
        Err(EngineError::Store(_))
        | Err(EngineError::Conflict(_))
        | Err(EngineError::Overloaded)
        | Err(EngineError::ShardUnavailable(_))
        | Err(EngineError::Stopped) => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> IngestSettings {
        Settings::embedded_default()
            .map(|s| s.ingest)
            .unwrap_or_else(|e| panic!("embedded settings: {e}"))
    }

    #[test]
    fn the_embedded_settings_are_valid() {
        assert!(validate(&settings()).is_ok());
    }

    #[test]
    fn unbounded_or_ambiguous_settings_are_refused() {
        let mut s = settings();
        s.block_ms = 0;
        assert!(matches!(
            validate(&s),
            Err(IngestError::InvalidSettings {
                field: "block_ms",
                ..
            })
        ));
        let mut s = settings();
        s.batch_size = 0;
        assert!(validate(&s).is_err());
        let mut s = settings();
        s.dead_letter_stream = s.stream.clone();
        assert!(validate(&s).is_err());
        let mut s = settings();
        s.consumer.clear();
        assert!(validate(&s).is_err());
        let mut s = settings();
        s.linger_ms = LINGER_MS_MAX + 1;
        assert!(matches!(
            validate(&s),
            Err(IngestError::InvalidSettings {
                field: "linger_ms",
                ..
            })
        ));
        s.linger_ms = 0;
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn retryable_engine_errors_are_not_acknowledged() {
        for error in [
            EngineError::Overloaded,
            EngineError::Stopped,
            EngineError::Conflict(crate::domain::OrderId::new()),
            EngineError::Store(crate::store::StoreError::Timeout(5)),
        ] {
            assert!(matches!(classify_placement(&Err(error)), Verdict::Retry));
        }
    }

    #[test]
    fn reused_ids_and_other_rejections_are_dead_lettered() {
        let id = crate::domain::OrderId::new();
        let exists = Err(EngineError::Rejected(Rejection::OrderAlreadyExists(id)));
        match classify_placement(&exists) {
            Verdict::DeadLetter(dead) => assert_eq!(dead.reason, "idempotency_key_reused"),
            other => panic!("expected a dead letter, got {other:?}"),
        }
        let out_of_range = Err(EngineError::Rejected(Rejection::AmountOutOfRange));
        match classify_placement(&out_of_range) {
            Verdict::DeadLetter(dead) => assert_eq!(dead.reason, "amount_out_of_range"),
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }
}
