//! `demo`: a realistic mixed workload for the local stack (`deploy/local/up` runs it as the
//! sample traffic).
//!
//! Jobs move through QUEUED → RUNNING (progress) → COMPLETED or FAILED (most of them on a device,
//! whose connection and session lines carry the job id); operators open SSH sessions to devices
//! (connect, authenticate, commands with their input and output lines, disconnect; a few are
//! rejected or time out); users sign in (some fail, some from outside), administrators grant and
//! revoke roles, and a viewer is denied a change; services log, with warnings and errors. The
//! mix is deterministic for a given `--seed`.
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
const ROLES: &[&str] = &["operator", "viewer", "network-admin"];
const DEVICES: &[(&str, &str)] = &[
    ("dev-core-1", "core router 1"),
    ("dev-core-2", "core router 2"),
    ("dev-edge-7", "edge switch 7"),
    ("dev-fw-3", "firewall 3"),
];
const JOB_KINDS: &[(&str, &str)] = &[
    ("backup", "Configuration backup"),
    ("firmware", "Firmware upgrade"),
    ("compliance", "Compliance scan"),
];
/// What an operator types into a device session, and what the device answers.
const COMMANDS: &[(&str, &str)] = &[
    ("show version", "JUNOS 22.4R1.10 built 2023-01-12\n"),
    (
        "show interfaces terse",
        "ge-0/0/0  up  up\nge-0/0/1  up  down\n",
    ),
    (
        "show configuration | display set",
        "set system host-name core-1\nset interfaces ge-0/0/0 unit 0\n",
    ),
    (
        "ping 192.0.2.1 count 3",
        "3 packets transmitted, 3 received\n",
    ),
];

struct Job {
    id: String,
    kind: (&'static str, &'static str),
    progress: u8,
    /// The device session this job drives, if any: its connection and session lines carry
    /// the job id, so a job's page shows them.
    device: Option<usize>,
}

/// An open device session: connect → authenticate → commands (each an input line and an
/// output line) → disconnect, with one `session_id` attribute on all of them.
struct DeviceSession {
    device: usize,
    session_id: String,
    job_id: Option<String>,
    commands_left: u8,
    authenticated: bool,
}

#[derive(Default)]
struct World {
    jobs: Vec<Job>,
    sessions: Vec<DeviceSession>,
}

fn pick<T: Copy>(rng: &mut Rng, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

/// One event of the workload: roughly 35 % device sessions, 30 % jobs, 20 % sign-ins and
/// permission changes, 15 % service logs (a few warnings and errors).
/// Returns how many events it published (a device-session step publishes up to three).
async fn one(ledger: &Ledger, rng: &mut Rng, world: &mut World, n: u64) -> anyhow::Result<u64> {
    let roll = rng.below(100);
    if roll < 35 {
        session_step(ledger, rng, world, n).await
    } else if roll < 65 {
        job_step(ledger, rng, world, n).await
    } else if roll < 85 {
        audit_event(ledger, rng, n).await.map(|()| 1)
    } else {
        system_event(ledger, rng).await.map(|()| 1)
    }
}

async fn job_step(
    ledger: &Ledger,
    rng: &mut Rng,
    world: &mut World,
    n: u64,
) -> anyhow::Result<u64> {
    if world.jobs.len() < 4 && (world.jobs.is_empty() || rng.below(4) == 0) {
        let kind = pick(rng, JOB_KINDS);
        let id = format!("job-{n}");
        ledger
            .job("job.queued", &id, kind.0, kind.1, JobStatus::Queued)
            .message(format!("{} queued", kind.1))
            .details(serde_json::json!({"requested_by": pick(rng, USERS)}))
            .publish()
            .await?;
        // Most jobs work on a device: they open a session of their own.
        let device = (rng.below(3) != 0).then(|| rng.below(DEVICES.len() as u64) as usize);
        if let Some(device) = device {
            world.sessions.push(DeviceSession {
                device,
                session_id: format!("s-{n}"),
                job_id: Some(id.clone()),
                commands_left: 2 + rng.below(3) as u8,
                authenticated: false,
            });
        }
        world.jobs.push(Job {
            id,
            kind,
            progress: 0,
            device,
        });
        return Ok(1);
    }
    let index = rng.below(world.jobs.len() as u64) as usize;
    let job = &mut world.jobs[index];
    job.progress = (job.progress + 10 + rng.below(20) as u8).min(100);
    let (kind, label) = job.kind;
    let mut draft = match job.progress {
        100 if rng.below(6) == 0 => {
            let device = job.device.map_or("the scheduler", |d| DEVICES[d].1);
            ledger
                .job("job.failed", &job.id, kind, label, JobStatus::Failed)
                .level(Level::Error)
                .message(format!("{label} failed: {device} did not answer in 30 s"))
        }
        100 => ledger
            .job("job.completed", &job.id, kind, label, JobStatus::Completed)
            .message(format!("{label} completed")),
        p => ledger
            .job("job.progress", &job.id, kind, label, JobStatus::Running)
            .message(format!("{label} {p}% done")),
    };
    draft = draft.progress(job.progress);
    draft.publish().await?;
    if job.progress == 100 {
        world.jobs.swap_remove(index);
    }
    Ok(1)
}

async fn session_step(
    ledger: &Ledger,
    rng: &mut Rng,
    world: &mut World,
    n: u64,
) -> anyhow::Result<u64> {
    if world.sessions.len() < 3 && (world.sessions.is_empty() || rng.below(5) == 0) {
        // An operator opens an interactive session.
        world.sessions.push(DeviceSession {
            device: rng.below(DEVICES.len() as u64) as usize,
            session_id: format!("s-{n}"),
            job_id: None,
            commands_left: 1 + rng.below(4) as u8,
            authenticated: false,
        });
    }
    let index = rng.below(world.sessions.len() as u64) as usize;
    let session = &mut world.sessions[index];
    let (device_id, device_name) = DEVICES[session.device];
    let connection = |phase: ConnectionPhase, outcome: Outcome, message: String| {
        let mut draft = ledger
            .connection("device.connection", device_id, device_name, phase, outcome)
            .attribute("session_id", session.session_id.clone())
            .message(message);
        if let Some(job_id) = &session.job_id {
            draft = draft.job_id(job_id);
        }
        draft
    };
    if !session.authenticated {
        connection(
            ConnectionPhase::Connect,
            Outcome::Success,
            format!("{device_name}: connected over SSH"),
        )
        .duration(Duration::from_millis(20 + rng.below(200)))
        .publish()
        .await?;
        let rejected = rng.below(10) == 0;
        if rejected {
            connection(
                ConnectionPhase::Authenticate,
                Outcome::Failure,
                format!("{device_name}: authentication failed"),
            )
            .error("publickey rejected by the device")
            .level(Level::Warn)
            .publish()
            .await?;
            world.sessions.swap_remove(index);
            return Ok(2);
        }
        connection(
            ConnectionPhase::Authenticate,
            Outcome::Success,
            format!("{device_name}: authenticated"),
        )
        .publish()
        .await?;
        session.authenticated = true;
        return Ok(2);
    }
    if session.commands_left == 0 {
        connection(
            ConnectionPhase::Disconnect,
            Outcome::Success,
            format!("{device_name}: disconnected"),
        )
        .publish()
        .await?;
        world.sessions.swap_remove(index);
        return Ok(1);
    }
    session.commands_left -= 1;
    let (command, output) = pick(rng, COMMANDS);
    let slow = rng.below(15) == 0;
    let mut draft = connection(
        ConnectionPhase::Command,
        if slow {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        format!("{device_name}: {command}"),
    )
    .duration(Duration::from_millis(if slow {
        5_000
    } else {
        5 + rng.below(400)
    }));
    if slow {
        draft = draft.error("command timed out").level(Level::Warn);
    }
    draft.publish().await?;
    for (direction, data) in [
        (Direction::Input, format!("{command}\n")),
        (Direction::Output, output.to_owned()),
    ] {
        let mut line = ledger
            .session(device_id, direction, &data)
            .attribute("session_id", session.session_id.clone());
        if let Some(job_id) = &session.job_id {
            line = line.job_id(job_id);
        }
        line.publish().await?;
    }
    Ok(3)
}

async fn audit_event(ledger: &Ledger, rng: &mut Rng, n: u64) -> anyhow::Result<()> {
    let user = pick(rng, USERS);
    let actor = |id: &str, ip: String| Actor {
        id: id.to_owned(),
        kind: "user".to_owned(),
        ip,
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".to_owned()),
    };
    match rng.below(10) {
        0..=5 => {
            // Sign-ins: one in six fails; now and then someone guesses from outside.
            let outsider = rng.below(12) == 0;
            let ok = !outsider && rng.below(6) != 0;
            let (who, ip) = if outsider {
                ("admin", format!("203.0.113.{}", rng.below(250)))
            } else {
                (user, format!("192.0.2.{}", 10 + rng.below(40)))
            };
            let draft = ledger
                .audit(
                    if ok {
                        "user.login.success"
                    } else {
                        "user.login.failure"
                    },
                    actor(who, ip),
                    "login",
                    if ok {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    },
                    serde_json::json!({"method": if rng.below(3) == 0 { "sso" } else { "password" }}),
                )
                .target("account", who);
            if ok {
                draft.message(format!("{who} signed in"))
            } else {
                draft
                    .reason(if outsider {
                        "unknown account"
                    } else {
                        "wrong password"
                    })
                    .level(Level::Warn)
                    .message(format!("{who} failed to sign in"))
            }
            .publish()
            .await?;
        }
        6..=8 => {
            // An administrator changes someone's role.
            let admin = pick(rng, &USERS[..2]);
            let subject = pick(rng, USERS);
            let role = pick(rng, ROLES);
            let grant = rng.below(3) != 0;
            ledger
                .audit(
                    if grant {
                        "user.permission.granted"
                    } else {
                        "user.permission.revoked"
                    },
                    actor(admin, format!("192.0.2.{}", 10 + rng.below(40))),
                    if grant { "grant_role" } else { "revoke_role" },
                    Outcome::Success,
                    serde_json::json!({"role": role, "ticket": format!("CHG-{}", 1000 + n % 9000)}),
                )
                .target("user", subject)
                .message(format!(
                    "{admin} {} {role} {} {subject}",
                    if grant { "granted" } else { "revoked" },
                    if grant { "to" } else { "from" }
                ))
                .publish()
                .await?;
        }
        _ => {
            // A denied change: a viewer tries to edit a device's configuration.
            let device = pick(rng, DEVICES).0;
            ledger
                .audit(
                    "device.config.change",
                    actor(user, format!("192.0.2.{}", 10 + rng.below(40))),
                    "edit_config",
                    Outcome::Denied,
                    serde_json::json!({"section": "interfaces"}),
                )
                .target("device", device)
                .reason("role viewer may not edit configuration")
                .level(Level::Warn)
                .message(format!(
                    "{user} was denied a configuration change on {device}"
                ))
                .publish()
                .await?;
        }
    }
    Ok(())
}

async fn system_event(ledger: &Ledger, rng: &mut Rng) -> anyhow::Result<()> {
    match rng.below(20) {
        0..=13 => {
            ledger
                .system(
                    "service.heartbeat",
                    Level::Info,
                    "demo::scheduler",
                    "Scheduler tick",
                )
                .field("queue_depth", rng.below(50).to_string())
                .publish()
                .await?
        }
        14..=17 => {
            let used = 80 + rng.below(15);
            ledger
                .system(
                    "storage.disk_usage",
                    Level::Warn,
                    "demo::storage",
                    &format!("Backup volume {used}% full"),
                )
                .field("volume", "/var/backups")
                .field("used_percent", used.to_string())
                .publish()
                .await?
        }
        _ => {
            let error = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "inventory service did not answer within 10 s",
            );
            ledger
                .system(
                    "inventory.sync_failed",
                    Level::Error,
                    "demo::inventory",
                    "Device inventory sync failed; retrying in 60 s",
                )
                .error(&error)
                .publish()
                .await?
        }
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
    let mut world = World::default();
    let started = Instant::now();
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    // `step` names what a step creates (job-<step>, s-<step>); `n` counts events, which
    // `--count` and `--rate` are about (a step publishes one to three).
    let mut step = 0u64;
    let mut n = 0u64;
    // SIGTERM (what `deploy/local/down` sends) or Ctrl-C: stop, then flush what was queued.
    let stop = ledgerline_service::shutdown::on_signal()?;
    while args.count == 0 || n < args.count {
        tokio::select! {
            () = stop.cancelled() => break,
            result = one(&ledger, &mut rng, &mut world, step) => n += result?,
        }
        step += 1;
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
