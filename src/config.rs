//! Layered settings: the embedded `config/default.toml`, then an optional file (`--config`),
//! then `ORDERLY__SECTION__KEY` environment variables, then CLI flags. Every key is known:
//! an unknown key anywhere is an error that names its full path.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The embedded default configuration (memory store, simulated gateways).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Longest `[payments] simulated_ledger_retention_ms`: one day.
pub const MAX_LEDGER_RETENTION_MS: u64 = 86_400_000;

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
    /// Shard ownership: this node's id and the fenced leases it holds on its shards.
    pub cluster: ClusterSettings,
    /// Order timing rules.
    pub orders: OrderSettings,
    /// Durable timer firing.
    pub timers: TimerSettings,
    /// HTTP edge.
    pub api: ApiSettings,
    /// Redis Stream ingestion.
    pub ingest: IngestSettings,
    /// The outbox of business events (Redis store).
    pub outbox: OutboxSettings,
    /// Webhook delivery of outbox events.
    pub webhooks: WebhookSettings,
    /// Payment processing: routing, retries, unknown-outcome sync, circuit breaking.
    pub payments: PaymentSettings,
    /// The configured payment gateways by name (`card`, `alipay`, `wechat`, `http`, ...).
    pub gateways: BTreeMap<String, GatewaySettings>,
}

/// Payment processing, shared by every gateway actor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// Which configured gateway serves each payment method.
    pub routes: PaymentRoutes,
    /// Fault profile of simulated gateways that name none themselves.
    pub fault_profile: String,
    /// Longest wait for one gateway call; a charge that times out has an unknown outcome.
    pub attempt_timeout_ms: u64,
    /// Retries of calls that provably never reached the gateway.
    pub retry: RetrySettings,
    /// Resolution of attempts whose outcome is unknown: query, then reverse.
    pub sync: SyncSettings,
    /// The per-gateway circuit breaker.
    pub breaker: BreakerSettings,
    /// Named fault profiles of the simulated gateways (`healthy`, `flaky`, `outage`, `slow`).
    pub fault_profiles: BTreeMap<String, FaultProfile>,
    /// How long a simulated gateway keeps a charge, reversal or refund record after its last
    /// use (at most twice that); at least `attempt_timeout_ms` + `sync.window_ms`, so every
    /// attempt that can still be queried is on its books.
    pub simulated_ledger_retention_ms: u64,
}

/// Which gateway serves each payment method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentRoutes {
    /// Gateway name for `card`.
    pub card: String,
    /// Gateway name for `alipay`.
    pub alipay: String,
    /// Gateway name for `wechat`.
    pub wechat: String,
}

impl PaymentRoutes {
    /// The gateway name serving `method`.
    pub fn for_method(&self, method: crate::domain::PaymentMethod) -> &str {
        match method {
            crate::domain::PaymentMethod::Card => &self.card,
            crate::domain::PaymentMethod::Alipay => &self.alipay,
            crate::domain::PaymentMethod::Wechat => &self.wechat,
        }
    }

    /// Routes every method to the gateway `name`.
    pub fn all_to(name: &str) -> PaymentRoutes {
        PaymentRoutes {
            card: name.to_string(),
            alipay: name.to_string(),
            wechat: name.to_string(),
        }
    }
}

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[0, min(cap, initial * multiplier^n)]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Ceiling of the first delay.
    pub initial_ms: u64,
    /// Growth of the ceiling per retry (at least 1).
    pub multiplier: f64,
    /// Largest ceiling.
    pub cap_ms: u64,
    /// Most tries of one call, the first included.
    pub attempts_max: u32,
    /// No retry starts after this long since the first try.
    pub elapsed_max_ms: u64,
}

/// Resolution of unknown outcomes: status queries with backoff for `window_ms`, then a
/// reversal (void) with up to `reverse_attempts_max` tries, then review by a human.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// Ceiling of the first delay between queries.
    pub initial_ms: u64,
    /// Growth of the ceiling per query.
    pub multiplier: f64,
    /// Largest delay ceiling between queries.
    pub cap_ms: u64,
    /// How long to keep querying before reversing.
    pub window_ms: u64,
    /// Most queries of one attempt.
    pub queries_max: u32,
    /// Most tries of the reversal before the attempt needs review.
    pub reverse_attempts_max: u32,
}

/// A three-state circuit breaker per gateway; only gateway-health failures (not sent,
/// timeouts, 5xx, resets) count, never declines.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive health failures that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses calls before it lets probes through.
    pub open_ms: u64,
    /// Probes in flight at once while half-open; this many successes close the breaker.
    pub half_open_probes: u32,
}

/// One configured gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// `simulated` (in-process) or `http` (JSON over HTTP to a payment service).
    pub kind: String,
    /// Simulated only: fault profile name; empty uses `payments.fault_profile`.
    #[serde(default)]
    pub fault_profile: String,
    /// Calls in flight at once.
    pub concurrency_max: usize,
    /// Calls started per second (token bucket); 0 means unlimited.
    #[serde(default)]
    pub rate_limit_per_s: u32,
    /// Token bucket size (burst).
    #[serde(default)]
    pub rate_limit_burst: u32,
    /// HTTP only: base URL of the payment service (`http://127.0.0.1:9090`).
    #[serde(default)]
    pub base_url: String,
    /// HTTP only: API key sent as a bearer token.
    #[serde(default)]
    pub api_key: String,
    /// HTTP only: TCP connect timeout; a refused or timed-out connect was never sent.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// HTTP only: idle keep-alive connections kept per host.
    #[serde(default = "default_pool_idle_max")]
    pub pool_idle_max: usize,
}

fn default_connect_timeout_ms() -> u64 {
    500
}

fn default_pool_idle_max() -> usize {
    64
}

/// Faults a simulated gateway (or the mock payment service) injects. Rates are
/// probabilities per call; latencies are base + uniform jitter, plus a tail with `tail_rate`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultProfile {
    /// Fixed part of every call's latency.
    pub latency_base_ms: u64,
    /// Uniform extra latency in `[0, jitter]`.
    pub latency_jitter_ms: u64,
    /// Probability of a slow call.
    pub latency_tail_rate: f64,
    /// Extra latency of a slow call.
    pub latency_tail_ms: u64,
    /// Charges declined for good (stolen card, closed account).
    pub decline_hard_rate: f64,
    /// Charges declined for a reason the customer may fix (insufficient funds).
    pub decline_soft_rate: f64,
    /// Calls that fail before anything is sent (connection refused).
    pub not_sent_rate: f64,
    /// Charges taken whose answer never arrives (the call hangs for `hang_ms`).
    pub timeout_rate: f64,
    /// Calls answered with a 5xx (the charge is taken in half of the cases).
    pub server_error_rate: f64,
    /// Charges accepted as pending that capture only after `late_ms`.
    pub late_success_rate: f64,
    /// How long a timed-out call hangs.
    pub hang_ms: u64,
    /// How long a late success stays pending.
    pub late_ms: u64,
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
    /// After a read of new entries that filled less than half a batch, wait this long before
    /// the next read, so that it takes more at once (0: read again at once). Every placement
    /// of a read shares the engine's commit writes, whose cost is per shard and per call.
    pub linger_ms: u64,
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
    /// Passivate an order as soon as it is settled (terminal, nothing in flight): it can never
    /// change again, so keeping its actor live only caches reads, at about a kilobyte each.
    pub passivate_settled: bool,
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
    /// Wait `flush_interval_us` only while fewer snapshots than this are queued: a batch that
    /// small costs the store as much per write as a full one (the fence, the round trip), and
    /// one of this size or more goes at once. 0: never wait.
    pub linger_batch_below: usize,
    /// Commit groups per arbiter thread: each writes the batches of its shards together, one
    /// write in flight, on a connection of its own. More groups overlap more writes.
    pub groups_per_thread: u32,
}

/// Shard ownership. Each logical shard has one owner at a time, holding a lease with a TTL and
/// a fencing token that only grows; every batch write is checked against the token once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id in shard leases; empty: the host name. A restart under the same id takes
    /// its shards back at once (with a new token that fences the previous incarnation).
    pub node_id: String,
    /// Lifetime of a shard lease that is not renewed.
    pub lease_ttl_ms: u64,
    /// How often the owner renews its leases; 0: a third of `lease_ttl_ms`.
    pub lease_renew_interval_ms: u64,
}

impl ClusterSettings {
    /// The node id to use: the configured one, else the host name, else `orderly`.
    pub fn effective_node_id(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "orderly".to_string())
    }

    /// The renewal period to use.
    pub fn effective_renew_interval_ms(&self) -> u64 {
        if self.lease_renew_interval_ms == 0 {
            (self.lease_ttl_ms / 3).max(1)
        } else {
            self.lease_renew_interval_ms
        }
    }
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
    /// The key of earlier releases, refused at start with a message naming its replacement.
    #[serde(default)]
    pub outbox_maxlen: Option<toml::Value>,
}

/// The outbox: each shard's business events in a Redis stream, appended in the same atomic
/// write as the state change, trimmed only once every consumer group acknowledged them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Whether events are appended at all (required while webhooks are configured).
    pub enabled: bool,
    /// Hard cap of stream entries per shard (an entry holds the events of one shard's
    /// batch): past it, events go to the shard's overflow stream instead, and are counted.
    pub max_entries_per_shard: u64,
    /// How often the trimmer removes what every consumer group acknowledged (0: never).
    pub trim_interval_ms: u64,
}

/// Webhook delivery: one consumer group per receiver on every shard's outbox stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Longest wait for one delivery (connect, send, answer).
    pub timeout_ms: u64,
    /// Most tries of one event, the first included.
    pub attempts_max: u32,
    /// No retry starts after this long since the first try; then the event is dead-lettered.
    pub retry_elapsed_max_ms: u64,
    /// Ceiling of the first retry delay (full jitter: uniform in `[0, ceiling]`).
    pub retry_initial_ms: u64,
    /// Largest retry delay ceiling; the ceiling doubles per retry up to it.
    pub retry_cap_ms: u64,
    /// Deliveries in flight at once per receiver.
    pub concurrency_max: usize,
    /// Entries read per shard stream per poll.
    pub batch_size: usize,
    /// Pause between polls that found nothing.
    pub poll_interval_ms: u64,
    /// Entries left pending this long by a consumer are reclaimed (XAUTOCLAIM).
    pub claim_idle_ms: u64,
    /// The receivers.
    #[serde(default)]
    pub receivers: Vec<WebhookReceiver>,
}

/// One webhook receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiver {
    /// Name in keys, groups and metrics; empty: derived from a hash of the URL.
    #[serde(default)]
    pub name: String,
    /// Where events are POSTed (http:// or https://).
    pub url: String,
    /// HMAC-SHA256 key of the `Orderly-Signature` header.
    #[serde(default)]
    pub secret: String,
    /// Event types to deliver; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookReceiver {
    /// The receiver's name: the configured one, else `r` and 12 hex digits of a hash of its
    /// URL (stable across restarts and nodes).
    pub fn effective_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, self.url.as_bytes());
        format!("r{}", &id.simple().to_string()[..12])
    }
}

/// Order timing rules (durable timers). 0 or `[]` turns a rule off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSettings {
    /// Remind an unpaid customer at these offsets from placement, ascending.
    pub payment_reminders_after_ms: Vec<i64>,
    /// Expire an unpaid order this long after placement.
    pub unpaid_expiry_after_ms: i64,
    /// Complete a shipped order no one confirmed delivered this long after shipping.
    pub auto_complete_after_ms: i64,
    /// Emit `ship_sla_breached` for an order paid and not shipped within this long.
    pub ship_sla_ms: i64,
    /// The scalar key of earlier releases, refused at start with a message naming its
    /// replacement.
    #[serde(default)]
    pub payment_reminder_after_ms: Option<toml::Value>,
}

impl OrderSettings {
    /// The domain policy these settings describe.
    pub fn policy(&self) -> crate::domain::OrderPolicy {
        crate::domain::OrderPolicy {
            payment_reminders_after_ms: self.payment_reminders_after_ms.clone().into(),
            unpaid_expiry_after_ms: self.unpaid_expiry_after_ms,
            auto_complete_after_ms: self.auto_complete_after_ms,
            ship_sla_ms: self.ship_sla_ms,
            payment_check_after_ms: crate::domain::OrderPolicy::default().payment_check_after_ms,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: String| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message,
            })
        };
        if self.payment_reminder_after_ms.is_some() {
            return invalid(
                "orders.payment_reminder_after_ms",
                "was replaced by `orders.payment_reminders_after_ms`, a list of offsets from \
                 placement (e.g. [900000])"
                    .into(),
            );
        }
        const MAX_MS: i64 = 10 * 365 * 24 * 3_600_000;
        let mut previous = 0;
        for (i, &offset) in self.payment_reminders_after_ms.iter().enumerate() {
            if offset <= 0 || offset > MAX_MS {
                return invalid(
                    "orders.payment_reminders_after_ms",
                    format!("entry {i} is {offset}: each offset must be 1..={MAX_MS} ms"),
                );
            }
            if offset <= previous {
                return invalid(
                    "orders.payment_reminders_after_ms",
                    "offsets must be strictly ascending".into(),
                );
            }
            previous = offset;
        }
        if self.payment_reminders_after_ms.len() > 32 {
            return invalid(
                "orders.payment_reminders_after_ms",
                "at most 32 reminders".into(),
            );
        }
        for (key, value) in [
            ("orders.unpaid_expiry_after_ms", self.unpaid_expiry_after_ms),
            ("orders.auto_complete_after_ms", self.auto_complete_after_ms),
            ("orders.ship_sla_ms", self.ship_sla_ms),
        ] {
            if !(0..=MAX_MS).contains(&value) {
                return invalid(key, format!("must be 0 (off) ..={MAX_MS} ms, got {value}"));
            }
        }
        Ok(())
    }
}

/// How shards fire their durable timers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSettings {
    /// How often each shard reads its due timers.
    pub poll_interval_ms: u64,
    /// Most due timers one shard reads and fires per poll.
    pub fire_batch_max: usize,
    /// Most timers this node fires per second, across its shards: what came due while the
    /// engine was down fires at this rate after a start, never as a flood.
    pub catch_up_per_s_max: u32,
}

impl TimerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: &str| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message: message.into(),
            })
        };
        if self.poll_interval_ms == 0 || self.poll_interval_ms > 60_000 {
            return invalid("timers.poll_interval_ms", "must be 1..=60000");
        }
        if self.fire_batch_max == 0 || self.fire_batch_max > 10_000 {
            return invalid("timers.fire_batch_max", "must be 1..=10000");
        }
        if self.catch_up_per_s_max == 0 || self.catch_up_per_s_max > 1_000_000 {
            return invalid("timers.catch_up_per_s_max", "must be 1..=1000000");
        }
        Ok(())
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
    /// The domain's time rules: `[orders]`, with live gateway work checked once an attempt
    /// could have timed out (`[payments] attempt_timeout_ms`) and a second more.
    pub fn policy(&self) -> crate::domain::OrderPolicy {
        let mut policy = self.orders.policy();
        policy.payment_check_after_ms = self.payments.attempt_timeout_ms as i64 + 1_000;
        policy
    }

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

    /// Checks every bound; `load` calls it, and so must anything that changes settings after.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: &str| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message: message.into(),
            })
        };
        if self.engine.shards == 0 || self.engine.shards > 65_536 {
            return invalid("engine.shards", "must be 1..=65536");
        }
        // Sizes, counts and timeouts whose zero (or absurd size) would refuse every request,
        // time every call out at once, block forever or loop: each within a range, named.
        let api = &self.api;
        let ranges: [(&str, u64, u64, u64); 12] = [
            ("api.body_bytes_max", api.body_bytes_max as u64, 1, 64 << 20),
            (
                "api.bulk_body_bytes_max",
                api.bulk_body_bytes_max,
                1,
                1 << 40,
            ),
            (
                "api.bulk_line_bytes_max",
                api.bulk_line_bytes_max as u64,
                1,
                64 << 20,
            ),
            ("api.bulk_lines_max", api.bulk_lines_max, 1, 1 << 40),
            ("api.bulk_batch_size", api.bulk_batch_size as u64, 1, 10_000),
            (
                "api.request_timeout_ms",
                api.request_timeout_ms,
                1,
                3_600_000,
            ),
            ("api.workers", api.workers as u64, 0, 1024),
            (
                "engine.idle_timeout_ms",
                self.engine.idle_timeout_ms,
                1,
                86_400_000,
            ),
            (
                "store.redis.connect_timeout_ms",
                self.store.redis.connect_timeout_ms,
                1,
                600_000,
            ),
            (
                "store.redis.command_timeout_ms",
                self.store.redis.command_timeout_ms,
                1,
                600_000,
            ),
            ("ingest.block_ms", self.ingest.block_ms, 1, 60_000),
            (
                "ingest.batch_size",
                self.ingest.batch_size as u64,
                1,
                100_000,
            ),
        ];
        for (path, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::Invalid {
                    path: path.into(),
                    message: format!("must be {low}..={high}, got {value}"),
                });
            }
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
        if self.commit.linger_batch_below > self.commit.batch_size_max {
            return invalid(
                "commit.linger_batch_below",
                "must be 0..=commit.batch_size_max",
            );
        }
        if self.commit.flush_interval_us > 1_000_000 {
            return invalid("commit.flush_interval_us", "must be 0..=1000000");
        }
        if self.commit.groups_per_thread == 0 || self.commit.groups_per_thread > 64 {
            return invalid("commit.groups_per_thread", "must be 1..=64");
        }
        if self.store.url != "memory" && !self.store.url.starts_with("redis://") {
            return invalid("store.url", "must be `memory` or a redis:// URL");
        }
        if self.store.redis.connections == 0 || self.store.redis.connections > 64 {
            return invalid("store.redis.connections", "must be 1..=64");
        }
        if self.cluster.lease_ttl_ms < 100 || self.cluster.lease_ttl_ms > 3_600_000 {
            return invalid("cluster.lease_ttl_ms", "must be 100..=3600000");
        }
        if self.cluster.lease_renew_interval_ms >= self.cluster.lease_ttl_ms {
            return invalid(
                "cluster.lease_renew_interval_ms",
                "must be shorter than cluster.lease_ttl_ms (0: a third of it)",
            );
        }
        if self.cluster.node_id.len() > 128
            || self
                .cluster
                .node_id
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return invalid(
                "cluster.node_id",
                "must be at most 128 characters without spaces or control characters",
            );
        }
        if self.store.redis.outbox_maxlen.is_some() {
            return invalid(
                "store.redis.outbox_maxlen",
                "was replaced by [outbox] (enabled, max_entries_per_shard): the outbox is no \
                 longer trimmed unread",
            );
        }
        self.orders.validate()?;
        self.timers.validate()?;
        self.validate_outbox()?;
        self.validate_payments()
    }

    fn validate_outbox(&self) -> Result<(), ConfigError> {
        let invalid = |path: String, message: String| Err(ConfigError::Invalid { path, message });
        if self.outbox.max_entries_per_shard == 0 {
            return invalid(
                "outbox.max_entries_per_shard".into(),
                "must be at least 1".into(),
            );
        }
        let webhooks = &self.webhooks;
        if !webhooks.receivers.is_empty() && !self.outbox.enabled {
            return invalid(
                "outbox.enabled".into(),
                "must be true while [[webhooks.receivers]] are configured".into(),
            );
        }
        for (key, value, min) in [
            ("webhooks.timeout_ms", webhooks.timeout_ms, 1),
            ("webhooks.retry_cap_ms", webhooks.retry_cap_ms, 1),
            ("webhooks.poll_interval_ms", webhooks.poll_interval_ms, 1),
            ("webhooks.claim_idle_ms", webhooks.claim_idle_ms, 1),
        ] {
            if value < min {
                return invalid(key.into(), format!("must be at least {min}"));
            }
        }
        if webhooks.attempts_max == 0 || webhooks.attempts_max > 100 {
            return invalid("webhooks.attempts_max".into(), "must be 1..=100".into());
        }
        if webhooks.concurrency_max == 0 || webhooks.concurrency_max > 10_000 {
            return invalid(
                "webhooks.concurrency_max".into(),
                "must be 1..=10000".into(),
            );
        }
        if webhooks.batch_size == 0 || webhooks.batch_size > 10_000 {
            return invalid("webhooks.batch_size".into(), "must be 1..=10000".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, receiver) in webhooks.receivers.iter().enumerate() {
            let path = |key: &str| format!("webhooks.receivers[{i}].{key}");
            if !receiver.url.starts_with("http://") && !receiver.url.starts_with("https://") {
                return invalid(path("url"), "must be an http:// or https:// URL".into());
            }
            if receiver.secret.is_empty() {
                return invalid(
                    path("secret"),
                    "is required (it signs every delivery)".into(),
                );
            }
            let name = receiver.effective_name();
            if name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return invalid(
                    path("name"),
                    "must be at most 64 characters of a-z, A-Z, 0-9, `-`, `_`, `.`".into(),
                );
            }
            if !names.insert(name.clone()) {
                return invalid(path("name"), format!("`{name}` names two receivers"));
            }
            for event in &receiver.events {
                if !crate::domain::OrderEvent::ALL
                    .iter()
                    .any(|e| e.as_str() == event)
                {
                    return invalid(path("events"), format!("`{event}` is not an event type"));
                }
            }
        }
        Ok(())
    }

    fn validate_payments(&self) -> Result<(), ConfigError> {
        let invalid = |path: String, message: &str| {
            Err(ConfigError::Invalid {
                path,
                message: message.into(),
            })
        };
        let payments = &self.payments;
        for method in crate::domain::PaymentMethod::ALL {
            let name = payments.routes.for_method(method);
            if !self.gateways.contains_key(name) {
                return invalid(
                    format!("payments.routes.{}", method.as_str()),
                    "names no configured [gateways.<name>]",
                );
            }
        }
        if !payments
            .fault_profiles
            .contains_key(&payments.fault_profile)
        {
            return invalid(
                "payments.fault_profile".into(),
                "names no [payments.fault_profiles.<name>]",
            );
        }
        if payments.attempt_timeout_ms == 0 {
            return invalid("payments.attempt_timeout_ms".into(), "must be at least 1");
        }
        let queryable_ms = payments
            .attempt_timeout_ms
            .saturating_add(payments.sync.window_ms);
        if payments.simulated_ledger_retention_ms < queryable_ms
            || payments.simulated_ledger_retention_ms > MAX_LEDGER_RETENTION_MS
        {
            return invalid(
                "payments.simulated_ledger_retention_ms".into(),
                &format!(
                    "must be {queryable_ms}..={MAX_LEDGER_RETENTION_MS} (at least \
                     payments.attempt_timeout_ms + payments.sync.window_ms, so every attempt \
                     that can still be queried is on the books)"
                ),
            );
        }
        let retry = &payments.retry;
        if retry.attempts_max == 0 || retry.attempts_max > 100 {
            return invalid("payments.retry.attempts_max".into(), "must be 1..=100");
        }
        if !(1.0..=100.0).contains(&retry.multiplier) {
            return invalid("payments.retry.multiplier".into(), "must be 1..=100");
        }
        if !(1.0..=100.0).contains(&payments.sync.multiplier) {
            return invalid("payments.sync.multiplier".into(), "must be 1..=100");
        }
        if payments.sync.queries_max == 0 || payments.sync.reverse_attempts_max == 0 {
            return invalid(
                "payments.sync".into(),
                "queries_max and reverse_attempts_max must be at least 1",
            );
        }
        if payments.breaker.failures_to_open == 0 || payments.breaker.half_open_probes == 0 {
            return invalid(
                "payments.breaker".into(),
                "failures_to_open and half_open_probes must be at least 1",
            );
        }
        for (name, profile) in &payments.fault_profiles {
            let rates = [
                profile.latency_tail_rate,
                profile.decline_hard_rate,
                profile.decline_soft_rate,
                profile.not_sent_rate,
                profile.timeout_rate,
                profile.server_error_rate,
                profile.late_success_rate,
            ];
            if rates.iter().any(|r| !(0.0..=1.0).contains(r)) {
                return invalid(
                    format!("payments.fault_profiles.{name}"),
                    "rates must be within 0..=1",
                );
            }
        }
        for (name, gateway) in &self.gateways {
            let path = |key: &str| format!("gateways.{name}.{key}");
            if gateway.concurrency_max == 0 {
                return invalid(path("concurrency_max"), "must be at least 1");
            }
            if gateway.rate_limit_per_s > 0 && gateway.rate_limit_burst == 0 {
                return invalid(path("rate_limit_burst"), "must be at least 1 with a rate");
            }
            match gateway.kind.as_str() {
                "simulated" => {
                    if !gateway.fault_profile.is_empty()
                        && !payments.fault_profiles.contains_key(&gateway.fault_profile)
                    {
                        return invalid(
                            path("fault_profile"),
                            "names no [payments.fault_profiles.<name>]",
                        );
                    }
                }
                "http" => {
                    if !gateway.base_url.starts_with("http://")
                        && !gateway.base_url.starts_with("https://")
                    {
                        return invalid(path("base_url"), "must be an http:// URL");
                    }
                }
                _ => return invalid(path("kind"), "must be `simulated` or `http`"),
            }
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

    fn file_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orderly.toml");
        std::fs::write(&path, text).unwrap();
        match Settings::load(Some(&path), std::iter::empty()) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn timer_settings_are_checked_with_the_key_named() {
        let old = file_error("[orders]\npayment_reminder_after_ms = 900000\n");
        assert!(old.contains("orders.payment_reminder_after_ms"), "{old}");
        assert!(old.contains("orders.payment_reminders_after_ms"), "{old}");
        let negative = file_error("[orders]\npayment_reminders_after_ms = [-5]\n");
        assert!(
            negative.contains("orders.payment_reminders_after_ms"),
            "{negative}"
        );
        let scalar = file_error("[orders]\npayment_reminders_after_ms = 900000\n");
        assert!(
            scalar.contains("orders.payment_reminders_after_ms"),
            "{scalar}"
        );
        let unordered = file_error("[orders]\npayment_reminders_after_ms = [2000, 1000]\n");
        assert!(unordered.contains("ascending"), "{unordered}");
        let expiry = file_error("[orders]\nunpaid_expiry_after_ms = -1\n");
        assert!(expiry.contains("orders.unpaid_expiry_after_ms"), "{expiry}");
        let poll = file_error("[timers]\npoll_interval_ms = 0\n");
        assert!(poll.contains("timers.poll_interval_ms"), "{poll}");
        let rate = file_error("[timers]\ncatch_up_per_s_max = 0\n");
        assert!(rate.contains("timers.catch_up_per_s_max"), "{rate}");
        // Off is fine.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("off.toml");
        std::fs::write(
            &path,
            "[orders]\npayment_reminders_after_ms = []\nunpaid_expiry_after_ms = 0\n\
             auto_complete_after_ms = 0\nship_sla_ms = 0\n",
        )
        .unwrap();
        let off = Settings::load(Some(&path), std::iter::empty()).unwrap();
        assert_eq!(off.orders.policy(), crate::domain::OrderPolicy::no_timers());
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
    fn default_routes_each_method_to_its_simulated_gateway() {
        let settings = Settings::embedded_default().unwrap();
        assert_eq!(settings.payments.routes.card, "card");
        assert_eq!(settings.payments.fault_profile, "healthy");
        for name in ["card", "alipay", "wechat"] {
            assert_eq!(settings.gateways[name].kind, "simulated");
        }
        for profile in ["healthy", "flaky", "outage", "slow"] {
            assert!(settings.payments.fault_profiles.contains_key(profile));
        }
        assert_eq!(
            settings.payments.fault_profiles["healthy"],
            FaultProfile::default()
        );
    }

    #[test]
    fn routes_must_name_a_configured_gateway() {
        let err =
            Settings::load(None, env(&[("ORDERLY__PAYMENTS__ROUTES__CARD", "nope")])).unwrap_err();
        assert!(err.to_string().contains("payments.routes.card"), "{err}");
        let err = Settings::load(
            None,
            env(&[("ORDERLY__GATEWAYS__HTTP__BASE_URL", "ftp://x")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("gateways.http.base_url"), "{err}");
    }

    #[test]
    fn the_simulated_ledger_outlasts_every_queryable_attempt() {
        let key = "ORDERLY__PAYMENTS__SIMULATED_LEDGER_RETENTION_MS";
        // attempt_timeout_ms 2000 + sync.window_ms 30000 by default.
        for bad in ["31999", "0", "86400001"] {
            let err = Settings::load(None, env(&[(key, bad)])).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("payments.simulated_ledger_retention_ms") && text.contains("32000"),
                "{bad}: {text}"
            );
        }
        let settings = Settings::load(None, env(&[(key, "32000")])).unwrap();
        assert_eq!(settings.payments.simulated_ledger_retention_ms, 32_000);
    }

    #[test]
    fn zero_sizes_and_timeouts_are_refused_by_name() {
        for key in [
            "api.body_bytes_max",
            "api.bulk_batch_size",
            "api.request_timeout_ms",
            "engine.idle_timeout_ms",
            "store.redis.command_timeout_ms",
            "ingest.block_ms",
        ] {
            let var = format!("ORDERLY__{}", key.replace('.', "__").to_ascii_uppercase());
            let err = Settings::load(None, env(&[(&var, "0")])).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
            assert!(err.to_string().contains("must be 1..="), "{key}: {err}");
        }
        let err =
            Settings::load(None, env(&[("ORDERLY__API__BULK_BATCH_SIZE", "10001")])).unwrap_err();
        assert!(err.to_string().contains("1..=10000"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err =
            Settings::load(None, env(&[("ORDERLY__COMMIT__BATCH_SIZE_MAX", "lots")])).unwrap_err();
        assert!(err.to_string().contains("commit.batch_size_max"), "{err}");
    }

    fn with_receiver(receiver: &str, extra: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooks.toml");
        std::fs::write(
            &path,
            format!("{extra}\n[[webhooks.receivers]]\n{receiver}"),
        )
        .unwrap();
        Settings::load(Some(&path), std::iter::empty())
    }

    #[test]
    fn webhook_receivers_are_checked_naming_the_key() {
        let ok = with_receiver("url = \"https://crm.example/hook\"\nsecret = \"s\"", "")
            .expect("a valid receiver");
        assert!(ok.outbox.enabled, "the outbox is on by default");
        let name = ok.webhooks.receivers[0].effective_name();
        assert!(name.starts_with('r') && name.len() == 13, "{name}");
        for (receiver, extra, key) in [
            (
                "url = \"ftp://x\"\nsecret = \"s\"",
                "",
                "webhooks.receivers[0].url",
            ),
            ("url = \"http://x\"", "", "webhooks.receivers[0].secret"),
            (
                "url = \"http://x\"\nsecret = \"s\"\nevents = [\"nope\"]",
                "",
                "webhooks.receivers[0].events",
            ),
            (
                "url = \"http://x\"\nsecret = \"s\"",
                "[outbox]\nenabled = false",
                "outbox.enabled",
            ),
        ] {
            let err = with_receiver(receiver, extra).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn the_old_outbox_cap_is_refused_by_name() {
        let err = Settings::load(None, env(&[("ORDERLY__STORE__REDIS__OUTBOX_MAXLEN", "10")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("store.redis.outbox_maxlen"), "{err}");
        assert!(err.contains("[outbox]"), "{err}");
    }
}
