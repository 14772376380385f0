//! `dlq replay`: re-publishing dead letters to their source, once each (see the module's
//! guarantees).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_service::kafka::{ensure_topics, KafkaConfig, NewTopics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::read::{header, read_topic};
use super::{read_dead_letters, DeadLetter, DlqError, Selection};

/// The compacted topic holding replay progress, one key per dead letter.
pub const PROGRESS_TOPIC: &str = "ledgerline.dlq.replays";
/// The header on every re-published copy: the dead letter it replays.
pub const REPLAY_OF_HEADER: &str = "ledgerline.replay.of";

const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How far before a `started` marker the target partition is searched for its copy (the
/// copy's timestamp is after the marker's; this covers clock steps between hosts).
const IN_DOUBT_MARGIN_MS: i64 = 60_000;

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub selection: Selection,
    /// List what would be replayed; publish nothing, record nothing.
    pub dry_run: bool,
}

/// What one run did, dead letter by dead letter.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Re-published now: (dead letter id, target "topic/partition/offset").
    pub replayed: Vec<(String, String)>,
    /// Replayed by an earlier run.
    pub already_replayed: Vec<String>,
    /// A run died between its markers; the copy was found, so it was only marked done.
    pub recovered: Vec<String>,
    /// No source headers: not replayable.
    pub malformed: Vec<String>,
    /// `--dry-run`: what would be replayed.
    pub would_replay: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Marker {
    Started { at_ms: i64 },
    Done { at_ms: i64, target: String },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// The latest marker per dead letter.
async fn progress(kafka: &KafkaConfig) -> Result<HashMap<String, Marker>, DlqError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let mut markers = HashMap::new();
        read_topic(&kafka, PROGRESS_TOPIC, |message| {
            let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                return;
            };
            if let Ok(marker) = serde_json::from_slice::<Marker>(value) {
                markers.insert(String::from_utf8_lossy(key).into_owned(), marker);
            }
        })?;
        Ok(markers)
    })
    .await
    .map_err(|error| DlqError::Task(error.to_string()))?
}

/// Whether the target partition holds a copy of `id` at or after `from_ms`.
async fn copy_exists(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    id: &str,
    from_ms: i64,
) -> Result<Option<i64>, DlqError> {
    let (kafka, topic, id) = (kafka.clone(), topic.to_owned(), id.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .consumer_config(&[
                ("group.id", "ledgerline-dlq-tools".to_owned()),
                ("enable.auto.commit", "false".to_owned()),
            ])
            .create()?;
        let (_, high) = consumer.fetch_watermarks(&topic, partition, SEND_TIMEOUT)?;
        let mut wanted = TopicPartitionList::new();
        wanted.add_partition_offset(&topic, partition, Offset::Offset(from_ms))?;
        let found = consumer.offsets_for_times(wanted, SEND_TIMEOUT)?;
        let start = found
            .elements()
            .first()
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .unwrap_or(high);
        if start >= high {
            return Ok(None);
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
        consumer.assign(&assignment)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    if message.offset() >= high {
                        return Ok(None);
                    }
                    if header(&message, REPLAY_OF_HEADER).as_deref() == Some(id.as_str()) {
                        return Ok(Some(message.offset()));
                    }
                    if message.offset() + 1 >= high {
                        return Ok(None);
                    }
                }
                Some(Err(error)) => return Err(error.into()),
                None => {
                    let at = consumer.position()?.elements().first().and_then(|element| {
                        match element.offset() {
                            Offset::Offset(offset) => Some(offset),
                            _ => None,
                        }
                    });
                    if at.is_some_and(|at| at >= high) {
                        return Ok(None);
                    }
                }
            }
        }
        Err(DlqError::Stalled {
            topic,
            seconds: 60,
            position: format!("partition {partition} searching for {id}"),
        })
    })
    .await
    .map_err(|error| DlqError::Task(error.to_string()))?
}

/// How many replicas the dead-letter topic's partitions have (1 when it cannot be told).
async fn replication_of_dlq(kafka: &KafkaConfig) -> Result<i32, DlqError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .consumer_config(&[("group.id", "ledgerline-dlq-tools".to_owned())])
            .create()?;
        let metadata = consumer.fetch_metadata(Some(DLQ_TOPIC), SEND_TIMEOUT)?;
        let replicas = metadata
            .topics()
            .iter()
            .filter(|topic| topic.name() == DLQ_TOPIC)
            .flat_map(|topic| topic.partitions().iter().map(|p| p.replicas().len()))
            .max()
            .unwrap_or(1);
        Ok(i32::try_from(replicas).unwrap_or(1).max(1))
    })
    .await
    .map_err(|error| DlqError::Task(error.to_string()))?
}

async fn mark(producer: &FutureProducer, id: &str, marker: &Marker) -> Result<(), DlqError> {
    let value = serde_json::to_vec(marker).map_err(|error| DlqError::Task(error.to_string()))?;
    producer
        .send(
            FutureRecord::to(PROGRESS_TOPIC).key(id).payload(&value),
            SEND_TIMEOUT,
        )
        .await
        .map(|_| ())
        .map_err(|(error, _)| DlqError::Kafka(error))
}

/// Re-publishes the dead letters `options` select, each at most once across runs.
pub async fn replay(
    kafka: &KafkaConfig,
    options: &ReplayOptions,
) -> Result<ReplayReport, DlqError> {
    let letters = read_dead_letters(kafka, &options.selection).await?;
    let mut report = ReplayReport::default();
    if !options.dry_run {
        // One partition: progress is small, and one partition keeps it in one order. As many
        // replicas as the dead-letter topic has: the cluster's choice, with no setting here.
        let layout = NewTopics::new(1, replication_of_dlq(kafka).await?)
            .config("cleanup.policy", "compact")
            .timeout(SEND_TIMEOUT);
        ensure_topics(&kafka.client_config(), &[PROGRESS_TOPIC], &layout).await?;
    }
    let markers = progress(kafka).await?;
    let producer: FutureProducer = kafka
        .idempotent_producer_config(&[("linger.ms", "0".to_owned())])
        .create()?;
    for letter in letters {
        let id = letter.id();
        let Some((topic, partition, _)) = letter.source() else {
            report.malformed.push(id);
            continue;
        };
        match markers.get(&id) {
            Some(Marker::Done { .. }) => {
                report.already_replayed.push(id);
                continue;
            }
            Some(Marker::Started { at_ms }) => {
                if let Some(offset) =
                    copy_exists(kafka, topic, partition, &id, at_ms - IN_DOUBT_MARGIN_MS).await?
                {
                    if !options.dry_run {
                        let target = format!("{topic}/{partition}/{offset}");
                        mark(
                            &producer,
                            &id,
                            &Marker::Done {
                                at_ms: now_ms(),
                                target,
                            },
                        )
                        .await?;
                    }
                    report.recovered.push(id);
                    continue;
                }
            }
            None => {}
        }
        if options.dry_run {
            report.would_replay.push(id);
            continue;
        }
        let target = publish(&producer, &letter, topic, partition, &id).await?;
        report.replayed.push((id, target));
    }
    Ok(report)
}

/// The markers around one copy: `started` acknowledged before it, `done` after it.
async fn publish(
    producer: &FutureProducer,
    letter: &DeadLetter,
    topic: &str,
    partition: i32,
    id: &str,
) -> Result<String, DlqError> {
    mark(producer, id, &Marker::Started { at_ms: now_ms() }).await?;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: REPLAY_OF_HEADER,
            value: Some(id),
        })
        .insert(Header {
            key: "ledgerline.replay.reason",
            value: letter.reason.as_deref(),
        });
    let mut record = FutureRecord::to(topic)
        .partition(partition)
        .payload(&letter.value)
        .headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(key);
    }
    let delivery = producer
        .send(record, SEND_TIMEOUT)
        .await
        .map_err(|(error, _)| DlqError::Kafka(error))?;
    let target = format!("{topic}/{}/{}", delivery.partition, delivery.offset);
    mark(
        producer,
        id,
        &Marker::Done {
            at_ms: now_ms(),
            target: target.clone(),
        },
    )
    .await?;
    tracing::info!(dead_letter = %id, %target, reason = ?letter.reason, "dead letter replayed");
    Ok(target)
}
