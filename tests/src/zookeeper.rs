//! Debian's ZooKeeper (the `zookeeper` package) as one standalone server on a free loopback
//! port, for the replicated-ClickHouse tests: ClickHouse 18.16 coordinates replicas and
//! `ON CLUSTER` DDL through it (current releases can use ClickHouse Keeper, which speaks the
//! same protocol).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{self, ManagedChild};
use crate::{HarnessError, Result};

/// `LEDGERLINE_ZOOKEEPER_JAR` overrides Debian's jar (its manifest names its dependencies).
pub const ZOOKEEPER_JAR_ENV: &str = "LEDGERLINE_ZOOKEEPER_JAR";

/// The JVM starts in a few seconds here; this only bounds a broken start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct ZooKeeper {
    port: u16,
    _process: ManagedChild,
    _dir: tempfile::TempDir,
}

impl ZooKeeper {
    pub fn start() -> Result<Self> {
        let jar = std::env::var_os(ZOOKEEPER_JAR_ENV).map_or_else(
            || PathBuf::from("/usr/share/java/zookeeper.jar"),
            PathBuf::from,
        );
        if !jar.is_file() {
            return Err(HarnessError::BinaryNotFound {
                what: "zookeeper",
                hint: format!(
                    "{} not found: install Debian's zookeeper (deploy/local/install does), or set {ZOOKEEPER_JAR_ENV}",
                    jar.display()
                ),
            });
        }
        let dir = process::scratch_dir("zookeeper-")?;
        let port = process::free_port()?;
        let config = dir.path().join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=ruok,srvr\n",
                dir.path().join("data").display()
            ),
        )?;
        let log = dir.path().join("zookeeper.log");
        let mut command = Command::new("java");
        command
            .arg("-Xmx256m")
            .arg("-cp")
            .arg(&jar)
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&config);
        let mut child = ManagedChild::spawn("zookeeper", command, &log).map_err(|source| {
            HarnessError::Spawn {
                what: "zookeeper",
                source,
            }
        })?;
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT && child.is_running() {
            if serving(port) {
                return Ok(Self {
                    port,
                    _process: child,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::NotReady {
            what: "zookeeper",
            seconds: READY_TIMEOUT.as_secs(),
            detail: process::tail(&log, 20),
            log: log.display().to_string(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Whether ZooKeeper serves clients: `ruok` answers `imok` as soon as the process runs, but
/// sessions are refused until `srvr` reports its mode (`standalone` here).
fn serving(port: u16) -> bool {
    four_letters(port, "ruok").is_some_and(|answer| answer == "imok")
        && four_letters(port, "srvr").is_some_and(|answer| answer.contains("Mode: standalone"))
}

/// A four-letter command's answer.
fn four_letters(port: u16, command: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(command.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}
