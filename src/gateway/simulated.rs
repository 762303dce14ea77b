//! The in-process simulated gateway: approves every charge for the requested amount. It is the
//! embedded default so `orderly demo` runs with no external service.

use actix::{Actor, Context, Handler};

use super::{ChargeBatch, ChargeRequest};
use crate::domain::{PaymentMethod, PaymentResult};
use crate::engine::messages::{ShardControl, Verdict};
use crate::telemetry;

/// A gateway actor that approves every charge.
pub struct SimulatedGateway {
    method: PaymentMethod,
}

impl SimulatedGateway {
    /// A gateway for `method`.
    pub fn new(method: PaymentMethod) -> SimulatedGateway {
        SimulatedGateway { method }
    }

    fn charge(&self, request: &ChargeRequest) -> PaymentResult {
        PaymentResult::Succeeded {
            amount_minor: request.amount_minor,
            currency: request.currency,
        }
    }
}

impl Actor for SimulatedGateway {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Charges arrive in batches (one message per shard commit), so a deep mailbox is
        // rarely needed; bound it anyway.
        ctx.set_mailbox_capacity(4096);
    }
}

impl Handler<ChargeBatch> for SimulatedGateway {
    type Result = ();

    fn handle(&mut self, batch: ChargeBatch, _: &mut Context<Self>) {
        let verdicts: Vec<Verdict> = batch
            .requests
            .iter()
            .map(|request| Verdict {
                order_id: request.order_id,
                attempt_no: request.attempt_no,
                result: self.charge(request),
                token: request.token,
            })
            .collect();
        telemetry::record_payment_attempts(
            self.method.as_str(),
            "succeeded",
            verdicts.len() as u64,
        );
        // The shard may be gone during shutdown; its orders then resume from their snapshots.
        let _ = batch.reply_to.send(ShardControl::PaymentVerdicts(verdicts));
    }
}
