//! The projector's ClickHouse side against the harness's real server (18.16 here): the
//! migrations, the row mapping of every category, and the read queries' exactness while the
//! tables hold replayed duplicates. Each test migrates its own random database, so the tests
//! run alone or in parallel. They use the admin client: the role users are walled into the
//! fixed `ledgerline` database, which parallel tests must not share.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledgerline_consumers::clickhouse::{migrate, ClickHouseConfig};
use ledgerline_consumers::projector::queries::{
    Condition, EventQuery, EventReader, Field, ReadLimits,
};
use ledgerline_consumers::projector::row::{EventRow, JobStatusRow};
use ledgerline_consumers::projector::schema::MIGRATIONS;
use ledgerline_consumers::projector::{
    event_row, insert, job_status_row, retention, ProjectorSink,
};
use ledgerline_consumers::runtime::{Sink, TopicPartition};
use ledgerline_schemas::event::JobStatus;
use ledgerline_schemas::{samples, Category, Event};
use ledgerline_tests::{names, Harness};

const DAY: u32 = 86_400;

/// The admin client and a freshly migrated random database.
async fn migrated_database() -> (clickhouse::Client, String) {
    let harness = Harness::shared().unwrap();
    let database = harness.clickhouse.create_database().await.unwrap();
    let client = harness.clickhouse.client();
    assert_eq!(
        migrate(&client, &database, MIGRATIONS).await.unwrap(),
        [1, 2, 3]
    );
    (client, database)
}

fn now_secs() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    u32::try_from(secs).unwrap()
}

/// Rows for `events`, with consecutive offsets on partition 0 of the category's topic.
fn rows(events: &[Event], ingested_at: u32) -> Vec<EventRow> {
    events
        .iter()
        .zip(0..)
        .filter_map(|(event, offset)| {
            event_row(event, event.category().topic_name(), 0, offset, ingested_at)
        })
        .collect()
}

fn reader(client: &clickhouse::Client, database: &str) -> EventReader {
    EventReader::new(client.clone(), database, ReadLimits::default()).unwrap()
}

async fn count(client: &clickhouse::Client, database: &str, query: &EventQuery) -> u64 {
    reader(client, database).count(query).await.unwrap()
}

/// Newest first, up to `limit`.
async fn search(
    client: &clickhouse::Client,
    database: &str,
    query: &EventQuery,
    limit: u64,
) -> Vec<Event> {
    reader(client, database)
        .search(query, None, limit)
        .await
        .unwrap()
        .events
}

fn of_category(category: Category) -> EventQuery {
    EventQuery::default().with(Condition::is(Field::Category, category.as_str()))
}

#[tokio::test]
async fn migrations_create_the_tables_and_are_idempotent() {
    let harness = Harness::shared().unwrap();
    let client = harness.clickhouse.client();
    // A database that does not exist yet is created.
    let database = names::database();
    assert_eq!(
        migrate(&client, &database, MIGRATIONS).await.unwrap(),
        [1, 2, 3]
    );
    assert_eq!(
        migrate(&client, &database, MIGRATIONS).await.unwrap(),
        Vec::<u32>::new()
    );

    let tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&database)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(tables, ["events", "job_status", "schema_migrations"]);
    let versions: Vec<(u32, String)> = client
        .query(&format!(
            "SELECT version, description FROM {database}.schema_migrations ORDER BY version"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        versions,
        [
            (1, "events and job_status".to_owned()),
            (2, "events sorted by time first".to_owned()),
            (3, "distributed read tables (cluster only)".to_owned())
        ]
    );

    // A bad name is refused before any SQL is sent.
    let error = migrate(&client, "ledgerline; DROP DATABASE x", MIGRATIONS)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("invalid clickhouse identifier"),
        "{error}"
    );
}

/// The sorting key of `events` as the server has it.
async fn events_sorting_key(client: &clickhouse::Client, database: &str) -> String {
    let create: String = client
        .query(&format!("SHOW CREATE TABLE {database}.events"))
        .fetch_one()
        .await
        .unwrap();
    let start = create.find("ORDER BY").unwrap();
    create[start..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A database made by migration 1 alone, holding events, is rebuilt by migration 2 with
/// every event kept, and the rebuild can run again from any point after a crash.
#[tokio::test]
async fn migration_2_rebuilds_events_sorted_by_time_keeping_every_event() {
    let harness = Harness::shared().unwrap();
    let client = harness.clickhouse.client();
    let database = names::database();
    assert_eq!(
        migrate(&client, &database, &MIGRATIONS[..1]).await.unwrap(),
        [1]
    );
    assert!(events_sorting_key(&client, &database)
        .await
        .contains("category, service"));
    let events: Vec<Event> = (0..50)
        .map(|n| {
            samples::event(
                [
                    Category::Audit,
                    Category::Job,
                    Category::Connection,
                    Category::System,
                ][n % 4],
                n as u64,
            )
        })
        .collect();
    for category in [
        Category::Audit,
        Category::Job,
        Category::Connection,
        Category::System,
    ] {
        let of: Vec<Event> = events
            .iter()
            .filter(|e| e.category() == category)
            .cloned()
            .collect();
        insert::insert_events(&client, &database, &rows(&of, now_secs()))
            .await
            .unwrap();
    }
    let before = count(&client, &database, &EventQuery::default()).await;
    assert_eq!(before, 50);

    assert_eq!(
        migrate(&client, &database, MIGRATIONS).await.unwrap(),
        [2, 3]
    );
    assert!(
        events_sorting_key(&client, &database)
            .await
            .starts_with("ORDER BY (occurred_at_us, event_id)"),
        "{}",
        events_sorting_key(&client, &database).await
    );
    assert_eq!(count(&client, &database, &EventQuery::default()).await, 50);
    let mut read = search(&client, &database, &EventQuery::default(), 100).await;
    let mut expected = events.clone();
    let key = |e: &Event| e.envelope().event_id;
    read.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(read, expected);

    // A crash after the swap, before the migration was recorded: the statements run again.
    for statement in MIGRATIONS[1].statements {
        client
            .query_raw(&statement.replace("{database}", &database))
            .execute()
            .await
            .unwrap();
    }
    assert_eq!(count(&client, &database, &EventQuery::default()).await, 50);
    let tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(&database)
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(tables, ["events", "job_status", "schema_migrations"]);
}

#[tokio::test]
async fn every_stored_category_lands_in_events_with_every_field() {
    let (client, database) = migrated_database().await;
    let ingested_at = now_secs();
    for category in Category::ALL {
        let event = samples::event(category, 3);
        let Some(row) = event_row(&event, category.topic_name(), 2, 17, ingested_at) else {
            assert_eq!(category, Category::Session, "only sessions have no row");
            continue;
        };
        insert::insert_events(&client, &database, std::slice::from_ref(&row))
            .await
            .unwrap();

        let read = search(&client, &database, &of_category(category), 10).await;
        // Every column, nullable ones, the attribute and field arrays, the details JSON and
        // the error chain: the whole event back.
        assert_eq!(read, [event], "{category}");
    }
    assert_eq!(count(&client, &database, &EventQuery::default()).await, 4);
    assert_eq!(
        count(&client, &database, &of_category(Category::Session)).await,
        0
    );
}

#[tokio::test]
async fn replayed_batches_are_read_once() {
    let (client, database) = migrated_database().await;
    let events: Vec<Event> = (0..20).map(|n| samples::event(Category::Job, n)).collect();
    let ingested_at = now_secs();
    let batch = rows(&events, ingested_at);
    // The replay of an insert whose answer was lost: same rows, same partition.
    insert::insert_events(&client, &database, &batch)
        .await
        .unwrap();
    insert::insert_events(&client, &database, &batch)
        .await
        .unwrap();
    // A replay the next day lands in another partition, where merges never reach.
    insert::insert_events(&client, &database, &rows(&events, ingested_at + DAY))
        .await
        .unwrap();

    let events_reader = reader(&client, &database);
    assert_eq!(events_reader.duplicate_event_ids().await.unwrap(), 40);
    let all = EventQuery::default();
    assert_eq!(count(&client, &database, &all).await, 20);
    let found = search(&client, &database, &all, 100).await;
    assert_eq!(found.len(), 20);
    let ids: std::collections::BTreeSet<uuid::Uuid> = found
        .iter()
        .map(|event| event.envelope().event_id)
        .collect();
    assert_eq!(ids.len(), 20);
    // Newest first.
    assert!(found
        .windows(2)
        .all(|pair| pair[0].envelope().occurred_at >= pair[1].envelope().occurred_at));

    // Merges remove the copies within a partition only; reads stay exact either way.
    client
        .query(&format!("OPTIMIZE TABLE {database}.events FINAL"))
        .execute()
        .await
        .unwrap();
    assert_eq!(events_reader.duplicate_event_ids().await.unwrap(), 20);
    assert_eq!(count(&client, &database, &all).await, 20);
}

#[tokio::test]
async fn job_status_shows_the_latest_state() {
    let (client, database) = migrated_database().await;
    let job = |n: u64, job_id: &str, status: JobStatus, progress: i32| {
        let mut event = samples::job(n);
        event.job_id = job_id.to_owned();
        event.status = status;
        event.progress = progress;
        Event::Job(event)
    };
    // `n` orders occurred_at; offsets follow the order the producer sent them in.
    let queued = (0, job(1, "job-a", JobStatus::Queued, 0));
    let running = (1, job(2, "job-a", JobStatus::Running, 50));
    let completed = (2, job(3, "job-a", JobStatus::Completed, 100));
    let failed = (3, job(4, "job-b", JobStatus::Failed, 10));
    let ingested_at = now_secs();
    let status_row = |(offset, event): &(i64, Event)| -> JobStatusRow {
        job_status_row(event, "ledgerline.job", 0, *offset, ingested_at).unwrap()
    };
    // Inserted out of order, one insert each, so no merge has sorted them out.
    for entry in [&completed, &queued, &failed, &running] {
        insert::insert_job_statuses(&client, &database, &[status_row(entry)])
            .await
            .unwrap();
    }

    let jobs = reader(&client, &database);
    let latest = jobs.job("job-a").await.unwrap().unwrap();
    assert_eq!(
        (latest.status, latest.progress),
        (JobStatus::Completed, 100)
    );
    let completed_row = status_row(&completed);
    assert_eq!(
        (latest.event_id.as_str(), latest.updated_at_us),
        (
            completed_row.event_id.as_str(),
            completed_row.occurred_at_us
        )
    );
    assert_eq!(latest.details, serde_json::json!({"devices_done": 3}));
    assert_eq!(jobs.job("job-unknown").await.unwrap(), None);

    let failed_jobs = jobs.jobs(Some(JobStatus::Failed), 10).await.unwrap();
    let ids: Vec<&str> = failed_jobs.iter().map(|job| job.job_id.as_str()).collect();
    assert_eq!(ids, ["job-b"]);
    // job-a was QUEUED once, but that is not its state any more.
    for stale in [JobStatus::Queued, JobStatus::Running] {
        let listed = jobs.jobs(Some(stale), 10).await.unwrap();
        assert!(listed.is_empty(), "{stale}: {listed:?}");
    }
    let all = jobs.jobs(None, 10).await.unwrap();
    let states: Vec<(&str, JobStatus)> = all
        .iter()
        .map(|job| (job.job_id.as_str(), job.status))
        .collect();
    assert_eq!(
        states,
        [
            ("job-b", JobStatus::Failed),
            ("job-a", JobStatus::Completed)
        ]
    );
}

#[tokio::test]
async fn resume_positions_follow_the_greatest_stored_offset_per_partition() {
    let (client, database) = migrated_database().await;
    // The real topic name: the sink finds a topic's rows through its category. The database
    // is this test's own, so nothing else writes there.
    let topic = Category::System.topic_name().to_owned();
    let ingested_at = now_secs();
    let stored: [(i32, i64); 6] = [(0, 3), (0, 7), (1, 3), (2, 10), (2, 9), (0, 5)];
    let batch: Vec<EventRow> = stored
        .iter()
        .zip(0..)
        .map(|((partition, offset), n)| {
            event_row(
                &samples::event(Category::System, n),
                &topic,
                *partition,
                *offset,
                ingested_at,
            )
            .unwrap()
        })
        .collect();
    insert::insert_events(&client, &database, &batch)
        .await
        .unwrap();
    // A replay and another topic change nothing.
    insert::insert_events(&client, &database, &batch)
        .await
        .unwrap();
    let other = event_row(
        &samples::event(Category::System, 9),
        "other-topic",
        0,
        99,
        ingested_at,
    )
    .unwrap();
    insert::insert_events(&client, &database, &[other])
        .await
        .unwrap();

    // What the sink answers the runtime when the group assigns it these partitions: one
    // past the greatest stored offset; nothing for a partition with nothing stored.
    let harness = Harness::shared().unwrap();
    let mut sink = ProjectorSink::start(&ClickHouseConfig {
        url: harness.clickhouse.url(),
        user: ledgerline_tests::clickhouse::ADMIN.to_owned(),
        password: harness.clickhouse.password().into(),
        database: database.clone(),
        ..ClickHouseConfig::default()
    })
    .await
    .unwrap();
    let partitions: Vec<TopicPartition> = (0..4)
        .map(|partition| TopicPartition::new(&topic, partition))
        .chain([TopicPartition::new("never-seen", 0)])
        .collect();
    let positions = sink.on_assign(&partitions).await.unwrap();
    let positions: BTreeMap<(String, i32), i64> = positions
        .into_iter()
        .map(|(partition, next)| ((partition.topic.to_string(), partition.partition), next))
        .collect();
    assert_eq!(
        positions,
        BTreeMap::from([
            ((topic.clone(), 0), 8),
            ((topic.clone(), 1), 4),
            ((topic.clone(), 2), 11)
        ])
    );
}

#[tokio::test]
async fn retention_drops_only_expired_partitions_of_the_category() {
    let (client, database) = migrated_database().await;
    let today = now_secs();
    let forty_days_ago = today - 40 * DAY;
    for category in [Category::System, Category::Job, Category::Audit] {
        for ingested_at in [forty_days_ago, today] {
            let batch = rows(&[samples::event(category, 1)], ingested_at);
            insert::insert_events(&client, &database, &batch)
                .await
                .unwrap();
        }
    }
    let now = UNIX_EPOCH + Duration::from_secs(u64::from(today));

    let dropped = retention::drop_expired_partitions(&client, &database, Category::System, 30, now)
        .await
        .unwrap();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(dropped[0].starts_with("('system',"), "{dropped:?}");
    // Each insert held its own sample event: one system event is left, today's.
    assert_eq!(
        count(&client, &database, &of_category(Category::System)).await,
        1
    );
    let ingested: Vec<u32> = client
        .query(&format!(
            "SELECT ingested_at FROM {database}.events WHERE category = 'system'"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(ingested, [today]);
    // Other categories' old partitions stay.
    assert_eq!(
        count(&client, &database, &of_category(Category::Job)).await,
        2
    );

    // Audit is kept a year.
    let dropped = retention::drop_expired_partitions(&client, &database, Category::Audit, 365, now)
        .await
        .unwrap();
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(
        count(&client, &database, &of_category(Category::Audit)).await,
        2
    );

    // Running again finds nothing left to drop.
    let dropped = retention::drop_expired_partitions(&client, &database, Category::System, 30, now)
        .await
        .unwrap();
    assert!(dropped.is_empty(), "{dropped:?}");
}

#[tokio::test]
async fn filters_select_the_right_events() {
    let (client, database) = migrated_database().await;
    let ingested_at = now_secs();
    let system = |n: u64, service: &str, message: &str, user: &str| {
        let mut event = samples::system(n);
        event.envelope.service = service.to_owned();
        event.envelope.message = message.to_owned();
        event
            .envelope
            .attributes
            .insert("user_id".to_owned(), user.to_owned());
        Event::System(event)
    };
    let events = [
        system(1, "billing", "Invoice paid by O'Brien", "acme"),
        system(2, "billing", "Invoice refunded", "globex"),
        system(3, "shipping", "Parcel sent", "acme"),
        system(4, "shipping", "Parcel lost; 50% refunded?", "o'brien"),
    ];
    let occurred = |n: usize| events[n].envelope().occurred_at;
    let id = |n: usize| events[n].envelope().event_id.to_string();
    insert::insert_events(&client, &database, &rows(&events, ingested_at))
        .await
        .unwrap();
    let connection = Event::Connection(samples::connection(5));
    insert::insert_events(
        &client,
        &database,
        &rows(std::slice::from_ref(&connection), ingested_at),
    )
    .await
    .unwrap();

    let search = |query: EventQuery| {
        let client = client.clone();
        let database = database.clone();
        async move {
            let found = search(&client, &database, &query, 100).await;
            let counted = count(&client, &database, &query).await;
            assert_eq!(counted, found.len() as u64, "{query:?}");
            found
                .into_iter()
                .map(|event| event.envelope().event_id.to_string())
                .collect::<Vec<String>>()
        }
    };
    let is = |field: Field, value: &str| EventQuery::default().with(Condition::is(field, value));

    assert_eq!(search(is(Field::Service, "billing")).await, [id(1), id(0)]);

    let by_time = search(EventQuery {
        since_us: occurred(1),
        until_us: occurred(3),
        ..of_category(Category::System)
    })
    .await;
    assert_eq!(by_time, [id(2), id(1)]);

    assert_eq!(search(is(Field::Text, "REFUNDED")).await, [id(3), id(1)]);

    // Quotes and question marks are values, not SQL.
    assert_eq!(search(is(Field::Text, "o'brien")).await, [id(0)]);
    assert_eq!(search(is(Field::UserId, "o'brien")).await, [id(3)]);
    assert_eq!(
        search(is(Field::UserId, "50% refunded?")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        search(is(Field::UserId, "x' OR '1'='1")).await,
        Vec::<String>::new()
    );
    assert_eq!(search(is(Field::UserId, "globex")).await, [id(1)]);
    // A missing key does not match the empty value: the connection event has a user_id, so
    // remove it from the picture by category.
    assert_eq!(
        search(of_category(Category::System).with(Condition::is(Field::UserId, ""))).await,
        Vec::<String>::new()
    );

    let combined =
        search(is(Field::Service, "shipping").with(Condition::is(Field::UserId, "acme"))).await;
    assert_eq!(combined, [id(2)]);

    let connection_id = connection.envelope().event_id.to_string();
    let by_device = search(is(Field::DeviceId, "device-5")).await;
    assert_eq!(by_device, std::slice::from_ref(&connection_id));
    let by_job =
        search(is(Field::JobId, "job-5").with(Condition::is(Field::Name, "device.connect"))).await;
    assert_eq!(by_job, [connection_id]);

    // The limit keeps the newest.
    let newest = reader(&client, &database)
        .search(&of_category(Category::System), None, 2)
        .await
        .unwrap();
    let ids: Vec<String> = newest
        .events
        .iter()
        .map(|event| event.envelope().event_id.to_string())
        .collect();
    assert_eq!(ids, [id(3), id(2)]);
    assert!(newest.next.is_some());
}
