//! Commands the order accepts, and the effects and events applying them produces.

use super::ids::{CommandId, OrderId, Timestamp};
use super::order::NewOrder;
use super::payment::{PaymentMethod, PaymentResult, RefundResult};

/// A command with the id that makes it idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandEnvelope {
    /// Re-applying an already applied id is a no-op.
    pub id: CommandId,
    /// What to do.
    pub command: Command,
}

impl CommandEnvelope {
    /// Wraps `command` with a fresh random id.
    pub fn new(command: Command) -> CommandEnvelope {
        CommandEnvelope {
            id: CommandId::new(),
            command,
        }
    }
}

/// Everything that can happen to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create the order (only valid when it does not exist).
    PlaceOrder(Box<NewOrder>),
    /// Start a payment attempt (PendingPayment → PaymentProcessing).
    StartPayment {
        /// Overrides the method chosen at placement.
        method: Option<PaymentMethod>,
    },
    /// A gateway's verdict on attempt `attempt_no`.
    RecordPaymentResult {
        /// The attempt the result belongs to.
        attempt_no: u16,
        /// The classified outcome.
        result: PaymentResult,
    },
    /// Hand to the carrier (Paid → Shipped).
    ShipOrder {
        /// Carrier tracking number.
        tracking_number: Option<Box<str>>,
    },
    /// Confirm delivery (Shipped → Completed).
    ConfirmDelivery,
    /// Cancel; after payment this refunds in full.
    CancelOrder {
        /// Why.
        reason: Option<Box<str>>,
    },
    /// Refund `amount_minor` (None: everything refundable).
    RefundOrder {
        /// Minor units; None refunds the remainder.
        amount_minor: Option<i64>,
    },
    /// A gateway's verdict on refund `refund_no`.
    RecordRefundResult {
        /// The refund the result belongs to.
        refund_no: u16,
        /// The outcome.
        result: RefundResult,
    },
    /// Release an order from hold after review (OnHold → Paid).
    ReleaseHold,
    /// Timer: remind the customer to pay.
    SendPaymentReminder,
    /// Timer: expire an unpaid order.
    ExpireOrder,
}

impl Command {
    /// The verb, for rejections, logs and metric labels (bounded set).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::PlaceOrder(_) => "place",
            Command::StartPayment { .. } => "pay",
            Command::RecordPaymentResult { .. } => "record_payment",
            Command::ShipOrder { .. } => "ship",
            Command::ConfirmDelivery => "deliver",
            Command::CancelOrder { .. } => "cancel",
            Command::RefundOrder { .. } => "refund",
            Command::RecordRefundResult { .. } => "record_refund",
            Command::ReleaseHold => "release_hold",
            Command::SendPaymentReminder => "remind",
            Command::ExpireOrder => "expire",
        }
    }
}

/// Which durable timer an effect arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Remind the customer to pay.
    PaymentReminder,
    /// Expire the order if still unpaid.
    UnpaidExpiry,
}

/// Events for the outside world (outbox), named `<Noun><PastVerb>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEvent {
    /// Order created.
    OrderPlaced,
    /// A payment attempt started.
    PaymentStarted,
    /// Paid in full.
    OrderPaid,
    /// A payment attempt was declined or failed.
    PaymentFailed,
    /// Put on hold for review.
    OrderHeld,
    /// Handed to the carrier.
    OrderShipped,
    /// Delivered.
    OrderCompleted,
    /// Cancelled.
    OrderCancelled,
    /// Expired unpaid.
    OrderExpired,
    /// A refund started.
    RefundStarted,
    /// A refund settled.
    OrderRefunded,
    /// A refund failed.
    RefundFailed,
    /// The customer should be reminded to pay.
    PaymentReminderDue,
}

impl OrderEvent {
    /// Stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEvent::OrderPlaced => "order_placed",
            OrderEvent::PaymentStarted => "payment_started",
            OrderEvent::OrderPaid => "order_paid",
            OrderEvent::PaymentFailed => "payment_failed",
            OrderEvent::OrderHeld => "order_held",
            OrderEvent::OrderShipped => "order_shipped",
            OrderEvent::OrderCompleted => "order_completed",
            OrderEvent::OrderCancelled => "order_cancelled",
            OrderEvent::OrderExpired => "order_expired",
            OrderEvent::RefundStarted => "refund_started",
            OrderEvent::OrderRefunded => "order_refunded",
            OrderEvent::RefundFailed => "refund_failed",
            OrderEvent::PaymentReminderDue => "payment_reminder_due",
        }
    }
}

/// What the engine must do after persisting the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Publish an event (outbox).
    Emit(OrderEvent),
    /// Ask the gateway to charge attempt `attempt_no` (idempotency key `order:attempt_no`).
    RequestCharge {
        /// The order.
        order_id: OrderId,
        /// The attempt.
        attempt_no: u16,
        /// Gateway to use.
        method: PaymentMethod,
        /// Amount, minor units.
        amount_minor: i64,
    },
    /// Ask the gateway for the real outcome of an attempt whose answer was lost.
    QueryPayment {
        /// The order.
        order_id: OrderId,
        /// The attempt.
        attempt_no: u16,
    },
    /// Ask the gateway to refund.
    RequestRefund {
        /// The order.
        order_id: OrderId,
        /// The refund.
        refund_no: u16,
        /// Gateway to use.
        method: PaymentMethod,
        /// Amount, minor units.
        amount_minor: i64,
    },
    /// Arm a durable timer.
    ArmTimer {
        /// Which timer.
        kind: TimerKind,
        /// When it fires.
        due_at: Timestamp,
    },
    /// Disarm a durable timer.
    DisarmTimer {
        /// Which timer.
        kind: TimerKind,
    },
}

/// The effects of one applied command: usually one or two, so kept inline.
pub type Effects = smallvec::SmallVec<[Effect; 2]>;
