//! A schema registry for tests, running in this process (not a child process) against a given
//! broker, each server on its own random topic so parallel tests never share ids or configs.
//!
//! The registry runs on a dedicated thread that owns a multi-thread tokio runtime. That keeps
//! the harness synchronous like the rest of it: any test, async or not, can start, stop and
//! restart a registry without handing it a runtime, and stopping one never depends on the
//! test's own runtime still running.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use ledgerline_registry::{RegistryConfig, RegistryError};
use ledgerline_service::kafka::KafkaConfig;
use tokio_util::sync::CancellationToken;

use crate::{names, HarnessError, Result};

/// Start-up includes creating the topic and replaying it; this only bounds a broken start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RegistryServer {
    bootstrap: String,
    config: RegistryConfig,
    addr: SocketAddr,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl RegistryServer {
    /// A leader on a fresh topic (`schemas_<random>`) of the broker at `bootstrap`.
    pub fn start(bootstrap: &str) -> Result<Self> {
        Self::start_with(
            bootstrap,
            RegistryConfig {
                topic: names::unique("schemas"),
                ..RegistryConfig::default()
            },
        )
    }

    /// A registry with `config` as given (its topic, mode, auth…), except that it listens on a
    /// free loopback port. Use [`Self::topic`] of another server to start a replica of it.
    pub fn start_with(bootstrap: &str, config: RegistryConfig) -> Result<Self> {
        let config = RegistryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..config
        };
        let (running, addr) = launch(bootstrap, config.clone())?;
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            config,
            addr,
            running: Some(running),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// Stops the registry gracefully (in-flight requests are answered) and waits until it has.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown.cancel();
            if running.thread.join().is_err() {
                eprintln!("registry thread for {} panicked", self.config.topic);
            }
        }
    }

    /// Stops and starts again on the same topic, so it replays everything written so far. It
    /// keeps its port when it can, else takes a new one; [`Self::url`] tells which.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let same_port = RegistryConfig {
            listen: self.addr,
            ..self.config.clone()
        };
        let (running, addr) = match launch(&self.bootstrap, same_port) {
            // Someone took the port meanwhile: any free one will do.
            Err(LaunchError::Registry(RegistryError::Bind { .. })) => {
                launch(&self.bootstrap, self.config.clone())?
            }
            other => other?,
        };
        self.addr = addr;
        self.running = Some(running);
        Ok(())
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why [`launch`] failed; kept apart from [`HarnessError`] so a restart can tell "port taken"
/// from everything else.
#[derive(Debug)]
enum LaunchError {
    Registry(RegistryError),
    Thread(std::io::Error),
    NotReady,
}

impl From<LaunchError> for HarnessError {
    fn from(error: LaunchError) -> Self {
        match error {
            LaunchError::Registry(error) => HarnessError::Spawn {
                what: "registry",
                source: std::io::Error::other(error.to_string()),
            },
            LaunchError::Thread(source) => HarnessError::Spawn {
                what: "registry",
                source,
            },
            LaunchError::NotReady => HarnessError::NotReady {
                what: "registry",
                seconds: READY_TIMEOUT.as_secs(),
                detail: "start-up did not finish".to_owned(),
                log: "stderr of this test process".to_owned(),
            },
        }
    }
}

/// Starts the registry on its own thread and runtime; returns once it serves.
fn launch(
    bootstrap: &str,
    config: RegistryConfig,
) -> std::result::Result<(Running, SocketAddr), LaunchError> {
    let kafka = KafkaConfig {
        brokers: bootstrap.to_owned(),
        ..KafkaConfig::default()
    };
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (ready, started) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("registry-{}", config.topic))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(LaunchError::Thread(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                match ledgerline_registry::start(config, kafka, token).await {
                    Ok(running) => {
                        let _ = ready.send(Ok(running.addr));
                        match running.task.await {
                            Ok(Ok(())) => {}
                            Ok(Err(error)) => eprintln!("registry failed: {error}"),
                            Err(error) => eprintln!("registry task panicked: {error}"),
                        }
                    }
                    Err(error) => {
                        let _ = ready.send(Err(LaunchError::Registry(error)));
                    }
                }
            });
        })
        .map_err(LaunchError::Thread)?;
    match started.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(addr)) => Ok((Running { shutdown, thread }, addr)),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => {
            // The cancelled start-up returns on its own; the thread then ends.
            shutdown.cancel();
            Err(LaunchError::NotReady)
        }
    }
}
