//! Payment attempts and refunds as the order records them.

use serde::{Deserialize, Serialize};

use super::ids::{OrderId, Timestamp};
use super::order::OrderStatus;

/// How the customer pays; each method is served by the gateway of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// Card schemes through the card gateway.
    Card,
    /// Alipay.
    Alipay,
    /// WeChat Pay.
    Wechat,
}

impl PaymentMethod {
    /// Every method.
    pub const ALL: [PaymentMethod; 3] = [
        PaymentMethod::Card,
        PaymentMethod::Alipay,
        PaymentMethod::Wechat,
    ];

    /// Parses the wire name (`card`, `alipay`, `wechat`; `wechat_pay` is accepted too).
    pub fn parse(name: &str) -> Option<PaymentMethod> {
        match name {
            "card" => Some(PaymentMethod::Card),
            "alipay" => Some(PaymentMethod::Alipay),
            "wechat" | "wechat_pay" => Some(PaymentMethod::Wechat),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Card => "card",
            PaymentMethod::Alipay => "alipay",
            PaymentMethod::Wechat => "wechat",
        }
    }

    /// Stable snapshot code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`PaymentMethod::code`].
    pub fn from_code(code: u8) -> Option<PaymentMethod> {
        PaymentMethod::ALL.get(code as usize).copied()
    }
}

/// Where a payment attempt stands (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Persisted and handed to the gateway; outcome not yet known.
    Sending,
    /// Captured.
    Succeeded,
    /// Refused by the issuer and never to be retried as is.
    DeclinedHard,
    /// Refused for a reason the customer may fix (insufficient funds, 3DS...).
    DeclinedSoft,
    /// The request provably never reached the gateway.
    FailedNotSent,
    /// Sent, but the answer was lost (timeout, reset, 5xx): money may have moved.
    Unknown,
    /// Being queried at the gateway to learn the real outcome.
    Syncing,
    /// Being reversed (voided) because the outcome could not be learned in time.
    Reversing,
    /// Reversed: no money moved in the end.
    Voided,
    /// Neither query nor reversal settled it; a human must look.
    NeedsReview,
}

impl AttemptStatus {
    /// Every status, in snapshot-code order.
    pub const ALL: [AttemptStatus; 10] = [
        AttemptStatus::Sending,
        AttemptStatus::Succeeded,
        AttemptStatus::DeclinedHard,
        AttemptStatus::DeclinedSoft,
        AttemptStatus::FailedNotSent,
        AttemptStatus::Unknown,
        AttemptStatus::Syncing,
        AttemptStatus::Reversing,
        AttemptStatus::Voided,
        AttemptStatus::NeedsReview,
    ];

    /// Whether the attempt is still unresolved, which blocks new attempts and unpaid expiry.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AttemptStatus::Sending
                | AttemptStatus::Unknown
                | AttemptStatus::Syncing
                | AttemptStatus::Reversing
        )
    }

    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Sending => "sending",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::DeclinedHard => "declined_hard",
            AttemptStatus::DeclinedSoft => "declined_soft",
            AttemptStatus::FailedNotSent => "failed_not_sent",
            AttemptStatus::Unknown => "unknown",
            AttemptStatus::Syncing => "syncing",
            AttemptStatus::Reversing => "reversing",
            AttemptStatus::Voided => "voided",
            AttemptStatus::NeedsReview => "needs_review",
        }
    }

    /// Stable snapshot code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`AttemptStatus::code`].
    pub fn from_code(code: u8) -> Option<AttemptStatus> {
        AttemptStatus::ALL.get(code as usize).copied()
    }
}

/// One payment attempt; its idempotency key is `order_id:attempt_no`, reused by every retry
/// of the same attempt so a gateway can never charge it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentAttempt {
    /// 1-based number within the order.
    pub attempt_no: u16,
    /// Gateway / method used.
    pub method: PaymentMethod,
    /// Where it stands.
    pub status: AttemptStatus,
    /// Amount requested, minor units.
    pub amount_minor: i64,
    /// When the attempt was created.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
}

impl PaymentAttempt {
    /// The idempotency key sent to the gateway for this attempt.
    pub fn idempotency_key(&self, order: OrderId) -> String {
        format!("{order}:{}", self.attempt_no)
    }
}

/// Where a refund stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Persisted and handed to the gateway.
    Pending,
    /// Money returned.
    Succeeded,
    /// The gateway refused; the order returns to where it was.
    Failed,
}

impl RefundStatus {
    /// Stable snapshot code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Inverse of [`RefundStatus::code`].
    pub fn from_code(code: u8) -> Option<RefundStatus> {
        [
            RefundStatus::Pending,
            RefundStatus::Succeeded,
            RefundStatus::Failed,
        ]
        .get(code as usize)
        .copied()
    }
}

/// One refund; its idempotency key is `order_id:r<refund_no>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// 1-based number within the order.
    pub refund_no: u16,
    /// Amount to return, minor units.
    pub amount_minor: i64,
    /// Where it stands.
    pub status: RefundStatus,
    /// The order status to return to if the refund fails.
    pub resume_status: OrderStatus,
    /// When the refund was requested.
    pub created_at: Timestamp,
}

impl Refund {
    /// Whether the gateway has not answered yet.
    pub fn is_pending(&self) -> bool {
        self.status == RefundStatus::Pending
    }

    /// The idempotency key sent to the gateway for this refund.
    pub fn idempotency_key(&self, order: OrderId) -> String {
        format!("{order}:r{}", self.refund_no)
    }
}

/// What a gateway reported for a payment attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentResult {
    /// Captured this amount (minor units) in this currency code index.
    Succeeded {
        /// Amount the gateway captured, minor units of `currency`.
        amount_minor: i64,
        /// Currency the gateway captured in.
        currency: super::money::Currency,
    },
    /// Declined; `hard` means never retry.
    Declined {
        /// Never retry as is.
        hard: bool,
        /// Gateway's reason.
        reason: String,
    },
    /// Provably not sent; safe to try again.
    FailedNotSent {
        /// What went wrong.
        reason: String,
    },
    /// Sent but the outcome is unknown.
    Unknown {
        /// What went wrong.
        reason: String,
    },
    /// A status query is under way.
    Syncing,
    /// A reversal is under way.
    Reversing,
    /// The reversal completed; no money moved.
    Voided,
    /// Could not be settled automatically.
    NeedsReview {
        /// Why.
        reason: String,
    },
}

/// What a gateway reported for a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundResult {
    /// Money returned.
    Succeeded,
    /// Refused; the order returns to its previous status.
    Failed {
        /// Gateway's reason.
        reason: String,
    },
}
