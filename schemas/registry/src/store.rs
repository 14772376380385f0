//! The store: the in-memory [`State`] kept in step with the schemas topic, and the write
//! protocol that makes ids safe to hand out.
//!
//! A write, on the leader:
//! 1. takes the write lock, so one write at a time plans against the state;
//! 2. waits until the tailer has applied everything up to the topic's current high watermark,
//!    so the plan sees every earlier write, including any this instance did not make;
//! 3. plans the records (new id, new version…) against that state;
//! 4. produces them, idempotent with acks=all, and waits for each delivery;
//! 5. waits until its own tailer has applied them, then answers: read-your-writes, so a client
//!    that registered a schema finds it on its next request to this instance.
//!
//! The state only ever changes through the tailer, so the leader and every replica build it the
//! same way, from the log. A write that timed out in step 4 or 5 may still land; the next write's
//! step 2 picks it up.

use std::sync::Arc;
use std::time::Duration;

use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{Mutex, RwLockReadGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::applied::AppliedState;
use crate::config::{Mode, RegistryConfig};
use crate::error::{ApiError, RegistryError};
use crate::kafka;
use crate::records::LogRecord;
use crate::state::{Planned, State};

/// How long a write may take to be delivered and applied before the client gets 50002.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Start-up fails when replay makes no progress for this long (broker gone mid-replay).
const REPLAY_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `/health` lets the tailer catch up with the high watermark before reporting lag.
const HEALTH_CATCH_UP: Duration = Duration::from_secs(1);

pub struct Store {
    shared: Arc<AppliedState>,
    producer: FutureProducer,
    watermarks: Arc<BaseConsumer>,
    topic: String,
    mode: Mode,
    /// Serializes writes: ids and versions are allocated from the state, so two concurrent
    /// plans would hand out the same id.
    write_lock: Mutex<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("topic", &self.topic)
            .field("mode", &self.mode)
            .field("applied", &self.shared.applied())
            .finish()
    }
}

impl Store {
    /// Creates the topic if needed, starts the tailer and returns once the whole topic, up to
    /// its high watermark at start-up, is applied. The tailer runs until `stop` is cancelled;
    /// `shutdown` aborts the replay.
    pub(crate) async fn open(
        config: &RegistryConfig,
        kafka_config: &KafkaConfig,
        shutdown: &CancellationToken,
        stop: CancellationToken,
    ) -> Result<(Arc<Self>, JoinHandle<()>), RegistryError> {
        let topic = config.topic.clone();
        kafka::ensure_topic(kafka_config, &topic).await?;
        let producer =
            kafka::producer(kafka_config, WRITE_TIMEOUT).map_err(RegistryError::KafkaClient)?;
        let watermarks =
            Arc::new(kafka::watermark_client(kafka_config).map_err(RegistryError::KafkaClient)?);
        let consumer =
            kafka::tail_consumer(kafka_config, &topic).map_err(RegistryError::KafkaClient)?;
        let shared = Arc::new(AppliedState::new(State::new(config.default_compatibility)));
        let tailer = tokio::spawn(kafka::tail(
            consumer,
            topic.clone(),
            Arc::clone(&shared),
            stop.clone(),
        ));
        let store = Arc::new(Self {
            shared,
            producer,
            watermarks,
            topic,
            mode: config.mode,
            write_lock: Mutex::new(()),
        });
        match store.replay(shutdown).await {
            Ok(()) => Ok((store, tailer)),
            Err(error) => {
                stop.cancel();
                Err(error)
            }
        }
    }

    async fn replay(&self, shutdown: &CancellationToken) -> Result<(), RegistryError> {
        let replay_error = |reason: String| RegistryError::Replay {
            topic: self.topic.clone(),
            reason,
        };
        let target = kafka::high_watermark(&self.watermarks, &self.topic)
            .await
            .map_err(replay_error)?;
        loop {
            let before = self.shared.applied();
            tokio::select! {
                () = shutdown.cancelled() => return Err(RegistryError::Cancelled),
                caught_up = self.shared.wait_applied(target, REPLAY_STALL_TIMEOUT) => {
                    if caught_up {
                        break;
                    }
                }
            }
            if self.shared.applied() == before {
                return Err(replay_error(format!(
                    "no progress for {}s at offset {before} of {target}",
                    REPLAY_STALL_TIMEOUT.as_secs()
                )));
            }
        }
        let state = self.shared.read().await;
        tracing::info!(
            topic = %self.topic,
            offsets = target,
            subjects = state.subjects(true).len(),
            max_id = state.max_id(),
            "replayed the schemas topic"
        );
        Ok(())
    }

    /// The state, for reads. Hold it only while building an answer: the tailer waits for it.
    pub async fn read(&self) -> RwLockReadGuard<'_, State> {
        self.shared.read().await
    }

    /// Runs a write (see the module docs) and returns its answer. A replica answers a write only
    /// when it changes nothing (registering a schema already registered, say), which lets
    /// producers pointed at a replica start; anything else is refused with 50003.
    pub async fn write<T>(
        &self,
        plan: impl FnOnce(&State) -> Result<Planned<T>, ApiError>,
    ) -> Result<T, ApiError> {
        if self.mode == Mode::Replica {
            return match plan(&*self.read().await) {
                Ok(planned) if planned.records.is_empty() => Ok(planned.answer),
                _ => Err(ApiError::ReadOnlyReplica),
            };
        }
        let _writer = self.write_lock.lock().await;
        self.catch_up(WRITE_TIMEOUT).await?;
        let planned = plan(&*self.read().await)?;
        // One record at a time, in order. A failure midway leaves the earlier records applied:
        // a subject delete then stops partway, and repeating it finishes the job.
        let mut last_offset = None;
        for record in &planned.records {
            last_offset = Some(self.append(record).await?);
        }
        if let Some(offset) = last_offset {
            if !self.shared.wait_applied(offset + 1, WRITE_TIMEOUT).await {
                tracing::warn!(topic = %self.topic, offset, "a write was not applied in time");
                return Err(ApiError::Timeout);
            }
        }
        Ok(planned.answer)
    }

    /// Waits until the state holds everything in the topic now.
    async fn catch_up(&self, timeout: Duration) -> Result<(), ApiError> {
        let target = kafka::high_watermark(&self.watermarks, &self.topic)
            .await
            .map_err(|error| {
                tracing::error!(topic = %self.topic, %error, "cannot plan a write");
                ApiError::Store
            })?;
        if self.shared.wait_applied(target, timeout).await {
            Ok(())
        } else {
            tracing::warn!(
                topic = %self.topic,
                applied = self.shared.applied(),
                target,
                "the tailer did not catch up in time"
            );
            Err(ApiError::Timeout)
        }
    }

    /// Produces one record and returns its offset once the broker has it.
    async fn append(&self, record: &LogRecord) -> Result<i64, ApiError> {
        let encoding_failed = |error: serde_json::Error| {
            tracing::error!(%error, "failed to encode a registry record");
            ApiError::Store
        };
        let key = record.key().map_err(encoding_failed)?;
        let value = record.value().map_err(encoding_failed)?;
        let mut message = FutureRecord::<[u8], [u8]>::to(&self.topic).key(key.as_slice());
        if let Some(value) = &value {
            message = message.payload(value.as_slice());
        }
        match self.producer.send(message, WRITE_TIMEOUT).await {
            Ok(delivery) => Ok(delivery.offset),
            Err((error, _)) => {
                tracing::error!(topic = %self.topic, %error, "failed to write to the schemas topic");
                Err(ApiError::Store)
            }
        }
    }

    /// For `/health`: `Ok` when the state has caught up with the topic's high watermark, after
    /// a short wait so a write in flight does not count as lag.
    pub async fn check(&self) -> Result<(), String> {
        let target = kafka::high_watermark(&self.watermarks, &self.topic).await?;
        if self.shared.wait_applied(target, HEALTH_CATCH_UP).await {
            Ok(())
        } else {
            Err(format!(
                "state is behind the log: applied offsets below {} of {target}",
                self.shared.applied()
            ))
        }
    }
}
