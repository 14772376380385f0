//! Delivery bookkeeping and the background task behind `publish`: events are encoded and
//! handed to librdkafka in queue order, many in flight at once, and each settles as delivered
//! or failed exactly once, which is what `flush` and the counters rely on.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ledgerline_schemas::event::Event;
use ledgerline_schemas::{Category, EventCodec};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, Notify};

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

pub(super) type FailureCallback = Arc<dyn Fn(&DeliveryFailure) + Send + Sync>;

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
pub(super) struct Tracker {
    pub(super) pending: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) settled: Notify,
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
pub(super) struct PendingReservation<'a> {
    tracker: &'a Tracker,
    committed: bool,
}

impl<'a> PendingReservation<'a> {
    pub(super) fn new(tracker: &'a Tracker) -> Self {
        tracker.pending.fetch_add(1, Ordering::AcqRel);
        Self {
            tracker,
            committed: false,
        }
    }

    pub(super) fn commit(mut self) {
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

/// The one place a failed delivery is reported, whether `send` or the delivery task saw it:
/// log, metric, callback.
pub(super) fn report_failure(
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

pub(super) fn count(category: Category, outcome: &'static str) {
    metrics::counter!(
        "ledgerline_producer_events_total",
        "category" => category.as_str(),
        "outcome" => outcome
    )
    .increment(1);
}

/// What the delivery task owns. It holds no `Ledger`, so dropping the last `Ledger` closes the
/// queue and lets the task drain and end.
pub(super) struct Worker {
    pub(super) producer: FutureProducer,
    pub(super) codec: Arc<EventCodec>,
    pub(super) tracker: Arc<Tracker>,
    pub(super) on_failure: Option<FailureCallback>,
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
pub(super) async fn deliver(mut queue: mpsc::Receiver<Event>, worker: Worker) {
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
