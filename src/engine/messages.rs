//! Messages between the engine handle, shard actors, order actors and gateways, and the
//! results the engine hands back.

use std::sync::Arc;

use actix::Message;
use tokio::sync::oneshot;

use crate::domain::{CommandEnvelope, Order, OrderId, Rejection};
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
    /// This node does not own the order's shard right now (its lease was lost or is being
    /// acquired); nothing was acknowledged. Retry later.
    #[error("shard {0} is unavailable on this node; retry later")]
    ShardUnavailable(u32),
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
            EngineError::Store(StoreError::Full(_)) => "store_full",
            EngineError::Store(_) => "store_unavailable",
            EngineError::Conflict(_) => "conflict_retry",
            EngineError::Overloaded => "overloaded",
            EngineError::ShardUnavailable(_) => "shard_unavailable",
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

impl Request {
    /// The command verb (`read` for a read), the `command` label of the metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Command(envelope) => envelope.command.verb(),
            Request::Read => "read",
        }
    }
}

/// One routed request inside a dispatch.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) order_id: OrderId,
    /// The order's logical shard (a dispatch may carry the orders of every shard of one
    /// arbiter thread).
    pub(crate) shard: u32,
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

/// Engine → shard: requests for orders of this shard, or (a batch) of every shard on the
/// receiving shard's arbiter thread: one message and one answer per thread, not per shard,
/// because each cross-thread message costs a wake-up of the receiving thread.
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
    /// The order's timer index entry came due: fire what is due, or correct the entry.
    FireTimers,
}

/// Who produced a command: gateway verdicts are re-delivered if their write fails, since no
/// client will retry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client (or the engine itself: a timer), who sees the answer.
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

/// A gateway verdict whose write failed, delivered again to its order after a pause; it goes
/// ahead of bulk work, as gateway replies do.
pub(crate) struct Redelivery {
    pub(crate) order_id: OrderId,
    pub(crate) envelope: CommandEnvelope,
    /// How often it was delivered again already.
    pub(crate) redeliveries: u8,
}
