//! How clients reach the schema registry: shared by the producer and every consumer, like
//! [`crate::kafka`]. Any Confluent-compatible registry works (Confluent SR, Karapace, or
//! `ledgerline-registry`).

use std::time::Duration;

use ledgerline_schemas::codec::{RegistryAuth, RegistrySettings};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{ConfigError, Result};

/// `[schema_registry]` in `ledgerline.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:8081`. Several, comma separated, are tried in turn.
    pub url: String,
    /// HTTP basic auth, when the registry requires it.
    pub basic_auth: Option<BasicAuth>,
    /// Register the schemas this service writes at start-up (`true`), or only check that they
    /// are already registered (`false`, for registries where schema changes go through review).
    pub auto_register: bool,
    /// Per-request timeout, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_owned(),
            basic_auth: None,
            auto_register: true,
            timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// User name; may not contain `:` (basic auth splits on the first one).
    pub username: String,
    /// A secret type, so `Debug` and log lines show `[REDACTED]`; read it with `expose_secret`.
    pub password: SecretString,
}

// `SecretString` has no `==`, but configs are compared whole (defaults, reloads): the same
// credentials are the same in every part.
impl PartialEq for BasicAuth {
    fn eq(&self, other: &Self) -> bool {
        self.username == other.username
            && self.password.expose_secret() == other.password.expose_secret()
    }
}

impl Eq for BasicAuth {}

/// The codec's view of this section: `EventCodec::new(&config)`.
impl From<&SchemaRegistryConfig> for RegistrySettings {
    fn from(config: &SchemaRegistryConfig) -> Self {
        Self {
            urls: config.urls(),
            basic_auth: config.basic_auth.as_ref().map(|auth| RegistryAuth {
                username: auth.username.clone(),
                password: auth.password.clone(),
            }),
            timeout: Duration::from_millis(config.timeout_ms),
        }
    }
}

impl SchemaRegistryConfig {
    /// The configured base URLs, trimmed, without trailing slashes.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(|url| url.trim().trim_end_matches('/').to_owned())
            .filter(|url| !url.is_empty())
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(ConfigError::invalid_value(
                "schema_registry.url",
                "must name at least one url",
            ));
        }
        if let Some(bad) = urls
            .iter()
            .find(|url| !(url.starts_with("http://") || url.starts_with("https://")))
        {
            return Err(ConfigError::invalid_value(
                "schema_registry.url",
                format!("`{bad}` must start with http:// or https://"),
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid_value(
                "schema_registry.timeout_ms",
                "must be positive",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConfigSource;

    #[test]
    fn urls_are_split_and_checked() {
        let source = ConfigSource::from_toml_str(
            "[schema_registry]\nurl = \"http://a:8081/, https://b:8081\"\nbasic_auth = { username = \"u\", password = \"p\" }\n",
        )
        .unwrap();
        let config: SchemaRegistryConfig = source.section("schema_registry").unwrap();
        config.validate().unwrap();
        assert_eq!(config.urls(), vec!["http://a:8081", "https://b:8081"]);
        assert!(!format!("{config:?}").contains("\"p\""));

        let bad = SchemaRegistryConfig {
            url: "a:8081".to_owned(),
            ..SchemaRegistryConfig::default()
        };
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("schema_registry.url"), "{error}");
    }

    #[test]
    fn codec_settings_carry_urls_auth_and_timeout() {
        let config = SchemaRegistryConfig {
            url: "http://a:8081/,http://b:8081".to_owned(),
            basic_auth: Some(BasicAuth {
                username: "u".to_owned(),
                password: "p".into(),
            }),
            timeout_ms: 1_500,
            ..SchemaRegistryConfig::default()
        };
        let settings = RegistrySettings::from(&config);
        assert_eq!(settings.urls, ["http://a:8081", "http://b:8081"]);
        let auth = settings.basic_auth.unwrap();
        assert_eq!(auth.username, "u");
        assert_eq!(auth.password.expose_secret(), "p");
        assert_eq!(settings.timeout, Duration::from_millis(1_500));
    }
}
