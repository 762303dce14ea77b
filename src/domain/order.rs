//! The order aggregate: line items, totals, status, payment attempts and refunds.

use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::ids::{CommandId, OrderId, Timestamp};
use super::money::{Currency, Money, MoneyError};
use super::payment::{PaymentAttempt, PaymentMethod, Refund};
use super::rejection::{Rejection, ValidationError};

/// Most units of one line item; larger quantities are refused as input errors.
pub const MAX_QUANTITY: u32 = 100_000;
/// Most line items in one order.
pub const MAX_LINE_ITEMS: usize = 256;
/// Longest SKU, customer id, tracking number or reason text, in bytes.
pub const MAX_TEXT_BYTES: usize = 128;
/// How many recent command ids an order remembers for duplicate detection.
pub const RECENT_COMMANDS: usize = 4;

/// A validated quantity: at least 1, at most [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    /// Checks the bounds; `field` names the input for the error.
    pub fn new(value: i64, field: &str) -> Result<Quantity, ValidationError> {
        if value <= 0 {
            return Err(ValidationError::new(
                "invalid_quantity",
                field,
                "quantity must be at least 1",
            ));
        }
        if value > i64::from(MAX_QUANTITY) {
            return Err(ValidationError::new(
                "quantity_too_large",
                field,
                format!("quantity must be at most {MAX_QUANTITY}"),
            ));
        }
        Ok(Quantity(value as u32))
    }

    /// The count of units.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// One validated line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    /// Stock keeping unit, 1..=128 bytes.
    pub sku: Box<str>,
    /// Units ordered.
    pub quantity: Quantity,
    /// Price of one unit, non-negative, in the order's currency.
    pub unit_price: Decimal,
}

/// Order states (DESIGN.md §2). Terminal: Completed, Cancelled, Expired, Refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Placed; waiting for the customer to pay.
    PendingPayment,
    /// A payment attempt is live at a gateway.
    PaymentProcessing,
    /// Paid in full; ready to ship.
    Paid,
    /// Needs a human: the gateway reported a different amount or an unresolved attempt.
    OnHold,
    /// Handed to the carrier.
    Shipped,
    /// Delivered; terminal.
    Completed,
    /// Cancelled before payment; terminal (a late payment is refunded automatically).
    Cancelled,
    /// Not paid in time; terminal.
    Expired,
    /// A refund is in flight at the gateway.
    Refunding,
    /// Part of the paid amount has been refunded.
    PartiallyRefunded,
    /// Everything paid has been refunded; terminal.
    Refunded,
}

impl OrderStatus {
    /// Every status, for metrics and tests.
    pub const ALL: [OrderStatus; 11] = [
        OrderStatus::PendingPayment,
        OrderStatus::PaymentProcessing,
        OrderStatus::Paid,
        OrderStatus::OnHold,
        OrderStatus::Shipped,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Refunding,
        OrderStatus::PartiallyRefunded,
        OrderStatus::Refunded,
    ];

    /// Whether no further business transition leaves this state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Completed
                | OrderStatus::Cancelled
                | OrderStatus::Expired
                | OrderStatus::Refunded
        )
    }

    /// The snake_case wire name (`pending_payment`).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::PaymentProcessing => "payment_processing",
            OrderStatus::Paid => "paid",
            OrderStatus::OnHold => "on_hold",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Refunding => "refunding",
            OrderStatus::PartiallyRefunded => "partially_refunded",
            OrderStatus::Refunded => "refunded",
        }
    }

    /// The position in [`OrderStatus::ALL`] (declaration order).
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Stable small code for snapshots (index in [`OrderStatus::ALL`]).
    pub fn code(self) -> u8 {
        OrderStatus::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(0) as u8
    }

    /// Inverse of [`OrderStatus::code`].
    pub fn from_code(code: u8) -> Option<OrderStatus> {
        OrderStatus::ALL.get(code as usize).copied()
    }
}

/// An order as the client describes it, before validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrderRequest {
    /// The platform's customer id.
    pub customer_id: String,
    /// ISO 4217 code.
    pub currency: String,
    /// `card`, `alipay` or `wechat`.
    pub payment_method: String,
    /// At least one line.
    #[serde(deserialize_with = "crate::domain::order::objects")]
    pub items: Vec<LineItemRequest>,
    /// Free-form string pairs kept with the order.
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A JSON object read as `T`, never a JSON array: serde's derived structs also accept their
/// fields in sequence form (`["c1","USD",…]`), which no client means and the API does not
/// document, so a request body and each of its line items must be an object.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(Object)
    }
}

/// A JSON array of objects as a `Vec<T>` (see [`Object`]).
pub(crate) fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items: Vec<Object<T>> = Deserialize::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Object(item)| item).collect())
}

/// A line item as the client sends it: decimal string price, integer quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItemRequest {
    /// Stock keeping unit.
    pub sku: String,
    /// Units; must be 1..=MAX_QUANTITY.
    pub quantity: i64,
    /// Decimal string, e.g. `"19.99"`.
    pub unit_price: String,
}

/// Most metadata pairs kept on an order.
pub const MAX_METADATA_PAIRS: usize = 16;

/// A validated new order: every field parsed once, at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// The platform's customer id.
    pub customer_id: Box<str>,
    /// The order's currency.
    pub currency: Currency,
    /// How the customer intends to pay.
    pub payment_method: PaymentMethod,
    /// Validated lines.
    pub items: Box<[LineItem]>,
    /// Validated metadata pairs.
    pub metadata: Box<[(Box<str>, Box<str>)]>,
}

/// Refuses ASCII control characters (U+0000..=U+001F and U+007F: NUL, tabs, line breaks,
/// escapes) in a text field: they break logs, CSV exports and the CRM screens downstream, and no
/// identifier, SKU or note needs them.
pub fn check_no_control(value: &str, field: &str) -> Result<(), ValidationError> {
    match value.bytes().position(|b| b.is_ascii_control()) {
        None => Ok(()),
        Some(at) => Err(ValidationError::new(
            "invalid_text",
            field,
            format!(
                "must not contain control characters (0x{:02X} at byte {at})",
                value.as_bytes()[at]
            ),
        )),
    }
}

fn check_text(value: &str, field: &str) -> Result<Box<str>, ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(
            "missing_field",
            field,
            "must not be empty",
        ));
    }
    if value.len() > MAX_TEXT_BYTES {
        return Err(ValidationError::new(
            "field_too_long",
            field,
            format!("must be at most {MAX_TEXT_BYTES} bytes"),
        ));
    }
    check_no_control(value, field)?;
    Ok(value.into())
}

fn money_error(error: MoneyError, field: &str) -> ValidationError {
    let code = match error {
        MoneyError::UnknownCurrency(_) => "unknown_currency",
        MoneyError::Malformed(_) => "invalid_amount",
        MoneyError::TooManyDecimals { .. } => "too_many_decimals",
        MoneyError::Negative => "negative_amount",
        MoneyError::OutOfRange => "amount_out_of_range",
        MoneyError::CurrencyMismatch(..) => "currency_mismatch",
    };
    ValidationError::new(code, field, error.to_string())
}

impl NewOrder {
    /// Validates a client request: non-empty bounded items, positive bounded quantities,
    /// non-negative prices with the currency's scale, known currency and payment method, and a
    /// total that fits the engine's range.
    pub fn parse(request: &NewOrderRequest) -> Result<NewOrder, ValidationError> {
        let customer_id = check_text(&request.customer_id, "customer_id")?;
        let currency =
            Currency::parse(&request.currency).map_err(|e| money_error(e, "currency"))?;
        let payment_method = PaymentMethod::parse(&request.payment_method).ok_or_else(|| {
            ValidationError::new(
                "unknown_payment_method",
                "payment_method",
                "payment_method must be one of card, alipay, wechat",
            )
        })?;
        if request.items.is_empty() {
            return Err(ValidationError::new(
                "empty_items",
                "items",
                "an order needs at least one item",
            ));
        }
        if request.items.len() > MAX_LINE_ITEMS {
            return Err(ValidationError::new(
                "too_many_items",
                "items",
                format!("an order has at most {MAX_LINE_ITEMS} items"),
            ));
        }
        let mut items = Vec::with_capacity(request.items.len());
        for (i, item) in request.items.iter().enumerate() {
            let sku = check_text(&item.sku, &format!("items[{i}].sku"))?;
            let quantity = Quantity::new(item.quantity, &format!("items[{i}].quantity"))?;
            let price_field = format!("items[{i}].unit_price");
            let price = Money::parse(&item.unit_price, currency)
                .map_err(|e| money_error(e, &price_field))?;
            if price.is_negative() {
                return Err(money_error(MoneyError::Negative, &price_field));
            }
            items.push(LineItem {
                sku,
                quantity,
                unit_price: price.amount(),
            });
        }
        if request.metadata.len() > MAX_METADATA_PAIRS {
            return Err(ValidationError::new(
                "too_many_metadata_pairs",
                "metadata",
                format!("at most {MAX_METADATA_PAIRS} metadata pairs"),
            ));
        }
        let mut metadata = Vec::with_capacity(request.metadata.len());
        for (key, value) in &request.metadata {
            let key = check_text(key, "metadata")?;
            if value.len() > MAX_TEXT_BYTES {
                return Err(ValidationError::new(
                    "field_too_long",
                    "metadata",
                    "value too long",
                ));
            }
            check_no_control(value, "metadata")?;
            metadata.push((key, value.as_str().into()));
        }
        let new_order = NewOrder {
            customer_id,
            currency,
            payment_method,
            items: items.into_boxed_slice(),
            metadata: metadata.into_boxed_slice(),
        };
        totals(&new_order.items, currency).map_err(|e| money_error(e, "items"))?;
        Ok(new_order)
    }
}

impl NewOrder {
    /// A stable 64-bit fingerprint of the order's content (FNV-1a over a canonical encoding):
    /// equal for the same customer, currency, method, lines and metadata however the JSON was
    /// formatted, and stable across processes and releases.
    pub fn fingerprint(&self) -> u64 {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes.iter().chain(std::iter::once(&0xff)) {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(PRIME);
            }
        };
        feed(self.customer_id.as_bytes());
        feed(self.currency.code().as_bytes());
        feed(self.payment_method.as_str().as_bytes());
        for item in self.items.iter() {
            feed(item.sku.as_bytes());
            feed(&item.quantity.get().to_le_bytes());
            let price = item.unit_price.normalize();
            feed(&price.mantissa().to_le_bytes());
            feed(&price.scale().to_le_bytes());
        }
        for (key, value) in self.metadata.iter() {
            feed(key.as_bytes());
            feed(value.as_bytes());
        }
        hash
    }
}

/// Order count O = Σqᵢ and order value P = Σpᵢ·qᵢ in minor units, with checked integer
/// arithmetic (prices were validated against the currency's scale, so this is exact); used on
/// the hot path where [`totals`] would cost decimal arithmetic per line.
pub fn totals_minor(items: &[LineItem], currency: Currency) -> Option<(u64, i64)> {
    let mut count: u64 = 0;
    let mut value: i64 = 0;
    for item in items {
        let price = unit_price_minor(item.unit_price, currency)?;
        count = count.checked_add(u64::from(item.quantity.get()))?;
        value = value.checked_add(price.checked_mul(i64::from(item.quantity.get()))?)?;
    }
    (value.unsigned_abs() <= super::money::MAX_MINOR_UNITS as u64).then_some((count, value))
}

/// A unit price in minor units, if it has no more decimals than the currency allows.
pub fn unit_price_minor(price: Decimal, currency: Currency) -> Option<i64> {
    let scale = price.scale();
    if scale > currency.exponent() {
        let normalized = price.normalize();
        if normalized.scale() > currency.exponent() {
            return None;
        }
        return unit_price_minor(normalized, currency);
    }
    let mantissa = i64::try_from(price.mantissa()).ok()?;
    mantissa.checked_mul(10_i64.checked_pow(currency.exponent() - scale)?)
}

/// Order count O = Σqᵢ and order value P = Σpᵢ·qᵢ, exact; overflow is an error.
pub fn totals(items: &[LineItem], currency: Currency) -> Result<(u64, Money), MoneyError> {
    let mut count: u64 = 0;
    let mut value = Money::zero(currency);
    for item in items {
        count += u64::from(item.quantity.get());
        let line =
            Money::new(item.unit_price, currency)?.checked_mul_quantity(item.quantity.get())?;
        value = value.checked_add(line)?;
    }
    Ok((count, value))
}

/// The parts of an order fixed at placement; shared (`Arc`) between versions, so applying a
/// command copies a few words instead of every line item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderHeader {
    /// The order's id.
    pub id: OrderId,
    /// The platform's customer id.
    pub customer_id: Box<str>,
    /// The order's currency.
    pub currency: Currency,
    /// Payment method chosen at placement.
    pub payment_method: PaymentMethod,
    /// Validated lines.
    pub items: Box<[LineItem]>,
    /// Metadata pairs.
    pub metadata: Box<[(Box<str>, Box<str>)]>,
    /// O = Σqᵢ.
    pub item_count: u64,
    /// P = Σpᵢ·qᵢ in minor units.
    pub total_minor: i64,
    /// When the order was placed.
    pub created_at: Timestamp,
    /// Fingerprint of the placement request ([`NewOrder::fingerprint`]): a replay of an
    /// idempotency key with a different payload is told apart by it.
    pub request_fingerprint: u64,
}

/// Texts that most orders never have, kept behind one pointer to keep live orders small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderNotes {
    /// Carrier tracking number, once shipped.
    pub tracking_number: Option<Box<str>>,
    /// Why the last payment attempt did not succeed.
    pub last_payment_error: Option<Box<str>>,
    /// Why the order was cancelled or put on hold.
    pub reason: Option<Box<str>>,
}

/// Bounded ring of recent command-id fingerprints (0 = empty slot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentCommands {
    /// Fingerprints, oldest overwritten first.
    pub slots: [u64; RECENT_COMMANDS],
}

impl RecentCommands {
    /// Whether `id` was applied recently.
    pub fn contains(&self, id: CommandId) -> bool {
        let fp = id.fingerprint();
        self.slots.contains(&fp)
    }

    /// Remembers `id`, forgetting the oldest. `version` picks the slot so the ring needs no
    /// cursor: the command applied at version v lives in slot v mod N.
    pub fn record(&mut self, id: CommandId, version: u64) {
        self.slots[(version % RECENT_COMMANDS as u64) as usize] = id.fingerprint();
    }
}

/// The order aggregate. Cheap to clone: the fixed part is shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Fixed-at-placement part.
    pub header: Arc<OrderHeader>,
    /// Current state.
    pub status: OrderStatus,
    /// Increases by exactly one per applied command; 1 after placement.
    pub version: u64,
    /// Time of the last applied command.
    pub updated_at: Timestamp,
    /// Amount captured, minor units.
    pub paid_minor: i64,
    /// Amount refunded (settled), minor units; never exceeds `paid_minor`.
    pub refunded_minor: i64,
    /// Payment attempts in order; at most one is live.
    pub payments: Vec<PaymentAttempt>,
    /// Refunds in order; at most one is pending.
    pub refunds: Vec<Refund>,
    /// Rare texts.
    pub notes: Option<Box<OrderNotes>>,
    /// When to remind the customer to pay (0 = no reminder armed).
    pub reminder_at: Timestamp,
    /// When an unpaid order expires (0 = no expiry armed).
    pub expires_at: Timestamp,
    /// Position in the reminder schedule of the armed reminder (`reminder_at`).
    pub reminder_no: u8,
    /// When a paid, unshipped order breaches the ship SLA (0 = not armed).
    pub ship_sla_at: Timestamp,
    /// When a shipped order completes by itself (0 = not armed).
    pub complete_at: Timestamp,
    /// When the engine checks the order's live gateway work (0 = none live).
    pub payment_check_at: Timestamp,
    /// Engine bookkeeping, not domain state: the due time the shard's durable timer index
    /// holds for this order (0 = no entry). The index may hold an earlier time than the
    /// order's next timer (it is corrected when it fires), never a later one.
    pub timer_indexed_at: Timestamp,
    /// Recently applied command ids.
    pub recent: RecentCommands,
}

impl Order {
    /// The order's id.
    pub fn id(&self) -> OrderId {
        self.header.id
    }

    /// The order's currency.
    pub fn currency(&self) -> Currency {
        self.header.currency
    }

    /// P = Σpᵢ·qᵢ.
    pub fn total(&self) -> Money {
        self.money(self.header.total_minor)
    }

    /// Amount captured.
    pub fn paid(&self) -> Money {
        self.money(self.paid_minor)
    }

    /// Amount refunded.
    pub fn refunded(&self) -> Money {
        self.money(self.refunded_minor)
    }

    fn money(&self, minor: i64) -> Money {
        // Amounts inside an order were range-checked when they entered it.
        Money::from_minor_units(minor, self.header.currency)
            .unwrap_or_else(|_| Money::zero(self.header.currency))
    }

    /// The live (unresolved) payment attempt, if any.
    pub fn live_attempt(&self) -> Option<&PaymentAttempt> {
        self.payments.iter().rev().find(|a| a.status.is_live())
    }

    /// The pending refund, if any.
    pub fn pending_refund(&self) -> Option<&Refund> {
        self.refunds.iter().rev().find(|r| r.is_pending())
    }

    /// Sum of refunds requested but not yet settled, minor units.
    pub fn pending_refund_minor(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.is_pending())
            .map(|r| r.amount_minor)
            .sum()
    }

    /// Whether the order can never change again: terminal with nothing in flight.
    pub fn is_settled(&self) -> bool {
        self.status.is_terminal()
            && self.live_attempt().is_none()
            && self.pending_refund().is_none()
    }

    /// Rare texts, read-only.
    pub fn notes(&self) -> &OrderNotes {
        static EMPTY: OrderNotes = OrderNotes {
            tracking_number: None,
            last_payment_error: None,
            reason: None,
        };
        self.notes.as_deref().unwrap_or(&EMPTY)
    }

    pub(crate) fn notes_mut(&mut self) -> &mut OrderNotes {
        self.notes.get_or_insert_with(Default::default)
    }
}

/// Maps a rejection for an order that does not exist yet.
pub(crate) fn not_found(id: OrderId) -> Rejection {
    Rejection::OrderNotFound(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(customer_id: &str, sku: &str, note: &str) -> NewOrderRequest {
        NewOrderRequest {
            customer_id: customer_id.into(),
            currency: "USD".into(),
            payment_method: "card".into(),
            items: vec![LineItemRequest {
                sku: sku.into(),
                quantity: 1,
                unit_price: "1.00".into(),
            }],
            metadata: [("note".to_string(), note.to_string())].into(),
        }
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field() {
        assert!(NewOrder::parse(&request("c-1", "sku-1", "gift wrap, é")).is_ok());
        for (req, field) in [
            (request("c\u{0}1", "sku-1", "n"), "customer_id"),
            (request("c-1", "sku\n1", "n"), "items[0].sku"),
            (request("c-1", "sku-1", "line\r\nbreak"), "metadata"),
            (request("c-1", "sku\u{7f}", "n"), "items[0].sku"),
        ] {
            let error = NewOrder::parse(&req).expect_err("a control character");
            assert_eq!((error.code, error.field.as_str()), ("invalid_text", field));
        }
    }
}
