//! `orderly inspect <order-id>`: load one order's snapshot from the store and print it.

use anyhow::{anyhow, Context};

use super::CommonArgs;
use crate::domain::OrderId;
use crate::store::snapshot;
use crate::wire::OrderView;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The order id (UUID).
    pub order_id: String,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs `inspect`.
pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let settings = args.common.settings()?;
    let order_id = OrderId::parse(&args.order_id)
        .ok_or_else(|| anyhow!("`{}` is not an order id", args.order_id))?;
    let store = crate::store::open(&settings)
        .await
        .context("opening the store")?;
    let shard = (order_id.route_hash() % u64::from(settings.engine.shards)) as u32;
    let bytes = store
        .load(shard, order_id)
        .await
        .context("loading the snapshot")?
        .ok_or_else(|| anyhow!("order {order_id} not found in {}", store.kind()))?;
    let order = snapshot::decode(&bytes).context("decoding the snapshot")?;
    println!(
        "{}",
        serde_json::to_string_pretty(&OrderView::from(&order))?
    );
    Ok(())
}
