//! The load loop. A single scheduler task sleeps until the next intended time and then starts
//! every arrival that is due (after a hiccup of its own, that is all the missed ones, each with
//! its own intended time). Each arrival runs as its own task holding one of `max_in_flight`
//! permits; an arrival due while all permits are taken is not sent and is counted as
//! `dropped`, so the offered load stays honest and the client's memory stays bounded.
//!
//! Latency of an arrival's first request is measured from its intended time, so time spent
//! waiting to be sent (a slow server holding connections, a busy client) is part of it. A
//! later step of a multi-step scenario depends on the previous answer, so its clock starts
//! when that answer arrived; the `flow` latency covers the whole arrival from its intended
//! time. The timer has a resolution of about 1 ms, which bounds how early a latency can look.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::client::{Answer, Api};
use crate::metrics::{self, Scrape, ServerCounters};
use crate::payload::{bulk_body, order_json};
use crate::report::{Recorder, Report, RunFacts, ServerSample, StageReport};
use crate::scenario::{Scenario, Step};
use crate::schedule::{Schedule, DURATION_MAX};
use crate::stream::{self, StreamDriver};
use crate::target::Target;

/// Largest accepted `--max-in-flight`.
pub const MAX_IN_FLIGHT_MAX: usize = 100_000;
/// Longest accepted per-request timeout.
pub const REQUEST_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// Extra time granted after the schedule for outstanding arrivals, beyond their own timeouts.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How long a scrape of the server's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Where to send load (loopback only).
    pub target: Target,
    /// What each arrival does. With a ramp (`[[stages]]`), its stages are run with every rate
    /// scaled so that the highest one runs at `rate_per_sec`, and `duration` is not used.
    pub scenario: Scenario,
    /// Arrivals per second (with a ramp: of its highest stage).
    pub rate_per_sec: u64,
    /// Length of the schedule (without a ramp).
    pub duration: Duration,
    /// Most arrivals outstanding at once.
    pub max_in_flight: usize,
    /// Timeout of each request.
    pub request_timeout: Duration,
    /// Bearer token for Orderly's write endpoints.
    pub api_key: Option<String>,
    /// Print a progress line on stderr every second.
    pub progress: bool,
    /// The Redis of the ingest stream and the outbox, for a `stream` scenario (loopback only).
    pub redis: Option<String>,
}

struct Shared {
    api: Api,
    scenario: Scenario,
    recorder: Mutex<Recorder>,
    /// Requests sent so far (all steps), for the progress line.
    sent: AtomicU64,
    /// Arrivals started and not yet finished.
    in_flight: AtomicU64,
}

impl Shared {
    fn recorder(&self) -> MutexGuard<'_, Recorder> {
        // A panic while holding the lock cannot leave the counts inconsistent in a way that
        // matters for a report, so keep counting.
        self.recorder.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the server's counters; `Err` with the reason if the page cannot be had.
async fn scrape(api: &Api) -> Result<Scrape, String> {
    match api.metrics(SCRAPE_TIMEOUT).await {
        Ok(text) => Ok(metrics::parse(&text)),
        Err(error) => Err(format!("{error:#}")),
    }
}

/// Runs the schedule against the target and returns the report. Stops by itself: after the
/// schedule, outstanding arrivals get their request timeouts plus a grace period.
///
/// The server's `/metrics` is scraped before and after (a failed scrape does not fail the run;
/// the report's `server.error` says why), every second closes one entry of the time series,
/// and a scenario with `sample_interval` also samples the server's RSS and the client's p99.
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    let plan = config
        .scenario
        .plan(Some(config.rate_per_sec), config.duration);
    let mut schedules = Vec::with_capacity(plan.len());
    let mut total_duration = Duration::ZERO;
    for stage in &plan {
        schedules.push((
            total_duration,
            Schedule::new(stage.rate_per_sec, stage.duration)?,
        ));
        total_duration += stage.duration;
    }
    if total_duration > DURATION_MAX {
        bail!("the run would last more than {DURATION_MAX:?}");
    }
    let scheduled: u64 = schedules.iter().map(|(_, s)| s.total()).sum();
    if config.max_in_flight == 0 || config.max_in_flight > MAX_IN_FLIGHT_MAX {
        bail!("--max-in-flight must be 1..={MAX_IN_FLIGHT_MAX}");
    }
    if config.request_timeout.is_zero() || config.request_timeout > REQUEST_TIMEOUT_MAX {
        bail!("--timeout must be more than 0 and at most {REQUEST_TIMEOUT_MAX:?}");
    }
    let api = Api::new(
        config.target.clone(),
        config.api_key.as_deref(),
        config.request_timeout,
        config.max_in_flight,
    )?;
    let before = scrape(&api).await;
    let stream_settings = config.scenario.stream.clone();
    if stream_settings.is_some() && config.redis.is_none() {
        bail!(
            "scenario {} adds orders to a Redis stream: give --redis redis://127.0.0.1:PORT/DB (the server's ingest Redis)",
            config.scenario.name
        );
    }
    let shared = Arc::new(Shared {
        api,
        recorder: Mutex::new(Recorder::new(&config.scenario)),
        scenario: config.scenario.clone(),
        sent: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
    });
    let permits = Arc::new(Semaphore::new(config.max_in_flight));
    let driver = match (&stream_settings, &config.redis) {
        (Some(settings), Some(url)) => {
            // The outbox has one stream per shard: as many as the server says it owns.
            let shards = settings
                .shards
                .or_else(|| {
                    let owned = before.as_ref().ok()?.shards_owned?;
                    (owned >= 1.0).then_some(owned as u32)
                })
                .unwrap_or(64);
            let sink: Arc<dyn stream::Sink> = Arc::clone(&shared) as Arc<dyn stream::Sink>;
            Some(
                StreamDriver::start(url, settings, shards, &config.scenario.order, sink)
                    .await
                    .context("starting the stream step")?,
            )
        }
        _ => None,
    };
    let start = Instant::now();

    // Once a second: close a second of the time series, and print it if asked to.
    let ticker = {
        let shared = Arc::clone(&shared);
        let progress = config.progress;
        tokio::spawn(async move {
            let second = Duration::from_secs(1);
            let mut tick = tokio::time::interval_at(start + second, second);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                tick.tick().await;
                n += 1;
                let sent = shared.sent.load(Ordering::Relaxed);
                let in_flight = shared.in_flight.load(Ordering::Relaxed);
                let line = shared
                    .recorder()
                    .progress_line(Duration::from_secs(n), sent, in_flight);
                if progress {
                    eprintln!("{line}");
                }
            }
        })
    };
    // Every `sample_interval`: the server's RSS and the client's p99 since the last sample.
    let sampler = config.scenario.sample_interval.map(|every| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(start + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let at_s = start.elapsed().as_secs_f64();
                let rss_bytes = scrape(&shared.api).await.ok().and_then(|s| s.rss_bytes);
                let mut recorder = shared.recorder();
                let p99_ms = recorder.close_window();
                recorder.samples.push(ServerSample {
                    at_s,
                    rss_bytes,
                    p99_ms,
                });
            }
        })
    });

    let mut base = 0;
    let stages = schedules.len();
    for (i, ((stage_offset, schedule), stage)) in schedules.iter().zip(&plan).enumerate() {
        let stage_start = start + *stage_offset;
        let mut next = 0;
        while next < schedule.total() {
            let due = schedule.due(next, Instant::now().saturating_duration_since(stage_start));
            let (mut started, mut dropped) = (0, 0);
            for n in due.clone() {
                let intended = stage_start + schedule.offset(n);
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        started += 1;
                        shared.in_flight.fetch_add(1, Ordering::Relaxed);
                        match &driver {
                            Some(driver) => driver.submit(stream::Arrival {
                                n: base + n,
                                intended,
                                permit,
                            }),
                            None => {
                                tokio::spawn(arrival(
                                    Arc::clone(&shared),
                                    base + n,
                                    intended,
                                    permit,
                                ));
                            }
                        }
                    }
                    Err(_) => dropped += 1,
                }
            }
            if started + dropped > 0 {
                let mut recorder = shared.recorder();
                recorder.started += started;
                recorder.dropped += dropped;
            }
            next = due.end;
            if next < schedule.total() {
                tokio::time::sleep_until(stage_start + schedule.offset(next)).await;
            }
        }
        base += schedule.total();
        // The next stage starts at its own offset, not when this one's last arrival went out.
        if i + 1 < stages {
            tokio::time::sleep_until(stage_start + stage.duration).await;
        }
    }

    // Wait for every outstanding arrival: each of its steps is bounded by the request timeout.
    let steps = config.scenario.max_steps() as u32;
    let drain = config.request_timeout * steps + DRAIN_GRACE;
    let all = config.max_in_flight as u32;
    let _ = tokio::time::timeout(drain, permits.acquire_many(all)).await;
    let unfinished = shared.in_flight.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    if let Some(driver) = driver {
        driver.stop();
    }
    ticker.abort();
    if let Some(sampler) = sampler {
        sampler.abort();
    }
    let after = scrape(&shared.api).await;
    let server = Some(match (before, after) {
        (Ok(before), Ok(after)) => ServerCounters::between(&before, &after),
        (Err(error), _) => ServerCounters::failed(format!("before the run: {error}")),
        (_, Err(error)) => ServerCounters::failed(format!("after the run: {error}")),
    });
    let mut recorder = std::mem::replace(&mut *shared.recorder(), Recorder::new(&config.scenario));
    // The last, partial second (answers after the last tick).
    let last_second = (elapsed.as_secs_f64().ceil() as u64).max(1);
    if recorder.has_unclosed_activity() {
        recorder.close_second(last_second);
    }
    Ok(recorder.into_report(RunFacts {
        scenario: config.scenario.name.clone(),
        target: config.target.base().to_string(),
        rate_per_sec: plan.iter().map(|s| s.rate_per_sec).max().unwrap_or(0),
        duration: total_duration,
        max_in_flight: config.max_in_flight,
        scheduled,
        unfinished,
        elapsed,
        stages: plan
            .iter()
            .map(|s| StageReport {
                rate_per_sec: s.rate_per_sec,
                duration_s: s.duration.as_secs_f64(),
            })
            .collect(),
        server,
    }))
}

/// One arrival; it holds its permit until it has finished.
async fn arrival(shared: Arc<Shared>, n: u64, intended: Instant, _permit: OwnedSemaphorePermit) {
    run_steps(&shared, n, intended).await;
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// The steps of one arrival's flow in order, each only after the previous one succeeded.
async fn run_steps(shared: &Shared, n: u64, intended: Instant) {
    let scenario = &shared.scenario;
    let flow = scenario.flow_for(n);
    let mut order_id: Option<String> = None;
    let mut clock = intended;
    for step in &flow.steps {
        let body = match step {
            Step::Place => order_json(&scenario.order, n),
            Step::Bulk => {
                let lines = scenario.bulk.as_ref().map_or(1, |b| b.lines);
                bulk_body(&scenario.order, n * lines as u64, lines)
            }
            Step::Stream => unreachable!("stream arrivals go to the stream driver"),
            Step::Ship => serde_json::json!({ "tracking_number": format!("T-{n}") }).to_string(),
            Step::Pay | Step::Deliver | Step::Get | Step::Cancel | Step::Refund => "{}".to_string(),
        };
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let answer = shared.api.send(*step, order_id.as_deref(), body).await;
        let done = Instant::now();
        shared
            .recorder()
            .record(*step, done.saturating_duration_since(clock), &answer);
        match answer {
            Answer::Ok {
                order_id: Some(id), ..
            } => order_id = Some(id),
            Answer::Ok { .. } => {}
            // Later steps need this one's effect; the arrival ends here.
            Answer::Failed(_) => return,
        }
        clock = done;
    }
    if flow.steps.len() > 1 {
        shared
            .recorder()
            .record_flow(&flow.name, clock.saturating_duration_since(intended));
    }
}

/// What the stream driver reports goes into the same counts as an HTTP step's answers.
impl stream::Sink for Shared {
    fn sent(&self, count: u64) {
        self.sent.fetch_add(count, Ordering::Relaxed);
    }

    fn placed(&self, latency: Duration) {
        let ok = Answer::Ok {
            order_id: None,
            bulk: None,
        };
        self.recorder().record(Step::Stream, latency, &ok);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn failed(&self, latency: Duration, reason: &str) {
        let failed = Answer::Failed(reason.to_string());
        self.recorder().record(Step::Stream, latency, &failed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
