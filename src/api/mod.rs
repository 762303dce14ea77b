//! The HTTP edge (actix-web), running in the same actix `System` as the engine.
//!
//! [`Application::build`] binds the listener and assembles the app; `orderly serve` and the
//! `tests/api` suite both start the server through it. Map of the module:
//! - `orders`: `POST /v1/orders`, `GET /v1/orders/{id}`, `POST /v1/orders/{id}/{pay|ship|
//!   deliver|cancel|refund}`, with `Idempotency-Key` handling (`idempotency`).
//! - `bulk`: `POST /v1/orders/bulk`, NDJSON streamed in and out with per-line results.
//! - `health`: `/healthz`, `/readyz`, `/metrics` (Prometheus) and the dashboard at `/`.
//! - `stats`: `/v1/stats`, the figures the dashboard draws, sampled once a second.
//! - `openapi`: `/openapi.json`, generated from the handlers.
//! - `body`: JSON body reading with stable error codes; `error`: the one error shape;
//!   `auth`: bearer keys; `middleware`: auth, error shape and HTTP metrics around every request.

mod auth;
mod body;
mod bulk;
pub mod error;
mod health;
mod idempotency;
mod middleware;
mod openapi;
mod orders;
mod schema;
mod stats;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;
pub use health::prometheus_handle;

use crate::config::ApiSettings;
use crate::engine::Engine;
use auth::ApiKeys;
use idempotency::InFlight;

/// Seconds the server waits for in-flight requests on shutdown before closing connections.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;

/// Shared state of every worker.
pub(crate) struct ApiState {
    pub(crate) engine: Engine,
    pub(crate) settings: ApiSettings,
    pub(crate) keys: ApiKeys,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) stats: Arc<stats::Stats>,
}

/// Why the HTTP edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address does not resolve.
    #[error("cannot resolve listen address `{address}`: {source}")]
    Resolve {
        /// The configured address.
        address: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Without API keys only loopback addresses are allowed.
    #[error(
        "refusing to listen on `{0}` without [api] keys: set keys or listen on a loopback address"
    )]
    InsecureListen(String),
    /// The address could not be bound.
    #[error("cannot listen on `{address}`: {source}")]
    Bind {
        /// The configured address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A bound, not yet running HTTP server (zero2prod style: build, read the port, run).
pub struct Application {
    address: SocketAddr,
    server: Server,
}

fn no_keys(settings: &ApiSettings) -> bool {
    settings.keys.iter().all(|k| k.is_empty())
}

impl Application {
    /// Binds `settings.listen` (port 0 picks a free port) and assembles the app around
    /// `engine`. Refuses a non-loopback address when no API keys are configured.
    pub fn build(settings: &ApiSettings, engine: Engine) -> Result<Application, StartError> {
        let resolve_error = |source| StartError::Resolve {
            address: settings.listen.clone(),
            source,
        };
        let addresses: Vec<SocketAddr> = settings
            .listen
            .to_socket_addrs()
            .map_err(resolve_error)?
            .collect();
        if addresses.is_empty() {
            return Err(resolve_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no addresses",
            )));
        }
        if no_keys(settings) && addresses.iter().any(|a| !a.ip().is_loopback()) {
            return Err(StartError::InsecureListen(settings.listen.clone()));
        }
        let bind_error = |source| StartError::Bind {
            address: settings.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&addresses[..]).map_err(bind_error)?;
        let address = listener.local_addr().map_err(bind_error)?;
        let metrics = prometheus_handle();
        let stats = stats::Stats::start(
            metrics.clone(),
            Arc::clone(engine.store()),
            engine.node_id().to_string(),
        );
        let state = web::Data::new(ApiState {
            engine,
            settings: settings.clone(),
            keys: ApiKeys::new(&settings.keys, settings.public_health),
            in_flight: Arc::new(InFlight::default()),
            metrics,
            stats,
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(actix_web::middleware::from_fn(middleware::edge))
                .service(orders::place_order)
                .service(bulk::bulk_place)
                .service(orders::get_order)
                .service(orders::pay_order)
                .service(orders::ship_order)
                .service(orders::deliver_order)
                .service(orders::cancel_order)
                .service(orders::refund_order)
                .service(health::healthz)
                .service(health::readyz)
                .service(health::metrics)
                .service(health::dashboard)
                .service(stats::get_stats)
                .service(openapi::openapi_json)
                .default_service(web::to(route_not_found))
        })
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECONDS);
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let server = server.listen(listener).map_err(bind_error)?.run();
        Ok(Application { address, server })
    }

    /// The bound address (with the real port when the configured one was 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// A handle that stops the server (tests; `serve` stops on SIGTERM/ctrl-c by itself).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (SIGTERM, ctrl-c, or [`Application::handle`]);
    /// in-flight requests get [`SHUTDOWN_TIMEOUT_SECONDS`] to finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// A path no route matches is `404 not_found`; a known path with a method it does not answer is
/// `405 method_not_allowed` with `Allow`.
async fn route_not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    match middleware::allowed_methods(middleware::route_label(req.path())) {
        Some(allow) => Err(ApiError::MethodNotAllowed { allow }),
        None => Err(ApiError::RouteNotFound),
    }
}
