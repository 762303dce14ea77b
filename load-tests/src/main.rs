//! `orderly-load`: the outside load client for Orderly. It speaks only Orderly's public
//! protocols (HTTP JSON/NDJSON, Redis Streams) and depends on none of its internals.
//!
//! Orderly's HTTP edge is not released yet, so there is nothing outside the process to drive;
//! until then in-process load comes from `orderly demo` (see the README). This binary says so
//! instead of pretending to measure anything.

use clap::Parser;

/// Command line of the load client.
#[derive(Debug, Parser)]
#[command(
    name = "orderly-load",
    version,
    about = "Open-model load generator for Orderly (HTTP edge pending)"
)]
struct Args {
    /// Base URL of a running `orderly serve` (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "orderly-load cannot drive {} yet: Orderly's HTTP edge (`orderly serve`) is not released; \
         use `cargo run --release -- demo` for in-process load",
        args.target
    )
}
