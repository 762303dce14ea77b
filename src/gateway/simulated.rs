//! The in-process simulated gateways (`card`, `alipay`, `wechat`): a payment service in memory
//! with the same contract as a real one (a key is charged at most once, queries and reversals
//! by key, refunds up to the captured amount) and the faults of a [`FaultProfile`]: latency,
//! declines, calls that never leave, charges whose answer is lost, 5xx and late captures.
//! With the `healthy` profile every charge is captured at once, so `orderly demo` runs with no
//! external service.
//!
//! It keeps a record of every key it saw (about 60 bytes each), which is what lets it answer
//! queries and count double charges on its own side. Records are kept for
//! `[payments] simulated_ledger_retention_ms` after their last use, and at most twice that (two
//! generations: the current one and the one before, which is dropped when the current one is
//! retention old), so a long-running `orderly serve` holds about rate × 2 × retention records
//! instead of every key since start. The retention is validated to outlast every attempt that
//! can still be queried (`attempt_timeout_ms` + `sync.window_ms`); a refund of a charge older
//! than it is refused as `no such charge`, as a real provider refuses a refund past its window.

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

/// One generation of records.
#[derive(Default)]
struct Generation {
    charges: HashMap<Key, ChargeRecord, ahash::RandomState>,
    refunds: HashMap<Key, i64, ahash::RandomState>,
}

impl Generation {
    fn len(&self) -> usize {
        self.charges.len() + self.refunds.len()
    }

    /// Orders with a captured charge in this generation, each once per captured record.
    fn captured_orders(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.charges
            .iter()
            .filter(|(_, r)| r.status == ChargeStatus::Captured)
            .map(|(k, _)| (k.0, k.1))
    }
}

/// Orders with more than one captured record in `orders` (any order).
fn doubled(mut orders: Vec<(u64, u64)>) -> u64 {
    orders.sort_unstable();
    let mut doubled = 0;
    let mut run = 0;
    for (i, order) in orders.iter().enumerate() {
        run = if i > 0 && orders[i - 1] == *order {
            run + 1
        } else {
            1
        };
        if run == 2 {
            doubled += 1;
        }
    }
    doubled
}

/// The books: two generations of records (a record used in the older one moves to the
/// current one), and the totals, which outlive eviction.
struct Books {
    current: Generation,
    previous: Generation,
    rotated_at_ms: u64,
    audit: GatewayAudit,
    /// Double charges counted when the older of their records was evicted.
    evicted_double_charges: u64,
}

impl Books {
    fn new() -> Books {
        Books {
            current: Generation::default(),
            previous: Generation::default(),
            rotated_at_ms: 0,
            audit: GatewayAudit::default(),
            evicted_double_charges: 0,
        }
    }

    /// Drops the older generation once the current one is `retention_ms` old, both once it
    /// is twice that; returns the records evicted. Double charges among the evicted records
    /// (with the records still kept) are counted first, so the audit never forgets one.
    fn rotate(&mut self, now_ms: u64, retention_ms: u64) -> u64 {
        let age = now_ms.saturating_sub(self.rotated_at_ms);
        if age < retention_ms {
            return 0;
        }
        let mut evicted = self.evict_previous(now_ms);
        std::mem::swap(&mut self.current, &mut self.previous);
        if age >= retention_ms.saturating_mul(2) {
            evicted += self.evict_previous(now_ms);
        }
        self.rotated_at_ms = now_ms;
        evicted
    }

    fn evict_previous(&mut self, now_ms: u64) -> u64 {
        let evicted = self.previous.len() as u64;
        if evicted == 0 {
            return 0;
        }
        for generation in [&mut self.current, &mut self.previous] {
            for record in generation.charges.values_mut() {
                SimulatedGateway::settle(record, now_ms);
            }
        }
        let mut leaving: Vec<(u64, u64)> = self.previous.captured_orders().collect();
        if !leaving.is_empty() {
            let ids: std::collections::HashSet<(u64, u64), ahash::RandomState> =
                leaving.iter().copied().collect();
            leaving.extend(self.current.captured_orders().filter(|o| ids.contains(o)));
            self.evicted_double_charges += doubled(leaving);
        }
        // `clear` keeps the tables' capacity: the next generation fills them again without
        // reallocating, so memory stays flat under steady load.
        self.previous.charges.clear();
        self.previous.refunds.clear();
        evicted
    }

    /// The charge record of `key`, moved to the current generation if it was in the older.
    fn charge_mut(&mut self, key: &Key) -> Option<&mut ChargeRecord> {
        if !self.current.charges.contains_key(key) {
            let record = self.previous.charges.remove(key)?;
            self.current.charges.insert(*key, record);
        }
        self.current.charges.get_mut(key)
    }

    fn has_refund(&mut self, key: &Key) -> bool {
        if self.current.refunds.contains_key(key) {
            return true;
        }
        match self.previous.refunds.remove(key) {
            Some(amount) => {
                self.current.refunds.insert(*key, amount);
                true
            }
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The ledger's metric handles.
struct LedgerMetrics {
    records: metrics::Gauge,
    evicted: metrics::Counter,
}

/// One simulated gateway.
pub struct SimulatedGateway {
    profile: FaultProfile,
    books: Mutex<Books>,
    origin: Instant,
    retention_ms: u64,
    metrics: LedgerMetrics,
}

/// How long a simulated gateway keeps a record after its last use when none is configured.
pub const DEFAULT_LEDGER_RETENTION_MS: u64 = 600_000;

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
    /// A simulated gateway injecting the faults of `profile`, keeping records for the default
    /// retention (metrics labelled `simulated`).
    pub fn new(profile: FaultProfile) -> SimulatedGateway {
        SimulatedGateway::with_ledger("simulated", profile, DEFAULT_LEDGER_RETENTION_MS)
    }

    /// The simulated gateway `name` (the label of its ledger metrics), injecting the faults of
    /// `profile` and keeping each record `retention_ms` after its last use (at least 1 ms).
    pub fn with_ledger(name: &str, profile: FaultProfile, retention_ms: u64) -> SimulatedGateway {
        crate::telemetry::describe_simulated_ledger();
        let label = name.to_string();
        let metrics = LedgerMetrics {
            records: metrics::gauge!(crate::telemetry::SIMULATED_LEDGER_RECORDS, "gateway" => label.clone()),
            evicted: metrics::counter!(crate::telemetry::SIMULATED_LEDGER_EVICTED_TOTAL, "gateway" => label),
        };
        metrics.records.set(0.0);
        metrics.evicted.increment(0);
        SimulatedGateway {
            profile,
            books: Mutex::new(Books::new()),
            origin: Instant::now(),
            retention_ms: retention_ms.max(1),
            metrics,
        }
    }

    /// Records on the books now (charges, reversal blocks and refunds).
    pub fn ledger_len(&self) -> usize {
        self.books().len()
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

    /// The books at `now_ms`, with records past their retention evicted first.
    fn books_at(&self, now_ms: u64) -> std::sync::MutexGuard<'_, Books> {
        let mut books = self.books();
        let evicted = books.rotate(now_ms, self.retention_ms);
        if evicted > 0 {
            self.metrics.evicted.increment(evicted);
            self.metrics.records.set(books.len() as f64);
        }
        books
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
        let mut books = self.books_at(now_ms);
        if let Some(record) = books.charge_mut(&key) {
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
        books.current.charges.insert(key, record);
        self.metrics.records.set(books.len() as f64);
        reply
    }

    fn query_now(&self, key: &str) -> Result<QueryReply, GatewayError> {
        if let Some(error) = self.call_fault() {
            return Err(error);
        }
        let key = parse_key(key, false)?;
        let now_ms = self.now_ms();
        let mut books = self.books_at(now_ms);
        let Some(record) = books.charge_mut(&key) else {
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
        let mut books = self.books_at(now_ms);
        match books.charge_mut(&key) {
            None => {
                // Never arrived: block the key so a late arrival cannot charge it.
                books.current.charges.insert(
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
                self.metrics.records.set(books.len() as f64);
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
        let mut books = self.books_at(now_ms);
        if books.has_refund(&refund_key) {
            return Ok(RefundReply::Refunded);
        }
        let Some(record) = books.charge_mut(&charge_key) else {
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
        books.current.refunds.insert(refund_key, call.amount_minor);
        books.audit.refunds += 1;
        self.metrics.records.set(books.len() as f64);
        if server_error {
            // Refunded, but the answer is a 5xx.
            return Err((GatewayError::Server(502), true));
        }
        Ok(RefundReply::Refunded)
    }

    /// The gateway's own books: charges, refused duplicates, refunds, reversals and double
    /// charges (orders with more than one captured, unreversed charge; those whose records were
    /// evicted were counted as they left).
    pub fn audit_now(&self) -> GatewayAudit {
        let now_ms = self.now_ms();
        let mut books = self.books_at(now_ms);
        let books = &mut *books;
        for generation in [&mut books.current, &mut books.previous] {
            for record in generation.charges.values_mut() {
                SimulatedGateway::settle(record, now_ms);
            }
        }
        let captured: Vec<(u64, u64)> = books
            .current
            .captured_orders()
            .chain(books.previous.captured_orders())
            .collect();
        let mut audit = books.audit;
        audit.double_charges = books.evicted_double_charges + doubled(captured);
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

    #[actix_rt::test]
    async fn records_leave_after_their_retention_and_double_charges_stay_counted() {
        let retention = Duration::from_millis(60);
        let gateway = SimulatedGateway::with_ledger(
            "retention-test",
            FaultProfile::default(),
            retention.as_millis() as u64,
        );
        let kept = OrderId::new();
        let doubled = OrderId::new();
        gateway.charge(call(kept, 1)).await.unwrap();
        gateway.charge(call(doubled, 1)).await.unwrap();
        gateway.charge(call(doubled, 2)).await.unwrap();
        assert_eq!(gateway.ledger_len(), 3);
        assert_eq!(gateway.audit_now().double_charges, 1);

        // One retention later the records are in the older generation; using one moves it
        // back to the current one.
        tokio::time::sleep(retention + Duration::from_millis(10)).await;
        assert!(matches!(
            gateway.query(format!("{kept}:1")).await.unwrap(),
            QueryReply::Captured { .. }
        ));
        // Another retention later the unused records are gone, the used one is kept...
        tokio::time::sleep(retention + Duration::from_millis(10)).await;
        let audit = gateway.audit_now();
        assert_eq!(
            gateway.ledger_len(),
            1,
            "only the record used since is kept"
        );
        assert_eq!(
            gateway.charge(call(kept, 1)).await.unwrap(),
            ChargeReply::Captured {
                amount_minor: 1000,
                currency: Currency::USD
            },
            "a kept record still refuses a second charge"
        );
        // ...and the double charge the evicted records held is still counted, once.
        assert_eq!(audit.double_charges, 1);
        assert_eq!(audit.charges, 3, "totals outlive eviction");
        assert_eq!(
            gateway.query(format!("{doubled}:1")).await.unwrap(),
            QueryReply::NotFound
        );
        // Long idle: both generations go at once.
        tokio::time::sleep(retention * 2 + Duration::from_millis(10)).await;
        assert_eq!(gateway.audit_now().double_charges, 1);
        assert_eq!(gateway.ledger_len(), 0);
    }
}
