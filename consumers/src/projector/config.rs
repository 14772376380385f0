//! `[projector]` in `ledgerline.toml`: the settings every consumer has (flattened, see
//! [`ConsumerSettings`]), where `/health` and `/metrics` are served, where it writes
//! (`[projector.clickhouse]`), and how long it keeps each category. Every key can be
//! overridden with `LEDGERLINE_PROJECTOR__<KEY>`, e.g. `LEDGERLINE_PROJECTOR__BATCH_MAX_EVENTS`,
//! `LEDGERLINE_PROJECTOR__CLICKHOUSE__PASSWORD` or `LEDGERLINE_PROJECTOR__RETENTION_DAYS__AUDIT`.

use std::time::Duration;

use ledgerline_schemas::Category;
use ledgerline_service::config::{ConfigError, ConfigSource, Result};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use serde::Deserialize;

use crate::clickhouse::ClickHouseConfig;
use crate::runtime::ConsumerSettings;

/// The projector's consumer group, unless `[projector] group_id` names another.
pub const DEFAULT_GROUP_ID: &str = "ledgerline-clickhouse";

/// `[projector]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Group, batching, size limit and fetch wait: the keys every consumer section has.
    #[serde(flatten)]
    pub consumer: ConsumerSettings,
    /// Where `/health` and `/metrics` are served.
    pub listen: std::net::SocketAddr,
    /// The projector's server, user (`projector`) and database (`ledgerline`).
    pub clickhouse: ClickHouseConfig,
    /// How many days of each category `events` keeps, counted in days of ingestion (UTC).
    pub retention_days: RetentionDays,
    /// How often the projector looks for expired partitions to drop, in seconds.
    pub retention_check_interval_secs: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            consumer: ConsumerSettings::default(),
            listen: default_listen(),
            clickhouse: ClickHouseConfig::default(),
            retention_days: RetentionDays::default(),
            retention_check_interval_secs: default_retention_check_interval_secs(),
        }
    }
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9101))
}

fn default_retention_check_interval_secs() -> u64 {
    3_600
}

/// `[projector.retention_days]`: days each stored category is kept. Session events are never
/// stored, so they have no entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionDays {
    /// Audit events: kept a year by default, for security review.
    pub audit: u32,
    /// Job lifecycle and progress events.
    pub job: u32,
    /// Device connection events.
    pub connection: u32,
    /// Service logs.
    pub system: u32,
}

impl Default for RetentionDays {
    fn default() -> Self {
        Self {
            audit: default_audit_retention_days(),
            job: default_operational_retention_days(),
            connection: default_operational_retention_days(),
            system: default_operational_retention_days(),
        }
    }
}

fn default_audit_retention_days() -> u32 {
    365
}

fn default_operational_retention_days() -> u32 {
    30
}

impl RetentionDays {
    /// Days to keep `category`; `None` for session events, which are never stored.
    pub fn for_category(&self, category: Category) -> Option<u32> {
        match category {
            Category::Audit => Some(self.audit),
            Category::Job => Some(self.job),
            Category::Connection => Some(self.connection),
            Category::System => Some(self.system),
            Category::Session => None,
        }
    }
}

impl ProjectorConfig {
    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        self.consumer.validate("projector")?;
        self.clickhouse.validate("projector.clickhouse")?;
        for category in Category::ALL {
            // Zero days would drop the partition being written to.
            if self.retention_days.for_category(category) == Some(0) {
                return Err(ConfigError::invalid_value(
                    format!("projector.retention_days.{category}"),
                    "must be at least 1",
                ));
            }
        }
        if self.retention_check_interval_secs == 0 {
            return Err(ConfigError::invalid_value(
                "projector.retention_check_interval_secs",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn retention_check_interval(&self) -> Duration {
        Duration::from_secs(self.retention_check_interval_secs)
    }
}

/// Everything the projector reads from `ledgerline.toml`, validated.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    pub kafka: KafkaConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub projector: ProjectorConfig,
}

impl ProjectorSettings {
    /// Reads and validates `[kafka]`, `[schema_registry]` and `[projector]`.
    pub fn load(source: &ConfigSource) -> Result<Self> {
        let settings = Self {
            kafka: source.section("kafka")?,
            schema_registry: source.section("schema_registry")?,
            projector: source.section("projector")?,
        };
        settings.kafka.validate()?;
        settings.schema_registry.validate()?;
        settings.projector.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::clickhouse::ClickHouseCompression;

    #[test]
    fn missing_sections_take_the_documented_defaults() {
        let settings = ProjectorSettings::load(&ConfigSource::from_toml_str("").unwrap()).unwrap();
        let projector = settings.projector;
        let clickhouse = &projector.clickhouse;
        assert_eq!(clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(clickhouse.user, "projector");
        assert_eq!(clickhouse.password.expose_secret(), "");
        assert_eq!(clickhouse.database, "ledgerline");
        assert_eq!(clickhouse.compression, ClickHouseCompression::Lz4);
        assert_eq!(projector.consumer.group_id, None);
        assert_eq!(projector.consumer.batch_max_events, 50_000);
        assert_eq!(projector.consumer.batch_max_wait_ms, 1_000);
        assert_eq!(projector.consumer.max_event_bytes, 1024 * 1024);
        assert_eq!(projector.consumer.fetch_wait_max_ms, 50);
        assert_eq!(
            projector.retention_check_interval(),
            Duration::from_secs(3600)
        );
        let days: Vec<Option<u32>> = Category::ALL
            .into_iter()
            .map(|category| projector.retention_days.for_category(category))
            .collect();
        assert_eq!(days, [Some(365), Some(30), Some(30), Some(30), None]);
        for category in Category::ALL {
            assert_eq!(
                projector.retention_days.for_category(category).is_some(),
                super::super::STORED_CATEGORIES.contains(&category),
                "{category}: a retention setting exactly for the stored categories"
            );
        }
    }

    #[test]
    fn flattened_and_nested_keys_keep_the_other_defaults() {
        let source = ConfigSource::from_toml_str(
            "[projector]\nbatch_max_events = 10\ngroup_instance_id = \"p-0\"\n\
             [projector.retention_days]\njob = 7\n\
             [projector.clickhouse]\ncompression = \"none\"\n",
        )
        .unwrap();
        let projector: ProjectorConfig = source.section("projector").unwrap();
        assert_eq!(projector.consumer.batch_max_events, 10);
        assert_eq!(projector.consumer.group_instance_id.as_deref(), Some("p-0"));
        assert_eq!(projector.consumer.batch_max_wait_ms, 1000);
        assert_eq!(projector.retention_days.job, 7);
        assert_eq!(projector.retention_days.audit, 365);
        assert_eq!(
            projector.clickhouse.compression,
            ClickHouseCompression::None
        );
        assert_eq!(projector.clickhouse.user, "projector");
    }

    #[test]
    fn unknown_and_mistyped_keys_are_named() {
        for (toml, key) in [
            (
                "[projector.retention_days]\nsession = 1\n",
                "projector.retention_days.session",
            ),
            (
                "[projector]\nbatch_max_event = 1\n",
                "projector.batch_max_event",
            ),
            (
                "[projector]\nbatch_max_events = \"many\"\n",
                "projector.batch_max_events",
            ),
            (
                "[projector.clickhouse]\ncompression = \"zstd\"\n",
                "projector.clickhouse.compression",
            ),
        ] {
            let source = ConfigSource::from_toml_str(toml).unwrap();
            let error = source
                .section::<ProjectorConfig>("projector")
                .unwrap_err()
                .to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
    }

    type Breaker = fn(&mut ProjectorConfig);

    #[test]
    fn validate_names_the_bad_key() {
        let cases: [(&str, Breaker); 6] = [
            ("projector.batch_max_events", |c| {
                c.consumer.batch_max_events = 0
            }),
            ("projector.fetch_wait_max_ms", |c| {
                c.consumer.fetch_wait_max_ms = 300_001
            }),
            ("projector.retention_days.connection", |c| {
                c.retention_days.connection = 0
            }),
            ("projector.clickhouse.url", |c| {
                c.clickhouse.url = "127.0.0.1:8123".to_owned()
            }),
            ("projector.clickhouse.user", |c| {
                c.clickhouse.user = " ".to_owned()
            }),
            ("projector.clickhouse.database", |c| {
                c.clickhouse.database = "ledgerline; DROP TABLE x".to_owned()
            }),
        ];
        for (key, break_it) in cases {
            let mut config = ProjectorConfig::default();
            config.validate().unwrap();
            break_it(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let source =
            ConfigSource::from_toml_str("[projector.clickhouse]\npassword = \"hunter2\"\n")
                .unwrap();
        let projector: ProjectorConfig = source.section("projector").unwrap();
        assert_eq!(projector.clickhouse.password.expose_secret(), "hunter2");
        let debug = format!("{projector:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
