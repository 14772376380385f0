//! The read library over `events` and `job_status`, written once here for the query API
//! (and the tests). The projector's own queries (resume positions, retention) are in its sink
//! and [`super::retention`].
//!
//! Reads are exact while the tables hold duplicates. A replayed batch or a producer retry
//! writes an event twice; `ReplacingMergeTree` removes the copy only when a background merge
//! happens to join the two parts, and never across partitions (a replay after midnight UTC
//! lands in another day's partition). So every query collapses by key itself: counts use
//! `uniqExact(event_id)`, searches `LIMIT 1 BY event_id`, job reads the latest row per job.
//!
//! User values only ever reach SQL as `?` parameters of the `clickhouse` crate, which quotes
//! and escapes them; the database name, which cannot be a parameter, is checked by
//! [`validate_identifier`] first.

use clickhouse::query::Query;
use ledgerline_schemas::Category;

use super::row::{EventRow, JobStatusRow};
use crate::clickhouse::error::query_failed;
use crate::clickhouse::{validate_identifier, Result};

/// Which events a search or count covers. Every set field must match (AND); the default
/// matches every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub category: Option<Category>,
    /// Exact service name.
    pub service: Option<String>,
    /// Exact event name, e.g. `user.login.success`.
    pub name: Option<String>,
    /// Occurred at or after, microseconds since the epoch (inclusive).
    pub from_us: Option<i64>,
    /// Occurred before, microseconds since the epoch (exclusive).
    pub to_us: Option<i64>,
    /// The `job_id` of job events and of connection events made for a job.
    pub job_id: Option<String>,
    /// The `device_id` of connection events.
    pub device_id: Option<String>,
    /// Case-insensitive substring of `message`.
    pub text: Option<String>,
    /// Attributes that must be present with exactly this value.
    pub attributes: Vec<(String, String)>,
}

/// A value bound to the next `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    Int(i64),
}

impl EventFilter {
    /// The `WHERE` condition (`1` when empty) and the values for its `?`s, in order.
    fn condition(&self) -> (String, Vec<Value>) {
        let mut conditions: Vec<&'static str> = Vec::new();
        let mut values = Vec::new();
        let text_conditions = [
            ("category = ?", self.category.map(|c| c.as_str().to_owned())),
            ("service = ?", self.service.clone()),
            ("name = ?", self.name.clone()),
            ("job_id = ?", self.job_id.clone()),
            ("device_id = ?", self.device_id.clone()),
            (
                "positionCaseInsensitiveUTF8(message, ?) > 0",
                self.text.clone(),
            ),
        ];
        for (condition, value) in text_conditions {
            if let Some(value) = value {
                conditions.push(condition);
                values.push(Value::Text(value));
            }
        }
        if let Some(from_us) = self.from_us {
            conditions.push("occurred_at_us >= ?");
            values.push(Value::Int(from_us));
        }
        if let Some(to_us) = self.to_us {
            conditions.push("occurred_at_us < ?");
            values.push(Value::Int(to_us));
        }
        for (key, value) in &self.attributes {
            // indexOf is 0 for a missing key, and attr_values[0] is '': check presence first.
            conditions.push(
                "indexOf(attr_keys, ?) > 0 AND arrayElement(attr_values, indexOf(attr_keys, ?)) = ?",
            );
            values.push(Value::Text(key.clone()));
            values.push(Value::Text(key.clone()));
            values.push(Value::Text(value.clone()));
        }
        let condition = if conditions.is_empty() {
            "1".to_owned()
        } else {
            conditions.join(" AND ")
        };
        (condition, values)
    }
}

fn bind_all(query: Query, values: Vec<Value>) -> Query {
    values.into_iter().fold(query, |query, value| match value {
        Value::Text(text) => query.bind(text),
        Value::Int(number) => query.bind(number),
    })
}

/// How many distinct events match `filter`.
pub async fn count_events(
    client: &clickhouse::Client,
    database: &str,
    filter: &EventFilter,
) -> Result<u64> {
    count_events_query(client, database, filter)?
        .fetch_one()
        .await
        .map_err(query_failed(format!("count of {database}.events")))
}

fn count_events_query(
    client: &clickhouse::Client,
    database: &str,
    filter: &EventFilter,
) -> Result<Query> {
    let database = validate_identifier(database)?;
    let (condition, values) = filter.condition();
    let query = client.query(&format!(
        "SELECT uniqExact(event_id) FROM {database}.events WHERE {condition}"
    ));
    Ok(bind_all(query, values))
}

/// Up to `limit` events matching `filter`, newest first, each event once.
pub async fn search_events(
    client: &clickhouse::Client,
    database: &str,
    filter: &EventFilter,
    limit: u64,
) -> Result<Vec<EventRow>> {
    search_events_query(client, database, filter, limit)?
        .fetch_all()
        .await
        .map_err(query_failed(format!("search of {database}.events")))
}

fn search_events_query(
    client: &clickhouse::Client,
    database: &str,
    filter: &EventFilter,
    limit: u64,
) -> Result<Query> {
    let database = validate_identifier(database)?;
    let (condition, values) = filter.condition();
    // Copies of one event differ only in where and when they were stored; the order makes
    // the first-stored copy the one kept.
    let query = client.query(&format!(
        "SELECT ?fields FROM {database}.events WHERE {condition} \
         ORDER BY occurred_at_us DESC, event_id DESC, ingested_at, `offset` \
         LIMIT 1 BY event_id LIMIT ?"
    ));
    Ok(bind_all(query, values).bind(limit))
}

/// Rows of `events` beyond one per event: copies left by replays that merges have not
/// removed yet. For tests and operators; reads never need it.
pub async fn duplicate_event_ids(client: &clickhouse::Client, database: &str) -> Result<u64> {
    let database = validate_identifier(database)?;
    let (rows, events): (u64, u64) = client
        .query(&format!(
            "SELECT count(), uniqExact(event_id) FROM {database}.events"
        ))
        .fetch_one()
        .await
        .map_err(query_failed(format!(
            "duplicate count of {database}.events"
        )))?;
    Ok(rows.saturating_sub(events))
}

/// The latest state of `job_id`: the row of its latest event (by `occurred_at_us`, then Kafka
/// offset), or `None` for a job never seen.
pub async fn job_status(
    client: &clickhouse::Client,
    database: &str,
    job_id: &str,
) -> Result<Option<JobStatusRow>> {
    let database = validate_identifier(database)?;
    client
        .query(&format!(
            "SELECT ?fields FROM {database}.job_status WHERE job_id = ? \
             ORDER BY occurred_at_us DESC, `offset` DESC LIMIT 1"
        ))
        .bind(job_id)
        .fetch_optional()
        .await
        .map_err(query_failed(format!("read of {database}.job_status")))
}

/// Up to `limit` jobs with their latest state, most recently changed first; with `status`
/// (an Avro symbol such as `FAILED`), only jobs whose latest state is that status.
pub async fn list_jobs(
    client: &clickhouse::Client,
    database: &str,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<JobStatusRow>> {
    list_jobs_query(client, database, status, limit)?
        .fetch_all()
        .await
        .map_err(query_failed(format!("list of {database}.job_status")))
}

fn list_jobs_query(
    client: &clickhouse::Client,
    database: &str,
    status: Option<&str>,
    limit: u64,
) -> Result<Query> {
    let database = validate_identifier(database)?;
    // The status filter applies after picking each job's latest row: a job that was once
    // QUEUED and is now RUNNING must not be listed as QUEUED.
    let status_condition = if status.is_some() { "status = ?" } else { "1" };
    let query = client.query(&format!(
        "SELECT ?fields FROM (\
             SELECT * FROM {database}.job_status \
             ORDER BY job_id, occurred_at_us DESC, `offset` DESC LIMIT 1 BY job_id\
         ) WHERE {status_condition} ORDER BY occurred_at_us DESC, job_id LIMIT ?"
    ));
    let query = match status {
        Some(status) => query.bind(status),
        None => query,
    };
    Ok(query.bind(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> clickhouse::Client {
        clickhouse::Client::default()
    }

    #[test]
    fn an_empty_filter_matches_everything() {
        let sql = count_events_query(&client(), "db", &EventFilter::default())
            .unwrap()
            .sql_display()
            .to_string();
        assert_eq!(sql, "SELECT uniqExact(event_id) FROM db.events WHERE 1");
    }

    #[test]
    fn user_values_are_bound_and_escaped() {
        let filter = EventFilter {
            category: Some(Category::Audit),
            service: Some("billing".to_owned()),
            text: Some("o'brien?".to_owned()),
            from_us: Some(10),
            to_us: Some(20),
            attributes: vec![("user_id".to_owned(), "x' OR 1 = 1 --".to_owned())],
            ..EventFilter::default()
        };
        let sql = search_events_query(&client(), "db", &filter, 5)
            .unwrap()
            .sql_display()
            .to_string();
        assert_eq!(
            sql,
            "SELECT ?fields FROM db.events WHERE category = 'audit' AND service = 'billing' \
             AND positionCaseInsensitiveUTF8(message, 'o\\'brien?') > 0 \
             AND occurred_at_us >= 10 AND occurred_at_us < 20 \
             AND indexOf(attr_keys, 'user_id') > 0 \
             AND arrayElement(attr_values, indexOf(attr_keys, 'user_id')) = 'x\\' OR 1 = 1 --' \
             ORDER BY occurred_at_us DESC, event_id DESC, ingested_at, `offset` \
             LIMIT 1 BY event_id LIMIT 5"
        );
    }

    #[test]
    fn job_listing_filters_the_latest_state() {
        let sql = list_jobs_query(&client(), "db", Some("FAILED"), 10)
            .unwrap()
            .sql_display()
            .to_string();
        assert!(
            sql.contains("LIMIT 1 BY job_id) WHERE status = 'FAILED'"),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT 10"), "{sql}");
        let sql = list_jobs_query(&client(), "db", None, 10)
            .unwrap()
            .sql_display()
            .to_string();
        assert!(sql.contains(") WHERE 1 ORDER BY"), "{sql}");
    }

    #[test]
    fn database_names_are_checked_before_any_sql() {
        let filter = EventFilter::default();
        assert!(count_events_query(&client(), "db; DROP TABLE x", &filter).is_err());
        assert!(search_events_query(&client(), "db.events", &filter, 1).is_err());
        assert!(list_jobs_query(&client(), "", None, 1).is_err());
    }
}
