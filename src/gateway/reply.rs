//! What a gateway actor answers a shard: its own reply types, so the gateway layer imports
//! nothing of the engine; the engine adapts them into commands for its orders.

use tokio::sync::mpsc::UnboundedSender;

use crate::domain::{Command, CommandEnvelope, CommandId, OrderId, PaymentResult, RefundResult};

/// The fact a gateway reports about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerdictFact {
    /// The outcome (or progress) of payment attempt `attempt_no`.
    Payment {
        /// The attempt.
        attempt_no: u16,
        /// The classified outcome.
        result: PaymentResult,
    },
    /// The outcome of refund `refund_no`.
    Refund {
        /// The refund.
        refund_no: u16,
        /// The outcome.
        result: RefundResult,
    },
}

impl VerdictFact {
    /// The command that records this fact, with a deterministic id: the same fact always
    /// carries the same id, so a verdict delivered twice is applied once, while the distinct
    /// facts about one attempt (unknown, then reversing, then voided) each apply.
    pub fn envelope(&self, order_id: OrderId) -> CommandEnvelope {
        match self {
            VerdictFact::Payment { attempt_no, result } => {
                let purpose = match result {
                    PaymentResult::Succeeded { .. } => "payment-succeeded",
                    PaymentResult::Declined { .. } => "payment-declined",
                    PaymentResult::FailedNotSent { .. } => "payment-not-sent",
                    PaymentResult::Unknown { .. } => "payment-unknown",
                    PaymentResult::Syncing => "payment-syncing",
                    PaymentResult::Reversing => "payment-reversing",
                    PaymentResult::Voided => "payment-voided",
                    PaymentResult::NeedsReview { .. } => "payment-needs-review",
                };
                CommandEnvelope {
                    id: CommandId::derived(order_id, purpose, u32::from(*attempt_no)),
                    command: Command::RecordPaymentResult {
                        attempt_no: *attempt_no,
                        result: result.clone(),
                    },
                }
            }
            VerdictFact::Refund { refund_no, result } => CommandEnvelope {
                id: CommandId::derived(order_id, "refund-result", u32::from(*refund_no)),
                command: Command::RecordRefundResult {
                    refund_no: *refund_no,
                    result: result.clone(),
                },
            },
        }
    }
}

/// Gateway → shard: a verdict on one order. Sent on an unbounded channel because its volume is
/// bounded by construction (a few verdicts per gateway job, and jobs are bounded by live
/// orders) and it must never wait behind bulk creates.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The order.
    pub order_id: OrderId,
    /// What the gateway found.
    pub fact: VerdictFact,
    /// Opaque engine token of a request still waiting for this verdict (a `pay`), or
    /// [`DETACHED`] when nobody waits.
    pub token: usize,
    /// The job's final verdict: it takes over the in-flight slot the job held. Progress
    /// verdicts (e.g. `Reversing`) are not final.
    pub last: bool,
}

/// The token of work no caller waits for (recovery, queries, refunds started by the engine).
pub const DETACHED: usize = usize::MAX;

/// Gateway → shard: what became of a batch of jobs.
pub enum GatewayReply {
    /// Verdicts on orders.
    Verdicts(Vec<Verdict>),
    /// Jobs that ended without a final verdict (e.g. a refund whose outcome is still unknown
    /// after the sync window): their in-flight slots are freed and the orders stay as they are
    /// until resumed.
    Released(Vec<OrderId>),
}

/// Where a gateway sends its replies: the asking shard's control channel.
pub type ReplySender = UnboundedSender<GatewayReply>;
