//! The tamper-evident audit archive: `ledgerline-consumer archive` reads `ledgerline.audit` in
//! its own group and writes ClickHouse `ledgerline_audit` as its own user. The operator's view
//! (tables, hash encodings, keys, verify, proofs, exports, retention) is `docs/archive.md`.
//!
//! What it guarantees:
//!
//! - **A hash chain per Kafka partition.** Every archived record of `ledgerline.audit` stores
//!   `prev_hash` and `hash = SHA-256(domain tag ‖ prev_hash ‖ topic ‖ partition ‖ offset ‖
//!   timestamp ‖ key ‖ value bytes)`, starting from the documented [`chain::GENESIS`]. Changing,
//!   deleting, inserting or reordering a record breaks the chain at that record, so `verify` can
//!   name the first bad one. Undecodable records are chained too, because a reviewer must see
//!   that something was there.
//! - **Exactly once, with no fork.** On assignment the archiver resumes right after the chain
//!   head stored in ClickHouse, and fencing keeps a member from writing a partition it lost.
//!   The chain is a function of the Kafka records alone, so a replay recomputes identical rows;
//!   after a failed insert the head is read again, since the server may have stored it.
//!   Offsets Kafka itself no longer has are recorded as explicit gaps.
//! - **Signed checkpoints.** Every N records or T seconds per partition, an Ed25519-signed
//!   checkpoint fixes the chain head, the RFC 6962 Merkle root of the segment's record hashes
//!   and the previous checkpoint's hash; pending entries are also signed when a partition is
//!   revoked. Deleting the newest rows is caught against the last
//!   checkpoint, and a Merkle inclusion proof lets a reviewer check one event offline with the
//!   public key alone.
//! - **Key rotation.** A checkpoint names its key id; verification takes a set of trusted public
//!   keys, and a rotation is a checkpoint signed by the old key that names the new one.
//!
//! # Modules
//!
//! - [`chain`] — the genesis value, the record hash and the gap hash;
//! - [`merkle`] — RFC 6962 tree hashing, inclusion proofs and their RFC 9162 verification;
//! - [`checkpoint`] — the checkpoint, its canonical encoding and hash, the signing-key file and
//!   Ed25519 signing and verification against trusted keys;
//! - [`schema`], [`row`], [`store`] — the `records` and `checkpoints` tables, their rows, reads;
//! - [`config`] — `[archive]`;
//! - [`sink`] — the runtime sink that chains, inserts and checkpoints;
//! - [`verify`] — the verification library behind `archive verify` (and the API);
//! - [`proof`] — one event's inclusion proof, and its offline check;
//! - [`bundle`] — the self-verifying export for reviewers.
//!
//! # Metrics
//!
//! `ledgerline_archive_records_total{kind}` (event, undecodable, gap),
//! `ledgerline_archive_checkpoints_total`, `ledgerline_archive_head_offset{topic,partition}`, `ledgerline_archive_verify_ok` (1 or 0)
//! and `ledgerline_archive_verify_timestamp_seconds` from the periodic self-verify, besides the
//! runtime's metrics with `consumer="archive"`.
//!
//! Every byte encoding here is versioned by its domain tag (`….v1`). Changing an encoding means
//! a new tag, never a silent change, because archived hashes and signatures must stay
//! verifiable for as long as the archive is kept.

pub mod bundle;
pub mod chain;
pub mod checkpoint;
pub mod config;
pub mod kafka;
pub mod merkle;
pub mod proof;
pub mod reader;
pub mod row;
pub mod schema;
pub mod sink;
pub mod store;
pub mod verify;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ledgerline_schemas::{Category, EventCodec};
use ledgerline_service::http;
use ledgerline_service::kafka::KafkaProbe;
use ledgerline_service::telemetry;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use config::{ArchiveConfig, ArchiveSettings, DEFAULT_GROUP_ID};
pub use sink::{ArchiveSink, Cadence, SigningKeys};

use crate::clickhouse::{sink_health, ClickHouseError};
use crate::runtime::{self, BadRecords, RuntimeConfig, RuntimeError};
use checkpoint::{ArchiveSigningKey, KeyError, TrustedKeys};

/// The archiver's name: the `consumer` label of its runtime metrics, and its Kafka client id.
pub const CONSUMER: &str = "archive";

/// How long start-up waits for the broker to answer before giving up with its address.
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the archiver could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("kafka is not reachable: {0}")]
    KafkaUnreachable(String),
    #[error("failed to create a kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("failed to prepare clickhouse at {url}")]
    ClickHouse {
        url: String,
        #[source]
        source: ClickHouseError,
    },
    #[error("failed to set up the schema registry client: {0}")]
    Registry(#[from] ledgerline_schemas::CodecError),
    #[error("`archive.signing_key_file` is not set: create a key with `ledgerline-consumer archive keygen --out <file>`")]
    NoSigningKey,
    #[error("failed to read the signing key {path}")]
    ReadKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid signing key {path}")]
    InvalidKey {
        path: String,
        #[source]
        source: KeyError,
    },
    #[error("failed to listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up metrics: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// Reads a signing-key file written by `archive keygen`.
pub fn read_signing_key(path: &Path) -> Result<ArchiveSigningKey, ArchiveError> {
    let text = std::fs::read_to_string(path).map_err(|source| ArchiveError::ReadKey {
        path: path.display().to_string(),
        source,
    })?;
    checkpoint::load_signing_key(&SecretString::from(text)).map_err(|source| {
        ArchiveError::InvalidKey {
            path: path.display().to_string(),
            source,
        }
    })
}

/// The signing keys `[archive]` names.
pub fn signing_keys(config: &ArchiveConfig) -> Result<SigningKeys, ArchiveError> {
    let current = config
        .signing_key_file
        .as_deref()
        .ok_or(ArchiveError::NoSigningKey)?;
    Ok(SigningKeys {
        current: Arc::new(read_signing_key(current)?),
        previous: match &config.previous_signing_key_file {
            Some(path) => Some(Arc::new(read_signing_key(path)?)),
            None => None,
        },
    })
}

/// The keys the archiver's self-verify trusts: its signing keys and `trusted_public_keys`.
pub fn trusted_keys(
    config: &ArchiveConfig,
    keys: &SigningKeys,
) -> Result<TrustedKeys, ArchiveError> {
    let mut trusted = TrustedKeys::new();
    trusted.insert(keys.current.verifying_key());
    if let Some(previous) = &keys.previous {
        trusted.insert(previous.verifying_key());
    }
    for hex in &config.trusted_public_keys {
        trusted
            .insert_hex(hex)
            .map_err(|source| ArchiveError::InvalidKey {
                path: "archive.trusted_public_keys".to_owned(),
                source,
            })?;
    }
    Ok(trusted)
}

/// See [`ArchiveSink::health`].
#[derive(Debug, Clone)]
pub struct WriteHealth(Arc<Mutex<Option<String>>>);

impl WriteHealth {
    /// `Err("last write failed: <kind>: <error>")` while the last write failed.
    pub fn check(&self) -> Result<(), String> {
        match self.0.lock().ok().and_then(|last| last.clone()) {
            None => Ok(()),
            Some(failure) => Err(format!("last write failed: {failure}")),
        }
    }
}

/// Runs the archiver until `shutdown`: checks Kafka, loads the signing keys, applies the
/// migrations, serves `/health` and `/metrics` on `[archive] listen`, self-verifies on a
/// schedule, and archives `ledgerline.audit`.
pub async fn run(
    settings: ArchiveSettings,
    shutdown: CancellationToken,
) -> Result<(), ArchiveError> {
    let ArchiveSettings {
        kafka,
        schema_registry,
        archive,
    } = settings;
    let keys = signing_keys(&archive)?;
    let trusted = trusted_keys(&archive, &keys)?;
    let probe = KafkaProbe::new(&kafka)?;
    probe
        .check(KAFKA_START_TIMEOUT)
        .await
        .map_err(ArchiveError::KafkaUnreachable)?;
    let cadence = Cadence {
        every_entries: archive.checkpoint_every_records,
        every: archive.checkpoint_every(),
    };
    let sink = ArchiveSink::start(&archive.clickhouse, keys.clone(), cadence)
        .await
        .map_err(|source| ArchiveError::ClickHouse {
            url: archive.clickhouse.url.clone(),
            source,
        })?;
    let codec = Arc::new(EventCodec::new(&schema_registry)?);
    let mut config = RuntimeConfig::group(
        CONSUMER,
        vec![Category::Audit.topic_name().to_owned()],
        &archive.consumer,
        DEFAULT_GROUP_ID,
    );
    // Undecodable records are chained with their reason; the projector dead-letters them.
    config.bad_records = BadRecords::Deliver;

    let writes = sink.health();
    let health = sink_health(
        probe,
        archive.clickhouse.client(),
        "archive_writes",
        move || writes.check(),
        config.status.clone(),
    );
    let (addr, _server) = http::serve(
        archive.listen,
        http::router(health, telemetry::prometheus()?),
        shutdown.clone(),
    )
    .await
    .map_err(|source| ArchiveError::Listen {
        addr: archive.listen,
        source,
    })?;
    tracing::info!(%addr, key_id = keys.current.key_id(), "archive health and metrics");

    if archive.self_verify_interval_secs > 0 {
        tokio::spawn(verify::self_verify_loop(
            archive.clone(),
            trusted,
            Arc::clone(&codec),
            shutdown.clone(),
        ));
    }
    runtime::run(config, &kafka, codec, sink, shutdown).await?;
    Ok(())
}
