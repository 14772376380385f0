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
//!
//! # Layouts
//!
//! The statements are written for one server ([`Layout::Single`]). On a cluster
//! ([`Layout::Cluster`]) [`on_cluster`] rewrites each one: `CREATE TABLE` and `ALTER TABLE` get
//! `ON CLUSTER <name>` (ClickHouse runs them on every server of the cluster, now or when a
//! stopped one comes back), and `MergeTree` engines become their `Replicated` variant with the
//! path `/clickhouse/tables/{shard}/<database>/<table>` and replica `{replica}` (each server's
//! macros). A migration whose single-server statements do not fit a cluster (a table rebuild
//! with `RENAME`) gives the statements that reach the same end state there instead
//! ([`Migration::cluster`]). `schema_migrations` is replicated too, so every server knows
//! what was applied.

use super::error::{query_failed, ClickHouseError, Result};

/// One schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub description: &'static str,
    /// DDL with `{database}` standing for the (validated) database name.
    pub statements: &'static [&'static str],
    /// What runs on a cluster.
    pub cluster: OnCluster,
}

/// What a [`Migration`] runs on a cluster, each statement rewritten by [`on_cluster`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCluster {
    /// The same statements.
    Same,
    /// These instead: the single-server statements cannot run there, or a cluster needs
    /// something a single server does not (its `Distributed` tables). Empty when a cluster
    /// is already where the migration leads.
    Instead(&'static [&'static str]),
}

/// Where a sink's tables live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One server: plain `MergeTree` tables.
    Single,
    /// Replicated across the named cluster (a `remote_servers` entry).
    Cluster(String),
}

/// `statement` for `cluster` (see the module docs): `ON CLUSTER` after the table name of a
/// `CREATE TABLE` or `ALTER TABLE`, `Replicated` engines, and `{cluster}` replaced by the
/// cluster's name (for `Distributed` engines). `{database}` is left for the
/// caller to fill in, and is part of the replication path. Fails on any other statement, so a
/// migration that would only run on one server is found by the unit tests, not in production.
pub fn on_cluster(statement: &str, cluster: &str) -> Result<String> {
    let unsupported = || ClickHouseError::Unsupported {
        what: format!(
            "statement cannot run on cluster {cluster}: {}",
            statement.lines().next().unwrap_or_default()
        ),
    };
    let (verb, rest) = ["CREATE TABLE IF NOT EXISTS ", "ALTER TABLE "]
        .iter()
        .find_map(|verb| statement.strip_prefix(verb).map(|rest| (*verb, rest)))
        .ok_or_else(unsupported)?;
    let name_end = rest
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(rest.len());
    let (qualified, after) = rest.split_at(name_end);
    let table = qualified
        .strip_prefix("{database}.")
        .ok_or_else(unsupported)?;
    let mut out =
        format!("{verb}{qualified} ON CLUSTER {cluster}{after}").replace("{cluster}", cluster);
    let path = format!("'/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}'");
    if let Some(at) = out.find("ENGINE = ReplacingMergeTree(") {
        let open = at + "ENGINE = ReplacingMergeTree(".len();
        out.replace_range(
            at..open,
            &format!("ENGINE = ReplicatedReplacingMergeTree({path}, "),
        );
    } else if let Some(at) = out.find("ENGINE = MergeTree") {
        let end = at + "ENGINE = MergeTree".len();
        if out[end..].starts_with('(') {
            return Err(unsupported());
        }
        out.replace_range(at..end, &format!("ENGINE = ReplicatedMergeTree({path})"));
    } else if out.contains("MergeTree") {
        return Err(unsupported());
    }
    Ok(out)
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

/// [`migrate_on`] a single server.
pub async fn migrate(
    client: &clickhouse::Client,
    database: &str,
    migrations: &[Migration],
) -> Result<Vec<u32>> {
    migrate_on(client, database, &Layout::Single, migrations).await
}

/// Creates `database` when missing and applies the migrations it has not seen yet, in order,
/// in `layout`. Returns the versions applied by this call (empty when the schema was up to
/// date).
pub async fn migrate_on(
    client: &clickhouse::Client,
    database: &str,
    layout: &Layout,
    migrations: &[Migration],
) -> Result<Vec<u32>> {
    let database = validate_identifier(database)?;
    // Read first, on this server alone: when every migration is applied there is nothing to
    // run, and on a cluster nothing must run `ON CLUSTER`, which waits for every server
    // (`distributed_ddl_task_timeout`, 180 s) and fails while one is down, so a sink could
    // not restart during a replica's outage.
    let engine: Option<String> = client
        .query(
            "SELECT engine FROM system.tables \
             WHERE database = ? AND name = 'schema_migrations'",
        )
        .bind(database)
        .fetch_optional()
        .await
        .map_err(query_failed(format!(
            "look up {database}.schema_migrations"
        )))?;
    if let (Layout::Cluster(cluster), Some(engine)) = (layout, &engine) {
        if !engine.starts_with("Replicated") {
            return Err(ClickHouseError::Unsupported {
                what: format!(
                    "{database} was created for a single server ({database}.schema_migrations \
                     is {engine}), so `cluster = \"{cluster}\"` cannot be used with it as it is: \
                     its tables must be converted first (docs/operations.md#clickhouse)"
                ),
            });
        }
    }
    if engine.is_some() {
        let applied = applied_versions(client, database).await?;
        if migrations
            .iter()
            .all(|migration| applied.contains(&migration.version))
        {
            warn_if_newer(database, &applied, migrations);
            return Ok(Vec::new());
        }
    }

    let (create_database, migrations_table) = match layout {
        Layout::Single => (
            format!("CREATE DATABASE IF NOT EXISTS {database}"),
            MIGRATIONS_TABLE.to_owned(),
        ),
        Layout::Cluster(cluster) => (
            format!(
                "CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER {}",
                validate_identifier(cluster)?
            ),
            on_cluster(MIGRATIONS_TABLE, cluster)?,
        ),
    };
    client
        .query_raw(&create_database)
        .execute()
        .await
        .map_err(query_failed(format!("create database {database}")))?;
    run_statement(client, database, &migrations_table, "schema_migrations").await?;

    let applied = applied_versions(client, database).await?;
    warn_if_newer(database, &applied, migrations);

    let mut newly_applied = Vec::new();
    for migration in migrations {
        if applied.contains(&migration.version) {
            continue;
        }
        for statement in statements_for(migration, layout)? {
            run_statement(client, database, &statement, migration.description).await?;
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

/// The versions recorded in `schema_migrations`, ascending.
async fn applied_versions(client: &clickhouse::Client, database: &str) -> Result<Vec<u32>> {
    client
        .query(&format!(
            "SELECT DISTINCT version FROM {database}.schema_migrations ORDER BY version"
        ))
        .fetch_all()
        .await
        .map_err(query_failed(format!("read {database}.schema_migrations")))
}

/// Logs when a newer build migrated `database`. Migrations only add, so this one can still
/// write, but whoever rolled back should know.
fn warn_if_newer(database: &str, applied: &[u32], migrations: &[Migration]) {
    let (Some(newest), Some(known)) = (applied.last(), migrations.last()) else {
        return;
    };
    if *newest > known.version {
        tracing::warn!(
            %database,
            schema_version = newest,
            known_version = known.version,
            "clickhouse schema is newer than this build"
        );
    }
}

/// What `migration` runs in `layout`.
fn statements_for(migration: &Migration, layout: &Layout) -> Result<Vec<String>> {
    match (layout, migration.cluster) {
        (Layout::Single, _) => Ok(migration
            .statements
            .iter()
            .map(|statement| (*statement).to_owned())
            .collect()),
        (Layout::Cluster(cluster), OnCluster::Same) => migration
            .statements
            .iter()
            .map(|statement| on_cluster(statement, cluster))
            .collect(),
        (Layout::Cluster(cluster), OnCluster::Instead(statements)) => statements
            .iter()
            .map(|statement| on_cluster(statement, cluster))
            .collect(),
    }
}

/// Checks that every migration of `migrations` can run in both layouts: for a sink's unit
/// tests.
pub fn check_layouts(migrations: &[Migration]) -> Result<()> {
    for migration in migrations {
        statements_for(migration, &Layout::Cluster("c".to_owned()))?;
    }
    Ok(())
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
    fn statements_are_rewritten_for_a_cluster() {
        assert_eq!(
            on_cluster(
                "CREATE TABLE IF NOT EXISTS {database}.t\n(a Int64)\nENGINE = ReplacingMergeTree(a)\nORDER BY a",
                "main"
            )
            .unwrap(),
            "CREATE TABLE IF NOT EXISTS {database}.t ON CLUSTER main\n(a Int64)\n\
             ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/t', '{replica}', a)\nORDER BY a"
        );
        assert_eq!(
            on_cluster(MIGRATIONS_TABLE, "main").unwrap(),
            MIGRATIONS_TABLE
                .replace(
                    "schema_migrations\n",
                    "schema_migrations ON CLUSTER main\n"
                )
                .replace(
                    "ENGINE = MergeTree",
                    "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/schema_migrations', '{replica}')"
                )
        );
        assert_eq!(
            on_cluster(
                "CREATE TABLE IF NOT EXISTS {database}.t_all AS {database}.t ENGINE = Distributed({cluster}, {database}, t)",
                "main"
            )
            .unwrap(),
            "CREATE TABLE IF NOT EXISTS {database}.t_all ON CLUSTER main AS {database}.t ENGINE = Distributed(main, {database}, t)"
        );
        assert_eq!(
            on_cluster("ALTER TABLE {database}.t ADD COLUMN b String", "main").unwrap(),
            "ALTER TABLE {database}.t ON CLUSTER main ADD COLUMN b String"
        );
        // What has no cluster form is refused rather than run on one server only.
        for statement in [
            "INSERT INTO {database}.t SELECT * FROM {database}.u",
            "RENAME TABLE {database}.t TO {database}.u",
            "DROP TABLE IF EXISTS {database}.t",
            "CREATE TABLE IF NOT EXISTS t (a Int64) ENGINE = MergeTree ORDER BY a",
            "CREATE TABLE IF NOT EXISTS {database}.t (a Int64) ENGINE = MergeTree() ORDER BY a",
            "CREATE TABLE IF NOT EXISTS {database}.t (a Int64) ENGINE = SummingMergeTree ORDER BY a",
        ] {
            assert!(on_cluster(statement, "main").is_err(), "{statement}");
        }
    }

    #[test]
    fn every_sink_migration_runs_on_a_cluster() {
        check_layouts(crate::projector::schema::MIGRATIONS).unwrap();
        check_layouts(crate::archive::schema::MIGRATIONS).unwrap();
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
