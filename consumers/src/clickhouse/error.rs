//! What the ClickHouse sinks report to their callers, and how each server error is treated.

/// Why a ClickHouse operation of a sink failed. `MixedInsert` and `InvalidRow` are the
/// projector's.
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
    /// lands in exactly one partition, as one part (see the module documentation).
    #[error("one insert into `events` must hold a single category and ingested_at: {reason}")]
    MixedInsert { reason: String },
    /// The task writing one partition's insert panicked or was cancelled.
    #[error("clickhouse insert task failed: {0}")]
    InsertTask(String),
    /// A stored row that does not map back to an event: a column holds a value the event model
    /// does not know, or a column the category requires is empty.
    #[error("row of event {event_id} cannot be read back: column `{column}` {reason}")]
    InvalidRow {
        event_id: String,
        column: &'static str,
        reason: String,
    },
    /// Something this build cannot do in the configured layout (a migration statement that
    /// has no cluster form).
    #[error("{what}")]
    Unsupported { what: String },
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

/// How a failed ClickHouse call is treated. Every kind is retried with backoff by the runtime,
/// since skipping a batch would lose it; the kind decides how loudly the failure is reported
/// (`ledgerline_consumer_sink_errors_total{kind}`, and the log level).
///
/// No kind means "these rows are bad": the projector sends typed `RowBinary` rows built from
/// validated events, and nothing in the `events` or `job_status` columns (String, Int, Nullable,
/// Array, Date, DateTime) can refuse a value of the right type, so a refusal is about the
/// server or the deployment, never about one record. Records that are bad never get this far:
/// the runtime dead-letters them before the sink sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Passes by itself: the network, a timeout, or a server that is restarting, overloaded or
    /// catching up on merges. Logged as a warning.
    Transient,
    /// Needs an operator: credentials, grants, or a database, table or column that is missing
    /// or has another type. Retrying cannot succeed until someone acts, and no other batch
    /// could either, so the batch waits (nothing is skipped). Logged as an error.
    Configuration,
    /// Anything else. Retried as well, and logged as an error so it gets looked at.
    Unexpected,
}

impl FailureKind {
    /// Every kind's label, for [`crate::runtime::Sink::ERROR_KINDS`].
    pub const LABELS: &'static [&'static str] = &["transient", "configuration", "unexpected"];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Configuration => "configuration",
            Self::Unexpected => "unexpected",
        }
    }
}

/// ClickHouse exception codes that pass by themselves.
const TRANSIENT_CODES: &[(u32, &str)] = &[
    (
        3,
        "UNEXPECTED_END_OF_FILE: the connection was cut mid-request",
    ),
    (159, "TIMEOUT_EXCEEDED"),
    (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
    (203, "NO_FREE_CONNECTION"),
    (209, "SOCKET_TIMEOUT"),
    (210, "NETWORK_ERROR"),
    (241, "MEMORY_LIMIT_EXCEEDED: other queries hold the memory"),
    (
        242,
        "TABLE_IS_READ_ONLY: a replica lost its coordination session",
    ),
    (
        252,
        "TOO_MANY_PARTS: merges are behind; inserts are throttled until they catch up",
    ),
    (285, "TOO_FEW_LIVE_REPLICAS"),
    (319, "UNKNOWN_STATUS_OF_INSERT"),
    (394, "QUERY_WAS_CANCELLED: the server is shutting down"),
    (425, "SYSTEM_ERROR"),
    (999, "KEEPER_EXCEPTION"),
];

/// ClickHouse exception codes that need an operator.
const CONFIGURATION_CODES: &[(u32, &str)] = &[
    (8, "THERE_IS_NO_COLUMN"),
    (
        16,
        "NO_SUCH_COLUMN_IN_TABLE: the table predates a migration, or was altered by hand",
    ),
    (47, "UNKNOWN_IDENTIFIER"),
    (53, "TYPE_MISMATCH: a column was altered by hand"),
    (60, "UNKNOWN_TABLE: the table was dropped"),
    (81, "UNKNOWN_DATABASE"),
    (164, "READONLY: the user has a readonly profile"),
    (192, "UNKNOWN_USER"),
    (193, "WRONG_PASSWORD"),
    (194, "REQUIRED_PASSWORD"),
    (195, "IP_ADDRESS_NOT_ALLOWED"),
    (
        291,
        "DATABASE_ACCESS_DENIED: the user's allow_databases leaves this database out",
    ),
    (497, "ACCESS_DENIED"),
    (516, "AUTHENTICATION_FAILED"),
];

/// The exception code in a server error text: `Code: 60, e.displayText() = …` (18.16) or
/// `Code: 60. DB::Exception: …` (current releases).
pub(crate) fn exception_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + "Code: ".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// How `error`, returned by the `clickhouse` crate, is treated.
pub fn failure_kind(error: &clickhouse::error::Error) -> FailureKind {
    use clickhouse::error::Error;
    match error {
        Error::Network(_) | Error::TimedOut => FailureKind::Transient,
        Error::BadResponse(text) => match exception_code(text) {
            Some(code) if TRANSIENT_CODES.iter().any(|(known, _)| *known == code) => {
                FailureKind::Transient
            }
            Some(code) if CONFIGURATION_CODES.iter().any(|(known, _)| *known == code) => {
                FailureKind::Configuration
            }
            // No code: a proxy or load balancer answered (502, 503, 504) rather than ClickHouse.
            None => FailureKind::Transient,
            Some(_) => FailureKind::Unexpected,
        },
        _ => FailureKind::Unexpected,
    }
}

impl ClickHouseError {
    /// How this failure is treated; see [`FailureKind`].
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            Self::Query { source, .. } => failure_kind(source),
            Self::InvalidIdentifier(_) | Self::Unsupported { .. } => FailureKind::Configuration,
            Self::MixedInsert { .. } | Self::InvalidRow { .. } | Self::InsertTask(_) => {
                FailureKind::Unexpected
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clickhouse::error::Error;

    use super::*;

    #[test]
    fn labels_name_every_kind() {
        let kinds = [
            FailureKind::Transient,
            FailureKind::Configuration,
            FailureKind::Unexpected,
        ];
        let labels: Vec<&str> = kinds.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(labels, FailureKind::LABELS);
    }

    #[test]
    fn codes_are_read_from_old_and_new_server_texts() {
        assert_eq!(
            exception_code("Code: 60, e.displayText() = DB::Exception: Table db.events doesn't exist., e.what() = DB::Exception"),
            Some(60)
        );
        assert_eq!(
            exception_code("Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)"),
            Some(252)
        );
        assert_eq!(exception_code("502 Bad Gateway"), None);
    }

    #[test]
    fn failures_are_classified_by_code() {
        let bad = |text: &str| failure_kind(&Error::BadResponse(text.to_owned()));
        assert_eq!(
            bad("Code: 252. DB::Exception: Too many parts"),
            FailureKind::Transient
        );
        assert_eq!(
            bad("Code: 60, e.displayText() = DB::Exception: Table x.events doesn't exist"),
            FailureKind::Configuration
        );
        assert_eq!(
            bad("Code: 516. DB::Exception: projector: Authentication failed"),
            FailureKind::Configuration
        );
        assert_eq!(
            bad("Code: 62. DB::Exception: Syntax error"),
            FailureKind::Unexpected
        );
        assert_eq!(bad("503 Service Unavailable"), FailureKind::Transient);
        assert_eq!(failure_kind(&Error::TimedOut), FailureKind::Transient);
        // Every listed code is in one list only.
        for (code, _) in TRANSIENT_CODES {
            assert!(
                !CONFIGURATION_CODES.iter().any(|(other, _)| other == code),
                "{code}"
            );
        }
    }
}
