//! The knee finder (`orderly-load knee`): steps the open-model arrival rate up from a start
//! rate by a fixed step, holding each step for a fixed time, and stops at the first step that
//! is not sustainable: the p99 of the scenario's flow passes the bound, the error rate passes
//! its maximum, or arrivals were dropped (the runner could not start them at their intended
//! time within `--max-in-flight`). The highest sustainable rate is the last passing step.
//!
//! Each step is one ordinary [`runner::run`], so every step's latencies are corrected for
//! coordinated omission exactly like `orderly-load run`. The report is a table of steps, one
//! JSON object, and an SVG plot drawn here (no external program).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::report::{Report, FLOW_KIND};
use crate::runner::{self, RunConfig};
use crate::scenario::Scenario;
use crate::schedule::{DURATION_MAX, RATE_MAX_PER_SEC};
use crate::target::Target;

/// Most steps a knee search may take (keeps it bounded whatever the arguments).
pub const MAX_STEPS_MAX: u32 = 1_000;

/// Command-line arguments of `orderly-load knee`.
#[derive(Debug, Clone, clap::Args)]
pub struct KneeArgs {
    /// Scenario: a file, or the name of one in load-tests/scenarios/ (e.g. `place`).
    #[arg(long)]
    pub scenario: String,
    /// The p99 bound in milliseconds, of the scenario's flow (of its only request kind for a
    /// one-step scenario). A step whose p99 passes it is not sustainable.
    #[arg(long = "p99-ms", allow_negative_numbers = true)]
    pub p99_ms: f64,
    /// Arrival rate of the first step (arrivals per second).
    #[arg(long, default_value_t = 100)]
    pub start_rate: u64,
    /// Arrivals per second added at each step.
    #[arg(long, default_value_t = 100)]
    pub step: u64,
    /// How long each step is held, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub step_duration: Duration,
    /// Highest tolerated share of failed requests in a step (0 ..= 1).
    #[arg(long, default_value_t = 0.01)]
    pub error_rate_max: f64,
    /// Most steps to try before giving up without a knee.
    #[arg(long, default_value_t = 50)]
    pub max_steps: u32,
    /// Highest rate to try before giving up without a knee.
    #[arg(long, default_value_t = RATE_MAX_PER_SEC)]
    pub max_rate: u64,
    /// Base URL of a running `orderly serve`; loopback addresses only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Most arrivals outstanding at once; an arrival due beyond it is dropped (and fails the
    /// step). Default: the scenario's `max_in_flight`, else 1024.
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Timeout of each request, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Bearer token for Orderly's write endpoints.
    #[arg(long, env = "ORDERLY_LOAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The Redis of the server's ingest stream and outbox, for a `stream` scenario
    /// (`redis://127.0.0.1:PORT/DB`; loopback only).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Write the JSON report to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write an SVG plot (achieved rate and p99 per step, with the bound) to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

pub use crate::scenario::parse_duration;

/// The search's bounds and pass criteria.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KneeLimits {
    /// Rate of the first step.
    pub start_rate: u64,
    /// Rate added per step.
    pub step: u64,
    /// How long each step is held.
    pub step_duration: Duration,
    /// p99 bound in milliseconds.
    pub p99_ms: f64,
    /// Highest tolerated error rate (0 ..= 1).
    pub error_rate_max: f64,
    /// Most steps.
    pub max_steps: u32,
    /// Highest rate tried.
    pub max_rate: u64,
}

impl KneeLimits {
    /// Checks every bound; each message names its flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.p99_ms.is_finite() && self.p99_ms > 0.0) {
            bail!(
                "--p99-ms must be a positive number of milliseconds (got {})",
                self.p99_ms
            );
        }
        if self.step == 0 {
            bail!("--step must be at least 1 arrival per second (got 0)");
        }
        if self.start_rate == 0 || self.start_rate > RATE_MAX_PER_SEC {
            bail!(
                "--start-rate must be 1..={RATE_MAX_PER_SEC} per second (got {})",
                self.start_rate
            );
        }
        if self.max_rate < self.start_rate || self.max_rate > RATE_MAX_PER_SEC {
            bail!(
                "--max-rate must be at least --start-rate ({}) and at most {RATE_MAX_PER_SEC} (got {})",
                self.start_rate,
                self.max_rate
            );
        }
        if self.step_duration.is_zero() || self.step_duration > DURATION_MAX {
            bail!("--step-duration must be more than 0 and at most {DURATION_MAX:?}");
        }
        if !(0.0..=1.0).contains(&self.error_rate_max) {
            bail!(
                "--error-rate-max must be a share between 0 and 1 (got {})",
                self.error_rate_max
            );
        }
        if self.max_steps == 0 || self.max_steps > MAX_STEPS_MAX {
            bail!(
                "--max-steps must be 1..={MAX_STEPS_MAX} (got {})",
                self.max_steps
            );
        }
        Ok(())
    }

    /// The rates of the steps, in order, within `max_steps` and `max_rate`.
    pub fn rates(&self) -> impl Iterator<Item = u64> + '_ {
        (0..u64::from(self.max_steps))
            .map_while(move |i| {
                i.checked_mul(self.step)
                    .and_then(|d| d.checked_add(self.start_rate))
            })
            .take_while(move |&rate| rate <= self.max_rate)
    }
}

/// Why a step is not sustainable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// p99 above the bound.
    P99,
    /// Error rate above the maximum.
    Errors,
    /// Arrivals dropped: they could not be started at their intended time.
    Dropped,
    /// Arrivals still outstanding when the run stopped waiting for them.
    Unfinished,
    /// Not one arrival succeeded, so there is no latency to judge.
    NoAnswers,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::P99 => "p99",
            Failure::Errors => "errors",
            Failure::Dropped => "dropped",
            Failure::Unfinished => "unfinished",
            Failure::NoAnswers => "no_answers",
        }
    }
}

/// One step of the search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KneeStep {
    /// Offered arrival rate.
    pub rate_per_sec: u64,
    /// Arrivals started per second of the schedule.
    pub achieved_rate_per_sec: f64,
    /// Successful requests per second of the step (including its drain).
    pub ok_per_sec: f64,
    /// Median latency of the judged kind, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile of the judged kind, in milliseconds.
    pub p99_ms: f64,
    /// Failed requests over requests answered or failed.
    pub error_rate: f64,
    /// Requests answered or failed.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Arrivals dropped.
    pub dropped: u64,
    /// Arrivals unfinished.
    pub unfinished: u64,
    /// `pass` or `fail`.
    pub verdict: &'static str,
    /// What failed (empty when it passed).
    pub failures: Vec<Failure>,
}

impl KneeStep {
    /// Judges one run against the limits. `kind` is the latency kind that is judged.
    pub fn judge(report: &Report, kind: &str, limits: &KneeLimits) -> KneeStep {
        let latency = report.latency_ms.get(kind).copied();
        let (p50_ms, p99_ms, measured) = latency.map_or((0.0, 0.0, 0), |l| (l.p50, l.p99, l.count));
        let error_rate = if report.requests > 0 {
            report.error_count as f64 / report.requests as f64
        } else {
            0.0
        };
        let mut failures = Vec::new();
        if measured == 0 {
            failures.push(Failure::NoAnswers);
        } else if p99_ms > limits.p99_ms {
            failures.push(Failure::P99);
        }
        if error_rate > limits.error_rate_max {
            failures.push(Failure::Errors);
        }
        if report.dropped > 0 {
            failures.push(Failure::Dropped);
        }
        if report.unfinished > 0 {
            failures.push(Failure::Unfinished);
        }
        KneeStep {
            rate_per_sec: report.rate_per_sec,
            achieved_rate_per_sec: report.achieved_rate_per_sec,
            ok_per_sec: report.ok_per_sec,
            p50_ms,
            p99_ms,
            error_rate,
            requests: report.requests,
            errors: report.error_count,
            dropped: report.dropped,
            unfinished: report.unfinished,
            verdict: if failures.is_empty() { "pass" } else { "fail" },
            failures,
        }
    }

    /// Whether the step is sustainable.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The result of a knee search (`--json` prints it, `--report` writes it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KneeReport {
    /// Scenario name.
    pub scenario: String,
    /// Base URL.
    pub target: String,
    /// Latency kind judged against the bound (`flow`, or the only request kind).
    pub latency_kind: String,
    /// The p99 bound.
    pub p99_bound_ms: f64,
    /// The error-rate maximum.
    pub error_rate_max: f64,
    /// Rate of the first step.
    pub start_rate_per_sec: u64,
    /// Rate added per step.
    pub step_per_sec: u64,
    /// How long each step was held.
    pub step_duration_s: f64,
    /// The last passing step's rate; `null` when the first step already failed.
    pub sustainable_rate_per_sec: Option<u64>,
    /// The first failing step's rate; `null` when no step failed within the bounds.
    pub knee_rate_per_sec: Option<u64>,
    /// Why the search stopped: `knee` (a step failed) or `bounds` (`--max-steps` or
    /// `--max-rate` reached with every step passing).
    pub stopped_because: &'static str,
    /// Every step, in order.
    pub steps: Vec<KneeStep>,
}

impl KneeReport {
    /// The report as a human-readable table.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "orderly-load knee: scenario {} -> {}; {} p99 <= {} ms, error rate <= {}, no drops; \
             {}s per step",
            self.scenario,
            self.target,
            self.latency_kind,
            self.p99_bound_ms,
            self.error_rate_max,
            self.step_duration_s
        );
        let _ = writeln!(
            out,
            "{:>10} {:>12} {:>10} {:>10} {:>10} {:>9}  verdict",
            "rate/s", "achieved/s", "p50 ms", "p99 ms", "errors", "dropped"
        );
        for s in &self.steps {
            let reasons: Vec<&str> = s.failures.iter().map(|f| f.as_str()).collect();
            let verdict = if reasons.is_empty() {
                "pass".to_string()
            } else {
                format!("fail ({})", reasons.join(", "))
            };
            let _ = writeln!(
                out,
                "{:>10} {:>12.1} {:>10.3} {:>10.3} {:>9.2}% {:>9}  {}",
                s.rate_per_sec,
                s.achieved_rate_per_sec,
                s.p50_ms,
                s.p99_ms,
                s.error_rate * 100.0,
                s.dropped,
                verdict
            );
        }
        let _ = match (self.sustainable_rate_per_sec, self.knee_rate_per_sec) {
            (Some(rate), Some(knee)) => writeln!(
                out,
                "sustainable rate: {rate}/s (the next step, {knee}/s, failed)"
            ),
            (Some(rate), None) => writeln!(
                out,
                "sustainable rate: at least {rate}/s (every step passed; raise --max-steps or --max-rate)"
            ),
            (None, _) => writeln!(
                out,
                "sustainable rate: none (the first step, {}/s, already failed; lower --start-rate)",
                self.start_rate_per_sec
            ),
        };
        out
    }

    /// The SVG plot: achieved rate (left axis) and p99 (right axis) per step, the p99 bound as
    /// a dashed line, failing steps marked, the sustainable rate as a vertical line.
    pub fn svg(&self) -> String {
        const W: f64 = 800.0;
        const H: f64 = 450.0;
        const LEFT: f64 = 80.0;
        const RIGHT: f64 = 80.0;
        const TOP: f64 = 50.0;
        const BOTTOM: f64 = 60.0;
        let plot_w = W - LEFT - RIGHT;
        let plot_h = H - TOP - BOTTOM;
        let max_rate = self
            .steps
            .iter()
            .map(|s| (s.rate_per_sec as f64).max(s.achieved_rate_per_sec))
            .fold(1.0, f64::max);
        let max_p99 = self
            .steps
            .iter()
            .map(|s| s.p99_ms)
            .fold(self.p99_bound_ms * 1.5, f64::max);
        let x = |rate: f64| LEFT + plot_w * rate / max_rate;
        let y_rate = |rate: f64| TOP + plot_h * (1.0 - rate / max_rate);
        let y_p99 = |ms: f64| TOP + plot_h * (1.0 - ms / max_p99);

        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            svg,
            r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="25" text-anchor="middle" font-size="15">{}</text>"#,
            W / 2.0,
            xml_escape(&format!(
                "knee of {} -> {}: sustainable {}",
                self.scenario,
                self.target,
                self.sustainable_rate_per_sec
                    .map_or("none".to_string(), |r| format!("{r}/s"))
            ))
        );
        // Axes.
        let _ = writeln!(
            svg,
            r#"<g stroke="black" fill="none"><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}"/><line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}"/><line x1="{r}" y1="{TOP}" x2="{r}" y2="{b}"/></g>"#,
            b = TOP + plot_h,
            r = LEFT + plot_w
        );
        for i in 0..=4 {
            let f = f64::from(i) / 4.0;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="end" fill="steelblue">{:.0}</text>"#,
                LEFT - 6.0,
                y_rate(max_rate * f) + 4.0,
                max_rate * f
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="start" fill="darkorange">{:.1}</text>"#,
                LEFT + plot_w + 6.0,
                y_p99(max_p99 * f) + 4.0,
                max_p99 * f
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
                x(max_rate * f),
                TOP + plot_h + 18.0,
                max_rate * f
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">offered rate (arrivals/s)</text>"#,
            LEFT + plot_w / 2.0,
            H - 15.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="20" y="{}" fill="steelblue" transform="rotate(-90 20 {})" text-anchor="middle">achieved rate (arrivals/s)</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{rx}" y="{cy}" fill="darkorange" transform="rotate(90 {rx} {cy})" text-anchor="middle">{kind} p99 (ms)</text>"#,
            rx = W - 20.0,
            cy = TOP + plot_h / 2.0,
            kind = xml_escape(&self.latency_kind)
        );
        // The p99 bound.
        let yb = y_p99(self.p99_bound_ms);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT}" y1="{yb:.1}" x2="{}" y2="{yb:.1}" stroke="red" stroke-dasharray="6 4"/>"#,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end" fill="red">p99 bound {} ms</text>"#,
            LEFT + plot_w - 4.0,
            yb - 4.0,
            self.p99_bound_ms
        );
        // The sustainable rate.
        if let Some(rate) = self.sustainable_rate_per_sec {
            let xs = x(rate as f64);
            let _ = writeln!(
                svg,
                r#"<line x1="{xs:.1}" y1="{TOP}" x2="{xs:.1}" y2="{}" stroke="green" stroke-dasharray="2 3"/>"#,
                TOP + plot_h
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{}" fill="green">sustainable {rate}/s</text>"#,
                xs + 4.0,
                TOP + 14.0
            );
        }
        // The legend.
        let legend = [
            ("steelblue", "achieved rate".to_string()),
            ("darkorange", format!("{} p99", self.latency_kind)),
            ("red", "failed step (filled)".to_string()),
        ];
        for (i, (colour, label)) in legend.iter().enumerate() {
            let ly = TOP + 14.0 + 16.0 * i as f64;
            let _ = writeln!(
                svg,
                r#"<line x1="{}" y1="{ly:.1}" x2="{}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{:.1}">{}</text>"#,
                LEFT + 10.0,
                LEFT + 30.0,
                LEFT + 36.0,
                ly + 4.0,
                xml_escape(label)
            );
        }
        // The series.
        let points = |f: &dyn Fn(&KneeStep) -> (f64, f64)| {
            self.steps
                .iter()
                .map(|s| {
                    let (px, py) = f(s);
                    format!("{px:.1},{py:.1}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
            points(&|s| (x(s.rate_per_sec as f64), y_rate(s.achieved_rate_per_sec)))
        );
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="darkorange" stroke-width="2" points="{}"/>"#,
            points(&|s| (x(s.rate_per_sec as f64), y_p99(s.p99_ms)))
        );
        for s in &self.steps {
            let fill = if s.passed() { "white" } else { "red" };
            let px = x(s.rate_per_sec as f64);
            let _ = writeln!(
                svg,
                r#"<circle cx="{px:.1}" cy="{:.1}" r="4" stroke="steelblue" fill="{fill}"/>"#,
                y_rate(s.achieved_rate_per_sec)
            );
            let _ = writeln!(
                svg,
                r#"<circle cx="{px:.1}" cy="{:.1}" r="4" stroke="darkorange" fill="{fill}"><title>{} /s: p99 {:.3} ms, {}</title></circle>"#,
                y_p99(s.p99_ms),
                s.rate_per_sec,
                s.p99_ms,
                s.verdict
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The latency kind a knee search judges: the whole arrival (`flow`) for a multi-step
/// scenario, the only request kind otherwise.
pub fn judged_kind(scenario: &Scenario) -> String {
    if scenario.multi_step() || scenario.kinds().len() != 1 {
        FLOW_KIND.to_string()
    } else {
        scenario
            .kinds()
            .first()
            .map_or(FLOW_KIND, |s| s.as_str())
            .to_string()
    }
}

/// Finds a scenario given as a file or as a name in `load-tests/scenarios/`.
pub fn resolve_scenario(text: &str) -> anyhow::Result<Scenario> {
    let given = Path::new(text);
    if given.exists() {
        return Scenario::load(given);
    }
    let file = format!("{text}.toml");
    let candidates = [
        Path::new("load-tests/scenarios").join(&file),
        Path::new("scenarios").join(&file),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scenarios")
            .join(&file),
    ];
    match candidates.iter().find(|p| p.exists()) {
        Some(path) => Scenario::load(path),
        None => bail!("--scenario {text:?}: no such file, and no {file} in load-tests/scenarios/"),
    }
}

/// Runs the search: one [`runner::run`] per step, stopping at the first failing step.
/// `on_step` sees each step as soon as it is judged (for progress output).
pub async fn find_knee(
    base: RunConfig,
    limits: KneeLimits,
    mut on_step: impl FnMut(&KneeStep),
) -> anyhow::Result<KneeReport> {
    limits.validate()?;
    let kind = judged_kind(&base.scenario);
    let mut steps = Vec::new();
    let mut sustainable = None;
    let mut knee = None;
    for rate in limits.rates() {
        let report = runner::run(RunConfig {
            rate_per_sec: rate,
            duration: limits.step_duration,
            ..base.clone()
        })
        .await
        .with_context(|| format!("step at {rate}/s"))?;
        let step = KneeStep::judge(&report, &kind, &limits);
        on_step(&step);
        let passed = step.passed();
        steps.push(step);
        if passed {
            sustainable = Some(rate);
        } else {
            knee = Some(rate);
            break;
        }
    }
    Ok(KneeReport {
        scenario: base.scenario.name.clone(),
        target: base.target.base().to_string(),
        latency_kind: kind,
        p99_bound_ms: limits.p99_ms,
        error_rate_max: limits.error_rate_max,
        start_rate_per_sec: limits.start_rate,
        step_per_sec: limits.step,
        step_duration_s: limits.step_duration.as_secs_f64(),
        sustainable_rate_per_sec: sustainable,
        knee_rate_per_sec: knee,
        stopped_because: if knee.is_some() { "knee" } else { "bounds" },
        steps,
    })
}

/// `orderly-load knee`: validates the arguments, runs the search, prints and writes the
/// report.
pub async fn main(args: KneeArgs) -> anyhow::Result<()> {
    let limits = KneeLimits {
        start_rate: args.start_rate,
        step: args.step,
        step_duration: args.step_duration,
        p99_ms: args.p99_ms,
        error_rate_max: args.error_rate_max,
        max_steps: args.max_steps,
        max_rate: args.max_rate,
    };
    // Argument mistakes are reported before anything is loaded or sent.
    limits.validate()?;
    let target = Target::parse(&args.target)?;
    let scenario = resolve_scenario(&args.scenario)?;
    let quiet = args.quiet;
    let max_in_flight = args
        .max_in_flight
        .or(scenario.max_in_flight)
        .unwrap_or(1024);
    let report = find_knee(
        RunConfig {
            target,
            scenario,
            rate_per_sec: limits.start_rate,
            duration: limits.step_duration,
            max_in_flight,
            request_timeout: args.timeout,
            api_key: args.api_key,
            progress: !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
            redis: args.redis,
        },
        limits,
        |step| {
            if !quiet {
                eprintln!(
                    "knee: {}/s -> p99 {:.3} ms, errors {:.2}%, dropped {}: {}",
                    step.rate_per_sec,
                    step.p99_ms,
                    step.error_rate * 100.0,
                    step.dropped,
                    step.verdict
                );
            }
        },
    )
    .await?;
    let json = serde_json::to_string(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("--report {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report.svg()).with_context(|| format!("--plot {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> KneeLimits {
        KneeLimits {
            start_rate: 100,
            step: 50,
            step_duration: Duration::from_secs(1),
            p99_ms: 50.0,
            error_rate_max: 0.01,
            max_steps: 50,
            max_rate: RATE_MAX_PER_SEC,
        }
    }

    #[test]
    fn bad_limits_name_their_flag() {
        let cases: [(&str, KneeLimits); 9] = [
            (
                "--step-duration",
                KneeLimits {
                    step_duration: DURATION_MAX + Duration::from_secs(1),
                    ..limits()
                },
            ),
            (
                "--max-rate",
                KneeLimits {
                    max_rate: 99,
                    ..limits()
                },
            ),
            (
                "--step",
                KneeLimits {
                    step: 0,
                    ..limits()
                },
            ),
            (
                "--p99-ms",
                KneeLimits {
                    p99_ms: 0.0,
                    ..limits()
                },
            ),
            (
                "--p99-ms",
                KneeLimits {
                    p99_ms: f64::NAN,
                    ..limits()
                },
            ),
            (
                "--start-rate",
                KneeLimits {
                    start_rate: 0,
                    ..limits()
                },
            ),
            (
                "--error-rate-max",
                KneeLimits {
                    error_rate_max: 1.5,
                    ..limits()
                },
            ),
            (
                "--step-duration",
                KneeLimits {
                    step_duration: Duration::ZERO,
                    ..limits()
                },
            ),
            (
                "--max-steps",
                KneeLimits {
                    max_steps: 0,
                    ..limits()
                },
            ),
        ];
        for (flag, bad) in cases {
            let message = bad.validate().unwrap_err().to_string();
            assert!(message.contains(flag), "{flag}: {message}");
        }
        assert!(limits().validate().is_ok());
    }

    #[test]
    fn rates_step_up_within_the_bounds() {
        let rates: Vec<u64> = KneeLimits {
            max_steps: 4,
            ..limits()
        }
        .rates()
        .collect();
        assert_eq!(rates, [100, 150, 200, 250]);
        let rates: Vec<u64> = KneeLimits {
            max_rate: 220,
            ..limits()
        }
        .rates()
        .collect();
        assert_eq!(rates, [100, 150, 200]);
        let huge = KneeLimits {
            start_rate: RATE_MAX_PER_SEC,
            step: u64::MAX,
            max_rate: RATE_MAX_PER_SEC,
            ..limits()
        };
        assert_eq!(huge.rates().collect::<Vec<_>>(), [RATE_MAX_PER_SEC]);
    }

    #[test]
    fn the_judged_kind_is_the_flow_of_a_multi_step_scenario() {
        let one = Scenario::parse("place", r#"steps = ["place"]"#).unwrap();
        assert_eq!(judged_kind(&one), "place");
        let many = Scenario::parse("lc", r#"steps = ["place", "pay"]"#).unwrap();
        assert_eq!(judged_kind(&many), FLOW_KIND);
    }

    fn report(dropped: u64, errors: u64, p99: f64) -> Report {
        let latency = crate::report::LatencySummary {
            count: 100,
            p50: p99 / 2.0,
            p90: p99,
            p99,
            p999: p99,
            max: p99,
        };
        Report {
            scenario: "place".into(),
            target: "http://127.0.0.1:1".into(),
            rate_per_sec: 100,
            duration_s: 1.0,
            max_in_flight: 10,
            scheduled: 100,
            started: 100 - dropped,
            dropped,
            unfinished: 0,
            requests: 100 - dropped,
            ok: 100 - dropped - errors,
            error_count: errors,
            errors: Default::default(),
            achieved_rate_per_sec: (100 - dropped) as f64,
            ok_per_sec: 100.0,
            elapsed_s: 1.0,
            latency_ms: [("place".to_string(), latency)].into_iter().collect(),
            bulk_lines: Default::default(),
            bulk_line_errors: Default::default(),
            target_rate_per_sec: 100.0,
            stages: Default::default(),
            outcomes: Default::default(),
            flow_latency_ms: Default::default(),
            server: None,
            payments: None,
            series: Default::default(),
            samples: Default::default(),
            histograms: Default::default(),
        }
    }

    #[test]
    fn a_step_fails_on_p99_errors_or_drops() {
        let judge = |r: &Report| KneeStep::judge(r, "place", &limits()).failures;
        assert_eq!(judge(&report(0, 0, 50.0)), []);
        assert_eq!(judge(&report(0, 1, 50.0)), []);
        assert_eq!(judge(&report(0, 0, 50.1)), [Failure::P99]);
        assert_eq!(judge(&report(0, 5, 10.0)), [Failure::Errors]);
        assert_eq!(judge(&report(1, 0, 10.0)), [Failure::Dropped]);
        // A kind without latencies cannot pass.
        let step = KneeStep::judge(&report(0, 0, 10.0), "flow", &limits());
        assert_eq!(step.failures, [Failure::NoAnswers]);
        assert_eq!(step.verdict, "fail");
    }

    #[test]
    fn the_summary_says_when_no_knee_or_no_passing_step_was_found() {
        let step = |rate: u64, p99: f64| KneeStep {
            rate_per_sec: rate,
            ..KneeStep::judge(&report(0, 0, p99), "place", &limits())
        };
        let mut knee = KneeReport {
            scenario: "place".into(),
            target: "http://127.0.0.1:1".into(),
            latency_kind: "place".into(),
            p99_bound_ms: 50.0,
            error_rate_max: 0.01,
            start_rate_per_sec: 100,
            step_per_sec: 50,
            step_duration_s: 1.0,
            sustainable_rate_per_sec: Some(150),
            knee_rate_per_sec: Some(200),
            stopped_because: "knee",
            steps: vec![step(100, 5.0), step(150, 6.0), step(200, 80.0)],
        };
        let text = knee.human();
        assert!(text.contains("sustainable rate: 150/s"), "{text}");
        assert!(text.contains("fail (p99)"), "{text}");
        assert_eq!(knee.svg().matches("<circle").count(), 6);
        knee.knee_rate_per_sec = None;
        assert!(knee.human().contains("at least 150/s"));
        knee.sustainable_rate_per_sec = None;
        assert!(knee.human().contains("sustainable rate: none"));
        assert!(knee.svg().contains("sustainable none"));
    }

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(xml_escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
