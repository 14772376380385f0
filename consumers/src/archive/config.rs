//! `[archive]` in `ledgerline.toml`: the consumer settings every consumer has (flattened), the
//! `/health` listener, `[archive.clickhouse]` (user `archiver`, database `ledgerline_audit` by
//! default), the signing key files, the checkpoint cadence and the optional self-verify.
//! Every key can be overridden with `LEDGERLINE_ARCHIVE__<KEY>`, e.g.
//! `LEDGERLINE_ARCHIVE__SIGNING_KEY_FILE` or `LEDGERLINE_ARCHIVE__CLICKHOUSE__PASSWORD`.

use std::path::PathBuf;
use std::time::Duration;

use ledgerline_service::config::{ConfigError, ConfigSource, Result};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use serde::Deserialize;

use crate::clickhouse::ClickHouseConfig;
use crate::runtime::ConsumerSettings;

/// The archiver's consumer group, unless `[archive] group_id` names another.
pub const DEFAULT_GROUP_ID: &str = "ledgerline-archive";
/// The archiver's ClickHouse user in `deploy/clickhouse/users.xml.in`.
pub const DEFAULT_USER: &str = "archiver";
/// The archive's database.
pub const DEFAULT_DATABASE: &str = "ledgerline_audit";

/// `[archive]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Group, batching, size limit and fetch wait: the keys every consumer section has.
    #[serde(flatten)]
    pub consumer: ConsumerSettings,
    /// Where `/health` and `/metrics` are served.
    pub listen: std::net::SocketAddr,
    /// The archiver's server, user (`archiver`) and database (`ledgerline_audit`).
    #[serde(deserialize_with = "archive_clickhouse")]
    pub clickhouse: ClickHouseConfig,
    /// The Ed25519 key that signs checkpoints: a file written by `ledgerline-consumer archive
    /// keygen`. Required to run the archiver; readable by its user only.
    pub signing_key_file: Option<PathBuf>,
    /// Set during a key rotation: the key that signed the checkpoints so far. For each
    /// partition whose last checkpoint it signed, the archiver first writes a rotation
    /// checkpoint signed by it that names the new key, then signs with `signing_key_file`.
    pub previous_signing_key_file: Option<PathBuf>,
    /// Public keys (hex) the self-verify trusts besides the signing keys' own; e.g. keys
    /// retired long ago whose checkpoints are still in the window.
    pub trusted_public_keys: Vec<String>,
    /// A checkpoint is written after this many chain entries of a partition...
    pub checkpoint_every_records: u64,
    /// ...or this many seconds after the first entry not yet checkpointed, whichever is first.
    pub checkpoint_every_secs: u64,
    /// How often the archiver verifies its own newest checkpoints and sets
    /// `ledgerline_archive_verify_ok`; 0 turns it off.
    pub self_verify_interval_secs: u64,
    /// How many of each partition's newest checkpoints the self-verify covers.
    pub self_verify_checkpoints: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            consumer: ConsumerSettings::default(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9102)),
            clickhouse: ClickHouseConfig::for_sink(DEFAULT_USER, DEFAULT_DATABASE),
            signing_key_file: None,
            previous_signing_key_file: None,
            trusted_public_keys: Vec::new(),
            checkpoint_every_records: 10_000,
            checkpoint_every_secs: 60,
            self_verify_interval_secs: 300,
            self_verify_checkpoints: 3,
        }
    }
}

fn archive_clickhouse<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<ClickHouseConfig, D::Error> {
    ClickHouseConfig::deserialize_over(
        deserializer,
        ClickHouseConfig::for_sink(DEFAULT_USER, DEFAULT_DATABASE),
    )
}

impl ArchiveConfig {
    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        self.consumer.validate("archive")?;
        self.clickhouse.validate("archive.clickhouse")?;
        if self.checkpoint_every_records == 0 {
            return Err(ConfigError::invalid_value(
                "archive.checkpoint_every_records",
                "must be at least 1",
            ));
        }
        if self.checkpoint_every_secs == 0 {
            return Err(ConfigError::invalid_value(
                "archive.checkpoint_every_secs",
                "must be at least 1",
            ));
        }
        if self.self_verify_checkpoints == 0 {
            return Err(ConfigError::invalid_value(
                "archive.self_verify_checkpoints",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    pub fn checkpoint_every(&self) -> Duration {
        Duration::from_secs(self.checkpoint_every_secs)
    }
}

/// Everything the archiver reads from `ledgerline.toml`, validated.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub kafka: KafkaConfig,
    pub schema_registry: SchemaRegistryConfig,
    pub archive: ArchiveConfig,
}

impl ArchiveSettings {
    /// Reads and validates `[kafka]`, `[schema_registry]` and `[archive]`.
    pub fn load(source: &ConfigSource) -> Result<Self> {
        let settings = Self {
            kafka: source.section("kafka")?,
            schema_registry: source.section("schema_registry")?,
            archive: source.section("archive")?,
        };
        settings.kafka.validate()?;
        settings.schema_registry.validate()?;
        settings.archive.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_clickhouse_table_keeps_the_archivers_user_and_database() {
        let source = ConfigSource::from_toml_str(
            "[archive]\ncheckpoint_every_records = 5\n[archive.clickhouse]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap();
        let archive: ArchiveConfig = source.section("archive").unwrap();
        assert_eq!(archive.clickhouse.user, "archiver");
        assert_eq!(archive.clickhouse.database, "ledgerline_audit");
        assert_eq!(archive.clickhouse.url, "http://127.0.0.1:1");
        assert_eq!(archive.checkpoint_every_records, 5);
        assert_eq!(archive.checkpoint_every_secs, 60);
        let defaults = ArchiveSettings::load(&ConfigSource::from_toml_str("").unwrap()).unwrap();
        assert_eq!(defaults.archive.clickhouse.user, "archiver");
        assert_eq!(defaults.archive.checkpoint_every_records, 10_000);
    }

    #[test]
    fn unknown_keys_and_zero_cadences_are_named() {
        for (toml, key) in [
            (
                "[archive]\ncheckpoint_every = 1\n",
                "archive.checkpoint_every",
            ),
            (
                "[archive.clickhouse]\nuser_name = \"x\"\n",
                "archive.clickhouse",
            ),
        ] {
            let source = ConfigSource::from_toml_str(toml).unwrap();
            let error = source
                .section::<ArchiveConfig>("archive")
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{key}: {error}");
        }
        let config = ArchiveConfig {
            checkpoint_every_secs: 0,
            ..ArchiveConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("archive.checkpoint_every_secs"), "{error}");
    }
}
