//! What the ClickHouse sinks share (the projector now, the audit archive next): where a sink
//! writes ([`ClickHouseConfig`], its own user and database), how a failed call is classified
//! ([`FailureKind`]), and versioned migrations that each sink supplies ([`migrate`]).
//!
//! Inserts are `RowBinary` over HTTP through the `clickhouse` crate, with row validation off
//! (see [`ClickHouseConfig::client`]). The SQL runs on Debian's ClickHouse 18.16 (the tests)
//! and on current ClickHouse (production), so it avoids `Map`, `DateTime64`, `TTL` and skip
//! indexes.

pub mod config;
pub mod error;
pub mod health;
pub mod insert;
pub mod migrate;

pub use config::{ClickHouseCompression, ClickHouseConfig};
pub use error::{failure_kind, ClickHouseError, FailureKind, Result};
pub use health::sink_health;
pub use insert::insert_rows;
pub use migrate::{
    check_layouts, migrate, migrate_on, on_cluster, validate_identifier, Layout, Migration,
    OnCluster,
};
