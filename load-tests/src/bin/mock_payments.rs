//! `mock_payments`: a small, real payment service over HTTP for testing Orderly's `http`
//! gateway. It records every charge by idempotency key (a key is charged at most once; a
//! repeated key is answered from the record and counted as a refused duplicate), answers status
//! queries, reverses (voids) keys, refunds up to the captured amount, injects the faults of the
//! simulated gateways (latency, hard/soft declines, throttling before processing, charges taken
//! whose answer hangs, 5xx, late captures, and a captured-amount skew), and exposes its books.
//!
//! Endpoints (JSON; `Authorization: Bearer <key>` when started with `--api-key`):
//! - `POST /v1/charges` (`Idempotency-Key` header; `{order_id, amount_minor, currency, method}`)
//! - `GET /v1/charges/{key}`, `POST /v1/charges/{key}/reverse`
//! - `POST /v1/refunds` (`Idempotency-Key` header; `{charge_key, amount_minor, currency}`)
//! - `GET /v1/stats`: counters (`charges`, `duplicates_refused`, `refunds`, `reversals`,
//!   `double_charges`, ...); `GET /v1/charges`: every record
//! - `GET /v1/faults`, `POST /v1/faults` (`{"profile": "flaky"}` or the fault fields)
//!
//! Run: `cargo run -p orderly-load --bin mock_payments -- --listen 127.0.0.1:9090
//! --fault-profile flaky`; it prints `listening on http://ADDR` once bound. Tests start it
//! in-process with [`spawn`].

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Faults the service injects. Rates are probabilities per request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fixed part of every answer's latency.
    pub latency_base_ms: u64,
    /// Uniform extra latency in `[0, jitter]`.
    pub latency_jitter_ms: u64,
    /// Probability of a slow answer.
    pub latency_tail_rate: f64,
    /// Extra latency of a slow answer.
    pub latency_tail_ms: u64,
    /// Charges declined for good.
    pub decline_hard_rate: f64,
    /// Charges declined for a reason the customer may fix.
    pub decline_soft_rate: f64,
    /// Requests refused before processing (HTTP 429): never sent, as far as money goes.
    pub not_sent_rate: f64,
    /// Charges taken whose answer hangs for `hang_ms`.
    pub timeout_rate: f64,
    /// Requests answered 503 (a charge is taken in half of the cases).
    pub server_error_rate: f64,
    /// Charges accepted as pending that capture after `late_ms`.
    pub late_success_rate: f64,
    /// How long a timed-out charge hangs.
    pub hang_ms: u64,
    /// How long a late capture stays pending.
    pub late_ms: u64,
    /// Added to every captured amount (a gateway capturing the wrong amount).
    pub amount_skew_minor: i64,
}

impl Faults {
    /// The named profiles shared with Orderly's simulated gateways.
    pub fn profile(name: &str) -> Option<Faults> {
        match name {
            "healthy" => Some(Faults::default()),
            "flaky" => Some(Faults {
                latency_base_ms: 1,
                latency_jitter_ms: 9,
                latency_tail_rate: 0.02,
                latency_tail_ms: 100,
                decline_hard_rate: 0.01,
                decline_soft_rate: 0.03,
                not_sent_rate: 0.03,
                timeout_rate: 0.005,
                server_error_rate: 0.005,
                late_success_rate: 0.005,
                hang_ms: 2500,
                late_ms: 300,
                amount_skew_minor: 0,
            }),
            "outage" => Some(Faults {
                latency_base_ms: 1,
                not_sent_rate: 0.9,
                server_error_rate: 0.1,
                ..Faults::default()
            }),
            "slow" => Some(Faults {
                latency_base_ms: 150,
                latency_jitter_ms: 300,
                latency_tail_rate: 0.02,
                latency_tail_ms: 1500,
                ..Faults::default()
            }),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Status {
    Captured,
    Pending { lands_at: Instant },
    Declined { hard: bool, reason: String },
    Voided,
}

#[derive(Debug, Clone)]
struct Charge {
    order_id: String,
    amount_minor: i64,
    currency: String,
    status: Status,
    refunded_minor: i64,
}

impl Charge {
    fn settle(&mut self, now: Instant) {
        if let Status::Pending { lands_at } = self.status {
            if now >= lands_at {
                self.status = Status::Captured;
            }
        }
    }

    fn body(&self) -> serde_json::Value {
        match &self.status {
            Status::Captured => json!({
                "status": "captured",
                "amount_minor": self.amount_minor,
                "currency": self.currency,
            }),
            Status::Pending { .. } => json!({ "status": "pending" }),
            Status::Declined { hard, reason } => {
                json!({ "status": "declined", "hard": hard, "reason": reason })
            }
            Status::Voided => json!({ "status": "voided" }),
        }
    }

    fn status_name(&self) -> &'static str {
        match self.status {
            Status::Captured => "captured",
            Status::Pending { .. } => "pending",
            Status::Declined { .. } => "declined",
            Status::Voided => "voided",
        }
    }
}

/// The service's counters, as `GET /v1/stats` returns them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Every request received.
    pub requests: u64,
    /// Charge requests received (including duplicates and faulted ones).
    pub charge_requests: u64,
    /// Distinct keys charged (captured or pending).
    pub charges: u64,
    /// Charge requests for a known key, answered from the record.
    pub duplicates_refused: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Keys voided.
    pub reversals: u64,
    /// Status queries.
    pub queries: u64,
    /// Charges declined.
    pub declined: u64,
    /// Requests answered 503.
    pub server_errors: u64,
    /// Requests refused before processing (429).
    pub throttled: u64,
    /// Charges whose answer hung.
    pub timeouts: u64,
    /// Orders with more than one captured, unreversed charge. Must be 0.
    pub double_charges: u64,
}

struct Books {
    charges: HashMap<String, Charge>,
    refunds: HashMap<String, i64>,
    stats: Stats,
    rng: u64,
}

impl Books {
    /// SplitMix64: a tiny, seedable generator (no dependency, reproducible runs).
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    fn latency(&mut self, faults: &Faults) -> Duration {
        let mut ms = faults.latency_base_ms;
        if faults.latency_jitter_ms > 0 {
            ms += self.next_u64() % (faults.latency_jitter_ms + 1);
        }
        if faults.latency_tail_rate > 0.0 && self.unit() < faults.latency_tail_rate {
            ms += faults.latency_tail_ms;
        }
        Duration::from_millis(ms)
    }

    fn double_charges(&mut self) -> u64 {
        let now = Instant::now();
        let mut per_order: HashMap<&str, u32> = HashMap::new();
        for charge in self.charges.values_mut() {
            charge.settle(now);
        }
        for charge in self.charges.values() {
            if charge.status == Status::Captured {
                *per_order.entry(charge.order_id.as_str()).or_default() += 1;
            }
        }
        per_order.values().filter(|n| **n > 1).count() as u64
    }
}

/// The shared state of a running mock.
pub struct MockPayments {
    books: Mutex<Books>,
    faults: Mutex<Faults>,
    api_key: Option<String>,
}

/// How to start the mock.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// Required bearer token (None: no auth).
    pub api_key: Option<String>,
    /// Faults to inject from the start.
    pub faults: Faults,
    /// Seed of the fault draws.
    pub seed: u64,
}

impl MockPayments {
    fn new(config: &MockConfig) -> MockPayments {
        MockPayments {
            books: Mutex::new(Books {
                charges: HashMap::new(),
                refunds: HashMap::new(),
                stats: Stats::default(),
                rng: config.seed,
            }),
            faults: Mutex::new(config.faults.clone()),
            api_key: config.api_key.clone(),
        }
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        // Every update under the lock is a single insert or field store, so a poisoned lock
        // still guards consistent books.
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn authorized(&self, request: &HttpRequest) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(key.as_str())
    }
}

fn error(status: u16, code: &str) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(json!({ "status": "error", "error": code }))
}

fn idempotency_key(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_string)
}

#[derive(Deserialize)]
struct ChargeBody {
    order_id: String,
    amount_minor: i64,
    currency: String,
    #[allow(dead_code)]
    #[serde(default)]
    method: String,
}

#[derive(Deserialize)]
struct RefundBody {
    charge_key: String,
    amount_minor: i64,
    currency: String,
}

/// What a request's fault draw decided before the books are touched.
enum Gate {
    Throttle,
    ServerError { processed: bool },
    Pass(f64),
}

fn gate(books: &mut Books, faults: &Faults) -> Gate {
    let draw = books.unit();
    if draw < faults.not_sent_rate {
        books.stats.throttled += 1;
        Gate::Throttle
    } else if draw < faults.not_sent_rate + faults.server_error_rate {
        books.stats.server_errors += 1;
        Gate::ServerError {
            processed: books.next_u64() & 1 == 0,
        }
    } else {
        Gate::Pass(books.unit())
    }
}

async fn charge(
    service: web::Data<MockPayments>,
    request: HttpRequest,
    body: web::Json<ChargeBody>,
) -> HttpResponse {
    if !service.authorized(&request) {
        return error(401, "unauthorized");
    }
    let Some(key) = idempotency_key(&request) else {
        return error(400, "missing_idempotency_key");
    };
    if body.amount_minor <= 0 {
        return error(422, "invalid_amount");
    }
    let faults = service.faults();
    let (answer, delay, hang) = {
        let mut books = service.books();
        books.stats.requests += 1;
        books.stats.charge_requests += 1;
        let delay = books.latency(&faults);
        let gate = gate(&mut books, &faults);
        if let Gate::Throttle = gate {
            return error(429, "throttled");
        }
        let now = Instant::now();
        if let Some(existing) = books.charges.get_mut(&key) {
            existing.settle(now);
            let answer = existing.body();
            books.stats.duplicates_refused += 1;
            (Ok(answer), delay, Duration::ZERO)
        } else {
            let draw = match gate {
                Gate::Pass(draw) => draw,
                _ => 1.0,
            };
            let mut record = Charge {
                order_id: body.order_id.clone(),
                amount_minor: body.amount_minor + faults.amount_skew_minor,
                currency: body.currency.clone(),
                status: Status::Captured,
                refunded_minor: 0,
            };
            let mut hang = Duration::ZERO;
            let hard_edge = faults.decline_hard_rate;
            let soft_edge = hard_edge + faults.decline_soft_rate;
            let timeout_edge = soft_edge + faults.timeout_rate;
            let late_edge = timeout_edge + faults.late_success_rate;
            if draw < soft_edge {
                let hard = draw < hard_edge;
                record.status = Status::Declined {
                    hard,
                    reason: if hard {
                        "card reported stolen".into()
                    } else {
                        "insufficient funds".into()
                    },
                };
                books.stats.declined += 1;
            } else if draw < timeout_edge {
                books.stats.timeouts += 1;
                hang = Duration::from_millis(faults.hang_ms);
            } else if draw < late_edge {
                record.status = Status::Pending {
                    lands_at: now + Duration::from_millis(faults.late_ms),
                };
            }
            let answer = match gate {
                Gate::ServerError { processed: false } => Err(503),
                Gate::ServerError { processed: true } | Gate::Pass(_) | Gate::Throttle => {
                    if !matches!(record.status, Status::Declined { .. }) {
                        books.stats.charges += 1;
                    }
                    let body = record.body();
                    books.charges.insert(key, record);
                    if matches!(gate, Gate::ServerError { .. }) {
                        Err(503)
                    } else {
                        Ok(body)
                    }
                }
            };
            (answer, delay, hang)
        }
    };
    // The charge is recorded before the answer is delayed: a client that gives up (or dies)
    // meanwhile must learn the outcome by querying.
    tokio::time::sleep(delay + hang).await;
    match answer {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(status) => error(status, "unavailable"),
    }
}

async fn query(
    service: web::Data<MockPayments>,
    request: HttpRequest,
    key: web::Path<String>,
) -> HttpResponse {
    if !service.authorized(&request) {
        return error(401, "unauthorized");
    }
    let faults = service.faults();
    let (answer, delay) = {
        let mut books = service.books();
        books.stats.requests += 1;
        books.stats.queries += 1;
        let delay = books.latency(&faults);
        let answer = match gate(&mut books, &faults) {
            Gate::Throttle => Err(429),
            Gate::ServerError { .. } => Err(503),
            Gate::Pass(_) => match books.charges.get_mut(key.as_str()) {
                Some(charge) => {
                    charge.settle(Instant::now());
                    Ok(charge.body())
                }
                None => Err(404),
            },
        };
        (answer, delay)
    };
    tokio::time::sleep(delay).await;
    match answer {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(404) => error(404, "not_found"),
        Err(status) => error(status, "unavailable"),
    }
}

async fn reverse(
    service: web::Data<MockPayments>,
    request: HttpRequest,
    key: web::Path<String>,
) -> HttpResponse {
    if !service.authorized(&request) {
        return error(401, "unauthorized");
    }
    let faults = service.faults();
    let (answer, delay) = {
        let mut books = service.books();
        books.stats.requests += 1;
        let delay = books.latency(&faults);
        let answer = match gate(&mut books, &faults) {
            Gate::Throttle => Err((429, String::new())),
            Gate::ServerError { .. } => Err((503, String::new())),
            Gate::Pass(_) => {
                let key = key.into_inner();
                let order_id = key.split(':').next().unwrap_or_default().to_string();
                let books = &mut *books;
                match books.charges.get_mut(&key) {
                    None => {
                        // Never arrived: block the key so a late arrival cannot charge it.
                        books.charges.insert(
                            key,
                            Charge {
                                order_id,
                                amount_minor: 0,
                                currency: String::new(),
                                status: Status::Voided,
                                refunded_minor: 0,
                            },
                        );
                        books.stats.reversals += 1;
                        Ok(())
                    }
                    Some(charge) => {
                        charge.settle(Instant::now());
                        match charge.status {
                            Status::Captured | Status::Pending { .. } => {
                                if charge.refunded_minor > 0 {
                                    Err((409, "charge already partly refunded".to_string()))
                                } else {
                                    charge.status = Status::Voided;
                                    books.stats.reversals += 1;
                                    Ok(())
                                }
                            }
                            Status::Declined { .. } | Status::Voided => Ok(()),
                        }
                    }
                }
            }
        };
        (answer, delay)
    };
    tokio::time::sleep(delay).await;
    match answer {
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "voided" })),
        Err((409, reason)) => {
            HttpResponse::Conflict().json(json!({ "status": "not_reversible", "reason": reason }))
        }
        Err((status, _)) => error(status, "unavailable"),
    }
}

async fn refund(
    service: web::Data<MockPayments>,
    request: HttpRequest,
    body: web::Json<RefundBody>,
) -> HttpResponse {
    if !service.authorized(&request) {
        return error(401, "unauthorized");
    }
    let Some(key) = idempotency_key(&request) else {
        return error(400, "missing_idempotency_key");
    };
    let faults = service.faults();
    let (answer, delay) = {
        let mut books = service.books();
        books.stats.requests += 1;
        let delay = books.latency(&faults);
        let answer = match gate(&mut books, &faults) {
            Gate::Throttle => Err(429),
            Gate::ServerError { .. } => Err(503),
            Gate::Pass(_) => {
                let books = &mut *books;
                if books.refunds.contains_key(&key) {
                    Ok(json!({ "status": "refunded" }))
                } else {
                    match books.charges.get_mut(&body.charge_key) {
                        None => Ok(json!({ "status": "refused", "reason": "no such charge" })),
                        Some(charge) => {
                            charge.settle(Instant::now());
                            if charge.status != Status::Captured {
                                Ok(
                                    json!({ "status": "refused", "reason": "charge is not captured" }),
                                )
                            } else if body.currency != charge.currency
                                || body.amount_minor <= 0
                                || charge.refunded_minor + body.amount_minor > charge.amount_minor
                            {
                                Ok(
                                    json!({ "status": "refused", "reason": "refund exceeds the captured amount" }),
                                )
                            } else {
                                charge.refunded_minor += body.amount_minor;
                                books.refunds.insert(key, body.amount_minor);
                                books.stats.refunds += 1;
                                Ok(json!({ "status": "refunded" }))
                            }
                        }
                    }
                }
            }
        };
        (answer, delay)
    };
    tokio::time::sleep(delay).await;
    match answer {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(status) => error(status, "unavailable"),
    }
}

async fn stats(service: web::Data<MockPayments>) -> HttpResponse {
    let mut books = service.books();
    let mut stats = books.stats;
    stats.double_charges = books.double_charges();
    HttpResponse::Ok().json(stats)
}

async fn list_charges(service: web::Data<MockPayments>) -> HttpResponse {
    let mut books = service.books();
    let now = Instant::now();
    let records: Vec<serde_json::Value> = books
        .charges
        .iter_mut()
        .map(|(key, charge)| {
            charge.settle(now);
            json!({
                "key": key,
                "order_id": charge.order_id,
                "status": charge.status_name(),
                "amount_minor": charge.amount_minor,
                "currency": charge.currency,
                "refunded_minor": charge.refunded_minor,
            })
        })
        .collect();
    HttpResponse::Ok().json(records)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FaultsBody {
    Profile { profile: String },
    Faults(Faults),
}

async fn set_faults(service: web::Data<MockPayments>, body: web::Json<FaultsBody>) -> HttpResponse {
    let faults = match body.into_inner() {
        FaultsBody::Profile { profile } => match Faults::profile(&profile) {
            Some(faults) => faults,
            None => return error(422, "unknown_profile"),
        },
        FaultsBody::Faults(faults) => faults,
    };
    *service.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults.clone();
    HttpResponse::Ok().json(faults)
}

async fn get_faults(service: web::Data<MockPayments>) -> HttpResponse {
    HttpResponse::Ok().json(service.faults())
}

/// Builds the HTTP server on an already bound listener; `signals`: stop on SIGTERM/ctrl-c.
fn server(
    listener: TcpListener,
    service: web::Data<MockPayments>,
    signals: bool,
) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(service.clone())
            .route("/v1/charges", web::post().to(charge))
            .route("/v1/charges", web::get().to(list_charges))
            .route("/v1/charges/{key}", web::get().to(query))
            .route("/v1/charges/{key}/reverse", web::post().to(reverse))
            .route("/v1/refunds", web::post().to(refund))
            .route("/v1/stats", web::get().to(stats))
            .route("/v1/faults", web::get().to(get_faults))
            .route("/v1/faults", web::post().to(set_faults))
            .route("/healthz", web::get().to(HttpResponse::Ok))
    })
    .workers(2);
    let server = if signals {
        server
    } else {
        server.disable_signals()
    };
    Ok(server.listen(listener)?.run())
}

/// A mock running on its own thread (tests include this file and use it; the binary does
/// not): stops when dropped.
#[allow(dead_code)]
pub struct RunningMock {
    /// The bound address.
    pub addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[allow(dead_code)]
impl RunningMock {
    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningMock {
    fn drop(&mut self) {
        // `stop` sends the command at once; its future only waits for completion, which the
        // join below does instead.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a mock on `127.0.0.1:0` on a background thread with its own actix system.
#[allow(dead_code)]
pub fn spawn(config: MockConfig) -> std::io::Result<RunningMock> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let service = web::Data::new(MockPayments::new(&config));
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match server(listener, service, false) {
                Ok(server) => {
                    let _ = tx.send(Ok(server.handle()));
                    let _ = server.await;
                }
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            }
        });
    });
    let handle = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| std::io::Error::other(format!("mock did not start: {e}")))??;
    Ok(RunningMock {
        addr,
        handle,
        thread: Some(thread),
    })
}

/// Command line of the binary.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mock_payments",
    about = "A mock payment service for Orderly's http gateway"
)]
struct Args {
    /// Listen address (loopback; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// Required bearer token (none: no auth).
    #[arg(long)]
    api_key: Option<String>,
    /// Fault profile: healthy, flaky, outage, slow.
    #[arg(long, default_value = "healthy")]
    fault_profile: String,
    /// Seed of the fault draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    use anyhow::Context;
    use clap::Parser;
    let args = Args::parse();
    let faults = Faults::profile(&args.fault_profile)
        .with_context(|| format!("unknown fault profile {:?}", args.fault_profile))?;
    let listener =
        TcpListener::bind(&args.listen).with_context(|| format!("cannot bind {}", args.listen))?;
    let addr = listener.local_addr()?;
    let service = web::Data::new(MockPayments::new(&MockConfig {
        api_key: args.api_key,
        faults,
        seed: args.seed,
    }));
    actix_web::rt::System::new().block_on(async move {
        let server = server(listener, service, true)?;
        // Scripts read the bound address (port 0) from this line.
        println!("listening on http://{addr}");
        server.await.context("server failed")
    })
}
