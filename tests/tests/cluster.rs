//! The replicated ClickHouse layout (`[projector.clickhouse] cluster`), on Debian's ZooKeeper
//! and two ClickHouse 18.16 replicas of one shard on loopback ports, with two projector
//! processes in one consumer group, each writing to its own replica, on a SQLite broker (the
//! memory engine skips records when a consumer restarts mid-batch).
//!
//! Through a load: one replica is stopped and started again, and one projector is killed
//! (SIGKILL) and not restarted, so the other must take its partitions. Afterwards both replicas
//! hold every published event exactly once, as the read library counts them, the same ids on
//! both, and the `Distributed` tables the query API reads on a cluster answer the same.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use events_support::{create_event_topics, ledger_for};
use ledgerline_consumers::projector::queries::{EventQuery, ReadLimits};
use ledgerline_consumers::projector::EventReader;
use ledgerline_producer::event::{JobStatus, Level};
use ledgerline_producer::ProducerConfig;
use ledgerline_tests::clickhouse::{Ports, ADMIN};
use ledgerline_tests::services::{free_address, Service};
use ledgerline_tests::zookeeper::ZooKeeper;
use ledgerline_tests::{names, Broker, BrokerStorage, ClickHouseServer, RegistryServer};

const CLUSTER: &str = "ledgerline";
const EVENTS: usize = 3_000;

/// `config.d` of replica `me` (0 or 1) of the one-shard cluster over `replicas`.
fn replica_config(zookeeper: u16, replicas: &[Ports; 2], me: usize, password: &str) -> String {
    let members: String = replicas
        .iter()
        .map(|ports| {
            format!(
                "<replica><host>127.0.0.1</host><port>{}</port>\
                 <user>{ADMIN}</user><password>{password}</password></replica>",
                ports.tcp
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\"?>
<yandex>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <interserver_http_port>@INTERSERVER_PORT@</interserver_http_port>
    <zookeeper>
        <node><host>127.0.0.1</host><port>{zookeeper}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
    </zookeeper>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
    <macros><shard>01</shard><replica>replica-{me}</replica></macros>
    <remote_servers>
        <{CLUSTER}><shard><internal_replication>true</internal_replication>{members}</shard></{CLUSTER}>
    </remote_servers>
</yandex>
"
    )
}

/// Waits until `replica` has a ZooKeeper session. ClickHouse 18.16 connects in the background
/// and was seen to crash (a null pointer in `zkutil::ZooKeeper::createImpl`) on an `ON CLUSTER`
/// statement that came before the session. Production servers are long up when a projector
/// starts; a test starts both within a second.
fn wait_for_zookeeper_session(replica: &ClickHouseServer) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    loop {
        let answer = runtime.block_on(
            replica
                .client()
                .query("SELECT count() FROM system.zookeeper WHERE path = '/'")
                .fetch_one::<u64>(),
        );
        match answer {
            Ok(_) => return,
            Err(error) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "no ZooKeeper session: {error}\n{}",
                ledgerline_tests::process::tail(&replica.log(), 20)
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn projector_config(
    broker: &Broker,
    registry: &RegistryServer,
    replica: &ClickHouseServer,
    group: &str,
    listen: &str,
) -> String {
    format!(
        r#"[kafka]
brokers = "{brokers}"

[schema_registry]
url = "{registry}"

[projector]
listen = "{listen}"
group_id = "{group}"
batch_max_wait_ms = 100

[projector.clickhouse]
url = "{url}"
user = "projector"
password = "{password}"
database = "ledgerline"
compression = "none"
cluster = "{CLUSTER}"
"#,
        brokers = broker.bootstrap(),
        registry = registry.url(),
        url = replica.url(),
        password = replica.password(),
    )
}

fn reader(replica: &ClickHouseServer) -> EventReader {
    EventReader::new(replica.client(), "ledgerline", ReadLimits::default()).unwrap()
}

async fn stored_ids(replica: &ClickHouseServer) -> BTreeSet<String> {
    replica
        .client()
        .query("SELECT DISTINCT event_id FROM ledgerline.events")
        .fetch_all::<String>()
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn replicas_hold_every_event_once_through_a_replica_stop_and_a_projector_kill() {
    let zookeeper = ZooKeeper::start().unwrap();
    let ports = [Ports::free().unwrap(), Ports::free().unwrap()];
    let password = names::unique("pw");
    let mut replicas: Vec<ClickHouseServer> = (0..2)
        .map(|me| {
            ClickHouseServer::start_with(
                ports[me],
                &password,
                replica_config(zookeeper.port(), &ports, me, &password),
            )
            .unwrap()
        })
        .collect();
    for replica in &replicas {
        wait_for_zookeeper_session(replica);
    }
    let broker = Broker::start(BrokerStorage::Sqlite).unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(create_event_topics(&broker, 4));

    // Two projectors in one group, each writing to its own replica.
    let dir = tempfile::tempdir().unwrap();
    let group = names::group();
    let mut projectors: Vec<Service> = (0..2)
        .map(|me| {
            let listen = free_address().unwrap();
            let config = dir.path().join(format!("projector-{me}.toml"));
            std::fs::write(
                &config,
                projector_config(&broker, &registry, &replicas[me], &group, &listen),
            )
            .unwrap();
            let name = ["projector-0", "projector-1"][me];
            Service::start(
                name,
                "ledgerline-consumer",
                &["projector"],
                &config,
                &listen,
                dir.path(),
            )
            .unwrap_or_else(|error| {
                panic!(
                    "{name} did not start: {error}\nreplica {me} log:\n{}",
                    ledgerline_tests::process::tail(&replicas[me].log(), 40)
                )
            })
        })
        .collect();

    runtime.block_on(async {
        // The first projector's ON CLUSTER migrations made the tables on both replicas.
        for replica in &replicas {
            let engines: Vec<(String, String)> = replica
                .client()
                .query(
                    "SELECT name, engine FROM system.tables WHERE database = 'ledgerline' \
                     AND name IN ('events', 'job_status', 'events_all', 'job_status_all', \
                     'schema_migrations') ORDER BY name",
                )
                .fetch_all()
                .await
                .unwrap();
            let engines: Vec<(&str, &str)> = engines
                .iter()
                .map(|(name, engine)| (name.as_str(), engine.as_str()))
                .collect();
            assert_eq!(
                engines,
                [
                    ("events", "ReplicatedReplacingMergeTree"),
                    ("events_all", "Distributed"),
                    ("job_status", "ReplicatedReplacingMergeTree"),
                    ("job_status_all", "Distributed"),
                    ("schema_migrations", "ReplicatedMergeTree"),
                ]
            );
        }

        let ledger = ledger_for(
            &broker.bootstrap(),
            &registry.url(),
            ProducerConfig {
                service_name: "cluster-test".to_owned(),
                linger_ms: 5,
                create_topics: false,
                ..ProducerConfig::default()
            },
        )
        .await;
        // About 300 events/s for 10 s, with the faults in between.
        let load = tokio::spawn(async move {
            for n in 0..EVENTS {
                let published = if n % 2 == 0 {
                    ledger
                        .job(
                            "job.progress",
                            &format!("job-{}", (n / 2) % 50),
                            "backup",
                            "Backup",
                            JobStatus::Running,
                        )
                        .progress((n % 100) as u8)
                        .publish()
                        .await
                } else {
                    ledger
                        .system("tick", Level::Info, "cluster::test", &format!("tick {n}"))
                        .publish()
                        .await
                };
                published.unwrap();
                if n % 30 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            ledger.flush(Duration::from_secs(60)).await.unwrap()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Replica 1 goes away mid-load: projector-1's inserts fail and are retried, projector-0
        // goes on writing to replica 0, and replica 1 fetches what it missed when it is back.
        replicas[1].kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| replicas[1].restart()).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        // projector-0 crashes for good: the group moves its partitions to projector-1.
        projectors[0].kill();
        let stats = load.await.unwrap();
        assert_eq!(stats.delivered, EVENTS as u64, "{stats:?}");
        assert_eq!(stats.failed, 0, "{stats:?}");

        let everything = EventQuery::default();
        let started = Instant::now();
        loop {
            let mut counts = Vec::new();
            for replica in &replicas {
                counts.push(reader(replica).count(&everything).await.ok());
            }
            counts.push(
                reader(&replicas[0])
                    .distributed()
                    .count(&everything)
                    .await
                    .ok(),
            );
            if counts.iter().all(|count| *count == Some(EVENTS as u64)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "events counted on replica 0, replica 1, and through events_all: {counts:?} of \
                 {EVENTS}\nprojector-1 log:\n{}",
                ledgerline_tests::process::tail(projectors[1].log(), 30)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            projectors[1].is_running(),
            "projector-1 exited: {}",
            ledgerline_tests::process::tail(projectors[1].log(), 30)
        );

        // Exactly once: the same ids on both replicas, as many as were published.
        let ids = [
            stored_ids(&replicas[0]).await,
            stored_ids(&replicas[1]).await,
        ];
        assert_eq!(ids[0].len(), EVENTS);
        assert_eq!(ids[0], ids[1], "the replicas hold different events");

        // What the query API runs on a cluster answers through the Distributed tables as on
        // a replica: job states, a search page (PREWHERE, LIMIT BY), one event, a timeline.
        let all = reader(&replicas[0]).distributed();
        let local = reader(&replicas[1]);
        let through_all = all.jobs(None, 100).await.unwrap();
        assert_eq!(through_all.len(), 50);
        assert_eq!(through_all, local.jobs(None, 100).await.unwrap());
        let page = all.search(&everything, None, 100).await.unwrap();
        assert_eq!(page.events.len(), 100);
        assert_eq!(page, local.search(&everything, None, 100).await.unwrap());
        let newest = page.events[0].envelope().event_id.to_string();
        let event = all.event(&newest, &[]).await.unwrap();
        assert!(event.is_some());
        assert_eq!(event, local.event(&newest, &[]).await.unwrap());
        let timeline = all.job_timeline("job-7", 1_000).await.unwrap();
        assert_eq!(timeline.len(), EVENTS / 2 / 50);
        assert_eq!(timeline, local.job_timeline("job-7", 1_000).await.unwrap());

        // A projector restarts while a replica is down: its migrations are applied, so it
        // runs no ON CLUSTER statement (which would wait for the stopped replica) and is
        // healthy at once.
        replicas[1].kill();
        let restarted = Instant::now();
        tokio::task::block_in_place(|| projectors[0].restart()).unwrap();
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "projector-0 took {:?} to restart with replica 1 down",
            restarted.elapsed()
        );
    });
}
