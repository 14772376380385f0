//! Audit review, for the auditor role only: `/v1/audit/events`, one event's proof, the chain
//! status and the export bundle. Each read is recorded through [`crate::audit_trail`] before
//! its answer is released, and refused with 503 when it cannot be.
//!
//! These read `ledgerline_audit` as the ClickHouse `auditor` user, through the archive's own
//! reader, proof, verify and export code: the API writes no SQL of its own for the archive.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledgerline_consumers::archive::bundle::{self, ExportOptions};
use ledgerline_consumers::archive::proof::{self, ProofError};
use ledgerline_consumers::archive::verify::{self, Decoder, Report, VerifyOptions};
use ledgerline_schemas::json::event_json;
use ledgerline_schemas::Event;
use serde::Serialize;
use utoipa::ToSchema;

use crate::audit_trail::AuditRead;
use crate::error::{ApiError, ApiResult, ErrorBody, PathParam};
use crate::params::{self, Params};
use crate::routes::events::{parse_event_id, FilterParams, PageParams};
use crate::state::{AppState, Authenticated};

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventsPage {
    /// Audit events, each with an `archive` object giving its place in the chain.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

/// The parameters as given, for the audit trail (the cursor is left out: it is opaque and
/// long, and the filter it continues is the rest).
fn filter_record(raw: Option<&str>) -> serde_json::Value {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.unwrap_or("")).unwrap_or_default();
    let mut map = serde_json::Map::new();
    for (name, value) in pairs {
        if name == "cursor" {
            // The opaque text is long and says nothing to a reviewer; the position it
            // continues from says which page was released.
            let position = params::cursor_position(&value)
                .map(|(occurred_at_us, event_id)| {
                    serde_json::json!({"occurred_at_us": occurred_at_us, "event_id": event_id})
                })
                .unwrap_or(serde_json::Value::Bool(true));
            map.insert("after".to_owned(), position);
            continue;
        }
        let value: String = value.chars().take(1024).collect();
        match map.get_mut(&name) {
            Some(serde_json::Value::Array(values)) => values.push(value.into()),
            Some(existing) => {
                let first = existing.take();
                *existing = serde_json::Value::Array(vec![first, value.into()]);
            }
            None => {
                map.insert(name, value.into());
            }
        }
    }
    serde_json::Value::Object(map)
}

#[utoipa::path(
    get,
    path = "/v1/audit/events",
    tag = "audit",
    params(FilterParams, PageParams),
    responses(
        (status = 200, body = AuditEventsPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "not the auditor role"),
        (status = 503, body = ErrorBody, description = "ClickHouse down, or the read could not be recorded")
    ),
    security(("bearer" = []))
)]
pub async fn audit_events(
    State(state): State<AppState>,
    who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<AuditEventsPage>> {
    who.require_auditor(&state, "/v1/audit/events").await?;
    let limits = &state.inner.limits;
    let mut params = Params::parse(raw.as_deref())?;
    let query = params::event_query(&mut params, limits.max_range_secs, Vec::new())?;
    let limit = params.number("limit", limits.default_page, limits.max_page)?;
    let cursor = params.one("cursor")?;
    params.finish()?;
    let after = cursor
        .map(|text| params::decode_cursor("audit", &query, &text))
        .transpose()?;
    let page = state
        .inner
        .audit
        .search(&query, after.as_ref(), limit)
        .await
        .map_err(|error| ApiError::from_clickhouse("audit search", &error))?;
    let events: Vec<serde_json::Value> = page
        .events
        .into_iter()
        .map(|archived| {
            let mut json = event_json(&Event::Audit(archived.event));
            if let serde_json::Value::Object(fields) = &mut json {
                fields.insert(
                    "archive".to_owned(),
                    serde_json::json!({
                        "topic": archived.topic,
                        "partition": archived.partition,
                        "offset": archived.offset,
                        "hash": archived.hash,
                    }),
                );
            }
            json
        })
        .collect();
    state
        .inner
        .trail
        .record(AuditRead::new(
            &who,
            "/v1/audit/events",
            filter_record(raw.as_deref()),
            events.len() as u64,
        ))
        .await?;
    Ok(Json(AuditEventsPage {
        events,
        next_cursor: page
            .next
            .map(|next| params::encode_cursor("audit", &query, &next)),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/audit/events/{event_id}/proof",
    tag = "audit",
    params(("event_id" = String, Path, description = "The audit event's UUID")),
    responses(
        (status = 200, description = "The proof file `archive check-proof` checks offline", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "not yet covered by a checkpoint, or archived twice"),
        (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn proof(
    State(state): State<AppState>,
    who: Authenticated,
    PathParam(event_id): PathParam,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    who.require_auditor(&state, "/v1/audit/events/{event_id}/proof")
        .await?;
    Params::parse(raw.as_deref())?.finish()?;
    let event_id = parse_event_id(&event_id)?;
    let route = "/v1/audit/events/{event_id}/proof";
    let filter = serde_json::json!({ "event_id": event_id });
    // A 404 or 409 tells whether and where the event is archived, so those answers are
    // recorded like the proof itself, before they leave.
    let proof = match proof::prove(&state.inner.archive, &event_id).await {
        Ok(proof) => proof,
        Err(ProofError::NotFound { .. }) => {
            state
                .inner
                .trail
                .record(AuditRead::new(&who, route, filter, 0))
                .await?;
            return Err(ApiError::not_found(format!(
                "no archived audit event has id {event_id}"
            )));
        }
        Err(error @ (ProofError::NotYetCheckpointed { .. } | ProofError::Ambiguous { .. })) => {
            state
                .inner
                .trail
                .record(AuditRead::new(&who, route, filter, 0))
                .await?;
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "no_proof",
                error.to_string(),
            ));
        }
        Err(ProofError::Store(error)) => return Err(ApiError::from_clickhouse("proof", &error)),
        Err(error) => {
            tracing::error!(error = %ledgerline_service::errors::error_chain(&error), %event_id, "proof failed");
            return Err(ApiError::internal(format!(
                "the proof of {event_id} failed: {error}"
            )));
        }
    };
    let body = proof::to_json(&proof);
    state
        .inner
        .trail
        .record(AuditRead::new(&who, route, filter, 1))
        .await?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Ok(value) =
        HeaderValue::from_str(&format!("attachment; filename=\"proof-{event_id}.json\""))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `partition`, `from` and `to`, shared by verify and export.
fn range(params: &mut Params) -> ApiResult<(Option<i32>, Option<i64>, Option<i64>)> {
    let partition = params
        .one("partition")?
        .map(|text| {
            text.parse::<i32>().ok().filter(|p| *p >= 0).ok_or_else(|| {
                ApiError::bad_parameter("partition", "must be a partition number (0 or more)")
            })
        })
        .transpose()?;
    let offset = |params: &mut Params, name: &str| -> ApiResult<Option<i64>> {
        params
            .one(name)?
            .map(|text| {
                text.parse::<i64>()
                    .ok()
                    .filter(|o| *o >= 0)
                    .ok_or_else(|| ApiError::bad_parameter(name, "must be an offset (0 or more)"))
            })
            .transpose()
    };
    let from = offset(params, "from")?;
    let to = offset(params, "to")?;
    if let (Some(from), Some(to)) = (from, to) {
        if to < from {
            return Err(ApiError::bad_parameter("to", "must not be before `from`"));
        }
    }
    Ok((partition, from, to))
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RangeParams {
    /// Only this partition of `ledgerline.audit`.
    partition: Option<i32>,
    /// From this offset (widened to the start of its checkpoint segment).
    from: Option<i64>,
    /// To this offset (widened to the end of its checkpoint segment).
    to: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/audit/verify",
    tag = "audit",
    params(RangeParams),
    responses(
        (status = 200, description = "The chain status per partition: intact or broken, the first bad record and why, the last checkpoint", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn verify_chain(
    State(state): State<AppState>,
    who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Report>> {
    who.require_auditor(&state, "/v1/audit/verify").await?;
    let mut params = Params::parse(raw.as_deref())?;
    let (partition, from, to) = range(&mut params)?;
    params.finish()?;
    let _slot = state.heavy_slot()?;
    let options = VerifyOptions {
        partition,
        from,
        to,
        last_checkpoints: None,
    };
    let decoder = match &state.inner.codec {
        Some(codec) => Decoder::Registry(codec.clone()),
        None => Decoder::None,
    };
    let report = verify::verify(&state.inner.archive, &state.inner.trusted, &decoder, None, &options)
        .await
        .map_err(|error| match error {
            verify::RunError::Store(error) => ApiError::from_clickhouse("verification", &error),
            other => {
                tracing::error!(error = %ledgerline_service::errors::error_chain(&other), "verify failed");
                ApiError::internal(format!("verification could not run: {other}"))
            }
        })?;
    let entries: u64 = report.partitions.iter().map(|p| p.entries).sum();
    state
        .inner
        .trail
        .record(AuditRead::new(
            &who,
            "/v1/audit/verify",
            filter_record(raw.as_deref()),
            entries,
        ))
        .await?;
    Ok(Json(report))
}

#[utoipa::path(
    get,
    path = "/v1/audit/export",
    tag = "audit",
    params(RangeParams),
    responses(
        (status = 200, description = "The export bundle as a tar archive (`archive verify --bundle` checks it offline)", content_type = "application/x-tar"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    who.require_auditor(&state, "/v1/audit/export").await?;
    let mut params = Params::parse(raw.as_deref())?;
    let (partition, from, to) = range(&mut params)?;
    params.finish()?;
    let _slot = state.heavy_slot()?;
    let Some(codec) = state.inner.codec.clone() else {
        return Err(ApiError::unavailable(
            "registry_unavailable",
            "export needs the schema registry, which this API was started without",
        ));
    };
    let options = ExportOptions {
        partition,
        from,
        to,
    };
    // The bundle is written to a private temporary directory, packed into a tar file next to
    // it, and the tar file is streamed from disk: memory stays flat whatever the range.
    let scratch = tempfile::tempdir().map_err(|error| {
        ApiError::internal(format!(
            "export could not create its scratch directory: {error}"
        ))
    })?;
    let bundle_dir = scratch.path().join("bundle");
    let summary = bundle::export(
        &state.inner.archive,
        &codec,
        &state.inner.public_keys,
        &options,
        &bundle_dir,
    )
    .await
    .map_err(|error| match error {
        bundle::BundleError::Store(error) => ApiError::from_clickhouse("export", &error),
        other => {
            tracing::error!(error = %ledgerline_service::errors::error_chain(&other), "export failed");
            ApiError::internal(format!("the export failed: {other}"))
        }
    })?;
    let tar_path = scratch.path().join("bundle.tar");
    let (dir, path) = (bundle_dir.clone(), tar_path.clone());
    tokio::task::spawn_blocking(move || pack(&dir, &path))
        .await
        .map_err(|error| ApiError::internal(format!("packing the export failed: {error}")))?
        .map_err(|error| ApiError::internal(format!("packing the export failed: {error}")))?;
    let file = tokio::fs::File::open(&tar_path).await.map_err(|error| {
        ApiError::internal(format!("the packed export cannot be read: {error}"))
    })?;
    let length = file.metadata().await.map(|m| m.len()).ok();
    state
        .inner
        .trail
        .record(AuditRead::new(
            &who,
            "/v1/audit/export",
            filter_record(raw.as_deref()),
            summary.records,
        ))
        .await?;
    // The open file keeps the data readable after the directory is removed (on Unix); the
    // directory guard moves into the stream so it is removed once the body is sent.
    let stream = futures::StreamExt::map(tokio_util::io::ReaderStream::new(file), move |chunk| {
        let _keep = &scratch;
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"ledgerline-audit-export.tar\""),
    );
    if let Some(length) = length {
        if let Ok(value) = HeaderValue::from_str(&length.to_string()) {
            headers.insert(header::CONTENT_LENGTH, value);
        }
    }
    Ok(response)
}

/// Packs the bundle directory's files into a tar at `out`, under `ledgerline-audit-export/`.
fn pack(dir: &std::path::Path, out: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut builder = tar::Builder::new(file);
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for path in names {
        if let Some(name) = path.file_name() {
            builder.append_path_with_name(
                &path,
                PathBuf::from("ledgerline-audit-export").join(name),
            )?;
        }
    }
    builder.into_inner()?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_filter_keeps_lists_and_drops_the_cursor() {
        let record = filter_record(Some("actor=a&actor=b&since=x&cursor=abc"));
        assert_eq!(
            record,
            serde_json::json!({"actor": ["a", "b"], "since": "x", "after": true})
        );
    }
}
