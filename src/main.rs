//! The `orderly` binary: parse the command line, start logging, run.

use clap::Parser;

// mimalloc: the engine allocates many small, short-lived objects across arbiter threads;
// glibc malloc spent ~25% of CPU in arena locks and consolidation in the demo profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use orderly::cli::{admin, demo, events, inspect, serve, Cli, CliCommand, LogFormat};

/// mimalloc's `mi_option_purge_delay` (see its `mimalloc.h`; the Rust bindings name no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long freed memory stays mapped before mimalloc returns it to the OS.
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line naming the cause chain, whatever RUST_BACKTRACE says: a bad setting is
            // a message for the operator, not a crash report. Exit 2 for settings (like a
            // usage error), 1 for everything else.
            eprintln!("orderly: error: {error:#}");
            let settings = error.chain().any(|cause| {
                cause
                    .downcast_ref::<orderly::config::ConfigError>()
                    .is_some()
            });
            std::process::ExitCode::from(if settings { 2 } else { 1 })
        }
    }
}

fn run() -> anyhow::Result<()> {
    // Hand freed pages back to the OS only after they stayed unused for a second. mimalloc's
    // default (10 ms) re-faulted pages the engine's churn reuses at once (zeroing 2 MiB huge
    // pages, on a VM each a host fault too: a quarter of the demo's CPU profile); never
    // purging kept every burst's high-water mark for good (a 12-minute soak at a steady 500
    // lifecycles/s grew from 59 to 74 MB through stalls that piled up connections and
    // buffers). A second keeps the steady-state reuse and returns what a burst left behind:
    // `orderly demo --orders 200000` costs the same CPU either way (median ratio 1.01 over 5
    // pairs). `MIMALLOC_PURGE_DELAY` still overrides this.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc reads it on each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
    let cli = Cli::parse();
    // `serve` tells operators what it does (start, stop, breaker and lease changes) at INFO;
    // the one-shot commands print their own reports and log only problems. Per-order events
    // are DEBUG, and order contents are never logged above it.
    let default_level = match cli.command {
        CliCommand::Serve(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        // One JSON object per line, with the span stack, for log pipelines.
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
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
            CliCommand::Events(args) => events::run(args).await,
            CliCommand::Admin(args) => admin::run(args).await,
        }
    })
}
