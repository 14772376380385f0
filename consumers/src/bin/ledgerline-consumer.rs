//! `ledgerline-consumer <sink>`: runs one consumer service.
//!
//! `clickhouse` (the projector): `[kafka]`, `[schema_registry]`, `[clickhouse]`, `[projector]`
//! and `[telemetry]` from `ledgerline.toml` / `LEDGERLINE_*`. Applies migrations, then projects
//! the audit, job, connection and system topics until SIGTERM, dropping expired partitions
//! on a schedule. Serves `/health` (Kafka and ClickHouse reachable) and `/metrics`.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledgerline_consumers::clickhouse::{
    queries, ClickHouseConfig, ClickHouseSink, ProjectorConfig,
};
use ledgerline_consumers::runtime::{self, RuntimeConfig};
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::http::{self, Health};
use ledgerline_service::kafka::{KafkaConfig, KafkaProbe};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_service::telemetry::{self, TelemetryConfig};
use ledgerline_service::{shutdown, ConfigSource};

// The projector allocates a few dozen strings per event and frees them a batch later on
// another thread; glibc's allocator spent about a third of the projector's CPU on that
// (profile in docs/benchmarks.md), mimalloc a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Ledgerline consumer services")]
struct Cli {
    #[command(subcommand)]
    sink: SinkName,
}

#[derive(Debug, Subcommand)]
enum SinkName {
    /// Project stored categories into ClickHouse.
    Clickhouse,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let telemetry_config: TelemetryConfig = source.section("telemetry")?;
    telemetry_config.validate()?;
    telemetry::init_tracing(&telemetry_config)?;
    match cli.sink {
        SinkName::Clickhouse => run_projector(&source).await,
    }
}

async fn run_projector(source: &ConfigSource) -> anyhow::Result<()> {
    let kafka: KafkaConfig = source.section("kafka")?;
    let registry: SchemaRegistryConfig = source.section("schema_registry")?;
    let clickhouse: ClickHouseConfig = source.section("clickhouse")?;
    let projector: ProjectorConfig = source.section("projector")?;
    kafka.validate()?;
    registry.validate()?;
    clickhouse.validate()?;
    projector.validate()?;
    let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;

    let topics: Vec<String> = Category::ALL
        .into_iter()
        .filter(|category| projector.retention_days.for_category(*category).is_some())
        .map(Category::topic)
        .collect();
    let sink = ClickHouseSink::start(&clickhouse, &topics)
        .await
        .context("failed to prepare clickhouse")?;
    let codec = Arc::new(EventCodec::new(&registry)?);

    let inserts = sink.health();
    let probe = KafkaProbe::new(&kafka)?;
    let ping = clickhouse.client();
    let health = Health::new()
        .with_check("kafka", move || {
            let probe = probe.clone();
            async move {
                probe
                    .check(std::time::Duration::from_secs(2))
                    .await
                    .map(|_| ())
            }
        })
        .with_check("clickhouse", move || {
            let client = ping.clone();
            async move {
                client
                    .query("SELECT 1")
                    .fetch_one::<u8>()
                    .await
                    .map(|_| ())
                    .map_err(|error| error.to_string())
            }
        })
        .with_check("clickhouse_inserts", move || {
            let inserts = inserts.clone();
            async move { inserts.check() }
        });
    let (addr, _server) = http::serve(
        projector.listen,
        http::router(health, telemetry::prometheus()?),
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("failed to listen on {}", projector.listen))?;
    tracing::info!(%addr, "projector health and metrics");

    tokio::spawn(retention_loop(
        clickhouse.clone(),
        projector.clone(),
        shutdown.clone(),
    ));

    runtime::run(
        RuntimeConfig {
            group_id: projector.group_id.clone(),
            topics,
            batch_max_events: projector.batch_max_events,
            batch_max_wait: projector.batch_max_wait(),
            max_event_bytes: projector.max_event_bytes,
            fetch_wait_max: projector.fetch_wait_max(),
        },
        &kafka,
        codec,
        sink,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Drops expired partitions now and then every `retention_check_interval`.
async fn retention_loop(
    clickhouse: ClickHouseConfig,
    projector: ProjectorConfig,
    shutdown: shutdown::ShutdownToken,
) {
    let client = clickhouse.client();
    let mut ticker = tokio::time::interval(projector.retention_check_interval());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for category in Category::ALL {
            let Some(days) = projector.retention_days.for_category(category) else {
                continue;
            };
            if let Err(error) = queries::drop_expired_partitions(
                &client,
                &clickhouse.database,
                category,
                days,
                std::time::SystemTime::now(),
            )
            .await
            {
                tracing::warn!(%category, %error, "retention check failed");
            }
        }
    }
}
