//! [`AuditReader`]: searches of the archive's `records` for the query API's audit review,
//! with the same [`EventQuery`] as the projector's [`EventReader`](crate::projector::queries::EventReader)
//! and the same condition building (`Source`), only the columns differ.
//!
//! Only `kind = 'event'` rows are read: undecodable records and gaps have no event. `records`
//! is a plain `MergeTree` that keeps a second row for an offset (so `verify` can report it),
//! and a producer retry can archive one event at two offsets, so reads collapse by `event_id`
//! the same way the projector's do. `EventQuery::hidden` does not apply: the archive holds
//! audit events only, and only roles allowed to see them read it.

use clickhouse::query::Query;
use clickhouse::Row;
use ledgerline_schemas::event::{Actor, AuditEvent, Envelope, Target};
use ledgerline_schemas::{Category, Event};
use serde::{Deserialize, Serialize, Serializer};

use super::row::KIND_EVENT;
use crate::clickhouse::error::query_failed;
use crate::clickhouse::{validate_identifier, ClickHouseError, Result};
use crate::projector::queries::{
    bind_all, Column, Cursor, EventQuery, Field, Filter, ReadLimits, Source, Value, ROWS_PER_FETCH,
};

/// An archived audit event and where it sits in the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchivedEvent {
    /// Serialised in the shape of [`ledgerline_schemas::json::event_json`].
    #[serde(serialize_with = "serialize_audit_event")]
    pub event: AuditEvent,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The chain entry's hash, lower-case hex.
    pub hash: String,
}

fn serialize_audit_event<S: Serializer>(
    event: &AuditEvent,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    ledgerline_schemas::json::event_json(&Event::Audit(event.clone())).serialize(serializer)
}

/// One page of an archive search, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub events: Vec<ArchivedEvent>,
    /// Where the next page starts; `None` when this page was the last.
    pub next: Option<Cursor>,
}

/// The columns of `records` an [`ArchivedEvent`] is made of (not the stored bytes).
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
struct AuditRow {
    topic: String,
    partition: i32,
    offset: i64,
    event_id: String,
    occurred_at_us: i64,
    name: String,
    level: String,
    service: String,
    service_version: String,
    host: String,
    message: String,
    trace_id: Option<String>,
    span_id: Option<String>,
    request_id: Option<String>,
    attr_keys: Vec<String>,
    attr_values: Vec<String>,
    actor_id: String,
    actor_kind: String,
    actor_ip: String,
    actor_user_agent: Option<String>,
    action: String,
    target_kind: Option<String>,
    target_id: Option<String>,
    outcome: String,
    reason: Option<String>,
    details: String,
    hash: String,
}

impl AuditRow {
    /// The event the row's columns were copied from (the inverse of
    /// [`super::row::EventFields::of`]); the category is always audit.
    fn into_archived(self) -> Result<ArchivedEvent> {
        let invalid = |column: &'static str, reason: &str| ClickHouseError::InvalidRow {
            event_id: self.event_id.clone(),
            column,
            reason: reason.to_owned(),
        };
        if self.attr_keys.len() != self.attr_values.len() {
            return Err(invalid("attr_values", "is not as long as its keys"));
        }
        let event_id = uuid::Uuid::parse_str(&self.event_id)
            .map_err(|_| invalid("event_id", "is not a uuid"))?;
        let level = self
            .level
            .parse()
            .map_err(|_| invalid("level", "is not a level"))?;
        let outcome = self
            .outcome
            .parse()
            .map_err(|_| invalid("outcome", "is not an outcome"))?;
        let target = match (self.target_kind, self.target_id) {
            (Some(kind), Some(id)) => Some(Target { kind, id }),
            (None, None) => None,
            _ => return Err(invalid("target_id", "is set without target_kind")),
        };
        let envelope = Envelope {
            event_id,
            occurred_at: self.occurred_at_us,
            category: Category::Audit,
            name: self.name,
            level,
            service: self.service,
            service_version: self.service_version,
            host: self.host,
            message: self.message,
            trace_id: self.trace_id,
            span_id: self.span_id,
            request_id: self.request_id,
            attributes: self.attr_keys.into_iter().zip(self.attr_values).collect(),
        };
        Ok(ArchivedEvent {
            event: AuditEvent {
                envelope,
                actor: Actor {
                    id: self.actor_id,
                    kind: self.actor_kind,
                    ip: self.actor_ip,
                    user_agent: self.actor_user_agent,
                },
                action: self.action,
                target,
                outcome,
                reason: self.reason,
                details: self.details,
            },
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            hash: self.hash,
        })
    }
}

/// How `records` stores each field. Its audit columns are plain `String`s (empty for other
/// kinds, which the `kind` condition leaves out); the fields about other categories' events
/// are the constant `'audit'` or attributes.
fn records_column(field: Field) -> Column {
    match field {
        Field::Category => Column::Plain("'audit'"),
        Field::Service => Column::Plain("service"),
        Field::Host => Column::Plain("host"),
        Field::Level => Column::Plain("level"),
        Field::Name => Column::Plain("name"),
        Field::JobId => Column::Attribute("job_id"),
        Field::DeviceId => Column::Attribute("device_id"),
        Field::UserId => Column::Attribute("user_id"),
        Field::RequestId => Column::Nullable("request_id"),
        Field::TraceId => Column::Nullable("trace_id"),
        Field::Actor => Column::Plain("actor_id"),
        Field::Action => Column::Plain("action"),
        Field::Target => Column::Nullable("target_id"),
        Field::Outcome => Column::Plain("outcome"),
        Field::Text => Column::Substring("message"),
    }
}

/// `kind = 'event'`, written as a constant: [`KIND_EVENT`] is ours, not user input.
const EVENT_ROWS: &str = "kind = 'event'";

/// The chain order after the key: of two rows of one event, the first archived is kept.
const FIRST_ARCHIVED: &str = "topic, `partition`, `offset`";

/// Reads the archive's `records` for the query API. Built once, cheap to clone.
#[derive(Clone)]
pub struct AuditReader {
    client: clickhouse::Client,
    records: Source,
}

impl std::fmt::Debug for AuditReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditReader")
            .field("table", &self.records.table)
            .finish_non_exhaustive()
    }
}

impl AuditReader {
    /// A reader of `<database>.records`, every query bounded by `limits`. Fails on a database
    /// name that is not a plain identifier.
    pub fn new(client: clickhouse::Client, database: &str, limits: ReadLimits) -> Result<Self> {
        debug_assert_eq!(EVENT_ROWS, format!("kind = '{KIND_EVENT}'"));
        let database = validate_identifier(database)?;
        Ok(Self {
            client: limits.apply(client),
            records: Source {
                table: format!("{database}.records"),
                rows: Some(EVENT_ROWS),
                column: records_column,
                hides_categories: false,
            },
        })
    }

    /// Whether ClickHouse answers and `records` exists, reading no row: for `/health`.
    pub async fn ping(&self) -> Result<()> {
        self.client
            .query(&format!("SELECT 1 FROM {} LIMIT 0", self.records.table))
            .fetch_all::<u8>()
            .await
            .map_err(query_failed(format!("ping of {}", self.records.table)))?;
        Ok(())
    }

    /// Up to `limit` archived events of `query` newest first (by `occurred_at_us`, then
    /// `event_id`, both descending), strictly after `after`, each event once.
    pub async fn search(
        &self,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<AuditPage> {
        let (keys, next) = self
            .records
            .page_keys(&self.client, query, after, limit)
            .await?;
        if keys.is_empty() {
            return Ok(AuditPage {
                events: Vec::new(),
                next,
            });
        }
        // In chunks, as the projector's reader does: ClickHouse caps a query's size.
        let mut rows: Vec<AuditRow> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(ROWS_PER_FETCH) {
            let fetched: Vec<AuditRow> = self
                .rows_query(chunk)
                .fetch_all()
                .await
                .map_err(query_failed(format!("search of {}", self.records.table)))?;
            rows.extend(fetched);
        }
        let events = rows
            .into_iter()
            .map(AuditRow::into_archived)
            .collect::<Result<Vec<_>>>()?;
        Ok(AuditPage { events, next })
    }

    fn rows_query(&self, keys: &[Cursor]) -> Query {
        let mut filter = Filter::default();
        filter.push(EVENT_ROWS, Vec::new());
        let keys = Source::keys_filter(keys);
        let sql = format!(
            "SELECT ?fields FROM {} PREWHERE {} AND {} \
             ORDER BY occurred_at_us DESC, event_id DESC, {FIRST_ARCHIVED} LIMIT 1 BY event_id",
            self.records.table,
            filter.sql(),
            keys.sql()
        );
        let mut values = Vec::new();
        keys.values_into(&mut values);
        bind_all(self.client.query(&sql), values)
    }

    /// The archived event `event_id`: its first archived copy.
    pub async fn event(&self, event_id: &str) -> Result<Option<ArchivedEvent>> {
        let row: Option<AuditRow> = self
            .event_query(event_id)
            .fetch_optional()
            .await
            .map_err(query_failed(format!("read of {}", self.records.table)))?;
        row.map(AuditRow::into_archived).transpose()
    }

    fn event_query(&self, event_id: &str) -> Query {
        let sql = format!(
            "SELECT ?fields FROM {} WHERE {EVENT_ROWS} AND event_id = ? \
             ORDER BY {FIRST_ARCHIVED} LIMIT 1",
            self.records.table
        );
        bind_all(
            self.client.query(&sql),
            vec![Value::Text(event_id.to_owned())],
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::projector::queries::{Condition, Match};

    use super::*;

    fn reader() -> AuditReader {
        AuditReader::new(
            clickhouse::Client::default(),
            "ledgerline_audit",
            ReadLimits::default(),
        )
        .unwrap()
    }

    #[test]
    fn searches_read_event_rows_with_the_archive_columns() {
        let query = EventQuery {
            since_us: 0,
            until_us: 10,
            conditions: vec![
                Condition::is(Field::Category, "audit"),
                Condition::is(Field::Actor, "root'"),
                Condition {
                    field: Field::JobId,
                    matches: vec![Match::Prefix("job-".into())],
                    negated: true,
                },
                Condition::is(Field::Target, "t1"),
            ],
            hidden: vec![Category::Audit],
            ..EventQuery::default()
        };
        let reader = reader();
        let sql = reader
            .records
            .page_keys_query(&reader.client, &query, None, 10)
            .sql_display()
            .to_string();
        assert_eq!(
            sql,
            "SELECT occurred_at_us, event_id FROM ledgerline_audit.records \
             WHERE kind = 'event' AND occurred_at_us >= 0 AND occurred_at_us < 10 \
             AND 'audit' IN ('audit') AND actor_id IN ('root\\'') \
             AND NOT (has(attr_keys, 'job_id') AND substring(arrayElement(attr_values, \
             indexOf(attr_keys, 'job_id')), 1, 4) = 'job-') \
             AND target_id IN ('t1') \
             ORDER BY occurred_at_us DESC, event_id DESC LIMIT 1 BY event_id LIMIT 11"
        );
        let keys = [Cursor {
            occurred_at_us: 3,
            event_id: "e".into(),
        }];
        let sql = reader.rows_query(&keys).sql_display().to_string();
        assert_eq!(
            sql,
            "SELECT ?fields FROM ledgerline_audit.records PREWHERE kind = 'event' \
             AND occurred_at_us >= 3 AND occurred_at_us <= 3 AND event_id IN ('e') \
             ORDER BY occurred_at_us DESC, event_id DESC, topic, `partition`, `offset` \
             LIMIT 1 BY event_id"
        );
        let sql = reader.event_query("x'").sql_display().to_string();
        assert!(
            sql.contains("WHERE kind = 'event' AND event_id = 'x\\''"),
            "{sql}"
        );
    }

    #[test]
    fn rows_map_back_to_the_event_they_were_copied_from() {
        let event = ledgerline_schemas::samples::audit(3);
        let fields = super::super::row::EventFields::of(&Event::Audit(event.clone()));
        let mut row = super::super::row::ArchiveRow::empty("ledgerline.audit", 1, 9, KIND_EVENT);
        row.set_fields(fields);
        row.hash = "ab".repeat(32);
        let audit_row = AuditRow {
            topic: row.topic,
            partition: row.partition,
            offset: row.offset,
            event_id: row.event_id,
            occurred_at_us: row.occurred_at_us,
            name: row.name,
            level: row.level,
            service: row.service,
            service_version: row.service_version,
            host: row.host,
            message: row.message,
            trace_id: row.trace_id,
            span_id: row.span_id,
            request_id: row.request_id,
            attr_keys: row.attr_keys,
            attr_values: row.attr_values,
            actor_id: row.actor_id,
            actor_kind: row.actor_kind,
            actor_ip: row.actor_ip,
            actor_user_agent: row.actor_user_agent,
            action: row.action,
            target_kind: row.target_kind,
            target_id: row.target_id,
            outcome: row.outcome,
            reason: row.reason,
            details: row.details,
            hash: row.hash,
        };
        let archived = audit_row.into_archived().unwrap();
        assert_eq!(archived.event, event);
        assert_eq!((archived.partition, archived.offset), (1, 9));
        let json = serde_json::to_value(&archived).unwrap();
        assert_eq!(json["event"]["action"], "login");
        assert_eq!(json["offset"], 9);
    }
}
