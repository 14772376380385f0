//! ChromeDriver with Debian's headless Chromium, for the console's browser tests: one
//! `chromedriver` per test on a free loopback port (the test's WebDriver client opens its own
//! session), with the flags Chromium needs on a closed network as root.

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{self, ManagedChild};
use crate::{HarnessError, Result};

/// `LEDGERLINE_CHROMEDRIVER` / `LEDGERLINE_CHROMIUM` override the Debian paths.
pub const CHROMEDRIVER_ENV: &str = "LEDGERLINE_CHROMEDRIVER";
pub const CHROMIUM_ENV: &str = "LEDGERLINE_CHROMIUM";

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS: u32 = 3;

/// A running `chromedriver`. Dropping it kills the driver's whole process group, so the
/// browsers it started go too, even when a test failed before closing its session (the
/// kernel's parent-death signal reaches only the driver, not its grandchildren).
#[derive(Debug)]
pub struct ChromeDriver {
    port: u16,
    chromium: PathBuf,
    process: ManagedChild,
    dir: tempfile::TempDir,
}

/// `env`'s path, else Debian's, else `name` on `PATH`.
fn binary(env: &str, debian: &str, name: &str, what: &'static str) -> Result<PathBuf> {
    process::debian_binary(env, debian, name, what, "chromium and chromium-driver")
}

impl ChromeDriver {
    pub fn start() -> Result<Self> {
        let driver = binary(
            CHROMEDRIVER_ENV,
            "/usr/bin/chromedriver",
            "chromedriver",
            "chromedriver",
        )?;
        let chromium = binary(CHROMIUM_ENV, "/usr/bin/chromium", "chromium", "chromium")?;
        let dir = process::scratch_dir("chromedriver-")?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = process::free_port()?;
            let log = dir.path().join("chromedriver.log");
            let mut command = Command::new(&driver);
            command
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .process_group(0);
            let mut child =
                ManagedChild::spawn("chromedriver", command, &log).map_err(|source| {
                    HarnessError::Spawn {
                        what: "chromedriver",
                        source,
                    }
                })?;
            let started = Instant::now();
            while started.elapsed() < READY_TIMEOUT && child.is_running() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Self {
                        port,
                        chromium,
                        process: child,
                        dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if attempts >= START_ATTEMPTS {
                return Err(HarnessError::NotReady {
                    what: "chromedriver",
                    seconds: READY_TIMEOUT.as_secs(),
                    detail: process::tail(&log, 20),
                    log: log.display().to_string(),
                });
            }
        }
    }

    /// The WebDriver endpoint, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `goog:chromeOptions` for a headless session of `width`×`height`, with a profile
    /// of its own. Background networking is off: this machine's closed network refuses it,
    /// and a test must not depend on the outside anyway.
    pub fn chrome_options(&self, width: u32, height: u32) -> Result<serde_json::Value> {
        let profile = tempfile::tempdir_in(self.dir.path())?.keep();
        Ok(serde_json::json!({
            "binary": self.chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--disable-default-apps", "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--window-size={width},{height}"),
                format!("--user-data-dir={}", profile.display()),
            ],
        }))
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        self.process.kill_group();
    }
}
