//! A device session: connection phases and the live session I/O between them.
//!
//! Connection events are keyed by `device_id`; session events carry the terminal traffic for
//! live tails (fanned out, never stored). A secret typed into the session is redacted before
//! it leaves the process.
//!
//! `cargo run -p ledgerline-producer --example device_session`

// An example reports to its terminal.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use ledgerline_producer::event::{ConnectionPhase, Direction, Outcome};
use ledgerline_producer::Ledger;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ledger = Ledger::builder("example-device-session")
        .build()
        .await
        .context("failed to start the producer")?;
    let (device_id, device_name, job_id) = ("dev-core-1", "core router", "job-config-pull");

    let started = Instant::now();
    ledger
        .connection(
            "device.connect",
            device_id,
            device_name,
            ConnectionPhase::Connect,
            Outcome::Success,
        )
        .job_id(job_id)
        .message("Connected to the core router")
        .duration(started.elapsed())
        .send()
        .await?;
    ledger
        .connection(
            "device.authenticate",
            device_id,
            device_name,
            ConnectionPhase::Authenticate,
            Outcome::Success,
        )
        .job_id(job_id)
        .message("Authenticated to the core router")
        .send()
        .await?;
    for (direction, data) in [
        (Direction::Input, "enable\n"),
        (Direction::Output, "Password: "),
        // What an operator types here is a secret; the bearer pattern is redacted.
        (Direction::Input, "Bearer s3cr3t-t0ken\n"),
        (Direction::Input, "show running-config\n"),
        (Direction::Output, "hostname core-1\ninterface ge-0/0/0\n"),
    ] {
        ledger
            .session(device_id, direction, data)
            .job_id(job_id)
            .publish()
            .await?;
    }
    ledger
        .connection(
            "device.disconnect",
            device_id,
            device_name,
            ConnectionPhase::Disconnect,
            Outcome::Success,
        )
        .job_id(job_id)
        .message("Disconnected from the core router")
        .duration(started.elapsed())
        .send()
        .await?;

    let stats = ledger.flush(Duration::from_secs(10)).await?;
    println!(
        "{} event(s) delivered, {} failed",
        stats.delivered, stats.failed
    );
    Ok(())
}
