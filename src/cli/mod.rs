//! The `orderly` command line: `serve` runs the engine behind its HTTP edge; `demo` runs orders
//! through their whole lifecycle in-process and reports throughput and latency; `inspect` prints
//! one stored order; `events` prints the outbox as NDJSON; `admin reindex` rebuilds a store's
//! indexes.

pub mod admin;
pub mod demo;
pub mod events;
pub mod inspect;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings};

/// Orderly: an actor-based, high-throughput order engine.
#[derive(Debug, Parser)]
#[command(name = "orderly", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
    /// Log lines on stderr: `human` (default) or `json` (one object per line, with spans).
    /// The level comes from `ORDERLY_LOG` (an env-filter, e.g. `info,orderly=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// JSON objects, one per line.
    Json,
}

/// Options every subcommand shares.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// A TOML file layered over the embedded defaults (e.g. config/production.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `memory` or a `redis://host:port/db` URL; overrides the config.
    #[arg(long, value_name = "memory|redis://…")]
    pub store: Option<String>,
    /// Logical shards; overrides the config.
    #[arg(long)]
    pub shards: Option<u32>,
    /// This node's id in shard leases (`[cluster] node_id`; default the host name).
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
}

impl CommonArgs {
    /// Loads settings: defaults, file, `ORDERLY__…` environment, then these flags.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let mut settings = Settings::load(self.config.as_deref(), std::env::vars())?;
        if let Some(store) = &self.store {
            settings.store.url = store.clone();
        }
        if let Some(shards) = self.shards {
            settings.engine.shards = shards;
        }
        if let Some(node_id) = &self.node_id {
            settings.cluster.node_id = node_id.clone();
        }
        // The flags are settings too: check them by the same rules as the files.
        settings.validate()?;
        Ok(settings)
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Serve the HTTP API (orders, bulk NDJSON, health, metrics) until SIGTERM/ctrl-c.
    Serve(serve::ServeArgs),
    /// Run N orders through place → pay → ship → deliver in-process and report.
    Demo(demo::DemoArgs),
    /// Print one stored order as JSON.
    Inspect(inspect::InspectArgs),
    /// Print the outbox events as NDJSON (`--follow` to keep printing new ones).
    Events(events::EventsArgs),
    /// Store maintenance (`admin reindex`: rebuild the timer and payments indexes).
    Admin(admin::AdminArgs),
}
