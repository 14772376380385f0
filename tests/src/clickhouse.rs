//! A ClickHouse server on free loopback ports, configured from the same templates as the local
//! stack (`deploy/clickhouse/*.xml.in`), so tests run against the users and walls production
//! uses: projector, archiver, api and auditor, each limited to its database, and the `default`
//! administrator, which needs a password like every other user (docs/clickhouse-users.md).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{self, ManagedChild};
use crate::{names, HarnessError, Result};

const CONFIG_TEMPLATE: &str = include_str!("../../deploy/clickhouse/config.xml.in");
const USERS_TEMPLATE: &str = include_str!("../../deploy/clickhouse/users.xml.in");

/// ClickHouse starts in well under a second here; this only bounds a broken start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: u32 = 3;

/// The administrator (loopback only, every right): tests use it to set up databases and tables
/// and to check what a role did.
pub const ADMIN: &str = "default";

/// The Ledgerline roles that have a ClickHouse user.
pub const ROLES: [&str; 4] = ["projector", "archiver", "api", "auditor"];

/// The ports of a server that must be known before it starts: a cluster's configuration lists
/// every member's.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub tcp: u16,
    /// Where replicas fetch parts from each other.
    pub interserver: u16,
}

impl Ports {
    pub fn free() -> Result<Self> {
        Ok(Self {
            http: process::free_port()?,
            tcp: process::free_port()?,
            interserver: process::free_port()?,
        })
    }
}

#[derive(Debug)]
pub struct ClickHouseServer {
    http_port: u16,
    tcp_port: u16,
    interserver_port: u16,
    /// Written to `config.d/extra.xml`, which ClickHouse merges into the main config: a
    /// replica's cluster, ZooKeeper and macros.
    extra_config: Option<String>,
    /// Random per server, and the password of every user on it: [`ADMIN`] and the [`ROLES`].
    password: String,
    dir: tempfile::TempDir,
    binary: PathBuf,
    process: Option<ManagedChild>,
}

impl ClickHouseServer {
    pub fn start() -> Result<Self> {
        let binary = clickhouse_binary()?;
        let dir = process::scratch_dir("clickhouse-")?;
        let mut server = Self {
            http_port: process::free_port()?,
            tcp_port: process::free_port()?,
            interserver_port: process::free_port()?,
            extra_config: None,
            password: names::unique("pw"),
            dir,
            binary,
            process: None,
        };
        let mut attempts = 1;
        loop {
            match server.restart() {
                Ok(()) => return Ok(server),
                Err(error) if attempts >= START_ATTEMPTS => return Err(error),
                Err(_) => {
                    attempts += 1;
                    server.http_port = process::free_port()?;
                    server.tcp_port = process::free_port()?;
                }
            }
        }
    }

    /// A server on `ports` with `password` for every user and `extra_config` (a `<yandex>`
    /// document) merged into its configuration: a member of a cluster. No retry on another
    /// port, since the other members' configurations name these.
    pub fn start_with(ports: Ports, password: &str, extra_config: String) -> Result<Self> {
        let mut server = Self {
            http_port: ports.http,
            tcp_port: ports.tcp,
            interserver_port: ports.interserver,
            extra_config: Some(extra_config),
            password: password.to_owned(),
            dir: process::scratch_dir("clickhouse-")?,
            binary: clickhouse_binary()?,
            process: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The native protocol's port (what a cluster's `remote_servers` name).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The password of [`ADMIN`] and of every role's user (see [`ROLES`]): one per server.
    pub fn password(&self) -> &str {
        &self.password
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("clickhouse-server.err.log")
    }

    /// A client as the [`ADMIN`] user.
    pub fn client(&self) -> clickhouse::Client {
        self.client_as(ADMIN)
    }

    /// A client as one of the [`ROLES`] (or [`ADMIN`]), with its password. Validation is off
    /// because the crate's schema validation sends a setting ClickHouse 18.16 does not know.
    pub fn client_as(&self, user: &str) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(self.url())
            .with_user(user)
            .with_password(&self.password)
            .with_validation(false)
    }

    /// Creates a database with a random name and returns the name.
    pub async fn create_database(&self) -> Result<String> {
        let name = names::database();
        self.client()
            .query(&format!("CREATE DATABASE {name}"))
            .execute()
            .await?;
        Ok(name)
    }

    /// SIGKILLs the server; its data stays for [`Self::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill();
        }
    }

    /// Writes the config and starts (again) on the same ports and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        let dir = self.dir.path();
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("tmp"))?;
        let config = CONFIG_TEMPLATE
            .replace("@LOG_DIR@", &dir.display().to_string())
            .replace("@DATA_DIR@", &data.display().to_string())
            .replace("@CONFIG_DIR@", &dir.display().to_string())
            .replace("@HTTP_PORT@", &self.http_port.to_string())
            .replace("@TCP_PORT@", &self.tcp_port.to_string());
        let mut users = USERS_TEMPLATE.to_owned();
        for user in std::iter::once(ADMIN).chain(ROLES) {
            let marker = format!("@{}_PASSWORD@", user.to_ascii_uppercase());
            users = users.replace(&marker, &self.password);
        }
        std::fs::write(dir.join("config.xml"), config)?;
        if let Some(extra) = &self.extra_config {
            std::fs::create_dir_all(dir.join("config.d"))?;
            let extra = extra.replace("@INTERSERVER_PORT@", &self.interserver_port.to_string());
            std::fs::write(dir.join("config.d").join("extra.xml"), extra)?;
        }
        std::fs::write(dir.join("users.xml"), users)?;
        let mut command = Command::new(&self.binary);
        command.current_dir(dir).arg(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ));
        let child = ManagedChild::spawn("clickhouse", command, &dir.join("stdout.log")).map_err(
            |source| HarnessError::Spawn {
                what: "clickhouse",
                source,
            },
        )?;
        self.process = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut last_error = String::from("no answer");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.process.as_mut() {
                if !child.is_running() {
                    last_error = "clickhouse-server exited during start-up".to_owned();
                    break;
                }
            }
            match ping(self.http_port) {
                Ok(()) => return Ok(()),
                Err(error) => last_error = error,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(HarnessError::NotReady {
            what: "clickhouse",
            seconds: READY_TIMEOUT.as_secs(),
            detail: format!("{last_error}\n{}", process::tail(&self.log(), 20)),
            log: self.log().display().to_string(),
        })
    }
}

/// `GET /ping` over a plain socket: the harness readiness check stays synchronous, so the
/// shared harness can start from any test without a runtime.
fn ping(port: u16) -> std::result::Result<(), String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    if response.starts_with("HTTP/1.") && response.contains(" 200 ") && response.ends_with("Ok.\n")
    {
        Ok(())
    } else {
        Err(format!("unexpected /ping answer: {response:?}"))
    }
}

/// `LEDGERLINE_CLICKHOUSE_BIN`, else `clickhouse-server` on `PATH` or in `/usr/bin`.
pub fn clickhouse_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(ledgerline_service::env::CLICKHOUSE_BIN) {
        return Ok(PathBuf::from(path));
    }
    process::find_binary(
        &[PathBuf::from("/usr/bin/clickhouse-server")],
        "clickhouse-server",
    )
    .ok_or_else(|| HarnessError::BinaryNotFound {
        what: "clickhouse-server",
        hint: "install Debian's clickhouse-server (deploy/local/install does)".to_owned(),
    })
}
