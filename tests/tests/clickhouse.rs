//! The ClickHouse the harness starts takes RowBinary inserts and selects through the
//! `clickhouse` crate, and enforces the per-role walls from `deploy/clickhouse/users.xml.in`.

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

#[tokio::test]
async fn roles_are_walled_into_their_databases() {
    let harness = Harness::shared().unwrap();
    let admin = harness.clickhouse.client();
    for statement in [
        "CREATE DATABASE IF NOT EXISTS ledgerline",
        "CREATE DATABASE IF NOT EXISTS ledgerline_audit",
        "CREATE TABLE IF NOT EXISTS ledgerline_audit.wall_probe (x UInt8) ENGINE = MergeTree ORDER BY x",
        "CREATE TABLE IF NOT EXISTS ledgerline.wall_probe (x UInt8) ENGINE = MergeTree ORDER BY x",
    ] {
        admin.query(statement).execute().await.unwrap();
    }
    let count = |role: &'static str, table: &'static str| async move {
        harness
            .clickhouse
            .client_as(role)
            .query(&format!("SELECT count() FROM {table}"))
            .fetch_one::<u64>()
            .await
    };
    let insert = |role: &'static str, table: &'static str| async move {
        harness
            .clickhouse
            .client_as(role)
            .query(&format!("INSERT INTO {table} VALUES (1)"))
            .execute()
            .await
    };

    // Only the archiver writes the audit archive; only the auditor and archiver read it.
    insert("archiver", "ledgerline_audit.wall_probe")
        .await
        .unwrap();
    count("auditor", "ledgerline_audit.wall_probe")
        .await
        .unwrap();
    for role in ["projector", "api"] {
        let error = count(role, "ledgerline_audit.wall_probe")
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("Access denied"),
            "{role}: {error}"
        );
    }
    let error = insert("auditor", "ledgerline_audit.wall_probe")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("readonly"), "{error}");
    let error = insert("projector", "ledgerline_audit.wall_probe")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Access denied"), "{error}");

    // The projector writes events; the api only reads them.
    insert("projector", "ledgerline.wall_probe").await.unwrap();
    count("api", "ledgerline.wall_probe").await.unwrap();
    let error = insert("api", "ledgerline.wall_probe").await.unwrap_err();
    assert!(error.to_string().contains("readonly"), "{error}");
    let error = count("auditor", "ledgerline.wall_probe").await.unwrap_err();
    assert!(error.to_string().contains("Access denied"), "{error}");
}
