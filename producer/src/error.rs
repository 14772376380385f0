//! What callers of the producer match on.

use ledgerline_schemas::event::ValidationError;
use ledgerline_schemas::{Category, CodecError};
use rdkafka::error::KafkaError;

/// Why an event was not accepted or not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event breaks a rule of the model (names the field). Nothing was sent.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The event could not be encoded (schema registry refused or unreachable).
    #[error("failed to encode {category} event {event_id}: {source}")]
    Encode {
        event_id: uuid::Uuid,
        category: Category,
        #[source]
        source: CodecError,
    },
    /// `publish()` with `queue_full = "error"` and a full queue. Nothing was queued.
    #[error("producer queue is full ({capacity} events); event {event_id} was not queued")]
    QueueFull {
        event_id: uuid::Uuid,
        capacity: usize,
    },
    /// The producer is shutting down and takes no more events.
    #[error("producer is shut down; event {event_id} was not queued")]
    Closed { event_id: uuid::Uuid },
    /// The broker did not acknowledge the event within the delivery timeout.
    #[error("delivery of {category} event {event_id} failed: {source}")]
    Delivery {
        event_id: uuid::Uuid,
        category: Category,
        #[source]
        source: KafkaError,
    },
}

/// Why a producer could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ledgerline_service::ConfigError),
    #[error("failed to create kafka client: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be created (names it); see `ProducerConfig::create_topics`.
    #[error(transparent)]
    Topics(#[from] ledgerline_service::kafka::TopicError),
    /// An incompatible or (with auto-registration off) unregistered schema stops start-up.
    #[error("schema check failed for {category}: {source}")]
    Schema {
        category: Category,
        #[source]
        source: CodecError,
    },
}

/// `flush` ran out of time with events still undelivered.
#[derive(Debug, thiserror::Error)]
#[error("{pending} event(s) still undelivered after {waited_ms} ms")]
pub struct FlushTimeout {
    pub pending: u64,
    pub waited_ms: u128,
}

pub type Result<T, E = PublishError> = std::result::Result<T, E>;
