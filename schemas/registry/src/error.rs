//! The two error types: [`ApiError`], what a client gets back (Confluent's error codes), and
//! [`RegistryError`], why the registry could not start.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::response::with_content_type;

/// An API error with Confluent's `error_code`. Clients match on the code, so each variant keeps
/// Confluent's; the HTTP status is the code's first three digits (`40401` → 404), except where
/// a variant says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("subject '{0}' not found")]
    SubjectNotFound(String),
    #[error("version {version} of subject '{subject}' not found")]
    VersionNotFound { subject: String, version: u32 },
    #[error("schema not found")]
    SchemaNotFound,
    #[error("subject '{0}' was soft deleted; set permanent=true to delete it permanently")]
    SubjectSoftDeleted(String),
    #[error("subject '{0}' was not soft deleted first; soft delete it before a permanent delete")]
    SubjectNotSoftDeleted(String),
    #[error("version {version} of subject '{subject}' was soft deleted; set permanent=true to delete it permanently")]
    VersionSoftDeleted { subject: String, version: u32 },
    #[error("version {version} of subject '{subject}' was not soft deleted first; soft delete it before a permanent delete")]
    VersionNotSoftDeleted { subject: String, version: u32 },
    #[error("subject '{0}' does not have subject-level compatibility configured")]
    SubjectLevelNotConfigured(String),
    #[error("schema being registered is incompatible with an earlier schema for subject '{subject}': {}", messages.join("; "))]
    Incompatible {
        subject: String,
        messages: Vec<String>,
    },
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    #[error("the specified version '{0}' is not a valid version id; allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    #[error("{0}")]
    InvalidLevel(#[from] crate::compatibility::InvalidLevel),
    /// A request HTTP itself rejects (malformed body, unknown route, wrong method, bad content
    /// type); Confluent answers these with the status as the error code.
    #[error("{message}")]
    Request { status: StatusCode, message: String },
    #[error("unauthorized")]
    Unauthorized,
    /// The Kafka log refused a write. Details go to the log, not to the client.
    #[error("error in the backend data store")]
    Store,
    #[error("the write was not confirmed in time; it may still be applied, retry to find out")]
    Timeout,
    #[error("this registry instance is a read-only replica; send writes to the leader")]
    ReadOnlyReplica,
}

impl ApiError {
    /// Confluent's `error_code`.
    pub fn code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaNotFound => 40403,
            Self::SubjectSoftDeleted(_) => 40404,
            Self::SubjectNotSoftDeleted(_) => 40405,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::VersionNotSoftDeleted { .. } => 40407,
            Self::SubjectLevelNotConfigured(_) => 40408,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidLevel(_) => 42203,
            Self::Request { status, .. } => u32::from(status.as_u16()),
            Self::Unauthorized => 401,
            Self::Store => 50001,
            Self::Timeout => 50002,
            Self::ReadOnlyReplica => 50003,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            // Not 500: the instance is healthy, the request went to the wrong one, and load
            // balancers and clients treat 503 as "try another".
            Self::ReadOnlyReplica => StatusCode::SERVICE_UNAVAILABLE,
            other => {
                let code = other.code();
                let status = if code >= 1000 { code / 100 } else { code };
                u16::try_from(status)
                    .ok()
                    .and_then(|status| StatusCode::from_u16(status).ok())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::Request {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::Request {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error_code: u32,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = self.status();
        metrics::counter!("ledgerline_registry_errors_total", "code" => code.to_string())
            .increment(1);
        let message = self.to_string();
        if status.is_server_error() {
            tracing::warn!(error_code = code, %message, "request failed");
        }
        let body = serde_json::to_vec(&ErrorBody {
            error_code: code,
            message: &message,
        })
        .unwrap_or_default();
        let mut response = with_content_type((status, body));
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ledgerline-registry\""),
            );
        }
        response
    }
}

/// Why [`crate::start`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("failed to create kafka client: {0}")]
    KafkaClient(#[source] rdkafka::error::KafkaError),
    #[error(transparent)]
    CreateTopic(#[from] ledgerline_service::kafka::TopicError),
    #[error("failed to read metadata of topic {topic}: {source}")]
    Metadata {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic} has {partitions} partitions; the registry needs exactly 1 so every instance applies writes in the same order")]
    Partitions { topic: String, partitions: usize },
    #[error("failed to replay topic {topic}: {reason}")]
    Replay { topic: String, reason: String },
    #[error("shutdown requested before the registry was ready")]
    Cancelled,
    #[error("failed to bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Telemetry(#[from] ledgerline_service::telemetry::TelemetryError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_the_codes_first_three_digits() {
        let cases = [
            (ApiError::SubjectNotFound("s".into()), 404),
            (ApiError::SchemaNotFound, 404),
            (
                ApiError::Incompatible {
                    subject: "s".into(),
                    messages: vec![],
                },
                409,
            ),
            (ApiError::InvalidSchema("x".into()), 422),
            (ApiError::InvalidVersion("x".into()), 422),
            (ApiError::bad_request("x"), 400),
            (ApiError::Unauthorized, 401),
            (ApiError::Store, 500),
            (ApiError::Timeout, 500),
            (ApiError::ReadOnlyReplica, 503),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
        }
    }

    #[test]
    fn messages_are_lowercase_and_name_the_subject() {
        let error = ApiError::Incompatible {
            subject: "orders-value".into(),
            messages: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            error.to_string(),
            "schema being registered is incompatible with an earlier schema for subject 'orders-value': a; b"
        );
        assert_eq!(error.code(), 409);
    }
}
