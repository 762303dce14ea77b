//! Scenario files: TOML that says what one arrival does, and optionally how the arrival rate
//! ramps.
//!
//! ```toml
//! description = "Place an order, then pay, ship and deliver it."
//! steps = ["place", "pay", "ship", "deliver"]   # or ["bulk"]
//!
//! # Or several weighted flows instead of `steps` (an arrival runs one of them):
//! # [[flows]]
//! # name = "lifecycle"
//! # weight = 3
//! # steps = ["place", "pay", "ship", "deliver"]
//!
//! # Optional ramp: stages run one after the other; `--rate` scales them all.
//! [[stages]]
//! rate = 500
//! duration = "10s"
//!
//! [order]                  # all optional
//! currency = "USD"
//! payment_method = "card"
//! items_per_order = 2
//! unit_prices = ["19.99", "5.00"]
//! skus = 100
//!
//! [bulk]                   # only with steps = ["bulk"]
//! lines = 100
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::schedule::{DURATION_MAX, RATE_MAX_PER_SEC};

/// Most line items per generated order (Orderly's own limit is 256).
pub const ITEMS_PER_ORDER_MAX: usize = 256;
/// Most lines per bulk request.
pub const BULK_LINES_MAX: usize = 100_000;
/// Most stages in a ramp.
pub const STAGES_MAX: usize = 1000;
/// Most flows in a scenario.
pub const FLOWS_MAX: usize = 64;

/// Parses `250ms`, `30s`, `2m`, `1h` (an integer and a unit).
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
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

/// One request an arrival makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `POST /v1/orders`.
    Place,
    /// `POST /v1/orders/{id}/pay`.
    Pay,
    /// `POST /v1/orders/{id}/ship`.
    Ship,
    /// `POST /v1/orders/{id}/deliver`.
    Deliver,
    /// `GET /v1/orders/{id}`.
    Get,
    /// `POST /v1/orders/{id}/cancel`.
    Cancel,
    /// `POST /v1/orders/{id}/refund` (the whole amount).
    Refund,
    /// `POST /v1/orders/bulk` with an NDJSON body.
    Bulk,
    /// `XADD` of one order to the ingest stream; done when its `order_placed` event is read
    /// from the outbox (see [`crate::stream`]).
    Stream,
}

impl Step {
    /// Name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Place => "place",
            Step::Pay => "pay",
            Step::Ship => "ship",
            Step::Deliver => "deliver",
            Step::Get => "get",
            Step::Cancel => "cancel",
            Step::Refund => "refund",
            Step::Bulk => "bulk",
            Step::Stream => "stream",
        }
    }
}

/// How generated orders look.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderTemplate {
    /// ISO currency code.
    pub currency: String,
    /// `card`, `alipay`, `wechat`.
    pub payment_method: String,
    /// Line items per order.
    pub items_per_order: usize,
    /// Unit prices (decimal strings), cycled over the items.
    pub unit_prices: Vec<String>,
    /// Distinct SKUs cycled over.
    pub skus: u64,
}

impl Default for OrderTemplate {
    fn default() -> Self {
        OrderTemplate {
            currency: "USD".into(),
            payment_method: "card".into(),
            items_per_order: 1,
            unit_prices: vec!["19.99".into()],
            skus: 100,
        }
    }
}

/// Bulk request shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkSettings {
    /// Orders (NDJSON lines) per request.
    pub lines: usize,
}

/// Where the stream step adds orders and reads placements (`[stream]`, all optional). The
/// Redis itself is named on the command line (`--redis`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// The server's `[ingest] stream`.
    pub key: String,
    /// The server's `[store.redis] key_prefix`: outbox streams are `<prefix>:{<shard>}:events`.
    pub events_prefix: String,
    /// The server's `[engine] shards`; unset: read from its `/metrics`
    /// (`orderly_shards_owned`, a single node owns them all), else 64.
    pub shards: Option<u32>,
    /// Most adds per pipelined call.
    pub pipeline: usize,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            key: "orderly:ingest".into(),
            events_prefix: "orderly".into(),
            shards: None,
            pipeline: 1000,
        }
    }
}

/// Most shards the stream step follows.
pub const STREAM_SHARDS_MAX: u32 = 65_536;
/// Most adds per pipeline.
pub const STREAM_PIPELINE_MAX: usize = 100_000;

/// One stage of a ramp: `rate` arrivals per second for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Arrivals per second.
    pub rate_per_sec: u64,
    /// How long the stage lasts.
    pub duration: Duration,
}

/// One kind of arrival: its steps, and how often it is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Name in the report (`flow_latency_ms`).
    pub name: String,
    /// Relative frequency among the scenario's flows.
    pub weight: u64,
    /// Requests of one arrival, in order; each after the previous one succeeded.
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    rate: i64,
    duration: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    name: String,
    #[serde(default = "one")]
    weight: i64,
    steps: Vec<Step>,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    description: String,
    steps: Option<Vec<Step>>,
    #[serde(default)]
    flows: Vec<FlowFile>,
    #[serde(default)]
    stages: Vec<StageFile>,
    sample_interval: Option<String>,
    #[serde(default)]
    order: OrderTemplate,
    bulk: Option<BulkSettings>,
    stream: Option<StreamSettings>,
    max_in_flight: Option<i64>,
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The file's stem (`place` for `place.toml`).
    pub name: String,
    /// What it exercises.
    pub description: String,
    /// The kinds of arrival (one, named after the scenario, for a plain `steps` list).
    pub flows: Vec<Flow>,
    /// The ramp; empty means one stage at `--rate` for `--duration`.
    pub stages: Vec<Stage>,
    /// How often to sample the server's RSS and the client's p99 during the run (`soak`).
    pub sample_interval: Option<Duration>,
    /// Generated orders.
    pub order: OrderTemplate,
    /// Bulk shape (only for a bulk scenario).
    pub bulk: Option<BulkSettings>,
    /// Stream settings (only for a stream scenario).
    pub stream: Option<StreamSettings>,
    /// The scenario's own default for `--max-in-flight` (a stream arrival is in flight from
    /// its add until its placement is read, so 100,000/s at 50 ms needs 5,000 slots).
    pub max_in_flight: Option<usize>,
}

/// What an order is known to be in after the steps so far (for the validation of step order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Nothing,
    Pending,
    Paid,
    Shipped,
    Delivered,
    Cancelled,
    Refunded,
}

/// Checks that `steps` (the value of the key `key`) make sense one after the other.
fn check_steps(key: &str, steps: &[Step], bulk: Option<&BulkSettings>) -> anyhow::Result<()> {
    if steps.is_empty() {
        bail!("`{key}` must name at least one request");
    }
    if steps.contains(&Step::Stream) {
        if steps != [Step::Stream] {
            bail!("`{key}`: `stream` must be the only step");
        }
        return Ok(());
    }
    if steps.contains(&Step::Bulk) {
        if steps != [Step::Bulk] {
            bail!("`{key}`: `bulk` must be the only step");
        }
        match bulk {
            None => bail!("`{key}` = [\"bulk\"] needs a [bulk] section with `lines`"),
            Some(b) if b.lines == 0 || b.lines > BULK_LINES_MAX => {
                bail!("`bulk.lines` must be 1..={BULK_LINES_MAX}")
            }
            Some(_) => return Ok(()),
        }
    }
    let mut state = Known::Nothing;
    for (i, step) in steps.iter().enumerate() {
        use Known::*;
        let next = match (step, state) {
            (Step::Place, Nothing) => Pending,
            (Step::Place, _) => bail!("`{key}[{i}]`: `place` may only be the first step"),
            (_, Nothing) => bail!(
                "`{key}[{i}]`: `{}` before `place` (it needs an order: steps must start with \"place\")",
                step.as_str()
            ),
            (Step::Get, s) => s,
            (Step::Pay, Pending) => Paid,
            (Step::Ship, Paid) => Shipped,
            (Step::Deliver, Shipped) => Delivered,
            (Step::Cancel, Pending | Paid) => Cancelled,
            (Step::Refund, Paid | Shipped) => Refunded,
            (Step::Bulk | Step::Stream, _) => unreachable!("bulk and stream are handled above"),
            (step, s) => bail!(
                "`{key}[{i}]`: `{}` cannot follow an order that is {}",
                step.as_str(),
                match s {
                    Pending => "pending payment",
                    Paid => "paid",
                    Shipped => "shipped",
                    Delivered => "delivered",
                    Cancelled => "cancelled",
                    Refunded => "refunded",
                    Nothing => "not placed",
                }
            ),
        };
        state = next;
    }
    Ok(())
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        Scenario::parse(&name, &text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and validates scenario TOML.
    pub fn parse(name: &str, text: &str) -> anyhow::Result<Scenario> {
        let file: ScenarioFile = toml::from_str(text)?;
        let flows = match (file.steps, file.flows.is_empty()) {
            (Some(_), false) => bail!("give either `steps` or `[[flows]]`, not both"),
            (None, true) => bail!("missing `steps` (or `[[flows]]`)"),
            (Some(steps), true) => {
                check_steps("steps", &steps, file.bulk.as_ref())?;
                vec![Flow {
                    name: name.to_string(),
                    weight: 1,
                    steps,
                }]
            }
            (None, false) => {
                if file.flows.len() > FLOWS_MAX {
                    bail!("`flows`: at most {FLOWS_MAX}");
                }
                let mut flows = Vec::new();
                for (i, flow) in file.flows.into_iter().enumerate() {
                    if flow.name.is_empty() || flow.name.len() > 64 {
                        bail!("`flows[{i}].name` must be 1..=64 characters");
                    }
                    if flows.iter().any(|f: &Flow| f.name == flow.name) {
                        bail!("`flows[{i}].name`: {:?} is used twice", flow.name);
                    }
                    if flow.weight <= 0 || flow.weight > 1_000_000 {
                        bail!(
                            "`flows[{i}].weight` must be 1..=1000000 (got {})",
                            flow.weight
                        );
                    }
                    check_steps(
                        &format!("flows[{i}].steps"),
                        &flow.steps,
                        file.bulk.as_ref(),
                    )?;
                    flows.push(Flow {
                        name: flow.name,
                        weight: flow.weight as u64,
                        steps: flow.steps,
                    });
                }
                flows
            }
        };
        let uses_bulk = flows.iter().any(|f| f.steps == [Step::Bulk]);
        if file.bulk.is_some() && !uses_bulk {
            bail!("[bulk] only applies to steps = [\"bulk\"]");
        }
        let uses_stream = flows.iter().any(|f| f.steps == [Step::Stream]);
        if uses_stream && flows.len() > 1 {
            bail!("`flows`: a stream flow must be the scenario's only flow");
        }
        if file.stream.is_some() && !uses_stream {
            bail!("[stream] only applies to steps = [\"stream\"]");
        }
        let stream = uses_stream.then(|| file.stream.clone().unwrap_or_default());
        if let Some(stream) = &stream {
            if stream.key.is_empty() {
                bail!("`stream.key` must not be empty");
            }
            if stream.events_prefix.is_empty() {
                bail!("`stream.events_prefix` must not be empty");
            }
            if let Some(shards) = stream.shards {
                if shards == 0 || shards > STREAM_SHARDS_MAX {
                    bail!("`stream.shards` must be 1..={STREAM_SHARDS_MAX} (got {shards})");
                }
            }
            if stream.pipeline == 0 || stream.pipeline > STREAM_PIPELINE_MAX {
                bail!(
                    "`stream.pipeline` must be 1..={STREAM_PIPELINE_MAX} (got {})",
                    stream.pipeline
                );
            }
        }
        let max_in_flight = match file.max_in_flight {
            None => None,
            Some(n) if n >= 1 && n as usize <= crate::runner::MAX_IN_FLIGHT_MAX => Some(n as usize),
            Some(n) => bail!(
                "`max_in_flight` must be 1..={} (got {n})",
                crate::runner::MAX_IN_FLIGHT_MAX
            ),
        };
        if file.stages.len() > STAGES_MAX {
            bail!("`stages`: at most {STAGES_MAX}");
        }
        let mut stages = Vec::new();
        let mut total = Duration::ZERO;
        for (i, stage) in file.stages.iter().enumerate() {
            if stage.rate <= 0 || stage.rate as u64 > RATE_MAX_PER_SEC {
                bail!(
                    "`stages[{i}].rate` must be 1..={RATE_MAX_PER_SEC} per second (got {})",
                    stage.rate
                );
            }
            let duration = parse_duration(&stage.duration)
                .with_context(|| format!("`stages[{i}].duration`"))?;
            if duration.is_zero() {
                bail!("`stages[{i}].duration` must be more than 0");
            }
            total += duration;
            stages.push(Stage {
                rate_per_sec: stage.rate as u64,
                duration,
            });
        }
        if total > DURATION_MAX {
            bail!("`stages`: the durations add up to more than {DURATION_MAX:?}");
        }
        let sample_interval = match &file.sample_interval {
            None => None,
            Some(text) => {
                let d = parse_duration(text).context("`sample_interval`")?;
                if d < Duration::from_secs(1) {
                    bail!("`sample_interval` must be at least 1s");
                }
                Some(d)
            }
        };
        let order = &file.order;
        if order.items_per_order == 0 || order.items_per_order > ITEMS_PER_ORDER_MAX {
            bail!("`order.items_per_order` must be 1..={ITEMS_PER_ORDER_MAX}");
        }
        if order.unit_prices.is_empty() {
            bail!("`order.unit_prices` must not be empty");
        }
        if order.skus == 0 {
            bail!("`order.skus` must be at least 1");
        }
        Ok(Scenario {
            name: name.to_string(),
            description: file.description,
            flows,
            stages,
            sample_interval,
            order: file.order,
            bulk: file.bulk,
            stream,
            max_in_flight,
        })
    }

    /// Distinct request kinds over all flows.
    pub fn kinds(&self) -> Vec<Step> {
        let mut kinds: Vec<Step> = self.flows.iter().flat_map(|f| f.steps.clone()).collect();
        kinds.sort();
        kinds.dedup();
        kinds
    }

    /// Whether any flow has more than one step (then `flow` latencies are reported).
    pub fn multi_step(&self) -> bool {
        self.flows.iter().any(|f| f.steps.len() > 1)
    }

    /// Most steps of any flow.
    pub fn max_steps(&self) -> usize {
        self.flows.iter().map(|f| f.steps.len()).max().unwrap_or(1)
    }

    /// The flow arrival `n` runs: deterministic, in proportion to the weights.
    pub fn flow_for(&self, n: u64) -> &Flow {
        let total: u64 = self.flows.iter().map(|f| f.weight).sum();
        let mut slot = n % total.max(1);
        for flow in &self.flows {
            if slot < flow.weight {
                return flow;
            }
            slot -= flow.weight;
        }
        &self.flows[0]
    }

    /// The stages actually run: the scenario's ramp with every rate scaled so that the
    /// highest stage runs at `peak_rate` (or as written when `peak_rate` is `None`), or one
    /// stage of `peak_rate` (default 1000/s) for `duration` when the scenario has no ramp.
    pub fn plan(&self, peak_rate: Option<u64>, duration: Duration) -> Vec<Stage> {
        if self.stages.is_empty() {
            return vec![Stage {
                rate_per_sec: peak_rate.unwrap_or(1000),
                duration,
            }];
        }
        let peak = self
            .stages
            .iter()
            .map(|s| s.rate_per_sec)
            .max()
            .unwrap_or(1);
        match peak_rate {
            None => self.stages.clone(),
            Some(rate) => self
                .stages
                .iter()
                .map(|s| Stage {
                    rate_per_sec: ((u128::from(s.rate_per_sec) * u128::from(rate))
                        .div_ceil(u128::from(peak)) as u64)
                        .max(1),
                    duration: s.duration,
                })
                .collect(),
        }
    }
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

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let place = Scenario::load(&dir.join("place.toml")).unwrap();
        assert_eq!(place.name, "place");
        assert_eq!(place.flows[0].steps, [Step::Place]);
        let lifecycle = Scenario::load(&dir.join("lifecycle.toml")).unwrap();
        assert_eq!(
            lifecycle.flows[0].steps,
            [Step::Place, Step::Pay, Step::Ship, Step::Deliver]
        );
        let bulk = Scenario::load(&dir.join("bulk-ingest.toml")).unwrap();
        assert_eq!(bulk.flows[0].steps, [Step::Bulk]);
        assert_eq!(bulk.bulk.map(|b| b.lines), Some(1000));
        let smoke = Scenario::load(&dir.join("smoke.toml")).unwrap();
        assert!(!smoke.stages.is_empty());
        let total: Duration = smoke.stages.iter().map(|s| s.duration).sum();
        assert!(total <= Duration::from_secs(10), "{total:?}");
        let mixed = Scenario::load(&dir.join("mixed.toml")).unwrap();
        for kind in [Step::Cancel, Step::Refund, Step::Get, Step::Deliver] {
            assert!(mixed.kinds().contains(&kind), "{kind:?}");
        }
        let soak = Scenario::load(&dir.join("soak.toml")).unwrap();
        assert_eq!(soak.sample_interval, Some(Duration::from_secs(60)));
        assert!(
            soak.stages.iter().map(|s| s.duration).sum::<Duration>() >= Duration::from_secs(600)
        );
    }

    #[test]
    fn defaults_fill_the_order_template() {
        let scenario = Scenario::parse("x", r#"steps = ["place"]"#).unwrap();
        assert_eq!(scenario.order, OrderTemplate::default());
        assert_eq!(scenario.flows[0].name, "x");
        let scenario = Scenario::parse(
            "x",
            "steps = [\"place\", \"get\"]\n[order]\ncurrency = \"JPY\"\nunit_prices = [\"500\"]\n",
        )
        .unwrap();
        assert_eq!(scenario.order.currency, "JPY");
        assert_eq!(scenario.order.items_per_order, 1);
    }

    #[test]
    fn stages_ramp_and_rate_scales_them() {
        let scenario = Scenario::parse(
            "ramp",
            "steps = [\"place\"]\n[[stages]]\nrate = 500\nduration = \"10s\"\n\
             [[stages]]\nrate = 1000\nduration = \"500ms\"\n",
        )
        .unwrap();
        let as_written = scenario.plan(None, Duration::from_secs(99));
        assert_eq!(
            as_written,
            [
                Stage {
                    rate_per_sec: 500,
                    duration: Duration::from_secs(10)
                },
                Stage {
                    rate_per_sec: 1000,
                    duration: Duration::from_millis(500)
                },
            ]
        );
        let scaled = scenario.plan(Some(3000), Duration::from_secs(99));
        assert_eq!(scaled[0].rate_per_sec, 1500);
        assert_eq!(scaled[1].rate_per_sec, 3000);
        // No stages: one stage at --rate for --duration.
        let plain = Scenario::parse("p", r#"steps = ["place"]"#).unwrap();
        assert_eq!(
            plain.plan(Some(70), Duration::from_secs(3)),
            [Stage {
                rate_per_sec: 70,
                duration: Duration::from_secs(3)
            }]
        );
    }

    #[test]
    fn flows_are_chosen_by_weight() {
        let scenario = Scenario::parse(
            "m",
            "[[flows]]\nname = \"a\"\nweight = 3\nsteps = [\"place\"]\n\
             [[flows]]\nname = \"b\"\nsteps = [\"place\", \"cancel\"]\n",
        )
        .unwrap();
        let names: Vec<&str> = (0..8).map(|n| scenario.flow_for(n).name.as_str()).collect();
        assert_eq!(names, ["a", "a", "a", "b", "a", "a", "a", "b"]);
        assert!(scenario.multi_step());
        assert_eq!(scenario.max_steps(), 2);
    }

    #[test]
    fn invalid_scenarios_are_refused_naming_the_key() {
        let stage = |rate: &str, duration: &str| {
            format!("steps = [\"place\"]\n[[stages]]\nrate = {rate}\nduration = \"{duration}\"\n")
        };
        let cases = [
            ("steps = []".to_string(), "`steps` must name"),
            (
                r#"steps = ["pay"]"#.into(),
                "`steps[0]`: `pay` before `place`",
            ),
            (
                r#"steps = ["place", "bulk"]"#.into(),
                "`steps`: `bulk` must be the only",
            ),
            (
                r#"steps = ["place", "ship"]"#.into(),
                "`steps[1]`: `ship` cannot follow",
            ),
            (
                r#"steps = ["place", "pay", "pay"]"#.into(),
                "`steps[2]`: `pay`",
            ),
            (
                r#"steps = ["place", "cancel", "refund"]"#.into(),
                "`steps[2]`: `refund`",
            ),
            (
                r#"steps = ["place", "place"]"#.into(),
                "`steps[1]`: `place` may only",
            ),
            (r#"steps = ["bulk"]"#.into(), "[bulk] section"),
            (
                "steps = [\"bulk\"]\n[bulk]\nlines = 0".into(),
                "`bulk.lines` must be",
            ),
            (
                "steps = [\"place\"]\n[bulk]\nlines = 5".into(),
                "only applies",
            ),
            (
                r#"steps = ["teleport"]"#.into(),
                "unknown variant `teleport`",
            ),
            (
                "steps = [\"place\"]\nrate = 5".into(),
                "unknown field `rate`",
            ),
            (
                "steps = [\"place\"]\n[order]\nitems_per_order = 0".into(),
                "`order.items_per_order`",
            ),
            (
                "steps = [\"place\"]\n[order]\ncolour = 1".into(),
                "unknown field `colour`",
            ),
            (stage("0", "1s"), "`stages[0].rate` must be"),
            (stage("-5", "1s"), "`stages[0].rate` must be"),
            (stage("5", "0s"), "`stages[0].duration` must be more than 0"),
            (stage("5", ""), "`stages[0].duration`"),
            (stage("5", "1s") + "speed = 2\n", "unknown field `speed`"),
            ("description = \"x\"".into(), "missing `steps`"),
            (
                "[[flows]]\nname = \"a\"\nsteps = [\"refund\"]\n".into(),
                "`flows[0].steps[0]`: `refund` before `place`",
            ),
            (
                "[[flows]]\nname = \"a\"\nweight = 0\nsteps = [\"place\"]\n".into(),
                "`flows[0].weight`",
            ),
            (
                "sample_interval = \"10ms\"\nsteps = [\"place\"]".into(),
                "`sample_interval`",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", Scenario::parse("x", &text).expect_err(&text));
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
