//! The projector's sink: one batch from the runtime becomes, per category, one `job_status`
//! insert (job events only) followed by one `events` insert, all rows sharing one
//! `ingested_at` (see the module docs for why that makes each insert atomic).

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ledgerline_schemas::Category;

use super::config::ClickHouseConfig;
use super::row::{self, event_row, job_status_row};
use super::{queries, schema, Result};
use crate::runtime::{Record, Sink, SinkError};

/// Writes batches into `<database>.events` and `<database>.job_status`.
pub struct ClickHouseSink {
    client: clickhouse::Client,
    database: String,
    /// Highest offset known to be stored per (topic, partition). Records at or below it are
    /// skipped: they were stored before a crash that came between insert and commit.
    stored: HashMap<(String, i32), i64>,
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
        let mut stored = HashMap::new();
        for topic in topics {
            for (partition, offset) in
                queries::resume_offsets(&client, &config.database, topic).await?
            {
                stored.insert((topic.clone(), partition), offset);
            }
        }
        Ok(Self {
            client,
            database: config.database.clone(),
            stored,
        })
    }

    fn already_stored(&self, record: &Record) -> bool {
        self.stored
            .get(&(record.topic.clone(), record.partition))
            .is_some_and(|stored| record.offset <= *stored)
    }

    async fn insert(&mut self, batch: &[Record]) -> Result<()> {
        let ingested_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let mut by_category: BTreeMap<Category, Vec<&Record>> = BTreeMap::new();
        for record in batch.iter().filter(|record| !self.already_stored(record)) {
            by_category
                .entry(record.event.category())
                .or_default()
                .push(record);
        }
        for (category, records) in by_category {
            let statuses: Vec<_> = records
                .iter()
                .filter_map(|r| {
                    job_status_row(&r.event, &r.topic, r.partition, r.offset, ingested_at)
                })
                .collect();
            let events: Vec<_> = records
                .iter()
                .filter_map(|r| event_row(&r.event, &r.topic, r.partition, r.offset, ingested_at))
                .collect();
            let started = Instant::now();
            if !statuses.is_empty() {
                row::insert_job_statuses(&self.client, &self.database, &statuses).await?;
            }
            if !events.is_empty() {
                row::insert_events(&self.client, &self.database, &events).await?;
            }
            metrics::histogram!("ledgerline_projector_insert_seconds", "category" => category.as_str())
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("ledgerline_projector_batch_events", "category" => category.as_str())
                .record(events.len() as f64);
            metrics::counter!("ledgerline_projector_inserted_total", "category" => category.as_str())
                .increment(events.len() as u64);
            for record in records {
                let key = (record.topic.clone(), record.partition);
                let stored = self.stored.entry(key).or_insert(record.offset);
                *stored = (*stored).max(record.offset);
            }
        }
        Ok(())
    }
}

impl Sink for ClickHouseSink {
    async fn write(&mut self, batch: &[Record]) -> std::result::Result<(), SinkError> {
        self.insert(batch)
            .await
            .map_err(|error| SinkError(error.to_string()))
    }
}
