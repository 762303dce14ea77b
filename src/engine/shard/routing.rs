//! Routing: dispatches from the engine handle become requests to order actors, activated on
//! first use within the live-set bound; requests wait (bounded) while the live set is full of
//! busy orders or the first lease acquisition is under way, and are refused while the shard
//! is not owned.

use std::cell::RefCell;

use actix::Actor;
use std::rc::Rc;

use super::{commit_loop, Ownership, Parked, ShardCore};
use crate::domain::{Command, CommandEnvelope, OrderId};
use crate::engine::commit::{BatchCollector, PendingReply};
use crate::engine::messages::{
    Deliver, Dispatch, EngineError, Origin, ReplyTo, Request, Routed, Work,
};
use crate::engine::order_actor::OrderActor;
use crate::telemetry;

impl ShardCore {
    /// Accepts a dispatch from the engine handle.
    pub(super) fn dispatch(self: &Rc<Self>, dispatch: Dispatch) {
        self.group.tick();
        match dispatch.reply {
            ReplyTo::One(tx) => {
                if let Some(item) = dispatch.items.into_iter().next() {
                    let token = self.replies.borrow_mut().insert(PendingReply::One(tx));
                    self.route(
                        item.order_id,
                        Work::Request(item.request),
                        item.fresh,
                        token,
                        Origin::Client,
                    );
                }
            }
            ReplyTo::Many(tx) => {
                let collector = Rc::new(RefCell::new(BatchCollector {
                    results: Vec::with_capacity(dispatch.items.len()),
                    remaining: dispatch.items.len(),
                    reply: Some(tx),
                }));
                if dispatch.items.is_empty() {
                    if let Some(reply) = collector.borrow_mut().reply.take() {
                        let _ = reply.send(Vec::new());
                    }
                    return;
                }
                // The items may belong to any shard of this thread: route each to its own.
                let mut target: Option<Rc<ShardCore>> = None;
                for Routed {
                    order_id,
                    shard,
                    request,
                    fresh,
                    index,
                } in dispatch.items
                {
                    let reply = PendingReply::Many {
                        collector: Rc::clone(&collector),
                        index,
                    };
                    if target.as_ref().is_none_or(|t| t.shard != shard) {
                        target = if shard == self.shard {
                            Some(Rc::clone(self))
                        } else {
                            commit_loop::shard_on_this_thread(self.engine_id, shard)
                        };
                    }
                    let Some(core) = &target else {
                        // Right after start a thread's router can receive work for a shard
                        // whose actor this thread has not created yet: it waits for it.
                        commit_loop::park_for_shard(
                            self.engine_id,
                            shard,
                            (order_id, request, fresh, reply),
                        );
                        continue;
                    };
                    let token = core.replies.borrow_mut().insert(reply);
                    core.route(
                        order_id,
                        Work::Request(request),
                        fresh,
                        token,
                        Origin::Client,
                    );
                }
            }
        }
    }

    /// Takes the work that arrived for this shard before it was registered (see
    /// `commit_loop::park_for_shard`).
    pub(super) fn adopt_parked(self: &Rc<Self>) {
        for (order_id, request, fresh, reply) in
            commit_loop::take_parked(self.engine_id, self.shard)
        {
            let token = self.replies.borrow_mut().insert(reply);
            self.route(
                order_id,
                Work::Request(request),
                fresh,
                token,
                Origin::Client,
            );
        }
    }

    /// Sends work to its order actor, activating it (within the bound) if needed.
    pub(super) fn route(
        self: &Rc<Self>,
        order_id: OrderId,
        work: Work,
        fresh: bool,
        token: usize,
        origin: Origin,
    ) {
        // `pay` answers after the gateway's verdict, so its reply travels with the charge.
        let forwarded = matches!(
            &work,
            Work::Request(Request::Command(CommandEnvelope {
                command: Command::StartPayment { .. },
                ..
            }))
        );
        self.route_parked(
            Parked {
                order_id,
                work,
                fresh,
                token,
                forwarded,
                origin,
            },
            false,
        );
    }

    pub(super) fn route_parked(self: &Rc<Self>, parked: Parked, from_waiting: bool) {
        match self.ownership.get() {
            Ownership::Owned => {}
            Ownership::Acquiring => {
                // The first acquisition is under way: wait for it (bounded).
                self.park(parked);
                return;
            }
            Ownership::Lost | Ownership::Released => {
                self.resolve(parked.token, Err(self.not_owned()));
                return;
            }
        }
        let now_s = self.now_s();
        let mut live = self.live.borrow_mut();
        if let Some(entry) = live.touch(&parked.order_id, now_s) {
            if entry.in_flight >= self.limits.in_flight_max {
                drop(live);
                telemetry::record_overload();
                self.resolve(parked.token, Err(EngineError::Overloaded));
                return;
            }
            entry.in_flight += 1;
            let message = Deliver {
                token: parked.token,
                work: parked.work,
                forwarded: parked.forwarded,
                origin: parked.origin,
            };
            if entry.addr.try_send(message).is_err() {
                // The actor is gone (it cannot be full: in-flight is bounded below its mailbox).
                entry.in_flight -= 1;
                live.remove(&parked.order_id);
                drop(live);
                self.resolve(
                    parked.token,
                    Err(EngineError::Internal("order actor unavailable".into())),
                );
            }
            return;
        }
        // Keep per-order order: while anything is parked, new activations queue behind it.
        let must_park = (!from_waiting && !self.waiting.borrow().is_empty())
            || live.len() >= self.limits.max_live_orders;
        if must_park && !self.make_room(&mut live) {
            drop(live);
            self.park(parked);
            return;
        }
        let core = Rc::clone(self);
        let mailbox = self.limits.in_flight_max as usize + 4;
        let (order_id, fresh) = (parked.order_id, parked.fresh);
        let incarnation = self.incarnation();
        let addr = OrderActor::create(move |ctx| {
            ctx.set_mailbox_capacity(mailbox);
            OrderActor::new(order_id, core, fresh, incarnation)
        });
        telemetry::record_activation();
        let entry = live.insert(order_id, addr, incarnation, now_s);
        entry.in_flight = 1;
        let message = Deliver {
            token: parked.token,
            work: parked.work,
            forwarded: parked.forwarded,
            origin: parked.origin,
        };
        let sent = entry.addr.try_send(message).is_ok();
        let len = live.len();
        drop(live);
        self.update_stats(|s| {
            s.activations += 1;
            s.live = len;
            s.live_high_water = s.live_high_water.max(len);
        });
        if !sent {
            self.live.borrow_mut().remove(&order_id);
            self.resolve(
                parked.token,
                Err(EngineError::Internal("order actor unavailable".into())),
            );
        }
    }

    /// Parks a request until there is room (or the lease is acquired); refused as overload
    /// beyond `waiting_commands_max`.
    fn park(&self, parked: Parked) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() >= self.limits.waiting_max {
            drop(waiting);
            telemetry::record_overload();
            self.resolve(parked.token, Err(EngineError::Overloaded));
        } else {
            waiting.push_back(parked);
        }
    }

    /// Retries parked requests in arrival order while there is room.
    pub(super) fn drain_waiting(self: &Rc<Self>) {
        loop {
            let next = {
                let mut waiting = self.waiting.borrow_mut();
                let Some(front) = waiting.front() else { break };
                let mut live = self.live.borrow_mut();
                let is_live = live.get_mut(&front.order_id).is_some();
                if !is_live && !self.make_room(&mut live) {
                    break;
                }
                waiting.pop_front()
            };
            let Some(parked) = next else { break };
            // The front is live or there is room, so this does not park again.
            self.route_parked(parked, true);
        }
    }
}
