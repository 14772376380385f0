//! The projector's sink: one batch from the runtime becomes, per Kafka partition, one
//! `job_status` insert (job events only) followed by one `events` insert, all rows sharing one
//! `ingested_at` and each insert holding its partition's records in offset order (see the
//! module docs for why a crash in the middle of an insert then loses and doubles nothing).
//! The partitions' inserts run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ledgerline_schemas::Category;

use super::config::ClickHouseConfig;
use super::error::FailureKind;
use super::row::{self, into_event_row, job_status_row, EventRow, JobStatusRow};
use super::{queries, schema, ClickHouseError, Result};
use crate::runtime::{Record, Sink, SinkError};

/// Writes batches into `<database>.events` and `<database>.job_status`.
pub struct ClickHouseSink {
    client: clickhouse::Client,
    database: String,
    /// The last insert's failure, `None` once an insert succeeds; read by `/health`.
    last_failure: Arc<Mutex<Option<String>>>,
    /// Highest offset known to be stored per (topic, partition). Records at or below it are
    /// skipped: they were stored before a crash that came between insert and commit. Shared
    /// with the preparer, which skips them.
    stored: Arc<Mutex<StoredOffsets>>,
}

impl std::fmt::Debug for ClickHouseSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSink")
            .field("database", &self.database)
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl ClickHouseSink {
    /// Applies migrations and loads the stored offsets of `topics`.
    pub async fn start(config: &ClickHouseConfig, topics: &[String]) -> Result<Self> {
        let client = config.client();
        let applied = schema::migrate(&client, &config.database).await?;
        if !applied.is_empty() {
            tracing::info!(database = %config.database, versions = ?applied, "applied clickhouse migrations");
        }
        let mut stored = StoredOffsets::new();
        for topic in topics {
            for (partition, offset) in
                queries::resume_offsets(&client, &config.database, topic).await?
            {
                stored
                    .entry(Arc::from(topic.as_str()))
                    .or_default()
                    .insert(partition, offset);
            }
        }
        Ok(Self {
            client,
            database: config.database.clone(),
            last_failure: Arc::default(),
            stored: Arc::new(Mutex::new(stored)),
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
    async fn insert(&mut self, batch: &PreparedBatch) -> Result<()> {
        let stored = snapshot(&self.stored);
        let mut writes = tokio::task::JoinSet::new();
        for insert in &batch.inserts {
            // An earlier attempt at this batch got this insert through: do not write it again.
            if is_stored(&stored, &insert.topic, insert.partition, insert.last_offset) {
                continue;
            }
            let (client, database) = (self.client.clone(), self.database.clone());
            let insert = Arc::clone(insert);
            writes.spawn(async move {
                let written = write_partition(&client, &database, &insert).await;
                (insert, written)
            });
        }
        let mut first_failure = None;
        while let Some(joined) = writes.join_next().await {
            let (insert, written) = match joined {
                Ok(done) => done,
                Err(error) => {
                    first_failure.get_or_insert(ClickHouseError::InsertTask(error.to_string()));
                    continue;
                }
            };
            if let Err(error) = written {
                first_failure.get_or_insert(error);
                continue;
            }
            if let Ok(mut stored) = self.stored.lock() {
                let last = stored
                    .entry(Arc::clone(&insert.topic))
                    .or_default()
                    .entry(insert.partition)
                    .or_insert(insert.last_offset);
                *last = (*last).max(insert.last_offset);
            }
        }
        first_failure.map_or(Ok(()), Err)
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
        row::insert_job_statuses(client, database, &insert.statuses).await?;
    }
    if !insert.events.is_empty() {
        row::insert_events(client, database, &insert.events).await?;
    }
    metrics::histogram!("ledgerline_projector_insert_seconds", "category" => category)
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!("ledgerline_projector_insert_events", "category" => category)
        .record(insert.events.len() as f64);
    metrics::counter!("ledgerline_projector_inserted_total", "category" => category)
        .increment(insert.events.len() as u64);
    Ok(())
}

/// A batch as the sink writes it: one insert per Kafka partition.
#[derive(Debug)]
pub struct PreparedBatch {
    inserts: Vec<Arc<PartitionInsert>>,
}

/// The rows of one Kafka partition's records in a batch, in offset order, and the last
/// offset among them. Shared with the task that writes it.
#[derive(Debug)]
struct PartitionInsert {
    category: Category,
    topic: Arc<str>,
    partition: i32,
    last_offset: i64,
    statuses: Vec<JobStatusRow>,
    events: Vec<EventRow>,
}

impl PartitionInsert {
    /// Puts the rows in offset order, once each. Records arrive in offset order, except when a
    /// rebalance hands the partition back mid-batch from its committed offset and some are
    /// read twice; the crash-safety argument (module docs) needs each insert in offset order.
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

impl Sink for ClickHouseSink {
    type Prepared = PreparedBatch;
    type Preparer = Box<dyn FnMut(Vec<Record>) -> PreparedBatch + Send>;

    fn preparer(&self) -> Self::Preparer {
        let stored = Arc::clone(&self.stored);
        Box::new(move |records| prepare(&snapshot(&stored), records))
    }

    async fn write(&mut self, batch: &PreparedBatch) -> std::result::Result<(), SinkError> {
        match self.insert(batch).await {
            Ok(()) => {
                self.set_failure(None);
                Ok(())
            }
            Err(error) => {
                let kind = error.failure_kind();
                let error = SinkError::new(kind.as_str(), kind == FailureKind::Transient, &error);
                self.set_failure(Some(format!("{}: {}", error.kind, error.message)));
                Err(error)
            }
        }
    }
}

/// Highest stored offset per topic and partition.
type StoredOffsets = HashMap<Arc<str>, HashMap<i32, i64>>;

/// A copy of the stored offsets (a few entries): the writer updates them while the reader
/// prepares the next batch, and neither should hold the lock while it works.
fn snapshot(stored: &Mutex<StoredOffsets>) -> StoredOffsets {
    stored.lock().map(|map| map.clone()).unwrap_or_default()
}

fn is_stored(stored: &StoredOffsets, topic: &str, partition: i32, offset: i64) -> bool {
    stored
        .get(topic)
        .and_then(|partitions| partitions.get(&partition))
        .is_some_and(|last| offset <= *last)
}

/// Skips records already stored (see the module docs), then moves each event into its rows,
/// all with the same `ingested_at`, one insert per Kafka partition.
fn prepare(stored: &StoredOffsets, records: Vec<Record>) -> PreparedBatch {
    let ingested_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    // Sized up front: rows are large, and growing a vector of them copies them all.
    let mut sizes: Vec<(Arc<str>, i32, usize)> = Vec::new();
    for record in &records {
        match sizes
            .iter_mut()
            .find(|(topic, partition, _)| *partition == record.partition && *topic == record.topic)
        {
            Some((_, _, size)) => *size += 1,
            None => sizes.push((Arc::clone(&record.topic), record.partition, 1)),
        }
    }
    let mut inserts: Vec<PartitionInsert> = Vec::with_capacity(sizes.len());
    for record in records {
        if is_stored(stored, &record.topic, record.partition, record.offset) {
            continue;
        }
        let Record {
            topic,
            partition,
            offset,
            event,
        } = record;
        let index = match inserts
            .iter()
            .position(|insert| insert.partition == partition && insert.topic == topic)
        {
            Some(index) => index,
            None => {
                let size = sizes
                    .iter()
                    .find(|(known, known_partition, _)| {
                        *known_partition == partition && *known == topic
                    })
                    .map_or(0, |(_, _, size)| *size);
                let category = event.category();
                inserts.push(PartitionInsert {
                    category,
                    topic: Arc::clone(&topic),
                    partition,
                    last_offset: offset,
                    statuses: Vec::with_capacity(if category == Category::Job { size } else { 0 }),
                    events: Vec::with_capacity(size),
                });
                inserts.len() - 1
            }
        };
        let insert = &mut inserts[index];
        insert.last_offset = insert.last_offset.max(offset);
        insert.statuses.extend(job_status_row(
            &event,
            &topic,
            partition,
            offset,
            ingested_at,
        ));
        insert.events.extend(into_event_row(
            event,
            &topic,
            partition,
            offset,
            ingested_at,
        ));
    }
    for insert in &mut inserts {
        insert.in_offset_order();
    }
    PreparedBatch {
        inserts: inserts.into_iter().map(Arc::new).collect(),
    }
}

/// See [`ClickHouseSink::health`].
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

    use super::*;

    fn records(offsets: &[i64]) -> Vec<Record> {
        offsets
            .iter()
            .map(|offset| Record {
                topic: Arc::from("ledgerline.job"),
                partition: 0,
                offset: *offset,
                event: samples::event(Category::Job, *offset as u64),
            })
            .collect()
    }

    fn offsets(batch: &PreparedBatch) -> (Vec<i64>, Vec<i64>, i64) {
        let insert = &batch.inserts[0];
        (
            insert.events.iter().map(|row| row.offset).collect(),
            insert.statuses.iter().map(|row| row.offset).collect(),
            insert.last_offset,
        )
    }

    #[test]
    fn a_partition_read_twice_in_one_batch_is_inserted_once_in_offset_order() {
        // A rebalance handed the partition back from its committed offset 3 after 5..=7.
        let batch = prepare(&StoredOffsets::new(), records(&[5, 6, 7, 3, 4, 5, 6]));
        assert_eq!(batch.inserts.len(), 1);
        let expected = vec![3, 4, 5, 6, 7];
        assert_eq!(offsets(&batch), (expected.clone(), expected, 7));
    }

    #[test]
    fn records_at_or_below_the_stored_offset_are_skipped() {
        let mut stored = StoredOffsets::new();
        stored
            .entry(Arc::from("ledgerline.job"))
            .or_default()
            .insert(0, 5);
        let batch = prepare(&stored, records(&[4, 5, 6, 7]));
        assert_eq!(offsets(&batch), (vec![6, 7], vec![6, 7], 7));
        assert!(prepare(&stored, records(&[2, 3])).inserts.is_empty());
    }
}
