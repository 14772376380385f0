//! Extractors that fail the Confluent way. axum's own rejections answer in plain text; Confluent
//! clients expect `{"error_code", "message"}` on every error, so every rejection here is an
//! [`ApiError`].

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::response::CONTENT_TYPE;

/// Content types Confluent clients send; a request without one is read as JSON too.
const ACCEPTED_CONTENT_TYPES: [&str; 3] = [
    CONTENT_TYPE,
    "application/vnd.schemaregistry+json",
    "application/json",
];

/// A JSON body, parsed here so malformed JSON is a Confluent error: 400 when it is not JSON at
/// all, 422 when it is JSON of the wrong shape (as Confluent's Jackson mappers answer).
#[derive(Debug)]
pub struct ConfluentJson<T>(pub T);

impl<S, T> FromRequest<S> for ConfluentJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
            let essence = content_type
                .to_str()
                .ok()
                .and_then(|text| text.split(';').next())
                .map(|essence| essence.trim().to_ascii_lowercase());
            if !essence
                .as_deref()
                .is_some_and(|essence| ACCEPTED_CONTENT_TYPES.contains(&essence))
            {
                return Err(ApiError::Request {
                    status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message: format!(
                        "unsupported content type {content_type:?}; send {}",
                        ACCEPTED_CONTENT_TYPES.join(" or ")
                    ),
                });
            }
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::Request {
                status: rejection.status(),
                message: rejection.body_text().to_lowercase(),
            })?;
        serde_json::from_slice(&bytes)
            .map(Self)
            .map_err(|error| match error.classify() {
                serde_json::error::Category::Data => {
                    ApiError::unprocessable(format!("unexpected request body: {error}"))
                }
                _ => ApiError::bad_request(format!("malformed json: {error}")),
            })
    }
}

/// Path parameters, with axum's rejection (say, a subject that is not UTF-8 once decoded)
/// turned into a Confluent error. Parameters are taken as strings: ids and versions are parsed
/// by the handlers, which know the right error code.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection| ApiError::Request {
                status: rejection.status(),
                message: rejection.body_text().to_lowercase(),
            })
    }
}

/// Whether a boolean query flag (`deleted`, `permanent`, `verbose`, `defaultToGlobal`) is set.
/// Parsed by hand so no query string can be rejected: like Confluent, anything but `true` is
/// false.
pub fn flag(query: Option<&str>, name: &str) -> bool {
    query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .any(|(key, value)| key == name && value.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_true_only_when_spelled_true() {
        assert!(flag(Some("deleted=true"), "deleted"));
        assert!(flag(Some("a=1&permanent=TRUE"), "permanent"));
        assert!(!flag(Some("deleted=yes"), "deleted"));
        assert!(!flag(Some("deleted"), "deleted"));
        assert!(!flag(Some("undeleted=true"), "deleted"));
        assert!(!flag(None, "deleted"));
    }
}
