//! Request bodies, deterministic per arrival number so runs are repeatable.

use serde_json::json;

use crate::scenario::OrderTemplate;

/// The JSON of order number `n` (`POST /v1/orders` body, one bulk line).
pub fn order_json(template: &OrderTemplate, n: u64) -> String {
    order_json_with(template, n, &[])
}

/// The JSON of order number `n` with `metadata` pairs (the stream step's reference).
pub fn order_json_with(template: &OrderTemplate, n: u64, metadata: &[(&str, &str)]) -> String {
    let items: Vec<serde_json::Value> = (0..template.items_per_order as u64)
        .map(|k| {
            let price =
                &template.unit_prices[((n + k) % template.unit_prices.len() as u64) as usize];
            json!({
                "sku": format!("sku-{}", (n + k) % template.skus),
                "quantity": (n + k) % 3 + 1,
                "unit_price": price,
            })
        })
        .collect();
    json!({
        "customer_id": format!("load-{}", n % 100_000),
        "currency": template.currency,
        "payment_method": template.payment_method,
        "items": items,
        "metadata": metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect::<serde_json::Map<_, _>>(),
    })
    .to_string()
}

/// An NDJSON body of `lines` orders, numbered from `first`.
pub fn bulk_body(template: &OrderTemplate, first: u64, lines: usize) -> String {
    let mut body = String::with_capacity(lines * 160);
    for n in first..first + lines as u64 {
        body.push_str(&order_json(template, n));
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_have_the_wire_shape() {
        let template = OrderTemplate {
            items_per_order: 2,
            unit_prices: vec!["19.99".into(), "5.00".into()],
            ..OrderTemplate::default()
        };
        let order: serde_json::Value = serde_json::from_str(&order_json(&template, 4)).unwrap();
        assert_eq!(order["currency"], "USD");
        assert_eq!(order["payment_method"], "card");
        assert_eq!(order["items"].as_array().unwrap().len(), 2);
        assert_eq!(order["items"][0]["unit_price"], "19.99");
        assert_eq!(order["items"][1]["unit_price"], "5.00");
        assert_eq!(order["items"][0]["quantity"], 2);
        assert_eq!(order_json(&template, 4), order_json(&template, 4));
    }

    #[test]
    fn bulk_bodies_have_one_line_per_order() {
        let body = bulk_body(&OrderTemplate::default(), 10, 5);
        assert_eq!(body.lines().count(), 5);
        assert!(body
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
    }
}
