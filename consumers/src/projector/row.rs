//! Events as ClickHouse rows and back (the inserts that send them are in [`super::insert`]).
//!
//! Every field of every stored category has a column; [`EventRow::to_event`] turns a row back
//! into the event it came from, and the unit tests check that round trip for every category,
//! so a field added to the model without a column fails here. Maps (`attributes`, system
//! `fields`) become parallel key and value arrays sorted by key, since 18.16 has no `Map`.
//! Enum values are stored as their Avro symbols (`INFO`, `SUCCESS`, `RUNNING`, `CONNECT`);
//! the category is stored as its lower-case name (`job`), the same as its topic suffix.

use std::collections::BTreeMap;

use clickhouse::Row;
use ledgerline_schemas::event::{
    Actor, AuditEvent, ConnectionEvent, Envelope, ErrorInfo, JobEvent, Outcome, SystemEvent, Target,
};
use ledgerline_schemas::{Category, Event};
use serde::{Deserialize, Serialize};

use crate::clickhouse::{ClickHouseError, Result};

/// One row of `events`. Fields are in the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct EventRow {
    pub event_id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub occurred_at_us: i64,
    /// UTC day of `occurred_at_us`, in days since 1970-01-01 (ClickHouse `Date`).
    pub occurred_date: u16,
    /// Lower-case category name: `audit`, `job`, `connection`, `system`.
    pub category: String,
    pub name: String,
    pub level: String,
    pub service: String,
    pub service_version: String,
    pub host: String,
    pub message: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub request_id: Option<String>,
    /// Attribute keys, sorted; `attr_values[i]` belongs to `attr_keys[i]`.
    pub attr_keys: Vec<String>,
    pub attr_values: Vec<String>,
    // audit
    pub actor_id: Option<String>,
    pub actor_kind: Option<String>,
    pub actor_ip: Option<String>,
    pub actor_user_agent: Option<String>,
    pub action: Option<String>,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    /// Audit and connection events.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// JSON object as text: audit and job events.
    pub details: Option<String>,
    // job (job_id also for connection events)
    pub job_id: Option<String>,
    pub job_type: Option<String>,
    pub job_name: Option<String>,
    pub job_status: Option<String>,
    pub progress: Option<i32>,
    pub parent_job_id: Option<String>,
    // connection
    pub device_id: Option<String>,
    pub device_name: Option<String>,
    pub phase: Option<String>,
    pub duration_ms: Option<i64>,
    /// A connection's error, or a system event's error message.
    pub error: Option<String>,
    // system
    /// The system event's `target` (module path).
    pub module: Option<String>,
    pub file: Option<String>,
    pub line: Option<i32>,
    /// System event fields, sorted by key, as parallel arrays.
    pub field_keys: Vec<String>,
    pub field_values: Vec<String>,
    /// Causes of a system event's error, outermost first.
    pub error_chain: Vec<String>,
    // where the row came from
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Seconds since the Unix epoch (`DateTime('UTC')`); the same for every row of an insert.
    pub ingested_at: u32,
}

/// One row of `job_status`: the state a job event reported.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct JobStatusRow {
    pub job_id: String,
    pub job_type: String,
    pub job_name: String,
    /// Avro symbol: `QUEUED`, `RUNNING`, `COMPLETED`, `FAILED`, `CANCELLED`.
    pub status: String,
    pub progress: i32,
    /// JSON object as text.
    pub details: String,
    pub service: String,
    pub event_id: String,
    pub occurred_at_us: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When the projector stored the row, seconds since the Unix epoch.
    pub updated_at: u32,
}

/// The `events` row for `event`, read from `topic`/`partition` at `offset`. `None` for session
/// events, which are live-only and never stored. See [`into_event_row`] to move rather than
/// copy the event's contents.
pub fn event_row(
    event: &Event,
    topic: &str,
    partition: i32,
    offset: i64,
    ingested_at: u32,
) -> Option<EventRow> {
    into_event_row(event.clone(), topic, partition, offset, ingested_at)
}

/// [`event_row`], moving the event's strings into the row: what the projector does with each
/// event it stores, so that no field is copied.
pub fn into_event_row(
    event: Event,
    topic: &str,
    partition: i32,
    offset: i64,
    ingested_at: u32,
) -> Option<EventRow> {
    let base = |envelope: Envelope| {
        EventRow::envelope_only(envelope, topic, partition, offset, ingested_at)
    };
    let row = match event {
        Event::Audit(AuditEvent {
            envelope,
            actor,
            action,
            target,
            outcome,
            reason,
            details,
        }) => EventRow {
            actor_id: Some(actor.id),
            actor_kind: Some(actor.kind),
            actor_ip: Some(actor.ip),
            actor_user_agent: actor.user_agent,
            action: Some(action),
            target_kind: target.as_ref().map(|target| target.kind.clone()),
            target_id: target.map(|target| target.id),
            outcome: Some(outcome.as_str().to_owned()),
            reason,
            details: Some(details),
            ..base(envelope)
        },
        Event::Job(JobEvent {
            envelope,
            job_id,
            job_type,
            job_name,
            status,
            progress,
            details,
            parent_job_id,
        }) => EventRow {
            job_id: Some(job_id),
            job_type: Some(job_type),
            job_name: Some(job_name),
            job_status: Some(status.as_str().to_owned()),
            progress: Some(progress),
            details: Some(details),
            parent_job_id,
            ..base(envelope)
        },
        Event::Connection(ConnectionEvent {
            envelope,
            device_id,
            device_name,
            job_id,
            phase,
            outcome,
            duration_ms,
            error,
        }) => EventRow {
            device_id: Some(device_id),
            device_name: Some(device_name),
            job_id,
            phase: Some(phase.as_str().to_owned()),
            outcome: Some(outcome.as_str().to_owned()),
            duration_ms,
            error,
            ..base(envelope)
        },
        Event::System(SystemEvent {
            envelope,
            target,
            file,
            line,
            fields,
            error,
        }) => {
            let (field_keys, field_values) = fields.into_iter().unzip();
            let (error, error_chain) = match error {
                Some(error) => (Some(error.message), error.chain),
                None => (None, Vec::new()),
            };
            EventRow {
                module: Some(target),
                file,
                line,
                field_keys,
                field_values,
                error,
                error_chain,
                ..base(envelope)
            }
        }
        Event::Session(_) => return None,
    };
    Some(row)
}

/// The `job_status` row for a job event; `None` for every other category.
pub fn job_status_row(
    event: &Event,
    topic: &str,
    partition: i32,
    offset: i64,
    ingested_at: u32,
) -> Option<JobStatusRow> {
    let Event::Job(job) = event else {
        return None;
    };
    Some(JobStatusRow {
        job_id: job.job_id.clone(),
        job_type: job.job_type.clone(),
        job_name: job.job_name.clone(),
        status: job.status.as_str().to_owned(),
        progress: job.progress,
        details: job.details.clone(),
        service: job.envelope.service.clone(),
        event_id: job.envelope.event_id.hyphenated().to_string(),
        occurred_at_us: job.envelope.occurred_at,
        topic: topic.to_owned(),
        partition,
        offset,
        updated_at: ingested_at,
    })
}

impl EventRow {
    /// The envelope and bookkeeping columns, every category column empty.
    fn envelope_only(
        envelope: Envelope,
        topic: &str,
        partition: i32,
        offset: i64,
        ingested_at: u32,
    ) -> Self {
        let (attr_keys, attr_values) = envelope.attributes.into_iter().unzip();
        Self {
            event_id: envelope.event_id.hyphenated().to_string(),
            occurred_at_us: envelope.occurred_at,
            occurred_date: utc_day(envelope.occurred_at),
            category: envelope.category.as_str().to_owned(),
            name: envelope.name,
            level: envelope.level.as_str().to_owned(),
            service: envelope.service,
            service_version: envelope.service_version,
            host: envelope.host,
            message: envelope.message,
            trace_id: envelope.trace_id,
            span_id: envelope.span_id,
            request_id: envelope.request_id,
            attr_keys,
            attr_values,
            actor_id: None,
            actor_kind: None,
            actor_ip: None,
            actor_user_agent: None,
            action: None,
            target_kind: None,
            target_id: None,
            outcome: None,
            reason: None,
            details: None,
            job_id: None,
            job_type: None,
            job_name: None,
            job_status: None,
            progress: None,
            parent_job_id: None,
            device_id: None,
            device_name: None,
            phase: None,
            duration_ms: None,
            error: None,
            module: None,
            file: None,
            line: None,
            field_keys: Vec::new(),
            field_values: Vec::new(),
            error_chain: Vec::new(),
            topic: topic.to_owned(),
            partition,
            offset,
            ingested_at,
        }
    }

    /// The event this row was made from, so readers get the typed model back rather than
    /// columns. Fails, naming the column, on a row the projector could not have written.
    pub fn to_event(&self) -> Result<Event> {
        let category: Category = self
            .category
            .parse()
            .map_err(|_| self.invalid("category", "is not a category"))?;
        let envelope = Envelope {
            event_id: uuid::Uuid::parse_str(&self.event_id)
                .map_err(|_| self.invalid("event_id", "is not a uuid"))?,
            occurred_at: self.occurred_at_us,
            category,
            name: self.name.clone(),
            level: self
                .level
                .parse()
                .map_err(|_| self.invalid("level", "is not a level"))?,
            service: self.service.clone(),
            service_version: self.service_version.clone(),
            host: self.host.clone(),
            message: self.message.clone(),
            trace_id: self.trace_id.clone(),
            span_id: self.span_id.clone(),
            request_id: self.request_id.clone(),
            attributes: self.zip(&self.attr_keys, &self.attr_values, "attr_values")?,
        };
        let event = match category {
            Category::Audit => Event::Audit(AuditEvent {
                envelope,
                actor: Actor {
                    id: self.required(&self.actor_id, "actor_id")?,
                    kind: self.required(&self.actor_kind, "actor_kind")?,
                    ip: self.required(&self.actor_ip, "actor_ip")?,
                    user_agent: self.actor_user_agent.clone(),
                },
                action: self.required(&self.action, "action")?,
                target: match (&self.target_kind, &self.target_id) {
                    (Some(kind), Some(id)) => Some(Target {
                        kind: kind.clone(),
                        id: id.clone(),
                    }),
                    (None, None) => None,
                    _ => return Err(self.invalid("target_id", "is set without target_kind")),
                },
                outcome: self.outcome()?,
                reason: self.reason.clone(),
                details: self.required(&self.details, "details")?,
            }),
            Category::Job => Event::Job(JobEvent {
                envelope,
                job_id: self.required(&self.job_id, "job_id")?,
                job_type: self.required(&self.job_type, "job_type")?,
                job_name: self.required(&self.job_name, "job_name")?,
                status: self
                    .job_status
                    .as_deref()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| self.invalid("job_status", "is not a job status"))?,
                progress: self
                    .progress
                    .ok_or_else(|| self.invalid("progress", "is null"))?,
                details: self.required(&self.details, "details")?,
                parent_job_id: self.parent_job_id.clone(),
            }),
            Category::Connection => Event::Connection(ConnectionEvent {
                envelope,
                device_id: self.required(&self.device_id, "device_id")?,
                device_name: self.required(&self.device_name, "device_name")?,
                job_id: self.job_id.clone(),
                phase: self
                    .phase
                    .as_deref()
                    .and_then(|text| text.parse().ok())
                    .ok_or_else(|| self.invalid("phase", "is not a connection phase"))?,
                outcome: self.outcome()?,
                duration_ms: self.duration_ms,
                error: self.error.clone(),
            }),
            Category::System => Event::System(SystemEvent {
                envelope,
                target: self.required(&self.module, "module")?,
                file: self.file.clone(),
                line: self.line,
                fields: self.zip(&self.field_keys, &self.field_values, "field_values")?,
                error: match &self.error {
                    Some(message) => Some(ErrorInfo {
                        message: message.clone(),
                        chain: self.error_chain.clone(),
                    }),
                    None if self.error_chain.is_empty() => None,
                    None => return Err(self.invalid("error_chain", "is set without error")),
                },
            }),
            Category::Session => {
                return Err(self.invalid("category", "is session, which is never stored"))
            }
        };
        Ok(event)
    }

    fn invalid(&self, column: &'static str, reason: &str) -> ClickHouseError {
        ClickHouseError::InvalidRow {
            event_id: self.event_id.clone(),
            column,
            reason: reason.to_owned(),
        }
    }

    fn required(&self, value: &Option<String>, column: &'static str) -> Result<String> {
        value.clone().ok_or_else(|| self.invalid(column, "is null"))
    }

    fn outcome(&self) -> Result<Outcome> {
        self.outcome
            .as_deref()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| self.invalid("outcome", "is not an outcome"))
    }

    fn zip(
        &self,
        keys: &[String],
        values: &[String],
        column: &'static str,
    ) -> Result<BTreeMap<String, String>> {
        if keys.len() != values.len() {
            return Err(self.invalid(column, "is not as long as its keys"));
        }
        Ok(keys.iter().cloned().zip(values.iter().cloned()).collect())
    }
}

/// Days since 1970-01-01 of a UTC timestamp in microseconds, clamped to `Date`'s range.
fn utc_day(occurred_at_us: i64) -> u16 {
    let days = occurred_at_us.div_euclid(86_400_000_000);
    u16::try_from(days.max(0)).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use ledgerline_schemas::event::{ConnectionPhase, JobStatus, Level};
    use ledgerline_schemas::samples;

    use super::*;

    const STORED: [Category; 4] = [
        Category::Audit,
        Category::Job,
        Category::Connection,
        Category::System,
    ];

    #[test]
    fn every_stored_category_round_trips_through_its_row() {
        for category in STORED {
            let event = samples::event(category, 5);
            let row = event_row(&event, category.topic_name(), 3, 42, 1_795_305_600).unwrap();
            assert_eq!(row.to_event().unwrap(), event, "{category}");
        }
    }

    #[test]
    fn optional_fields_left_empty_round_trip_as_empty() {
        let mut audit = samples::audit(1);
        audit.target = None;
        audit.reason = None;
        audit.actor.user_agent = None;
        audit.envelope.trace_id = None;
        audit.envelope.attributes.clear();
        let mut system = samples::system(1);
        system.error = None;
        system.fields.clear();
        system.line = None;
        let mut connection = samples::connection(1);
        connection.job_id = None;
        connection.duration_ms = None;
        connection.error = None;
        let mut job = samples::job(1);
        job.parent_job_id = None;
        for event in [
            Event::Audit(audit),
            Event::System(system),
            Event::Connection(connection),
            Event::Job(job),
        ] {
            let row = event_row(&event, "t", 0, 0, 0).unwrap();
            assert_eq!(row.to_event().unwrap(), event);
        }
    }

    #[test]
    fn audit_columns() {
        let event = samples::event(Category::Audit, 1);
        let row = event_row(&event, "ledgerline.audit", 2, 7, 100).unwrap();
        assert_eq!(row.event_id, event.envelope().event_id.to_string());
        assert_eq!(row.category, "audit");
        assert_eq!(row.level, "INFO");
        assert_eq!(row.occurred_at_us, 1_795_305_600_001_000);
        // 2026-11-22 is day 20779 since the epoch.
        assert_eq!(row.occurred_date, 20_779);
        assert_eq!(row.attr_keys, ["tenant", "user_id"]);
        assert_eq!(row.attr_values, ["acme", "user-1"]);
        assert_eq!(row.actor_id.as_deref(), Some("user-1"));
        assert_eq!(row.actor_ip.as_deref(), Some("192.0.2.10"));
        assert_eq!(row.actor_user_agent.as_deref(), Some("curl/8.5"));
        assert_eq!(row.target_kind.as_deref(), Some("session"));
        assert_eq!(row.target_id.as_deref(), Some("session-1"));
        assert_eq!(row.outcome.as_deref(), Some("SUCCESS"));
        assert_eq!(
            row.details.as_deref(),
            Some(r#"{"method":"password+totp"}"#)
        );
        assert_eq!(row.job_id, None);
        assert_eq!(
            (
                row.topic.as_str(),
                row.partition,
                row.offset,
                row.ingested_at
            ),
            ("ledgerline.audit", 2, 7, 100)
        );
    }

    #[test]
    fn job_columns_and_status_row() {
        let event = samples::event(Category::Job, 4);
        let row = event_row(&event, "ledgerline.job", 0, 9, 100).unwrap();
        assert_eq!(row.job_id.as_deref(), Some("job-4"));
        assert_eq!(row.job_status.as_deref(), Some("RUNNING"));
        assert_eq!(row.progress, Some(4));
        assert_eq!(row.parent_job_id.as_deref(), Some("job-parent"));
        assert_eq!(row.actor_id, None);

        let status = job_status_row(&event, "ledgerline.job", 0, 9, 100).unwrap();
        assert_eq!(status.job_id, "job-4");
        assert_eq!(status.status, "RUNNING");
        assert_eq!(status.progress, 4);
        assert_eq!(status.details, r#"{"devices_done":3}"#);
        assert_eq!(status.event_id, row.event_id);
        assert_eq!(status.occurred_at_us, row.occurred_at_us);
        assert_eq!((status.offset, status.updated_at), (9, 100));
    }

    #[test]
    fn connection_and_system_columns() {
        let row = event_row(&samples::event(Category::Connection, 2), "c", 0, 0, 0).unwrap();
        assert_eq!(row.device_id.as_deref(), Some("device-2"));
        assert_eq!(row.phase.as_deref(), Some("AUTHENTICATE"));
        assert_eq!(row.outcome.as_deref(), Some("FAILURE"));
        assert_eq!(row.duration_ms, Some(42));
        assert_eq!(row.job_id.as_deref(), Some("job-2"));
        assert_eq!(row.error.as_deref(), Some("authentication failed"));

        let row = event_row(&samples::event(Category::System, 2), "s", 0, 0, 0).unwrap();
        assert_eq!(row.module.as_deref(), Some("netraven::worker"));
        assert_eq!(row.file.as_deref(), Some("src/worker.rs"));
        assert_eq!(row.line, Some(120));
        assert_eq!(row.field_keys, ["attempt"]);
        assert_eq!(row.field_values, ["2"]);
        assert_eq!(row.error.as_deref(), Some("connection reset"));
        assert_eq!(row.error_chain, ["io error", "broken pipe"]);
    }

    #[test]
    fn only_job_events_have_a_status_row_and_sessions_no_row() {
        for category in Category::ALL {
            let event = samples::event(category, 1);
            assert_eq!(
                job_status_row(&event, "t", 0, 0, 0).is_some(),
                category == Category::Job
            );
            assert_eq!(
                event_row(&event, "t", 0, 0, 0).is_some(),
                category != Category::Session
            );
        }
    }

    #[test]
    fn symbols_round_trip() {
        for &level in Level::ALL {
            assert_eq!(level.as_str().parse::<Level>().ok(), Some(level));
        }
        for &outcome in Outcome::ALL {
            let text = outcome.as_str();
            assert_eq!(text.parse::<Outcome>().ok(), Some(outcome));
        }
        for &status in JobStatus::ALL {
            let text = status.as_str();
            assert_eq!(text.parse::<JobStatus>().ok(), Some(status));
        }
        for &phase in ConnectionPhase::ALL {
            assert_eq!(phase.as_str().parse::<ConnectionPhase>().ok(), Some(phase));
        }
        assert_eq!("info".parse::<Level>().ok(), None);
    }

    #[test]
    fn broken_rows_name_the_column() {
        let row = event_row(&samples::event(Category::Audit, 1), "t", 0, 0, 0).unwrap();
        type Breaker = fn(&mut EventRow);
        let cases: [(&str, Breaker); 5] = [
            ("level", |r| r.level = "LOUD".to_owned()),
            ("actor_ip", |r| r.actor_ip = None),
            ("attr_values", |r| {
                r.attr_values.pop();
            }),
            ("target_id", |r| r.target_kind = None),
            ("category", |r| r.category = "session".to_owned()),
        ];
        for (column, break_it) in cases {
            let mut broken = row.clone();
            break_it(&mut broken);
            match broken.to_event() {
                Err(ClickHouseError::InvalidRow { column: named, .. }) => {
                    assert_eq!(named, column)
                }
                other => panic!("{column}: {other:?}"),
            }
        }
    }

    #[test]
    fn utc_days_are_clamped_to_the_date_range() {
        assert_eq!(utc_day(0), 0);
        assert_eq!(utc_day(86_400_000_000 - 1), 0);
        assert_eq!(utc_day(86_400_000_000), 1);
        assert_eq!(utc_day(-1), 0);
        assert_eq!(utc_day(i64::MAX), u16::MAX);
    }
}
