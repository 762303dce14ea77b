//! The one checker of the reliability suite: it compares what clients were told (every
//! acknowledged command, with the state it answered) against what the store holds, what the
//! outbox carries and what the payment service recorded.
//!
//! - **Lost**: an acknowledged order that is not stored, or stored at a version below the one
//!   acknowledged (versions grow by one per transition, so a stored version at least the
//!   acknowledged one means the acknowledged state was durable and was not rolled back).
//! - **Double charge**: an order with more than one captured charge at the payment service.
//! - **Inconsistent**: a stored order that is paid with no captured charge, or one that is not
//!   paid while a captured, unrefunded charge exists.
//! - **Stuck**: an order still in `payment_processing` when the checker runs (after the sync
//!   window).
//! - **Outbox gap**: a stored order whose outbox lacks an event for a state it reached
//!   (`order_placed`, `order_paid`, `order_shipped`, `order_completed`, `order_expired`), or
//!   carries one twice.

use std::collections::{BTreeMap, HashMap};

/// One acknowledged command, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The order's id.
    pub order_id: String,
    /// The verb (`place`, `pay`, `ship`, `deliver`, ...).
    pub step: &'static str,
    /// The status in the answer.
    pub status: String,
    /// The version in the answer.
    pub version: u64,
}

/// An order as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its status (`paid`, `shipped`, ...).
    pub status: String,
    /// Its version.
    pub version: u64,
    /// Paid, minor units.
    pub paid_minor: i64,
}

/// One charge record of the payment service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The idempotency key.
    pub key: String,
    /// The order it charges.
    pub order_id: String,
    /// `captured`, `pending`, `declined`, `voided`.
    pub status: String,
    /// Refunded so far, minor units.
    pub refunded_minor: i64,
}

/// What the checker found; every list must be empty.
#[derive(Debug, Default, Clone)]
pub struct Findings {
    /// Commands acknowledged to clients.
    pub acknowledged: usize,
    /// Distinct orders acknowledged at least once.
    pub orders: usize,
    /// Acknowledged orders missing or behind in the store: `order: why`.
    pub lost: Vec<String>,
    /// Orders with more than one captured charge.
    pub double_charges: Vec<String>,
    /// Orders whose state does not match the payment service's ledger.
    pub inconsistent: Vec<String>,
    /// Orders left in `payment_processing`.
    pub stuck: Vec<String>,
    /// Orders with a missing or repeated outbox event.
    pub outbox_gaps: Vec<String>,
}

impl Findings {
    /// Whether nothing was found.
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.double_charges.is_empty()
            && self.inconsistent.is_empty()
            && self.stuck.is_empty()
            && self.outbox_gaps.is_empty()
    }

    /// The first few findings of each kind, for a failure message.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, list) in [
            ("lost", &self.lost),
            ("double charges", &self.double_charges),
            ("inconsistent", &self.inconsistent),
            ("stuck in payment_processing", &self.stuck),
            ("outbox gaps", &self.outbox_gaps),
        ] {
            if !list.is_empty() {
                out.push_str(&format!(
                    "{name}: {} (first: {:?}); ",
                    list.len(),
                    &list[..list.len().min(5)]
                ));
            }
        }
        out
    }
}

/// Whether `status` is one in which the customer has paid and nothing was refunded.
fn is_paid(status: &str) -> bool {
    matches!(status, "paid" | "shipped" | "completed")
}

/// The events a stored order must have exactly once, given the state it is in.
fn required_events(status: &str) -> &'static [&'static str] {
    match status {
        "pending_payment" | "payment_processing" => &["order_placed"],
        "paid" => &["order_placed", "order_paid"],
        "shipped" => &["order_placed", "order_paid", "order_shipped"],
        "completed" => &[
            "order_placed",
            "order_paid",
            "order_shipped",
            "order_completed",
        ],
        "expired" => &["order_placed", "order_expired"],
        _ => &["order_placed"],
    }
}

/// Checks `acks` against the store, the outbox (`events` by order id: the event types in
/// order; `None` skips the outbox check) and the payment service's `charges` (`None` skips
/// the payment checks, for runs without a payment service).
pub fn check(
    acks: &[Ack],
    stored: &HashMap<String, Stored>,
    events: Option<&HashMap<String, Vec<String>>>,
    charges: Option<&[Charge]>,
) -> Findings {
    let mut findings = Findings {
        acknowledged: acks.len(),
        ..Findings::default()
    };
    // The furthest acknowledged version of each order.
    let mut furthest: BTreeMap<&str, &Ack> = BTreeMap::new();
    for ack in acks {
        let entry = furthest.entry(ack.order_id.as_str()).or_insert(ack);
        if ack.version > entry.version {
            *entry = ack;
        }
    }
    findings.orders = furthest.len();
    for (order_id, ack) in &furthest {
        match stored.get(*order_id) {
            None => findings.lost.push(format!(
                "{order_id}: acknowledged {} (v{}) but not stored",
                ack.status, ack.version
            )),
            Some(s) if s.version < ack.version => findings.lost.push(format!(
                "{order_id}: acknowledged {} (v{}), stored {} (v{})",
                ack.status, ack.version, s.status, s.version
            )),
            Some(_) => {}
        }
    }
    for (order_id, s) in stored {
        if s.status == "payment_processing" {
            findings.stuck.push(order_id.clone());
        }
        if let Some(events) = events {
            let seen = events.get(order_id).map(Vec::as_slice).unwrap_or(&[]);
            for required in required_events(&s.status) {
                let n = seen.iter().filter(|e| e == required).count();
                if n != 1 {
                    findings
                        .outbox_gaps
                        .push(format!("{order_id} ({}): {n} × {required}", s.status));
                }
            }
        }
    }
    if let Some(charges) = charges {
        let mut captured: HashMap<&str, Vec<&Charge>> = HashMap::new();
        for charge in charges.iter().filter(|c| c.status == "captured") {
            captured.entry(&charge.order_id).or_default().push(charge);
        }
        for (order_id, list) in &captured {
            if list.len() > 1 {
                let keys: Vec<&str> = list.iter().map(|c| c.key.as_str()).collect();
                findings
                    .double_charges
                    .push(format!("{order_id}: captured under {keys:?}"));
            }
        }
        for (order_id, s) in stored {
            let unrefunded = captured
                .get(order_id.as_str())
                .map_or(0, |l| l.iter().filter(|c| c.refunded_minor == 0).count());
            if is_paid(&s.status) && (s.paid_minor <= 0 || unrefunded == 0) {
                findings.inconsistent.push(format!(
                    "{order_id}: {} (paid {}) with no captured charge",
                    s.status, s.paid_minor
                ));
            }
            if !is_paid(&s.status)
                && s.status != "payment_processing"
                && s.status != "on_hold"
                && unrefunded > 0
            {
                findings.inconsistent.push(format!(
                    "{order_id}: {} with a captured, unrefunded charge",
                    s.status
                ));
            }
        }
    }
    findings.lost.sort();
    findings.double_charges.sort();
    findings.inconsistent.sort();
    findings.stuck.sort();
    findings.outbox_gaps.sort();
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(order: &str, step: &'static str, status: &str, version: u64) -> Ack {
        Ack {
            order_id: order.into(),
            step,
            status: status.into(),
            version,
        }
    }

    fn stored(status: &str, version: u64, paid_minor: i64) -> Stored {
        Stored {
            status: status.into(),
            version,
            paid_minor,
        }
    }

    fn charge(key: &str, order: &str) -> Charge {
        Charge {
            key: key.into(),
            order_id: order.into(),
            status: "captured".into(),
            refunded_minor: 0,
        }
    }

    fn events(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(id, list)| (id.to_string(), list.iter().map(|e| e.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_clean_run_is_clean() {
        let acks = [
            ack("a", "place", "pending_payment", 1),
            ack("a", "pay", "paid", 3),
        ];
        let store = HashMap::from([("a".to_string(), stored("shipped", 4, 100))]);
        let outbox = events(&[("a", &["order_placed", "order_paid", "order_shipped"])]);
        let charges = [charge("a:1", "a")];
        let findings = check(&acks, &store, Some(&outbox), Some(&charges));
        assert!(findings.clean(), "{}", findings.summary());
        assert_eq!((findings.acknowledged, findings.orders), (2, 1));
    }

    #[test]
    fn the_checker_flags_a_lost_acknowledgement_and_a_double_charge() {
        let acks = [
            ack("a", "pay", "paid", 3),
            ack("b", "place", "pending_payment", 1),
            ack("c", "pay", "paid", 3),
        ];
        // a was rolled back to before its payment; b was never stored; c was charged twice.
        let store = HashMap::from([
            ("a".to_string(), stored("pending_payment", 1, 0)),
            ("c".to_string(), stored("paid", 3, 100)),
        ]);
        let charges = [charge("c:1", "c"), charge("c:2", "c")];
        let findings = check(&acks, &store, None, Some(&charges));
        assert!(!findings.clean());
        assert_eq!(findings.lost.len(), 2, "{:?}", findings.lost);
        assert!(findings.lost[0].starts_with("a:"), "{:?}", findings.lost);
        assert!(findings.lost[1].starts_with("b:"), "{:?}", findings.lost);
        assert_eq!(findings.double_charges.len(), 1);
        assert!(findings.double_charges[0].starts_with("c:"));
    }

    #[test]
    fn the_checker_flags_ledger_mismatches_stuck_payments_and_outbox_gaps() {
        let store = HashMap::from([
            ("paid-no-charge".to_string(), stored("paid", 3, 100)),
            ("charged-not-paid".to_string(), stored("cancelled", 4, 0)),
            ("stuck".to_string(), stored("payment_processing", 2, 0)),
        ]);
        let charges = [charge("x:1", "charged-not-paid")];
        let outbox = events(&[
            ("paid-no-charge", &["order_placed", "order_placed"]),
            ("charged-not-paid", &["order_placed"]),
            ("stuck", &["order_placed"]),
        ]);
        let findings = check(&[], &store, Some(&outbox), Some(&charges));
        assert_eq!(
            findings.inconsistent.len(),
            2,
            "{:?}",
            findings.inconsistent
        );
        assert_eq!(findings.stuck, vec!["stuck".to_string()]);
        // order_placed twice and order_paid missing.
        assert_eq!(findings.outbox_gaps.len(), 2, "{:?}", findings.outbox_gaps);
    }
}
