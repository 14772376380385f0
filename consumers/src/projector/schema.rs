//! The projector's ClickHouse schema: `events`, `job_status`, and the versioned migrations
//! that create them ([`MIGRATIONS`], applied by [`crate::clickhouse::migrate`] at start-up).

use crate::clickhouse::{Migration, OnCluster};

/// The columns of `events`, in order, shared by every statement that creates it (the copy in
/// migration 2 is `SELECT *`, so the order matters).
macro_rules! events_columns {
    () => {
        "(
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
)"
    };
}

/// `events`' engine, partitions and sorting key since migration 2.
macro_rules! events_by_time_engine {
    () => {
        "ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY (category, toYYYYMMDD(ingested_at))
ORDER BY (occurred_at_us, event_id)"
    };
}

/// Every migration, oldest first. Versions are unique and increasing.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "events and job_status",
        statements: &[EVENTS_V1, JOB_STATUS_V1],
        cluster: OnCluster::Instead(&[EVENTS_BY_TIME_CLUSTER, JOB_STATUS_V1]),
    },
    Migration {
        version: 2,
        description: "events sorted by time first",
        statements: EVENTS_BY_TIME,
        cluster: OnCluster::Instead(&[]),
    },
    Migration {
        version: 3,
        description: "distributed read tables (cluster only)",
        statements: &[],
        cluster: OnCluster::Instead(&[EVENTS_ALL, JOB_STATUS_ALL]),
    },
];

/// The tables the query API reads on a cluster: each a `Distributed` table over the replicated
/// one on every shard of the cluster (`{cluster}` is filled in with the cluster's name, like
/// `{database}`). [`crate::projector::queries::EventReader`] reads these when it is given a
/// cluster.
const EVENTS_ALL: &str = "CREATE TABLE IF NOT EXISTS {database}.events_all AS {database}.events \
     ENGINE = Distributed({cluster}, {database}, events)";
const JOB_STATUS_ALL: &str = "CREATE TABLE IF NOT EXISTS {database}.job_status_all \
     AS {database}.job_status ENGINE = Distributed({cluster}, {database}, job_status)";

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
const EVENTS_V1: &str = concat!(
    "CREATE TABLE IF NOT EXISTS {database}.events\n",
    events_columns!(),
    "\nENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY (category, toYYYYMMDD(ingested_at))
ORDER BY (category, service, occurred_at_us, event_id)"
);

/// Migration 2: `events` sorted by `(occurred_at_us, event_id)` instead of
/// `(category, service, occurred_at_us, event_id)`.
///
/// Every read has a time range (the API requires one), and with the old key a range could only
/// be pruned within each (category, service) run of a part. A part holds every service's rows
/// of its batch, each run shorter than one 8,192-row granule, so a one-hour search of a 10M-event
/// day read about a third of the table (3.2M rows; `docs/benchmarks.md`). Sorted by time, an
/// hour is a contiguous run of granules in every part. Copies of one event still share the
/// whole sorting key, so merges still collapse them. Category and service filters are applied
/// to the granules the range leaves, which are few.
///
/// The sorting key of an existing table cannot be changed, so the table is rebuilt: created
/// under a new name, filled from `events`, and swapped in. The statements are safe to run again
/// from any point after a crash:
/// - a second copy into `events_next` duplicates rows, which reads collapse by `event_id` and
///   merges remove (same sorting key);
/// - after the swap, a rerun copies the new `events` into a fresh `events_next`, drops the
///   left-over `events_prev`, and swaps again: extra work, no loss.
///
/// The copy runs while the projector starts, before it consumes; its time is that of an
/// `INSERT … SELECT` of the whole table.
const EVENTS_BY_TIME: &[&str] = &[
    EVENTS_NEXT,
    "INSERT INTO {database}.events_next SELECT * FROM {database}.events",
    "DROP TABLE IF EXISTS {database}.events_prev",
    "RENAME TABLE {database}.events TO {database}.events_prev, \
     {database}.events_next TO {database}.events",
    "DROP TABLE IF EXISTS {database}.events_prev",
];

/// `events` with the columns of [`EVENTS_V1`], in the same order (the copy is `SELECT *`),
/// sorted by time first.
const EVENTS_NEXT: &str = concat!(
    "CREATE TABLE IF NOT EXISTS {database}.events_next\n",
    events_columns!(),
    "\n",
    events_by_time_engine!()
);

/// On a cluster, migration 1 creates `events` as migration 2 leaves it on a single server
/// (sorted by time), so migration 2 has nothing to do there.
const EVENTS_BY_TIME_CLUSTER: &str = concat!(
    "CREATE TABLE IF NOT EXISTS {database}.events\n",
    events_columns!(),
    "\n",
    events_by_time_engine!()
);

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
                // The rebuild of migration 2 is safe to rerun as a sequence (see
                // EVENTS_BY_TIME); every other statement is safe alone.
                assert!(
                    statement.starts_with("CREATE TABLE IF NOT EXISTS {database}.")
                        || EVENTS_BY_TIME.contains(statement),
                    "{statement}"
                );
                assert!(statement.contains("{database}."), "{statement}");
            }
        }
    }

    #[test]
    fn the_rebuilt_events_table_has_the_same_columns_in_the_same_order() {
        let columns = |ddl: &str| -> Vec<String> {
            let start = ddl.find('(').unwrap();
            let end = ddl.find(")\nENGINE").unwrap();
            ddl[start + 1..end]
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(columns(EVENTS_V1), columns(EVENTS_NEXT));
        assert!(EVENTS_NEXT.ends_with("ORDER BY (occurred_at_us, event_id)"));
    }
}
