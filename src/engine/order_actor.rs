//! One actor per live order: it owns the order's state, applies commands through the pure
//! domain function and hands the resulting snapshot to its shard's commit queue. It never
//! answers a caller itself: answers leave only after the snapshot is durable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};

use super::commit::{CommitEntry, OrderChange, PendingWrite};
use super::messages::{CommandOutcome, Deliver, EngineError, Origin, Reload, Request, Work};
use super::shard::ShardCore;
use crate::domain::{
    apply, due_timers, next_due, AttemptStatus, Command, CommandEnvelope, Effect, Order, OrderId,
    PaymentMethod, Rejection, TimerKind, Timestamp,
};
use crate::gateway::{GatewayJob, JobKind, DETACHED};
use crate::store::{snapshot, StoreError, TimerChange};
use crate::telemetry;

/// The actor's copy of its order. Hot (decoded, shared with answers) while it can still change;
/// cold (its ~200-byte snapshot instead of ~600 bytes of structs) once settled, because a settled
/// order is only ever read again and live sets are measured in millions.
enum OrderState {
    Absent,
    Hot(Arc<Order>),
    Cold(Box<[u8]>),
}

impl OrderState {
    fn from_order(order: Arc<Order>, bytes: Option<&[u8]>) -> OrderState {
        match bytes {
            Some(bytes) if order.is_settled() => OrderState::Cold(bytes.into()),
            _ => OrderState::Hot(order),
        }
    }

    /// The decoded order (decoding a cold one on demand).
    fn materialize(&self) -> Result<Option<Arc<Order>>, StoreError> {
        match self {
            OrderState::Absent => Ok(None),
            OrderState::Hot(order) => Ok(Some(Arc::clone(order))),
            OrderState::Cold(bytes) => snapshot::decode(bytes)
                .map(|order| Some(Arc::new(order)))
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    fn exists(&self) -> bool {
        !matches!(self, OrderState::Absent)
    }

    fn settled(&self) -> bool {
        match self {
            OrderState::Absent => false,
            OrderState::Hot(order) => order.is_settled(),
            OrderState::Cold(_) => true,
        }
    }
}

/// The actor owning one order.
pub struct OrderActor {
    id: OrderId,
    core: Rc<ShardCore>,
    order: OrderState,
    incarnation: u32,
    /// Set when the last load failed; every request then fails (retryable) and the shard
    /// reloads the actor. Boxed: it is rare, and every live order pays for its size.
    load_error: Option<Box<StoreError>>,
    /// True until the first load finished (or when created for a fresh id: nothing to load).
    needs_load: bool,
    /// When this actor last handed gateway work over (0: none under way): a payment check
    /// that comes due meanwhile does not resume the work a second time.
    gateway_busy_since: Timestamp,
}

/// How long handed-over gateway work counts as under way before a payment check resumes it
/// anyway (longer than an attempt, its sync window and its reversal).
const GATEWAY_BUSY_MAX_MS: i64 = 120_000;

impl OrderActor {
    pub(crate) fn new(
        id: OrderId,
        core: Rc<ShardCore>,
        fresh: bool,
        incarnation: u32,
    ) -> OrderActor {
        OrderActor {
            id,
            core,
            order: OrderState::Absent,
            incarnation,
            load_error: None,
            needs_load: !fresh,
            gateway_busy_since: Timestamp(0),
        }
    }

    /// Loads the last durable snapshot; the actor's mailbox waits until it is in.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let future = self.core.store.load(self.core.shard, self.id);
        let started = std::time::Instant::now();
        ctx.wait(future.into_actor(self).map(move |result, actor, _| {
            telemetry::record_store_request(
                actor.core.store.kind(),
                "load",
                started.elapsed().as_secs_f64(),
            );
            actor.needs_load = false;
            match result {
                Ok(Some(bytes)) => match snapshot::decode(&bytes) {
                    Ok(order) => {
                        actor.order = OrderState::from_order(Arc::new(order), Some(&bytes));
                        actor.load_error = None;
                    }
                    Err(error) => {
                        actor.load_error = Some(Box::new(StoreError::Corrupt(error.to_string())))
                    }
                },
                Ok(None) => {
                    actor.order = OrderState::Absent;
                    actor.load_error = None;
                }
                Err(error) => actor.load_error = Some(Box::new(error)),
            }
        }));
    }

    fn entry(
        &self,
        token: usize,
        forwarded: bool,
        result: Result<CommandOutcome, EngineError>,
    ) -> CommitEntry {
        CommitEntry {
            order_id: self.id,
            incarnation: self.incarnation,
            token,
            forwarded,
            verb: "read",
            write: None,
            events: Default::default(),
            jobs: Default::default(),
            result,
            exists: self.order.exists(),
            settled: self.order.settled(),
            reload: false,
            resend: false,
            redeliver: None,
        }
    }

    fn handle_request(
        &mut self,
        token: usize,
        work: Work,
        forwarded: bool,
        origin: Origin,
    ) -> CommitEntry {
        let materialized = match &self.load_error {
            Some(error) => Err((**error).clone()),
            None => self.order.materialize(),
        };
        let current_order = match materialized {
            Ok(order) => order,
            Err(error) => {
                let mut entry = self.entry(token, forwarded, Err(EngineError::Store(error)));
                entry.reload = true;
                return entry;
            }
        };
        let request = match work {
            Work::FireTimers => return self.fire_timers(token, current_order),
            Work::Request(request) => request,
        };
        let envelope = match request {
            Request::Read => {
                let result = match current_order {
                    Some(order) => Ok(CommandOutcome {
                        order,
                        duplicate: false,
                    }),
                    None => Err(EngineError::Rejected(Rejection::OrderNotFound(self.id))),
                };
                return self.entry(token, forwarded, result);
            }
            Request::Command(envelope) => envelope,
        };
        self.apply_command(token, forwarded, origin, current_order, envelope)
    }

    /// Applies one command; the order's timer index entry follows its next timer in the same
    /// write.
    fn apply_command(
        &mut self,
        token: usize,
        forwarded: bool,
        origin: Origin,
        current_order: Option<Arc<Order>>,
        envelope: CommandEnvelope,
    ) -> CommitEntry {
        let now = self.core.now();
        let policy = &self.core.policy;
        let current = current_order.as_deref();
        let id = self.id;
        // A panic inside the pure domain or the codec is a bug; catch it here so it costs one
        // answer and a reload, never the arbiter thread and its other orders.
        let applied = catch_unwind(AssertUnwindSafe(|| {
            apply(current, id, &envelope, now, policy).map(|mut applied| {
                let timer = if applied.duplicate {
                    TimerChange::Unchanged
                } else {
                    index_timer(&mut applied.order)
                };
                let bytes = (!applied.duplicate).then(|| snapshot::encode(&applied.order));
                (applied, bytes, timer)
            })
        }));
        let verb = envelope.command.verb();
        let mut entry = match applied {
            Err(_) => {
                let mut entry = self.entry(
                    token,
                    forwarded,
                    Err(EngineError::Internal(format!("{verb} panicked"))),
                );
                entry.reload = true;
                entry
            }
            Ok(Err(rejection)) => {
                self.entry(token, forwarded, Err(EngineError::Rejected(rejection)))
            }
            Ok(Ok((applied, None, _))) => {
                let order = match &current_order {
                    Some(current) => Arc::clone(current),
                    None => Arc::new(applied.order),
                };
                let resend = matches!(envelope.command, Command::StartPayment { .. })
                    .then(|| resend_charge(&order))
                    .flatten();
                let mut entry = self.entry(
                    token,
                    forwarded,
                    Ok(CommandOutcome {
                        order,
                        duplicate: true,
                    }),
                );
                // A replayed `pay` whose attempt is still being sent: the first answer was
                // lost (e.g. the write's outcome was unknown), so the charge may never have
                // been requested. Ask again under the same idempotency key; the gateway
                // deduplicates, so this can never charge twice.
                if let Some(charge) = resend {
                    entry.jobs.push(charge);
                    entry.resend = true;
                }
                entry
            }
            Ok(Ok((applied, Some(bytes), timer))) => {
                let expected_version = current_order.as_ref().map_or(0, |o| o.version);
                let mut entry = self.entry(token, forwarded, Err(EngineError::Stopped));
                entry.write = Some(PendingWrite {
                    expected_version,
                    version: applied.order.version,
                    bytes,
                    timer,
                    change: OrderChange::between(current_order.as_deref(), &applied.order),
                });
                if let Origin::Gateway { redeliveries } = origin {
                    entry.redeliver = Some((envelope.clone(), redeliveries));
                }
                for effect in &applied.effects {
                    match effect {
                        Effect::Emit(event) => entry.events.push(&applied.order, *event),
                        Effect::RequestCharge {
                            order_id,
                            attempt_no,
                            method,
                            amount_minor,
                        } => entry.jobs.push(GatewayJob {
                            order_id: *order_id,
                            method: *method,
                            amount_minor: *amount_minor,
                            currency: applied.order.currency(),
                            kind: JobKind::Charge {
                                attempt_no: *attempt_no,
                            },
                            token: DETACHED,
                        }),
                        Effect::QueryPayment { attempt_no, .. } => {
                            if let Some(job) = query_job(&applied.order, *attempt_no) {
                                entry.jobs.push(job);
                            }
                        }
                        Effect::RequestRefund {
                            refund_no,
                            method,
                            amount_minor,
                            ..
                        } => entry.jobs.push(refund_job(
                            &applied.order,
                            *refund_no,
                            *method,
                            *amount_minor,
                        )),
                    }
                }
                entry.exists = true;
                entry.settled = applied.order.is_settled();
                if !entry.jobs.is_empty() {
                    self.gateway_busy_since = now;
                } else if !has_gateway_work(&applied.order) {
                    self.gateway_busy_since = Timestamp(0);
                }
                let order = Arc::new(applied.order);
                entry.result = Ok(CommandOutcome {
                    order: Arc::clone(&order),
                    duplicate: false,
                });
                self.order =
                    OrderState::from_order(order, entry.write.as_ref().map(|w| &w.bytes[..]));
                entry
            }
        };
        entry.verb = verb;
        entry
    }
}

impl OrderActor {
    /// A timer index entry of this order came due: fire the order's earliest due timer (a
    /// domain command, or the engine's payment check), or, when nothing is due (a stale entry
    /// left by a crash), move the entry to the order's next timer. Each fire commits with the
    /// entry moved on, so an entry is never fired twice for the same due time; a refused
    /// command removes the entry (the next transition re-arms it) instead of retrying.
    fn fire_timers(&mut self, token: usize, current: Option<Arc<Order>>) -> CommitEntry {
        let Some(order) = current else {
            let rejected = Err(EngineError::Rejected(Rejection::OrderNotFound(self.id)));
            let mut entry = self.entry(token, false, rejected);
            entry.verb = "timer";
            return entry;
        };
        let now = self.core.now();
        let Some(&(kind, due_at)) = due_timers(&order, now).first() else {
            return self.reindex(token, &order);
        };
        let lag = (now.0 - due_at.0).max(0) as f64 / 1000.0;
        let Some(command) = kind.command() else {
            return self.check_payment(token, &order, lag);
        };
        let verb = command.verb();
        let entry = self.apply_command(
            token,
            false,
            Origin::Client,
            Some(Arc::clone(&order)),
            CommandEnvelope::new(command),
        );
        if let Err(EngineError::Rejected(rejection)) = &entry.result {
            tracing::warn!(order = %self.id, timer = verb, %rejection, "due timer refused");
            telemetry::record_timer_fired(verb, "refused", 0.0);
            let mut unarmed = (*order).clone();
            disarm(&mut unarmed, kind);
            return self.reindex(token, &Arc::new(unarmed));
        }
        telemetry::record_timer_fired(verb, "fired", lag);
        entry
    }

    /// The payment check came due: while this actor's gateway work is under way (and not
    /// overdue) the check is simply moved on; otherwise the work is resumed as after a
    /// restart (the live attempt queried, never charged again; a pending refund re-sent
    /// under its key) and the check moved on, so a resume lost to a crash happens again.
    fn check_payment(&mut self, token: usize, order: &Arc<Order>, lag: f64) -> CommitEntry {
        let now = self.core.now();
        let check_ms = self.core.policy.payment_check_after_ms.max(1_000);
        let since = self.gateway_busy_since;
        let busy = since.0 != 0 && now.0 - since.0 < GATEWAY_BUSY_MAX_MS;
        let mut next = (**order).clone();
        next.payment_check_at = now.plus_ms(check_ms);
        let jobs = if busy {
            Default::default()
        } else {
            telemetry::record_timer_fired("payment_check", "fired", lag);
            self.gateway_busy_since = now;
            let jobs = resume_jobs(order);
            telemetry::record_payments_resumed(jobs.len() as u64);
            jobs
        };
        let mut entry = self.reindex(token, &Arc::new(next));
        entry.jobs = jobs;
        entry.verb = "payment_check";
        entry
    }

    /// Writes `order` again under the same version with its timer index entry set to
    /// exactly its next timer (the snapshot records what the index holds). Nothing is written
    /// when neither the entry nor the order changed.
    fn reindex(&mut self, token: usize, order: &Arc<Order>) -> CommitEntry {
        let mut next = (**order).clone();
        let timer = index_timer(&mut next);
        let unchanged = self
            .order
            .materialize()
            .ok()
            .flatten()
            .is_some_and(|current| *current == next);
        let outcome = |order: Arc<Order>| {
            Ok(CommandOutcome {
                order,
                duplicate: true,
            })
        };
        if timer == TimerChange::Unchanged && unchanged {
            let mut entry = self.entry(token, false, outcome(Arc::clone(order)));
            entry.verb = "timer";
            return entry;
        }
        if timer != TimerChange::Unchanged {
            telemetry::record_timer_reindexed();
        }
        let bytes = snapshot::encode(&next);
        let mut entry = self.entry(token, false, Err(EngineError::Stopped));
        entry.verb = "timer";
        entry.write = Some(PendingWrite {
            expected_version: next.version,
            version: next.version,
            bytes,
            timer,
            change: OrderChange::between(Some(order), &next),
        });
        entry.exists = true;
        entry.settled = next.is_settled();
        let next = Arc::new(next);
        entry.result = outcome(Arc::clone(&next));
        self.order = OrderState::from_order(next, entry.write.as_ref().map(|w| &w.bytes[..]));
        entry
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.needs_load {
            self.load(ctx);
        }
    }
}

impl Handler<Deliver> for OrderActor {
    type Result = ();

    fn handle(&mut self, message: Deliver, _: &mut Context<Self>) {
        let entry = self.handle_request(
            message.token,
            message.work,
            message.forwarded,
            message.origin,
        );
        self.core.enqueue(entry);
    }
}

impl Handler<Reload> for OrderActor {
    type Result = ();

    fn handle(&mut self, message: Reload, ctx: &mut Context<Self>) {
        self.incarnation = message.incarnation;
        self.order = OrderState::Absent;
        self.load_error = None;
        self.load(ctx);
    }
}

/// Whether the order has gateway work in flight: a live payment attempt or a pending refund.
/// Such orders are kept in the store's index that a restarted engine resumes from.
/// Keeps the shard's timer index in step with `order` after a change, and records in the
/// order what the index will hold: one entry per order, scored by its next timer, set or
/// removed in the same atomic write as the snapshot whenever that time changes. (Moving an
/// entry costs Redis a sorted-set update inside the batch; leaving it stale would cost a
/// wasted activation and write when it came due.)
fn index_timer(order: &mut Order) -> TimerChange {
    let indexed = order.timer_indexed_at;
    let change = match next_due(order) {
        Some(due) if due != indexed => TimerChange::Set(due),
        None if indexed.0 != 0 => TimerChange::Remove,
        _ => TimerChange::Unchanged,
    };
    match change {
        TimerChange::Set(due) => order.timer_indexed_at = due,
        TimerChange::Remove => order.timer_indexed_at = Timestamp(0),
        TimerChange::Unchanged => {}
    }
    change
}

/// Turns off one due timer that the domain refused (its next transition re-arms it).
fn disarm(order: &mut Order, kind: TimerKind) {
    match kind {
        TimerKind::PaymentReminder => order.reminder_at = Timestamp(0),
        TimerKind::UnpaidExpiry => order.expires_at = Timestamp(0),
        TimerKind::AutoComplete => order.complete_at = Timestamp(0),
        TimerKind::ShipSla => order.ship_sla_at = Timestamp(0),
        TimerKind::PaymentCheck => order.payment_check_at = Timestamp(0),
    }
}

/// The gateway jobs that resume an order's live work: a query of the live attempt (never a
/// second charge) and the pending refund under its key.
fn resume_jobs(order: &Order) -> smallvec::SmallVec<[GatewayJob; 1]> {
    let mut jobs: smallvec::SmallVec<[GatewayJob; 1]> = Default::default();
    if let Some(attempt) = order.live_attempt() {
        jobs.extend(query_job(order, attempt.attempt_no));
    }
    if let Some(refund) = order.pending_refund() {
        jobs.push(refund_job(
            order,
            refund.refund_no,
            order.header.payment_method,
            refund.amount_minor,
        ));
    }
    jobs
}

fn has_gateway_work(order: &Order) -> bool {
    order.live_attempt().is_some() || order.pending_refund().is_some()
}

/// The charge to re-send for an order whose latest attempt is still `Sending`.
fn resend_charge(order: &Order) -> Option<GatewayJob> {
    let attempt = order
        .live_attempt()
        .filter(|a| a.status == AttemptStatus::Sending)?;
    Some(GatewayJob {
        order_id: order.id(),
        method: attempt.method,
        amount_minor: attempt.amount_minor,
        currency: order.currency(),
        kind: JobKind::Charge {
            attempt_no: attempt.attempt_no,
        },
        token: DETACHED,
    })
}

/// A status query of attempt `attempt_no` (at the gateway that was asked to charge it).
fn query_job(order: &Order, attempt_no: u16) -> Option<GatewayJob> {
    let attempt = order.payments.iter().find(|a| a.attempt_no == attempt_no)?;
    Some(GatewayJob {
        order_id: order.id(),
        method: attempt.method,
        amount_minor: attempt.amount_minor,
        currency: order.currency(),
        kind: JobKind::Query {
            attempt_no,
            reversing: attempt.status == AttemptStatus::Reversing,
        },
        token: DETACHED,
    })
}

/// Refund `refund_no` of the order's captured charge, at the gateway that captured it.
fn refund_job(
    order: &Order,
    refund_no: u16,
    method: PaymentMethod,
    amount_minor: i64,
) -> GatewayJob {
    let captured = order
        .payments
        .iter()
        .rev()
        .find(|a| a.status == AttemptStatus::Succeeded);
    GatewayJob {
        order_id: order.id(),
        method: captured.map_or(method, |a| a.method),
        amount_minor,
        currency: order.currency(),
        kind: JobKind::Refund {
            refund_no,
            // Attempt 0 names no charge: the gateway refuses such a refund, which fails it
            // cleanly (it cannot happen: money to refund was captured by some attempt).
            charge_attempt_no: captured.map_or(0, |a| a.attempt_no),
        },
        token: DETACHED,
    }
}
