//! The Ledgerline binaries under test, built by the cargo that runs the tests.
//!
//! They belong to other packages, whose `CARGO_BIN_EXE_*` this package cannot see, and
//! `cargo test -p ledgerline-tests` does not build them. So the first test to need one runs
//! `cargo build` for all of them (the cargo running the tests, with the target directory and
//! profile the test binary was built with) and takes them from that profile's directory.
//! Building every time also means a stale binary from an earlier build is never the one
//! tested; when nothing changed it takes about a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `(package, binary)` for every binary under test, built together.
pub const BINARIES: &[(&str, &str)] = &[
    ("ledgerline-registry", "ledgerline-registry"),
    ("ledgerline-service", "ledgerline-admin"),
    ("ledgerline-consumers", "ledgerline-consumer"),
    ("ledgerline-query-api", "ledgerline-api"),
];

/// Builds [`BINARIES`] once per test process and returns the directory that holds them.
pub fn binary_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = DIR.get_or_init(|| {
        // This test runs as `<target dir>/<profile dir>/deps/binaries-<hash>`.
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .ok_or_else(|| format!("unexpected test binary path {}", exe.display()))?;
        let target_dir = profile_dir
            .parent()
            .ok_or_else(|| format!("unexpected test binary path {}", exe.display()))?;
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => return Err(format!("no profile directory in {}", exe.display())),
        };
        let cargo = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("cargo"));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no workspace directory")?;
        let mut command = Command::new(&cargo);
        command
            .current_dir(workspace)
            .arg("build")
            .arg("--quiet")
            .arg("--profile")
            .arg(&profile)
            .arg("--target-dir")
            .arg(target_dir);
        for (package, binary) in BINARIES {
            command.args(["-p", package, "--bin", binary]);
        }
        let output = command
            .output()
            .map_err(|e| format!("failed to run {}: {e}", cargo.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{command:?} failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(profile_dir.to_owned())
    });
    match built {
        Ok(dir) => dir,
        Err(error) => panic!("could not build the binaries under test: {error}"),
    }
}

/// The path of the binary `name` (one of [`BINARIES`]), built first.
pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
