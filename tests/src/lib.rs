//! `ledgerline-tests` owns the end-to-end tests and the harness they share.
//!
//! The harness starts real servers: a Tansu broker (memory engine by default, SQLite when a
//! test needs durability across a broker restart), Ledgerline's schema registry (in-process,
//! on its own runtime, storing into a randomly named `_schemas` topic) and a ClickHouse server,
//! each on free loopback ports in its own temporary directory. [`Harness::shared`] starts one broker and one
//! ClickHouse per test process, on first use; tests isolate themselves with the random names
//! from [`names`] (topics, groups, databases), so any test can run alone or in parallel with
//! the others. A test that must stop or restart a server starts its own with
//! [`broker::Broker::start`] or [`clickhouse::ClickHouseServer::start`] instead.
//!
//! Servers never outlive the test process: they are spawned from one long-lived supervisor
//! thread with `PR_SET_PDEATHSIG`, so the kernel kills them even when the test binary is
//! SIGKILLed, and an owned server is also stopped on drop. Tests never touch a developer's
//! running stack (fixed ports 9092/8123 are never used).

use std::sync::OnceLock;

pub mod binaries;
pub mod broker;
pub mod chromedriver;
pub mod clickhouse;
pub mod names;
pub mod process;
pub mod prometheus;
pub mod registry;
pub mod services;
pub mod zookeeper;

pub use broker::{Broker, BrokerStorage};
pub use chromedriver::ChromeDriver;
pub use clickhouse::ClickHouseServer;
pub use registry::RegistryServer;

/// Why the harness could not start or drive a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error("{what} binary not found: {hint}")]
    BinaryNotFound { what: &'static str, hint: String },
    #[error("failed to start {what}: {source}")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not become ready within {seconds}s: {detail} (log: {log})")]
    NotReady {
        what: &'static str,
        seconds: u64,
        detail: String,
        log: String,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Topics(#[from] ledgerline_service::kafka::TopicError),
    #[error("clickhouse error: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("shared harness failed to start earlier: {0}")]
    SharedFailed(String),
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// One broker, one schema registry (on that broker) and one ClickHouse shared by every test in
/// the process.
#[derive(Debug)]
pub struct Harness {
    pub broker: Broker,
    pub registry: RegistryServer,
    pub clickhouse: ClickHouseServer,
}

static SHARED: OnceLock<std::result::Result<Harness, String>> = OnceLock::new();

impl Harness {
    /// Starts the shared servers on first call (both at once, since ClickHouse needs well under
    /// a second and the broker a little more) and returns them to every later caller.
    pub fn shared() -> Result<&'static Harness> {
        SHARED
            .get_or_init(|| {
                let clickhouse = std::thread::spawn(ClickHouseServer::start);
                let broker = Broker::start(BrokerStorage::Memory).map_err(|e| e.to_string())?;
                let registry =
                    RegistryServer::start(&broker.bootstrap()).map_err(|e| e.to_string())?;
                let clickhouse = clickhouse
                    .join()
                    .map_err(|_| "clickhouse start-up thread panicked".to_owned())?
                    .map_err(|e| e.to_string())?;
                Ok(Harness {
                    broker,
                    registry,
                    clickhouse,
                })
            })
            .as_ref()
            .map_err(|e| HarnessError::SharedFailed(e.clone()))
    }
}
