//! `ledgerline-schemas` owns the event model every other crate agrees on:
//!
//! - [`topics`]: the categories, their Kafka topics (`ledgerline.<category>`) and registry
//!   subjects (`<topic>-value`, TopicNameStrategy);
//! - [`event`]: the Rust event types, mirrors of the Avro schemas, and their validation rules;
//! - [`avro`]: the versioned `.avsc` files in `schemas/avro/`, compiled in;
//! - [`json`]: the one JSON shape of an event, for the query API and the live stream;
//! - [`samples`]: fully populated example events for tests and demos;
//! - [`symbols`]: the text of the model's enums (`INFO`, `RUNNING`), declared once per enum;
//! - [`codec`]: Confluent wire-format encode and decode through `schema_registry_converter`.

pub mod avro;
pub mod codec;
pub mod event;
pub mod json;
pub mod samples;
pub mod symbols;
pub mod topics;

pub use codec::{CodecError, EventCodec, OfflineDecoder, RegistrySettings};
pub use event::Event;
pub use topics::Category;
