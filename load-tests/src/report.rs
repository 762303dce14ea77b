//! Counting and reporting: one HdrHistogram of latencies per request kind (microseconds,
//! 3 significant digits, 1 µs .. 1 h), counts of answers by status/code, and the final report
//! as a human table or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Answer, BulkLines};
use crate::metrics::ServerCounters;
use crate::scenario::{Scenario, Step};

/// Highest latency the histograms hold, in microseconds (one hour); longer ones saturate.
const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Name of the whole-arrival latency in multi-step scenarios.
pub const FLOW_KIND: &str = "flow";

fn histogram() -> Histogram<u64> {
    // Constant, valid bounds (1 <= low, high >= 2 * low, 3 significant digits): cannot fail.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US)
}

/// Counters at the end of the last closed second, to take differences from.
#[derive(Default, Clone, Copy)]
struct Totals {
    started: u64,
    dropped: u64,
    requests: u64,
    ok: u64,
    errors: u64,
}

/// Live counts of a run, shared by the arrivals (behind a mutex: one short lock per answer).
pub(crate) struct Recorder {
    kinds: BTreeMap<&'static str, Histogram<u64>>,
    /// Whole-arrival latency per flow name.
    flows: BTreeMap<String, Histogram<u64>>,
    /// Latencies since the last closed second (progress line, time series).
    interval: Histogram<u64>,
    /// Latencies since the last server sample (only with a sample interval).
    window: Option<Histogram<u64>>,
    pub(crate) started: u64,
    pub(crate) dropped: u64,
    requests: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    bulk: BulkLines,
    last: Totals,
    series: Vec<SecondSample>,
    pub(crate) samples: Vec<ServerSample>,
}

impl Recorder {
    pub(crate) fn new(scenario: &Scenario) -> Recorder {
        let mut kinds: BTreeMap<&'static str, Histogram<u64>> = scenario
            .kinds()
            .into_iter()
            .map(|k| (k.as_str(), histogram()))
            .collect();
        if scenario.multi_step() {
            kinds.insert(FLOW_KIND, histogram());
        }
        let flows = scenario
            .flows
            .iter()
            .filter(|f| f.steps.len() > 1)
            .map(|f| (f.name.clone(), histogram()))
            .collect();
        Recorder {
            kinds,
            flows,
            interval: histogram(),
            window: scenario.sample_interval.map(|_| histogram()),
            started: 0,
            dropped: 0,
            requests: 0,
            ok: 0,
            errors: BTreeMap::new(),
            bulk: BulkLines::default(),
            last: Totals::default(),
            series: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// Records one answer. Latencies are of successful requests only: an error's latency says
    /// little (a refusal is fast, a timeout is the timeout), so errors are counted instead.
    pub(crate) fn record(&mut self, step: Step, latency: Duration, answer: &Answer) {
        self.requests += 1;
        match answer {
            Answer::Ok { bulk, .. } => {
                self.ok += 1;
                let us = micros(latency);
                if let Some(h) = self.kinds.get_mut(step.as_str()) {
                    h.saturating_record(us);
                }
                self.interval.saturating_record(us);
                if let Some(window) = &mut self.window {
                    window.saturating_record(us);
                }
                if let Some(lines) = bulk {
                    for (status, n) in &lines.by_status {
                        *self.bulk.by_status.entry(status.clone()).or_default() += n;
                    }
                    for (code, n) in &lines.errors {
                        *self.bulk.errors.entry(code.clone()).or_default() += n;
                    }
                }
            }
            Answer::Failed(key) => *self.errors.entry(key.clone()).or_default() += 1,
        }
    }

    /// Records the latency of a whole multi-step arrival (all flows under `flow`, and under
    /// its own flow name).
    pub(crate) fn record_flow(&mut self, flow: &str, latency: Duration) {
        let us = micros(latency);
        if let Some(h) = self.kinds.get_mut(FLOW_KIND) {
            h.saturating_record(us);
        }
        if let Some(h) = self.flows.get_mut(flow) {
            h.saturating_record(us);
        }
    }

    /// Closes second number `second` of the time series: the differences since the last
    /// closed second and the percentiles of the answers in between. Resets the interval.
    pub(crate) fn close_second(&mut self, second: u64) -> SecondSample {
        let errors: u64 = self.errors.values().sum();
        let ms = |us: u64| us as f64 / 1000.0;
        let (p50, p99) = if self.interval.is_empty() {
            (None, None)
        } else {
            (
                Some(ms(self.interval.value_at_quantile(0.50))),
                Some(ms(self.interval.value_at_quantile(0.99))),
            )
        };
        let sample = SecondSample {
            second,
            achieved_rate_per_sec: self.started - self.last.started,
            dropped: self.dropped - self.last.dropped,
            requests: self.requests - self.last.requests,
            ok: self.ok - self.last.ok,
            errors: errors - self.last.errors,
            p50_ms: p50,
            p99_ms: p99,
        };
        self.last = Totals {
            started: self.started,
            dropped: self.dropped,
            requests: self.requests,
            ok: self.ok,
            errors,
        };
        self.interval.reset();
        self.series.push(sample.clone());
        sample
    }

    /// Whether anything happened since the last closed second.
    pub(crate) fn has_unclosed_activity(&self) -> bool {
        self.requests != self.last.requests
            || self.started != self.last.started
            || self.dropped != self.last.dropped
    }

    /// The p99 (ms) of the answers since the last server sample; resets the window.
    pub(crate) fn close_window(&mut self) -> Option<f64> {
        let window = self.window.as_mut()?;
        let p99 = (!window.is_empty()).then(|| window.value_at_quantile(0.99) as f64 / 1000.0);
        window.reset();
        p99
    }

    /// Closes second `elapsed` (see [`Recorder::close_second`]) and returns its progress line:
    /// arrivals started in that second, totals, and the p99 of that second.
    pub(crate) fn progress_line(&mut self, elapsed: Duration, sent: u64, in_flight: u64) -> String {
        let sample = self.close_second(elapsed.as_secs());
        let p99 = match sample.p99_ms {
            None => "-".to_string(),
            Some(p99) => format!("{p99:.2}ms"),
        };
        let errors: u64 = self.errors.values().sum();
        format!(
            "[{:>4}s] rate {}/s sent {} ok {} errors {} dropped {} in-flight {} p99 {}",
            elapsed.as_secs(),
            sample.achieved_rate_per_sec,
            sent,
            self.ok,
            errors,
            self.dropped,
            in_flight,
            p99
        )
    }

    pub(crate) fn into_report(self, run: RunFacts) -> Report {
        let latency_ms = self
            .kinds
            .iter()
            .map(|(kind, h)| (kind.to_string(), LatencySummary::of(h)))
            .collect();
        let flow_latency_ms = self
            .flows
            .iter()
            .map(|(flow, h)| (flow.clone(), LatencySummary::of(h)))
            .collect();
        let duration_s = run.duration.as_secs_f64();
        let elapsed_s = run.elapsed.as_secs_f64();
        let error_count: u64 = self.errors.values().sum();
        let outcomes = BTreeMap::from([
            ("ok".to_string(), self.ok),
            ("error".to_string(), error_count),
            ("dropped".to_string(), self.dropped),
            ("unfinished".to_string(), run.unfinished),
        ]);
        let mut histograms: BTreeMap<String, Histogram<u64>> = self
            .kinds
            .into_iter()
            .map(|(k, h)| (k.to_string(), h))
            .collect();
        for (flow, h) in self.flows {
            histograms.insert(format!("{FLOW_KIND}:{flow}"), h);
        }
        Report {
            scenario: run.scenario,
            target: run.target,
            rate_per_sec: run.rate_per_sec,
            duration_s,
            max_in_flight: run.max_in_flight,
            scheduled: run.scheduled,
            started: self.started,
            dropped: self.dropped,
            unfinished: run.unfinished,
            requests: self.requests,
            ok: self.ok,
            error_count,
            errors: self.errors,
            achieved_rate_per_sec: rate(self.started, duration_s),
            ok_per_sec: rate(self.ok, elapsed_s),
            elapsed_s,
            latency_ms,
            bulk_lines: self.bulk.by_status,
            bulk_line_errors: self.bulk.errors,
            target_rate_per_sec: rate(run.scheduled, duration_s),
            stages: run.stages,
            outcomes,
            flow_latency_ms,
            server: run.server,
            payments: None,
            series: self.series,
            samples: self.samples,
            histograms,
        }
    }
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondSample {
    /// Seconds since the start (the second that ended at this mark).
    pub second: u64,
    /// Arrivals started in this second.
    pub achieved_rate_per_sec: u64,
    /// Arrivals dropped in this second.
    pub dropped: u64,
    /// Requests answered in this second.
    pub requests: u64,
    /// 2xx answers in this second.
    pub ok: u64,
    /// Failed requests in this second.
    pub errors: u64,
    /// Median latency of this second's 2xx answers (none if there were none).
    pub p50_ms: Option<f64>,
    /// 99th percentile of this second's 2xx answers.
    pub p99_ms: Option<f64>,
}

/// A periodic sample of the server and the client (scenarios with `sample_interval`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSample {
    /// Seconds since the start.
    pub at_s: f64,
    /// The server's `process_resident_memory_bytes` (none if the scrape failed).
    pub rss_bytes: Option<f64>,
    /// p99 of the client's 2xx answers since the previous sample.
    pub p99_ms: Option<f64>,
}

/// One stage as run (after `--rate` scaling).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageReport {
    /// Arrivals per second.
    pub rate_per_sec: u64,
    /// Length.
    pub duration_s: f64,
}

/// Facts of a run the recorder does not see.
pub(crate) struct RunFacts {
    pub(crate) scenario: String,
    pub(crate) target: String,
    pub(crate) rate_per_sec: u64,
    pub(crate) duration: Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) scheduled: u64,
    pub(crate) unfinished: u64,
    pub(crate) elapsed: Duration,
    pub(crate) stages: Vec<StageReport>,
    pub(crate) server: Option<ServerCounters>,
}

/// Latency percentiles of one request kind, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Successful requests measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary {
                count: 0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The final report of a run (`--json` prints it as one line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Base URL.
    pub target: String,
    /// Offered arrival rate (with a ramp: of its highest stage).
    pub rate_per_sec: u64,
    /// Scheduled length of the run.
    pub duration_s: f64,
    /// Concurrency bound.
    pub max_in_flight: usize,
    /// Arrivals in the schedule.
    pub scheduled: u64,
    /// Arrivals sent (the first request of each).
    pub started: u64,
    /// Arrivals not sent because `max_in_flight` arrivals were still outstanding at their
    /// intended time.
    pub dropped: u64,
    /// Arrivals still outstanding when the run gave up waiting for them (after the schedule,
    /// each step's timeout plus a grace period).
    pub unfinished: u64,
    /// HTTP requests answered (or failed), all steps.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Failed requests in total.
    pub error_count: u64,
    /// Failed requests by `<status> <code>`, `timeout`, `connect` or `transport`.
    pub errors: BTreeMap<String, u64>,
    /// Arrivals started per second of the schedule (equals the rate when nothing is dropped).
    pub achieved_rate_per_sec: f64,
    /// Successful requests per second of the whole run (including the drain).
    pub ok_per_sec: f64,
    /// From the first intended send until the last answer.
    pub elapsed_s: f64,
    /// Latency per request kind (and `flow`: a whole multi-step arrival), measured from the
    /// intended send time.
    pub latency_ms: BTreeMap<String, LatencySummary>,
    /// Bulk result lines by status.
    pub bulk_lines: BTreeMap<String, u64>,
    /// Rejected bulk lines by error code.
    pub bulk_line_errors: BTreeMap<String, u64>,
    /// Arrivals scheduled per second of the schedule (the offered load, over all stages).
    pub target_rate_per_sec: f64,
    /// The stages run, in order (one for a scenario without a ramp).
    pub stages: Vec<StageReport>,
    /// Counts by outcome: `ok` and `error` (requests), `dropped` and `unfinished` (arrivals).
    pub outcomes: BTreeMap<String, u64>,
    /// Whole-arrival latency per flow of a multi-step scenario, by flow name.
    pub flow_latency_ms: BTreeMap<String, LatencySummary>,
    /// The server's counters from `/metrics`, scraped before and after the run.
    pub server: Option<ServerCounters>,
    /// The mock payment service's counters (`--mock-payments`), read before and after the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payments: Option<crate::payments::PaymentCounters>,
    /// One entry per second of the run.
    pub series: Vec<SecondSample>,
    /// Periodic samples of the server's RSS and the client's p99 (`sample_interval`).
    pub samples: Vec<ServerSample>,
    /// The latency histograms (request kinds, `flow`, and `flow:<name>`), for `--hgrm`.
    #[serde(skip)]
    pub histograms: BTreeMap<String, Histogram<u64>>,
}

impl Report {
    /// The report as a human-readable table.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "orderly-load: scenario {} -> {} at {}/s for {:.1}s (max in flight {})",
            self.scenario, self.target, self.rate_per_sec, self.duration_s, self.max_in_flight
        );
        let _ = writeln!(
            out,
            "arrivals: scheduled {}, started {}, dropped {}, unfinished {}; achieved {:.1}/s",
            self.scheduled, self.started, self.dropped, self.unfinished, self.achieved_rate_per_sec
        );
        let _ = writeln!(
            out,
            "requests: {} answered, {} ok, {} errors; {:.1} ok/s over {:.2}s",
            self.requests, self.ok, self.error_count, self.ok_per_sec, self.elapsed_s
        );
        for (key, n) in &self.errors {
            let _ = writeln!(out, "  error {key:<32} {n:>10}");
        }
        if let Some(p) = &self.payments {
            let _ = writeln!(
                out,
                "payments: {} charges, {} duplicates refused, {} double charges",
                p.charges, p.duplicates_refused, p.double_charges
            );
        }
        if let Some(server) = &self.server {
            let n = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"));
            let mib = |v: Option<f64>| {
                v.map_or_else(|| "-".to_string(), |v| format!("{:.1}", v / 1_048_576.0))
            };
            let _ = match &server.error {
                Some(error) => writeln!(out, "server: no counters ({error})"),
                None => writeln!(
                    out,
                    "server: orders placed {}, commit batches {}, overload refusals {}, \
                     payment retries {}, RSS {} -> {} MiB",
                    n(server.orders_placed),
                    n(server.commit_batches),
                    n(server.overload_rejections),
                    n(server.payment_retries),
                    mib(server.rss_bytes_before),
                    mib(server.rss_bytes_after)
                ),
            };
        }
        for (status, n) in &self.bulk_lines {
            let _ = writeln!(out, "  bulk lines {status:<27} {n:>10}");
        }
        for (code, n) in &self.bulk_line_errors {
            let _ = writeln!(out, "  bulk line error {code:<22} {n:>10}");
        }
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "kind", "count", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (kind, l) in &self.latency_ms {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
                kind, l.count, l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place_scenario() -> Scenario {
        Scenario::parse("place", r#"steps = ["place", "pay"]"#).unwrap()
    }

    #[test]
    fn the_report_counts_answers_and_percentiles() {
        let mut recorder = Recorder::new(&place_scenario());
        let ok = Answer::Ok {
            order_id: Some("x".into()),
            bulk: None,
        };
        for ms in 1..=100 {
            recorder.record(Step::Place, Duration::from_millis(ms), &ok);
        }
        recorder.record(
            Step::Pay,
            Duration::from_millis(5),
            &Answer::Failed("429 overloaded".into()),
        );
        recorder.record_flow("place", Duration::from_millis(7));
        recorder.started = 100;
        let report = recorder.into_report(RunFacts {
            scenario: "place".into(),
            target: "http://127.0.0.1:1".into(),
            rate_per_sec: 100,
            duration: Duration::from_secs(1),
            max_in_flight: 10,
            scheduled: 100,
            unfinished: 0,
            elapsed: Duration::from_secs(2),
            stages: vec![],
            server: None,
        });
        assert_eq!(
            (report.requests, report.ok, report.error_count),
            (101, 100, 1)
        );
        assert_eq!(report.errors.get("429 overloaded"), Some(&1));
        let place = report.latency_ms["place"];
        assert_eq!(place.count, 100);
        assert!((49.9..=50.1).contains(&place.p50), "{place:?}");
        assert!((98.9..=99.1).contains(&place.p99), "{place:?}");
        assert!((99.9..=100.1).contains(&place.max), "{place:?}");
        assert_eq!(report.latency_ms["pay"].count, 0);
        assert_eq!(report.latency_ms[FLOW_KIND].count, 1);
        assert_eq!(report.achieved_rate_per_sec, 100.0);
        assert_eq!(report.ok_per_sec, 50.0);
        let text = report.human();
        assert!(text.contains("429 overloaded"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["latency_ms"]["place"]["count"], 100);
    }

    #[test]
    fn the_progress_line_reports_the_last_interval() {
        let mut recorder = Recorder::new(&place_scenario());
        let ok = Answer::Ok {
            order_id: None,
            bulk: None,
        };
        recorder.record(Step::Place, Duration::from_millis(40), &ok);
        let line = recorder.progress_line(Duration::from_secs(1), 4, 3);
        assert!(line.contains("sent 4 ok 1 errors 0"), "{line}");
        assert!(line.contains("p99 40."), "{line}");
        let line = recorder.progress_line(Duration::from_secs(2), 4, 0);
        assert!(line.ends_with("p99 -"), "{line}");
    }
}
