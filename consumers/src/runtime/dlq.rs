//! The dead-letter topic: the original key and bytes, plus headers saying where the record came
//! from and why it was rejected, so an operator can find, fix and replay it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::sink::Record;

/// Header names, in the order they are written.
pub const DLQ_HEADERS: [&str; 6] = [
    "ledgerline.source.topic",
    "ledgerline.source.partition",
    "ledgerline.source.offset",
    "ledgerline.dlq.reason",
    "ledgerline.dlq.error",
    "ledgerline.dlq.time_us",
];

pub struct DeadLetters {
    producer: FutureProducer,
    /// The consumer whose rejects these are: the `consumer` label of the metric.
    consumer: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(kafka: &KafkaConfig, consumer: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka.idempotent_producer_config(&[]).create()?,
            consumer: consumer.to_owned(),
        })
    }

    /// Produces the dead letter and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        source: &Record,
        reason: &'static str,
        error: &str,
    ) -> Result<(), KafkaError> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_micros())
            .unwrap_or(0)
            .to_string();
        let (partition, offset) = (source.partition.to_string(), source.offset.to_string());
        let values = [&*source.topic, &partition, &offset, reason, error, &now_us];
        let headers =
            DLQ_HEADERS
                .iter()
                .zip(values)
                .fold(OwnedHeaders::new(), |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value),
                    })
                });
        let mut record = FutureRecord::to(DLQ_TOPIC)
            .payload(&source.value)
            .headers(headers);
        if let Some(key) = &source.key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)?;
        metrics::counter!("ledgerline_consumer_dlq_total", "consumer" => self.consumer.clone(), "reason" => reason)
            .increment(1);
        tracing::warn!(
            topic = %source.topic,
            partition = source.partition,
            offset = source.offset,
            reason,
            error,
            "record dead-lettered"
        );
        Ok(())
    }
}
