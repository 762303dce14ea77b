//! The `http` gateway: JSON over HTTP to an external payment service (the contract the mock
//! in `load-tests/src/bin/mock_payments.rs` implements):
//!
//! | call | request | answers |
//! |---|---|---|
//! | charge | `POST /v1/charges`, `Idempotency-Key: <order>:<attempt>`, `{order_id, amount_minor, currency, method}` | 200 `{status: captured, amount_minor, currency}` / `{status: declined, hard, reason}` / `{status: pending}` / `{status: voided}` |
//! | query | `GET /v1/charges/<key>` | 200 as above, 404 unknown key |
//! | reverse | `POST /v1/charges/<key>/reverse` | 200 `{status: voided}`, 409 `{status: not_reversible, reason}` |
//! | refund | `POST /v1/refunds`, `Idempotency-Key: <order>:r<n>`, `{charge_key, amount_minor, currency}` | 200 `{status: refunded}` / `{status: refused, reason}` |
//! | audit | `GET /v1/stats` | 200 counters |
//!
//! Every request carries `Authorization: Bearer <api_key>` when a key is configured. A 429 means
//! "refused before processing" (not sent); other 4xx are refusals of an invalid request; 5xx,
//! resets and unreadable answers leave the outcome unknown. Timeouts are the actor's.

use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde::Deserialize;

use super::port::{
    ChargeCall, ChargeReply, Gateway, GatewayAudit, GatewayError, QueryReply, RefundCall,
    RefundReply, ReverseReply,
};
use crate::config::GatewaySettings;
use crate::domain::Currency;

/// The HTTP gateway.
pub struct HttpGateway {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<String>,
}

/// The status body every endpoint answers with.
#[derive(Debug, Deserialize)]
struct StatusBody {
    status: String,
    #[serde(default)]
    amount_minor: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    hard: Option<bool>,
    #[serde(default)]
    reason: Option<String>,
}

impl StatusBody {
    fn captured(&self) -> Result<(i64, Currency), GatewayError> {
        let amount = self
            .amount_minor
            .ok_or_else(|| GatewayError::Protocol("captured without amount_minor".into()))?;
        let currency = self
            .currency
            .as_deref()
            .and_then(|c| Currency::parse(c).ok())
            .ok_or_else(|| GatewayError::Protocol("captured without a known currency".into()))?;
        Ok((amount, currency))
    }

    fn reason(&self) -> String {
        self.reason.clone().unwrap_or_else(|| self.status.clone())
    }
}

fn send_error(error: reqwest::Error) -> GatewayError {
    if error.is_connect() {
        // The connection was never established, so the request never left.
        GatewayError::NotSent(error.to_string())
    } else if error.is_builder() {
        GatewayError::Config(error.to_string())
    } else if error.is_timeout() {
        GatewayError::Timeout(0)
    } else {
        GatewayError::Transport(error.to_string())
    }
}

/// Maps a non-2xx status that every endpoint shares.
fn status_error(status: reqwest::StatusCode, body: &str) -> GatewayError {
    let detail = || body.chars().take(200).collect::<String>();
    match status.as_u16() {
        429 => GatewayError::NotSent(format!("throttled by the gateway: {}", detail())),
        code @ 500..=599 => GatewayError::Server(code),
        code => GatewayError::Rejected(format!("HTTP {code}: {}", detail())),
    }
}

/// Passes a successful response through; turns any other status into its classified error
/// (the body, bounded, goes into the message).
async fn success_or_error(response: reqwest::Response) -> Result<reqwest::Response, GatewayError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(status_error(status, &body))
}

async fn read_status(response: reqwest::Response) -> Result<StatusBody, GatewayError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| GatewayError::Transport(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| GatewayError::Protocol(e.to_string()))
}

impl HttpGateway {
    /// A gateway for `settings.base_url`.
    pub fn new(settings: &GatewaySettings) -> Result<HttpGateway, GatewayError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .pool_max_idle_per_host(settings.pool_idle_max)
            .build()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(HttpGateway {
            client,
            base_url: settings.base_url.trim_end_matches('/').to_string(),
            api_key: (!settings.api_key.is_empty()).then(|| settings.api_key.clone()),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.base_url));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

fn charge_reply(body: StatusBody) -> Result<ChargeReply, GatewayError> {
    match body.status.as_str() {
        "captured" => {
            let (amount_minor, currency) = body.captured()?;
            Ok(ChargeReply::Captured {
                amount_minor,
                currency,
            })
        }
        "declined" => Ok(ChargeReply::Declined {
            hard: body.hard.unwrap_or(false),
            reason: body.reason(),
        }),
        "pending" => Ok(ChargeReply::Pending),
        "voided" => Ok(ChargeReply::Voided),
        other => Err(GatewayError::Protocol(format!(
            "unknown charge status {other:?}"
        ))),
    }
}

impl Gateway for HttpGateway {
    fn charge(&self, call: ChargeCall) -> BoxFuture<'static, Result<ChargeReply, GatewayError>> {
        let request = self
            .request(reqwest::Method::POST, "/v1/charges")
            .header("Idempotency-Key", call.key())
            .json(&serde_json::json!({
                "order_id": call.order_id.to_string(),
                "amount_minor": call.amount_minor,
                "currency": call.currency.code(),
                "method": call.method,
            }));
        async move {
            let response = request.send().await.map_err(send_error)?;
            let response = success_or_error(response).await?;
            charge_reply(read_status(response).await?)
        }
        .boxed()
    }

    fn query(&self, key: String) -> BoxFuture<'static, Result<QueryReply, GatewayError>> {
        let request = self.request(reqwest::Method::GET, &format!("/v1/charges/{key}"));
        async move {
            let response = request.send().await.map_err(send_error)?;
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(QueryReply::NotFound);
            }
            let response = success_or_error(response).await?;
            Ok(match charge_reply(read_status(response).await?)? {
                ChargeReply::Captured {
                    amount_minor,
                    currency,
                } => QueryReply::Captured {
                    amount_minor,
                    currency,
                },
                ChargeReply::Declined { hard, reason } => QueryReply::Declined { hard, reason },
                ChargeReply::Pending => QueryReply::Pending,
                ChargeReply::Voided => QueryReply::Voided,
            })
        }
        .boxed()
    }

    fn reverse(&self, key: String) -> BoxFuture<'static, Result<ReverseReply, GatewayError>> {
        let request = self.request(reqwest::Method::POST, &format!("/v1/charges/{key}/reverse"));
        async move {
            let response = request.send().await.map_err(send_error)?;
            let status = response.status();
            if status == reqwest::StatusCode::CONFLICT {
                let body = read_status(response).await?;
                return Ok(ReverseReply::NotReversible {
                    reason: body.reason(),
                });
            }
            let response = success_or_error(response).await?;
            let body = read_status(response).await?;
            match body.status.as_str() {
                "voided" => Ok(ReverseReply::Reversed),
                other => Err(GatewayError::Protocol(format!(
                    "unknown reverse status {other:?}"
                ))),
            }
        }
        .boxed()
    }

    fn refund(&self, call: RefundCall) -> BoxFuture<'static, Result<RefundReply, GatewayError>> {
        let request = self
            .request(reqwest::Method::POST, "/v1/refunds")
            .header("Idempotency-Key", call.key.as_str())
            .json(&serde_json::json!({
                "charge_key": call.charge_key,
                "amount_minor": call.amount_minor,
                "currency": call.currency.code(),
            }));
        async move {
            let response = request.send().await.map_err(send_error)?;
            let response = success_or_error(response).await?;
            let body = read_status(response).await?;
            match body.status.as_str() {
                "refunded" => Ok(RefundReply::Refunded),
                "refused" => Ok(RefundReply::Refused {
                    reason: body.reason(),
                }),
                other => Err(GatewayError::Protocol(format!(
                    "unknown refund status {other:?}"
                ))),
            }
        }
        .boxed()
    }

    fn audit(&self) -> BoxFuture<'static, Result<Option<GatewayAudit>, GatewayError>> {
        let request = self.request(reqwest::Method::GET, "/v1/stats");
        async move {
            let response = request.send().await.map_err(send_error)?;
            let response = success_or_error(response).await?;
            let bytes = response
                .bytes()
                .await
                .map_err(|e| GatewayError::Transport(e.to_string()))?;
            let audit: GatewayAudit = serde_json::from_slice(&bytes)
                .map_err(|e| GatewayError::Protocol(e.to_string()))?;
            Ok(Some(audit))
        }
        .boxed()
    }
}
