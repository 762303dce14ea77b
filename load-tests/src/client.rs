//! The HTTP calls of each step, and how their answers are classified: any 2xx is `ok`; any
//! other status is an error keyed `<status> <code>` from Orderly's error body
//! (`{"error":{"code":…}}`); transport failures are `timeout`, `connect` or `transport`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use crate::http1;
use crate::scenario::Step;
use crate::target::Target;

/// Largest response body read; Orderly's answers are far smaller except bulk results, which
/// are about 100 bytes a line.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What one request came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A 2xx answer.
    Ok {
        /// The order id of a placement.
        order_id: Option<String>,
        /// Per-line results of a bulk request.
        bulk: Option<BulkLines>,
    },
    /// Anything else, keyed for the report.
    Failed(String),
}

/// Counts of a bulk answer's result lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BulkLines {
    /// Lines by `status` (`accepted`, `rejected`, `duplicate`).
    pub(crate) by_status: BTreeMap<String, u64>,
    /// Rejected lines by error code.
    pub(crate) errors: BTreeMap<String, u64>,
}

/// An HTTP client bound to one target.
pub(crate) struct Api {
    http: http1::Client,
    timeout: Duration,
    /// `Bearer <key>`.
    authorization: Option<String>,
}

impl Api {
    /// A client with up to `max_in_flight` pooled connections and a per-request `timeout`.
    pub(crate) fn new(
        target: Target,
        api_key: Option<&str>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> anyhow::Result<Api> {
        let authorization = match api_key {
            Some(key)
                if key
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) =>
            {
                Some(format!("Bearer {key}"))
            }
            Some(_) => anyhow::bail!("the API key is not a valid header value"),
            None => None,
        };
        // Direct connections to the loopback target only: no proxy from the environment.
        let http = http1::Client::new(
            target,
            max_in_flight,
            timeout.min(Duration::from_secs(5)),
            RESPONSE_BYTES_MAX,
        );
        Ok(Api {
            http,
            timeout,
            authorization,
        })
    }

    /// Sends `step` (for `order_id` where it applies) with `body`.
    pub(crate) async fn send(&self, step: Step, order_id: Option<&str>, body: String) -> Answer {
        let id = order_id.unwrap_or_default();
        let (path, content_type) = match step {
            Step::Place => ("/v1/orders".to_string(), "application/json"),
            Step::Pay => (format!("/v1/orders/{id}/pay"), "application/json"),
            Step::Ship => (format!("/v1/orders/{id}/ship"), "application/json"),
            Step::Deliver => (format!("/v1/orders/{id}/deliver"), "application/json"),
            Step::Get => (format!("/v1/orders/{id}"), "application/json"),
            Step::Cancel => (format!("/v1/orders/{id}/cancel"), "application/json"),
            Step::Refund => (format!("/v1/orders/{id}/refund"), "application/json"),
            Step::Bulk => ("/v1/orders/bulk".to_string(), "application/x-ndjson"),
            // Not an HTTP request: the runner hands stream arrivals to the stream driver.
            Step::Stream => return Answer::Failed("stream_step_is_not_http".into()),
        };
        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(2);
        if step != Step::Get {
            headers.push(("Content-Type", content_type));
        }
        if let Some(authorization) = &self.authorization {
            headers.push(("Authorization", authorization));
        }
        let method = if step == Step::Get { "GET" } else { "POST" };
        let response = match self
            .http
            .request(method, &path, &headers, body.as_bytes(), self.timeout)
            .await
        {
            Ok(response) => response,
            Err(error) => {
                note_failure(&error);
                return Answer::Failed(error.key().into());
            }
        };
        let status = response.status;
        let bytes = response.body;
        if !(200..300).contains(&status) {
            return Answer::Failed(status_error(status, &bytes));
        }
        match step {
            Step::Place => match order_id_of(&bytes) {
                Some(order_id) => Answer::Ok {
                    order_id: Some(order_id),
                    bulk: None,
                },
                None => Answer::Failed(format!("{status} no_order_id")),
            },
            Step::Bulk => Answer::Ok {
                order_id: None,
                bulk: Some(bulk_lines(&bytes)),
            },
            _ => Answer::Ok {
                order_id: None,
                bulk: None,
            },
        }
    }
}

impl Api {
    /// The server's `/metrics` page (Prometheus text), within `timeout`.
    pub(crate) async fn metrics(&self, timeout: Duration) -> anyhow::Result<String> {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(authorization) = &self.authorization {
            headers.push(("Authorization", authorization));
        }
        let response = self
            .http
            .request("GET", "/metrics", &headers, b"", timeout)
            .await
            .map_err(|e| anyhow::anyhow!("GET /metrics: {e}"))?;
        if !(200..300).contains(&response.status) {
            anyhow::bail!("GET /metrics answered {}", response.status);
        }
        String::from_utf8(response.body).context("GET /metrics body is not UTF-8")
    }
}

/// Prints the first few transport failures of the process in full on stderr: the report counts
/// them only by kind, and the detail is what tells a server's reset from a malformed answer.
fn note_failure(error: &http1::Error) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PRINTED: AtomicUsize = AtomicUsize::new(0);
    const PRINTED_MAX: usize = 5;
    if matches!(error, http1::Error::Transport(_) | http1::Error::Connect(_))
        && PRINTED.fetch_add(1, Ordering::Relaxed) < PRINTED_MAX
    {
        eprintln!("orderly-load: {}: {error}", error.key());
    }
}

/// `<status> <code>` from an Orderly error body, or `<status>` alone.
pub(crate) fn status_error(status: u16, body: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    match code {
        // Codes are short identifiers; anything else would make the report's keys unbounded.
        Some(code) if code.len() <= 64 && !code.contains(char::is_whitespace) => {
            format!("{status} {code}")
        }
        _ => status.to_string(),
    }
}

fn order_id_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value["order_id"].as_str().map(str::to_string)
}

/// Tallies the result lines of a bulk answer (`{"line":N,"status":…}` …, then a summary).
pub(crate) fn bulk_lines(body: &[u8]) -> BulkLines {
    let mut lines = BulkLines::default();
    for line in body.split(|b| *b == b'\n') {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let Some(status) = value["status"].as_str() else {
            continue;
        };
        *lines.by_status.entry(bounded_key(status)).or_default() += 1;
        if let Some(code) = value["error"]["code"].as_str() {
            *lines.errors.entry(bounded_key(code)).or_default() += 1;
        }
    }
    lines
}

fn bounded_key(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_give_status_and_code() {
        let body = br#"{"error":{"code":"overloaded","message":"retry later"}}"#;
        assert_eq!(status_error(429, body), "429 overloaded");
        assert_eq!(status_error(502, b"<html>bad gateway</html>"), "502");
    }

    #[test]
    fn bulk_answers_are_tallied_by_line_status_and_code() {
        let body = b"{\"line\":1,\"status\":\"accepted\",\"order_id\":\"a\"}\n\
{\"line\":2,\"status\":\"rejected\",\"error\":{\"code\":\"unknown_currency\"}}\n\
{\"line\":3,\"status\":\"accepted\",\"order_id\":\"b\"}\n\
{\"summary\":{\"lines\":3,\"accepted\":2,\"rejected\":1}}\n";
        let lines = bulk_lines(body);
        assert_eq!(lines.by_status.get("accepted"), Some(&2));
        assert_eq!(lines.by_status.get("rejected"), Some(&1));
        assert_eq!(lines.errors.get("unknown_currency"), Some(&1));
    }
}
