//! Versioned schema migrations for the ClickHouse sinks, applied at start-up by [`migrate`].
//!
//! Each migration is a version, a description and DDL statements; each sink brings its own list
//! (the projector's `projector::schema::MIGRATIONS`). Applied versions are recorded in
//! `<database>.schema_migrations`; [`migrate`] runs, in order, the migrations not recorded there
//! yet. Every statement is itself idempotent (`IF NOT EXISTS`), so a sink that crashes between a
//! migration's statements, or two replicas that start at once, simply run them again. A new
//! migration is appended with the next version; an applied migration is never edited, since
//! databases that ran it would not run it again.
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
pub async fn migrate(
    client: &clickhouse::Client,
    database: &str,
    migrations: &[Migration],
) -> Result<Vec<u32>> {
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
        let known = migrations.last().map_or(0, |migration| migration.version);
        if *newest > known {
            // A newer build migrated this database. Migrations only add, so this one can
            // still write, but whoever rolled back should know.
            tracing::warn!(
                %database,
                schema_version = newest,
                known_version = known,
                "clickhouse schema is newer than this build"
            );
        }
    }

    let mut newly_applied = Vec::new();
    for migration in migrations {
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
