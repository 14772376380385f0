//! One bounded `RowBinary` insert, shared by the sinks.

use std::time::Duration;

use clickhouse::{RowOwned, RowWrite};

use super::error::query_failed;
use super::Result;

/// Inserts `rows` into `table` (`<validated database>.<constant>`) in the order given, as one
/// request.
pub async fn insert_rows<T>(client: &clickhouse::Client, table: &str, rows: &[T]) -> Result<()>
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
