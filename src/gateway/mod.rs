//! Payment gateways: one actor per configured gateway (`card`, `alipay`, `wechat`).
//!
//! The engine hands a gateway a batch of charge requests (one message per shard commit, not
//! one per order) and receives verdicts on the shard's control channel. This release ships the
//! in-process simulated gateway that approves every charge; retries, timeouts, circuit breaking
//! and the HTTP gateway build on the same messages.

pub mod simulated;

use actix::{Addr, Message};
use tokio::sync::mpsc::UnboundedSender;

use crate::domain::{Currency, OrderId, PaymentMethod};
use crate::engine::messages::ShardControl;

/// One charge the engine asks a gateway to make. `idempotency_key` is `order_id:attempt_no`.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    /// The order.
    pub order_id: OrderId,
    /// The attempt within the order.
    pub attempt_no: u16,
    /// Amount, minor units of `currency`.
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// Engine-internal reply token carried back with the verdict.
    pub token: usize,
}

impl ChargeRequest {
    /// The key the gateway deduplicates on; the same attempt always sends the same key.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}", self.order_id, self.attempt_no)
    }
}

/// A batch of charges from one shard commit, with the shard's control channel for verdicts.
pub struct ChargeBatch {
    /// The charges.
    pub requests: Vec<ChargeRequest>,
    /// Where the verdicts go.
    pub reply_to: UnboundedSender<ShardControl>,
}

impl Message for ChargeBatch {
    type Result = ();
}

/// The gateway actors, by payment method.
#[derive(Clone)]
pub struct Gateways {
    by_method: [Addr<simulated::SimulatedGateway>; 3],
}

impl Gateways {
    /// Starts one simulated gateway actor per payment method on the current arbiter.
    pub fn start_simulated() -> Gateways {
        use actix::Actor;
        Gateways {
            by_method: PaymentMethod::ALL
                .map(|method| simulated::SimulatedGateway::new(method).start()),
        }
    }

    /// The actor serving `method`.
    pub fn for_method(&self, method: PaymentMethod) -> &Addr<simulated::SimulatedGateway> {
        &self.by_method[method.code() as usize]
    }
}
