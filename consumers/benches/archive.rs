//! The tamper-evident audit archive, in one run on the same events:
//!
//! - **projector**: `projector::run` over the audit events (the reference rate);
//! - **archiver**: `archive::run` over the same events in its own group and database: decode,
//!   chain (SHA-256 per record), `records` inserts, Ed25519-signed checkpoints every 10,000
//!   entries of a partition, offset commits;
//! - **verify**: `archive::verify::verify` over the archive the archiver just built (every
//!   chain, every segment's Merkle root, every checkpoint signature), once with
//!   `Decoder::None` and once with `Decoder::Registry` (every value also decoded and its
//!   fields compared with the stored columns). Without the Kafka comparison (`kafka = None`;
//!   with a broker view, `verify` also reads watermarks and committed offsets and fetches the
//!   offsets behind any gap and the unsigned tail from Kafka). The archive verified is the one
//!   the archiver wrote in this run, not rows generated for the bench.
//!
//! `cargo bench -p ledgerline-consumers --bench archive` (defaults: 1,000,000 audit events on 4
//! partitions, batches of 50,000), or `-- --events 200000 --batch 50000`. It starts its own
//! Tansu memory-engine broker, registry and ClickHouse on free loopback ports, produces fully
//! populated sample audit events (pre-encoded, raw rdkafka) to `ledgerline.audit`, and prints
//! one table. The archiver and projector rates are sustained, as in the projector bench: from
//! the end of the first batch to the end of the last, from each consumer's own
//! `ledgerline_consumer_events_total{outcome="written"}` counter, so group joins are not in
//! them. Each consumer phase starts after ClickHouse has finished merging the previous one's
//! parts. Targets: the archiver at least 70% of the projector's rate, `verify` at least 200,000
//! records/s.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ledgerline_consumers::archive::checkpoint::{self, TrustedKeys};
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::archive::verify::{self, Decoder, Report, VerifyOptions};
use ledgerline_consumers::archive::{self, ArchiveConfig, ArchiveSettings};
use ledgerline_consumers::clickhouse::{ClickHouseCompression, ClickHouseConfig};
use ledgerline_consumers::projector::{self, ProjectorConfig, ProjectorSettings};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_schemas::{samples, Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_service::telemetry;
use ledgerline_tests::{names, Broker, BrokerStorage, ClickHouseServer, RegistryServer};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::producer::{FutureProducer, FutureRecord};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

// The allocator `ledgerline-consumer` runs with, so both consumers are measured as deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 4;
/// The archiver's default cadence: a checkpoint every this many entries of a partition.
const CHECKPOINT_EVERY: u64 = 10_000;
/// A consumer phase is given up when its counter has not moved for this long (a record the
/// broker skipped would otherwise keep it waiting for a count it never reaches).
const STALL: Duration = Duration::from_secs(30);

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

/// Encodes `count` sample audit events and produces them with raw rdkafka to
/// `ledgerline.audit` (keys spread them over its partitions). The other stored topics and the
/// dead-letter topic are created empty, since the projector subscribes to them.
async fn fill(broker: &Broker, codec: &EventCodec, count: usize) {
    for category in projector::STORED_CATEGORIES {
        let partitions = if category == Category::Audit {
            PARTITIONS
        } else {
            1
        };
        broker
            .create_topic(category.topic_name(), partitions)
            .await
            .unwrap();
    }
    broker
        .create_topic(ledgerline_schemas::topics::DLQ_TOPIC, 1)
        .await
        .unwrap();
    codec.prepare(Category::Audit, true).await.unwrap();
    let mut payloads = Vec::with_capacity(count);
    for n in 0..count {
        let event = samples::event(Category::Audit, n as u64);
        payloads.push(codec.encode(&event).await.unwrap());
    }
    let bytes = payloads.first().map_or(0, Vec::len);
    let producer: FutureProducer = broker
        .producer_config()
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .create()
        .unwrap();
    let topic = Category::Audit.topic_name();
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for (n, payload) in payloads.iter().enumerate() {
        let key = format!("key-{}", n % 97);
        loop {
            let record = FutureRecord::to(topic).key(&key).payload(payload);
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(delivery);
                    break;
                }
                Err(_) => {
                    in_flight.next().await.unwrap().unwrap().unwrap();
                }
            }
        }
    }
    while let Some(delivery) = in_flight.next().await {
        delivery.unwrap().unwrap();
    }
    println!(
        "filled {count} audit events ({bytes} bytes each) on {PARTITIONS} partitions in {:.1}s ({:.0} msgs/s)",
        started.elapsed().as_secs_f64(),
        count as f64 / started.elapsed().as_secs_f64()
    );
}

/// Events `consumer` has written so far, from the process's own metrics.
fn written_by(metrics: &PrometheusHandle, consumer: &str) -> u64 {
    let label = format!("consumer=\"{consumer}\"");
    metrics
        .render()
        .lines()
        .find(|line| {
            line.starts_with("ledgerline_consumer_events_total{")
                && line.contains(&label)
                && line.contains("outcome=\"written\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

/// Waits until ClickHouse has no merge running (at most a minute), so one phase's merges are
/// not billed to the next.
async fn settle(client: &clickhouse::Client) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let merges: u64 = client
            .query("SELECT count() FROM system.merges")
            .fetch_one()
            .await
            .unwrap();
        if merges == 0 || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a consumer phase went.
struct Phase {
    /// Sustained events/s (end of the first batch to the end of the last).
    rate: f64,
    /// Events/s from `run` to the last write, group join included.
    end_to_end: f64,
    written: u64,
}

/// Spawns `run` and lets it go until `consumer` has written `count` events (or stalls),
/// sampling its counter every 5 ms, then cancels it.
async fn timed<F>(
    metrics: &PrometheusHandle,
    consumer: &str,
    count: u64,
    run: impl FnOnce(CancellationToken) -> F,
) -> Phase
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let before = written_by(metrics, consumer);
    let done = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(run(done.clone()));
    let mut first = None;
    let mut progress = (0, Instant::now());
    let written = loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let written = written_by(metrics, consumer) - before;
        if written > 0 {
            first.get_or_insert((Instant::now(), written));
        }
        if written >= count {
            break written;
        }
        if written != progress.0 {
            progress = (written, Instant::now());
        } else if progress.1.elapsed() > STALL && first.is_some() {
            println!("{consumer}: stalled at {written} of {count} events");
            break written;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{consumer} wrote only {written} of {count} events in 15 minutes"
        );
        assert!(!task.is_finished(), "{consumer} stopped: {:?}", task.await);
    };
    let last = if written >= count {
        Instant::now()
    } else {
        progress.1
    };
    done.cancel();
    task.await.unwrap();
    let (first, first_count) = first.unwrap();
    Phase {
        rate: sustained(first, first_count, last, written),
        end_to_end: written as f64 / last.duration_since(started).as_secs_f64(),
        written,
    }
}

/// Times one `verify` over the whole archive; returns the report and records/s.
async fn time_verify(
    store: &ArchiveStore,
    trusted: &TrustedKeys,
    decoder: &Decoder,
) -> (Report, f64) {
    let started = Instant::now();
    let report = verify::verify(store, trusted, decoder, None, &VerifyOptions::default())
        .await
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let entries: u64 = report.partitions.iter().map(|p| p.entries).sum();
    (report, entries as f64 / seconds)
}

#[tokio::main]
async fn main() {
    let count = arg("--events", 1_000_000);
    let batch = arg("--batch", 50_000);
    let total = count as u64;
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let registry_server = RegistryServer::start(&broker.bootstrap()).unwrap();
    let server = ClickHouseServer::start().unwrap();
    let registry = SchemaRegistryConfig {
        url: registry_server.url(),
        ..SchemaRegistryConfig::default()
    };
    let codec = EventCodec::new(&registry).unwrap();
    let clickhouse = |database: &str| ClickHouseConfig {
        url: server.url(),
        user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
        password: server.password().into(),
        database: database.to_owned(),
        compression: ClickHouseCompression::None,
        cluster: None,
    };
    let admin = server.client();
    let kafka = KafkaConfig {
        brokers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    let consumer_settings = || ConsumerSettings {
        group_id: Some(names::group()),
        batch_max_events: batch,
        ..ConsumerSettings::default()
    };
    let metrics = telemetry::prometheus().unwrap();

    println!("load average (1 min) at the start: {}", load_average());
    fill(&broker, &codec, count).await;

    // --- projector ---------------------------------------------------------------------
    settle(&admin).await;
    let projector_settings = ProjectorSettings {
        kafka: kafka.clone(),
        schema_registry: registry.clone(),
        projector: ProjectorConfig {
            consumer: consumer_settings(),
            listen: "127.0.0.1:0".parse().unwrap(),
            clickhouse: clickhouse("bench_projector"),
            ..ProjectorConfig::default()
        },
    };
    let projected = timed(&metrics, "projector", total, |done| async move {
        projector::run(projector_settings, done).await.unwrap();
    })
    .await;
    let stored: u64 = admin
        .query("SELECT count() FROM bench_projector.events")
        .fetch_one()
        .await
        .unwrap();
    println!(
        "projector: {:.0} events/s sustained ({:.0} from start), {stored} events stored",
        projected.rate, projected.end_to_end
    );

    // --- archiver ----------------------------------------------------------------------
    settle(&admin).await;
    let key_dir = tempfile::tempdir().unwrap();
    let generated = checkpoint::generate().unwrap();
    let key_file = key_dir.path().join("archive.key");
    std::fs::write(&key_file, generated.secret_file.expose_secret()).unwrap();
    let mut trusted = TrustedKeys::new();
    trusted.insert(
        checkpoint::load_signing_key(&generated.secret_file)
            .unwrap()
            .verifying_key(),
    );
    let archive_clickhouse = clickhouse("bench_archive");
    let archive_settings = ArchiveSettings {
        kafka: kafka.clone(),
        schema_registry: registry.clone(),
        archive: ArchiveConfig {
            consumer: consumer_settings(),
            listen: "127.0.0.1:0".parse().unwrap(),
            clickhouse: archive_clickhouse.clone(),
            signing_key_file: Some(key_file),
            checkpoint_every_records: CHECKPOINT_EVERY,
            // Off: it would verify the newest checkpoints while the archiver is being timed.
            self_verify_interval_secs: 0,
            ..ArchiveConfig::default()
        },
    };
    let archived = timed(&metrics, archive::CONSUMER, total, |done| async move {
        archive::run(archive_settings, done).await.unwrap();
    })
    .await;
    let (records, events, gaps, gap_offsets, checkpoints): (u64, u64, u64, i64, u64) = admin
        .query(
            "SELECT count(), countIf(kind = 'event'), countIf(kind = 'gap'), \
             sumIf(last_offset - `offset` + 1, kind = 'gap'), \
             (SELECT count() FROM bench_archive.checkpoints) FROM bench_archive.records",
        )
        .fetch_one()
        .await
        .unwrap();
    println!(
        "archiver: {:.0} events/s sustained ({:.0} from start), {records} records stored \
         ({events} events, {gaps} gap entries covering {gap_offsets} offsets), {checkpoints} checkpoints",
        archived.rate, archived.end_to_end
    );
    if gaps > 0 {
        println!(
            "NOTE: the archive holds {gaps} gap entries: the memory-engine broker skipped \
             {gap_offsets} offsets (it can drop records mid-batch when a fetch starts inside one)"
        );
    }

    // --- verify ------------------------------------------------------------------------
    settle(&admin).await;
    let store =
        ArchiveStore::new(archive_clickhouse.client(), &archive_clickhouse.database).unwrap();
    let (chain_report, chain_rate) = time_verify(&store, &trusted, &Decoder::None).await;
    let decoder = Decoder::Registry(Arc::new(EventCodec::new(&registry).unwrap()));
    let (fields_report, fields_rate) = time_verify(&store, &trusted, &decoder).await;
    for report in [&chain_report, &fields_report] {
        assert!(report.intact, "{}", report.to_text());
    }
    let verified: u64 = chain_report.partitions.iter().map(|p| p.entries).sum();
    let signed: u64 = chain_report.partitions.iter().map(|p| p.checkpoints).sum();

    let ratio = archived.rate / projected.rate;
    println!();
    println!(
        "{count} audit events on {PARTITIONS} partitions, batches of {batch}; verify over the \
         {verified} entries the archiver wrote in this run ({signed} checkpoints), without the \
         Kafka comparison"
    );
    println!();
    println!("| measurement | rate | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| projector/batch_{batch} | {:.0} events/s | — |",
        projected.rate
    );
    println!(
        "| archiver/batch_{batch} | {:.0} events/s ({:.1}% of the projector) | ≥ 70% of the projector: {} |",
        archived.rate,
        100.0 * ratio,
        if ratio >= 0.7 { "met" } else { "NOT met" }
    );
    for (what, rate) in [
        (
            "verify, chain + Merkle roots + signatures (`Decoder::None`)",
            chain_rate,
        ),
        (
            "verify, also every value decoded and its fields compared (`Decoder::Registry`)",
            fields_rate,
        ),
    ] {
        println!(
            "| {what} | {rate:.0} records/s | ≥ 200,000 records/s: {} |",
            if rate >= 200_000.0 { "met" } else { "NOT met" }
        );
    }
    for (consumer, phase) in [("projector", &projected), ("archiver", &archived)] {
        if phase.written < total {
            println!(
                "NOTE: the {consumer} wrote {} of {total} events: its rate is over those",
                phase.written
            );
        }
    }
    println!("load average (1 min) at the end: {}", load_average());
}

/// The 1-minute load average, to tell a quiet machine from a busy one in the output.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
