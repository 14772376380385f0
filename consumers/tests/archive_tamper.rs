//! The audit archive against a real broker, registry and ClickHouse: an archiver run builds the
//! archive of 230 audit events and two undecodable records on a one-partition topic (a
//! checkpoint every 50 entries, so the last 32 are unsigned), `verify` finds it intact, and then
//! each kind of tampering, done directly in ClickHouse on its own copy of the archive, is caught
//! with the right entry and kind named.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerline_consumers::archive::checkpoint::{self, TrustedKeys};
use ledgerline_consumers::archive::kafka::BrokerView;
use ledgerline_consumers::archive::row::CheckpointRow;
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::archive::verify::{
    self, Decoder, KafkaView, ProblemKind, Report, VerifyOptions,
};
use ledgerline_consumers::archive::{self, ArchiveConfig, ArchiveSettings};
use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_producer::event::{Actor, Outcome};
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{names, Broker, BrokerStorage, Harness, RegistryServer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::ExposeSecret;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const EVENTS: i64 = 230;
/// Offsets of the two undecodable records (published between the events).
const GARBAGE_AT: [i64; 2] = [40, 131];
const ENTRIES: i64 = EVENTS + GARBAGE_AT.len() as i64;
const EVERY: u64 = 50;
/// The last checkpoint covers offsets up to here; the rest is unsigned.
const SIGNED_THROUGH: i64 = (ENTRIES / EVERY as i64) * EVERY as i64 - 1;

/// The archive every test here reads (each tampers with its own copy).
struct Archived {
    _broker: Broker,
    _registry: RegistryServer,
    kafka: KafkaConfig,
    registry_url: String,
    clickhouse: ClickHouseConfig,
    group: String,
    key: checkpoint::ArchiveSigningKey,
    key_file: PathBuf,
    _dir: tempfile::TempDir,
}

static ARCHIVED: OnceCell<Archived> = OnceCell::const_new();

async fn archived() -> &'static Archived {
    ARCHIVED.get_or_init(build_archive).await
}

async fn build_archive() -> Archived {
    let harness = Harness::shared().unwrap();
    let broker = Broker::start(BrokerStorage::Sqlite).unwrap();
    broker
        .create_topic(Category::Audit.topic_name(), 1)
        .await
        .unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let kafka = KafkaConfig {
        brokers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    let clickhouse = ClickHouseConfig {
        url: harness.clickhouse.url(),
        user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
        password: harness.clickhouse.password().into(),
        database: names::database(),
        ..ClickHouseConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let generated = checkpoint::generate().unwrap();
    let key_file = dir.path().join("archive.key");
    std::fs::write(&key_file, generated.secret_file.expose_secret()).unwrap();
    let key = checkpoint::load_signing_key(&generated.secret_file).unwrap();

    // The load: audit events, with two records that are not Avro at all in between.
    let ledger = Ledger::builder("archive-test")
        .config(ProducerConfig {
            service_name: "archive-test".to_owned(),
            linger_ms: 1,
            ..ProducerConfig::default()
        })
        .kafka(kafka.clone())
        .schema_registry(SchemaRegistryConfig {
            url: registry.url(),
            ..SchemaRegistryConfig::default()
        })
        .build()
        .await
        .unwrap();
    let raw: FutureProducer = broker.producer_config().create().unwrap();
    let mut offset = 0;
    for n in 0..EVENTS {
        while GARBAGE_AT.contains(&offset) {
            raw.send(
                FutureRecord::<[u8], [u8]>::to(Category::Audit.topic_name())
                    .payload(b"not avro at all".as_slice()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            offset += 1;
        }
        let event = ledger
            .audit(
                "user.login",
                Actor {
                    id: format!("user-{n}"),
                    kind: "user".to_owned(),
                    ip: "10.0.0.1".to_owned(),
                    user_agent: None,
                },
                "login",
                if n % 7 == 0 {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
                serde_json::json!({ "n": n }),
            )
            .target("account", &format!("acct-{}", n % 13))
            .build();
        // One at a time, so each lands at the next offset.
        ledger.send_event(event).await.unwrap();
        offset += 1;
    }

    let group = names::group();
    let archived = Archived {
        _broker: broker,
        registry_url: registry.url(),
        _registry: registry,
        kafka,
        clickhouse,
        group,
        key,
        key_file,
        _dir: dir,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(archive::run(archived.settings(), shutdown.clone()));
    let view = archived.view();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = view.committed(Category::Audit.topic_name(), 0).unwrap();
        if committed == Some(ENTRIES) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archived only through {committed:?}"
        );
        assert!(
            !task.is_finished(),
            "the archiver stopped: {:?}",
            task.await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    archived
}

impl Archived {
    fn settings(&self) -> ArchiveSettings {
        ArchiveSettings {
            kafka: self.kafka.clone(),
            schema_registry: SchemaRegistryConfig {
                url: self.registry_url.clone(),
                ..SchemaRegistryConfig::default()
            },
            archive: ArchiveConfig {
                consumer: ConsumerSettings {
                    group_id: Some(self.group.clone()),
                    batch_max_wait_ms: 100,
                    ..ConsumerSettings::default()
                },
                listen: format!(
                    "127.0.0.1:{}",
                    ledgerline_tests::process::free_port().unwrap()
                )
                .parse()
                .unwrap(),
                clickhouse: self.clickhouse.clone(),
                signing_key_file: Some(self.key_file.clone()),
                checkpoint_every_records: EVERY,
                checkpoint_every_secs: 3_600,
                ..ArchiveConfig::default()
            },
        }
    }

    fn view(&self) -> BrokerView {
        BrokerView::new(&self.kafka, &self.group).unwrap()
    }

    fn trusted(&self) -> TrustedKeys {
        let mut trusted = TrustedKeys::new();
        trusted.insert(self.key.verifying_key());
        trusted
    }

    fn client(&self) -> clickhouse::Client {
        self.clickhouse.client()
    }

    /// A copy of the archive in a database of its own, with `statements` applied (`{db}` names
    /// the copy) and their mutations finished.
    async fn tampered(&self, statements: &[String]) -> String {
        let client = self.client();
        let db = names::database();
        let src = &self.clickhouse.database;
        for sql in [
            format!("CREATE DATABASE {db}"),
            format!("CREATE TABLE {db}.records AS {src}.records"),
            format!("CREATE TABLE {db}.checkpoints AS {src}.checkpoints"),
            format!("INSERT INTO {db}.records SELECT * FROM {src}.records"),
            format!("INSERT INTO {db}.checkpoints SELECT * FROM {src}.checkpoints"),
        ] {
            client.query(&sql).execute().await.unwrap();
        }
        for statement in statements {
            client
                .query(&statement.replace("{db}", &db))
                .execute()
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pending: u64 = client
                .query("SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0")
                .bind(&db)
                .fetch_one()
                .await
                .unwrap();
            if pending == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mutations in {db} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        db
    }

    async fn verify(&self, db: &str, trusted: &TrustedKeys) -> Report {
        let store = ArchiveStore::new(self.client(), db).unwrap();
        let codec = EventCodec::new(&SchemaRegistryConfig {
            url: self.registry_url.clone(),
            ..SchemaRegistryConfig::default()
        })
        .unwrap();
        let view = self.view();
        verify::verify(
            &store,
            trusted,
            &Decoder::Registry(Arc::new(codec)),
            Some(Arc::new(view) as Arc<dyn KafkaView>),
            &VerifyOptions::default(),
        )
        .await
        .unwrap()
    }

    async fn event_id_at(&self, offset: i64) -> String {
        self.client()
            .query(&format!(
                "SELECT event_id FROM {}.records WHERE `offset` = ?",
                self.clickhouse.database
            ))
            .bind(offset)
            .fetch_one()
            .await
            .unwrap()
    }

    /// Verifies a tampered copy and checks the first problem named: its kind, offset and event.
    async fn assert_caught(&self, statements: &[String], kind: ProblemKind, offset: i64) -> Report {
        let db = self.tampered(statements).await;
        let report = self.verify(&db, &self.trusted()).await;
        let text = report.to_text();
        assert!(!report.intact, "not caught:\n{text}");
        let partition = &report.partitions[0];
        let first = partition.first_problem().unwrap();
        assert_eq!((first.kind, first.offset), (kind, Some(offset)), "{text}");
        assert!(
            text.contains(&format!("first bad: {}: offset {offset}", kind.as_str())),
            "{text}"
        );
        report
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_untouched_archive_verifies_with_its_counts() {
    let archived = archived().await;
    let report = archived
        .verify(&archived.clickhouse.database, &archived.trusted())
        .await;
    let text = report.to_text();
    assert!(report.intact, "{text}");
    let partition = &report.partitions[0];
    assert_eq!(partition.entries, ENTRIES as u64, "{text}");
    assert_eq!(partition.events, EVENTS as u64);
    assert_eq!(partition.undecodable, GARBAGE_AT.len() as u64);
    assert_eq!(partition.gaps, 0);
    assert_eq!(partition.checkpoints, ENTRIES as u64 / EVERY);
    assert_eq!(
        partition.unsigned_entries,
        (ENTRIES - SIGNED_THROUGH - 1) as u64
    );
    assert_eq!(
        partition.last_checkpoint.as_ref().unwrap().last_offset,
        SIGNED_THROUGH
    );
    let kafka = partition.kafka.as_ref().unwrap();
    assert_eq!(
        (kafka.high_watermark, kafka.committed),
        (ENTRIES, Some(ENTRIES))
    );

    // The physical rows: one per offset, the undecodable ones kept with their reason.
    let (rows, distinct, undecodable): (u64, u64, u64) = archived
        .client()
        .query(&format!(
            "SELECT count(), uniqExact(`offset`), countIf(kind = 'undecodable' AND reject_reason != '' AND value = 'not avro at all') FROM {}.records",
            archived.clickhouse.database
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, distinct, undecodable),
        (ENTRIES as u64, ENTRIES as u64, 2)
    );
    // The chain starts at the documented genesis value.
    let first_prev: String = archived
        .client()
        .query(&format!(
            "SELECT prev_hash FROM {}.records WHERE `offset` = 0",
            archived.clickhouse.database
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        first_prev,
        "b340c78a4b745423268179bd14091645b0391cfa0e8ad08b9eb30be4dd2f24a2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_field_is_named() {
    let archived = archived().await;
    let report = archived
        .assert_caught(
            &[
                "ALTER TABLE {db}.records UPDATE actor_id = 'mallory' WHERE `offset` = 120"
                    .to_owned(),
            ],
            ProblemKind::Changed,
            120,
        )
        .await;
    let first = report.partitions[0].first_problem().unwrap();
    assert!(first.detail.contains("actor_id"), "{first:?}");
    assert_eq!(
        first.event_id.as_deref(),
        Some(&*archived.event_id_at(120).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_bytes_are_named() {
    let archived = archived().await;
    // One byte of the value, inside the Avro body.
    archived
        .assert_caught(
            &["ALTER TABLE {db}.records UPDATE value = concat(substring(value, 1, 20), 'X', substring(value, 22)) WHERE `offset` = 150".to_owned()],
            ProblemKind::Changed,
            150,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_deleted_in_the_middle_is_missing() {
    let archived = archived().await;
    archived
        .assert_caught(
            &["ALTER TABLE {db}.records DELETE WHERE `offset` = 77".to_owned()],
            ProblemKind::Missing,
            77,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_rows_deleted_after_the_last_checkpoint_are_a_truncation() {
    let archived = archived().await;
    let cut = SIGNED_THROUGH + 10;
    archived
        .assert_caught(
            &[format!(
                "ALTER TABLE {{db}}.records DELETE WHERE `offset` >= {cut}"
            )],
            ProblemKind::Truncated,
            cut,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_deleted_under_a_checkpoint_are_a_truncation_too() {
    let archived = archived().await;
    // Everything from inside the last signed segment on: the checkpoint names what is gone.
    let cut = SIGNED_THROUGH - 5;
    let report = archived
        .assert_caught(
            &[format!(
                "ALTER TABLE {{db}}.records DELETE WHERE `offset` >= {cut}"
            )],
            ProblemKind::Truncated,
            cut,
        )
        .await;
    assert!(
        report.partitions[0]
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::CheckpointHeadMismatch
                || p.kind == ProblemKind::Truncated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_row_is_inserted() {
    let archived = archived().await;
    // A copy of offset 100 with another actor and its hashes recomputed would still sit at an
    // offset that already has its record; one appended past the end is beyond what Kafka held.
    archived
        .assert_caught(
            &[
                "INSERT INTO {db}.records SELECT * FROM {db}.records WHERE `offset` = 100"
                    .to_owned(),
            ],
            ProblemKind::Inserted,
            100,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_appended_past_what_kafka_held_is_inserted() {
    let archived = archived().await;
    // The forger chains it correctly: only Kafka can tell it was never there.
    let columns = columns(archived).await;
    let select = columns
        .iter()
        .map(|column| match column.as_str() {
            // No aliases: ClickHouse would apply one named `offset` in the WHERE clause too.
            "offset" | "last_offset" => format!("{ENTRIES}"),
            "prev_hash" => "hash".to_owned(),
            other => format!("`{other}`"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let names = column_list(&columns);
    let db = archived
        .tampered(&[format!(
            "INSERT INTO {{db}}.records ({names}) SELECT {select} FROM {{db}}.records WHERE `offset` = {}",
            ENTRIES - 1
        )])
        .await;
    let report = archived.verify(&db, &archived.trusted()).await;
    let text = report.to_text();
    assert!(!report.intact, "{text}");
    assert!(
        report.partitions[0]
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Inserted && p.offset == Some(ENTRIES)),
        "{text}"
    );
}

/// `records`' columns for an `INSERT INTO … (columns)`: system.columns does not list them in
/// table order on 18.16, so inserts name them.
fn column_list(columns: &[String]) -> String {
    columns
        .iter()
        .map(|column| format!("`{column}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn columns(archived: &Archived) -> Vec<String> {
    archived
        .client()
        .query("SELECT name FROM system.columns WHERE database = ? AND table = 'records'")
        .bind(&archived.clickhouse.database)
        .fetch_all()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_rows_with_swapped_contents_are_reordered() {
    let archived = archived().await;
    let columns = columns(archived).await;
    let select = columns
        .iter()
        .map(|column| match column.as_str() {
            "offset" | "last_offset" => "if(`offset` = 60, 61, 60)".to_owned(),
            other => format!("`{other}`"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let names = column_list(&columns);
    let src = &archived.clickhouse.database;
    // The swapped pair is written into the copy in place of the originals.
    let statements = ["ALTER TABLE {db}.records DELETE WHERE `offset` IN (60, 61)".to_owned()];
    let tampered = archived.tampered(&statements).await;
    archived
        .client()
        .query(&format!(
            "INSERT INTO {tampered}.records ({names}) SELECT {select} FROM {src}.records WHERE `offset` IN (60, 61)"
        ))
        .execute()
        .await
        .unwrap();
    let report = archived.verify(&tampered, &archived.trusted()).await;
    let text = report.to_text();
    let first = report.partitions[0].first_problem().unwrap();
    assert_eq!(
        (first.kind, first.offset),
        (ProblemKind::Reordered, Some(60)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_checkpoint_signature_is_a_bad_signature() {
    let archived = archived().await;
    // One hex digit of the signature of the checkpoint through offset 99.
    archived
        .assert_caught(
            &["ALTER TABLE {db}.checkpoints UPDATE signature = concat(if(substring(signature, 1, 1) = '0', '1', '0'), substring(signature, 2)) WHERE last_offset = 99".to_owned()],
            ProblemKind::BadSignature,
            99,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_replaced_by_one_signed_with_an_unknown_key_is_named() {
    let archived = archived().await;
    let original: CheckpointRow = archived
        .client()
        .query(&format!(
            "SELECT ?fields FROM {}.checkpoints WHERE last_offset = 149",
            archived.clickhouse.database
        ))
        .fetch_one()
        .await
        .unwrap();
    let forger =
        checkpoint::load_signing_key(&checkpoint::generate().unwrap().secret_file).unwrap();
    let mut forged = original.to_signed().unwrap().checkpoint;
    forged.key_id = forger.key_id().to_owned();
    let forged = CheckpointRow::from_signed(&forged.sign(&forger).unwrap());
    let db = archived
        .tampered(&["ALTER TABLE {db}.checkpoints DELETE WHERE last_offset = 149".to_owned()])
        .await;
    let mut insert = archived
        .client()
        .with_database(&db)
        .insert::<CheckpointRow>("checkpoints")
        .await
        .unwrap();
    insert.write(&forged).await.unwrap();
    insert.end().await.unwrap();
    let report = archived.verify(&db, &archived.trusted()).await;
    let text = report.to_text();
    let first = report.partitions[0].first_problem().unwrap();
    assert_eq!(
        (first.kind, first.offset),
        (ProblemKind::UnknownKey, Some(149)),
        "{text}"
    );
    assert!(first.detail.contains(forger.key_id()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_trusted_key_fails_every_checkpoint() {
    let archived = archived().await;
    let mut other = TrustedKeys::new();
    other.insert(
        checkpoint::load_signing_key(&checkpoint::generate().unwrap().secret_file)
            .unwrap()
            .verifying_key(),
    );
    let report = archived.verify(&archived.clickhouse.database, &other).await;
    let partition = &report.partitions[0];
    assert!(!report.intact);
    assert_eq!(
        partition.problem_count,
        ENTRIES as u64 / EVERY,
        "{}",
        report.to_text()
    );
    assert!(partition
        .problems
        .iter()
        .all(|p| p.kind == ProblemKind::UnknownKey));
}

impl Archived {
    /// `ledgerline-consumer archive <args>` against the archive in `db`, configured through the
    /// environment as an operator would, as the admin user.
    fn command(&self, db: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"))
            .arg("archive")
            .args(args)
            .env_remove("LEDGERLINE_CONFIG")
            .env("LEDGERLINE_KAFKA__BROKERS", self.kafka.brokers.as_str())
            .env("LEDGERLINE_SCHEMA_REGISTRY__URL", &self.registry_url)
            .env("LEDGERLINE_ARCHIVE__CLICKHOUSE__URL", &self.clickhouse.url)
            .env(
                "LEDGERLINE_ARCHIVE__CLICKHOUSE__USER",
                &self.clickhouse.user,
            )
            .env(
                "LEDGERLINE_ARCHIVE__CLICKHOUSE__PASSWORD",
                self.clickhouse.password.expose_secret(),
            )
            .env("LEDGERLINE_ARCHIVE__CLICKHOUSE__DATABASE", db)
            .env("LEDGERLINE_ARCHIVE__GROUP_ID", &self.group)
            .output()
            .unwrap()
    }

    fn public_key(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_command_exits_by_its_verdict_and_names_the_first_bad_entry() {
    let archived = archived().await;
    let key = archived.public_key();
    let intact = archived.command(
        &archived.clickhouse.database,
        &["verify", "--public-key", &key],
    );
    let stdout = String::from_utf8_lossy(&intact.stdout);
    assert_eq!(
        intact.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(
        stdout.contains("ledgerline.audit/0: intact — 232 entries"),
        "{stdout}"
    );
    assert!(stdout.ends_with("archive intact\n"), "{stdout}");

    let db = archived
        .tampered(&["ALTER TABLE {db}.records DELETE WHERE `offset` = 77".to_owned()])
        .await;
    let broken = archived.command(&db, &["verify", "--public-key", &key]);
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert_eq!(broken.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ledgerline.audit/0: BROKEN"), "{stdout}");
    assert!(stdout.contains("first bad: missing: offset 77"), "{stdout}");

    let json = archived.command(&db, &["verify", "--json", "--public-key", &key]);
    assert_eq!(json.status.code(), Some(1));
    let report: Report = serde_json::from_slice(&json.stdout).unwrap();
    let first = report.partitions[0].first_problem().unwrap();
    assert_eq!((first.kind, first.offset), (ProblemKind::Missing, Some(77)));

    // A key it does not trust: every checkpoint is named, and the exit says broken.
    let other = checkpoint::load_signing_key(&checkpoint::generate().unwrap().secret_file).unwrap();
    let untrusted = archived.command(
        &archived.clickhouse.database,
        &[
            "verify",
            "--public-key",
            &hex::encode(other.verifying_key().as_bytes()),
        ],
    );
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&untrusted.stdout).contains("first bad: unknown key"));

    // It could not run at all (no such server): exit 2, with the reason.
    let unreachable = std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"))
        .args([
            "archive",
            "verify",
            "--no-kafka",
            "--no-decode",
            "--public-key",
            &key,
        ])
        .env_remove("LEDGERLINE_CONFIG")
        .env("LEDGERLINE_ARCHIVE__CLICKHOUSE__URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("Error:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_writes_a_private_key_file_once_and_prints_its_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    let keygen = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"))
            .args(["archive", "keygen", "--out"])
            .arg(&path)
            .env_remove("LEDGERLINE_CONFIG")
            .output()
            .unwrap()
    };
    let first = keygen();
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8_lossy(&first.stdout).to_string();
    let text = std::fs::read_to_string(&path).unwrap();
    let key = checkpoint::load_signing_key(&text.clone().into()).unwrap();
    assert!(
        stdout.contains(&format!("key_id: {}", key.key_id())),
        "{stdout}"
    );
    assert!(stdout.contains(&hex::encode(key.verifying_key().as_bytes())));
    assert!(
        !stdout.contains(text.lines().last().unwrap()),
        "the seed is never printed"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Never overwritten.
    let second = keygen();
    assert_eq!(second.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

/// Flips one byte of `path` at `position` to another printable byte.
fn flip(path: &std::path::Path, position: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position] = if bytes[position] == b'0' { b'1' } else { b'0' };
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_checks_with_the_public_key_alone_and_fails_after_a_one_byte_edit() {
    let archived = archived().await;
    let key = archived.public_key();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proof.json");
    let event_id = archived.event_id_at(120).await;
    let db = &archived.clickhouse.database;
    let prove = archived.command(db, &["prove", &event_id, "--out", path.to_str().unwrap()]);
    assert!(prove.status.success(), "{prove:?}");
    let check = |path: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"))
            .args(["archive", "check-proof"])
            .arg(path)
            .args(["--public-key", &key])
            .env_remove("LEDGERLINE_CONFIG")
            .output()
            .unwrap()
    };
    let checked = check(&path);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(
        checked.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        stdout.contains(&event_id) && stdout.contains("\"offset\":120"),
        "{stdout}"
    );

    // A one-byte edit anywhere: spread over the file, every edit fails the check.
    let original = std::fs::read(&path).unwrap();
    let step = (original.len() / 40).max(1);
    for position in (0..original.len()).step_by(step) {
        if original[position].is_ascii_whitespace() {
            continue;
        }
        std::fs::write(&path, &original).unwrap();
        flip(&path, position);
        if std::fs::read(&path).unwrap() == original {
            continue;
        }
        let edited = check(&path);
        assert_eq!(
            edited.status.code(),
            Some(1),
            "byte {position} edited, still accepted: {}",
            String::from_utf8_lossy(&edited.stdout)
        );
    }

    // After the last checkpoint there is no proof yet, and prove says so.
    let unsigned = archived.event_id_at(SIGNED_THROUGH + 5).await;
    let refused = archived.command(db, &["prove", &unsigned]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("checkpoint"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_verifies_offline_and_fails_after_a_one_byte_edit_in_any_file() {
    let archived = archived().await;
    let key = archived.public_key();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundle");
    let db = &archived.clickhouse.database;
    let export = archived.command(
        db,
        &[
            "export",
            "--from",
            "60",
            "--to",
            "140",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(export.status.success(), "{export:?}");
    let verify_bundle = || {
        // Offline: no ClickHouse, Kafka or registry is configured.
        std::process::Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"))
            .args(["archive", "verify", "--bundle"])
            .arg(&out)
            .args(["--public-key", &key])
            .env_remove("LEDGERLINE_CONFIG")
            .output()
            .unwrap()
    };
    let verified = verify_bundle();
    let stdout = String::from_utf8_lossy(&verified.stdout);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(stdout.contains("archive intact"), "{stdout}");

    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let original = std::fs::read(file).unwrap();
        for position in [original.len() / 3, original.len() / 2, original.len() - 2] {
            if original[position].is_ascii_whitespace() {
                continue;
            }
            flip(file, position);
            let edited = verify_bundle();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&edited.stdout),
                String::from_utf8_lossy(&edited.stderr)
            );
            assert_ne!(
                edited.status.code(),
                Some(0),
                "{} byte {position} edited, still intact: {said}",
                file.display()
            );
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(
                said.contains(name) || said.contains("BROKEN"),
                "{name} byte {position}: {said}"
            );
            std::fs::write(file, &original).unwrap();
        }
    }
    assert_eq!(verify_bundle().status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_relabelled_undecodable_is_named() {
    let archived = archived().await;
    // Hidden from searches and proofs: kind is not hashed, and every event column blanked.
    let blank = "kind = 'undecodable', reject_reason = 'corrupt_avro', event_id = '', \
                 occurred_at_us = 0, name = '', level = '', service = '', service_version = '', \
                 host = '', message = '', trace_id = NULL, span_id = NULL, request_id = NULL, \
                 attr_keys = emptyArrayString(), attr_values = emptyArrayString(), actor_id = '', \
                 actor_kind = '', actor_ip = '', actor_user_agent = NULL, action = '', \
                 target_kind = NULL, target_id = NULL, outcome = '', reason = NULL, details = ''";
    let report = archived
        .assert_caught(
            &[format!(
                "ALTER TABLE {{db}}.records UPDATE {blank} WHERE `offset` = 120"
            )],
            ProblemKind::Changed,
            120,
        )
        .await;
    let first = report.partitions[0].first_problem().unwrap();
    assert!(
        first.detail.contains("decode into a valid event"),
        "{first:?}"
    );
    assert_eq!(
        first.event_id.as_deref(),
        Some(&*archived.event_id_at(120).await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_signed_by_another_trusted_key_without_a_rotation_is_named() {
    let archived = archived().await;
    // The verifier trusts both keys (as during a rotation), but no checkpoint announced the
    // second: it cannot take over.
    let other = checkpoint::load_signing_key(&checkpoint::generate().unwrap().secret_file).unwrap();
    let original: CheckpointRow = archived
        .client()
        .query(&format!(
            "SELECT ?fields FROM {}.checkpoints WHERE last_offset = 149",
            archived.clickhouse.database
        ))
        .fetch_one()
        .await
        .unwrap();
    let mut resigned = original.to_signed().unwrap().checkpoint;
    resigned.key_id = other.key_id().to_owned();
    let resigned = CheckpointRow::from_signed(&resigned.sign(&other).unwrap());
    let db = archived
        .tampered(&["ALTER TABLE {db}.checkpoints DELETE WHERE last_offset = 149".to_owned()])
        .await;
    let mut insert = archived
        .client()
        .with_database(&db)
        .insert::<CheckpointRow>("checkpoints")
        .await
        .unwrap();
    insert.write(&resigned).await.unwrap();
    insert.end().await.unwrap();
    let mut trusted = archived.trusted();
    trusted.insert(other.verifying_key());
    let report = archived.verify(&db, &trusted).await;
    let text = report.to_text();
    let first = report.partitions[0].first_problem().unwrap();
    assert_eq!(
        (first.kind, first.offset),
        (ProblemKind::UnknownKey, Some(149)),
        "{text}"
    );
    assert!(first.detail.contains("no rotation announced"), "{text}");
}
