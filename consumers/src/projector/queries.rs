//! The read library over `events` and `job_status`, written once here for the query API
//! (and the tests): [`EventReader`]. The projector's own queries (resume positions, retention)
//! are in its sink and [`super::retention`]. The archive's reader
//! ([`crate::archive::reader::AuditReader`]) takes the same [`EventQuery`] and builds its
//! conditions with the code here ([`Source`]).
//!
//! Reads are exact while the tables hold duplicates. A replayed batch or a producer retry
//! writes an event twice; `ReplacingMergeTree` removes the copy only when a background merge
//! happens to join the two parts, and never across partitions (a replay after midnight UTC
//! lands in another day's partition). So every query collapses by key itself: counts use
//! `uniqExact(event_id)`, searches `LIMIT 1 BY event_id`, job reads the latest row per job.
//!
//! User values only ever reach SQL as `?` parameters of the `clickhouse` crate, which quotes
//! and escapes them; the database name, which cannot be a parameter, is checked by
//! [`validate_identifier`] first. The SQL runs on ClickHouse 18.16 and on current releases:
//! no `Map`, no `DateTime64`, no `startsWith` (prefixes are `substring(col, 1, <bytes>) = ?`)
//! and no tuple comparison (the keyset condition is spelled out).
//!
//! Every read is bounded by [`ReadLimits`], set on the client once: a query that would read
//! too many rows or run too long fails with the server's code, which [`limit_hit`] names so
//! the API can answer "narrow your query" rather than "internal error".

use clickhouse::query::Query;
use ledgerline_schemas::event::{JobStatus, Level};
use ledgerline_schemas::{Category, Event};
use serde::Serialize;

use super::row::{EventRow, JobStatusRow};
use crate::clickhouse::error::{exception_code, query_failed};
use crate::clickhouse::{validate_identifier, ClickHouseError, Result};

/// What a [`Condition`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// The lower-case category (`audit`).
    Category,
    Service,
    Host,
    /// The exact level symbol (`ERROR`).
    Level,
    /// The event name (`user.login.success`).
    Name,
    /// Job events' job, and the job a connection event was made for.
    JobId,
    /// Connection events' device.
    DeviceId,
    /// The `user_id` attribute.
    UserId,
    RequestId,
    TraceId,
    /// The audit actor's id.
    Actor,
    /// The audit action.
    Action,
    /// The audit target's id.
    Target,
    /// The outcome symbol (`DENIED`) of audit and connection events.
    Outcome,
    /// Case-insensitive substring of `message`; a [`Match::Prefix`] is a substring too.
    Text,
}

impl Field {
    /// Every field, in declaration order.
    pub const ALL: &'static [Field] = &[
        Field::Category,
        Field::Service,
        Field::Host,
        Field::Level,
        Field::Name,
        Field::JobId,
        Field::DeviceId,
        Field::UserId,
        Field::RequestId,
        Field::TraceId,
        Field::Actor,
        Field::Action,
        Field::Target,
        Field::Outcome,
        Field::Text,
    ];

    /// The name the API and error messages use for this field.
    pub fn name(self) -> &'static str {
        match self {
            Field::Category => "category",
            Field::Service => "service",
            Field::Host => "host",
            Field::Level => "level",
            Field::Name => "name",
            Field::JobId => "job_id",
            Field::DeviceId => "device_id",
            Field::UserId => "user_id",
            Field::RequestId => "request_id",
            Field::TraceId => "trace_id",
            Field::Actor => "actor",
            Field::Action => "action",
            Field::Target => "target",
            Field::Outcome => "outcome",
            Field::Text => "message",
        }
    }

    /// The inverse of [`Self::name`].
    pub fn from_name(name: &str) -> Option<Field> {
        Self::ALL.iter().copied().find(|field| field.name() == name)
    }
}

/// One value a field is compared with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Match {
    Exact(String),
    /// The field starts with this text.
    Prefix(String),
}

/// A field matching any of `matches` (OR), or with `negated`, none of them. A field with no
/// value (a NULL column, a missing attribute) matches nothing, so a negated condition keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Condition {
    pub field: Field,
    /// Alternatives; the exact values are sent as one `IN`.
    pub matches: Vec<Match>,
    pub negated: bool,
}

impl Condition {
    /// `field` equals `value`.
    pub fn is(field: Field, value: impl Into<String>) -> Self {
        Self {
            field,
            matches: vec![Match::Exact(value.into())],
            negated: false,
        }
    }
}

/// Which events a read covers: a time range, a minimum level, and conditions that must all
/// hold, never returning the `hidden` categories. The default covers every event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventQuery {
    /// Occurred at or after, microseconds since the epoch (inclusive).
    pub since_us: i64,
    /// Occurred before, microseconds since the epoch (exclusive).
    pub until_us: i64,
    /// Only events at this level or above (TRACE < DEBUG < INFO < WARN < ERROR < CRITICAL).
    pub min_level: Option<Level>,
    /// All must hold (AND).
    pub conditions: Vec<Condition>,
    /// Categories never returned whatever the conditions say: the role wall (analysts get
    /// `[Audit]`). Applied in every query made for this `EventQuery`.
    pub hidden: Vec<Category>,
}

impl Default for EventQuery {
    fn default() -> Self {
        Self {
            since_us: i64::MIN,
            until_us: i64::MAX,
            min_level: None,
            conditions: Vec::new(),
            hidden: Vec::new(),
        }
    }
}

impl EventQuery {
    /// This query with one more condition.
    pub fn with(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }
}

/// A position in the newest-first order of a search: the last event of a page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub occurred_at_us: i64,
    pub event_id: String,
}

/// One page of a search, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<Event>,
    /// Where the next page starts; `None` when this page was the last.
    pub next: Option<Cursor>,
}

/// What a histogram's buckets are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBy {
    Level,
    Category,
}

/// Distinct events of one key in one time bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Start of the bucket, microseconds since the epoch, a multiple of the interval.
    pub start_us: i64,
    /// The level symbol or the lower-case category.
    pub key: String,
    pub count: u64,
}

/// What [`EventReader::top`] ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopField {
    Service,
    Name,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopEntry {
    pub value: String,
    /// Distinct events with this value.
    pub count: u64,
}

/// The latest state of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobState {
    pub job_id: String,
    pub job_type: String,
    pub job_name: String,
    pub status: JobStatus,
    pub progress: i32,
    /// The JSON object the job reported; its raw text if it does not parse.
    pub details: serde_json::Value,
    pub service: String,
    /// The event that set this state.
    pub event_id: String,
    /// `occurred_at_us` of the event that set it.
    pub updated_at_us: i64,
}

/// Server-side bounds on every read, so one broad query cannot take the server down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// ClickHouse `max_execution_time`.
    pub max_execution_time_secs: u64,
    /// ClickHouse `max_rows_to_read`.
    pub max_rows_to_read: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_execution_time_secs: 10,
            max_rows_to_read: 100_000_000,
        }
    }
}

impl ReadLimits {
    /// `client` with these limits as settings of every query it sends. `read_overflow_mode =
    /// throw` makes a query over a limit fail rather than return a silently cut result; the
    /// query size is raised to [`MAX_QUERY_SIZE`]. The API's ClickHouse user has
    /// `readonly = 2`, which allows per-query settings.
    pub(crate) fn apply(self, client: clickhouse::Client) -> clickhouse::Client {
        client
            .with_setting(
                "max_execution_time",
                self.max_execution_time_secs.to_string(),
            )
            .with_setting("max_rows_to_read", self.max_rows_to_read.to_string())
            .with_setting("read_overflow_mode", "throw")
            .with_setting("max_query_size", MAX_QUERY_SIZE.to_string())
    }
}

/// ClickHouse's `max_query_size`, in bytes: the SQL text with its bound values. The default
/// (256 KiB) would fail a search for one long value (a 100 kB message fragment, sent escaped)
/// with a syntax error; the parser's memory for 4 MiB is small next to any read.
const MAX_QUERY_SIZE: u64 = 4 << 20;

/// Which ClickHouse limit a failed read hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryLimit {
    /// Code 159, TIMEOUT_EXCEEDED, or 160, TOO_SLOW (estimated to exceed it).
    ExecutionTime,
    /// Code 158, TOO_MANY_ROWS.
    RowsToRead,
    /// Code 241, MEMORY_LIMIT_EXCEEDED.
    Memory,
}

impl QueryLimit {
    /// The ClickHouse setting that set the limit.
    pub fn setting(self) -> &'static str {
        match self {
            QueryLimit::ExecutionTime => "max_execution_time",
            QueryLimit::RowsToRead => "max_rows_to_read",
            QueryLimit::Memory => "max_memory_usage",
        }
    }
}

/// Which limit a failed read hit, if any: the API answers those with a 4xx naming the limit,
/// since a narrower query succeeds where a retry would not.
pub fn limit_hit(error: &ClickHouseError) -> Option<QueryLimit> {
    let ClickHouseError::Query {
        source: clickhouse::error::Error::BadResponse(text),
        ..
    } = error
    else {
        return None;
    };
    match exception_code(text)? {
        // 160 TOO_SLOW: ClickHouse's estimate that the query cannot finish within
        // max_execution_time, raised before it runs out.
        159 | 160 => Some(QueryLimit::ExecutionTime),
        158 => Some(QueryLimit::RowsToRead),
        241 => Some(QueryLimit::Memory),
        _ => None,
    }
}

/// Keys per query when a page's rows are fetched by id (see [`EventReader::search`]).
pub(crate) const ROWS_PER_FETCH: usize = 1_000;

/// How a table holds a [`Field`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Column {
    /// A `String` column, or a constant SQL expression (the archive's `'audit'`).
    Plain(&'static str),
    /// A `Nullable(String)` column: NULL matches no value.
    Nullable(&'static str),
    /// An attribute key of `attr_keys`/`attr_values`: a missing key matches no value.
    Attribute(&'static str),
    /// Case-insensitive substring of a `String` column, for exact values and prefixes alike.
    Substring(&'static str),
}

/// A value bound to the next `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(String),
    Int(i64),
    UInt(u64),
}

/// A `WHERE` condition being built: conditions (ANDed) and the values of their `?`s, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl Filter {
    pub(crate) fn push(&mut self, condition: impl Into<String>, values: Vec<Value>) {
        self.conditions.push(condition.into());
        self.values.extend(values);
    }

    /// The conditions joined by AND; `1` when there are none.
    pub(crate) fn sql(&self) -> String {
        if self.conditions.is_empty() {
            "1".to_owned()
        } else {
            self.conditions.join(" AND ")
        }
    }

    /// Appends this filter's values to `values`, after those of the SQL before it.
    pub(crate) fn values_into(self, values: &mut Vec<Value>) {
        values.extend(self.values);
    }

    fn push_condition(&mut self, column: Column, condition: &Condition) {
        let negated = condition.negated;
        if condition.matches.is_empty() {
            // Any of no value: nothing matches; none of no value: everything does.
            self.push(if negated { "1" } else { "0" }, Vec::new());
            return;
        }
        let (expression, guard) = match column {
            Column::Plain(name) | Column::Substring(name) => (name.to_owned(), None),
            // NOT (NULL IN (…)) is NULL, which WHERE drops: negations compare '' instead.
            Column::Nullable(name) if negated => (format!("ifNull({name}, '')"), None),
            Column::Nullable(name) => (name.to_owned(), None),
            // `key` is one of this module's constants, never user input. indexOf is 0 for a
            // missing key and attr_values[0] is '', so presence is checked first.
            Column::Attribute(key) => (
                format!("arrayElement(attr_values, indexOf(attr_keys, '{key}'))"),
                Some(format!("has(attr_keys, '{key}')")),
            ),
        };
        let mut alternatives: Vec<String> = Vec::new();
        let mut values = Vec::new();
        if let Column::Substring(_) = column {
            for matched in &condition.matches {
                let (Match::Exact(text) | Match::Prefix(text)) = matched;
                alternatives.push(format!("positionCaseInsensitiveUTF8({expression}, ?) > 0"));
                values.push(Value::Text(text.clone()));
            }
        } else {
            let exact: Vec<&String> = condition
                .matches
                .iter()
                .filter_map(|matched| match matched {
                    Match::Exact(text) => Some(text),
                    Match::Prefix(_) => None,
                })
                .collect();
            if !exact.is_empty() {
                let marks = vec!["?"; exact.len()].join(", ");
                alternatives.push(format!("{expression} IN ({marks})"));
                values.extend(exact.into_iter().map(|text| Value::Text(text.clone())));
            }
            for matched in &condition.matches {
                if let Match::Prefix(prefix) = matched {
                    // No startsWith on 18.16. The prefix's length is bound as a number (Rust's
                    // `len` and ClickHouse's `substring` both count bytes) rather than as
                    // `length(?)` of a second copy, so a long prefix is sent once.
                    alternatives.push(format!("substring({expression}, 1, ?) = ?"));
                    values.push(Value::UInt(prefix.len() as u64));
                    values.push(Value::Text(prefix.clone()));
                }
            }
        }
        let any = match alternatives.as_slice() {
            [single] => single.clone(),
            _ => format!("({})", alternatives.join(" OR ")),
        };
        let matched = match guard {
            Some(guard) => format!("({guard} AND {any})"),
            None => any,
        };
        let sql = if negated {
            format!("NOT {}", parenthesised(&matched))
        } else {
            matched
        };
        self.push(sql, values);
    }
}

/// `text` in parentheses unless it already is one parenthesised group.
fn parenthesised(text: &str) -> String {
    let is_group = text.starts_with('(')
        && text.ends_with(')')
        && text[1..text.len() - 1]
            .chars()
            .try_fold(0_i32, |depth, c| {
                let depth = match c {
                    '(' => depth + 1,
                    ')' => depth - 1,
                    _ => depth,
                };
                (depth >= 0).then_some(depth)
            })
            .is_some();
    if is_group {
        text.to_owned()
    } else {
        format!("({text})")
    }
}

/// `?, ?, …` for `count` values.
pub(crate) fn marks(count: usize) -> String {
    vec!["?"; count].join(", ")
}

pub(crate) fn bind_all(query: Query, values: Vec<Value>) -> Query {
    values.into_iter().fold(query, |query, value| match value {
        Value::Text(text) => query.bind(text),
        Value::Int(number) => query.bind(number),
        Value::UInt(number) => query.bind(number),
    })
}

/// A table of events an [`EventQuery`] can be run on: the projector's `events` or the
/// archive's `records`. What differs between them is how each [`Field`] is stored and which
/// rows are events; the condition building, keyset paging and counting are shared.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// `<database>.<table>`, the database checked by [`validate_identifier`].
    pub(crate) table: String,
    /// What every row read must meet: the archive's `kind = 'event'`; `None` for `events`.
    pub(crate) rows: Option<&'static str>,
    pub(crate) column: fn(Field) -> Column,
    /// Whether [`EventQuery::hidden`] applies: the archive holds audit events only, and only
    /// roles allowed to see them read it.
    pub(crate) hides_categories: bool,
}

impl Source {
    /// The `WHERE` condition of `query` on this table.
    pub(crate) fn filter(&self, query: &EventQuery) -> Filter {
        let mut filter = Filter::default();
        if let Some(rows) = self.rows {
            filter.push(rows, Vec::new());
        }
        filter.push(
            "occurred_at_us >= ? AND occurred_at_us < ?",
            vec![Value::Int(query.since_us), Value::Int(query.until_us)],
        );
        if let Some(min_level) = query.min_level {
            let allowed: Vec<Value> = Level::ALL
                .iter()
                .filter(|level| **level >= min_level)
                .map(|level| Value::Text(level.as_str().to_owned()))
                .collect();
            filter.push(format!("level IN ({})", marks(allowed.len())), allowed);
        }
        for condition in &query.conditions {
            filter.push_condition((self.column)(condition.field), condition);
        }
        if self.hides_categories {
            filter.push_hidden(&query.hidden);
        }
        filter
    }

    /// The keys of a page: up to `limit + 1` distinct `(occurred_at_us, event_id)` newest
    /// first, strictly after `after`. Only the two key columns are read, so a page over a
    /// large range reads two narrow columns; the rows are fetched for the page's ids after.
    pub(crate) fn page_keys_query(
        &self,
        client: &clickhouse::Client,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Query {
        let mut filter = self.filter(query);
        if let Some(after) = after {
            // (occurred_at_us, event_id) < (?, ?), spelled out: 18.16 has no tuple comparison.
            filter.push(
                "(occurred_at_us < ? OR (occurred_at_us = ? AND event_id < ?))",
                vec![
                    Value::Int(after.occurred_at_us),
                    Value::Int(after.occurred_at_us),
                    Value::Text(after.event_id.clone()),
                ],
            );
        }
        let mut values = Vec::new();
        let sql = format!(
            "SELECT occurred_at_us, event_id FROM {} WHERE {} \
             ORDER BY occurred_at_us DESC, event_id DESC LIMIT 1 BY event_id LIMIT ?",
            self.table,
            filter.sql()
        );
        filter.values_into(&mut values);
        values.push(Value::UInt(limit.saturating_add(1)));
        bind_all(client.query(&sql), values)
    }

    /// Runs [`Self::page_keys_query`]: the page's keys, and the cursor of the next page when
    /// there is one.
    pub(crate) async fn page_keys(
        &self,
        client: &clickhouse::Client,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<(Vec<Cursor>, Option<Cursor>)> {
        if limit == 0 {
            return Ok((Vec::new(), None));
        }
        let keys: Vec<(i64, String)> = self
            .page_keys_query(client, query, after, limit)
            .fetch_all()
            .await
            .map_err(query_failed(format!("search of {}", self.table)))?;
        let mut keys: Vec<Cursor> = keys
            .into_iter()
            .map(|(occurred_at_us, event_id)| Cursor {
                occurred_at_us,
                event_id,
            })
            .collect();
        let more = keys.len() as u64 > limit;
        keys.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next = if more { keys.last().cloned() } else { None };
        Ok((keys, next))
    }

    /// The condition picking the rows of `keys` (not empty): bounded by the keys' time range,
    /// so the primary key prunes, then their ids.
    pub(crate) fn keys_filter(keys: &[Cursor]) -> Filter {
        let oldest = keys.iter().map(|key| key.occurred_at_us).min().unwrap_or(0);
        let newest = keys.iter().map(|key| key.occurred_at_us).max().unwrap_or(0);
        let mut filter = Filter::default();
        filter.push(
            "occurred_at_us >= ? AND occurred_at_us <= ?",
            vec![Value::Int(oldest), Value::Int(newest)],
        );
        filter.push(
            format!("event_id IN ({})", marks(keys.len())),
            keys.iter()
                .map(|key| Value::Text(key.event_id.clone()))
                .collect(),
        );
        filter
    }

    pub(crate) fn count_query(&self, client: &clickhouse::Client, query: &EventQuery) -> Query {
        let filter = self.filter(query);
        let sql = format!(
            "SELECT uniqExact(event_id) FROM {} WHERE {}",
            self.table,
            filter.sql()
        );
        let mut values = Vec::new();
        filter.values_into(&mut values);
        bind_all(client.query(&sql), values)
    }
}

impl Filter {
    fn push_hidden(&mut self, hidden: &[Category]) {
        if !hidden.is_empty() {
            self.push(
                format!("category NOT IN ({})", marks(hidden.len())),
                hidden
                    .iter()
                    .map(|category| Value::Text(category.as_str().to_owned()))
                    .collect(),
            );
        }
    }
}

/// How `events` stores each field.
fn events_column(field: Field) -> Column {
    match field {
        Field::Category => Column::Plain("category"),
        Field::Service => Column::Plain("service"),
        Field::Host => Column::Plain("host"),
        Field::Level => Column::Plain("level"),
        Field::Name => Column::Plain("name"),
        Field::JobId => Column::Nullable("job_id"),
        Field::DeviceId => Column::Nullable("device_id"),
        Field::UserId => Column::Attribute("user_id"),
        Field::RequestId => Column::Nullable("request_id"),
        Field::TraceId => Column::Nullable("trace_id"),
        Field::Actor => Column::Nullable("actor_id"),
        Field::Action => Column::Nullable("action"),
        Field::Target => Column::Nullable("target_id"),
        Field::Outcome => Column::Nullable("outcome"),
        Field::Text => Column::Substring("message"),
    }
}

/// Reads `events` and `job_status` for the query API. Built once, cheap to clone (the client
/// shares its connection pool).
#[derive(Clone)]
pub struct EventReader {
    client: clickhouse::Client,
    database: String,
    events: Source,
    /// `<database>.job_status`, or its `Distributed` table on a cluster.
    job_status: String,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReader")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Copies of one event differ only in where and when they were stored; this order after the
/// key makes the first-stored copy the one `LIMIT 1 BY event_id` keeps.
const FIRST_STORED: &str = "ingested_at, `partition`, `offset`";

impl EventReader {
    /// A reader of `database`, every query bounded by `limits`. Fails on a database name that
    /// is not a plain identifier.
    pub fn new(client: clickhouse::Client, database: &str, limits: ReadLimits) -> Result<Self> {
        let database = validate_identifier(database)?.to_owned();
        Ok(Self {
            client: limits.apply(client),
            events: Source {
                table: format!("{database}.events"),
                rows: None,
                column: events_column,
                hides_categories: true,
            },
            job_status: format!("{database}.job_status"),
            database,
        })
    }

    /// Reads the `Distributed` tables a cluster has (`events_all`, `job_status_all`, made by
    /// the projector's migrations with `[projector.clickhouse] cluster`) rather than the server's
    /// own replicas: every shard's rows, from whichever replica of each answers.
    #[must_use]
    pub fn distributed(mut self) -> Self {
        self.events.table = format!("{}.events_all", self.database);
        self.job_status = format!("{}.job_status_all", self.database);
        self
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Whether ClickHouse answers and `events` exists, reading no row: for `/health`.
    pub async fn ping(&self) -> Result<()> {
        self.client
            .query(&format!("SELECT 1 FROM {} LIMIT 0", self.events.table))
            .fetch_all::<u8>()
            .await
            .map_err(query_failed(format!("ping of {}", self.events.table)))?;
        Ok(())
    }

    /// Up to `limit` events of `query` newest first (by `occurred_at_us`, then `event_id`,
    /// both descending), strictly after `after`, each event once.
    pub async fn search(
        &self,
        query: &EventQuery,
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Page> {
        let (keys, next) = self
            .events
            .page_keys(&self.client, query, after, limit)
            .await?;
        if keys.is_empty() {
            return Ok(Page {
                events: Vec::new(),
                next,
            });
        }
        // The ids go into the SQL text, and ClickHouse caps a query's size (AST elements,
        // 50,000 by default): a library caller may ask for far more than the API's 1,000.
        // Each chunk's keys are contiguous in the page's order, so the rows stay in order.
        let mut rows: Vec<EventRow> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(ROWS_PER_FETCH) {
            let fetched: Vec<EventRow> = self
                .rows_query(chunk, &query.hidden)
                .fetch_all()
                .await
                .map_err(query_failed(format!("search of {}", self.events.table)))?;
            rows.extend(fetched);
        }
        // The rows come in the keys' order; a key whose rows retention dropped in between is
        // left out rather than failing the page.
        let events = rows
            .iter()
            .map(EventRow::to_event)
            .collect::<Result<Vec<Event>>>()?;
        Ok(Page { events, next })
    }

    fn rows_query(&self, keys: &[Cursor], hidden: &[Category]) -> Query {
        let mut filter = Source::keys_filter(keys);
        filter.push_hidden(hidden);
        // PREWHERE: the time bounds and ids select a handful of rows, and only those rows'
        // other columns are read. With WHERE, 18.16 read every column of every granule the
        // range touched (2.2 GiB for a page; docs/benchmarks.md).
        let sql = format!(
            "SELECT ?fields FROM {} PREWHERE {} \
             ORDER BY occurred_at_us DESC, event_id DESC, {FIRST_STORED} LIMIT 1 BY event_id",
            self.events.table,
            filter.sql()
        );
        let mut values = Vec::new();
        filter.values_into(&mut values);
        bind_all(self.client.query(&sql), values)
    }

    /// Where the stored events end per Kafka partition: `(topic, partition, next)`, one past
    /// the greatest offset stored. The projector stores a prefix of each partition (see
    /// [`super`]), so every event below `next` that became a row is one; the live stream's
    /// history replay reads ClickHouse below it and Kafka from it.
    pub async fn stored_positions(&self) -> Result<Vec<(String, i32, i64)>> {
        self.client
            .query(&format!(
                "SELECT topic, `partition`, max(`offset`) + 1 FROM {} GROUP BY topic, `partition`",
                self.events.table
            ))
            .fetch_all::<(String, i32, i64)>()
            .await
            .map_err(query_failed(format!(
                "stored positions of {}",
                self.events.table
            )))
    }

    /// Up to `limit` stored events of `query` oldest first (by `occurred_at_us`, then
    /// `event_id`), strictly after `after`, each event once, and only rows read from Kafka
    /// below `below` = `(topic, partition, offset)`; partitions not named are left out. The
    /// live stream's `since=<time>` replay, whose Kafka part starts where this one ends.
    pub async fn replay(
        &self,
        query: &EventQuery,
        below: &[(String, i32, i64)],
        after: Option<&Cursor>,
        limit: u64,
    ) -> Result<Vec<Event>> {
        if below.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut filter = self.events.filter(query);
        let mut bounds = Vec::with_capacity(below.len());
        let mut values = Vec::with_capacity(below.len() * 3);
        for (topic, partition, offset) in below {
            bounds.push("(topic = ? AND `partition` = ? AND `offset` < ?)");
            values.push(Value::Text(topic.clone()));
            values.push(Value::Int(i64::from(*partition)));
            values.push(Value::Int(*offset));
        }
        filter.push(format!("({})", bounds.join(" OR ")), values);
        if let Some(after) = after {
            filter.push(
                "(occurred_at_us > ? OR (occurred_at_us = ? AND event_id > ?))",
                vec![
                    Value::Int(after.occurred_at_us),
                    Value::Int(after.occurred_at_us),
                    Value::Text(after.event_id.clone()),
                ],
            );
        }
        let sql = format!(
            "SELECT ?fields FROM {} WHERE {} \
             ORDER BY occurred_at_us, event_id, {FIRST_STORED} LIMIT 1 BY event_id LIMIT ?",
            self.events.table,
            filter.sql()
        );
        let mut values = Vec::new();
        filter.values_into(&mut values);
        values.push(Value::UInt(limit));
        let rows: Vec<EventRow> = bind_all(self.client.query(&sql), values)
            .fetch_all()
            .await
            .map_err(query_failed(format!("replay of {}", self.events.table)))?;
        rows.iter().map(EventRow::to_event).collect()
    }

    /// How many distinct events match `query`.
    pub async fn count(&self, query: &EventQuery) -> Result<u64> {
        self.events
            .count_query(&self.client, query)
            .fetch_one()
            .await
            .map_err(query_failed(format!("count of {}", self.events.table)))
    }

    /// The event `event_id`, unless it is of a `hidden` category.
    pub async fn event(&self, event_id: &str, hidden: &[Category]) -> Result<Option<Event>> {
        let row: Option<EventRow> = self
            .event_query(event_id, hidden)
            .fetch_optional()
            .await
            .map_err(query_failed(format!("read of {}", self.events.table)))?;
        row.as_ref().map(EventRow::to_event).transpose()
    }

    fn event_query(&self, event_id: &str, hidden: &[Category]) -> Query {
        let mut filter = Filter::default();
        filter.push("event_id = ?", vec![Value::Text(event_id.to_owned())]);
        filter.push_hidden(hidden);
        let sql = format!(
            "SELECT ?fields FROM {} PREWHERE {} ORDER BY {FIRST_STORED} LIMIT 1",
            self.events.table,
            filter.sql()
        );
        let mut values = Vec::new();
        filter.values_into(&mut values);
        bind_all(self.client.query(&sql), values)
    }

    /// Distinct events of `query` per time bucket and level or category. Buckets start at
    /// multiples of `interval_secs` since the epoch (an interval of 0 is taken as 1 s);
    /// ordered by start, then key; empty buckets are left out.
    pub async fn histogram(
        &self,
        query: &EventQuery,
        interval_secs: u64,
        by: SplitBy,
    ) -> Result<Vec<Bucket>> {
        let buckets: Vec<(i64, String, u64)> = self
            .histogram_query(query, interval_secs, by)
            .fetch_all()
            .await
            .map_err(query_failed(format!("histogram of {}", self.events.table)))?;
        Ok(buckets
            .into_iter()
            .map(|(start_us, key, count)| Bucket {
                start_us,
                key,
                count,
            })
            .collect())
    }

    fn histogram_query(&self, query: &EventQuery, interval_secs: u64, by: SplitBy) -> Query {
        let interval_us =
            i64::try_from(interval_secs.max(1).saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let key = match by {
            SplitBy::Level => "level",
            SplitBy::Category => "category",
        };
        let filter = self.events.filter(query);
        let sql = format!(
            "SELECT intDiv(occurred_at_us, ?) * ? AS start_us, {key} AS key, \
             uniqExact(event_id) AS count FROM {} WHERE {} \
             GROUP BY start_us, key ORDER BY start_us, key",
            self.events.table,
            filter.sql()
        );
        let mut values = vec![Value::Int(interval_us), Value::Int(interval_us)];
        filter.values_into(&mut values);
        bind_all(self.client.query(&sql), values)
    }

    /// The `limit` most frequent values of `field` among the events of `query`, by distinct
    /// events (descending), then value.
    pub async fn top(
        &self,
        query: &EventQuery,
        field: TopField,
        limit: u64,
    ) -> Result<Vec<TopEntry>> {
        let entries: Vec<(String, u64)> = self
            .top_query(query, field, limit)
            .fetch_all()
            .await
            .map_err(query_failed(format!("top of {}", self.events.table)))?;
        Ok(entries
            .into_iter()
            .map(|(value, count)| TopEntry { value, count })
            .collect())
    }

    fn top_query(&self, query: &EventQuery, field: TopField, limit: u64) -> Query {
        let column = match field {
            TopField::Service => "service",
            TopField::Name => "name",
        };
        let filter = self.events.filter(query);
        let sql = format!(
            "SELECT {column} AS value, uniqExact(event_id) AS count FROM {} WHERE {} \
             GROUP BY value ORDER BY count DESC, value LIMIT ?",
            self.events.table,
            filter.sql()
        );
        let mut values = Vec::new();
        filter.values_into(&mut values);
        values.push(Value::UInt(limit));
        bind_all(self.client.query(&sql), values)
    }

    /// Up to `limit` jobs with their latest state, most recently changed first; with
    /// `status`, only jobs whose latest state is that status.
    pub async fn jobs(&self, status: Option<JobStatus>, limit: u64) -> Result<Vec<JobState>> {
        let rows: Vec<JobStatusRow> = self
            .jobs_query(status, limit)
            .fetch_all()
            .await
            .map_err(query_failed(format!("list of {}", self.job_status)))?;
        rows.into_iter().map(job_state).collect()
    }

    fn jobs_query(&self, status: Option<JobStatus>, limit: u64) -> Query {
        let job_status = &self.job_status;
        // The status filter applies after picking each job's latest row: a job that was once
        // QUEUED and is now RUNNING must not be listed as QUEUED.
        let status_condition = if status.is_some() { "status = ?" } else { "1" };
        let query = self.client.query(&format!(
            "SELECT ?fields FROM (\
                 SELECT * FROM {job_status} \
                 ORDER BY job_id, occurred_at_us DESC, `offset` DESC LIMIT 1 BY job_id\
             ) WHERE {status_condition} ORDER BY occurred_at_us DESC, job_id LIMIT ?"
        ));
        let query = match status {
            Some(status) => query.bind(status.as_str()),
            None => query,
        };
        query.bind(limit)
    }

    /// The latest state of `job_id`: the row of its latest event (by `occurred_at_us`, then
    /// Kafka offset), or `None` for a job never seen.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobState>> {
        let job_status = &self.job_status;
        let row: Option<JobStatusRow> = self
            .client
            .query(&format!(
                "SELECT ?fields FROM {job_status} WHERE job_id = ? \
                 ORDER BY occurred_at_us DESC, `offset` DESC LIMIT 1"
            ))
            .bind(job_id)
            .fetch_optional()
            .await
            .map_err(query_failed(format!("read of {job_status}")))?;
        row.map(job_state).transpose()
    }

    /// Up to `limit` job and connection events whose `job_id` is `job_id`, oldest first,
    /// each once.
    pub async fn job_timeline(&self, job_id: &str, limit: u64) -> Result<Vec<Event>> {
        let rows: Vec<EventRow> = self
            .job_timeline_query(job_id, limit)
            .fetch_all()
            .await
            .map_err(query_failed(format!("timeline of {}", self.events.table)))?;
        rows.iter().map(EventRow::to_event).collect()
    }

    fn job_timeline_query(&self, job_id: &str, limit: u64) -> Query {
        self.client
            .query(&format!(
                // PREWHERE on the job id: it selects a handful of rows, and only their other
                // columns are read. Left to itself, 18.16 moved the category test to PREWHERE
                // instead and read every column of every job and connection row (4.5 GiB for
                // 10M events; docs/benchmarks.md).
                "SELECT ?fields FROM {} PREWHERE job_id = ? AND category IN (?, ?) \
                 ORDER BY occurred_at_us, event_id, {FIRST_STORED} LIMIT 1 BY event_id LIMIT ?",
                self.events.table
            ))
            .bind(job_id)
            .bind(Category::Job.as_str())
            .bind(Category::Connection.as_str())
            .bind(limit)
    }

    /// Rows of `events` beyond one per event: copies left by replays that merges have not
    /// removed yet. For tests and operators; reads never need it.
    pub async fn duplicate_event_ids(&self) -> Result<u64> {
        let (rows, events): (u64, u64) = self
            .client
            .query(&format!(
                "SELECT count(), uniqExact(event_id) FROM {}",
                self.events.table
            ))
            .fetch_one()
            .await
            .map_err(query_failed(format!(
                "duplicate count of {}",
                self.events.table
            )))?;
        Ok(rows.saturating_sub(events))
    }
}

fn job_state(row: JobStatusRow) -> Result<JobState> {
    let status = row
        .status
        .parse()
        .map_err(|_| ClickHouseError::InvalidRow {
            event_id: row.event_id.clone(),
            column: "status",
            reason: "is not a job status".to_owned(),
        })?;
    Ok(JobState {
        job_id: row.job_id,
        job_type: row.job_type,
        job_name: row.job_name,
        status,
        progress: row.progress,
        details: json_or_text(row.details),
        service: row.service,
        event_id: row.event_id,
        updated_at_us: row.occurred_at_us,
    })
}

/// `text` parsed as JSON; the text itself when it does not parse.
fn json_or_text(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader() -> EventReader {
        EventReader::new(clickhouse::Client::default(), "db", ReadLimits::default()).unwrap()
    }

    fn sql_of(query: Query) -> String {
        query.sql_display().to_string()
    }

    fn condition(field: Field, matches: Vec<Match>, negated: bool) -> Condition {
        Condition {
            field,
            matches,
            negated,
        }
    }

    #[test]
    fn an_empty_query_covers_every_time() {
        let sql = sql_of(
            reader()
                .events
                .count_query(&reader().client, &EventQuery::default()),
        );
        assert_eq!(
            sql,
            format!(
                "SELECT uniqExact(event_id) FROM db.events \
                 WHERE occurred_at_us >= {} AND occurred_at_us < {}",
                i64::MIN,
                i64::MAX
            )
        );
    }

    #[test]
    fn user_values_are_bound_and_escaped() {
        let query = EventQuery {
            since_us: 10,
            until_us: 20,
            min_level: Some(Level::Warn),
            conditions: vec![
                condition(
                    Field::Service,
                    vec![Match::Exact("billing".into()), Match::Exact("o'b".into())],
                    false,
                ),
                condition(Field::Text, vec![Match::Prefix("o'brien?".into())], false),
                condition(
                    Field::UserId,
                    vec![Match::Exact("x' OR 1 = 1 --".into())],
                    false,
                ),
            ],
            hidden: vec![Category::Audit],
        };
        let reader = reader();
        let sql = sql_of(
            reader
                .events
                .page_keys_query(&reader.client, &query, None, 5),
        );
        assert_eq!(
            sql,
            "SELECT occurred_at_us, event_id FROM db.events \
             WHERE occurred_at_us >= 10 AND occurred_at_us < 20 \
             AND level IN ('WARN', 'ERROR', 'CRITICAL') \
             AND service IN ('billing', 'o\\'b') \
             AND positionCaseInsensitiveUTF8(message, 'o\\'brien?') > 0 \
             AND (has(attr_keys, 'user_id') \
             AND arrayElement(attr_values, indexOf(attr_keys, 'user_id')) IN ('x\\' OR 1 = 1 --')) \
             AND category NOT IN ('audit') \
             ORDER BY occurred_at_us DESC, event_id DESC LIMIT 1 BY event_id LIMIT 6"
        );
    }

    #[test]
    fn prefixes_negations_and_the_cursor() {
        let query = EventQuery {
            since_us: 0,
            until_us: 1,
            conditions: vec![
                condition(
                    Field::Name,
                    vec![Match::Prefix("user.".into()), Match::Exact("a\\b".into())],
                    false,
                ),
                condition(
                    Field::Actor,
                    vec![Match::Exact("root".into()), Match::Prefix("svc-".into())],
                    true,
                ),
                condition(Field::Outcome, vec![Match::Exact("DENIED".into())], false),
                condition(Field::UserId, vec![Match::Exact("u1".into())], true),
            ],
            ..EventQuery::default()
        };
        let cursor = Cursor {
            occurred_at_us: 7,
            event_id: "e'1".into(),
        };
        let reader = reader();
        let sql = sql_of(
            reader
                .events
                .page_keys_query(&reader.client, &query, Some(&cursor), 2),
        );
        assert_eq!(
            sql,
            "SELECT occurred_at_us, event_id FROM db.events \
             WHERE occurred_at_us >= 0 AND occurred_at_us < 1 \
             AND (name IN ('a\\\\b') OR substring(name, 1, 5) = 'user.') \
             AND NOT (ifNull(actor_id, '') IN ('root') \
             OR substring(ifNull(actor_id, ''), 1, 4) = 'svc-') \
             AND outcome IN ('DENIED') \
             AND NOT (has(attr_keys, 'user_id') \
             AND arrayElement(attr_values, indexOf(attr_keys, 'user_id')) IN ('u1')) \
             AND (occurred_at_us < 7 OR (occurred_at_us = 7 AND event_id < 'e\\'1')) \
             ORDER BY occurred_at_us DESC, event_id DESC LIMIT 1 BY event_id LIMIT 3"
        );
    }

    #[test]
    fn conditions_without_values() {
        let mut filter = Filter::default();
        filter.push_condition(
            Column::Plain("host"),
            &condition(Field::Host, Vec::new(), false),
        );
        filter.push_condition(
            Column::Plain("host"),
            &condition(Field::Host, Vec::new(), true),
        );
        assert_eq!(filter.sql(), "0 AND 1");
    }

    #[test]
    fn page_rows_are_bounded_by_the_keys_and_hide_categories() {
        let keys = [
            Cursor {
                occurred_at_us: 9,
                event_id: "b".into(),
            },
            Cursor {
                occurred_at_us: 4,
                event_id: "a".into(),
            },
        ];
        let sql = sql_of(reader().rows_query(&keys, &[Category::Audit, Category::System]));
        assert_eq!(
            sql,
            "SELECT ?fields FROM db.events PREWHERE occurred_at_us >= 4 AND occurred_at_us <= 9 \
             AND event_id IN ('b', 'a') AND category NOT IN ('audit', 'system') \
             ORDER BY occurred_at_us DESC, event_id DESC, ingested_at, `partition`, `offset` \
             LIMIT 1 BY event_id"
        );
        let sql = sql_of(reader().event_query("x'", &[Category::Audit]));
        assert!(
            sql.contains("PREWHERE event_id = 'x\\'' AND category NOT IN ('audit')"),
            "{sql}"
        );
    }

    #[test]
    fn histograms_and_tops_apply_the_query() {
        let query = EventQuery {
            hidden: vec![Category::Audit],
            ..EventQuery::default()
        };
        let sql = sql_of(reader().histogram_query(&query, 60, SplitBy::Level));
        assert!(
            sql.starts_with(
                "SELECT intDiv(occurred_at_us, 60000000) * 60000000 AS start_us, level AS key"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("AND category NOT IN ('audit') GROUP BY"),
            "{sql}"
        );
        let sql = sql_of(reader().top_query(&query, TopField::Name, 3));
        assert!(sql.starts_with("SELECT name AS value"), "{sql}");
        assert!(
            sql.ends_with(
                "category NOT IN ('audit') GROUP BY value ORDER BY count DESC, value LIMIT 3"
            ),
            "{sql}"
        );
    }

    #[test]
    fn job_listing_filters_the_latest_state() {
        let sql = sql_of(reader().jobs_query(Some(JobStatus::Failed), 10));
        assert!(
            sql.contains("LIMIT 1 BY job_id) WHERE status = 'FAILED'"),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT 10"), "{sql}");
        let sql = sql_of(reader().jobs_query(None, 10));
        assert!(sql.contains(") WHERE 1 ORDER BY"), "{sql}");
        let sql = sql_of(reader().job_timeline_query("j'1", 5));
        assert!(
            sql.contains("PREWHERE job_id = 'j\\'1' AND category IN ('job', 'connection')"),
            "{sql}"
        );
    }

    #[test]
    fn database_names_are_checked_before_any_sql() {
        let limits = ReadLimits::default();
        for bad in ["db; DROP TABLE x", "db.events", ""] {
            assert!(EventReader::new(clickhouse::Client::default(), bad, limits).is_err());
        }
    }

    #[test]
    fn field_names_round_trip() {
        for field in Field::ALL {
            assert_eq!(Field::from_name(field.name()), Some(*field));
        }
        assert_eq!(Field::from_name("text"), None);
        assert_eq!(Field::ALL.len(), 15);
    }

    #[test]
    fn limits_are_named_by_their_code() {
        let error = |text: &str| ClickHouseError::Query {
            context: "search".into(),
            source: clickhouse::error::Error::BadResponse(text.into()),
        };
        assert_eq!(
            limit_hit(&error(
                "Code: 158, e.displayText() = DB::Exception: Limit for rows exceeded"
            )),
            Some(QueryLimit::RowsToRead)
        );
        assert_eq!(
            limit_hit(&error("Code: 159. DB::Exception: Timeout exceeded")),
            Some(QueryLimit::ExecutionTime)
        );
        assert_eq!(
            limit_hit(&error("Code: 241. DB::Exception: Memory limit")),
            Some(QueryLimit::Memory)
        );
        assert_eq!(limit_hit(&error("Code: 62. Syntax error")), None);
        assert_eq!(QueryLimit::RowsToRead.setting(), "max_rows_to_read");
    }

    #[test]
    fn the_parenthesis_check_sees_groups() {
        assert_eq!(parenthesised("(a) OR (b)"), "((a) OR (b))");
        assert_eq!(parenthesised("(a OR b)"), "(a OR b)");
        assert_eq!(parenthesised("a IN (1)"), "(a IN (1))");
    }
}
