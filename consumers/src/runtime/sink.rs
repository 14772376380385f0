//! What the runtime hands a sink ([`Record`], [`PartitionBatch`]) and what a sink is ([`Sink`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use ledgerline_schemas::event::Event;
use rdkafka::Timestamp;

/// One Kafka partition. The topic name is shared by every record of the partition, so a batch
/// does not allocate a name per record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Next offset to read, per partition: what [`Sink::on_assign`] answers.
pub type Positions = HashMap<TopicPartition, i64>;

/// One Kafka record as received, next to the event decoded from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp (create or log-append time, as the topic is configured).
    pub timestamp: Timestamp,
    pub key: Option<Vec<u8>>,
    /// The value bytes exactly as they were in Kafka (the audit archive hashes these).
    pub value: Vec<u8>,
    pub headers: Vec<RecordHeader>,
    /// The registry id from the Confluent wire-format prefix, when the value has one.
    pub schema_id: Option<u32>,
    /// The decoded, validated event, or why there is none. A sink sees a rejection only when
    /// its consumer runs with [`super::BadRecords::Deliver`].
    pub event: Result<Event, Rejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// Why a record holds no event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `oversize`, `bad_magic_byte`, `unknown_schema_id`, `corrupt_avro`, `schema_mismatch`,
    /// `invalid_event` or `unknown_topic`: the `reason` label of the runtime's metrics and the
    /// dead-letter header.
    pub reason: &'static str,
    pub error: String,
}

/// One partition's records of a batch, as the sink prepared them.
#[derive(Debug)]
pub struct PartitionBatch<P> {
    pub partition: TopicPartition,
    /// Records in it, for metrics and logs.
    pub events: usize,
    pub prepared: P,
    /// The assignment the records were read under: a fenced sink's batch is written only
    /// while the partition is still assigned under the same generation.
    pub(super) generation: u64,
    pub(super) fence: Fence,
}

impl<P> PartitionBatch<P> {
    /// Whether this consumer still owns the partition under the assignment the records were
    /// read in. The runtime checks it before every write of a fenced sink; a write that takes
    /// long (an insert) can lose the partition while it runs, so a fenced sink checks it again
    /// right before the step that makes the write visible.
    pub fn is_current(&self) -> bool {
        self.fence.holds(&self.partition, self.generation)
    }

    /// The same check as [`Self::is_current`], kept apart from the batch: a sink that writes
    /// for a partition between batches (the archive's checkpoint on a timer, from
    /// [`Sink::on_idle`]) asks it of the last batch it wrote.
    pub fn ownership(&self) -> Ownership {
        Ownership {
            partition: self.partition.clone(),
            generation: self.generation,
            fence: self.fence.clone(),
        }
    }
}

/// See [`PartitionBatch::ownership`].
#[derive(Debug, Clone)]
pub struct Ownership {
    partition: TopicPartition,
    generation: u64,
    fence: Fence,
}

impl Ownership {
    pub(super) fn new(partition: TopicPartition, generation: u64, fence: Fence) -> Self {
        Self {
            partition,
            generation,
            fence,
        }
    }

    /// The partition this is the ownership of.
    pub fn partition(&self) -> &TopicPartition {
        &self.partition
    }

    /// Whether the partition is still assigned to this consumer under the same assignment.
    pub fn is_current(&self) -> bool {
        self.fence.holds(&self.partition, self.generation)
    }
}

/// What [`PartitionBatch::is_current`] asks: the assignment generations, and whether the
/// group has already taken the whole assignment away (the session timed out, or the reader
/// did not poll within `max.poll.interval.ms`), which librdkafka knows before the revocation
/// callback runs.
#[derive(Clone)]
pub(super) struct Fence {
    pub(super) assignments: Arc<super::context::Assignments>,
    pub(super) lost: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Fence {
    pub(super) fn holds(&self, partition: &TopicPartition, generation: u64) -> bool {
        !(self.lost)() && self.assignments.generation(partition) == Some(generation)
    }
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence").finish_non_exhaustive()
    }
}

/// A sink failed to take a batch. The runtime retries the same batch whatever the failure,
/// since dropping it would lose it; `kind` and `transient` only decide how it is reported.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Label of `ledgerline_consumer_sink_errors_total{kind}`, e.g. `transient`.
    pub kind: &'static str,
    /// Expected to pass by itself (logged as a warning); otherwise someone must act (an error).
    pub transient: bool,
    /// The error and its causes, outermost first, joined by `: `.
    pub message: String,
}

impl SinkError {
    pub fn new(kind: &'static str, transient: bool, error: &dyn std::error::Error) -> Self {
        Self {
            kind,
            transient,
            message: ledgerline_service::errors::error_chain(error),
        }
    }
}

/// Where batches go.
///
/// The runtime calls the sink from one task, one call at a time and in the order the records
/// were read: hooks and writes never overlap.
pub trait Sink: Send + 'static {
    /// One partition's records of a batch in the form the sink writes them, kept for retries.
    type Prepared: Send + Sync + 'static;
    /// Turns one partition's records of a batch, in offset order, into what [`Sink::write`]
    /// sends, given them by value so their contents move rather than being copied. Owned by
    /// the reader, which prepares each batch as soon as it is read: preparing then overlaps the
    /// previous batch's write rather than adding to it.
    type Preparer: FnMut(&TopicPartition, Vec<Record>) -> Self::Prepared + Send + 'static;

    /// A fenced sink never has records written of a partition it no longer owns: batches read
    /// under an earlier assignment of a partition are dropped unwritten (and never committed),
    /// and the new owner reads them again. For sinks whose writes must not interleave between
    /// two members, such as a hash chain per partition.
    const FENCED: bool = false;

    /// Every `kind` its [`SinkError`]s can have. The runtime registers
    /// `ledgerline_consumer_sink_errors_total{kind}` at 0 for each when it starts, so alert
    /// rules and dashboards see a series from the first scrape rather than "no data" until the
    /// first failure.
    const ERROR_KINDS: &'static [&'static str] = &[];

    /// Called once, when the runtime starts.
    fn preparer(&self) -> Self::Preparer;

    /// Partitions were assigned; answers the next offset to read for those the sink keeps its
    /// own position for (the others start from the group's committed offset, or the broadcast
    /// start). Called after every earlier batch was written, before any record of these
    /// partitions is read. An error is retried with backoff, like a failed write.
    fn on_assign(
        &mut self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = Result<Positions, SinkError>> + Send {
        let _ = partitions;
        async { Ok(Positions::new()) }
    }

    /// Right after [`Sink::on_assign`]: one token per newly assigned partition, to check
    /// ownership of a partition before writing for it outside a batch (the archive signs the
    /// entries pending on a partition that receives no more records, on a timer).
    fn on_owned(&mut self, owned: Vec<Ownership>) {
        let _ = owned;
    }

    /// Partitions were revoked. Called once every batch read before the revocation was written
    /// (or, for a fenced sink, dropped), and before the group moves the partitions on.
    fn on_revoke(&mut self, partitions: &[TopicPartition]) -> impl Future<Output = ()> + Send {
        let _ = partitions;
        async {}
    }

    /// Called when no batch came for about a second (and again every second while none comes):
    /// for work a sink does on time rather than on records, such as the archive's checkpoint
    /// every T seconds. A failure is reported like a failed write and the hook is simply called
    /// again later; nothing is committed either way.
    fn on_idle(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Writes a batch: one entry per partition. After a failure the runtime calls it again with
    /// the same batch (less what fencing dropped meanwhile), and after a crash a later run
    /// writes the same records again, so writing must be idempotent per record, or positioned
    /// through [`Sink::on_assign`].
    fn write(
        &mut self,
        batch: &[PartitionBatch<Self::Prepared>],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}
