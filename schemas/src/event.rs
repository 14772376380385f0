//! The event model: Rust mirrors of the Avro records in `schemas/avro/` (the current version of
//! each). Field names, order and types match the `.avsc` files; `tests::types_match_the_avsc_files`
//! fails when the two drift apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::symbols::symbols;
use crate::Category;

/// Avro's `uuid` logical type annotates a string, but apache-avro's serializer is not
/// "human readable", so `Uuid`'s own serde impl would write 16 raw bytes. Always use the text.
mod uuid_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &uuid::Uuid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&id.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<uuid::Uuid, D::Error> {
        let text = String::deserialize(deserializer)?;
        uuid::Uuid::parse_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7 assigned by the producer: time-ordered, and the dedup key downstream.
    #[serde(with = "uuid_as_string")]
    pub event_id: uuid::Uuid,
    /// Microseconds since the Unix epoch, UTC.
    pub occurred_at: i64,
    pub category: Category,
    /// Dotted name: `user.login.success`, `job.progress`, `device.connect`.
    pub name: String,
    pub level: Level,
    pub service: String,
    pub service_version: String,
    pub host: String,
    /// Human-readable; uses names, never ids or secrets. Ids go in `attributes`.
    pub message: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub request_id: Option<String>,
    /// String ids and fields: `job_id`, `device_id`, `user_id`...
    pub attributes: BTreeMap<String, String>,
}

symbols! {
    /// Severity, lowest first.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
    pub enum Level("level") {
        Trace = "TRACE",
        Debug = "DEBUG",
        Info = "INFO",
        Warn = "WARN",
        Error = "ERROR",
        Critical = "CRITICAL",
    }
}

symbols! {
    /// How an audited action or a connection step went.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Outcome("outcome") {
        Success = "SUCCESS",
        Failure = "FAILURE",
        Denied = "DENIED",
    }
}

/// Who did what to what, and how it went. Mandatory: name, actor id, source ip, outcome,
/// details (see [`Event::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub envelope: Envelope,
    pub actor: Actor,
    pub action: String,
    pub target: Option<Target>,
    pub outcome: Outcome,
    pub reason: Option<String>,
    /// A JSON object, as text.
    pub details: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: String,
    /// `user`, `service`, `device`...
    pub kind: String,
    /// Source address of the request.
    pub ip: String,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub kind: String,
    pub id: String,
}

symbols! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum JobStatus("job status") {
        Queued = "QUEUED",
        Running = "RUNNING",
        Completed = "COMPLETED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
}

/// Job lifecycle and progress (schema v2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub envelope: Envelope,
    pub job_id: String,
    pub job_type: String,
    pub job_name: String,
    pub status: JobStatus,
    /// Percent complete, 0-100.
    pub progress: i32,
    /// A JSON object, as text.
    pub details: String,
    /// Added in v2; v1 data reads as `None`.
    pub parent_job_id: Option<String>,
}

symbols! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum ConnectionPhase("connection phase") {
        Connect = "CONNECT",
        Authenticate = "AUTHENTICATE",
        Command = "COMMAND",
        Disconnect = "DISCONNECT",
        Commit = "COMMIT",
        Save = "SAVE",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionEvent {
    pub envelope: Envelope,
    pub device_id: String,
    pub device_name: String,
    pub job_id: Option<String>,
    pub phase: ConnectionPhase,
    pub outcome: Outcome,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    pub envelope: Envelope,
    /// Module path.
    pub target: String,
    pub file: Option<String>,
    pub line: Option<i32>,
    pub fields: BTreeMap<String, String>,
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub message: String,
    /// Causes, outermost first.
    pub chain: Vec<String>,
}

symbols! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Direction("direction") {
        Input = "INPUT",
        Output = "OUTPUT",
    }
}

/// Live device session I/O: fanned out, never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub envelope: Envelope,
    pub device_id: String,
    pub job_id: Option<String>,
    pub direction: Direction,
    pub data: String,
}

/// Any event, tagged by category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Audit(AuditEvent),
    Job(JobEvent),
    Connection(ConnectionEvent),
    System(SystemEvent),
    Session(SessionEvent),
}

/// An event that parsed but breaks a rule of the model; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {category} event: `{field}` {reason}")]
pub struct ValidationError {
    pub category: Category,
    pub field: &'static str,
    pub reason: String,
}

impl Event {
    pub fn category(&self) -> Category {
        match self {
            Event::Audit(_) => Category::Audit,
            Event::Job(_) => Category::Job,
            Event::Connection(_) => Category::Connection,
            Event::System(_) => Category::System,
            Event::Session(_) => Category::Session,
        }
    }

    pub fn envelope(&self) -> &Envelope {
        match self {
            Event::Audit(event) => &event.envelope,
            Event::Job(event) => &event.envelope,
            Event::Connection(event) => &event.envelope,
            Event::System(event) => &event.envelope,
            Event::Session(event) => &event.envelope,
        }
    }

    /// The Kafka key: events with the same key keep their order (one partition).
    pub fn partition_key(&self) -> &str {
        match self {
            Event::Audit(event) => &event.actor.id,
            Event::Job(event) => &event.job_id,
            Event::Connection(event) => &event.device_id,
            Event::System(event) => &event.envelope.service,
            Event::Session(event) => &event.device_id,
        }
    }

    /// Rules the Avro types cannot express. Producers check before sending; consumers send
    /// violations to the dead-letter topic.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let category = self.category();
        let fail = |field: &'static str, reason: &str| {
            Err(ValidationError {
                category,
                field,
                reason: reason.to_owned(),
            })
        };
        let envelope = self.envelope();
        if envelope.category != category {
            return fail("envelope.category", "does not match the event's category");
        }
        if envelope.event_id.is_nil() {
            return fail("envelope.event_id", "must not be nil");
        }
        if envelope.occurred_at <= 0 {
            return fail("envelope.occurred_at", "must be after the Unix epoch");
        }
        if envelope.name.trim().is_empty() {
            return fail("envelope.name", "must not be empty");
        }
        if envelope.service.trim().is_empty() {
            return fail("envelope.service", "must not be empty");
        }
        match self {
            Event::Audit(event) => {
                if event.actor.id.trim().is_empty() {
                    return fail("actor.id", "must not be empty");
                }
                if event.actor.ip.trim().is_empty() {
                    return fail("actor.ip", "must not be empty");
                }
                if event.action.trim().is_empty() {
                    return fail("action", "must not be empty");
                }
                if !is_json_object(&event.details) {
                    return fail("details", "must be a JSON object");
                }
            }
            Event::Job(event) => {
                if event.job_id.trim().is_empty() {
                    return fail("job_id", "must not be empty");
                }
                if !(0..=100).contains(&event.progress) {
                    return fail("progress", "must be between 0 and 100");
                }
                if !is_json_object(&event.details) {
                    return fail("details", "must be a JSON object");
                }
            }
            Event::Connection(event) => {
                if event.device_id.trim().is_empty() {
                    return fail("device_id", "must not be empty");
                }
            }
            Event::System(event) => {
                if event.target.trim().is_empty() {
                    return fail("target", "must not be empty");
                }
            }
            Event::Session(event) => {
                if event.device_id.trim().is_empty() {
                    return fail("device_id", "must not be empty");
                }
            }
        }
        Ok(())
    }
}

fn is_json_object(text: &str) -> bool {
    matches!(
        serde_json::from_str::<serde_json::Value>(text),
        Ok(serde_json::Value::Object(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples;

    #[test]
    fn samples_are_valid() {
        for category in Category::ALL {
            samples::event(category, 1).validate().unwrap();
        }
    }

    #[test]
    fn mandatory_audit_fields_are_named() {
        type Breaker = fn(&mut AuditEvent);
        let cases: [(&str, Breaker); 5] = [
            ("envelope.name", |e| e.envelope.name.clear()),
            ("actor.id", |e| e.actor.id = " ".to_owned()),
            ("actor.ip", |e| e.actor.ip.clear()),
            ("details", |e| e.details = "not json".to_owned()),
            ("envelope.occurred_at", |e| e.envelope.occurred_at = 0),
        ];
        for (field, break_it) in cases {
            let mut event = samples::audit(1);
            break_it(&mut event);
            let error = Event::Audit(event).validate().unwrap_err();
            assert_eq!(error.field, field);
            assert!(error.to_string().contains(field), "{error}");
        }
    }

    #[test]
    fn job_progress_and_category_are_checked() {
        let mut job = samples::job(1);
        job.progress = 101;
        assert_eq!(Event::Job(job).validate().unwrap_err().field, "progress");
        let mut job = samples::job(1);
        job.envelope.category = Category::Audit;
        assert_eq!(
            Event::Job(job).validate().unwrap_err().field,
            "envelope.category"
        );
    }

    #[test]
    fn partition_keys_follow_the_architecture() {
        assert_eq!(samples::event(Category::Audit, 3).partition_key(), "user-3");
        assert_eq!(samples::event(Category::Job, 3).partition_key(), "job-3");
        assert_eq!(
            samples::event(Category::Connection, 3).partition_key(),
            "device-3"
        );
        assert_eq!(
            samples::event(Category::System, 3).partition_key(),
            "sample-service"
        );
        assert_eq!(
            samples::event(Category::Session, 3).partition_key(),
            "device-3"
        );
    }

    /// The symbols of the Avro enum `name` wherever it appears in `schema`.
    fn avro_symbols(schema: &serde_json::Value, name: &str) -> Option<Vec<String>> {
        match schema {
            serde_json::Value::Object(fields) => {
                if fields.get("type").and_then(|t| t.as_str()) == Some("enum")
                    && fields.get("name").and_then(|n| n.as_str()) == Some(name)
                {
                    let symbols = fields.get("symbols")?.as_array()?;
                    return symbols
                        .iter()
                        .map(|s| Some(s.as_str()?.to_owned()))
                        .collect();
                }
                fields.values().find_map(|inner| avro_symbols(inner, name))
            }
            serde_json::Value::Array(items) => {
                items.iter().find_map(|inner| avro_symbols(inner, name))
            }
            _ => None,
        }
    }

    #[test]
    fn enum_texts_are_the_avro_symbols_and_round_trip() {
        fn check<T>(category: Category, name: &str, all: &[T], as_str: fn(T) -> &'static str)
        where
            T: Copy + std::fmt::Debug + PartialEq + Serialize + std::str::FromStr,
            T::Err: std::fmt::Debug,
        {
            let schema: serde_json::Value =
                serde_json::from_str(crate::avro::current(category).text).unwrap();
            let expected = avro_symbols(&schema, name).unwrap();
            let texts: Vec<&str> = all.iter().map(|value| as_str(*value)).collect();
            assert_eq!(texts, expected, "{name}");
            for &value in all {
                let text = as_str(value);
                assert_eq!(text.parse::<T>().unwrap(), value);
                assert_eq!(serde_json::to_value(value).unwrap(), text, "serde agrees");
            }
        }
        check(Category::Audit, "Level", Level::ALL, Level::as_str);
        check(Category::Audit, "Outcome", Outcome::ALL, Outcome::as_str);
        check(
            Category::Job,
            "JobStatus",
            JobStatus::ALL,
            JobStatus::as_str,
        );
        check(
            Category::Connection,
            "ConnectionPhase",
            ConnectionPhase::ALL,
            ConnectionPhase::as_str,
        );
        check(
            Category::Session,
            "Direction",
            Direction::ALL,
            Direction::as_str,
        );
    }

    #[test]
    fn unknown_texts_name_the_enum_and_the_choices() {
        let error = "info".parse::<Level>().unwrap_err().to_string();
        assert_eq!(
            error,
            "unknown level `info` (expected one of TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL)"
        );
    }
}
