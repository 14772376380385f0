//! The producer handle, [`Ledger`]: what services publish through.
//!
//! Delivery semantics:
//! - `send().await` returns after the broker acknowledged the record (acks=all, idempotent
//!   producer), or with the error; nothing is retried behind the caller's back beyond
//!   librdkafka's own retries within `delivery_timeout_ms`.
//! - `publish().await` validates and redacts at once, then hands the event to a bounded queue;
//!   a background task encodes and produces it. When the queue is full, `queue_full` decides:
//!   wait for space, or return [`PublishError::QueueFull`]. An accepted event is either
//!   delivered or reported as failed (failure callback and the
//!   `ledgerline_producer_events_total{outcome="failed"}` counter); `flush` waits for every
//!   accepted event to settle.
//!
//! Start-up (connect, create topics, check schemas) is in `builder`; the background delivery
//! task and the bookkeeping `flush` waits on are in `delivery`.

mod builder;
mod delivery;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledgerline_schemas::event::{Envelope, Event, Level};
use ledgerline_schemas::{Category, EventCodec};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::mpsc;

pub use builder::LedgerBuilder;
pub use delivery::{Delivered, DeliveryFailure, DeliveryStats};

use crate::config::QueueFullPolicy;
use crate::context;
use crate::error::{FlushTimeout, PublishError, Result};
use crate::redact::Redactor;
use delivery::{count, report_failure, FailureCallback, PendingReservation, Tracker};

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

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Ledger {
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
}
