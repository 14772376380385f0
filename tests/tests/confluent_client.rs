//! A client written against Confluent's API works unchanged: Python's confluent-kafka
//! (`SchemaRegistryClient` + `AvroSerializer`, as a new user would write it) registers
//! Ledgerline's schemas with Ledgerline's registry and publishes; Ledgerline's decoder reads
//! every event, and the running projector stores every event of a stored category as it was
//! written.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::projector::{
    self, EventQuery, EventReader, EventRow, ProjectorConfig, ProjectorSettings,
};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_schemas::event::Event;
use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::{avro, Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{names, Broker, BrokerStorage, Harness};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// How long a Python script may run: it produces a few dozen events to a local broker.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Partitions of each `ledgerline.*` topic, as the local stack creates them.
const TOPIC_PARTITIONS: i32 = 3;

fn python() -> String {
    std::env::var(ledgerline_service::env::PYTHON).unwrap_or_else(|_| "python3".to_owned())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `tests/python/<script>` with `args` and returns the JSON lines it printed. The script is
/// killed if it outlives [`SCRIPT_TIMEOUT`].
async fn run_python_script(script: &str, args: &[String]) -> Vec<serde_json::Value> {
    let output = tokio::time::timeout(
        SCRIPT_TIMEOUT,
        tokio::process::Command::new(python())
            .arg(repo().join("tests/python").join(script))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{script} ran longer than {SCRIPT_TIMEOUT:?}"))
    .unwrap();
    assert!(
        output.status.success(),
        "python client failed (is tests/python/requirements.txt installed? deploy/local/install does it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn confluent_python_client_registers_and_our_decoder_reads() {
    let harness = Harness::shared().unwrap();
    let topic = names::topic();
    harness.broker.create_topic(&topic, 2).await.unwrap();
    let schema_file = repo().join("schemas/avro/audit.v1.avsc");
    let lines = run_python_script(
        "confluent_produce.py",
        &[
            harness.broker.bootstrap(),
            harness.registry.url(),
            topic.clone(),
            schema_file.display().to_string(),
            "20".to_owned(),
        ],
    )
    .await;
    assert_eq!(lines.len(), 20);
    let expected: HashSet<String> = lines
        .iter()
        .map(|line| line["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(lines.iter().all(|line| line["magic"] == 0));

    // The Python client registered under TopicNameStrategy: subject `<topic>-value`, and the
    // schema is the same (canonical form) as ours, so it shares the audit schema's id.
    let subject = format!("{topic}-value");
    let registered: serde_json::Value = reqwest::get(format!(
        "{}/subjects/{subject}/versions/latest",
        harness.registry.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(registered["id"], lines[0]["schema_id"]);
    let ours = apache_avro::Schema::parse_str(avro::current(Category::Audit).text).unwrap();
    let theirs = apache_avro::Schema::parse_str(registered["schema"].as_str().unwrap()).unwrap();
    assert_eq!(ours.canonical_form(), theirs.canonical_form());

    let codec = EventCodec::new(&SchemaRegistryConfig {
        url: harness.registry.url(),
        ..SchemaRegistryConfig::default()
    })
    .unwrap();
    let consumer: StreamConsumer = harness
        .broker
        .consumer_config(&names::group())
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let Event::Audit(audit) = codec
            .decode(Category::Audit, message.payload().unwrap())
            .await
            .unwrap()
        else {
            panic!("not an audit event");
        };
        assert_eq!(audit.envelope.service, "python-billing");
        assert_eq!(audit.actor.ip, "198.51.100.7");
        assert_eq!(audit.target.as_ref().map(|t| t.id.as_str()), Some("acct-1"));
        seen.insert(audit.envelope.event_id.to_string());
    }
    assert_eq!(seen, expected);
}

/// One event as `confluent_produce_all.py` reports it: what it wrote and where the broker put it.
#[derive(Debug, serde::Deserialize)]
struct Produced {
    category: String,
    topic: String,
    event_id: String,
    schema_file: String,
    schema_id: u32,
    magic: u8,
    /// `set`, `null` (passed as None) or `omitted` (left to the schema's defaults).
    optional_fields: String,
    partition: i32,
    offset: i64,
    /// The record the script serialized, in the JSON form of Ledgerline's event types.
    event: serde_json::Value,
}

impl Produced {
    fn category(&self) -> Category {
        self.category.parse().unwrap()
    }

    /// The event the script meant to send, read from its JSON rather than from Kafka.
    fn intended(&self) -> Event {
        let json = self.event.clone();
        let parsed = match self.category() {
            Category::Audit => serde_json::from_value(json).map(Event::Audit),
            Category::Job => serde_json::from_value(json).map(Event::Job),
            Category::Connection => serde_json::from_value(json).map(Event::Connection),
            Category::System => serde_json::from_value(json).map(Event::System),
            Category::Session => serde_json::from_value(json).map(Event::Session),
        };
        parsed.unwrap_or_else(|error| panic!("{}: {error}", self.event_id))
    }
}

/// An event as a plain Kafka consumer read it and Ledgerline's decoder decoded it.
#[derive(Debug)]
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    event: Event,
}

/// Reads every record of every category's topic from the beginning, through an assignment
/// (no group to join, so nothing to wait for), and decodes it, until `expected` records arrived
/// or 30 s passed.
async fn read_and_decode(
    broker: &Broker,
    codec: &EventCodec,
    expected: usize,
) -> BTreeMap<String, Received> {
    let consumer: StreamConsumer = broker.consumer_config(&names::group()).create().unwrap();
    let mut assignment = TopicPartitionList::new();
    for category in Category::ALL {
        for partition in 0..TOPIC_PARTITIONS {
            assignment
                .add_partition_offset(category.topic_name(), partition, Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut received = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < expected && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let category = Category::from_topic(message.topic()).unwrap();
        let event = codec
            .decode(category, message.payload().unwrap())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "{}/{}@{}: {error}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            });
        let event_id = event.envelope().event_id.to_string();
        let record = Received {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            event,
        };
        if let Some(earlier) = received.insert(event_id.clone(), record) {
            panic!("{event_id} is in Kafka twice, first at {earlier:?}");
        }
    }
    received
}

/// High watermarks of the dead-letter topic, summed: 0 when it has no record or does not
/// exist. Tansu 0.6.0 may report a watermark one short after a multi-record batch, but not 0
/// for a partition that holds records, which is all this needs.
async fn dead_letter_count(bootstrap: String) -> i64 {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
        let timeout = Duration::from_secs(5);
        let metadata = consumer.fetch_metadata(Some(DLQ_TOPIC), timeout).unwrap();
        let Some(topic) = metadata.topics().first() else {
            return 0;
        };
        if let Some(error) = topic.error() {
            assert_eq!(
                error,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
                "metadata of {DLQ_TOPIC}"
            );
            return 0;
        }
        topic
            .partitions()
            .iter()
            .map(|partition| {
                let (_, high) = consumer
                    .fetch_watermarks(DLQ_TOPIC, partition.id(), timeout)
                    .unwrap();
                high
            })
            .sum()
    })
    .await
    .unwrap()
}

/// Spot checks against the script's own JSON, one field of each category that the projector
/// maps to its own column, so a failure names the field as well as the event.
fn spot_check(produced: &Produced, stored: &Event) {
    let json = &produced.event;
    let id = &produced.event_id;
    assert_eq!(&stored.envelope().event_id.to_string(), id);
    assert_eq!(
        Some(stored.envelope().message.as_str()),
        json["envelope"]["message"].as_str(),
        "{id}: message"
    );
    match stored {
        Event::Audit(audit) => assert_eq!(
            audit.target.as_ref().map(|target| target.id.as_str()),
            json["target"]["id"].as_str(),
            "{id}: audit target id"
        ),
        Event::Job(job) => assert_eq!(
            job.parent_job_id.as_deref(),
            json["parent_job_id"].as_str(),
            "{id}: job parent_job_id (added in job.v2)"
        ),
        Event::Connection(connection) => assert_eq!(
            connection.duration_ms,
            json["duration_ms"].as_i64(),
            "{id}: connection duration_ms"
        ),
        Event::System(system) => assert_eq!(
            system.error.as_ref().map(|error| error.chain.clone()),
            json["error"]["chain"].as_array().map(|chain| chain
                .iter()
                .map(|cause| cause.as_str().unwrap().to_owned())
                .collect()),
            "{id}: system error chain"
        ),
        Event::Session(_) => panic!("{id}: a session event was stored"),
    }
}

/// What a newcomer's Python service publishes reaches ClickHouse intact: events of every
/// stored category, serialized by confluent-kafka's `AvroSerializer` with the newest schema
/// files and auto-registered under TopicNameStrategy, go through the running projector, and
/// each stored row reads back as the event Ledgerline's decoder reads from the same Kafka
/// record, which is the event the script meant to send. Optional fields are set on some events,
/// null on others and left to the schema's defaults on others. Session events, also published,
/// are not stored, and nothing is dead-lettered.
#[tokio::test]
async fn confluent_python_events_of_every_category_land_through_the_projector_unchanged() {
    let harness = Harness::shared().unwrap();
    // Its own broker, because the projector reads the fixed `ledgerline.*` topics.
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let registry = ledgerline_tests::RegistryServer::start(&broker.bootstrap()).unwrap();
    let clickhouse = ClickHouseConfig {
        url: harness.clickhouse.url(),
        user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
        password: harness.clickhouse.password().into(),
        database: names::database(),
        ..ClickHouseConfig::default()
    };
    for category in Category::ALL {
        broker
            .create_topic(category.topic_name(), TOPIC_PARTITIONS)
            .await
            .unwrap();
    }
    let registry_config = SchemaRegistryConfig {
        url: registry.url(),
        ..SchemaRegistryConfig::default()
    };

    // The projector runs in this process through `projector::run`, as the binary runs it.
    let listen = format!(
        "127.0.0.1:{}",
        ledgerline_tests::process::free_port().unwrap()
    );
    let settings = ProjectorSettings {
        kafka: KafkaConfig {
            brokers: broker.bootstrap(),
            ..KafkaConfig::default()
        },
        schema_registry: registry_config.clone(),
        projector: ProjectorConfig {
            consumer: ConsumerSettings {
                group_id: Some(names::group()),
                batch_max_events: 1000,
                batch_max_wait_ms: 200,
                max_event_bytes: 1 << 20,
                ..ConsumerSettings::default()
            },
            listen: listen.parse().unwrap(),
            clickhouse: clickhouse.clone(),
            ..ProjectorConfig::default()
        },
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let projector_task = tokio::spawn(async move {
        projector::run(settings, token).await.unwrap();
    });

    let per_category = 6;
    let session_events = 3;
    let lines = run_python_script(
        "confluent_produce_all.py",
        &[
            broker.bootstrap(),
            registry.url(),
            repo().join("schemas/avro").display().to_string(),
            per_category.to_string(),
            session_events.to_string(),
        ],
    )
    .await;
    let produced: Vec<Produced> = lines
        .into_iter()
        .map(|line| serde_json::from_value(line).unwrap())
        .collect();
    let is_stored = |category: Category| category != Category::Session;
    for category in Category::ALL {
        let count = produced
            .iter()
            .filter(|event| event.category() == category)
            .count();
        let wanted = if is_stored(category) {
            per_category
        } else {
            session_events
        };
        assert_eq!(count, wanted, "{category} events produced");
    }
    let optional_fields: BTreeSet<&str> = produced
        .iter()
        .map(|event| event.optional_fields.as_str())
        .collect();
    assert_eq!(optional_fields, BTreeSet::from(["null", "omitted", "set"]));

    // The script wrote each category with the schema this build reads, registered under
    // `<topic>-value` as the same schema (canonical form) that Ledgerline registers.
    for category in Category::ALL {
        let current = avro::current(category);
        let registered: serde_json::Value = reqwest::get(format!(
            "{}/subjects/{}/versions/latest",
            registry.url(),
            category.subject()
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let theirs =
            apache_avro::Schema::parse_str(registered["schema"].as_str().unwrap()).unwrap();
        let ours = apache_avro::Schema::parse_str(current.text).unwrap();
        assert_eq!(theirs.canonical_form(), ours.canonical_form(), "{category}");
        for event in produced.iter().filter(|event| event.category() == category) {
            assert_eq!(
                event.schema_file,
                format!("{category}.v{}.avsc", current.version)
            );
            assert_eq!(
                (event.magic, event.schema_id),
                (0, registered["id"].as_u64().unwrap() as u32)
            );
            assert_eq!(event.topic, category.topic_name());
        }
    }

    // Ledgerline's decoder reads, from each Kafka record, the event the script meant to send.
    let codec = EventCodec::new(&registry_config).unwrap();
    let received = read_and_decode(&broker, &codec, produced.len()).await;
    assert_eq!(
        received.keys().collect::<BTreeSet<_>>(),
        produced
            .iter()
            .map(|event| &event.event_id)
            .collect::<BTreeSet<_>>(),
        "records in kafka"
    );
    for event in &produced {
        let record = &received[&event.event_id];
        assert_eq!(
            (record.topic.as_str(), record.partition, record.offset),
            (event.topic.as_str(), event.partition, event.offset),
            "{}: where the broker acknowledged it",
            event.event_id
        );
        assert_eq!(
            record.event,
            event.intended(),
            "{} ({} optional fields): decoded differs from what the script sent",
            event.event_id,
            event.optional_fields
        );
    }

    // The projector stores every event of a stored category, and nothing else.
    let stored_count = produced
        .iter()
        .filter(|event| is_stored(event.category()))
        .count() as u64;
    let client = clickhouse.client();
    let reader = EventReader::new(
        client.clone(),
        &clickhouse.database,
        projector::queries::ReadLimits::default(),
    )
    .unwrap();
    let count = || async { reader.count(&EventQuery::default()).await.unwrap_or(0) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await < stored_count && Instant::now() < deadline {
        assert!(!projector_task.is_finished(), "the projector stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count().await,
        stored_count,
        "stored events ({} dead-lettered)",
        dead_letter_count(broker.bootstrap()).await
    );
    // The rows themselves, not the reader's events: the test checks where each row says it
    // came from, which events do not carry.
    let rows: Vec<EventRow> = client
        .query(&format!(
            "SELECT ?fields FROM {}.events ORDER BY event_id, ingested_at LIMIT 1 BY event_id",
            clickhouse.database
        ))
        .fetch_all()
        .await
        .unwrap();
    let stored: BTreeMap<String, (&EventRow, Event)> = rows
        .iter()
        .map(|row| (row.event_id.clone(), (row, row.to_event().unwrap())))
        .collect();
    assert_eq!(stored.len() as u64, stored_count);
    for event in &produced {
        let id = &event.event_id;
        if !is_stored(event.category()) {
            assert!(
                !stored.contains_key(id),
                "{id}: session events are never stored"
            );
            continue;
        }
        let (row, stored_event) = stored
            .get(id)
            .unwrap_or_else(|| panic!("{id} ({}) was not stored", event.category));
        let record = &received[id];
        assert_eq!(
            (row.topic.as_str(), row.partition, row.offset),
            (record.topic.as_str(), record.partition, record.offset),
            "{id}: where the row says it came from"
        );
        assert_eq!(
            stored_event, &record.event,
            "{id} ({} optional fields): stored differs from decoded",
            event.optional_fields
        );
        spot_check(event, stored_event);
    }
    assert_eq!(
        dead_letter_count(broker.bootstrap()).await,
        0,
        "dead letters"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), projector_task)
        .await
        .unwrap()
        .unwrap();
}
