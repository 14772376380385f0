//! `ledgerline-query-api` owns `ledgerline-api`, the axum server analysts and auditors use:
//! search, stats, job status, audit review (auditor role only), the websocket live stream,
//! health, metrics and OpenAPI.
//!
//! - [`config`]: `[api]`: listen address, the two read-only ClickHouse users, keys, limits;
//! - [`auth`]: API keys (random, 256 bits, stored as SHA-256), roles, `keys create`;
//! - [`params`]: strict query-string parsing, the shared event filters and opaque cursors;
//! - [`search`]: the `q=` search syntax (`level:error service:billing -name:health.*`);
//! - [`routes`]: the handlers; [`server`]: the router, OpenAPI document, metrics, serving;
//! - [`stream`]: `/v1/stream`, the live fan-out with filters, roles and gapless resume;
//! - [`audit_trail`]: every audit read is published as an `audit.archive.read` event first;
//! - [`error`]: every error is `{"error": {"code", "message"}}`.
//! - [`console`]: the web console at `/`, embedded in the binary.
//!
//! Reads go through the projector's [`EventReader`] and the archive's reader, proof, verify
//! and export code; the API writes no SQL of its own.

pub mod audit_trail;
pub mod auth;
pub mod config;
pub mod console;
pub mod error;
pub mod params;
pub mod routes;
pub mod search;
pub mod server;
pub mod state;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use ledgerline_consumers::archive::checkpoint::{self, TrustedKeys};
use ledgerline_consumers::archive::reader::AuditReader;
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::projector::queries::EventReader;
use ledgerline_producer::Ledger;
use ledgerline_schemas::EventCodec;
use ledgerline_service::http::Health;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

pub use config::{ApiConfig, ApiSettings};
pub use ledgerline_consumers::projector::queries::EventReader as Reader;
pub use state::AppState;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Keys(#[from] auth::KeyConfigError),
    #[error("api.archive_public_keys: {0}")]
    PublicKey(String),
    #[error("cannot read {path}")]
    PublicKeyFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ClickHouse(#[from] ledgerline_consumers::clickhouse::ClickHouseError),
    #[error("the schema registry client cannot be built")]
    Registry(#[source] ledgerline_schemas::CodecError),
    #[error("the producer for audit-of-audit events cannot be built")]
    Producer(#[source] ledgerline_producer::BuildError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Stream(#[from] stream::StreamStartError),
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// The archive's public keys from `archive_public_keys` and `archive_public_key_files`.
pub fn archive_keys(
    config: &ApiConfig,
) -> Result<(TrustedKeys, Vec<ed25519_dalek::VerifyingKey>), StartError> {
    let mut texts: Vec<String> = config.archive_public_keys.clone();
    for path in &config.archive_public_key_files {
        let text = std::fs::read_to_string(path).map_err(|source| StartError::PublicKeyFile {
            path: path.clone(),
            source,
        })?;
        texts.push(text.trim().to_owned());
    }
    let mut trusted = TrustedKeys::new();
    let mut keys = Vec::new();
    for text in texts {
        let key = checkpoint::parse_public_key(&text)
            .map_err(|error| StartError::PublicKey(error.to_string()))?;
        if !keys.contains(&key) {
            trusted.insert(key);
            keys.push(key);
        }
    }
    Ok((trusted, keys))
}

/// The state and health checks for `settings`, with `trail` recording audit reads.
pub fn build_state(
    settings: &ApiSettings,
    trail: Arc<dyn audit_trail::AuditTrail>,
) -> Result<(AppState, Health), StartError> {
    let api = &settings.api;
    let keys = auth::KeyStore::new(&api.keys)?;
    if keys.is_empty() {
        tracing::warn!("no [[api.keys]] are configured: every /v1 request will get 401");
    }
    let limits = api.limits.read_limits();
    let events = EventReader::new(api.clickhouse.client(), &api.clickhouse.database, limits)?;
    // On a cluster, read every shard through the projector's Distributed tables.
    let events = if api.clickhouse.cluster.is_some() {
        events.distributed()
    } else {
        events
    };
    let audit_client = api.audit_clickhouse.client();
    let audit = AuditReader::new(audit_client.clone(), &api.audit_clickhouse.database, limits)?;
    let archive = ArchiveStore::new(audit_client, &api.audit_clickhouse.database)?;
    let (trusted, public_keys) = archive_keys(api)?;
    if public_keys.is_empty() {
        tracing::warn!("no archive public keys configured: /v1/audit/verify will report every checkpoint as untrusted");
    }
    let codec = EventCodec::new(&settings.schema_registry).map_err(StartError::Registry)?;
    let health = Health::new()
        .with_check("clickhouse", {
            let events = events.clone();
            move || {
                let events = events.clone();
                async move {
                    events
                        .ping()
                        .await
                        .map_err(|e| ledgerline_service::errors::error_chain(&e))
                }
            }
        })
        .with_check("audit_clickhouse", {
            let audit = audit.clone();
            move || {
                let audit = audit.clone();
                async move {
                    audit
                        .ping()
                        .await
                        .map_err(|e| ledgerline_service::errors::error_chain(&e))
                }
            }
        });
    let state = AppState::new(
        keys,
        events,
        audit,
        archive,
        trusted,
        public_keys,
        Some(Arc::new(codec)),
        trail,
        api.limits.clone(),
    );
    Ok((state, health))
}

/// Builds the producer that publishes audit-of-audit events. Its delivery timeout is the
/// audit read's wait, so an event the API gave up on is not delivered later.
pub async fn build_ledger(settings: &ApiSettings) -> Result<Ledger, StartError> {
    let mut producer = settings.producer.clone();
    producer.delivery_timeout_ms = producer
        .delivery_timeout_ms
        .min(settings.api.limits.audit_publish_timeout_ms);
    Ledger::builder(producer.service_name.clone())
        .config(producer)
        .kafka(settings.kafka.clone())
        .schema_registry(settings.schema_registry.clone())
        .build()
        .await
        .map_err(StartError::Producer)
}

/// Runs the API until `shutdown`; `started` receives the bound address.
pub async fn run(
    settings: ApiSettings,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), StartError> {
    let ledger = build_ledger(&settings).await?;
    let trail: Arc<dyn audit_trail::AuditTrail> = Arc::new(audit_trail::LedgerTrail::new(
        ledger.clone(),
        Duration::from_millis(settings.api.limits.audit_publish_timeout_ms),
    ));
    let (state, mut health) = build_state(&settings, Arc::clone(&trail))?;
    let fanout = match (&state.inner.codec, settings.api.stream.enabled) {
        (Some(codec), true) => {
            let (service, task) = stream::StreamService::start(
                settings.api.stream.clone(),
                settings.kafka.clone(),
                Arc::clone(codec),
                state.inner.events.clone(),
                trail,
                shutdown.clone(),
            )?;
            let _ = state.inner.stream.set(Arc::clone(&service));
            health = health.with_check("fanout", move || {
                let service = Arc::clone(&service);
                async move { service.check() }
            });
            Some(task)
        }
        _ => None,
    };
    let pruner = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => state.prune_limiter(),
                }
            }
        })
    };
    let app = server::router(state.clone(), health, metrics);
    let addr = settings.api.listen;
    let (local, task) = server::serve(addr, app, shutdown)
        .await
        .map_err(|source| StartError::Listen { addr, source })?;
    if let Some(started) = started {
        let _ = started.send(local);
    }
    let served = task.await;
    pruner.abort();
    // Open streams close themselves on the token (1001 and the closing handshake); the
    // server does not wait for upgraded connections, so give them a moment.
    if let Some(stream) = state.inner.stream.get() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while stream.open_streams() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Some(fanout) = fanout {
        let _ = tokio::time::timeout(Duration::from_secs(10), fanout).await;
    }
    let _ = ledger.flush(Duration::from_secs(5)).await;
    match served {
        Ok(result) => result.map_err(StartError::Serve),
        Err(error) => Err(StartError::Serve(std::io::Error::other(error))),
    }
}
