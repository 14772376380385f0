//! A subscription's filter: the same parameters, parsing and validation as `/v1/events`
//! ([`crate::params::filters`]), evaluated in memory on each live event, plus the role's
//! wall. Each field is read the way the projector stores it (`projector::row`), so a filter
//! selects the same events live as it does in a search.

use std::collections::BTreeMap;

use ledgerline_consumers::projector::queries::{Condition, Field, Match};
use ledgerline_schemas::event::Level;
use ledgerline_schemas::{Category, Event};
use serde_json::Value;

use crate::auth::Role;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, Params};

/// What one subscription receives. Equal filters share one entry in the fan-out, which
/// evaluates each once per event whatever the number of clients using it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamFilter {
    pub min_level: Option<Level>,
    pub conditions: Vec<Condition>,
    /// The role's wall: categories never delivered whatever the conditions say.
    pub hidden: Vec<Category>,
    /// The parameters as given, echoed in acknowledgements.
    pub given: BTreeMap<String, Vec<String>>,
}

/// Audit events reach auditors only; session events (live-only, never stored) every role.
pub fn hidden_for(role: Role) -> Vec<Category> {
    if role.can_review_audit() {
        Vec::new()
    } else {
        vec![Category::Audit]
    }
}

impl StreamFilter {
    /// The filter in `params` (the stream's query string, after its own parameters were
    /// taken); unknown parameters are refused by the caller's [`Params::finish`].
    pub fn from_params(params: &mut Params, role: Role) -> ApiResult<Self> {
        // Everything left is a filter: the stream's own parameters are taken before, and
        // anything unknown is refused by the caller's `finish`.
        let given = params.snapshot();
        let (min_level, conditions) = params::filters(params)?;
        Ok(Self {
            min_level,
            conditions,
            hidden: hidden_for(role),
            given,
        })
    }

    /// The filter of a `{"type": "filter", "filter": {...}}` message: the same parameters as
    /// an object, each value a string or an array of strings.
    pub fn from_json(filter: &Value, role: Role) -> ApiResult<Self> {
        let Value::Object(fields) = filter else {
            return Err(ApiError::bad_parameter(
                "filter",
                "must be an object of filter parameters",
            ));
        };
        let mut pairs = Vec::new();
        for (name, value) in fields {
            let values: Vec<&Value> = match value {
                Value::Array(values) => values.iter().collect(),
                other => vec![other],
            };
            for value in values {
                match value {
                    Value::String(text) => pairs.push((name.clone(), text.clone())),
                    _ => {
                        return Err(ApiError::bad_parameter(
                            name,
                            "must be a string or an array of strings",
                        ))
                    }
                }
            }
        }
        let mut params = Params::from_pairs(pairs)?;
        let filter = Self::from_params(&mut params, role)?;
        params.finish()?;
        Ok(filter)
    }

    /// Whether the audit category can pass this filter: an auditor watching it is recorded in
    /// the audit trail.
    pub fn may_deliver_audit(&self) -> bool {
        !self.hidden.contains(&Category::Audit)
            && self
                .conditions
                .iter()
                .filter(|condition| condition.field == Field::Category && !condition.negated)
                .all(|condition| {
                    condition.matches.iter().any(|matched| {
                        matches!(matched, Match::Exact(text) | Match::Prefix(text) if Category::Audit.as_str().starts_with(text.as_str()))
                    })
                })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let envelope = event.envelope();
        if self.hidden.contains(&envelope.category) {
            return false;
        }
        if self.min_level.is_some_and(|min| envelope.level < min) {
            return false;
        }
        self.conditions
            .iter()
            .all(|condition| condition_holds(condition, event))
    }
}

fn condition_holds(condition: &Condition, event: &Event) -> bool {
    let any = match field_value(condition.field, event) {
        // A field the event does not have matches no value (as a NULL column does).
        None => false,
        Some(value) if condition.field == Field::Text => {
            let haystack = value.to_lowercase();
            condition.matches.iter().any(|matched| {
                let (Match::Exact(text) | Match::Prefix(text)) = matched;
                haystack.contains(&text.to_lowercase())
            })
        }
        Some(value) => condition.matches.iter().any(|matched| match matched {
            Match::Exact(text) => value == text.as_str(),
            Match::Prefix(prefix) => value.starts_with(prefix.as_str()),
        }),
    };
    any != condition.negated
}

/// The value `field` has in `event`, as the projector stores it.
fn field_value(field: Field, event: &Event) -> Option<&str> {
    let envelope = event.envelope();
    match field {
        Field::Category => Some(envelope.category.as_str()),
        Field::Service => Some(&envelope.service),
        Field::Host => Some(&envelope.host),
        Field::Level => Some(envelope.level.as_str()),
        Field::Name => Some(&envelope.name),
        Field::JobId => match event {
            Event::Job(job) => Some(&job.job_id),
            Event::Connection(connection) => connection.job_id.as_deref(),
            Event::Session(session) => session.job_id.as_deref(),
            _ => None,
        },
        Field::DeviceId => match event {
            Event::Connection(connection) => Some(&connection.device_id),
            Event::Session(session) => Some(&session.device_id),
            _ => None,
        },
        Field::UserId => envelope.attributes.get("user_id").map(String::as_str),
        Field::RequestId => envelope.request_id.as_deref(),
        Field::TraceId => envelope.trace_id.as_deref(),
        Field::Actor => match event {
            Event::Audit(audit) => Some(&audit.actor.id),
            _ => None,
        },
        Field::Action => match event {
            Event::Audit(audit) => Some(&audit.action),
            _ => None,
        },
        Field::Target => match event {
            Event::Audit(audit) => audit.target.as_ref().map(|target| target.id.as_str()),
            _ => None,
        },
        Field::Outcome => match event {
            Event::Audit(audit) => Some(audit.outcome.as_str()),
            Event::Connection(connection) => Some(connection.outcome.as_str()),
            _ => None,
        },
        Field::Text => Some(&envelope.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledgerline_schemas::event::{Envelope, JobEvent, JobStatus, SessionEvent};

    fn envelope(category: Category, service: &str, level: Level) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::now_v7(),
            occurred_at: 1,
            category,
            name: "job.progress".to_owned(),
            level,
            service: service.to_owned(),
            service_version: "1".to_owned(),
            host: "h".to_owned(),
            message: "Copying Files".to_owned(),
            trace_id: Some("t1".to_owned()),
            span_id: None,
            request_id: None,
            attributes: [("user_id".to_owned(), "u1".to_owned())].into(),
        }
    }

    fn job(service: &str, level: Level, job_id: &str) -> Event {
        Event::Job(JobEvent {
            envelope: envelope(Category::Job, service, level),
            job_id: job_id.to_owned(),
            job_type: "t".to_owned(),
            job_name: "n".to_owned(),
            status: JobStatus::Running,
            progress: 5,
            details: "{}".to_owned(),
            parent_job_id: None,
        })
    }

    fn filter(query: &str, role: Role) -> ApiResult<StreamFilter> {
        let mut params = Params::parse(Some(query))?;
        let filter = StreamFilter::from_params(&mut params, role)?;
        params.finish()?;
        Ok(filter)
    }

    #[test]
    fn filters_select_like_a_search() {
        let event = job("billing", Level::Warn, "j1");
        for (query, expected) in [
            ("", true),
            ("service=billing", true),
            ("service=other,billing", true),
            ("service=other", false),
            ("level=warn", true),
            ("level=error", false),
            ("name=job.", true),
            ("name=job.done", false),
            ("job_id=j1", true),
            ("job_id=j2", false),
            ("device_id=d1", false),
            ("user_id=u1", true),
            ("trace_id=t1", true),
            ("request_id=r", false),
            ("category=job", true),
            ("category=audit", false),
            ("text=copying", true),
            ("q=-service:billing", false),
            ("q=service:bill*", true),
            ("q=-device_id:d1", true),
            ("q=files", true),
        ] {
            assert_eq!(
                filter(query, Role::Analyst).unwrap().matches(&event),
                expected,
                "{query}"
            );
        }
    }

    #[test]
    fn audit_is_behind_the_wall_and_sessions_are_not() {
        let mut audit = job("s", Level::Info, "j");
        if let Event::Job(job) = &mut audit {
            job.envelope.category = Category::Audit;
        }
        let session = Event::Session(SessionEvent {
            envelope: envelope(Category::Session, "s", Level::Info),
            device_id: "d1".to_owned(),
            job_id: None,
            direction: ledgerline_schemas::event::Direction::Input,
            data: "x".to_owned(),
        });
        let analyst = filter("category=audit,session", Role::Analyst).unwrap();
        assert!(!analyst.matches(&audit));
        assert!(analyst.matches(&session));
        assert!(!analyst.may_deliver_audit());
        let auditor = filter("category=audit,session", Role::Auditor).unwrap();
        assert!(auditor.matches(&audit));
        assert!(auditor.may_deliver_audit());
        assert!(!filter("category=job", Role::Auditor)
            .unwrap()
            .may_deliver_audit());
        assert!(filter("device_id=d1", Role::Admin)
            .unwrap()
            .matches(&session));
    }

    #[test]
    fn json_filters_name_the_bad_field() {
        let ok = StreamFilter::from_json(
            &serde_json::json!({"service": ["a", "b"], "level": "error"}),
            Role::Analyst,
        )
        .unwrap();
        assert_eq!(ok.min_level, Some(Level::Error));
        for (filter, named) in [
            (serde_json::json!({"level": "loud"}), "`level`"),
            (serde_json::json!({"servce": "a"}), "`servce`"),
            (serde_json::json!({"service": 5}), "`service`"),
            (serde_json::json!({"category": "audits"}), "`category`"),
            (serde_json::json!({"q": "servce:x"}), "`q`"),
            (serde_json::json!(["service"]), "`filter`"),
        ] {
            let error = StreamFilter::from_json(&filter, Role::Analyst).unwrap_err();
            assert!(error.message.contains(named), "{filter}: {}", error.message);
        }
    }
}
