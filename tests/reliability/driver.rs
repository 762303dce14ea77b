//! Real HTTP load for the reliability suite: lifecycles (place, pay, ship, deliver) against an
//! `orderly serve` whose address may change (it is restarted on a new port after a crash), each
//! step retried under the same `Idempotency-Key` until it is acknowledged, as a careful client
//! would. Every 2xx answer is journaled as an [`Ack`]; everything else is counted by outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::checker::Ack;

/// Where the server is now (replaced when it is restarted on another port).
#[derive(Clone)]
pub struct Target(Arc<RwLock<String>>);

impl Target {
    /// A target at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Target {
        Target(Arc::new(RwLock::new(base.to_string())))
    }

    /// Points the target at `base`.
    pub fn set(&self, base: &str) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = base.to_string();
    }

    /// The current base URL.
    pub fn base(&self) -> String {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What clients were told.
#[derive(Default)]
pub struct Journal {
    acks: Mutex<Vec<Ack>>,
    /// Non-2xx answers and failed requests by outcome (`503 store_unavailable`,
    /// `connection`, ...).
    outcomes: Mutex<BTreeMap<String, u64>>,
    /// Lifecycles finished (delivered, or abandoned after placement on purpose).
    pub finished: AtomicU64,
}

impl Journal {
    fn ack(&self, ack: Ack) {
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ack);
    }

    fn count(&self, outcome: String) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    /// Every acknowledgement so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Outcomes other than 2xx so far.
    pub fn outcomes(&self) -> BTreeMap<String, u64> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Non-2xx answers with a status of at least 500 other than `allowed` codes, and every
    /// 4xx other than the retryable ones: answers the fault must never cause.
    pub fn unexpected(&self, allowed: &[&str]) -> BTreeMap<String, u64> {
        self.outcomes()
            .into_iter()
            .filter(|(outcome, _)| {
                !(outcome == "connection"
                    || outcome == "timeout"
                    || outcome.starts_with("429 ")
                    || outcome == "409 idempotency_key_in_flight"
                    || outcome == "409 payment_in_flight"
                    || allowed.iter().any(|a| outcome.ends_with(a)))
            })
            .collect()
    }
}

/// The load: `lifecycles` lifecycles over `workers` concurrent clients, every `abandon_every`-th
/// placed and never paid (so its reminder and expiry timers must fire), bounded by `deadline`.
pub struct Load {
    pub workers: usize,
    pub lifecycles: u64,
    pub abandon_every: u64,
    pub deadline: Duration,
}

/// Runs `load` against `target` until every lifecycle finished or the deadline passed.
pub async fn run(target: Target, journal: Arc<Journal>, load: Load) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + load.deadline;
    let mut tasks = Vec::new();
    for _ in 0..load.workers {
        let (client, target, journal, next) = (
            client.clone(),
            target.clone(),
            Arc::clone(&journal),
            Arc::clone(&next),
        );
        let (lifecycles, abandon_every) = (load.lifecycles, load.abandon_every);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= lifecycles || Instant::now() > deadline {
                    return;
                }
                let client = Client {
                    http: &client,
                    target: &target,
                    journal: &journal,
                    deadline,
                };
                if client.lifecycle(n, abandon_every).await {
                    journal.finished.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Whether `status` is at or past the state `verb` leads to.
fn past(verb: &str, status: &str) -> bool {
    let rank = |s: &str| match s {
        "paid" => 1,
        "shipped" => 2,
        "completed" => 3,
        _ => 0,
    };
    let wanted = match verb {
        "pay" => 1,
        "ship" => 2,
        "deliver" => 3,
        _ => return false,
    };
    rank(status) >= wanted
}

struct Client<'a> {
    http: &'a reqwest::Client,
    target: &'a Target,
    journal: &'a Journal,
    deadline: Instant,
}

/// The answer to one try.
enum Try {
    /// 2xx, with the order view.
    Acked(Value),
    /// Retry the same request (overload, store or shard unavailable, connection lost).
    Again,
    /// Refused for good, with the code.
    Refused(u16, String),
}

impl Client<'_> {
    /// One lifecycle; whether it finished.
    async fn lifecycle(&self, n: u64, abandon_every: u64) -> bool {
        let order = json!({
            "customer_id": format!("rel-{n}"),
            "currency": "USD",
            "payment_method": "card",
            "items": [{"sku": format!("sku-{}", n % 50), "quantity": n % 3 + 1, "unit_price": "19.99"}],
            "metadata": {"reliability": n.to_string()},
        });
        let Some(placed) = self
            .step(
                "place",
                "/v1/orders".to_string(),
                &format!("rel-{n}"),
                &order,
            )
            .await
        else {
            return false;
        };
        let Some(id) = placed["order_id"].as_str().map(str::to_string) else {
            return false;
        };
        if abandon_every > 0 && n % abandon_every == 0 {
            return true;
        }
        // Pay until paid: an attempt whose outcome was unknown is resolved by the engine (the
        // order stays `payment_processing` meanwhile); one that failed leaves the order
        // `pending_payment`, and the customer pays again under a new key.
        let pay_path = format!("/v1/orders/{id}/pay");
        let mut paid = false;
        for attempt in 1..=8 {
            let key = format!("rel-{n}-pay-{attempt}");
            let Some(view) = self.step("pay", pay_path.clone(), &key, &json!({})).await else {
                return false;
            };
            match self.resolved(&id, view).await.as_deref() {
                Some("paid" | "shipped" | "completed") => {
                    paid = true;
                    break;
                }
                Some("pending_payment") => tokio::time::sleep(Duration::from_millis(100)).await,
                // On hold for review, expired meanwhile, or the deadline: this lifecycle ends
                // here, wherever the engine left it.
                _ => return true,
            }
        }
        if !paid {
            return true;
        }
        for (verb, body) in [
            ("ship", json!({"tracking_number": format!("T-{n}")})),
            ("deliver", json!({})),
        ] {
            let path = format!("/v1/orders/{id}/{verb}");
            if self
                .step(verb, path, &format!("rel-{n}-{verb}"), &body)
                .await
                .is_none()
            {
                return false;
            }
        }
        true
    }

    /// Sends one command until it is acknowledged (journaled), refused for good, or the
    /// deadline passes.
    async fn step(
        &self,
        verb: &'static str,
        path: String,
        key: &str,
        body: &Value,
    ) -> Option<Value> {
        while Instant::now() < self.deadline {
            match self.send(&path, key, body).await {
                Try::Acked(view) => {
                    self.journal.ack(Ack {
                        order_id: view["order_id"].as_str().unwrap_or_default().to_string(),
                        step: verb,
                        status: view["status"].as_str().unwrap_or_default().to_string(),
                        version: view["version"].as_u64().unwrap_or(0),
                    });
                    return Some(view);
                }
                Try::Again => tokio::time::sleep(Duration::from_millis(50)).await,
                Try::Refused(409, code)
                    if code == "payment_in_flight" || code == "illegal_transition" =>
                {
                    // The command's effect may already be there (a payment being resolved by
                    // a query after a crash, or applied by a try whose answer was lost): read
                    // the order and go on once it is past this step.
                    let id = path.split('/').nth(3).unwrap_or_default();
                    match self.read(id).await {
                        Some(view) if past(verb, view["status"].as_str().unwrap_or_default()) => {
                            return Some(view)
                        }
                        Some(view) if view["status"] == "pending_payment" && verb == "pay" => {
                            // The payment failed; pay again (a new attempt, a new key).
                            return Box::pin(self.step(
                                verb,
                                path.clone(),
                                &format!("{key}+"),
                                body,
                            ))
                            .await;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                Try::Refused(_, _) => return None,
            }
        }
        None
    }

    /// Waits while the order is `payment_processing` (bounded by the deadline); its status
    /// then.
    async fn resolved(&self, id: &str, mut view: Value) -> Option<String> {
        while Instant::now() < self.deadline {
            let status = view["status"].as_str().unwrap_or_default().to_string();
            if status != "payment_processing" {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(fresh) = self.read(id).await {
                view = fresh;
            }
        }
        None
    }

    /// The order's view, if it answers.
    async fn read(&self, id: &str) -> Option<Value> {
        let url = format!("{}/v1/orders/{id}", self.target.base());
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    async fn send(&self, path: &str, key: &str, body: &Value) -> Try {
        let url = format!("{}{path}", self.target.base());
        let answer = self
            .http
            .post(url)
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        let response = match answer {
            Ok(response) => response,
            Err(error) => {
                self.journal.count(
                    if error.is_timeout() {
                        "timeout"
                    } else {
                        "connection"
                    }
                    .into(),
                );
                return Try::Again;
            }
        };
        let status = response.status().as_u16();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Try::Acked(value);
        }
        let code = value["error"]["code"]
            .as_str()
            .unwrap_or("no_code")
            .to_string();
        self.journal.count(format!("{status} {code}"));
        match (status, code.as_str()) {
            (429, _) | (503, _) | (409, "idempotency_key_in_flight") => Try::Again,
            _ => Try::Refused(status, code),
        }
    }
}
