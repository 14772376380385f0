//! The projector's two inserts, `events` and `job_status`: `RowBinary` over HTTP, rows sent in
//! the order given, each insert bounded by send and end timeouts.

use super::row::{EventRow, JobStatusRow};
use crate::clickhouse::{insert_rows as insert, validate_identifier, ClickHouseError, Result};

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
