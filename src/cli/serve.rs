//! `orderly serve`: the engine and its HTTP edge in one actix `System`, until SIGTERM/ctrl-c.

use anyhow::Context;

use super::CommonArgs;
use crate::api;
use crate::config::Settings;
use crate::engine::Engine;
use crate::ingest::{IngestHandle, StreamConsumer};

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
    let orderly = crate::app::Orderly::start(settings.clone())
        .await
        .with_context(|| format!("opening the store {}", settings.store.url))?;
    let engine = orderly.engine.clone();
    let app = match orderly.http() {
        Ok(app) => app,
        Err(error) => {
            orderly.shutdown().await;
            return Err(error.into());
        }
    };
    tracing::info!(
        address = %app.address(),
        store = engine.store_kind(),
        shards = engine.shard_count(),
        "listening"
    );
    let ingest = match start_ingest(&settings, &engine).await {
        Ok(ingest) => ingest,
        Err(error) => {
            orderly.shutdown().await;
            return Err(error);
        }
    };
    // Scripts and tests read the bound address (port 0) from this line.
    eprintln!("listening on http://{}", app.address());
    let served = app.run_until_stopped().await;
    if let Some(ingest) = ingest {
        // Finish and acknowledge the batch in hand while the engine can still answer it.
        match ingest.stop().await {
            Ok(stats) => tracing::info!(?stats, "stream ingestion stopped"),
            Err(error) => tracing::warn!(%error, "stream ingestion did not stop cleanly"),
        }
    }
    tracing::info!("HTTP server stopped; releasing shard leases and stopping the engine");
    orderly.shutdown().await;
    served.context("HTTP server failed")
}

/// Starts the Redis Stream consumer when `[ingest] enabled`, on `ingest.url` or, when that is
/// empty, the store's URL.
async fn start_ingest(
    settings: &Settings,
    engine: &Engine,
) -> anyhow::Result<Option<IngestHandle>> {
    if !settings.ingest.enabled {
        return Ok(None);
    }
    let url = if settings.ingest.url.is_empty() {
        &settings.store.url
    } else {
        &settings.ingest.url
    };
    if !url.starts_with("redis://") {
        anyhow::bail!(
            "`ingest.enabled` needs a Redis stream: set `ingest.url` (the store is `{}`)",
            settings.store.url
        );
    }
    let handle = StreamConsumer::start(engine.clone(), &settings.ingest, url).await?;
    Ok(Some(handle))
}
