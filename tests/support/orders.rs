//! Valid orders for tests.

use orderly::domain::{LineItemRequest, NewOrder, NewOrderRequest};

/// A valid USD card order; `n` varies the customer, SKU and quantity.
pub fn new_order(n: u64) -> NewOrder {
    NewOrder::parse(&NewOrderRequest {
        customer_id: format!("customer-{n}"),
        currency: "USD".into(),
        payment_method: "card".into(),
        items: vec![LineItemRequest {
            sku: format!("sku-{}", n % 7),
            quantity: (n % 3 + 1) as i64,
            unit_price: "19.99".into(),
        }],
        metadata: Default::default(),
    })
    .expect("test order is valid")
}
