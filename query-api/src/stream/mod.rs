//! The live stream, `GET /v1/stream`: a websocket of the events that pass the client's filter
//! as they are published, with lag notices, heartbeats and gapless resume.
//!
//! # Guarantees
//! - **Every replica serves every client.** Each API process runs one fan-out consumer
//!   ([`hub::FanoutSink`] on the consumer runtime's broadcast mode: no group, no commits,
//!   every partition of the five event topics from the newest offset, bad records counted
//!   (`ledgerline_consumer_rejected_total{consumer="fanout"}`) and skipped). Events are decoded once and each becomes one shared message.
//! - **Roles.** Audit events reach auditors only, whatever the filter; session events (live
//!   only, never stored) reach every role. An auditor's filter that lets audit events through
//!   is recorded in the audit trail (`audit.archive.read`, route `/v1/stream`) before it
//!   applies, like every audit read; if it cannot be recorded the stream is refused (503, or
//!   an `audit_trail_unavailable` error on a filter change, which keeps the old filter).
//! - **Exactly the matching events, in order per partition.** A client gets every event that
//!   passes its filter from the moment it is subscribed (the `subscribed` message), each once,
//!   unless it is too slow.
//! - **Slow clients lose events, never slow anyone else.** A client's queue holds
//!   `[api.stream] queue_events`; when it is full, newer events are dropped for that client
//!   and counted, and it gets one `lagged` message with the count and the cursor from before
//!   the first loss (resuming from it recovers them). A client that keeps losing events for
//!   `slow_client_timeout_secs` is closed (4410 `too_slow`). Memory per client is bounded by
//!   its queue; the messages themselves are shared.
//! - **Gapless resume.** Every message carries a cursor. `since=<cursor>` reads what the
//!   client missed straight from Kafka, all categories including session events, up to where
//!   the fan-out is, and then joins it: positions per partition decide the seam, so nothing is
//!   missed or sent twice. A cursor older than the broker holds gets a `gap` message naming
//!   what is lost. `since=<time>` replays stored events from ClickHouse (oldest first) below
//!   where the projector's rows end per partition, then Kafka from there (session events from
//!   shortly before that time), then live; stored events' ids are remembered so that a copy
//!   at another offset is not sent twice.
//!
//! # Messages (server to client, JSON text)
//! `event{cursor, event}`, `subscribed{filter, cursor}` (on joining and after each filter
//! change), `lagged{dropped, cursor}`, `heartbeat{cursor}` (every `heartbeat_secs`, with a
//! ping), `gap{missed, partitions, cursor}`, `error{code, message}` (followed by a close frame
//! when the error ends the stream). The one client message is
//! `{"type": "filter", "filter": {<the /v1/events filters>}}`.
//!
//! # Modules
//! [`filter`] (subscriptions), [`cursor`] (positions as text), [`hub`] (the fan-out),
//! [`replay`] (reading Kafka from a position), [`session`] (one connection), [`messages`].

pub mod cursor;
pub mod filter;
pub mod hub;
pub mod messages;
pub mod replay;
pub mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ledgerline_consumers::projector::queries::EventReader;
use ledgerline_consumers::runtime::{
    self, BadRecords, ConsumerSettings, ConsumerStatus, RuntimeConfig, StartAt,
};
use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::kafka::KafkaConfig;
use rdkafka::consumer::BaseConsumer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::audit_trail::AuditTrail;
use crate::auth::bearer_token;
use crate::config::StreamConfig;
use crate::error::ApiError;
use crate::params::{self, Params};
use crate::state::{AppState, KeyCounts};
use filter::StreamFilter;
use hub::{FanoutSink, Hub};
use session::{Client, Since};

/// The consumer name of the fan-out: its metrics' `consumer` label and its client id.
pub const FANOUT: &str = "fanout";

/// Everything the stream shares: the hub, the connection counts, what resumes read with.
pub struct StreamService {
    pub hub: Arc<Hub>,
    pub config: StreamConfig,
    pub status: ConsumerStatus,
    kafka: KafkaConfig,
    metadata: Arc<BaseConsumer>,
    codec: Arc<EventCodec>,
    events: EventReader,
    trail: Arc<dyn AuditTrail>,
    max_event_bytes: usize,
    resumes: Semaphore,
    connections: Mutex<Connections>,
    shutdown: CancellationToken,
    /// Set when the fan-out consumer stopped on its own.
    failed: Mutex<Option<String>>,
    /// Cancelled then too: open streams end (1011) so their clients reconnect elsewhere.
    down: CancellationToken,
}

impl std::fmt::Debug for StreamService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamService")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Connections {
    total: usize,
    per_key: KeyCounts,
}

/// One counted connection; dropping it frees the place.
struct Slot {
    service: Arc<StreamService>,
    key_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut connections = self
            .service
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        connections.total = connections.total.saturating_sub(1);
        connections.per_key.remove(&self.key_id);
    }
}

/// Why the stream could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamStartError {
    #[error("the fan-out's metadata client cannot be built: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl StreamService {
    /// Starts the fan-out consumer (stopped by `shutdown`) and returns the service with it.
    pub fn start(
        config: StreamConfig,
        kafka: KafkaConfig,
        codec: Arc<EventCodec>,
        events: EventReader,
        trail: Arc<dyn AuditTrail>,
        shutdown: CancellationToken,
    ) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>), StreamStartError> {
        let metadata: BaseConsumer = kafka
            .consumer_config(&[("client.id", format!("{FANOUT}-metadata"))])
            .set(
                "group.id",
                format!("ledgerline-{FANOUT}-metadata-{}", uuid::Uuid::new_v4()),
            )
            .create()?;
        let metadata = Arc::new(metadata);
        let hub = Arc::new(Hub::new(
            config.queue_events,
            Duration::from_secs(config.slow_client_timeout_secs),
        ));
        let settings = ConsumerSettings {
            batch_max_events: 5_000,
            batch_max_wait_ms: config.fanout_batch_max_wait_ms,
            fetch_wait_max_ms: config.fanout_fetch_wait_max_ms,
            ..ConsumerSettings::default()
        };
        let topics = Category::ALL
            .iter()
            .map(|category| category.topic_name().to_owned())
            .collect();
        let runtime_config = RuntimeConfig {
            // Bad records reach the sink, which skips them: it must see their offsets.
            bad_records: BadRecords::Deliver,
            ..RuntimeConfig::broadcast(FANOUT, topics, StartAt::Latest, &settings)
        };
        // librdkafka prefetches up to 64 MiB by default; the fan-out keeps up with the head, so
        // 16 MiB is plenty and keeps the API small. An operator's own setting wins.
        let mut fanout_kafka = kafka.clone();
        fanout_kafka
            .librdkafka
            .entry("queued.max.messages.kbytes".to_owned())
            .or_insert_with(|| "16384".to_owned());
        let status = runtime_config.status.clone();
        let service = Arc::new(Self {
            hub: Arc::clone(&hub),
            config: config.clone(),
            status,
            kafka: kafka.clone(),
            metadata: Arc::clone(&metadata),
            codec: Arc::clone(&codec),
            events,
            trail,
            max_event_bytes: settings.max_event_bytes,
            resumes: Semaphore::new(config.max_concurrent_resumes),
            connections: Mutex::new(Connections::default()),
            shutdown: shutdown.clone(),
            failed: Mutex::new(None),
            down: CancellationToken::new(),
        });
        // One timer for every client's writes (see `Hub::sweep`).
        {
            let hub = Arc::clone(&hub);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = tick.tick() => hub.sweep(),
                    }
                }
            });
        }
        let task = {
            let service = Arc::clone(&service);
            tokio::spawn(async move {
                let sink = FanoutSink::new(hub, metadata);
                let result =
                    runtime::run(runtime_config, &fanout_kafka, codec, sink, shutdown.clone())
                        .await;
                if !shutdown.is_cancelled() {
                    let reason = match result {
                        Ok(()) => "the fan-out consumer stopped".to_owned(),
                        Err(error) => format!("the fan-out consumer failed: {error}"),
                    };
                    tracing::error!(%reason, "live stream down");
                    *service
                        .failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                    service.down.cancel();
                }
            })
        };
        Ok((service, task))
    }

    /// The `/health` check: the consumer runs, has its partitions and keeps up.
    pub fn check(&self) -> Result<(), String> {
        if let Some(reason) = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Err(reason);
        }
        if !self.hub.is_ready() {
            return Err("the fan-out consumer has no partitions yet".to_owned());
        }
        self.status.check()
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .total
    }

    fn admit(self: &Arc<Self>, key_id: &str) -> Result<Slot, ApiError> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let refuse = |message: String| {
            metrics::counter!("ledgerline_stream_refused_total", "reason" => "too_many_connections")
                .increment(1);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                message,
            )
            .with_retry_after(5)
        };
        if connections.total >= self.config.max_connections {
            return Err(refuse(format!(
                "the server has its limit of {} open streams",
                self.config.max_connections
            )));
        }
        if !connections
            .per_key
            .try_add(key_id, self.config.max_connections_per_key)
        {
            return Err(refuse(format!(
                "key `{key_id}` has its limit of {} open streams",
                self.config.max_connections_per_key
            )));
        }
        connections.total += 1;
        Ok(Slot {
            service: Arc::clone(self),
            key_id: key_id.to_owned(),
        })
    }
}

/// `GET /v1/stream`: checks the key, the parameters and the limits, each with its own JSON
/// error before the upgrade, then upgrades. Parameters: `key` (for browsers, which cannot set
/// the Authorization header on a websocket), `since` (a cursor or an RFC 3339 time), and the
/// `/v1/events` filters.
pub async fn stream(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    match open(state, connect, headers, query, upgrade).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn open(
    state: AppState,
    connect: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    query: Option<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let mut params = Params::parse(query.as_deref())?;
    let query_key = params.one("key")?;
    let header_key = match headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <key>`")
        })?),
    };
    let token = header_key.or(query_key.as_deref()).ok_or_else(|| {
        ApiError::unauthorized(
            "missing key: send `Authorization: Bearer <key>`, or `?key=<key>` from a browser",
        )
    })?;
    let caller = state
        .inner
        .keys
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
    state.admit(&caller)?;
    tracing::Span::current().record("key_id", caller.key_id.as_str());
    let Some(service) = state.inner.stream.get().cloned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stream_disabled",
            "the live stream is not enabled on this server ([api.stream] enabled = false)",
        ));
    };
    let since_text = params.one("since")?;
    let since = match &since_text {
        None => Since::Live,
        Some(text) => parse_since(text)?,
    };
    let filter = StreamFilter::from_params(&mut params, caller.role)?;
    params.finish()?;
    // Every check a plain GET can answer comes before the websocket check, so a browser,
    // which is not told why an upgrade failed, can ask with a GET and get the real reason
    // (a full server, too many connections for the key) rather than `not_a_websocket`.
    if let Err(reason) = service.check() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stream_unavailable",
            format!("the live stream is not available: {reason}"),
        )
        .with_retry_after(5));
    }
    let slot = service.admit(&caller.key_id)?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_a_websocket",
            format!("/v1/stream is a websocket: {}", rejection.body_text()),
        )
    })?;
    let client = Client {
        key_id: caller.key_id.clone(),
        role: caller.role,
        ip: connect.map_or_else(
            || "unknown".to_owned(),
            |Extension(ConnectInfo(addr))| addr.ip().to_string(),
        ),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|text| text.chars().take(256).collect()),
    };
    session::record_audit_watch(&service, &client, &filter, since_text.as_deref())
        .await
        .map_err(|message| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_trail_unavailable",
                message,
            )
        })?;
    let max = service.config.max_message_bytes;
    Ok(upgrade
        // Small buffers: a thousand clients must fit in little memory, and clients send
        // only small filter messages. Frames over four times the limit fail the connection
        // in the websocket layer; those between are answered with `message_too_large`.
        .read_buffer_size(4 * 1024)
        // No cap on the write buffer (tungstenite fails a frame larger than the cap, and one
        // event may be megabytes of JSON); the session bounds what it writes before a flush.
        .write_buffer_size(16 * 1024)
        .max_message_size(max.saturating_mul(4).max(64 * 1024))
        .max_frame_size(max.saturating_mul(4).max(64 * 1024))
        .on_upgrade(move |socket| async move {
            session::run(service, socket, client, filter, since).await;
            drop(slot);
        }))
}

/// `since`: an RFC 3339 time or a cursor.
fn parse_since(text: &str) -> Result<Since, ApiError> {
    if let Ok(micros) = params::parse_time("since", text) {
        return Ok(Since::Time(micros));
    }
    cursor::decode(text).map(Since::Cursor).map_err(|error| {
        ApiError::bad_parameter(
            "since",
            format!("is neither an RFC 3339 time nor a cursor this API issued ({error})"),
        )
    })
}
