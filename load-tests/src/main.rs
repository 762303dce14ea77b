//! `orderly-load`: parse the command line, run the load, print the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use orderly_load::runner::{self, RunConfig};
use orderly_load::scenario::Scenario;
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
    /// Arrivals per second (each arrival runs the scenario's steps once).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the schedule, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Scenario file (see load-tests/scenarios/).
    #[arg(long, default_value = "load-tests/scenarios/place.toml")]
    scenario: PathBuf,
    /// Most arrivals outstanding at once; an arrival due beyond it is counted as dropped.
    #[arg(long, default_value_t = 1024)]
    max_in_flight: usize,
    /// Timeout of each request, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Bearer token for Orderly's write endpoints.
    #[arg(long, env = "ORDERLY_LOAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Also print the report as one JSON object on the last stdout line.
    #[arg(long)]
    json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Parses `250ms`, `30s`, `2m`, `1h` (an integer and a unit).
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .with_context(|| format!("{text:?}: add a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .with_context(|| format!("{text:?}: expected a whole number before the unit"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => bail!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)"),
    };
    let millis = value
        .checked_mul(millis_per_unit)
        .with_context(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_millis(millis))
}

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
    let scenario = Scenario::load(&args.scenario)?;
    let report = runner::run(RunConfig {
        target,
        scenario,
        rate_per_sec: args.rate,
        duration: args.duration,
        max_in_flight: args.max_in_flight,
        request_timeout: args.timeout,
        api_key: args.api_key,
        progress: !args.quiet,
    })
    .await?;
    print!("{}", report.human());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["30", "s", "3.5s", "10 s", "5d", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
