//! Query-string parameters: every endpoint takes only the parameters it names, each at most
//! once unless it is a list, and answers 400 naming the parameter for anything else. A list
//! is given either repeated (`service=a&service=b`) or comma-separated (`service=a,b`).
//!
//! The event filters are shared by `/v1/events`, `/v1/stats/*` and `/v1/audit/events` (and
//! the live stream): `since`/`until` (RFC 3339, required, `until` after `since`, the range at
//! most `[api.limits] max_range_secs`), the typed filters, and `q`, the search string (see
//! [`crate::search`]). All of them AND together.

use std::collections::BTreeMap;

use base64::Engine as _;
use ledgerline_consumers::projector::queries::{Condition, Cursor, EventQuery, Field, Match};
use ledgerline_schemas::event::{Level, Outcome};
use ledgerline_schemas::Category;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::{ApiError, ApiResult};
use crate::search;

/// The longest value any parameter may have; the search string has its own, smaller limit.
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// The most values a list parameter may have.
pub const MAX_LIST_LEN: usize = 100;

/// The parameters of one request, consumed as the handler reads them.
#[derive(Debug)]
pub struct Params {
    values: BTreeMap<String, Vec<String>>,
}

impl Params {
    /// Parses a raw query string. Malformed percent-encoding is a 400.
    pub fn parse(query: Option<&str>) -> ApiResult<Self> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|error| {
                ApiError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "bad_query_string",
                    format!("the query string cannot be decoded: {error}"),
                )
            })?;
        Self::from_pairs(pairs)
    }

    /// Parameters given as name/value pairs (the live stream's JSON filter messages), under
    /// the same rules as a query string.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> ApiResult<Self> {
        let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in pairs {
            if value.len() > MAX_VALUE_LEN {
                return Err(ApiError::bad_parameter(
                    &printable(&name),
                    format!("longer than {MAX_VALUE_LEN} bytes"),
                ));
            }
            values.entry(name).or_default().push(value);
        }
        Ok(Self { values })
    }

    /// The parameters not read yet, left in place: for echoing a filter back.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<String>> {
        self.values.clone()
    }

    /// A single-valued parameter.
    pub fn one(&mut self, name: &str) -> ApiResult<Option<String>> {
        match self.values.remove(name) {
            None => Ok(None),
            Some(mut values) if values.len() == 1 => Ok(values.pop()),
            Some(_) => Err(ApiError::bad_parameter(name, "given more than once")),
        }
    }

    /// A required single-valued parameter.
    pub fn required(&mut self, name: &str) -> ApiResult<String> {
        self.one(name)?
            .ok_or_else(|| ApiError::bad_parameter(name, "is required"))
    }

    /// A list parameter: repeated, comma-separated, or both; empty items are an error.
    pub fn list(&mut self, name: &str) -> ApiResult<Vec<String>> {
        let mut items = Vec::new();
        for value in self.values.remove(name).unwrap_or_default() {
            for item in value.split(',') {
                if item.is_empty() {
                    return Err(ApiError::bad_parameter(name, "has an empty value"));
                }
                items.push(item.to_owned());
            }
        }
        if items.len() > MAX_LIST_LEN {
            return Err(ApiError::bad_parameter(
                name,
                format!("has more than {MAX_LIST_LEN} values"),
            ));
        }
        Ok(items)
    }

    /// An unsigned integer in `1..=max`.
    pub fn number(&mut self, name: &str, default: u64, max: u64) -> ApiResult<u64> {
        match self.one(name)? {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(value) if (1..=max).contains(&value) => Ok(value),
                _ => Err(ApiError::bad_parameter(
                    name,
                    format!("must be a whole number from 1 to {max}"),
                )),
            },
        }
    }

    /// Refuses whatever the handler did not read, naming it.
    pub fn finish(self) -> ApiResult<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "unknown_parameter",
                format!("unknown parameter `{}`", printable(name)),
            )),
        }
    }
}

/// A parameter name as it can be shown in a message: bounded, control characters escaped.
fn printable(name: &str) -> String {
    let mut shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        shown.push('…');
    }
    shown
}

/// Microseconds since the epoch of an RFC 3339 time.
pub fn parse_time(name: &str, text: &str) -> ApiResult<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        ApiError::bad_parameter(
            name,
            "must be an RFC 3339 time such as 2026-11-30T12:00:00Z",
        )
    })?;
    let micros = time.unix_timestamp_nanos() / 1_000;
    i64::try_from(micros).map_err(|_| ApiError::bad_parameter(name, "is out of range"))
}

/// RFC 3339 text (UTC, microseconds) of a time in microseconds since the epoch.
pub fn format_time(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| micros.to_string())
}

/// The typed filters, their parameter names and the field each sets.
const LIST_FILTERS: &[(&str, Field)] = &[
    ("category", Field::Category),
    ("service", Field::Service),
    ("host", Field::Host),
    ("job_id", Field::JobId),
    ("device_id", Field::DeviceId),
    ("user_id", Field::UserId),
    ("request_id", Field::RequestId),
    ("trace_id", Field::TraceId),
    ("actor", Field::Actor),
    ("action", Field::Action),
    ("target", Field::Target),
    ("outcome", Field::Outcome),
];

/// Reads the event filters shared by search, stats and audit review: the range, the typed
/// filters and `q`. `hidden` is the caller's wall.
pub fn event_query(
    params: &mut Params,
    max_range_secs: u64,
    hidden: Vec<Category>,
) -> ApiResult<EventQuery> {
    let since_us = parse_time("since", &params.required("since")?)?;
    let until_us = parse_time("until", &params.required("until")?)?;
    if until_us <= since_us {
        return Err(ApiError::bad_parameter("until", "must be after `since`"));
    }
    let max_range_us = i64::try_from(max_range_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000);
    if until_us - since_us > max_range_us {
        return Err(ApiError::bad_parameter(
            "until",
            format!("the range from `since` is longer than the limit of {max_range_secs} seconds"),
        ));
    }
    let (min_level, conditions) = filters(params)?;
    Ok(EventQuery {
        since_us,
        until_us,
        min_level,
        conditions,
        hidden,
    })
}

/// Reads the event filters without the range: the typed filters, `level` and `q`, as the
/// minimum level and the conditions (ANDed). Shared by [`event_query`] and the live stream,
/// whose subscriptions take the same filters.
pub fn filters(params: &mut Params) -> ApiResult<(Option<Level>, Vec<Condition>)> {
    let mut conditions = Vec::new();
    for &(name, field) in LIST_FILTERS {
        let values = params.list(name)?;
        if values.is_empty() {
            continue;
        }
        let values = values
            .into_iter()
            .map(|value| normalise(name, field, value))
            .collect::<ApiResult<Vec<_>>>()?;
        conditions.push(Condition {
            field,
            matches: values.into_iter().map(Match::Exact).collect(),
            negated: false,
        });
    }
    let names = params.list("name")?;
    if !names.is_empty() {
        // `name` is a prefix, so `name=user.login` finds `user.login.success` and `.failure`.
        conditions.push(Condition {
            field: Field::Name,
            matches: names.into_iter().map(Match::Prefix).collect(),
            negated: false,
        });
    }
    if let Some(text) = params.one("text")? {
        conditions.push(Condition {
            field: Field::Text,
            matches: vec![Match::Exact(text)],
            negated: false,
        });
    }
    let min_level = match params.one("level")? {
        None => None,
        Some(text) => Some(text.to_ascii_uppercase().parse::<Level>().map_err(|_| {
            ApiError::bad_parameter(
                "level",
                "must be one of trace, debug, info, warn, error, critical (the minimum level)",
            )
        })?),
    };
    if let Some(q) = params.one("q")? {
        let parsed = search::parse(&q).map_err(|error| {
            ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_search",
                format!("parameter `q`: {error}"),
            )
        })?;
        conditions.extend(parsed);
    }
    Ok((min_level, conditions))
}

/// Checks and normalises one typed-filter value: categories lower case, outcomes upper case.
fn normalise(name: &str, field: Field, value: String) -> ApiResult<String> {
    match field {
        Field::Category => {
            let lower = value.to_ascii_lowercase();
            lower.parse::<Category>().map(|_| lower).map_err(|_| {
                ApiError::bad_parameter(
                    name,
                    format!(
                        "`{}` is not a category (expected one of audit, job, connection, system, session)",
                        printable(&value)
                    ),
                )
            })
        }
        Field::Outcome => {
            let upper = value.to_ascii_uppercase();
            upper.parse::<Outcome>().map(|_| upper).map_err(|_| {
                ApiError::bad_parameter(
                    name,
                    format!(
                        "`{}` is not an outcome (expected one of success, failure, denied)",
                        printable(&value)
                    ),
                )
            })
        }
        _ => Ok(value),
    }
}

/// What an opaque cursor holds: the keyset position and a fingerprint of the filters it was
/// issued for, so a cursor used with other filters is refused instead of paging wrongly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorToken {
    /// `occurred_at_us` of the page's last event.
    t: i64,
    /// Its `event_id`.
    e: String,
    /// First 16 hex digits of the filters' SHA-256.
    f: String,
}

fn fingerprint(scope: &str, query: &EventQuery) -> String {
    // `Debug` of the query is a complete, stable rendering of every filter within one build;
    // a cursor from an older build at worst fails to match and is refused.
    let digest = Sha256::digest(format!("{scope}\n{query:?}").as_bytes());
    hex::encode(&digest[..8])
}

/// The opaque text for `cursor` under `query` (`scope` names the endpoint).
pub fn encode_cursor(scope: &str, query: &EventQuery, cursor: &Cursor) -> String {
    let token = CursorToken {
        t: cursor.occurred_at_us,
        e: cursor.event_id.clone(),
        f: fingerprint(scope, query),
    };
    let json = serde_json::to_vec(&token).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

/// The position in an opaque cursor, checked against the filters it must have been issued for.
pub fn decode_cursor(scope: &str, query: &EventQuery, text: &str) -> ApiResult<Cursor> {
    let bad = || ApiError::bad_parameter("cursor", "is not a cursor this API issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad())?;
    let token: CursorToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.f != fingerprint(scope, query) {
        return Err(ApiError::bad_parameter(
            "cursor",
            "was issued for other filters; send the same filters as the first page",
        ));
    }
    Ok(Cursor {
        occurred_at_us: token.t,
        event_id: token.e,
    })
}

/// The position an opaque cursor holds, `(occurred_at_us, event_id)`, without checking its
/// filters: for the audit trail's record of which page was read.
pub fn cursor_position(text: &str) -> Option<(i64, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let token: CursorToken = serde_json::from_slice(&bytes).ok()?;
    Some((token.t, token.e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(text: &str) -> ApiResult<EventQuery> {
        let mut params = Params::parse(Some(text))?;
        let query = event_query(&mut params, 86_400, vec![Category::Audit])?;
        params.finish()?;
        Ok(query)
    }

    const RANGE: &str = "since=2026-11-30T00:00:00Z&until=2026-11-30T01:00:00Z";

    #[test]
    fn filters_parse_into_conditions() {
        let q = query(&format!(
            "{RANGE}&service=a,b&service=c&level=warn&name=user.login&outcome=denied&q=host:h1"
        ))
        .unwrap();
        assert_eq!(q.since_us, 1_795_996_800_000_000);
        assert_eq!(q.until_us - q.since_us, 3_600_000_000);
        assert_eq!(q.min_level, Some(Level::Warn));
        assert_eq!(q.hidden, vec![Category::Audit]);
        assert!(q.conditions.contains(&Condition {
            field: Field::Service,
            matches: vec![
                Match::Exact("a".into()),
                Match::Exact("b".into()),
                Match::Exact("c".into())
            ],
            negated: false,
        }));
        assert!(q.conditions.contains(&Condition {
            field: Field::Outcome,
            matches: vec![Match::Exact("DENIED".into())],
            negated: false,
        }));
        assert!(q.conditions.contains(&Condition {
            field: Field::Name,
            matches: vec![Match::Prefix("user.login".into())],
            negated: false,
        }));
        assert_eq!(q.conditions.len(), 4);
    }

    fn message(result: ApiResult<EventQuery>) -> String {
        let error = result.unwrap_err();
        assert_eq!(error.status, 400, "{error}");
        error.message
    }

    #[test]
    fn each_bad_parameter_is_named() {
        assert!(message(query("until=2026-11-30T01:00:00Z")).contains("`since`"));
        assert!(message(query("since=yesterday&until=2026-11-30T01:00:00Z")).contains("`since`"));
        assert!(message(query(
            "since=2026-11-30T02:00:00Z&until=2026-11-30T01:00:00Z"
        ))
        .contains("`until`"));
        assert!(message(query(
            "since=2026-11-01T00:00:00Z&until=2026-11-30T01:00:00Z"
        ))
        .contains("longer than the limit"));
        assert!(message(query(&format!("{RANGE}&level=loud"))).contains("`level`"));
        assert!(message(query(&format!("{RANGE}&category=audits"))).contains("`category`"));
        assert!(message(query(&format!("{RANGE}&outcome=maybe"))).contains("`outcome`"));
        assert!(message(query(&format!("{RANGE}&service="))).contains("`service`"));
        assert!(message(query(&format!("{RANGE}&text=a&text=b"))).contains("more than once"));
        assert!(message(query(&format!("{RANGE}&servce=x"))).contains("`servce`"));
        assert!(message(query(&format!("{RANGE}&q=servce:x"))).contains("`q`"));
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_filters() {
        let q = query(RANGE).unwrap();
        let cursor = Cursor {
            occurred_at_us: 5,
            event_id: "e".into(),
        };
        let text = encode_cursor("events", &q, &cursor);
        assert_eq!(decode_cursor("events", &q, &text).unwrap(), cursor);
        let other = query(&format!("{RANGE}&service=x")).unwrap();
        assert!(decode_cursor("events", &other, &text)
            .unwrap_err()
            .message
            .contains("other filters"));
        assert!(decode_cursor("audit", &q, &text).is_err());
        assert!(decode_cursor("events", &q, "not a cursor").is_err());
        assert!(decode_cursor("events", &q, "").is_err());
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(
            format_time(1_795_996_800_000_001),
            "2026-11-30T00:00:00.000001Z"
        );
        assert_eq!(
            parse_time("since", "2026-11-30T01:00:00+01:00").unwrap(),
            1_795_996_800_000_000
        );
    }
}
