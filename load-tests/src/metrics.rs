//! The server's own counters, read from its `/metrics` (Prometheus text format) before and
//! after a run and reported as differences, so a report says what the server saw as well as
//! what the client sent.

use serde::Serialize;

/// The values of one scrape that the report uses (a counter absent from the page is `None`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Scrape {
    /// `orderly_commands_total{command="place",outcome="ok"}`.
    pub orders_placed: Option<f64>,
    /// `orderly_commit_batch_duration_seconds_count` (all series).
    pub commit_batches: Option<f64>,
    /// `orderly_overload_rejections_total` (all series).
    pub overload_rejections: Option<f64>,
    /// `orderly_payment_retries_total` (all series).
    pub payment_retries: Option<f64>,
    /// `process_resident_memory_bytes`.
    pub rss_bytes: Option<f64>,
    /// `orderly_shards_owned` (summed): the shards this node owns.
    pub shards_owned: Option<f64>,
}

/// Differences of the server's counters over a run (after − before), and RSS before/after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerCounters {
    /// Orders the server placed during the run.
    pub orders_placed: Option<f64>,
    /// Group-commit batches during the run.
    pub commit_batches: Option<f64>,
    /// Requests refused as overloaded during the run.
    pub overload_rejections: Option<f64>,
    /// Payment gateway retries during the run.
    pub payment_retries: Option<f64>,
    /// Resident memory before the run.
    pub rss_bytes_before: Option<f64>,
    /// Resident memory after the run.
    pub rss_bytes_after: Option<f64>,
    /// Why the counters are missing (a failed scrape), if they are.
    pub error: Option<String>,
}

impl ServerCounters {
    /// The differences between two scrapes.
    pub fn between(before: &Scrape, after: &Scrape) -> ServerCounters {
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        ServerCounters {
            orders_placed: diff(after.orders_placed, before.orders_placed),
            commit_batches: diff(after.commit_batches, before.commit_batches),
            overload_rejections: diff(after.overload_rejections, before.overload_rejections),
            payment_retries: diff(after.payment_retries, before.payment_retries),
            rss_bytes_before: before.rss_bytes,
            rss_bytes_after: after.rss_bytes,
            error: None,
        }
    }

    /// Counters that could not be read.
    pub fn failed(error: String) -> ServerCounters {
        ServerCounters {
            orders_placed: None,
            commit_batches: None,
            overload_rejections: None,
            payment_retries: None,
            rss_bytes_before: None,
            rss_bytes_after: None,
            error: Some(error),
        }
    }
}

/// One sample line: name, labels, value. `None` for comments, blank or malformed lines.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = line[open..].find('}')? + open;
            (&line[..close + 1], &line[close + 1..])
        }
        None => line.split_at(line.find(char::is_whitespace)?),
    };
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let (name, labels) = match series.find('{') {
        Some(open) => (&series[..open], &series[open + 1..series.len() - 1]),
        None => (series, ""),
    };
    Some((name, labels, value))
}

/// Whether the label set `labels` (`a="x",b="y"`) has `key="value"`.
fn has_label(labels: &str, key: &str, value: &str) -> bool {
    labels
        .split(',')
        .any(|pair| pair.trim() == format!("{key}=\"{value}\""))
}

/// Reads the values the report uses from a Prometheus text page, summing over all series of a
/// name (shards, gateways) where the report wants a total.
pub fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for (name, labels, value) in text.lines().filter_map(sample) {
        match name {
            "orderly_commands_total" => {
                if has_label(labels, "command", "place") && has_label(labels, "outcome", "ok") {
                    add(&mut scrape.orders_placed, value);
                } else if scrape.orders_placed.is_none() {
                    // The family is there: no placement yet is a count of 0.
                    scrape.orders_placed = Some(0.0);
                }
            }
            "orderly_commit_batch_duration_seconds_count" => add(&mut scrape.commit_batches, value),
            "orderly_overload_rejections_total" => add(&mut scrape.overload_rejections, value),
            "orderly_payment_retries_total" => add(&mut scrape.payment_retries, value),
            "process_resident_memory_bytes" => scrape.rss_bytes = Some(value),
            "orderly_shards_owned" => add(&mut scrape.shards_owned, value),
            _ => {}
        }
    }
    scrape
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP orderly_commands_total Commands.\n\
# TYPE orderly_commands_total counter\n\
orderly_commands_total{command=\"place\",outcome=\"ok\"} 10\n\
orderly_commands_total{command=\"pay\",outcome=\"ok\"} 7\n\
orderly_commands_total{command=\"place\",outcome=\"rejected\"} 2\n\
orderly_commit_batch_duration_seconds_bucket{shard=\"0\",le=\"0.001\"} 3\n\
orderly_commit_batch_duration_seconds_count{shard=\"0\"} 4\n\
orderly_commit_batch_duration_seconds_count{shard=\"1\"} 5\n\
orderly_overload_rejections_total{reason=\"queue\"} 1\n\
process_resident_memory_bytes 1.5e7\n";

    #[test]
    fn a_page_gives_the_counters_summed_over_series() {
        let scrape = parse(PAGE);
        assert_eq!(scrape.orders_placed, Some(10.0));
        assert_eq!(scrape.commit_batches, Some(9.0));
        assert_eq!(scrape.overload_rejections, Some(1.0));
        assert_eq!(scrape.payment_retries, None);
        assert_eq!(scrape.rss_bytes, Some(15_000_000.0));
    }

    #[test]
    fn differences_are_after_minus_before() {
        let before = parse(PAGE);
        let after = parse(&PAGE.replace("} 10\n", "} 25\n"));
        let counters = ServerCounters::between(&before, &after);
        assert_eq!(counters.orders_placed, Some(15.0));
        assert_eq!(counters.commit_batches, Some(0.0));
        assert_eq!(counters.payment_retries, None);
        assert_eq!(counters.rss_bytes_after, Some(15_000_000.0));
    }
}
