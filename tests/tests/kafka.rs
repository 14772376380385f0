//! The broker the harness starts behaves like Kafka for everything Ledgerline relies on:
//! admin-created topics, idempotent acks=all produce, consumer groups, committed offsets, and a
//! restarted consumer resuming where its group committed. One difference between Tansu's
//! engines matters to consumers and is pinned here: where a fetch inside a record batch starts.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ledgerline_tests::{names, Broker, BrokerStorage, Harness};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

async fn produce(harness: &Harness, topic: &str, count: usize) {
    let producer: FutureProducer = harness.broker.producer_config().create().unwrap();
    for i in 0..count {
        let payload = format!("message-{i}");
        producer
            .send(
                FutureRecord::to(topic).key("one-key").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

async fn next_payload(consumer: &StreamConsumer) -> (i64, String) {
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("no message within 30s")
        .unwrap();
    let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
    (message.offset(), payload)
}

#[tokio::test]
async fn admin_client_creates_topics_with_the_requested_partitions() {
    let harness = Harness::shared().unwrap();
    let topic = names::topic();
    let admin: AdminClient<DefaultClientContext> = harness.broker.client_config().create().unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let new_topic = NewTopic::new(&topic, 4, TopicReplication::Fixed(1));
    let results = admin.create_topics([&new_topic], &options).await.unwrap();
    assert_eq!(results, vec![Ok(topic.clone())]);

    // Creating it again is refused, which is how `up` and services detect existing topics.
    let again = admin.create_topics([&new_topic], &options).await.unwrap();
    assert_eq!(
        again,
        vec![Err((topic.clone(), RDKafkaErrorCode::TopicAlreadyExists))]
    );

    let consumer: StreamConsumer = harness.broker.client_config().create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .unwrap();
    let described = &metadata.topics()[0];
    assert_eq!(described.name(), topic);
    assert_eq!(described.partitions().len(), 4);
}

#[tokio::test]
async fn restarted_consumer_resumes_at_the_committed_offset() {
    let harness = Harness::shared().unwrap();
    let topic = names::topic();
    let group = names::group();
    harness.broker.create_topic(&topic, 1).await.unwrap();
    produce(harness, &topic, 10).await;

    // First consumer: read four messages, commit after the fourth, then "crash" (drop) after
    // reading a fifth it never commits.
    {
        let consumer: StreamConsumer = harness.broker.consumer_config(&group).create().unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        for expected in 0..4 {
            let (offset, payload) = next_payload(&consumer).await;
            assert_eq!(offset, expected);
            assert_eq!(payload, format!("message-{expected}"));
        }
        let mut position = TopicPartitionList::new();
        position
            .add_partition_offset(&topic, 0, Offset::Offset(4))
            .unwrap();
        consumer.commit(&position, CommitMode::Sync).unwrap();
        let (uncommitted, _) = next_payload(&consumer).await;
        assert_eq!(uncommitted, 4);

        let committed = consumer.committed(Duration::from_secs(10)).unwrap();
        let partition = committed.find_partition(&topic, 0).unwrap();
        assert_eq!(partition.offset(), Offset::Offset(4));
    }

    // Second consumer in the same group: resumes at the committed offset, so message 4 is read
    // again (at-least-once) and nothing before it is.
    let consumer: StreamConsumer = harness.broker.consumer_config(&group).create().unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    for _ in 4..10 {
        seen.push(next_payload(&consumer).await);
    }
    let expected: Vec<(i64, String)> = (4..10).map(|i| (i, format!("message-{i}"))).collect();
    assert_eq!(seen, expected);

    // A different group is independent and starts from the beginning.
    let other: StreamConsumer = harness
        .broker
        .consumer_config(&names::group())
        .create()
        .unwrap();
    other.subscribe(&[&topic]).unwrap();
    assert_eq!(next_payload(&other).await, (0, "message-0".to_owned()));
}

#[tokio::test]
async fn keyed_messages_keep_their_order_within_a_partition() {
    let harness = Harness::shared().unwrap();
    let topic = names::topic();
    harness.broker.create_topic(&topic, 3).await.unwrap();
    produce(harness, &topic, 50).await;

    let consumer: StreamConsumer = harness
        .broker
        .consumer_config(&names::group())
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut payloads = Vec::new();
    let mut partitions = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("no message within 30s")
            .unwrap();
        partitions.insert(message.partition());
        payloads.push(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    // One key, one partition, producer order preserved.
    assert_eq!(partitions.len(), 1);
    let expected: Vec<String> = (0..50).map(|i| format!("message-{i}")).collect();
    assert_eq!(payloads, expected);
}

/// Kafka answers a fetch at an offset inside a record batch with that whole batch, and the
/// client skips the records before the offset, so a consumer resuming from any committed
/// offset sees every later record. Tansu 0.6.0's SQLite engine stores records one by one and
/// does the same. Its memory engine returns only the batches that start at or after the
/// offset, skipping the rest of the batch the offset is in: tests that resume consumers in the
/// middle of a load (the projector crash test) must use the SQLite engine. If the memory
/// assertion fails after a Tansu upgrade, the memory engine can host those tests again.
#[tokio::test]
async fn tansu_engines_and_mid_batch_fetches() {
    for (storage, first_offset_served) in [(BrokerStorage::Sqlite, 4), (BrokerStorage::Memory, 10)]
    {
        let broker = Broker::start(storage).unwrap();
        let topic = names::topic();
        broker.create_topic(&topic, 1).await.unwrap();
        // Two batches of ten: a long linger and sends that are queued before any is awaited.
        let producer: FutureProducer = broker
            .producer_config()
            .set("linger.ms", "500")
            .create()
            .unwrap();
        for batch in 0..2 {
            let deliveries: Vec<_> = (0..10)
                .map(|n| {
                    let payload = format!("batch-{batch}-{n}");
                    producer
                        .send_result(FutureRecord::<(), _>::to(&topic).payload(&payload))
                        .unwrap()
                })
                .collect();
            for delivery in deliveries {
                delivery.await.unwrap().unwrap();
            }
        }

        let consumer: BaseConsumer = broker.consumer_config(&names::group()).create().unwrap();
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(4))
            .unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let served = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "{storage:?}: nothing served"
            );
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                break message.unwrap().offset();
            }
        };
        assert_eq!(served, first_offset_served, "{storage:?}");
    }
}
