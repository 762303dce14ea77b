//! OpenAPI-only shapes of request bodies defined in the domain (which stays free of web
//! dependencies). A unit test keeps them in step with the real types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A new order, as `POST /v1/orders` and each bulk line take it (unknown fields are refused).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id":"c-42","currency":"USD","payment_method":"card","items":[{"sku":"sku-1","quantity":2,"unit_price":"19.99"}],"metadata":{}}))]
pub(crate) struct NewOrderDoc {
    /// The platform's customer id (1..=128 bytes).
    customer_id: String,
    /// ISO 4217 code, e.g. `USD`.
    currency: String,
    /// `card`, `alipay` or `wechat`.
    payment_method: String,
    /// 1..=256 lines.
    items: Vec<LineItemDoc>,
    /// Up to 16 string pairs kept with the order.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// One line of a new order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LineItemDoc {
    /// Stock keeping unit (1..=128 bytes).
    sku: String,
    /// Units, 1..=100000.
    quantity: i64,
    /// Decimal string with at most the currency's decimals, e.g. `"19.99"`.
    unit_price: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewOrderRequest;

    #[test]
    fn the_documented_shape_is_the_real_one() {
        let doc = NewOrderDoc {
            customer_id: "c".into(),
            currency: "USD".into(),
            payment_method: "card".into(),
            items: vec![LineItemDoc {
                sku: "s".into(),
                quantity: 1,
                unit_price: "1.00".into(),
            }],
            metadata: BTreeMap::from([("k".into(), "v".into())]),
        };
        // Both types refuse unknown fields, so a round trip each way proves equal field sets.
        let text = serde_json::to_string(&doc).expect("serializes");
        let real: NewOrderRequest = serde_json::from_str(&text).expect("real type accepts doc");
        let back = serde_json::to_string(&real).expect("serializes");
        let _: NewOrderDoc = serde_json::from_str(&back).expect("doc accepts real type");
    }
}
