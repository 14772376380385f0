//! The archiver process under a 50,000-event audit load: SIGKILLed three times (and restarted
//! at once each time), and, separately, a two-member group that rebalances twice during the
//! load. Afterwards every partition's chain verifies intact against Kafka, with one physical
//! row per offset: no gap, no duplicate, no fork.
//!
//! SQLite-engine broker: runs resume from committed offsets inside producer batches (see
//! `projector_crash.rs` for why the memory engine cannot host that).

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerline_consumers::archive::checkpoint::{self, TrustedKeys};
use ledgerline_consumers::archive::kafka::BrokerView;
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::archive::verify::{self, Decoder, KafkaView, VerifyOptions};
use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_producer::event::{Actor, Outcome};
use ledgerline_producer::ProducerConfig;
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::names;
use ledgerline_tests::process::ManagedChild;
use secrecy::ExposeSecret;

mod support;
use support::ProcessStack;

const EVENTS: u64 = 50_000;
const PARTITIONS: i32 = 4;
const LOAD_CHUNK: u64 = 250;
const LOAD_TICK: Duration = Duration::from_millis(100);

/// `ledgerline-consumer archive` for a test's servers, through the environment; a checkpoint
/// every 1,000 entries or 2 s. Returns the command and its `/health` address.
fn archive_command(
    stack: &ProcessStack,
    group: &str,
    key_file: &Path,
    dir: &Path,
) -> (Command, String) {
    let listen = format!(
        "127.0.0.1:{}",
        ledgerline_tests::process::free_port().unwrap()
    );
    let clickhouse = &stack.clickhouse;
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"));
    command
        .arg("archive")
        .current_dir(dir)
        .env_remove("LEDGERLINE_CONFIG")
        .env("RUST_LOG", "info")
        .env("LEDGERLINE_KAFKA__BROKERS", stack.broker.bootstrap())
        .env("LEDGERLINE_SCHEMA_REGISTRY__URL", stack.registry.url())
        .env("LEDGERLINE_ARCHIVE__CLICKHOUSE__URL", &clickhouse.url)
        .env("LEDGERLINE_ARCHIVE__CLICKHOUSE__USER", &clickhouse.user)
        .env(
            "LEDGERLINE_ARCHIVE__CLICKHOUSE__PASSWORD",
            clickhouse.password.expose_secret(),
        )
        .env(
            "LEDGERLINE_ARCHIVE__CLICKHOUSE__DATABASE",
            &clickhouse.database,
        )
        .env("LEDGERLINE_ARCHIVE__GROUP_ID", group)
        .env("LEDGERLINE_ARCHIVE__LISTEN", &listen)
        .env("LEDGERLINE_ARCHIVE__SIGNING_KEY_FILE", key_file)
        .env("LEDGERLINE_ARCHIVE__BATCH_MAX_EVENTS", "2000")
        .env("LEDGERLINE_ARCHIVE__BATCH_MAX_WAIT_MS", "200")
        .env("LEDGERLINE_ARCHIVE__CHECKPOINT_EVERY_RECORDS", "1000")
        .env("LEDGERLINE_ARCHIVE__CHECKPOINT_EVERY_SECS", "2");
    (command, listen)
}

struct Run {
    stack: ProcessStack,
    group: String,
    key: checkpoint::ArchiveSigningKey,
    key_file: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Run {
    async fn start() -> Self {
        let stack = ProcessStack::start();
        stack
            .broker
            .create_topic(Category::Audit.topic_name(), PARTITIONS)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let generated = checkpoint::generate().unwrap();
        let key_file = dir.path().join("archive.key");
        std::fs::write(&key_file, generated.secret_file.expose_secret()).unwrap();
        Self {
            key: checkpoint::load_signing_key(&generated.secret_file).unwrap(),
            stack,
            group: names::group(),
            key_file,
            dir,
        }
    }

    fn spawn(&self, name: &str) -> ManagedChild {
        let (command, _listen) =
            archive_command(&self.stack, &self.group, &self.key_file, self.dir.path());
        ManagedChild::spawn(name, command, &self.dir.path().join(format!("{name}.log"))).unwrap()
    }

    fn log(&self, name: &str) -> String {
        ledgerline_tests::process::tail(&self.dir.path().join(format!("{name}.log")), 30)
    }

    /// Publishes the load at a steady rate; `hold` is awaited before the last tenth.
    async fn load(&self, hold: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let ledger = self
            .stack
            .ledger(
                "archive-crash",
                ProducerConfig {
                    linger_ms: 5,
                    ..ProducerConfig::default()
                },
            )
            .await;
        tokio::spawn(async move {
            let mut hold = hold;
            let mut ticks = tokio::time::interval(LOAD_TICK);
            for n in 0..EVENTS {
                if n % LOAD_CHUNK == 0 {
                    ticks.tick().await;
                }
                if n == EVENTS / 10 * 9 {
                    hold.wait_for(|go| *go).await.unwrap();
                }
                let event = ledger
                    .audit(
                        "permission.change",
                        Actor {
                            id: format!("user-{}", n % 101),
                            kind: "user".to_owned(),
                            ip: "10.1.2.3".to_owned(),
                            user_agent: None,
                        },
                        "grant",
                        Outcome::Success,
                        serde_json::json!({ "n": n }),
                    )
                    .target("role", &format!("role-{}", n % 7))
                    .build();
                ledger.publish_event(event).await.unwrap();
            }
            let stats = ledger.flush(Duration::from_secs(120)).await.unwrap();
            assert_eq!(stats.failed, 0);
        })
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.stack.broker.bootstrap(),
            ..KafkaConfig::default()
        }
    }

    /// Waits until the group committed every partition's high watermark.
    async fn wait_archived(&self, what: &str) {
        let view = BrokerView::new(&self.kafka(), &self.group).unwrap();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut behind = 0;
            for partition in 0..PARTITIONS {
                let (_, high) = view
                    .watermarks(Category::Audit.topic_name(), partition)
                    .unwrap();
                let committed = view
                    .committed(Category::Audit.topic_name(), partition)
                    .unwrap()
                    .unwrap_or(0);
                behind += high - committed;
            }
            if behind == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {behind} records not archived after 180 s"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Verify passes against Kafka, and the physical rows are exactly one per event.
    async fn assert_intact(&self) {
        let clickhouse: &ClickHouseConfig = &self.stack.clickhouse;
        let store = ArchiveStore::new(clickhouse.client(), &clickhouse.database).unwrap();
        let mut trusted = TrustedKeys::new();
        trusted.insert(self.key.verifying_key());
        let codec = EventCodec::new(&SchemaRegistryConfig {
            url: self.stack.registry.url(),
            ..SchemaRegistryConfig::default()
        })
        .unwrap();
        let view = BrokerView::new(&self.kafka(), &self.group).unwrap();
        let report = verify::verify(
            &store,
            &trusted,
            &Decoder::Registry(Arc::new(codec)),
            Some(Arc::new(view) as Arc<dyn KafkaView>),
            &VerifyOptions::default(),
        )
        .await
        .unwrap();
        let text = report.to_text();
        eprintln!("{text}");
        assert!(report.intact, "{text}");
        assert_eq!(report.partitions.len(), PARTITIONS as usize, "{text}");
        let (rows, distinct, events, gaps): (u64, u64, u64, u64) = clickhouse
            .client()
            .query(&format!(
                "SELECT count(), uniqExact(`partition`, `offset`), uniqExact(event_id), countIf(kind != 'event') FROM {}.records",
                clickhouse.database
            ))
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(
            (rows, distinct, events, gaps),
            (EVENTS, EVENTS, EVENTS, 0),
            "{text}"
        );
        // A checkpoint every 1,000 entries at least, whatever the kills cut short.
        for partition in &report.partitions {
            assert!(
                partition.checkpoints >= partition.entries / 1000,
                "{}/{}: {} checkpoints for {} entries",
                partition.topic,
                partition.partition,
                partition.checkpoints,
                partition.entries
            );
        }
    }
}

/// A pseudo-random duration below `max`.
fn jitter(max: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128();
    Duration::from_millis((random % max.as_millis().max(1)) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_archiver_resumes_its_chains_without_gap_duplicate_or_fork() {
    let run = Run::start().await;
    let (go, hold) = tokio::sync::watch::channel(false);
    let load = run.load(hold).await;
    let mut kills = 0;
    while kills < 3 {
        let mut archiver = run.spawn("archive");
        // Let it archive a while, then kill it at a random moment: mid-fetch, mid-insert,
        // between the records insert and its checkpoint, or before the commit.
        tokio::time::sleep(Duration::from_millis(1500) + jitter(Duration::from_millis(2000))).await;
        assert!(
            archiver.is_running(),
            "archiver exited: {}",
            run.log("archive")
        );
        archiver.kill();
        kills += 1;
        eprintln!(
            "kill {kills}, load {}",
            if load.is_finished() {
                "done"
            } else {
                "running"
            }
        );
    }
    go.send_replace(true);
    load.await.unwrap();
    let mut archiver = run.spawn("archive");
    run.wait_archived("after three kills").await;
    archiver.terminate(Duration::from_secs(20));
    run.assert_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_archivers_rebalancing_during_the_load_keep_every_chain_intact() {
    let run = Run::start().await;
    let (go, hold) = tokio::sync::watch::channel(false);
    let load = run.load(hold).await;
    let mut first = run.spawn("first");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A second member joins: the partitions are split between the two.
    let mut second = run.spawn("second");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(first.is_running(), "first exited: {}", run.log("first"));
    assert!(second.is_running(), "second exited: {}", run.log("second"));
    // The first leaves gracefully: the second takes every partition over.
    first.terminate(Duration::from_secs(20));
    go.send_replace(true);
    load.await.unwrap();
    run.wait_archived("after two rebalances").await;
    second.terminate(Duration::from_secs(20));
    run.assert_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_killed_during_the_load_costs_no_entry_and_no_duplicate() {
    // A server of its own, killed in the middle of inserts: an insert cut short may still be
    // stored (whole or a prefix), and the archiver must read its head again rather than write
    // those entries twice.
    let mut server = ledgerline_tests::ClickHouseServer::start().unwrap();
    let mut run = Run::start().await;
    run.stack.clickhouse.url = server.url();
    run.stack.clickhouse.password = server.password().into();
    let (go, hold) = tokio::sync::watch::channel(true);
    let load = run.load(hold).await;
    let mut archiver = run.spawn("archive");
    for outage in 0..2 {
        tokio::time::sleep(Duration::from_secs(3) + jitter(Duration::from_millis(1500))).await;
        server.kill();
        eprintln!("clickhouse down ({outage})");
        tokio::time::sleep(Duration::from_secs(4)).await;
        server.restart().unwrap();
        assert!(
            archiver.is_running(),
            "archiver exited: {}",
            run.log("archive")
        );
    }
    load.await.unwrap();
    drop(go);
    run.wait_archived("after two clickhouse outages").await;
    archiver.terminate(Duration::from_secs(20));
    run.assert_intact().await;
}
