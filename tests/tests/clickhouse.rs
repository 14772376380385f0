//! The ClickHouse the harness starts takes RowBinary inserts and selects through the
//! `clickhouse` crate. Its per-role walls are tested in `clickhouse_walls.rs`.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clickhouse::Row;
use ledgerline_tests::Harness;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
struct Sample {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: f64,
}

#[tokio::test]
async fn rows_inserted_with_row_binary_read_back_equal() {
    let harness = Harness::shared().unwrap();
    let database = harness.clickhouse.create_database().await.unwrap();
    let client = harness.clickhouse.client().with_database(&database);
    client
        .query(
            "CREATE TABLE samples (id UInt64, name String, tags Array(String), score Float64) \
             ENGINE = MergeTree ORDER BY id",
        )
        .execute()
        .await
        .unwrap();

    let rows: Vec<Sample> = (0..1000)
        .map(|i| Sample {
            id: i,
            name: format!("name-{i}"),
            tags: vec![format!("tag-{}", i % 3), "common".to_owned()],
            score: i as f64 / 4.0,
        })
        .collect();
    let mut insert = client.insert::<Sample>("samples").await.unwrap();
    for row in &rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();

    let read: Vec<Sample> = client
        .query("SELECT ?fields FROM samples ORDER BY id")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(read, rows);

    let (count, with_tag): (u64, u64) = client
        .query("SELECT count(), countIf(has(tags, 'tag-1')) FROM samples")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((count, with_tag), (1000, 333));
}
