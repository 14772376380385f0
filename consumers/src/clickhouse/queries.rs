//! The read queries over `events` and `job_status`, written once here and reused by the query
//! API, plus the two the projector itself needs (resume offsets, retention).
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

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use clickhouse::query::Query;
use ledgerline_schemas::Category;

use super::error::{query_failed, Result};
use super::row::{EventRow, JobStatusRow};
use super::schema::validate_identifier;

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

/// The greatest offset stored in `events` for each Kafka partition of `topic`. The projector
/// resumes each partition after it, so a crash between an insert and the offset commit does
/// not replay what is already stored. Scans the topic's `topic`, `partition` and `offset`
/// columns: a start-up query, not one to run per batch.
pub async fn resume_offsets(
    client: &clickhouse::Client,
    database: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let database = validate_identifier(database)?;
    let rows: Vec<(i32, i64)> = client
        .query(&format!(
            "SELECT `partition`, max(`offset`) FROM {database}.events \
             WHERE topic = ? GROUP BY `partition`"
        ))
        .bind(topic)
        .fetch_all()
        .await
        .map_err(query_failed(format!(
            "resume offsets from {database}.events"
        )))?;
    Ok(rows.into_iter().collect())
}

/// Drops the partitions of `events` holding `category` rows ingested more than `keep_days`
/// days before `today` (UTC days: today and the `keep_days` days before it are kept) and
/// returns them as ClickHouse prints them (`('job',20261013)`). Partitions are found in
/// `system.parts`; one whose text does not parse is left alone and logged, since retention
/// must err towards keeping data.
pub async fn drop_expired_partitions(
    client: &clickhouse::Client,
    database: &str,
    category: Category,
    keep_days: u32,
    today: SystemTime,
) -> Result<Vec<String>> {
    let database = validate_identifier(database)?;
    let today_days = today
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let cutoff = yyyymmdd(today_days.saturating_sub(u64::from(keep_days)));

    let partitions: Vec<String> = client
        .query(
            "SELECT DISTINCT partition FROM system.parts \
             WHERE database = ? AND table = 'events' AND active ORDER BY partition",
        )
        .bind(database)
        .fetch_all()
        .await
        .map_err(query_failed(format!("partition list of {database}.events")))?;

    let mut dropped = Vec::new();
    for partition in partitions {
        let Some((partition_category, day)) = parse_partition(&partition) else {
            tracing::warn!(%database, %partition, "unrecognised events partition left in place");
            continue;
        };
        if partition_category != category.as_str() || day >= cutoff {
            continue;
        }
        client
            .query(&format!(
                "ALTER TABLE {database}.events DROP PARTITION (?, ?)"
            ))
            .bind(partition_category)
            .bind(day)
            .execute()
            .await
            .map_err(query_failed(format!(
                "drop of partition {partition} of {database}.events"
            )))?;
        tracing::info!(
            %database,
            %category,
            %partition,
            days = today_days.saturating_sub(days_since_epoch(day)),
            keep_days,
            "dropped expired events partition"
        );
        dropped.push(partition);
    }
    Ok(dropped)
}

/// `('job',20261013)` (how 18.16 and current ClickHouse print a `(String, UInt32)` partition
/// key) into its category and day.
fn parse_partition(text: &str) -> Option<(&str, u32)> {
    let inner = text.strip_prefix("('")?.strip_suffix(')')?;
    let (category, day) = inner.split_once("',")?;
    Some((category, day.trim().parse().ok()?))
}

/// `YYYYMMDD` of a day counted from 1970-01-01 (proleptic Gregorian, Howard Hinnant's
/// `civil_from_days`), so retention needs no date library.
fn yyyymmdd(days: u64) -> u32 {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    u32::try_from(year * 10_000 + month * 100 + day).unwrap_or(u32::MAX)
}

/// The inverse of [`yyyymmdd`] (`days_from_civil`); 0 for days before 1970.
fn days_since_epoch(yyyymmdd: u32) -> u64 {
    let (year, month, day) = (
        u64::from(yyyymmdd / 10_000),
        u64::from(yyyymmdd / 100 % 100),
        u64::from(yyyymmdd % 100),
    );
    let year = year - u64::from(month <= 2);
    let era = year / 400;
    let yoe = year - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
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

    #[test]
    fn partitions_parse_as_clickhouse_prints_them() {
        assert_eq!(
            parse_partition("('job',20261013)"),
            Some(("job", 20_261_013))
        );
        assert_eq!(
            parse_partition("('connection', 20250101)"),
            Some(("connection", 20_250_101))
        );
        for bad in [
            "20261013",
            "('job')",
            "(job,20261013)",
            "('job',2026-10-13)",
            "",
        ] {
            assert_eq!(parse_partition(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(yyyymmdd(0), 19_700_101);
        // 2026-11-22, the samples' day.
        assert_eq!(yyyymmdd(20_779), 20_261_122);
        assert_eq!(yyyymmdd(20_779 - 40), 20_261_013);
        // Leap days.
        assert_eq!(yyyymmdd(11_016), 20_000_229);
        assert_eq!(yyyymmdd(19_417), 20_230_301);
        for days in (0..80_000).step_by(7) {
            assert_eq!(days_since_epoch(yyyymmdd(days)), days, "{days}");
        }
    }
}
