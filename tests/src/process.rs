//! Server processes that cannot outlive the test process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process, and
//! cargo runs each test on its own short-lived thread. So every server is forked by one
//! supervisor thread that lives as long as the process; when the process exits for any reason,
//! including SIGKILL, the kernel sends SIGKILL to every server.

// prctl and kill need libc; each unsafe block says why it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn supervisor() -> io::Result<mpsc::Sender<SpawnRequest>> {
    let sender = SUPERVISOR.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<SpawnRequest>();
        // The thread never exits (it blocks on a channel whose sender is static), so children
        // it forked keep running until the process itself ends.
        let spawned = std::thread::Builder::new()
            .name("ledgerline-harness-supervisor".to_owned())
            .spawn(move || {
                for (mut command, reply) in requests {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(error) = spawned {
            // Without the supervisor every spawn fails below with this message.
            eprintln!("failed to start the harness supervisor thread: {error}");
        }
        Mutex::new(sender)
    });
    sender
        .lock()
        .map(|sender| sender.clone())
        .map_err(|_| io::Error::other("harness supervisor lock poisoned"))
}

/// A running server. Dropping it kills the process.
#[derive(Debug)]
pub struct ManagedChild {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ManagedChild {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> io::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let parent = std::process::id();
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let (reply, response) = mpsc::channel();
        supervisor()?
            .send((command, reply))
            .map_err(|_| io::Error::other("harness supervisor thread is gone"))?;
        let child = response
            .recv()
            .map_err(|_| io::Error::other("harness supervisor thread is gone"))??;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether the process is still running (it may have crashed on start-up).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, once it has (reaping it); `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the process group this child leads (it must have been started with
    /// `process_group(0)`), then reaps the child: for servers that start processes of their
    /// own (chromedriver and its browsers), which the parent-death signal does not reach.
    pub fn kill_group(&mut self) {
        if let Ok(group) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the group our own unreaped child leads, so the group id
            // cannot have been reused.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        self.kill();
    }

    /// SIGKILL, then reap: what a crash looks like to the rest of the system.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            self.kill();
            return;
        };
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet, so the pid
        // cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        self.kill();
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port. Another process could take it before the server binds it; the
/// servers' start-up retries with a new port when that happens.
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// The last `lines` lines of a log, for error messages.
pub fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Where the deploy scripts cache build output and binaries (`~/.cache/ledgerline`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ledgerline_service::env::CACHE_DIR) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("ledgerline")
}

/// First existing path among `candidates`, else the first `name` found on `PATH`.
pub fn find_binary(candidates: &[PathBuf], name: &str) -> Option<PathBuf> {
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
}

/// A server binary from a Debian package: the path in the environment variable `env` when it
/// is set, else `debian`, else `name` on `PATH`; when none exists, the error says which
/// `packages` to install.
pub fn debian_binary(
    env: &str,
    debian: &str,
    name: &str,
    what: &'static str,
    packages: &str,
) -> crate::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os(env) {
        candidates.push(PathBuf::from(path));
    }
    candidates.push(PathBuf::from(debian));
    find_binary(&candidates, name).ok_or_else(|| crate::HarnessError::BinaryNotFound {
        what,
        hint: format!("install Debian's {packages} (deploy/local/install does), or set {env}"),
    })
}

/// A temporary directory for one server, inside `$TMPDIR/ledgerline-harness-<pid>/`.
///
/// Owned servers remove theirs on drop, but the shared harness lives in a static, which Rust
/// never drops. So the first call in each process sweeps the directories of harness processes
/// that have exited, and nothing piles up in `/tmp` across test runs.
pub fn scratch_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    static SWEEP: std::sync::Once = std::sync::Once::new();
    let root = std::env::temp_dir();
    SWEEP.call_once(|| sweep_stale(&root));
    let parent = root.join(format!("ledgerline-harness-{}", std::process::id()));
    std::fs::create_dir_all(&parent)?;
    tempfile::Builder::new().prefix(prefix).tempdir_in(parent)
}

fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("ledgerline-harness-"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
