//! The composition root: the one place that builds the store, the engine and the HTTP app from
//! settings. `orderly serve`, `orderly demo` and the tests all start Orderly through it, so
//! they run the same assembly.

use std::sync::Arc;
use std::time::Duration;

use crate::api::{Application, StartError};
use crate::clock::SystemClock;
use crate::config::Settings;
use crate::engine::Engine;
use crate::store::{SnapshotStore, StoreError};
use crate::webhooks::OutboxTasks;

/// How long a start waits for the engine to hold its shard leases before serving anyway
/// (requests then wait for, or are refused by, the shards still acquiring).
const LEASES_WAIT: Duration = Duration::from_secs(5);

/// A running engine on its store.
pub struct Orderly {
    /// The settings it was built from (after every override).
    pub settings: Settings,
    /// The snapshot store.
    pub store: Arc<dyn SnapshotStore>,
    /// The engine handle.
    pub engine: Engine,
    /// The outbox trimmer and webhook delivery tasks (Redis store with the outbox on).
    pub outbox: Option<OutboxTasks>,
}

impl Orderly {
    /// Opens the store named by the settings and starts the engine on it (inside an actix
    /// `System`), waiting a bounded time for its shard leases; on Redis with the outbox on,
    /// also the outbox trimmer and a webhook delivery task per configured receiver.
    pub async fn start(settings: Settings) -> Result<Orderly, StoreError> {
        let store = crate::store::open(&settings).await?;
        let mut orderly = Orderly::start_on(settings, store).await;
        match crate::webhooks::start(&orderly.settings, SystemClock::shared()).await {
            Ok(tasks) => orderly.outbox = tasks,
            Err(error) => {
                orderly.engine.stop();
                return Err(error);
            }
        }
        Ok(orderly)
    }

    /// Stops the outbox tasks, then the engine (releasing its shard leases).
    pub async fn shutdown(self) {
        if let Some(tasks) = self.outbox {
            tasks.stop().await;
        }
        self.engine.shutdown().await;
    }

    /// Starts the engine on an already opened store (tests share one store between engines).
    pub async fn start_on(settings: Settings, store: Arc<dyn SnapshotStore>) -> Orderly {
        let engine = Engine::start(&settings, Arc::clone(&store));
        if !engine.wait_until_owned(LEASES_WAIT).await {
            tracing::warn!(
                "not every shard lease was acquired at start; retrying in the background"
            );
        }
        Orderly {
            settings,
            store,
            engine,
            outbox: None,
        }
    }

    /// Binds the HTTP app (`[api]`) in front of the engine.
    pub fn http(&self) -> Result<Application, StartError> {
        Application::build(&self.settings.api, self.engine.clone())
    }
}
