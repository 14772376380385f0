//! A job runner reporting progress.
//!
//! Job events are keyed by `job_id`, so a job's QUEUED → RUNNING (with progress) → COMPLETED
//! events stay in order on one partition. Progress goes through `publish` (queued, the runner
//! never waits on Kafka); the final state goes through `send`, which waits for the broker.
//!
//! `cargo run -p ledgerline-producer --example job_runner`

// An example reports to its terminal.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use anyhow::Context;
use ledgerline_producer::event::JobStatus;
use ledgerline_producer::Ledger;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ledger = Ledger::builder("example-job-runner")
        .service_version(env!("CARGO_PKG_VERSION"))
        .build()
        .await
        .context("failed to start the producer")?;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(ledger.tracing_layer())
        .init();

    let job_id = format!("job-{}", uuid::Uuid::now_v7().simple());
    let (job_type, job_name) = ("backup", "Nightly configuration backup");
    async {
        ledger
            .job("job.queued", &job_id, job_type, job_name, JobStatus::Queued)
            .message("Nightly configuration backup queued")
            .send()
            .await?;
        for step in 1..=10u8 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ledger
                .job(
                    "job.progress",
                    &job_id,
                    job_type,
                    job_name,
                    JobStatus::Running,
                )
                .progress(step * 10)
                .details(serde_json::json!({"devices_done": step, "devices_total": 10}))
                .message(format!("Backed up {step} of 10 devices"))
                .publish()
                .await?;
        }
        // Logged inside the job span: the tracing layer attaches job_id to this system event.
        tracing::info!(devices = 10, "backup finished");
        ledger
            .job(
                "job.completed",
                &job_id,
                job_type,
                job_name,
                JobStatus::Completed,
            )
            .progress(100)
            .message("Nightly configuration backup completed")
            .send()
            .await?;
        anyhow::Ok(())
    }
    .instrument(tracing::info_span!("job", job_id = %job_id))
    .await?;

    let stats = ledger.flush(Duration::from_secs(10)).await?;
    println!(
        "job {job_id}: {} event(s) delivered, {} failed",
        stats.delivered, stats.failed
    );
    Ok(())
}
