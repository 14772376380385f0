//! Reading a partition set from given positions straight from Kafka, for resumes: a consumer
//! of its own per resuming client (no group, no commits), assigned every event partition at
//! the client's position.

use std::sync::Arc;
use std::time::Duration;

use ledgerline_schemas::{Category, Event, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::cursor::Positions;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the schema registry cannot be reached: {0}")]
    Registry(String),
    #[error("a lookup task failed: {0}")]
    Task(String),
}

/// Part of a partition the broker no longer holds (or never held: a cursor from another
/// cluster, or from before the topic was recreated).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub topic: &'static str,
    pub partition: i32,
    /// The position asked for.
    pub from: i64,
    /// Where reading starts instead: the oldest offset the broker holds.
    pub to: i64,
    /// Records that cannot be delivered (`to - from`; 0 when the cursor was ahead).
    pub missed: i64,
    pub reason: &'static str,
}

/// `(low, high)` watermarks of every partition in `partitions`.
pub async fn watermarks(
    metadata: &Arc<BaseConsumer>,
    partitions: Vec<(Category, i32)>,
) -> Result<Vec<((Category, i32), (i64, i64))>, ReplayError> {
    let metadata = Arc::clone(metadata);
    tokio::task::spawn_blocking(move || {
        partitions
            .into_iter()
            .map(|(category, partition)| {
                metadata
                    .fetch_watermarks(category.topic_name(), partition, LOOKUP_TIMEOUT)
                    .map(|marks| ((category, partition), marks))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|error| ReplayError::Task(error.to_string()))?
    .map_err(ReplayError::from)
}

/// The first offset of each partition whose record's Kafka timestamp is at or after
/// `millis`; the high watermark when none is.
pub async fn offsets_for_time(
    metadata: &Arc<BaseConsumer>,
    partitions: Vec<(Category, i32)>,
    millis: i64,
) -> Result<Positions, ReplayError> {
    let marks = watermarks(metadata, partitions.clone()).await?;
    let metadata = Arc::clone(metadata);
    let found = tokio::task::spawn_blocking(move || {
        let mut list = TopicPartitionList::new();
        for (category, partition) in &partitions {
            list.add_partition_offset(category.topic_name(), *partition, Offset::Offset(millis))?;
        }
        metadata.offsets_for_times(list, LOOKUP_TIMEOUT)
    })
    .await
    .map_err(|error| ReplayError::Task(error.to_string()))??;
    let mut positions = Positions::new();
    for (key, (_, high)) in marks {
        positions.insert(key, high);
    }
    for element in found.elements() {
        if let (Some(category), Offset::Offset(offset)) =
            (Category::from_topic(element.topic()), element.offset())
        {
            positions.insert((category, element.partition()), offset);
        }
    }
    Ok(positions)
}

/// One resuming client's Kafka reader.
pub struct Replay {
    /// Taken when the replay ends, to be closed off the async workers.
    consumer: Option<StreamConsumer>,
    codec: Arc<EventCodec>,
    max_event_bytes: usize,
    /// Next offset to read per partition: what has been read (or skipped) so far.
    pub positions: Positions,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

/// What [`Replay::next`] found.
#[derive(Debug)]
pub enum Read {
    Event {
        partition: (Category, i32),
        offset: i64,
        event: Box<Event>,
    },
    /// Nothing arrived for a while; the positions were brought up to the consumer's (past
    /// records it never hands out, such as transaction markers).
    Idle,
}

impl Replay {
    /// A reader at `start`, after checking each position against what the broker holds:
    /// positions below the oldest offset held start there, positions above the newest start at
    /// the newest, and both are reported as gaps.
    pub async fn open(
        kafka: &KafkaConfig,
        metadata: &Arc<BaseConsumer>,
        codec: Arc<EventCodec>,
        max_event_bytes: usize,
        start: Positions,
    ) -> Result<(Self, Vec<Gap>), ReplayError> {
        let marks = watermarks(metadata, start.keys().copied().collect()).await?;
        let mut positions = start;
        let mut gaps = Vec::new();
        for ((category, partition), (low, high)) in marks {
            let Some(position) = positions.get_mut(&(category, partition)) else {
                continue;
            };
            let asked = *position;
            if asked < low {
                gaps.push(Gap {
                    topic: category.topic_name(),
                    partition,
                    from: asked,
                    to: low,
                    missed: low - asked,
                    reason: "the broker no longer holds these records (retention)",
                });
                *position = low;
            } else if asked > high {
                // Not a loss this client can recover: its records are from elsewhere. Carry on
                // from the end, like a new subscription, rather than replay the partition.
                gaps.push(Gap {
                    topic: category.topic_name(),
                    partition,
                    from: asked,
                    to: high,
                    missed: 0,
                    reason: "the cursor is ahead of the broker (another cluster, or the topic was recreated); continuing from the end",
                });
                *position = high;
            }
        }
        let consumer: StreamConsumer = kafka
            .consumer_config(&[
                ("fetch.wait.max.ms", "50".to_owned()),
                // librdkafka prefetches up to 64 MiB per consumer by default; a resume reads
                // at the pace of one client's socket, and several may run at once.
                ("queued.max.messages.kbytes", "4096".to_owned()),
            ])
            .set(
                "group.id",
                format!("ledgerline-stream-resume-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut list = TopicPartitionList::new();
        for (&(category, partition), &offset) in &positions {
            list.add_partition_offset(category.topic_name(), partition, Offset::Offset(offset))?;
        }
        consumer.assign(&list)?;
        Ok((
            Self {
                consumer: Some(consumer),
                codec,
                max_event_bytes,
                positions,
            },
            gaps,
        ))
    }

    /// Whether every partition of `target` this replay reads has been read up to its
    /// position. A partition the fan-out found after the replay started is not waited for
    /// (its records before the join are not replayed).
    pub fn reached(&self, target: &Positions) -> bool {
        target
            .iter()
            .all(|(key, offset)| self.positions.get(key).is_none_or(|at| at >= offset))
    }

    /// Records left between the positions read and `target`.
    pub fn behind(&self, target: &Positions) -> i64 {
        target
            .iter()
            .filter_map(|(key, offset)| self.positions.get(key).map(|at| (offset - at).max(0)))
            .sum()
    }

    /// The next valid event, skipping records that are not (counted), or [`Read::Idle`] when
    /// nothing came within `idle`.
    pub async fn next(&mut self, idle: Duration) -> Result<Read, ReplayError> {
        loop {
            let Some(consumer) = &self.consumer else {
                return Ok(Read::Idle);
            };
            let message = match tokio::time::timeout(idle, consumer.recv()).await {
                Err(_) => {
                    self.catch_up_positions();
                    return Ok(Read::Idle);
                }
                Ok(Err(error)) => {
                    // librdkafka reports and retries (a broker down, an offset reset when
                    // retention removed what was being read); the caller gives up when no
                    // progress comes for long.
                    if !matches!(error, KafkaError::PartitionEOF(_)) {
                        tracing::debug!(%error, "stream replay: consumer error");
                        return Ok(Read::Idle);
                    }
                    continue;
                }
                Ok(Ok(message)) => message,
            };
            let Some(category) = Category::from_topic(message.topic()) else {
                continue;
            };
            let key = (category, message.partition());
            let offset = message.offset();
            if self.positions.get(&key).is_some_and(|at| offset < *at) {
                continue;
            }
            self.positions.insert(key, offset + 1);
            let Some(value) = message.payload() else {
                skipped("empty");
                continue;
            };
            if value.len() > self.max_event_bytes {
                skipped("oversize");
                continue;
            }
            let value = value.to_vec();
            drop(message);
            match self.codec.decode(category, &value).await {
                Ok(event) if event.validate().is_ok() => {
                    return Ok(Read::Event {
                        partition: key,
                        offset,
                        event: Box::new(event),
                    })
                }
                Ok(_) => skipped("invalid_event"),
                Err(error) if error.is_retriable() => {
                    return Err(ReplayError::Registry(error.to_string()))
                }
                Err(error) => skipped(error.dead_letter_reason().unwrap_or("undecodable")),
            }
        }
    }

    fn catch_up_positions(&mut self) {
        let Some(consumer) = &self.consumer else {
            return;
        };
        if let Ok(list) = consumer.position() {
            for element in list.elements() {
                if let (Some(category), Offset::Offset(offset)) =
                    (Category::from_topic(element.topic()), element.offset())
                {
                    let at = self
                        .positions
                        .entry((category, element.partition()))
                        .or_insert(offset);
                    *at = (*at).max(offset);
                }
            }
        }
    }

    /// Closes the consumer off the async workers (closing blocks).
    pub async fn close(mut self) {
        if let Some(consumer) = self.consumer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        }
    }
}

/// However a replay ends (a stream cancelled mid-resume included), its consumer is closed off
/// the async workers.
impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || drop(consumer));
                }
                Err(_) => drop(consumer),
            }
        }
    }
}

fn skipped(reason: &'static str) {
    metrics::counter!("ledgerline_stream_replay_skipped_total", "reason" => reason).increment(1);
}
