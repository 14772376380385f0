//! When the archiver signs: every T seconds even on a partition that receives nothing more
//! while another keeps it busy; and across a key rotation, where an archiver run signs with key
//! A, the next run is given key B as its signing key and A as the previous one, so A announces B
//! in a signed checkpoint and B signs from then on. Both keys verify the whole archive; either
//! one alone does not.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerline_consumers::archive::checkpoint::{self, ArchiveSigningKey, TrustedKeys};
use ledgerline_consumers::archive::kafka::BrokerView;
use ledgerline_consumers::archive::row::CheckpointRow;
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::archive::verify::{self, Decoder, KafkaView, ProblemKind, VerifyOptions};
use ledgerline_consumers::archive::{self, ArchiveConfig, ArchiveSettings};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_producer::event::{Actor, Outcome};
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_schemas::Category;
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::names;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

mod support;
use support::ProcessStack;

fn new_key(dir: &std::path::Path, name: &str) -> (ArchiveSigningKey, PathBuf) {
    let generated = checkpoint::generate().unwrap();
    let path = dir.join(name);
    std::fs::write(&path, generated.secret_file.expose_secret()).unwrap();
    (
        checkpoint::load_signing_key(&generated.secret_file).unwrap(),
        path,
    )
}

async fn publish(ledger: &Ledger, from: u64, to: u64) {
    for n in from..to {
        let event = ledger
            .audit(
                "user.logout",
                Actor {
                    id: format!("user-{n}"),
                    kind: "user".to_owned(),
                    ip: "10.0.0.9".to_owned(),
                    user_agent: None,
                },
                "logout",
                Outcome::Success,
                serde_json::json!({}),
            )
            .build();
        ledger.send_event(event).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_signed_by_the_old_key_and_both_keys_verify_the_archive() {
    let stack = ProcessStack::start();
    let topic = Category::Audit.topic_name();
    stack.broker.create_topic(topic, 1).await.unwrap();
    let ledger = stack
        .ledger("rotation-test", ProducerConfig::default())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (old, old_file) = new_key(dir.path(), "old.key");
    let (new, new_file) = new_key(dir.path(), "new.key");
    let group = names::group();
    let kafka = KafkaConfig {
        brokers: stack.broker.bootstrap(),
        ..KafkaConfig::default()
    };
    let settings = |current: &PathBuf, previous: Option<&PathBuf>| ArchiveSettings {
        kafka: kafka.clone(),
        schema_registry: SchemaRegistryConfig {
            url: stack.registry.url(),
            ..SchemaRegistryConfig::default()
        },
        archive: ArchiveConfig {
            consumer: ConsumerSettings {
                group_id: Some(group.clone()),
                batch_max_wait_ms: 100,
                ..ConsumerSettings::default()
            },
            listen: format!(
                "127.0.0.1:{}",
                ledgerline_tests::process::free_port().unwrap()
            )
            .parse()
            .unwrap(),
            clickhouse: stack.clickhouse.clone(),
            signing_key_file: Some(current.clone()),
            previous_signing_key_file: previous.cloned(),
            checkpoint_every_records: 10,
            checkpoint_every_secs: 3_600,
            ..ArchiveConfig::default()
        },
    };
    let view = Arc::new(BrokerView::new(&kafka, &group).unwrap());
    let run_until = |settings: ArchiveSettings, committed: i64| {
        let view = &view;
        async move {
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(archive::run(settings, shutdown.clone()));
            let deadline = Instant::now() + Duration::from_secs(60);
            while view.committed(topic, 0).unwrap() != Some(committed) {
                assert!(
                    Instant::now() < deadline,
                    "not archived through {committed}"
                );
                assert!(!task.is_finished());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shutdown.cancel();
            task.await.unwrap().unwrap();
        }
    };

    publish(&ledger, 0, 30).await;
    run_until(settings(&old_file, None), 30).await;
    publish(&ledger, 30, 55).await;
    run_until(settings(&new_file, Some(&old_file)), 55).await;

    let store = ArchiveStore::new(stack.clickhouse.client(), &stack.clickhouse.database).unwrap();
    let checkpoints: Vec<CheckpointRow> = store.checkpoints(topic, 0).await.unwrap();
    let signers: Vec<(&str, Option<&str>)> = checkpoints
        .iter()
        .map(|row| (row.key_id.as_str(), row.next_key_id.as_deref()))
        .collect();
    let rotation = signers
        .iter()
        .position(|(_, next)| next.is_some())
        .expect("a rotation checkpoint");
    assert_eq!(
        signers[rotation],
        (old.key_id(), Some(new.key_id())),
        "{signers:?}"
    );
    assert!(
        signers[..rotation]
            .iter()
            .all(|(key, next)| *key == old.key_id() && next.is_none()),
        "{signers:?}"
    );
    assert!(!signers[rotation + 1..].is_empty(), "{signers:?}");
    assert!(
        signers[rotation + 1..]
            .iter()
            .all(|(key, _)| *key == new.key_id()),
        "{signers:?}"
    );

    let verify_with = |keys: Vec<&ArchiveSigningKey>| {
        let mut trusted = TrustedKeys::new();
        for key in keys {
            trusted.insert(key.verifying_key());
        }
        let (store, view) = (&store, &view);
        async move {
            verify::verify(
                store,
                &trusted,
                &Decoder::None,
                Some(Arc::clone(view) as Arc<dyn KafkaView>),
                &VerifyOptions::default(),
            )
            .await
            .unwrap()
        }
    };
    let both = verify_with(vec![&old, &new]).await;
    assert!(both.intact, "{}", both.to_text());
    assert_eq!(both.partitions[0].entries, 55);

    let only_new = verify_with(vec![&new]).await;
    let first = only_new.partitions[0].first_problem().unwrap();
    assert_eq!(
        (first.kind, first.offset),
        (ProblemKind::UnknownKey, Some(9)),
        "{}",
        only_new.to_text()
    );
    let only_old = verify_with(vec![&old]).await;
    assert!(!only_old.intact);
    assert!(
        only_old.partitions[0]
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::UnknownKey),
        "{}",
        only_old.to_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_is_signed_on_time_while_another_stays_busy() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let stack = ProcessStack::start();
    let topic = Category::Audit.topic_name();
    stack.broker.create_topic(topic, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_key, key_file) = new_key(dir.path(), "archive.key");
    let group = names::group();
    let settings = ArchiveSettings {
        kafka: KafkaConfig {
            brokers: stack.broker.bootstrap(),
            ..KafkaConfig::default()
        },
        schema_registry: SchemaRegistryConfig {
            url: stack.registry.url(),
            ..SchemaRegistryConfig::default()
        },
        archive: ArchiveConfig {
            consumer: ConsumerSettings {
                group_id: Some(group.clone()),
                batch_max_wait_ms: 100,
                ..ConsumerSettings::default()
            },
            listen: format!(
                "127.0.0.1:{}",
                ledgerline_tests::process::free_port().unwrap()
            )
            .parse()
            .unwrap(),
            clickhouse: stack.clickhouse.clone(),
            signing_key_file: Some(key_file),
            checkpoint_every_records: 1_000,
            checkpoint_every_secs: 2,
            ..ArchiveConfig::default()
        },
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(archive::run(settings, shutdown.clone()));
    // Records that do not decode are archived all the same: enough for this test.
    let producer: FutureProducer = stack.broker.producer_config().create().unwrap();
    let send = |partition: i32| {
        let producer = producer.clone();
        async move {
            producer
                .send(
                    FutureRecord::<[u8], [u8]>::to(topic)
                        .partition(partition)
                        .payload(b"opaque".as_slice()),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    };
    for _ in 0..5 {
        send(1).await;
    }
    let store = ArchiveStore::new(stack.clickhouse.client(), &stack.clickhouse.database).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Partition 0 gets a record every 100 ms, so the archiver is never idle.
        send(0).await;
        let signed = store
            .checkpoints(topic, 1)
            .await
            .unwrap_or_default()
            .iter()
            .map(|row| row.count)
            .sum::<u64>();
        if signed == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partition 1's entries unsigned after 30 s"
        );
        assert!(!task.is_finished());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_retention_deletes_every_signed_entry_the_chain_goes_on_from_the_last_checkpoint() {
    let stack = ProcessStack::start();
    let topic = Category::Audit.topic_name();
    stack.broker.create_topic(topic, 1).await.unwrap();
    let ledger = stack
        .ledger("retention-test", ProducerConfig::default())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (key, key_file) = new_key(dir.path(), "archive.key");
    let group = names::group();
    let kafka = KafkaConfig {
        brokers: stack.broker.bootstrap(),
        ..KafkaConfig::default()
    };
    let settings = || ArchiveSettings {
        kafka: kafka.clone(),
        schema_registry: SchemaRegistryConfig {
            url: stack.registry.url(),
            ..SchemaRegistryConfig::default()
        },
        archive: ArchiveConfig {
            consumer: ConsumerSettings {
                group_id: Some(group.clone()),
                batch_max_wait_ms: 100,
                ..ConsumerSettings::default()
            },
            listen: format!(
                "127.0.0.1:{}",
                ledgerline_tests::process::free_port().unwrap()
            )
            .parse()
            .unwrap(),
            clickhouse: stack.clickhouse.clone(),
            signing_key_file: Some(key_file.clone()),
            checkpoint_every_records: 10,
            checkpoint_every_secs: 3_600,
            ..ArchiveConfig::default()
        },
    };
    let view = Arc::new(BrokerView::new(&kafka, &group).unwrap());
    let run_until = |committed: i64| {
        let (view, settings) = (Arc::clone(&view), settings());
        async move {
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(archive::run(settings, shutdown.clone()));
            let deadline = Instant::now() + Duration::from_secs(60);
            while view.committed(topic, 0).unwrap() != Some(committed) {
                assert!(
                    Instant::now() < deadline,
                    "not archived through {committed}"
                );
                assert!(!task.is_finished());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shutdown.cancel();
            task.await.unwrap().unwrap();
        }
    };
    publish(&ledger, 0, 30).await;
    run_until(30).await;

    // Retention as docs/archive.md describes it: whole signed segments, here all of them.
    let store = ArchiveStore::new(stack.clickhouse.client(), &stack.clickhouse.database).unwrap();
    let last = store.last_checkpoint(topic, 0).await.unwrap().unwrap();
    assert_eq!(last.last_offset, 29);
    let admin = stack.clickhouse.client();
    admin
        .query(&format!(
            "ALTER TABLE {}.records DELETE WHERE topic = ? AND `partition` = 0 AND last_offset <= ?",
            stack.clickhouse.database
        ))
        .bind(topic)
        .bind(last.last_offset)
        .execute()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.head(topic, 0).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the retention delete did not apply"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    publish(&ledger, 30, 45).await;
    run_until(45).await;
    let entries = store.hashes_after(topic, 0, -1).await.unwrap();
    assert_eq!(
        entries.first().map(|entry| entry.offset),
        Some(30),
        "no re-archiving from 0"
    );
    let first: String = admin
        .query(&format!(
            "SELECT prev_hash FROM {}.records WHERE `offset` = 30",
            stack.clickhouse.database
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        first, last.head_hash,
        "the chain goes on from the checkpoint's head"
    );

    let mut trusted = TrustedKeys::new();
    trusted.insert(key.verifying_key());
    let report = verify::verify(
        &store,
        &trusted,
        &Decoder::None,
        Some(Arc::clone(&view) as Arc<dyn KafkaView>),
        &VerifyOptions {
            from: Some(30),
            ..VerifyOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(report.intact, "{}", report.to_text());
    assert_eq!(report.partitions[0].entries, 15);
}
