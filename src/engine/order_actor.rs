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

/// The actor's copy of its order. Hot (decoded, shared with answers) while it can still change;
/// cold (its ~200-byte snapshot instead of ~600 bytes of structs) once settled, because a settled
/// order is only ever read again and live sets are measured in millions.
enum OrderState {
    Absent,
    Hot(Arc<Order>),
    Cold(Box<[u8]>),
}

impl OrderState {
    fn from_order(order: Arc<Order>, bytes: Option<&[u8]>) -> OrderState {
        match bytes {
            Some(bytes) if order.is_settled() => OrderState::Cold(bytes.into()),
            _ => OrderState::Hot(order),
        }
    }

    /// The decoded order (decoding a cold one on demand).
    fn materialize(&self) -> Result<Option<Arc<Order>>, StoreError> {
        match self {
            OrderState::Absent => Ok(None),
            OrderState::Hot(order) => Ok(Some(Arc::clone(order))),
            OrderState::Cold(bytes) => snapshot::decode(bytes)
                .map(|order| Some(Arc::new(order)))
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    fn exists(&self) -> bool {
        !matches!(self, OrderState::Absent)
    }

    fn settled(&self) -> bool {
        match self {
            OrderState::Absent => false,
            OrderState::Hot(order) => order.is_settled(),
            OrderState::Cold(_) => true,
        }
    }
}

/// The actor owning one order.
pub struct OrderActor {
    id: OrderId,
    core: Rc<ShardCore>,
    order: OrderState,
    incarnation: u32,
    /// Set when the last load failed; every request then fails (retryable) and the shard
    /// reloads the actor. Boxed: it is rare, and every live order pays for its size.
    load_error: Option<Box<StoreError>>,
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
            order: OrderState::Absent,
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
                        actor.order = OrderState::from_order(Arc::new(order), Some(&bytes));
                        actor.load_error = None;
                    }
                    Err(error) => {
                        actor.load_error = Some(Box::new(StoreError::Corrupt(error.to_string())))
                    }
                },
                Ok(None) => {
                    actor.order = OrderState::Absent;
                    actor.load_error = None;
                }
                Err(error) => actor.load_error = Some(Box::new(error)),
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
            exists: self.order.exists(),
            settled: self.order.settled(),
            reload: false,
            resend: false,
        }
    }

    fn handle_request(&mut self, token: usize, request: Request, forwarded: bool) -> CommitEntry {
        let materialized = match &self.load_error {
            Some(error) => Err((**error).clone()),
            None => self.order.materialize(),
        };
        let current_order = match materialized {
            Ok(order) => order,
            Err(error) => {
                let mut entry = self.entry(token, forwarded, Err(EngineError::Store(error)));
                entry.reload = true;
                return entry;
            }
        };
        let envelope = match request {
            Request::Read => {
                let result = match current_order {
                    Some(order) => Ok(CommandOutcome {
                        order,
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
        let current = current_order.as_deref();
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
                let order = match &current_order {
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
                let expected_version = current_order.as_ref().map_or(0, |o| o.version);
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
                self.order =
                    OrderState::from_order(order, entry.write.as_ref().map(|w| &w.bytes[..]));
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
        self.order = OrderState::Absent;
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
