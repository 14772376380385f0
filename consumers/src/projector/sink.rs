//! The projector's sink: per Kafka partition of a batch, one `job_status` insert (job events
//! only) followed by one `events` insert, all rows sharing one `ingested_at` and each insert
//! holding its partition's records in offset order (see the module docs for why a crash in the
//! middle of an insert then loses and doubles nothing). The partitions' inserts run
//! concurrently. On assignment it answers, per partition, the offset after the greatest one
//! stored, so the runtime resumes exactly there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ledgerline_schemas::Category;

use super::insert;
use super::row::{into_event_row, job_status_row, EventRow, JobStatusRow};
use super::schema::MIGRATIONS;
use crate::clickhouse::error::query_failed;
use crate::clickhouse::{
    migrate_on, validate_identifier, ClickHouseConfig, ClickHouseError, FailureKind, Result,
};
use crate::runtime::{PartitionBatch, Positions, Record, Sink, SinkError, TopicPartition};

/// Writes batches into `<database>.events` and `<database>.job_status`.
pub struct ProjectorSink {
    client: clickhouse::Client,
    database: String,
    /// The last insert's failure, `None` once an insert succeeds; read by `/health`.
    last_failure: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for ProjectorSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectorSink")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl ProjectorSink {
    /// Applies the projector's migrations.
    pub async fn start(config: &ClickHouseConfig) -> Result<Self> {
        let client = config.client();
        let applied = migrate_on(&client, &config.database, &config.layout(), MIGRATIONS).await?;
        if !applied.is_empty() {
            tracing::info!(database = %config.database, versions = ?applied, "applied clickhouse migrations");
        }
        Ok(Self {
            client,
            database: config.database.clone(),
            last_failure: Arc::default(),
        })
    }

    /// A handle that tells whether inserts are failing, for a health check: `Err` with the
    /// failure while the last insert failed. Pinging the server is not enough: a dropped table
    /// or a revoked grant leaves it answering while every insert fails.
    pub fn health(&self) -> InsertHealth {
        InsertHealth(Arc::clone(&self.last_failure))
    }

    fn set_failure(&self, failure: Option<String>) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = failure;
        }
    }

    /// Writes the batch's inserts, one per Kafka partition, concurrently and each on its own
    /// task. One ClickHouse insert is parsed and written by one server thread, and a batch
    /// often holds a single topic (librdkafka hands out records a partition at a time), so
    /// inserting per partition is what lets both the serialization here and the server use
    /// more than one core. Each success is recorded, so a retry after a partial failure writes
    /// only the inserts that failed.
    async fn insert(&mut self, batch: &[PartitionBatch<Arc<PartitionInsert>>]) -> Result<()> {
        let mut writes = tokio::task::JoinSet::new();
        for unit in batch {
            // An earlier attempt at this batch got this insert through: do not write it again.
            if unit.prepared.written.load(Ordering::Acquire) {
                continue;
            }
            let (client, database) = (self.client.clone(), self.database.clone());
            let insert = Arc::clone(&unit.prepared);
            writes.spawn(async move {
                let written = write_partition(&client, &database, &insert).await;
                if written.is_ok() {
                    insert.written.store(true, Ordering::Release);
                }
                written
            });
        }
        let mut first_failure = None;
        while let Some(joined) = writes.join_next().await {
            let failure = match joined {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(error) => ClickHouseError::InsertTask(error.to_string()),
            };
            first_failure.get_or_insert(failure);
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Next offset per partition: one after the greatest stored. Scans the `topic`,
    /// `partition` and `offset` columns of the category's parts: run on assignment, not per
    /// batch.
    async fn resume_positions(&self, partitions: &[TopicPartition]) -> Result<Positions> {
        let database = validate_identifier(&self.database)?;
        let topics: HashSet<&str> = partitions.iter().map(|p| &*p.topic).collect();
        let mut positions = Positions::new();
        for topic in topics {
            // The category leads the sort and partition keys: it limits the scan to the
            // topic's own parts, where `topic` alone would read every part.
            let Some(category) = Category::from_topic(topic) else {
                continue;
            };
            let stored: Vec<(i32, i64)> = self
                .client
                .query(&format!(
                    "SELECT `partition`, max(`offset`) FROM {database}.events \
                     WHERE category = ? AND topic = ? GROUP BY `partition`"
                ))
                .bind(category.as_str())
                .bind(topic)
                .fetch_all()
                .await
                .map_err(query_failed(format!(
                    "resume offsets from {database}.events"
                )))?;
            for (partition, offset) in stored {
                let key = TopicPartition::new(topic, partition);
                if partitions.contains(&key) {
                    positions.insert(key, offset + 1);
                }
            }
        }
        Ok(positions)
    }
}

/// One partition's `job_status` rows, then its `events` rows (see the module docs for the
/// order), with their metrics.
async fn write_partition(
    client: &clickhouse::Client,
    database: &str,
    insert: &PartitionInsert,
) -> Result<()> {
    let category = insert.category.as_str();
    let started = Instant::now();
    if !insert.statuses.is_empty() {
        insert::insert_job_statuses(client, database, &insert.statuses).await?;
    }
    if !insert.events.is_empty() {
        insert::insert_events(client, database, &insert.events).await?;
    }
    metrics::histogram!("ledgerline_projector_insert_seconds", "category" => category)
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("ledgerline_projector_insert_events", "category" => category)
        .record(insert.events.len() as f64);
    metrics::counter!("ledgerline_projector_inserted_total", "category" => category)
        .increment(insert.events.len() as u64);
    // Events by level, for the dashboard's "events by level" and for alerting on a burst of
    // errors without a ClickHouse query. Levels are a closed set, so the series stay few.
    let mut by_level: Vec<(&str, u64)> = Vec::new();
    for event in &insert.events {
        match by_level.iter_mut().find(|(level, _)| *level == event.level) {
            Some((_, count)) => *count += 1,
            None => by_level.push((event.level.as_str(), 1)),
        }
    }
    for (level, count) in by_level {
        metrics::counter!("ledgerline_projector_events_by_level_total", "category" => category, "level" => level.to_owned())
            .increment(count);
    }
    Ok(())
}

/// The rows of one Kafka partition's records in a batch, in offset order. Shared with the
/// task that writes it.
#[derive(Debug)]
pub struct PartitionInsert {
    category: Category,
    statuses: Vec<JobStatusRow>,
    events: Vec<EventRow>,
    /// Set once the insert succeeded, so a retry of the batch skips it.
    written: AtomicBool,
}

impl PartitionInsert {
    /// Puts the rows in offset order, once each. The runtime hands a partition's records in
    /// offset order; this keeps the crash-safety argument (module docs) independent of that.
    fn in_offset_order(&mut self) {
        if !self.events.is_sorted_by_key(|row| row.offset) {
            self.events.sort_by_key(|row| row.offset);
            self.events.dedup_by_key(|row| row.offset);
        }
        if !self.statuses.is_sorted_by_key(|row| row.offset) {
            self.statuses.sort_by_key(|row| row.offset);
            self.statuses.dedup_by_key(|row| row.offset);
        }
    }
}

impl Sink for ProjectorSink {
    type Prepared = Arc<PartitionInsert>;
    type Preparer = fn(&TopicPartition, Vec<Record>) -> Arc<PartitionInsert>;
    const ERROR_KINDS: &'static [&'static str] = FailureKind::LABELS;

    fn preparer(&self) -> Self::Preparer {
        prepare
    }

    async fn on_assign(
        &mut self,
        partitions: &[TopicPartition],
    ) -> std::result::Result<Positions, SinkError> {
        self.resume_positions(partitions)
            .await
            .map_err(|error| sink_error(&error))
    }

    async fn write(
        &mut self,
        batch: &[PartitionBatch<Arc<PartitionInsert>>],
    ) -> std::result::Result<(), SinkError> {
        match self.insert(batch).await {
            Ok(()) => {
                self.set_failure(None);
                Ok(())
            }
            Err(error) => {
                let error = sink_error(&error);
                self.set_failure(Some(format!("{}: {}", error.kind, error.message)));
                Err(error)
            }
        }
    }
}

fn sink_error(error: &ClickHouseError) -> SinkError {
    let kind = error.failure_kind();
    SinkError::new(kind.as_str(), kind == FailureKind::Transient, error)
}

/// Moves each event of one partition into its rows, all with the same `ingested_at`.
/// Rejected records never reach the projector (it dead-letters them), but one would be
/// skipped here rather than stored.
fn prepare(partition: &TopicPartition, records: Vec<Record>) -> Arc<PartitionInsert> {
    let ingested_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let category = records
        .iter()
        .find_map(|record| record.event.as_ref().ok().map(|event| event.category()))
        .unwrap_or(Category::System);
    // Sized up front: rows are large, and growing a vector of them copies them all.
    let mut insert = PartitionInsert {
        category,
        statuses: Vec::with_capacity(if category == Category::Job {
            records.len()
        } else {
            0
        }),
        events: Vec::with_capacity(records.len()),
        written: AtomicBool::new(false),
    };
    let topic = &*partition.topic;
    for record in records {
        let Ok(event) = record.event else {
            continue;
        };
        let offset = record.offset;
        insert.statuses.extend(job_status_row(
            &event,
            topic,
            partition.partition,
            offset,
            ingested_at,
        ));
        insert.events.extend(into_event_row(
            event,
            topic,
            partition.partition,
            offset,
            ingested_at,
        ));
    }
    insert.in_offset_order();
    Arc::new(insert)
}

/// See [`ProjectorSink::health`].
#[derive(Debug, Clone)]
pub struct InsertHealth(Arc<Mutex<Option<String>>>);

impl InsertHealth {
    /// `Err("last insert failed: <kind>: <error>")` while the last insert failed, where kind
    /// is a [`FailureKind`] (`transient`, `configuration` or `unexpected`).
    pub fn check(&self) -> std::result::Result<(), String> {
        match self.0.lock().ok().and_then(|last| last.clone()) {
            None => Ok(()),
            Some(failure) => Err(format!("last insert failed: {failure}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use ledgerline_schemas::samples;
    use rdkafka::Timestamp;

    use super::*;

    fn records(offsets: &[i64]) -> Vec<Record> {
        offsets
            .iter()
            .map(|offset| Record {
                topic: Arc::from("ledgerline.job"),
                partition: 0,
                offset: *offset,
                timestamp: Timestamp::NotAvailable,
                key: None,
                value: Vec::new(),
                headers: Vec::new(),
                schema_id: None,
                event: Ok(samples::event(Category::Job, *offset as u64)),
            })
            .collect()
    }

    #[test]
    fn a_partition_read_twice_is_inserted_once_in_offset_order() {
        let partition = TopicPartition::new("ledgerline.job", 0);
        let insert = prepare(&partition, records(&[5, 6, 7, 3, 4, 5, 6]));
        let expected = vec![3, 4, 5, 6, 7];
        assert_eq!(
            insert
                .events
                .iter()
                .map(|row| row.offset)
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            insert
                .statuses
                .iter()
                .map(|row| row.offset)
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(insert.category, Category::Job);
        assert!(!insert.written.load(Ordering::Relaxed));
    }
}
