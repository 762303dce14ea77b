//! Typed refusals of the domain: every illegal input or transition is one of these, never a panic.

use super::ids::OrderId;
use super::order::OrderStatus;

/// An input field that failed validation, with a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Stable code, e.g. `invalid_quantity`, `unknown_currency`.
    pub code: &'static str,
    /// The offending field path, e.g. `items[0].quantity`.
    pub field: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(code: &'static str, field: &str, message: impl Into<String>) -> ValidationError {
        ValidationError {
            code,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Why a command was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The input is invalid.
    #[error("invalid input: {0}")]
    Invalid(#[from] ValidationError),
    /// No order with this id exists.
    #[error("order {0} not found")]
    OrderNotFound(OrderId),
    /// An order with this id exists already (and this is not a replay of its placement).
    #[error("order {0} already exists")]
    OrderAlreadyExists(OrderId),
    /// The command is not allowed in the order's current state.
    #[error("cannot {command} an order that is {}", .status.as_str())]
    IllegalTransition {
        /// Current state.
        status: OrderStatus,
        /// The command's verb.
        command: &'static str,
    },
    /// A payment attempt is still unresolved; no new attempt may start.
    #[error("payment attempt {0} is still in flight")]
    PaymentInFlight(u16),
    /// A refund is still in flight.
    #[error("refund {0} is still in flight")]
    RefundInFlight(u16),
    /// The payment or refund result names an attempt that is not live.
    #[error("no live attempt {0}")]
    StaleResult(u16),
    /// The refund would exceed what is left of the paid amount.
    #[error("refund exceeds the refundable amount")]
    RefundExceedsPaid,
    /// A timer fired before it was due or after it was disarmed.
    #[error("timer not due")]
    TimerNotDue,
    /// An arithmetic result left the engine's range.
    #[error("amount out of range")]
    AmountOutOfRange,
}

impl Rejection {
    /// Stable machine-readable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(v) => v.code,
            Rejection::OrderNotFound(_) => "order_not_found",
            Rejection::OrderAlreadyExists(_) => "order_already_exists",
            Rejection::IllegalTransition { .. } => "illegal_transition",
            Rejection::PaymentInFlight(_) => "payment_in_flight",
            Rejection::RefundInFlight(_) => "refund_in_flight",
            Rejection::StaleResult(_) => "stale_result",
            Rejection::RefundExceedsPaid => "refund_exceeds_paid",
            Rejection::TimerNotDue => "timer_not_due",
            Rejection::AmountOutOfRange => "amount_out_of_range",
        }
    }
}
