//! The in-process simulated gateways (`card`, `alipay`, `wechat`): a payment service in memory
//! with the same contract as a real one (a key is charged at most once, queries and reversals
//! by key, refunds up to the captured amount) and the faults of a [`FaultProfile`]: latency,
//! declines, calls that never leave, charges whose answer is lost, 5xx and late captures.
//! With the `healthy` profile every charge is captured at once, so `orderly demo` runs with no
//! external service.
//!
//! It keeps a record of every key it saw (about 60 bytes each), which is what lets it answer
//! queries and count double charges on its own side.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};

use super::port::{
    ChargeCall, ChargeReply, Gateway, GatewayAudit, GatewayError, QueryReply, RefundCall,
    RefundReply, ReverseReply,
};
use crate::config::FaultProfile;
use crate::domain::{Currency, OrderId};

/// A key as the simulation stores it: order id halves and the attempt or refund number
/// (24 bytes instead of a 40-byte string).
type Key = (u64, u64, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChargeStatus {
    Captured,
    /// Captures at `lands_at_ms`.
    Pending,
    Declined {
        hard: bool,
    },
    Voided,
}

#[derive(Debug, Clone, Copy)]
struct ChargeRecord {
    amount_minor: i64,
    refunded_minor: i64,
    currency: Currency,
    status: ChargeStatus,
    lands_at_ms: u64,
}

#[derive(Default)]
struct Books {
    charges: HashMap<Key, ChargeRecord, ahash::RandomState>,
    refunds: HashMap<Key, i64, ahash::RandomState>,
    audit: GatewayAudit,
}

/// One simulated gateway.
pub struct SimulatedGateway {
    profile: FaultProfile,
    books: Mutex<Books>,
    origin: Instant,
}

/// What one draw of the fault profile decided for a charge.
enum ChargeFault {
    None,
    NotSent,
    ServerError,
    DeclineHard,
    DeclineSoft,
    Timeout,
    LateSuccess,
}

fn parse_key(key: &str, refund: bool) -> Result<Key, GatewayError> {
    let malformed = || GatewayError::Rejected(format!("malformed key {key:?}"));
    let (order, number) = key.split_once(':').ok_or_else(malformed)?;
    let order = OrderId::parse(order).ok_or_else(malformed)?;
    let number = if refund {
        number.strip_prefix('r').ok_or_else(malformed)?
    } else {
        number
    };
    let number: u16 = number.parse().map_err(|_| malformed())?;
    let (hi, lo) = order.as_uuid().as_u64_pair();
    Ok((hi, lo, number))
}

impl SimulatedGateway {
    /// A simulated gateway injecting the faults of `profile`.
    pub fn new(profile: FaultProfile) -> SimulatedGateway {
        SimulatedGateway {
            profile,
            books: Mutex::new(Books::default()),
            origin: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // A panic while holding the lock cannot leave a half-written record (every update is
        // one insert or one field store), so a poisoned lock is still consistent.
        self.books
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn latency(&self) -> Duration {
        let p = &self.profile;
        let mut ms = p.latency_base_ms;
        if p.latency_jitter_ms > 0 {
            ms += fastrand::u64(0..=p.latency_jitter_ms);
        }
        if p.latency_tail_rate > 0.0 && fastrand::f64() < p.latency_tail_rate {
            ms += p.latency_tail_ms;
        }
        Duration::from_millis(ms)
    }

    fn charge_fault(&self) -> ChargeFault {
        let p = &self.profile;
        let draw = fastrand::f64();
        let mut edge = 0.0;
        for (rate, fault) in [
            (p.not_sent_rate, ChargeFault::NotSent),
            (p.server_error_rate, ChargeFault::ServerError),
            (p.decline_hard_rate, ChargeFault::DeclineHard),
            (p.decline_soft_rate, ChargeFault::DeclineSoft),
            (p.timeout_rate, ChargeFault::Timeout),
            (p.late_success_rate, ChargeFault::LateSuccess),
        ] {
            edge += rate;
            if draw < edge {
                return fault;
            }
        }
        ChargeFault::None
    }

    /// A fault for a query, reversal or refund: only transport faults apply to those.
    fn call_fault(&self) -> Option<GatewayError> {
        let p = &self.profile;
        let draw = fastrand::f64();
        if draw < p.not_sent_rate {
            Some(GatewayError::NotSent(
                "connection refused (simulated)".into(),
            ))
        } else if draw < p.not_sent_rate + p.server_error_rate {
            Some(GatewayError::Server(503))
        } else {
            None
        }
    }

    fn settle(record: &mut ChargeRecord, now_ms: u64) {
        if record.status == ChargeStatus::Pending && now_ms >= record.lands_at_ms {
            record.status = ChargeStatus::Captured;
        }
    }

    fn charge_now(&self, call: &ChargeCall) -> Result<ChargeReply, (GatewayError, bool)> {
        let fault = self.charge_fault();
        if matches!(fault, ChargeFault::NotSent) {
            return Err((
                GatewayError::NotSent("connection refused (simulated)".into()),
                false,
            ));
        }
        let (hi, lo) = call.order_id.as_uuid().as_u64_pair();
        let key = (hi, lo, call.attempt_no);
        let now_ms = self.now_ms();
        let mut books = self.books();
        if let Some(record) = books.charges.get_mut(&key) {
            SimulatedGateway::settle(record, now_ms);
            let record = *record;
            books.audit.duplicates_refused += 1;
            return Ok(match record.status {
                ChargeStatus::Captured => ChargeReply::Captured {
                    amount_minor: record.amount_minor,
                    currency: record.currency,
                },
                ChargeStatus::Pending => ChargeReply::Pending,
                ChargeStatus::Declined { hard } => ChargeReply::Declined {
                    hard,
                    reason: "declined (simulated, replayed)".into(),
                },
                ChargeStatus::Voided => ChargeReply::Voided,
            });
        }
        let mut record = ChargeRecord {
            amount_minor: call.amount_minor,
            refunded_minor: 0,
            currency: call.currency,
            status: ChargeStatus::Captured,
            lands_at_ms: 0,
        };
        let reply = match fault {
            ChargeFault::DeclineHard | ChargeFault::DeclineSoft => {
                let hard = matches!(fault, ChargeFault::DeclineHard);
                record.status = ChargeStatus::Declined { hard };
                Ok(ChargeReply::Declined {
                    hard,
                    reason: if hard {
                        "card reported stolen (simulated)".into()
                    } else {
                        "insufficient funds (simulated)".into()
                    },
                })
            }
            ChargeFault::LateSuccess => {
                record.status = ChargeStatus::Pending;
                record.lands_at_ms = now_ms + self.profile.late_ms;
                Ok(ChargeReply::Pending)
            }
            // The charge is taken, but the answer will not arrive in time.
            ChargeFault::Timeout => Err((GatewayError::Timeout(self.profile.hang_ms), true)),
            ChargeFault::ServerError => {
                // A 5xx says nothing about the charge: half of them were taken.
                if fastrand::bool() {
                    Err((GatewayError::Server(502), true))
                } else {
                    return Err((GatewayError::Server(503), false));
                }
            }
            ChargeFault::None | ChargeFault::NotSent => Ok(ChargeReply::Captured {
                amount_minor: call.amount_minor,
                currency: call.currency,
            }),
        };
        if !matches!(record.status, ChargeStatus::Declined { .. }) {
            books.audit.charges += 1;
        }
        books.charges.insert(key, record);
        reply
    }

    fn query_now(&self, key: &str) -> Result<QueryReply, GatewayError> {
        if let Some(error) = self.call_fault() {
            return Err(error);
        }
        let key = parse_key(key, false)?;
        let now_ms = self.now_ms();
        let mut books = self.books();
        let Some(record) = books.charges.get_mut(&key) else {
            return Ok(QueryReply::NotFound);
        };
        SimulatedGateway::settle(record, now_ms);
        Ok(match record.status {
            ChargeStatus::Captured => QueryReply::Captured {
                amount_minor: record.amount_minor,
                currency: record.currency,
            },
            ChargeStatus::Pending => QueryReply::Pending,
            ChargeStatus::Declined { hard } => QueryReply::Declined {
                hard,
                reason: "declined (simulated)".into(),
            },
            ChargeStatus::Voided => QueryReply::Voided,
        })
    }

    fn reverse_now(&self, key: &str) -> Result<ReverseReply, GatewayError> {
        if let Some(error) = self.call_fault() {
            return Err(error);
        }
        let key = parse_key(key, false)?;
        let now_ms = self.now_ms();
        let mut books = self.books();
        match books.charges.get_mut(&key) {
            None => {
                // Never arrived: block the key so a late arrival cannot charge it.
                books.charges.insert(
                    key,
                    ChargeRecord {
                        amount_minor: 0,
                        refunded_minor: 0,
                        currency: Currency::USD,
                        status: ChargeStatus::Voided,
                        lands_at_ms: 0,
                    },
                );
                books.audit.reversals += 1;
                Ok(ReverseReply::Reversed)
            }
            Some(record) => {
                SimulatedGateway::settle(record, now_ms);
                match record.status {
                    ChargeStatus::Captured | ChargeStatus::Pending => {
                        if record.refunded_minor > 0 {
                            return Ok(ReverseReply::NotReversible {
                                reason: "charge already partly refunded".into(),
                            });
                        }
                        record.status = ChargeStatus::Voided;
                        books.audit.reversals += 1;
                        Ok(ReverseReply::Reversed)
                    }
                    ChargeStatus::Declined { .. } | ChargeStatus::Voided => {
                        Ok(ReverseReply::Reversed)
                    }
                }
            }
        }
    }

    fn refund_now(&self, call: &RefundCall) -> Result<RefundReply, (GatewayError, bool)> {
        let p = &self.profile;
        let draw = fastrand::f64();
        if draw < p.not_sent_rate {
            return Err((
                GatewayError::NotSent("connection refused (simulated)".into()),
                false,
            ));
        }
        let server_error = draw < p.not_sent_rate + p.server_error_rate;
        let refund_key = parse_key(&call.key, true).map_err(|e| (e, false))?;
        let charge_key = parse_key(&call.charge_key, false).map_err(|e| (e, false))?;
        let now_ms = self.now_ms();
        let mut books = self.books();
        if books.refunds.contains_key(&refund_key) {
            return Ok(RefundReply::Refunded);
        }
        let Some(record) = books.charges.get_mut(&charge_key) else {
            return Ok(RefundReply::Refused {
                reason: "no such charge".into(),
            });
        };
        SimulatedGateway::settle(record, now_ms);
        if record.status != ChargeStatus::Captured {
            return Ok(RefundReply::Refused {
                reason: "charge is not captured".into(),
            });
        }
        if call.currency != record.currency
            || call.amount_minor <= 0
            || record.refunded_minor + call.amount_minor > record.amount_minor
        {
            return Ok(RefundReply::Refused {
                reason: "refund exceeds the captured amount".into(),
            });
        }
        record.refunded_minor += call.amount_minor;
        books.refunds.insert(refund_key, call.amount_minor);
        books.audit.refunds += 1;
        if server_error {
            // Refunded, but the answer is a 5xx.
            return Err((GatewayError::Server(502), true));
        }
        Ok(RefundReply::Refunded)
    }

    /// The gateway's own books: charges, refused duplicates, refunds, reversals and double
    /// charges (orders with more than one captured, unreversed charge).
    pub fn audit_now(&self) -> GatewayAudit {
        let now_ms = self.now_ms();
        let mut books = self.books();
        let mut captured: Vec<(u64, u64)> = Vec::new();
        for (key, record) in books.charges.iter_mut() {
            SimulatedGateway::settle(record, now_ms);
            if record.status == ChargeStatus::Captured {
                captured.push((key.0, key.1));
            }
        }
        captured.sort_unstable();
        // Orders (not extra charges) with more than one capture: runs of equal ids longer
        // than one.
        let mut double_charges = 0;
        let mut run = 0;
        for (i, order) in captured.iter().enumerate() {
            run = if i > 0 && captured[i - 1] == *order {
                run + 1
            } else {
                1
            };
            if run == 2 {
                double_charges += 1;
            }
        }
        let mut audit = books.audit;
        audit.double_charges = double_charges;
        audit
    }

    fn answer<T: Send + 'static>(
        &self,
        delay: Duration,
        hang: Option<Duration>,
        result: Result<T, GatewayError>,
    ) -> BoxFuture<'static, Result<T, GatewayError>> {
        if delay.is_zero() && hang.is_none() {
            return futures_util::future::ready(result).boxed();
        }
        async move {
            tokio::time::sleep(delay).await;
            if let Some(hang) = hang {
                // The answer is lost: the call hangs until the caller's timeout (bounded here
                // so an uncapped caller still ends).
                tokio::time::sleep(hang).await;
            }
            result
        }
        .boxed()
    }
}

impl Gateway for SimulatedGateway {
    fn charge(&self, call: ChargeCall) -> BoxFuture<'static, Result<ChargeReply, GatewayError>> {
        let delay = self.latency();
        match self.charge_now(&call) {
            Ok(reply) => self.answer(delay, None, Ok(reply)),
            Err((GatewayError::Timeout(ms), _)) => self.answer(
                delay,
                Some(Duration::from_millis(ms)),
                Err(GatewayError::Timeout(ms)),
            ),
            Err((error, _)) => self.answer(delay, None, Err(error)),
        }
    }

    fn query(&self, key: String) -> BoxFuture<'static, Result<QueryReply, GatewayError>> {
        let delay = self.latency();
        let result = self.query_now(&key);
        self.answer(delay, None, result)
    }

    fn reverse(&self, key: String) -> BoxFuture<'static, Result<ReverseReply, GatewayError>> {
        let delay = self.latency();
        let result = self.reverse_now(&key);
        self.answer(delay, None, result)
    }

    fn refund(&self, call: RefundCall) -> BoxFuture<'static, Result<RefundReply, GatewayError>> {
        let delay = self.latency();
        let result = self.refund_now(&call).map_err(|(e, _)| e);
        self.answer(delay, None, result)
    }

    fn audit(&self) -> BoxFuture<'static, Result<Option<GatewayAudit>, GatewayError>> {
        futures_util::future::ready(Ok(Some(self.audit_now()))).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(order: OrderId, attempt: u16) -> ChargeCall {
        ChargeCall {
            order_id: order,
            attempt_no: attempt,
            amount_minor: 1000,
            currency: Currency::USD,
            method: "card",
        }
    }

    #[actix_rt::test]
    async fn a_key_is_charged_once_and_double_charges_are_counted() {
        let gateway = SimulatedGateway::new(FaultProfile::default());
        let order = OrderId::new();
        let first = gateway.charge(call(order, 1)).await.unwrap();
        let again = gateway.charge(call(order, 1)).await.unwrap();
        assert_eq!(first, again);
        let audit = gateway.audit_now();
        assert_eq!((audit.charges, audit.duplicates_refused), (1, 1));
        assert_eq!(audit.double_charges, 0);
        // A second attempt of the same order that also captures is a double charge...
        gateway.charge(call(order, 2)).await.unwrap();
        assert_eq!(gateway.audit_now().double_charges, 1);
        // ...until it is reversed.
        let reversed = gateway.reverse(format!("{order}:2")).await.unwrap();
        assert_eq!(reversed, ReverseReply::Reversed);
        assert_eq!(gateway.audit_now().double_charges, 0);
    }

    #[actix_rt::test]
    async fn reversing_an_unknown_key_blocks_it() {
        let gateway = SimulatedGateway::new(FaultProfile::default());
        let order = OrderId::new();
        let key = format!("{order}:1");
        assert_eq!(
            gateway.query(key.clone()).await.unwrap(),
            QueryReply::NotFound
        );
        gateway.reverse(key.clone()).await.unwrap();
        assert_eq!(
            gateway.charge(call(order, 1)).await.unwrap(),
            ChargeReply::Voided
        );
    }

    #[actix_rt::test]
    async fn refunds_stay_within_the_capture() {
        let gateway = SimulatedGateway::new(FaultProfile::default());
        let order = OrderId::new();
        gateway.charge(call(order, 1)).await.unwrap();
        let refund = |n: u16, amount: i64| RefundCall {
            key: format!("{order}:r{n}"),
            charge_key: format!("{order}:1"),
            amount_minor: amount,
            currency: Currency::USD,
        };
        assert_eq!(
            gateway.refund(refund(1, 600)).await.unwrap(),
            RefundReply::Refunded
        );
        assert_eq!(
            gateway.refund(refund(1, 600)).await.unwrap(),
            RefundReply::Refunded,
            "a replayed refund key answers from the record"
        );
        assert!(matches!(
            gateway.refund(refund(2, 600)).await.unwrap(),
            RefundReply::Refused { .. }
        ));
        assert_eq!(gateway.audit_now().refunds, 1);
    }
}
