//! `demo`: a realistic mixed workload for the local stack (`deploy/local/up` runs it as the
//! sample traffic).
//!
//! Jobs move through QUEUED → RUNNING (progress) → COMPLETED or FAILED while devices connect,
//! authenticate and stream session output; users sign in (some fail); services log. The mix is
//! deterministic for a given `--seed`.
//!
//! `cargo run -p ledgerline-producer --example demo -- --rate 50 --count 1000 --seed 7`
//! (`--count 0` runs until SIGTERM or Ctrl-C, then flushes; `--rate 0` publishes as fast as the
//! producer accepts.)

// An example reports to its terminal.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ledgerline_producer::event::{Actor, ConnectionPhase, Direction, JobStatus, Level, Outcome};
use ledgerline_producer::Ledger;
use ledgerline_service::ConfigSource;

#[derive(Debug, Parser)]
struct Args {
    /// Events per second (0: no limit).
    #[arg(long, default_value_t = 20)]
    rate: u64,
    /// Events to publish (0: until Ctrl-C).
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64*: deterministic, dependency-free, good enough to pick a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

const USERS: &[&str] = &["alice", "bob", "carol", "dave", "erin"];
const DEVICES: &[(&str, &str)] = &[
    ("dev-core-1", "core router 1"),
    ("dev-core-2", "core router 2"),
    ("dev-edge-7", "edge switch 7"),
    ("dev-fw-3", "firewall 3"),
];

struct Job {
    id: String,
    progress: u8,
}

async fn one(ledger: &Ledger, rng: &mut Rng, jobs: &mut Vec<Job>, n: u64) -> anyhow::Result<()> {
    let roll = rng.below(100);
    if roll < 45 {
        if jobs.len() < 5 && rng.below(4) == 0 {
            let id = format!("job-{n}");
            ledger
                .job(
                    "job.queued",
                    &id,
                    "backup",
                    "Configuration backup",
                    JobStatus::Queued,
                )
                .message("Configuration backup queued")
                .publish()
                .await?;
            jobs.push(Job { id, progress: 0 });
            return Ok(());
        }
        let Some(index) = (!jobs.is_empty()).then(|| rng.below(jobs.len() as u64) as usize) else {
            return Ok(());
        };
        let job = &mut jobs[index];
        job.progress = (job.progress + 10 + rng.below(20) as u8).min(100);
        let (name, status, message) = match job.progress {
            100 if rng.below(10) == 0 => (
                "job.failed",
                JobStatus::Failed,
                "Configuration backup failed".to_owned(),
            ),
            100 => (
                "job.completed",
                JobStatus::Completed,
                "Configuration backup completed".to_owned(),
            ),
            p => (
                "job.progress",
                JobStatus::Running,
                format!("Configuration backup {p}% done"),
            ),
        };
        ledger
            .job(name, &job.id, "backup", "Configuration backup", status)
            .progress(job.progress)
            .message(message)
            .publish()
            .await?;
        if job.progress == 100 {
            jobs.swap_remove(index);
        }
    } else if roll < 65 {
        let (device_id, device_name) = DEVICES[rng.below(DEVICES.len() as u64) as usize];
        let phases = [
            ConnectionPhase::Connect,
            ConnectionPhase::Authenticate,
            ConnectionPhase::Command,
            ConnectionPhase::Disconnect,
        ];
        let phase = phases[rng.below(phases.len() as u64) as usize];
        let failed = rng.below(12) == 0;
        let mut draft = ledger
            .connection(
                "device.connection",
                device_id,
                device_name,
                phase,
                if failed {
                    Outcome::Failure
                } else {
                    Outcome::Success
                },
            )
            .duration(Duration::from_millis(5 + rng.below(400)))
            .message(format!("{device_name}: {phase:?}"));
        if failed {
            draft = draft.error("connection timed out").level(Level::Warn);
        }
        draft.publish().await?;
    } else if roll < 80 {
        let level = if rng.below(8) == 0 {
            Level::Warn
        } else {
            Level::Info
        };
        ledger
            .system(
                "service.heartbeat",
                level,
                "demo::scheduler",
                "Scheduler tick",
            )
            .field("queue_depth", rng.below(50).to_string())
            .publish()
            .await?;
    } else if roll < 93 {
        let user = USERS[rng.below(USERS.len() as u64) as usize];
        let ok = rng.below(6) != 0;
        let actor = Actor {
            id: user.to_owned(),
            kind: "user".to_owned(),
            ip: format!("192.0.2.{}", 10 + rng.below(40)),
            user_agent: Some("Mozilla/5.0".to_owned()),
        };
        ledger
            .audit(
                if ok {
                    "user.login.success"
                } else {
                    "user.login.failure"
                },
                actor,
                "login",
                if ok {
                    Outcome::Success
                } else {
                    Outcome::Failure
                },
                serde_json::json!({"method": "password"}),
            )
            .message(if ok {
                format!("{user} signed in")
            } else {
                format!("{user} failed to sign in")
            })
            .publish()
            .await?;
    } else {
        let (device_id, _) = DEVICES[rng.below(DEVICES.len() as u64) as usize];
        ledger
            .session(device_id, Direction::Output, "interface ge-0/0/1 up\n")
            .publish()
            .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let mut config: ledgerline_producer::ProducerConfig = source.section("producer")?;
    if config.service_name.is_empty() {
        config.service_name = "demo".to_owned();
    }
    let ledger = Ledger::builder_from(&source)?
        .config(config)
        .build()
        .await
        .context("failed to start the producer")?;

    let mut rng = Rng(args.seed.max(1));
    let mut jobs = Vec::new();
    let started = Instant::now();
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut n = 0u64;
    // SIGTERM (what `deploy/local/down` sends) or Ctrl-C: stop, then flush what was queued.
    let stop = ledgerline_service::shutdown::on_signal()?;
    while args.count == 0 || n < args.count {
        tokio::select! {
            () = stop.cancelled() => break,
            result = one(&ledger, &mut rng, &mut jobs, n) => result?,
        }
        n += 1;
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(n as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    let stats = ledger.flush(Duration::from_secs(30)).await?;
    println!(
        "published {n} events in {:.1}s: {} delivered, {} failed",
        started.elapsed().as_secs_f64(),
        stats.delivered,
        stats.failed
    );
    Ok(())
}
