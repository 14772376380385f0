//! Typed event builders. Mandatory fields are the constructor's arguments, so an event without
//! them does not compile; optional fields are chained setters. Ids named by the constructor
//! also go into `attributes`, so messages can stay human-readable (names, not ids).

use std::collections::BTreeMap;

use ledgerline_schemas::event::*;
use ledgerline_schemas::Category;
use ledgerline_service::errors::causes;

use crate::error::Result;
use crate::ledger::{Delivered, Ledger};

/// Event types that carry an envelope. Sealed: only the five categories implement it.
pub trait Payload: private::Sealed + Sized {
    fn envelope_mut(&mut self) -> &mut Envelope;
    fn into_event(self) -> Event;
}

mod private {
    pub trait Sealed {}
}

macro_rules! payload {
    ($type:ty, $variant:ident) => {
        impl private::Sealed for $type {}
        impl Payload for $type {
            fn envelope_mut(&mut self) -> &mut Envelope {
                &mut self.envelope
            }
            fn into_event(self) -> Event {
                Event::$variant(self)
            }
        }
    };
}

payload!(AuditEvent, Audit);
payload!(JobEvent, Job);
payload!(ConnectionEvent, Connection);
payload!(SystemEvent, System);
payload!(SessionEvent, Session);

/// An event being built; finish it with [`Draft::send`], [`Draft::publish`] or [`Draft::build`].
#[derive(Debug)]
#[must_use = "an event is only sent by .send().await or .publish().await"]
pub struct Draft<'a, T: Payload> {
    ledger: &'a Ledger,
    event: T,
}

impl<'a, T: Payload> Draft<'a, T> {
    /// Human-readable text: names, not ids or secrets (secrets are redacted anyway).
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.event.envelope_mut().message = message.into();
        self
    }

    pub fn level(mut self, level: Level) -> Self {
        self.event.envelope_mut().level = level;
        self
    }

    /// An id or field for search: `device_id`, `user_id`, `tenant`...
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.event
            .envelope_mut()
            .attributes
            .insert(key.into(), value.into());
        self
    }

    /// Overrides the request id taken from the current span.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.event.envelope_mut().request_id = Some(request_id.into());
        self
    }

    /// Sets trace and span ids from a W3C `traceparent` (ignored when malformed).
    pub fn traceparent(mut self, traceparent: &str) -> Self {
        if let Some((trace_id, span_id)) = crate::context::parse_traceparent(traceparent) {
            let envelope = self.event.envelope_mut();
            envelope.trace_id = Some(trace_id);
            envelope.span_id = Some(span_id);
        }
        self
    }

    /// The finished event, without sending it.
    pub fn build(self) -> Event {
        self.event.into_event()
    }

    /// Sends and waits for the broker's acknowledgement.
    pub async fn send(self) -> Result<Delivered> {
        let ledger = self.ledger;
        ledger.send_event(self.event.into_event()).await
    }

    /// Queues for background delivery (see [`Ledger::publish_event`]).
    pub async fn publish(self) -> Result<()> {
        let ledger = self.ledger;
        ledger.publish_event(self.event.into_event()).await
    }
}

fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(_) => value.to_string(),
        // Details are an object by contract; wrap anything else rather than reject it.
        other => serde_json::json!({ "value": other }).to_string(),
    }
}

impl Ledger {
    /// An audit event. `actor.id` and `actor.ip` must be non-empty; `details` is a JSON object
    /// (redacted before encoding).
    pub fn audit(
        &self,
        name: &str,
        actor: Actor,
        action: &str,
        outcome: Outcome,
        details: serde_json::Value,
    ) -> Draft<'_, AuditEvent> {
        let mut envelope = self.envelope(Category::Audit, name, Level::Info);
        envelope
            .attributes
            .insert("actor_id".to_owned(), actor.id.clone());
        Draft {
            ledger: self,
            event: AuditEvent {
                envelope,
                actor,
                action: action.to_owned(),
                target: None,
                outcome,
                reason: None,
                details: json_text(&details),
            },
        }
    }

    /// A job status or progress event, keyed by `job_id` so a job's events stay in order.
    pub fn job(
        &self,
        name: &str,
        job_id: &str,
        job_type: &str,
        job_name: &str,
        status: JobStatus,
    ) -> Draft<'_, JobEvent> {
        let mut envelope = self.envelope(Category::Job, name, Level::Info);
        envelope
            .attributes
            .insert("job_id".to_owned(), job_id.to_owned());
        Draft {
            ledger: self,
            event: JobEvent {
                envelope,
                job_id: job_id.to_owned(),
                job_type: job_type.to_owned(),
                job_name: job_name.to_owned(),
                status,
                progress: 0,
                details: "{}".to_owned(),
                parent_job_id: None,
            },
        }
    }

    /// The envelope of a device's event: `device_id` in the attributes, and the job the
    /// current span works for (if any) as the event's `job_id`.
    fn device_envelope(
        &self,
        category: Category,
        name: &str,
        level: Level,
        device_id: &str,
    ) -> (Envelope, Option<String>) {
        let mut envelope = self.envelope(category, name, level);
        envelope
            .attributes
            .insert("device_id".to_owned(), device_id.to_owned());
        let job_id = envelope.attributes.get("job_id").cloned();
        (envelope, job_id)
    }

    /// A device connection phase, keyed by `device_id`.
    pub fn connection(
        &self,
        name: &str,
        device_id: &str,
        device_name: &str,
        phase: ConnectionPhase,
        outcome: Outcome,
    ) -> Draft<'_, ConnectionEvent> {
        let (envelope, job_id) =
            self.device_envelope(Category::Connection, name, Level::Info, device_id);
        Draft {
            ledger: self,
            event: ConnectionEvent {
                envelope,
                device_id: device_id.to_owned(),
                device_name: device_name.to_owned(),
                job_id,
                phase,
                outcome,
                duration_ms: None,
                error: None,
            },
        }
    }

    /// A service log line. Usually produced by the tracing layer rather than by hand.
    pub fn system(
        &self,
        name: &str,
        level: Level,
        target: &str,
        message: &str,
    ) -> Draft<'_, SystemEvent> {
        let mut envelope = self.envelope(Category::System, name, level);
        envelope.message = message.to_owned();
        Draft {
            ledger: self,
            event: SystemEvent {
                envelope,
                target: target.to_owned(),
                file: None,
                line: None,
                fields: BTreeMap::new(),
                error: None,
            },
        }
    }

    /// Live session I/O of a device (fanned out, never stored).
    pub fn session(
        &self,
        device_id: &str,
        direction: Direction,
        data: &str,
    ) -> Draft<'_, SessionEvent> {
        let name = match direction {
            Direction::Input => "session.input",
            Direction::Output => "session.output",
        };
        let (envelope, job_id) =
            self.device_envelope(Category::Session, name, Level::Debug, device_id);
        Draft {
            ledger: self,
            event: SessionEvent {
                envelope,
                device_id: device_id.to_owned(),
                job_id,
                direction,
                data: data.to_owned(),
            },
        }
    }
}

impl Draft<'_, AuditEvent> {
    pub fn target(mut self, kind: &str, id: &str) -> Self {
        self.event.target = Some(Target {
            kind: kind.to_owned(),
            id: id.to_owned(),
        });
        self.event
            .envelope
            .attributes
            .insert("target_id".to_owned(), id.to_owned());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.event.reason = Some(reason.into());
        self
    }
}

impl Draft<'_, JobEvent> {
    /// Percent complete; values above 100 are clamped.
    pub fn progress(mut self, percent: u8) -> Self {
        self.event.progress = i32::from(percent.min(100));
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.event.details = json_text(&details);
        self
    }

    pub fn parent_job_id(mut self, parent: &str) -> Self {
        self.event.parent_job_id = Some(parent.to_owned());
        self
    }
}

impl Draft<'_, ConnectionEvent> {
    pub fn job_id(mut self, job_id: &str) -> Self {
        self.event.job_id = Some(job_id.to_owned());
        self.event
            .envelope
            .attributes
            .insert("job_id".to_owned(), job_id.to_owned());
        self
    }

    pub fn duration(mut self, duration: std::time::Duration) -> Self {
        self.event.duration_ms = Some(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX));
        self
    }

    pub fn error(mut self, error: impl Into<String>) -> Self {
        self.event.error = Some(error.into());
        self
    }
}

impl Draft<'_, SystemEvent> {
    pub fn field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.fields.insert(key.into(), value.into());
        self
    }

    /// Records `error` and its chain of causes.
    pub fn error(mut self, error: &(dyn std::error::Error + 'static)) -> Self {
        self.event.error = Some(error_info(error));
        self
    }
}

impl Draft<'_, SessionEvent> {
    pub fn job_id(mut self, job_id: &str) -> Self {
        self.event.job_id = Some(job_id.to_owned());
        self.event
            .envelope
            .attributes
            .insert("job_id".to_owned(), job_id.to_owned());
        self
    }
}

/// An error and its causes as the `system` schema stores them: the outer message, and every
/// cause outermost first, since `Display` of most errors leaves the causes out.
pub(crate) fn error_info(error: &dyn std::error::Error) -> ErrorInfo {
    ErrorInfo {
        message: error.to_string(),
        chain: causes(error).map(ToString::to_string).collect(),
    }
}
