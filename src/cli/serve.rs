//! `orderly serve`: the engine and its HTTP edge in one actix `System`, until SIGTERM/ctrl-c.

use anyhow::Context;

use super::CommonArgs;
use crate::api::{self, Application};
use crate::engine::Engine;

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Listen address (`127.0.0.1:8080`; port 0 picks a free port); overrides `[api] listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `serve`: opens the store, starts the engine and the HTTP server, and on shutdown (the
/// server handles SIGTERM and ctrl-c, finishing in-flight requests) stops the engine.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut settings = args.common.settings()?;
    if let Some(listen) = args.listen {
        settings.api.listen = listen;
    }
    // Install the recorder before the engine starts, so its first metrics are kept.
    if api::prometheus_handle().is_none() {
        tracing::warn!("metrics recorder unavailable; /metrics will answer 503");
    }
    let store = crate::store::open(&settings)
        .await
        .with_context(|| format!("opening the store {}", settings.store.url))?;
    let engine = Engine::start(&settings, store);
    let app = match Application::build(&settings.api, engine.clone()) {
        Ok(app) => app,
        Err(error) => {
            engine.stop();
            return Err(error.into());
        }
    };
    tracing::info!(
        address = %app.address(),
        store = engine.store_kind(),
        shards = engine.shard_count(),
        "listening"
    );
    // Scripts and tests read the bound address (port 0) from this line.
    eprintln!("listening on http://{}", app.address());
    let served = app.run_until_stopped().await;
    tracing::info!("HTTP server stopped; stopping the engine");
    engine.stop();
    served.context("HTTP server failed")
}
