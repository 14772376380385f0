//! The consumer runtime every consumer shares: read a set of topics (as a group member, or as a
//! broadcast reader of every partition), decode through the registry, reject what cannot be
//! processed, batch by size or time, hand the batch to the [`Sink`], and commit offsets only
//! after the sink took it.
//!
//! # Position modes ([`Mode`])
//! - **Group** (the projector, the archiver): a consumer group shares the partitions among the
//!   members; a partition's offset is committed once the sink took the batch holding it. On
//!   assignment the sink may answer its own resume position per partition
//!   ([`Sink::on_assign`]); the runtime starts there instead of at the committed offset, which
//!   is how a sink that stores its position with its data resumes exactly.
//! - **Broadcast** (the fan-out in each query-API replica): no group and no commits; every
//!   partition of the topics is assigned to this consumer alone, starting at the sink's
//!   position or at [`StartAt`] (`latest`, `earliest`, or a timestamp through
//!   `offsets_for_times`). Partitions and topics that appear later are picked up within 10 s,
//!   from their start.
//!
//! # Delivery semantics
//! - **At least once into the sink.** A partition's offset is committed only after every record
//!   before it was either written by the sink or acknowledged by the dead-letter topic. A crash
//!   replays from the last commit, or from the sink's own position; sinks make the replay
//!   harmless (see each sink's `mod.rs`).
//! - **Retries, not crashes.** While the sink fails, the same batch is retried with exponential
//!   backoff (100 ms doubling to 30 s); the reader stops reading meanwhile, so nothing piles up
//!   in memory. A failed [`Sink::on_assign`] is retried the same way, and so is a registry that
//!   cannot be reached (the record is not bad). `max.poll.interval.ms` is 10 minutes, so a long
//!   sink outage ends in a rebalance and a replay elsewhere, never in a skipped record.
//! - **Bad input never stops the consumer** ([`BadRecords`]). Records that are too large, are
//!   not in the wire format, name an unknown schema id, hold corrupt Avro, are of another schema,
//!   or break a rule of the event model are dead-lettered to `ledgerline.dlq` with the original
//!   key and bytes and headers naming the source topic, partition, offset, reason, error and
//!   time (group consumers); or counted and skipped (broadcast consumers: every replica would
//!   write the same dead letter); or handed to the sink with the reason (a sink that must keep
//!   everything that was there).
//! - **Rebalances reach the sink in order.** The callbacks run on the reader thread, inside
//!   librdkafka's poll, before the change applies. A revocation waits until every batch read
//!   before it was written and committed (the group cannot move on while the callback runs, so
//!   the partitions are still this member's), then calls [`Sink::on_revoke`], and only then
//!   lets the group move on. If the sink fails meanwhile, the revoked partitions' records are
//!   given up, uncommitted, for their next owner, rather than hold the whole group's
//!   rebalance. An assignment waits for every earlier batch too, asks the sink for positions,
//!   starts the partitions there, and commits the positions that are ahead of the group's.
//!   Records of a revoked partition still in the batch being read are dropped (their next
//!   owner reads them again), and a revoked partition's offsets are never committed by this
//!   member any more (an older commit would rewind its new owner's).
//! - **Fencing** ([`Sink::FENCED`]). Every assignment of a partition is a new generation, and
//!   librdkafka knows when the group took the whole assignment away without waiting for this
//!   member (its session timed out, or the reader did not poll within
//!   `max.poll.interval.ms`). A fenced sink is never handed a batch of a partition unless the
//!   partition is still assigned under the generation its records were read in and the
//!   assignment is not lost: a batch that was queued when the group moved on is dropped
//!   unwritten. A write already under way cannot be stopped, so a fenced sink checks
//!   [`PartitionBatch::is_current`] again right before its write becomes visible.
//!   A sink that writes for a partition outside a batch (the archive's checkpoint on a timer)
//!   keeps the [`Ownership`] token [`Sink::on_owned`] gives it at assignment (or
//!   [`PartitionBatch::ownership`]) and checks it the same way.
//! - **Time-driven work.** When no batch came for a second, the writer calls
//!   [`Sink::on_idle`] (again every second while none comes); a failure there is reported like
//!   a failed write and nothing is committed.
//! - **Pipelining.** One batch is written (by the writer task) while the next is read, decoded
//!   and prepared (by the reader thread); batches are written and committed one at a time, in
//!   the order they were read. The reader starts a batch only once the writer has taken the
//!   previous one, so at most two batches are in memory.
//! - **Shutdown.** On the token: stop reading, write the batch, commit, return. If the sink is
//!   down at that moment the batch is left uncommitted and replayed by the next run.
//!
//! # Recovery and health
//! Group members use static membership when `group_instance_id` is set: on Kafka a restarted
//! member takes its predecessor's place at once. (On Tansu 0.6.0 a static member killed while
//! its group was settling can leave the group wedged, which no rejoin under the same id cures;
//! the local stack runs dynamic members.) A watchdog ([`status`]) measures lag every 5 s (group mode:
//! every partition of the topics, assigned or not; broadcast mode: the assigned ones); a
//! partition whose records wait with no progress for 10 s makes [`ConsumerStatus::check`] (the
//! `/health` check) fail with the reason, and when it is not assigned here (and nothing stalls
//! here too) the member leaves and rejoins the group, which is what brings a group back after
//! Tansu 0.6.0's coordinator left partitions without an owner.
//!
//! # Metrics
//! Every series has a `consumer` label (`projector`, `archive`, `fanout`):
//! `ledgerline_consumer_consumed_total` (records read), `ledgerline_consumer_events_total
//! {outcome="written"}` (taken by the sink), `ledgerline_consumer_rejected_total{reason,action}`
//! (action `dead_lettered`, `skipped` or `delivered`), `ledgerline_consumer_fenced_total`
//! (records dropped unwritten by fencing), `ledgerline_consumer_sink_errors_total{kind}` (failed
//! writes, each retried), `ledgerline_consumer_rejoins_total`, and
//! `ledgerline_consumer_lag_messages{topic,partition}`: high watermark minus the group's
//! committed offset (group mode; every partition of the topics, so replicas of one group report
//! the same figures: take the maximum, not the sum), or minus the position read (broadcast
//! mode). The dead-letter topic's own `ledgerline_consumer_dlq_total{reason}` counts
//! acknowledged dead letters.

mod config;
mod context;
mod dlq;
mod reader;
mod sink;
pub mod status;
mod writer;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ledgerline_schemas::EventCodec;
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

pub use config::{
    BadRecords, ConsumerSettings, GroupMode, Mode, RuntimeConfig, StartAt, MAX_BATCH_EVENTS,
};
pub use dlq::{DeadLetters, DLQ_HEADERS};
pub use sink::{
    Ownership, PartitionBatch, Positions, Record, RecordHeader, Rejection, Sink, SinkError,
    TopicPartition,
};
pub use status::ConsumerStatus;

use context::{Assignments, RuntimeContext};
use reader::Reader;
use sink::Fence;
use writer::Writer;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("failed to create kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("failed to start the reader thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("the batch writer task failed: {0}")]
    Writer(String),
    #[error("the reader failed: {0}")]
    Reader(String),
}

/// Runs until `shutdown` is cancelled.
///
/// The reader thread reads, decodes, rejects, forms and prepares batches; the writer task writes
/// them (with retries) and commits them, one at a time and in order; a third task measures lag
/// and keeps [`RuntimeConfig::status`] up to date.
pub async fn run<S: Sink>(
    config: RuntimeConfig,
    kafka: &KafkaConfig,
    codec: Arc<EventCodec>,
    sink: S,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    // Before the consumer: a consumer created and then dropped on an error here would close
    // (a blocking call) on an async worker.
    let dead_letters = match config.bad_records {
        BadRecords::DeadLetter => Some(DeadLetters::new(kafka, &config.consumer)?),
        BadRecords::Skip | BadRecords::Deliver => None,
    };
    let runtime = tokio::runtime::Handle::current();
    let (work, queue) = mpsc::unbounded_channel();
    let assignments = Arc::new(Assignments::default());
    let context = RuntimeContext::new(
        config.consumer.clone(),
        Arc::clone(&assignments),
        work.clone(),
        runtime.clone(),
    );
    let consumer: Arc<BaseConsumer<RuntimeContext<S::Prepared>>> =
        Arc::new(client_config(&config, kafka).create_with_context(context)?);
    let group = matches!(config.mode, Mode::Group(_));
    if group {
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
    }
    tracing::info!(consumer = %config.consumer, mode = ?config.mode, topics = ?config.topics, "consumer started");

    for kind in S::ERROR_KINDS {
        metrics::counter!("ledgerline_consumer_sink_errors_total", "consumer" => config.consumer.clone(), "kind" => *kind)
            .increment(0);
    }

    let rejoin = Arc::new(AtomicBool::new(false));
    let watch_stop = CancellationToken::new();
    let watch = tokio::spawn(status::watch(
        Arc::clone(&consumer),
        config.topics.clone(),
        group,
        Arc::clone(&assignments),
        config.status.clone(),
        Arc::clone(&rejoin),
        watch_stop.clone(),
    ));
    let preparer = sink.preparer();
    let fence = Fence {
        assignments: Arc::clone(&assignments),
        lost: {
            // Weak: the consumer is closed when `run` drops it, whatever batches remain.
            let consumer = Arc::downgrade(&consumer);
            Arc::new(move || consumer.upgrade().is_none_or(|c| c.assignment_lost()))
        },
    };
    let writer = tokio::spawn(
        Writer {
            sink,
            fence: fence.clone(),
            consumer: Arc::clone(&consumer),
            assignments: Arc::clone(&assignments),
            consumer_name: config.consumer.clone(),
            commits: group,
            shutdown: shutdown.clone(),
        }
        .run(queue),
    );
    let reader = Reader::<S> {
        consumer: Arc::clone(&consumer),
        codec,
        dead_letters,
        preparer,
        work,
        permits: Arc::new(Semaphore::new(1)),
        assignments: Arc::clone(&assignments),
        rejoin,
        shutdown: shutdown.clone(),
        runtime,
        fence: fence.clone(),
        config,
    };
    let name = reader.config.consumer.clone();
    // A reader that cannot start is dropped with the closure, which tells the writer to stop.
    let reading = std::thread::Builder::new()
        .name(format!("{name}-reader"))
        .spawn(move || reader.run());
    let written = writer
        .await
        .map_err(|error| RuntimeError::Writer(error.to_string()));
    // The writer stops early only at shutdown with an unwritten batch; the reader stops at
    // shutdown too. Joined off the async workers, since joining blocks.
    let read = match reading {
        Ok(thread) => match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(RuntimeError::Reader(
                "the reader thread panicked".to_owned(),
            )),
            Err(error) => Err(RuntimeError::Reader(error.to_string())),
        },
        Err(error) => Err(RuntimeError::Thread(error)),
    };
    watch_stop.cancel();
    let _ = watch.await;
    // Closing leaves the group (unless static) and waits for the broker: off the async workers.
    // Its revocation callback finds the writer gone and returns at once.
    let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
    tracing::info!(consumer = %name, "consumer stopped");
    written.and(read)
}

/// librdkafka settings of a runtime consumer: its defaults, which `[kafka] librdkafka` may
/// override (through [`KafkaConfig::consumer_config`], the platform's one override rule), then
/// its rules, which it may not: without them the delivery semantics above would not hold.
fn client_config(config: &RuntimeConfig, kafka: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut defaults = vec![
        ("client.id", config.consumer.clone()),
        (
            "fetch.wait.max.ms",
            config.fetch_wait_max.as_millis().to_string(),
        ),
        // librdkafka looks for topics that do not exist yet only at this refresh (default 5
        // minutes); a consumer started before its topics were created would sit idle that long.
        ("topic.metadata.refresh.interval.ms", "10000".to_owned()),
    ];
    if let Mode::Group(_) = &config.mode {
        // A sink outage longer than this ends in a rebalance and a replay elsewhere.
        defaults.push(("max.poll.interval.ms", "600000".to_owned()));
        // Kafka's default before 3.0. A dead member's partitions wait this long for a new
        // owner (librdkafka's 45 s default made a restarted projector wait most of a minute);
        // heartbeats every 3 s keep a live one in.
        defaults.push(("session.timeout.ms", "10000".to_owned()));
    }
    if kafka.client_id.is_some() {
        defaults.retain(|(key, _)| *key != "client.id");
    }
    let mut client = kafka.consumer_config(&defaults);
    // Offsets move only when the writer commits what the sink took.
    client
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    match &config.mode {
        Mode::Group(group) => {
            client
                .set("group.id", &group.group_id)
                .set("auto.offset.reset", "earliest");
            if let Some(instance) = &group.instance_id {
                client.set("group.instance.id", instance);
            }
        }
        Mode::Broadcast { .. } => {
            // Never joined and never committed to: librdkafka routes a consumer's records
            // through its group queue, so it needs a name, unique so no two readers share state.
            client
                .set(
                    "group.id",
                    format!(
                        "ledgerline-broadcast-{}-{}",
                        config.consumer,
                        uuid::Uuid::new_v4()
                    ),
                )
                // A position below what the broker still holds: from the oldest it has.
                .set("auto.offset.reset", "earliest");
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: Mode) -> RuntimeConfig {
        RuntimeConfig {
            mode,
            ..RuntimeConfig::group(
                "projector",
                vec!["t".to_owned()],
                &ConsumerSettings::default(),
                "g",
            )
        }
    }

    #[test]
    fn group_consumers_commit_nothing_themselves_and_name_their_instance() {
        let client = client_config(
            &config(Mode::Group(GroupMode {
                group_id: "g".to_owned(),
                instance_id: Some("projector-0".to_owned()),
            })),
            &KafkaConfig::default(),
        );
        assert_eq!(client.get("group.id"), Some("g"));
        assert_eq!(client.get("group.instance.id"), Some("projector-0"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("session.timeout.ms"), Some("10000"));
        assert_eq!(client.get("client.id"), Some("projector"));
        assert_eq!(client.get("fetch.wait.max.ms"), Some("50"));
    }

    #[test]
    fn configured_librdkafka_settings_win() {
        let mut kafka = KafkaConfig::default();
        kafka
            .librdkafka
            .insert("session.timeout.ms".to_owned(), "4000".to_owned());
        kafka
            .librdkafka
            .insert("fetch.wait.max.ms".to_owned(), "10".to_owned());
        let client = client_config(
            &config(Mode::Group(GroupMode {
                group_id: "g".to_owned(),
                instance_id: None,
            })),
            &kafka,
        );
        assert_eq!(client.get("session.timeout.ms"), Some("4000"));
        assert_eq!(client.get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(client.get("group.instance.id"), None);
    }

    #[test]
    fn broadcast_readers_share_no_group() {
        let broadcast = config(Mode::Broadcast {
            start: StartAt::Latest,
        });
        let first = client_config(&broadcast, &KafkaConfig::default());
        let second = client_config(&broadcast, &KafkaConfig::default());
        assert_ne!(first.get("group.id"), second.get("group.id"));
        assert_eq!(first.get("session.timeout.ms"), None);
    }
}
