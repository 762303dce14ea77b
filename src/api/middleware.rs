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

/// The pattern of the route `path` belongs to, or [`UNMATCHED_ROUTE`]. Written out rather than
/// asked of the app's resource map, which matches the path against every route's regex again
/// (2.5% of the server's CPU under a lifecycle load); `every_documented_route_has_its_label`
/// keeps the two in step.
pub(crate) fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/v1/stats" => "/v1/stats",
        "/v1/orders" => "/v1/orders",
        "/v1/orders/bulk" => "/v1/orders/bulk",
        _ => {
            let Some(rest) = path.strip_prefix("/v1/orders/") else {
                return UNMATCHED_ROUTE;
            };
            let mut parts = rest.split('/');
            let id = parts.next().unwrap_or_default();
            if id.is_empty() {
                return UNMATCHED_ROUTE;
            }
            match (parts.next(), parts.next()) {
                (None, _) => "/v1/orders/{id}",
                (Some(verb), None) => match verb {
                    "pay" => "/v1/orders/{id}/pay",
                    "ship" => "/v1/orders/{id}/ship",
                    "deliver" => "/v1/orders/{id}/deliver",
                    "cancel" => "/v1/orders/{id}/cancel",
                    "refund" => "/v1/orders/{id}/refund",
                    _ => UNMATCHED_ROUTE,
                },
                _ => UNMATCHED_ROUTE,
            }
        }
    }
}

/// The methods the route with label `route` answers (its `Allow` header), or `None` for a path
/// that matches no route. `every_documented_route_has_its_methods` keeps it in step with the
/// OpenAPI document.
pub(crate) fn allowed_methods(route: &str) -> Option<&'static str> {
    match route {
        "/" | "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/v1/stats"
        | "/v1/orders/{id}" => Some("GET"),
        "/v1/orders"
        | "/v1/orders/bulk"
        | "/v1/orders/{id}/pay"
        | "/v1/orders/{id}/ship"
        | "/v1/orders/{id}/deliver"
        | "/v1/orders/{id}/cancel"
        | "/v1/orders/{id}/refund" => Some("POST"),
        _ => None,
    }
}

/// Checks the bearer token, runs the request, rewrites framework errors into the common JSON
/// shape and records the request's metrics.
pub(crate) async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    // The route's pattern (`/v1/orders/{id}`, never a concrete id), so the label stays bounded.
    let route = route_label(req.path());
    let allowed = req
        .app_data::<web::Data<ApiState>>()
        .is_none_or(|state| state.keys.allows(&req));
    let span = tracing::debug_span!("http_request", method = %req.method(), route = %route);
    let response = if allowed {
        match next.call(req).instrument(span.clone()).await {
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
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    telemetry::record_http_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_route_has_its_label() {
        let paths = super::super::openapi::documented_paths();
        assert!(paths.len() >= 10, "{paths:?}");
        for pattern in paths {
            let sample = pattern.replace("{id}", "0190b6c2-4a5e-7c1d-9f00-123456789abc");
            assert_eq!(route_label(&sample), pattern, "{sample}");
        }
        assert_eq!(route_label("/"), "/");
    }

    #[test]
    fn every_documented_route_has_its_methods() {
        let document: serde_json::Value =
            serde_json::from_str(super::super::openapi::document()).expect("the document");
        let paths = document["paths"].as_object().expect("paths");
        for (pattern, operations) in paths {
            let mut methods: Vec<String> = operations
                .as_object()
                .expect("operations")
                .keys()
                .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            methods.sort();
            assert_eq!(
                allowed_methods(pattern),
                Some(methods.join(", ").as_str()),
                "{pattern}"
            );
        }
        assert_eq!(allowed_methods(UNMATCHED_ROUTE), None);
    }

    #[test]
    fn other_paths_share_one_label() {
        for path in [
            "/nope",
            "/v1/orders/",
            "/v1/orders//pay",
            "/v1/orders/abc/pay/extra",
            "/v1/orders/abc/teleport",
            "/v1/orders/abc/",
            "/healthz/",
            "/v1",
        ] {
            assert_eq!(route_label(path), UNMATCHED_ROUTE, "{path}");
        }
    }
}
