//! `ledgerline-registry`: the schema registry server. Reads `[kafka]`, `[telemetry]` and
//! `[registry]` from `ledgerline.toml` and `LEDGERLINE_*` overrides, replays the schemas topic,
//! serves the Confluent API plus `/health` and `/metrics` on `[registry].listen`, and stops
//! gracefully on SIGTERM or SIGINT.

use anyhow::Context;
use ledgerline_registry::RegistryConfig;
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::telemetry::{self, TelemetryConfig};
use ledgerline_service::{shutdown, ConfigSource};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let kafka: KafkaConfig = source.section("kafka").context("failed to load [kafka]")?;
    let telemetry_config: TelemetryConfig = source
        .section("telemetry")
        .context("failed to load [telemetry]")?;
    let registry: RegistryConfig = source
        .section("registry")
        .context("failed to load [registry]")?;
    kafka.validate()?;
    telemetry_config.validate()?;
    registry.validate()?;
    telemetry::init_tracing(&telemetry_config).context("failed to initialise logging")?;

    let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
    let running = ledgerline_registry::start(registry, kafka, shutdown)
        .await
        .context("failed to start the schema registry")?;
    running
        .task
        .await
        .context("schema registry task panicked")?
        .context("schema registry failed")
}
