//! The consumer runtime against a real broker (Tansu), with sinks that record what the runtime
//! asked of them: broadcast readers in two instances, a fenced sink under a two-member
//! rebalance, and the sink's own positions honoured after a restart.
//!
//! Every test here runs on Tansu's SQLite engine. Its memory engine answers a fetch that starts
//! inside a producer's batch with the batches after it (`tansu_engines_and_mid_batch_fetches`
//! pins that), which sink positions and rebalances do; and a reader that starts at the end of a
//! partition while a producer is still writing to it was seen there to be handed the same
//! records again and again (100..116 six times over), which no Kafka broker does.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledgerline_consumers::runtime::{
    self, BadRecords, ConsumerSettings, PartitionBatch, Positions, Record, RuntimeConfig, Sink,
    SinkError, StartAt, TopicPartition,
};
use ledgerline_producer::event::JobStatus;
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{names, Broker, BrokerStorage, RegistryServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

/// Job events: keyed by job id, so a load of many jobs spreads over the partitions.
const TOPIC: &str = "ledgerline.job";

struct Stack {
    broker: Broker,
    registry: RegistryServer,
}

impl Stack {
    fn start(storage: BrokerStorage) -> Self {
        let broker = Broker::start(storage).unwrap();
        let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
        Self { broker, registry }
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.broker.bootstrap(),
            ..KafkaConfig::default()
        }
    }

    fn codec(&self) -> Arc<EventCodec> {
        Arc::new(
            EventCodec::new(&SchemaRegistryConfig {
                url: self.registry.url(),
                ..SchemaRegistryConfig::default()
            })
            .unwrap(),
        )
    }

    async fn ledger(&self) -> Ledger {
        Ledger::builder("runtime-test")
            .config(ProducerConfig {
                service_name: "runtime-test".to_owned(),
                linger_ms: 1,
                ..ProducerConfig::default()
            })
            .brokers(self.broker.bootstrap())
            .registry_url(self.registry.url())
            .build()
            .await
            .unwrap()
    }

    /// Starts a runtime consumer in this process; returns its stop token and task.
    fn run<S: Sink>(
        &self,
        config: RuntimeConfig,
        sink: S,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        self.run_with(&self.kafka(), config, sink)
    }

    fn run_with<S: Sink>(
        &self,
        kafka: &KafkaConfig,
        config: RuntimeConfig,
        sink: S,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let (kafka, codec, stop) = (kafka.clone(), self.codec(), CancellationToken::new());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            runtime::run(config, &kafka, codec, sink, token)
                .await
                .unwrap();
        });
        (stop, task)
    }

    /// High watermark per partition of the topic.
    fn high_watermarks(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = self.broker.client_config().create().unwrap();
        (0..3)
            .map(|partition| {
                let (_, high) = consumer
                    .fetch_watermarks(TOPIC, partition, Duration::from_secs(5))
                    .unwrap();
                (partition, high)
            })
            .collect()
    }
}

/// Job events `tick <n>` for `n` in `from..to`, of 16 jobs.
async fn publish(ledger: &Ledger, from: u64, to: u64) {
    for n in from..to {
        ledger
            .job(
                "job.progress",
                &format!("job-{}", n % 16),
                "test",
                "Tick",
                JobStatus::Running,
            )
            .message(format!("tick {n}"))
            .publish()
            .await
            .unwrap();
    }
    ledger.flush(Duration::from_secs(60)).await.unwrap();
}

fn settings(batch_max_events: usize) -> ConsumerSettings {
    ConsumerSettings {
        group_id: Some(names::group()),
        batch_max_events,
        batch_max_wait_ms: 50,
        ..ConsumerSettings::default()
    }
}

/// Waits until `done` holds, failing with `what` after `seconds`.
async fn wait_for(seconds: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sink's positions for `partitions`, from what it keeps per partition.
fn positions_for(known: &Positions, partitions: &[TopicPartition]) -> Positions {
    partitions
        .iter()
        .filter_map(|partition| known.get(partition).map(|next| (partition.clone(), *next)))
        .collect()
}

/// Keeps what `map` makes of each record it is handed (clones share what was kept), and
/// answers `positions` when partitions are assigned.
#[derive(Clone)]
struct Keep<T> {
    kept: Arc<Mutex<Vec<T>>>,
    map: fn(&TopicPartition, Record) -> T,
    positions: Positions,
}

impl<T> Keep<T> {
    fn new(map: fn(&TopicPartition, Record) -> T) -> Self {
        Self {
            kept: Arc::default(),
            map,
            positions: Positions::new(),
        }
    }

    fn with_positions(self, positions: Positions) -> Self {
        Self { positions, ..self }
    }

    fn len(&self) -> usize {
        self.kept.lock().unwrap().len()
    }
}

impl<T: Clone + Send + Sync + 'static> Sink for Keep<T> {
    type Prepared = Vec<T>;
    type Preparer = Box<dyn FnMut(&TopicPartition, Vec<Record>) -> Vec<T> + Send>;

    fn preparer(&self) -> Self::Preparer {
        let map = self.map;
        Box::new(move |partition, records| {
            records
                .into_iter()
                .map(|record| map(partition, record))
                .collect()
        })
    }

    async fn on_assign(&mut self, partitions: &[TopicPartition]) -> Result<Positions, SinkError> {
        Ok(positions_for(&self.positions, partitions))
    }

    async fn write(&mut self, batch: &[PartitionBatch<Vec<T>>]) -> Result<(), SinkError> {
        let mut kept = self.kept.lock().unwrap();
        for unit in batch {
            kept.extend(unit.prepared.iter().cloned());
        }
        Ok(())
    }
}

/// An event's (partition, offset, message); a rejected record fails the test.
type Tick = (i32, i64, String);

fn tick(partition: &TopicPartition, record: Record) -> Tick {
    let message = record.event.unwrap().envelope().message.clone();
    (partition.partition, record.offset, message)
}

impl Keep<Tick> {
    fn ticks() -> Self {
        Self::new(tick)
    }

    fn messages(&self) -> Vec<String> {
        let mut messages: Vec<String> = self
            .kept
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, message)| message.clone())
            .collect();
        messages.sort();
        messages
    }

    fn offsets(&self, partition: i32) -> Vec<i64> {
        self.kept
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, offset, _)| *offset)
            .collect()
    }
}

fn ticks(range: std::ops::Range<u64>) -> Vec<String> {
    let mut ticks: Vec<String> = range.map(|n| format!("tick {n}")).collect();
    ticks.sort();
    ticks
}

/// Milliseconds since the Unix epoch, as Kafka timestamps count.
fn now_millis() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Produces `value` as it is (not a Ledgerline event) to partition 0 of the topic.
async fn produce_raw(stack: &Stack, value: &[u8]) {
    let producer: rdkafka::producer::FutureProducer =
        stack.broker.producer_config().create().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(TOPIC)
                .partition(0)
                .payload(value),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_readers_each_see_every_record_from_their_start() {
    let stack = Stack::start(BrokerStorage::Sqlite);
    let ledger = stack.ledger().await;
    publish(&ledger, 0, 100).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let since = now_millis();
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&ledger, 100, 150).await;
    // Not a Ledgerline event: broadcast readers count and skip it (a reader that handed it to
    // this test's sink would fail the test: `keep` expects events).
    produce_raw(&stack, b"not avro").await;

    let [latest, earliest, also_earliest, from_time] = [(); 4].map(|()| Keep::ticks());
    let broadcast =
        |start| RuntimeConfig::broadcast("fanout", vec![TOPIC.to_owned()], start, &settings(50));
    let readers = [
        stack.run(broadcast(StartAt::Latest), latest.clone()),
        stack.run(broadcast(StartAt::Earliest), earliest.clone()),
        stack.run(broadcast(StartAt::Earliest), also_earliest.clone()),
        stack.run(broadcast(StartAt::Timestamp(since)), from_time.clone()),
    ];
    wait_for(
        30,
        "the earliest and timestamp readers read the history",
        || earliest.len() >= 150 && also_earliest.len() >= 150 && from_time.len() >= 50,
    )
    .await;
    // The latest reader starts at the end once it has its partitions: probe until it sees a
    // record, so what follows is published after its start whatever the machine's speed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut probes = 0;
    while latest.len() == 0 {
        assert!(Instant::now() < deadline, "the latest reader never read");
        ledger
            .job(
                "job.probe",
                "job-probe",
                "test",
                "Probe",
                JobStatus::Running,
            )
            .message(format!("probe {probes}"))
            .publish()
            .await
            .unwrap();
        ledger.flush(Duration::from_secs(10)).await.unwrap();
        probes += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    publish(&ledger, 150, 250).await;
    let ticks_of = |collect: &Keep<Tick>| {
        let mut messages = collect.messages();
        messages.retain(|message| message.starts_with("tick "));
        messages
    };
    wait_for(30, "every reader read the new records", || {
        ticks_of(&latest).len() >= 100
            && ticks_of(&earliest).len() >= 250
            && ticks_of(&also_earliest).len() >= 250
            && ticks_of(&from_time).len() >= 150
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(ticks_of(&earliest), ticks(0..250));
    assert_eq!(ticks_of(&also_earliest), ticks(0..250));
    assert_eq!(
        ticks_of(&from_time),
        ticks(100..250),
        "a timestamp starts at the first record at or after it"
    );
    assert_eq!(
        ticks_of(&latest),
        ticks(150..250),
        "latest starts at the end"
    );
    for (stop, task) in readers {
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A record's offset, rejection reason and value, as received.
type Raw = (i64, Option<&'static str>, Vec<u8>);

fn raw(_: &TopicPartition, record: Record) -> Raw {
    let reason = record.event.err().map(|rejection| rejection.reason);
    (record.offset, reason, record.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_rejects_reach_the_sink_with_their_reason_and_bytes() {
    let stack = Stack::start(BrokerStorage::Sqlite);
    let ledger = stack.ledger().await;
    publish(&ledger, 0, 3).await;
    produce_raw(&stack, b"\x00\x00\x00\x00\x07garbage").await;
    produce_raw(&stack, b"plain text").await;
    let kept = Keep::new(raw);
    let config = RuntimeConfig {
        bad_records: BadRecords::Deliver,
        ..RuntimeConfig::group("archiver", vec![TOPIC.to_owned()], &settings(50), "unused")
    };
    let (stop, task) = stack.run(config, kept.clone());
    wait_for(30, "every record reached the sink", || kept.len() >= 5).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    let kept = kept.kept.lock().unwrap();
    assert_eq!(kept.len(), 5);
    let rejected: Vec<(Option<&str>, &[u8])> = kept
        .iter()
        .filter(|(_, reason, _)| reason.is_some())
        .map(|(_, reason, value)| (*reason, value.as_slice()))
        .collect();
    assert_eq!(
        rejected,
        [
            (
                Some("unknown_schema_id"),
                &b"\x00\x00\x00\x00\x07garbage"[..]
            ),
            (Some("bad_magic_byte"), &b"plain text"[..]),
        ],
        "the bytes exactly as received, with why they hold no event"
    );
    // Nothing was dead-lettered: this consumer keeps its rejects.
    let consumer: BaseConsumer = stack.broker.client_config().create().unwrap();
    let dead_letters = consumer
        .fetch_watermarks(
            ledgerline_schemas::topics::DLQ_TOPIC,
            0,
            Duration::from_secs(5),
        )
        .map(|(_, high)| high)
        .unwrap_or(0);
    assert_eq!(dead_letters, 0);
}

/// A store of per-partition hash-chain heads, as the audit archive keeps: each write must
/// continue its partition exactly where the chain ends. A write that starts elsewhere (a gap,
/// or records written twice) is a violation, and so is a batch handed to the sink that was
/// already stale when the runtime handed it over: fencing must have dropped it.
#[derive(Default)]
struct Chain {
    next: Positions,
    violations: Vec<String>,
    writes_by: HashMap<&'static str, usize>,
    /// Units that became stale while their write was under way, dropped by the sink's own
    /// check before it made them visible.
    dropped_in_flight: usize,
    /// `on_revoke` calls per member.
    revoked_by: HashMap<&'static str, usize>,
}

struct ChainSink {
    member: &'static str,
    chain: Arc<Mutex<Chain>>,
    /// How long a write takes.
    delay: Duration,
    /// Set: the next write takes [`STALL`], long past `max.poll.interval.ms`.
    stall: Arc<AtomicBool>,
}

/// Longer than the test members' `max.poll.interval.ms` (7 s): the member is taken out of the
/// group while this write runs and its next batch waits in the queue.
const STALL: Duration = Duration::from_secs(12);

fn offsets_of(_: &TopicPartition, records: Vec<Record>) -> Vec<i64> {
    records.iter().map(|record| record.offset).collect()
}

impl Sink for ChainSink {
    type Prepared = Vec<i64>;
    type Preparer = fn(&TopicPartition, Vec<Record>) -> Vec<i64>;
    const FENCED: bool = true;

    fn preparer(&self) -> Self::Preparer {
        offsets_of
    }

    async fn on_assign(&mut self, partitions: &[TopicPartition]) -> Result<Positions, SinkError> {
        Ok(positions_for(&self.chain.lock().unwrap().next, partitions))
    }

    async fn on_revoke(&mut self, _partitions: &[TopicPartition]) {
        *self
            .chain
            .lock()
            .unwrap()
            .revoked_by
            .entry(self.member)
            .or_default() += 1;
    }

    async fn write(&mut self, batch: &[PartitionBatch<Vec<i64>>]) -> Result<(), SinkError> {
        for unit in batch.iter().filter(|unit| !unit.is_current()) {
            self.chain.lock().unwrap().violations.push(format!(
                "{}: {} was handed a batch of a partition it no longer owns",
                unit.partition, self.member
            ));
        }
        let delay = if self.stall.swap(false, Ordering::SeqCst) {
            STALL
        } else {
            self.delay
        };
        tokio::time::sleep(delay).await;
        let mut chain = self.chain.lock().unwrap();
        *chain.writes_by.entry(self.member).or_default() += 1;
        for unit in batch {
            // What a fenced sink does right before its write becomes visible.
            if !unit.is_current() {
                chain.dropped_in_flight += 1;
                continue;
            }
            let expected = chain.next.get(&unit.partition).copied().unwrap_or(0);
            let contiguous = unit.prepared.windows(2).all(|pair| pair[1] == pair[0] + 1);
            if unit.prepared.first() != Some(&expected) || !contiguous {
                chain.violations.push(format!(
                    "{}: {} wrote {:?}..{:?} where the chain continues at {expected}",
                    unit.partition,
                    self.member,
                    unit.prepared.first(),
                    unit.prepared.last()
                ));
            }
            if let Some(last) = unit.prepared.last() {
                chain.next.insert(unit.partition.clone(), last + 1);
            }
        }
        Ok(())
    }
}

/// Two members share the partitions; one of them stalls in a write for longer than
/// `max.poll.interval.ms`, so librdkafka takes it out of the group and the other takes over
/// while its next batch is already read and queued. The chains must stay exact: no member is
/// ever handed a batch of a partition it lost (the runtime drops it), the write that was
/// under way is dropped by the sink's own `is_current` check, and every partition's chain
/// ends at its high watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_sink_is_never_handed_a_lost_partitions_batch() {
    let stack = Stack::start(BrokerStorage::Sqlite);
    let ledger = stack.ledger().await;
    let chain = Arc::new(Mutex::new(Chain::default()));
    let stall = Arc::new(AtomicBool::new(false));
    let group = settings(40);
    let config = || RuntimeConfig::group("archiver", vec![TOPIC.to_owned()], &group, "unused");
    let mut kafka = stack.kafka();
    for (key, value) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
        ("max.poll.interval.ms", "7000"),
    ] {
        kafka.librdkafka.insert(key.to_owned(), value.to_owned());
    }
    let member = |name, stall: &Arc<AtomicBool>| ChainSink {
        member: name,
        chain: Arc::clone(&chain),
        delay: Duration::from_millis(50),
        stall: Arc::clone(stall),
    };

    // A steady load for the whole test, so batches are queued when the group moves.
    let load = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for step in 0..100 {
                publish(&ledger, step * 30, (step + 1) * 30).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (stop_a, task_a) = stack.run_with(&kafka, config(), member("a", &stall));
    let (stop_b, task_b) = stack.run_with(&kafka, config(), member("b", &Arc::default()));
    wait_for(60, "both members wrote", || {
        let chain = chain.lock().unwrap();
        chain.writes_by.len() == 2
    })
    .await;
    stall.store(true, Ordering::SeqCst);
    load.await.unwrap();

    let high = stack.high_watermarks();
    let caught_up = || {
        let chain = chain.lock().unwrap();
        high.iter().all(|(partition, high)| {
            chain.next.get(&TopicPartition::new(TOPIC, *partition)) == Some(high)
        })
    };
    wait_for(90, "the members caught up with every partition", caught_up).await;
    for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }

    let chain = chain.lock().unwrap();
    assert!(
        chain.violations.is_empty(),
        "the chains forked or had gaps: {:#?}",
        chain.violations
    );
    assert!(
        chain.dropped_in_flight > 0,
        "the stalled member lost its partitions while writing (writes: {:?})",
        chain.writes_by
    );
    assert!(
        chain.revoked_by.get("a").copied().unwrap_or(0) > 0,
        "the stalled member's sink was told it lost its partitions: {:?}",
        chain.revoked_by
    );
    let total: i64 = high.values().sum();
    assert_eq!(total, 3_000, "the load published 3,000 events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_positions_win_over_the_groups_on_assignment_and_after_a_restart() {
    let stack = Stack::start(BrokerStorage::Sqlite);
    let ledger = stack.ledger().await;
    publish(&ledger, 0, 300).await;
    let high = stack.high_watermarks();
    let group = settings(1000);
    let config = || RuntimeConfig::group("positioned", vec![TOPIC.to_owned()], &group, "unused");
    let p0 = TopicPartition::new(TOPIC, 0);
    let from = high[&0] / 2;

    // First run, nothing committed: partition 0 starts where the sink says, the others at the
    // start (the group has no offsets).
    let first = Keep::ticks();
    let (stop, task) = stack.run(
        config(),
        first
            .clone()
            .with_positions(Positions::from([(p0.clone(), from)])),
    );
    let expected_first = (high[&0] - from) + high[&1] + high[&2];
    wait_for(
        30,
        "the first run read everything after the positions",
        || first.len() as i64 >= expected_first,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.len() as i64, expected_first);
    assert_eq!(
        first.offsets(0),
        (from..high[&0]).collect::<Vec<_>>(),
        "partition 0 starts at the sink's position"
    );

    // Restart: the group committed everything, but the sink says partition 1 must be read
    // again from 1 (as a sink that lost writes would). Its position wins over the commit.
    let second = Keep::ticks();
    let (stop, task) = stack.run(
        config(),
        second
            .clone()
            .with_positions(Positions::from([(TopicPartition::new(TOPIC, 1), 1)])),
    );
    wait_for(30, "the restarted run reread partition 1", || {
        second.len() as i64 >= high[&1] - 1
    })
    .await;
    publish(&ledger, 300, 310).await;
    wait_for(30, "the restarted run read the new records", || {
        second.len() as i64 >= high[&1] - 1 + 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        second.offsets(1)[..(high[&1] - 1) as usize],
        (1..high[&1]).collect::<Vec<_>>()[..],
        "partition 1 reread from the sink's position"
    );
    let mut messages = second.messages();
    messages.retain(|message| ticks(300..310).contains(message));
    assert_eq!(
        messages,
        ticks(300..310),
        "and new records everywhere, once"
    );
    assert_eq!(second.len() as i64, high[&1] - 1 + 10);
    assert_eq!(
        Category::Job.topic_name(),
        TOPIC,
        "the runtime decodes this topic as job events"
    );
}
