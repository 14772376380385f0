//! The side listener every service runs: `/health` and `/metrics`.
//!
//! - `/health` runs every registered component check concurrently, each bounded by
//!   [`CHECK_TIMEOUT`], and answers 200 when all pass, 503 otherwise, with a JSON body naming
//!   each component and its error. Checks are pulled on request rather than pushed, so the
//!   answer is never staler than the request.
//! - `/metrics` renders the process's Prometheus recorder in text exposition format.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How long one component check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The named component checks behind `/health`.
#[derive(Clone, Default)]
pub struct Health {
    checks: Vec<(String, CheckFn)>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(name, _)| name))
            .finish()
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HealthReport {
    /// `ok` or `failing`.
    pub status: &'static str,
    pub components: BTreeMap<String, ComponentReport>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ComponentReport {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a check; `check` is called on every `/health` request.
    pub fn with_check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name.into(),
            Arc::new(move || Box::pin(check()) as CheckFuture),
        ));
        self
    }

    /// Runs every check concurrently.
    pub async fn report(&self) -> HealthReport {
        let runs = self.checks.iter().map(|(name, check)| {
            let check = Arc::clone(check);
            async move {
                let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(format!(
                        "check timed out after {}s",
                        CHECK_TIMEOUT.as_secs()
                    )),
                };
                (name.clone(), outcome)
            }
        });
        let outcomes = futures::future::join_all(runs).await;
        let healthy = outcomes.iter().all(|(_, outcome)| outcome.is_ok());
        HealthReport {
            status: if healthy { "ok" } else { "failing" },
            components: outcomes
                .into_iter()
                .map(|(name, outcome)| {
                    let report = match outcome {
                        Ok(()) => ComponentReport {
                            status: "ok",
                            error: None,
                        },
                        Err(error) => ComponentReport {
                            status: "failing",
                            error: Some(error),
                        },
                    };
                    (name, report)
                })
                .collect(),
        }
    }
}

#[derive(Clone)]
struct SideState {
    health: Health,
    metrics: PrometheusHandle,
}

/// The side listener's routes, without a socket, so tests can call `.oneshot()`.
pub fn router(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics_handler))
        .with_state(SideState { health, metrics })
}

async fn health_handler(State(state): State<SideState>) -> impl IntoResponse {
    let report = state.health.report().await;
    let status = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

async fn metrics_handler(State(state): State<SideState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// Binds `addr` and serves `router` until `shutdown` is cancelled. Returns the bound address
/// (useful with port 0) and the server task. Handlers can read the peer address through
/// `ConnectInfo<SocketAddr>` (the query API records it in its audit trail).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "http listener serving");
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    });
    Ok((local, task))
}
