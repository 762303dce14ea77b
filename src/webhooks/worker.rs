//! One receiver's delivery task (see the module docs of [`super`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use redis::aio::ConnectionManager;
use redis::Value;
use tokio::sync::watch;

use super::stream::{parse_autoclaim, parse_groups, parse_read, Entry};
use crate::clock::SharedClock;
use crate::config::{WebhookReceiver, WebhookSettings};
use crate::store::outbox::{event_id, event_type};
use crate::store::redis::RedisStore;
use crate::store::StoreError;
use crate::telemetry::{DeliveryOutcome, WebhookMetrics};

/// Longest wait for one Redis call of a worker.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the backlog gauge and the disabled flag are refreshed.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Pause after a Redis failure.
const REDIS_BACKOFF: Duration = Duration::from_millis(500);

/// How one event ended for this receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    /// Delivered, dead-lettered, or filtered out: its entry may be acknowledged.
    Done,
    /// The receiver is gone (410): the entry stays pending.
    Gone,
    /// The worker is stopping: the entry stays pending.
    Stopped,
}

pub(super) struct Worker {
    name: String,
    url: String,
    secret: Vec<u8>,
    filter: Vec<String>,
    group: String,
    dead_key: String,
    disabled_key: String,
    streams: Vec<String>,
    consumer: Arc<str>,
    settings: WebhookSettings,
    connection: ConnectionManager,
    http: reqwest::Client,
    clock: SharedClock,
    stop: watch::Receiver<bool>,
    metrics: WebhookMetrics,
    /// Per shard: still re-reading this consumer's own pending entries (from `0`).
    own_pending: Vec<bool>,
    /// Per shard: the XAUTOCLAIM cursor.
    claim_cursor: Vec<String>,
    /// Set by a 410: deliveries in flight stop trying.
    gone: AtomicBool,
}

fn redis_error(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        receiver: &WebhookReceiver,
        settings: &WebhookSettings,
        prefix: String,
        shards: u32,
        consumer: Arc<str>,
        connection: ConnectionManager,
        clock: SharedClock,
        stop: watch::Receiver<bool>,
    ) -> Result<Worker, StoreError> {
        let name = receiver.effective_name();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .pool_max_idle_per_host(settings.concurrency_max)
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Worker {
            group: super::group_name(&name),
            dead_key: super::dead_letter_key(&prefix, &name),
            disabled_key: super::disabled_key(&prefix, &name),
            streams: (0..shards)
                .map(|s| RedisStore::events_key(&prefix, s))
                .collect(),
            metrics: WebhookMetrics::new(&name),
            name,
            url: receiver.url.clone(),
            secret: receiver.secret.as_bytes().to_vec(),
            filter: receiver.events.clone(),
            consumer,
            settings: settings.clone(),
            connection,
            http,
            clock,
            stop,
            own_pending: vec![true; shards as usize],
            claim_cursor: vec!["0-0".to_string(); shards as usize],
            gone: AtomicBool::new(false),
        })
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn pause(&mut self, duration: Duration) {
        let sleep = self.clock.sleep(duration);
        tokio::select! {
            _ = sleep => {}
            _ = self.stop.wait_for(|s| *s) => {}
        }
    }

    /// Creates the group on every shard stream (from the start of what is there).
    async fn create_groups(&mut self) -> Result<(), StoreError> {
        for key in &self.streams {
            let created: Result<Value, _> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.connection)
                .await;
            match created {
                Ok(_) => {}
                Err(error) if error.code() == Some("BUSYGROUP") => {}
                Err(error) => return Err(redis_error(error)),
            }
        }
        Ok(())
    }

    pub(super) async fn run(mut self) {
        while !self.stopping() {
            match self.create_groups().await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(receiver = %self.name, %error, "cannot create webhook groups");
                    self.pause(REDIS_BACKOFF).await;
                }
            }
        }
        // Business time: every wait of the worker is on its clock.
        let claim_every = (self.settings.claim_idle_ms / 2).max(100) as i64;
        let refresh_every = REFRESH_INTERVAL.as_millis() as i64;
        let mut next_claim = self.clock.now();
        let mut next_refresh = self.clock.now();
        let mut disabled = false;
        while !self.stopping() {
            if self.clock.now() >= next_refresh {
                next_refresh = self.clock.now().plus_ms(refresh_every);
                match self.refresh().await {
                    Ok(now_disabled) => {
                        if disabled && !now_disabled {
                            tracing::info!(receiver = %self.name, "webhook receiver enabled again");
                            // Re-read what was left pending while disabled.
                            self.own_pending.iter_mut().for_each(|p| *p = true);
                            self.gone.store(false, Ordering::Relaxed);
                        }
                        disabled = now_disabled;
                    }
                    Err(error) => {
                        tracing::warn!(receiver = %self.name, %error, "webhook refresh failed");
                        self.pause(REDIS_BACKOFF).await;
                        continue;
                    }
                }
            }
            if disabled {
                let wait = (next_refresh.0 - self.clock.now().0).max(10) as u64;
                self.pause(Duration::from_millis(wait)).await;
                continue;
            }
            let read = if self.clock.now() >= next_claim {
                next_claim = self.clock.now().plus_ms(claim_every);
                self.claim().await
            } else {
                Ok(Vec::new())
            };
            let read = match read {
                Ok(mut claimed) => match self.read().await {
                    Ok(entries) => {
                        claimed.extend(entries);
                        Ok(claimed)
                    }
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            match read {
                Ok(entries) if entries.is_empty() => {
                    self.pause(Duration::from_millis(self.settings.poll_interval_ms))
                        .await;
                }
                Ok(entries) => {
                    if let Err(error) = self.process(entries).await {
                        tracing::warn!(receiver = %self.name, %error, "webhook acknowledgement failed");
                        self.pause(REDIS_BACKOFF).await;
                    }
                    // A 410 may have disabled the receiver: look at once.
                    next_refresh = self.clock.now();
                }
                Err(error) => {
                    tracing::warn!(receiver = %self.name, %error, "webhook read failed");
                    self.pause(REDIS_BACKOFF).await;
                }
            }
        }
    }

    /// Reads the disabled flag and the backlog (lag + pending of the group over shards).
    async fn refresh(&mut self) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(&self.disabled_key);
        for key in &self.streams {
            pipe.cmd("XINFO").arg("GROUPS").arg(key);
        }
        let replies: Vec<Value> = bounded(pipe.query_async(&mut self.connection)).await?;
        let disabled = matches!(replies.first(), Some(Value::Int(n)) if *n > 0);
        let backlog: u64 = replies
            .iter()
            .skip(1)
            .flat_map(parse_groups)
            .filter(|g| g.name == self.group)
            .map(|g| g.pending + g.lag.unwrap_or(0))
            .sum();
        self.metrics.backlog(backlog);
        self.metrics.disabled(disabled);
        Ok(disabled)
    }

    /// New entries (and, after a start, this consumer's own pending ones) of every shard.
    async fn read(&mut self) -> Result<Vec<(usize, Entry)>, StoreError> {
        let mut pipe = redis::pipe();
        for (shard, key) in self.streams.iter().enumerate() {
            let from = if self.own_pending[shard] { "0" } else { ">" };
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&*self.consumer)
                .arg("COUNT")
                .arg(self.settings.batch_size)
                .arg("STREAMS")
                .arg(key)
                .arg(from);
        }
        let replies: Vec<Value> = bounded(pipe.query_async(&mut self.connection)).await?;
        let mut entries = Vec::new();
        for (shard, reply) in replies.iter().enumerate() {
            let read = parse_read(reply);
            if self.own_pending[shard] && read.is_empty() {
                self.own_pending[shard] = false;
            }
            entries.extend(read.into_iter().map(|e| (shard, e)));
        }
        Ok(entries)
    }

    /// Entries other consumers left pending longer than `claim_idle_ms`.
    async fn claim(&mut self) -> Result<Vec<(usize, Entry)>, StoreError> {
        let mut pipe = redis::pipe();
        for (shard, key) in self.streams.iter().enumerate() {
            pipe.cmd("XAUTOCLAIM")
                .arg(key)
                .arg(&self.group)
                .arg(&*self.consumer)
                .arg(self.settings.claim_idle_ms)
                .arg(&self.claim_cursor[shard])
                .arg("COUNT")
                .arg(self.settings.batch_size);
        }
        let replies: Vec<Value> = bounded(pipe.query_async(&mut self.connection)).await?;
        let mut entries = Vec::new();
        for (shard, reply) in replies.iter().enumerate() {
            let (cursor, claimed) = parse_autoclaim(reply);
            self.claim_cursor[shard] = cursor;
            entries.extend(claimed.into_iter().map(|e| (shard, e)));
        }
        Ok(entries)
    }

    fn wanted(&self, line: &[u8]) -> bool {
        self.filter.is_empty()
            || event_type(line).is_some_and(|t| self.filter.iter().any(|f| f == t))
    }

    /// Delivers every wanted event of `entries` (bounded concurrency), then acknowledges the
    /// entries whose events all ended.
    async fn process(&mut self, entries: Vec<(usize, Entry)>) -> Result<(), StoreError> {
        let mut jobs = Vec::new();
        for (i, (_, entry)) in entries.iter().enumerate() {
            for line in entry.lines() {
                if self.wanted(&line) {
                    jobs.push((i, line));
                }
            }
        }
        let this = &*self;
        let outcomes: Vec<(usize, Final)> = stream::iter(jobs)
            .map(|(i, line)| async move {
                let span = tracing::debug_span!("webhook_delivery", receiver = %this.name);
                (i, this.deliver(line).instrument(span).await)
            })
            .buffer_unordered(self.settings.concurrency_max)
            .collect()
            .await;
        let mut ackable = vec![true; entries.len()];
        for (i, outcome) in outcomes {
            if outcome != Final::Done {
                ackable[i] = false;
            }
        }
        let mut pipe = redis::pipe();
        let mut any = false;
        for ((shard, entry), ack) in entries.iter().zip(ackable) {
            if ack {
                pipe.cmd("XACK")
                    .arg(&self.streams[*shard])
                    .arg(&self.group)
                    .arg(&entry.id)
                    .ignore();
                any = true;
            }
        }
        if any {
            let _: () = bounded(pipe.query_async(&mut self.connection)).await?;
        }
        Ok(())
    }

    /// One event to the receiver: tries with backoff until delivered, gone, or out of tries
    /// or time (then dead-lettered).
    async fn deliver(&self, body: Bytes) -> Final {
        let started = self.clock.now();
        let mut tries = 0_u32;
        let mut ceiling = self.settings.retry_initial_ms.max(1);
        loop {
            if self.stopping() {
                return Final::Stopped;
            }
            if self.gone.load(Ordering::Relaxed) {
                return Final::Gone;
            }
            tries += 1;
            let t = self.clock.now().0.div_euclid(1000);
            let signature = super::signature(&self.secret, t, &body);
            let sent = Instant::now();
            let mut request = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header(super::SIGNATURE_HEADER, signature);
            if let Some(id) = event_id(&body) {
                request = request.header("Orderly-Event-Id", id);
            }
            let result = request.body(body.clone()).send().await;
            let (status, error) = match result {
                Ok(response) => {
                    let status = response.status();
                    // Read the (ignored) body so the connection can be reused.
                    let _ = response.bytes().await;
                    (Some(status.as_u16()), None)
                }
                Err(error) => (None, Some(error.to_string())),
            };
            self.metrics.seconds(sent.elapsed().as_secs_f64());
            match status {
                Some(200..=299) => {
                    self.metrics.outcome(DeliveryOutcome::Delivered);
                    return Final::Done;
                }
                Some(410) => {
                    self.metrics.outcome(DeliveryOutcome::Gone);
                    self.disable().await;
                    return Final::Gone;
                }
                _ => {}
            }
            let elapsed = (self.clock.now().0 - started.0).max(0) as u64;
            let delay = fastrand::u64(0..=ceiling.min(self.settings.retry_cap_ms));
            ceiling = ceiling.saturating_mul(2);
            if tries >= self.settings.attempts_max
                || elapsed + delay > self.settings.retry_elapsed_max_ms
            {
                return self.dead_letter(&body, status, error, tries).await;
            }
            self.metrics.outcome(DeliveryOutcome::Retried);
            let sleep = self.clock.sleep(Duration::from_millis(delay));
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = sleep => {}
                _ = stop.wait_for(|s| *s) => return Final::Stopped,
            }
        }
    }

    async fn dead_letter(
        &self,
        body: &[u8],
        status: Option<u16>,
        error: Option<String>,
        tries: u32,
    ) -> Final {
        let status = status.map(|s| s.to_string()).unwrap_or_default();
        let error = error.unwrap_or_else(|| format!("HTTP {status}"));
        tracing::warn!(receiver = %self.name, %status, %error, tries, "webhook dead-lettered");
        let mut connection = self.connection.clone();
        let written: Result<Result<String, _>, _> = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("XADD")
                .arg(&self.dead_key)
                .arg("*")
                .arg("event")
                .arg(body)
                .arg("status")
                .arg(&status)
                .arg("error")
                .arg(&error)
                .arg("attempts")
                .arg(tries)
                .query_async(&mut connection),
        )
        .await;
        match written {
            Ok(Ok(_)) => {
                self.metrics.outcome(DeliveryOutcome::DeadLettered);
                Final::Done
            }
            // Not recorded: keep the entry pending, it is delivered again later.
            _ => Final::Stopped,
        }
    }

    async fn disable(&self) {
        self.gone.store(true, Ordering::Relaxed);
        tracing::warn!(receiver = %self.name, url = %self.url, "webhook receiver answered 410 Gone: disabled");
        let mut connection = self.connection.clone();
        let value = format!("410 Gone at {} from {}", self.clock.now().0, self.url);
        let _: Result<Result<(), _>, _> = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("SET")
                .arg(&self.disabled_key)
                .arg(value)
                .query_async(&mut connection),
        )
        .await;
        self.metrics.disabled(true);
    }
}

async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(result) => result.map_err(redis_error),
        Err(_) => Err(StoreError::Timeout(CALL_TIMEOUT.as_millis() as u64)),
    }
}
