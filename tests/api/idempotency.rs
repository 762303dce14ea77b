//! `Idempotency-Key` makes retries safe: a replay answers 200 with `Idempotent-Replayed: true`
//! and the original order (also long after, when the order no longer remembers the command
//! id), a different body under the same key is 422, a concurrent duplicate is 409, and a
//! retried lifecycle command is a no-op.

use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{assert_error, order_json, spawn_app, spawn_redis_app_with};

fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        == Some("true")
}

#[actix_web::test]
async fn a_replay_answers_the_original_order() {
    let app = spawn_app().await;
    let first = app
        .post_json_keyed("/v1/orders", "key-1", &order_json(7))
        .await;
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    let first: Value = first.json().await.expect("JSON");
    // The same order with its fields in another order and other whitespace is the same body.
    let same = r#"{ "items": [{"unit_price":"19.99","quantity":2,"sku":"sku-1"}],
        "payment_method":"card", "currency":"USD", "customer_id":"c-7" }"#;
    let again = app
        .client
        .post(app.url("/v1/orders"))
        .header("Idempotency-Key", "key-1")
        .header("Content-Type", "application/json")
        .body(same)
        .send()
        .await
        .expect("answered");
    assert_eq!(again.status(), 200);
    assert!(replayed(&again));
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["version"], first["version"]);
}

#[actix_web::test]
async fn a_different_body_under_the_same_key_is_422() {
    let app = spawn_app().await;
    let first = app
        .post_json_keyed("/v1/orders", "key-2", &order_json(1))
        .await;
    assert_eq!(first.status(), 201);
    let response = app
        .post_json_keyed("/v1/orders", "key-2", &order_json(2))
        .await;
    assert_error(response, 422, "idempotency_key_reused").await;
}

#[actix_web::test]
async fn a_replay_is_recognized_after_the_order_forgot_the_command_id() {
    let app = spawn_app().await;
    let first = app
        .post_json_keyed("/v1/orders", "key-3", &order_json(3))
        .await;
    assert_eq!(first.status(), 201);
    let order: Value = first.json().await.expect("JSON");
    let id = order["order_id"].as_str().expect("id");
    // pay (two commands: the attempt and the gateway's verdict), ship and deliver push the
    // placement out of the order's ring of four recent command ids.
    for step in ["pay", "ship", "deliver"] {
        let response = app.post_empty(&format!("/v1/orders/{id}/{step}")).await;
        assert_eq!(response.status(), 200, "{step}");
    }
    let again = app
        .post_json_keyed("/v1/orders", "key-3", &order_json(3))
        .await;
    assert_eq!(again.status(), 200);
    assert!(replayed(&again));
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["order_id"], id);
    assert_eq!(again["status"], "completed");
    let other = app
        .post_json_keyed("/v1/orders", "key-3", &order_json(4))
        .await;
    assert_error(other, 422, "idempotency_key_reused").await;
}

#[actix_web::test]
async fn a_concurrent_duplicate_is_409() {
    // Redis writes are paused, so the first request is deterministically still in flight
    // when the duplicate arrives.
    let app = spawn_redis_app_with(|_| {}).await;
    let redis = app.redis.as_ref().expect("redis");
    assert!(redis.command(&["CLIENT", "PAUSE", "1000", "WRITE"]).is_ok());
    let client = app.client.clone();
    let url = app.url("/v1/orders");
    let first = actix_rt::spawn(async move {
        let response = client
            .post(url)
            .header("Idempotency-Key", "key-4")
            .json(&order_json(4))
            .send()
            .await
            .expect("answered");
        (
            response.status().as_u16(),
            response.json::<Value>().await.expect("JSON"),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let duplicate = app
        .post_json_keyed("/v1/orders", "key-4", &order_json(4))
        .await;
    assert_error(duplicate, 409, "idempotency_key_in_flight").await;
    let (status, order) = first.await.expect("task");
    assert_eq!(status, 201);
    let later = app
        .post_json_keyed("/v1/orders", "key-4", &order_json(4))
        .await;
    assert_eq!(later.status(), 200);
    assert!(replayed(&later));
    let later: Value = later.json().await.expect("JSON");
    assert_eq!(later["order_id"], order["order_id"]);
}

#[actix_web::test]
async fn a_retried_command_is_a_no_op() {
    let app = spawn_app().await;
    let id = app.place_paid(5).await;
    let ship = format!("/v1/orders/{id}/ship");
    let body = json!({"tracking_number": "TRACK-1"});
    let first = app.post_json_keyed(&ship, "ship-1", &body).await;
    assert_eq!(first.status(), 200);
    assert!(!replayed(&first));
    let first: Value = first.json().await.expect("JSON");
    assert_eq!(first["status"], "shipped");
    assert_eq!(first["tracking_number"], "TRACK-1");
    let again = app.post_json_keyed(&ship, "ship-1", &body).await;
    assert_eq!(again.status(), 200);
    assert!(replayed(&again));
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(
        again["version"], first["version"],
        "nothing was applied twice"
    );
    // The same key on another verb is not mistaken for the earlier command.
    let deliver = app
        .post_json_keyed(&format!("/v1/orders/{id}/deliver"), "ship-1", &json!({}))
        .await;
    assert_eq!(deliver.status(), 200);
    assert!(!replayed(&deliver));
}
