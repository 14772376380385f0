//! The records of the schemas topic, in Confluent Schema Registry's layout, so either registry
//! can read a topic the other wrote:
//!
//! | what | key | value |
//! | --- | --- | --- |
//! | a subject version | `{"keytype":"SCHEMA","subject":s,"version":v,"magic":1}` | `{"subject","version","id","schema","deleted"}` (`schemaType` only when not AVRO) |
//! | a hard-deleted version | the same key | null (a tombstone, so compaction removes it) |
//! | a compatibility level | `{"keytype":"CONFIG","subject":s,"magic":0}`, `subject` null for the global one | `{"compatibilityLevel":"FULL"}` |
//! | a deleted level | the same key | null |
//!
//! Compaction keeps the last record per key *bytes*, so a key must serialize to exactly the same
//! bytes every time it is written: the key structs fix the field order to Confluent's.
//! Confluent's other key types (`NOOP`, `MODE`, `DELETE_SUBJECT`, `CLEAR_SUBJECT`, `CONTEXT`)
//! carry nothing this registry uses and are skipped.

use serde::{Deserialize, Serialize};

use crate::compatibility::CompatibilityLevel;

/// One record of the schemas topic, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    /// A subject version; `value: None` is its hard delete.
    Schema {
        subject: String,
        version: u32,
        value: Option<SchemaValue>,
    },
    /// A compatibility level; `subject: None` is the global one, `level: None` deletes it.
    Config {
        subject: Option<String>,
        level: Option<CompatibilityLevel>,
    },
}

/// The value of a `SCHEMA` record. Unknown fields (Confluent's `references`, `metadata`,
/// `ruleSet`) are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    /// Absent for AVRO, as Confluent writes it.
    #[serde(
        rename = "schemaType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub schema_type: Option<String>,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Serialize)]
struct SchemaKey<'a> {
    keytype: &'static str,
    subject: &'a str,
    version: u32,
    magic: u8,
}

#[derive(Serialize)]
struct ConfigKey<'a> {
    keytype: &'static str,
    subject: Option<&'a str>,
    magic: u8,
}

#[derive(Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel", default)]
    compatibility_level: Option<String>,
}

/// Any key, for reading: which fields matter depends on `keytype`.
#[derive(Deserialize)]
struct AnyKey {
    keytype: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

/// Why a record of the topic could not be used. The tailer logs and skips such records: one bad
/// record (written by hand, or by a newer registry) must not stop every instance.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record has no key")]
    MissingKey,
    #[error("key is not a registry key: {0}")]
    Key(serde_json::Error),
    #[error("{keytype} key lacks `{field}`")]
    KeyField {
        keytype: &'static str,
        field: &'static str,
    },
    #[error("value is not a registry value: {0}")]
    Value(serde_json::Error),
    #[error(transparent)]
    Level(#[from] crate::compatibility::InvalidLevel),
}

impl LogRecord {
    /// Decodes one record; `Ok(None)` for key types this registry does not use.
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<Self>, DecodeError> {
        let key: AnyKey = serde_json::from_slice(key.ok_or(DecodeError::MissingKey)?)
            .map_err(DecodeError::Key)?;
        match key.keytype.as_str() {
            "SCHEMA" => {
                let subject = key.subject.ok_or(DecodeError::KeyField {
                    keytype: "SCHEMA",
                    field: "subject",
                })?;
                let version = key.version.ok_or(DecodeError::KeyField {
                    keytype: "SCHEMA",
                    field: "version",
                })?;
                let value = value
                    .map(serde_json::from_slice::<SchemaValue>)
                    .transpose()
                    .map_err(DecodeError::Value)?;
                Ok(Some(Self::Schema {
                    subject,
                    version,
                    value,
                }))
            }
            "CONFIG" => {
                let level = match value {
                    None => None,
                    Some(bytes) => {
                        let value: ConfigValue =
                            serde_json::from_slice(bytes).map_err(DecodeError::Value)?;
                        value
                            .compatibility_level
                            .map(|level| level.parse())
                            .transpose()?
                    }
                };
                Ok(Some(Self::Config {
                    subject: key.subject,
                    level,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The key bytes; identical for every write of the same subject version or config.
    pub fn key(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Self::Schema {
                subject, version, ..
            } => serde_json::to_vec(&SchemaKey {
                keytype: "SCHEMA",
                subject,
                version: *version,
                magic: 1,
            }),
            Self::Config { subject, .. } => serde_json::to_vec(&ConfigKey {
                keytype: "CONFIG",
                subject: subject.as_deref(),
                magic: 0,
            }),
        }
    }

    /// The value bytes; `None` is a tombstone.
    pub fn value(&self) -> Result<Option<Vec<u8>>, serde_json::Error> {
        match self {
            Self::Schema { value, .. } => value.as_ref().map(serde_json::to_vec).transpose(),
            Self::Config { level, .. } => level
                .map(|level| {
                    serde_json::to_vec(&ConfigValue {
                        compatibility_level: Some(level.as_str().to_owned()),
                    })
                })
                .transpose(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(record: &LogRecord) -> LogRecord {
        let key = record.key().unwrap();
        let value = record.value().unwrap();
        LogRecord::decode(Some(&key), value.as_deref())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn keys_are_byte_for_byte_confluents() {
        let schema = LogRecord::Schema {
            subject: "orders-value".to_owned(),
            version: 3,
            value: None,
        };
        assert_eq!(
            String::from_utf8(schema.key().unwrap()).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"orders-value","version":3,"magic":1}"#
        );
        let global = LogRecord::Config {
            subject: None,
            level: None,
        };
        assert_eq!(
            String::from_utf8(global.key().unwrap()).unwrap(),
            r#"{"keytype":"CONFIG","subject":null,"magic":0}"#
        );
        let subject = LogRecord::Config {
            subject: Some("s".to_owned()),
            level: Some(CompatibilityLevel::Full),
        };
        assert_eq!(
            String::from_utf8(subject.value().unwrap().unwrap()).unwrap(),
            r#"{"compatibilityLevel":"FULL"}"#
        );
    }

    #[test]
    fn records_round_trip_including_tombstones() {
        let records = [
            LogRecord::Schema {
                subject: "s".to_owned(),
                version: 1,
                value: Some(SchemaValue {
                    subject: "s".to_owned(),
                    version: 1,
                    id: 7,
                    schema_type: None,
                    schema: r#""string""#.to_owned(),
                    deleted: true,
                }),
            },
            LogRecord::Schema {
                subject: "s".to_owned(),
                version: 1,
                value: None,
            },
            LogRecord::Config {
                subject: Some("s".to_owned()),
                level: Some(CompatibilityLevel::ForwardTransitive),
            },
            LogRecord::Config {
                subject: None,
                level: None,
            },
        ];
        for record in &records {
            assert_eq!(&round_trip(record), record);
        }
        let avro = records[0].value().unwrap().unwrap();
        assert!(!String::from_utf8(avro).unwrap().contains("schemaType"));
    }

    #[test]
    fn confluent_written_records_decode() {
        let key = br#"{"keytype":"SCHEMA","subject":"t-value","version":2,"magic":1}"#;
        let value = br#"{"subject":"t-value","version":2,"id":21,"schemaType":"AVRO","references":[],"schema":"\"int\"","deleted":false,"metadata":null}"#;
        let record = LogRecord::decode(Some(key), Some(value)).unwrap().unwrap();
        let LogRecord::Schema {
            value: Some(value), ..
        } = record
        else {
            panic!("not a schema record: {record:?}");
        };
        assert_eq!(value.id, 21);
        assert_eq!(value.schema_type.as_deref(), Some("AVRO"));

        let noop = LogRecord::decode(Some(br#"{"keytype":"NOOP","magic":0}"#), None).unwrap();
        assert_eq!(noop, None);
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(LogRecord::decode(None, None).is_err());
        assert!(LogRecord::decode(Some(b"not json"), None).is_err());
        assert!(LogRecord::decode(Some(br#"{"keytype":"SCHEMA","magic":1}"#), None).is_err());
        let key = br#"{"keytype":"CONFIG","subject":null,"magic":0}"#;
        assert!(
            LogRecord::decode(Some(key), Some(br#"{"compatibilityLevel":"SIDEWAYS"}"#)).is_err()
        );
        let schema_key = br#"{"keytype":"SCHEMA","subject":"s","version":1,"magic":1}"#;
        assert!(LogRecord::decode(Some(schema_key), Some(br#"{"id":-1}"#)).is_err());
    }
}
