//! Layered settings: the embedded `config/default.toml`, then an optional file (`--config`),
//! then `ORDERLY__SECTION__KEY` environment variables, then CLI flags. Every key is known:
//! an unknown key anywhere is an error that names its full path.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The embedded default configuration (memory store, simulated gateways).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// A file is not valid TOML.
    #[error("{origin} is not valid TOML: {message}")]
    Syntax {
        /// Where the text came from.
        origin: String,
        /// Parser message.
        message: String,
    },
    /// A key is unknown or a value has the wrong type.
    #[error("invalid setting `{path}`: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// All settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Actors, shards and bounds.
    pub engine: EngineSettings,
    /// Group commit.
    pub commit: CommitSettings,
    /// Snapshot store.
    pub store: StoreSettings,
    /// Order timing rules.
    pub orders: OrderSettings,
    /// HTTP edge.
    pub api: ApiSettings,
    /// Redis Stream ingestion.
    pub ingest: IngestSettings,
}

/// HTTP edge (`orderly serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Listen address; port 0 picks a free port (the bound address is logged).
    pub listen: String,
    /// Bearer tokens allowed on write endpoints; empty means no auth, and then `serve` only
    /// binds loopback addresses.
    pub keys: Vec<String>,
    /// Whether `/healthz`, `/readyz` and `/metrics` are open without a key.
    pub public_health: bool,
    /// Tenant used to derive order ids from idempotency keys.
    pub tenant: String,
    /// Largest JSON body of a single request.
    pub body_bytes_max: usize,
    /// Largest bulk NDJSON body.
    pub bulk_body_bytes_max: u64,
    /// Longest NDJSON line.
    pub bulk_line_bytes_max: usize,
    /// Most lines in one bulk request.
    pub bulk_lines_max: u64,
    /// Lines handed to the engine per call while streaming a bulk body.
    pub bulk_batch_size: usize,
    /// How long a single request may wait for its durable answer.
    pub request_timeout_ms: u64,
    /// Worker threads of the HTTP server (0: one per core).
    pub workers: usize,
}

/// Redis Stream ingestion: several engine processes share one bulk stream through a
/// consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Whether `serve` consumes the stream.
    pub enabled: bool,
    /// Redis URL of the stream (defaults to the store's when empty).
    pub url: String,
    /// Stream key holding orders (field `order`: the JSON order).
    pub stream: String,
    /// Consumer group.
    pub group: String,
    /// This consumer's name (unique per process).
    pub consumer: String,
    /// Entries per XREADGROUP.
    pub batch_size: usize,
    /// XREADGROUP BLOCK time.
    pub block_ms: u64,
    /// Entries pending longer than this on a dead consumer are reclaimed (XAUTOCLAIM).
    pub claim_idle_ms: u64,
    /// Stream that receives rejected entries with their reason.
    pub dead_letter_stream: String,
}

/// Actor topology and bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Logical shards; part of every Redis key, so fixed per deployment.
    pub shards: u32,
    /// Arbiter threads hosting the shards (0: one per available core).
    pub arbiters: usize,
    /// Live order actors per shard; beyond it the least recently used idle order is passivated
    /// (settled orders first).
    pub max_live_orders_per_shard: usize,
    /// An order with no command for this long is passivated.
    pub idle_timeout_ms: u64,
    /// Bounded mailbox of each shard actor (messages, each possibly a batch).
    pub shard_mailbox_capacity: usize,
    /// Most commands in flight for one order; more are refused as overload.
    pub order_commands_in_flight_max: u32,
    /// Commands parked per shard while the live set is full of busy orders.
    pub waiting_commands_max: usize,
}

/// Group commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitSettings {
    /// Most snapshots in one store write.
    pub batch_size_max: usize,
    /// How long a non-full batch may wait for more snapshots (0: flush as soon as the shard's
    /// ready work has run; batches then form while the previous write is in flight).
    pub flush_interval_us: u64,
}

/// Snapshot store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory` or a `redis://host:port/db` URL.
    pub url: String,
    /// Redis specifics.
    pub redis: RedisSettings,
}

/// Redis store specifics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Multiplexed connections in the pool.
    pub connections: usize,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Per-command timeout; a write that times out is not acknowledged.
    pub command_timeout_ms: u64,
    /// Key prefix (`<prefix>:{<shard>}:order:<uuid>`).
    pub key_prefix: String,
    /// Approximate cap of each shard's outbox stream (0: no outbox events).
    pub outbox_maxlen: u64,
}

/// Order timing rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSettings {
    /// Remind an unpaid customer after this long (0: never).
    pub payment_reminder_after_ms: i64,
    /// Expire an unpaid order after this long (0: never).
    pub unpaid_expiry_after_ms: i64,
}

impl OrderSettings {
    /// The domain policy these settings describe.
    pub fn policy(&self) -> crate::domain::OrderPolicy {
        crate::domain::OrderPolicy {
            payment_reminder_after_ms: self.payment_reminder_after_ms,
            unpaid_expiry_after_ms: self.unpaid_expiry_after_ms,
        }
    }
}

fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parses an environment value as a TOML scalar (number, bool), falling back to a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl Settings {
    /// The embedded defaults alone.
    pub fn embedded_default() -> Result<Settings, ConfigError> {
        Settings::load(None, std::iter::empty())
    }

    /// Loads defaults, then `file`, then `ORDERLY__SECTION__KEY` pairs from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table = parse_toml(DEFAULT_TOML, "config/default.toml")?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            merge(&mut table, parse_toml(&text, &path.display().to_string())?);
        }
        let overrides: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("ORDERLY__"))
            .collect();
        for (key, raw) in overrides {
            let path: Vec<String> = key["ORDERLY__".len()..]
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect();
            let mut overlay = toml::Table::new();
            let mut cursor = &mut overlay;
            for (i, part) in path.iter().enumerate() {
                if i + 1 == path.len() {
                    cursor.insert(part.clone(), env_value(&raw));
                } else {
                    cursor = cursor
                        .entry(part.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .ok_or_else(|| ConfigError::Invalid {
                            path: key.clone(),
                            message: "not a section".into(),
                        })?;
                }
            }
            merge(&mut table, overlay);
        }
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::Invalid {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: &str| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message: message.into(),
            })
        };
        if self.engine.shards == 0 || self.engine.shards > 65_536 {
            return invalid("engine.shards", "must be 1..=65536");
        }
        if self.engine.max_live_orders_per_shard == 0 {
            return invalid("engine.max_live_orders_per_shard", "must be at least 1");
        }
        if self.engine.shard_mailbox_capacity == 0 {
            return invalid("engine.shard_mailbox_capacity", "must be at least 1");
        }
        if self.engine.order_commands_in_flight_max == 0 {
            return invalid("engine.order_commands_in_flight_max", "must be at least 1");
        }
        if self.commit.batch_size_max == 0 || self.commit.batch_size_max > 10_000 {
            return invalid("commit.batch_size_max", "must be 1..=10000");
        }
        if self.store.url != "memory" && !self.store.url.starts_with("redis://") {
            return invalid("store.url", "must be `memory` or a redis:// URL");
        }
        if self.store.redis.connections == 0 || self.store.redis.connections > 64 {
            return invalid("store.redis.connections", "must be 1..=64");
        }
        Ok(())
    }

    /// Number of arbiter threads to start.
    pub fn arbiter_count(&self) -> usize {
        if self.engine.arbiters > 0 {
            self.engine.arbiters
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default_is_memory() {
        let settings = Settings::embedded_default().unwrap();
        assert_eq!(settings.store.url, "memory");
        assert_eq!(settings.engine.shards, 64);
    }

    #[test]
    fn environment_overrides_typed_values() {
        let settings = Settings::load(
            None,
            env(&[
                ("ORDERLY__ENGINE__SHARDS", "8"),
                ("ORDERLY__STORE__URL", "redis://127.0.0.1:1/"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.engine.shards, 8);
        assert_eq!(settings.store.url, "redis://127.0.0.1:1/");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = Settings::load(None, env(&[("ORDERLY__ENGINE__SHARDZ", "8")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("shardz"), "{text}");
        let err = Settings::load(None, env(&[("ORDERLY__NOPE__X", "1")])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn production_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.toml");
        let settings = Settings::load(Some(&path), std::iter::empty()).unwrap();
        assert!(settings.store.url.starts_with("redis://"));
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err =
            Settings::load(None, env(&[("ORDERLY__COMMIT__BATCH_SIZE_MAX", "lots")])).unwrap_err();
        assert!(err.to_string().contains("commit.batch_size_max"), "{err}");
    }
}
