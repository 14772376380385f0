//! The projector end to end: the consumer runtime reads real topics from a broker, decodes
//! through the registry and writes ClickHouse; bad records land in the dead-letter topic with
//! their reason and the consumer moves on.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::projector::{
    self, queries, schema, EventQuery, EventReader, ProjectorConfig, ProjectorSettings,
};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_producer::event::*;
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::{samples, Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{names, Broker, BrokerStorage, Harness, RegistryServer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

struct Stack {
    broker: Broker,
    registry: RegistryServer,
    clickhouse: ClickHouseConfig,
}

async fn stack() -> Stack {
    let harness = Harness::shared().unwrap();
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let clickhouse = ClickHouseConfig {
        url: harness.clickhouse.url(),
        user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
        password: harness.clickhouse.password().into(),
        database: names::database(),
        ..ClickHouseConfig::default()
    };
    Stack {
        broker,
        registry,
        clickhouse,
    }
}

impl Stack {
    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.broker.bootstrap(),
            ..KafkaConfig::default()
        }
    }

    fn registry_config(&self) -> SchemaRegistryConfig {
        SchemaRegistryConfig {
            url: self.registry.url(),
            ..SchemaRegistryConfig::default()
        }
    }

    async fn ledger(&self) -> Ledger {
        Ledger::builder("projector-test")
            .config(ProducerConfig {
                service_name: "projector-test".to_owned(),
                linger_ms: 1,
                ..ProducerConfig::default()
            })
            .kafka(self.kafka())
            .schema_registry(self.registry_config())
            .build()
            .await
            .unwrap()
    }

    /// Starts the projector in this process, through `projector::run` as the binary does;
    /// returns its stop token, its task and where its `/health` listens.
    async fn projector(
        &self,
        max_event_bytes: usize,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>, String) {
        let listen = format!(
            "127.0.0.1:{}",
            ledgerline_tests::process::free_port().unwrap()
        );
        let settings = ProjectorSettings {
            kafka: self.kafka(),
            schema_registry: self.registry_config(),
            projector: ProjectorConfig {
                consumer: ConsumerSettings {
                    group_id: Some(names::group()),
                    batch_max_events: 1000,
                    batch_max_wait_ms: 200,
                    max_event_bytes,
                    ..ConsumerSettings::default()
                },
                listen: listen.parse().unwrap(),
                clickhouse: self.clickhouse.clone(),
                ..ProjectorConfig::default()
            },
        };
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            projector::run(settings, token).await.unwrap();
        });
        (shutdown, task, listen)
    }

    fn reader(&self) -> EventReader {
        reader(self.clickhouse.client(), &self.clickhouse.database)
    }

    async fn wait_for_count(&self, expected: u64) -> u64 {
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
}

/// The projector's `clickhouse_inserts` health check, read from its `/health`.
struct InsertHealth(String);

impl InsertHealth {
    async fn check(&self) -> Result<(), String> {
        let report: serde_json::Value = reqwest::get(format!("http://{}/health", self.0))
            .await
            .map_err(|error| error.to_string())?
            .json()
            .await
            .map_err(|error| error.to_string())?;
        let check = &report["components"]["clickhouse_inserts"];
        match check["status"].as_str() {
            Some("ok") => Ok(()),
            _ => Err(check["error"]
                .as_str()
                .unwrap_or("no such check")
                .to_owned()),
        }
    }
}

#[tokio::test]
async fn every_stored_category_lands_with_every_field_and_job_status_is_latest() {
    let stack = stack().await;
    let ledger = stack.ledger().await;
    let actor = Actor {
        id: "user-1".to_owned(),
        kind: "user".to_owned(),
        ip: "192.0.2.9".to_owned(),
        user_agent: Some("curl/8".to_owned()),
    };
    let events = vec![
        ledger
            .audit(
                "user.login.success",
                actor,
                "login",
                Outcome::Success,
                serde_json::json!({"mfa": true}),
            )
            .target("account", "acct-1")
            .reason("ok")
            .attribute("tenant", "acme")
            .build(),
        ledger
            .job("job.queued", "job-x", "backup", "Backup", JobStatus::Queued)
            .build(),
        ledger
            .job(
                "job.progress",
                "job-x",
                "backup",
                "Backup",
                JobStatus::Running,
            )
            .progress(50)
            .build(),
        ledger
            .job(
                "job.completed",
                "job-x",
                "backup",
                "Backup",
                JobStatus::Completed,
            )
            .progress(100)
            .parent_job_id("job-parent")
            .build(),
        ledger
            .connection(
                "device.connect",
                "dev-1",
                "core",
                ConnectionPhase::Connect,
                Outcome::Failure,
            )
            .job_id("job-x")
            .duration(Duration::from_millis(7))
            .error("refused")
            .build(),
        ledger
            .system(
                "service.error",
                Level::Error,
                "svc::mod",
                "Something failed",
            )
            .field("attempt", "2")
            .error(&std::io::Error::other("disk full"))
            .build(),
        ledger
            .session("dev-1", Direction::Output, "never stored")
            .build(),
    ];
    for event in &events {
        ledger.send_event(event.clone()).await.unwrap();
    }
    let (stop, task, _) = stack.projector(1 << 20).await;
    assert_eq!(stack.wait_for_count(6).await, 6);

    let reader = stack.reader();
    let stored = reader
        .search(&EventQuery::default(), None, 100)
        .await
        .unwrap()
        .events;
    let by_id: BTreeMap<String, Event> = stored
        .into_iter()
        .map(|event| (event.envelope().event_id.to_string(), event))
        .collect();
    for event in &events {
        let id = event.envelope().event_id.to_string();
        if event.category() == Category::Session {
            assert!(!by_id.contains_key(&id), "session events are never stored");
        } else {
            assert_eq!(
                by_id.get(&id),
                Some(event),
                "{} differs after the round trip",
                event.category()
            );
        }
    }
    let job = reader.job("job-x").await.unwrap().unwrap();
    assert_eq!((job.status.as_str(), job.progress), ("COMPLETED", 100));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bad_records_are_dead_lettered_with_their_reason_and_the_consumer_moves_on() {
    let stack = stack().await;
    let ledger = stack.ledger().await;
    let codec = EventCodec::new(&stack.registry_config()).unwrap();
    let good = codec
        .encode(&samples::event(Category::Audit, 1))
        .await
        .unwrap();

    let mut bad_magic = good.clone();
    bad_magic[0] = 9;
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&77_777u32.to_be_bytes());
    let mut corrupt = good[..5].to_vec();
    corrupt.extend_from_slice(&[0xfe; 40]);
    let mut huge = samples::audit(2);
    huge.envelope.message = "x".repeat(8_000);
    let oversize = codec.encode(&Event::Audit(huge)).await.unwrap();
    let mut no_ip = samples::audit(3);
    no_ip.actor.ip = String::new();
    let missing_field = codec.encode(&Event::Audit(no_ip)).await.unwrap();

    let raw: FutureProducer = stack.broker.producer_config().create().unwrap();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad_magic_byte", bad_magic),
        ("unknown_schema_id", unknown_id),
        ("corrupt_avro", corrupt),
        ("oversize", oversize),
        ("invalid_event", missing_field),
    ];
    let mut sources = BTreeMap::new();
    for (reason, bytes) in &bad {
        let delivery = raw
            .send(
                FutureRecord::to(Category::Audit.topic_name())
                    .key("k")
                    .payload(bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        sources.insert(
            reason.to_string(),
            (delivery.partition, delivery.offset, bytes.clone()),
        );
    }
    // A good event after the garbage must still arrive.
    let after = ledger
        .audit(
            "user.logout",
            Actor {
                id: "user-2".to_owned(),
                kind: "user".to_owned(),
                ip: "192.0.2.2".to_owned(),
                user_agent: None,
            },
            "logout",
            Outcome::Success,
            serde_json::json!({}),
        )
        .build();
    ledger.send_event(after.clone()).await.unwrap();

    let (stop, task, _) = stack.projector(4096).await;
    assert_eq!(
        stack.wait_for_count(1).await,
        1,
        "the good event did not land"
    );
    let stored = stack
        .reader()
        .search(&EventQuery::default(), None, 10)
        .await
        .unwrap()
        .events;
    assert_eq!(stored[0].envelope().event_id, after.envelope().event_id);

    let consumer: StreamConsumer = stack
        .broker
        .consumer_config(&names::group())
        .create()
        .unwrap();
    consumer.subscribe(&[DLQ_TOPIC]).unwrap();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < bad.len() && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_default()
        };
        let reason = header("ledgerline.dlq.reason");
        let (partition, offset, bytes) = sources
            .get(&reason)
            .unwrap_or_else(|| panic!("unexpected reason {reason}"));
        assert_eq!(
            header("ledgerline.source.topic"),
            Category::Audit.topic_name()
        );
        assert_eq!(header("ledgerline.source.partition"), partition.to_string());
        assert_eq!(header("ledgerline.source.offset"), offset.to_string());
        assert!(!header("ledgerline.dlq.error").is_empty());
        assert!(header("ledgerline.dlq.time_us").parse::<u128>().unwrap() > 0);
        assert_eq!(
            message.payload().unwrap(),
            bytes.as_slice(),
            "{reason}: original bytes"
        );
        assert_eq!(message.key(), Some(&b"k"[..]));
        seen.insert(reason);
    }
    assert_eq!(seen, sources.keys().cloned().collect::<BTreeSet<_>>());

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn nothing_is_lost_while_clickhouse_is_down_for_20_seconds() {
    let mut clickhouse_server = ledgerline_tests::ClickHouseServer::start().unwrap();
    let mut stack = stack().await;
    stack.clickhouse.url = clickhouse_server.url();
    stack.clickhouse.password = clickhouse_server.password().into();
    let ledger = stack.ledger().await;
    let (stop, task, _) = stack.projector(1 << 20).await;

    let publish = |from: u64, to: u64| {
        let ledger = ledger.clone();
        async move {
            for n in from..to {
                ledger
                    .job(
                        "job.progress",
                        &format!("job-{}", n % 50),
                        "backup",
                        "Backup",
                        JobStatus::Running,
                    )
                    .progress((n % 100) as u8)
                    .publish()
                    .await
                    .unwrap();
            }
            ledger.flush(Duration::from_secs(60)).await.unwrap();
        }
    };
    publish(0, 2_000).await;
    assert_eq!(stack.wait_for_count(2_000).await, 2_000);

    clickhouse_server.kill();
    // Events keep arriving while ClickHouse is down; the projector retries the same batch.
    publish(2_000, 6_000).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    clickhouse_server.restart().unwrap();

    publish(6_000, 8_000).await;
    assert_eq!(stack.wait_for_count(8_000).await, 8_000);
    let stored = stack
        .reader()
        .search(&EventQuery::default(), None, 20_000)
        .await
        .unwrap()
        .events;
    let distinct: BTreeSet<uuid::Uuid> = stored
        .iter()
        .map(|event| event.envelope().event_id)
        .collect();
    assert_eq!((stored.len(), distinct.len()), (8_000, 8_000));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// A dropped `events` table is a failure only an operator can fix: inserts fail with
/// ClickHouse's UNKNOWN_TABLE (code 60), the insert health check reports it as a configuration
/// failure, the batch is held and retried rather than dropped, and once the table is back the
/// held events land, each once.
#[tokio::test]
async fn a_dropped_table_fails_health_and_its_batch_lands_once_the_table_is_back() {
    let stack = stack().await;
    let ledger = stack.ledger().await;
    let (stop, task, listen) = stack.projector(1 << 20).await;
    let inserts = InsertHealth(listen);
    let publish = |from: u64, to: u64| {
        let ledger = ledger.clone();
        async move {
            for n in from..to {
                ledger
                    .system(
                        "service.tick",
                        Level::Info,
                        "drop::test",
                        &format!("tick {n}"),
                    )
                    .publish()
                    .await
                    .unwrap();
            }
            ledger.flush(Duration::from_secs(60)).await.unwrap();
        }
    };
    publish(0, 100).await;
    assert_eq!(stack.wait_for_count(100).await, 100);
    assert_eq!(inserts.check().await, Ok(()));

    let admin = stack.clickhouse.client();
    let database = &stack.clickhouse.database;
    admin
        .query_raw(&format!("DROP TABLE {database}.events"))
        .execute()
        .await
        .unwrap();
    publish(100, 250).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let failure = loop {
        if let Err(failure) = inserts.check().await {
            break failure;
        }
        assert!(Instant::now() < deadline, "inserts never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(failure.contains("configuration"), "{failure}");
    assert!(failure.contains("Code: 60"), "{failure}");

    // What an operator does: recreate the table as migration 1 made it.
    for statement in schema::MIGRATIONS[0].statements {
        admin
            .query_raw(&statement.replace("{database}", database))
            .execute()
            .await
            .unwrap();
    }
    assert_eq!(stack.wait_for_count(150).await, 150);
    let deadline = Instant::now() + Duration::from_secs(30);
    while inserts.check().await.is_err() {
        assert!(Instant::now() < deadline, "health did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored = reader(admin.clone(), database)
        .search(&EventQuery::default(), None, 1_000)
        .await
        .unwrap()
        .events;
    let messages: BTreeSet<String> = stored
        .iter()
        .map(|event| event.envelope().message.clone())
        .collect();
    let expected: BTreeSet<String> = (100..250).map(|n| format!("tick {n}")).collect();
    assert_eq!(messages, expected);
    assert_eq!(stored.len(), 150);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// The projector's reader over `database`, with the default limits.
fn reader(client: clickhouse::Client, database: &str) -> EventReader {
    EventReader::new(client, database, queries::ReadLimits::default()).unwrap()
}
