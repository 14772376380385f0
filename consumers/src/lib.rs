//! `ledgerline-consumers` owns the one consumer runtime and the consumers built on it, each in
//! its own folder:
//!
//! - [`runtime`]: the shared consumer (group or broadcast mode, decode, batch, commit, reject,
//!   retry, rebalance hooks, fencing, lag and health, shutdown) and the dead-letter topic;
//! - [`clickhouse`]: what the ClickHouse sinks share: connection settings, error kinds and
//!   versioned migrations;
//! - [`projector`]: the projector into ClickHouse `ledgerline` (events and the latest job
//!   states) and the read library the query API uses;
//! - [`archive`]: the tamper-evident audit archive into ClickHouse `ledgerline_audit` (hash
//!   chain per partition, signed checkpoints) and its verify, proof and export tools.
//! - [`dlq`]: the dead-letter topic's operator tools, `inspect` and `replay` (once per record).
//!
//! The binary `ledgerline-consumer <consumer>` runs one consumer (`projector`, `archive`) or one
//! of the archive's tools. The live fan-out is a consumer of this runtime too; it runs inside
//! the query API (`ledgerline-query-api`'s `stream` module).

pub mod archive;
pub mod clickhouse;
pub mod dlq;
pub mod projector;
pub mod runtime;
