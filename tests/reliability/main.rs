//! The reliability suite: real load through real processes on loopback (`orderly serve`,
//! redis-server and the mock payment service), real faults, and one checker
//! ([`checker`]) comparing what clients were told with what the store, the outbox and the
//! payment service hold. It prints one table: per fault, how many times it was injected, the
//! commands acknowledged, the commands lost (must be 0), the double charges (must be 0) and
//! the recovery time.
//!
//! `cargo test --test reliability -- --nocapture` runs the short version (CI) and prints the
//! table; `RELIABILITY_LONG=1 cargo test --release --test reliability -- --nocapture` the long
//! one; `RELIABILITY_FAULTS=crash,hostile` picks faults.

#[path = "../support/mod.rs"]
mod support;

#[path = "../../load-tests/src/bin/mock_payments.rs"]
#[allow(dead_code)]
mod mock_payments;

mod checker;
mod driver;
mod faults;
mod hostile;

use faults::Row;

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| fault | injected | commands acknowledged | orders | lost | double charges | other findings | recovery |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let f = &row.findings;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.fault,
            row.injected,
            f.acknowledged,
            f.orders,
            f.lost.len(),
            f.double_charges.len(),
            f.inconsistent.len() + f.stuck.len() + f.outbox_gaps.len(),
            row.recovery
                .map_or_else(|| "-".to_string(), |d| format!("{} ms", d.as_millis())),
        ));
    }
    out
}

/// Whether `fault` is selected by `RELIABILITY_FAULTS` (a comma-separated list of `crash`,
/// `redis-restart`, `redis-slow`, `gateway`, `hostile`; all when unset).
fn wanted(fault: &str) -> bool {
    match std::env::var("RELIABILITY_FAULTS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|f| f.trim() == fault),
        _ => true,
    }
}

/// Every fault in turn (they share the machine's two cores, so never at once), then one table.
#[actix_rt::test]
async fn nothing_acknowledged_is_lost_and_nothing_is_charged_twice() {
    let mut rows = Vec::new();
    if wanted("crash") {
        rows.push(faults::engine_crash().await);
    }
    if wanted("redis-restart") {
        rows.push(faults::redis_restart().await);
    }
    if wanted("redis-slow") {
        rows.push(faults::redis_slow_or_full().await);
    }
    if wanted("gateway") {
        rows.push(faults::gateway_chaos().await);
    }
    if wanted("hostile") {
        rows.extend(
            tokio::task::spawn_blocking(hostile::rows)
                .await
                .expect("the hostile-input run"),
        );
    }
    assert!(!rows.is_empty(), "RELIABILITY_FAULTS selected no fault");
    println!("\n{}", table(&rows));
    for row in &rows {
        println!("{}: {}", row.fault, row.notes);
    }
    let mut failures = Vec::new();
    for row in &rows {
        if !row.findings.clean() {
            failures.push(format!("{}: {}", row.fault, row.findings.summary()));
        }
        if row.findings.acknowledged == 0 {
            failures.push(format!("{}: nothing was acknowledged", row.fault));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
