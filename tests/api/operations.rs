//! Health, readiness, Prometheus metrics, the OpenAPI document and the dashboard.

use serde_json::Value;

use crate::app::{order_json, spawn_app};

#[actix_web::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.expect("JSON");
    assert_eq!(ready["store"], "memory");
}

#[actix_web::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.place(1).await;
    let _ = app.get("/v1/orders/not-an-id").await;
    let _ = app
        .post_raw(
            "/v1/orders/bulk",
            "application/x-ndjson",
            format!("{}\n{{\n", order_json(2)).into_bytes(),
        )
        .await
        .text()
        .await;
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.expect("text");
    for expected in [
        r#"orderly_http_requests_total{route="/v1/orders",status="2xx"}"#,
        r#"orderly_http_requests_total{route="/v1/orders/{id}",status="4xx"}"#,
        r#"orderly_bulk_lines_total{status="accepted"}"#,
        r#"orderly_bulk_lines_total{status="rejected"}"#,
        "orderly_http_request_duration_seconds_bucket",
        "orderly_commands_total",
        // The app's engine acquired its shard leases at start.
        "orderly_shards_owned",
        "orderly_shard_lease_events_total{event=\"acquired\"}",
        // Timer series exist before the first timer fires.
        "orderly_timers_fired_total",
        "orderly_timers_armed",
        "orderly_timers_throttled_total",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}

#[actix_web::test]
async fn the_openapi_document_lists_the_real_routes() {
    let app = spawn_app().await;
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/orders",
        "/v1/orders/bulk",
        "/v1/orders/{id}",
        "/v1/orders/{id}/pay",
        "/v1/orders/{id}/ship",
        "/v1/orders/{id}/deliver",
        "/v1/orders/{id}/cancel",
        "/v1/orders/{id}/refund",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "missing {path}");
    }
    assert!(doc["components"]["schemas"]["OrderView"].is_object());
    assert!(
        doc["components"]["schemas"]["TimerView"].is_object(),
        "an order's armed timers are documented"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[actix_web::test]
async fn the_dashboard_is_html() {
    let app = spawn_app().await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert!(page
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html")));
    let html = page.text().await.expect("text");
    assert!(
        html.contains("fetch('/v1/stats'"),
        "the dashboard polls /v1/stats"
    );
    for stat in [
        "orders_per_s",
        "commands_per_s",
        "command_p99_ms",
        "success_rate",
        "live_actors",
        "rss_bytes",
        "timer_lag_p99_ms",
        "webhook_backlog",
    ] {
        assert!(
            html.contains(&format!("data-stat=\"{stat}\"")),
            "the dashboard shows {stat}"
        );
    }
    // Self-contained: nothing is fetched from anywhere else.
    for external in [
        "http://",
        "https://",
        "<script src",
        "<link rel=\"stylesheet\"",
    ] {
        assert!(
            !html.contains(external),
            "the dashboard refers to {external}"
        );
    }
}
