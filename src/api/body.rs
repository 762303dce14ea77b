//! Reading and parsing JSON request bodies with stable error codes.
//!
//! The body is read by hand (not with `web::Json`) so that every failure maps to one
//! [`ApiError`]: a size over the limit is `body_too_large` (refused from `Content-Length` before
//! a byte is read), a wrong type `unsupported_media_type`, broken JSON `malformed_json`, and a
//! JSON document of the wrong shape `unknown_field` / `missing_field` / `invalid_field` with the
//! path of the offending field (via `serde_path_to_error`).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use super::error::ApiError;
use super::ApiState;
use crate::domain::order::Object;

/// Whether the request's `Content-Type` is `application/json` or an `application/*+json` type.
pub(crate) fn is_json_content(req: &HttpRequest) -> bool {
    content_type(req).is_some_and(|mime| {
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
    })
}

/// The media type of the request without parameters, lower-cased.
pub(crate) fn content_type(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = value.split(';').next()?.trim().to_ascii_lowercase();
    (!mime.is_empty()).then_some(mime)
}

/// The declared `Content-Length`, if present and numeric.
pub(crate) fn content_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_limited(
    req: &HttpRequest,
    mut payload: Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let too_large = ApiError::BodyTooLarge {
        limit: limit as u64,
    };
    if content_length(req).is_some_and(|n| n > limit as u64) {
        return Err(too_large);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyUnreadable(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses `bytes` as `T`, which must be a JSON object (an array is `invalid_field`, never read
/// as a struct in sequence form), classifying failures into stable codes.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let Object(value): Object<T> =
        serde_path_to_error::deserialize(&mut deserializer).map_err(shape_error)?;
    // Trailing data after the document ("{}{}", "{} x") is a syntax error, not a second order.
    deserializer
        .end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// The field named in a serde message such as ``unknown field `colour`, expected …``.
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "." {
        name.to_string()
    } else if parent.ends_with(&format!(".{name}")) || parent == name {
        parent.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn shape_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    match inner.classify() {
        Category::Io | Category::Syntax | Category::Eof => {
            ApiError::MalformedJson(inner.to_string())
        }
        Category::Data => {
            let message = inner.to_string();
            let (code, field) = if message.starts_with("unknown field") {
                let name = quoted_name(&message).unwrap_or_default();
                ("unknown_field", join_path(&path, name))
            } else if message.starts_with("missing field") {
                let name = quoted_name(&message).unwrap_or_default();
                ("missing_field", join_path(&path, name))
            } else {
                ("invalid_field", path)
            };
            let field = (!field.is_empty() && field != ".").then_some(field);
            ApiError::Shape {
                code,
                field,
                message,
            }
        }
    }
}

/// A required JSON body of type `T` (`Content-Type: application/json`).
pub(crate) struct JsonBody<T>(pub(crate) T);

/// An optional JSON body: an empty body gives `T::default()` and needs no `Content-Type`; a
/// JSON `null` gives `T::default()` too.
pub(crate) struct OptionalJsonBody<T>(pub(crate) T);

fn body_limit(req: &HttpRequest) -> usize {
    req.app_data::<web::Data<ApiState>>()
        .map_or(64 * 1024, |state| state.settings.body_bytes_max)
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            if !is_json_content(&req) {
                return Err(ApiError::UnsupportedMediaType {
                    expected: "application/json",
                });
            }
            let body = read_limited(&req, payload, body_limit(&req)).await?;
            parse_json(&body).map(JsonBody)
        })
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let body = read_limited(&req, payload, body_limit(&req)).await?;
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(OptionalJsonBody(T::default()));
            }
            if !is_json_content(&req) {
                return Err(ApiError::UnsupportedMediaType {
                    expected: "application/json",
                });
            }
            // The document declares these bodies optional and nullable: `null` is no body.
            if body.trim_ascii() == b"null" {
                return Ok(OptionalJsonBody(T::default()));
            }
            parse_json(&body).map(OptionalJsonBody)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewOrderRequest;

    fn code_and_field(text: &str) -> (&'static str, Option<String>) {
        let error =
            parse_json::<NewOrderRequest>(text.as_bytes()).expect_err("the body is invalid");
        (error.code(), error.field())
    }

    #[test]
    fn arrays_are_not_objects() {
        // The derived struct would read its fields in sequence form; the API takes objects.
        let (code, field) = code_and_field("[]");
        assert_eq!((code, field), ("invalid_field", None));
        let (code, _) = code_and_field(r#"["c","USD","card",[["a",1,"1"]],{}]"#);
        assert_eq!(code, "invalid_field");
        let (code, field) = code_and_field(
            r#"{"customer_id":"c","currency":"USD","payment_method":"card","items":[["a",1,"1"]]}"#,
        );
        assert_eq!(code, "invalid_field");
        assert_eq!(field.as_deref(), Some("items[0]"));
        let ok = parse_json::<NewOrderRequest>(
            br#"{"customer_id":"c","currency":"USD","payment_method":"card","items":[{"sku":"a","quantity":1,"unit_price":"1"}]}"#,
        )
        .expect("an object is read");
        assert_eq!(ok.items.len(), 1);
    }

    #[test]
    fn shape_errors_name_the_field() {
        let (code, field) = code_and_field(
            r#"{"customer_id":"c","currency":"USD","payment_method":"card","items":[{"sku":"a","quantity":1,"unit_price":"1","colour":"red"}]}"#,
        );
        assert_eq!(code, "unknown_field");
        assert_eq!(field.as_deref(), Some("items[0].colour"));
        let (code, field) =
            code_and_field(r#"{"customer_id":"c","payment_method":"card","items":[]}"#);
        assert_eq!(code, "missing_field");
        assert_eq!(field.as_deref(), Some("currency"));
        let (code, field) = code_and_field(
            r#"{"customer_id":"c","currency":"USD","payment_method":"card","items":[{"sku":"a","quantity":"x","unit_price":"1"}]}"#,
        );
        assert_eq!(code, "invalid_field");
        assert_eq!(field.as_deref(), Some("items[0].quantity"));
        assert_eq!(code_and_field("{").0, "malformed_json");
        let trailing =
            r#"{"customer_id":"c","currency":"USD","payment_method":"card","items":[]} x"#;
        assert_eq!(code_and_field(trailing).0, "malformed_json");
        assert_eq!(code_and_field("").0, "malformed_json");
    }
}
