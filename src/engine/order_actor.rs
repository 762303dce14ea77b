//! One actor per live order: it owns the order's state, applies commands through the pure
//! domain function and hands the resulting snapshot to its shard's commit queue. It never
//! answers a caller itself: answers leave only after the snapshot is durable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, WrapFuture};

use super::commit::{CommitEntry, PendingWrite};
use super::messages::{CommandOutcome, Deliver, EngineError, Reload, Request};
use super::shard::ShardCore;
use crate::domain::{
    apply, AttemptStatus, Command, Effect, Order, OrderId, PaymentMethod, Rejection, Timestamp,
};
use crate::gateway::ChargeRequest;
use crate::store::{snapshot, StoreError};

/// The actor owning one order.
pub struct OrderActor {
    id: OrderId,
    core: Rc<ShardCore>,
    order: Option<Arc<Order>>,
    incarnation: u32,
    /// Set when the last load failed; every request then fails (retryable) and the shard
    /// reloads the actor.
    load_error: Option<StoreError>,
    /// True until the first load finished (or when created for a fresh id: nothing to load).
    needs_load: bool,
}

impl OrderActor {
    pub(crate) fn new(
        id: OrderId,
        core: Rc<ShardCore>,
        fresh: bool,
        incarnation: u32,
    ) -> OrderActor {
        OrderActor {
            id,
            core,
            order: None,
            incarnation,
            load_error: None,
            needs_load: !fresh,
        }
    }

    /// Loads the last durable snapshot; the actor's mailbox waits until it is in.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let future = self.core.store.load(self.core.shard, self.id);
        ctx.wait(future.into_actor(self).map(|result, actor, _| {
            actor.needs_load = false;
            match result {
                Ok(Some(bytes)) => match snapshot::decode(&bytes) {
                    Ok(order) => {
                        actor.order = Some(Arc::new(order));
                        actor.load_error = None;
                    }
                    Err(error) => actor.load_error = Some(StoreError::Corrupt(error.to_string())),
                },
                Ok(None) => {
                    actor.order = None;
                    actor.load_error = None;
                }
                Err(error) => actor.load_error = Some(error),
            }
        }));
    }

    fn entry(
        &self,
        token: usize,
        forwarded: bool,
        result: Result<CommandOutcome, EngineError>,
    ) -> CommitEntry {
        CommitEntry {
            order_id: self.id,
            incarnation: self.incarnation,
            token,
            forwarded,
            verb: "read",
            write: None,
            events: Default::default(),
            charges: Default::default(),
            result,
            exists: self.order.is_some(),
            settled: self.order.as_ref().is_some_and(|o| o.is_settled()),
            reload: false,
            resend: false,
        }
    }

    fn handle_request(&mut self, token: usize, request: Request, forwarded: bool) -> CommitEntry {
        if let Some(error) = &self.load_error {
            let mut entry = self.entry(token, forwarded, Err(EngineError::Store(error.clone())));
            entry.reload = true;
            return entry;
        }
        let envelope = match request {
            Request::Read => {
                let result = match &self.order {
                    Some(order) => Ok(CommandOutcome {
                        order: Arc::clone(order),
                        duplicate: false,
                    }),
                    None => Err(EngineError::Rejected(Rejection::OrderNotFound(self.id))),
                };
                return self.entry(token, forwarded, result);
            }
            Request::Command(envelope) => envelope,
        };
        let now = Timestamp::now();
        let policy = self.core.policy;
        let current = self.order.as_deref();
        let id = self.id;
        // A panic inside the pure domain or the codec is a bug; catch it here so it costs one
        // answer and a reload, never the arbiter thread and its other orders.
        let applied = catch_unwind(AssertUnwindSafe(|| {
            apply(current, id, &envelope, now, &policy).map(|applied| {
                let bytes = (!applied.duplicate).then(|| snapshot::encode(&applied.order));
                (applied, bytes)
            })
        }));
        let verb = envelope.command.verb();
        let mut entry = match applied {
            Err(_) => {
                let mut entry = self.entry(
                    token,
                    forwarded,
                    Err(EngineError::Internal(format!("{verb} panicked"))),
                );
                entry.reload = true;
                entry
            }
            Ok(Err(rejection)) => {
                self.entry(token, forwarded, Err(EngineError::Rejected(rejection)))
            }
            Ok(Ok((applied, None))) => {
                let order = match &self.order {
                    Some(current) => Arc::clone(current),
                    None => Arc::new(applied.order),
                };
                let resend = matches!(envelope.command, Command::StartPayment { .. })
                    .then(|| resend_charge(&order, token))
                    .flatten();
                let mut entry = self.entry(
                    token,
                    forwarded,
                    Ok(CommandOutcome {
                        order,
                        duplicate: true,
                    }),
                );
                // A replayed `pay` whose attempt is still being sent: the first answer was
                // lost (e.g. the write's outcome was unknown), so the charge may never have
                // been requested. Ask again under the same idempotency key; the gateway
                // deduplicates, so this can never charge twice.
                if let Some(charge) = resend {
                    entry.charges.push(charge);
                    entry.resend = true;
                }
                entry
            }
            Ok(Ok((applied, Some(bytes)))) => {
                let expected_version = self.order.as_ref().map_or(0, |o| o.version);
                let mut entry = self.entry(token, forwarded, Err(EngineError::Stopped));
                entry.write = Some(PendingWrite {
                    expected_version,
                    version: applied.order.version,
                    bytes,
                });
                for effect in &applied.effects {
                    match effect {
                        Effect::Emit(event) => entry.events.push(event.as_str()),
                        Effect::RequestCharge {
                            order_id,
                            attempt_no,
                            method,
                            amount_minor,
                        } => {
                            entry.charges.push((
                                *method,
                                ChargeRequest {
                                    order_id: *order_id,
                                    attempt_no: *attempt_no,
                                    amount_minor: *amount_minor,
                                    currency: applied.order.currency(),
                                    token,
                                },
                            ));
                        }
                        // Timers, queries and refunds are carried out by later releases; the
                        // due times are already durable in the snapshot.
                        Effect::QueryPayment { .. }
                        | Effect::RequestRefund { .. }
                        | Effect::ArmTimer { .. }
                        | Effect::DisarmTimer { .. } => {}
                    }
                }
                entry.exists = true;
                entry.settled = applied.order.is_settled();
                let order = Arc::new(applied.order);
                entry.result = Ok(CommandOutcome {
                    order: Arc::clone(&order),
                    duplicate: false,
                });
                self.order = Some(order);
                entry
            }
        };
        entry.verb = verb;
        entry
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.needs_load {
            self.load(ctx);
        }
    }
}

impl Handler<Deliver> for OrderActor {
    type Result = ();

    fn handle(&mut self, message: Deliver, _: &mut Context<Self>) {
        let entry = self.handle_request(message.token, message.request, message.forwarded);
        self.core.enqueue(entry);
    }
}

impl Handler<Reload> for OrderActor {
    type Result = ();

    fn handle(&mut self, message: Reload, ctx: &mut Context<Self>) {
        self.incarnation = message.incarnation;
        self.order = None;
        self.load_error = None;
        self.load(ctx);
    }
}

/// The charge to re-send for an order whose latest attempt is still `Sending`.
fn resend_charge(order: &Order, token: usize) -> Option<(PaymentMethod, ChargeRequest)> {
    let attempt = order
        .live_attempt()
        .filter(|a| a.status == AttemptStatus::Sending)?;
    Some((
        attempt.method,
        ChargeRequest {
            order_id: order.id(),
            attempt_no: attempt.attempt_no,
            amount_minor: attempt.amount_minor,
            currency: order.currency(),
            token,
        },
    ))
}
