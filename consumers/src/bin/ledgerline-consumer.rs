//! `ledgerline-consumer <consumer>`: runs one consumer service, or one of the archive's tools.
//!
//! - `projector` (alias `clickhouse`): `[kafka]`, `[schema_registry]`, `[projector]` and
//!   `[telemetry]` from `ledgerline.toml` / `LEDGERLINE_*`; see
//!   [`ledgerline_consumers::projector::run`].
//! - `archive` (or `archive run`): the tamper-evident audit archive, from `[archive]`; see
//!   [`ledgerline_consumers::archive::run`].
//! - `dlq inspect | replay`: the dead-letter topic's tools (see [`ledgerline_consumers::dlq`]).
//! - `archive keygen | verify | prove | check-proof | export`: the archive's key and review
//!   tools. `verify` exits 0 when everything is intact, 1 when something is broken, 2 when it
//!   could not run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ledgerline_consumers::archive::checkpoint::{self, TrustedKeys};
use ledgerline_consumers::archive::kafka::BrokerView;
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::archive::verify::{self, Decoder, KafkaView, VerifyOptions};
use ledgerline_consumers::archive::{self, bundle, proof, ArchiveSettings};
use ledgerline_consumers::dlq;
use ledgerline_consumers::projector::{self, ProjectorSettings};
use ledgerline_schemas::EventCodec;
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::telemetry::{self, TelemetryConfig};
use ledgerline_service::{shutdown, ConfigSource};
use secrecy::ExposeSecret;

// The projector allocates a few dozen strings per event and frees them a batch later on
// another thread; glibc's allocator spent about a third of the projector's CPU on that
// (profile in docs/benchmarks.md), mimalloc a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Ledgerline consumer services")]
struct Cli {
    #[command(subcommand)]
    consumer: ConsumerName,
}

#[derive(Debug, Subcommand)]
enum ConsumerName {
    /// Project the stored categories into ClickHouse (`ledgerline.events`, `job_status`).
    #[command(alias = "clickhouse")]
    Projector,
    /// The tamper-evident audit archive: run it (no subcommand), or use its tools.
    Archive {
        #[command(subcommand)]
        command: Option<ArchiveCommand>,
    },
    /// The dead-letter topic `ledgerline.dlq`: inspect it, or replay records after a fix.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters with their reason, error and source coordinates (reads only).
    Inspect {
        #[command(flatten)]
        select: DlqSelect,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-publish dead letters to their source topic and partition, each at most once across
    /// runs (progress is kept in `ledgerline.dlq.replays`).
    Replay {
        #[command(flatten)]
        select: DlqSelect,
        /// Dead-lettered before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// List what would be replayed, and publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
struct DlqSelect {
    /// Only this reason (`invalid_event`, `oversize`, `unknown_topic`, …); repeat for several.
    #[arg(long = "reason")]
    reasons: Vec<String>,
    /// Dead-lettered at or after this RFC 3339 time (`--since` and `--from` are the same).
    #[arg(long, visible_alias = "from")]
    since: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Archive `ledgerline.audit` into ClickHouse `ledgerline_audit` (the default).
    Run,
    /// Write a new Ed25519 signing key file; prints its public key and key id.
    Keygen {
        /// The key file to write (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Recompute every chain, Merkle root and checkpoint signature, and compare with Kafka.
    Verify(VerifyArgs),
    /// Write the inclusion proof of one event: its record, Merkle path and signed checkpoint.
    Prove {
        event_id: String,
        /// Where to write the proof (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a proof offline, with the public key alone.
    CheckProof {
        file: PathBuf,
        /// Trusted public key (hex, as `keygen` prints it); repeat for several.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<String>,
    },
    /// Write a self-verifying bundle of a range of the archive for reviewers.
    Export {
        /// Only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// First offset (widened to the start of its checkpoint segment).
        #[arg(long)]
        from: Option<i64>,
        /// Last offset (widened to the end of its checkpoint segment).
        #[arg(long)]
        to: Option<i64>,
        /// The directory to write (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Only this partition.
    #[arg(long)]
    partition: Option<i32>,
    /// From this offset (widened to the start of its checkpoint segment).
    #[arg(long)]
    from: Option<i64>,
    /// To this offset (widened to the end of its checkpoint segment).
    #[arg(long)]
    to: Option<i64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Trusted public key (hex); repeat for several. Default: the keys of `[archive]`
    /// (`trusted_public_keys` and the signing key files' public keys).
    #[arg(long = "public-key")]
    public_keys: Vec<String>,
    /// Do not compare with Kafka.
    #[arg(long)]
    no_kafka: bool,
    /// Do not decode the stored bytes to check the stored fields.
    #[arg(long)]
    no_decode: bool,
    /// Verify an exported bundle directory instead of ClickHouse (offline).
    #[arg(long)]
    bundle: Option<PathBuf>,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the runtime: {error}"
            );
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(Cli::parse())) {
        Ok(code) => code,
        Err(error) => {
            // The report `fn main() -> anyhow::Result<()>` prints (the error, then its causes),
            // without the backtrace it adds when RUST_BACKTRACE is set: this is for operators.
            let mut report = format!("Error: {error}");
            for (index, cause) in error.chain().skip(1).enumerate() {
                if index == 0 {
                    report.push_str("\n\nCaused by:");
                }
                report.push_str(&format!("\n    {index}: {cause}"));
            }
            let _ = writeln!(std::io::stderr(), "{report}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let telemetry_config: TelemetryConfig = source.section("telemetry")?;
    telemetry_config.validate()?;
    match cli.consumer {
        ConsumerName::Projector => {
            telemetry::init_tracing(&telemetry_config)?;
            let settings = ProjectorSettings::load(&source)?;
            let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
            projector::run(settings, shutdown)
                .await
                .context("projector failed")?;
        }
        ConsumerName::Dlq { command } => return dlq_command(&source, command).await,
        ConsumerName::Archive { command } => match command.unwrap_or(ArchiveCommand::Run) {
            ArchiveCommand::Run => {
                telemetry::init_tracing(&telemetry_config)?;
                let settings = ArchiveSettings::load(&source)?;
                let shutdown =
                    shutdown::on_signal().context("failed to install signal handlers")?;
                archive::run(settings, shutdown)
                    .await
                    .context("archive failed")?;
            }
            ArchiveCommand::Keygen { out } => keygen(&out)?,
            ArchiveCommand::Verify(args) => return verify_command(&source, args).await,
            ArchiveCommand::Prove { event_id, out } => {
                let settings = ArchiveSettings::load(&source)?;
                let store = store(&settings)?;
                let proof = proof::prove(&store, &event_id).await?;
                let text = proof::to_json(&proof);
                match out {
                    Some(path) => std::fs::write(&path, text)
                        .with_context(|| format!("failed to write {}", path.display()))?,
                    None => print(&text)?,
                }
            }
            ArchiveCommand::CheckProof { file, public_keys } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("failed to read {}", file.display()))?;
                let trusted = trusted_from_hex(&public_keys)?;
                let checked =
                    proof::from_json(&text).and_then(|proof| proof::check(&proof, &trusted));
                return Ok(match checked {
                    Ok(summary) => {
                        print(&format!(
                            "proof valid: {}\n",
                            serde_json::to_string(&summary)?
                        ))?;
                        ExitCode::SUCCESS
                    }
                    Err(error) => {
                        print(&format!("PROOF INVALID: {error}\n"))?;
                        ExitCode::from(1)
                    }
                });
            }
            ArchiveCommand::Export {
                partition,
                from,
                to,
                out,
            } => {
                let settings = ArchiveSettings::load(&source)?;
                let store = store(&settings)?;
                let codec = EventCodec::new(&settings.schema_registry)?;
                let keys = configured_public_keys(&settings)?;
                let options = bundle::ExportOptions {
                    partition,
                    from,
                    to,
                };
                let summary = bundle::export(&store, &codec, &keys, &options, &out).await?;
                print(&format!("{}\n", serde_json::to_string_pretty(&summary)?))?;
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let generated = checkpoint::generate()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(out).with_context(|| {
        format!(
            "failed to create {} (an existing key is never overwritten)",
            out.display()
        )
    })?;
    file.write_all(generated.secret_file.expose_secret().as_bytes())
        .with_context(|| format!("failed to write {}", out.display()))?;
    print(&format!(
        "wrote {}\nkey_id: {}\npublic_key: {}\n",
        out.display(),
        generated.key_id,
        generated.public_key_hex
    ))
}

async fn verify_command(source: &ConfigSource, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let report = if let Some(dir) = &args.bundle {
        let trusted = if args.public_keys.is_empty() {
            None
        } else {
            Some(trusted_from_hex(&args.public_keys)?)
        };
        bundle::verify_bundle(dir, trusted.as_ref()).await?
    } else {
        let settings = ArchiveSettings::load(source)?;
        let store = store(&settings)?;
        let trusted = if args.public_keys.is_empty() {
            let keys = configured_public_keys(&settings)?;
            let mut trusted = TrustedKeys::new();
            for key in keys {
                trusted.insert(key);
            }
            trusted
        } else {
            trusted_from_hex(&args.public_keys)?
        };
        if trusted.is_empty() {
            bail!("no trusted public key: pass --public-key, or set archive.signing_key_file or archive.trusted_public_keys");
        }
        let decoder = if args.no_decode {
            Decoder::None
        } else {
            Decoder::Registry(std::sync::Arc::new(EventCodec::new(
                &settings.schema_registry,
            )?))
        };
        let group = settings
            .archive
            .consumer
            .group_id
            .clone()
            .unwrap_or_else(|| archive::DEFAULT_GROUP_ID.to_owned());
        let kafka = if args.no_kafka {
            None
        } else {
            Some(
                std::sync::Arc::new(BrokerView::new(&settings.kafka, &group)?)
                    as std::sync::Arc<dyn KafkaView>,
            )
        };
        let options = VerifyOptions {
            partition: args.partition,
            from: args.from,
            to: args.to,
            last_checkpoints: None,
        };
        verify::verify(&store, &trusted, &decoder, kafka, &options).await?
    };
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        print(&report.to_text())?;
    }
    Ok(if report.intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// An RFC 3339 time as µs since the epoch, for `--since`/`--to`.
fn micros(name: &str, text: &str) -> anyhow::Result<i64> {
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("--{name} must be an RFC 3339 time such as 2026-12-01T10:00:00Z, not `{text}`")
        })?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000).context("time out of range")
}

fn selection(select: DlqSelect, to: Option<String>) -> anyhow::Result<dlq::Selection> {
    Ok(dlq::Selection {
        reasons: select.reasons,
        since_us: select
            .since
            .as_deref()
            .map(|t| micros("since", t))
            .transpose()?,
        until_us: to.as_deref().map(|t| micros("to", t)).transpose()?,
    })
}

fn format_us(us: Option<i64>) -> String {
    us.and_then(|us| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok())
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// `dlq inspect` and `dlq replay`: `[kafka]` from the config. Exit 0, or 2 when they could
/// not run.
async fn dlq_command(source: &ConfigSource, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let kafka: KafkaConfig = source.section("kafka")?;
    match command {
        DlqCommand::Inspect { select, json } => {
            let letters = dlq::read_dead_letters(&kafka, &selection(select, None)?).await?;
            let mut out = String::new();
            let mut by_reason = std::collections::BTreeMap::<String, u64>::new();
            for letter in &letters {
                *by_reason
                    .entry(letter.reason.clone().unwrap_or_else(|| "(none)".to_owned()))
                    .or_default() += 1;
                if json {
                    out.push_str(&serde_json::to_string(letter)?);
                    out.push('\n');
                    continue;
                }
                let source = match letter.source() {
                    Some((topic, partition, offset)) => format!("{topic}/{partition}/{offset}"),
                    None => "(no source headers: not replayable)".to_owned(),
                };
                out.push_str(&format!(
                    "{}  {}  reason={}  source={}  bytes={}\n    error: {}\n",
                    letter.id(),
                    format_us(letter.time_us),
                    letter.reason.as_deref().unwrap_or("-"),
                    source,
                    letter.value_bytes,
                    letter.error.as_deref().unwrap_or("-"),
                ));
            }
            if !json {
                let summary: Vec<String> = by_reason
                    .iter()
                    .map(|(reason, count)| format!("{reason}: {count}"))
                    .collect();
                out.push_str(&format!(
                    "{} dead letter(s){}{}\n",
                    letters.len(),
                    if summary.is_empty() { "" } else { " — " },
                    summary.join(", ")
                ));
            }
            print(&out)?;
        }
        DlqCommand::Replay {
            select,
            to,
            dry_run,
        } => {
            let options = dlq::ReplayOptions {
                selection: selection(select, to)?,
                dry_run,
            };
            let report = dlq::replay(&kafka, &options).await?;
            let mut out = String::new();
            for (id, target) in &report.replayed {
                out.push_str(&format!("replayed {id} -> {target}\n"));
            }
            for id in &report.would_replay {
                out.push_str(&format!("would replay {id}\n"));
            }
            for id in &report.recovered {
                out.push_str(&format!(
                    "already replayed {id} (found its copy; marked done)\n"
                ));
            }
            for id in &report.malformed {
                out.push_str(&format!("skipped {id}: no source headers\n"));
            }
            out.push_str(&format!(
                "{} replayed, {} would be replayed, {} already replayed earlier, {} recovered, {} not replayable\n",
                report.replayed.len(),
                report.would_replay.len(),
                report.already_replayed.len(),
                report.recovered.len(),
                report.malformed.len()
            ));
            print(&out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn store(settings: &ArchiveSettings) -> anyhow::Result<ArchiveStore> {
    let clickhouse = &settings.archive.clickhouse;
    Ok(ArchiveStore::new(
        clickhouse.client(),
        &clickhouse.database,
    )?)
}

/// The public keys `[archive]` names: its trusted keys and its signing keys' own.
fn configured_public_keys(
    settings: &ArchiveSettings,
) -> anyhow::Result<Vec<ed25519_dalek::VerifyingKey>> {
    let mut keys = Vec::new();
    for path in [
        &settings.archive.signing_key_file,
        &settings.archive.previous_signing_key_file,
    ]
    .into_iter()
    .flatten()
    {
        keys.push(archive::read_signing_key(path)?.verifying_key());
    }
    for hex in &settings.archive.trusted_public_keys {
        keys.push(checkpoint::parse_public_key(hex)?);
    }
    Ok(keys)
}

fn trusted_from_hex(keys: &[String]) -> anyhow::Result<TrustedKeys> {
    let mut trusted = TrustedKeys::new();
    for key in keys {
        trusted
            .insert_hex(key)
            .with_context(|| format!("invalid public key {key}"))?;
    }
    Ok(trusted)
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
