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
//! - **Rebalances.** A batch is read over many polls and written while the next one is read,
//!   so partitions can be revoked while some of their records are in a batch. That batch is
//!   still written; its commit then either lands or fails because the group moved on (logged),
//!   and the partition's new owner resumes from the last commit that landed. Either way the
//!   records are written again at most once more, which the sink's idempotence absorbs: a
//!   revoked partition's records are delayed or repeated, never skipped.
//! - **Pipelining.** One batch is written (by a writer task) while the next is read, decoded
//!   and prepared; batches are written and committed one at a time, in the order they were
//!   read. A batch's commit for a partition is the greatest offset it read plus one. The reader
//!   starts a batch only once the writer has taken the previous one, so at most two batches are
//!   in memory.
//! - **Shutdown.** On the token: stop fetching, write the batch, commit, return. If the sink is
//!   down at that moment the batch is left uncommitted and replayed by the next run.
//!
//! # Metrics
//! `ledgerline_consumer_consumed_total` (records read), `ledgerline_consumer_events_total
//! {outcome="written"}` (taken by the sink), `ledgerline_consumer_dlq_total{reason}`,
//! `ledgerline_consumer_sink_errors_total{kind}` (failed writes, each retried), and
//! `ledgerline_consumer_lag_messages{topic,partition}` (high watermark minus the group's
//! committed offset, measured every 5 s by a task of its own, so it keeps rising while the
//! sink is stuck).

mod context;
mod dlq;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ledgerline_schemas::event::Event;
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use context::RuntimeContext;
pub use dlq::{DeadLetters, DLQ_HEADERS};

/// A decoded event with its position in Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Shared by every record of a partition, so a batch does not allocate a name per record.
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub event: Event,
}

/// A sink failed to take a batch. The runtime retries the same batch whatever the failure,
/// since dropping it would lose it; `kind` and `transient` only decide how it is reported.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Label of `ledgerline_consumer_sink_errors_total{kind}`, e.g. `transient`.
    pub kind: &'static str,
    /// Expected to pass by itself (logged as a warning); otherwise someone must act (an error).
    pub transient: bool,
    /// The error and its causes, outermost first, joined by `: `.
    pub message: String,
}

impl SinkError {
    pub fn new(kind: &'static str, transient: bool, error: &dyn std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut cause = error.source();
        while let Some(inner) = cause {
            message.push_str(": ");
            message.push_str(&inner.to_string());
            cause = inner.source();
        }
        Self {
            kind,
            transient,
            message,
        }
    }
}

/// Where batches go.
pub trait Sink: Send + 'static {
    /// A batch in the form the sink writes it, kept for retries.
    type Prepared: Send + Sync + 'static;
    /// Turns a batch's records into what [`Sink::write`] sends, given them by value so their
    /// contents move rather than being copied. Owned by the reader task, which prepares each
    /// batch as soon as it is read: preparing then overlaps the previous batch's write rather
    /// than adding to it.
    type Preparer: FnMut(Vec<Record>) -> Self::Prepared + Send + 'static;
    /// Called once, when the runtime starts.
    fn preparer(&self) -> Self::Preparer;
    /// Writes a prepared batch. After a failure the runtime calls it again with the same
    /// batch, and after a crash a later run writes the same records again, so writing must be
    /// idempotent per record.
    fn write(
        &mut self,
        batch: &Self::Prepared,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
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
    /// librdkafka's `fetch.wait.max.ms`, unless `[kafka] librdkafka` sets it.
    pub fetch_wait_max: Duration,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("failed to create kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the batch writer task failed: {0}")]
    Writer(String),
}

/// How long the reader waits for a first record before looking at shutdown and starting
/// over; bounds how long an idle consumer takes to notice shutdown.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// How many records the reader takes between clock reads while records keep arriving.
const DEADLINE_CHECK_EVERY: u64 = 256;
/// Batches are allocated for this many records up front at most; larger ones grow.
const PREALLOCATED_RECORDS: usize = 65_536;

/// Records read, decoded and prepared, with the offsets to commit once they are written.
#[derive(Debug)]
struct ReadBatch<P> {
    /// `None` when every record was dead-lettered: only offsets to commit.
    prepared: Option<P>,
    events: usize,
    positions: Vec<Position>,
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
///
/// Two tasks share the work, so reading the next batch overlaps writing the previous one:
/// this one reads, decodes, dead-letters, forms and prepares batches; a writer task writes
/// them (with retries) and commits them, one at a time and in order. The reader starts a batch only
/// once the writer has taken the previous one, so memory stays bounded to two batches.
pub async fn run<S: Sink>(
    config: RuntimeConfig,
    kafka: &KafkaConfig,
    codec: Arc<EventCodec>,
    sink: S,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let mut client = kafka.client_config();
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.poll.interval.ms", "600000");
    set_unless_configured(
        &mut client,
        "fetch.wait.max.ms",
        &config.fetch_wait_max.as_millis().to_string(),
    );
    // librdkafka looks for subscribed topics that do not exist yet only at this refresh
    // (default 5 minutes); a consumer started before its topics were created would sit idle
    // that long.
    set_unless_configured(&mut client, "topic.metadata.refresh.interval.ms", "10000");
    let consumer: Arc<StreamConsumer<RuntimeContext>> =
        Arc::new(client.create_with_context(RuntimeContext::new(config.group_id.clone()))?);
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let dead_letters = DeadLetters::new(kafka)?;
    tracing::info!(group = %config.group_id, topics = ?config.topics, "consumer started");

    let lag_stop = shutdown.child_token();
    let lag = tokio::spawn(context::report_lag(Arc::clone(&consumer), lag_stop.clone()));
    let mut prepare = sink.preparer();
    let (batches, pending) = tokio::sync::mpsc::channel(1);
    let writer = tokio::spawn(write_batches(
        Arc::clone(&consumer),
        sink,
        pending,
        shutdown.clone(),
    ));
    let mut stopping = false;
    while !stopping {
        // The slot is taken before reading, so the next batch is read only once the writer
        // has taken the previous one: one batch written, one read, never more.
        let Ok(slot) = batches.reserve().await else {
            // The writer stopped: shutdown with an unwritten batch, or it failed.
            break;
        };
        let mut records = Vec::with_capacity(config.batch_max_events.min(PREALLOCATED_RECORDS));
        // Next offset to commit per partition, for kept and dead-lettered records. A batch
        // spans a handful of partitions, so a short list beats a map keyed by owned names.
        let mut positions: Vec<Position> = Vec::new();
        let mut consumed = 0_u64;
        // One timer per batch: until the first record it bounds an idle wait, then it is the
        // batch's deadline. (A timeout around every `recv` would arm a timer per record.)
        let timer = tokio::time::sleep(IDLE_WAIT);
        tokio::pin!(timer);
        let mut deadline: Option<tokio::time::Instant> = None;
        while records.len() < config.batch_max_events {
            // Checked per record rather than raced against `recv` (which the biased select
            // below polls first), so a steady stream cannot starve shutdown or the deadline.
            if shutdown.is_cancelled() {
                stopping = true;
                break;
            }
            if consumed % DEADLINE_CHECK_EVERY == DEADLINE_CHECK_EVERY - 1
                && deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
            {
                break;
            }
            let received = tokio::select! {
                biased;
                received = consumer.recv() => received,
                () = &mut timer => {
                    if deadline.is_some() {
                        break;
                    }
                    timer.as_mut().reset(tokio::time::Instant::now() + IDLE_WAIT);
                    continue;
                }
                () = shutdown.cancelled() => {
                    stopping = true;
                    break;
                }
            };
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "kafka consume error");
                    continue;
                }
            };
            if deadline.is_none() {
                let batch_deadline = tokio::time::Instant::now() + config.batch_max_wait;
                deadline = Some(batch_deadline);
                timer.as_mut().reset(batch_deadline);
            }
            consumed += 1;
            let position = position_of(&mut positions, &message);
            let topic = Arc::clone(&position.topic);
            // The span is entered only while `handle` runs, not across other tasks' polls.
            let span = tracing::debug_span!(
                "record",
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset()
            );
            match handle(&config, &codec, &dead_letters, &message, topic, &shutdown)
                .instrument(span)
                .await
            {
                Outcome::Keep(record) => records.push(record),
                Outcome::DeadLettered => {}
                Outcome::Interrupted => {
                    stopping = true;
                    break;
                }
            }
            // The greatest, not the last: a rebalance can hand a partition back mid-batch
            // from its committed offset, so a batch may read some offsets twice.
            position.next = position.next.max(message.offset() + 1);
        }
        metrics::counter!("ledgerline_consumer_consumed_total").increment(consumed);
        if positions.is_empty() {
            continue;
        }
        let events = records.len();
        let prepared = (events > 0).then(|| prepare(records));
        slot.send(ReadBatch {
            prepared,
            events,
            positions,
        });
    }
    drop(batches);
    let stopped = writer
        .await
        .map_err(|error| RuntimeError::Writer(error.to_string()));
    lag_stop.cancel();
    let _ = lag.await;
    tracing::info!("consumer stopped");
    stopped
}

/// Sets `key` unless `[kafka] librdkafka` already did: the runtime's defaults, not its rules.
fn set_unless_configured(client: &mut rdkafka::ClientConfig, key: &str, value: &str) {
    if client.get(key).is_none() {
        client.set(key, value);
    }
}

/// The writer task: writes and commits batches in the order they were read.
/// Returns when the reader is done, or at shutdown while a batch cannot be written (it stays
/// uncommitted and is replayed by the next run).
async fn write_batches<S: Sink>(
    consumer: Arc<StreamConsumer<RuntimeContext>>,
    mut sink: S,
    mut pending: tokio::sync::mpsc::Receiver<ReadBatch<S::Prepared>>,
    shutdown: CancellationToken,
) {
    while let Some(ReadBatch {
        prepared,
        events,
        positions,
    }) = pending.recv().await
    {
        if let Some(prepared) = prepared {
            if !write_with_retries(&mut sink, &prepared, events, &shutdown).await {
                tracing::warn!(
                    events,
                    "shutting down with an unwritten batch; it will be replayed"
                );
                return;
            }
        }
        metrics::counter!("ledgerline_consumer_events_total", "outcome" => "written")
            .increment(events as u64);
        let mut offsets = TopicPartitionList::new();
        for position in &positions {
            if let Err(error) = offsets.add_partition_offset(
                &position.topic,
                position.partition,
                Offset::Offset(position.next),
            ) {
                tracing::warn!(topic = %position.topic, partition = position.partition, %error, "cannot record offset");
            }
        }
        // A synchronous commit waits for the broker: off the async workers, so a slow group
        // coordinator does not hold up the reader or the inserts.
        let committing = Arc::clone(&consumer);
        let committed = tokio::task::spawn_blocking(move || {
            let result = committing.commit(&offsets, CommitMode::Sync);
            if result.is_ok() {
                committing.context().committed(&offsets);
            }
            result
        })
        .await;
        match committed {
            Ok(Ok(())) => {}
            // Usually a rebalance moved the partitions; their new owner replays them.
            Ok(Err(error)) => {
                tracing::warn!(%error, "offset commit failed; records will be replayed");
            }
            Err(error) => {
                tracing::warn!(%error, "offset commit task failed; records will be replayed");
            }
        }
    }
}

/// Where a partition's batch ends: the offset to commit once the batch is written.
#[derive(Debug)]
struct Position {
    topic: Arc<str>,
    partition: i32,
    next: i64,
}

/// The batch's position for `message`'s partition, added at the message's own offset (nothing
/// of the partition handled yet) when the batch has none.
fn position_of<'a>(
    positions: &'a mut Vec<Position>,
    message: &BorrowedMessage<'_>,
) -> &'a mut Position {
    let index = match positions
        .iter()
        .position(|p| p.partition == message.partition() && *p.topic == *message.topic())
    {
        Some(index) => index,
        None => {
            positions.push(Position {
                topic: Arc::from(message.topic()),
                partition: message.partition(),
                next: message.offset(),
            });
            positions.len() - 1
        }
    };
    &mut positions[index]
}

/// Decodes and validates one record, dead-lettering it when it is bad.
async fn handle(
    config: &RuntimeConfig,
    codec: &EventCodec,
    dead_letters: &DeadLetters,
    message: &BorrowedMessage<'_>,
    topic: Arc<str>,
    shutdown: &CancellationToken,
) -> Outcome {
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
                            topic,
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
    batch: &S::Prepared,
    events: usize,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = BACKOFF_START;
    loop {
        match sink.write(batch).await {
            Ok(()) => return true,
            Err(error) => {
                metrics::counter!("ledgerline_consumer_sink_errors_total", "kind" => error.kind)
                    .increment(1);
                let retry_in_ms = backoff.as_millis() as u64;
                if error.transient {
                    tracing::warn!(%error, kind = error.kind, events, retry_in_ms, "sink unavailable; retrying the batch");
                } else {
                    tracing::error!(%error, kind = error.kind, events, retry_in_ms, "sink refused the batch; retrying it until the cause is fixed");
                }
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
