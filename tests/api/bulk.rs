//! `POST /v1/orders/bulk` streams NDJSON in and out: exactly the good lines are persisted,
//! every bad line is reported with its 1-based input line number, CRLF and blank lines are
//! handled, and the request-level limits end the stream with an error line.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::app::{order_json, spawn_app, spawn_app_with, spawn_redis_app_with, TestApp};
use crate::support::redis_server::RedisServer;

/// Sends `body` to the bulk endpoint and returns the response lines as JSON.
async fn bulk(app: &TestApp, body: Vec<u8>) -> Vec<Value> {
    let response = app
        .post_raw("/v1/orders/bulk", "application/x-ndjson", body)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
    let text = response.text().await.expect("body");
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn line(n: u64) -> String {
    order_json(n).to_string()
}

/// Order keys in Redis (`orderly:{<shard>}:order:<uuid>`), counted with a bounded SCAN.
fn count_order_keys(redis: &RedisServer) -> usize {
    crate::support::stored::order_keys(redis).len()
}

#[actix_web::test]
async fn ten_thousand_lines_with_one_percent_bad_persist_exactly_the_good_ones() {
    let app = spawn_redis_app_with(|s| s.api.bulk_batch_size = 256).await;
    let mut body = String::new();
    // Expected outcome per input line number: None = accepted, Some(code) = rejected.
    let mut expected: BTreeMap<u64, Option<&str>> = BTreeMap::new();
    for n in 1..=10_000u64 {
        let (text, outcome) = if n % 100 == 37 {
            match (n / 100) % 3 {
                0 => (
                    "{\"customer_id\":\"c\",".to_string(),
                    Some("malformed_json"),
                ),
                1 => {
                    let mut order = order_json(n);
                    order["items"][0]["quantity"] = json!(0);
                    (order.to_string(), Some("invalid_quantity"))
                }
                _ => {
                    let mut order = order_json(n);
                    order["currency"] = json!("XXX");
                    (order.to_string(), Some("unknown_currency"))
                }
            }
        } else {
            (line(n), None)
        };
        body.push_str(&text);
        // Every 10th line ends with CRLF, as a Windows client would send it.
        body.push_str(if n % 10 == 0 { "\r\n" } else { "\n" });
        expected.insert(n, outcome);
    }
    let results = bulk(&app, body.into_bytes()).await;
    assert_eq!(
        results.len(),
        10_001,
        "one line per input line plus the summary"
    );
    let mut accepted_ids = Vec::new();
    for (result, (n, outcome)) in results.iter().zip(expected.iter()) {
        assert_eq!(result["line"], *n, "results come in input order");
        match outcome {
            None => {
                assert_eq!(result["status"], "accepted", "{result}");
                accepted_ids.push(result["order_id"].as_str().expect("id").to_string());
            }
            Some(code) => {
                assert_eq!(result["status"], "rejected", "{result}");
                assert_eq!(result["error"]["code"], *code, "line {n}: {result}");
            }
        }
    }
    let summary = &results[10_000]["summary"];
    assert_eq!(summary["lines"], 10_000);
    assert_eq!(summary["accepted"], 9_900);
    assert_eq!(summary["rejected"], 100);
    assert_eq!(summary["duplicate"], 0);
    let redis = app.redis.as_ref().expect("redis");
    assert_eq!(
        count_order_keys(redis),
        9_900,
        "exactly the good lines are stored"
    );
    for id in accepted_ids.iter().step_by(997) {
        let order = app.get(&format!("/v1/orders/{id}")).await;
        assert_eq!(order.status(), 200);
        let order: Value = order.json().await.expect("JSON");
        assert_eq!(order["status"], "pending_payment");
    }
}

#[actix_web::test]
async fn crlf_and_blank_lines() {
    let app = spawn_app().await;
    let body = format!(
        "{}\r\n\r\n   \n{}\n\n{{bad\r\n{}",
        line(1),
        line(2),
        line(3)
    );
    let results = bulk(&app, body.into_bytes()).await;
    let lines: Vec<(u64, &str)> = results[..4]
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().expect("line"),
                r["status"].as_str().expect("status"),
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            (1, "accepted"),
            (4, "accepted"),
            (6, "rejected"),
            (7, "accepted")
        ]
    );
    assert_eq!(results[2]["error"]["code"], "malformed_json");
    assert_eq!(
        results[4],
        json!({"summary": {"lines": 4, "accepted": 3, "rejected": 1, "duplicate": 0}})
    );
}

#[actix_web::test]
async fn schema_errors_reject_only_their_line() {
    let app = spawn_app().await;
    let mut unknown = order_json(2);
    unknown["idempotency_key"] = json!("k");
    let body = format!("{}\n{}\n{}\n", line(1), unknown, line(3));
    let results = bulk(&app, body.into_bytes()).await;
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[1]["status"], "rejected");
    assert_eq!(results[1]["error"]["code"], "unknown_field");
    assert_eq!(results[1]["error"]["field"], "idempotency_key");
    assert_eq!(results[2]["status"], "accepted");
}

#[actix_web::test]
async fn an_overlong_line_is_rejected_alone() {
    let app = spawn_app_with(|s| s.api.bulk_line_bytes_max = 300).await;
    let mut long = order_json(2);
    long["customer_id"] = json!("c".repeat(400));
    let body = format!("{}\n{}\n{}\n", line(1), long, line(3));
    let results = bulk(&app, body.into_bytes()).await;
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[1]["line"], 2);
    assert_eq!(results[1]["error"]["code"], "line_too_long");
    assert_eq!(results[2]["status"], "accepted");
    assert_eq!(results[3]["summary"]["lines"], 3);
}

#[actix_web::test]
async fn too_many_lines_ends_the_stream_with_an_error_line() {
    let app = spawn_app_with(|s| s.api.bulk_lines_max = 3).await;
    let body: String = (1..=5).map(|n| format!("{}\n", line(n))).collect();
    let results = bulk(&app, body.into_bytes()).await;
    assert_eq!(results.len(), 5, "{results:?}");
    for (i, result) in results[..3].iter().enumerate() {
        assert_eq!(result["line"], i as u64 + 1);
        assert_eq!(result["status"], "accepted");
    }
    assert_eq!(results[3]["error"]["code"], "too_many_lines");
    assert_eq!(results[4]["summary"]["accepted"], 3);
}

#[actix_web::test]
async fn a_chunked_body_over_the_limit_ends_the_stream_with_an_error_line() {
    let app = spawn_app_with(|s| s.api.bulk_body_bytes_max = 1024).await;
    // Without a Content-Length the limit is found while reading: 20 chunks of one line each.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (1..=20)
        .map(|n| Ok(format!("{}\n", line(n)).into_bytes()))
        .collect();
    let response = app
        .client
        .post(app.url("/v1/orders/bulk"))
        .header("Content-Type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let error = &results[results.len() - 2];
    assert_eq!(error["error"]["code"], "body_too_large", "{text}");
    let summary = &results[results.len() - 1]["summary"];
    let accepted = summary["accepted"].as_u64().expect("count");
    // Lines that arrived before the limit was crossed may have been placed; never all of them.
    assert!(accepted < 20, "{summary}");
}

#[actix_web::test]
async fn a_trickling_client_gets_each_answer_before_sending_the_next_line() {
    // Both directions stream: the result of a line arrives while the request body is still
    // open, so a client can pace itself on the answers.
    let app = spawn_app().await;
    let (lines_tx, lines_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures_util::stream::unfold(lines_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    lines_tx
        .send(Ok(format!("{}\n", line(1)).into_bytes()))
        .await
        .expect("first line queued");
    let mut response = app
        .client
        .post(app.url("/v1/orders/bulk"))
        .header("Content-Type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let mut received = String::new();
    for n in 1..=3u64 {
        while !received.contains(&format!("\"line\":{n},")) {
            let chunk = response
                .chunk()
                .await
                .expect("readable")
                .expect("an answer before the body ends");
            received.push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
        if n < 3 {
            lines_tx
                .send(Ok(format!("{}\n", line(n + 1)).into_bytes()))
                .await
                .expect("next line queued");
        }
    }
    drop(lines_tx);
    let rest = response.text().await.expect("rest");
    received.push_str(&rest);
    assert!(received.contains("\"summary\""), "{received}");
    assert_eq!(
        received.matches("\"status\":\"accepted\"").count(),
        3,
        "{received}"
    );
}
