//! `ledgerline-consumers` owns the one consumer runtime (subscribe, decode, batch, commit,
//! dead-letter, retry, shutdown) and its sinks, each in its own folder: `clickhouse` (the
//! projector), `archive` (the tamper-evident audit archive) and `fanout` (the live-stream hub
//! the query API embeds).
//!
//! So far only the storage side of the projector exists: [`clickhouse`] holds its
//! configuration, the versioned schema migrations, the mapping from events to rows, and the
//! read queries the query API reuses. The Kafka runtime that feeds it arrives next.

pub mod clickhouse;
