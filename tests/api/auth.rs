//! Bearer keys guard the API when configured; health stays open when `public_health` is on;
//! without keys the server refuses to listen beyond loopback.

use orderly::api::{Application, StartError};
use orderly::engine::Engine;

use crate::app::{assert_error, order_json, spawn_app_with, test_settings};

#[actix_web::test]
async fn writes_need_a_valid_key_and_health_stays_open() {
    let app = spawn_app_with(|s| s.api.keys = vec!["secret-1".into(), "secret-2".into()]).await;
    let body = order_json(1);
    let missing = app.post_json("/v1/orders", &body).await;
    assert_eq!(
        missing
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_error(missing, 401, "unauthorized").await;
    let wrong = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth("secret-3")
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_error(wrong, 401, "unauthorized").await;
    let bulk = app
        .post_raw("/v1/orders/bulk", "application/x-ndjson", b"{}\n".to_vec())
        .await;
    assert_error(bulk, 401, "unauthorized").await;
    let good = app
        .client
        .post(app.url("/v1/orders"))
        .bearer_auth("secret-2")
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(good.status(), 201);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(app.get(path).await.status(), 200, "{path}");
    }
}

#[actix_web::test]
async fn health_needs_a_key_when_not_public() {
    let app = spawn_app_with(|s| {
        s.api.keys = vec!["secret".into()];
        s.api.public_health = false;
    })
    .await;
    assert_error(app.get("/healthz").await, 401, "unauthorized").await;
    let with_key = app
        .client
        .get(app.url("/healthz"))
        .bearer_auth("secret")
        .send()
        .await
        .expect("answered");
    assert_eq!(with_key.status(), 200);
}

#[actix_web::test]
async fn no_keys_means_loopback_only() {
    let mut settings = test_settings();
    let store = orderly::store::open(&settings).await.expect("store");
    let engine = Engine::start(&settings, store);
    settings.api.listen = "0.0.0.0:0".into();
    let refused = Application::build(&settings.api, engine.clone());
    assert!(
        matches!(refused, Err(StartError::InsecureListen(_))),
        "{:?}",
        refused.err()
    );
    settings.api.keys = vec!["secret".into()];
    let allowed = Application::build(&settings.api, engine.clone());
    assert!(allowed.is_ok(), "{:?}", allowed.err());
    drop(allowed);
    engine.stop();
}
