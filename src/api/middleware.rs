//! The middleware every request passes: access control, the common error shape for framework
//! errors, and the HTTP metrics (requests by route pattern and status class, latency).

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use tracing::Instrument;

use super::error::{normalize_error_response, ApiError};
use super::ApiState;
use crate::telemetry;

/// Route label for paths that match no endpoint (one label, so scanners cannot inflate the
/// metric's cardinality).
const UNMATCHED_ROUTE: &str = "unmatched";

/// Checks the bearer token, runs the request, rewrites framework errors into the common JSON
/// shape and records the request's metrics.
pub(crate) async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    // The pattern comes from the app's resource map, so it is known before routing and the
    // label stays bounded (`/v1/orders/{id}`, never a concrete id).
    let route = req
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_string());
    let allowed = req
        .app_data::<web::Data<ApiState>>()
        .is_none_or(|state| state.keys.allows(&req));
    let span = tracing::debug_span!("http_request", method = %req.method(), route = %route);
    let response = if allowed {
        match next.call(req).instrument(span).await {
            Ok(response) => normalize_error_response(response),
            Err(error) => {
                // Inner services turn handler errors into responses, so this is rare; the
                // request is gone here, so answer through an error that renders the same shape.
                let status = error.as_response_error().status_code();
                telemetry::record_http_request(
                    route,
                    status.as_u16(),
                    started.elapsed().as_secs_f64(),
                );
                return Err(ApiError::Http {
                    status,
                    message: error.to_string(),
                }
                .into());
            }
        }
    } else {
        req.into_response(ApiError::Unauthorized.error_response())
    };
    telemetry::record_http_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(response)
}
