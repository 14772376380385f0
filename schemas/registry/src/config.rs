//! `[registry]` in `ledgerline.toml`.

use std::net::SocketAddr;

use ledgerline_service::ConfigError;
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::compatibility::CompatibilityLevel;

/// `[registry]` in `ledgerline.toml`; every key can be overridden with
/// `LEDGERLINE_REGISTRY__<KEY>`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Address the REST API (and `/health`, `/metrics`) listens on. Port 8081 is the one
    /// Confluent clients assume.
    pub listen: SocketAddr,
    /// The compacted topic holding every schema and config record. Created with one partition
    /// when missing; one partition is what gives all instances the same order of writes.
    pub topic: String,
    /// `leader` takes writes; `replica` serves reads and refuses writes. Exactly one instance per
    /// topic may be the leader (see the crate docs for why).
    pub mode: Mode,
    /// The global compatibility level until someone sets one with `PUT /config`.
    pub default_compatibility: CompatibilityLevel,
    /// HTTP basic auth for every API route (not `/health` and `/metrics`); unset means open.
    pub basic_auth: Option<BasicAuth>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            topic: default_topic(),
            mode: Mode::Leader,
            default_compatibility: CompatibilityLevel::Backward,
            basic_auth: None,
        }
    }
}

/// Loopback only unless the operator opens it up on purpose.
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

/// Confluent's default, so a registry can take over an existing topic.
fn default_topic() -> String {
    "_schemas".to_owned()
}

/// Whether this instance allocates ids and versions.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Takes writes: the single instance that allocates ids and versions.
    Leader,
    /// Read-only: serves what the leader wrote, answers writes with error 50003.
    Replica,
}

/// The same `{ username, password }` table clients use in `[schema_registry]`.
pub use ledgerline_service::schema_registry::BasicAuth;

/// Kafka's own limit on topic name length.
const MAX_TOPIC_LENGTH: usize = 249;

impl RegistryConfig {
    /// Checks what serde cannot: values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let topic_is_legal = !self.topic.is_empty()
            && self.topic.len() <= MAX_TOPIC_LENGTH
            && self.topic != "."
            && self.topic != ".."
            && self
                .topic
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !topic_is_legal {
            return Err(ConfigError::invalid_value(
                "registry.topic",
                format!(
                    "`{}` is not a legal kafka topic name (1 to {MAX_TOPIC_LENGTH} of [a-zA-Z0-9._-])",
                    self.topic
                ),
            ));
        }
        if let Some(auth) = &self.basic_auth {
            if auth.username.is_empty() || auth.username.contains(':') {
                return Err(ConfigError::invalid_value(
                    "registry.basic_auth.username",
                    "must be non-empty and contain no `:`",
                ));
            }
            if auth.password.expose_secret().is_empty() {
                return Err(ConfigError::invalid_value(
                    "registry.basic_auth.password",
                    "must be non-empty",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ledgerline_service::ConfigSource;

    use super::*;

    #[test]
    fn defaults_match_confluent() {
        let config: RegistryConfig = ConfigSource::from_toml_str("")
            .unwrap()
            .section("registry")
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 8081);
        assert_eq!(config.topic, "_schemas");
        assert_eq!(config.mode, Mode::Leader);
        assert_eq!(config.default_compatibility, CompatibilityLevel::Backward);
        assert_eq!(config.basic_auth, None);
    }

    #[test]
    fn every_key_parses() {
        let source = ConfigSource::from_toml_str(
            r#"
            [registry]
            listen = "0.0.0.0:18081"
            topic = "ledgerline._schemas"
            mode = "replica"
            default_compatibility = "full_transitive"
            basic_auth = { username = "sr", password = "hunter2" }
            "#,
        )
        .unwrap();
        let config: RegistryConfig = source.section("registry").unwrap();
        config.validate().unwrap();
        assert_eq!(config.mode, Mode::Replica);
        assert_eq!(
            config.default_compatibility,
            CompatibilityLevel::FullTransitive
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_key_and_bad_values_name_the_key() {
        let source = ConfigSource::from_toml_str("[registry]\ntopik = \"x\"\n").unwrap();
        let error = source
            .section::<RegistryConfig>("registry")
            .unwrap_err()
            .to_string();
        assert!(error.contains("registry.topik"), "{error}");

        let source =
            ConfigSource::from_toml_str("[registry]\ndefault_compatibility = \"SIDEWAYS\"\n")
                .unwrap();
        let error = source
            .section::<RegistryConfig>("registry")
            .unwrap_err()
            .to_string();
        assert!(error.contains("registry.default_compatibility"), "{error}");

        let config = RegistryConfig {
            topic: "bad topic".to_owned(),
            ..RegistryConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("registry.topic"), "{error}");

        let config = RegistryConfig {
            basic_auth: Some(BasicAuth {
                username: "a:b".to_owned(),
                password: "x".into(),
            }),
            ..RegistryConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("registry.basic_auth.username"), "{error}");
    }
}
