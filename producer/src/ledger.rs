//! The producer handle and its delivery machinery.
//!
//! Delivery semantics:
//! - `send().await` returns after the broker acknowledged the record (acks=all, idempotent
//!   producer), or with the error; nothing is retried behind the caller's back beyond
//!   librdkafka's own retries within `delivery_timeout_ms`.
//! - `publish().await` validates and redacts at once, then hands the event to a bounded queue;
//!   a background task encodes and produces it. When the queue is full, `queue_full` decides:
//!   wait for space, or return [`PublishError::QueueFull`]. An accepted event is either
//!   delivered or reported as failed (failure callback and the
//!   `ledgerline_producer_events_total{outcome="failed"}` counter); `flush` and `shutdown` wait
//!   for every accepted event to settle.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ledgerline_schemas::event::{Envelope, Event, Level};
use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::{ensure_topics, KafkaConfig, NewTopics};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_service::ConfigSource;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::{mpsc, Notify};

use crate::config::{ProducerConfig, QueueFullPolicy};
use crate::context;
use crate::error::{BuildError, FlushTimeout, PublishError, Result};
use crate::redact::Redactor;

/// Where an acknowledged event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A delivery that failed after the event was accepted; handed to the failure callback.
#[derive(Debug, Clone)]
pub struct DeliveryFailure {
    pub event_id: uuid::Uuid,
    pub category: Category,
    pub error: String,
}

type FailureCallback = Arc<dyn Fn(&DeliveryFailure) + Send + Sync>;

/// Counts of settled events since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub delivered: u64,
    pub failed: u64,
    /// Accepted by `publish` but not settled yet.
    pub pending: u64,
}

/// Accepted-but-unsettled bookkeeping that `flush` waits on.
#[derive(Default)]
struct Tracker {
    pending: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    settled: Notify,
}

impl Tracker {
    fn settle(&self, ok: bool) {
        if ok {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        // Only `flush` waits, and only for zero: waking it per event would take Notify's lock
        // on the delivery hot path for nothing.
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_waiters();
        }
    }
}

/// Counts an event as pending from before it enters the queue (so the delivery task can never
/// settle it before it was counted) and un-counts it unless [`Self::commit`] is reached: an
/// error, or the caller dropping a waiting `publish`, leaves the count as it was.
struct PendingReservation<'a> {
    tracker: &'a Tracker,
    committed: bool,
}

impl<'a> PendingReservation<'a> {
    fn new(tracker: &'a Tracker) -> Self {
        tracker.pending.fetch_add(1, Ordering::AcqRel);
        Self {
            tracker,
            committed: false,
        }
    }

    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for PendingReservation<'_> {
    fn drop(&mut self) {
        if !self.committed && self.tracker.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.settled.notify_waiters();
        }
    }
}

struct Identity {
    service: String,
    service_version: String,
    host: String,
}

pub(crate) struct Inner {
    identity: Identity,
    producer: FutureProducer,
    codec: Arc<EventCodec>,
    redactor: Redactor,
    queue: mpsc::Sender<Event>,
    queue_capacity: usize,
    queue_full: QueueFullPolicy,
    delivery_timeout: Duration,
    tracker: Arc<Tracker>,
    on_failure: Option<FailureCallback>,
    pub(crate) tracing_level: tracing::Level,
}

/// The handle services publish through. Cheap to clone; all clones share one producer.
#[derive(Clone)]
pub struct Ledger {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("service", &self.inner.identity.service)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

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

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The one place a failed delivery is reported, whether `send` or the delivery task saw it:
/// log, metric, callback.
fn report_failure(
    on_failure: Option<&FailureCallback>,
    event_id: uuid::Uuid,
    category: Category,
    error: String,
) {
    tracing::warn!(%event_id, %category, %error, "event delivery failed");
    count(category, "failed");
    if let Some(callback) = on_failure {
        callback(&DeliveryFailure {
            event_id,
            category,
            error,
        });
    }
}

fn count(category: Category, outcome: &'static str) {
    metrics::counter!(
        "ledgerline_producer_events_total",
        "category" => category.as_str(),
        "outcome" => outcome
    )
    .increment(1);
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

    /// A new envelope for this service, with the current span's context.
    pub(crate) fn envelope(&self, category: Category, name: &str, level: Level) -> Envelope {
        let span = context::current();
        let mut attributes = BTreeMap::new();
        for (key, value) in [
            ("user_id", &span.user_id),
            ("job_id", &span.job_id),
            ("device_id", &span.device_id),
        ] {
            if let Some(value) = value {
                attributes.insert(key.to_owned(), value.clone());
            }
        }
        Envelope {
            event_id: uuid::Uuid::now_v7(),
            occurred_at: now_micros(),
            category,
            name: name.to_owned(),
            level,
            service: self.inner.identity.service.clone(),
            service_version: self.inner.identity.service_version.clone(),
            host: self.inner.identity.host.clone(),
            message: name.to_owned(),
            trace_id: span.trace_id,
            span_id: span.span_id,
            request_id: span.request_id,
            attributes,
        }
    }

    /// Redacts, then validates: what every path does before an event can leave.
    fn prepare(&self, mut event: Event) -> Result<Event> {
        self.inner.redactor.redact_event(&mut event);
        event.validate()?;
        Ok(event)
    }

    fn report_failure(&self, event: &Event, error: &str) {
        report_failure(
            self.inner.on_failure.as_ref(),
            event.envelope().event_id,
            event.category(),
            error.to_owned(),
        );
    }

    /// Sends `event` and waits for the broker's acknowledgement.
    pub async fn send_event(&self, event: Event) -> Result<Delivered> {
        let event = self.prepare(event)?;
        let category = event.category();
        let event_id = event.envelope().event_id;
        let payload = match self.inner.codec.encode(&event).await {
            Ok(payload) => payload,
            Err(source) => {
                self.report_failure(&event, &source.to_string());
                return Err(PublishError::Encode {
                    event_id,
                    category,
                    source,
                });
            }
        };
        let record = FutureRecord::to(category.topic_name())
            .key(event.partition_key())
            .payload(&payload);
        match self
            .inner
            .producer
            .send(record, Timeout::After(self.inner.delivery_timeout))
            .await
        {
            Ok(delivery) => {
                count(category, "delivered");
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((source, _)) => {
                self.report_failure(&event, &source.to_string());
                Err(PublishError::Delivery {
                    event_id,
                    category,
                    source,
                })
            }
        }
    }

    /// Queues `event` for background delivery. Waits for queue space or fails at once when the
    /// queue is full, as `queue_full` says. Cancel-safe: a publish dropped while waiting for
    /// space queued nothing and leaves nothing for `flush` to wait on.
    pub async fn publish_event(&self, event: Event) -> Result<()> {
        let event = self.prepare(event)?;
        let event_id = event.envelope().event_id;
        let reservation = PendingReservation::new(&self.inner.tracker);
        match self.inner.queue_full {
            QueueFullPolicy::Wait => self
                .inner
                .queue
                .send(event)
                .await
                .map_err(|_| PublishError::Closed { event_id })?,
            QueueFullPolicy::Error => self.try_queue(event, event_id)?,
        }
        reservation.commit();
        Ok(())
    }

    /// Queues without ever waiting: for callers that must not block (the tracing layer).
    pub fn try_publish_event(&self, event: Event) -> Result<()> {
        let event = self.prepare(event)?;
        let event_id = event.envelope().event_id;
        let reservation = PendingReservation::new(&self.inner.tracker);
        self.try_queue(event, event_id)?;
        reservation.commit();
        Ok(())
    }

    fn try_queue(&self, event: Event, event_id: uuid::Uuid) -> Result<()> {
        self.inner
            .queue
            .try_send(event)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => PublishError::QueueFull {
                    event_id,
                    capacity: self.inner.queue_capacity,
                },
                mpsc::error::TrySendError::Closed(_) => PublishError::Closed { event_id },
            })
    }

    pub fn stats(&self) -> DeliveryStats {
        let tracker = &self.inner.tracker;
        DeliveryStats {
            delivered: tracker.delivered.load(Ordering::Relaxed),
            failed: tracker.failed.load(Ordering::Relaxed),
            pending: tracker.pending.load(Ordering::Acquire),
        }
    }

    /// Waits until every event accepted so far is delivered or reported failed.
    pub async fn flush(
        &self,
        timeout: Duration,
    ) -> std::result::Result<DeliveryStats, FlushTimeout> {
        let started = Instant::now();
        loop {
            let settled = self.inner.tracker.settled.notified();
            let pending = self.inner.tracker.pending.load(Ordering::Acquire);
            let remaining = timeout.saturating_sub(started.elapsed());
            if pending == 0 {
                break;
            }
            if remaining.is_zero() || tokio::time::timeout(remaining, settled).await.is_err() {
                return Err(FlushTimeout {
                    pending: self.inner.tracker.pending.load(Ordering::Acquire),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
        }
        // Events sent with `send()` by other tasks may still sit in librdkafka's queue.
        let producer = self.inner.producer.clone();
        let remaining = timeout.saturating_sub(started.elapsed());
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(remaining))).await;
        match flushed {
            Ok(Ok(())) => Ok(self.stats()),
            _ => Err(FlushTimeout {
                pending: u64::try_from(self.inner.producer.in_flight_count()).unwrap_or(0),
                waited_ms: started.elapsed().as_millis(),
            }),
        }
    }

    /// Flushes and reports the final counts. Other clones keep working; the delivery task
    /// stops once the last clone is dropped.
    pub async fn shutdown(
        self,
        timeout: Duration,
    ) -> std::result::Result<DeliveryStats, FlushTimeout> {
        self.flush(timeout).await
    }
}

/// What the delivery task owns. It holds no `Ledger`, so dropping the last `Ledger` closes the
/// queue and lets the task drain and end.
struct Worker {
    producer: FutureProducer,
    codec: Arc<EventCodec>,
    tracker: Arc<Tracker>,
    on_failure: Option<FailureCallback>,
}

impl Worker {
    fn failed(&self, event_id: uuid::Uuid, category: Category, error: String) {
        report_failure(self.on_failure.as_ref(), event_id, category, error);
        self.tracker.settle(false);
    }

    fn delivered(&self, category: Category) {
        count(category, "delivered");
        self.tracker.settle(true);
    }
}

type Settled = (uuid::Uuid, Category, std::result::Result<(), String>);
type InFlight = FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = Settled> + Send>>>;

/// Events taken from the queue per wake-up: fewer wake-ups, same order.
const DRAIN_BATCH: usize = 256;

/// The background delivery loop: encode, hand to librdkafka, and settle each acknowledgement,
/// with many records in flight at once. Events are handed to librdkafka in queue order, which
/// (with the idempotent producer) keeps each key's events in order.
async fn deliver(mut queue: mpsc::Receiver<Event>, worker: Worker) {
    let mut in_flight = InFlight::new();
    let mut batch = Vec::with_capacity(DRAIN_BATCH);
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            biased;
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => worker.settle(settled),
            received = queue.recv_many(&mut batch, DRAIN_BATCH), if open => {
                if received == 0 {
                    open = false;
                }
                for event in batch.drain(..) {
                    worker.produce(event, &mut in_flight).await;
                }
            }
        }
    }
}

impl Worker {
    fn settle(&self, (event_id, category, outcome): Settled) {
        match outcome {
            Ok(()) => self.delivered(category),
            Err(error) => self.failed(event_id, category, error),
        }
    }

    async fn produce(&self, event: Event, in_flight: &mut InFlight) {
        let event_id = event.envelope().event_id;
        let category = event.category();
        let payload = match self.codec.encode(&event).await {
            Ok(payload) => payload,
            Err(error) => return self.failed(event_id, category, error.to_string()),
        };
        let mut record = FutureRecord::to(category.topic_name())
            .key(event.partition_key())
            .payload(&payload);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    in_flight.push(Box::pin(async move {
                        let outcome = match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((error, _))) => Err(error.to_string()),
                            Err(_) => Err("producer dropped before delivery".to_owned()),
                        };
                        (event_id, category, outcome)
                    }));
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // librdkafka's own queue is full: wait for an acknowledgement, then retry.
                    record = returned;
                    match in_flight.next().await {
                        Some(settled) => self.settle(settled),
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                Err((error, _)) => return self.failed(event_id, category, error.to_string()),
            }
        }
    }
}
