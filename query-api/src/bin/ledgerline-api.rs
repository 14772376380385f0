//! `ledgerline-api`: the query API server, and its key tool.
//!
//! - `ledgerline-api` (or `ledgerline-api serve`) serves on `[api] listen`;
//! - `ledgerline-api keys create --role analyst|auditor|admin [--id NAME]` prints a new key
//!   once, and the `[[api.keys]]` lines that grant it (only the key's hash).

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ledgerline_query_api::auth::{generate_key, Role};
use ledgerline_query_api::ApiSettings;
use ledgerline_service::config::ConfigSource;
use ledgerline_service::shutdown;
use ledgerline_service::telemetry::{self, TelemetryConfig};

#[derive(Debug, Parser)]
#[command(name = "ledgerline-api", version, about = "Ledgerline's query API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a new random key once, with the config lines that hold its hash.
    Create {
        /// analyst, auditor or admin.
        #[arg(long)]
        role: Role,
        /// A name for logs and the audit trail (default: the role and random digits).
        #[arg(long)]
        id: Option<String>,
        /// Print only `KEY<TAB>ID<TAB>SHA256`, for scripts.
        #[arg(long)]
        plain: bool,
    },
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
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys {
            command: KeysCommand::Create { role, id, plain },
        } => {
            let new = generate_key(role, id.as_deref())
                .context("the system's random generator failed")?;
            let mut out = std::io::stdout().lock();
            if plain {
                writeln!(out, "{}\t{}\t{}", new.key, new.entry.id, new.entry.sha256)?;
            } else {
                writeln!(
                    out,
                    "API key for role {role} (shown once; only its hash is kept):\n\n    {}\n\nAdd to ledgerline.toml:\n\n{}",
                    new.key,
                    new.config_toml()
                )?;
            }
            Ok(())
        }
        Command::Serve => {
            let source =
                ConfigSource::from_process_env().context("failed to load configuration")?;
            let telemetry_config: TelemetryConfig = source.section("telemetry")?;
            telemetry_config.validate()?;
            telemetry::init_tracing(&telemetry_config)?;
            let metrics = telemetry::prometheus()?;
            let settings = ApiSettings::load(&source)?;
            let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
            ledgerline_query_api::run(settings, metrics, shutdown, None)
                .await
                .context("query API failed")
        }
    }
}
