//! The JSON messages the stream sends. Events are written around the event's JSON
//! ([`ledgerline_schemas::json::event_json`], the shape `/v1/events` answers with); cursors are
//! base64url, so they need no escaping.

use std::collections::BTreeMap;

use axum::extract::ws::Utf8Bytes;
use ledgerline_schemas::Event;
use serde_json::json;

use super::replay::Gap;

pub fn event(cursor: &str, event: &Event) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"event\",\"cursor\":\"{cursor}\",\"event\":{}}}",
        ledgerline_schemas::json::event_json(event)
    ))
}

pub fn subscribed(filter: &BTreeMap<String, Vec<String>>, cursor: &str) -> Utf8Bytes {
    Utf8Bytes::from(json!({"type": "subscribed", "filter": filter, "cursor": cursor}).to_string())
}

pub fn heartbeat(cursor: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"heartbeat\",\"cursor\":\"{cursor}\"}}"
    ))
}

pub fn lagged(dropped: u64, cursor: &str) -> Utf8Bytes {
    Utf8Bytes::from(format!(
        "{{\"type\":\"lagged\",\"dropped\":{dropped},\"cursor\":\"{cursor}\"}}"
    ))
}

pub fn gap(gaps: &[Gap], cursor: &str) -> Utf8Bytes {
    let missed: i64 = gaps.iter().map(|gap| gap.missed).sum();
    Utf8Bytes::from(
        json!({"type": "gap", "missed": missed, "partitions": gaps, "cursor": cursor}).to_string(),
    )
}

pub fn error(code: &str, message: &str) -> Utf8Bytes {
    Utf8Bytes::from(json!({"type": "error", "code": code, "message": message}).to_string())
}
