//! An order's whole life over HTTP: place (201 + Location), read, pay, ship, deliver; cancel;
//! partial refund; amounts as decimal strings in the currency's scale.

use serde_json::{json, Value};

use crate::app::spawn_app;

#[actix_web::test]
async fn place_read_pay_ship_deliver() {
    let app = spawn_app().await;
    let response = app
        .post_json(
            "/v1/orders",
            &json!({
                "customer_id": "c-42",
                "currency": "USD",
                "payment_method": "card",
                "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "19.99"}],
                "metadata": {"channel": "web"}
            }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string();
    let order: Value = response.json().await.expect("JSON");
    let id = order["order_id"].as_str().expect("id");
    assert_eq!(location, format!("/v1/orders/{id}"));
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(
        order["total"],
        json!({"amount": "39.98", "currency": "USD"})
    );
    assert_eq!(order["item_count"], 2);
    assert_eq!(order["items"][0]["unit_price"], "19.99");

    let read: Value = app.get(&location).await.json().await.expect("JSON");
    assert_eq!(read, order);

    let paid: Value = app
        .post_empty(&format!("{location}/pay"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["paid"]["amount"], "39.98");
    assert_eq!(paid["payment_attempts"][0]["status"], "succeeded");

    let shipped: Value = app
        .post_json(
            &format!("{location}/ship"),
            &json!({"tracking_number": "1Z999"}),
        )
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(shipped["tracking_number"], "1Z999");

    let delivered = app.post_empty(&format!("{location}/deliver")).await;
    assert_eq!(delivered.status(), 200);
    let delivered: Value = delivered.json().await.expect("JSON");
    assert_eq!(delivered["status"], "completed");
}

#[actix_web::test]
async fn cancel_with_a_reason() {
    let app = spawn_app().await;
    let order = app.place(1).await;
    let id = order["order_id"].as_str().expect("id");
    let cancelled = app
        .post_json(
            &format!("/v1/orders/{id}/cancel"),
            &json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    let cancelled: Value = cancelled.json().await.expect("JSON");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["reason"], "changed my mind");
}

#[actix_web::test]
async fn a_partial_refund_in_a_three_decimal_currency() {
    let app = spawn_app().await;
    let order = app
        .post_json(
            "/v1/orders",
            &json!({
                "customer_id": "c-1",
                "currency": "KWD",
                "payment_method": "card",
                "items": [{"sku": "s", "quantity": 1, "unit_price": "10.500"}]
            }),
        )
        .await;
    assert_eq!(order.status(), 201);
    let order: Value = order.json().await.expect("JSON");
    let id = order["order_id"].as_str().expect("id");
    assert_eq!(
        app.post_empty(&format!("/v1/orders/{id}/pay"))
            .await
            .status(),
        200
    );
    let refund = app
        .post_json(
            &format!("/v1/orders/{id}/refund"),
            &json!({"amount": "0.125"}),
        )
        .await;
    assert_eq!(refund.status(), 200);
    let refund: Value = refund.json().await.expect("JSON");
    assert_eq!(refund["status"], "refunding");
    assert_eq!(refund["total"]["amount"], "10.500");
}

#[actix_web::test]
async fn an_optional_body_may_be_null() {
    let app = spawn_app().await;
    let id = app.place(7).await["order_id"]
        .as_str()
        .expect("order_id")
        .to_string();
    for verb in ["pay", "ship", "deliver"] {
        let response = app
            .post_raw(
                &format!("/v1/orders/{id}/{verb}"),
                "application/json",
                b" null ".to_vec(),
            )
            .await;
        assert_eq!(response.status(), 200, "{verb} with a null body");
    }
    let order: Value = app
        .get(&format!("/v1/orders/{id}"))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(order["status"], "completed");
}
