//! The `orderly` binary: parse the command line, start logging, run.

use clap::Parser;

// mimalloc: the engine allocates many small, short-lived objects across arbiter threads;
// glibc malloc spent ~25% of CPU in arena locks and consolidation in the demo profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use orderly::cli::{demo, inspect, serve, Cli, CliCommand};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORDERLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let system = actix_rt::System::new();
    system.block_on(async move {
        match cli.command {
            CliCommand::Serve(args) => serve::run(args).await,
            CliCommand::Demo(args) => {
                let json = args.json;
                let report = demo::run(args).await?;
                demo::print_human(&report, json);
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                }
                Ok(())
            }
            CliCommand::Inspect(args) => inspect::run(args).await,
        }
    })
}
