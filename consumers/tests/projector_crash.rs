//! The projector process is SIGKILLed three times during a 100,000-event load and restarted;
//! afterwards the read queries the query API uses see every event exactly once.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use ledgerline_consumers::clickhouse::{queries, ClickHouseConfig, EventFilter};
use ledgerline_producer::event::{ConnectionPhase, JobStatus, Level, Outcome};
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_tests::process::ManagedChild;
use ledgerline_tests::{names, Broker, BrokerStorage, Harness, RegistryServer};

const EVENTS: u64 = 100_000;

fn projector_command(
    broker: &Broker,
    registry: &RegistryServer,
    clickhouse: &ClickHouseConfig,
    group: &str,
    dir: &std::path::Path,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"));
    command
        .arg("clickhouse")
        .current_dir(dir)
        .env_remove("LEDGERLINE_CONFIG")
        .env("RUST_LOG", "info")
        .env("LEDGERLINE_KAFKA__BROKERS", broker.bootstrap())
        .env("LEDGERLINE_SCHEMA_REGISTRY__URL", registry.url())
        .env("LEDGERLINE_CLICKHOUSE__URL", &clickhouse.url)
        .env("LEDGERLINE_CLICKHOUSE__USER", &clickhouse.user)
        .env("LEDGERLINE_CLICKHOUSE__PASSWORD", &clickhouse.password)
        .env("LEDGERLINE_CLICKHOUSE__DATABASE", &clickhouse.database)
        .env("LEDGERLINE_PROJECTOR__GROUP_ID", group)
        .env("LEDGERLINE_PROJECTOR__LISTEN", "127.0.0.1:0")
        .env("LEDGERLINE_PROJECTOR__BATCH_MAX_EVENTS", "3000")
        .env("LEDGERLINE_PROJECTOR__BATCH_MAX_WAIT_MS", "200");
    command
}

async fn count(clickhouse: &ClickHouseConfig) -> u64 {
    queries::count_events(
        &clickhouse.client(),
        &clickhouse.database,
        &EventFilter::default(),
    )
    .await
    .unwrap_or(0)
}

// Not yet passing, so not yet a guarantee. On Tansu's memory engine the events missing after
// the run are missing from the broker itself: a plain consumer assigned at the first missing
// offset (see `diagnose`) is handed a record hundreds of offsets later, and the broker reports
// high watermarks below offsets it has served. On the SQLite engine the restarted consumer was
// not given every partition within two minutes (dead members linger for the 45 s session
// timeout and the group did not converge). Until the broker side is sorted out this test cannot
// tell a projector bug from a broker one, so it stays out of CI.
// Run it with `cargo test -p ledgerline-consumers --test projector_crash -- --ignored --nocapture`.
#[ignore = "Tansu memory engine loses acknowledged records under this load; see comment"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_projector_restarts_without_loss_or_duplicates() {
    let harness = Harness::shared().unwrap();
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let clickhouse = ClickHouseConfig {
        url: harness.clickhouse.url(),
        user: "default".to_owned(),
        password: String::new(),
        database: names::database(),
    };
    let ledger = Ledger::builder("crash-test")
        .config(ProducerConfig {
            service_name: "crash-test".to_owned(),
            ..ProducerConfig::default()
        })
        .brokers(broker.bootstrap())
        .registry_url(registry.url())
        .build()
        .await
        .unwrap();

    // The load: all four stored categories, published while the projector is being killed.
    let load = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for n in 0..EVENTS {
                let draft = match n % 4 {
                    0 => ledger
                        .job(
                            "job.progress",
                            &format!("job-{}", n % 97),
                            "backup",
                            "Backup",
                            JobStatus::Running,
                        )
                        .progress((n % 100) as u8)
                        .build(),
                    1 => ledger
                        .connection(
                            "device.command",
                            &format!("dev-{}", n % 31),
                            "router",
                            ConnectionPhase::Command,
                            Outcome::Success,
                        )
                        .build(),
                    2 => ledger
                        .system("service.tick", Level::Info, "crash::test", "Tick")
                        .build(),
                    _ => ledger
                        .session(
                            &format!("dev-{}", n % 31),
                            ledgerline_producer::event::Direction::Output,
                            "never stored",
                        )
                        .build(),
                };
                ledger.publish_event(draft).await.unwrap();
            }
            ledger.flush(Duration::from_secs(120)).await.unwrap()
        })
    };
    let stored_events = EVENTS / 4 * 3;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("projector.log");
    let group = names::group();
    let mut kills = 0;
    let mut last = 0;
    while kills < 3 {
        let mut projector = ManagedChild::spawn(
            "projector",
            projector_command(&broker, &registry, &clickhouse, &group, dir.path()),
            &log,
        )
        .unwrap();
        // Let it make progress, then kill it mid-stream.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = count(&clickhouse).await;
            if now > last + 5_000 || now >= stored_events || Instant::now() > deadline {
                last = now;
                break;
            }
            assert!(
                projector.is_running(),
                "projector exited: {}",
                ledgerline_tests::process::tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        projector.kill();
        kills += 1;
        eprintln!("kill {kills}: {last} events stored");
    }

    let stats = load.await.unwrap();
    assert_eq!(stats.failed, 0);
    let _final_run = ManagedChild::spawn(
        "projector",
        projector_command(&broker, &registry, &clickhouse, &group, dir.path()),
        &log,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_report = Instant::now();
    loop {
        let now = count(&clickhouse).await;
        if now >= stored_events || Instant::now() > deadline {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("catching up: {now} of {stored_events}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let client = clickhouse.client();
    if count(&clickhouse).await != stored_events {
        diagnose(&clickhouse, &broker, &log).await;
    }
    assert_eq!(
        count(&clickhouse).await,
        stored_events,
        "count through the API's query"
    );
    let rows = queries::search_events(
        &client,
        &clickhouse.database,
        &EventFilter::default(),
        stored_events * 2,
    )
    .await
    .unwrap();
    let distinct: BTreeSet<&str> = rows.iter().map(|row| row.event_id.as_str()).collect();
    assert_eq!(
        rows.len() as u64,
        stored_events,
        "search returns each event once"
    );
    assert_eq!(distinct.len() as u64, stored_events);
    let duplicates = queries::duplicate_event_ids(&client, &clickhouse.database)
        .await
        .unwrap();
    eprintln!("physical duplicate rows after 3 kills: {duplicates}");
}

/// On failure: which offsets are missing per topic and partition, and what was dead-lettered.
async fn diagnose(clickhouse: &ClickHouseConfig, broker: &Broker, log: &std::path::Path) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let rows: Vec<(String, i32, i64)> = clickhouse
        .client()
        .query(&format!(
            "SELECT DISTINCT topic, `partition`, `offset` FROM {}.events ORDER BY topic, `partition`, `offset`",
            clickhouse.database
        ))
        .fetch_all()
        .await
        .unwrap();
    let mut next_expected: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    let mut gaps = Vec::new();
    for (topic, partition, offset) in rows {
        let next = next_expected.entry((topic.clone(), partition)).or_insert(0);
        if offset != *next {
            eprintln!("gap in {topic}/{partition}: {}..={}", *next, offset - 1);
            gaps.push((topic.clone(), partition, *next));
        }
        *next = offset + 1;
    }
    let consumer: BaseConsumer = broker.client_config().create().unwrap();
    for ((topic, partition), next) in &next_expected {
        let (_, high) = consumer
            .fetch_watermarks(topic, *partition, Duration::from_secs(5))
            .unwrap();
        eprintln!(
            "{topic}/{partition}: stored up to {}, high watermark {high}",
            next - 1
        );
    }
    for partition in 0..3 {
        if let Ok((low, high)) =
            consumer.fetch_watermarks("ledgerline.dlq", partition, Duration::from_secs(5))
        {
            eprintln!("dlq/{partition}: {} records", high - low);
        }
    }
    // Is the gap in the broker too? Read from its first missing offset with a plain consumer.
    for (topic, partition, first_missing) in gaps {
        let reader: BaseConsumer = broker.consumer_config(&names::group()).create().unwrap();
        let mut assignment = rdkafka::TopicPartitionList::new();
        assignment
            .add_partition_offset(&topic, partition, rdkafka::Offset::Offset(first_missing))
            .unwrap();
        reader.assign(&assignment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(message)) = reader.poll(Duration::from_millis(500)) {
                use rdkafka::Message;
                eprintln!(
                    "broker read of {topic}/{partition} at {first_missing} returned offset {}",
                    message.offset()
                );
                break;
            }
        }
    }
    let tail = ledgerline_tests::process::tail(log, 400);
    for line in tail
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .take(20)
    {
        eprintln!("log: {line}");
    }
}
