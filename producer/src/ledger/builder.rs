//! Start-up: [`LedgerBuilder`] connects, creates missing topics, registers (or checks) this
//! build's schemas and starts the delivery task, so a [`Ledger`] that exists can publish.

use std::sync::Arc;
use std::time::Duration;

use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::{ensure_topics, KafkaConfig, NewTopics};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_service::ConfigSource;
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;

use super::delivery::{deliver, DeliveryFailure, FailureCallback, Tracker, Worker};
use super::{Identity, Inner, Ledger};
use crate::config::ProducerConfig;
use crate::error::BuildError;
use crate::redact::Redactor;

/// Builds a [`Ledger`]; see [`Ledger::builder`].
pub struct LedgerBuilder {
    config: ProducerConfig,
    kafka: KafkaConfig,
    registry: SchemaRegistryConfig,
    on_failure: Option<FailureCallback>,
}

impl std::fmt::Debug for LedgerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerBuilder")
            .field("config", &self.config)
            .field("kafka", &self.kafka)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl LedgerBuilder {
    pub fn service_version(mut self, version: impl Into<String>) -> Self {
        self.config.service_version = version.into();
        self
    }

    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.config.host = host.into();
        self
    }

    pub fn kafka(mut self, kafka: KafkaConfig) -> Self {
        self.kafka = kafka;
        self
    }

    /// Shorthand for a plaintext cluster at `brokers`.
    pub fn brokers(mut self, brokers: impl Into<String>) -> Self {
        self.kafka.brokers = brokers.into();
        self
    }

    pub fn schema_registry(mut self, registry: SchemaRegistryConfig) -> Self {
        self.registry = registry;
        self
    }

    /// Shorthand for an unauthenticated registry at `url`.
    pub fn registry_url(mut self, url: impl Into<String>) -> Self {
        self.registry.url = url.into();
        self
    }

    /// Replaces the `[producer]` settings, keeping the service name given to the builder when
    /// `config` has none.
    pub fn config(mut self, mut config: ProducerConfig) -> Self {
        if config.service_name.is_empty() {
            config.service_name = std::mem::take(&mut self.config.service_name);
        }
        self.config = config;
        self
    }

    /// Called for every accepted event whose delivery failed.
    pub fn on_delivery_failure(
        mut self,
        callback: impl Fn(&DeliveryFailure) + Send + Sync + 'static,
    ) -> Self {
        self.on_failure = Some(Arc::new(callback));
        self
    }

    /// Connects, creates missing topics, registers (or checks) this build's schemas, and starts
    /// the delivery task. Must run inside a tokio runtime.
    pub async fn build(self) -> std::result::Result<Ledger, BuildError> {
        let LedgerBuilder {
            mut config,
            kafka,
            registry,
            on_failure,
        } = self;
        config.validate()?;
        kafka.validate()?;
        registry.validate()?;
        if config.host.is_empty() {
            config.host = local_host_name();
        }

        if config.create_topics {
            create_topics(&kafka, &config).await?;
        }

        let codec = Arc::new(
            EventCodec::new(&registry).map_err(|source| BuildError::Schema {
                category: Category::Audit,
                source,
            })?,
        );
        for category in Category::ALL {
            codec
                .prepare(category, registry.auto_register)
                .await
                .map_err(|source| BuildError::Schema { category, source })?;
        }

        let client_id = kafka
            .client_id
            .clone()
            .unwrap_or_else(|| config.service_name.clone());
        let client = kafka.idempotent_producer_config(&[
            ("linger.ms", config.linger_ms.to_string()),
            (
                "delivery.timeout.ms",
                config.delivery_timeout_ms.to_string(),
            ),
            ("client.id", client_id),
        ]);
        let producer: FutureProducer = client.create()?;

        let (queue, receiver) = mpsc::channel(config.queue_capacity);
        let tracker = Arc::new(Tracker::default());
        let inner = Arc::new(Inner {
            identity: Identity {
                service: config.service_name.clone(),
                service_version: config.service_version.clone(),
                host: config.host.clone(),
            },
            producer: producer.clone(),
            codec: Arc::clone(&codec),
            redactor: Redactor::new(&config.redaction),
            queue,
            queue_capacity: config.queue_capacity,
            queue_full: config.queue_full,
            delivery_timeout: Duration::from_millis(config.delivery_timeout_ms),
            tracker: Arc::clone(&tracker),
            on_failure: on_failure.clone(),
            tracing_level: config.tracing_level.as_level(),
        });
        tokio::spawn(deliver(
            receiver,
            Worker {
                producer,
                codec,
                tracker,
                on_failure,
            },
        ));
        Ok(Ledger { inner })
    }
}

/// Every category's topic and the dead-letter topic, so consumers started later find them.
async fn create_topics(
    kafka: &KafkaConfig,
    config: &ProducerConfig,
) -> std::result::Result<(), BuildError> {
    let topics: Vec<&str> = Category::ALL
        .into_iter()
        .map(Category::topic_name)
        .chain([DLQ_TOPIC])
        .collect();
    let layout = NewTopics::new(config.topic_partitions, config.topic_replication);
    ensure_topics(&kafka.client_config(), &topics, &layout).await?;
    Ok(())
}

fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Ledger {
    /// Starts building a producer for `service_name`. Defaults reach the local stack.
    pub fn builder(service_name: impl Into<String>) -> LedgerBuilder {
        LedgerBuilder {
            config: ProducerConfig {
                service_name: service_name.into(),
                ..ProducerConfig::default()
            },
            kafka: KafkaConfig::default(),
            registry: SchemaRegistryConfig::default(),
            on_failure: None,
        }
    }

    /// A builder from `[producer]`, `[kafka]` and `[schema_registry]`.
    pub fn builder_from(source: &ConfigSource) -> std::result::Result<LedgerBuilder, BuildError> {
        let config: ProducerConfig = source.section("producer")?;
        Ok(LedgerBuilder {
            config,
            kafka: source.section("kafka")?,
            registry: source.section("schema_registry")?,
            on_failure: None,
        })
    }
}
