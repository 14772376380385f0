//! Compatibility levels and the check behind them, with Confluent's meaning:
//!
//! | level | the new schema must… |
//! | --- | --- |
//! | `BACKWARD` | read data written with the latest version (consumers upgrade first) |
//! | `FORWARD` | be readable by the latest version (producers upgrade first) |
//! | `FULL` | both |
//! | `*_TRANSITIVE` | the same, against every live version rather than the latest |
//! | `NONE` | nothing |
//!
//! "Read" is Avro schema resolution, decided by apache-avro's
//! [`SchemaCompatibility::can_read`]. Where that answers `Partial` (the reader lacks some enum
//! symbols or union branches the writer can produce), Java Avro, and so Confluent, answers
//! incompatible, because some records would fail to decode; so does this module.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use ledgerline_service::errors::error_chain;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum CompatibilityLevel {
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
    None,
}

impl CompatibilityLevel {
    pub const ALL: [Self; 7] = [
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
        Self::None,
    ];

    /// The spelling Confluent's API and records use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
            Self::None => "NONE",
        }
    }

    /// Whether the check runs against every live version rather than only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn checks_backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn checks_forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<CompatibilityLevel> for &'static str {
    fn from(level: CompatibilityLevel) -> Self {
        level.as_str()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid compatibility level `{0}` (expected one of BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE)")]
pub struct InvalidLevel(pub String);

/// Case-insensitive, so `full` in a TOML file and `FULL` on the wire both work.
impl FromStr for CompatibilityLevel {
    type Err = InvalidLevel;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| InvalidLevel(text.to_owned()))
    }
}

impl TryFrom<String> for CompatibilityLevel {
    type Error = InvalidLevel;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

/// Checks `candidate` against each of `existing` (version number, schema) under `level` and
/// returns one message per failed direction and version; empty means compatible. Choosing which
/// versions to pass (latest or all) is the caller's job, because it differs between registering
/// and the `/compatibility` endpoint.
pub fn incompatibilities(
    level: CompatibilityLevel,
    candidate: &Schema,
    existing: &[(u32, &Schema)],
) -> Vec<String> {
    let mut messages = Vec::new();
    for &(version, schema) in existing {
        if level.checks_backward() {
            if let Err(reason) = can_read(schema, candidate) {
                messages.push(format!(
                    "the new schema cannot read data written with version {version} ({level}): {reason}"
                ));
            }
        }
        if level.checks_forward() {
            if let Err(reason) = can_read(candidate, schema) {
                messages.push(format!(
                    "version {version} cannot read data written with the new schema ({level}): {reason}"
                ));
            }
        }
    }
    messages
}

/// Whether every record written with `writer` decodes with `reader`.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "only some values can be read: the reader lacks enum symbols or union branches the writer can produce"
                .to_owned(),
        ),
        // apache-avro nests the real reason (`FieldTypeMismatch` wraps the field's own
        // mismatch) as a `source`, which `Display` leaves out.
        Err(error) => Err(error_chain(&error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"Event","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    fn v1() -> Schema {
        record(r#"{"name":"id","type":"string"}"#)
    }

    fn with_defaulted_field() -> Schema {
        record(r#"{"name":"id","type":"string"},{"name":"n","type":"int","default":0}"#)
    }

    fn with_required_field() -> Schema {
        record(r#"{"name":"id","type":"string"},{"name":"n","type":"int"}"#)
    }

    fn check(level: CompatibilityLevel, candidate: &Schema, existing: &Schema) -> Vec<String> {
        incompatibilities(level, candidate, &[(1, existing)])
    }

    #[test]
    fn levels_round_trip_through_their_confluent_spelling() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(level.as_str().parse::<CompatibilityLevel>(), Ok(level));
            let json = serde_json::to_string(&level).unwrap();
            assert_eq!(json, format!("\"{}\"", level.as_str()));
            assert_eq!(
                serde_json::from_str::<CompatibilityLevel>(&json).unwrap(),
                level
            );
        }
        assert_eq!("full".parse(), Ok(CompatibilityLevel::Full));
        assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
        assert!(serde_json::from_str::<CompatibilityLevel>("\"\"").is_err());
    }

    #[test]
    fn backward_allows_a_new_field_only_with_a_default() {
        use CompatibilityLevel::Backward;
        assert!(check(Backward, &with_defaulted_field(), &v1()).is_empty());
        let messages = check(Backward, &with_required_field(), &v1());
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("version 1"), "{messages:?}");
        assert!(messages[0].contains("'n'"), "{messages:?}");
        // Removing a field is backward compatible: the new reader ignores it.
        assert!(check(Backward, &v1(), &with_required_field()).is_empty());
    }

    #[test]
    fn forward_is_the_mirror_of_backward() {
        use CompatibilityLevel::Forward;
        // Old readers ignore a new field, default or not.
        assert!(check(Forward, &with_required_field(), &v1()).is_empty());
        // Removing a field old readers need (no default there) breaks them.
        assert!(!check(Forward, &v1(), &with_required_field()).is_empty());
        assert!(check(Forward, &v1(), &with_defaulted_field()).is_empty());
    }

    #[test]
    fn full_needs_both_directions_and_none_needs_nothing() {
        use CompatibilityLevel::{Full, None};
        assert!(check(Full, &with_defaulted_field(), &v1()).is_empty());
        assert_eq!(check(Full, &with_required_field(), &v1()).len(), 1);
        assert_eq!(check(Full, &v1(), &with_required_field()).len(), 1);
        let string = Schema::parse_str(r#""string""#).unwrap();
        assert!(check(None, &string, &v1()).is_empty());
        assert_eq!(check(Full, &string, &v1()).len(), 2);
    }

    #[test]
    fn partial_enum_compatibility_counts_as_incompatible() {
        let abc =
            Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#).unwrap();
        let ab = Schema::parse_str(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#).unwrap();
        // A reader without C cannot decode a C.
        let messages = check(CompatibilityLevel::Backward, &ab, &abc);
        assert_eq!(messages.len(), 1);
        assert!(messages[0].contains("only some values"), "{messages:?}");
        assert!(check(CompatibilityLevel::Backward, &abc, &ab).is_empty());
    }

    #[test]
    fn nested_reasons_are_reported() {
        let long = record(r#"{"name":"id","type":"long"}"#);
        let int = record(r#"{"name":"id","type":"int"}"#);
        let messages = check(CompatibilityLevel::Backward, &int, &long);
        assert_eq!(messages.len(), 1);
        // The field name from the outer error, the type clash from the inner one.
        assert!(messages[0].contains("'id'"), "{messages:?}");
        assert!(messages[0].contains("Long"), "{messages:?}");
    }
}
