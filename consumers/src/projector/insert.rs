//! The projector's two inserts, `events` and `job_status`: `RowBinary` over HTTP, rows sent in
//! the order given, each insert bounded by send and end timeouts.

use std::time::Duration;

use clickhouse::{RowOwned, RowWrite};

use super::row::{EventRow, JobStatusRow};
use crate::clickhouse::error::query_failed;
use crate::clickhouse::{validate_identifier, ClickHouseError, Result};

/// Inserts one batch into `events`. The rows must share one category and one `ingested_at`,
/// so the insert lands in exactly one partition as one part; a batch that breaks this is
/// refused before anything is sent. Rows are sent in the order given, which the crash-safety
/// argument of the module documentation relies on.
pub async fn insert_events(
    client: &clickhouse::Client,
    database: &str,
    rows: &[EventRow],
) -> Result<()> {
    let database = validate_identifier(database)?;
    check_one_partition(rows)?;
    insert(client, &format!("{database}.events"), rows).await
}

/// Inserts one batch into `job_status`. No partition rule: the table is not partitioned, and
/// a replayed job row is harmless (reads take the latest per job).
pub async fn insert_job_statuses(
    client: &clickhouse::Client,
    database: &str,
    rows: &[JobStatusRow],
) -> Result<()> {
    let database = validate_identifier(database)?;
    insert(client, &format!("{database}.job_status"), rows).await
}

fn check_one_partition(rows: &[EventRow]) -> Result<()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    if let Some(other) = rows
        .iter()
        .find(|row| row.category != first.category || row.ingested_at != first.ingested_at)
    {
        return Err(ClickHouseError::MixedInsert {
            reason: format!(
                "({}, {}) and ({}, {})",
                first.category, first.ingested_at, other.category, other.ingested_at
            ),
        });
    }
    Ok(())
}

async fn insert<T>(client: &clickhouse::Client, table: &str, rows: &[T]) -> Result<()>
where
    T: RowOwned + RowWrite,
{
    if rows.is_empty() {
        return Ok(());
    }
    let context = || format!("insert of {} rows into {table}", rows.len());
    // `table` is `<validated database>.<constant>`; `insert` would quote it as one name.
    // Bounded, so a server that accepts the connection and then stalls fails the insert (a
    // transient failure, retried) instead of holding the batch, and shutdown, forever.
    let mut insert = client
        .insert_unescaped::<T>(table)
        .await
        .map_err(query_failed(context()))?
        .with_timeouts(Some(INSERT_SEND_TIMEOUT), Some(INSERT_END_TIMEOUT));
    for row in rows {
        insert.write(row).await.map_err(query_failed(context()))?;
    }
    // A request cut before `end` may still store the rows sent so far (see the module docs).
    insert.end().await.map_err(query_failed(context()))
}

/// Longest wait to hand one chunk of rows to the server.
const INSERT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the server to finish an insert once all rows are sent: parsing, sorting
/// and writing the part take well under a second for a batch here, so this only catches a
/// stalled server.
const INSERT_END_TIMEOUT: Duration = Duration::from_secs(120);

#[cfg(test)]
mod tests {
    use ledgerline_schemas::{samples, Category};

    use super::super::row::event_row;
    use super::*;

    #[test]
    fn one_insert_holds_one_partition() {
        let row = |category, ingested_at| {
            event_row(&samples::event(category, 1), "t", 0, 0, ingested_at).unwrap()
        };
        check_one_partition(&[]).unwrap();
        check_one_partition(&[row(Category::Job, 5), row(Category::Job, 5)]).unwrap();
        for mixed in [
            [row(Category::Job, 5), row(Category::Audit, 5)],
            [row(Category::Job, 5), row(Category::Job, 6)],
        ] {
            assert!(matches!(
                check_one_partition(&mixed),
                Err(ClickHouseError::MixedInsert { .. })
            ));
        }
    }
}
