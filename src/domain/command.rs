//! Commands the order accepts, and the effects and events applying them produces.

use super::ids::{CommandId, OrderId};
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
    /// Timer: complete a shipped order that no one confirmed delivered.
    AutoCompleteOrder,
    /// Timer: flag a paid order not shipped within the ship SLA (the state is left alone).
    CheckShipSla,
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
            Command::AutoCompleteOrder => "auto_complete",
            Command::CheckShipSla => "ship_sla",
        }
    }
}

/// The durable timers an order can have armed (see [`super::machine::armed_timers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Remind the customer to pay.
    PaymentReminder,
    /// Expire the order if still unpaid.
    UnpaidExpiry,
    /// Complete a shipped order no one confirmed delivered.
    AutoComplete,
    /// Alert on a paid order not shipped in time.
    ShipSla,
    /// Check that live gateway work (an attempt, a refund) is still carried out; resume it
    /// otherwise. An engine timer: it changes no state.
    PaymentCheck,
}

impl TimerKind {
    /// Every kind, for metric labels that start at zero.
    pub const ALL: [TimerKind; 5] = [
        TimerKind::PaymentReminder,
        TimerKind::UnpaidExpiry,
        TimerKind::AutoComplete,
        TimerKind::ShipSla,
        TimerKind::PaymentCheck,
    ];

    /// Stable wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimerKind::PaymentReminder => "payment_reminder",
            TimerKind::UnpaidExpiry => "unpaid_expiry",
            TimerKind::AutoComplete => "auto_complete",
            TimerKind::ShipSla => "ship_sla",
            TimerKind::PaymentCheck => "payment_check",
        }
    }

    /// The command the timer delivers when it fires (None: an engine timer, no command).
    pub fn command(self) -> Option<Command> {
        match self {
            TimerKind::PaymentReminder => Some(Command::SendPaymentReminder),
            TimerKind::UnpaidExpiry => Some(Command::ExpireOrder),
            TimerKind::AutoComplete => Some(Command::AutoCompleteOrder),
            TimerKind::ShipSla => Some(Command::CheckShipSla),
            TimerKind::PaymentCheck => None,
        }
    }
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
    /// Delivered (confirmed).
    OrderCompleted,
    /// Completed by the auto-complete timer (wire type `order_completed`, reason
    /// `auto_completed`).
    OrderAutoCompleted,
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
    PaymentReminder,
    /// A payment attempt's outcome needs a human (the order is also held).
    PaymentNeedsReview,
    /// A paid order was not shipped within the ship SLA.
    ShipSlaBreached,
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
            OrderEvent::OrderCompleted | OrderEvent::OrderAutoCompleted => "order_completed",
            OrderEvent::OrderCancelled => "order_cancelled",
            OrderEvent::OrderExpired => "order_expired",
            OrderEvent::RefundStarted => "refund_started",
            OrderEvent::OrderRefunded => "order_refunded",
            OrderEvent::RefundFailed => "refund_failed",
            OrderEvent::PaymentReminder => "payment_reminder",
            OrderEvent::PaymentNeedsReview => "payment_needs_review",
            OrderEvent::ShipSlaBreached => "ship_sla_breached",
        }
    }

    /// Every event, for metric labels that start at zero and for documentation.
    pub const ALL: [OrderEvent; 16] = [
        OrderEvent::OrderPlaced,
        OrderEvent::PaymentStarted,
        OrderEvent::OrderPaid,
        OrderEvent::PaymentFailed,
        OrderEvent::OrderHeld,
        OrderEvent::OrderShipped,
        OrderEvent::OrderCompleted,
        OrderEvent::OrderAutoCompleted,
        OrderEvent::OrderCancelled,
        OrderEvent::OrderExpired,
        OrderEvent::RefundStarted,
        OrderEvent::OrderRefunded,
        OrderEvent::RefundFailed,
        OrderEvent::PaymentReminder,
        OrderEvent::PaymentNeedsReview,
        OrderEvent::ShipSlaBreached,
    ];

    /// Why an order completed (`data.reason` of `order_completed`), if this is that event.
    pub fn completion_reason(self) -> Option<&'static str> {
        match self {
            OrderEvent::OrderCompleted => Some("delivered"),
            OrderEvent::OrderAutoCompleted => Some("auto_completed"),
            _ => None,
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
}

/// The effects of one applied command: usually one or two, so kept inline.
pub type Effects = smallvec::SmallVec<[Effect; 2]>;
