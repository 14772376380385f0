//! The REST API: the Confluent Schema Registry subset clients use, AVRO only.
//!
//! Every answer, errors included, is JSON with content type
//! `application/vnd.schemaregistry.v1+json`; errors carry Confluent's `error_code`.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use crate::auth::require_basic_auth;
use crate::avro::AvroSchema;
use crate::compatibility::CompatibilityLevel;
use crate::config::BasicAuth;
use crate::error::ApiError;
use crate::extract::{flag, ApiPath, ConfluentJson};
use crate::response::with_content_type;
use crate::state::{Version, VersionSpec};
use crate::store::Store;

pub use crate::response::CONTENT_TYPE;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    store: Arc<Store>,
    basic_auth: Option<Arc<BasicAuth>>,
}

impl AppState {
    pub(crate) fn new(store: Arc<Store>, basic_auth: Option<BasicAuth>) -> Self {
        Self {
            store,
            basic_auth: basic_auth.map(Arc::new),
        }
    }
}

/// The API routes, behind basic auth when configured, without a socket. [`crate::start`] builds
/// the state and merges in `/health` and `/metrics`, outside the auth layer.
pub fn app(state: AppState) -> Router {
    let basic_auth = state.basic_auth.clone();
    let router = Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_raw_schema),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_against_latest),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_against_version),
        )
        .route(
            "/config",
            get(get_global_level)
                .put(put_global_level)
                .delete(delete_global_level),
        )
        .route(
            "/config/{subject}",
            get(get_subject_level)
                .put(put_subject_level)
                .delete(delete_subject_level),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    match basic_auth {
        Some(expected) => {
            router.layer(middleware::from_fn_with_state(expected, require_basic_auth))
        }
        None => router,
    }
}

/// A JSON answer with the registry's content type.
fn reply<T: Serialize + ?Sized>(body: &T) -> Result<Response, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|error| {
        tracing::error!(%error, "failed to encode an answer");
        ApiError::Store
    })?;
    Ok(with_content_type(bytes))
}

// ---- request bodies ----

/// `{"schema": "...", "schemaType"?: "AVRO", "references"?: []}`. Other fields newer clients
/// send (`metadata`, `ruleSet`, `normalize`) are ignored, as by a Confluent registry that does
/// not use them.
#[derive(Debug, Deserialize)]
struct SchemaRequest {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    references: Option<Vec<serde_json::Value>>,
}

impl SchemaRequest {
    /// The parsed schema and its text, or 42201.
    fn into_candidate(self) -> Result<(AvroSchema, String), ApiError> {
        if let Some(kind) = &self.schema_type {
            if !kind.eq_ignore_ascii_case("AVRO") {
                return Err(ApiError::InvalidSchema(format!(
                    "unsupported schema type {kind}; this registry serves AVRO only"
                )));
            }
        }
        if self
            .references
            .as_ref()
            .is_some_and(|refs| !refs.is_empty())
        {
            return Err(ApiError::InvalidSchema(
                "schema references are not supported".to_owned(),
            ));
        }
        let text = self
            .schema
            .filter(|text| !text.trim().is_empty())
            .ok_or_else(|| ApiError::InvalidSchema("empty schema".to_owned()))?;
        let candidate = AvroSchema::parse(&text).map_err(ApiError::InvalidSchema)?;
        Ok((candidate, text))
    }
}

/// `{"compatibility": "FULL"}`; `compatibilityLevel` is accepted too, as newer Confluent does.
#[derive(Debug, Deserialize)]
struct LevelRequest {
    compatibility: Option<String>,
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: Option<String>,
}

impl LevelRequest {
    fn level(self) -> Result<CompatibilityLevel, ApiError> {
        let text = self
            .compatibility
            .or(self.compatibility_level)
            .unwrap_or_default();
        Ok(text.parse()?)
    }
}

// ---- answers ----

#[derive(Serialize)]
struct SchemaBody<'a> {
    schema: &'a str,
    #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
}

#[derive(Serialize)]
struct SubjectVersionBody<'a> {
    subject: &'a str,
    version: u32,
}

#[derive(Serialize)]
struct VersionBody<'a> {
    subject: &'a str,
    id: u32,
    version: u32,
    #[serde(rename = "schemaType", skip_serializing_if = "Option::is_none")]
    schema_type: Option<&'a str>,
    schema: &'a str,
}

impl<'a> VersionBody<'a> {
    fn new(subject: &'a str, number: u32, version: &'a Version) -> Self {
        Self {
            subject,
            id: version.id,
            version: number,
            schema_type: version.schema.schema_type.as_deref(),
            schema: &version.schema.text,
        }
    }
}

#[derive(Serialize)]
struct IdBody {
    id: u32,
}

#[derive(Serialize)]
struct CompatibilityBody {
    is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

#[derive(Serialize)]
struct LevelBody {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: CompatibilityLevel,
}

#[derive(Serialize)]
struct UpdatedLevelBody {
    compatibility: CompatibilityLevel,
}

// ---- handlers ----

async fn root() -> Result<Response, ApiError> {
    reply(&serde_json::json!({}))
}

async fn schema_types() -> Result<Response, ApiError> {
    reply(&["AVRO"])
}

/// An id in a URL; one that is not a number names no schema.
fn parse_id(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| ApiError::SchemaNotFound)
}

async fn schema_by_id(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    metrics::counter!("ledgerline_registry_lookups_total", "by" => "id").increment(1);
    let id = parse_id(&id)?;
    let state = app.store.read().await;
    let schema = state.schema(id)?;
    reply(&SchemaBody {
        schema: &schema.text,
        schema_type: schema.schema_type.as_deref(),
    })
}

async fn id_versions(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let state = app.store.read().await;
    let versions = state.id_versions(id, flag(query.as_deref(), "deleted"))?;
    let body: Vec<SubjectVersionBody<'_>> = versions
        .into_iter()
        .map(|(subject, version)| SubjectVersionBody { subject, version })
        .collect();
    reply(&body)
}

async fn list_subjects(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let state = app.store.read().await;
    reply(&state.subjects(flag(query.as_deref(), "deleted")))
}

async fn list_versions(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let state = app.store.read().await;
    reply(&state.versions(&subject, flag(query.as_deref(), "deleted"))?)
}

async fn get_version(
    State(app): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    let state = app.store.read().await;
    let (number, found) = state.version(&subject, spec, flag(query.as_deref(), "deleted"))?;
    reply(&VersionBody::new(&subject, number, found))
}

/// The schema itself as the body, not wrapped in an object.
async fn get_raw_schema(
    State(app): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    let state = app.store.read().await;
    let (_, found) = state.version(&subject, spec, flag(query.as_deref(), "deleted"))?;
    Ok(with_content_type(found.schema.text.clone()))
}

async fn register(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    ConfluentJson(request): ConfluentJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let (candidate, text) = request.into_candidate()?;
    let id = app
        .store
        .write(|state| state.plan_register(&subject, &candidate, &text))
        .await?;
    metrics::counter!("ledgerline_registry_registrations_total").increment(1);
    tracing::debug!(%subject, id, "schema registered");
    reply(&IdBody { id })
}

async fn lookup(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
    ConfluentJson(request): ConfluentJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    metrics::counter!("ledgerline_registry_lookups_total", "by" => "schema").increment(1);
    let (candidate, _) = request.into_candidate()?;
    let state = app.store.read().await;
    let (number, found) = state.lookup(&subject, &candidate, flag(query.as_deref(), "deleted"))?;
    reply(&VersionBody::new(&subject, number, found))
}

async fn delete_subject(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let permanent = flag(query.as_deref(), "permanent");
    let deleted = app
        .store
        .write(|state| state.plan_delete_subject(&subject, permanent))
        .await?;
    tracing::info!(%subject, permanent, ?deleted, "subject deleted");
    reply(&deleted)
}

async fn delete_version(
    State(app): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    let permanent = flag(query.as_deref(), "permanent");
    let deleted = app
        .store
        .write(|state| state.plan_delete_version(&subject, spec, permanent))
        .await?;
    tracing::info!(%subject, version = deleted, permanent, "version deleted");
    reply(&deleted)
}

async fn check_against_latest(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
    body: ConfluentJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    check_compatibility(&app, &subject, VersionSpec::Latest, query.as_deref(), body).await
}

async fn check_against_version(
    State(app): State<AppState>,
    ApiPath((subject, version)): ApiPath<(String, String)>,
    RawQuery(query): RawQuery,
    body: ConfluentJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let spec = VersionSpec::parse(&version)?;
    check_compatibility(&app, &subject, spec, query.as_deref(), body).await
}

async fn check_compatibility(
    app: &AppState,
    subject: &str,
    spec: VersionSpec,
    query: Option<&str>,
    ConfluentJson(request): ConfluentJson<SchemaRequest>,
) -> Result<Response, ApiError> {
    let (candidate, _) = request.into_candidate()?;
    let messages = app
        .store
        .read()
        .await
        .compatibility(subject, spec, &candidate)?;
    reply(&CompatibilityBody {
        is_compatible: messages.is_empty(),
        messages: flag(query, "verbose").then_some(messages),
    })
}

async fn get_global_level(State(app): State<AppState>) -> Result<Response, ApiError> {
    let level = app.store.read().await.global_level();
    reply(&LevelBody {
        compatibility_level: level,
    })
}

async fn put_global_level(
    State(app): State<AppState>,
    ConfluentJson(request): ConfluentJson<LevelRequest>,
) -> Result<Response, ApiError> {
    let level = request.level()?;
    let level = app
        .store
        .write(|state| Ok(state.plan_set_level(None, level)))
        .await?;
    tracing::info!(%level, "global compatibility level set");
    reply(&UpdatedLevelBody {
        compatibility: level,
    })
}

async fn delete_global_level(State(app): State<AppState>) -> Result<Response, ApiError> {
    let previous = app
        .store
        .write(|state| state.plan_delete_level(None))
        .await?;
    reply(&LevelBody {
        compatibility_level: previous,
    })
}

async fn get_subject_level(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let state = app.store.read().await;
    let level = match state.subject_level(&subject) {
        Some(level) => level,
        None if flag(query.as_deref(), "defaultToGlobal") => state.global_level(),
        None => return Err(ApiError::SubjectLevelNotConfigured(subject)),
    };
    reply(&LevelBody {
        compatibility_level: level,
    })
}

async fn put_subject_level(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
    ConfluentJson(request): ConfluentJson<LevelRequest>,
) -> Result<Response, ApiError> {
    let level = request.level()?;
    let level = app
        .store
        .write(|state| Ok(state.plan_set_level(Some(&subject), level)))
        .await?;
    tracing::info!(%subject, %level, "subject compatibility level set");
    reply(&UpdatedLevelBody {
        compatibility: level,
    })
}

async fn delete_subject_level(
    State(app): State<AppState>,
    ApiPath(subject): ApiPath<String>,
) -> Result<Response, ApiError> {
    let previous = app
        .store
        .write(|state| state.plan_delete_level(Some(&subject)))
        .await?;
    reply(&LevelBody {
        compatibility_level: previous,
    })
}

async fn not_found() -> ApiError {
    ApiError::Request {
        status: StatusCode::NOT_FOUND,
        message: "HTTP 404 Not Found".to_owned(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::Request {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "HTTP 405 Method Not Allowed".to_owned(),
    }
}
