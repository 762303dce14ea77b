//! `spawn_app()`: the application under test, started through the library's composition root
//! (`orderly::app::Orderly`) exactly as `orderly serve` starts it, plus small request helpers.

use std::time::Duration;

use actix_web::dev::ServerHandle;
use orderly::app::Orderly;
use orderly::config::Settings;
use orderly::engine::Engine;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::support::redis_server::{RedisOptions, RedisServer};

/// Longest wait for one HTTP exchange in these tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A running app and a client for it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// A client without proxies and with a bounded timeout.
    pub client: reqwest::Client,
    /// The engine behind the app.
    pub engine: Engine,
    /// The Redis server of a Redis-backed app.
    pub redis: Option<RedisServer>,
    /// Stops the HTTP server.
    pub server: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sending the stop command is eager; waiting for it is not needed at the end of a test.
        drop(self.server.stop(false));
        self.engine.stop();
    }
}

/// Embedded defaults sized for a 2-core machine, listening on a free loopback port.
pub fn test_settings() -> Settings {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.engine.shards = 8;
    settings.engine.arbiters = 1;
    settings.api.listen = "127.0.0.1:0".into();
    settings.api.workers = 1;
    settings.store.redis.connections = 2;
    settings.store.redis.connect_timeout_ms = 1000;
    settings
}

/// An app on the memory store with the test defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// An app on the memory store, with settings adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = test_settings();
    configure(&mut settings);
    start(settings, None).await
}

/// An app on a fresh `redis-server` (AOF, `appendfsync everysec`).
pub async fn spawn_redis_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let redis = RedisServer::start_with(RedisOptions {
        appendfsync: "everysec",
        ..RedisOptions::default()
    });
    let mut settings = test_settings();
    settings.store.url = redis.url();
    configure(&mut settings);
    start(settings, Some(redis)).await
}

async fn start(settings: Settings, redis: Option<RedisServer>) -> TestApp {
    // The recorder is process-wide: install it before the engine's first metrics (its lease
    // acquisitions), as `serve` does, so a test run alone sees them too.
    let _ = orderly::api::prometheus_handle();
    let orderly = tokio::time::timeout(REQUEST_TIMEOUT, Orderly::start(settings))
        .await
        .expect("store opens in time")
        .expect("store opens");
    let engine = orderly.engine.clone();
    let app = orderly.http().expect("app builds");
    let address = format!("http://{}", app.address());
    let server = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client builds");
    TestApp {
        address,
        client,
        engine,
        redis,
        server,
    }
}

/// A valid order; `n` varies the customer and the quantity.
pub fn order_json(n: u64) -> Value {
    json!({
        "customer_id": format!("c-{n}"),
        "currency": "USD",
        "payment_method": "card",
        "items": [{"sku": "sku-1", "quantity": n % 3 + 1, "unit_price": "19.99"}],
        "metadata": {}
    })
}

impl TestApp {
    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// POSTs `body` as JSON.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request is answered")
    }

    /// POSTs `body` as JSON with an `Idempotency-Key`.
    pub async fn post_json_keyed(&self, path: &str, key: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await
            .expect("request is answered")
    }

    /// POSTs raw bytes with a content type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Response {
        self.client
            .post(self.url(path))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("request is answered")
    }

    /// POSTs with no body at all.
    pub async fn post_empty(&self, path: &str) -> Response {
        self.client
            .post(self.url(path))
            .send()
            .await
            .expect("request is answered")
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request is answered")
    }

    /// Places a valid order and returns its JSON view.
    pub async fn place(&self, n: u64) -> Value {
        let response = self.post_json("/v1/orders", &order_json(n)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.expect("order JSON")
    }

    /// Places and pays an order; returns its id.
    pub async fn place_paid(&self, n: u64) -> String {
        let order = self.place(n).await;
        let id = order["order_id"].as_str().expect("id").to_string();
        let paid = self.post_empty(&format!("/v1/orders/{id}/pay")).await;
        assert_eq!(paid.status(), StatusCode::OK);
        let paid: Value = paid.json().await.expect("order JSON");
        assert_eq!(paid["status"], "paid");
        id
    }
}

/// Asserts an error answer: its status, the common shape and its code; returns the error object.
pub async fn assert_error(response: Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "status for {code}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?} for {code}: {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("error body is JSON");
    let error = body["error"].clone();
    assert_eq!(error["code"], code, "{text}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    error
}
