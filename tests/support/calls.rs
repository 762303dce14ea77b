//! Bounded engine calls for tests: every wait has a deadline, so a hang fails the test with a
//! message instead of stalling the suite.

use std::time::Duration;

use orderly::domain::{Command, CommandEnvelope, OrderId};
use orderly::engine::{Admission, CommandResult, Engine, Request};

/// Longest wait for any single engine or store call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Awaits `future`, panicking with `what` past [`CALL_TIMEOUT`].
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    within_for(what, CALL_TIMEOUT, future).await
}

/// Awaits `future`, panicking with `what` past `limit`.
pub async fn within_for<T>(
    what: &str,
    limit: Duration,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {limit:?}"))
}

/// Applies `command` to `id` (a fresh command id) and waits for the durable answer.
pub async fn run(engine: &Engine, id: OrderId, command: Command) -> CommandResult {
    within(
        "execute",
        engine.execute(
            id,
            Request::Command(CommandEnvelope::new(command)),
            Admission::Wait,
        ),
    )
    .await
}
