//! `ledgerline-registry` owns a Confluent-compatible schema registry: the REST subset clients
//! use, compatibility checks under Avro resolution rules, and storage in the compacted Kafka
//! topic `_schemas`. It exists for places where Confluent Schema Registry or Karapace cannot
//! be installed; every client talks to it only through the Confluent API, so either can
//! replace it.
//!
//! # Storage
//! The topic is the only state. It holds Confluent's own record layout (see [`records`]), so
//! Confluent's registry can take over a topic this one wrote, and the other way round. At
//! start-up an instance replays the topic from the beginning into memory and serves only once it
//! has reached the high watermark; after that it keeps tailing the topic (partition 0 assigned,
//! no consumer group, no commits), so every instance applies the same records in the same order
//! and serves the same ids. A write is acknowledged only once this instance's tailer has
//! applied it (read-your-writes; see the `store` module).
//!
//! # One writer
//! Ids and versions are allocated from the in-memory state, not by the broker. Two instances
//! taking writes could both see id 41 as the highest and both hand out 42 for different schemas,
//! which would make data undecodable. So exactly one instance per topic runs with
//! `mode = "leader"` and takes writes; any number run as `mode = "replica"`, serve reads, and
//! answer writes with error 50003 (HTTP 503) so clients retry against the leader. Within the
//! leader, writes are serialized and planned only on state that has caught up with the topic.
//! Nothing enforces the rule across processes (Confluent uses leader election for that); it is
//! the deployment's job.
//!
//! # Modules
//! - [`config`]: `[registry]` settings;
//! - [`api`]: the REST handlers; `extract` and `auth` guard their inputs, `response` frames
//!   every answer;
//! - `state`: the in-memory state and the rules (ids, versions, deletes, compatibility);
//! - [`compatibility`] and `avro`: compatibility levels and schema identity;
//! - [`records`]: the topic's record layout; `kafka` and `store`: the topic I/O; `applied`: the
//!   state as the tailer has applied it.

pub mod api;
mod applied;
mod auth;
mod avro;
pub mod compatibility;
pub mod config;
pub mod error;
mod extract;
mod kafka;
pub mod records;
mod response;
mod state;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ledgerline_service::http::{self, Health};
use ledgerline_service::kafka::{KafkaConfig, KafkaProbe};
use ledgerline_service::telemetry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::{app, AppState};
pub use compatibility::CompatibilityLevel;
pub use config::{BasicAuth, Mode, RegistryConfig};
pub use error::{ApiError, RegistryError};

/// How long the `/health` Kafka probe waits for metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A registry that has replayed its topic and is serving.
#[derive(Debug)]
pub struct RunningRegistry {
    /// Where it listens (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// Ends when the shutdown token is cancelled and in-flight requests are answered.
    pub task: JoinHandle<Result<(), RegistryError>>,
}

/// Starts a registry: creates the topic if missing, replays it, binds `config.listen`, and
/// returns once requests can be served. Cancelling `shutdown` stops it gracefully: no new
/// connections, in-flight requests (including writes waiting for their record) are answered,
/// then the tailer stops.
pub async fn start(
    config: RegistryConfig,
    kafka: KafkaConfig,
    shutdown: CancellationToken,
) -> Result<RunningRegistry, RegistryError> {
    let metrics = telemetry::prometheus()?;
    let probe = KafkaProbe::new(&kafka).map_err(RegistryError::KafkaClient)?;
    // The tailer outlives the HTTP server's shutdown so in-flight writes can still complete.
    let stop_tailer = CancellationToken::new();
    let (store, tailer) =
        store::Store::open(&config, &kafka, &shutdown, stop_tailer.clone()).await?;
    let health = Health::new()
        .with_check("kafka", move || {
            let probe = probe.clone();
            async move { probe.check(PROBE_TIMEOUT).await.map(|_| ()) }
        })
        .with_check("store", {
            let store = Arc::clone(&store);
            move || {
                let store = Arc::clone(&store);
                async move { store.check().await }
            }
        });
    let router =
        app(AppState::new(store, config.basic_auth.clone())).merge(http::router(health, metrics));
    let bound = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener.local_addr().map(|addr| (listener, addr)),
        Err(error) => Err(error),
    };
    let (listener, addr) = match bound {
        Ok(bound) => bound,
        Err(source) => {
            stop_tailer.cancel();
            return Err(RegistryError::Bind {
                addr: config.listen,
                source,
            });
        }
    };
    tracing::info!(%addr, topic = %config.topic, mode = ?config.mode, "schema registry serving");
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        stop_tailer.cancel();
        if let Err(error) = tailer.await {
            tracing::error!(%error, "schemas topic tailer panicked");
        }
        tracing::info!("schema registry stopped");
        served.map_err(RegistryError::Serve)
    });
    Ok(RunningRegistry { addr, task })
}
