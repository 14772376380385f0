//! `[producer]` in `ledgerline.toml`: who is publishing and how delivery behaves. Kafka and
//! registry connection settings live in the shared `[kafka]` and `[schema_registry]` sections.

use serde::Deserialize;

use ledgerline_service::config::{ConfigError, Result};

use crate::redact::RedactionConfig;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// Name of the publishing service (`envelope.service`). Required.
    pub service_name: String,
    /// Its version (`envelope.service_version`).
    pub service_version: String,
    /// Host name (`envelope.host`); the machine's host name when empty.
    pub host: String,
    /// Create missing category topics and the dead-letter topic at start-up.
    pub create_topics: bool,
    /// Partitions for topics this producer creates.
    pub topic_partitions: i32,
    /// Replication factor for topics this producer creates.
    pub topic_replication: i32,
    /// Events `publish()` may hold before the queue-full policy applies.
    pub queue_capacity: usize,
    /// What `publish()` does when the queue is full.
    pub queue_full: QueueFullPolicy,
    /// How long librdkafka keeps retrying a record before reporting it failed (ms).
    pub delivery_timeout_ms: u64,
    /// How long librdkafka waits to fill a batch (ms); small values favour latency.
    pub linger_ms: u64,
    /// Lowest level the tracing layer publishes as system events.
    pub tracing_level: TracingLevel,
    pub redaction: RedactionConfig,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            service_name: String::new(),
            service_version: "0.0.0".to_owned(),
            host: String::new(),
            create_topics: true,
            topic_partitions: 3,
            topic_replication: 1,
            queue_capacity: 100_000,
            queue_full: QueueFullPolicy::Wait,
            delivery_timeout_ms: 120_000,
            linger_ms: 5,
            tracing_level: TracingLevel::Info,
            redaction: RedactionConfig::default(),
        }
    }
}

/// `publish()` when the queue is full. Neither loses events silently.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueFullPolicy {
    /// Wait for space (back-pressure on the caller).
    Wait,
    /// Return [`crate::PublishError::QueueFull`] at once.
    Error,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TracingLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl TracingLevel {
    pub fn as_level(self) -> tracing::Level {
        match self {
            TracingLevel::Trace => tracing::Level::TRACE,
            TracingLevel::Debug => tracing::Level::DEBUG,
            TracingLevel::Info => tracing::Level::INFO,
            TracingLevel::Warn => tracing::Level::WARN,
            TracingLevel::Error => tracing::Level::ERROR,
        }
    }
}

impl ProducerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::invalid_value(
                "producer.service_name",
                "must be set",
            ));
        }
        if self.topic_partitions < 1 {
            return Err(ConfigError::invalid_value(
                "producer.topic_partitions",
                "must be at least 1",
            ));
        }
        if self.topic_replication < 1 {
            return Err(ConfigError::invalid_value(
                "producer.topic_replication",
                "must be at least 1",
            ));
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::invalid_value(
                "producer.queue_capacity",
                "must be at least 1",
            ));
        }
        if self.delivery_timeout_ms == 0 {
            return Err(ConfigError::invalid_value(
                "producer.delivery_timeout_ms",
                "must be positive",
            ));
        }
        Ok(())
    }
}
