//! The router and the server: the `/v1` routes (documented by `utoipa` as they are added, so
//! `/openapi.json` lists exactly what is served), `/health`, `/metrics`, JSON answers for
//! unknown routes and methods, and the per-route request metrics.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ledgerline_service::http::Health;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::routes::{audit, events, jobs, whoami};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ledgerline query API",
        description = "Search, stats, jobs and audit review over Ledgerline's events. Every `/v1` route takes `Authorization: Bearer <key>`; errors are `{\"error\": {\"code\", \"message\"}}`."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "events", description = "Search and fetch events (never audit events)"),
        (name = "stats", description = "Histograms and top-N"),
        (name = "jobs", description = "Job status, progress and timelines"),
        (name = "audit", description = "Audit review: auditor role only; every read is itself audited"),
        (name = "session", description = "Who the key is: its id and role")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The `/v1` routes and their OpenAPI document, built together.
pub fn api_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events::list_events))
        .routes(routes!(events::get_event))
        .routes(routes!(events::histogram))
        .routes(routes!(events::top))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(audit::audit_events))
        .routes(routes!(audit::proof))
        .routes(routes!(audit::verify_chain))
        .routes(routes!(audit::export))
        .routes(routes!(whoami::whoami))
        .route("/v1/stream", get(crate::stream::stream))
        .split_for_parts()
}

/// Paths served outside `/v1` (no key needed), listed in the document too.
pub const SIDE_ROUTES: [&str; 5] = [
    "/health",
    "/metrics",
    "/openapi.json",
    "/",
    "/console/{path}",
];

/// The whole application.
pub fn router(state: AppState, health: Health, metrics: PrometheusHandle) -> Router {
    // A request may take ClickHouse's own limit and a margin; past that it is answered (the
    // server or the network is hung) rather than held open. Verify and export read whole
    // ranges and stream, so they are bounded by their one-at-a-time slot instead.
    let timeout = Duration::from_secs(state.inner.limits.max_execution_time_secs + 5);
    let (api, mut doc) = api_routes();
    add_side_paths(&mut doc);
    let doc_json = doc.to_json().unwrap_or_else(|_| "{}".to_owned());
    let side = ledgerline_service::http::router(health, metrics);
    let openapi = Router::new().route(
        "/openapi.json",
        get(move || {
            let body = doc_json.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        }),
    );
    api.with_state(state)
        .merge(side)
        .merge(openapi)
        .merge(crate::console::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(move |request, next| {
            track(request, next, timeout)
        }))
}

/// Adds `/v1/stream`, `/health`, `/metrics`, `/openapi.json` and the console to the document,
/// so it lists every route.
fn add_side_paths(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::ResponseBuilder;
    for (path, description) in [
        (
            "/v1/stream",
            "The live stream: a websocket (key by Authorization header or `?key=`; `since=` a cursor or an RFC 3339 time; the /v1/events filters). Messages and close codes: docs/stream.md",
        ),
        (
            "/health",
            "Component checks: 200 when all pass, 503 naming the failing one",
        ),
        (
            "/metrics",
            "Prometheus metrics: requests by route and status, latency",
        ),
        ("/openapi.json", "This document"),
        ("/", "The web console (docs/console.md): HTML, no key needed"),
        (
            "/console/{path}",
            "The console's embedded files (scripts, styles); no key needed, no data",
        ),
    ] {
        let operation = OperationBuilder::new()
            .tag("service")
            .response(
                "200",
                ResponseBuilder::new().description(description).build(),
            )
            .build();
        doc.paths
            .paths
            .insert(path.to_owned(), PathItem::new(HttpMethod::Get, operation));
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for `{}`", uri.path().escape_debug()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "`{method}` is not allowed on `{}`",
            uri.path().escape_debug()
        ),
    )
}

/// Counts every request by route template, method and status, and times it. Unknown paths are
/// counted under `unmatched` so a scan cannot blow up the label set.
async fn track(request: Request, next: Next, timeout: Duration) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let span = tracing::info_span!("request", %route, %method, key_id = tracing::field::Empty);
    let unbounded = matches!(route.as_str(), "/v1/audit/verify" | "/v1/audit/export");
    let running = next.run(request).instrument(span.clone());
    let response = if unbounded {
        running.await
    } else {
        match tokio::time::timeout(timeout, running).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "the request took longer than {} s and was abandoned",
                    timeout.as_secs()
                ),
            )
            .into_response(),
        }
    };
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    let labels = [
        ("route", route.clone()),
        ("method", method),
        ("status", status),
    ];
    metrics::counter!("ledgerline_api_requests_total", &labels).increment(1);
    metrics::histogram!("ledgerline_api_request_duration_seconds", &labels).record(elapsed);
    if response.status().is_server_error() {
        tracing::warn!(parent: &span, status = response.status().as_u16(), elapsed_ms = elapsed * 1e3, "request failed");
    } else {
        tracing::debug!(parent: &span, status = response.status().as_u16(), elapsed_ms = elapsed * 1e3, "request");
    }
    response
}

/// Serves `router` on `addr` until `shutdown`, with peer addresses for the audit trail: the
/// shared listener of every service.
pub use ledgerline_service::http::serve;
