//! A whole Ledgerline behind the query API, for the API tests: its own broker, registry and
//! ClickHouse (the `api` and `auditor` ClickHouse users may only read the literal databases
//! `ledgerline` and `ledgerline_audit`, so each stack owns a server), the projector and the
//! archiver consuming the real topics, and `ledgerline-api` serving on a free port, all in
//! this process on a runtime of their own so that they outlive any one test's runtime.

#![allow(dead_code)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ledgerline_consumers::archive::checkpoint;
use ledgerline_consumers::archive::{self, ArchiveConfig, ArchiveSettings};
use ledgerline_consumers::clickhouse::ClickHouseConfig;
use ledgerline_consumers::projector::{self, ProjectorConfig, ProjectorSettings};
use ledgerline_consumers::runtime::ConsumerSettings;
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_query_api::auth::{generate_key, Role};
use ledgerline_query_api::config::{ApiConfig, ApiSettings, LimitsConfig, StreamConfig};
use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::Category;
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::schema_registry::SchemaRegistryConfig;
pub mod ws;

use ledgerline_tests::{names, Broker, BrokerStorage, ClickHouseServer, RegistryServer};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// Keys per role, so that tests can each use their own (the rate limit is per key).
pub const KEYS_PER_ROLE: usize = 8;

pub struct Keys {
    pub analyst: Vec<(String, String)>,
    pub auditor: Vec<(String, String)>,
    pub admin: Vec<(String, String)>,
}

pub struct ApiStack {
    pub broker: Mutex<Broker>,
    pub registry: RegistryServer,
    pub clickhouse: Mutex<ClickHouseServer>,
    pub clickhouse_url: String,
    pub clickhouse_password: String,
    /// `http://127.0.0.1:<port>`.
    pub api: String,
    /// `(key, key id)` per role.
    pub keys: Keys,
    pub public_key_hex: String,
    /// What the API was started with, for replicas.
    pub settings: ApiSettings,
    /// The API itself.
    primary: Replica,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Another `ledgerline-api` on the same broker, registry and ClickHouse.
pub struct Replica {
    /// `http://127.0.0.1:<port>`.
    pub api: String,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// Runs `ledgerline-api` with `settings` on a runtime thread of its own, so that it
    /// outlives any one test's runtime; returns once it listens.
    pub fn start(settings: ApiSettings) -> Replica {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // The process's recorder, shared with the consumers as in the binaries.
                let metrics = ledgerline_service::telemetry::prometheus().unwrap();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(ledgerline_query_api::run(
                    settings,
                    metrics,
                    token.clone(),
                    Some(tx),
                ));
                let address = rx.await.unwrap();
                started_tx.send(address).unwrap();
                token.cancelled().await;
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            });
        });
        let address = started_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the API did not start");
        Replica {
            api: format!("http://{address}"),
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How an [`ApiStack`] is started.
pub struct StackOptions {
    pub limits: LimitsConfig,
    pub stream: StreamConfig,
    /// SQLite for tests that read from mid-batch offsets (stream resumes): the memory engine
    /// skips the rest of a batch a fetch starts inside.
    pub storage: BrokerStorage,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            limits: LimitsConfig::default(),
            stream: StreamConfig::default(),
            storage: BrokerStorage::Memory,
        }
    }
}

impl Drop for ApiStack {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn keys(
    role: Role,
) -> (
    Vec<(String, String)>,
    Vec<ledgerline_query_api::auth::KeyEntry>,
) {
    (0..KEYS_PER_ROLE)
        .map(|_| {
            let new = generate_key(role, None).unwrap();
            ((new.key, new.entry.id.clone()), new.entry)
        })
        .unzip()
}

impl ApiStack {
    /// Starts everything and returns once the API answers `/health` with 200.
    pub fn start(limits: LimitsConfig) -> ApiStack {
        Self::start_with(StackOptions {
            limits,
            ..StackOptions::default()
        })
    }

    pub fn start_with(options: StackOptions) -> ApiStack {
        let StackOptions {
            limits,
            stream,
            storage,
        } = options;
        let clickhouse = std::thread::spawn(ClickHouseServer::start);
        let broker = Broker::start(storage).unwrap();
        let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
        let clickhouse = clickhouse.join().unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let generated = checkpoint::generate().unwrap();
        let key_file = dir.path().join("archive.key");
        std::fs::write(&key_file, generated.secret_file.expose_secret()).unwrap();
        let public_key_file = dir.path().join("public.key");
        std::fs::write(&public_key_file, format!("{}\n", generated.public_key_hex)).unwrap();

        let kafka = KafkaConfig {
            brokers: broker.bootstrap(),
            ..KafkaConfig::default()
        };
        let schema_registry = SchemaRegistryConfig {
            url: registry.url(),
            ..SchemaRegistryConfig::default()
        };
        let as_user = |user: &str, database: &str| ClickHouseConfig {
            url: clickhouse.url(),
            user: user.to_owned(),
            password: clickhouse.password().to_owned().into(),
            database: database.to_owned(),
            ..ClickHouseConfig::default()
        };
        let free = || {
            format!(
                "127.0.0.1:{}",
                ledgerline_tests::process::free_port().unwrap()
            )
            .parse()
            .unwrap()
        };
        let projector = ProjectorSettings {
            kafka: kafka.clone(),
            schema_registry: schema_registry.clone(),
            projector: ProjectorConfig {
                consumer: ConsumerSettings {
                    group_id: Some(names::group()),
                    batch_max_wait_ms: 100,
                    ..ConsumerSettings::default()
                },
                listen: free(),
                clickhouse: as_user("projector", "ledgerline"),
                ..ProjectorConfig::default()
            },
        };
        let archive = ArchiveSettings {
            kafka: kafka.clone(),
            schema_registry: schema_registry.clone(),
            archive: ArchiveConfig {
                consumer: ConsumerSettings {
                    group_id: Some(names::group()),
                    batch_max_wait_ms: 100,
                    ..ConsumerSettings::default()
                },
                listen: free(),
                clickhouse: as_user("archiver", "ledgerline_audit"),
                signing_key_file: Some(key_file),
                checkpoint_every_records: 1_000,
                checkpoint_every_secs: 1,
                self_verify_interval_secs: 0,
                ..ArchiveConfig::default()
            },
        };
        let (analyst, mut entries) = keys(Role::Analyst);
        let (auditor, more) = keys(Role::Auditor);
        entries.extend(more);
        let (admin, more) = keys(Role::Admin);
        entries.extend(more);
        let api = ApiSettings {
            api: ApiConfig {
                listen: free(),
                clickhouse: as_user("api", "ledgerline"),
                audit_clickhouse: as_user("auditor", "ledgerline_audit"),
                keys: entries,
                archive_public_keys: Vec::new(),
                archive_public_key_files: vec![public_key_file],
                limits,
                stream,
            },
            kafka: kafka.clone(),
            schema_registry,
            producer: ProducerConfig {
                service_name: ledgerline_query_api::config::SERVICE_NAME.to_owned(),
                linger_ms: 1,
                ..ProducerConfig::default()
            },
        };
        api.api.validate().unwrap();
        let settings = api.clone();

        let shutdown = CancellationToken::new();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let topic_client = broker.client_config();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                // The consumers need their topics; the broker does not create them.
                let mut topics: Vec<&str> = Category::ALL.iter().map(|c| c.topic_name()).collect();
                topics.push(DLQ_TOPIC);
                let layout = ledgerline_service::kafka::NewTopics::new(3, 1)
                    .timeout(Duration::from_secs(10));
                ledgerline_service::kafka::ensure_topics(&topic_client, &topics, &layout)
                    .await
                    .unwrap();
                let projector_task = tokio::spawn(projector::run(projector, token.clone()));
                let archive_task = tokio::spawn(archive::run(archive, token.clone()));
                started_tx.send(()).unwrap();
                token.cancelled().await;
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    let _ = projector_task.await;
                    let _ = archive_task.await;
                })
                .await;
            });
        });
        started_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the topics were not created");
        let primary = Replica::start(api);
        let stack = ApiStack {
            clickhouse_url: clickhouse.url(),
            clickhouse_password: clickhouse.password().to_owned(),
            broker: Mutex::new(broker),
            registry,
            clickhouse: Mutex::new(clickhouse),
            api: primary.api.clone(),
            primary,
            keys: Keys {
                analyst,
                auditor,
                admin,
            },
            public_key_hex: generated.public_key_hex,
            settings,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        };
        stack
    }

    /// Starts another API on this stack's servers, on a port of its own.
    pub fn replica(&self) -> Replica {
        let mut settings = self.settings.clone();
        settings.api.listen = format!(
            "127.0.0.1:{}",
            ledgerline_tests::process::free_port().unwrap()
        )
        .parse()
        .unwrap();
        Replica::start(settings)
    }

    pub fn analyst(&self, index: usize) -> &str {
        &self.keys.analyst[index].0
    }

    pub fn auditor(&self, index: usize) -> &str {
        &self.keys.auditor[index].0
    }

    pub fn admin(&self, index: usize) -> &str {
        &self.keys.admin[index].0
    }

    /// A producer for `service`, acks=all, sending at once.
    pub async fn ledger(&self, service: &str) -> Ledger {
        let bootstrap = self.broker.lock().unwrap().bootstrap();
        Ledger::builder(service)
            .config(ProducerConfig {
                service_name: service.to_owned(),
                linger_ms: 1,
                create_topics: false,
                ..ProducerConfig::default()
            })
            .kafka(KafkaConfig {
                brokers: bootstrap,
                ..KafkaConfig::default()
            })
            .schema_registry(SchemaRegistryConfig {
                url: self.registry.url(),
                ..SchemaRegistryConfig::default()
            })
            .build()
            .await
            .unwrap()
    }

    /// GET `path_and_query` with `key` (none when `None`): the status and the JSON body (or
    /// the text, as a JSON string, when the body is not JSON).
    pub async fn get(&self, key: Option<&str>, path_and_query: &str) -> (u16, serde_json::Value) {
        let (status, _, body) = self.get_raw(key, path_and_query).await;
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into()));
        (status, json)
    }

    pub async fn get_raw(
        &self,
        key: Option<&str>,
        path_and_query: &str,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("{}{path_and_query}", self.api))
            .timeout(Duration::from_secs(60));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        (status, headers, body)
    }

    /// Polls `path_and_query` until `done` holds for the 200 answer, for up to `seconds`.
    pub async fn wait_for(
        &self,
        key: &str,
        path_and_query: &str,
        seconds: u64,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let (status, body) = self.get(Some(key), path_and_query).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path_and_query} did not get there in {seconds}s: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `since=…&until=…` covering the last hour and the next ten minutes.
pub fn recent_range() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = &time::format_description::well_known::Rfc3339;
    format!(
        "since={}&until={}",
        (now - time::Duration::hours(1)).format(format).unwrap(),
        (now + time::Duration::minutes(10)).format(format).unwrap()
    )
}

/// Percent-encodes `text` for a query string.
pub fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `event_id`s of a JSON page.
pub fn ids(page: &serde_json::Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect()
}
