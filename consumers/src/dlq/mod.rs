//! Operator tools for the dead-letter topic `ledgerline.dlq`: `inspect` lists dead letters
//! with their reasons and source coordinates; `replay` re-publishes them to their source
//! topic and partition after a fix (a schema now registered, a rule relaxed).
//!
//! Guarantees:
//! - **Read-only inspection.** `inspect` joins no consumer group and commits nothing; it reads
//!   each partition of the DLQ from its low watermark to the high watermark it saw at start.
//! - **No record is replayed twice.** `replay` records its progress per dead letter in the
//!   compacted topic `ledgerline.dlq.replays` (key `ledgerline.dlq/<partition>/<offset>`):
//!   a `started` marker, acknowledged before the record is re-published, and a `done` marker
//!   after the broker acknowledged the copy. A later run skips `done` ones. A `started` one
//!   without `done` (a replay that died in between) is looked up in the target partition,
//!   from a little before the marker's time, by the `ledgerline.replay.of` header every copy
//!   carries: found, it is marked done; not found, it is replayed. Nothing is lost and
//!   nothing is published twice, whatever point a run is killed at.
//! - **The copy is the original.** Same key, same bytes, to the source topic's source
//!   partition (so per-key order within what is replayed is kept), with headers saying what
//!   it replays. Consumers treat it as any record; one that still fails is dead-lettered
//!   again, as a new dead letter.
//! - Dead letters without the source headers (written by something else) are listed by
//!   `inspect` as malformed and never replayed.

mod read;
mod replay;

pub use read::{read_dead_letters, DeadLetter, Selection};
pub use replay::{replay, ReplayOptions, ReplayReport, PROGRESS_TOPIC, REPLAY_OF_HEADER};

/// Why a DLQ tool could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Topics(#[from] ledgerline_service::kafka::TopicError),
    #[error("{0}")]
    Task(String),
    #[error("reading {topic} did not reach its end within {seconds} s (at {position})")]
    Stalled {
        topic: String,
        seconds: u64,
        position: String,
    },
}
