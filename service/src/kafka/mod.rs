//! Kafka client settings shared by the producer and every consumer: brokers, TLS/SASL and
//! compression. One place turns them into an rdkafka [`ClientConfig`], so a secured cluster is
//! configured once for the whole platform.
//!
//! One override rule holds for every client built here: `[kafka] librdkafka` is applied last,
//! so an operator's explicit librdkafka setting wins over anything Ledgerline chooses, including
//! a component's own settings passed to [`KafkaConfig::idempotent_producer_config`].
//!
//! [`ensure_topics`] creates the topics a component needs before it uses them.

mod topics;

pub use topics::{ensure_topics, NewTopics, TopicError, TopicState};

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{ConfigError, Result};

/// `[kafka]` in `ledgerline.toml`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (`host:port,host:port`).
    pub brokers: String,
    /// `client.id` reported to the broker; services set their own name when this is unset.
    pub client_id: Option<String>,
    /// How clients reach the brokers.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials, required by `sasl_plaintext` and `sasl_ssl`.
    pub sasl: Option<SaslConfig>,
    /// TLS files, used by `ssl` and `sasl_ssl`.
    pub tls: TlsConfig,
    /// Producer-side compression of record batches.
    pub compression: Compression,
    /// Further librdkafka properties, passed through verbatim. Applied last, so they win. Set
    /// them in the file: environment names cannot carry the dots librdkafka keys contain.
    pub librdkafka: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: default_brokers(),
            client_id: None,
            security_protocol: SecurityProtocol::Plaintext,
            sasl: None,
            tls: TlsConfig::default(),
            compression: Compression::Lz4,
            librdkafka: BTreeMap::new(),
        }
    }
}

/// The local stack's broker.
fn default_brokers() -> String {
    "127.0.0.1:9092".to_owned()
}

// The passthrough map can carry secrets (`ssl.key.password`, `sasl.password`), so only its keys
// are shown. The SASL password is a secret type and shows itself as redacted.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("security_protocol", &self.security_protocol)
            .field("sasl", &self.sasl)
            .field("tls", &self.tls)
            .field("compression", &self.compression)
            .field("librdkafka", &self.librdkafka.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `GSSAPI`.
    pub mechanism: String,
    pub username: String,
    /// A secret type, so `Debug` and log lines show `[REDACTED]`; read it with `expose_secret`.
    pub password: SecretString,
}

// `SecretString` has no `==`, but configs are compared whole (defaults, reloads): the same
// credentials are the same in every part.
impl PartialEq for SaslConfig {
    fn eq(&self, other: &Self) -> bool {
        self.mechanism == other.mechanism
            && self.username == other.username
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

impl Eq for SaslConfig {}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle that signs the brokers' certificates (`ssl.ca.location`).
    pub ca_location: Option<String>,
    /// Client certificate for mutual TLS (`ssl.certificate.location`).
    pub certificate_location: Option<String>,
    /// Client private key for mutual TLS (`ssl.key.location`).
    pub key_location: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn as_librdkafka(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl KafkaConfig {
    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.brokers.split(',').all(|b| b.trim().is_empty()) {
            return Err(ConfigError::invalid_value(
                "kafka.brokers",
                "must name at least one broker",
            ));
        }
        if self.security_protocol.uses_sasl() && self.sasl.is_none() {
            return Err(ConfigError::invalid_value(
                "kafka.sasl",
                format!(
                    "security_protocol {} needs [kafka.sasl] mechanism, username and password",
                    self.security_protocol.as_librdkafka()
                ),
            ));
        }
        if !self.security_protocol.uses_sasl() && self.sasl.is_some() {
            return Err(ConfigError::invalid_value(
                "kafka.sasl",
                "is set but security_protocol does not use SASL (use sasl_plaintext or sasl_ssl)",
            ));
        }
        Ok(())
    }

    /// Settings every client (producer, consumer, admin) needs.
    pub fn client_config(&self) -> ClientConfig {
        self.with_passthrough(self.connection_config())
    }

    /// [`Self::client_config`] plus producer-only settings. Kept apart because librdkafka warns
    /// about producer properties on a consumer.
    pub fn producer_config(&self) -> ClientConfig {
        self.with_passthrough(self.producer_base())
    }

    /// The producer every Ledgerline component writes with: idempotent with acks=all, so a
    /// retried send is never written twice and an acknowledged record is on every in-sync
    /// replica. `settings` are the component's own choices (linger, timeouts, `client.id`).
    ///
    /// Like everything Ledgerline sets, they give way to `[kafka] librdkafka`, applied last: an
    /// operator who sets `acks` or `enable.idempotence` there gives up those guarantees on
    /// purpose.
    pub fn idempotent_producer_config(&self, settings: &[(&str, String)]) -> ClientConfig {
        let mut config = self.producer_base();
        config.set("enable.idempotence", "true").set("acks", "all");
        for (key, value) in settings {
            config.set(*key, value);
        }
        self.with_passthrough(config)
    }

    /// A consumer's settings: what every client needs plus `settings`, the consumer's own
    /// defaults, which give way to `[kafka] librdkafka` like everything Ledgerline sets.
    pub fn consumer_config(&self, settings: &[(&str, String)]) -> ClientConfig {
        let mut config = self.connection_config();
        for (key, value) in settings {
            config.set(*key, value);
        }
        self.with_passthrough(config)
    }

    /// Brokers, client id, security: what every client needs, before the passthrough map.
    fn connection_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.security_protocol.as_librdkafka());
        if let Some(client_id) = &self.client_id {
            config.set("client.id", client_id);
        }
        if let Some(sasl) = &self.sasl {
            config
                .set("sasl.mechanism", &sasl.mechanism)
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose_secret());
        }
        for (key, value) in [
            ("ssl.ca.location", &self.tls.ca_location),
            ("ssl.certificate.location", &self.tls.certificate_location),
            ("ssl.key.location", &self.tls.key_location),
        ] {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        config
    }

    fn producer_base(&self) -> ClientConfig {
        let mut config = self.connection_config();
        config.set("compression.type", self.compression.as_librdkafka());
        config
    }

    /// The one override rule (see the module docs): the passthrough map, applied last. A key
    /// it sets also clears what Ledgerline set under the key's alias: librdkafka would get both
    /// names and apply them in no fixed order, so the operator's value would win only sometimes.
    fn with_passthrough(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.librdkafka {
            for alias in aliases_of(key) {
                if !self.librdkafka.contains_key(alias) {
                    config.remove(alias);
                }
            }
            config.set(key, value);
        }
        config
    }
}

/// librdkafka properties known under two names, among those Ledgerline sets itself.
const ALIASES: [(&str, &str); 6] = [
    ("bootstrap.servers", "metadata.broker.list"),
    ("sasl.mechanism", "sasl.mechanisms"),
    ("compression.type", "compression.codec"),
    ("acks", "request.required.acks"),
    ("linger.ms", "queue.buffering.max.ms"),
    ("delivery.timeout.ms", "message.timeout.ms"),
];

/// The other names of `key`.
fn aliases_of(key: &str) -> impl Iterator<Item = &'static str> + '_ {
    ALIASES.into_iter().filter_map(move |(name, alias)| {
        if key == name {
            Some(alias)
        } else if key == alias {
            Some(name)
        } else {
            None
        }
    })
}

/// A client for cheap liveness probes: one metadata round trip, no group, no subscriptions.
#[derive(Clone)]
pub struct KafkaProbe {
    client: std::sync::Arc<rdkafka::consumer::BaseConsumer>,
    brokers: String,
}

impl fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaProbe")
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl KafkaProbe {
    pub fn new(config: &KafkaConfig) -> std::result::Result<Self, rdkafka::error::KafkaError> {
        Ok(Self {
            client: std::sync::Arc::new(config.client_config().create()?),
            brokers: config.brokers.clone(),
        })
    }

    /// Asks the cluster for its metadata; `Ok` with the broker count when it answers in time.
    /// Runs on the blocking pool because librdkafka's metadata call blocks.
    pub async fn check(&self, timeout: std::time::Duration) -> std::result::Result<usize, String> {
        use rdkafka::consumer::Consumer;
        let client = std::sync::Arc::clone(&self.client);
        let metadata = tokio::task::spawn_blocking(move || client.fetch_metadata(None, timeout))
            .await
            .map_err(|error| format!("metadata task failed: {error}"))?
            .map_err(|error| format!("kafka at {} did not answer: {error}", self.brokers))?;
        match metadata.brokers().len() {
            0 => Err(format!("kafka at {} lists no brokers", self.brokers)),
            brokers => Ok(brokers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigSource;

    #[test]
    fn defaults_point_at_the_local_stack() {
        let config = KafkaConfig::default();
        config.validate().unwrap();
        let client = config.client_config();
        assert_eq!(client.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(client.get("security.protocol"), Some("plaintext"));
        assert_eq!(client.get("compression.type"), None);
        assert_eq!(
            config.producer_config().get("compression.type"),
            Some("lz4")
        );
    }

    #[test]
    fn sasl_ssl_passes_through_to_librdkafka() {
        let source = ConfigSource::from_toml_str(
            r#"
            [kafka]
            brokers = "b1:9093,b2:9093"
            security_protocol = "sasl_ssl"
            compression = "zstd"
            sasl = { mechanism = "SCRAM-SHA-512", username = "svc", password = "hunter2" }
            tls = { ca_location = "/etc/ca.pem" }
            librdkafka = { "socket.keepalive.enable" = "true" }
            "#,
        )
        .unwrap();
        let config: KafkaConfig = source.section("kafka").unwrap();
        config.validate().unwrap();
        let client = config.producer_config();
        assert_eq!(client.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(client.get("sasl.password"), Some("hunter2"));
        assert_eq!(client.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(client.get("compression.type"), Some("zstd"));
        assert_eq!(client.get("socket.keepalive.enable"), Some("true"));
        assert!(
            !format!("{config:?}").contains("hunter2"),
            "debug output leaks the password"
        );
    }

    #[test]
    fn idempotent_producer_is_acks_all_unless_the_operator_says_otherwise() {
        let mut config = KafkaConfig::default();
        let settings = [("linger.ms", "5".to_owned())];
        let client = config.idempotent_producer_config(&settings);
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("acks"), Some("all"));
        assert_eq!(client.get("linger.ms"), Some("5"));
        assert_eq!(client.get("compression.type"), Some("lz4"));

        config.librdkafka = BTreeMap::from([
            ("acks".to_owned(), "1".to_owned()),
            ("linger.ms".to_owned(), "20".to_owned()),
        ]);
        let client = config.idempotent_producer_config(&settings);
        assert_eq!(client.get("acks"), Some("1"), "the passthrough map wins");
        assert_eq!(
            client.get("linger.ms"),
            Some("20"),
            "over component settings too"
        );
    }

    #[test]
    fn consumer_defaults_give_way_to_the_passthrough_map_and_carry_no_producer_settings() {
        let mut config = KafkaConfig::default();
        let defaults = [("session.timeout.ms", "10000".to_owned())];
        let client = config.consumer_config(&defaults);
        assert_eq!(client.get("session.timeout.ms"), Some("10000"));
        assert_eq!(client.get("compression.type"), None);
        config.librdkafka = BTreeMap::from([("session.timeout.ms".to_owned(), "4000".to_owned())]);
        let client = config.consumer_config(&defaults);
        assert_eq!(client.get("session.timeout.ms"), Some("4000"));
    }

    #[test]
    fn the_passthrough_map_wins_under_either_name_of_a_setting() {
        let config = KafkaConfig {
            librdkafka: BTreeMap::from([
                ("message.timeout.ms".to_owned(), "5000".to_owned()),
                ("compression.codec".to_owned(), "zstd".to_owned()),
            ]),
            ..KafkaConfig::default()
        };
        let client =
            config.idempotent_producer_config(&[("delivery.timeout.ms", "120000".to_owned())]);
        assert_eq!(client.get("message.timeout.ms"), Some("5000"));
        assert_eq!(
            client.get("delivery.timeout.ms"),
            None,
            "both names would reach librdkafka, applied in no fixed order"
        );
        assert_eq!(client.get("compression.codec"), Some("zstd"));
        assert_eq!(client.get("compression.type"), None);
    }

    #[test]
    fn sasl_protocol_without_credentials_names_the_key() {
        let source =
            ConfigSource::from_toml_str("[kafka]\nsecurity_protocol = \"sasl_ssl\"\n").unwrap();
        let config: KafkaConfig = source.section("kafka").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.sasl"), "{error}");
    }

    #[test]
    fn empty_brokers_are_refused() {
        let config = KafkaConfig {
            brokers: " , ".to_owned(),
            ..KafkaConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.brokers"), "{error}");
    }
}
