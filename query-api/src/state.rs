//! What every handler shares, built once at start-up: the readers, the keys, the limiter and
//! the audit trail. Cheap to clone (everything is behind `Arc`s).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use ed25519_dalek::VerifyingKey;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ledgerline_consumers::archive::checkpoint::TrustedKeys;
use ledgerline_consumers::archive::reader::AuditReader;
use ledgerline_consumers::archive::store::ArchiveStore;
use ledgerline_consumers::projector::queries::EventReader;
use ledgerline_schemas::EventCodec;

use crate::audit_trail::AuditTrail;
use crate::auth::{bearer_token, Caller, KeyStore, Role};
use crate::config::LimitsConfig;
use crate::error::ApiError;

/// The shared state.
#[derive(Clone)]
pub struct AppState {
    pub inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

pub struct Inner {
    pub keys: KeyStore,
    pub events: EventReader,
    pub audit: AuditReader,
    pub archive: ArchiveStore,
    /// Keys whose checkpoint signatures audit review accepts.
    pub trusted: TrustedKeys,
    /// The same keys, for export bundles' `keys.json`.
    pub public_keys: Vec<VerifyingKey>,
    /// Decodes archived bytes for verify and names writer schemas for export.
    pub codec: Option<Arc<EventCodec>>,
    pub trail: Arc<dyn AuditTrail>,
    pub limits: LimitsConfig,
    limiter: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        keys: KeyStore,
        events: EventReader,
        audit: AuditReader,
        archive: ArchiveStore,
        trusted: TrustedKeys,
        public_keys: Vec<VerifyingKey>,
        codec: Option<Arc<EventCodec>>,
        trail: Arc<dyn AuditTrail>,
        limits: LimitsConfig,
    ) -> Self {
        let per_second = NonZeroU32::new(limits.rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.rate_burst).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst));
        Self {
            inner: Arc::new(Inner {
                keys,
                events,
                audit,
                archive,
                trusted,
                public_keys,
                codec,
                trail,
                limits,
                limiter,
            }),
        }
    }

    /// Takes one request from `caller`'s budget, or says when the next is allowed.
    fn admit(&self, caller: &Caller) -> Result<(), ApiError> {
        match self.inner.limiter.check_key(&caller.key_id) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait: Duration = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!("ledgerline_api_rate_limited_total").increment(1);
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "key `{}` is over its rate limit of {} requests per second (burst {})",
                        caller.key_id,
                        self.inner.limits.rate_per_second,
                        self.inner.limits.rate_burst
                    ),
                )
                .with_retry_after(wait.as_secs_f64().ceil() as u64))
            }
        }
    }

    /// Forgets limiter entries of keys that have been idle long enough to be full again.
    pub fn prune_limiter(&self) {
        self.inner.limiter.retain_recent();
    }
}

/// An authenticated, admitted request: who made it and from where.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub caller: Caller,
    /// The peer address, for the audit trail.
    pub ip: String,
    pub user_agent: Option<String>,
}

impl Authenticated {
    /// Refuses callers whose role may not review the audit archive.
    pub fn require_auditor(&self) -> Result<(), ApiError> {
        if self.caller.role.can_review_audit() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "audit review needs the auditor role; key `{}` has the {} role",
                self.caller.key_id, self.caller.role
            )))
        }
    }

    pub fn role(&self) -> Role {
        self.caller.role
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header_value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer <key>` header")
        })?;
        let token = header_value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <key>`")
            })?;
        let caller = state
            .inner
            .keys
            .authenticate(token)
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
        state.admit(&caller)?;
        let ip = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|text| text.chars().take(256).collect());
        tracing::Span::current().record("key_id", caller.key_id.as_str());
        Ok(Self {
            caller,
            ip,
            user_agent,
        })
    }
}
