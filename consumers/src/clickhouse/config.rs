//! `[clickhouse]` (where the projector writes) and `[projector]` (how it batches and how long
//! it keeps each category) in `ledgerline.toml`. Every key can be overridden with
//! `LEDGERLINE_<SECTION>__<KEY>`, e.g. `LEDGERLINE_CLICKHOUSE__PASSWORD` or
//! `LEDGERLINE_PROJECTOR__RETENTION_DAYS__AUDIT`.

use std::fmt;
use std::time::Duration;

use ledgerline_schemas::Category;
use ledgerline_service::config::{ConfigError, Result};
use serde::Deserialize;

use super::schema;

/// `[clickhouse]`: the server and the database the projector writes to.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface of the server, `http://host:8123` or `https://host:8443`.
    pub url: String,
    /// The projector's ClickHouse user; it may write only to `database`.
    pub user: String,
    /// Password of `user`. Never logged.
    pub password: String,
    /// Database holding `events`, `job_status` and `schema_migrations`; created at start-up
    /// when missing.
    pub database: String,
    /// How inserts and answers travel: `lz4` (ClickHouse's own block compression) or `none`.
    /// lz4 shrinks rows about fourfold, worth it over a network; on one machine it only
    /// costs both sides CPU (about 8% more insert throughput without it, measured in
    /// docs/benchmarks.md), so the local stack turns it off.
    pub compression: ClickHouseCompression,
}

/// `[clickhouse] compression`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClickHouseCompression {
    #[default]
    Lz4,
    None,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            user: default_user(),
            password: String::new(),
            database: default_database(),
            compression: ClickHouseCompression::default(),
        }
    }
}

/// The local stack's server.
fn default_url() -> String {
    "http://127.0.0.1:8123".to_owned()
}

/// The user `deploy/clickhouse/users.xml.in` creates for the projector.
fn default_user() -> String {
    "projector".to_owned()
}

fn default_database() -> String {
    "ledgerline".to_owned()
}

// Passwords must never reach a log line, so Debug is written by hand.
impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = if self.password.is_empty() {
            ""
        } else {
            "[REDACTED]"
        };
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &password)
            .field("database", &self.database)
            .field("compression", &self.compression)
            .finish()
    }
}

impl ClickHouseConfig {
    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid_value(
                "clickhouse.url",
                format!(
                    "`{}` must start with http:// or https:// (the HTTP interface)",
                    self.url
                ),
            ));
        }
        if self.user.trim().is_empty() {
            return Err(ConfigError::invalid_value(
                "clickhouse.user",
                "must not be empty",
            ));
        }
        if schema::validate_identifier(&self.database).is_err() {
            return Err(ConfigError::invalid_value(
                "clickhouse.database",
                format!(
                    "`{}` must match ^[A-Za-z_][A-Za-z0-9_]*$ (it is written into SQL)",
                    self.database
                ),
            ));
        }
        Ok(())
    }

    /// A client for this server and user. Row validation is off: the `clickhouse` crate's
    /// validation sends a setting ClickHouse 18.16 does not know, and the row types are checked
    /// against the real tables by the integration tests instead. Queries name the database
    /// explicitly, so the client does not pin one.
    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(&self.password)
            .with_validation(false)
            .with_compression(match self.compression {
                ClickHouseCompression::Lz4 => clickhouse::Compression::Lz4,
                ClickHouseCompression::None => clickhouse::Compression::None,
            })
    }
}

/// `[projector]`: batching, size limits and retention of the ClickHouse projector.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    /// Kafka consumer group; every projector replica of one deployment shares it.
    pub group_id: String,
    /// Where `/health` and `/metrics` are served.
    pub listen: std::net::SocketAddr,
    /// A batch is inserted when it holds this many events (or when `batch_max_wait_ms` passes,
    /// whichever comes first). At most 1,000,000, so one insert stays one ClickHouse block (and
    /// so one part) under the default `max_insert_block_size` of 1,048,576.
    pub batch_max_events: usize,
    /// A batch is inserted at the latest this many milliseconds after its first event arrived.
    pub batch_max_wait_ms: u64,
    /// How many days of each category `events` keeps, counted in days of ingestion (UTC).
    pub retention_days: RetentionDays,
    /// How often the projector looks for expired partitions to drop, in seconds.
    pub retention_check_interval_secs: u64,
    /// Events whose encoded record is larger than this many bytes go to the dead-letter topic
    /// instead of ClickHouse.
    pub max_event_bytes: usize,
    /// How long the broker may hold a fetch that has no data yet (librdkafka's
    /// `fetch.wait.max.ms`, default 500). Kafka answers as soon as there is data, so on Kafka
    /// this only bounds idle waits (20 empty fetches a second while idle). Tansu 0.6.0 waits
    /// this long (half of it from 250 ms up) after every fetch, data or not, which at 500 cost
    /// the projector a third of its throughput (docs/benchmarks.md). 0 to 300,000.
    pub fetch_wait_max_ms: u64,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            group_id: default_group_id(),
            listen: default_listen(),
            batch_max_events: default_batch_max_events(),
            batch_max_wait_ms: default_batch_max_wait_ms(),
            retention_days: RetentionDays::default(),
            retention_check_interval_secs: default_retention_check_interval_secs(),
            max_event_bytes: default_max_event_bytes(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
        }
    }
}

fn default_group_id() -> String {
    "ledgerline-clickhouse".to_owned()
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9101))
}

/// Large enough for ClickHouse to like the parts, small enough to insert in well under a second.
fn default_batch_max_events() -> usize {
    50_000
}

fn default_batch_max_wait_ms() -> u64 {
    1_000
}

fn default_retention_check_interval_secs() -> u64 {
    3_600
}

fn default_max_event_bytes() -> usize {
    1024 * 1024
}

fn default_fetch_wait_max_ms() -> u64 {
    50
}

/// Largest accepted `batch_max_events`; see that field.
pub const MAX_BATCH_EVENTS: usize = 1_000_000;

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
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::invalid_value(
                "projector.group_id",
                "must not be empty",
            ));
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&self.batch_max_events) {
            return Err(ConfigError::invalid_value(
                "projector.batch_max_events",
                format!(
                    "{} must be between 1 and {MAX_BATCH_EVENTS}, so one batch is one \
                     ClickHouse insert",
                    self.batch_max_events
                ),
            ));
        }
        if self.batch_max_wait_ms == 0 {
            return Err(ConfigError::invalid_value(
                "projector.batch_max_wait_ms",
                "must be at least 1",
            ));
        }
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
        if self.fetch_wait_max_ms > 300_000 {
            return Err(ConfigError::invalid_value(
                "projector.fetch_wait_max_ms",
                format!(
                    "{} must be at most 300000 (librdkafka's limit)",
                    self.fetch_wait_max_ms
                ),
            ));
        }
        if self.max_event_bytes == 0 {
            return Err(ConfigError::invalid_value(
                "projector.max_event_bytes",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }

    pub fn fetch_wait_max(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_max_ms)
    }

    pub fn retention_check_interval(&self) -> Duration {
        Duration::from_secs(self.retention_check_interval_secs)
    }
}

#[cfg(test)]
mod tests {
    use ledgerline_service::ConfigSource;

    use super::*;

    #[test]
    fn missing_sections_take_the_documented_defaults() {
        let source = ConfigSource::from_toml_str("").unwrap();
        let clickhouse: ClickHouseConfig = source.section("clickhouse").unwrap();
        let projector: ProjectorConfig = source.section("projector").unwrap();
        assert_eq!(clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(clickhouse.user, "projector");
        assert_eq!(clickhouse.password, "");
        assert_eq!(clickhouse.database, "ledgerline");
        assert_eq!(projector.batch_max_events, 50_000);
        assert_eq!(projector.batch_max_wait(), Duration::from_secs(1));
        assert_eq!(
            projector.retention_check_interval(),
            Duration::from_secs(3600)
        );
        assert_eq!(projector.max_event_bytes, 1024 * 1024);
        assert_eq!(projector.fetch_wait_max(), Duration::from_millis(50));
        assert_eq!(clickhouse.compression, ClickHouseCompression::Lz4);
        let days: Vec<Option<u32>> = Category::ALL
            .into_iter()
            .map(|category| projector.retention_days.for_category(category))
            .collect();
        assert_eq!(days, [Some(365), Some(30), Some(30), Some(30), None]);
        clickhouse.validate().unwrap();
        projector.validate().unwrap();
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let source = ConfigSource::from_toml_str(
            "[projector]\nbatch_max_events = 10\n[projector.retention_days]\njob = 7\n",
        )
        .unwrap();
        let projector: ProjectorConfig = source.section("projector").unwrap();
        assert_eq!(projector.batch_max_events, 10);
        assert_eq!(projector.retention_days.job, 7);
        assert_eq!(projector.retention_days.audit, 365);
        assert_eq!(projector.batch_max_wait_ms, 1000);
    }

    #[test]
    fn compression_is_lz4_or_none() {
        let source = ConfigSource::from_toml_str("[clickhouse]\ncompression = \"none\"\n").unwrap();
        let clickhouse: ClickHouseConfig = source.section("clickhouse").unwrap();
        assert_eq!(clickhouse.compression, ClickHouseCompression::None);
        let source = ConfigSource::from_toml_str("[clickhouse]\ncompression = \"zstd\"\n").unwrap();
        let error = source
            .section::<ClickHouseConfig>("clickhouse")
            .unwrap_err()
            .to_string();
        assert!(error.contains("clickhouse.compression"), "{error}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let source =
            ConfigSource::from_toml_str("[projector.retention_days]\nsession = 1\n").unwrap();
        let error = source
            .section::<ProjectorConfig>("projector")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("projector.retention_days.session"),
            "{error}"
        );
    }

    type Breaker<T> = fn(&mut T);

    #[test]
    fn validate_names_the_bad_key() {
        let cases: [(&str, Breaker<ProjectorConfig>); 6] = [
            ("projector.batch_max_events", |c| c.batch_max_events = 0),
            ("projector.batch_max_events", |c| {
                c.batch_max_events = MAX_BATCH_EVENTS + 1
            }),
            ("projector.batch_max_wait_ms", |c| c.batch_max_wait_ms = 0),
            ("projector.retention_days.connection", |c| {
                c.retention_days.connection = 0
            }),
            ("projector.max_event_bytes", |c| c.max_event_bytes = 0),
            ("projector.fetch_wait_max_ms", |c| {
                c.fetch_wait_max_ms = 300_001
            }),
        ];
        for (key, break_it) in cases {
            let mut config = ProjectorConfig::default();
            break_it(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }

        let cases: [(&str, Breaker<ClickHouseConfig>); 3] = [
            ("clickhouse.url", |c| c.url = "127.0.0.1:8123".to_owned()),
            ("clickhouse.user", |c| c.user = " ".to_owned()),
            ("clickhouse.database", |c| {
                c.database = "ledgerline; DROP TABLE x".to_owned()
            }),
        ];
        for (key, break_it) in cases {
            let mut config = ClickHouseConfig::default();
            break_it(&mut config);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = ClickHouseConfig {
            password: "hunter2".to_owned(),
            ..ClickHouseConfig::default()
        };
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("[REDACTED]"), "{debug}");
    }
}
