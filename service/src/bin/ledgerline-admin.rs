//! `ledgerline-admin`: operator commands against the configured Kafka cluster, used by the
//! deploy scripts for real health checks (a metadata round trip, not an open port) and topic
//! creation (Tansu, like many managed clusters, does not auto-create topics).
//!
//! Reads `[kafka]` from `ledgerline.toml` / `LEDGERLINE_KAFKA__*` like every service;
//! `--brokers` overrides the bootstrap list.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ledgerline_service::kafka::{ensure_topics, KafkaConfig, KafkaProbe, NewTopics, TopicState};
use ledgerline_service::ConfigSource;

#[derive(Debug, Parser)]
#[command(about = "Ledgerline operator commands")]
struct Cli {
    /// Bootstrap servers; overrides [kafka].brokers.
    #[arg(long, global = true)]
    brokers: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exit 0 when the cluster answers a metadata request within the timeout.
    KafkaHealth {
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Create topics that do not exist yet; existing ones are left as they are.
    CreateTopics {
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication: i32,
        /// Topic configuration, `key=value`, repeatable (e.g. `cleanup.policy=compact`).
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        #[arg(required = true)]
        topics: Vec<String>,
    },
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got `{text}`"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let mut kafka: KafkaConfig = source.section("kafka").context("failed to load [kafka]")?;
    if let Some(brokers) = cli.brokers {
        kafka.brokers = brokers;
    }
    kafka.validate()?;

    match cli.command {
        Command::KafkaHealth { timeout_secs } => {
            let probe = KafkaProbe::new(&kafka).context("failed to create kafka client")?;
            let brokers = probe
                .check(Duration::from_secs(timeout_secs))
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!("kafka ok: {brokers} broker(s) at {}", kafka.brokers);
        }
        Command::CreateTopics {
            partitions,
            replication,
            configs,
            topics,
        } => {
            let layout = NewTopics {
                config: configs,
                ..NewTopics::new(partitions, replication).timeout(Duration::from_secs(10))
            };
            let states = ensure_topics(&kafka.client_config(), &topics, &layout).await?;
            for (name, state) in states {
                match state {
                    TopicState::Created => eprintln!("created topic {name}"),
                    TopicState::Existed => eprintln!("topic {name} exists"),
                }
            }
        }
    }
    Ok(())
}
