//! Single-order endpoints: place, read, and the lifecycle commands (pay, ship, deliver, cancel,
//! refund). Each request is parsed once at the edge into domain types, handed to the engine with
//! `Admission::FailFast` (a full shard answers 429 at once instead of queueing), and answered
//! with the order's durable state as [`OrderView`].
//!
//! Idempotency: with an `Idempotency-Key`, a placement goes to the order id derived from
//! (tenant, key) under a command id derived from the key, so a replay reaches the same order
//! and is recognized by it: the same request is a replay (`duplicate`), a different one is
//! refused as `OrderAlreadyExists` (422 `idempotency_key_reused`). A lifecycle
//! command's key derives its command id from the order, the verb and the key, so a retried
//! `pay` is a no-op and a key reused for a different verb is not mistaken for a replay.

use std::future::Future;
use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::body::{JsonBody, OptionalJsonBody};
use super::error::{ApiError, ErrorBody};
use super::idempotency::{idempotency_key, InFlightGuard, IDEMPOTENT_REPLAYED};
use super::ApiState;
use crate::domain::order::MAX_TEXT_BYTES;
use crate::domain::{
    Command, CommandEnvelope, CommandId, Money, MoneyError, NewOrder, NewOrderRequest, Order,
    OrderId, PaymentMethod, Rejection, ValidationError,
};
use crate::engine::{Admission, CommandOutcome, CommandResult, EngineError, Request};
use crate::wire::OrderView;

/// Longest path id echoed back in an error message.
const MAX_ECHOED_ID_CHARS: usize = 64;

impl ApiState {
    /// Awaits an engine answer for at most `request_timeout_ms`.
    async fn answer(
        &self,
        call: impl Future<Output = CommandResult>,
    ) -> Result<CommandOutcome, ApiError> {
        let ms = self.settings.request_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(ms), call).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::Timeout(ms)),
        }
    }

    /// Marks a keyed command as in flight, or refuses a concurrent duplicate.
    fn begin(&self, id: CommandId) -> Result<InFlightGuard, ApiError> {
        self.in_flight
            .begin(id)
            .ok_or(ApiError::IdempotencyKeyInFlight)
    }
}

fn order_location(order: &Order) -> String {
    format!("/v1/orders/{}", order.id())
}

/// The answer carrying an order; `replayed` marks the answer to an idempotent replay.
fn order_response(status: StatusCode, order: &Order, replayed: bool) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    response.json(OrderView::from(order))
}

fn parse_order_id(text: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(text)
        .ok_or_else(|| ApiError::OrderNotFound(text.chars().take(MAX_ECHOED_ID_CHARS).collect()))
}

/// Answers a placement replay: the same request again (200, replayed).
fn replay(order: &Order) -> Result<HttpResponse, ApiError> {
    let mut response = order_response(StatusCode::OK, order, true);
    if let Ok(location) = header::HeaderValue::from_str(&order_location(order)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Places an order. With an `Idempotency-Key`, a replay of the same body answers 200 with
/// `Idempotent-Replayed: true` and the original order.
#[utoipa::path(
    tag = "orders",
    request_body(content = super::schema::NewOrderDoc, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body place the order once.")),
    responses(
        (status = 201, description = "Placed", body = OrderView, headers(("Location" = String, description = "The order's URL"))),
        (status = 200, description = "Replay of an earlier request with the same key and body", body = OrderView),
        (status = 400, description = "Malformed JSON, unknown or missing field", body = ErrorBody),
        (status = 409, description = "A request with this key is in flight", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Invalid order, or key reused with a different body", body = ErrorBody),
        (status = 429, description = "Overloaded; retry after Retry-After", body = ErrorBody),
        (status = 503, description = "Store unavailable; retry after Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders")]
pub(crate) async fn place_order(
    req: HttpRequest,
    state: web::Data<ApiState>,
    body: JsonBody<NewOrderRequest>,
) -> Result<HttpResponse, ApiError> {
    let new_order = NewOrder::parse(&body.0)?;
    let Some(key) = idempotency_key(&req)? else {
        let outcome = state
            .answer(state.engine.place(new_order, Admission::FailFast))
            .await?;
        let mut response = order_response(StatusCode::CREATED, &outcome.order, false);
        if let Ok(location) = header::HeaderValue::from_str(&order_location(&outcome.order)) {
            response.headers_mut().insert(header::LOCATION, location);
        }
        return Ok(response);
    };
    let order_id = OrderId::from_idempotency_key(&state.settings.tenant, &key);
    let command_id = CommandId::from_key(order_id, &key);
    let _in_flight = state.begin(command_id)?;
    let envelope = CommandEnvelope {
        id: command_id,
        command: Command::PlaceOrder(Box::new(new_order)),
    };
    let placed = state
        .answer(
            state
                .engine
                .execute(order_id, Request::Command(envelope), Admission::FailFast),
        )
        .await;
    match placed {
        Ok(outcome) if outcome.duplicate => replay(&outcome.order),
        Ok(outcome) => {
            let mut response = order_response(StatusCode::CREATED, &outcome.order, false);
            if let Ok(location) = header::HeaderValue::from_str(&order_location(&outcome.order)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Ok(response)
        }
        // The order exists with other content: the key was reused for a different request.
        Err(ApiError::Engine(EngineError::Rejected(Rejection::OrderAlreadyExists(_)))) => {
            Err(ApiError::IdempotencyKeyReused)
        }
        Err(error) => Err(error),
    }
}

/// Reads an order's durable state.
#[utoipa::path(
    tag = "orders",
    params(("id" = String, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 429, description = "Overloaded", body = ErrorBody),
        (status = 503, description = "Store unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/orders/{id}")]
pub(crate) async fn get_order(
    state: web::Data<ApiState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order_id = parse_order_id(&id)?;
    let outcome = state
        .answer(
            state
                .engine
                .execute(order_id, Request::Read, Admission::FailFast),
        )
        .await?;
    Ok(order_response(StatusCode::OK, &outcome.order, false))
}

/// Sends one lifecycle command; an `Idempotency-Key` makes a retry a no-op.
async fn run_command(
    req: &HttpRequest,
    state: &ApiState,
    order_id: OrderId,
    command: Command,
) -> Result<HttpResponse, ApiError> {
    let mut _in_flight = None;
    let envelope = match idempotency_key(req)? {
        Some(key) => {
            let scoped = format!("{}\u{0}{key}", command.verb());
            let id = CommandId::from_key(order_id, &scoped);
            _in_flight = Some(state.begin(id)?);
            CommandEnvelope { id, command }
        }
        None => CommandEnvelope::new(command),
    };
    let outcome = state
        .answer(
            state
                .engine
                .execute(order_id, Request::Command(envelope), Admission::FailFast),
        )
        .await?;
    Ok(order_response(
        StatusCode::OK,
        &outcome.order,
        outcome.duplicate,
    ))
}

fn optional_text(value: Option<String>, field: &str) -> Result<Option<Box<str>>, ValidationError> {
    match value {
        None => Ok(None),
        Some(text) if text.is_empty() => Err(ValidationError::new(
            "missing_field",
            field,
            "must not be empty when given",
        )),
        Some(text) if text.len() > MAX_TEXT_BYTES => Err(ValidationError::new(
            "field_too_long",
            field,
            format!("must be at most {MAX_TEXT_BYTES} bytes"),
        )),
        Some(text) => {
            crate::domain::order::check_no_control(&text, field)?;
            Ok(Some(text.into_boxed_str()))
        }
    }
}

/// Body of `pay`: optionally a different payment method than the one chosen at placement.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayBody {
    /// `card`, `alipay` or `wechat`.
    payment_method: Option<String>,
}

/// Body of `ship`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShipBody {
    /// The carrier's tracking number.
    tracking_number: Option<String>,
}

/// Body of `cancel`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    /// Why the order is cancelled.
    reason: Option<String>,
}

/// Body of `refund`: a decimal amount in the order's currency; absent refunds everything left.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefundBody {
    /// Decimal string, e.g. `"10.00"`.
    amount: Option<String>,
}

/// Empty body of `deliver` (`{}` or nothing).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct EmptyBody {}

/// Starts a payment attempt; answers once the gateway's verdict is durable.
#[utoipa::path(
    tag = "orders",
    params(("id" = String, Path, description = "Order id (UUID)"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes retries no-ops")),
    request_body(content = Option<PayBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The order after the payment attempt", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Illegal transition or payment in flight", body = ErrorBody),
        (status = 422, description = "Unknown payment method", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders/{id}/pay")]
pub(crate) async fn pay_order(
    req: HttpRequest,
    state: web::Data<ApiState>,
    id: web::Path<String>,
    body: OptionalJsonBody<PayBody>,
) -> Result<HttpResponse, ApiError> {
    let order_id = parse_order_id(&id)?;
    let method = match body.0.payment_method {
        None => None,
        Some(name) => Some(PaymentMethod::parse(&name).ok_or_else(|| {
            ValidationError::new(
                "unknown_payment_method",
                "payment_method",
                "payment_method must be one of card, alipay, wechat",
            )
        })?),
    };
    run_command(&req, &state, order_id, Command::StartPayment { method }).await
}

/// Hands a paid order to the carrier.
#[utoipa::path(
    tag = "orders",
    params(("id" = String, Path, description = "Order id (UUID)"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes retries no-ops")),
    request_body(content = Option<ShipBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Shipped", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Illegal transition", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders/{id}/ship")]
pub(crate) async fn ship_order(
    req: HttpRequest,
    state: web::Data<ApiState>,
    id: web::Path<String>,
    body: OptionalJsonBody<ShipBody>,
) -> Result<HttpResponse, ApiError> {
    let order_id = parse_order_id(&id)?;
    let tracking_number = optional_text(body.0.tracking_number, "tracking_number")?;
    run_command(
        &req,
        &state,
        order_id,
        Command::ShipOrder { tracking_number },
    )
    .await
}

/// Confirms delivery of a shipped order.
#[utoipa::path(
    tag = "orders",
    params(("id" = String, Path, description = "Order id (UUID)"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes retries no-ops")),
    responses(
        (status = 200, description = "Completed", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Illegal transition", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders/{id}/deliver")]
pub(crate) async fn deliver_order(
    req: HttpRequest,
    state: web::Data<ApiState>,
    id: web::Path<String>,
    _body: OptionalJsonBody<EmptyBody>,
) -> Result<HttpResponse, ApiError> {
    let order_id = parse_order_id(&id)?;
    run_command(&req, &state, order_id, Command::ConfirmDelivery).await
}

/// Cancels an order (after payment this refunds in full).
#[utoipa::path(
    tag = "orders",
    params(("id" = String, Path, description = "Order id (UUID)"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes retries no-ops")),
    request_body(content = Option<CancelBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Cancelled", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Illegal transition", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders/{id}/cancel")]
pub(crate) async fn cancel_order(
    req: HttpRequest,
    state: web::Data<ApiState>,
    id: web::Path<String>,
    body: OptionalJsonBody<CancelBody>,
) -> Result<HttpResponse, ApiError> {
    let order_id = parse_order_id(&id)?;
    let reason = optional_text(body.0.reason, "reason")?;
    run_command(&req, &state, order_id, Command::CancelOrder { reason }).await
}

/// Converts a refund amount to minor units of the order's currency.
fn refund_minor(amount: &str, order: &Order) -> Result<i64, ValidationError> {
    let field = "amount";
    let refused = |code: &'static str, message: String| ValidationError::new(code, field, message);
    let money = Money::parse(amount, order.currency()).map_err(|e| match e {
        MoneyError::TooManyDecimals { .. } => refused("too_many_decimals", e.to_string()),
        MoneyError::OutOfRange => refused("amount_out_of_range", e.to_string()),
        MoneyError::Negative => refused("negative_amount", e.to_string()),
        _ => refused("invalid_amount", e.to_string()),
    })?;
    if money.is_negative() {
        return Err(refused(
            "negative_amount",
            "amount must not be negative".into(),
        ));
    }
    if money.is_zero() {
        return Err(refused(
            "invalid_amount",
            "a refund amount must be positive".into(),
        ));
    }
    money
        .to_minor_units()
        .map_err(|e| refused("amount_out_of_range", e.to_string()))
}

/// Refunds part or all of what was paid.
#[utoipa::path(
    tag = "orders",
    params(("id" = String, Path, description = "Order id (UUID)"),
           ("Idempotency-Key" = Option<String>, Header, description = "Makes retries no-ops")),
    request_body(content = Option<RefundBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Refund started", body = OrderView),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 409, description = "Illegal transition or refund in flight", body = ErrorBody),
        (status = 422, description = "Invalid amount or more than what is refundable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/orders/{id}/refund")]
pub(crate) async fn refund_order(
    req: HttpRequest,
    state: web::Data<ApiState>,
    id: web::Path<String>,
    body: OptionalJsonBody<RefundBody>,
) -> Result<HttpResponse, ApiError> {
    let order_id = parse_order_id(&id)?;
    let amount_minor = match body.0.amount {
        None => None,
        Some(amount) => {
            // The amount's scale depends on the order's currency, so read the order first.
            let current = state
                .answer(
                    state
                        .engine
                        .execute(order_id, Request::Read, Admission::FailFast),
                )
                .await?;
            Some(refund_minor(&amount, &current.order)?)
        }
    };
    run_command(
        &req,
        &state,
        order_id,
        Command::RefundOrder { amount_minor },
    )
    .await
}
