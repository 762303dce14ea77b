//! Every error code of the API answers with its documented status and the one JSON error shape,
//! and bad input never produces a 500.

use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{assert_error, order_json, spawn_app, spawn_app_with, spawn_redis_app_with};

/// A valid order with `edit` applied to its JSON.
fn order_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut order = order_json(1);
    edit(&mut order);
    order
}

#[actix_web::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let response = app
        .post_raw(
            "/v1/orders",
            "application/json",
            b"{\"customer_id\":".to_vec(),
        )
        .await;
    assert_error(response, 400, "malformed_json").await;
}

#[actix_web::test]
async fn unknown_field_is_400_and_names_the_field() {
    let app = spawn_app().await;
    let body = order_with(|o| o["items"][0]["colour"] = json!("red"));
    let error = assert_error(
        app.post_json("/v1/orders", &body).await,
        400,
        "unknown_field",
    )
    .await;
    assert_eq!(error["field"], "items[0].colour");
}

#[actix_web::test]
async fn missing_field_is_400() {
    let app = spawn_app().await;
    let body = order_with(|o| {
        o.as_object_mut().expect("object").remove("currency");
    });
    let error = assert_error(
        app.post_json("/v1/orders", &body).await,
        400,
        "missing_field",
    )
    .await;
    assert_eq!(error["field"], "currency");
}

#[actix_web::test]
async fn a_value_of_the_wrong_type_is_400_invalid_field() {
    let app = spawn_app().await;
    let body = order_with(|o| o["items"][0]["quantity"] = json!("two"));
    let error = assert_error(
        app.post_json("/v1/orders", &body).await,
        400,
        "invalid_field",
    )
    .await;
    assert_eq!(error["field"], "items[0].quantity");
}

#[actix_web::test]
async fn empty_items_is_422() {
    let app = spawn_app().await;
    let body = order_with(|o| o["items"] = json!([]));
    assert_error(app.post_json("/v1/orders", &body).await, 422, "empty_items").await;
}

#[actix_web::test]
async fn zero_or_negative_quantity_is_422() {
    let app = spawn_app().await;
    for quantity in [0, -3] {
        let body = order_with(|o| o["items"][0]["quantity"] = json!(quantity));
        let error = assert_error(
            app.post_json("/v1/orders", &body).await,
            422,
            "invalid_quantity",
        )
        .await;
        assert_eq!(error["field"], "items[0].quantity");
    }
}

#[actix_web::test]
async fn too_large_quantity_is_422() {
    let app = spawn_app().await;
    let body = order_with(|o| o["items"][0]["quantity"] = json!(100_001));
    assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "quantity_too_large",
    )
    .await;
}

#[actix_web::test]
async fn negative_price_is_422() {
    let app = spawn_app().await;
    let body = order_with(|o| o["items"][0]["unit_price"] = json!("-1.00"));
    let error = assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "negative_amount",
    )
    .await;
    assert_eq!(error["field"], "items[0].unit_price");
}

#[actix_web::test]
async fn too_many_decimals_is_422() {
    let app = spawn_app().await;
    let body = order_with(|o| {
        o["currency"] = json!("JPY");
        o["items"][0]["unit_price"] = json!("1.5");
    });
    assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "too_many_decimals",
    )
    .await;
}

#[actix_web::test]
async fn unknown_currency_is_422() {
    let app = spawn_app().await;
    let body = order_with(|o| o["currency"] = json!("XXX"));
    let error = assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "unknown_currency",
    )
    .await;
    assert_eq!(error["field"], "currency");
}

#[actix_web::test]
async fn unknown_payment_method_is_422_at_placement_and_payment() {
    let app = spawn_app().await;
    let body = order_with(|o| o["payment_method"] = json!("cash"));
    assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "unknown_payment_method",
    )
    .await;
    let order = app.place(1).await;
    let id = order["order_id"].as_str().expect("id");
    let response = app
        .post_json(
            &format!("/v1/orders/{id}/pay"),
            &json!({"payment_method": "cash"}),
        )
        .await;
    assert_error(response, 422, "unknown_payment_method").await;
}

#[actix_web::test]
async fn invalid_amount_is_422_for_prices_and_refunds() {
    let app = spawn_app().await;
    let body = order_with(|o| o["items"][0]["unit_price"] = json!("1e3"));
    assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "invalid_amount",
    )
    .await;
    let id = app.place_paid(2).await;
    let response = app
        .post_json(
            &format!("/v1/orders/{id}/refund"),
            &json!({"amount": "ten"}),
        )
        .await;
    let error = assert_error(response, 422, "invalid_amount").await;
    assert_eq!(error["field"], "amount");
}

#[actix_web::test]
async fn too_long_text_is_422() {
    let app = spawn_app().await;
    let body = order_with(|o| o["customer_id"] = json!("c".repeat(129)));
    assert_error(
        app.post_json("/v1/orders", &body).await,
        422,
        "field_too_long",
    )
    .await;
}

#[actix_web::test]
async fn unknown_or_malformed_order_ids_are_404() {
    let app = spawn_app().await;
    let unknown = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    assert_error(
        app.get(&format!("/v1/orders/{unknown}")).await,
        404,
        "order_not_found",
    )
    .await;
    assert_error(
        app.get("/v1/orders/not-an-id").await,
        404,
        "order_not_found",
    )
    .await;
    assert_error(
        app.post_empty(&format!("/v1/orders/{unknown}/pay")).await,
        404,
        "order_not_found",
    )
    .await;
}

#[actix_web::test]
async fn an_illegal_transition_is_409_with_the_current_status() {
    let app = spawn_app().await;
    let order = app.place(1).await;
    let id = order["order_id"].as_str().expect("id");
    let error = assert_error(
        app.post_empty(&format!("/v1/orders/{id}/ship")).await,
        409,
        "illegal_transition",
    )
    .await;
    assert_eq!(error["current_status"], "pending_payment");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("pending_payment")),
        "{error}"
    );
}

/// Sends `first` while Redis writes are paused, so it is deterministically still in flight
/// (applied in memory, not yet durable, its gateway call not yet made) when `second` arrives;
/// returns the answer to `second` and the status of `first` once the pause ends.
async fn second_while_first_in_flight(
    app: &crate::app::TestApp,
    first: (String, Value),
    second: (String, Value),
) -> (reqwest::Response, u16) {
    let redis = app.redis.as_ref().expect("redis");
    assert!(redis.command(&["CLIENT", "PAUSE", "1000", "WRITE"]).is_ok());
    let client = app.client.clone();
    let url = app.url(&first.0);
    let first = actix_rt::spawn(async move {
        client
            .post(url)
            .json(&first.1)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = app.post_json(&second.0, &second.1).await;
    let first = first.await.expect("task").expect("answered");
    (answer, first)
}

#[actix_web::test]
async fn a_payment_while_one_is_in_flight_is_409() {
    let app = spawn_redis_app_with(|_| {}).await;
    let order = app.place(1).await;
    let pay = format!("/v1/orders/{}/pay", order["order_id"].as_str().expect("id"));
    let (answer, first) =
        second_while_first_in_flight(&app, (pay.clone(), json!({})), (pay, json!({}))).await;
    assert_error(answer, 409, "payment_in_flight").await;
    assert_eq!(first, 200);
}

#[actix_web::test]
async fn a_refund_while_one_is_in_flight_is_409() {
    let app = spawn_redis_app_with(|_| {}).await;
    let id = app.place_paid(1).await;
    let refund = format!("/v1/orders/{id}/refund");
    let (answer, first) = second_while_first_in_flight(
        &app,
        (refund.clone(), json!({"amount": "5.00"})),
        // Without an amount the handler needs no read of the order first, so the command
        // reaches the order while the first refund is still pending.
        (refund, json!({})),
    )
    .await;
    assert_error(answer, 409, "refund_in_flight").await;
    assert_eq!(first, 200);
}

#[actix_web::test]
async fn a_refund_above_the_paid_amount_is_422() {
    let app = spawn_app().await;
    let id = app.place_paid(1).await;
    let response = app
        .post_json(
            &format!("/v1/orders/{id}/refund"),
            &json!({"amount": "1000.00"}),
        )
        .await;
    assert_error(response, 422, "refund_exceeds_paid").await;
}

#[actix_web::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(|s| {
        s.api.body_bytes_max = 512;
        s.api.bulk_body_bytes_max = 1024;
    })
    .await;
    let body = order_with(|o| o["customer_id"] = json!("c".repeat(600)));
    assert_error(
        app.post_json("/v1/orders", &body).await,
        413,
        "body_too_large",
    )
    .await;
    let bulk = vec![b'\n'; 2048];
    assert_error(
        app.post_raw("/v1/orders/bulk", "application/x-ndjson", bulk)
            .await,
        413,
        "body_too_large",
    )
    .await;
}

#[actix_web::test]
async fn a_wrong_content_type_is_415() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&order_json(1)).expect("JSON");
    assert_error(
        app.post_raw("/v1/orders", "text/plain", body.clone()).await,
        415,
        "unsupported_media_type",
    )
    .await;
    assert_error(
        app.post_raw("/v1/orders/bulk", "application/json", body)
            .await,
        415,
        "unsupported_media_type",
    )
    .await;
}

#[actix_web::test]
async fn a_bad_idempotency_key_is_400() {
    let app = spawn_app().await;
    let long = "k".repeat(300);
    let response = app
        .post_json_keyed("/v1/orders", &long, &order_json(1))
        .await;
    assert_error(response, 400, "invalid_idempotency_key").await;
}

#[actix_web::test]
async fn unknown_routes_answer_json_404() {
    let app = spawn_app().await;
    assert_error(app.get("/v2/nothing").await, 404, "not_found").await;
    assert_error(app.get("/v1/orders/abc/teleport").await, 404, "not_found").await;
}

#[actix_web::test]
async fn a_known_path_with_another_method_is_405_with_allow() {
    let app = spawn_app().await;
    let id = app.place(1).await["order_id"]
        .as_str()
        .expect("order_id")
        .to_string();
    let client = reqwest::Client::new();
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/orders".to_string(), "POST"),
        (reqwest::Method::DELETE, format!("/v1/orders/{id}"), "GET"),
        (reqwest::Method::PUT, format!("/v1/orders/{id}/pay"), "POST"),
        (
            reqwest::Method::DELETE,
            "/v1/orders/bulk".to_string(),
            "POST",
        ),
        (reqwest::Method::POST, "/healthz".to_string(), "GET"),
        (reqwest::Method::PATCH, "/openapi.json".to_string(), "GET"),
    ] {
        let response = client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("answered");
        assert_eq!(
            response
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        assert_error(response, 405, "method_not_allowed").await;
    }
}

#[actix_web::test]
async fn an_array_where_an_object_is_expected_is_invalid_field() {
    let app = spawn_app().await;
    // Serde would read a struct's fields in sequence form; the API takes objects only.
    for body in [
        json!([]),
        json!(["c-1", "USD", "card", [["sku-1", 1, "1.00"]], {}]),
        order_with(|o| o["items"] = json!([["sku-1", 1, "1.00"]])),
    ] {
        assert_error(
            app.post_json("/v1/orders", &body).await,
            400,
            "invalid_field",
        )
        .await;
    }
    let id = app.place(2).await["order_id"]
        .as_str()
        .expect("order_id")
        .to_string();
    let response = app
        .post_json(&format!("/v1/orders/{id}/ship"), &json!(["T-1"]))
        .await;
    assert_error(response, 400, "invalid_field").await;
}

#[actix_web::test]
async fn control_characters_in_text_fields_are_422_invalid_text() {
    let app = spawn_app().await;
    for (body, field) in [
        (
            order_with(|o| o["customer_id"] = json!("c\u{0}1")),
            "customer_id",
        ),
        (
            order_with(|o| o["items"][0]["sku"] = json!("sku\n1")),
            "items[0].sku",
        ),
        (
            order_with(|o| o["metadata"] = json!({"note": "a\u{1b}[31m"})),
            "metadata",
        ),
    ] {
        let error = assert_error(
            app.post_json("/v1/orders", &body).await,
            422,
            "invalid_text",
        )
        .await;
        assert_eq!(error["field"], field);
    }
    let id = app.place(3).await["order_id"]
        .as_str()
        .expect("order_id")
        .to_string();
    app.post_json(&format!("/v1/orders/{id}/pay"), &json!({}))
        .await;
    let response = app
        .post_json(
            &format!("/v1/orders/{id}/ship"),
            &json!({"tracking_number": "T\u{0}1"}),
        )
        .await;
    let error = assert_error(response, 422, "invalid_text").await;
    assert_eq!(error["field"], "tracking_number");
}

#[actix_web::test]
async fn overload_is_429_with_retry_after() {
    // One command in flight per order and Redis writes paused: the placement stays in flight,
    // so a second request for the same order is refused as overload at once.
    let app = spawn_redis_app_with(|s| s.engine.order_commands_in_flight_max = 1).await;
    let redis = app.redis.as_ref().expect("redis");
    let key = "overload-1";
    let order_id = orderly::domain::OrderId::from_idempotency_key("default", key).to_string();
    assert!(redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).is_ok());
    let client = app.client.clone();
    let url = app.url("/v1/orders");
    let first = actix_rt::spawn(async move {
        client
            .post(url)
            .header("Idempotency-Key", key)
            .json(&order_json(1))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = app.get(&format!("/v1/orders/{order_id}")).await;
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_error(response, 429, "overloaded").await;
    let first = first.await.expect("task").expect("answered");
    assert_eq!(first, 201, "the paused placement completes afterwards");
}

#[actix_web::test]
async fn store_unavailable_is_503_with_retry_after() {
    let mut app = spawn_redis_app_with(|s| s.store.redis.command_timeout_ms = 500).await;
    app.redis.as_mut().expect("redis").kill9();
    let response = app.post_json("/v1/orders", &order_json(1)).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "store_unavailable").await;
    assert_error(app.get("/readyz").await, 503, "store_unavailable").await;
}

#[actix_web::test]
async fn no_durable_answer_in_time_is_503_request_timeout() {
    let app = spawn_redis_app_with(|s| s.api.request_timeout_ms = 200).await;
    let redis = app.redis.as_ref().expect("redis");
    assert!(redis.command(&["CLIENT", "PAUSE", "1000", "WRITE"]).is_ok());
    let response = app.post_json("/v1/orders", &order_json(1)).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "request_timeout").await;
}
