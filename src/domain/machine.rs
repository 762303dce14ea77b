//! The order state machine: one pure function from (state, command, time) to
//! (new state, effects) or a typed rejection. No IO, no clocks, no randomness.

use std::sync::Arc;

use super::command::{Command, CommandEnvelope, Effect, Effects, OrderEvent, TimerKind};
use super::ids::{OrderId, Timestamp};
use super::order::{not_found, totals_minor, Order, OrderHeader, OrderStatus, RecentCommands};
use super::payment::{
    AttemptStatus, PaymentAttempt, PaymentResult, Refund, RefundResult, RefundStatus,
};
use super::rejection::Rejection;
use smallvec::SmallVec;

/// Time-based rules of the state machine (from config `[orders]`). 0 (or an empty list) turns
/// a rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPolicy {
    /// Offsets from placement at which an unpaid customer is reminded, ascending.
    pub payment_reminders_after_ms: Arc<[i64]>,
    /// After placement, when an unpaid order expires.
    pub unpaid_expiry_after_ms: i64,
    /// After shipping, when an order no one confirmed delivered completes by itself.
    pub auto_complete_after_ms: i64,
    /// After payment, when an order not yet shipped breaches the ship SLA (an event only).
    pub ship_sla_ms: i64,
    /// After a change to an order with live gateway work (a payment attempt or a refund),
    /// when the engine checks that work is still being carried out, and resumes it (a query,
    /// never a second charge) if not, as after a restart. 0 = never (nothing resumes it).
    pub payment_check_after_ms: i64,
}

impl Default for OrderPolicy {
    fn default() -> Self {
        OrderPolicy {
            payment_reminders_after_ms: Arc::from([15 * 60_000_i64]),
            unpaid_expiry_after_ms: 30 * 60_000,
            auto_complete_after_ms: 14 * 24 * 3_600_000,
            ship_sla_ms: 48 * 3_600_000,
            payment_check_after_ms: 3_000,
        }
    }
}

impl OrderPolicy {
    /// Every timer off.
    pub fn no_timers() -> OrderPolicy {
        OrderPolicy {
            payment_reminders_after_ms: Arc::from([]),
            unpaid_expiry_after_ms: 0,
            auto_complete_after_ms: 0,
            ship_sla_ms: 0,
            payment_check_after_ms: 3_000,
        }
    }

    /// The reminder to arm from schedule position `from` on, for an order placed at
    /// `created_at`: its due time (0: the schedule is over) and position. Reminders already
    /// overdue at `now` are skipped, so after an outage the customer gets the one reminder
    /// that fired, not a burst of every missed one.
    fn next_reminder(&self, created_at: Timestamp, from: u8, now: Timestamp) -> (Timestamp, u8) {
        let offsets = &self.payment_reminders_after_ms;
        let mut index = usize::from(from);
        while index < offsets.len() && created_at.plus_ms(offsets[index]) <= now {
            index += 1;
        }
        match offsets.get(index) {
            Some(&offset) if offset > 0 => (created_at.plus_ms(offset), index as u8),
            _ => (Timestamp(0), index.min(usize::from(u8::MAX)) as u8),
        }
    }
}

/// The timers an order has armed now, with their due times. Reminders and unpaid expiry wait
/// while a payment attempt is live: they are not armed then, and come back (already due,
/// if their time passed) when the attempt resolves with the order still unpaid.
pub fn armed_timers(order: &Order) -> SmallVec<[(TimerKind, Timestamp); 2]> {
    let mut timers = SmallVec::new();
    let mut arm = |kind, at: Timestamp| {
        if at.0 != 0 {
            timers.push((kind, at));
        }
    };
    match order.status {
        OrderStatus::PendingPayment if order.live_attempt().is_none() => {
            arm(TimerKind::PaymentReminder, order.reminder_at);
            arm(TimerKind::UnpaidExpiry, order.expires_at);
        }
        OrderStatus::Paid => arm(TimerKind::ShipSla, order.ship_sla_at),
        OrderStatus::Shipped => arm(TimerKind::AutoComplete, order.complete_at),
        _ => {}
    }
    arm(TimerKind::PaymentCheck, order.payment_check_at);
    timers
}

/// The earliest armed timer's due time (None: nothing armed). The shard's durable timer index
/// holds, for every order with an armed timer, a time no later than this.
pub fn next_due(order: &Order) -> Option<Timestamp> {
    armed_timers(order).iter().map(|(_, at)| *at).min()
}

/// The timers due at `now`, with their due times: an unpaid expiry first (a reminder for an
/// order that expires now would be moot), then earliest first.
pub fn due_timers(order: &Order, now: Timestamp) -> SmallVec<[(TimerKind, Timestamp); 2]> {
    let mut due: SmallVec<[(TimerKind, Timestamp); 2]> = armed_timers(order)
        .into_iter()
        .filter(|(_, at)| *at <= now)
        .collect();
    due.sort_by_key(|(kind, at)| (*kind != TimerKind::UnpaidExpiry, *at));
    due
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The state after the command.
    pub order: Order,
    /// What the engine must do once `order` is persisted.
    pub effects: Effects,
    /// True when the command id was seen before: nothing changed and nothing must be done.
    pub duplicate: bool,
}

/// Applies `envelope` to `order` (None: the order does not exist yet).
///
/// Invariants kept (and property-tested): the version grows by exactly one per applied
/// command; a settled terminal order never changes; refunds never exceed what was paid; totals
/// always equal the line items; a repeated command id changes nothing.
///
/// A placement of an order that exists is a replay when it carries the same request (same
/// fingerprint): it changes nothing and answers the current state, however long ago the order
/// was placed (its command id may have left the ring of recent ids). With another request it
/// is refused as [`Rejection::OrderAlreadyExists`]: an id derived from an idempotency key was
/// reused for different content.
pub fn apply(
    order: Option<&Order>,
    order_id: OrderId,
    envelope: &CommandEnvelope,
    now: Timestamp,
    policy: &OrderPolicy,
) -> Result<Applied, Rejection> {
    let Some(current) = order else {
        return match &envelope.command {
            Command::PlaceOrder(new_order) => place(order_id, envelope, new_order, now, policy),
            _ => Err(not_found(order_id)),
        };
    };
    if let Command::PlaceOrder(new_order) = &envelope.command {
        if new_order.fingerprint() != current.header.request_fingerprint {
            return Err(Rejection::OrderAlreadyExists(current.id()));
        }
        return Ok(Applied {
            order: current.clone(),
            effects: Effects::new(),
            duplicate: true,
        });
    }
    if current.recent.contains(envelope.id) {
        return Ok(Applied {
            order: current.clone(),
            effects: Effects::new(),
            duplicate: true,
        });
    }
    let mut next = current.clone();
    let mut effects = Effects::new();
    transition(&mut next, &envelope.command, now, policy, &mut effects)?;
    // Live gateway work is checked on a durable timer, re-armed by every change.
    let gateway_work = next.live_attempt().is_some() || next.pending_refund().is_some();
    next.payment_check_at = if gateway_work && policy.payment_check_after_ms > 0 {
        now.plus_ms(policy.payment_check_after_ms)
    } else {
        Timestamp(0)
    };
    next.version = current.version + 1;
    next.updated_at = now;
    next.recent.record(envelope.id, next.version);
    Ok(Applied {
        order: next,
        effects,
        duplicate: false,
    })
}

fn place(
    order_id: OrderId,
    envelope: &CommandEnvelope,
    new_order: &super::order::NewOrder,
    now: Timestamp,
    policy: &OrderPolicy,
) -> Result<Applied, Rejection> {
    let (item_count, total_minor) =
        totals_minor(&new_order.items, new_order.currency).ok_or(Rejection::AmountOutOfRange)?;
    let header = OrderHeader {
        id: order_id,
        customer_id: new_order.customer_id.clone(),
        currency: new_order.currency,
        payment_method: new_order.payment_method,
        items: new_order.items.clone(),
        metadata: new_order.metadata.clone(),
        item_count,
        total_minor,
        created_at: now,
        request_fingerprint: new_order.fingerprint(),
    };
    let mut effects = Effects::new();
    effects.push(Effect::Emit(OrderEvent::OrderPlaced));
    let mut order = Order {
        header: Arc::new(header),
        status: OrderStatus::PendingPayment,
        version: 1,
        updated_at: now,
        paid_minor: 0,
        refunded_minor: 0,
        payments: Vec::new(),
        refunds: Vec::new(),
        notes: None,
        reminder_at: Timestamp(0),
        expires_at: Timestamp(0),
        reminder_no: 0,
        ship_sla_at: Timestamp(0),
        complete_at: Timestamp(0),
        payment_check_at: Timestamp(0),
        timer_indexed_at: Timestamp(0),
        recent: RecentCommands::default(),
    };
    (order.reminder_at, order.reminder_no) = policy.next_reminder(now, 0, now);
    if policy.unpaid_expiry_after_ms > 0 {
        order.expires_at = now.plus_ms(policy.unpaid_expiry_after_ms);
    }
    order.recent.record(envelope.id, order.version);
    Ok(Applied {
        order,
        effects,
        duplicate: false,
    })
}

fn illegal(order: &Order, command: &Command) -> Rejection {
    Rejection::IllegalTransition {
        status: order.status,
        command: command.verb(),
    }
}

/// Payment is over (paid, cancelled, expired, held): reminders and unpaid expiry stop.
fn disarm_payment_timers(order: &mut Order) {
    order.reminder_at = Timestamp(0);
    order.expires_at = Timestamp(0);
}

/// The order is now paid: the ship SLA starts.
fn arm_ship_sla(order: &mut Order, now: Timestamp, policy: &OrderPolicy) {
    if policy.ship_sla_ms > 0 && order.ship_sla_at.0 == 0 {
        order.ship_sla_at = now.plus_ms(policy.ship_sla_ms);
    }
}

/// Starts a refund of `amount_minor`, remembering where to return if it fails.
fn start_refund(order: &mut Order, amount_minor: i64, now: Timestamp, effects: &mut Effects) {
    let refund = Refund {
        refund_no: order.refunds.len() as u16 + 1,
        amount_minor,
        status: RefundStatus::Pending,
        resume_status: order.status,
        created_at: now,
    };
    order.refunds.push(refund);
    order.status = OrderStatus::Refunding;
    effects.push(Effect::Emit(OrderEvent::RefundStarted));
    effects.push(Effect::RequestRefund {
        order_id: order.id(),
        refund_no: refund.refund_no,
        method: order.header.payment_method,
        amount_minor,
    });
}

fn refundable_minor(order: &Order) -> i64 {
    order.paid_minor - order.refunded_minor - order.pending_refund_minor()
}

fn transition(
    order: &mut Order,
    command: &Command,
    now: Timestamp,
    policy: &OrderPolicy,
    effects: &mut Effects,
) -> Result<(), Rejection> {
    // A settled terminal order accepts nothing; a terminal order with a live attempt still
    // accepts that attempt's result (a late success is refunded).
    if order.is_settled() {
        return Err(illegal(order, command));
    }
    match command {
        Command::PlaceOrder(_) => return Err(Rejection::OrderAlreadyExists(order.id())),
        Command::StartPayment { method } => {
            if let Some(live) = order.live_attempt() {
                return Err(Rejection::PaymentInFlight(live.attempt_no));
            }
            if order.status != OrderStatus::PendingPayment {
                return Err(illegal(order, command));
            }
            let attempt = PaymentAttempt {
                attempt_no: order.payments.len() as u16 + 1,
                method: method.unwrap_or(order.header.payment_method),
                status: AttemptStatus::Sending,
                amount_minor: order.header.total_minor,
                created_at: now,
                updated_at: now,
            };
            order.payments.push(attempt);
            order.status = OrderStatus::PaymentProcessing;
            effects.push(Effect::Emit(OrderEvent::PaymentStarted));
            effects.push(Effect::RequestCharge {
                order_id: order.id(),
                attempt_no: attempt.attempt_no,
                method: attempt.method,
                amount_minor: attempt.amount_minor,
            });
        }
        Command::RecordPaymentResult { attempt_no, result } => {
            record_payment(order, *attempt_no, result, now, policy, effects)?;
        }
        Command::ShipOrder { tracking_number } => {
            if order.status != OrderStatus::Paid {
                return Err(illegal(order, command));
            }
            order.status = OrderStatus::Shipped;
            order.ship_sla_at = Timestamp(0);
            if policy.auto_complete_after_ms > 0 {
                order.complete_at = now.plus_ms(policy.auto_complete_after_ms);
            }
            if let Some(tracking) = tracking_number {
                order.notes_mut().tracking_number = Some(tracking.clone());
            }
            effects.push(Effect::Emit(OrderEvent::OrderShipped));
        }
        Command::ConfirmDelivery => {
            if order.status != OrderStatus::Shipped {
                return Err(illegal(order, command));
            }
            order.status = OrderStatus::Completed;
            order.complete_at = Timestamp(0);
            effects.push(Effect::Emit(OrderEvent::OrderCompleted));
        }
        Command::AutoCompleteOrder => {
            if order.status != OrderStatus::Shipped || order.complete_at.0 == 0 {
                return Err(illegal(order, command));
            }
            if now < order.complete_at {
                return Err(Rejection::TimerNotDue);
            }
            order.status = OrderStatus::Completed;
            order.complete_at = Timestamp(0);
            effects.push(Effect::Emit(OrderEvent::OrderAutoCompleted));
        }
        Command::CheckShipSla => {
            if order.status != OrderStatus::Paid || order.ship_sla_at.0 == 0 {
                return Err(illegal(order, command));
            }
            if now < order.ship_sla_at {
                return Err(Rejection::TimerNotDue);
            }
            // Alert once; the state is left alone.
            order.ship_sla_at = Timestamp(0);
            effects.push(Effect::Emit(OrderEvent::ShipSlaBreached));
        }
        Command::CancelOrder { reason } => match order.status {
            OrderStatus::PendingPayment | OrderStatus::PaymentProcessing => {
                // With a live attempt the order is cancelled now; if that attempt later
                // succeeds, the late payment is refunded automatically.
                order.status = OrderStatus::Cancelled;
                if let Some(reason) = reason {
                    order.notes_mut().reason = Some(reason.clone());
                }
                disarm_payment_timers(order);
                effects.push(Effect::Emit(OrderEvent::OrderCancelled));
            }
            OrderStatus::Paid | OrderStatus::OnHold => {
                // Cancelling after payment returns the money: a full refund.
                if let Some(reason) = reason {
                    order.notes_mut().reason = Some(reason.clone());
                }
                effects.push(Effect::Emit(OrderEvent::OrderCancelled));
                let amount = refundable_minor(order);
                if amount > 0 {
                    start_refund(order, amount, now, effects);
                } else {
                    order.status = OrderStatus::Cancelled;
                }
            }
            _ => return Err(illegal(order, command)),
        },
        Command::RefundOrder { amount_minor } => {
            if let Some(pending) = order.pending_refund() {
                return Err(Rejection::RefundInFlight(pending.refund_no));
            }
            if !matches!(
                order.status,
                OrderStatus::Paid
                    | OrderStatus::Shipped
                    | OrderStatus::OnHold
                    | OrderStatus::PartiallyRefunded
            ) {
                return Err(illegal(order, command));
            }
            let refundable = refundable_minor(order);
            let amount = amount_minor.unwrap_or(refundable);
            if amount <= 0 || amount > refundable {
                return Err(Rejection::RefundExceedsPaid);
            }
            start_refund(order, amount, now, effects);
        }
        Command::RecordRefundResult { refund_no, result } => {
            let index = order
                .refunds
                .iter()
                .position(|r| r.refund_no == *refund_no && r.is_pending())
                .ok_or(Rejection::StaleResult(*refund_no))?;
            let refund = order.refunds[index];
            match result {
                RefundResult::Succeeded => {
                    order.refunds[index].status = RefundStatus::Succeeded;
                    order.refunded_minor += refund.amount_minor;
                    order.status = if order.refunded_minor >= order.paid_minor {
                        OrderStatus::Refunded
                    } else {
                        OrderStatus::PartiallyRefunded
                    };
                    effects.push(Effect::Emit(OrderEvent::OrderRefunded));
                }
                RefundResult::Failed { reason } => {
                    order.refunds[index].status = RefundStatus::Failed;
                    // Never settle into a terminal state while holding the customer's money
                    // (e.g. the refund of a late payment on a cancelled order failed).
                    order.status = if refund.resume_status.is_terminal() {
                        OrderStatus::OnHold
                    } else {
                        refund.resume_status
                    };
                    order.notes_mut().reason = Some(reason.as_str().into());
                    effects.push(Effect::Emit(OrderEvent::RefundFailed));
                }
            }
        }
        Command::ReleaseHold => {
            // Only an order that really holds its full total may continue as paid.
            if order.status != OrderStatus::OnHold
                || order.paid_minor - order.refunded_minor < order.header.total_minor
            {
                return Err(illegal(order, command));
            }
            order.status = OrderStatus::Paid;
            arm_ship_sla(order, now, policy);
            effects.push(Effect::Emit(OrderEvent::OrderPaid));
        }
        Command::SendPaymentReminder => {
            if order.status != OrderStatus::PendingPayment
                || order.reminder_at.0 == 0
                || order.live_attempt().is_some()
            {
                return Err(illegal(order, command));
            }
            if now < order.reminder_at {
                return Err(Rejection::TimerNotDue);
            }
            (order.reminder_at, order.reminder_no) = policy.next_reminder(
                order.header.created_at,
                order.reminder_no.saturating_add(1),
                now,
            );
            effects.push(Effect::Emit(OrderEvent::PaymentReminder));
        }
        Command::ExpireOrder => {
            // Unpaid expiry never fires while a payment attempt is live.
            if order.status != OrderStatus::PendingPayment
                || order.expires_at.0 == 0
                || order.live_attempt().is_some()
            {
                return Err(illegal(order, command));
            }
            if now < order.expires_at {
                return Err(Rejection::TimerNotDue);
            }
            order.status = OrderStatus::Expired;
            disarm_payment_timers(order);
            effects.push(Effect::Emit(OrderEvent::OrderExpired));
        }
    }
    Ok(())
}

fn record_payment(
    order: &mut Order,
    attempt_no: u16,
    result: &PaymentResult,
    now: Timestamp,
    policy: &OrderPolicy,
    effects: &mut Effects,
) -> Result<(), Rejection> {
    let index = order
        .payments
        .iter()
        .position(|a| a.attempt_no == attempt_no && a.status.is_live())
        .ok_or(Rejection::StaleResult(attempt_no))?;
    let order_id = order.id();
    let attempt = &mut order.payments[index];
    attempt.updated_at = now;
    let processing = order.status == OrderStatus::PaymentProcessing;
    match result {
        PaymentResult::Succeeded {
            amount_minor,
            currency,
        } => {
            attempt.status = AttemptStatus::Succeeded;
            let amount = *amount_minor;
            let same_currency = *currency == order.header.currency;
            if amount <= 0 || !same_currency {
                // Money of an unexpected sign or currency moved (or did not): a human must
                // look. It is not counted as paid, so it can never be refunded automatically.
                order.status = OrderStatus::OnHold;
                order.notes_mut().reason = Some("gateway amount or currency mismatch".into());
                disarm_payment_timers(order);
                effects.push(Effect::Emit(OrderEvent::OrderHeld));
                return Ok(());
            }
            order.paid_minor = order.paid_minor.saturating_add(amount);
            if processing {
                let event = if amount == order.header.total_minor {
                    order.status = OrderStatus::Paid;
                    arm_ship_sla(order, now, policy);
                    OrderEvent::OrderPaid
                } else {
                    order.status = OrderStatus::OnHold;
                    order.notes_mut().reason = Some("gateway amount mismatch".into());
                    OrderEvent::OrderHeld
                };
                disarm_payment_timers(order);
                effects.push(Effect::Emit(event));
            } else {
                // A late success on a cancelled (or otherwise moved-on) order: give it back.
                start_refund(order, amount, now, effects);
            }
        }
        PaymentResult::Declined { hard, reason } => {
            attempt.status = if *hard {
                AttemptStatus::DeclinedHard
            } else {
                AttemptStatus::DeclinedSoft
            };
            order.notes_mut().last_payment_error = Some(reason.as_str().into());
            if processing {
                order.status = OrderStatus::PendingPayment;
            }
            effects.push(Effect::Emit(OrderEvent::PaymentFailed));
        }
        PaymentResult::FailedNotSent { reason } => {
            attempt.status = AttemptStatus::FailedNotSent;
            order.notes_mut().last_payment_error = Some(reason.as_str().into());
            if processing {
                order.status = OrderStatus::PendingPayment;
            }
            effects.push(Effect::Emit(OrderEvent::PaymentFailed));
        }
        PaymentResult::Unknown { reason } => {
            attempt.status = AttemptStatus::Unknown;
            order.notes_mut().last_payment_error = Some(reason.as_str().into());
            effects.push(Effect::QueryPayment {
                order_id,
                attempt_no,
            });
        }
        PaymentResult::Syncing => attempt.status = AttemptStatus::Syncing,
        PaymentResult::Reversing => attempt.status = AttemptStatus::Reversing,
        PaymentResult::Voided => {
            attempt.status = AttemptStatus::Voided;
            if processing {
                order.status = OrderStatus::PendingPayment;
            }
            effects.push(Effect::Emit(OrderEvent::PaymentFailed));
        }
        PaymentResult::NeedsReview { reason } => {
            attempt.status = AttemptStatus::NeedsReview;
            order.notes_mut().reason = Some(reason.as_str().into());
            // Money may have moved, even on a cancelled order: never settle silently.
            order.status = OrderStatus::OnHold;
            disarm_payment_timers(order);
            effects.push(Effect::Emit(OrderEvent::PaymentNeedsReview));
            effects.push(Effect::Emit(OrderEvent::OrderHeld));
        }
    }
    Ok(())
}
