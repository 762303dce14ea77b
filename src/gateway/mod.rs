//! Payment gateways: one [`actor::GatewayActor`] per configured gateway (`card`, `alipay`,
//! `wechat` simulated in-process, `http` to an external payment service), each wrapping an
//! implementation of the [`port::Gateway`] port with per-call timeouts, retries with backoff
//! and full jitter ([`retry`]), a circuit breaker ([`breaker`]), a rate and a concurrency
//! limit ([`limits`]), and the resolution of unknown outcomes (query, then reverse, then
//! review).
//!
//! The engine hands a gateway a batch of jobs (one message per shard commit, not one per
//! order) only after the state that asked for them is durable, and receives verdicts on the
//! shard's control channel. Gateways are separate actors with async I/O, so a slow or failing
//! gateway never holds up the others.

pub mod actor;
pub mod breaker;
pub mod http;
pub mod limits;
pub mod port;
pub mod reply;
pub mod retry;
pub mod simulated;

use std::sync::Arc;

use actix::{Actor, Addr, Message};
use futures_util::future::{BoxFuture, FutureExt};

use crate::config::Settings;
use crate::domain::{Currency, OrderId, PaymentMethod};
pub use actor::{GatewayActor, GatewayStats};
pub use port::{Gateway, GatewayAudit, GatewayError};
pub use reply::{GatewayReply, ReplySender, Verdict, VerdictFact, DETACHED};

/// What a job asks of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Charge attempt `attempt_no` (idempotency key `order_id:attempt_no`).
    Charge {
        /// The attempt.
        attempt_no: u16,
    },
    /// Learn the real outcome of attempt `attempt_no` (sent, answer lost), reversing it if the
    /// sync window runs out.
    Query {
        /// The attempt.
        attempt_no: u16,
        /// The attempt is already being reversed (no need to record that again).
        reversing: bool,
    },
    /// Refund `refund_no` (idempotency key `order_id:r<refund_no>`) of the charge made by
    /// attempt `charge_attempt_no`.
    Refund {
        /// The refund.
        refund_no: u16,
        /// The attempt whose capture is refunded.
        charge_attempt_no: u16,
    },
}

/// One unit of gateway work for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayJob {
    /// The order.
    pub order_id: OrderId,
    /// The payment method (selects the gateway).
    pub method: PaymentMethod,
    /// Amount, minor units of `currency` (charged, or refunded).
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// What to do.
    pub kind: JobKind,
    /// Engine reply token carried back with the final verdict.
    pub token: usize,
}

impl GatewayJob {
    /// The idempotency key of the charge this job is about.
    pub fn charge_key(&self) -> Option<String> {
        match self.kind {
            JobKind::Charge { attempt_no } | JobKind::Query { attempt_no, .. } => {
                Some(format!("{}:{attempt_no}", self.order_id))
            }
            JobKind::Refund {
                charge_attempt_no, ..
            } => Some(format!("{}:{charge_attempt_no}", self.order_id)),
        }
    }
}

/// A batch of jobs from one shard commit, with the shard's control channel for verdicts.
pub struct GatewayWork {
    /// The jobs.
    pub jobs: Vec<GatewayJob>,
    /// Where the verdicts go.
    pub reply_to: ReplySender,
}

impl Message for GatewayWork {
    type Result = ();
}

/// A gateway that could not be built (its settings are wrong): every call is refused, so
/// payments through it fail cleanly instead of the engine refusing to start.
struct MisconfiguredGateway {
    reason: String,
}

impl MisconfiguredGateway {
    fn fail<T: Send + 'static>(&self) -> BoxFuture<'static, Result<T, GatewayError>> {
        futures_util::future::ready(Err(GatewayError::Config(self.reason.clone()))).boxed()
    }
}

impl Gateway for MisconfiguredGateway {
    fn charge(
        &self,
        _: port::ChargeCall,
    ) -> BoxFuture<'static, Result<port::ChargeReply, GatewayError>> {
        self.fail()
    }
    fn query(&self, _: String) -> BoxFuture<'static, Result<port::QueryReply, GatewayError>> {
        self.fail()
    }
    fn reverse(&self, _: String) -> BoxFuture<'static, Result<port::ReverseReply, GatewayError>> {
        self.fail()
    }
    fn refund(
        &self,
        _: port::RefundCall,
    ) -> BoxFuture<'static, Result<port::RefundReply, GatewayError>> {
        self.fail()
    }
    fn audit(&self) -> BoxFuture<'static, Result<Option<GatewayAudit>, GatewayError>> {
        futures_util::future::ready(Ok(None)).boxed()
    }
}

/// Builds the port implementation of the configured gateway `name`.
fn build_port(settings: &Settings, name: &str) -> Arc<dyn Gateway> {
    let Some(gateway) = settings.gateways.get(name) else {
        return Arc::new(MisconfiguredGateway {
            reason: format!("no [gateways.{name}] configured"),
        });
    };
    match gateway.kind.as_str() {
        "http" => match http::HttpGateway::new(gateway) {
            Ok(port) => Arc::new(port),
            Err(error) => {
                tracing::error!(gateway = name, %error, "cannot build the HTTP gateway");
                Arc::new(MisconfiguredGateway {
                    reason: error.to_string(),
                })
            }
        },
        _ => {
            let profile_name = if gateway.fault_profile.is_empty() {
                &settings.payments.fault_profile
            } else {
                &gateway.fault_profile
            };
            let profile = settings
                .payments
                .fault_profiles
                .get(profile_name)
                .cloned()
                .unwrap_or_default();
            Arc::new(simulated::SimulatedGateway::with_ledger(
                name,
                profile,
                settings.payments.simulated_ledger_retention_ms,
            ))
        }
    }
}

/// The running gateway actors and which one serves each payment method.
#[derive(Clone)]
pub struct Gateways {
    by_method: [Addr<GatewayActor>; 3],
    all: Vec<(String, Addr<GatewayActor>)>,
}

impl Gateways {
    /// Starts one actor per gateway that a payment method is routed to, on the current
    /// arbiter (gateway I/O is async, so they share it without blocking each other).
    pub fn start(settings: &Settings) -> Gateways {
        Gateways::start_with_clock(settings, crate::clock::SystemClock::shared())
    }

    /// Starts the gateway actors on `clock` (their backoff, breaker and rate limit read it).
    pub fn start_with_clock(settings: &Settings, clock: crate::clock::SharedClock) -> Gateways {
        crate::telemetry::describe_payments();
        let mut all: Vec<(String, Addr<GatewayActor>)> = Vec::new();
        let by_method = PaymentMethod::ALL.map(|method| {
            let name = settings.payments.routes.for_method(method);
            if let Some((_, addr)) = all.iter().find(|(n, _)| n == name) {
                return addr.clone();
            }
            let port = build_port(settings, name);
            let limits = settings.gateways.get(name);
            let addr =
                GatewayActor::new(name, port, &settings.payments, limits, clock.clone()).start();
            all.push((name.to_string(), addr.clone()));
            addr
        });
        Gateways { by_method, all }
    }

    /// The actor serving `method`.
    pub fn for_method(&self, method: PaymentMethod) -> &Addr<GatewayActor> {
        &self.by_method[method.code() as usize]
    }

    /// Statistics of every running gateway (with the gateway side's own audit where it has
    /// one), in start order.
    pub async fn stats(&self) -> Vec<GatewayStats> {
        let mut stats = Vec::with_capacity(self.all.len());
        for (_, addr) in &self.all {
            if let Ok(s) = addr.send(actor::GetGatewayStats).await {
                stats.push(s);
            }
        }
        stats
    }
}
