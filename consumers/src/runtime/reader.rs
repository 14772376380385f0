//! The reader: a thread of its own that polls Kafka, decodes, rejects what cannot be decoded,
//! forms batches by size or time, prepares them and hands them to the writer.
//!
//! A thread rather than a task because librdkafka runs the rebalance callbacks on the thread
//! that polls, and those wait for the writer (for the sink's resume positions, or for
//! in-flight batches to settle): waiting there must not block an async worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledgerline_schemas::{codec, Category, EventCodec};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::config::{BadRecords, Mode, RuntimeConfig, StartAt};
use super::context::{partitions_of_topics, Assignments, RuntimeContext};
use super::dlq::DeadLetters;
use super::sink::{Fence, PartitionBatch, Record, RecordHeader, Rejection, Sink, TopicPartition};
use super::writer::{first_backoff, wait_to_retry, ReadBatch, Work};

/// Longest single wait for a record, so shutdown, a rejoin request and partition discovery
/// are looked at this often on an idle consumer.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How often a broadcast consumer looks for new topics and partitions.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// A partition's share of a batch is allocated for this many records up front at most.
const PREALLOCATED_RECORDS: usize = 4096;
/// Longest wait for a metadata or offset lookup.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Reader<S: Sink> {
    pub(super) consumer: Arc<BaseConsumer<RuntimeContext<S::Prepared>>>,
    pub(super) config: RuntimeConfig,
    pub(super) codec: Arc<EventCodec>,
    pub(super) dead_letters: Option<DeadLetters>,
    pub(super) preparer: S::Preparer,
    pub(super) work: mpsc::UnboundedSender<Work<S::Prepared>>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) assignments: Arc<Assignments>,
    /// Set by the watchdog: leave the group and join it again.
    pub(super) rejoin: Arc<AtomicBool>,
    pub(super) shutdown: CancellationToken,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) fence: Fence,
}

/// However the reader ends (shutdown, the writer gone, or a panic), the writer learns that
/// nothing follows: the callbacks hold a sender too, so the queue never closes by itself.
impl<S: Sink> Drop for Reader<S> {
    fn drop(&mut self) {
        let _ = self.work.send(Work::Stop);
    }
}

/// One partition's share of the batch being read.
struct Slot {
    partition: TopicPartition,
    generation: u64,
    /// The offset to commit once the batch is written: the greatest read, plus one.
    next: i64,
    records: Vec<Record>,
}

/// What became of one record. Short-lived, one at a time: the size difference between
/// variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Keep(Record),
    /// Dead-lettered or skipped: only its offset moves on.
    Rejected,
    /// Shutdown came while waiting on a transient failure; the record was not handled.
    Interrupted,
}

impl<S: Sink> Reader<S> {
    /// Reads until shutdown, then hands over the last batch (dropping the reader tells the
    /// writer to stop).
    pub(super) fn run(mut self) {
        // Futures polled here outside `block_on` (see `run_now`) may start I/O, which needs
        // the runtime's context.
        let runtime = self.runtime.clone();
        let _context = runtime.enter();
        let mut last_discovery = Instant::now();
        if let Mode::Broadcast { start } = self.config.mode {
            self.assign_new_partitions(start);
        }
        loop {
            let permits = Arc::clone(&self.permits);
            let shutdown = self.shutdown.clone();
            let permit = self.runtime.block_on(async move {
                tokio::select! {
                    permit = permits.acquire_owned() => permit.ok(),
                    () = shutdown.cancelled() => None,
                }
            });
            let Some(permit) = permit else {
                break;
            };
            let (slots, stopping) = self.read_batch(&mut last_discovery);
            if !slots.is_empty() {
                let batch = self.prepare(slots, permit);
                if self.work.send(Work::Batch(batch)).is_err() {
                    break;
                }
            }
            if stopping {
                break;
            }
        }
    }

    /// Reads one batch: until it holds `batch_max_events` records, `batch_max_wait` after its
    /// first record, or shutdown (the bool).
    fn read_batch(&mut self, last_discovery: &mut Instant) -> (Vec<Slot>, bool) {
        let mut slots: Vec<Slot> = Vec::new();
        let mut kept = 0;
        let mut consumed = 0_u64;
        let mut deadline: Option<Instant> = None;
        let mut seen_changes = self.assignments.changes();
        let mut stopping = false;
        while kept < self.config.batch_max_events {
            if self.shutdown.is_cancelled() {
                stopping = true;
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                break;
            }
            if now.saturating_duration_since(*last_discovery) >= DISCOVERY_INTERVAL {
                *last_discovery = now;
                if matches!(self.config.mode, Mode::Broadcast { .. }) {
                    // Topics and partitions created after the start: read from their start.
                    self.assign_new_partitions(StartAt::Earliest);
                }
            }
            if self.rejoin.load(Ordering::Relaxed) && self.rejoin.swap(false, Ordering::Relaxed) {
                self.rejoin_group();
            }
            let wait = deadline.map_or(IDLE_WAIT, |deadline| {
                deadline.saturating_duration_since(now).min(IDLE_WAIT)
            });
            let polled = self.consumer.poll(wait);
            // Rebalance callbacks run inside `poll`: drop what was read under an assignment
            // that has since changed, before adding anything read under the new one.
            let changes = self.assignments.changes();
            if changes != seen_changes {
                seen_changes = changes;
                kept -= self.purge(&mut slots);
            }
            let message = match polled {
                None => continue,
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    tracing::warn!(consumer = %self.config.consumer, %error, "kafka consume error");
                    continue;
                }
            };
            consumed += 1;
            if deadline.is_none() {
                deadline = Some(now + self.config.batch_max_wait);
            }
            let index = self.slot_for(&mut slots, &message);
            let topic = Arc::clone(&slots[index].partition.topic);
            let offset = message.offset();
            match self.handle(&message, topic) {
                Outcome::Keep(record) => {
                    slots[index].records.push(record);
                    kept += 1;
                }
                Outcome::Rejected => {}
                Outcome::Interrupted => {
                    stopping = true;
                    break;
                }
            }
            // The greatest, not the last: the fetcher can hand a partition back from an
            // earlier offset after a seek.
            slots[index].next = slots[index].next.max(offset + 1);
        }
        metrics::counter!("ledgerline_consumer_consumed_total", "consumer" => self.config.consumer.clone())
            .increment(consumed);
        (slots, stopping)
    }

    /// Drops the slots of partitions no longer assigned under the generation they were read
    /// in; returns how many records went with them.
    fn purge(&self, slots: &mut Vec<Slot>) -> usize {
        let mut dropped = 0;
        slots.retain(|slot| {
            let current = self.assignments.generation(&slot.partition) == Some(slot.generation);
            if !current {
                dropped += slot.records.len();
            }
            current
        });
        dropped
    }

    /// The batch's slot for `message`'s partition, added (nothing of it handled yet) when the
    /// batch has none. A batch spans a handful of partitions, so a short list beats a map.
    fn slot_for(&self, slots: &mut Vec<Slot>, message: &BorrowedMessage<'_>) -> usize {
        if let Some(index) = slots.iter().position(|slot| {
            slot.partition.partition == message.partition()
                && *slot.partition.topic == *message.topic()
        }) {
            return index;
        }
        let partition = TopicPartition::new(message.topic(), message.partition());
        // Not assigned (cannot happen: librdkafka drops records of revoked partitions) reads
        // as generation 0, which no assignment has: fencing drops it.
        let generation = self.assignments.generation(&partition).unwrap_or(0);
        slots.push(Slot {
            partition,
            generation,
            next: message.offset(),
            // Records are large; growing from nothing copies each of them several times.
            records: Vec::with_capacity(self.config.batch_max_events.min(PREALLOCATED_RECORDS)),
        });
        slots.len() - 1
    }

    /// Copies what was received, decodes and validates it, and rejects it (dead letter, skip
    /// or deliver, as configured) when it is bad.
    fn handle(&self, message: &BorrowedMessage<'_>, topic: Arc<str>) -> Outcome {
        let value = message.payload().unwrap_or_default().to_vec();
        let schema_id = codec::schema_id(&value).ok();
        let event = match self.decode(message.topic(), &value) {
            Some(event) => event,
            None => return Outcome::Interrupted,
        };
        let record = Record {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            timestamp: message.timestamp(),
            key: message.key().map(<[u8]>::to_vec),
            value,
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| RecordHeader {
                            key: header.key.to_owned(),
                            value: header.value.map(<[u8]>::to_vec),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            schema_id,
            event,
        };
        let Err(rejection) = &record.event else {
            return Outcome::Keep(record);
        };
        let action = match self.config.bad_records {
            BadRecords::DeadLetter => "dead_lettered",
            BadRecords::Skip => "skipped",
            BadRecords::Deliver => "delivered",
        };
        metrics::counter!(
            "ledgerline_consumer_rejected_total",
            "consumer" => self.config.consumer.clone(),
            "reason" => rejection.reason,
            "action" => action
        )
        .increment(1);
        match (&self.dead_letters, self.config.bad_records) {
            (Some(dead_letters), BadRecords::DeadLetter) => {
                let mut backoff = first_backoff();
                loop {
                    match self.runtime.block_on(dead_letters.send(
                        &record,
                        rejection.reason,
                        &rejection.error,
                    )) {
                        Ok(()) => return Outcome::Rejected,
                        Err(error) => {
                            tracing::warn!(consumer = %self.config.consumer, %error, reason = rejection.reason, "dead-letter produce failed; retrying");
                            if !self.wait_to_retry(&mut backoff) {
                                return Outcome::Interrupted;
                            }
                        }
                    }
                }
            }
            (_, BadRecords::Deliver) => {
                tracing::warn!(consumer = %self.config.consumer, topic = %record.topic, partition = record.partition, offset = record.offset, reason = rejection.reason, error = %rejection.error, "undecodable record handed to the sink");
                Outcome::Keep(record)
            }
            _ => {
                tracing::warn!(consumer = %self.config.consumer, topic = %record.topic, partition = record.partition, offset = record.offset, reason = rejection.reason, error = %rejection.error, "record skipped");
                Outcome::Rejected
            }
        }
    }

    /// The event in `value`, or why there is none; `None` when shutdown came while the
    /// registry could not be reached (the record is not bad, so it is not rejected).
    fn decode(
        &self,
        topic: &str,
        value: &[u8],
    ) -> Option<Result<ledgerline_schemas::Event, Rejection>> {
        if value.len() > self.config.max_event_bytes {
            return Some(Err(Rejection {
                reason: "oversize",
                error: format!(
                    "{} bytes exceed the {} byte limit",
                    value.len(),
                    self.config.max_event_bytes
                ),
            }));
        }
        let Some(category) = Category::from_topic(topic) else {
            return Some(Err(Rejection {
                reason: "unknown_topic",
                error: format!("topic {topic} carries no Ledgerline category"),
            }));
        };
        let mut backoff = first_backoff();
        loop {
            match self.run_now(self.codec.decode(category, value)) {
                Ok(event) => {
                    return Some(event.validate().map(|()| event).map_err(|error| Rejection {
                        reason: "invalid_event",
                        error: error.to_string(),
                    }))
                }
                Err(error) => match error.dead_letter_reason() {
                    Some(reason) => {
                        return Some(Err(Rejection {
                            reason,
                            error: error.to_string(),
                        }))
                    }
                    None => {
                        tracing::warn!(consumer = %self.config.consumer, %error, retry_in_ms = backoff.as_millis() as u64, "decode failed; retrying");
                        if !self.wait_to_retry(&mut backoff) {
                            return None;
                        }
                    }
                },
            }
        }
    }

    /// Runs `future` to completion on this thread. Decoding is ready at the first poll when
    /// the schema id is cached, which is nearly always: that poll costs nothing, where
    /// entering the runtime for every record cost the projector several percent.
    fn run_now<F: std::future::Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut context) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => self.runtime.block_on(future),
        }
    }

    fn wait_to_retry(&self, backoff: &mut Duration) -> bool {
        self.runtime
            .block_on(wait_to_retry(backoff, &self.shutdown))
    }

    /// Turns the slots into the sink's prepared units and the offsets to commit.
    fn prepare(
        &mut self,
        slots: Vec<Slot>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> ReadBatch<S::Prepared> {
        let mut units = Vec::with_capacity(slots.len());
        let mut commits = Vec::with_capacity(slots.len());
        for slot in slots {
            commits.push((slot.partition.clone(), slot.generation, slot.next));
            if slot.records.is_empty() {
                continue;
            }
            let events = slot.records.len();
            let prepared = (self.preparer)(&slot.partition, slot.records);
            units.push(PartitionBatch {
                partition: slot.partition,
                events,
                prepared,
                generation: slot.generation,
                fence: self.fence.clone(),
            });
        }
        ReadBatch {
            units,
            commits,
            _permit: permit,
        }
    }

    /// Leaves the consumer group and joins it again, as a new member (or, with static
    /// membership, as the same one): what a restart would do, without dropping the batch.
    fn rejoin_group(&self) {
        tracing::warn!(consumer = %self.config.consumer, "rejoining the consumer group: partitions of its topics wait with no member consuming them");
        metrics::counter!("ledgerline_consumer_rejoins_total", "consumer" => self.config.consumer.clone())
            .increment(1);
        self.consumer.unsubscribe();
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        if let Err(error) = self.consumer.subscribe(&topics) {
            tracing::error!(consumer = %self.config.consumer, %error, "cannot subscribe again");
        }
    }

    /// Broadcast mode: assigns every partition of the topics that is not assigned yet,
    /// starting where the sink says, else at `start`.
    fn assign_new_partitions(&self, start: StartAt) {
        let partitions = match partitions_of_topics(
            &self.consumer,
            &self.config.topics,
            LOOKUP_TIMEOUT,
        ) {
            Ok(partitions) => partitions,
            Err(error) => {
                tracing::warn!(consumer = %self.config.consumer, %error, "cannot list partitions; trying again");
                return;
            }
        };
        let assigned = self.assignments.assigned();
        let new: Vec<TopicPartition> = partitions
            .into_iter()
            .filter(|partition| !assigned.contains(partition))
            .collect();
        if new.is_empty() {
            return;
        }
        let positions = self.consumer.context().assigned(new.clone());
        let mut list = TopicPartitionList::new();
        let mut by_time = TopicPartitionList::new();
        for partition in &new {
            let (list, offset) = match (positions.get(partition), start) {
                (Some(next), _) => (&mut list, Offset::Offset(*next)),
                (None, StartAt::Latest) => (&mut list, Offset::End),
                (None, StartAt::Earliest) => (&mut list, Offset::Beginning),
                (None, StartAt::Timestamp(millis)) => (&mut by_time, Offset::Offset(millis)),
            };
            if let Err(error) =
                list.add_partition_offset(&partition.topic, partition.partition, offset)
            {
                tracing::warn!(consumer = %self.config.consumer, %partition, %error, "cannot add partition");
            }
        }
        if by_time.count() > 0 {
            match self
                .consumer
                .offsets_for_times(by_time.clone(), LOOKUP_TIMEOUT)
            {
                Ok(found) => {
                    for element in found.elements() {
                        // No record at or after the time: the end, like Kafka's own answer.
                        let offset = match element.offset() {
                            Offset::Offset(offset) => Offset::Offset(offset),
                            _ => Offset::End,
                        };
                        let _ =
                            list.add_partition_offset(element.topic(), element.partition(), offset);
                    }
                }
                Err(error) => {
                    tracing::warn!(consumer = %self.config.consumer, %error, "cannot look up offsets by time; starting at the end");
                    for element in by_time.elements() {
                        let _ = list.add_partition_offset(
                            element.topic(),
                            element.partition(),
                            Offset::End,
                        );
                    }
                }
            }
        }
        match self.consumer.incremental_assign(&list) {
            Ok(()) => tracing::info!(
                consumer = %self.config.consumer,
                partitions = %super::context::describe(&list),
                "partitions assigned"
            ),
            Err(error) => {
                tracing::error!(consumer = %self.config.consumer, %error, "cannot assign partitions");
                // Forget them, so the next discovery tries again.
                self.assignments.revoke(&new);
            }
        }
    }
}
