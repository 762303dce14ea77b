//! `orderly-load`: the outside load client for Orderly. It speaks only Orderly's public HTTP
//! API and depends on none of its crates, so what it measures is what a client sees.
//!
//! It is an *open-model* generator: arrivals follow a fixed-rate schedule whatever the server
//! does, and every latency is measured from the arrival's *intended* time, so a stalled server
//! shows up as latency instead of silently lowering the offered load (coordinated omission).
//!
//! Map of the crate:
//! - [`target`]: the base URL, refused unless it is a loopback address.
//! - [`schedule`]: the fixed-rate schedule of intended send times.
//! - [`scenario`]: scenario files (TOML): which requests one arrival makes.
//! - `payload`: request bodies (orders, NDJSON batches), deterministic per arrival.
//! - `client`: the HTTP calls and how their answers are classified.
//! - `http1`: the lean HTTP/1.1 client under them (pooled keep-alive connections).
//! - [`report`]: HdrHistogram latencies per request kind, counts, the human and JSON reports.
//! - [`metrics`]: the server's counters from its `/metrics`, before and after a run.
//! - [`output`]: the report as Markdown, an SVG plot, and HdrHistogram `.hgrm` text.
//! - [`stream`]: the stream step: `XADD` to the ingest stream, placements read from the outbox.
//! - [`runner`]: the load loop: schedule, bounded concurrency, progress line.
//! - [`knee`]: the knee finder: steps the rate up until p99, errors or drops fail.

pub(crate) mod client;
pub(crate) mod http1;
pub mod knee;
pub mod metrics;
pub mod output;
pub(crate) mod payload;
pub mod payments;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod schedule;
pub mod stream;
pub mod target;
