//! Shared helpers for integration tests. Include with `mod support;` from a
//! file directly under `tests/`.

// Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

pub mod calls;
pub mod orders;
pub mod outbox;
pub mod receiver;
pub mod redis_server;
pub mod serve;
pub mod settings;
pub mod stored;
