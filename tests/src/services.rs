//! Ledgerline's own binaries as separate processes, for tests that need what only separate
//! processes give: a `/metrics` per service (the metrics recorder is process-wide), and a
//! service that can be stopped or killed on its own while the others keep running.
//!
//! Each runs with one `ledgerline.toml` given through `LEDGERLINE_CONFIG`, every other
//! `LEDGERLINE_*` variable removed (so nothing from the developer's shell reaches it), and its
//! output in a log of its own.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::binaries::binary;
use crate::process::{self, ManagedChild};
use crate::{HarnessError, Result};

/// One running service.
#[derive(Debug)]
pub struct Service {
    name: &'static str,
    /// `127.0.0.1:<port>` of its HTTP listener (`/health`, `/metrics`).
    listen: String,
    binary: PathBuf,
    args: Vec<String>,
    config: PathBuf,
    log: PathBuf,
    process: Option<ManagedChild>,
}

impl Service {
    /// Starts `binary args…` with `config` and waits until `http://listen/health` answers 200.
    pub fn start(
        name: &'static str,
        binary_name: &str,
        args: &[&str],
        config: &Path,
        listen: &str,
        log_dir: &Path,
    ) -> Result<Self> {
        let mut service = Self {
            name,
            listen: listen.to_owned(),
            binary: binary(binary_name),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            config: config.to_owned(),
            log: log_dir.join(format!("{name}.log")),
            process: None,
        };
        service.restart()?;
        Ok(service)
    }

    /// Starts it again (after [`Self::terminate`] or [`Self::kill`]) and waits for `/health`.
    pub fn restart(&mut self) -> Result<()> {
        let mut command = Command::new(&self.binary);
        command.args(&self.args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LEDGERLINE_") {
                command.env_remove(&key);
            }
        }
        command
            .env("LEDGERLINE_CONFIG", &self.config)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE");
        let child = ManagedChild::spawn(self.name, command, &self.log).map_err(|source| {
            HarnessError::Spawn {
                what: self.name,
                source,
            }
        })?;
        self.process = Some(child);
        self.wait_healthy(Duration::from_secs(90))
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < timeout {
            if !self.is_running() {
                last = "exited".to_owned();
                break;
            }
            match http_get(&self.listen, "/health") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status}: {body}"),
                Err(error) => last = error.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::NotReady {
            what: self.name,
            seconds: timeout.as_secs(),
            detail: format!("{last}\n{}", process::tail(&self.log, 30)),
            log: self.log.display().to_string(),
        })
    }

    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(ManagedChild::is_running)
    }

    /// SIGTERM, SIGKILL after 15 s; waits until it has exited.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.terminate(Duration::from_secs(15));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill();
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn listen(&self) -> &str {
        &self.listen
    }

    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// A free loopback address, `127.0.0.1:<port>`.
pub fn free_address() -> Result<String> {
    Ok(format!("127.0.0.1:{}", process::free_port()?))
}

/// A plain HTTP/1.0 GET of `path` on `address`: the status and the body. Enough for health
/// checks, with no HTTP client in the harness.
pub fn http_get(address: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:.80}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}
