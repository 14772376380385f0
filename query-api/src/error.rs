//! Every error the API answers, as `{"error": {"code", "message"}}` with its status.
//!
//! `code` is a stable machine word (`bad_parameter`, `unauthorized`, …) that clients branch on;
//! `message` is for people and names what was wrong (the parameter, the limit, the field).
//! Nothing the server knows internally (SQL, credentials, stack traces) goes into a message:
//! a 5xx says what failed in one line and the log has the rest.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledgerline_consumers::clickhouse::{ClickHouseError, FailureKind};
use ledgerline_consumers::projector::queries::limit_hit;
use serde::Serialize;

/// An error answer. Built with the constructors below so each kind has one status and code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429 and some 503s).
    pub retry_after: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_parameter`.
    pub code: String,
    /// What was wrong, naming the parameter, field or limit.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A query parameter that is malformed, out of range, repeated or unknown; names it.
    pub fn bad_parameter(name: &str, reason: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad_parameter",
            format!("parameter `{name}`: {reason}"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// A failed ClickHouse read of `what`: a limit it hit is the caller's to fix (422, naming
    /// the limit); a server that is down, restarting or refusing our credentials is ours (503);
    /// anything else is a 500. The full error goes to the log, not to the client.
    pub fn from_clickhouse(what: &str, error: &ClickHouseError) -> Self {
        if let Some(limit) = limit_hit(error) {
            return Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "query_limit",
                format!(
                    "the {what} hit ClickHouse's `{}` limit; narrow the time range or the filters",
                    limit.setting()
                ),
            );
        }
        let chain = ledgerline_service::errors::error_chain(error);
        match error.failure_kind() {
            FailureKind::Transient | FailureKind::Configuration => {
                tracing::warn!(error = %chain, what, "clickhouse unavailable");
                Self::unavailable(
                    "clickhouse_unavailable",
                    format!("ClickHouse is unavailable for the {what}; try again shortly"),
                )
                .with_retry_after(5)
            }
            FailureKind::Unexpected => {
                tracing::error!(error = %chain, what, "clickhouse read failed");
                Self::internal(format!("the {what} failed"))
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ledgerline\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A single path parameter whose rejection (say, percent-encoded bytes that are not UTF-8) is
/// a JSON 400 naming the parameter like every other error, not axum's plain-text one.
#[derive(Debug, Clone)]
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let name = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .and_then(|path| {
                let path = path.as_str();
                let start = path.rfind('{')?;
                let end = path[start..].find('}')?;
                Some(path[start + 1..start + end].to_owned())
            })
            .unwrap_or_else(|| "path".to_owned());
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::bad_parameter(&name, rejection.body_text())),
        }
    }
}
