//! The OpenAPI document, generated from the route handlers' `#[utoipa::path]` attributes, so
//! it describes the endpoints that are actually mounted.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{get, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{bulk, health, orders, stats};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orderly",
        description = "Actor-based order engine. Amounts are decimal strings; errors are \
            {\"error\":{\"code\":\"…\",\"message\":\"…\",\"field\":\"…\"}} with stable codes."
    ),
    paths(
        orders::place_order,
        bulk::bulk_place,
        orders::get_order,
        orders::pay_order,
        orders::ship_order,
        orders::deliver_order,
        orders::cancel_order,
        orders::refund_order,
        health::healthz,
        health::readyz,
        health::metrics,
        stats::get_stats,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "orders", description = "Placing orders and driving their lifecycle"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the write endpoints refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The documented paths (`/v1/orders/{id}/pay`, ...), for the tests of the route labels.
#[cfg(test)]
pub(crate) fn documented_paths() -> Vec<String> {
    ApiDoc::openapi().paths.paths.keys().cloned().collect()
}

/// The document as JSON, rendered once per process.
pub(crate) fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    })
}

/// The OpenAPI 3.1 description of this API.
#[get("/openapi.json")]
pub(crate) async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(document())
}
