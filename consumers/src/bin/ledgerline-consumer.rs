//! `ledgerline-consumer <consumer>`: runs one consumer service.
//!
//! `projector` (alias `clickhouse`): `[kafka]`, `[schema_registry]`, `[projector]` (with
//! `[projector.clickhouse]`) and `[telemetry]` from `ledgerline.toml` / `LEDGERLINE_*`; see
//! [`ledgerline_consumers::projector::run`].

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledgerline_consumers::projector::{self, ProjectorSettings};
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
    consumer: ConsumerName,
}

#[derive(Debug, Subcommand)]
enum ConsumerName {
    /// Project the stored categories into ClickHouse (`ledgerline.events`, `job_status`).
    #[command(alias = "clickhouse")]
    Projector,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let telemetry_config: TelemetryConfig = source.section("telemetry")?;
    telemetry_config.validate()?;
    telemetry::init_tracing(&telemetry_config)?;
    match cli.consumer {
        ConsumerName::Projector => {
            let settings = ProjectorSettings::load(&source)?;
            let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
            projector::run(settings, shutdown)
                .await
                .context("projector failed")?;
        }
    }
    Ok(())
}
