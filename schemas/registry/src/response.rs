//! How every answer is framed: JSON with Confluent's content type, for the handlers' answers
//! (`api`) and for errors (`error`) alike, so the two share the framing without depending on
//! each other.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The content type of every answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// `body` as a response carrying [`CONTENT_TYPE`].
pub(crate) fn with_content_type(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}
