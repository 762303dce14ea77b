//! Property tests proving that the pure order state machine keeps its invariants under random command sequences, that `Money` converts exactly or refuses, and that the snapshot codec round-trips every reachable order.
//!
//! The state-machine properties drive [`apply`] with a random valid order (USD, JPY and KWD
//! prices) and up to 40 random commands drawn from every [`Command`] variant, with random clock
//! advances and re-sent envelopes, and check after every step:
//!
//! - (a) refunds never exceed what was paid, counting pending refunds;
//! - (b) a settled order never changes again;
//! - (c) the version grows by exactly one per applied command and not otherwise;
//! - (d) the header's item count and total equal the line items (recomputed with `Decimal`);
//! - (e) re-sending one of the last [`RECENT_COMMANDS`] applied envelopes is a duplicate that
//!   returns the identical order and no effects;
//! - (f) at most one payment attempt is live and at most one refund is pending;
//! - (g) `apply` never panics (a panic fails the case).
//!
//! The regression tests at the end pin defects these properties once found in `src/`.

use std::str::FromStr;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;
use rust_decimal::Decimal;

use orderly::domain::money::{format_amount, MAX_MINOR_UNITS};
use orderly::domain::order::RECENT_COMMANDS;
use orderly::domain::{
    apply, AttemptStatus, Command, CommandEnvelope, CommandId, Currency, LineItemRequest, Money,
    MoneyError, NewOrder, NewOrderRequest, Order, OrderId, OrderPolicy, PaymentMethod,
    PaymentResult, RefundResult, Rejection, Timestamp,
};
use orderly::store::snapshot::{decode, encode};

/// Cases per property: enough to reach every status many times, small enough for a debug run.
const CASES: u32 = 256;

/// Start of the simulated clock (2023-11-14, ms since the epoch).
const EPOCH_MS: i64 = 1_700_000_000_000;

/// `CASES` cases; a failing case is saved next to this file (`domain_properties.regressions`)
/// and replayed first on the next run.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// The currencies orders are placed in: mostly USD (2 decimals), some JPY (0) and KWD (3).
fn order_currency() -> impl Strategy<Value = Currency> {
    prop_oneof![
        6 => Just(Currency::USD),
        2 => Just(Currency::JPY),
        2 => Just(Currency::KWD),
    ]
}

/// Renders `int` with the given fractional digits (none: a plain integer).
fn decimal_text(negative: bool, int: u64, frac: &[u8]) -> String {
    let sign = if negative { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        let digits: String = frac.iter().map(|d| char::from(b'0' + d)).collect();
        format!("{sign}{int}.{digits}")
    }
}

/// A unit price for `currency`: 0..=99_999 with 0..=exponent decimals.
fn unit_price(currency: Currency) -> impl Strategy<Value = String> {
    let exponent = currency.exponent() as usize;
    (
        0_u64..=99_999,
        prop::collection::vec(0_u8..10, 0..=exponent),
    )
        .prop_map(|(int, frac)| decimal_text(false, int, &frac))
}

/// A valid order request: 1–5 lines, quantities 1..=1000, prices with the currency's scale.
fn new_order_request() -> impl Strategy<Value = NewOrderRequest> {
    order_currency().prop_flat_map(|currency| {
        let line = (0_u32..10_000, 1_i64..=1000, unit_price(currency)).prop_map(
            |(sku, quantity, unit_price)| LineItemRequest {
                sku: format!("sku-{sku}"),
                quantity,
                unit_price,
            },
        );
        (
            0_u32..100_000,
            prop::sample::select(vec!["card", "alipay", "wechat", "wechat_pay"]),
            prop::collection::vec(line, 1..=5),
            prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9 ]{0,12}", 0..3),
        )
            .prop_map(move |(customer, method, items, metadata)| NewOrderRequest {
                customer_id: format!("c-{customer}"),
                currency: currency.code().to_string(),
                payment_method: method.to_string(),
                items,
                metadata,
            })
    })
}

/// Timer policies: the default one, and variants with timers disabled or several reminders.
fn policy() -> impl Strategy<Value = OrderPolicy> {
    (
        prop_oneof![
            3 => Just(vec![15 * 60_000_i64]),
            1 => Just(vec![]),
            1 => Just(vec![60_000_i64, 10 * 60_000, 20 * 60_000]),
        ],
        prop_oneof![3 => Just(30 * 60_000_i64), 1 => Just(0_i64)],
        prop_oneof![3 => Just(14 * 86_400_000_i64), 1 => Just(0_i64)],
        prop_oneof![3 => Just(2 * 86_400_000_i64), 1 => Just(0_i64)],
    )
        .prop_map(
            |(reminders, unpaid_expiry_after_ms, auto_complete_after_ms, ship_sla_ms)| {
                OrderPolicy {
                    payment_reminders_after_ms: reminders.into(),
                    unpaid_expiry_after_ms,
                    auto_complete_after_ms,
                    ship_sla_ms,
                    payment_check_after_ms: 3_000,
                }
            },
        )
}

/// The gateway verdict a generated `RecordPaymentResult` carries.
#[derive(Debug, Clone)]
enum PayOutcome {
    /// Captured exactly the order total in the order currency.
    SucceededExact,
    /// Captured a different (non-negative) amount: `total + delta`, never equal to the total.
    SucceededOff(i64),
    /// Captured the total, but in another currency.
    SucceededWrongCurrency,
    Declined {
        hard: bool,
    },
    FailedNotSent,
    Unknown,
    Syncing,
    Reversing,
    Voided,
    NeedsReview,
}

/// How much a generated `RefundOrder` asks for.
#[derive(Debug, Clone)]
enum RefundAmount {
    /// Everything refundable (`None`).
    Remainder,
    /// This many thousandths of the amount paid (may exceed it).
    PerMille(i64),
    /// A fixed amount in minor units (may be zero, negative or too large).
    Absolute(i64),
}

/// A command before it is resolved against the current order (amounts depend on the total).
#[derive(Debug, Clone)]
enum Spec {
    StartPayment(Option<PaymentMethod>),
    RecordPayment {
        attempt_no: u16,
        outcome: PayOutcome,
    },
    Ship(Option<String>),
    Deliver,
    Cancel(Option<String>),
    Refund(RefundAmount),
    RecordRefund {
        refund_no: u16,
        succeeded: bool,
    },
    ReleaseHold,
    Remind,
    Expire,
}

/// One step of a scenario: a new command or a re-sent earlier envelope, after a clock advance.
#[derive(Debug, Clone)]
enum Action {
    Fresh(Spec),
    /// Re-send one of the envelopes sent so far (the placement included), same id.
    Resend(Index),
}

#[derive(Debug, Clone)]
struct Step {
    advance_ms: i64,
    action: Action,
}

fn pay_outcome() -> impl Strategy<Value = PayOutcome> {
    prop_oneof![
        8 => Just(PayOutcome::SucceededExact),
        2 => (-1000_i64..=1000).prop_map(PayOutcome::SucceededOff),
        1 => Just(PayOutcome::SucceededWrongCurrency),
        2 => any::<bool>().prop_map(|hard| PayOutcome::Declined { hard }),
        1 => Just(PayOutcome::FailedNotSent),
        2 => Just(PayOutcome::Unknown),
        1 => Just(PayOutcome::Syncing),
        1 => Just(PayOutcome::Reversing),
        1 => Just(PayOutcome::Voided),
        1 => Just(PayOutcome::NeedsReview),
    ]
}

fn refund_amount() -> impl Strategy<Value = RefundAmount> {
    prop_oneof![
        2 => Just(RefundAmount::Remainder),
        2 => (0_i64..=1200).prop_map(RefundAmount::PerMille),
        1 => (-10_i64..=200_000).prop_map(RefundAmount::Absolute),
    ]
}

fn text() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[A-Za-z0-9 ]{0,16}")
}

/// An attempt or refund number in 1..=3, mostly 1 (few orders get past their first).
fn number() -> impl Strategy<Value = u16> {
    prop_oneof![3 => Just(1_u16), 2 => 2_u16..=3]
}

fn spec() -> impl Strategy<Value = Spec> {
    prop_oneof![
        4 => prop::option::of(prop::sample::select(PaymentMethod::ALL.to_vec()))
            .prop_map(Spec::StartPayment),
        6 => (number(), pay_outcome())
            .prop_map(|(attempt_no, outcome)| Spec::RecordPayment { attempt_no, outcome }),
        3 => text().prop_map(Spec::Ship),
        2 => Just(Spec::Deliver),
        2 => text().prop_map(Spec::Cancel),
        3 => refund_amount().prop_map(Spec::Refund),
        3 => (number(), any::<bool>())
            .prop_map(|(refund_no, succeeded)| Spec::RecordRefund { refund_no, succeeded }),
        1 => Just(Spec::ReleaseHold),
        2 => Just(Spec::Remind),
        2 => Just(Spec::Expire),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let advance = prop_oneof![
        6 => 0_i64..2_000,
        2 => 0_i64..=20 * 60_000,
        1 => 20 * 60_000_i64..=45 * 60_000,
    ];
    let action = prop_oneof![
        6 => spec().prop_map(Action::Fresh),
        1 => any::<Index>().prop_map(Action::Resend),
    ];
    (advance, action).prop_map(|(advance_ms, action)| Step { advance_ms, action })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..40)
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// Item count and total in minor units, computed from the request text with `Decimal` alone.
fn expected_totals(request: &NewOrderRequest, currency: Currency) -> (u64, i64) {
    let scale = Decimal::from(10_i64.pow(currency.exponent()));
    let mut count = 0_u64;
    let mut total = Decimal::ZERO;
    for item in &request.items {
        count += item.quantity as u64;
        let price = Decimal::from_str(&item.unit_price).expect("generated price parses");
        total += price * Decimal::from(item.quantity);
    }
    let minor = total * scale;
    assert!(
        minor.fract().is_zero(),
        "generated prices have the currency scale"
    );
    (
        count,
        i64::try_from(minor).expect("generated totals fit i64"),
    )
}

fn other_currency(currency: Currency) -> Currency {
    if currency == Currency::USD {
        Currency::EUR
    } else {
        Currency::USD
    }
}

/// Turns a spec into a concrete command for the current order.
fn resolve(spec: &Spec, order: &Order) -> Command {
    let total = order.header.total_minor;
    match spec {
        Spec::StartPayment(method) => Command::StartPayment { method: *method },
        Spec::RecordPayment {
            attempt_no,
            outcome,
        } => {
            let result = match outcome {
                PayOutcome::SucceededExact => PaymentResult::Succeeded {
                    amount_minor: total,
                    currency: order.currency(),
                },
                PayOutcome::SucceededOff(delta) => {
                    let mut amount = total.saturating_add(*delta).max(0);
                    if amount == total {
                        amount += 1;
                    }
                    PaymentResult::Succeeded {
                        amount_minor: amount,
                        currency: order.currency(),
                    }
                }
                PayOutcome::SucceededWrongCurrency => PaymentResult::Succeeded {
                    amount_minor: total,
                    currency: other_currency(order.currency()),
                },
                PayOutcome::Declined { hard } => PaymentResult::Declined {
                    hard: *hard,
                    reason: "do_not_honor".into(),
                },
                PayOutcome::FailedNotSent => PaymentResult::FailedNotSent {
                    reason: "connect refused".into(),
                },
                PayOutcome::Unknown => PaymentResult::Unknown {
                    reason: "read timeout".into(),
                },
                PayOutcome::Syncing => PaymentResult::Syncing,
                PayOutcome::Reversing => PaymentResult::Reversing,
                PayOutcome::Voided => PaymentResult::Voided,
                PayOutcome::NeedsReview => PaymentResult::NeedsReview {
                    reason: "query and reversal failed".into(),
                },
            };
            Command::RecordPaymentResult {
                attempt_no: *attempt_no,
                result,
            }
        }
        Spec::Ship(tracking) => Command::ShipOrder {
            tracking_number: tracking.as_deref().map(Into::into),
        },
        Spec::Deliver => Command::ConfirmDelivery,
        Spec::Cancel(reason) => Command::CancelOrder {
            reason: reason.as_deref().map(Into::into),
        },
        Spec::Refund(amount) => Command::RefundOrder {
            amount_minor: match amount {
                RefundAmount::Remainder => None,
                RefundAmount::PerMille(per_mille) => Some(order.paid_minor * per_mille / 1000),
                RefundAmount::Absolute(minor) => Some(*minor),
            },
        },
        Spec::RecordRefund {
            refund_no,
            succeeded,
        } => Command::RecordRefundResult {
            refund_no: *refund_no,
            result: if *succeeded {
                RefundResult::Succeeded
            } else {
                RefundResult::Failed {
                    reason: "insufficient merchant balance".into(),
                }
            },
        },
        Spec::ReleaseHold => Command::ReleaseHold,
        Spec::Remind => Command::SendPaymentReminder,
        Spec::Expire => Command::ExpireOrder,
    }
}

/// The invariants that hold of every single state (a, d, f and basic sanity).
fn check_state(
    order: &Order,
    expected: (u64, i64),
    order_id: OrderId,
) -> Result<(), TestCaseError> {
    // (a) refunds are bounded by what was paid.
    prop_assert!(order.paid_minor >= 0, "paid {} < 0", order.paid_minor);
    prop_assert!(order.refunded_minor >= 0);
    prop_assert!(
        order.refunded_minor <= order.paid_minor,
        "refunded {} > paid {}",
        order.refunded_minor,
        order.paid_minor
    );
    let pending = order.pending_refund_minor();
    prop_assert!(pending >= 0);
    prop_assert!(
        order.refunded_minor + pending <= order.paid_minor,
        "refunded {} + pending {} > paid {}",
        order.refunded_minor,
        pending,
        order.paid_minor
    );
    // (d) totals equal the line items.
    prop_assert_eq!(order.header.item_count, expected.0);
    prop_assert_eq!(order.header.total_minor, expected.1);
    prop_assert_eq!(order.id(), order_id);
    // (f) at most one live payment attempt, at most one pending refund.
    let live = order.payments.iter().filter(|a| a.status.is_live()).count();
    prop_assert!(live <= 1, "{} live attempts: {:?}", live, order.payments);
    let pending_refunds = order.refunds.iter().filter(|r| r.is_pending()).count();
    prop_assert!(pending_refunds <= 1, "{:?}", order.refunds);
    // Attempt and refund numbers are 1, 2, 3, ... in order.
    for (i, attempt) in order.payments.iter().enumerate() {
        prop_assert_eq!(usize::from(attempt.attempt_no), i + 1);
    }
    for (i, refund) in order.refunds.iter().enumerate() {
        prop_assert_eq!(usize::from(refund.refund_no), i + 1);
    }
    Ok(())
}

/// What a scenario went through.
struct Trace {
    /// Every state of the order, from placement on.
    states: Vec<Order>,
    /// How many steps were recognised as duplicates.
    duplicates: usize,
}

/// Places the order described by `request`, runs `steps` against it checking every invariant
/// after every step, and returns every state the order went through.
fn drive(
    request: &NewOrderRequest,
    policy: &OrderPolicy,
    steps: &[Step],
) -> Result<Trace, TestCaseError> {
    let new_order = NewOrder::parse(request)
        .map_err(|e| TestCaseError::fail(format!("valid request refused: {e}")))?;
    let expected = expected_totals(request, new_order.currency);
    let order_id = OrderId::from_idempotency_key("proptest", &format!("{request:?}"));
    let mut now = Timestamp(EPOCH_MS);
    let mut next_id = 0_u32;
    let mut fresh_id = || {
        next_id += 1;
        CommandId::derived(order_id, "proptest", next_id)
    };

    // Nothing but a placement reaches an order that does not exist.
    let early = CommandEnvelope {
        id: fresh_id(),
        command: Command::ConfirmDelivery,
    };
    prop_assert_eq!(
        apply(None, order_id, &early, now, policy).err(),
        Some(Rejection::OrderNotFound(order_id))
    );

    let place = CommandEnvelope {
        id: fresh_id(),
        command: Command::PlaceOrder(Box::new(new_order)),
    };
    let placed = apply(None, order_id, &place, now, policy)
        .map_err(|e| TestCaseError::fail(format!("placement refused: {e}")))?;
    prop_assert!(!placed.duplicate);
    let mut order = placed.order;
    prop_assert_eq!(order.version, 1);
    check_state(&order, expected, order_id)?;

    let mut states = vec![order.clone()];
    let mut duplicates = 0;
    // Envelopes applied (not duplicates), oldest first; the placement is the first.
    let mut applied: Vec<CommandEnvelope> = vec![place.clone()];
    // Every envelope sent so far, for re-sending.
    let mut sent: Vec<CommandEnvelope> = vec![place];
    // The order as it was when it first became settled.
    let mut settled: Option<Order> = order.is_settled().then(|| order.clone());

    for step in steps {
        now = now.plus_ms(step.advance_ms);
        let envelope = match &step.action {
            Action::Fresh(spec) => CommandEnvelope {
                id: fresh_id(),
                command: resolve(spec, &order),
            },
            Action::Resend(index) => sent[index.index(sent.len())].clone(),
        };
        let in_window = applied
            .iter()
            .rev()
            .take(RECENT_COMMANDS)
            .any(|e| e.id == envelope.id);

        match apply(Some(&order), order_id, &envelope, now, policy) {
            Ok(outcome) if outcome.duplicate => {
                // (e) a duplicate is recognised only within the window, or it is the placement
                // again (the same request is a replay however old), and changes nothing.
                let placement_again = matches!(envelope.command, Command::PlaceOrder(_));
                prop_assert!(
                    in_window || placement_again,
                    "duplicate outside the window: {:?}",
                    envelope
                );
                prop_assert_eq!(&outcome.order, &order);
                prop_assert!(outcome.effects.is_empty());
                duplicates += 1;
            }
            Ok(outcome) => {
                prop_assert!(!in_window, "recent envelope re-applied: {:?}", envelope);
                // (b) a settled order never changes.
                prop_assert!(
                    settled.is_none(),
                    "settled order changed by {:?}: {:?} -> {:?}",
                    envelope.command,
                    order.status,
                    outcome.order.status
                );
                // (c) exactly one version per applied command.
                prop_assert_eq!(outcome.order.version, order.version + 1);
                prop_assert_eq!(outcome.order.updated_at, now);
                // The placement-time part never changes.
                prop_assert_eq!(&outcome.order.header, &order.header);
                order = outcome.order;
                applied.push(envelope.clone());
            }
            Err(_rejection) => {
                // A rejection leaves the state as it was (we keep `order`); a recent envelope
                // must never be rejected, since it is a duplicate.
                prop_assert!(!in_window, "recent envelope rejected: {:?}", envelope);
            }
        }
        sent.push(envelope);

        check_state(&order, expected, order_id)?;
        // (c) the version counts the applied commands, placement included.
        prop_assert_eq!(order.version, applied.len() as u64);
        // (b) once settled, frozen.
        if let Some(frozen) = &settled {
            prop_assert_eq!(&order, frozen);
        } else if order.is_settled() {
            settled = Some(order.clone());
        }
        states.push(order.clone());
    }
    Ok(Trace { states, duplicates })
}

proptest! {
    #![proptest_config(config())]

    /// Invariants (a)–(g) after every step of a random command sequence.
    #[test]
    fn state_machine_keeps_its_invariants(
        request in new_order_request(),
        policy in policy(),
        steps in steps(),
    ) {
        drive(&request, &policy, &steps)?;
    }

    /// Every state reached by a random sequence survives the snapshot codec unchanged, and
    /// re-encoding the decoded order gives the same bytes.
    #[test]
    fn snapshot_codec_round_trips_reachable_orders(
        request in new_order_request(),
        policy in policy(),
        steps in steps(),
    ) {
        for order in drive(&request, &policy, &steps)?.states {
            let bytes = encode(&order);
            let decoded = decode(&bytes)
                .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
            prop_assert_eq!(&decoded, &order);
            prop_assert_eq!(encode(&decoded), bytes);
        }
    }

    /// Decoding damaged snapshot bytes (truncated, or with a byte changed) never panics.
    #[test]
    fn snapshot_decode_never_panics_on_damaged_bytes(
        request in new_order_request(),
        cut in any::<Index>(),
        flip in any::<Index>(),
        byte in any::<u8>(),
    ) {
        let order = drive(&request, &OrderPolicy::default(), &[])?.states.remove(0);
        let bytes = encode(&order);
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(decode(truncated).is_err());
        let mut changed = bytes.clone();
        let at = flip.index(changed.len());
        changed[at] = byte;
        let _ = decode(&changed);
    }
}

// ---------------------------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------------------------

fn any_currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(Currency::ALL.to_vec())
}

/// A currency with a decimal string that has at most its number of decimals and fits the
/// range, plus the minor units it denotes (computed from the digits, not with `Money`).
fn valid_amount() -> impl Strategy<Value = (Currency, String, i64)> {
    any_currency().prop_flat_map(|currency| {
        let exponent = currency.exponent();
        // |value| < 1e12 keeps |minor| < 1e15 = MAX_MINOR_UNITS for every exponent <= 3.
        (
            any::<bool>(),
            0_u64..1_000_000_000_000,
            prop::collection::vec(0_u8..10, 0..=exponent as usize),
        )
            .prop_map(move |(negative, int, frac)| {
                let text = decimal_text(negative, int, &frac);
                let mut minor = int as i64;
                for i in 0..exponent as usize {
                    minor = minor * 10 + i64::from(frac.get(i).copied().unwrap_or(0));
                }
                (currency, text, if negative { -minor } else { minor })
            })
    })
}

proptest! {
    #![proptest_config(config())]

    /// parse → to_minor_units → from_minor_units round-trips, for every currency exponent.
    #[test]
    fn money_minor_units_round_trip((currency, text, minor) in valid_amount()) {
        let money = Money::parse(&text, currency)
            .map_err(|e| TestCaseError::fail(format!("{text} {currency}: {e}")))?;
        prop_assert_eq!(money.currency(), currency);
        prop_assert_eq!(money.to_minor_units(), Ok(minor));
        prop_assert_eq!(Money::from_minor_units(minor, currency), Ok(money));
        // The wire rendering parses back to the same value.
        prop_assert_eq!(Money::parse(&format_amount(&money), currency), Ok(money));
        // Trailing zeros are not extra precision.
        let padded = if text.contains('.') { format!("{text}000") } else { format!("{text}.000") };
        prop_assert_eq!(Money::parse(&padded, currency), Ok(money));
    }

    /// Every in-range count of minor units converts to money and back.
    #[test]
    fn money_from_minor_units_round_trips(
        currency in any_currency(),
        minor in -MAX_MINOR_UNITS..=MAX_MINOR_UNITS,
    ) {
        let money = Money::from_minor_units(minor, currency)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(money.to_minor_units(), Ok(minor));
        prop_assert_eq!(Money::parse(&format_amount(&money), currency), Ok(money));
    }

    /// An amount with more decimals than the currency allows is refused, never rounded.
    #[test]
    fn money_with_too_many_decimals_is_rejected(
        currency in any_currency(),
        int in 0_u64..1_000_000,
        extra in 1_usize..=8,
        digits in prop::collection::vec(0_u8..10, 11),
        last in 1_u8..10,
        negative in any::<bool>(),
    ) {
        let exponent = currency.exponent();
        let mut frac: Vec<u8> = digits[..exponent as usize + extra - 1].to_vec();
        frac.push(last);
        let text = decimal_text(negative, int, &frac);
        let expected = Err(MoneyError::TooManyDecimals {
            currency,
            allowed: exponent,
            found: frac.len() as u32,
        });
        prop_assert_eq!(Money::parse(&text, currency), expected.clone());
        let value = Decimal::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Money::new(value, currency), expected);
    }

    /// Amounts beyond the engine's range are `OutOfRange` (the parser's own limit is 28
    /// digits; longer inputs are covered by an ignored test below), never a panic.
    #[test]
    fn huge_money_is_out_of_range(
        currency in any_currency(),
        leading in 1_u8..10,
        rest in prop::collection::vec(0_u8..10, 15..=27),
        minor in any::<i64>(),
        quantity in any::<u32>(),
    ) {
        // At least 16 integer digits: >= 1e15 units, i.e. >= 1e15 minor units even for JPY.
        let mut text = char::from(b'0' + leading).to_string();
        text.extend(rest.iter().map(|d| char::from(b'0' + d)));
        if text.len() == 16 && currency.exponent() == 0 && text.bytes().skip(1).all(|b| b == b'0') && leading == 1 {
            // Exactly 1e15 JPY is the largest accepted amount.
            prop_assert!(Money::parse(&text, currency).is_ok());
        } else {
            prop_assert_eq!(Money::parse(&text, currency), Err(MoneyError::OutOfRange));
            prop_assert_eq!(Money::parse(&format!("-{text}"), currency), Err(MoneyError::OutOfRange));
        }
        if minor.unsigned_abs() > MAX_MINOR_UNITS as u64 {
            prop_assert_eq!(Money::from_minor_units(minor, currency), Err(MoneyError::OutOfRange));
        }
        // Arithmetic near the bound is checked, never panics or wraps.
        let max = Money::from_minor_units(MAX_MINOR_UNITS, currency)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(max.checked_add(max), Err(MoneyError::OutOfRange));
        match max.checked_mul_quantity(quantity) {
            Ok(product) => prop_assert!(quantity <= 1 && product.to_minor_units().is_ok()),
            Err(e) => prop_assert_eq!(e, MoneyError::OutOfRange),
        }
    }

    /// Any short text is either parsed or refused with an error, never a panic.
    #[test]
    fn money_parse_never_panics(text in "[-+0-9._eE ]{0,45}", currency in any_currency()) {
        if let Ok(money) = Money::parse(&text, currency) {
            prop_assert!(money.to_minor_units().is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: defects these properties found in src/, now fixed
// ---------------------------------------------------------------------------------------------

/// `Money::parse` uses `Decimal::from_str`, which silently rounds inputs with more than 28
/// fractional digits; the rounded value then passes the scale check. Fix: parse with
/// `Decimal::from_str_exact` and map its `Underflow` error to `TooManyDecimals`.
#[test]

fn money_parse_rejects_instead_of_rounding_beyond_28_decimals() {
    let text = "19.990000000000000000000000000001"; // 30 decimals
    assert!(
        matches!(
            Money::parse(text, Currency::USD),
            Err(MoneyError::TooManyDecimals { .. })
        ),
        "got {:?}",
        Money::parse(text, Currency::USD)
    );
}

/// Integers of 29 or more digits overflow `Decimal` during parsing and are reported as
/// `Malformed` ("invalid_amount") rather than `OutOfRange` ("amount_out_of_range").
#[test]

fn money_parse_reports_huge_integers_as_out_of_range() {
    let text = "99999999999999999999999999999"; // 29 digits
    assert_eq!(
        Money::parse(text, Currency::USD),
        Err(MoneyError::OutOfRange)
    );
}

/// A gateway "success" with a negative amount is added to `paid_minor` unchecked, leaving
/// `paid_minor < 0 <= refunded_minor` (invariant (a) broken). Fix: `record_payment` should
/// treat `amount_minor <= 0` (and a currency mismatch) as a hold without adding to
/// `paid_minor`, or reject it as invalid input.
#[test]

fn negative_captured_amount_never_makes_paid_negative() {
    let request = NewOrderRequest {
        customer_id: "c-1".into(),
        currency: "USD".into(),
        payment_method: "card".into(),
        items: vec![LineItemRequest {
            sku: "sku-1".into(),
            quantity: 1,
            unit_price: "10.00".into(),
        }],
        metadata: Default::default(),
    };
    let policy = OrderPolicy::default();
    let id = OrderId::from_u128(1);
    let now = Timestamp(EPOCH_MS);
    let place = CommandEnvelope::new(Command::PlaceOrder(Box::new(
        NewOrder::parse(&request).unwrap(),
    )));
    let order = apply(None, id, &place, now, &policy).unwrap().order;
    let pay = CommandEnvelope::new(Command::StartPayment { method: None });
    let order = apply(Some(&order), id, &pay, now, &policy).unwrap().order;
    let verdict = CommandEnvelope::new(Command::RecordPaymentResult {
        attempt_no: 1,
        result: PaymentResult::Succeeded {
            amount_minor: -500,
            currency: Currency::USD,
        },
    });
    let order = apply(Some(&order), id, &verdict, now, &policy)
        .unwrap()
        .order;
    assert_eq!(order.payments[0].status, AttemptStatus::Succeeded);
    assert!(order.paid_minor >= 0, "paid_minor = {}", order.paid_minor);
}

/// A payment that succeeds after the order was cancelled is refunded automatically; but if that
/// refund fails, `RecordRefundResult` returns the order to `Cancelled`, which is then settled
/// (terminal, nothing in flight) while still holding the customer's money, and `RefundOrder`
/// is refused in `Cancelled`. Fix: on a failed refund from a terminal resume status keep the
/// order unsettled (e.g. resume to `OnHold`), or allow `RefundOrder` while
/// `paid_minor > refunded_minor` in `Cancelled`.
#[test]

fn cancelled_order_never_settles_holding_money() {
    let request = NewOrderRequest {
        customer_id: "c-1".into(),
        currency: "USD".into(),
        payment_method: "card".into(),
        items: vec![LineItemRequest {
            sku: "sku-1".into(),
            quantity: 2,
            unit_price: "5.00".into(),
        }],
        metadata: Default::default(),
    };
    let policy = OrderPolicy::default();
    let id = OrderId::from_u128(2);
    let now = Timestamp(EPOCH_MS);
    let run = |order: Option<&Order>, command: Command| {
        apply(order, id, &CommandEnvelope::new(command), now, &policy)
            .unwrap()
            .order
    };
    let order = run(
        None,
        Command::PlaceOrder(Box::new(NewOrder::parse(&request).unwrap())),
    );
    let order = run(Some(&order), Command::StartPayment { method: None });
    let order = run(Some(&order), Command::CancelOrder { reason: None });
    let order = run(
        Some(&order),
        Command::RecordPaymentResult {
            attempt_no: 1,
            result: PaymentResult::Succeeded {
                amount_minor: 1000,
                currency: Currency::USD,
            },
        },
    );
    let order = run(
        Some(&order),
        Command::RecordRefundResult {
            refund_no: 1,
            result: RefundResult::Failed {
                reason: "gateway refused".into(),
            },
        },
    );
    assert!(
        !(order.is_settled() && order.paid_minor > order.refunded_minor),
        "settled {:?} order keeps {} of {} paid",
        order.status,
        order.paid_minor - order.refunded_minor,
        order.paid_minor
    );
}

// ---------------------------------------------------------------------------------------------
// The generators are not vacuous
// ---------------------------------------------------------------------------------------------

/// The scenario generator reaches every order status and every attempt status, re-sends
/// recent envelopes and settles orders, so the properties above are not vacuously true.
#[test]
fn generators_reach_every_status() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashSet;

    use orderly::domain::OrderStatus;

    let mut runner = TestRunner::deterministic();
    let scenario = (new_order_request(), policy(), steps());
    let mut statuses = HashSet::new();
    let mut attempts = HashSet::new();
    let mut settled = 0;
    let mut refunded_some = 0;
    let mut duplicates = 0;
    for _ in 0..CASES {
        let (request, policy, steps) = scenario
            .new_tree(&mut runner)
            .expect("generate a scenario")
            .current();
        let trace = drive(&request, &policy, &steps).expect("invariants hold");
        duplicates += trace.duplicates;
        let states = trace.states;
        for order in &states {
            statuses.insert(order.status);
            attempts.extend(order.payments.iter().map(|a| a.status));
        }
        let last = states.last().expect("placed");
        settled += usize::from(last.is_settled());
        refunded_some += usize::from(last.refunded_minor > 0);
    }
    for status in OrderStatus::ALL {
        assert!(statuses.contains(&status), "never reached {status:?}");
    }
    for status in AttemptStatus::ALL {
        assert!(
            attempts.contains(&status),
            "never reached attempt {status:?}"
        );
    }
    eprintln!(
        "{settled} of {CASES} scenarios settled, {refunded_some} refunded money, \
         {duplicates} duplicates recognised"
    );
    assert!(settled > CASES as usize / 10);
    assert!(refunded_some > CASES as usize / 50);
    assert!(duplicates > CASES as usize / 4);
}

/// A placement of an order that exists is a replay when it carries the same request, even under
/// a new command id and once the order is settled, and a refusal (`OrderAlreadyExists`) when it
/// carries another.
#[test]
fn a_placement_again_is_a_replay_only_with_the_same_request() {
    let request = |sku: &str| NewOrderRequest {
        customer_id: "c-1".into(),
        currency: "USD".into(),
        payment_method: "card".into(),
        items: vec![LineItemRequest {
            sku: sku.into(),
            quantity: 1,
            unit_price: "10.00".into(),
        }],
        metadata: Default::default(),
    };
    let place = |sku: &str| {
        CommandEnvelope::new(Command::PlaceOrder(Box::new(
            NewOrder::parse(&request(sku)).unwrap(),
        )))
    };
    let policy = OrderPolicy::default();
    let id = OrderId::from_u128(7);
    let now = Timestamp(EPOCH_MS);
    let order = apply(None, id, &place("sku-1"), now, &policy)
        .unwrap()
        .order;
    let cancel = CommandEnvelope::new(Command::CancelOrder { reason: None });
    let order = apply(Some(&order), id, &cancel, now, &policy)
        .unwrap()
        .order;
    assert!(order.is_settled());

    let again = apply(Some(&order), id, &place("sku-1"), now, &policy).unwrap();
    assert!(again.duplicate, "the same request is a replay");
    assert_eq!(again.order, order);
    assert!(again.effects.is_empty());
    assert_eq!(
        apply(Some(&order), id, &place("sku-2"), now, &policy).err(),
        Some(Rejection::OrderAlreadyExists(id)),
        "another request under the same id is refused"
    );
}
