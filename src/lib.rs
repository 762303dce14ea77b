//! Orderly: an actor-based, high-throughput order engine.
//!
//! Map of the crate (layers point one way: `domain` ← `engine` ← edges):
//! - [`domain`]: pure Rust: money, orders, payment records, the state machine `apply`.
//! - [`store`]: the snapshot store port (fenced shard leases, atomic batch writes), with the
//!   in-memory and Redis implementations, the versioned MessagePack snapshot codec and the
//!   outbox event encoding.
//! - [`engine`]: actors: the cloneable [`engine::Engine`] handle, shard actors (routing,
//!   activation, passivation, supervision, group commit) and one order actor per live order.
//! - [`gateway`]: payment gateways (the in-process simulated gateway actor).
//! - [`ingest`]: bulk ingestion from a Redis Stream consumer group (acknowledged after
//!   persistence, dead letters for invalid entries).
//! - [`config`]: layered settings (TOML file + `ORDERLY__SECTION__KEY` environment).
//! - [`telemetry`]: every metric name, description and histogram bucket.
//! - [`wire`]: the JSON shape of an order for clients.
//! - [`api`]: the HTTP edge (actix-web): orders, bulk NDJSON, health, metrics, OpenAPI.
//! - [`app`]: the composition root: store → engine → HTTP app, shared by `serve`, `demo` and
//!   the tests.
//! - [`webhooks`]: delivery of outbox events to HTTP receivers (a consumer group per
//!   receiver, signed, retried, dead-lettered) and the outbox trimmer.
//! - [`cli`]: the `orderly` command line (`serve`, `demo`, `inspect`, `events`).

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod gateway;
pub mod ingest;
pub mod store;
pub mod telemetry;
pub mod webhooks;
pub mod wire;
