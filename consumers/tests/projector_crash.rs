//! The projector process is SIGKILLed at random moments, at least three times while a
//! 100,000-event load is being published, and restarted each time; afterwards the read queries
//! the query API uses see every stored event exactly once.
//!
//! The broker runs Tansu's SQLite engine. Its memory engine cannot host this test: asked to
//! fetch from an offset inside a record batch, it returns only the batches that start at or
//! after that offset, so a consumer resuming from a committed offset in the middle of a
//! producer's batch never sees the rest of that batch (`tansu_engines_and_mid_batch_fetches` in
//! `tests/tests/kafka.rs` pins this). Kafka, and Tansu's SQLite engine, which stores records one
//! by one, return the batch that contains the offset.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ledgerline_consumers::clickhouse::migrate;
use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::projector::queries::{Condition, EventQuery, Field};
use ledgerline_consumers::projector::schema::MIGRATIONS;
use ledgerline_producer::event::{ConnectionPhase, JobStatus, Level, Outcome};
use ledgerline_producer::ProducerConfig;
use ledgerline_schemas::Category;
use ledgerline_tests::process::ManagedChild;
use ledgerline_tests::{names, Broker};

const EVENTS: u64 = 100_000;
/// Three in four events are stored; every fourth is a session event, which never is.
const STORED_EVENTS: u64 = EVENTS / 4 * 3;
/// The load publishes this many events per tick, one tick every [`LOAD_TICK`]: about 25 s in
/// all, so the kills land while it runs.
const LOAD_CHUNK: u64 = 400;
const LOAD_TICK: Duration = Duration::from_millis(100);
/// The load holds its last tenth back until this many kills happened, so at least this many
/// land during the load however slowly the machine runs.
const KILLS_DURING_LOAD: u32 = 3;
const MAX_KILLS: u32 = 6;

/// Each run is restarted at once after its kill, as `deploy/local/up` restarts the local
/// stack's projector: a dynamic group member, which Tansu 0.6.0's coordinator may leave without
/// partitions until the runtime's watchdog rejoins (`projector_restart.rs` covers that path
/// and the static one).
const INSTANCE_ID: Option<&str> = None;

mod support;
use support::{count, projector_command, written_by, ProcessStack};

/// A pseudo-random duration below `max`, printed by the caller so a failing run can be
/// reasoned about.
fn jitter(max: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128();
    Duration::from_millis((random % max.as_millis().max(1)) as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_projector_restarts_without_loss_or_duplicates() {
    let stack = ProcessStack::start();
    let (broker, registry, clickhouse) = (&stack.broker, &stack.registry, &stack.clickhouse);
    let ledger = stack.ledger("crash-test", ProducerConfig::default()).await;
    // The tables exist before the first run, with merges off: a `ReplacingMergeTree` merge
    // would remove exactly the duplicate rows the end of this test counts.
    let admin = clickhouse.client();
    migrate(&admin, &clickhouse.database, MIGRATIONS)
        .await
        .unwrap();
    admin
        .query_raw(&format!(
            "SYSTEM STOP MERGES {}.events",
            clickhouse.database
        ))
        .execute()
        .await
        .unwrap();

    // The load: all four stored categories and session events, published at a steady rate
    // while the projector is being killed.
    let (kills_sender, mut kills_seen) = tokio::sync::watch::channel(0_u32);
    let load = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(LOAD_TICK);
            for n in 0..EVENTS {
                if n % LOAD_CHUNK == 0 {
                    ticks.tick().await;
                }
                if n == EVENTS / 10 * 9 {
                    kills_seen
                        .wait_for(|kills| *kills >= KILLS_DURING_LOAD)
                        .await
                        .unwrap();
                }
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

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("projector.log");
    let group = names::group();
    let everything = EventQuery::default();
    let mut kills = 0;
    let mut kills_during_load = 0;
    while kills < KILLS_DURING_LOAD || (!load.is_finished() && kills < MAX_KILLS) {
        let (command, listen) = projector_command(
            broker,
            registry,
            clickhouse,
            &group,
            INSTANCE_ID,
            dir.path(),
        );
        let mut projector = ManagedChild::spawn("projector", command, &log).unwrap();
        // Wait until this run writes something, then kill it a random moment later: in the
        // middle of a fetch, a decode, an insert, or between an insert and its commit.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if written_by(&listen).await > 0
                || count(clickhouse, &everything).await >= STORED_EVENTS
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {} stored nothing in 90 s: {}",
                kills + 1,
                ledgerline_tests::process::tail(&log, 30)
            );
            assert!(
                projector.is_running(),
                "projector exited: {}",
                ledgerline_tests::process::tail(&log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delay = jitter(Duration::from_millis(1500));
        tokio::time::sleep(delay).await;
        let during_load = !load.is_finished();
        projector.kill();
        kills += 1;
        kills_during_load += u32::from(during_load);
        kills_sender.send_replace(kills);
        eprintln!(
            "kill {kills} ({delay:?} after progress, load {}): {} events stored",
            if during_load { "running" } else { "done" },
            count(clickhouse, &everything).await
        );
    }
    let stats = load.await.unwrap();
    assert_eq!(stats.failed, 0);
    assert!(
        kills_during_load >= KILLS_DURING_LOAD,
        "only {kills_during_load} of {kills} kills landed during the load"
    );

    let (command, listen) = projector_command(
        broker,
        registry,
        clickhouse,
        &group,
        INSTANCE_ID,
        dir.path(),
    );
    let mut final_run = ManagedChild::spawn("projector", command, &log).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_report = Instant::now();
    loop {
        let now = count(clickhouse, &everything).await;
        if now >= STORED_EVENTS || Instant::now() > deadline {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("catching up: {now} of {STORED_EVENTS}");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Caught up, the final run reports zero lag on every partition of its four topics (the
    // audit topic is empty here) and is healthy: the positions it resumed from are committed
    // even when it had nothing left to read.
    let metrics_url = format!("http://{listen}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let lags = loop {
        // Everything may be stored before the final run even listens: until it does, its
        // metrics read as nothing yet.
        let text = match reqwest::get(&metrics_url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let lags: Vec<String> = text
            .lines()
            .filter(|line| line.starts_with("ledgerline_consumer_lag_messages{"))
            .map(str::to_owned)
            .collect();
        if (lags.len() >= 9 && lags.iter().all(|line| line.ends_with(" 0")))
            || Instant::now() > deadline
        {
            break lags;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(lags.len() >= 9, "{lags:#?}");
    assert!(lags.iter().all(|line| line.ends_with(" 0")), "{lags:#?}");
    let health = reqwest::get(format!("http://{listen}/health"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "{}", health.text().await.unwrap());
    // A graceful stop after the catch-up: the last batch is committed and the process exits
    // on its own.
    final_run.terminate(Duration::from_secs(20));

    if count(clickhouse, &everything).await != STORED_EVENTS {
        diagnose(clickhouse, broker, &log).await;
    }
    assert_eq!(
        count(clickhouse, &everything).await,
        STORED_EVENTS,
        "count through the API's query"
    );
    for category in [Category::Job, Category::Connection, Category::System] {
        let filter = EventQuery::default().with(Condition::is(Field::Category, category.as_str()));
        assert_eq!(
            count(clickhouse, &filter).await,
            EVENTS / 4,
            "{category} events"
        );
    }
    let reader = support::reader(clickhouse);
    let rows = reader
        .search(&everything, None, EVENTS * 2)
        .await
        .unwrap()
        .events;
    let distinct: BTreeSet<uuid::Uuid> =
        rows.iter().map(|event| event.envelope().event_id).collect();
    assert_eq!(
        rows.len() as u64,
        STORED_EVENTS,
        "search returns each event once"
    );
    assert_eq!(distinct.len() as u64, STORED_EVENTS);
    // Every job's latest state is its last event: job-k's last event is the greatest n below
    // EVENTS with n % 4 == 0 and n % 97 == k.
    for job in 0..97_u64 {
        let last = (0..EVENTS)
            .rev()
            .find(|n| n % 4 == 0 && n % 97 == job)
            .unwrap();
        let status = reader.job(&format!("job-{job}")).await.unwrap().unwrap();
        assert_eq!(status.progress, (last % 100) as i32, "job-{job}");
    }
    let duplicates = reader.duplicate_event_ids().await.unwrap();
    // Counted on the raw table, not through the collapsing reads: resuming after the greatest
    // stored offset means no kill made the projector store anything twice.
    assert_eq!(duplicates, 0, "physical duplicate rows after {kills} kills");
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
