//! The per-role walls of `deploy/clickhouse/users.xml.in` (see docs/clickhouse-users.md), tried
//! on the harness's ClickHouse 18.16: each user may do what its component needs, and every
//! other attempt is refused with ClickHouse's own error. A refusal only counts when nothing
//! happened, so after each refused write the admin checks that the table is unchanged.
//!
//! `allow_databases` names the literal databases `ledgerline` and `ledgerline_audit`, so these
//! tests share them (created when missing) and isolate themselves with randomly named tables.
//! The expected texts are 18.16's; current releases word them differently and grant through
//! RBAC instead.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;

use clickhouse::error::Error;
use ledgerline_tests::clickhouse::{ADMIN, ROLES};
use ledgerline_tests::{names, Harness};

/// The projector's database (events, job_status).
const PROJECTION: &str = "ledgerline";
/// The tamper-evident archive (records, checkpoints).
const ARCHIVE: &str = "ledgerline_audit";

/// A table of this test's own in one of the walled databases.
struct Table {
    database: &'static str,
    name: String,
}

impl Table {
    /// Creates `database.wall_<random>` as the admin, holding one row.
    async fn with_one_row(harness: &Harness, database: &'static str) -> Self {
        let table = Self {
            database,
            name: names::unique("wall"),
        };
        let admin = harness.clickhouse.client();
        for statement in [
            format!("CREATE DATABASE IF NOT EXISTS {database}"),
            format!(
                "CREATE TABLE {} (x UInt8) ENGINE = MergeTree ORDER BY x",
                table.qualified()
            ),
            format!("INSERT INTO {} VALUES (1)", table.qualified()),
        ] {
            admin.query(&statement).execute().await.unwrap();
        }
        table
    }

    fn qualified(&self) -> String {
        format!("{}.{}", self.database, self.name)
    }

    /// Rows as the admin sees them.
    async fn rows(&self, harness: &Harness) -> u64 {
        count_as(harness, ADMIN, self).await.unwrap()
    }

    /// Mutations (`ALTER … DELETE/UPDATE`) ever queued for the table, as the admin sees them:
    /// a mutation runs after its statement returns, so a row count alone could miss one.
    async fn mutations(&self, harness: &Harness) -> u64 {
        harness
            .clickhouse
            .client()
            .query("SELECT count() FROM system.mutations WHERE database = ? AND table = ?")
            .bind(self.database)
            .bind(&self.name)
            .fetch_one()
            .await
            .unwrap()
    }
}

async fn count_as(harness: &Harness, user: &str, table: &Table) -> Result<u64, Error> {
    harness
        .clickhouse
        .client_as(user)
        .query(&format!("SELECT count() FROM {}", table.qualified()))
        .fetch_one()
        .await
}

async fn insert_as(harness: &Harness, user: &str, table: &Table) -> Result<(), Error> {
    execute_as(
        harness,
        user,
        &format!("INSERT INTO {} VALUES (2)", table.qualified()),
    )
    .await
}

async fn execute_as(harness: &Harness, user: &str, statement: &str) -> Result<(), Error> {
    harness
        .clickhouse
        .client_as(user)
        .query(statement)
        .execute()
        .await
}

async fn table_exists(harness: &Harness, database: &str, name: &str) -> bool {
    harness
        .clickhouse
        .client()
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(database)
        .bind(name)
        .fetch_one::<u64>()
        .await
        .unwrap()
        == 1
}

/// 18.16's DATABASE_ACCESS_DENIED: `allow_databases` of `user` leaves `database` out.
fn access_denied(database: &str, user: &str) -> String {
    format!(
        "Code: 291, e.displayText() = DB::Exception: Access denied to database {database} for user {user}"
    )
}

/// 18.16's READONLY: the user's profile has `readonly = 2`. `what` is the refused action as
/// the server names it (`insert into table`, `drop table`, `execute query`).
fn readonly(what: &str) -> String {
    format!("Code: 164, e.displayText() = DB::Exception: Cannot {what} in readonly mode")
}

#[track_caller]
fn assert_refused<T: Debug>(result: Result<T, Error>, expected: &str) {
    match result {
        Err(Error::BadResponse(message)) => assert!(
            message.contains(expected),
            "refused, but not as expected\n  expected: {expected}\n  got:      {message}"
        ),
        other => panic!("expected the refusal `{expected}`, got {other:?}"),
    }
}

#[tokio::test]
async fn the_archiver_writes_and_reads_the_archive_and_nothing_else() {
    let harness = Harness::shared().unwrap();
    let archive = Table::with_one_row(harness, ARCHIVE).await;
    let projection = Table::with_one_row(harness, PROJECTION).await;

    insert_as(harness, "archiver", &archive).await.unwrap();
    assert_eq!(count_as(harness, "archiver", &archive).await.unwrap(), 2);
    // Its migrations create the archive's tables.
    let created = names::unique("wall");
    execute_as(
        harness,
        "archiver",
        &format!("CREATE TABLE {ARCHIVE}.{created} (x UInt8) ENGINE = MergeTree ORDER BY x"),
    )
    .await
    .unwrap();
    assert!(table_exists(harness, ARCHIVE, &created).await);

    assert_refused(
        count_as(harness, "archiver", &projection).await,
        &access_denied(PROJECTION, "archiver"),
    );
    assert_refused(
        insert_as(harness, "archiver", &projection).await,
        &access_denied(PROJECTION, "archiver"),
    );
    assert_eq!(projection.rows(harness).await, 1);
}

#[tokio::test]
async fn the_auditor_reads_the_archive_and_can_change_nothing() {
    let harness = Harness::shared().unwrap();
    let archive = Table::with_one_row(harness, ARCHIVE).await;
    let projection = Table::with_one_row(harness, PROJECTION).await;
    let qualified = archive.qualified();

    assert_eq!(count_as(harness, "auditor", &archive).await.unwrap(), 1);

    assert_refused(
        insert_as(harness, "auditor", &archive).await,
        &readonly("insert into table"),
    );
    assert_refused(
        execute_as(
            harness,
            "auditor",
            &format!("ALTER TABLE {qualified} DELETE WHERE 1"),
        )
        .await,
        &readonly("execute query"),
    );
    assert_refused(
        execute_as(harness, "auditor", &format!("DROP TABLE {qualified}")).await,
        &readonly("drop table"),
    );
    let created = names::unique("wall");
    assert_refused(
        execute_as(
            harness,
            "auditor",
            &format!("CREATE TABLE {ARCHIVE}.{created} (x UInt8) ENGINE = MergeTree ORDER BY x"),
        )
        .await,
        &readonly("create table"),
    );
    // readonly = 2 lets a user change settings per query, but not `readonly` itself.
    assert_refused(
        harness
            .clickhouse
            .client_as("auditor")
            .with_setting("readonly", "0")
            .query(&format!("INSERT INTO {qualified} VALUES (2)"))
            .execute()
            .await,
        "Code: 164, e.displayText() = DB::Exception: Setting 'readonly' cannot be overrided in readonly mode",
    );
    assert_eq!(archive.rows(harness).await, 1);
    assert_eq!(archive.mutations(harness).await, 0);
    assert!(!table_exists(harness, ARCHIVE, &created).await);

    assert_refused(
        count_as(harness, "auditor", &projection).await,
        &access_denied(PROJECTION, "auditor"),
    );
}

#[tokio::test]
async fn the_api_reads_the_projection_only() {
    let harness = Harness::shared().unwrap();
    let archive = Table::with_one_row(harness, ARCHIVE).await;
    let projection = Table::with_one_row(harness, PROJECTION).await;

    assert_eq!(count_as(harness, "api", &projection).await.unwrap(), 1);

    assert_refused(
        insert_as(harness, "api", &projection).await,
        &readonly("insert into table"),
    );
    assert_eq!(projection.rows(harness).await, 1);
    assert_refused(
        count_as(harness, "api", &archive).await,
        &access_denied(ARCHIVE, "api"),
    );
}

#[tokio::test]
async fn the_projector_cannot_touch_the_archive() {
    let harness = Harness::shared().unwrap();
    let archive = Table::with_one_row(harness, ARCHIVE).await;
    let projection = Table::with_one_row(harness, PROJECTION).await;

    insert_as(harness, "projector", &projection).await.unwrap();
    assert_eq!(
        count_as(harness, "projector", &projection).await.unwrap(),
        2
    );

    assert_refused(
        count_as(harness, "projector", &archive).await,
        &access_denied(ARCHIVE, "projector"),
    );
    assert_refused(
        insert_as(harness, "projector", &archive).await,
        &access_denied(ARCHIVE, "projector"),
    );
    assert_eq!(archive.rows(harness).await, 1);
}

/// The admin has every right, so its password is what keeps anyone else on the machine out of
/// the archive: directly, and through `url()`, which any role (readonly = 2 included) can
/// point at the HTTP interface to run a query as `default`.
#[tokio::test]
async fn the_admin_needs_its_password() {
    let harness = Harness::shared().unwrap();
    let archive = Table::with_one_row(harness, ARCHIVE).await;
    let anonymous = clickhouse::Client::default()
        .with_url(harness.clickhouse.url())
        .with_validation(false);
    let password_required =
        "Code: 194, e.displayText() = DB::Exception: Password required for user default";

    assert_refused(
        anonymous
            .query(&format!("SELECT count() FROM {}", archive.qualified()))
            .fetch_one::<u64>()
            .await,
        password_required,
    );
    assert_refused(
        anonymous
            .clone()
            .with_user(ADMIN)
            .query(&format!("TRUNCATE TABLE {}", archive.qualified()))
            .execute()
            .await,
        password_required,
    );
    assert_eq!(archive.rows(harness).await, 1);

    // `query_raw`: the URL's `?` is not a bind parameter.
    let through_url = format!(
        "SELECT c FROM url('{}/?query=SELECT%20count()%20FROM%20{}', TSV, 'c UInt64')",
        harness.clickhouse.url(),
        archive.qualified()
    );
    assert_refused(
        harness
            .clickhouse
            .client_as("api")
            .query_raw(&through_url)
            .fetch_one::<u64>()
            .await,
        password_required,
    );
}

#[tokio::test]
async fn a_wrong_password_or_an_unknown_user_is_refused() {
    let harness = Harness::shared().unwrap();
    for user in std::iter::once(ADMIN).chain(ROLES) {
        let result = harness
            .clickhouse
            .client_as(user)
            .with_password(format!("{}-wrong", harness.clickhouse.password()))
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await;
        assert_refused(
            result,
            &format!("Code: 193, e.displayText() = DB::Exception: Wrong password for user {user}"),
        );
    }
    assert_refused(
        harness
            .clickhouse
            .client_as("archivist")
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await,
        "Code: 192, e.displayText() = DB::Exception: Unknown user archivist",
    );
}
