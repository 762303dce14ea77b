//! The one place where failures become HTTP answers: every error the edge can produce is an
//! [`ApiError`], rendered as `{"error":{"code":"…","message":"…","field":"…"}}` with a stable
//! code and a fixed status per code. Framework errors (unknown routes, unreadable bodies) are
//! rewritten into the same shape by [`normalize_error_response`], so a client never sees a
//! plain-text or HTML error.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{OrderStatus, Rejection, ValidationError};
use crate::engine::EngineError;

/// Seconds a client should wait before retrying a retryable failure (overload, store outage).
const RETRY_AFTER_SECONDS: &str = "1";

/// Everything the HTTP edge can answer instead of a success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (syntax error, truncated, not UTF-8).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The JSON is well-formed but does not have the expected shape (`unknown_field`,
    /// `missing_field`, `invalid_field`).
    #[error("{message}")]
    Shape {
        /// Stable code.
        code: &'static str,
        /// Path of the offending field, e.g. `items[0].colour`.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A field failed domain validation.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// The engine did not acknowledge the command.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The path names no order (unknown or not a valid id).
    #[error("order `{0}` not found")]
    OrderNotFound(String),
    /// An `Idempotency-Key` was reused with a different request body.
    #[error("this Idempotency-Key was used with a different request body")]
    IdempotencyKeyReused,
    /// A request with the same `Idempotency-Key` is still being processed.
    #[error("a request with this Idempotency-Key is still in flight; retry later")]
    IdempotencyKeyInFlight,
    /// The `Idempotency-Key` header is empty, too long or not visible ASCII.
    #[error("Idempotency-Key must be 1..={max} visible ASCII characters")]
    InvalidIdempotencyKey {
        /// Longest accepted key, in bytes.
        max: usize,
    },
    /// The body is larger than the configured limit.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The body has the wrong content type.
    #[error("Content-Type must be {expected}")]
    UnsupportedMediaType {
        /// The accepted type.
        expected: &'static str,
    },
    /// The body could not be read from the connection.
    #[error("could not read the request body: {0}")]
    BodyUnreadable(String),
    /// A write endpoint was called without a valid bearer token.
    #[error("a valid bearer token is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// No route matches the path.
    #[error("no such endpoint")]
    RouteNotFound,
    /// The path is a route, but not for this method.
    #[error("method not allowed here; this path answers {allow}")]
    MethodNotAllowed {
        /// The methods the path answers (the `Allow` header).
        allow: &'static str,
    },
    /// The durable answer did not arrive within `request_timeout_ms`; the outcome is unknown.
    #[error("no durable answer within {0} ms; retry with the same Idempotency-Key")]
    Timeout(u64),
    /// The store does not answer (readiness).
    #[error("store unavailable: {0}")]
    NotReady(String),
    /// No Prometheus recorder could be installed in this process.
    #[error("metrics are not available in this process")]
    MetricsUnavailable,
    /// Any other framework error, rewritten into the common shape.
    #[error("{message}")]
    Http {
        /// The status the framework chose.
        status: StatusCode,
        /// Its text.
        message: String,
    },
}

/// The JSON error object.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (see the README's API error table).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// The offending input field, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The order's state, for `illegal_transition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_status: Option<&'static str>,
}

/// The body of every error answer: `{"error":{…}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

fn validation_status(code: &str) -> StatusCode {
    // A missing value is a malformed request whether serde or the domain noticed it; every
    // other validation failure is well-formed input the domain refuses.
    if code == "missing_field" {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

fn rejection_status(rejection: &Rejection) -> StatusCode {
    match rejection {
        Rejection::Invalid(v) => validation_status(v.code),
        Rejection::OrderNotFound(_) => StatusCode::NOT_FOUND,
        Rejection::OrderAlreadyExists(_)
        | Rejection::IllegalTransition { .. }
        | Rejection::PaymentInFlight(_)
        | Rejection::RefundInFlight(_)
        | Rejection::StaleResult(_)
        | Rejection::TimerNotDue => StatusCode::CONFLICT,
        Rejection::RefundExceedsPaid | Rejection::AmountOutOfRange => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    }
}

fn http_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_client_error() => "bad_request",
        _ => "internal_error",
    }
}

impl ApiError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Shape { code, .. } => code,
            ApiError::Validation(v) => v.code,
            ApiError::Engine(e) => e.code(),
            ApiError::OrderNotFound(_) => "order_not_found",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::IdempotencyKeyInFlight => "idempotency_key_in_flight",
            ApiError::InvalidIdempotencyKey { .. } => "invalid_idempotency_key",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::BodyUnreadable(_) => "body_unreadable",
            ApiError::Unauthorized => "unauthorized",
            ApiError::RouteNotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Timeout(_) => "request_timeout",
            ApiError::NotReady(_) => "store_unavailable",
            ApiError::MetricsUnavailable => "metrics_unavailable",
            ApiError::Http { status, .. } => http_code(*status),
        }
    }

    /// The input field the error is about, if any.
    pub fn field(&self) -> Option<String> {
        match self {
            ApiError::Shape { field, .. } => field.clone(),
            ApiError::Validation(v) => Some(v.field.clone()),
            ApiError::Engine(EngineError::Rejected(Rejection::Invalid(v))) => Some(v.field.clone()),
            _ => None,
        }
    }

    /// The order's current state, for refused transitions.
    pub fn current_status(&self) -> Option<OrderStatus> {
        match self {
            ApiError::Engine(EngineError::Rejected(Rejection::IllegalTransition {
                status,
                ..
            })) => Some(*status),
            _ => None,
        }
    }

    /// The JSON error object.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code(),
            message: self.to_string(),
            field: self.field().filter(|f| !f.is_empty()),
            current_status: self.current_status().map(OrderStatus::as_str),
        }
    }

    /// Whether the same request may succeed later (the answer then carries `Retry-After`).
    fn retryable(&self) -> bool {
        match self {
            ApiError::Engine(e) => !matches!(e, EngineError::Rejected(_)),
            ApiError::IdempotencyKeyInFlight | ApiError::Timeout(_) | ApiError::NotReady(_) => true,
            _ => false,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::Shape { .. }
            | ApiError::InvalidIdempotencyKey { .. }
            | ApiError::BodyUnreadable(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(v) => validation_status(v.code),
            ApiError::Engine(e) => match e {
                EngineError::Rejected(r) => rejection_status(r),
                EngineError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                EngineError::Store(_)
                | EngineError::Conflict(_)
                | EngineError::Stopped
                | EngineError::ShardUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                EngineError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::OrderNotFound(_) | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IdempotencyKeyInFlight => StatusCode::CONFLICT,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Timeout(_) | ApiError::NotReady(_) | ApiError::MetricsUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Http { status, .. } => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.retryable() {
            response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
        }
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, *allow));
        }
        response.json(ErrorBody {
            error: self.detail(),
        })
    }
}

fn is_json(response: &HttpResponse<impl MessageBody>) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rewrites any error answer that is not already JSON (a framework error: payload errors,
/// unknown methods) into the common error shape, keeping its status.
pub(crate) fn normalize_error_response<B>(response: ServiceResponse<B>) -> ServiceResponse<BoxBody>
where
    B: MessageBody + 'static,
{
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.response()) {
        return response.map_into_boxed_body();
    }
    let message = response
        .response()
        .error()
        .map(|e| e.to_string())
        .filter(|m| !m.is_empty())
        .or_else(|| status.canonical_reason().map(str::to_lowercase))
        .unwrap_or_else(|| "error".to_string());
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let (request, _) = response.into_parts();
    let mut answer = ApiError::Http { status, message }.error_response();
    if let Some(value) = retry_after {
        answer.headers_mut().insert(header::RETRY_AFTER, value);
    }
    ServiceResponse::new(request, answer)
}
