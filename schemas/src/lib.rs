//! `ledgerline-schemas` owns the event model every other crate agrees on: the categories, the
//! Kafka topic and schema-registry subject names, and (with the schemas issue) the Rust event
//! types, the versioned Avro schemas in `schemas/avro/` and Confluent wire-format encoding.

pub mod topics;

pub use topics::Category;
