//! The gateway link: gateway jobs leave for the gateway actors only once the state that asked
//! for them is durable, and their verdicts come back as commands for the orders.

use std::rc::Rc;
use std::time::Duration;

use super::ShardCore;
use crate::domain::{CommandEnvelope, OrderId, PaymentMethod};
use crate::engine::messages::{Deliver, Origin, Redelivery, Request, Work};
use crate::gateway::{GatewayJob, GatewayReply, GatewayWork, Verdict, VerdictFact, DETACHED};

/// How often a gateway verdict whose write failed is delivered again (no client retries it;
/// after this, the order resumes on the next engine start).
const REDELIVERIES_MAX: u8 = 5;
/// Pause before delivering a verdict again, times its redelivery count.
const REDELIVERY_PAUSE: Duration = Duration::from_millis(500);

impl ShardCore {
    /// Keeps `extra` more in-flight slots of an order for gateway jobs beyond the one its
    /// entry already holds.
    pub(super) fn hold(&self, order_id: OrderId, extra: usize) {
        if extra == 0 {
            return;
        }
        if let Some(entry) = self.live.borrow_mut().get_mut(&order_id) {
            entry.in_flight += extra as u32;
        }
    }

    /// Frees the in-flight slot of a gateway job that ended without a final verdict.
    pub(super) fn release(&self, order_id: OrderId) {
        let mut live = self.live.borrow_mut();
        if let Some(entry) = live.get_mut(&order_id) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }

    /// Hands jobs to their gateway actors: one message per gateway per commit.
    pub(super) fn send_jobs(&self, jobs: Vec<GatewayJob>) {
        if jobs.is_empty() {
            return;
        }
        let mut by_method: [Vec<GatewayJob>; 3] = Default::default();
        for job in jobs {
            by_method[job.method.code() as usize].push(job);
        }
        for (method, jobs) in PaymentMethod::ALL.into_iter().zip(by_method) {
            if jobs.is_empty() {
                continue;
            }
            let addr = self.gateways.for_method(method);
            let work = GatewayWork {
                jobs,
                reply_to: self.gateway_replies.clone(),
            };
            match addr.try_send(work) {
                Ok(()) => {}
                Err(actix::prelude::SendError::Full(work)) => {
                    // `send().await` waits for room in the gateway's bounded mailbox; the
                    // number of such waits is bounded by the jobs in flight.
                    let addr = addr.clone();
                    actix_rt::spawn(async move {
                        let _ = addr.send(work).await;
                    });
                }
                Err(actix::prelude::SendError::Closed(work)) => self.gateway_gone(work.jobs),
            }
        }
    }

    /// The gateway actor is gone (shutdown): charges were provably not sent; other jobs end
    /// without a verdict and resume on the next start.
    pub(super) fn gateway_gone(&self, jobs: Vec<GatewayJob>) {
        let mut verdicts = Vec::new();
        let mut released = Vec::new();
        for job in jobs {
            match job.kind {
                crate::gateway::JobKind::Charge { attempt_no } => verdicts.push(Verdict {
                    order_id: job.order_id,
                    fact: VerdictFact::Payment {
                        attempt_no,
                        result: crate::domain::PaymentResult::FailedNotSent {
                            reason: "gateway unavailable".into(),
                        },
                    },
                    token: job.token,
                    last: true,
                }),
                _ => released.push(job.order_id),
            }
        }
        let _ = self.gateway_replies.send(GatewayReply::Verdicts(verdicts));
        let _ = self.gateway_replies.send(GatewayReply::Released(released));
    }

    /// Delivers a gateway verdict again after a pause (its write failed).
    pub(super) fn redeliver_later(
        &self,
        order_id: OrderId,
        envelope: CommandEnvelope,
        redeliveries: u8,
    ) {
        if redeliveries >= REDELIVERIES_MAX {
            tracing::warn!(order = %order_id, "gateway verdict not durable after redeliveries; the order resumes on the next start");
            return;
        }
        let redeliveries_tx = self.redeliveries.clone();
        let pause = REDELIVERY_PAUSE * (u32::from(redeliveries) + 1);
        actix_rt::spawn(async move {
            tokio::time::sleep(pause).await;
            let _ = redeliveries_tx.send(Redelivery {
                order_id,
                envelope,
                redeliveries: redeliveries + 1,
            });
        });
    }

    /// Delivers a job's final verdict to its order, taking over the in-flight slot the job
    /// held (so the order cannot have been passivated meanwhile).
    pub(super) fn deliver_held(self: &Rc<Self>, order_id: OrderId, work: Work, token: usize) {
        let origin = Origin::Gateway { redeliveries: 0 };
        let mut live = self.live.borrow_mut();
        let Some(entry) = live.touch(&order_id, self.now_s()) else {
            drop(live);
            self.route(order_id, work, false, token, origin);
            return;
        };
        let message = Deliver {
            token,
            work,
            forwarded: false,
            origin,
        };
        if let Err(error) = entry.addr.try_send(message) {
            // The actor is gone: drop it and its held slot, and let a fresh one load the
            // order from its snapshot.
            live.remove(&order_id);
            drop(live);
            let message = match error {
                actix::prelude::SendError::Full(m) | actix::prelude::SendError::Closed(m) => m,
            };
            self.route(order_id, message.work, false, token, origin);
        }
    }

    /// Gateway replies are routed ahead of bulk work: they arrive on their own channel, not
    /// behind creates in the shard's mailbox. The engine adapts each verdict into the command
    /// that records it.
    pub(super) fn handle_gateway_reply(self: &Rc<Self>, reply: GatewayReply) {
        self.group.tick();
        match reply {
            GatewayReply::Verdicts(verdicts) => {
                for verdict in verdicts {
                    let work =
                        Work::Request(Request::Command(verdict.fact.envelope(verdict.order_id)));
                    if verdict.last {
                        self.deliver_held(verdict.order_id, work, verdict.token);
                    } else {
                        self.route(
                            verdict.order_id,
                            work,
                            false,
                            verdict.token,
                            Origin::Gateway { redeliveries: 0 },
                        );
                    }
                }
            }
            GatewayReply::Released(order_ids) => {
                for order_id in order_ids {
                    self.release(order_id);
                }
            }
        }
    }

    /// A verdict whose write failed, delivered again.
    pub(super) fn handle_redelivery(self: &Rc<Self>, redelivery: Redelivery) {
        self.group.tick();
        self.route(
            redelivery.order_id,
            Work::Request(Request::Command(redelivery.envelope)),
            false,
            DETACHED,
            Origin::Gateway {
                redeliveries: redelivery.redeliveries,
            },
        );
    }
}
