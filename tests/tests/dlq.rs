//! The dead-letter tools against a real broker (SQLite engine), registry, ClickHouse and the
//! projector: events too big for the projector's limit are dead-lettered; `inspect` lists them
//! with their reason and source coordinates; after the fix (a bigger limit), `replay` puts
//! each back on its source partition once, and the projector stores each exactly once, even
//! across a second run and runs that died halfway.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::dlq::{self, ReplayOptions, Selection, PROGRESS_TOPIC, REPLAY_OF_HEADER};
use ledgerline_consumers::projector::{
    self, queries, EventQuery, EventReader, ProjectorConfig, ProjectorSettings,
};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_producer::event::*;
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{names, Broker, BrokerStorage, Harness, RegistryServer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

struct Stack {
    broker: Broker,
    registry: RegistryServer,
    clickhouse: ClickHouseConfig,
    group: String,
}

impl Stack {
    fn start() -> Stack {
        let harness = Harness::shared().unwrap();
        let broker = Broker::start(BrokerStorage::Sqlite).unwrap();
        let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
        Stack {
            broker,
            registry,
            clickhouse: ClickHouseConfig {
                url: harness.clickhouse.url(),
                user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
                password: harness.clickhouse.password().into(),
                database: names::database(),
                ..ClickHouseConfig::default()
            },
            group: names::group(),
        }
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.broker.bootstrap(),
            ..KafkaConfig::default()
        }
    }

    async fn ledger(&self) -> Ledger {
        Ledger::builder("dlq-test")
            .config(ProducerConfig {
                service_name: "dlq-test".to_owned(),
                linger_ms: 1,
                ..ProducerConfig::default()
            })
            .kafka(self.kafka())
            .schema_registry(SchemaRegistryConfig {
                url: self.registry.url(),
                ..SchemaRegistryConfig::default()
            })
            .build()
            .await
            .unwrap()
    }

    /// The projector, in one group across restarts (so a restart continues where the last
    /// run committed), with `max_event_bytes`.
    fn projector(
        &self,
        max_event_bytes: usize,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let settings = ProjectorSettings {
            kafka: self.kafka(),
            schema_registry: SchemaRegistryConfig {
                url: self.registry.url(),
                ..SchemaRegistryConfig::default()
            },
            projector: ProjectorConfig {
                consumer: ConsumerSettings {
                    group_id: Some(self.group.clone()),
                    batch_max_wait_ms: 100,
                    max_event_bytes,
                    ..ConsumerSettings::default()
                },
                listen: format!(
                    "127.0.0.1:{}",
                    ledgerline_tests::process::free_port().unwrap()
                )
                .parse()
                .unwrap(),
                clickhouse: self.clickhouse.clone(),
                ..ProjectorConfig::default()
            },
        };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            projector::run(settings, token).await.unwrap();
        });
        (shutdown, task)
    }

    fn reader(&self) -> EventReader {
        EventReader::new(
            self.clickhouse.client(),
            &self.clickhouse.database,
            queries::ReadLimits::default(),
        )
        .unwrap()
    }

    /// Distinct events stored, once `expected` are there (or after 30 s).
    async fn stored(&self, expected: u64) -> u64 {
        let reader = self.reader();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let count = reader.count(&EventQuery::default()).await.unwrap_or(0);
            if count >= expected || Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The copies `replay` put on `topic` (records carrying the replay header), by id.
    fn copies(&self, topic: &str) -> Vec<String> {
        let consumer: BaseConsumer = self
            .kafka()
            .consumer_config(&[("group.id", names::group())])
            .create()
            .unwrap();
        let mut list = TopicPartitionList::new();
        let mut ends = Vec::new();
        for partition in 0..3 {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap();
            if high > low {
                list.add_partition_offset(topic, partition, Offset::Offset(low))
                    .unwrap();
                ends.push((partition, high));
            }
        }
        consumer.assign(&list).unwrap();
        let mut copies = Vec::new();
        let mut remaining: usize = ends.iter().map(|(_, high)| *high as usize).sum();
        let deadline = Instant::now() + Duration::from_secs(30);
        while remaining > 0 && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                remaining = remaining.saturating_sub(1);
                if let Some(headers) = message.headers() {
                    for header in headers.iter() {
                        if header.key == REPLAY_OF_HEADER {
                            copies
                                .push(String::from_utf8_lossy(header.value.unwrap()).into_owned());
                        }
                    }
                }
            }
        }
        copies.sort();
        copies
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_inspected_and_replayed_once_after_the_fix() {
    let stack = Stack::start();
    let ledger = stack.ledger().await;
    let big = "x".repeat(4000);
    let mut big_ids = Vec::new();
    for n in 0..4 {
        let event = ledger
            .system(&format!("big.{n}"), Level::Info, "app::big", &big)
            .build();
        big_ids.push(event.envelope().event_id.to_string());
        ledger.send_event(event).await.unwrap();
    }
    for n in 0..2 {
        let event = ledger
            .system(&format!("small.{n}"), Level::Info, "app::small", "fits")
            .build();
        ledger.send_event(event).await.unwrap();
    }

    // The projector's limit is below the big events: they are dead-lettered.
    let (stop, task) = stack.projector(2048);
    assert_eq!(stack.stored(2).await, 2);
    let kafka = stack.kafka();
    let oversize = Selection {
        reasons: vec!["oversize".to_owned()],
        ..Selection::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters = dlq::read_dead_letters(&kafka, &oversize).await.unwrap();
        if letters.len() >= 4 || Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(letters.len(), 4, "{letters:?}");
    for letter in &letters {
        let (topic, _, offset) = letter.source().expect("source headers");
        assert_eq!(topic, "ledgerline.system");
        assert!(offset >= 0);
        assert!(
            letter.error.as_deref().unwrap().contains("2048 byte limit"),
            "{letter:?}"
        );
        assert!(letter.value_bytes > 4000);
        assert!(letter.time_us.is_some());
    }
    // Another reason selects none of them; a time after them none either.
    let none = Selection {
        reasons: vec!["invalid_event".to_owned()],
        ..Selection::default()
    };
    assert!(dlq::read_dead_letters(&kafka, &none)
        .await
        .unwrap()
        .is_empty());
    let later = Selection {
        since_us: Some(letters.iter().filter_map(|l| l.time_us).max().unwrap() + 1),
        ..Selection::default()
    };
    assert!(dlq::read_dead_letters(&kafka, &later)
        .await
        .unwrap()
        .is_empty());

    // The fix: a limit the events fit. The restarted projector continues after the dead
    // letters, so only a replay brings them back.
    stop.cancel();
    task.await.unwrap();
    let (stop, task) = stack.projector(1 << 20);

    // A dry run publishes nothing and records nothing.
    let dry = dlq::replay(
        &kafka,
        &ReplayOptions {
            selection: oversize.clone(),
            dry_run: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.would_replay.len(), 4);
    assert!(dry.replayed.is_empty());

    // Two runs that died halfway, simulated: one after publishing its copy (the copy is
    // there, its `done` marker is not), one after its `started` marker only.
    let producer: FutureProducer = kafka.idempotent_producer_config(&[]).create().unwrap();
    let _ = dlq::replay(
        &kafka,
        &ReplayOptions {
            selection: Selection {
                reasons: vec!["no-such-reason".to_owned()],
                ..Selection::default()
            },
            dry_run: false,
        },
    )
    .await
    .unwrap(); // creates the progress topic
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let started = format!(r#"{{"state":"started","at_ms":{now_ms}}}"#);
    let (first, second) = (&letters[0], &letters[1]);
    for letter in [first, second] {
        producer
            .send(
                FutureRecord::to(PROGRESS_TOPIC)
                    .key(&letter.id())
                    .payload(&started),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let (topic, partition, _) = first.source().unwrap();
    let first_id = first.id();
    let mut copy = FutureRecord::to(topic)
        .partition(partition)
        .payload(&first.value)
        .headers(OwnedHeaders::new().insert(Header {
            key: REPLAY_OF_HEADER,
            value: Some(&first_id),
        }));
    if let Some(key) = &first.key {
        copy = copy.key(key);
    }
    producer.send(copy, Duration::from_secs(10)).await.unwrap();

    let report = dlq::replay(
        &kafka,
        &ReplayOptions {
            selection: oversize.clone(),
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.recovered, vec![first.id()], "{report:?}");
    assert_eq!(report.replayed.len(), 3, "{report:?}");
    assert!(report.replayed.iter().any(|(id, _)| *id == second.id()));
    for (_, target) in &report.replayed {
        assert!(target.starts_with("ledgerline.system/"), "{target}");
    }
    assert_eq!(stack.stored(6).await, 6);

    // A second run replays nothing.
    let again = dlq::replay(
        &kafka,
        &ReplayOptions {
            selection: oversize.clone(),
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert!(
        again.replayed.is_empty() && again.recovered.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.already_replayed.len(), 4);

    // Each dead letter has exactly one copy on its topic, and each event is stored once.
    let mut expected: Vec<String> = letters.iter().map(|l| l.id()).collect();
    expected.sort();
    assert_eq!(stack.copies("ledgerline.system"), expected);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reader = stack.reader();
    assert_eq!(reader.count(&EventQuery::default()).await.unwrap(), 6);
    for id in &big_ids {
        let event = reader.event(id, &[]).await.unwrap();
        assert!(event.is_some(), "{id} was not stored after the replay");
    }
    stop.cancel();
    task.await.unwrap();
}
