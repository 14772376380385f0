//! A Tansu broker on a free loopback port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ledgerline_service::kafka::{ensure_topics, NewTopics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::{self, ManagedChild};
use crate::{HarnessError, Result};

/// How long a broker may take to answer its first metadata request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Start-up attempts, each on a new free port.
const START_ATTEMPTS: u32 = 3;

/// Tansu's storage engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// Fast (about 8x SQLite here); lost when the broker stops.
    Memory,
    /// Durable across a broker restart, for tests that stop the broker.
    Sqlite,
}

#[derive(Debug)]
pub struct Broker {
    storage: BrokerStorage,
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    process: Option<ManagedChild>,
}

impl Broker {
    /// Starts a broker in a fresh temporary directory and waits until it answers metadata.
    pub fn start(storage: BrokerStorage) -> Result<Self> {
        let binary = tansu_binary()?;
        let dir = process::scratch_dir("broker-")?;
        let mut broker = Self {
            storage,
            port: process::free_port()?,
            dir,
            binary,
            process: None,
        };
        // A free port can be taken by another process before Tansu binds it; try a fresh one.
        let mut attempts = 1;
        loop {
            match broker.restart() {
                Ok(()) => return Ok(broker),
                Err(error) if attempts >= START_ATTEMPTS => return Err(error),
                Err(_) => {
                    attempts += 1;
                    broker.port = process::free_port()?;
                }
            }
        }
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// SIGKILLs the broker (a crash, as far as clients can tell). With [`BrokerStorage::Sqlite`]
    /// its data survives for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill();
        }
    }

    /// Starts (again) on the same port and storage, and waits until it is ready.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let storage = match self.storage {
            BrokerStorage::Memory => "memory://tansu/".to_owned(),
            // Tansu resolves the SQLite path against its working directory.
            BrokerStorage::Sqlite => "sqlite://tansu.db".to_owned(),
        };
        let mut command = Command::new(&self.binary);
        command
            .current_dir(self.dir.path())
            .arg("broker")
            .args(["--cluster-id", "ledgerline-test"])
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            .args(["--storage-engine", &storage]);
        let child = ManagedChild::spawn("tansu", command, &self.log()).map_err(|source| {
            HarnessError::Spawn {
                what: "tansu",
                source,
            }
        })?;
        self.process = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let consumer: BaseConsumer = self.client_config().create()?;
        let started = Instant::now();
        let mut last_error = String::from("no answer");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.process.as_mut() {
                if !child.is_running() {
                    last_error = "tansu exited during start-up".to_owned();
                    break;
                }
            }
            match consumer.fetch_metadata(None, Duration::from_secs(1)) {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                Ok(_) => last_error = "metadata lists no brokers".to_owned(),
                Err(error) => last_error = error.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(HarnessError::NotReady {
            what: "tansu",
            seconds: READY_TIMEOUT.as_secs(),
            detail: format!("{last_error}\n{}", process::tail(&self.log(), 20)),
            log: self.log().display().to_string(),
        })
    }

    /// Client settings every test client starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap());
        config
    }

    /// A consumer config in `group` that reads from the beginning and commits only when told.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000");
        config
    }

    /// An idempotent, acks=all producer config.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "30000");
        config
    }

    /// Creates `name` with `partitions` partitions, as every component does
    /// (`ensure_topics`: Tansu does not auto-create topics); an existing topic is left as it is.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let layout = NewTopics::new(partitions, 1).timeout(Duration::from_secs(10));
        ensure_topics(&self.client_config(), &[name], &layout).await?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The Tansu binary: `LEDGERLINE_TANSU_BIN`, else the deploy scripts' cached build, else `PATH`.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ledgerline_service::env::TANSU_BIN) {
        return Ok(PathBuf::from(path));
    }
    let cached = process::cache_dir()
        .join("tansu-0.6.0")
        .join("bin")
        .join("tansu");
    process::find_binary(std::slice::from_ref(&cached), "tansu").ok_or_else(|| {
        HarnessError::BinaryNotFound {
            what: "tansu",
            hint: format!(
                "looked at {} and PATH; run deploy/local/install (or set {})",
                cached.display(),
                ledgerline_service::env::TANSU_BIN
            ),
        }
    })
}
