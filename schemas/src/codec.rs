//! Confluent wire format through `schema_registry_converter`: magic byte 0, the 4-byte
//! big-endian schema id, then the Avro datum.
//!
//! - Encoding writes this build's schema for the category (subject `<topic>-value`,
//!   TopicNameStrategy). The converter registers or looks it up once and caches the id.
//! - Decoding accepts any schema id the registry knows for the subject: the datum is read with
//!   its writer schema, then resolved to this build's reader schema under Avro resolution rules
//!   (fields added with defaults are filled, removed ones dropped). Schemas are cached per id.
//! - Errors say which of the dead-letter reasons applies ([`CodecError::dead_letter_reason`]) and
//!   whether retrying can help ([`CodecError::is_retriable`]): an unreachable registry is
//!   retried, a corrupt record is not.

use std::time::Duration;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SrCall, SubjectNameStrategy, SuppliedSchema,
};
use serde::de::DeserializeOwned;

use ledgerline_service::schema_registry::SchemaRegistryConfig;

use crate::avro::{self, SchemaFile};
use crate::event::Event;
use crate::Category;

/// Confluent's magic byte, first on the wire.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("record is too short for the wire format ({len} bytes)")]
    TooShort { len: usize },
    #[error("bad magic byte {found} (expected 0)")]
    BadMagicByte { found: u8 },
    #[error("unknown schema id {id}: {detail}")]
    UnknownSchemaId { id: u32, detail: String },
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("schema registry refused {subject}: {detail}")]
    Registration { subject: String, detail: String },
    #[error("corrupt avro for schema id {id}: {detail}")]
    CorruptAvro { id: u32, detail: String },
    #[error("schema id {id} is not readable as the {category} schema: {detail}")]
    Incompatible {
        id: u32,
        category: Category,
        detail: String,
    },
    #[error("cannot encode {category} event: {detail}")]
    Encode { category: Category, detail: String },
    #[error("invalid schema registry settings: {0}")]
    Settings(String),
    #[error("{0}")]
    Schema(String),
}

impl CodecError {
    /// Transient: the same bytes may decode once the registry answers again.
    pub fn is_retriable(&self) -> bool {
        matches!(self, CodecError::RegistryUnavailable(_))
    }

    /// The dead-letter `reason` for a record that failed to decode, or `None` when the failure
    /// is transient and the record must not be dead-lettered.
    pub fn dead_letter_reason(&self) -> Option<&'static str> {
        match self {
            CodecError::TooShort { .. } | CodecError::BadMagicByte { .. } => Some("bad_magic_byte"),
            CodecError::UnknownSchemaId { .. } => Some("unknown_schema_id"),
            CodecError::CorruptAvro { .. } => Some("corrupt_avro"),
            // Valid Avro, but of a schema this topic's type cannot be read from.
            CodecError::Incompatible { .. } => Some("schema_mismatch"),
            _ => None,
        }
    }
}

fn registry_error(error: &SRCError) -> String {
    match &error.cause {
        Some(cause) => format!("{}: {cause}", error.error),
        None => error.error.clone(),
    }
}

/// Encodes and decodes [`Event`]s through a Confluent-compatible schema registry.
pub struct EventCodec {
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
}

impl std::fmt::Debug for EventCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCodec").finish_non_exhaustive()
    }
}

impl EventCodec {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, CodecError> {
        let urls = config.urls();
        let Some((first, rest)) = urls.split_first() else {
            return Err(CodecError::Settings(
                "schema_registry.url names no url".to_owned(),
            ));
        };
        let mut builder = SrSettings::new_builder(first.clone());
        for url in rest {
            builder.add_url(url.clone());
        }
        if let Some(auth) = &config.basic_auth {
            builder.set_basic_authorization(&auth.username, Some(&auth.password));
        }
        builder.set_timeout(Duration::from_millis(config.timeout_ms));
        builder.no_proxy();
        let settings = builder
            .build()
            .map_err(|error| CodecError::Settings(registry_error(&error)))?;
        Ok(Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
        })
    }

    fn strategy(file: SchemaFile) -> SubjectNameStrategy {
        SubjectNameStrategy::TopicNameStrategyWithSchema(
            file.category.topic(),
            false,
            SuppliedSchema::new(None, SchemaType::Avro, file.text.to_owned()),
        )
    }

    /// Makes sure the registry has this build's schema for `category` and returns its id.
    ///
    /// With `auto_register` the schema is registered (a no-op when it already is); without,
    /// it is only looked up, and a missing schema is an error naming the subject. Either way an
    /// incompatible schema is refused by the registry with a message naming the subject and the
    /// incompatibility, which start-up reports as is.
    pub async fn prepare(
        &self,
        category: Category,
        auto_register: bool,
    ) -> Result<u32, CodecError> {
        let file = avro::current(category);
        let subject = category.subject();
        let map = |error: SRCError| {
            if error.retriable {
                CodecError::RegistryUnavailable(registry_error(&error))
            } else {
                CodecError::Registration {
                    subject: subject.clone(),
                    detail: registry_error(&error),
                }
            }
        };
        if auto_register {
            let supplied = SuppliedSchema::new(None, SchemaType::Avro, file.text.to_owned());
            let registered = post_schema(&self.settings, subject.clone(), supplied)
                .await
                .map_err(map)?;
            return Ok(registered.id);
        }
        let body = serde_json::json!({ "schema": file.text, "schemaType": "AVRO" }).to_string();
        let found = perform_sr_call(&self.settings, SrCall::PostForVersion(&subject, &body))
            .await
            .map_err(|error| {
                let mut mapped = map(error);
                if let CodecError::Registration { detail, .. } = &mut mapped {
                    detail.push_str(&format!(
                        " (auto_register is off: register {} v{} for this subject first)",
                        category, file.version
                    ));
                }
                mapped
            })?;
        found.id.ok_or_else(|| CodecError::Registration {
            subject: subject.clone(),
            detail: "lookup answered without an id".to_owned(),
        })
    }

    /// Encodes `event` with this build's schema for its category.
    pub async fn encode(&self, event: &Event) -> Result<Vec<u8>, CodecError> {
        let category = event.category();
        let strategy = Self::strategy(avro::current(category));
        let result = match event {
            Event::Audit(inner) => self.encoder.encode_struct(inner, &strategy).await,
            Event::Job(inner) => self.encoder.encode_struct(inner, &strategy).await,
            Event::Connection(inner) => self.encoder.encode_struct(inner, &strategy).await,
            Event::System(inner) => self.encoder.encode_struct(inner, &strategy).await,
            Event::Session(inner) => self.encoder.encode_struct(inner, &strategy).await,
        };
        result.map_err(|error| {
            if error.retriable {
                CodecError::RegistryUnavailable(registry_error(&error))
            } else {
                CodecError::Encode {
                    category,
                    detail: registry_error(&error),
                }
            }
        })
    }

    /// Decodes a record from `category`'s topic into this build's event type.
    pub async fn decode(&self, category: Category, payload: &[u8]) -> Result<Event, CodecError> {
        let id = schema_id(payload)?;
        // Fetch the writer schema first, so an unknown id and corrupt bytes are told apart.
        self.decoder.get_schema(id).await.map_err(|error| {
            if error.retriable {
                CodecError::RegistryUnavailable(registry_error(&error))
            } else {
                CodecError::UnknownSchemaId {
                    id,
                    detail: registry_error(&error),
                }
            }
        })?;
        let written =
            self.decoder
                .decode(Some(payload))
                .await
                .map_err(|error| CodecError::CorruptAvro {
                    id,
                    detail: registry_error(&error),
                })?;
        from_writer_value(category, id, written.value)
    }
}

/// The schema id of a wire-format record, after checking the magic byte.
pub fn schema_id(payload: &[u8]) -> Result<u32, CodecError> {
    match payload {
        [MAGIC_BYTE, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [found, _, _, _, _, ..] => Err(CodecError::BadMagicByte { found: *found }),
        _ => Err(CodecError::TooShort { len: payload.len() }),
    }
}

/// Resolves a value read with its writer schema to `category`'s reader schema, then into the
/// Rust type.
pub fn from_writer_value(category: Category, id: u32, value: Value) -> Result<Event, CodecError> {
    let reader = avro::reader_schema(category).map_err(CodecError::Schema)?;
    let incompatible = |detail: String| CodecError::Incompatible {
        id,
        category,
        detail,
    };
    let resolved = value
        .resolve(reader)
        .map_err(|error| incompatible(error.to_string()))?;
    fn into<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
        apache_avro::from_value(value).map_err(|error| error.to_string())
    }
    Ok(match category {
        Category::Audit => Event::Audit(into(&resolved).map_err(incompatible)?),
        Category::Job => Event::Job(into(&resolved).map_err(incompatible)?),
        Category::Connection => Event::Connection(into(&resolved).map_err(incompatible)?),
        Category::System => Event::System(into(&resolved).map_err(incompatible)?),
        Category::Session => Event::Session(into(&resolved).map_err(incompatible)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_header_is_checked_before_anything_else() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9, 9]).unwrap(), 258);
        let bad = schema_id(&[1, 0, 0, 0, 1, 9]).unwrap_err();
        assert_eq!(bad.dead_letter_reason(), Some("bad_magic_byte"));
        let short = schema_id(&[0, 0, 1]).unwrap_err();
        assert!(matches!(short, CodecError::TooShort { len: 3 }));
        assert_eq!(short.dead_letter_reason(), Some("bad_magic_byte"));
    }

    #[test]
    fn only_transient_errors_are_retried_and_never_dead_lettered() {
        let transient = CodecError::RegistryUnavailable("connection refused".to_owned());
        assert!(transient.is_retriable());
        assert_eq!(transient.dead_letter_reason(), None);
        let unknown = CodecError::UnknownSchemaId {
            id: 9,
            detail: "40403".to_owned(),
        };
        assert!(!unknown.is_retriable());
        assert_eq!(unknown.dead_letter_reason(), Some("unknown_schema_id"));
    }
}
