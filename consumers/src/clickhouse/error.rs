//! What the projector's ClickHouse layer reports to its callers.

/// Why a ClickHouse operation of the projector failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClickHouseError {
    /// The server or the connection refused a statement. `context` names the statement and the
    /// table so the log line says what was being done.
    #[error("clickhouse {context} failed")]
    Query {
        context: String,
        #[source]
        source: clickhouse::error::Error,
    },
    /// A database or table name that is not a plain identifier. Identifiers cannot be bound as
    /// parameters, so they are checked before they are written into SQL.
    #[error("invalid clickhouse identifier `{0}`: must match ^[A-Za-z_][A-Za-z0-9_]*$")]
    InvalidIdentifier(String),
    /// One insert must hold rows of a single category and a single `ingested_at`, so that it
    /// lands in exactly one partition and is atomic (see the module documentation).
    #[error("one insert into `events` must hold a single category and ingested_at: {reason}")]
    MixedInsert { reason: String },
    /// A stored row that does not map back to an event: a column holds a value the event model
    /// does not know, or a column the category requires is empty.
    #[error("row of event {event_id} cannot be read back: column `{column}` {reason}")]
    InvalidRow {
        event_id: String,
        column: &'static str,
        reason: String,
    },
}

pub type Result<T, E = ClickHouseError> = std::result::Result<T, E>;

/// `map_err` helper: wraps a client error with what was being done.
pub(crate) fn query_failed(
    context: impl Into<String>,
) -> impl FnOnce(clickhouse::error::Error) -> ClickHouseError {
    move |source| ClickHouseError::Query {
        context: context.into(),
        source,
    }
}
