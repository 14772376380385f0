//! `ledgerline-service` owns what every Ledgerline process shares, so that each binary and
//! library configures, logs, reports health and stops the same way:
//!
//! - [`config`]: one TOML file plus `LEDGERLINE_*` environment overrides, strict about
//!   unknown keys, with errors that name the bad key and where it came from;
//! - [`env`]: every environment variable Ledgerline reads, declared in one place;
//! - [`errors`]: an error's chain of causes, for log lines, dead letters and answers;
//! - [`kafka`]: broker, TLS/SASL and compression settings used by the producer and every
//!   consumer, turned into an rdkafka `ClientConfig` in one function; the one idempotent
//!   producer configuration; `ensure_topics`;
//! - [`schema_registry`]: how clients reach the Confluent-compatible schema registry;
//! - [`telemetry`]: `tracing` initialisation (pretty or JSON) and the Prometheus recorder;
//! - [`http`]: the side listener that serves `/health` (component checks) and `/metrics`;
//! - [`shutdown`]: a cancellation token tripped by SIGTERM or SIGINT.

pub mod config;
pub mod env;
pub mod errors;
pub mod http;
pub mod kafka;
pub mod schema_registry;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, ConfigSource};
