//! `[api]` in `ledgerline.toml`: where the API listens, its two ClickHouse users (`api` for
//! `ledgerline`, `auditor` for `ledgerline_audit`; never the projector's or the archiver's),
//! the keys it accepts, the archive's public keys for audit review, and its limits.
//! Every scalar can be overridden with `LEDGERLINE_API__<KEY>`, e.g.
//! `LEDGERLINE_API__CLICKHOUSE__PASSWORD`; keys are a list of tables and live in the file.
//!
//! The audit-of-audit events are published with `[producer]`, `[kafka]` and
//! `[schema_registry]`, like any other service's.

use std::net::SocketAddr;
use std::path::PathBuf;

use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::projector::queries::ReadLimits;
use ledgerline_producer::ProducerConfig;
use ledgerline_service::config::{ConfigError, ConfigSource, Result};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use serde::Deserialize;

use crate::auth::KeyEntry;

/// The service name the API publishes its own audit events under.
pub const SERVICE_NAME: &str = "ledgerline-api";

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// The API's address (REST, `/health`, `/metrics`, `/openapi.json`).
    pub listen: SocketAddr,
    /// `ledgerline` as the `api` user (read-only).
    #[serde(deserialize_with = "events_clickhouse")]
    pub clickhouse: ClickHouseConfig,
    /// `ledgerline_audit` as the `auditor` user (read-only).
    #[serde(deserialize_with = "audit_clickhouse")]
    pub audit_clickhouse: ClickHouseConfig,
    /// The accepted keys, hashed (see `ledgerline-api keys create`).
    pub keys: Vec<KeyEntry>,
    /// The archive's public keys (hex) that audit review trusts for checkpoint signatures.
    pub archive_public_keys: Vec<String>,
    /// Files holding such keys (the archiver's `public.key`), read at start-up.
    pub archive_public_key_files: Vec<PathBuf>,
    pub limits: LimitsConfig,
    pub stream: StreamConfig,
}

/// `[api.stream]`: the live stream (`GET /v1/stream`) and its fan-out consumer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Run the fan-out consumer and serve `/v1/stream`. Off, `/v1/stream` answers 503.
    pub enabled: bool,
    /// Open streams at once, all keys together; more are refused with 429 before the upgrade.
    pub max_connections: usize,
    /// Open streams at once per key.
    pub max_connections_per_key: usize,
    /// Events waiting for one client. When it is full the client's newer events are dropped
    /// and counted, and it gets one `lagged` message with the count once it has room again.
    pub queue_events: usize,
    /// A client that keeps dropping events this long (its queue never empties in between) is
    /// disconnected with close code 4410 `too_slow`.
    pub slow_client_timeout_secs: u64,
    /// A `heartbeat` message (and a ping) this often.
    pub heartbeat_secs: u64,
    /// A client that sends nothing (not even a pong) this long is closed with 4408
    /// `idle_timeout`.
    pub idle_timeout_secs: u64,
    /// The largest message a client may send (its filter changes); larger ones are answered
    /// with `message_too_large` and close code 1009.
    pub max_message_bytes: usize,
    /// Resumes (`since=`) reading from Kafka or ClickHouse at once; more wait their turn.
    pub max_concurrent_resumes: usize,
    /// The most stored events one `since=<time>` replays from ClickHouse; beyond it the client
    /// gets `history_too_large` and is closed (ask `/v1/events` for long histories).
    pub max_history_events: u64,
    /// The most Kafka records (all categories, before filtering) one resume may have to read
    /// to catch up; beyond it the client gets `backlog_too_large` and is closed.
    pub max_resume_records: u64,
    /// The fan-out consumer hands events on at least this often (ms) while they arrive.
    pub fanout_batch_max_wait_ms: u64,
    /// The fan-out consumer's `fetch.wait.max.ms` (see `[projector] fetch_wait_max_ms`).
    pub fanout_fetch_wait_max_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_connections: 10_000,
            max_connections_per_key: 1_000,
            queue_events: 1_024,
            slow_client_timeout_secs: 30,
            heartbeat_secs: 15,
            idle_timeout_secs: 60,
            max_message_bytes: 16 * 1024,
            max_concurrent_resumes: 16,
            max_history_events: 100_000,
            max_resume_records: 5_000_000,
            fanout_batch_max_wait_ms: 5,
            fanout_fetch_wait_max_ms: 50,
        }
    }
}

impl StreamConfig {
    fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_key",
                self.max_connections_per_key as u64,
            ),
            ("queue_events", self.queue_events as u64),
            ("slow_client_timeout_secs", self.slow_client_timeout_secs),
            ("heartbeat_secs", self.heartbeat_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_concurrent_resumes", self.max_concurrent_resumes as u64),
            ("max_history_events", self.max_history_events),
            ("max_resume_records", self.max_resume_records),
            ("fanout_batch_max_wait_ms", self.fanout_batch_max_wait_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid_value(
                    format!("api.stream.{key}"),
                    "must be greater than 0",
                ));
            }
        }
        if self.idle_timeout_secs <= self.heartbeat_secs {
            return Err(ConfigError::invalid_value(
                "api.stream.idle_timeout_secs",
                format!(
                    "must be longer than heartbeat_secs ({}): clients answer the heartbeat's ping",
                    self.heartbeat_secs
                ),
            ));
        }
        if self.fanout_fetch_wait_max_ms > 300_000 {
            return Err(ConfigError::invalid_value(
                "api.stream.fanout_fetch_wait_max_ms",
                "must be at most 300000 (librdkafka's limit)",
            ));
        }
        Ok(())
    }
}

/// `[api.limits]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// The longest `since`..`until` range a search, histogram or top-N may cover.
    pub max_range_secs: u64,
    /// `limit` when none is asked for.
    pub default_page: u64,
    /// The largest `limit` accepted.
    pub max_page: u64,
    /// ClickHouse `max_execution_time` for every query.
    pub max_execution_time_secs: u64,
    /// ClickHouse `max_rows_to_read` for every query.
    pub max_rows_to_read: u64,
    /// The most histogram buckets one answer may hold (range / interval).
    pub max_buckets: u64,
    /// Requests per second each key may make on average...
    pub rate_per_second: u32,
    /// ...and in a burst.
    pub rate_burst: u32,
    /// How long an audit read waits for its audit event to be acknowledged before it is
    /// refused with 503.
    pub audit_publish_timeout_ms: u64,
    /// Requests one key may have in progress at once; more get 429. With the rate limit this
    /// bounds the ClickHouse work one client can start.
    pub max_in_flight_per_key: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_range_secs: 31 * 24 * 3600,
            default_page: 100,
            max_page: 1000,
            max_execution_time_secs: 10,
            max_rows_to_read: 500_000_000,
            max_buckets: 2_000,
            rate_per_second: 50,
            rate_burst: 200,
            audit_publish_timeout_ms: 10_000,
            max_in_flight_per_key: 8,
        }
    }
}

impl LimitsConfig {
    pub fn read_limits(&self) -> ReadLimits {
        ReadLimits {
            max_execution_time_secs: self.max_execution_time_secs,
            max_rows_to_read: self.max_rows_to_read,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            clickhouse: ClickHouseConfig::for_sink("api", "ledgerline"),
            audit_clickhouse: ClickHouseConfig::for_sink("auditor", "ledgerline_audit"),
            keys: Vec::new(),
            archive_public_keys: Vec::new(),
            archive_public_key_files: Vec::new(),
            limits: LimitsConfig::default(),
            stream: StreamConfig::default(),
        }
    }
}

fn events_clickhouse<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<ClickHouseConfig, D::Error> {
    ClickHouseConfig::deserialize_over(
        deserializer,
        ClickHouseConfig::for_sink("api", "ledgerline"),
    )
}

fn audit_clickhouse<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<ClickHouseConfig, D::Error> {
    ClickHouseConfig::deserialize_over(
        deserializer,
        ClickHouseConfig::for_sink("auditor", "ledgerline_audit"),
    )
}

/// Users the API must never connect as: they can write.
const WRITERS: &[&str] = &["projector", "archiver", "default"];

impl ApiConfig {
    pub fn validate(&self) -> Result<()> {
        self.clickhouse.validate("api.clickhouse")?;
        self.audit_clickhouse.validate("api.audit_clickhouse")?;
        for (section, config) in [
            ("api.clickhouse", &self.clickhouse),
            ("api.audit_clickhouse", &self.audit_clickhouse),
        ] {
            if WRITERS.contains(&config.user.as_str()) {
                return Err(ConfigError::invalid_value(
                    format!("{section}.user"),
                    format!(
                        "`{}` can write; the API reads as the read-only `api` and `auditor` users",
                        config.user
                    ),
                ));
            }
        }
        // Checked here, before anything connects, so a bad entry stops start-up at once.
        crate::auth::KeyStore::new(&self.keys)
            .map_err(|error| ConfigError::invalid_value("api.keys", error.to_string()))?;
        let limits = &self.limits;
        for (key, value) in [
            ("max_range_secs", limits.max_range_secs),
            ("default_page", limits.default_page),
            ("max_page", limits.max_page),
            ("max_execution_time_secs", limits.max_execution_time_secs),
            ("max_rows_to_read", limits.max_rows_to_read),
            ("max_buckets", limits.max_buckets),
            ("rate_per_second", u64::from(limits.rate_per_second)),
            ("rate_burst", u64::from(limits.rate_burst)),
            ("audit_publish_timeout_ms", limits.audit_publish_timeout_ms),
            (
                "max_in_flight_per_key",
                u64::from(limits.max_in_flight_per_key),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid_value(
                    format!("api.limits.{key}"),
                    "must be greater than 0",
                ));
            }
        }
        self.stream.validate()?;
        if limits.default_page > limits.max_page {
            return Err(ConfigError::invalid_value(
                "api.limits.default_page",
                format!("must not exceed max_page ({})", limits.max_page),
            ));
        }
        Ok(())
    }
}

/// Everything `ledgerline-api` reads from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub api: ApiConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub producer: ProducerConfig,
}

impl ApiSettings {
    /// Reads and validates `[api]`, `[kafka]`, `[schema_registry]` and `[producer]`. The
    /// producer's `service_name` is always `ledgerline-api`: the file's `[producer]` is shared
    /// by every process of a deployment (the local stack's demo included), and an audit read
    /// must be attributed to the API whatever it says.
    pub fn load(source: &ConfigSource) -> Result<Self> {
        let mut producer: ProducerConfig = source.section("producer")?;
        producer.service_name = SERVICE_NAME.to_owned();
        let settings = Self {
            api: source.section("api")?,
            kafka: source.section("kafka")?,
            schema_registry: source.section("schema_registry")?,
            producer,
        };
        settings.api.validate()?;
        settings.kafka.validate()?;
        settings.schema_registry.validate()?;
        settings.producer.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_read_as_the_api_and_auditor_users() {
        let settings = ApiSettings::load(&ConfigSource::from_toml_str("").unwrap()).unwrap();
        assert_eq!(settings.api.clickhouse.user, "api");
        assert_eq!(settings.api.clickhouse.database, "ledgerline");
        assert_eq!(settings.api.audit_clickhouse.user, "auditor");
        assert_eq!(settings.api.audit_clickhouse.database, "ledgerline_audit");
        assert_eq!(settings.api.listen.port(), 8080);
        assert_eq!(settings.producer.service_name, SERVICE_NAME);
    }

    #[test]
    fn writers_are_refused_and_unknown_keys_named() {
        let error = ApiSettings::load(
            &ConfigSource::from_toml_str("[api.clickhouse]\nuser = \"projector\"\n").unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("api.clickhouse.user"), "{error}");
        let error =
            ApiSettings::load(&ConfigSource::from_toml_str("[api]\nlisten_port = 1\n").unwrap())
                .unwrap_err()
                .to_string();
        assert!(error.contains("listen_port"), "{error}");
    }

    #[test]
    fn keys_parse() {
        let settings = ApiSettings::load(
            &ConfigSource::from_toml_str(&format!(
                "[[api.keys]]\nid = \"a\"\nrole = \"auditor\"\nsha256 = \"{}\"\n",
                crate::auth::key_hash("k")
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(settings.api.keys.len(), 1);
        assert_eq!(settings.api.keys[0].role, crate::auth::Role::Auditor);
    }
}
