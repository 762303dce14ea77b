//! `orderly-load`: parse the command line, run the load, print the report.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use orderly_load::output;
use orderly_load::report::Report;
use orderly_load::runner::{self, RunConfig};
use orderly_load::scenario::parse_duration;
use orderly_load::target::Target;

/// Open-model (constant arrival rate) load generator for Orderly's HTTP API.
#[derive(Debug, Parser)]
#[command(name = "orderly-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Send load at a fixed arrival rate and report latencies corrected for coordinated
    /// omission.
    Run(RunArgs),
    /// Step the arrival rate up until p99, errors or dropped arrivals fail, and report the
    /// highest sustainable rate.
    Knee(orderly_load::knee::KneeArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Base URL of a running `orderly serve`; loopback addresses only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Arrivals per second (each arrival runs the scenario's steps once); default 1000. With a
    /// ramp (`[[stages]]`), every stage is scaled so that the highest runs at this rate
    /// (default: the stages as written).
    #[arg(long)]
    rate: Option<u64>,
    /// Length of the schedule, e.g. `30s`, `500ms`, `2m`; default 10s. Not with a ramp (its
    /// stages say how long they last).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Scenario: a file, or the name of one in load-tests/scenarios/ (e.g. `lifecycle`).
    #[arg(long, default_value = "place")]
    scenario: String,
    /// Most arrivals outstanding at once; an arrival due beyond it is counted as dropped.
    /// Default: the scenario's `max_in_flight`, else 1024.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Timeout of each request, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Bearer token for Orderly's write endpoints.
    #[arg(long, env = "ORDERLY_LOAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The Redis of the server's ingest stream and outbox, for a `stream` scenario
    /// (`redis://127.0.0.1:PORT/DB`; loopback only).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Also print the report as one JSON object on the last stdout line.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr (it is also off when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
    /// Base URL of the mock payment service (`mock_payments`) behind the server's HTTP
    /// gateway; loopback only. Its `/v1/stats` counters are read before and after the run and
    /// their differences reported (`payments`).
    #[arg(long, value_name = "URL")]
    mock_payments: Option<String>,
    /// Bearer token of the mock payment service (if started with `--api-key`).
    #[arg(long, env = "ORDERLY_LOAD_MOCK_API_KEY", hide_env_values = true)]
    mock_api_key: Option<String>,
    /// Write the full report (with the server's counters and the time series) as JSON here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write a human summary in Markdown here.
    #[arg(long, value_name = "FILE")]
    report_md: Option<PathBuf>,
    /// Write an SVG plot of throughput and p50/p99 over time here.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write the latency distribution in HdrHistogram's percentile-distribution format here.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Which latency goes to `--hgrm`: a request kind (`place`, `pay`, …), `flow`, or
    /// `flow:<name>`; default `flow` for multi-step scenarios, else the only kind.
    #[arg(long, value_name = "KIND")]
    hgrm_kind: Option<String>,
}

/// `--max-in-flight` when neither the command line nor the scenario sets it.
const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole cause chain; a backtrace would only hide the reason.
            eprintln!("orderly-load: {error:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        CliCommand::Run(args) => args,
        CliCommand::Knee(args) => return orderly_load::knee::main(args).await,
    };
    let target = Target::parse(&args.target)?;
    let scenario = orderly_load::knee::resolve_scenario(&args.scenario)?;
    if !scenario.stages.is_empty() && args.duration.is_some() {
        bail!(
            "scenario {} has [[stages]], which say how long it runs: drop --duration",
            scenario.name
        );
    }
    // With a ramp and no --rate, the stages run as written (their highest rate is the peak).
    let rate = match args.rate {
        Some(rate) => rate,
        None => scenario
            .stages
            .iter()
            .map(|s| s.rate_per_sec)
            .max()
            .unwrap_or(1000),
    };
    let mock = args
        .mock_payments
        .as_deref()
        .map(Target::parse)
        .transpose()
        .context("--mock-payments")?;
    let before = match &mock {
        Some(mock) => {
            Some(orderly_load::payments::stats(mock, args.mock_api_key.as_deref()).await?)
        }
        None => None,
    };
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let scenario_max_in_flight = scenario.max_in_flight;
    let report = runner::run(RunConfig {
        target,
        scenario,
        rate_per_sec: rate,
        duration: args.duration.unwrap_or(Duration::from_secs(10)),
        max_in_flight: args
            .max_in_flight
            .or(scenario_max_in_flight)
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT),
        request_timeout: args.timeout,
        api_key: args.api_key,
        progress,
        redis: args.redis,
    })
    .await?;
    let mut report = report;
    if let (Some(mock), Some(before)) = (&mock, &before) {
        let after = orderly_load::payments::stats(mock, args.mock_api_key.as_deref()).await?;
        report.payments = Some(orderly_load::payments::PaymentCounters::between(
            before, &after,
        ));
    }
    print!("{}", report.human());
    if let Some(path) = &args.report {
        write(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.report_md {
        write(path, &output::markdown(&report))?;
    }
    if let Some(path) = &args.plot {
        write(path, &output::svg(&report))?;
    }
    if let Some(path) = &args.hgrm {
        write(path, &hgrm(&report, args.hgrm_kind.as_deref())?)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// The `--hgrm` text of the chosen latency.
fn hgrm(report: &Report, kind: Option<&str>) -> anyhow::Result<String> {
    let kind = match kind {
        Some(kind) => kind.to_string(),
        None if report.histograms.contains_key("flow") => "flow".to_string(),
        None => report
            .histograms
            .keys()
            .next()
            .cloned()
            .context("the report has no latencies")?,
    };
    let histogram = report.histograms.get(&kind).with_context(|| {
        let known: Vec<&str> = report.histograms.keys().map(String::as_str).collect();
        format!(
            "--hgrm-kind {kind:?}: not in this run (one of {})",
            known.join(", ")
        )
    })?;
    Ok(output::hgrm(histogram))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
