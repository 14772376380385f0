//! `ledgerline-consumers` owns the one consumer runtime (subscribe, decode, batch, commit,
//! dead-letter, retry, shutdown) and its sinks, each in its own folder: `clickhouse` (the
//! projector), `archive` (the tamper-evident audit archive) and `fanout` (the live-stream hub
//! the query API embeds).
//!
//! - [`runtime`]: the shared consumer loop and its delivery semantics, and the dead-letter
//!   topic;
//! - [`clickhouse`]: the projector sink, its schema migrations, rows and the read queries the
//!   query API reuses.
//!
//! The binary `ledgerline-consumer <sink>` runs one sink (`clickhouse` so far). The archive
//! and fan-out sinks arrive with their issues.

pub mod clickhouse;
pub mod runtime;
