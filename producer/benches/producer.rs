//! Producer throughput next to raw rdkafka, on a Tansu memory-engine broker started for the run.
//!
//! `cargo bench -p ledgerline-producer --bench producer` (or `-- --events 200000`).
//!
//! For each category: events/s from one process through `Ledger::publish_event` (redaction,
//! validation, Avro encoding, queueing, acks=all, idempotence on), timed from the first publish
//! to the end of `flush`; the events are built before timing, like the baseline's bytes. Baseline: raw rdkafka producing the same encoded bytes
//! with the same settings and keys to a topic with the same partition count, timed from the
//! first send to the last acknowledgement. The ratio is the figure (target: at least 0.8).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ledgerline_producer::event::Event;
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_schemas::{samples, Category, EventCodec};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{Broker, BrokerStorage, RegistryServer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn events_arg() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|arg| arg == "--events")
        .and_then(|index| args.get(index + 1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(100_000)
}

/// A sample event with a fresh id, like a service would build per call.
fn event(category: Category, n: u64) -> Event {
    let mut event = samples::event(category, n);
    match &mut event {
        Event::Audit(e) => e.envelope.event_id = uuid::Uuid::now_v7(),
        Event::Job(e) => e.envelope.event_id = uuid::Uuid::now_v7(),
        Event::Connection(e) => e.envelope.event_id = uuid::Uuid::now_v7(),
        Event::System(e) => e.envelope.event_id = uuid::Uuid::now_v7(),
        Event::Session(e) => e.envelope.event_id = uuid::Uuid::now_v7(),
    }
    event
}

async fn raw(brokers: &str, topic: &str, payload: &[u8], keys: &[String], count: usize) -> f64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for n in 0..count {
        let key = &keys[n % keys.len()];
        loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err(_) => {
                    in_flight.next().await;
                }
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        result.unwrap().unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let count = events_arg();
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let ledger = Ledger::builder("bench")
        .config(ProducerConfig {
            service_name: "bench".to_owned(),
            queue_capacity: 100_000,
            ..ProducerConfig::default()
        })
        .brokers(broker.bootstrap())
        .registry_url(registry.url())
        .build()
        .await
        .unwrap();
    let codec = EventCodec::new(&SchemaRegistryConfig {
        url: registry.url(),
        ..SchemaRegistryConfig::default()
    })
    .unwrap();

    println!("events per run: {count}; broker: Tansu memory engine; acks=all, idempotence, lz4, linger.ms=5");
    println!(
        "{:<12} {:>8} {:>14} {:>14} {:>7}",
        "category", "bytes", "raw msg/s", "ledger ev/s", "ratio"
    );
    for category in Category::ALL {
        let sample = event(category, 1);
        let payload = codec.encode(&sample).await.unwrap();
        let keys: Vec<String> = (0..64)
            .map(|n| event(category, n).partition_key().to_owned())
            .collect();
        let raw_topic = format!("bench.raw.{}", category.as_str());
        broker.create_topic(&raw_topic, 3).await.unwrap();
        let raw_rate = raw(&broker.bootstrap(), &raw_topic, &payload, &keys, count).await;

        let started = Instant::now();
        for n in 0..count {
            ledger
                .publish_event(event(category, n as u64))
                .await
                .unwrap();
        }
        let stats = ledger.flush(Duration::from_secs(300)).await.unwrap();
        assert_eq!(stats.failed, 0);
        let ledger_rate = count as f64 / started.elapsed().as_secs_f64();
        println!(
            "{:<12} {:>8} {:>14.0} {:>14.0} {:>7.2}",
            category.as_str(),
            payload.len(),
            raw_rate,
            ledger_rate,
            ledger_rate / raw_rate
        );
    }
}
