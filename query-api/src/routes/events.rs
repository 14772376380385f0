//! `/v1/events`, `/v1/events/{event_id}`, `/v1/stats/histogram` and `/v1/stats/top`.
//!
//! Audit events are never answered here, whatever the role or filter: the reader applies
//! `hidden = [audit]` inside every query. They are read through `/v1/audit/*` only, where each
//! read is itself recorded.

use axum::extract::{RawQuery, State};
use axum::Json;
use ledgerline_consumers::projector::queries::{SplitBy, TopField};
use ledgerline_schemas::json::event_json;
use ledgerline_schemas::Category;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, ErrorBody, PathParam};
use crate::params::{self, Params};
use crate::state::{AppState, Authenticated};

/// The categories no `/v1/events` or `/v1/stats` answer includes.
pub const HIDDEN: [Category; 1] = [Category::Audit];

/// A page of events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Events in the shape every endpoint and the stream share.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// Pass as `cursor` with the same filters for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The filter parameters, for the OpenAPI document.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct FilterParams {
    /// Start of the range, RFC 3339, inclusive. Required.
    since: String,
    /// End of the range, RFC 3339, exclusive. Required; at most `max_range_secs` after `since`.
    until: String,
    /// Categories (list): job, connection, system.
    category: Option<String>,
    /// Services (list).
    service: Option<String>,
    /// Hosts (list).
    host: Option<String>,
    /// Minimum level: trace, debug, info, warn, error, critical.
    level: Option<String>,
    /// Name prefixes (list), e.g. `user.login`.
    name: Option<String>,
    job_id: Option<String>,
    device_id: Option<String>,
    user_id: Option<String>,
    request_id: Option<String>,
    trace_id: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// success, failure, denied (list).
    outcome: Option<String>,
    /// Case-insensitive substring of the message.
    text: Option<String>,
    /// Search string: `level:error service:billing -name:health.* "disk full"`.
    q: Option<String>,
}

/// The paging parameters.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Events per page, 1 to 1000 (default 100).
    limit: Option<u64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(FilterParams, PageParams),
    responses(
        (status = 200, body = EventsPage),
        (status = 400, body = ErrorBody, description = "a parameter is malformed or unknown"),
        (status = 401, body = ErrorBody), (status = 422, body = ErrorBody, description = "a ClickHouse limit was hit"),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    _who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<EventsPage>> {
    let limits = &state.inner.limits;
    let mut params = Params::parse(raw.as_deref())?;
    let query = params::event_query(&mut params, limits.max_range_secs, HIDDEN.to_vec())?;
    let limit = params.number("limit", limits.default_page, limits.max_page)?;
    let cursor = params.one("cursor")?;
    params.finish()?;
    let after = cursor
        .map(|text| params::decode_cursor("events", &query, &text))
        .transpose()?;
    let page = state
        .inner
        .events
        .search(&query, after.as_ref(), limit)
        .await
        .map_err(|error| ApiError::from_clickhouse("search", &error))?;
    Ok(Json(EventsPage {
        events: page.events.iter().map(event_json).collect(),
        next_cursor: page
            .next
            .map(|next| params::encode_cursor("events", &query, &next)),
    }))
}

/// Checks an event id from a path: a UUID, in its canonical hyphenated lower-case form.
pub fn parse_event_id(text: &str) -> ApiResult<String> {
    uuid::Uuid::parse_str(text)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| ApiError::bad_parameter("event_id", "must be a UUID"))
}

#[utoipa::path(
    get,
    path = "/v1/events/{event_id}",
    tag = "events",
    params(("event_id" = String, Path, description = "The event's UUID")),
    responses(
        (status = 200, description = "The event", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn get_event(
    State(state): State<AppState>,
    _who: Authenticated,
    PathParam(event_id): PathParam,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<serde_json::Value>> {
    Params::parse(raw.as_deref())?.finish()?;
    let event_id = parse_event_id(&event_id)?;
    let event = state
        .inner
        .events
        .event(&event_id, &HIDDEN)
        .await
        .map_err(|error| ApiError::from_clickhouse("event lookup", &error))?;
    match event {
        Some(event) => Ok(Json(event_json(&event))),
        None => Err(ApiError::not_found(format!("no event has id {event_id}"))),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Histogram {
    /// Bucket width in seconds.
    pub interval_secs: u64,
    /// `level` or `category`.
    pub by: String,
    /// Non-empty buckets, by start time then key.
    pub buckets: Vec<HistogramBucket>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistogramBucket {
    /// Start of the bucket, RFC 3339.
    pub start: String,
    pub start_us: i64,
    pub key: String,
    pub count: u64,
}

/// Bucket width: `30s`, `5m`, `1h`, `1d`, or plain seconds.
fn parse_interval(text: &str) -> ApiResult<u64> {
    let bad = || {
        ApiError::bad_parameter(
            "interval",
            "must be a duration such as 30s, 5m, 1h or 1d (or whole seconds)",
        )
    };
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => count,
        "m" => count.saturating_mul(60),
        "h" => count.saturating_mul(3600),
        "d" => count.saturating_mul(86_400),
        _ => return Err(bad()),
    };
    if seconds == 0 {
        return Err(bad());
    }
    Ok(seconds)
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistogramParams {
    /// Bucket width: 30s, 5m, 1h, 1d (required).
    interval: String,
    /// `level` (default) or `category`.
    by: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/stats/histogram",
    tag = "stats",
    params(FilterParams, HistogramParams),
    responses(
        (status = 200, body = Histogram),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn histogram(
    State(state): State<AppState>,
    _who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Histogram>> {
    let limits = &state.inner.limits;
    let mut params = Params::parse(raw.as_deref())?;
    let query = params::event_query(&mut params, limits.max_range_secs, HIDDEN.to_vec())?;
    let interval_secs = parse_interval(&params.required("interval")?)?;
    let by = match params.one("by")?.as_deref() {
        None | Some("level") => SplitBy::Level,
        Some("category") => SplitBy::Category,
        Some(_) => {
            return Err(ApiError::bad_parameter(
                "by",
                "must be `level` or `category`",
            ))
        }
    };
    params.finish()?;
    // Buckets are aligned to multiples of the interval since the epoch, so the range can
    // touch one more than its length suggests: count from the first to the last aligned one.
    let interval_us = i64::try_from(interval_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    let first = query.since_us.div_euclid(interval_us);
    let last = (query.until_us - 1).div_euclid(interval_us);
    let buckets = u64::try_from(last - first + 1).unwrap_or(u64::MAX);
    if buckets > limits.max_buckets {
        return Err(ApiError::bad_parameter(
            "interval",
            format!(
                "gives {buckets} buckets over the range; at most {} are allowed",
                limits.max_buckets
            ),
        ));
    }
    let rows = state
        .inner
        .events
        .histogram(&query, interval_secs, by)
        .await
        .map_err(|error| ApiError::from_clickhouse("histogram", &error))?;
    Ok(Json(Histogram {
        interval_secs,
        by: match by {
            SplitBy::Level => "level",
            SplitBy::Category => "category",
        }
        .to_owned(),
        buckets: rows
            .into_iter()
            .map(|bucket| HistogramBucket {
                start: params::format_time(bucket.start_us),
                start_us: bucket.start_us,
                key: bucket.key,
                count: bucket.count,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Top {
    /// `service` or `name`.
    pub field: String,
    pub entries: Vec<TopRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopRow {
    pub value: String,
    pub count: u64,
}

#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TopParams {
    /// `service` or `name` (required).
    field: String,
    /// How many, 1 to 1000 (default 10).
    limit: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/stats/top",
    tag = "stats",
    params(FilterParams, TopParams),
    responses(
        (status = 200, body = Top),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn top(
    State(state): State<AppState>,
    _who: Authenticated,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Top>> {
    let limits = &state.inner.limits;
    let mut params = Params::parse(raw.as_deref())?;
    let query = params::event_query(&mut params, limits.max_range_secs, HIDDEN.to_vec())?;
    let field_name = params.required("field")?;
    let field = match field_name.as_str() {
        "service" => TopField::Service,
        "name" => TopField::Name,
        _ => {
            return Err(ApiError::bad_parameter(
                "field",
                "must be `service` or `name`",
            ))
        }
    };
    let limit = params.number("limit", 10, limits.max_page)?;
    params.finish()?;
    let entries = state
        .inner
        .events
        .top(&query, field, limit)
        .await
        .map_err(|error| ApiError::from_clickhouse("top-N", &error))?;
    Ok(Json(Top {
        field: field_name,
        entries: entries
            .into_iter()
            .map(|entry| TopRow {
                value: entry.value,
                count: entry.count,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30s").unwrap(), 30);
        assert_eq!(parse_interval("5m").unwrap(), 300);
        assert_eq!(parse_interval("1h").unwrap(), 3600);
        assert_eq!(parse_interval("1d").unwrap(), 86_400);
        assert_eq!(parse_interval("90").unwrap(), 90);
        for bad in ["", "0s", "h", "1w", "-1s", "1.5h", "99999999999999999999s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_ids_must_be_uuids() {
        assert_eq!(
            parse_event_id("0193A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B").unwrap(),
            "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        );
        assert!(parse_event_id("' OR 1=1 --").is_err());
    }
}
