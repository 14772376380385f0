//! The archive's ClickHouse schema in `ledgerline_audit`: `records` (one row per archived Kafka
//! record or gap, chained per partition) and `checkpoints` (signed), as versioned migrations
//! applied by [`crate::clickhouse::migrate`] when the archiver starts.
//!
//! Both are plain `MergeTree`s, never `Replacing…`: a second row for an offset must stay
//! visible, since `verify` reports it as inserted rather than having a merge hide it. Hashes,
//! roots and signatures are stored as lower-case hex, so a reviewer reading the tables by hand
//! can compare them with `sha256sum`. The SQL runs on ClickHouse 18.16 and on current releases.
//!
//! On a cluster (`[archive.clickhouse] cluster`) both are `ReplicatedMergeTree`s. The archiver
//! reads its chain heads from the server it writes to, and the query API reads the server it is
//! given: one shard, every server a full replica, so either holds the whole archive once
//! replication caught up.

use crate::clickhouse::{Migration, OnCluster};

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "records and checkpoints",
    statements: &[RECORDS_V1, CHECKPOINTS_V1],
    cluster: OnCluster::Same,
}];

/// One row per chain entry. `kind` is `event` (decoded), `undecodable` (bytes kept, with the
/// reason) or `gap` (offsets `offset..=last_offset` Kafka no longer held). For records
/// `last_offset = offset`. The event's fields are copies of what the value bytes hold, for
/// filtering; `verify` decodes the bytes again and names any field that differs.
const RECORDS_V1: &str = "CREATE TABLE IF NOT EXISTS {database}.records
(
    topic String,
    `partition` Int32,
    `offset` Int64,
    last_offset Int64,
    kind String,
    timestamp_ms Nullable(Int64),
    key Nullable(String),
    value String,
    schema_id Nullable(UInt32),
    reject_reason String,
    reject_error String,
    event_id String,
    occurred_at_us Int64,
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
    actor_id String,
    actor_kind String,
    actor_ip String,
    actor_user_agent Nullable(String),
    action String,
    target_kind Nullable(String),
    target_id Nullable(String),
    outcome String,
    reason Nullable(String),
    details String,
    prev_hash String,
    hash String,
    archived_at_us Int64
)
ENGINE = MergeTree
ORDER BY (topic, `partition`, `offset`)";

/// One row per signed checkpoint; the columns are [`super::checkpoint::Checkpoint`]'s fields,
/// the signature, and the checkpoint's own hash (a convenience: `verify` recomputes it).
const CHECKPOINTS_V1: &str = "CREATE TABLE IF NOT EXISTS {database}.checkpoints
(
    topic String,
    `partition` Int32,
    first_offset Int64,
    last_offset Int64,
    count UInt64,
    head_hash String,
    merkle_root String,
    previous_checkpoint_hash String,
    created_at_us Int64,
    key_id String,
    next_key_id Nullable(String),
    signature String,
    checkpoint_hash String
)
ENGINE = MergeTree
ORDER BY (topic, `partition`, last_offset)";
