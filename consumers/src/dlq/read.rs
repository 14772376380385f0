//! Reading the dead-letter topic (and the replay progress topic) to its end, without a group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::DlqError;

const LOOKUP: Duration = Duration::from_secs(10);
/// How long a read may go without progress before it is reported as stalled.
const STALL: Duration = Duration::from_secs(30);

/// One record of the dead-letter topic, with what its headers say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// `ledgerline.dlq.time_us`: when it was dead-lettered.
    pub time_us: Option<i64>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub value: Vec<u8>,
    pub value_bytes: usize,
}

impl DeadLetter {
    /// The progress key of this dead letter.
    pub fn id(&self) -> String {
        format!("{DLQ_TOPIC}/{}/{}", self.partition, self.offset)
    }

    /// Where it came from, when its headers say so completely.
    pub fn source(&self) -> Option<(&str, i32, i64)> {
        Some((
            self.source_topic.as_deref()?,
            self.source_partition?,
            self.source_offset?,
        ))
    }
}

/// Which dead letters a command takes; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Any of these reasons (none: any reason).
    pub reasons: Vec<String>,
    /// Dead-lettered at or after (µs since the epoch).
    pub since_us: Option<i64>,
    /// Dead-lettered before (µs).
    pub until_us: Option<i64>,
}

impl Selection {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let reason_ok = self.reasons.is_empty()
            || letter
                .reason
                .as_ref()
                .is_some_and(|reason| self.reasons.contains(reason));
        let time = letter.time_us.unwrap_or(i64::MIN);
        reason_ok
            && self.since_us.is_none_or(|since| time >= since)
            && self.until_us.is_none_or(|until| time < until)
    }
}

fn text(headers: Option<&rdkafka::message::BorrowedHeaders>, name: &str) -> Option<String> {
    let headers = headers?;
    headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Every record of `topic` from each partition's low watermark to the high watermark seen at
/// the start, in partition then offset order, handed to `visit`. Blocking: call it from
/// `spawn_blocking`.
pub(crate) fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), DlqError> {
    let consumer: BaseConsumer = kafka
        .consumer_config(&[
            ("group.id", "ledgerline-dlq-tools".to_owned()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.partition.eof", "false".to_owned()),
        ])
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), LOOKUP)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, LOOKUP)?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    // Each partition's records arrive in order; buffer per partition so `visit` sees them in
    // partition order too (a stable listing), then flush as partitions finish.
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    let mut last_progress = Instant::now();
    while done.values().any(|finished| !finished) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                let Some(end) = ends.get(&partition).copied() else {
                    continue;
                };
                if message.offset() < end {
                    visit(&message);
                }
                if message.offset() + 1 >= end {
                    done.insert(partition, true);
                }
            }
            Some(Err(error)) => return Err(error.into()),
            None => {
                // The records before the end may be gone (a compacted topic, control records):
                // a partition whose position has reached its end is done too.
                if let Ok(positions) = consumer.position() {
                    for element in positions.elements() {
                        if let (Offset::Offset(at), Some(end)) =
                            (element.offset(), ends.get(&element.partition()))
                        {
                            if at >= *end {
                                done.insert(element.partition(), true);
                            }
                        }
                    }
                }
                if last_progress.elapsed() > STALL {
                    let position = consumer
                        .position()
                        .map(|list| format!("{list:?}"))
                        .unwrap_or_default();
                    return Err(DlqError::Stalled {
                        topic: topic.to_owned(),
                        seconds: STALL.as_secs(),
                        position,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The dead letters `selection` takes, in partition then offset order.
pub async fn read_dead_letters(
    kafka: &KafkaConfig,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, DlqError> {
    let kafka = kafka.clone();
    let selection = Arc::new(selection.clone());
    tokio::task::spawn_blocking(move || {
        let mut letters = Vec::new();
        read_topic(&kafka, DLQ_TOPIC, |message| {
            let headers = message.headers();
            let letter = DeadLetter {
                partition: message.partition(),
                offset: message.offset(),
                time_us: text(headers, "ledgerline.dlq.time_us").and_then(|t| t.parse().ok()),
                reason: text(headers, "ledgerline.dlq.reason"),
                error: text(headers, "ledgerline.dlq.error"),
                source_topic: text(headers, "ledgerline.source.topic"),
                source_partition: text(headers, "ledgerline.source.partition")
                    .and_then(|t| t.parse().ok()),
                source_offset: text(headers, "ledgerline.source.offset")
                    .and_then(|t| t.parse().ok()),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                value_bytes: message.payload().map_or(0, <[u8]>::len),
            };
            if selection.matches(&letter) {
                letters.push(letter);
            }
        })?;
        letters.sort_by_key(|letter| (letter.partition, letter.offset));
        Ok(letters)
    })
    .await
    .map_err(|error| DlqError::Task(error.to_string()))?
}

/// The value of header `name` on a message, as text.
pub(crate) fn header(
    message: &rdkafka::message::BorrowedMessage<'_>,
    name: &str,
) -> Option<String> {
    text(message.headers(), name)
}
