//! Scenario files: TOML that says what one arrival does.
//!
//! ```toml
//! description = "Place an order, then pay, ship and deliver it."
//! steps = ["place", "pay", "ship", "deliver"]   # or ["bulk"]
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

use anyhow::{bail, Context};
use serde::Deserialize;

/// Most line items per generated order (Orderly's own limit is 256).
pub const ITEMS_PER_ORDER_MAX: usize = 256;
/// Most lines per bulk request.
pub const BULK_LINES_MAX: usize = 100_000;

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
    /// `POST /v1/orders/bulk` with an NDJSON body.
    Bulk,
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
            Step::Bulk => "bulk",
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    description: String,
    steps: Vec<Step>,
    #[serde(default)]
    order: OrderTemplate,
    bulk: Option<BulkSettings>,
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The file's stem (`place` for `place.toml`).
    pub name: String,
    /// What it exercises.
    pub description: String,
    /// Requests of one arrival, in order; each after the previous one succeeded.
    pub steps: Vec<Step>,
    /// Generated orders.
    pub order: OrderTemplate,
    /// Bulk shape (only for a bulk scenario).
    pub bulk: Option<BulkSettings>,
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
        let scenario = Scenario {
            name: name.to_string(),
            description: file.description,
            steps: file.steps,
            order: file.order,
            bulk: file.bulk,
        };
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> anyhow::Result<()> {
        match self.steps.as_slice() {
            [] => bail!("`steps` must name at least one request"),
            [Step::Bulk] => match &self.bulk {
                None => bail!("a bulk scenario needs a [bulk] section with `lines`"),
                Some(bulk) if bulk.lines == 0 || bulk.lines > BULK_LINES_MAX => {
                    bail!("[bulk] lines must be 1..={BULK_LINES_MAX}")
                }
                Some(_) => {}
            },
            [Step::Place, rest @ ..] => {
                if rest.iter().any(|s| matches!(s, Step::Place | Step::Bulk)) {
                    bail!("after the first `place`, steps may only be pay, ship, deliver or get");
                }
                if self.bulk.is_some() {
                    bail!("[bulk] only applies to steps = [\"bulk\"]");
                }
            }
            _ => bail!("`steps` must be [\"bulk\"] or start with \"place\""),
        }
        let order = &self.order;
        if order.items_per_order == 0 || order.items_per_order > ITEMS_PER_ORDER_MAX {
            bail!("[order] items_per_order must be 1..={ITEMS_PER_ORDER_MAX}");
        }
        if order.unit_prices.is_empty() {
            bail!("[order] unit_prices must not be empty");
        }
        if order.skus == 0 {
            bail!("[order] skus must be at least 1");
        }
        Ok(())
    }

    /// Distinct request kinds, in step order.
    pub fn kinds(&self) -> Vec<Step> {
        let mut kinds = self.steps.clone();
        kinds.dedup();
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let place = Scenario::load(&dir.join("place.toml")).unwrap();
        assert_eq!(place.name, "place");
        assert_eq!(place.steps, [Step::Place]);
        let lifecycle = Scenario::load(&dir.join("lifecycle.toml")).unwrap();
        assert_eq!(
            lifecycle.steps,
            [Step::Place, Step::Pay, Step::Ship, Step::Deliver]
        );
        let bulk = Scenario::load(&dir.join("bulk.toml")).unwrap();
        assert_eq!(bulk.steps, [Step::Bulk]);
        assert!(bulk.bulk.is_some_and(|b| b.lines > 0));
    }

    #[test]
    fn defaults_fill_the_order_template() {
        let scenario = Scenario::parse("x", r#"steps = ["place"]"#).unwrap();
        assert_eq!(scenario.order, OrderTemplate::default());
        let scenario = Scenario::parse(
            "x",
            "steps = [\"place\", \"get\"]\n[order]\ncurrency = \"JPY\"\nunit_prices = [\"500\"]\n",
        )
        .unwrap();
        assert_eq!(scenario.order.currency, "JPY");
        assert_eq!(scenario.order.items_per_order, 1);
    }

    #[test]
    fn invalid_scenarios_are_refused_with_a_reason() {
        let cases = [
            ("steps = []", "at least one"),
            (r#"steps = ["pay"]"#, "start with"),
            (r#"steps = ["place", "bulk"]"#, "may only be"),
            (r#"steps = ["bulk"]"#, "[bulk] section"),
            ("steps = [\"bulk\"]\n[bulk]\nlines = 0", "lines must be"),
            ("steps = [\"place\"]\n[bulk]\nlines = 5", "only applies"),
            (r#"steps = ["teleport"]"#, "unknown variant"),
            ("steps = [\"place\"]\nrate = 5", "unknown field"),
            (
                "steps = [\"place\"]\n[order]\nitems_per_order = 0",
                "items_per_order",
            ),
        ];
        for (text, expected) in cases {
            let error = format!("{:#}", Scenario::parse("x", text).expect_err(text));
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
