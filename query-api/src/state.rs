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
    /// Requests in progress per key id.
    in_flight: std::sync::Mutex<KeyCounts>,
    /// Verify and export read the whole range asked for, outside the per-query row cap; one
    /// runs at a time.
    heavy: Arc<tokio::sync::Semaphore>,
    /// The live stream, once its fan-out consumer is started (`[api.stream] enabled`).
    pub stream: std::sync::OnceLock<Arc<crate::stream::StreamService>>,
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
                in_flight: std::sync::Mutex::new(KeyCounts::default()),
                heavy: Arc::new(tokio::sync::Semaphore::new(1)),
                stream: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Takes one request from `caller`'s budget, or says when the next is allowed.
    pub(crate) fn admit(&self, caller: &Caller) -> Result<(), ApiError> {
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

    /// Counts a request of `caller` as in progress until the guard drops, or refuses it when
    /// the key already has `max_in_flight_per_key` requests in progress.
    fn enter(&self, caller: &Caller) -> Result<InFlight, ApiError> {
        let max = self.inner.limits.max_in_flight_per_key;
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !in_flight.try_add(&caller.key_id, max as usize) {
            metrics::counter!("ledgerline_api_rate_limited_total").increment(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_in_flight",
                format!(
                    "key `{}` already has {max} requests in progress; wait for one to finish",
                    caller.key_id
                ),
            )
            .with_retry_after(1));
        }
        Ok(InFlight {
            state: self.clone(),
            key_id: caller.key_id.clone(),
        })
    }

    /// The slot for a verify or export, or 429 while another runs.
    pub fn heavy_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.inner.heavy.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "busy",
                "another archive verification or export is running; one runs at a time",
            )
            .with_retry_after(5)
        })
    }

    /// Forgets limiter entries of keys that have been idle long enough to be full again.
    pub fn prune_limiter(&self) {
        self.inner.limiter.retain_recent();
    }
}

/// One request in progress for a key; dropping it ends the request.
pub struct InFlight {
    state: AppState,
    key_id: String,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key_id);
    }
}

/// Counts per key id, an entry dropped when it reaches zero: requests in progress, open
/// streams.
#[derive(Debug, Default)]
pub(crate) struct KeyCounts(std::collections::HashMap<String, usize>);

impl KeyCounts {
    /// Counts one more for `key`, unless it already has `max`.
    pub(crate) fn try_add(&mut self, key: &str, max: usize) -> bool {
        let count = self.0.entry(key.to_owned()).or_insert(0);
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// Counts one less for `key`.
    pub(crate) fn remove(&mut self, key: &str) {
        if let Some(count) = self.0.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.0.remove(key);
            }
        }
    }
}

/// An authenticated, admitted request: who made it and from where. It counts as in progress
/// for its key while the handler holds it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub caller: Caller,
    _in_flight: Arc<InFlight>,
    /// The peer address, for the audit trail.
    pub ip: String,
    pub user_agent: Option<String>,
}

impl Authenticated {
    /// Refuses callers whose role may not review the audit archive. A refused attempt is
    /// recorded in the audit trail too (outcome DENIED), best effort: the refusal stands
    /// whether or not the record could be published, since nothing is released.
    pub async fn require_auditor(&self, state: &AppState, route: &str) -> Result<(), ApiError> {
        if self.caller.role.can_review_audit() {
            return Ok(());
        }
        let mut attempt =
            crate::audit_trail::AuditRead::new(self, route, serde_json::Value::Null, 0);
        attempt.denied = true;
        if let Err(error) = state.inner.trail.record(attempt).await {
            tracing::warn!(key_id = %self.caller.key_id, %route, error = %error, "a refused audit review attempt could not be recorded");
        }
        Err(ApiError::forbidden(format!(
            "audit review needs the auditor role; key `{}` has the {} role",
            self.caller.key_id, self.caller.role
        )))
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
        let in_flight = state.enter(&caller)?;
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
            _in_flight: Arc::new(in_flight),
            ip,
            user_agent,
        })
    }
}
