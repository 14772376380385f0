//! The ClickHouse projector: events from the `ledgerline.{audit,job,connection,system}` topics
//! into `<database>.events`, and job events also into `<database>.job_status` (the latest
//! state per job). Session events are live-only and never stored.
//!
//! # Wire protocol
//!
//! HTTP through the `clickhouse` crate. Inserts are `RowBinary` (row validation off, see
//! [`crate::clickhouse::ClickHouseConfig::client`]): per batch, one `events` insert per Kafka partition
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
//!    and the same `ingested_at` ([`insert::insert_events`] refuses anything else), so an insert
//!    is one block of one partition, written as one part when the request ends. A request cut
//!    short (the projector killed mid-insert) is not always refused: ClickHouse takes a
//!    chunked body that ends on a row boundary as complete and stores the rows it received
//!    (checked on 18.16 with a body cut after 1,000 rows). Each insert holds one Kafka
//!    partition's rows in offset order, each offset once (the runtime hands one partition's
//!    records in offset order, under one assignment, and the sink checks), so whatever an
//!    insert stored is its partition's first records.
//! 2. **Offsets are stored with the rows.** Each row carries its topic, partition and offset.
//!    When the group assigns a partition, the sink answers the runtime's
//!    [`crate::runtime::Sink::on_assign`] with one past the partition's greatest stored offset,
//!    and the runtime starts reading there; with (1) that skips exactly what a crash between the
//!    insert and the commit, or in the middle of the insert, already stored.
//! 3. **Duplicates that still get in are collapsed.** A producer retry can put one event at
//!    two offsets, and an insert the server stored (whole, or a prefix as in (1)) but whose
//!    answer was lost (a timeout, a reset connection) is retried and stored twice. `events` is a `ReplacingMergeTree` whose
//!    sorting key ends in `event_id`, so merges remove such copies within a partition,
//!    eventually; and every read of [`queries::EventReader`] collapses by `event_id` (`uniqExact`,
//!    `LIMIT 1 BY`), so counts and searches are exact before merges, and across partitions,
//!    where merges never reach.
//! 4. **`job_status` is written before `events`.** For a job partition the sink inserts the
//!    `job_status` rows first and the `events` rows second. `events` is what (2) reads, so a
//!    crash between the two replays the batch and rewrites the status rows, which is harmless:
//!    `job_status` keeps the latest row per job (`ReplacingMergeTree(occurred_at_us)`) and
//!    [`queries::EventReader::job`] / [`queries::EventReader::jobs`] pick the latest row themselves.
//!
//! Records sent to the dead-letter topic leave no row, so a replay may dead-letter them again:
//! the dead-letter topic is at least once.
//!
//! # Failures
//!
//! A failed insert is retried by the runtime, the same batch, with backoff, whatever the
//! failure: skipping it would lose it. [`crate::clickhouse::FailureKind`] names the ClickHouse error codes
//! that pass by themselves (logged as warnings) and those that need an operator (credentials,
//! grants, a dropped or altered table: logged as errors), and explains why no failure is
//! treated as "these rows are bad".
//!
//! Retention drops whole partitions of one category older than its configured days
//! ([`retention::drop_expired_partitions`]); `job_status` is small and kept.
//!
//! # Modules
//!
//! - [`config`]: `[projector]` (the shared consumer settings flattened in, `/health` listener,
//!   `[projector.clickhouse]`, retention) and [`ProjectorSettings`], everything [`run`] reads;
//! - [`schema`]: the `events` and `job_status` tables as versioned migrations, applied at
//!   start-up by [`crate::clickhouse::migrate`];
//! - [`row`]: events as `events` and `job_status` rows, and back to events;
//! - [`insert`]: the two inserts;
//! - [`sink`]: the runtime's [`crate::runtime::Sink`]: per Kafka partition, the `job_status`
//!   insert then the `events` insert, partitions concurrently; resume positions on assignment;
//!   and [`InsertHealth`], the `/health` check on inserts;
//! - [`queries`]: [`EventReader`], the read library the query API uses: keyset-paged searches,
//!   counts, histograms, top values and job states, bounded by [`queries::ReadLimits`];
//! - [`retention`]: the scheduled partition drops.
//!
//! # Metrics
//!
//! `ledgerline_projector_inserted_total{category}`, `ledgerline_projector_insert_events
//! {category}` (rows per insert) and `ledgerline_projector_insert_seconds{category}` (one
//! partition's `job_status` and `events` inserts), `ledgerline_projector_events_by_level_total
//! {category,level}`, besides the runtime's consumed, written,
//! rejected, sink-error and lag metrics (`consumer="projector"`).
//!
//! The Kafka side (group, decode, batch, commit, dead-letter, retry, rebalances, shutdown) is
//! the shared [`crate::runtime`]; [`run`] wires the two together, for the binary, the tests and
//! the benchmark alike.

pub mod config;
pub mod insert;
pub mod queries;
pub mod retention;
pub mod row;
pub mod schema;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::http;
use ledgerline_service::kafka::KafkaProbe;
use ledgerline_service::telemetry;
use tokio_util::sync::CancellationToken;

pub use config::{ProjectorConfig, ProjectorSettings, RetentionDays, DEFAULT_GROUP_ID};
pub use queries::{EventQuery, EventReader};
pub use row::{event_row, into_event_row, job_status_row, EventRow, JobStatusRow};
pub use sink::{InsertHealth, PartitionInsert, ProjectorSink};

use crate::clickhouse::{sink_health, ClickHouseError};
use crate::runtime::{self, RuntimeConfig, RuntimeError};

/// The projector's name: the `consumer` label of its runtime metrics, and its Kafka client id.
pub const CONSUMER: &str = "projector";

/// The categories the projector stores, as the routing table in ARCHITECTURE.md has them:
/// every one but session, which is live-only. Retention has a setting for each of these and
/// for nothing else.
pub const STORED_CATEGORIES: [Category; 4] = [
    Category::Audit,
    Category::Job,
    Category::Connection,
    Category::System,
];

/// How long start-up waits for the broker to answer before giving up with its address.
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the projector could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectorError {
    #[error("kafka is not reachable: {0}")]
    KafkaUnreachable(String),
    #[error("failed to create a kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("failed to prepare clickhouse at {url}")]
    ClickHouse {
        url: String,
        #[source]
        source: ClickHouseError,
    },
    #[error("failed to set up the schema registry client: {0}")]
    Registry(#[from] ledgerline_schemas::CodecError),
    #[error("failed to listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up metrics: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Runs the projector until `shutdown`: checks that Kafka answers, applies the migrations,
/// serves `/health` and `/metrics` on `[projector] listen`, drops expired partitions on a
/// schedule, and projects the stored categories' topics.
pub async fn run(
    settings: ProjectorSettings,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let ProjectorSettings {
        kafka,
        schema_registry,
        projector,
    } = settings;
    let probe = KafkaProbe::new(&kafka)?;
    probe
        .check(KAFKA_START_TIMEOUT)
        .await
        .map_err(ProjectorError::KafkaUnreachable)?;
    let sink = ProjectorSink::start(&projector.clickhouse)
        .await
        .map_err(|source| ProjectorError::ClickHouse {
            url: projector.clickhouse.url.clone(),
            source,
        })?;
    let codec = Arc::new(EventCodec::new(&schema_registry)?);
    let topics: Vec<String> = STORED_CATEGORIES
        .iter()
        .map(|category| category.topic_name().to_owned())
        .collect();
    let config = RuntimeConfig::group(CONSUMER, topics, &projector.consumer, DEFAULT_GROUP_ID);

    let inserts = sink.health();
    let health = sink_health(
        probe,
        projector.clickhouse.client(),
        "clickhouse_inserts",
        move || inserts.check(),
        config.status.clone(),
    );
    let (addr, _server) = http::serve(
        projector.listen,
        http::router(health, telemetry::prometheus()?),
        shutdown.clone(),
    )
    .await
    .map_err(|source| ProjectorError::Listen {
        addr: projector.listen,
        source,
    })?;
    tracing::info!(%addr, "projector health and metrics");

    tokio::spawn(retention::retention_loop(
        projector.clone(),
        shutdown.clone(),
    ));
    runtime::run(config, &kafka, codec, sink, shutdown).await?;
    Ok(())
}
