//! The consumer runtime every sink shares: subscribe with a consumer group, decode through the
//! registry, dead-letter what cannot be processed, batch by size or time, hand the batch to the
//! sink, and commit offsets only after the sink took it.
//!
//! # Delivery semantics
//! - **At least once into the sink.** A partition's offset is committed only after every record
//!   before it was either written by the sink or acknowledged by the dead-letter topic. A crash
//!   replays from the last commit; sinks make the replay harmless (see each sink's `mod.rs`).
//! - **Retries, not crashes.** While the sink fails, the same batch is retried with exponential
//!   backoff (100 ms doubling to 30 s); the consumer stops fetching meanwhile, so nothing piles
//!   up in memory. A registry that cannot be reached is retried the same way (the record is not
//!   dead-lettered: it is not bad). `max.poll.interval.ms` is 10 minutes, so a long sink outage
//!   ends in a rebalance and a replay elsewhere, never in a skipped record.
//! - **Bad input never stops the consumer.** Records that are too large, are not in the wire
//!   format, name an unknown schema id, hold corrupt Avro, are of another schema, or break a rule
//!   of the event model go to `ledgerline.dlq` with the original key and bytes and headers
//!   naming the source topic, partition, offset, reason, error and time; the consumer moves on
//!   and counts `ledgerline_consumer_dlq_total{reason}`.
//! - **Rebalances.** The batch is written and committed between polls, and librdkafka revokes
//!   partitions only during a poll, so a revoked partition's records are never half-processed.
//!   A commit that fails because partitions moved is logged; the new owner replays them.
//! - **Shutdown.** On the token: stop fetching, write the batch, commit, return. If the sink is
//!   down at that moment the batch is left uncommitted and replayed by the next run.

mod dlq;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerline_schemas::event::Event;
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

pub use dlq::{DeadLetters, DLQ_HEADERS};

/// A decoded event with its position in Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
}

/// A sink failed to take a batch; the runtime retries the same batch.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where batches go. `write` must be idempotent per record: a crash replays.
pub trait Sink: Send {
    fn write(&mut self, batch: &[Record]) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// How one consumer runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub group_id: String,
    pub topics: Vec<String>,
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    /// Larger records are dead-lettered with reason `oversize`.
    pub max_event_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("failed to create kafka client: {0}")]
    Kafka(#[from] KafkaError),
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

/// The category whose events a Ledgerline topic carries.
fn category_of(topic: &str) -> Option<Category> {
    Category::ALL
        .into_iter()
        .find(|category| category.topic_name() == topic)
}

/// What became of one consumed record. Short-lived, one at a time: the size difference
/// between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Keep(Record),
    DeadLettered,
    /// Shutdown came while waiting on a transient failure; the record was not handled.
    Interrupted,
}

/// Runs until `shutdown` is cancelled.
pub async fn run<S: Sink>(
    config: RuntimeConfig,
    kafka: &KafkaConfig,
    codec: Arc<EventCodec>,
    mut sink: S,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let mut client = kafka.client_config();
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.poll.interval.ms", "600000");
    let consumer: StreamConsumer = client.create()?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dead_letters = DeadLetters::new(kafka)?;
    tracing::info!(group = %config.group_id, topics = ?config.topics, "consumer started");

    let mut stopping = false;
    while !stopping {
        let mut batch = Vec::new();
        // Next offset to commit per (topic, partition), for kept and dead-lettered records.
        let mut positions: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < config.batch_max_events {
            let wait = deadline.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
            });
            let message = tokio::select! {
                () = shutdown.cancelled() => {
                    stopping = true;
                    break;
                }
                received = tokio::time::timeout(wait, consumer.recv()) => received,
            };
            let message = match message {
                Err(_) if positions.is_empty() => continue,
                Err(_) => break,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "kafka consume error");
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            deadline.get_or_insert_with(|| Instant::now() + config.batch_max_wait);
            let position = (message.topic().to_owned(), message.partition());
            let next = message.offset() + 1;
            match handle(&config, &codec, &dead_letters, &message, &shutdown).await {
                Outcome::Keep(record) => batch.push(record),
                Outcome::DeadLettered => {}
                Outcome::Interrupted => {
                    stopping = true;
                    break;
                }
            }
            positions.insert(position, next);
        }
        if positions.is_empty() {
            continue;
        }
        if !batch.is_empty() && !write_with_retries(&mut sink, &batch, &shutdown).await {
            tracing::warn!(
                events = batch.len(),
                "shutting down with an unwritten batch; it will be replayed"
            );
            return Ok(());
        }
        metrics::counter!("ledgerline_consumer_events_total", "outcome" => "written")
            .increment(batch.len() as u64);
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), next) in &positions {
            if let Err(error) =
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))
            {
                tracing::warn!(%topic, partition, %error, "cannot record offset");
            }
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
            // Usually a rebalance moved the partitions; their new owner replays them.
            tracing::warn!(%error, "offset commit failed; records will be replayed");
        }
    }
    tracing::info!("consumer stopped");
    Ok(())
}

/// Decodes and validates one record, dead-lettering it when it is bad.
async fn handle(
    config: &RuntimeConfig,
    codec: &EventCodec,
    dead_letters: &DeadLetters,
    message: &BorrowedMessage<'_>,
    shutdown: &CancellationToken,
) -> Outcome {
    let span = tracing::debug_span!(
        "record",
        topic = message.topic(),
        partition = message.partition(),
        offset = message.offset()
    );
    let _entered = span.enter();
    metrics::counter!("ledgerline_consumer_consumed_total").increment(1);
    let payload = message.payload().unwrap_or_default();
    let rejection = if payload.len() > config.max_event_bytes {
        Some((
            "oversize",
            format!(
                "{} bytes exceed the {} byte limit",
                payload.len(),
                config.max_event_bytes
            ),
        ))
    } else if let Some(category) = category_of(message.topic()) {
        let mut backoff = BACKOFF_START;
        loop {
            match codec.decode(category, payload).await {
                Ok(event) => match event.validate() {
                    Ok(()) => {
                        return Outcome::Keep(Record {
                            topic: message.topic().to_owned(),
                            partition: message.partition(),
                            offset: message.offset(),
                            event,
                        })
                    }
                    Err(error) => break Some(("invalid_event", error.to_string())),
                },
                Err(error) => match error.dead_letter_reason() {
                    Some(reason) => break Some((reason, error.to_string())),
                    None => {
                        tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "decode failed; retrying");
                        if !wait_to_retry(&mut backoff, shutdown).await {
                            return Outcome::Interrupted;
                        }
                    }
                },
            }
        }
    } else {
        Some((
            "unknown_topic",
            format!("topic {} carries no Ledgerline category", message.topic()),
        ))
    };
    let Some((reason, error)) = rejection else {
        return Outcome::DeadLettered;
    };
    let mut backoff = BACKOFF_START;
    loop {
        match dead_letters.send(message, reason, &error).await {
            Ok(()) => return Outcome::DeadLettered,
            Err(send_error) => {
                tracing::warn!(%send_error, reason, "dead-letter produce failed; retrying");
                if !wait_to_retry(&mut backoff, shutdown).await {
                    return Outcome::Interrupted;
                }
            }
        }
    }
}

/// Sleeps `backoff` (then doubles it) unless shutdown comes first; false on shutdown.
async fn wait_to_retry(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(*backoff) => {
            *backoff = next_backoff(*backoff);
            true
        }
    }
}

/// Retries `batch` until the sink takes it (true) or shutdown is requested (false).
async fn write_with_retries<S: Sink>(
    sink: &mut S,
    batch: &[Record],
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = BACKOFF_START;
    loop {
        match sink.write(batch).await {
            Ok(()) => return true,
            Err(error) => {
                metrics::counter!("ledgerline_consumer_sink_errors_total").increment(1);
                tracing::warn!(%error, events = batch.len(), retry_in_ms = backoff.as_millis() as u64, "sink unavailable; retrying the batch");
                if !wait_to_retry(&mut backoff, shutdown).await {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = BACKOFF_START;
        for _ in 0..20 {
            backoff = next_backoff(backoff);
        }
        assert_eq!(backoff, BACKOFF_MAX);
        assert_eq!(next_backoff(BACKOFF_START), Duration::from_millis(200));
    }

    #[test]
    fn topics_map_to_categories() {
        assert_eq!(category_of("ledgerline.job"), Some(Category::Job));
        assert_eq!(category_of("ledgerline.dlq"), None);
    }
}
