//! Where a ClickHouse sink writes, in its own consumer section of `ledgerline.toml`.

use ledgerline_service::config::{ConfigError, Result};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::migrate::{validate_identifier, Layout};

/// Where a ClickHouse sink writes: its own server, user and database, in its own consumer
/// section (`[projector.clickhouse]`, `[archive.clickhouse]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface of the server, `http://host:8123` or `https://host:8443`.
    pub url: String,
    /// The sink's own ClickHouse user; it may write only to `database`. The defaults (user
    /// `projector`, database `ledgerline`) are the projector's: every other sink must name
    /// its own.
    pub user: String,
    /// Password of `user`. Never logged.
    pub password: SecretString,
    /// Database holding the sink's tables and their `schema_migrations`; created at start-up
    /// when missing.
    pub database: String,
    /// How inserts and answers travel: `lz4` (ClickHouse's own block compression) or `none`.
    /// lz4 shrinks rows about fourfold, worth it over a network; on one machine it only
    /// costs both sides CPU (about 8% more insert throughput without it, measured in
    /// docs/benchmarks.md), so the local stack turns it off.
    pub compression: ClickHouseCompression,
    /// The ClickHouse cluster (a `remote_servers` entry) the tables are replicated across;
    /// unset for a single server. With a cluster, migrations run `ON CLUSTER` and create
    /// `Replicated*MergeTree` tables (paths `/clickhouse/tables/{shard}/<database>/<table>`,
    /// replica `{replica}`: each server's macros), plus a `Distributed` table per table the
    /// query API reads (`events_all`, `job_status_all`), which it then reads instead. `url`
    /// is then one of the cluster's servers (writes replicate from it). See
    /// docs/operations.md#scaling.
    pub cluster: Option<String>,
}

/// `compression` of a sink's `clickhouse` table.
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
            password: SecretString::default(),
            database: default_database(),
            compression: ClickHouseCompression::default(),
            cluster: None,
        }
    }
}

/// The local stack's server.
fn default_url() -> String {
    "http://127.0.0.1:8123".to_owned()
}

/// The user `deploy/clickhouse/users.xml.in` creates for the projector, the first sink.
fn default_user() -> String {
    "projector".to_owned()
}

fn default_database() -> String {
    "ledgerline".to_owned()
}

/// A sink section's `clickhouse` table as written, before its sink's defaults fill the gaps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialClickHouseConfig {
    url: Option<String>,
    user: Option<String>,
    password: Option<SecretString>,
    database: Option<String>,
    compression: Option<ClickHouseCompression>,
    cluster: Option<String>,
}

impl ClickHouseConfig {
    /// The local-stack server with another sink's own user and database as defaults (the
    /// serde defaults of this struct are the projector's).
    pub fn for_sink(user: &str, database: &str) -> Self {
        Self {
            user: user.to_owned(),
            database: database.to_owned(),
            ..Self::default()
        }
    }

    /// Deserializes a sink's `clickhouse` table, taking `defaults` for the keys it leaves out:
    /// for `#[serde(deserialize_with)]` in sections whose sink is not the projector, where a
    /// partial `[archive.clickhouse]` must not fall back to the projector's user.
    pub fn deserialize_over<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
        defaults: Self,
    ) -> std::result::Result<Self, D::Error> {
        let partial = PartialClickHouseConfig::deserialize(deserializer)?;
        Ok(Self {
            url: partial.url.unwrap_or(defaults.url),
            user: partial.user.unwrap_or(defaults.user),
            password: partial.password.unwrap_or(defaults.password),
            database: partial.database.unwrap_or(defaults.database),
            compression: partial.compression.unwrap_or(defaults.compression),
            cluster: partial.cluster.or(defaults.cluster),
        })
    }

    /// Checks what serde cannot; keys are named `<section>.<key>`
    /// (`projector.clickhouse.url`).
    pub fn validate(&self, section: &str) -> Result<()> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid_value(
                format!("{section}.url"),
                format!(
                    "`{}` must start with http:// or https:// (the HTTP interface)",
                    self.url
                ),
            ));
        }
        if self.user.trim().is_empty() {
            return Err(ConfigError::invalid_value(
                format!("{section}.user"),
                "must not be empty",
            ));
        }
        if validate_identifier(&self.database).is_err() {
            return Err(ConfigError::invalid_value(
                format!("{section}.database"),
                format!(
                    "`{}` must match ^[A-Za-z_][A-Za-z0-9_]*$ (it is written into SQL)",
                    self.database
                ),
            ));
        }
        if let Some(cluster) = &self.cluster {
            if validate_identifier(cluster).is_err() {
                return Err(ConfigError::invalid_value(
                    format!("{section}.cluster"),
                    format!(
                        "`{cluster}` must match ^[A-Za-z_][A-Za-z0-9_]*$ (it is written into SQL)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Where the tables live: one server, or replicated across `cluster`.
    pub fn layout(&self) -> Layout {
        match &self.cluster {
            Some(cluster) => Layout::Cluster(cluster.clone()),
            None => Layout::Single,
        }
    }

    /// A client for this server and user. Row validation is off: the `clickhouse` crate's
    /// validation sends a setting ClickHouse 18.16 does not know, and the row types are checked
    /// against the real tables by the integration tests instead. Queries name the database
    /// explicitly, so the client does not pin one.
    pub fn client(&self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_password(self.password.expose_secret())
            .with_validation(false)
            .with_compression(match self.compression {
                ClickHouseCompression::Lz4 => clickhouse::Compression::Lz4,
                ClickHouseCompression::None => clickhouse::Compression::None,
            })
    }
}
