//! The ClickHouse projector: events from the `ledgerline.{audit,job,connection,system}` topics
//! into `<database>.events`, and job events also into `<database>.job_status` (the latest
//! state per job). Session events are live-only and never stored.
//!
//! # Wire protocol
//!
//! HTTP through the `clickhouse` crate. Inserts are `RowBinary` (row validation off, see
//! [`config::ClickHouseConfig::client`]): per batch, one `events` insert per Kafka partition
//! (preceded by a `job_status` insert for job partitions), the partitions' inserts concurrent,
//! each with send and end timeouts; reads bind every user value as a `?` parameter. The SQL runs on Debian's ClickHouse 18.16 (the tests) and on current
//! ClickHouse (production), so it avoids `Map`, `DateTime64`, `TTL` and skip indexes.
//!
//! # Delivery semantics: exactly once where it is read
//!
//! Kafka delivery is at least once: the runtime commits a partition's offset only after the
//! insert holding its events returned success, so a crash replays and never skips. The
//! projector makes the replay invisible to readers:
//!
//! 1. **What an insert stores is a prefix, per Kafka partition.** `events` is partitioned by
//!    `(category, toYYYYMMDD(ingested_at))`, and every row of one insert has the same category
//!    and the same `ingested_at` ([`row::insert_events`] refuses anything else), so an insert
//!    is one block of one partition, written as one part when the request ends. A request cut
//!    short (the projector killed mid-insert) is not always refused: ClickHouse takes a
//!    chunked body that ends on a row boundary as complete and stores the rows it received
//!    (checked on 18.16 with a body cut after 1,000 rows). Each insert holds one Kafka
//!    partition's rows in offset order, each offset once (the sink restores that order in the
//!    rare batch a rebalance made read some offsets twice), so whatever an insert stored is
//!    its partition's first records.
//! 2. **Offsets are stored with the rows.** Each row carries its topic, partition and offset.
//!    On start the sink reads [`queries::resume_offsets`] and skips every record at or below
//!    its partition's stored maximum; with (1) that is exactly what a crash between the insert
//!    and the commit, or in the middle of the insert, already stored.
//! 3. **Duplicates that still get in are collapsed.** A producer retry can put one event at
//!    two offsets, and an insert the server stored (whole, or a prefix as in (1)) but whose
//!    answer was lost (a timeout, a reset connection) is retried and stored twice. `events` is a `ReplacingMergeTree` whose
//!    sorting key ends in `event_id`, so merges remove such copies within a partition,
//!    eventually; and every query in [`queries`] collapses by `event_id` (`uniqExact`,
//!    `LIMIT 1 BY`), so counts and searches are exact before merges, and across partitions,
//!    where merges never reach.
//! 4. **`job_status` is written before `events`.** For a job partition the sink inserts the
//!    `job_status` rows first and the `events` rows second. `events` is what (2) reads, so a
//!    crash between the two replays the batch and rewrites the status rows, which is harmless:
//!    `job_status` keeps the latest row per job (`ReplacingMergeTree(occurred_at_us)`) and
//!    [`queries::job_status`] / [`queries::list_jobs`] pick the latest row themselves.
//!
//! Records sent to the dead-letter topic leave no row, so a replay may dead-letter them again:
//! the dead-letter topic is at least once.
//!
//! # Failures
//!
//! A failed insert is retried by the runtime, the same batch, with backoff, whatever the
//! failure: skipping it would lose it. [`error::FailureKind`] names the ClickHouse error codes
//! that pass by themselves (logged as warnings) and those that need an operator (credentials,
//! grants, a dropped or altered table: logged as errors), and explains why no failure is
//! treated as "these rows are bad".
//!
//! Retention drops whole partitions of one category older than its configured days
//! ([`queries::drop_expired_partitions`]); `job_status` is small and kept.
//!
//! # Modules
//!
//! - [`config`]: `[clickhouse]` (server, user, database, compression) and `[projector]`
//!   (batching, size limit, fetch wait, retention) sections;
//! - [`schema`]: versioned, idempotent migrations applied at start-up ([`schema::migrate`]);
//! - [`row`]: events as `events` and `job_status` rows, back to events, and the inserts;
//! - [`queries`]: the read queries the query API reuses, plus resume offsets and retention;
//! - [`error`]: the [`ClickHouseError`] callers match on, and the [`FailureKind`] of each
//!   ClickHouse error code;
//! - [`sink`]: the runtime's [`crate::runtime::Sink`] for ClickHouse: per Kafka partition,
//!   the `job_status` insert then the `events` insert, partitions concurrently, skipping
//!   records already stored; and [`InsertHealth`], the `/health` check on inserts.
//!
//! # Metrics
//!
//! `ledgerline_projector_inserted_total{category}`, `ledgerline_projector_insert_events
//! {category}` (rows per insert) and `ledgerline_projector_insert_seconds{category}` (one
//! partition's `job_status` and `events` inserts), besides the runtime's consumed, written,
//! dead-letter, sink-error and lag metrics.
//!
//! The Kafka side (subscribe, decode, batch, commit, dead-letter, retry, shutdown) is the
//! shared [`crate::runtime`].

pub mod config;
pub mod error;
pub mod queries;
pub mod row;
pub mod schema;
pub mod sink;

pub use config::{ClickHouseCompression, ClickHouseConfig, ProjectorConfig, RetentionDays};
pub use error::{failure_kind, ClickHouseError, FailureKind, Result};
pub use queries::EventFilter;
pub use row::{event_row, into_event_row, job_status_row, EventRow, JobStatusRow};
pub use schema::migrate;
pub use sink::{ClickHouseSink, InsertHealth, PreparedBatch};
