//! Durable timers: each shard polls its timer index (a sorted set per shard on Redis) for due
//! entries in bounded batches and delivers each to its order actor as `FireTimers`, activating
//! a passivated order if needed. The order fires its earliest due timer through the domain and
//! moves its entry on in the same atomic write; the shard never removes an entry itself.
//!
//! Timers are never loaded into memory wholesale: a poll reads at most `fire_batch_max`
//! entries, and only the fires in flight are remembered. A node fires at most
//! `catch_up_per_s_max` timers per second across its shards (a token bucket on the engine's
//! clock), so what came due while the engine was down drains at a bounded rate after a start
//! instead of activating every overdue order at once.

use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::Mutex;
use std::time::Duration;
use tracing::Instrument;

use super::{Ownership, ShardCore};
use crate::clock::SharedClock;
use crate::domain::{OrderId, Rejection, Timestamp};
use crate::engine::commit::PendingReply;
use crate::engine::messages::{CommandResult, EngineError, Origin, Work};
use crate::telemetry;

/// Timer settings a shard applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimerLimits {
    pub(crate) poll_interval: Duration,
    pub(crate) fire_batch_max: usize,
}

/// Polls between two reads of the index sizes (for the armed and overdue gauges).
const COUNT_EVERY_POLLS: u32 = 10;
/// How long an order whose fire failed (store error, overload) waits before it is tried again.
const RETRY_AFTER_ERROR_MS: i64 = 5_000;
/// How long an entry of an order that does not exist is left alone.
const RETRY_AFTER_MISSING_MS: i64 = 3_600_000;
/// Most orders remembered as waiting for a retry (beyond it the memory is cleared: the
/// entries are still in the index and simply come back).
const BACKOFF_MAX: usize = 100_000;

/// The node-wide catch-up rate: a token bucket refilled on the engine's clock.
pub(crate) struct FireRate {
    per_s: f64,
    state: Mutex<(f64, i64)>,
}

impl FireRate {
    pub(crate) fn new(per_s: u32) -> FireRate {
        // Full at start (one second's worth), refilled continuously.
        FireRate {
            per_s: f64::from(per_s.max(1)),
            state: Mutex::new((f64::from(per_s.max(1)), i64::MIN)),
        }
    }

    /// Takes up to `want` fires at `now`.
    fn take(&self, want: usize, now: Timestamp) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        if *last != i64::MIN {
            let elapsed = (now.0 - *last).max(0) as f64 / 1000.0;
            *tokens = (*tokens + elapsed * self.per_s).min(self.per_s);
        }
        *last = now.0;
        let granted = (*tokens).floor().min(want as f64).max(0.0);
        *tokens -= granted;
        granted as usize
    }

    /// Returns fires taken but not used.
    fn give_back(&self, n: usize) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = (state.0 + n as f64).min(self.per_s);
    }
}

/// A shard's timer bookkeeping: the fires in flight and the orders waiting for a retry.
#[derive(Default)]
pub(crate) struct TimerState {
    in_flight: HashSet<OrderId, ahash::RandomState>,
    retry_at: HashMap<OrderId, Timestamp, ahash::RandomState>,
    /// The index sizes last reported by this shard (the gauges are summed over shards).
    reported: (u64, u64),
    polls: u32,
}

impl ShardCore {
    /// Polls the shard's timer index until the shard is gone.
    pub(super) async fn run_timers(core: Weak<ShardCore>, clock: SharedClock, limits: TimerLimits) {
        loop {
            clock.sleep(limits.poll_interval).await;
            let Some(core) = core.upgrade() else {
                return;
            };
            let span = tracing::debug_span!("timer_poll", shard = core.shard);
            core.poll_timers(limits).instrument(span).await;
        }
    }

    async fn poll_timers(self: &Rc<Self>, limits: TimerLimits) {
        if self.ownership.get() != Ownership::Owned {
            self.report_timer_counts(0, 0);
            return;
        }
        if !self.status_counts_loaded() {
            self.load_status_counts().await;
        }
        let now = self.clock.now();
        let polls = {
            let mut state = self.timers.borrow_mut();
            state.polls = state.polls.wrapping_add(1);
            state.polls
        };
        if polls % COUNT_EVERY_POLLS == 1 {
            let started = std::time::Instant::now();
            let counts = self.store.timer_counts(self.shard, now).await;
            telemetry::record_store_request(
                self.store.kind(),
                "timer_counts",
                started.elapsed().as_secs_f64(),
            );
            if let Ok(counts) = counts {
                self.report_timer_counts(counts.armed, counts.overdue);
            }
        }
        let budget = self.timer_rate.take(limits.fire_batch_max, now);
        if budget == 0 {
            telemetry::record_timers_throttled(1);
            return;
        }
        let skipped = {
            let state = self.timers.borrow();
            state.in_flight.len() + state.retry_at.len().min(limits.fire_batch_max)
        };
        let started = std::time::Instant::now();
        let due = self
            .store
            .due_timers(self.shard, now, budget + skipped + 1)
            .await;
        telemetry::record_store_request(
            self.store.kind(),
            "due_timers",
            started.elapsed().as_secs_f64(),
        );
        let due = match due {
            Ok(due) => due,
            Err(error) => {
                tracing::debug!(shard = self.shard, %error, "timer poll failed");
                self.timer_rate.give_back(budget);
                return;
            }
        };
        // The lease may have moved while the store answered.
        if self.ownership.get() != Ownership::Owned {
            self.timer_rate.give_back(budget);
            return;
        }
        let mut fired = 0;
        let mut left = false;
        for timer in due {
            let ready = {
                let mut state = self.timers.borrow_mut();
                if state.in_flight.contains(&timer.order_id) {
                    false
                } else {
                    match state.retry_at.get(&timer.order_id) {
                        Some(at) if *at > now => false,
                        Some(_) => {
                            state.retry_at.remove(&timer.order_id);
                            true
                        }
                        None => true,
                    }
                }
            };
            if !ready {
                continue;
            }
            if fired == budget {
                left = true;
                break;
            }
            self.fire(timer.order_id);
            fired += 1;
        }
        self.timer_rate.give_back(budget - fired);
        if left {
            telemetry::record_timers_throttled(1);
        }
    }

    /// Delivers `FireTimers` to the order (activating it if needed).
    fn fire(self: &Rc<Self>, order_id: OrderId) {
        self.timers.borrow_mut().in_flight.insert(order_id);
        let token = self
            .replies
            .borrow_mut()
            .insert(PendingReply::Timer { order_id });
        self.route(order_id, Work::FireTimers, false, token, Origin::Client);
    }

    /// A fire finished (its write durable, or failed).
    pub(super) fn timer_done(&self, order_id: OrderId, result: &CommandResult) {
        let mut state = self.timers.borrow_mut();
        state.in_flight.remove(&order_id);
        let retry_in = match result {
            Ok(_) => return,
            Err(EngineError::Rejected(Rejection::OrderNotFound(_))) => RETRY_AFTER_MISSING_MS,
            Err(_) => RETRY_AFTER_ERROR_MS,
        };
        if state.retry_at.len() >= BACKOFF_MAX {
            state.retry_at.clear();
        }
        let at = self.clock.now().plus_ms(retry_in);
        state.retry_at.insert(order_id, at);
    }

    fn report_timer_counts(&self, armed: u64, overdue: u64) {
        let mut state = self.timers.borrow_mut();
        let (last_armed, last_overdue) = state.reported;
        if (last_armed, last_overdue) != (armed, overdue) {
            telemetry::record_timer_counts_delta(
                armed as f64 - last_armed as f64,
                overdue as f64 - last_overdue as f64,
            );
            state.reported = (armed, overdue);
        }
    }
}
