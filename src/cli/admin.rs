//! `orderly admin …`: maintenance of a store. `reindex` rebuilds every shard's timer index from the snapshots (see [`crate::store::reindex`]).

use anyhow::Context;

use super::CommonArgs;
use crate::store::LeaseOwner;

/// Arguments of `admin`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Maintenance tasks.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Rebuild every shard's timer index (timers and payment checks) from the stored snapshots, with a
    /// bounded scan. Run it with every engine on the store stopped: it takes the shard leases
    /// itself and refuses to start while another node holds one.
    Reindex(ReindexArgs),
}

/// Arguments of `admin reindex`.
#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    /// Snapshots read per scan page (and written per fenced batch).
    #[arg(long, default_value_t = 1000)]
    pub page: usize,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `admin`.
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Reindex(args) => reindex(args).await,
    }
}

async fn reindex(args: ReindexArgs) -> anyhow::Result<()> {
    let settings = args.common.settings()?;
    let store = crate::store::open(&settings)
        .await
        .context("opening the store")?;
    let owner = LeaseOwner {
        node_id: format!("admin-reindex@{}", settings.cluster.effective_node_id()).into(),
        ttl_ms: settings.cluster.lease_ttl_ms,
    };
    let started = std::time::Instant::now();
    let report = crate::store::reindex::reindex(
        &*store,
        settings.engine.shards,
        &owner,
        args.page.clamp(1, 10_000),
    )
    .await?;
    let mut json = serde_json::to_value(&report)?;
    json["seconds"] = serde_json::json!(started.elapsed().as_secs_f64());
    println!("{json}");
    Ok(())
}
