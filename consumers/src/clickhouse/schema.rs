//! Versioned schema migrations, applied at start-up by [`migrate`].
//!
//! Each migration is a version, a description and DDL statements. Applied versions are
//! recorded in `<database>.schema_migrations`; [`migrate`] runs, in order, the migrations not
//! recorded there yet. Every statement is itself idempotent (`IF NOT EXISTS`), so a projector
//! that crashes between a migration's statements, or two replicas that start at once, simply
//! run them again. A new migration is appended to [`MIGRATIONS`] with the next version; an
//! applied migration is never edited, since databases that ran it would not run it again.
//!
//! The SQL is the subset that Debian's ClickHouse 18.16 (tests) and current ClickHouse
//! (production) both accept: no `Map`, `DateTime64`, `TTL`, skip indexes or `LowCardinality`.

use super::error::{query_failed, ClickHouseError, Result};

/// One schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    /// DDL with `{database}` standing for the (validated) database name.
    pub statements: &'static [&'static str],
}

/// Every migration, oldest first. Versions are unique and increasing.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "events and job_status",
    statements: &[EVENTS_V1, JOB_STATUS_V1],
}];

/// Every stored event, one wide table for all categories: the envelope, then each category's
/// columns (Nullable, or empty arrays, where a category has no such field), then where the
/// row came from in Kafka.
///
/// - `PARTITION BY (category, toYYYYMMDD(ingested_at))`: retention is dropping whole
///   partitions per category and day of ingestion. The projector gives all rows of one insert
///   the same category and `ingested_at`, so each insert lands in exactly one partition and
///   is written as one part.
/// - `ingested_at DateTime('UTC')`: partition days are UTC days whatever the server's time zone.
/// - `ReplacingMergeTree(ingested_at)` ordered by a key ending in `event_id`: background merges
///   collapse copies of one event written twice into the same partition (a replay, or a
///   producer retry stored at two offsets). Merges are eventual and never cross partitions,
///   so reads collapse by `event_id` as well (see `queries`).
/// - `occurred_at_us` is microseconds since the epoch, since 18.16 has no `DateTime64`;
///   `occurred_date` is its UTC day, for people filtering by hand.
const EVENTS_V1: &str = "CREATE TABLE IF NOT EXISTS {database}.events
(
    event_id String,
    occurred_at_us Int64,
    occurred_date Date,
    category String,
    name String,
    level String,
    service String,
    service_version String,
    host String,
    message String,
    trace_id Nullable(String),
    span_id Nullable(String),
    request_id Nullable(String),
    attr_keys Array(String),
    attr_values Array(String),
    actor_id Nullable(String),
    actor_kind Nullable(String),
    actor_ip Nullable(String),
    actor_user_agent Nullable(String),
    action Nullable(String),
    target_kind Nullable(String),
    target_id Nullable(String),
    outcome Nullable(String),
    reason Nullable(String),
    details Nullable(String),
    job_id Nullable(String),
    job_type Nullable(String),
    job_name Nullable(String),
    job_status Nullable(String),
    progress Nullable(Int32),
    parent_job_id Nullable(String),
    device_id Nullable(String),
    device_name Nullable(String),
    phase Nullable(String),
    duration_ms Nullable(Int64),
    error Nullable(String),
    module Nullable(String),
    file Nullable(String),
    line Nullable(Int32),
    field_keys Array(String),
    field_values Array(String),
    error_chain Array(String),
    topic String,
    `partition` Int32,
    `offset` Int64,
    ingested_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY (category, toYYYYMMDD(ingested_at))
ORDER BY (category, service, occurred_at_us, event_id)";

/// The latest status of each job, fed by the projector with one row per job event. Merges
/// keep the row with the greatest `occurred_at_us` per `job_id` (18.16 accepts the signed
/// `Int64` as a version column); reads pick the latest row themselves, so they are exact
/// before merges too. Small (a row per job once merged), so not partitioned and never
/// expired by retention.
const JOB_STATUS_V1: &str = "CREATE TABLE IF NOT EXISTS {database}.job_status
(
    job_id String,
    job_type String,
    job_name String,
    status String,
    progress Int32,
    details String,
    service String,
    event_id String,
    occurred_at_us Int64,
    topic String,
    `partition` Int32,
    `offset` Int64,
    updated_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(occurred_at_us)
ORDER BY job_id";

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS {database}.schema_migrations
(
    version UInt32,
    description String,
    applied_at DateTime
)
ENGINE = MergeTree
ORDER BY version";

/// Checks that `name` can be written into SQL unquoted: `^[A-Za-z_][A-Za-z0-9_]*$`. Database
/// names cannot be bound as parameters, so this is what keeps them from injecting SQL.
pub fn validate_identifier(name: &str) -> Result<&str> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if valid_start && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(name)
    } else {
        Err(ClickHouseError::InvalidIdentifier(name.to_owned()))
    }
}

/// Creates `database` when missing and applies the migrations it has not seen yet, in order.
/// Returns the versions applied by this call (empty when the schema was up to date).
pub async fn migrate(client: &clickhouse::Client, database: &str) -> Result<Vec<u32>> {
    let database = validate_identifier(database)?;
    client
        .query_raw(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await
        .map_err(query_failed(format!("create database {database}")))?;
    run_statement(client, database, MIGRATIONS_TABLE, "schema_migrations").await?;

    let applied: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT version FROM {database}.schema_migrations ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(query_failed(format!("read {database}.schema_migrations")))?;
    if let Some(newest) = applied.last() {
        let known = MIGRATIONS.last().map_or(0, |migration| migration.version);
        if *newest > known {
            // A newer projector migrated this database. Migrations only add, so this one can
            // still write, but whoever rolled back should know.
            tracing::warn!(
                %database,
                schema_version = newest,
                known_version = known,
                "clickhouse schema is newer than this projector"
            );
        }
    }

    let mut newly_applied = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        for statement in migration.statements {
            run_statement(client, database, statement, migration.description).await?;
        }
        // Recorded only after every statement succeeded: a crash before this line re-runs
        // the (idempotent) statements on the next start.
        client
            .query(&format!(
                "INSERT INTO {database}.schema_migrations (version, description, applied_at) \
                 VALUES (?, ?, now())"
            ))
            .bind(migration.version)
            .bind(migration.description)
            .execute()
            .await
            .map_err(query_failed(format!(
                "record migration {} in {database}.schema_migrations",
                migration.version
            )))?;
        tracing::info!(
            %database,
            version = migration.version,
            description = migration.description,
            "applied clickhouse migration"
        );
        newly_applied.push(migration.version);
    }
    Ok(newly_applied)
}

async fn run_statement(
    client: &clickhouse::Client,
    database: &str,
    statement: &str,
    what: &str,
) -> Result<()> {
    // `query_raw`: DDL has no bind parameters, and must not have its `?` parsed as such.
    client
        .query_raw(&statement.replace("{database}", database))
        .execute()
        .await
        .map_err(query_failed(format!("migration `{what}` in {database}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_increasing() {
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "{versions:?}"
        );
        assert_eq!(versions.first(), Some(&1));
    }

    #[test]
    fn every_statement_is_idempotent_and_names_the_database() {
        for migration in MIGRATIONS {
            for statement in migration.statements {
                assert!(
                    statement.starts_with("CREATE TABLE IF NOT EXISTS {database}."),
                    "{statement}"
                );
            }
        }
    }

    #[test]
    fn identifiers_are_checked() {
        for good in ["ledgerline", "db_0123abcd", "_x", "A1"] {
            assert_eq!(validate_identifier(good).unwrap(), good);
        }
        for bad in [
            "",
            "1db",
            "ledger-line",
            "a.b",
            "x`",
            "db; DROP TABLE t",
            "é",
        ] {
            assert!(
                matches!(
                    validate_identifier(bad),
                    Err(ClickHouseError::InvalidIdentifier(name)) if name == bad
                ),
                "{bad}"
            );
        }
    }
}
