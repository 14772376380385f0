//! Logging and metrics set-up shared by every binary.
//!
//! Logs go through `tracing` to stderr, human-readable (`pretty`) or one JSON object per line
//! (`json`, for log shippers). Metrics go through the `metrics` facade into one Prometheus
//! recorder per process, rendered by the side listener's `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigError, Result};

/// `[telemetry]` in `ledgerline.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `pretty` for people, `json` for log pipelines.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,rdkafka=warn`. `RUST_LOG`, when set,
    /// wins, so a developer can turn up one module without editing the file.
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: default_log_filter(),
        }
    }
}

fn default_log_filter() -> String {
    "info".to_owned()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<()> {
        EnvFilter::try_new(&self.log_filter)
            .map(|_| ())
            .map_err(|error| ConfigError::invalid_value("telemetry.log_filter", error.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    #[error("invalid log filter: {0}")]
    Filter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised,
    #[error("failed to install the prometheus recorder: {0}")]
    Metrics(String),
}

/// Installs the global `tracing` subscriber. Call once, at the top of `main`.
pub fn init_tracing(config: &TelemetryConfig) -> std::result::Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive),
        _ => EnvFilter::try_new(&config.log_filter),
    }
    .map_err(|error| TelemetryError::Filter(error.to_string()))?;
    let registry = tracing_subscriber::registry().with(filter);
    let result = match config.log_format {
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInitialised)
}

/// Latency buckets (seconds): 1 ms to 30 s, for inserts, API requests and the like.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Size buckets (rows per insert and the like): 1 to 100 000.
const COUNT_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0, 100_000.0,
];

static PROMETHEUS: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns the handle `/metrics`
/// renders. Safe to call repeatedly and from several threads: tests and libraries that start
/// several listeners in one process share the recorder rather than fail on the second install.
pub fn prometheus() -> std::result::Result<PrometheusHandle, TelemetryError> {
    PROMETHEUS
        .get_or_init(|| {
            // Histograms, not the builder's default summaries: buckets can be summed across
            // replicas and give any quantile in PromQL (`histogram_quantile`), which the
            // dashboards and alert rules in deploy/ rely on.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Suffix("_events".to_owned()),
                        COUNT_BUCKETS,
                    )
                })
                .map_err(|error| format!("bad histogram buckets: {error}"))?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map(|()| handle)
                .map_err(|_| "a different metrics recorder is already installed".to_owned())
        })
        .clone()
        .map_err(TelemetryError::Metrics)
}
