//! The query API's read library against the harness's real ClickHouse (18.16 here): the
//! projector's [`EventReader`] over `events` and `job_status`, and the archive's
//! [`AuditReader`] over `records`. Each test migrates its own random database, so the tests
//! run alone or in parallel.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use ledgerline_consumers::archive::reader::AuditReader;
use ledgerline_consumers::archive::row::{ArchiveRow, EventFields, KIND_EVENT, KIND_GAP};
use ledgerline_consumers::clickhouse::{insert_rows, migrate};
use ledgerline_consumers::projector::queries::{
    limit_hit, Condition, Cursor, EventQuery, EventReader, Field, Match, QueryLimit, ReadLimits,
    SplitBy, TopField,
};
use ledgerline_consumers::projector::schema::MIGRATIONS;
use ledgerline_consumers::projector::{event_row, insert, job_status_row};
use ledgerline_schemas::event::{Envelope, Level, Outcome, Target};
use ledgerline_schemas::{samples, Category, Event};
use ledgerline_tests::Harness;

const DAY: u32 = 86_400;
const LEVELS: [Level; 6] = [
    Level::Trace,
    Level::Debug,
    Level::Info,
    Level::Warn,
    Level::Error,
    Level::Critical,
];
const STORED: [Category; 4] = [
    Category::Audit,
    Category::Job,
    Category::Connection,
    Category::System,
];

fn now_secs() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    u32::try_from(secs).unwrap()
}

fn envelope_mut(event: &mut Event) -> &mut Envelope {
    match event {
        Event::Audit(event) => &mut event.envelope,
        Event::Job(event) => &mut event.envelope,
        Event::Connection(event) => &mut event.envelope,
        Event::System(event) => &mut event.envelope,
        Event::Session(event) => &mut event.envelope,
    }
}

fn id(event: &Event) -> String {
    event.envelope().event_id.to_string()
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(id).collect()
}

/// A freshly migrated database and its reader.
async fn database() -> (clickhouse::Client, String, EventReader) {
    let harness = Harness::shared().unwrap();
    let database = harness.clickhouse.create_database().await.unwrap();
    let client = harness.clickhouse.client();
    migrate(&client, &database, MIGRATIONS).await.unwrap();
    let reader = EventReader::new(client.clone(), &database, ReadLimits::default()).unwrap();
    (client, database, reader)
}

/// Stores `events` (no sessions) the way the projector does: one insert per category, and
/// job events in `job_status` too.
async fn store(client: &clickhouse::Client, database: &str, events: &[Event], ingested_at: u32) {
    for category in STORED {
        let rows: Vec<_> = events
            .iter()
            .filter(|event| event.category() == category)
            .zip(0..)
            .filter_map(|(event, offset)| {
                event_row(event, category.topic_name(), 0, offset, ingested_at)
            })
            .collect();
        insert::insert_events(client, database, &rows)
            .await
            .unwrap();
        let statuses: Vec<_> = events
            .iter()
            .zip(0..)
            .filter_map(|(event, offset)| {
                job_status_row(event, "ledgerline.job", 0, offset, ingested_at)
            })
            .collect();
        if category == Category::Job {
            insert::insert_job_statuses(client, database, &statuses)
                .await
                .unwrap();
        }
    }
}

/// 48 events, 12 of each stored category, with levels and services varying; `n` orders
/// them in time. The system events are stored twice, the copy in another day's partition.
async fn populated() -> (clickhouse::Client, String, EventReader, Vec<Event>) {
    let (client, database, reader) = database().await;
    let events: Vec<Event> = (0..48_u64)
        .map(|n| {
            let mut event = samples::event(STORED[(n % 4) as usize], n);
            let envelope = envelope_mut(&mut event);
            envelope.level = LEVELS[(n % 6) as usize];
            envelope.service = format!("svc-{}", n % 3);
            event
        })
        .collect();
    let ingested_at = now_secs();
    store(&client, &database, &events, ingested_at).await;
    let systems: Vec<Event> = events
        .iter()
        .filter(|event| event.category() == Category::System)
        .cloned()
        .collect();
    store(&client, &database, &systems, ingested_at + DAY).await;
    assert_eq!(reader.duplicate_event_ids().await.unwrap(), 12);
    (client, database, reader, events)
}

fn newest_first(events: impl IntoIterator<Item = Event>) -> Vec<Event> {
    let mut events: Vec<Event> = events.into_iter().collect();
    events.sort_by_key(|event| std::cmp::Reverse((event.envelope().occurred_at, id(event))));
    events
}

/// Every page of `query`, `limit` at a time.
async fn all_pages(reader: &EventReader, query: &EventQuery, limit: u64) -> Vec<Event> {
    let mut events = Vec::new();
    let mut after: Option<Cursor> = None;
    for _ in 0..1_000 {
        let page = reader.search(query, after.as_ref(), limit).await.unwrap();
        assert!(page.events.len() as u64 <= limit);
        events.extend(page.events);
        match page.next {
            Some(next) => after = Some(next),
            None => return events,
        }
    }
    panic!("paging did not end");
}

fn with(field: Field, matches: Vec<Match>, negated: bool) -> EventQuery {
    EventQuery::default().with(Condition {
        field,
        matches,
        negated,
    })
}

fn exact<S: AsRef<str>>(values: &[S]) -> Vec<Match> {
    values
        .iter()
        .map(|value| Match::Exact(value.as_ref().to_owned()))
        .collect()
}

#[tokio::test]
async fn searches_page_newest_first_each_event_once() {
    let (_client, _database, reader, events) = populated().await;
    let all = EventQuery::default();
    assert_eq!(reader.count(&all).await.unwrap(), 48);
    let expected = newest_first(events.clone());
    let first = reader.search(&all, None, 10).await.unwrap();
    assert_eq!(first.events, expected[..10]);
    assert_eq!(
        first.next,
        Some(Cursor {
            occurred_at_us: expected[9].envelope().occurred_at,
            event_id: id(&expected[9]),
        })
    );
    for limit in [1, 5, 7, 48, 100] {
        assert_eq!(all_pages(&reader, &all, limit).await, expected, "{limit}");
    }
    // A range, paged with a small limit: every event in it exactly once.
    let range = EventQuery {
        since_us: events[10].envelope().occurred_at,
        until_us: events[30].envelope().occurred_at,
        ..EventQuery::default()
    };
    let paged = all_pages(&reader, &range, 3).await;
    assert_eq!(paged, newest_first(events[10..30].to_vec()));
    assert_eq!(reader.count(&range).await.unwrap(), 20);
    // An empty result has no next page; neither does a zero limit.
    let none = with(Field::Service, exact(&["nothing"]), false);
    let page = reader.search(&none, None, 10).await.unwrap();
    assert!(page.events.is_empty() && page.next.is_none());
    let page = reader.search(&all, None, 0).await.unwrap();
    assert!(page.events.is_empty() && page.next.is_none());
    reader.ping().await.unwrap();
}

#[tokio::test]
async fn hidden_categories_never_come_back() {
    let (_client, _database, reader, events) = populated().await;
    let analyst = EventQuery {
        hidden: vec![Category::Audit],
        ..EventQuery::default()
    };
    let visible: Vec<Event> = events
        .iter()
        .filter(|event| event.category() != Category::Audit)
        .cloned()
        .collect();
    assert_eq!(all_pages(&reader, &analyst, 7).await, newest_first(visible));
    assert_eq!(reader.count(&analyst).await.unwrap(), 36);
    // Asking for audit explicitly changes nothing.
    let asking = EventQuery {
        hidden: vec![Category::Audit],
        ..with(Field::Category, exact(&["audit"]), false)
    };
    assert_eq!(reader.count(&asking).await.unwrap(), 0);
    assert!(reader
        .search(&asking, None, 10)
        .await
        .unwrap()
        .events
        .is_empty());
    let audit = &events[0];
    assert_eq!(audit.category(), Category::Audit);
    assert_eq!(
        reader.event(&id(audit), &[Category::Audit]).await.unwrap(),
        None
    );
    assert_eq!(
        reader.event(&id(audit), &[]).await.unwrap().as_ref(),
        Some(audit)
    );
    let histogram = reader
        .histogram(&analyst, 3_600, SplitBy::Category)
        .await
        .unwrap();
    assert!(histogram.iter().all(|bucket| bucket.key != "audit"));
    assert_eq!(histogram.iter().map(|bucket| bucket.count).sum::<u64>(), 36);
    // Audit events are the only ones named user.login.success.
    let top = reader.top(&analyst, TopField::Name, 10).await.unwrap();
    assert!(top.iter().all(|entry| entry.value != "user.login.success"));
    assert_eq!(top.len(), 3);
}

#[tokio::test]
async fn conditions_levels_negations_prefixes_and_text() {
    let (_client, _database, reader, events) = populated().await;
    let matching = |predicate: &dyn Fn(&Event) -> bool| {
        newest_first(events.iter().filter(|event| predicate(event)).cloned())
    };
    let check = |query: EventQuery, expected: Vec<Event>| {
        let reader = reader.clone();
        async move {
            let found = all_pages(&reader, &query, 100).await;
            assert_eq!(ids(&found), ids(&expected), "{query:?}");
            assert_eq!(
                reader.count(&query).await.unwrap(),
                expected.len() as u64,
                "{query:?}"
            );
        }
    };
    let level = |event: &Event| event.envelope().level;

    let warn_up = EventQuery {
        min_level: Some(Level::Warn),
        ..EventQuery::default()
    };
    check(warn_up, matching(&|event| level(event) >= Level::Warn)).await;
    check(
        with(Field::Level, exact(&["ERROR"]), false),
        matching(&|event| level(event) == Level::Error),
    )
    .await;
    // Several exact values are one IN.
    check(
        with(Field::Service, exact(&["svc-0", "svc-2"]), false),
        matching(&|event| event.envelope().service != "svc-1"),
    )
    .await;
    check(
        with(Field::Service, exact(&["svc-0", "svc-2"]), true),
        matching(&|event| event.envelope().service == "svc-1"),
    )
    .await;
    // Prefixes, alone and with an exact value.
    check(
        with(Field::Name, vec![Match::Prefix("device.".into())], false),
        matching(&|event| event.category() == Category::Connection),
    )
    .await;
    check(
        with(
            Field::Name,
            vec![
                Match::Prefix("job.".into()),
                Match::Exact("system.log".into()),
            ],
            false,
        ),
        matching(&|event| matches!(event.category(), Category::Job | Category::System)),
    )
    .await;
    // Nullable columns: a negation keeps the events that have no such field.
    check(
        with(Field::Outcome, exact(&["FAILURE"]), false),
        matching(&|event| event.category() == Category::Connection),
    )
    .await;
    check(
        with(Field::Outcome, exact(&["FAILURE"]), true),
        matching(&|event| event.category() != Category::Connection),
    )
    .await;
    check(
        with(Field::Actor, vec![Match::Prefix("user-".into())], true),
        matching(&|event| event.category() != Category::Audit),
    )
    .await;
    check(
        with(Field::JobId, exact(&["job-1"]), false),
        matching(&|event| match event {
            Event::Job(job) => job.job_id == "job-1",
            Event::Connection(connection) => connection.job_id.as_deref() == Some("job-1"),
            _ => false,
        }),
    )
    .await;
    check(
        with(Field::UserId, exact(&["user-3", "user-4"]), false),
        matching(&|event| {
            let user = &event.envelope().attributes["user_id"];
            user == "user-3" || user == "user-4"
        }),
    )
    .await;
    check(
        with(Field::Target, exact(&["session-4"]), false),
        matching(&|event| id(event) == id(&events[4])),
    )
    .await;
    // Free text is a case-insensitive substring; a prefix is a substring too.
    check(
        with(Field::Text, exact(&["JOB.PROGRESS NUMBER 1"]), false),
        matching(&|event| {
            event
                .envelope()
                .message
                .starts_with("sample job.progress number 1")
        }),
    )
    .await;
    check(
        with(Field::Text, vec![Match::Prefix("progress".into())], false),
        matching(&|event| event.category() == Category::Job),
    )
    .await;
    // Conditions are ANDed.
    check(
        EventQuery {
            min_level: Some(Level::Error),
            ..with(Field::Category, exact(&["system"]), false)
                .with(Condition::is(Field::Host, "host-1"))
        },
        matching(&|event| event.category() == Category::System && level(event) >= Level::Error),
    )
    .await;
}

#[tokio::test]
async fn histograms_and_tops_agree_with_counts() {
    let (_client, _database, reader, events) = populated().await;
    let all = EventQuery::default();
    let total = reader.count(&all).await.unwrap();
    for by in [SplitBy::Level, SplitBy::Category] {
        for interval in [1, 60, 3_600] {
            let buckets = reader.histogram(&all, interval, by).await.unwrap();
            assert_eq!(
                buckets.iter().map(|bucket| bucket.count).sum::<u64>(),
                total,
                "{by:?} {interval}"
            );
            let interval_us = interval as i64 * 1_000_000;
            assert!(buckets
                .iter()
                .all(|bucket| bucket.start_us % interval_us == 0));
            let order: Vec<(i64, &str)> = buckets
                .iter()
                .map(|bucket| (bucket.start_us, bucket.key.as_str()))
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted);
        }
    }
    // The samples are milliseconds apart: one one-hour bucket per category, 12 each (the
    // duplicated system events counted once).
    let buckets = reader
        .histogram(&all, 3_600, SplitBy::Category)
        .await
        .unwrap();
    let counts: BTreeMap<&str, u64> = buckets
        .iter()
        .map(|bucket| (bucket.key.as_str(), bucket.count))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("audit", 12),
            ("connection", 12),
            ("job", 12),
            ("system", 12)
        ])
    );
    let errors = EventQuery {
        min_level: Some(Level::Error),
        ..EventQuery::default()
    };
    let by_level = reader
        .histogram(&errors, 3_600, SplitBy::Level)
        .await
        .unwrap();
    let levels: BTreeSet<&str> = by_level.iter().map(|bucket| bucket.key.as_str()).collect();
    assert_eq!(levels, BTreeSet::from(["CRITICAL", "ERROR"]));

    let top = reader.top(&all, TopField::Service, 2).await.unwrap();
    assert_eq!(top.len(), 2);
    assert!(top.iter().all(|entry| entry.count == 16));
    assert_eq!(top[0].value, "svc-0");
    assert_eq!(top[1].value, "svc-1");
    let names = reader.top(&all, TopField::Name, 10).await.unwrap();
    assert_eq!(names.iter().map(|entry| entry.count).sum::<u64>(), 48);
    assert_eq!(names.len(), 4);
    let _ = events;
}

#[tokio::test]
async fn jobs_and_their_timelines() {
    let (_client, _database, reader, events) = populated().await;
    let job_events: Vec<&Event> = events
        .iter()
        .filter(|event| event.category() == Category::Job)
        .collect();
    let job_ids: BTreeSet<String> = job_events
        .iter()
        .filter_map(|event| match event {
            Event::Job(job) => Some(job.job_id.clone()),
            _ => None,
        })
        .collect();
    let jobs = reader.jobs(None, 100).await.unwrap();
    assert_eq!(jobs.len(), job_ids.len());
    assert!(jobs
        .windows(2)
        .all(|pair| pair[0].updated_at_us >= pair[1].updated_at_us));
    let limited = reader.jobs(None, 2).await.unwrap();
    assert_eq!(limited, jobs[..2]);

    let Event::Job(latest) = job_events
        .iter()
        .rev()
        .find(|event| matches!(event, Event::Job(job) if job.job_id == "job-1"))
        .unwrap()
    else {
        unreachable!()
    };
    let state = reader.job("job-1").await.unwrap().unwrap();
    assert_eq!(state.event_id, latest.envelope.event_id.to_string());
    assert_eq!(state.updated_at_us, latest.envelope.occurred_at);
    assert_eq!(state.progress, latest.progress);
    assert_eq!(state.details, serde_json::json!({"devices_done": 3}));
    assert_eq!(reader.job("job-none").await.unwrap(), None);
    assert!(reader
        .jobs(Some(ledgerline_schemas::event::JobStatus::Failed), 10)
        .await
        .unwrap()
        .is_empty());

    let timeline = reader.job_timeline("job-1", 100).await.unwrap();
    let mut expected: Vec<Event> = events
        .iter()
        .filter(|event| match event {
            Event::Job(job) => job.job_id == "job-1",
            Event::Connection(connection) => connection.job_id.as_deref() == Some("job-1"),
            _ => false,
        })
        .cloned()
        .collect();
    expected.sort_by_key(|event| (event.envelope().occurred_at, id(event)));
    assert!(!expected.is_empty());
    assert_eq!(timeline, expected);
    assert_eq!(
        reader.job_timeline("job-1", 1).await.unwrap(),
        expected[..1]
    );
}

/// Strings that would break SQL built by formatting, and a value too long for a URL.
fn hostile_strings() -> Vec<String> {
    vec![
        "o'brien".to_owned(),
        "''; DROP TABLE events; --".to_owned(),
        "back\\slash\\".to_owned(),
        "\\'".to_owned(),
        "-- comment".to_owned(),
        "/* open comment".to_owned(),
        "x' UNION SELECT 1, 2, 3 --".to_owned(),
        "?, ? ?fields".to_owned(),
        "tab\tnew\nline`tick\"quote".to_owned(),
        "nul\0byte".to_owned(),
        "ünïcødé ✓".to_owned(),
        "%_*".to_owned(),
        "a".repeat(100_000),
    ]
}

#[tokio::test]
async fn hostile_values_are_data() {
    let (client, database, reader) = database().await;
    let hostile = hostile_strings();
    let mut systems = Vec::new();
    let mut audits = Vec::new();
    for (n, text) in (0_u64..).zip(&hostile) {
        let mut system = samples::system(n);
        system.envelope.service = text.clone();
        system.envelope.host = text.clone();
        system.envelope.name = text.clone();
        system.envelope.message = text.clone();
        system.envelope.request_id = Some(text.clone());
        system.envelope.trace_id = Some(text.clone());
        system
            .envelope
            .attributes
            .insert("user_id".to_owned(), text.clone());
        systems.push(Event::System(system));
        let mut audit = samples::audit(100 + n);
        audit.actor.id = text.clone();
        audit.action = text.clone();
        audit.target = Some(Target {
            kind: "k".to_owned(),
            id: text.clone(),
        });
        audits.push(Event::Audit(audit));
    }
    let ingested_at = now_secs();
    store(&client, &database, &systems, ingested_at).await;
    store(&client, &database, &audits, ingested_at).await;

    let system_fields = [
        Field::Service,
        Field::Host,
        Field::Name,
        Field::RequestId,
        Field::TraceId,
        Field::UserId,
        Field::Text,
    ];
    let audit_fields = [Field::Actor, Field::Action, Field::Target];
    for (n, text) in hostile.iter().enumerate() {
        let shown: String = text.chars().take(40).collect();
        for (fields, expected) in [
            (&system_fields[..], &systems[n]),
            (&audit_fields[..], &audits[n]),
        ] {
            for field in fields {
                // The text and its prefix both find exactly its event (the 100 kB text's
                // prefix `a` finds it alone too: no other value starts with `a`... except
                // for free text, which is a substring search).
                let found = reader
                    .search(&with(*field, exact(&[text]), false), None, 10)
                    .await
                    .unwrap_or_else(|error| panic!("{field:?} {shown:?}: {error:?}"));
                let matched: Vec<&Event> = found
                    .events
                    .iter()
                    .filter(|event| id(event) == id(expected))
                    .collect();
                assert_eq!(matched, [expected], "{field:?} {shown:?}");
                let prefix = with(*field, vec![Match::Prefix(text.clone())], false);
                let found = reader.search(&prefix, None, 50).await.unwrap();
                assert!(
                    found.events.iter().any(|event| id(event) == id(expected)),
                    "{field:?} prefix {shown:?}"
                );
                // Negated, the event is left out; the count agrees.
                let negated = with(*field, exact(&[text]), true);
                let found = all_pages(&reader, &negated, 100).await;
                assert!(
                    found.iter().all(|event| id(event) != id(expected)),
                    "{field:?} negated {shown:?}"
                );
                assert_eq!(reader.count(&negated).await.unwrap(), found.len() as u64);
                // A value that is not stored matches nothing, and fails nothing.
                let other = format!("{text}\u{1}");
                let found = reader
                    .search(&with(*field, exact(&[&other]), false), None, 10)
                    .await
                    .unwrap();
                assert!(found.events.is_empty(), "{field:?} {shown:?}");
            }
        }
        for field in [Field::Category, Field::Level, Field::Outcome, Field::JobId] {
            assert_eq!(
                reader
                    .count(&with(
                        field,
                        vec![Match::Exact(text.clone()), Match::Prefix(text.clone())],
                        false
                    ))
                    .await
                    .unwrap_or_else(|error| panic!("{field:?} {shown:?}: {error:?}")),
                0
            );
        }
        assert_eq!(reader.event(text, &[]).await.unwrap(), None);
        assert!(reader.job_timeline(text, 10).await.unwrap().is_empty());
        assert_eq!(reader.job(text).await.unwrap(), None);
        let cursor = Cursor {
            occurred_at_us: i64::MAX,
            event_id: text.clone(),
        };
        reader
            .search(&EventQuery::default(), Some(&cursor), 1)
            .await
            .unwrap();
    }
    assert_eq!(
        reader.count(&EventQuery::default()).await.unwrap(),
        2 * hostile.len() as u64
    );
}

#[tokio::test]
async fn limits_are_named_when_hit() {
    let (client, database, _reader, _events) = populated().await;
    let tiny = ReadLimits {
        max_execution_time_secs: 10,
        max_rows_to_read: 1,
    };
    let reader = EventReader::new(client, &database, tiny).unwrap();
    let error = reader.count(&EventQuery::default()).await.unwrap_err();
    assert_eq!(limit_hit(&error), Some(QueryLimit::RowsToRead), "{error:?}");
    let error = reader
        .search(&EventQuery::default(), None, 10)
        .await
        .unwrap_err();
    assert_eq!(limit_hit(&error), Some(QueryLimit::RowsToRead), "{error:?}");
    assert_eq!(QueryLimit::RowsToRead.setting(), "max_rows_to_read");
}

/// An archive row for `event` at `offset`, as the archiver writes it (the hash is a stand-in:
/// the reader does not check the chain).
fn archive_row(event: &Event, partition: i32, offset: i64) -> ArchiveRow {
    let mut row = ArchiveRow::empty("ledgerline.audit", partition, offset, KIND_EVENT);
    row.set_fields(EventFields::of(event));
    row.hash = format!("{offset:064x}");
    row.prev_hash = format!("{:064x}", offset - 1);
    row
}

#[tokio::test]
async fn the_archive_reader_filters_and_pages() {
    let harness = Harness::shared().unwrap();
    let database = harness.clickhouse.create_database().await.unwrap();
    let client = harness.clickhouse.client();
    migrate(
        &client,
        &database,
        ledgerline_consumers::archive::schema::MIGRATIONS,
    )
    .await
    .unwrap();
    let events: Vec<Event> = (0..12_u64)
        .map(|n| {
            let mut audit = samples::audit(n);
            audit.action = ["login", "logout", "delete"][(n % 3) as usize].to_owned();
            audit.outcome = [Outcome::Success, Outcome::Denied][(n % 2) as usize];
            if n == 5 {
                audit.target = None;
            }
            audit
                .envelope
                .attributes
                .insert("job_id".to_owned(), format!("job-{}", n % 2));
            Event::Audit(audit)
        })
        .collect();
    let mut rows: Vec<ArchiveRow> = events
        .iter()
        .zip(0..)
        .map(|(event, offset)| archive_row(event, 0, offset))
        .collect();
    // One event archived twice (a producer retry at two offsets), and a gap.
    rows.push(archive_row(&events[3], 1, 0));
    rows.push(ArchiveRow::empty("ledgerline.audit", 1, 1, KIND_GAP));
    insert_rows(&client, &format!("{database}.records"), &rows)
        .await
        .unwrap();

    let reader = AuditReader::new(client, &database, ReadLimits::default()).unwrap();
    reader.ping().await.unwrap();
    let search_all = |query: EventQuery, limit: u64| {
        let reader = reader.clone();
        async move {
            let mut found = Vec::new();
            let mut after = None;
            loop {
                let page = reader.search(&query, after.as_ref(), limit).await.unwrap();
                found.extend(page.events);
                match page.next {
                    Some(next) => after = Some(next),
                    None => return found,
                }
            }
        }
    };
    let all = search_all(EventQuery::default(), 5).await;
    assert_eq!(
        all.iter()
            .map(|archived| Event::Audit(archived.event.clone()))
            .collect::<Vec<_>>(),
        newest_first(events.clone())
    );
    // Of the two copies, the first archived.
    let copy = all
        .iter()
        .find(|archived| archived.event.envelope.event_id == events[3].envelope().event_id)
        .unwrap();
    assert_eq!((copy.partition, copy.offset), (0, 3));
    assert_eq!(copy.hash, format!("{:064x}", 3));

    let audit_ids = |found: &[ledgerline_consumers::archive::reader::ArchivedEvent]| {
        found
            .iter()
            .map(|archived| archived.event.envelope.event_id.to_string())
            .collect::<Vec<_>>()
    };
    let expect = |predicate: &dyn Fn(u64) -> bool| {
        ids(&newest_first(
            (0..12_u64)
                .filter(|n| predicate(*n))
                .map(|n| events[n as usize].clone()),
        ))
    };
    let found = search_all(with(Field::Action, exact(&["logout", "delete"]), false), 2).await;
    assert_eq!(audit_ids(&found), expect(&|n| n % 3 != 0));
    let found = search_all(with(Field::Outcome, exact(&["DENIED"]), false), 2).await;
    assert_eq!(audit_ids(&found), expect(&|n| n % 2 == 1));
    let found = search_all(with(Field::Actor, exact(&["user-3"]), false), 2).await;
    assert_eq!(audit_ids(&found), expect(&|n| n % 7 == 3));
    let found = search_all(
        with(Field::Actor, vec![Match::Prefix("user-".into())], true),
        2,
    )
    .await;
    assert!(found.is_empty());
    let found = search_all(with(Field::Target, exact(&["session-4"]), false), 2).await;
    assert_eq!(audit_ids(&found), expect(&|n| n == 4));
    // An event without a target is kept by a negated target condition.
    let found = search_all(
        with(Field::Target, vec![Match::Prefix("session".into())], true),
        2,
    )
    .await;
    assert_eq!(audit_ids(&found), expect(&|n| n == 5));
    let found = search_all(with(Field::JobId, exact(&["job-1"]), false), 2).await;
    assert_eq!(audit_ids(&found), expect(&|n| n % 2 == 1));
    let found = search_all(with(Field::Category, exact(&["audit"]), false), 4).await;
    assert_eq!(found.len(), 12);
    let found = search_all(with(Field::Category, exact(&["job"]), false), 4).await;
    assert!(found.is_empty());

    let one = reader.event(&id(&events[7])).await.unwrap().unwrap();
    assert_eq!(Event::Audit(one.event), events[7]);
    assert_eq!(reader.event("o'brien").await.unwrap(), None);
    for text in hostile_strings() {
        assert!(search_all(with(Field::Action, exact(&[&text]), false), 5)
            .await
            .is_empty());
    }
}
