//! The HTTP edge end to end: a real server on `127.0.0.1:0` inside each test's actix System,
//! driven over HTTP with reqwest, on the memory store or a throw-away `redis-server`.

#[path = "../support/mod.rs"]
mod support;

mod app;

mod auth;
mod bulk;
mod errors;
mod idempotency;
mod operations;
mod orders;
mod serve;
