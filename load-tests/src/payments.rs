//! The mock payment service's counters (`GET /v1/stats` of `mock_payments`), read before and
//! after a run and reported as differences (`flaky-gateways`).

use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::target::Target;

/// The counters of `GET /v1/stats` the report uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Stats {
    /// Distinct keys charged.
    pub charges: u64,
    /// Charge requests for a known key, answered from the record.
    pub duplicates_refused: u64,
    /// Orders with more than one captured, unreversed charge.
    pub double_charges: u64,
}

/// Differences of the mock's counters over a run (after − before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PaymentCounters {
    /// Keys charged during the run.
    pub charges: u64,
    /// Repeated keys refused during the run.
    pub duplicates_refused: u64,
    /// Double charges that appeared during the run. Must be 0.
    pub double_charges: u64,
}

impl PaymentCounters {
    /// After − before (saturating).
    pub fn between(before: &Stats, after: &Stats) -> PaymentCounters {
        PaymentCounters {
            charges: after.charges.saturating_sub(before.charges),
            duplicates_refused: after
                .duplicates_refused
                .saturating_sub(before.duplicates_refused),
            double_charges: after.double_charges.saturating_sub(before.double_charges),
        }
    }
}

/// Reads the mock's `GET /v1/stats`.
pub async fn stats(mock: &Target, api_key: Option<&str>) -> anyhow::Result<Stats> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut request = client.get(mock.url("/v1/stats"));
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("reading {}", mock.url("/v1/stats")))?
        .error_for_status()?;
    Ok(response.json::<Stats>().await?)
}
