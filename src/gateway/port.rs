//! The gateway port: what Orderly asks of a payment service, and how a failed call is
//! classified. Implemented by the in-process [`super::simulated::SimulatedGateway`] and the
//! JSON-over-HTTP [`super::http::HttpGateway`]; the [`super::actor::GatewayActor`] adds
//! timeouts, retries, circuit breaking and limits around any implementation.
//!
//! Every call is keyed by our reference: a charge by its idempotency key `order_id:attempt_no`,
//! a refund by `order_id:r<refund_no>`. Repeating a call with the same key must never move
//! money twice; that is what makes retries and resumption after a crash safe.

use futures_util::future::BoxFuture;

use crate::domain::{Currency, OrderId};

/// One charge (authorize and capture in one call), under the idempotency key
/// `order_id:attempt_no` ([`ChargeCall::key`]): the gateway charges a key at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeCall {
    /// The order.
    pub order_id: OrderId,
    /// The attempt within the order.
    pub attempt_no: u16,
    /// Amount, minor units of `currency`.
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// Payment method name (`card`, `alipay`, `wechat`).
    pub method: &'static str,
}

impl ChargeCall {
    /// The idempotency key `order_id:attempt_no`. Built on demand: the in-process gateway
    /// keys its books by the numbers and never needs the text.
    pub fn key(&self) -> String {
        format!("{}:{}", self.order_id, self.attempt_no)
    }
}

/// A gateway's definite answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeReply {
    /// Captured this amount, which may differ from the one asked (a mismatch puts the order
    /// on hold).
    Captured {
        /// Amount captured, minor units of `currency`.
        amount_minor: i64,
        /// Currency captured in.
        currency: Currency,
    },
    /// Declined by the issuer or the gateway's risk checks.
    Declined {
        /// Never retry as is.
        hard: bool,
        /// The gateway's reason.
        reason: String,
    },
    /// Accepted but not settled yet: the outcome must be learned by querying.
    Pending,
    /// The key was voided earlier; it can never be charged.
    Voided,
}

/// What a status query by our reference found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryReply {
    /// The charge was captured.
    Captured {
        /// Amount captured, minor units.
        amount_minor: i64,
        /// Currency captured in.
        currency: Currency,
    },
    /// The charge was declined.
    Declined {
        /// Never retry as is.
        hard: bool,
        /// The gateway's reason.
        reason: String,
    },
    /// Known but not settled yet; ask again later.
    Pending,
    /// Voided (reversed): no money moved.
    Voided,
    /// The gateway never saw this key. The request may still be on its way, so the caller
    /// reverses the key (which also blocks a late arrival) rather than assuming it failed.
    NotFound,
}

/// The answer to a reversal (void) by our reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseReply {
    /// The key is voided: anything captured under it was returned, and it can never be
    /// charged again.
    Reversed,
    /// The gateway refuses to reverse (e.g. the charge was already refunded or settled).
    NotReversible {
        /// The gateway's reason.
        reason: String,
    },
}

/// One refund of part or all of a captured charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundCall {
    /// Idempotency key `order_id:r<refund_no>`; the gateway refunds a key at most once, so
    /// re-sending a refund whose answer was lost is safe and tells its outcome.
    pub key: String,
    /// The idempotency key of the captured charge to refund.
    pub charge_key: String,
    /// Amount, minor units of `currency`.
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
}

/// A gateway's definite answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundReply {
    /// Money returned.
    Refunded,
    /// Refused (e.g. more than what is left of the charge).
    Refused {
        /// The gateway's reason.
        reason: String,
    },
}

/// The gateway side's own books, for reconciliation and reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayAudit {
    /// Distinct idempotency keys charged (captured or pending).
    pub charges: u64,
    /// Charge requests that repeated a known key and were answered from the record instead of
    /// charging again.
    pub duplicates_refused: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Keys voided.
    pub reversals: u64,
    /// Orders with more than one captured, unreversed charge: money taken twice. Must be 0.
    pub double_charges: u64,
}

/// Why a gateway call did not produce a definite answer. The variants differ in the one thing
/// that matters for money: whether the request may have reached the gateway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request provably never reached the gateway (connection refused, throttled before
    /// processing): safe to retry.
    #[error("not sent: {0}")]
    NotSent(String),
    /// No answer in time after the request was sent: money may have moved.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// The gateway answered with a server error: money may have moved.
    #[error("gateway answered HTTP {0}")]
    Server(u16),
    /// The connection broke after the request was sent: money may have moved.
    #[error("connection lost after sending: {0}")]
    Transport(String),
    /// The answer could not be read: money may have moved.
    #[error("unreadable gateway answer: {0}")]
    Protocol(String),
    /// The gateway refused the request as invalid or unauthorized; nothing happened, and
    /// retrying the same request cannot help.
    #[error("gateway refused the request: {0}")]
    Rejected(String),
    /// The circuit breaker is open: the call was not made.
    #[error("circuit breaker open")]
    CircuitOpen,
    /// The gateway's rate or concurrency limit left no room within the retry budget: the call
    /// was not made.
    #[error("gateway limit reached")]
    Throttled,
    /// The gateway could not be set up (bad URL, client construction).
    #[error("gateway misconfigured: {0}")]
    Config(String),
}

/// What a failed call means for the payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Nothing reached the gateway: retry as a new try of the same attempt.
    NotSent,
    /// The request may have been processed: learn the truth by querying.
    Unknown,
    /// Refused for good: do not retry.
    Rejected,
}

impl GatewayError {
    /// Classifies the failure for the retry and sync rules.
    pub fn class(&self) -> FailureClass {
        match self {
            GatewayError::NotSent(_) | GatewayError::CircuitOpen | GatewayError::Throttled => {
                FailureClass::NotSent
            }
            GatewayError::Timeout(_)
            | GatewayError::Server(_)
            | GatewayError::Transport(_)
            | GatewayError::Protocol(_) => FailureClass::Unknown,
            GatewayError::Rejected(_) | GatewayError::Config(_) => FailureClass::Rejected,
        }
    }

    /// Whether the failure says the gateway is unhealthy (counts toward opening the breaker).
    /// Calls the breaker or a limit refused, and refusals of invalid requests, do not.
    pub fn is_health_failure(&self) -> bool {
        matches!(
            self,
            GatewayError::NotSent(_)
                | GatewayError::Timeout(_)
                | GatewayError::Server(_)
                | GatewayError::Transport(_)
                | GatewayError::Protocol(_)
        )
    }

    /// A short, bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            GatewayError::NotSent(_) => "not_sent",
            GatewayError::Timeout(_) => "timeout",
            GatewayError::Server(_) => "server_error",
            GatewayError::Transport(_) => "transport",
            GatewayError::Protocol(_) => "protocol",
            GatewayError::Rejected(_) => "rejected",
            GatewayError::CircuitOpen => "circuit_open",
            GatewayError::Throttled => "throttled",
            GatewayError::Config(_) => "config",
        }
    }
}

/// A payment service. Implementations do one call per method and no retries of their own:
/// timeouts, retries, backoff, circuit breaking and limits belong to the gateway actor.
/// Futures are `'static` so the actor can run many calls concurrently.
pub trait Gateway: Send + Sync + 'static {
    /// Authorizes and captures `call.amount_minor` under the idempotency key `call.key()`.
    fn charge(&self, call: ChargeCall) -> BoxFuture<'static, Result<ChargeReply, GatewayError>>;

    /// Looks up the charge made under `key`.
    fn query(&self, key: String) -> BoxFuture<'static, Result<QueryReply, GatewayError>>;

    /// Voids the charge made under `key` (or blocks the key if no charge arrived yet).
    fn reverse(&self, key: String) -> BoxFuture<'static, Result<ReverseReply, GatewayError>>;

    /// Refunds part or all of a captured charge under the idempotency key `call.key`.
    fn refund(&self, call: RefundCall) -> BoxFuture<'static, Result<RefundReply, GatewayError>>;

    /// The gateway side's own counters, if it exposes them.
    fn audit(&self) -> BoxFuture<'static, Result<Option<GatewayAudit>, GatewayError>>;
}
