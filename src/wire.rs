//! The JSON shape of an order as clients see it (amounts as decimal strings, states in
//! snake_case). Shared by the CLI and the HTTP edge.

use serde::Serialize;

use crate::domain::money::format_amount;
use crate::domain::{Money, Order};

/// An amount with its currency: `{"amount":"39.98","currency":"USD"}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AmountView {
    /// Decimal string with the currency's number of decimals.
    pub amount: String,
    /// ISO code.
    pub currency: &'static str,
}

impl From<Money> for AmountView {
    fn from(money: Money) -> AmountView {
        AmountView {
            amount: format_amount(&money),
            currency: money.currency().code(),
        }
    }
}

/// One line item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ItemView {
    /// SKU.
    pub sku: String,
    /// Units.
    pub quantity: u32,
    /// Unit price as a decimal string.
    pub unit_price: String,
}

/// One payment attempt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1-based number.
    pub attempt_no: u16,
    /// Gateway.
    pub method: &'static str,
    /// Status, snake_case.
    pub status: &'static str,
    /// Idempotency key sent to the gateway.
    pub idempotency_key: String,
    /// Amount requested.
    pub amount: AmountView,
}

/// A durable timer the order has armed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TimerView {
    /// `payment_reminder`, `unpaid_expiry`, `auto_complete` or `ship_sla`.
    pub timer: &'static str,
    /// When it fires, ms since the epoch.
    pub due_at_ms: i64,
}

/// An order as returned by the API and the CLI.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OrderView {
    /// Id.
    pub order_id: String,
    /// Status, snake_case.
    pub status: &'static str,
    /// Version (one per applied command).
    pub version: u64,
    /// Customer.
    pub customer_id: String,
    /// Payment method chosen at placement.
    pub payment_method: &'static str,
    /// P = Σpᵢ·qᵢ.
    pub total: AmountView,
    /// O = Σqᵢ.
    pub item_count: u64,
    /// Lines.
    pub items: Vec<ItemView>,
    /// Captured.
    pub paid: AmountView,
    /// Refunded.
    pub refunded: AmountView,
    /// Attempts.
    pub payment_attempts: Vec<AttemptView>,
    /// Tracking number, once shipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
    /// Why the last payment failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_payment_error: Option<String>,
    /// Cancel or hold reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Placement time, ms since the epoch.
    pub created_at_ms: i64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: i64,
    /// Armed durable timers, earliest first (reminders and unpaid expiry wait while a
    /// payment attempt is live).
    pub timers: Vec<TimerView>,
}

impl From<&Order> for OrderView {
    fn from(order: &Order) -> OrderView {
        let header = &order.header;
        let notes = order.notes();
        let currency = header.currency;
        OrderView {
            order_id: header.id.to_string(),
            status: order.status.as_str(),
            version: order.version,
            customer_id: header.customer_id.to_string(),
            payment_method: header.payment_method.as_str(),
            total: order.total().into(),
            item_count: header.item_count,
            items: header
                .items
                .iter()
                .map(|item| ItemView {
                    sku: item.sku.to_string(),
                    quantity: item.quantity.get(),
                    unit_price: Money::new(item.unit_price, currency)
                        .map(|m| format_amount(&m))
                        .unwrap_or_else(|_| item.unit_price.to_string()),
                })
                .collect(),
            paid: order.paid().into(),
            refunded: order.refunded().into(),
            payment_attempts: order
                .payments
                .iter()
                .map(|a| AttemptView {
                    attempt_no: a.attempt_no,
                    method: a.method.as_str(),
                    status: a.status.as_str(),
                    idempotency_key: a.idempotency_key(header.id),
                    amount: Money::from_minor_units(a.amount_minor, currency)
                        .unwrap_or_else(|_| Money::zero(currency))
                        .into(),
                })
                .collect(),
            tracking_number: notes.tracking_number.as_deref().map(str::to_string),
            last_payment_error: notes.last_payment_error.as_deref().map(str::to_string),
            reason: notes.reason.as_deref().map(str::to_string),
            created_at_ms: header.created_at.0,
            updated_at_ms: order.updated_at.0,
            timers: {
                let mut timers: Vec<TimerView> = crate::domain::armed_timers(order)
                    .into_iter()
                    .map(|(kind, at)| TimerView {
                        timer: kind.as_str(),
                        due_at_ms: at.0,
                    })
                    .collect();
                timers.sort_by_key(|t| t.due_at_ms);
                timers
            },
        }
    }
}
