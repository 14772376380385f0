//! The ClickHouse projector next to its two ceilings, on the same events, in one run:
//!
//! - **input ceiling**: raw rdkafka consumption of the topics (no decoding, no insert);
//! - **projector**: `projector::run`, what `ledgerline-consumer projector` runs (decode through
//!   the registry, validate, rows, `job_status` and `events` inserts, offset commits), timed
//!   from its own `ledgerline_consumer_events_total{outcome="written"}` counter;
//! - **output ceiling**: the same rows inserted straight into ClickHouse through the
//!   `clickhouse` crate, in batches of the same size and shape (the order a consumer reads
//!   them, one insert per Kafka partition, run concurrently), with decoding and row building
//!   done before the clock starts.
//!
//! `cargo bench -p ledgerline-consumers --bench projector` (defaults: 1,000,000 events, batches
//! of 50,000), or `-- --events 400000 --batch 10000`; `--projector-only` skips the ceilings
//! (for profiling), `--lz4` compresses inserts as a remote server would want (the default is
//! the local stack's `compression = "none"`). It starts its own Tansu memory-engine
//! broker, registry and ClickHouse on free loopback ports, fills the four stored topics
//! (3 partitions each) with fully populated sample events, evenly across categories, and
//! prints one table. Throughput is sustained: counted from the end of the first batch (or the
//! first message) to the end of the last, so consumer-group joins and connection set-up are not
//! in it. Targets: the projector at least 150,000 events/s and at least 70% of the lower
//! ceiling.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ledgerline_consumers::clickhouse::{self, ClickHouseCompression, ClickHouseConfig};
use ledgerline_consumers::projector::schema::MIGRATIONS;
use ledgerline_consumers::projector::{
    self, event_row, insert, job_status_row, EventRow, JobStatusRow, ProjectorConfig,
    ProjectorSettings,
};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_schemas::{samples, Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_service::telemetry;
use ledgerline_tests::{names, Broker, BrokerStorage, ClickHouseServer, RegistryServer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

// The allocator `ledgerline-consumer` runs with, so the projector is measured as deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STORED: [Category; 4] = projector::STORED_CATEGORIES;
const PARTITIONS: i32 = 3;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == name)
        .and_then(|index| args.get(index + 1))
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Events per second between `first` (after `first_count` events) and `last` (after `total`).
fn sustained(first: Instant, first_count: u64, last: Instant, total: u64) -> f64 {
    let seconds = last.duration_since(first).as_secs_f64();
    if seconds <= 0.0 {
        return f64::NAN;
    }
    (total - first_count) as f64 / seconds
}

/// A produced event: its category, encoded bytes, and where the broker put it.
struct Produced {
    category: Category,
    payload: Vec<u8>,
    partition: i32,
    offset: i64,
}

/// Encodes `count` sample events, round-robin over the stored categories, and produces them
/// to their topics with raw rdkafka. Returns them with their partitions and offsets, for the
/// output ceiling's rows.
async fn fill(broker: &Broker, codec: &EventCodec, count: usize) -> Vec<Produced> {
    for category in STORED {
        broker
            .create_topic(category.topic_name(), PARTITIONS)
            .await
            .unwrap();
        codec.prepare(category, true).await.unwrap();
    }
    broker
        .create_topic(ledgerline_schemas::topics::DLQ_TOPIC, PARTITIONS)
        .await
        .unwrap();
    let mut produced = Vec::with_capacity(count);
    for n in 0..count {
        let category = STORED[n % STORED.len()];
        let event = samples::event(category, n as u64);
        produced.push(Produced {
            category,
            payload: codec.encode(&event).await.unwrap(),
            partition: 0,
            offset: 0,
        });
    }
    let producer: FutureProducer = broker
        .producer_config()
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut placements = Vec::with_capacity(count);
    let mut in_flight = FuturesUnordered::new();
    for (n, event) in produced.iter().enumerate() {
        let topic = event.category.topic_name().to_owned();
        let key = format!("key-{}", n % 97);
        loop {
            let record = FutureRecord::to(&topic).key(&key).payload(&event.payload);
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(async move { (n, delivery.await) });
                    break;
                }
                Err(_) => {
                    let (done, result) = in_flight.next().await.unwrap();
                    placements.push((done, result.unwrap().unwrap()));
                }
            }
        }
    }
    while let Some((done, result)) = in_flight.next().await {
        placements.push((done, result.unwrap().unwrap()));
    }
    for (n, delivery) in placements {
        produced[n].partition = delivery.partition;
        produced[n].offset = delivery.offset;
    }
    println!(
        "filled {count} events in {:.1}s ({:.0} msgs/s)",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64()
    );
    produced
}

/// Raw consumption of the four topics in a fresh group: every message's payload is touched,
/// nothing is decoded.
async fn input_ceiling(broker: &Broker, count: u64) -> f64 {
    // The projector's fetch wait, so both read the broker the same way (see
    // `ProjectorConfig::fetch_wait_max_ms` for why it matters on Tansu).
    let fetch_wait = ConsumerSettings::default().fetch_wait_max_ms.to_string();
    let consumer: StreamConsumer = broker
        .consumer_config(&names::group())
        .set("fetch.wait.max.ms", fetch_wait)
        .create()
        .unwrap();
    let topics: Vec<String> = STORED.iter().map(|c| c.topic_name().to_owned()).collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).unwrap();
    let mut received = 0_u64;
    let mut bytes = 0_usize;
    let mut first = None;
    while received < count {
        let message = consumer.recv().await.unwrap();
        bytes += message.payload().map_or(0, <[u8]>::len);
        received += 1;
        first.get_or_insert_with(Instant::now);
    }
    assert!(bytes > 0);
    sustained(first.unwrap(), 1, Instant::now(), count)
}

/// Events the projector has written so far, from the process's own metrics: what its
/// `/metrics` shows.
fn written_by_projector(metrics: &metrics_exporter_prometheus::PrometheusHandle) -> u64 {
    metrics
        .render()
        .lines()
        .find(|line| {
            line.starts_with("ledgerline_consumer_events_total{")
                && line.contains("consumer=\"projector\"")
                && line.contains("outcome=\"written\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Runs `projector::run` until it has written `count` events; its throughput from the end of
/// its first batch to the end of the last (sampled every 5 ms).
async fn projector(
    broker: &Broker,
    registry: &SchemaRegistryConfig,
    clickhouse: &ClickHouseConfig,
    count: u64,
    batch: usize,
) -> f64 {
    let metrics = telemetry::prometheus().unwrap();
    let before = written_by_projector(&metrics);
    let settings = ProjectorSettings {
        kafka: KafkaConfig {
            brokers: broker.bootstrap(),
            ..KafkaConfig::default()
        },
        schema_registry: registry.clone(),
        projector: ProjectorConfig {
            consumer: ConsumerSettings {
                group_id: Some(names::group()),
                batch_max_events: batch,
                ..ConsumerSettings::default()
            },
            listen: "127.0.0.1:0".parse().unwrap(),
            clickhouse: clickhouse.clone(),
            ..ProjectorConfig::default()
        },
    };
    let done = CancellationToken::new();
    let task = tokio::spawn(projector::run(settings, done.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let written = written_by_projector(&metrics) - before;
        if written > 0 {
            first.get_or_insert((Instant::now(), written));
        }
        if written >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projector did not finish within 10 minutes"
        );
    }
    let last = Instant::now();
    done.cancel();
    task.await.unwrap().unwrap();
    let (first, first_count) = first.unwrap();
    let reader = projector::EventReader::new(
        clickhouse.client(),
        &clickhouse.database,
        projector::queries::ReadLimits::default(),
    )
    .unwrap();
    let stored = reader
        .count(&projector::EventQuery::default())
        .await
        .unwrap();
    assert_eq!(stored, count, "every event stored once");
    sustained(first, first_count, last, count)
}

/// One Kafka partition's rows of a batch.
#[derive(Default)]
struct PartitionRows {
    rows: Vec<EventRow>,
    statuses: Vec<JobStatusRow>,
}

/// The projector's rows (events, and job_status for jobs), decoded and built before timing,
/// inserted in the projector's shape: records in the order a consumer reads them (by topic,
/// partition and offset), in batches of `batch`, each batch one insert per partition, the
/// partitions' inserts concurrently on their own tasks, one batch at a time.
async fn output_ceiling(
    codec: &EventCodec,
    clickhouse: &ClickHouseConfig,
    produced: &[Produced],
    batch: usize,
) -> f64 {
    let client = clickhouse.client();
    clickhouse::migrate(&client, &clickhouse.database, MIGRATIONS)
        .await
        .unwrap();
    let ingested_at = u32::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let mut in_read_order: Vec<&Produced> = produced.iter().collect();
    in_read_order.sort_by_key(|event| (event.category.topic_name(), event.partition, event.offset));
    let mut batches = Vec::new();
    for chunk in in_read_order.chunks(batch) {
        let mut inserts: Vec<((String, i32), PartitionRows)> = Vec::new();
        for event in chunk {
            let topic = event.category.topic_name().to_owned();
            let decoded = codec.decode(event.category, &event.payload).await.unwrap();
            let key = (topic.clone(), event.partition);
            let index = match inserts.iter().position(|(known, _)| *known == key) {
                Some(index) => index,
                None => {
                    inserts.push((key, PartitionRows::default()));
                    inserts.len() - 1
                }
            };
            let (_, PartitionRows { rows, statuses }) = &mut inserts[index];
            statuses.extend(job_status_row(
                &decoded,
                &topic,
                event.partition,
                event.offset,
                ingested_at,
            ));
            rows.extend(event_row(
                &decoded,
                &topic,
                event.partition,
                event.offset,
                ingested_at,
            ));
        }
        let inserts: Vec<_> = inserts
            .into_iter()
            .map(|(_, rows)| Arc::new(rows))
            .collect();
        batches.push(inserts);
    }
    let mut first = None;
    let started = Instant::now();
    for inserts in &batches {
        let mut writes = tokio::task::JoinSet::new();
        for insert in inserts {
            let (client, database, insert) = (
                client.clone(),
                clickhouse.database.clone(),
                Arc::clone(insert),
            );
            writes.spawn(async move {
                let PartitionRows { rows, statuses } = &*insert;
                if !statuses.is_empty() {
                    insert::insert_job_statuses(&client, &database, statuses)
                        .await
                        .unwrap();
                }
                insert::insert_events(&client, &database, rows)
                    .await
                    .unwrap();
            });
        }
        while let Some(done) = writes.join_next().await {
            done.unwrap();
        }
        let rows: usize = inserts.iter().map(|insert| insert.rows.len()).sum();
        first.get_or_insert((Instant::now(), rows as u64));
    }
    let (first, first_count) = first.unwrap_or((started, 0));
    sustained(first, first_count, Instant::now(), produced.len() as u64)
}

#[tokio::main]
async fn main() {
    let count = arg("--events", 1_000_000);
    let batch = arg("--batch", 50_000);
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let registry_server = RegistryServer::start(&broker.bootstrap()).unwrap();
    let server = ClickHouseServer::start().unwrap();
    let registry = SchemaRegistryConfig {
        url: registry_server.url(),
        ..SchemaRegistryConfig::default()
    };
    let codec = EventCodec::new(&registry).unwrap();
    // The local stack's setting (one machine: compression only costs CPU); `--lz4` for what a
    // remote server would get.
    let compression = if std::env::args().any(|arg| arg == "--lz4") {
        ClickHouseCompression::Lz4
    } else {
        ClickHouseCompression::None
    };
    let clickhouse = |database: &str| ClickHouseConfig {
        url: server.url(),
        user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
        password: server.password().into(),
        database: database.to_owned(),
        compression,
        cluster: None,
    };

    let produced = fill(&broker, &codec, count).await;
    let total = count as u64;
    if std::env::args().any(|arg| arg == "--projector-only") {
        let database = clickhouse("bench_projector");
        let projected = projector(&broker, &registry, &database, total, batch).await;
        println!("projector/batch_{batch}: {projected:.0} events/s");
        return;
    }
    let input = input_ceiling(&broker, total).await;
    let projected = projector(
        &broker,
        &registry,
        &clickhouse("bench_projector"),
        total,
        batch,
    )
    .await;
    let output = output_ceiling(&codec, &clickhouse("bench_direct"), &produced, batch).await;

    let lower = input.min(output);
    println!();
    println!("| measurement | events/s | vs lower ceiling |");
    println!("| --- | ---: | ---: |");
    println!(
        "| input ceiling: raw rdkafka consumption | {input:.0} | {:.2} |",
        input / lower
    );
    println!(
        "| output ceiling: direct clickhouse inserts, batch {batch} | {output:.0} | {:.2} |",
        output / lower
    );
    println!(
        "| projector/batch_{batch} | {projected:.0} | {:.2} |",
        projected / lower
    );
    println!();
    println!(
        "projector: {projected:.0} events/s ({} 150,000 target), {:.0}% of the lower ceiling ({} 70% target)",
        if projected >= 150_000.0 { "meets the" } else { "below the" },
        100.0 * projected / lower,
        if projected >= 0.7 * lower { "meets the" } else { "below the" },
    );
}
