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

/// Time-based rules of the state machine (from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderPolicy {
    /// After placement, when to remind an unpaid customer (0 = never).
    pub payment_reminder_after_ms: i64,
    /// After placement, when an unpaid order expires (0 = never).
    pub unpaid_expiry_after_ms: i64,
}

impl Default for OrderPolicy {
    fn default() -> Self {
        OrderPolicy {
            payment_reminder_after_ms: 15 * 60_000,
            unpaid_expiry_after_ms: 30 * 60_000,
        }
    }
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
    transition(&mut next, &envelope.command, now, &mut effects)?;
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
        recent: RecentCommands::default(),
    };
    if policy.payment_reminder_after_ms > 0 {
        order.reminder_at = now.plus_ms(policy.payment_reminder_after_ms);
        effects.push(Effect::ArmTimer {
            kind: TimerKind::PaymentReminder,
            due_at: order.reminder_at,
        });
    }
    if policy.unpaid_expiry_after_ms > 0 {
        order.expires_at = now.plus_ms(policy.unpaid_expiry_after_ms);
        effects.push(Effect::ArmTimer {
            kind: TimerKind::UnpaidExpiry,
            due_at: order.expires_at,
        });
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

fn disarm_payment_timers(order: &mut Order, effects: &mut Effects) {
    if order.reminder_at.0 != 0 {
        order.reminder_at = Timestamp(0);
        effects.push(Effect::DisarmTimer {
            kind: TimerKind::PaymentReminder,
        });
    }
    if order.expires_at.0 != 0 {
        order.expires_at = Timestamp(0);
        effects.push(Effect::DisarmTimer {
            kind: TimerKind::UnpaidExpiry,
        });
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
            record_payment(order, *attempt_no, result, now, effects)?;
        }
        Command::ShipOrder { tracking_number } => {
            if order.status != OrderStatus::Paid {
                return Err(illegal(order, command));
            }
            order.status = OrderStatus::Shipped;
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
            effects.push(Effect::Emit(OrderEvent::OrderCompleted));
        }
        Command::CancelOrder { reason } => match order.status {
            OrderStatus::PendingPayment | OrderStatus::PaymentProcessing => {
                // With a live attempt the order is cancelled now; if that attempt later
                // succeeds, the late payment is refunded automatically.
                order.status = OrderStatus::Cancelled;
                if let Some(reason) = reason {
                    order.notes_mut().reason = Some(reason.clone());
                }
                disarm_payment_timers(order, effects);
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
            effects.push(Effect::Emit(OrderEvent::OrderPaid));
        }
        Command::SendPaymentReminder => {
            if order.status != OrderStatus::PendingPayment || order.reminder_at.0 == 0 {
                return Err(illegal(order, command));
            }
            if now < order.reminder_at {
                return Err(Rejection::TimerNotDue);
            }
            order.reminder_at = Timestamp(0);
            effects.push(Effect::Emit(OrderEvent::PaymentReminderDue));
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
            disarm_payment_timers(order, effects);
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
                disarm_payment_timers(order, effects);
                effects.push(Effect::Emit(OrderEvent::OrderHeld));
                return Ok(());
            }
            order.paid_minor = order.paid_minor.saturating_add(amount);
            if processing {
                let event = if amount == order.header.total_minor {
                    order.status = OrderStatus::Paid;
                    OrderEvent::OrderPaid
                } else {
                    order.status = OrderStatus::OnHold;
                    order.notes_mut().reason = Some("gateway amount mismatch".into());
                    OrderEvent::OrderHeld
                };
                disarm_payment_timers(order, effects);
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
            effects.push(Effect::Emit(OrderEvent::OrderHeld));
        }
    }
    Ok(())
}
