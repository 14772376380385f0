//! Debian's Prometheus and Alertmanager for the monitoring tests, each on a free loopback port
//! in its own scratch directory, with the repository's own configuration:
//! `deploy/monitoring/prometheus.yml.in` rendered with the targets a test gives, the alert
//! rules `deploy/monitoring/rules.yml` as they are, and `deploy/monitoring/alertmanager.yml`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{self, ManagedChild};
use crate::{HarnessError, Result};

/// `LEDGERLINE_PROMETHEUS` / `LEDGERLINE_ALERTMANAGER` override the Debian paths.
pub const PROMETHEUS_ENV: &str = "LEDGERLINE_PROMETHEUS";
pub const ALERTMANAGER_ENV: &str = "LEDGERLINE_ALERTMANAGER";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 3;

/// The repository's `deploy/monitoring/` directory.
pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("deploy/monitoring"), Path::to_path_buf)
        .join("deploy")
        .join("monitoring")
}

/// Where each Ledgerline service serves `/metrics` (`host:port`).
#[derive(Debug, Clone)]
pub struct ScrapeTargets {
    pub projector: String,
    pub archiver: String,
    pub api: String,
    pub registry: String,
}

#[derive(Debug)]
pub struct Prometheus {
    port: u16,
    process: ManagedChild,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Alertmanager {
    port: u16,
    process: ManagedChild,
    _dir: tempfile::TempDir,
}

/// `env`'s path, else Debian's, else `name` on `PATH`.
fn binary(env: &str, debian: &str, name: &str, what: &'static str) -> Result<PathBuf> {
    process::debian_binary(
        env,
        debian,
        name,
        what,
        "prometheus and prometheus-alertmanager",
    )
}

/// Starts `command_for(port)` until it listens on `port` (a free port can be taken between
/// the check and the bind, so it retries on another).
fn start_on_free_port(
    what: &'static str,
    dir: &Path,
    mut command_for: impl FnMut(u16) -> Command,
) -> Result<(u16, ManagedChild)> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let port = process::free_port()?;
        let log = dir.join(format!("{what}.log"));
        let mut child = ManagedChild::spawn(what, command_for(port), &log)
            .map_err(|source| HarnessError::Spawn { what, source })?;
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT && child.is_running() {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Another process may have taken the port between the check and the bind:
                // then ours exits with a bind error, and something else answered.
                std::thread::sleep(Duration::from_millis(300));
                if child.is_running() {
                    return Ok((port, child));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if attempts >= START_ATTEMPTS {
            return Err(HarnessError::NotReady {
                what,
                seconds: READY_TIMEOUT.as_secs(),
                detail: process::tail(&log, 20),
                log: log.display().to_string(),
            });
        }
    }
}

impl Alertmanager {
    /// Alertmanager with `deploy/monitoring/alertmanager.yml`, clustering off.
    pub fn start() -> Result<Self> {
        let binary = binary(
            ALERTMANAGER_ENV,
            "/usr/bin/prometheus-alertmanager",
            "prometheus-alertmanager",
            "alertmanager",
        )?;
        let dir = process::scratch_dir("alertmanager-")?;
        let config = monitoring_dir().join("alertmanager.yml");
        let data = dir.path().join("data");
        let (port, process) = start_on_free_port("alertmanager", dir.path(), |port| {
            let mut command = Command::new(&binary);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // No peers: an empty cluster address turns the gossip listener off.
                .arg("--cluster.listen-address=");
            command
        })?;
        Ok(Self {
            port,
            process,
            _dir: dir,
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    pub fn log(&self) -> &Path {
        self.process.log()
    }
}

impl Prometheus {
    /// Prometheus scraping `targets` and evaluating `deploy/monitoring/rules.yml` every
    /// `interval`, sending alerts to `alertmanager`.
    pub fn start(
        targets: &ScrapeTargets,
        alertmanager: &Alertmanager,
        interval: Duration,
    ) -> Result<Self> {
        let binary = binary(
            PROMETHEUS_ENV,
            "/usr/bin/prometheus",
            "prometheus",
            "prometheus",
        )?;
        let dir = process::scratch_dir("prometheus-")?;
        let template = std::fs::read_to_string(monitoring_dir().join("prometheus.yml.in"))?;
        let rules = monitoring_dir().join("rules.yml");
        let data = dir.path().join("data");
        let config_file = dir.path().join("prometheus.yml");
        let (port, process) = start_on_free_port("prometheus", dir.path(), |port| {
            let config = render_config(
                &template,
                &[
                    ("SCRAPE_INTERVAL", format!("{}s", interval.as_secs().max(1))),
                    ("RULES_FILE", rules.display().to_string()),
                    ("ALERTMANAGER", alertmanager.address()),
                    ("PROJECTOR", targets.projector.clone()),
                    ("ARCHIVER", targets.archiver.clone()),
                    ("API", targets.api.clone()),
                    ("REGISTRY", targets.registry.clone()),
                    ("PROMETHEUS", format!("127.0.0.1:{port}")),
                ],
            );
            if let Err(error) = std::fs::write(&config_file, config) {
                eprintln!("cannot write {}: {error}", config_file.display());
            }
            let mut command = Command::new(&binary);
            command
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            command
        })?;
        Ok(Self {
            port,
            process,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> &Path {
        self.process.log()
    }
}

/// `template` with every `@NAME@` replaced; `deploy/local/up` renders the same file with sed.
pub fn render_config(template: &str, values: &[(&str, String)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("@{name}@"), value)
        })
}
