//! [`KafkaView`] over a real broker: watermarks, the archiver group's committed offsets, and
//! records fetched by offset, through a consumer that joins no group and commits nothing.

use std::time::{Duration, Instant};

use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::verify::{KafkaRecord, KafkaView};

/// How long one call may wait on the broker.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Reads what `verify` compares the archive with.
pub struct BrokerView {
    consumer: BaseConsumer,
    /// One fetch at a time: a fetch assigns the consumer to its partition, and `verify` asks
    /// from several partitions' tasks at once.
    fetching: std::sync::Mutex<()>,
}

impl std::fmt::Debug for BrokerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerView").finish_non_exhaustive()
    }
}

impl BrokerView {
    /// A view whose committed offsets are `group`'s (the archiver's group). It uses the group
    /// id only to read offsets: it never subscribes, so it never joins or disturbs the group.
    pub fn new(kafka: &KafkaConfig, group: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config =
            kafka.consumer_config(&[("client.id", "ledgerline-archive-verify".to_owned())]);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        Ok(Self {
            consumer: config.create()?,
            fetching: std::sync::Mutex::new(()),
        })
    }
}

impl KafkaView for BrokerView {
    fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|error| format!("metadata of {topic}: {error}"))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|held| held.name() == topic && held.error().is_none())
            .flat_map(|held| held.partitions().iter().map(|partition| partition.id()))
            .collect())
    }

    fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), String> {
        self.consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(|error| format!("watermarks of {topic}/{partition}: {error}"))
    }

    fn committed(&self, topic: &str, partition: i32) -> Result<Option<i64>, String> {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let committed = self
            .consumer
            .committed_offsets(list, TIMEOUT)
            .map_err(|error| format!("committed offset of {topic}/{partition}: {error}"))?;
        Ok(committed
            .find_partition(topic, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            }))
    }

    fn fetch(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<Vec<KafkaRecord>, String> {
        let _one_at_a_time = self
            .fetching
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(from))
            .map_err(|error| error.to_string())?;
        self.consumer
            .assign(&list)
            .map_err(|error| format!("assign {topic}/{partition}: {error}"))?;
        let mut records = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(200)) {
                None => continue,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(eof))) => {
                    if eof == partition {
                        break;
                    }
                }
                Some(Err(error)) => return Err(format!("fetch {topic}/{partition}: {error}")),
                Some(Ok(message)) => {
                    // Only this partition is assigned, but a record fetched for an earlier
                    // assignment may still be queued.
                    if message.topic() != topic || message.partition() != partition {
                        continue;
                    }
                    if message.offset() > to {
                        break;
                    }
                    if message.offset() >= from {
                        records.push(KafkaRecord {
                            offset: message.offset(),
                            timestamp_ms: message.timestamp().to_millis(),
                            key: message.key().map(<[u8]>::to_vec),
                            value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        });
                    }
                    if message.offset() >= to {
                        break;
                    }
                }
            }
        }
        let _ = self.consumer.unassign();
        Ok(records)
    }
}
