//! Messages between the engine handle, shard actors, order actors and gateways, and the
//! results the engine hands back.

use std::sync::Arc;

use actix::Message;
use tokio::sync::oneshot;

use crate::domain::{
    Command, CommandEnvelope, CommandId, Order, OrderId, PaymentResult, RefundResult, Rejection,
};
use crate::store::StoreError;

/// What the engine answers for one command or read.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// The order's durable state after the command (shared with the order actor: answering
    /// costs a reference count, not a copy).
    pub order: Arc<Order>,
    /// True when the command id had been applied before and nothing changed.
    pub duplicate: bool,
}

/// The result of one command or read.
pub type CommandResult = Result<CommandOutcome, EngineError>;

/// Why the engine did not acknowledge a command. Only `Rejected` means "will never succeed as
/// is"; the others are retryable with the same command id.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The domain refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The store failed; the command was not acknowledged and the order was reloaded.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another writer changed the order first (or the actor was reloaded); retry.
    #[error("order {0} changed concurrently; retry")]
    Conflict(OrderId),
    /// The engine is saturated; retry later.
    #[error("engine overloaded; retry later")]
    Overloaded,
    /// The engine is shutting down.
    #[error("engine stopped")]
    Stopped,
    /// A bug was caught at an actor boundary (a panic); the order was reloaded.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Rejected(r) => r.code(),
            EngineError::Store(_) => "store_unavailable",
            EngineError::Conflict(_) => "conflict_retry",
            EngineError::Overloaded => "overloaded",
            EngineError::Stopped => "engine_stopped",
            EngineError::Internal(_) => "internal_error",
        }
    }
}

/// What is asked of an order.
#[derive(Debug, Clone)]
pub enum Request {
    /// Apply a command.
    Command(CommandEnvelope),
    /// Read the durable state.
    Read,
}

/// One routed request inside a dispatch.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) order_id: OrderId,
    pub(crate) request: Request,
    /// The id was just minted by the engine, so there is no snapshot to load.
    pub(crate) fresh: bool,
    /// Position in the caller's batch.
    pub(crate) index: u32,
}

/// Where the answers of a dispatch go.
pub(crate) enum ReplyTo {
    /// A single request.
    One(oneshot::Sender<CommandResult>),
    /// A batch: all answers at once, with their positions.
    Many(oneshot::Sender<Vec<(u32, CommandResult)>>),
}

/// Engine → shard: requests for orders of this shard.
pub(crate) struct Dispatch {
    pub(crate) items: Vec<Routed>,
    pub(crate) reply: ReplyTo,
}

impl Message for Dispatch {
    type Result = ();
}

/// What a shard asks of an order actor.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// A client's (or the engine's) request.
    Request(Request),
    /// Resume gateway work after a restart: query the live attempt's real outcome and re-send
    /// a pending refund (same idempotency key), never charge blindly.
    Resume,
}

/// Who produced a command: gateway verdicts are re-delivered if their write fails, since no
/// client will retry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client (or the engine's recovery), who sees the answer.
    Client,
    /// A gateway verdict; `redeliveries` counts how often it was delivered again already.
    Gateway { redeliveries: u8 },
}

/// Shard → order actor: apply a request; the answer goes through the shard's commit queue.
pub(crate) struct Deliver {
    pub(crate) token: usize,
    pub(crate) work: Work,
    /// Keep the reply open past this commit (a payment waits for the gateway's verdict).
    pub(crate) forwarded: bool,
    pub(crate) origin: Origin,
}

impl Message for Deliver {
    type Result = ();
}

/// Shard → order actor: drop in-memory state and reload the last durable snapshot.
pub(crate) struct Reload {
    pub(crate) incarnation: u32,
}

impl Message for Reload {
    type Result = ();
}

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

/// Control messages a shard consumes ahead of bulk work.
pub enum ShardControl {
    /// Verdicts of a gateway.
    Verdicts(Vec<Verdict>),
    /// Gateway jobs that ended without a final verdict (e.g. a refund whose outcome is still
    /// unknown after the sync window): their in-flight slots are freed and the orders stay as
    /// they are until resumed.
    Released(Vec<OrderId>),
    /// A verdict whose write failed, delivered again after a pause.
    Redeliver {
        /// The order.
        order_id: OrderId,
        /// The verdict's command.
        envelope: CommandEnvelope,
        /// How often it was delivered again already.
        redeliveries: u8,
    },
}
