//! The gateway actor: one per configured gateway. It takes batches of jobs (charge, query,
//! refund) from shards and runs each as its own async task on the actor's arbiter, so a slow
//! call never holds up the rest of its batch, and a slow gateway never holds up another
//! gateway. Verdicts go back to the shard as they become ready (several at once when they do).
//!
//! The rules, per job:
//! - **charge**: a call that provably was not sent (connection refused, breaker open, limit
//!   reached) is retried under the same idempotency key with full-jitter backoff, within
//!   `retry.attempts_max` and `retry.elapsed_max_ms`; a decline is final (hard or soft, never
//!   retried here); a timeout after sending, a reset or a 5xx is an unknown outcome, reported
//!   as such (the order's attempt becomes `Unknown` and the engine asks for a query).
//! - **query**: the attempt's key is queried with backoff during `sync.window_ms`; a definite
//!   answer settles it. Unknown to the gateway, or still unknown when the window runs out, the
//!   key is reversed (voided, which also blocks a late arrival); if the reversal fails too,
//!   the attempt needs review.
//! - **refund**: the refund key is sent, and re-sent with backoff while its outcome is
//!   unknown (the gateway deduplicates by key, so a re-send is the query); a refund that
//!   provably never arrived fails; one whose outcome stays unknown is left pending for review.
//!
//! Every call goes through the circuit breaker (health failures only), the token bucket and
//! the concurrency limit, and is bounded by `attempt_timeout_ms`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;

use super::breaker::{BreakerState, BreakerTransitions, CircuitBreaker};
use super::limits::TokenBucket;
use super::port::{
    ChargeCall, ChargeReply, FailureClass, Gateway, GatewayAudit, GatewayError, QueryReply,
    RefundCall, RefundReply, ReverseReply,
};
use super::reply::{GatewayReply, ReplySender, Verdict, VerdictFact, DETACHED};
use super::retry::{jitter_unit, Backoff};
use super::{GatewayJob, GatewayWork, JobKind};
use crate::clock::SharedClock;
use crate::config::{GatewaySettings, PaymentSettings};
use crate::domain::{OrderId, PaymentResult, RefundResult, Timestamp};
use crate::telemetry::GatewayMetrics;

/// Most sleeps one call spends waiting for a rate-limit token (each at least 1 ms, and all
/// within the attempt timeout).
const RATE_WAITS_MAX: u32 = 10_000;
/// How long a stats request waits for the gateway side's audit.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of one gateway actor, for reports and tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GatewayStats {
    /// The gateway's configured name.
    pub gateway: String,
    /// Breaker state now.
    pub breaker: Option<BreakerState>,
    /// Breaker state changes so far.
    pub breaker_transitions: BreakerTransitions,
    /// Payment attempts handed to this gateway (charge jobs).
    pub attempts: u64,
    /// Charge calls made (tries, the first included; calls refused by the breaker or a limit
    /// are not made and not counted).
    pub charge_calls: u64,
    /// Retries of calls that were not sent.
    pub retries: u64,
    /// Calls refused without I/O by the open breaker.
    pub short_circuited: u64,
    /// Attempts captured (directly or as learned by a query).
    pub succeeded: u64,
    /// Attempts declined (directly or as learned by a query).
    pub declined: u64,
    /// Attempts that were never sent within the retry budget.
    pub not_sent: u64,
    /// Attempts whose outcome was unknown after the charge call.
    pub unknown: u64,
    /// Status queries made.
    pub queries: u64,
    /// Attempts reversed (voided) after their outcome stayed unknown.
    pub reversed: u64,
    /// Attempts and refunds left for review.
    pub needs_review: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Refunds refused or never sent.
    pub refunds_failed: u64,
    /// The gateway side's own books, where it exposes them.
    pub audit: Option<GatewayAudit>,
}

/// Asks a gateway actor for its [`GatewayStats`].
pub struct GetGatewayStats;

impl Message for GetGatewayStats {
    type Result = GatewayStats;
}

/// The state a gateway actor shares with its job tasks (same thread).
struct GatewayCore {
    name: String,
    port: Arc<dyn Gateway>,
    attempt_timeout: Duration,
    retry: Backoff,
    sync: Backoff,
    reverse_attempts_max: u32,
    breaker: RefCell<CircuitBreaker>,
    bucket: Option<RefCell<TokenBucket>>,
    permits: Semaphore,
    /// The engine's clock: backoff, the breaker's open period and the rate limit read it.
    clock: SharedClock,
    origin: Timestamp,
    stats: RefCell<GatewayStats>,
    /// Call outcomes since the last flush: (operation, outcome, count).
    tally: RefCell<Vec<(&'static str, &'static str, u64)>>,
    metrics: GatewayMetrics,
}

/// How a job ended.
enum JobEnd {
    /// With a final verdict.
    Verdict(VerdictFact),
    /// Without one: the order stays as it is until resumed.
    Released,
}

impl GatewayCore {
    fn now_ms(&self) -> u64 {
        (self.clock.now().0 - self.origin.0).max(0) as u64
    }

    fn count(&self, f: impl FnOnce(&mut GatewayStats)) {
        f(&mut self.stats.borrow_mut());
    }

    fn tally(&self, operation: &'static str, outcome: &'static str) {
        let mut tally = self.tally.borrow_mut();
        match tally
            .iter_mut()
            .find(|(o, x, _)| *o == operation && *x == outcome)
        {
            Some(slot) => slot.2 += 1,
            None => tally.push((operation, outcome, 1)),
        }
    }

    fn flush_metrics(&self) {
        for (operation, outcome, n) in self.tally.borrow_mut().drain(..) {
            self.metrics.calls(operation, outcome, n);
        }
    }

    /// Runs `f` on the breaker and reports any state change it caused.
    fn with_breaker<T>(&self, f: impl FnOnce(&mut CircuitBreaker, u64) -> T) -> T {
        let now_ms = self.now_ms();
        let mut breaker = self.breaker.borrow_mut();
        let before = breaker.transitions();
        let result = f(&mut breaker, now_ms);
        let after = breaker.transitions();
        if after != before {
            let state = breaker.state(now_ms);
            drop(breaker);
            self.metrics.breaker(state.as_str(), state.gauge());
            tracing::info!(gateway = %self.name, state = state.as_str(), "circuit breaker changed state");
        }
        result
    }

    /// One call through the breaker, the limits and the attempt timeout.
    async fn call<T>(
        &self,
        operation: &'static str,
        make: impl FnOnce(&dyn Gateway) -> BoxFuture<'static, Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let Some(permit) = self.with_breaker(|b, now| b.try_acquire(now)) else {
            self.count(|s| s.short_circuited += 1);
            return Err(GatewayError::CircuitOpen);
        };
        let deadline = Instant::now() + self.attempt_timeout;
        if let Some(bucket) = &self.bucket {
            let mut granted = false;
            for _ in 0..RATE_WAITS_MAX {
                let wait = bucket.borrow_mut().try_take(self.now_ms());
                match wait {
                    Ok(()) => {
                        granted = true;
                        break;
                    }
                    Err(wait) if Instant::now() + wait <= deadline => {
                        self.clock.sleep(wait).await;
                    }
                    Err(_) => break,
                }
            }
            if !granted {
                self.with_breaker(|b, _| b.on_neutral(permit));
                return Err(GatewayError::Throttled);
            }
        }
        let slot = tokio::time::timeout_at(deadline.into(), self.permits.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            self.with_breaker(|b, _| b.on_neutral(permit));
            return Err(GatewayError::Throttled);
        };
        let started = Instant::now();
        let timeout_ms = self.attempt_timeout.as_millis() as u64;
        let span = tracing::debug_span!("gateway_call", gateway = %self.name, operation);
        let call = tokio::time::timeout(self.attempt_timeout, make(&*self.port));
        let result = match call.instrument(span).await {
            Ok(Err(GatewayError::Timeout(_))) | Err(_) => Err(GatewayError::Timeout(timeout_ms)),
            Ok(result) => result,
        };
        self.metrics
            .call_seconds(operation, started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => self.with_breaker(|b, now| b.on_success(permit, now)),
            Err(error) if error.is_health_failure() => {
                self.with_breaker(|b, now| b.on_failure(permit, now))
            }
            Err(_) => self.with_breaker(|b, _| b.on_neutral(permit)),
        }
        result
    }

    /// Sleeps before retry `retry` of `policy` if the budget allows; false when it does not.
    /// Backoff reads the time and sleeps on the engine's clock, so its rules are tested
    /// without real sleeping.
    async fn backoff(&self, policy: &Backoff, tries_done: u32, since: Timestamp) -> bool {
        let delay = policy.delay(tries_done.saturating_sub(1), jitter_unit());
        let elapsed = Duration::from_millis((self.clock.now().0 - since.0).max(0) as u64);
        if !policy.allows(tries_done, elapsed, delay) {
            return false;
        }
        self.clock.sleep(delay).await;
        true
    }

    async fn charge(&self, job: &GatewayJob, attempt_no: u16) -> PaymentResult {
        self.count(|s| s.attempts += 1);
        let call = ChargeCall {
            order_id: job.order_id,
            attempt_no,
            amount_minor: job.amount_minor,
            currency: job.currency,
            method: job.method.as_str(),
        };
        let since = self.clock.now();
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.call("charge", |g| g.charge(call.clone())).await;
            if !matches!(
                result,
                Err(GatewayError::CircuitOpen | GatewayError::Throttled)
            ) {
                self.count(|s| s.charge_calls += 1);
            }
            let error = match result {
                Ok(ChargeReply::Captured {
                    amount_minor,
                    currency,
                }) => {
                    self.tally("charge", "succeeded");
                    self.count(|s| s.succeeded += 1);
                    return PaymentResult::Succeeded {
                        amount_minor,
                        currency,
                    };
                }
                Ok(ChargeReply::Declined { hard, reason }) => {
                    self.tally(
                        "charge",
                        if hard {
                            "declined_hard"
                        } else {
                            "declined_soft"
                        },
                    );
                    self.count(|s| s.declined += 1);
                    return PaymentResult::Declined { hard, reason };
                }
                Ok(ChargeReply::Pending) => {
                    self.tally("charge", "unknown");
                    self.count(|s| s.unknown += 1);
                    return PaymentResult::Unknown {
                        reason: "pending at the gateway".into(),
                    };
                }
                Ok(ChargeReply::Voided) => {
                    self.tally("charge", "voided");
                    return PaymentResult::Voided;
                }
                Err(error) => error,
            };
            match error.class() {
                FailureClass::Unknown => {
                    self.tally("charge", "unknown");
                    self.count(|s| s.unknown += 1);
                    return PaymentResult::Unknown {
                        reason: error.to_string(),
                    };
                }
                FailureClass::Rejected => {
                    self.tally("charge", "rejected");
                    self.count(|s| s.not_sent += 1);
                    return PaymentResult::FailedNotSent {
                        reason: error.to_string(),
                    };
                }
                FailureClass::NotSent => {
                    self.tally(
                        "charge",
                        if error == GatewayError::CircuitOpen {
                            "short_circuited"
                        } else {
                            "not_sent"
                        },
                    );
                    if !self.backoff(&self.retry, tries, since).await {
                        self.count(|s| s.not_sent += 1);
                        return PaymentResult::FailedNotSent {
                            reason: error.to_string(),
                        };
                    }
                    self.count(|s| s.retries += 1);
                    self.metrics.retry();
                }
            }
        }
    }

    /// Queries an attempt whose outcome is unknown, then reverses it; sends a `Reversing`
    /// progress verdict before reversing so the intent is durable.
    async fn sync(
        &self,
        job: &GatewayJob,
        attempt_no: u16,
        reversing: bool,
        reply_to: &ReplySender,
    ) -> PaymentResult {
        let key = format!("{}:{attempt_no}", job.order_id);
        let since = self.clock.now();
        let mut queries = 0;
        loop {
            queries += 1;
            let result = self.call("query", |g| g.query(key.clone())).await;
            if !matches!(
                result,
                Err(GatewayError::CircuitOpen | GatewayError::Throttled)
            ) {
                self.count(|s| s.queries += 1);
            }
            match result {
                Ok(QueryReply::Captured {
                    amount_minor,
                    currency,
                }) => {
                    self.tally("query", "captured");
                    self.count(|s| s.succeeded += 1);
                    return PaymentResult::Succeeded {
                        amount_minor,
                        currency,
                    };
                }
                Ok(QueryReply::Declined { hard, reason }) => {
                    self.tally("query", "declined");
                    self.count(|s| s.declined += 1);
                    return PaymentResult::Declined { hard, reason };
                }
                Ok(QueryReply::Voided) => {
                    self.tally("query", "voided");
                    return PaymentResult::Voided;
                }
                Ok(QueryReply::NotFound) => {
                    // The charge never arrived (or is still on its way): reversing blocks the
                    // key, so it can never be captured later.
                    self.tally("query", "not_found");
                    break;
                }
                Ok(QueryReply::Pending) => self.tally("query", "pending"),
                Err(error) => self.tally("query", error.label()),
            }
            if !self.backoff(&self.sync, queries, since).await {
                break;
            }
        }
        if !reversing {
            let _ = reply_to.send(GatewayReply::Verdicts(vec![Verdict {
                order_id: job.order_id,
                fact: VerdictFact::Payment {
                    attempt_no,
                    result: PaymentResult::Reversing,
                },
                token: DETACHED,
                last: false,
            }]));
        }
        let since = self.clock.now();
        let mut last_error = String::new();
        for tries in 1..=self.reverse_attempts_max {
            match self.call("reverse", |g| g.reverse(key.clone())).await {
                Ok(ReverseReply::Reversed) => {
                    self.tally("reverse", "voided");
                    self.count(|s| s.reversed += 1);
                    return PaymentResult::Voided;
                }
                Ok(ReverseReply::NotReversible { reason }) => {
                    self.tally("reverse", "not_reversible");
                    last_error = reason;
                    break;
                }
                Err(error) => {
                    self.tally("reverse", error.label());
                    last_error = error.to_string();
                }
            }
            if tries == self.reverse_attempts_max || !self.backoff(&self.retry, tries, since).await
            {
                break;
            }
        }
        self.count(|s| s.needs_review += 1);
        self.metrics.needs_review();
        tracing::warn!(gateway = %self.name, order = %job.order_id, attempt_no, reason = %last_error, "payment attempt needs review");
        PaymentResult::NeedsReview {
            reason: format!("outcome unknown and reversal failed: {last_error}"),
        }
    }

    async fn refund(&self, job: &GatewayJob, refund_no: u16, charge_attempt_no: u16) -> JobEnd {
        let call = RefundCall {
            key: format!("{}:r{refund_no}", job.order_id),
            charge_key: format!("{}:{charge_attempt_no}", job.order_id),
            amount_minor: job.amount_minor,
            currency: job.currency,
        };
        let since = self.clock.now();
        let mut tries = 0;
        let mut maybe_sent = false;
        let mut last_error;
        loop {
            tries += 1;
            let result = self.call("refund", |g| g.refund(call.clone())).await;
            let error = match result {
                Ok(RefundReply::Refunded) => {
                    self.tally("refund", "succeeded");
                    self.count(|s| s.refunds += 1);
                    return JobEnd::Verdict(VerdictFact::Refund {
                        refund_no,
                        result: RefundResult::Succeeded,
                    });
                }
                Ok(RefundReply::Refused { reason }) => {
                    self.tally("refund", "refused");
                    self.count(|s| s.refunds_failed += 1);
                    return JobEnd::Verdict(VerdictFact::Refund {
                        refund_no,
                        result: RefundResult::Failed { reason },
                    });
                }
                Err(error) => error,
            };
            self.tally("refund", error.label());
            last_error = error.to_string();
            let class = error.class();
            if class == FailureClass::Rejected && !maybe_sent {
                self.count(|s| s.refunds_failed += 1);
                return JobEnd::Verdict(VerdictFact::Refund {
                    refund_no,
                    result: RefundResult::Failed { reason: last_error },
                });
            }
            maybe_sent |= class == FailureClass::Unknown;
            // While the outcome may be unknown, re-sending the same key is the query: keep at
            // it for the sync window. A refund that was never sent has the retry budget.
            let policy = if maybe_sent { &self.sync } else { &self.retry };
            if !self.backoff(policy, tries, since).await {
                break;
            }
            if class == FailureClass::NotSent {
                self.count(|s| s.retries += 1);
                self.metrics.retry();
            }
        }
        if !maybe_sent {
            self.count(|s| s.refunds_failed += 1);
            return JobEnd::Verdict(VerdictFact::Refund {
                refund_no,
                result: RefundResult::Failed {
                    reason: format!("refund not sent: {last_error}"),
                },
            });
        }
        // It may have been refunded: reporting a failure could lead to refunding twice. The
        // order stays Refunding (blocking new refunds) until a human or a restart resumes it.
        self.tally("refund", "unresolved");
        self.count(|s| s.needs_review += 1);
        self.metrics.needs_review();
        tracing::warn!(gateway = %self.name, order = %job.order_id, refund_no, reason = %last_error, "refund outcome unknown; left pending for review");
        JobEnd::Released
    }

    async fn run_job(&self, job: &GatewayJob, reply_to: &ReplySender) -> JobEnd {
        match job.kind {
            JobKind::Charge { attempt_no } => JobEnd::Verdict(VerdictFact::Payment {
                attempt_no,
                result: self.charge(job, attempt_no).await,
            }),
            JobKind::Query {
                attempt_no,
                reversing,
            } => JobEnd::Verdict(VerdictFact::Payment {
                attempt_no,
                result: self.sync(job, attempt_no, reversing, reply_to).await,
            }),
            JobKind::Refund {
                refund_no,
                charge_attempt_no,
            } => self.refund(job, refund_no, charge_attempt_no).await,
        }
    }
}

/// Runs a batch of jobs concurrently and sends their verdicts back as they become ready,
/// together when several are.
async fn run_work(core: Rc<GatewayCore>, work: GatewayWork) {
    let GatewayWork { jobs, reply_to } = work;
    let mut pending: FuturesUnordered<_> = jobs
        .into_iter()
        .map(|job| {
            let core = Rc::clone(&core);
            let reply_to = reply_to.clone();
            async move {
                let end = core.run_job(&job, &reply_to).await;
                (job.order_id, job.token, end)
            }
        })
        .collect();
    // Each turn takes at least one finished job, so this ends after at most `jobs` turns.
    while let Some(first) = pending.next().await {
        let mut verdicts: Vec<Verdict> = Vec::new();
        let mut released: Vec<OrderId> = Vec::new();
        let mut take = |(order_id, token, end): (OrderId, usize, JobEnd)| match end {
            JobEnd::Verdict(fact) => verdicts.push(Verdict {
                order_id,
                fact,
                token,
                last: true,
            }),
            JobEnd::Released => released.push(order_id),
        };
        take(first);
        while let Some(Some(next)) = pending.next().now_or_never() {
            take(next);
        }
        // The shard may be gone during shutdown; its orders then resume from their snapshots.
        if !verdicts.is_empty() {
            let _ = reply_to.send(GatewayReply::Verdicts(verdicts));
        }
        if !released.is_empty() {
            let _ = reply_to.send(GatewayReply::Released(released));
        }
        core.flush_metrics();
    }
}

/// The actor of one gateway.
pub struct GatewayActor {
    core: Rc<GatewayCore>,
}

impl GatewayActor {
    /// An actor named `name` around `port`, with the shared payment rules and this gateway's
    /// limits (defaults when `limits` is None).
    pub fn new(
        name: &str,
        port: Arc<dyn Gateway>,
        payments: &PaymentSettings,
        limits: Option<&GatewaySettings>,
        clock: SharedClock,
    ) -> GatewayActor {
        let concurrency = limits
            .map_or(1024, |l| l.concurrency_max)
            .clamp(1, Semaphore::MAX_PERMITS);
        let bucket = limits
            .filter(|l| l.rate_limit_per_s > 0)
            .map(|l| RefCell::new(TokenBucket::new(l.rate_limit_per_s, l.rate_limit_burst)));
        let metrics = GatewayMetrics::new(name);
        metrics.breaker_state(BreakerState::Closed.gauge());
        GatewayActor {
            core: Rc::new(GatewayCore {
                name: name.to_string(),
                port,
                attempt_timeout: Duration::from_millis(payments.attempt_timeout_ms.max(1)),
                retry: Backoff::from_retry(&payments.retry),
                sync: Backoff::from_sync(&payments.sync),
                reverse_attempts_max: payments.sync.reverse_attempts_max.max(1),
                breaker: RefCell::new(CircuitBreaker::from_settings(&payments.breaker)),
                bucket,
                permits: Semaphore::new(concurrency),
                origin: clock.now(),
                clock,
                stats: RefCell::new(GatewayStats {
                    gateway: name.to_string(),
                    ..GatewayStats::default()
                }),
                tally: RefCell::new(Vec::new()),
                metrics,
            }),
        }
    }
}

impl Actor for GatewayActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Work arrives in batches (one message per shard commit), so a deep mailbox is rarely
        // needed; bound it anyway (senders wait for room).
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<GatewayWork> for GatewayActor {
    type Result = ();

    fn handle(&mut self, work: GatewayWork, _: &mut Context<Self>) {
        actix_rt::spawn(run_work(Rc::clone(&self.core), work));
    }
}

impl Handler<GetGatewayStats> for GatewayActor {
    type Result = ResponseFuture<GatewayStats>;

    fn handle(&mut self, _: GetGatewayStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.core.stats.borrow().clone();
        let now_ms = self.core.now_ms();
        {
            let mut breaker = self.core.breaker.borrow_mut();
            stats.breaker = Some(breaker.state(now_ms));
            stats.breaker_transitions = breaker.transitions();
        }
        let audit = self.core.port.audit();
        Box::pin(async move {
            stats.audit = match tokio::time::timeout(AUDIT_TIMEOUT, audit).await {
                Ok(Ok(audit)) => audit,
                _ => None,
            };
            stats
        })
    }
}
