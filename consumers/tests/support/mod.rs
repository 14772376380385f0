//! What the projector process tests share: starting `ledgerline-consumer projector` against a
//! test's servers, and reading what it did.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::process::Command;

use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::projector::queries::{EventQuery, EventReader, ReadLimits};
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_tests::{names, Broker, BrokerStorage, Harness, RegistryServer};
use secrecy::ExposeSecret;

/// A SQLite-engine broker (projector processes are killed and resume inside producer
/// batches: see `projector_crash.rs`), a registry on it, and a random database on the shared
/// ClickHouse.
pub struct ProcessStack {
    pub broker: Broker,
    pub registry: RegistryServer,
    pub clickhouse: ClickHouseConfig,
}

impl ProcessStack {
    pub fn start() -> Self {
        let harness = Harness::shared().unwrap();
        let broker = Broker::start(BrokerStorage::Sqlite).unwrap();
        let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
        let clickhouse = ClickHouseConfig {
            url: harness.clickhouse.url(),
            user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
            password: harness.clickhouse.password().into(),
            database: names::database(),
            ..ClickHouseConfig::default()
        };
        Self {
            broker,
            registry,
            clickhouse,
        }
    }

    /// A producer publishing as `service`.
    pub async fn ledger(&self, service: &str, config: ProducerConfig) -> Ledger {
        Ledger::builder(service)
            .config(ProducerConfig {
                service_name: service.to_owned(),
                ..config
            })
            .brokers(self.broker.bootstrap())
            .registry_url(self.registry.url())
            .build()
            .await
            .unwrap()
    }
}

/// `ledgerline-consumer projector` configured through the environment, as an operator would,
/// for a test's broker, registry and ClickHouse database; with static group membership when
/// `instance` is given. Batches of 3,000 events or 200 ms. Returns the command and the free
/// loopback address its `/health` and `/metrics` will listen on.
pub fn projector_command(
    broker: &Broker,
    registry: &RegistryServer,
    clickhouse: &ClickHouseConfig,
    group: &str,
    instance: Option<&str>,
    dir: &std::path::Path,
) -> (Command, String) {
    let listen = free_listen_address();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerline-consumer"));
    command
        .arg("projector")
        .current_dir(dir)
        .env_remove("LEDGERLINE_CONFIG")
        .env("RUST_LOG", "info")
        .env("LEDGERLINE_KAFKA__BROKERS", broker.bootstrap())
        .env("LEDGERLINE_SCHEMA_REGISTRY__URL", registry.url())
        .env("LEDGERLINE_PROJECTOR__CLICKHOUSE__URL", &clickhouse.url)
        .env("LEDGERLINE_PROJECTOR__CLICKHOUSE__USER", &clickhouse.user)
        .env(
            "LEDGERLINE_PROJECTOR__CLICKHOUSE__PASSWORD",
            clickhouse.password.expose_secret(),
        )
        .env(
            "LEDGERLINE_PROJECTOR__CLICKHOUSE__DATABASE",
            &clickhouse.database,
        )
        .env("LEDGERLINE_PROJECTOR__GROUP_ID", group)
        .env("LEDGERLINE_PROJECTOR__LISTEN", &listen)
        .env("LEDGERLINE_PROJECTOR__BATCH_MAX_EVENTS", "3000")
        .env("LEDGERLINE_PROJECTOR__BATCH_MAX_WAIT_MS", "200");
    if let Some(instance) = instance {
        command.env("LEDGERLINE_PROJECTOR__GROUP_INSTANCE_ID", instance);
    }
    (command, listen)
}

/// Events this projector process has written, from its own `/metrics`: the stored count can
/// grow after a kill too, when ClickHouse stores what a killed run's insert had sent.
pub async fn written_by(listen: &str) -> u64 {
    let Ok(response) = reqwest::get(format!("http://{listen}/metrics")).await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|line| {
            line.starts_with("ledgerline_consumer_events_total{")
                && line.contains("outcome=\"written\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

fn free_listen_address() -> String {
    format!(
        "127.0.0.1:{}",
        ledgerline_tests::process::free_port().unwrap()
    )
}

/// The projector's reader over `clickhouse`'s database, with the default limits.
pub fn reader(clickhouse: &ClickHouseConfig) -> EventReader {
    EventReader::new(
        clickhouse.client(),
        &clickhouse.database,
        ReadLimits::default(),
    )
    .unwrap()
}

pub async fn count(clickhouse: &ClickHouseConfig, query: &EventQuery) -> u64 {
    reader(clickhouse).count(query).await.unwrap_or(0)
}
