//! Operational endpoints: liveness, readiness, the Prometheus exposition and the live dashboard.

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{get, web, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::ApiState;
use crate::telemetry;

/// How long a readiness probe waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The dashboard page: one self-contained HTML file (SVG charts, no external resources) that
/// polls `/v1/stats` once a second.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The process's Prometheus handle. A process has one global metrics recorder, so the first
/// caller installs it and every later app (tests start many) shares the same handle; None when
/// some other recorder was installed first.
pub fn prometheus_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match telemetry::install_prometheus() {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(%error, "Prometheus recorder not installed; /metrics is disabled");
                None
            }
        })
        .clone()
}

/// The answer of `/healthz` and `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` or `ready`.
    status: &'static str,
    /// The store kind (`memory`, `redis`).
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'static str>,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Alive", body = Health)))]
#[get("/healthz")]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        store: None,
    })
}

/// Readiness: the store answers a ping.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "Ready", body = Health),
    (status = 503, description = "The store does not answer", body = ErrorBody),
))]
#[get("/readyz")]
pub(crate) async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let store = state.engine.store();
    match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(HttpResponse::Ok().json(Health {
            status: "ready",
            store: Some(store.kind()),
        })),
        Ok(Err(error)) => Err(ApiError::NotReady(error.to_string())),
        Err(_) => Err(ApiError::NotReady(format!(
            "no answer within {} ms",
            READY_TIMEOUT.as_millis()
        ))),
    }
}

/// Prometheus text exposition of every `orderly_` metric.
#[utoipa::path(tag = "operations", responses(
    (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
    (status = 503, description = "No recorder in this process", body = ErrorBody),
))]
#[get("/metrics")]
pub(crate) async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let handle = state.metrics.as_ref().ok_or(ApiError::MetricsUnavailable)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/plain; version=0.0.4"))
        .body(telemetry::render(handle)))
}

/// The live dashboard (polls `/v1/stats` every second).
#[get("/")]
pub(crate) async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .body(DASHBOARD_HTML)
}
