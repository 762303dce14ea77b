//! Settings for tests.

use orderly::config::Settings;

/// The embedded defaults with the store at `url` (`memory` or a harness Redis), sized for a
/// 2-core machine: 8 shards on 2 arbiters, 2 Redis connections, a 1 s connect timeout.
pub fn for_store(url: &str) -> Settings {
    let mut settings = Settings::embedded_default().expect("embedded settings load");
    settings.store.url = url.to_string();
    settings.engine.shards = 8;
    settings.engine.arbiters = 2;
    settings.store.redis.connections = 2;
    settings.store.redis.connect_timeout_ms = 1000;
    settings
}
