//! Optional HTTP basic auth in front of every API route (`/health` and `/metrics` stay open so
//! probes and scrapers need no secret).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::prelude::{Engine, BASE64_STANDARD};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::config::BasicAuth;
use crate::error::ApiError;

/// Middleware: passes the request on only with the configured credentials.
pub async fn require_basic_auth(
    State(expected): State<Arc<BasicAuth>>,
    request: Request,
    next: Next,
) -> Response {
    if authorized(&expected, request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Compares user name and password in constant time (per length), and always both, so the
/// answer's timing does not tell an attacker which one or how much of it was right.
fn authorized(expected: &BasicAuth, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = BASE64_STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|byte| *byte == b':') else {
        return false;
    };
    let (username, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let username_matches = username.ct_eq(expected.username.as_bytes());
    let password_matches = password.ct_eq(expected.password.expose_secret().as_bytes());
    (username_matches & password_matches).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(credentials: &str) -> HeaderMap {
        headers(&format!("Basic {}", BASE64_STANDARD.encode(credentials)))
    }

    #[test]
    fn only_the_configured_credentials_pass() {
        let expected = BasicAuth {
            username: "sr".to_owned(),
            password: "p:ss".into(),
        };
        assert!(authorized(&expected, &basic("sr:p:ss")));
        assert!(authorized(
            &expected,
            &headers(&format!("basic {}", BASE64_STANDARD.encode("sr:p:ss")))
        ));
        for wrong in ["sr:p", "sr:p:ss2", "SR:p:ss", "sr", ":p:ss", ""] {
            assert!(!authorized(&expected, &basic(wrong)), "{wrong}");
        }
        assert!(!authorized(&expected, &HeaderMap::new()));
        assert!(!authorized(&expected, &headers("Bearer abc")));
        assert!(!authorized(&expected, &headers("Basic !!!not-base64")));
    }
}
