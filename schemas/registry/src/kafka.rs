//! Kafka I/O for the schemas topic: creating it, the clients that append to and read it, and the
//! tailer that applies every record to the in-memory state.

use std::sync::Arc;
use std::time::Duration;

use ledgerline_service::kafka::{ensure_topics, KafkaConfig, NewTopics};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::applied::AppliedState;
use crate::error::RegistryError;
use crate::records::LogRecord;

/// Bounds each admin and metadata round trip.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the tailer waits before reading again after a consumer error.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The only partition: one partition is one order of writes for every instance.
const PARTITION: i32 = 0;

/// Shared settings; `client.id` names the registry unless `[kafka]` names the process (through
/// `client_id` or the `librdkafka` passthrough map, which wins as everywhere).
fn client_config(base: ClientConfig) -> ClientConfig {
    let mut config = base;
    if config.get("client.id").is_none() {
        config.set("client.id", "ledgerline-registry");
    }
    config
}

/// Creates the topic when missing: one partition, compacted, so the log keeps the last record
/// of every key forever. An existing topic is used as it is, after checking it has one partition.
pub(crate) async fn ensure_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), RegistryError> {
    // -1 takes the broker's default.replication.factor, which production clusters set to 3;
    // a fixed 1 here would quietly make the registry's storage unreplicated.
    let layout = NewTopics::new(1, -1)
        .config("cleanup.policy", "compact")
        .timeout(ADMIN_TIMEOUT);
    ensure_topics(&client_config(kafka.client_config()), &[topic], &layout).await?;
    let metadata_client: BaseConsumer = client_config(kafka.client_config())
        .create()
        .map_err(RegistryError::KafkaClient)?;
    let owned_topic = topic.to_owned();
    let partitions = tokio::task::spawn_blocking(move || {
        metadata_client
            .fetch_metadata(Some(&owned_topic), ADMIN_TIMEOUT)
            .map(|metadata| {
                metadata
                    .topics()
                    .iter()
                    .find(|described| described.name() == owned_topic)
                    .map_or(0, |described| described.partitions().len())
            })
    })
    .await
    .map_err(|error| RegistryError::Replay {
        topic: topic.to_owned(),
        reason: format!("metadata task failed: {error}"),
    })?
    .map_err(|source| RegistryError::Metadata {
        topic: topic.to_owned(),
        source,
    })?;
    if partitions != 1 {
        return Err(RegistryError::Partitions {
            topic: topic.to_owned(),
            partitions,
        });
    }
    Ok(())
}

/// The producer for writes: idempotent with acks=all (see
/// [`KafkaConfig::idempotent_producer_config`]), so a retried send is never applied twice and
/// an acknowledged record is on every in-sync replica: ids are only safe to hand out because of
/// both.
pub(crate) fn producer(
    kafka: &KafkaConfig,
    delivery_timeout: Duration,
) -> Result<FutureProducer, KafkaError> {
    client_config(kafka.idempotent_producer_config(&[
        (
            "message.timeout.ms",
            delivery_timeout.as_millis().to_string(),
        ),
        ("linger.ms", "0".to_owned()),
    ]))
    .create()
}

/// A plain client for high-watermark queries (no group, no assignment).
pub(crate) fn watermark_client(kafka: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    client_config(kafka.client_config()).create()
}

/// The topic's high watermark: the offset the next record will get. Runs on the blocking pool
/// because librdkafka's call blocks.
pub(crate) async fn high_watermark(client: &Arc<BaseConsumer>, topic: &str) -> Result<i64, String> {
    let client = Arc::clone(client);
    let owned_topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        client.fetch_watermarks(&owned_topic, PARTITION, ADMIN_TIMEOUT)
    })
    .await
    .map_err(|error| format!("watermark task failed: {error}"))?
    .map(|(_, high)| high)
    .map_err(|error| format!("failed to read the high watermark of {topic}: {error}"))
}

/// The tailer's consumer: partition 0 assigned from the beginning and no commits, because every
/// instance must read the whole log every time it starts. librdkafka wants a `group.id` even for
/// a manual assignment; with no subscribe and no commit the group is never joined, so every
/// instance can share the name.
/// `enable.partition.eof` tells the tailer when it has reached the end, which matters when the
/// last offsets hold no record (compaction or transaction markers leave such gaps).
pub(crate) fn tail_consumer(
    kafka: &KafkaConfig,
    topic: &str,
) -> Result<StreamConsumer<TailerContext>, KafkaError> {
    let mut config = client_config(kafka.client_config());
    config
        .set("group.id", "ledgerline-registry-tailer")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // A write waits for its own record to come back through here; the default 500 ms long
        // poll would add up to that much to every write.
        .set("fetch.wait.max.ms", "50");
    let consumer: StreamConsumer<TailerContext> = config.create_with_context(TailerContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, PARTITION, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// The tailer's client context. librdkafka reports reaching the end of the partition as an
/// error event, which rdkafka's default context logs at ERROR; the tailer asks for that event
/// and gets one after every write, so it is dropped here. Other errors are logged as usual.
#[derive(Debug)]
pub(crate) struct TailerContext;

impl ClientContext for TailerContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(%error, reason, "kafka client error on the schemas topic");
        }
    }
}

impl ConsumerContext for TailerContext {}

/// Applies every record of the topic to `shared`, in order, until `stop` is cancelled. Records
/// it cannot decode are logged and skipped: one bad record must not stop every instance.
/// Consumer errors (the broker away) are retried forever; `/health` reports the lag meanwhile.
pub(crate) async fn tail(
    consumer: StreamConsumer<TailerContext>,
    topic: String,
    shared: Arc<AppliedState>,
    stop: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => {
                let offset = message.offset();
                let decoded = LogRecord::decode(message.key(), message.payload());
                drop(message);
                match decoded {
                    Ok(Some(record)) => shared.apply(record).await,
                    Ok(None) => {}
                    Err(error) => tracing::warn!(
                        %topic,
                        offset,
                        %error,
                        "skipping a record the registry cannot use"
                    ),
                }
                metrics::counter!("ledgerline_registry_log_records_total").increment(1);
                shared.advance(offset + 1);
            }
            Err(KafkaError::PartitionEOF(_)) => {
                if let Some(next) = position(&consumer, &topic) {
                    shared.advance(next);
                }
            }
            Err(error) => {
                tracing::warn!(%topic, %error, "failed to read the schemas topic; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    }
}

/// The consumer's next offset, as librdkafka knows it locally (no round trip).
fn position(consumer: &StreamConsumer<TailerContext>, topic: &str) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, PARTITION)?.offset() {
        Offset::Offset(next) => Some(next),
        _ => None,
    }
}
