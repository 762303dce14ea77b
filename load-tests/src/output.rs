//! The report in other shapes: a Markdown summary (`--report-md`), an SVG plot of throughput
//! and latency over time drawn here without any external program (`--plot`), and HdrHistogram's
//! percentile-distribution text (`--hgrm`), as HdrHistogram's `outputPercentileDistribution`
//! writes it, for load testers' own plotters.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::report::{LatencySummary, Report};

fn opt(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))
}

fn latency_table(
    out: &mut String,
    title: &str,
    rows: &std::collections::BTreeMap<String, LatencySummary>,
) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n## {title}\n");
    let _ = writeln!(
        out,
        "| {title} | count | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for (kind, l) in rows {
        let _ = writeln!(
            out,
            "| {kind} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            l.count, l.p50, l.p90, l.p99, l.p999, l.max
        );
    }
}

/// A human summary in Markdown.
pub fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# orderly-load: {}\n", report.scenario);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| target | {} |", report.target);
    let _ = writeln!(
        out,
        "| target rate | {:.1} arrivals/s |\n| achieved rate | {:.1} arrivals/s |",
        report.target_rate_per_sec, report.achieved_rate_per_sec
    );
    let _ = writeln!(
        out,
        "| schedule | {:.1} s, max in flight {} |",
        report.duration_s, report.max_in_flight
    );
    let _ = writeln!(
        out,
        "| arrivals | scheduled {}, started {}, dropped {}, unfinished {} |",
        report.scheduled, report.started, report.dropped, report.unfinished
    );
    let _ = writeln!(
        out,
        "| requests | {} answered, {} ok, {} errors, {:.1} ok/s over {:.2} s |",
        report.requests, report.ok, report.error_count, report.ok_per_sec, report.elapsed_s
    );
    if report.stages.len() > 1 {
        let stages: Vec<String> = report
            .stages
            .iter()
            .map(|s| format!("{}/s for {:.1} s", s.rate_per_sec, s.duration_s))
            .collect();
        let _ = writeln!(out, "| stages | {} |", stages.join(", then "));
    }
    if !report.errors.is_empty() {
        let _ = writeln!(out, "\n## Errors\n\n| error | count |\n|---|---:|");
        for (key, n) in &report.errors {
            let _ = writeln!(out, "| {key} | {n} |");
        }
    }
    latency_table(&mut out, "kind", &report.latency_ms);
    latency_table(&mut out, "flow", &report.flow_latency_ms);
    if let Some(p) = &report.payments {
        let _ = writeln!(out, "\n## Mock payment service (after − before)\n");
        let _ = writeln!(out, "| counter | difference |\n|---|---:|");
        let _ = writeln!(out, "| charges | {} |", p.charges);
        let _ = writeln!(out, "| duplicates refused | {} |", p.duplicates_refused);
        let _ = writeln!(out, "| double charges | {} |", p.double_charges);
    }
    if let Some(server) = &report.server {
        let _ = writeln!(out, "\n## Server counters (after − before)\n");
        match &server.error {
            Some(error) => {
                let _ = writeln!(out, "Not available: {error}");
            }
            None => {
                let _ = writeln!(out, "| counter | value |\n|---|---:|");
                let _ = writeln!(out, "| orders placed | {} |", opt(server.orders_placed));
                let _ = writeln!(out, "| commit batches | {} |", opt(server.commit_batches));
                let _ = writeln!(
                    out,
                    "| overload refusals | {} |",
                    opt(server.overload_rejections)
                );
                let _ = writeln!(out, "| payment retries | {} |", opt(server.payment_retries));
                let _ = writeln!(
                    out,
                    "| RSS before (bytes) | {} |",
                    opt(server.rss_bytes_before)
                );
                let _ = writeln!(
                    out,
                    "| RSS after (bytes) | {} |",
                    opt(server.rss_bytes_after)
                );
            }
        }
    }
    if !report.samples.is_empty() {
        let _ = writeln!(
            out,
            "\n## Samples\n\n| at s | server RSS bytes | p99 ms |\n|---:|---:|---:|"
        );
        for s in &report.samples {
            let p99 = s.p99_ms.map_or_else(|| "-".into(), |p| format!("{p:.3}"));
            let _ = writeln!(out, "| {:.0} | {} | {p99} |", s.at_s, opt(s.rss_bytes));
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An axis value without float noise (`0.3`, not `0.30000000000000004`).
fn axis_label(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// A standalone SVG with two panels over the seconds of the run: throughput (arrivals started
/// and 2xx answers per second) on top, p50 and p99 latency of each second below.
pub fn svg(report: &Report) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 200.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    let plot_w = W - LEFT - RIGHT;
    let tops = [40.0, 300.0];
    let height = 540.0;
    let series = &report.series;
    let seconds = series.last().map_or(1, |s| s.second).max(1) as f64;
    let x = |second: u64| LEFT + plot_w * (second as f64 / seconds);
    let rate_max = nice_ceiling(
        series
            .iter()
            .map(|s| s.achieved_rate_per_sec.max(s.ok) as f64)
            .fold(0.0, f64::max),
    );
    let latency_max = nice_ceiling(series.iter().filter_map(|s| s.p99_ms).fold(0.0, f64::max));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(out, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"20\" font-size=\"14\">{} against {}: target {:.0}/s, achieved {:.0}/s</text>",
        escape(&report.scenario),
        escape(&report.target),
        report.target_rate_per_sec,
        report.achieved_rate_per_sec
    );
    let panels = [("per second", rate_max), ("latency ms", latency_max)];
    for (top, (label, max)) in tops.iter().zip(panels) {
        let bottom = top + PANEL_H;
        let _ = writeln!(
            out,
            "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{plot_w}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#888\"/>"
        );
        for k in 0..=4 {
            let y = bottom - PANEL_H * f64::from(k) / 4.0;
            let value = axis_label(max * f64::from(k) / 4.0);
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{value}</text>",
                LEFT + plot_w,
                LEFT - 5.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            out,
            "<text x=\"15\" y=\"{:.1}\" transform=\"rotate(-90 15 {:.1})\" text-anchor=\"middle\">{label}</text>",
            top + PANEL_H / 2.0,
            top + PANEL_H / 2.0
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds (0 .. {seconds})</text>",
            LEFT + plot_w / 2.0,
            bottom + 30.0
        );
    }
    let line = |out: &mut String,
                top: f64,
                max: f64,
                colour: &str,
                name: &str,
                k: usize,
                points: Vec<(u64, f64)>| {
        let bottom = top + PANEL_H;
        let coords: Vec<String> = points
            .iter()
            .map(|&(s, v)| format!("{:.1},{:.1}", x(s), bottom - PANEL_H * (v / max).min(1.0)))
            .collect();
        if !coords.is_empty() {
            let _ = writeln!(
                out,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                coords.join(" ")
            );
        }
        let lx = LEFT + 10.0 + 150.0 * k as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{lx}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{name}</text>",
            top + 12.0,
            lx + 16.0,
            top + 16.0
        );
    };
    let [rate_top, latency_top] = tops;
    line(
        &mut out,
        rate_top,
        rate_max,
        "#1f77b4",
        "arrivals started/s",
        0,
        series
            .iter()
            .map(|s| (s.second, s.achieved_rate_per_sec as f64))
            .collect(),
    );
    line(
        &mut out,
        rate_top,
        rate_max,
        "#2ca02c",
        "2xx answers/s",
        1,
        series.iter().map(|s| (s.second, s.ok as f64)).collect(),
    );
    line(
        &mut out,
        rate_top,
        rate_max,
        "#d62728",
        "errors/s",
        2,
        series.iter().map(|s| (s.second, s.errors as f64)).collect(),
    );
    line(
        &mut out,
        latency_top,
        latency_max,
        "#1f77b4",
        "p50",
        0,
        series
            .iter()
            .filter_map(|s| Some((s.second, s.p50_ms?)))
            .collect(),
    );
    line(
        &mut out,
        latency_top,
        latency_max,
        "#ff7f0e",
        "p99",
        1,
        series
            .iter()
            .filter_map(|s| Some((s.second, s.p99_ms?)))
            .collect(),
    );
    let _ = writeln!(out, "</svg>");
    out
}

/// HdrHistogram's percentile distribution of a latency histogram (recorded in µs), in
/// milliseconds, as `outputPercentileDistribution(out, 5, 1000.0)` writes it: a header, one row
/// per percentile step (value, percentile, total count, 1/(1-percentile)), a last row at
/// percentile 1.0 without the last column, and the `#[Mean …]` footer.
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    const SCALE: f64 = 1000.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    let mut last_percentile = 0.0;
    if !histogram.is_empty() {
        for v in histogram.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let percentile = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if percentile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {percentile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - percentile)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {percentile:2.12} {total:10}");
            }
            last_percentile = percentile;
        }
        if last_percentile < 1.0 {
            let _ = writeln!(
                out,
                "{:12.3} {:2.12} {:10}",
                histogram.max() as f64 / SCALE,
                1.0,
                histogram.len()
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        histogram.mean() / SCALE,
        histogram.stdev() / SCALE
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64 / SCALE,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        2048
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_rows_rise_to_one() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=10_000u64 {
            h.record(us * 10).unwrap();
        }
        let text = hgrm(&h);
        let mut last = -1.0;
        let mut rows = 0;
        for line in text.lines().skip(2) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let cols: Vec<f64> = line
                .split_whitespace()
                .map(|c| c.parse().unwrap())
                .collect();
            assert!(cols.len() == 4 || cols.len() == 3, "{line}");
            assert!(cols[1] >= last, "{line}");
            last = cols[1];
            rows += 1;
        }
        assert_eq!(last, 1.0);
        assert!(rows > 20, "{text}");
        assert!(text.contains("#[Mean    ="), "{text}");
        assert!(text.contains("Total count    =        10000]"), "{text}");
    }

    #[test]
    fn axes_are_round() {
        assert_eq!(axis_label(0.1 + 0.2), "0.3");
        assert_eq!(axis_label(200.0), "200");
        assert_eq!(axis_label(0.0), "0");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(4999.0), 5000.0);
    }
}
