//! The one JSON shape of an event, used by every API answer and the live stream alike, so a
//! client parses an event the same way wherever it came from.
//!
//! Flat: the envelope's fields at the top level (`occurred_at` twice: RFC 3339 UTC text with
//! microseconds for people, `occurred_at_us` for sorting and cursors), then the category's
//! own fields at the top level too. Details stored as JSON text come back as JSON values (the
//! raw text when it does not parse), so clients do not parse twice.

use serde_json::{json, Map, Value};

use crate::event::{AuditEvent, ConnectionEvent, Envelope, JobEvent, SessionEvent, SystemEvent};
use crate::Event;

/// `event` as the API and the stream show it; see the module documentation.
pub fn event_json(event: &Event) -> Value {
    let mut object = envelope_json(event.envelope());
    let own = match event {
        Event::Audit(audit) => audit_json(audit),
        Event::Job(job) => job_json(job),
        Event::Connection(connection) => connection_json(connection),
        Event::System(system) => system_json(system),
        Event::Session(session) => session_json(session),
    };
    if let Value::Object(own) = own {
        object.extend(own);
    }
    Value::Object(object)
}

fn envelope_json(envelope: &Envelope) -> Map<String, Value> {
    let value = json!({
        "event_id": envelope.event_id.hyphenated().to_string(),
        "occurred_at": rfc3339_micros(envelope.occurred_at),
        "occurred_at_us": envelope.occurred_at,
        "category": envelope.category.as_str(),
        "name": envelope.name,
        "level": envelope.level.as_str(),
        "service": envelope.service,
        "service_version": envelope.service_version,
        "host": envelope.host,
        "message": envelope.message,
        "trace_id": envelope.trace_id,
        "span_id": envelope.span_id,
        "request_id": envelope.request_id,
        "attributes": envelope.attributes,
    });
    match value {
        Value::Object(object) => object,
        _ => Map::new(),
    }
}

fn audit_json(audit: &AuditEvent) -> Value {
    json!({
        "actor": {
            "id": audit.actor.id,
            "kind": audit.actor.kind,
            "ip": audit.actor.ip,
            "user_agent": audit.actor.user_agent,
        },
        "action": audit.action,
        "target": audit.target.as_ref().map(|target| json!({"kind": target.kind, "id": target.id})),
        "outcome": audit.outcome.as_str(),
        "reason": audit.reason,
        "details": details_json(&audit.details),
    })
}

fn job_json(job: &JobEvent) -> Value {
    json!({
        "job_id": job.job_id,
        "job_type": job.job_type,
        "job_name": job.job_name,
        "status": job.status.as_str(),
        "progress": job.progress,
        "details": details_json(&job.details),
        "parent_job_id": job.parent_job_id,
    })
}

fn connection_json(connection: &ConnectionEvent) -> Value {
    json!({
        "device_id": connection.device_id,
        "device_name": connection.device_name,
        "job_id": connection.job_id,
        "phase": connection.phase.as_str(),
        "outcome": connection.outcome.as_str(),
        "duration_ms": connection.duration_ms,
        "error": connection.error,
    })
}

fn system_json(system: &SystemEvent) -> Value {
    json!({
        "target": system.target,
        "file": system.file,
        "line": system.line,
        "fields": system.fields,
        "error": system.error.as_ref().map(|error| json!({"message": error.message, "chain": error.chain})),
    })
}

fn session_json(session: &SessionEvent) -> Value {
    json!({
        "device_id": session.device_id,
        "job_id": session.job_id,
        "direction": session.direction.as_str(),
        "data": session.data,
    })
}

/// Details are a JSON object as text; shown as that object, or as the text when it is not
/// JSON (validation requires an object, but a reader must not fail on an old event).
fn details_json(details: &str) -> Value {
    serde_json::from_str(details).unwrap_or_else(|_| Value::String(details.to_owned()))
}

/// Microseconds since the epoch as RFC 3339 UTC text with six fraction digits,
/// `2026-11-30T22:00:00.123456Z`. Written by hand (days to civil date, Howard Hinnant's
/// algorithm) rather than pulling a date crate into the lowest crate for one format. Years
/// outside 0000–9999 are written with as many digits as they need.
pub fn rfc3339_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3_600,
        second_of_day % 3_600 / 60,
        second_of_day % 60
    )
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use crate::samples;
    use crate::Category;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(1), "1970-01-01T00:00:00.000001Z");
        assert_eq!(rfc3339_micros(999_999), "1970-01-01T00:00:00.999999Z");
        assert_eq!(
            rfc3339_micros(1_796_076_000_123_456),
            "2026-11-30T22:00:00.123456Z"
        );
        // Leap days, the end of a leap year, the century rules.
        assert_eq!(
            rfc3339_micros(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339_micros(1_735_689_599_999_999),
            "2024-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339_micros(4_107_542_400_000_000),
            "2100-03-01T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339_micros(253_402_300_799_999_999),
            "9999-12-31T23:59:59.999999Z"
        );
        // Before the epoch the fraction still counts forwards from the second.
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
        // The extremes do not overflow.
        assert!(rfc3339_micros(i64::MAX).ends_with(".775807Z"));
        assert!(rfc3339_micros(i64::MIN).ends_with(".224192Z"));
    }

    #[test]
    fn every_category_is_flat_with_its_own_fields() {
        let own_fields: [(Category, &[&str]); 5] = [
            (
                Category::Audit,
                &["actor", "action", "target", "outcome", "reason", "details"],
            ),
            (
                Category::Job,
                &[
                    "job_id",
                    "job_type",
                    "job_name",
                    "status",
                    "progress",
                    "details",
                    "parent_job_id",
                ],
            ),
            (
                Category::Connection,
                &[
                    "device_id",
                    "device_name",
                    "job_id",
                    "phase",
                    "outcome",
                    "duration_ms",
                    "error",
                ],
            ),
            (
                Category::System,
                &["target", "file", "line", "fields", "error"],
            ),
            (
                Category::Session,
                &["device_id", "job_id", "direction", "data"],
            ),
        ];
        let envelope_fields = [
            "event_id",
            "occurred_at",
            "occurred_at_us",
            "category",
            "name",
            "level",
            "service",
            "service_version",
            "host",
            "message",
            "trace_id",
            "span_id",
            "request_id",
            "attributes",
        ];
        for (category, own) in own_fields {
            let event = samples::event(category, 7);
            let json = event_json(&event);
            let object = json.as_object().unwrap();
            let mut expected: Vec<&str> = envelope_fields.iter().chain(own).copied().collect();
            expected.sort_unstable();
            let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
            keys.sort_unstable();
            assert_eq!(keys, expected, "{category}");
            assert_eq!(json["category"], category.as_str(), "{category}");
            assert_eq!(json["occurred_at"], "2026-11-22T00:00:00.007000Z");
            assert_eq!(json["occurred_at_us"], 1_795_305_600_007_000_i64);
            assert_eq!(json["level"], "INFO");
            assert_eq!(json["event_id"], event.envelope().event_id.to_string());
            assert_eq!(json["attributes"]["user_id"], "user-0");
            assert_eq!(json["request_id"], "req-7");
        }
    }

    #[test]
    fn category_fields_carry_their_values() {
        let audit = event_json(&Event::Audit(samples::audit(1)));
        assert_eq!(
            audit["actor"],
            json!({"id": "user-1", "kind": "user", "ip": "192.0.2.10", "user_agent": "curl/8.5"})
        );
        assert_eq!(
            audit["target"],
            json!({"kind": "session", "id": "session-1"})
        );
        assert_eq!(audit["outcome"], "SUCCESS");
        assert_eq!(audit["details"], json!({"method": "password+totp"}));

        let mut no_target = samples::audit(1);
        no_target.target = None;
        no_target.details = "not json".to_owned();
        no_target.envelope.request_id = None;
        let audit = event_json(&Event::Audit(no_target));
        assert_eq!(audit["target"], Value::Null);
        assert_eq!(audit["details"], "not json");
        assert_eq!(audit["request_id"], Value::Null);

        let job = event_json(&Event::Job(samples::job(3)));
        assert_eq!(job["status"], "RUNNING");
        assert_eq!(job["progress"], 3);
        assert_eq!(job["details"], json!({"devices_done": 3}));

        let connection = event_json(&Event::Connection(samples::connection(2)));
        assert_eq!(connection["phase"], "AUTHENTICATE");
        assert_eq!(connection["duration_ms"], 42);

        let system = event_json(&Event::System(samples::system(2)));
        assert_eq!(system["target"], "netraven::worker");
        assert_eq!(system["fields"], json!({"attempt": "2"}));
        assert_eq!(
            system["error"],
            json!({"message": "connection reset", "chain": ["io error", "broken pipe"]})
        );
        let mut no_error = samples::system(2);
        no_error.error = None;
        assert_eq!(event_json(&Event::System(no_error))["error"], Value::Null);

        let session = event_json(&Event::Session(samples::session(2)));
        assert_eq!(session["direction"], "OUTPUT");
        assert_eq!(session["data"], "show running-config\r\n");
    }
}
