//! Configuration loading: one TOML file (`ledgerline.toml`) shared by every service, plus
//! `LEDGERLINE_<SECTION>__<KEY>` environment overrides (see [`crate::env`]).
//!
//! Each binary reads only the sections it needs with [`ConfigSource::section`]; section types
//! use `#[serde(default, deny_unknown_fields)]`, so a misspelled key is an error that names the
//! key and where it came from (file or variable) rather than a silently ignored setting. The
//! top-level section names are checked against [`KNOWN_SECTIONS`] for the same reason.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;

use crate::env;

/// Every top-level table a `ledgerline.toml` may hold. One file configures the whole platform,
/// so a service must accept (and ignore) the sections of the others, but not unknown ones.
pub const KNOWN_SECTIONS: &[&str] = &[
    "kafka",
    "telemetry",
    "schema_registry",
    "registry",
    "producer",
    "projector",
    "archive",
    "api",
];

/// Default file name, read from the working directory when `LEDGERLINE_CONFIG` is unset.
pub const DEFAULT_CONFIG_FILE: &str = "ledgerline.toml";

/// Why configuration could not be loaded. Every message names the offending key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config file {path} does not exist")]
    MissingFile { path: PathBuf },
    #[error("unknown configuration section `{section}` (known sections: {known})")]
    UnknownSection { section: String, known: String },
    /// A key could not be deserialized; figment's message names the key and its source.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A value parsed but is not acceptable, found by a section's `validate()`.
    #[error("invalid configuration value for `{key}`: {reason}")]
    InvalidValue { key: String, reason: String },
}

impl ConfigError {
    /// Helper for `validate()` implementations.
    pub fn invalid_value(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidValue {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        Self::Invalid(describe_all(error, None))
    }
}

/// Every error figment met (so one run fixes them all), each naming the full key and where the
/// value came from: the file, or the exact environment variable (figment names only the prefix).
fn describe_all(error: figment::Error, section: Option<&str>) -> String {
    let messages: Vec<String> = error
        .into_iter()
        .map(|error| {
            let key: Vec<&str> = section
                .into_iter()
                .chain(error.path.iter().map(String::as_str))
                .collect();
            let origin = match &error.metadata {
                Some(metadata) if metadata.name.contains("environment") => format!(
                    "set by {}{}",
                    env::OVERRIDE_PREFIX,
                    key.join(env::OVERRIDE_SEPARATOR).to_ascii_uppercase()
                ),
                Some(metadata) => match &metadata.source {
                    Some(source) => format!("in {source}"),
                    None => format!("in {}", metadata.name),
                },
                None => "in defaults".to_owned(),
            };
            format!("`{}`: {} ({origin})", key.join("."), error.kind)
        })
        .collect();
    messages.join("; ")
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The merged configuration: file first, environment overrides on top.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    figment: Figment,
}

impl ConfigSource {
    /// Reads the file named by `LEDGERLINE_CONFIG` (which must exist), else `./ledgerline.toml`
    /// when present, then applies `LEDGERLINE_*` overrides from the process environment.
    pub fn from_process_env() -> Result<Self> {
        let explicit = std::env::var_os(env::CONFIG_PATH).map(PathBuf::from);
        Self::load(explicit.as_deref(), true)
    }

    /// Reads `path` (when given, it must exist; when not, `./ledgerline.toml` if present) and,
    /// when `with_env` is set, the process's `LEDGERLINE_*` overrides.
    pub fn load(path: Option<&Path>, with_env: bool) -> Result<Self> {
        let mut figment = Figment::new();
        match path {
            Some(path) if !path.exists() => {
                return Err(ConfigError::MissingFile {
                    path: path.to_owned(),
                })
            }
            Some(path) => figment = figment.merge(Toml::file(path)),
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.exists() {
                    figment = figment.merge(Toml::file(default));
                }
            }
        }
        if with_env {
            figment = figment.merge(overrides());
        }
        Self::from_figment(figment)
    }

    /// Configuration from TOML text and no environment: for tests and embedded use.
    pub fn from_toml_str(toml: &str) -> Result<Self> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Self> {
        let top: figment::value::Dict = figment.extract()?;
        if let Some(section) = top.keys().find(|k| !KNOWN_SECTIONS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownSection {
                section: section.clone(),
                known: KNOWN_SECTIONS.join(", "),
            });
        }
        Ok(Self { figment })
    }

    /// Deserializes `[name]`, or the type's defaults when the section is absent.
    pub fn section<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        debug_assert!(
            KNOWN_SECTIONS.contains(&name),
            "section {name} must be listed"
        );
        if !self.figment.contains(name) {
            return Ok(T::default());
        }
        // `focus` rather than `extract_inner`: figment reverses the key path in the latter's
        // errors, and the message must name the key as the operator wrote it.
        self.figment.focus(name).extract().map_err(|error| {
            ConfigError::Invalid(describe_all(self.locate::<T>(name, error), Some(name)))
        })
    }

    /// Names the key behind an error that names none. A section that flattens shared settings
    /// into itself (every consumer's section) is deserialized by serde from a buffer that has
    /// lost figment's key path, so its errors say only "invalid type" or "unknown field". Each
    /// of the section's values is then tried alone (`#[serde(default)]` fills the rest), down
    /// into nested tables, until one fails by itself: that key, with where its value came from.
    /// This relies on every table of the section being `#[serde(default)]` (all of
    /// Ledgerline's are), so that a value alone is a complete table.
    fn locate<T: DeserializeOwned>(&self, name: &str, error: figment::Error) -> figment::Error {
        if !error.path.is_empty() {
            return error;
        }
        let Ok(section) = self.figment.focus(name).extract::<figment::value::Dict>() else {
            return error;
        };
        match first_failing::<T>(&section, &mut Vec::new()) {
            Some((path, mut found)) => {
                found.metadata = self
                    .figment
                    .find_metadata(&format!("{name}.{}", path.join(".")))
                    .cloned();
                found.path = path;
                found
            }
            None => error,
        }
    }
}

/// The path of the first value of `table` (under `prefix`) that fails to deserialize into `T`
/// when it is the only value set, with its error.
fn first_failing<T: DeserializeOwned>(
    table: &figment::value::Dict,
    prefix: &mut Vec<String>,
) -> Option<(Vec<String>, figment::Error)> {
    for (key, value) in table {
        prefix.push(key.clone());
        let alone = prefix.iter().rev().fold(value.clone(), |inner, key| {
            figment::value::Value::from(figment::value::Dict::from([(key.clone(), inner)]))
        });
        let failed = Figment::from(figment::providers::Serialized::defaults(alone))
            .extract::<T>()
            .err();
        if let Some(error) = failed {
            // A table whose own key is fine but one of whose values is not: go down.
            if let figment::value::Value::Dict(_, inner) = value {
                if let Some(found) = first_failing::<T>(inner, prefix) {
                    return Some(found);
                }
            }
            let path = prefix.clone();
            return Some((path, error));
        }
        prefix.pop();
    }
    None
}

/// `LEDGERLINE_<SECTION>__<KEY>` from the process environment, minus the variables that are
/// not configuration (see [`env::NOT_OVERRIDES`]). Errors name the variable, e.g.
/// `for key "default.kafka.brokerz" in LEDGERLINE_KAFKA__BROKERZ environment variable`.
fn overrides() -> Env {
    Env::prefixed(env::OVERRIDE_PREFIX)
        .filter(|key| {
            !env::NOT_OVERRIDES.iter().any(|name| {
                name.strip_prefix(env::OVERRIDE_PREFIX)
                    .is_some_and(|stripped| key == stripped)
            })
        })
        .split(env::OVERRIDE_SEPARATOR)
}

#[cfg(test)]
// figment's Jail closure signature fixes the (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::kafka::KafkaConfig;
    use crate::telemetry::{LogFormat, TelemetryConfig};

    #[test]
    fn missing_sections_take_defaults() {
        let source = ConfigSource::from_toml_str("").unwrap();
        let kafka: KafkaConfig = source.section("kafka").unwrap();
        assert_eq!(kafka, KafkaConfig::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_source() {
        let source = ConfigSource::from_toml_str("[kafka]\nbrokerz = \"x:1\"\n").unwrap();
        let error = source
            .section::<KafkaConfig>("kafka")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`kafka.brokerz`"), "{error}");
    }

    #[test]
    fn unknown_section_is_refused() {
        let error = ConfigSource::from_toml_str("[kafak]\nbrokers = \"x:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`kafak`"), "{error}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let source = ConfigSource::from_toml_str("[telemetry]\nlog_format = \"xml\"\n").unwrap();
        let error = source
            .section::<TelemetryConfig>("telemetry")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`telemetry.log_format`"), "{error}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let error = ConfigSource::load(Some(Path::new("/nonexistent/ledgerline.toml")), false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("/nonexistent/ledgerline.toml"), "{error}");
    }

    // figment's Jail serialises tests that touch the process environment and restores it after.
    #[test]
    fn environment_overrides_win_over_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "[kafka]\nbrokers = \"file:9092\"\n[telemetry]\nlog_format = \"pretty\"\n",
            )?;
            jail.set_env("LEDGERLINE_CONFIG", "custom.toml");
            jail.set_env("LEDGERLINE_KAFKA__BROKERS", "env:9092");
            jail.set_env("LEDGERLINE_TELEMETRY__LOG_FORMAT", "json");
            // Script-only variables share the prefix but are not configuration.
            jail.set_env("LEDGERLINE_CACHE_DIR", "/tmp/cache");
            let source = ConfigSource::from_process_env().map_err(|e| e.to_string())?;
            let kafka: KafkaConfig = source.section("kafka").map_err(|e| e.to_string())?;
            let telemetry: TelemetryConfig =
                source.section("telemetry").map_err(|e| e.to_string())?;
            assert_eq!(kafka.brokers, "env:9092");
            assert_eq!(telemetry.log_format, LogFormat::Json);
            Ok(())
        });
    }

    #[test]
    fn misspelled_override_names_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LEDGERLINE_KAFKA__BROKERZ", "env:9092");
            let source = ConfigSource::from_process_env().map_err(|e| e.to_string())?;
            let error = source
                .section::<KafkaConfig>("kafka")
                .unwrap_err()
                .to_string();
            assert!(error.contains("LEDGERLINE_KAFKA__BROKERZ"), "{error}");
            Ok(())
        });
    }
}
