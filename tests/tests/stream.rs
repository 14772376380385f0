//! The live stream end to end: events published through the producer crate, read by the
//! API's fan-out from the real broker (SQLite engine: resumes read from mid-batch offsets),
//! received over `/v1/stream` by tokio-tungstenite clients and one Python `websockets`
//! client. One stack is shared by the tests of this file; each test filters on services of
//! its own. The limits and error cases are in `stream_limits.rs`.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ledgerline_producer::event::*;
use ledgerline_producer::Ledger;
use ledgerline_query_api::config::StreamConfig;
use ledgerline_tests::{names, BrokerStorage};
use serde_json::Value;

mod api_support;
use api_support::ws::{connect_ready, event_ids, subscribe, subscribe_small_buffer, StreamClient};
use api_support::{encode, ApiStack, StackOptions};

static STACK: OnceLock<ApiStack> = OnceLock::new();

/// The default client queue: a fast client rides out a scheduling stall of a second or two
/// on a loaded machine.
const QUEUE_EVENTS: usize = 1024;

fn stack() -> &'static ApiStack {
    STACK.get_or_init(|| {
        ApiStack::start_with(StackOptions {
            stream: StreamConfig {
                queue_events: QUEUE_EVENTS,
                ..StreamConfig::default()
            },
            storage: BrokerStorage::Sqlite,
            ..StackOptions::default()
        })
    })
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn actor(id: &str) -> Actor {
    Actor {
        id: id.to_owned(),
        kind: "user".to_owned(),
        ip: "192.0.2.7".to_owned(),
        user_agent: None,
    }
}

/// A published event: its id, level, name and time.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    level: Level,
    name: String,
    occurred_at_us: i64,
}

async fn send(ledger: &Ledger, event: ledgerline_producer::event::Event) -> Sent {
    let envelope = event.envelope().clone();
    ledger.send_event(event).await.unwrap();
    Sent {
        id: envelope.event_id.to_string(),
        level: envelope.level,
        name: envelope.name,
        occurred_at_us: envelope.occurred_at,
    }
}

/// `count` system events, levels and names varied.
async fn publish_system(ledger: &Ledger, count: usize) -> Vec<Sent> {
    let mut sent = Vec::new();
    for n in 0..count {
        let level = match n % 4 {
            0 => Level::Error,
            1 => Level::Warn,
            _ => Level::Info,
        };
        let event = ledger
            .system(
                &format!("disk.check.{}", n % 2),
                level,
                "app::disk",
                &format!("disk check {n}"),
            )
            .build();
        sent.push(send(ledger, event).await);
    }
    sent
}

async fn publish_session(ledger: &Ledger, device: &str, count: usize) -> Vec<Sent> {
    let mut sent = Vec::new();
    for n in 0..count {
        let event = ledger
            .session(device, Direction::Output, &format!("line {n}\r\n"))
            .build();
        sent.push(send(ledger, event).await);
    }
    sent
}

fn ids(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter().map(|sent| sent.id.clone()).collect()
}

/// Receives until `expected` all arrived, then a second more; asserts exactly them, once each.
async fn assert_receives_exactly(client: &mut StreamClient, expected: &BTreeSet<String>) {
    let (mut events, _) = client
        .events_until(Duration::from_secs(60), |events| {
            events.len() >= expected.len()
        })
        .await;
    let (more, _) = client.drain(Duration::from_secs(1)).await;
    events.extend(more);
    let received = event_ids(&events);
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(unique.len(), received.len(), "duplicates: {received:?}");
    let missing: Vec<_> = expected.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {} {missing:?}, extra {} {extra:?}",
        missing.len(),
        extra.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_receives_exactly_the_live_events_its_filter_selects() {
    let stack = stack();
    let service = names::unique("stream-filter");
    let other = names::unique("stream-other");
    let job_id = names::unique("job");
    let key = stack.analyst(0);
    let mut warnings = subscribe(&stack.api, key, &format!("service={service}&level=warn")).await;
    let mut named = subscribe(
        &stack.api,
        key,
        &format!("service={service}&name=disk.check.1"),
    )
    .await;
    let mut job = subscribe(&stack.api, key, &format!("job_id={job_id}")).await;
    let mut searched = subscribe(
        &stack.api,
        key,
        &format!("q={}", encode(&format!("service:{service} -level:info"))),
    )
    .await;

    let ledger = stack.ledger(&service).await;
    let others = stack.ledger(&other).await;
    let sent = publish_system(&ledger, 40).await;
    publish_system(&others, 20).await;
    let mut job_events = Vec::new();
    for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Completed] {
        let event = others
            .job("job.progress", &job_id, "backup", "Nightly", status)
            .build();
        job_events.push(send(&others, event).await);
        let event = others
            .job(
                "job.progress",
                &names::unique("job"),
                "backup",
                "Other",
                status,
            )
            .build();
        send(&others, event).await;
    }

    let at_least_warn: BTreeSet<String> = sent
        .iter()
        .filter(|sent| sent.level >= Level::Warn)
        .map(|sent| sent.id.clone())
        .collect();
    let name_1: BTreeSet<String> = sent
        .iter()
        .filter(|sent| sent.name == "disk.check.1")
        .map(|sent| sent.id.clone())
        .collect();
    assert_receives_exactly(&mut warnings, &at_least_warn).await;
    assert_receives_exactly(&mut named, &name_1).await;
    assert_receives_exactly(&mut job, &ids(&job_events)).await;
    assert_receives_exactly(&mut searched, &at_least_warn).await;

    // The filter changes on the open connection: acknowledged, then applied.
    warnings
        .send(&format!(
            r#"{{"type":"filter","filter":{{"service":"{service}","level":"error"}}}}"#
        ))
        .await;
    let ack = warnings.reply(Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["filter"]["level"], serde_json::json!(["error"]));
    let sent = publish_system(&ledger, 8).await;
    let errors: BTreeSet<String> = sent
        .iter()
        .filter(|sent| sent.level == Level::Error)
        .map(|sent| sent.id.clone())
        .collect();
    assert_receives_exactly(&mut warnings, &errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_never_receive_audit_events_and_auditors_do() {
    let stack = stack();
    let service = names::unique("stream-iam");
    let analyst = stack.analyst(1);
    let mut everything = subscribe(&stack.api, analyst, &format!("service={service}")).await;
    let mut asks_for_audit = subscribe(
        &stack.api,
        analyst,
        &format!("service={service}&category=audit"),
    )
    .await;
    let mut searches_audit = subscribe(
        &stack.api,
        analyst,
        &format!("q={}", encode(&format!("category:audit service:{service}"))),
    )
    .await;
    let mut admin = subscribe(&stack.api, stack.admin(1), &format!("service={service}")).await;
    let mut auditor = subscribe(
        &stack.api,
        stack.auditor(1),
        &format!("service={service}&category=audit"),
    )
    .await;

    let ledger = stack.ledger(&service).await;
    let mut audits = Vec::new();
    for n in 0..5 {
        let event = ledger
            .audit(
                "permission.change",
                actor("admin-user"),
                "grant",
                Outcome::Success,
                serde_json::json!({ "n": n }),
            )
            .target("role", "billing-admin")
            .build();
        audits.push(send(&ledger, event).await);
    }
    let device = names::unique("device");
    let mut others = publish_system(&ledger, 3).await;
    others.extend(publish_session(&ledger, &device, 3).await);

    assert_receives_exactly(&mut auditor, &ids(&audits)).await;
    // The auditor has them all, so the fan-out handled them: the analysts got none.
    assert_receives_exactly(&mut everything, &ids(&others)).await;
    assert_receives_exactly(&mut admin, &ids(&others)).await;
    assert_receives_exactly(&mut asks_for_audit, &BTreeSet::new()).await;
    assert_receives_exactly(&mut searches_audit, &BTreeSet::new()).await;
    // An analyst cannot switch its way in either.
    everything
        .send(r#"{"type":"filter","filter":{"category":"audit"}}"#)
        .await;
    assert_eq!(everything.subscribed().await["type"], "subscribed");
    let event = ledger
        .audit(
            "permission.change",
            actor("admin-user"),
            "revoke",
            Outcome::Success,
            serde_json::json!({}),
        )
        .build();
    let last = send(&ledger, event).await;
    assert_receives_exactly(&mut auditor, &ids(&[last])).await;
    assert_receives_exactly(&mut everything, &BTreeSet::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_a_lagged_count_while_a_fast_one_gets_everything() {
    let stack = stack();
    let service = names::unique("stream-burst");
    let query = format!("service={service}");
    let mut fast = subscribe(&stack.api, stack.analyst(2), &query).await;
    let mut slow = subscribe_small_buffer(&stack.api, stack.analyst(3), &query).await;
    let ledger = stack.ledger(&service).await;

    // The fast client reads all along, in its own task.
    let fast_task = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut others = Vec::new();
        while let Some(message) = fast.next(Duration::from_secs(5)).await {
            match message["type"].as_str() {
                Some("event") => {
                    events.push(message["event"]["event_id"].as_str().unwrap().to_owned())
                }
                _ => others.push(message),
            }
        }
        (events, others)
    });
    // The slow one (a small socket buffer) reads nothing while thousands of 2 KiB events,
    // more than its queue and the socket buffers hold (the server's send buffer grows to
    // 4 MiB), are published at a steady pace the fast
    // one keeps up with.
    let mut sent = Vec::new();
    for round in 0..100 {
        for n in 0..50 {
            let event = ledger
                .system(
                    "bulk.copy",
                    Level::Info,
                    "app",
                    &format!("copied part {round}.{n} {}", "x".repeat(2048)),
                )
                .build();
            sent.push(event.envelope().event_id.to_string());
            ledger.publish_event(event).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ledger.flush(Duration::from_secs(30)).await.unwrap();
    // Then it reads what it was sent, and one more event brings its lag notice.
    let (mut received, mut others) = slow.drain(Duration::from_secs(2)).await;
    let tail = publish_system(&ledger, 5).await;
    sent.extend(tail.iter().map(|sent| sent.id.clone()));
    let (more, more_others) = slow
        .events_until(Duration::from_secs(30), |events| {
            let ids = event_ids(events);
            tail.iter().all(|sent| ids.contains(&sent.id))
        })
        .await;
    received.extend(more);
    others.extend(more_others);
    // One notice per stretch of losses (the socket may take a little more in between), each
    // with the count since the previous one and the cursor before its first loss.
    let lagged: Vec<&Value> = others.iter().filter(|m| m["type"] == "lagged").collect();
    assert!(
        !lagged.is_empty(),
        "a lag notice: {others:?} ({} of {} received)",
        received.len(),
        sent.len()
    );
    assert!(lagged
        .iter()
        .all(|notice| notice["cursor"].is_string()
            && notice["dropped"].as_u64().is_some_and(|n| n > 0)));
    let dropped: u64 = lagged
        .iter()
        .map(|notice| notice["dropped"].as_u64().unwrap())
        .sum();
    let received = event_ids(&received);
    let unique: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(unique.len(), received.len(), "no duplicates");
    let sent: BTreeSet<String> = sent.into_iter().collect();
    assert!(unique.is_subset(&sent));
    assert_eq!(
        received.len() as u64 + dropped,
        sent.len() as u64,
        "received + dropped = published"
    );

    let (fast_events, fast_others) = fast_task.await.unwrap();
    assert!(
        fast_others.iter().all(|m| m["type"] != "lagged"),
        "the fast client lost nothing: {fast_others:?}"
    );
    let fast_unique: BTreeSet<String> = fast_events.iter().cloned().collect();
    assert_eq!(fast_unique.len(), fast_events.len());
    assert_eq!(fast_unique, sent, "the fast client got every event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_a_cursor_delivers_what_was_missed_exactly_once_sessions_included() {
    let stack = stack();
    let service = names::unique("stream-resume");
    let device = names::unique("device");
    let query = format!("service={service}");
    let key = stack.analyst(4);
    let ledger = Arc::new(stack.ledger(&service).await);

    let mut client = subscribe(&stack.api, key, &query).await;
    let mut first = publish_system(&ledger, 15).await;
    first.extend(publish_session(&ledger, &device, 15).await);
    assert_receives_exactly(&mut client, &ids(&first)).await;
    let cursor = client.cursor.clone().expect("a cursor");
    client.close().await;

    // Published while disconnected...
    let mut missed = publish_system(&ledger, 30).await;
    missed.extend(publish_session(&ledger, &device, 30).await);
    // ...and while reconnecting, across the join with the live fan-out.
    let during = {
        let ledger = Arc::clone(&ledger);
        let device = device.clone();
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for _ in 0..20 {
                sent.extend(publish_system(&ledger, 2).await);
                sent.extend(publish_session(&ledger, &device, 2).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            sent
        })
    };
    let mut resumed = connect_ready(&stack.api, key, &format!("{query}&since={cursor}")).await;
    missed.extend(during.await.unwrap());
    assert_receives_exactly(&mut resumed, &ids(&missed)).await;
    // And it is live afterwards.
    let after = publish_session(&ledger, &device, 3).await;
    assert_receives_exactly(&mut resumed, &ids(&after)).await;
    // A cursor from just after the seam (the resume may have read some partitions past the
    // fan-out) resumes exactly too: nothing of the above again.
    let cursor = resumed.cursor.clone().expect("a cursor");
    resumed.close().await;
    let mut later = publish_system(&ledger, 10).await;
    later.extend(publish_session(&ledger, &device, 10).await);
    let mut again = connect_ready(&stack.api, key, &format!("{query}&since={cursor}")).await;
    assert_receives_exactly(&mut again, &ids(&later)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_a_time_replays_stored_history_then_continues_live_without_gap_or_duplicate() {
    let stack = stack();
    let service = names::unique("stream-history");
    let device = names::unique("device");
    let ledger = Arc::new(stack.ledger(&service).await);
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Publishes all along: before `since`, between `since` and the connection (stored by
    // the projector by then, or still only in Kafka), and after.
    let publisher = {
        let (ledger, sent, stop, device) = (
            Arc::clone(&ledger),
            Arc::clone(&sent),
            Arc::clone(&stop),
            device.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut batch = publish_system(&ledger, 3).await;
                if n % 3 == 0 {
                    batch.extend(publish_session(&ledger, &device, 1).await);
                }
                sent.lock().unwrap().extend(batch);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let since_us = now_us();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let since = ledgerline_query_api::params::format_time(since_us);
    let mut client = connect_ready(
        &stack.api,
        stack.analyst(5),
        &format!("service={service}&since={}", encode(&since)),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let expected: BTreeSet<String> = sent
        .iter()
        .filter(|sent| sent.occurred_at_us >= since_us)
        .map(|sent| sent.id.clone())
        .collect();
    assert!(expected.len() > 100, "{}", expected.len());

    // The first message comes from ClickHouse: its cursor is a history cursor.
    let first = client.next(Duration::from_secs(30)).await.unwrap();
    assert_eq!(first["type"], "event", "{first}");
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first["cursor"].as_str().unwrap())
        .unwrap();
    assert_eq!(cursor[0], 2, "a history cursor");
    let first_id = first["event"]["event_id"].as_str().unwrap().to_owned();
    let (mut events, _) = client
        .events_until(Duration::from_secs(60), |events| {
            events.len() + 1 >= expected.len()
        })
        .await;
    let (more, _) = client.drain(Duration::from_secs(2)).await;
    events.extend(more);
    let mut received = event_ids(&events);
    received.insert(0, first_id);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &received {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "duplicates at the seam: {duplicates:?}"
    );
    let unique: BTreeSet<String> = received.into_iter().collect();
    let missing: Vec<_> = expected.difference(&unique).collect();
    let extra: Vec<_> = unique.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_replicas_both_deliver_to_their_clients() {
    let stack = stack();
    let replica = stack.replica();
    let service = names::unique("stream-replicas");
    let query = format!("service={service}");
    let mut on_first = subscribe(&stack.api, stack.analyst(6), &query).await;
    let mut on_second = subscribe(&replica.api, stack.analyst(6), &query).await;
    let ledger = stack.ledger(&service).await;
    let device = names::unique("device");
    let mut sent = publish_system(&ledger, 20).await;
    sent.extend(publish_session(&ledger, &device, 5).await);
    assert_receives_exactly(&mut on_first, &ids(&sent)).await;
    assert_receives_exactly(&mut on_second, &ids(&sent)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_websockets_client_tails_job_progress_with_a_query_key() {
    let stack = stack();
    let service = names::unique("stream-python");
    let job_id = names::unique("job");
    let python =
        std::env::var(ledgerline_service::env::PYTHON).unwrap_or_else(|_| "python3".to_owned());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/stream_tail.py");
    let url = api_support::ws::stream_url(
        &stack.api,
        &format!("key={}&job_id={job_id}", stack.analyst(7)),
    );
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(&url)
        .arg("4")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the python client did not subscribe")
        .unwrap()
        .unwrap_or_default();
    let first: Value = serde_json::from_str(&first).unwrap_or(Value::Null);
    assert_eq!(first["type"], "subscribed", "{first}");

    let ledger = stack.ledger(&service).await;
    let mut sent = Vec::new();
    for (status, progress) in [
        (JobStatus::Queued, 0),
        (JobStatus::Running, 40),
        (JobStatus::Running, 80),
        (JobStatus::Completed, 100),
    ] {
        let event = ledger
            .job("job.progress", &job_id, "backup", "Nightly backup", status)
            .progress(progress)
            .build();
        sent.push(send(&ledger, event).await);
    }
    let other = ledger
        .job(
            "job.progress",
            &names::unique("job"),
            "backup",
            "Other",
            JobStatus::Running,
        )
        .build();
    send(&ledger, other).await;
    let last = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the python client did not finish")
        .unwrap()
        .unwrap_or_default();
    let status = child.wait().await.unwrap();
    assert!(status.success(), "python client failed: {last}");
    let last: Value = serde_json::from_str(&last).unwrap();
    let received: Vec<String> = last["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["event_id"].as_str().unwrap().to_owned())
        .collect();
    let progress: Vec<i64> = last["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["progress"].as_i64().unwrap())
        .collect();
    assert_eq!(
        received,
        sent.iter().map(|sent| sent.id.clone()).collect::<Vec<_>>(),
        "one job's events arrive in order"
    );
    assert_eq!(progress, vec![0, 40, 80, 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_live_and_on_resume() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = stack();
    let service = names::unique("stream-bad");
    let query = format!("service={service}");
    let key = stack.analyst(6);
    let mut client = subscribe(&stack.api, key, &query).await;
    let ledger = stack.ledger(&service).await;
    let raw: FutureProducer = stack
        .broker
        .lock()
        .unwrap()
        .producer_config()
        .create()
        .unwrap();
    let before = publish_system(&ledger, 3).await;
    assert_receives_exactly(&mut client, &ids(&before)).await;
    let cursor = client.cursor.clone().expect("a cursor");
    // Garbage on every partition of the topic, between valid events.
    for partition in 0..3 {
        for payload in [&b"not avro"[..], &[0, 0, 0, 0, 99, 1, 2][..]] {
            raw.send(
                FutureRecord::<(), [u8]>::to("ledgerline.system")
                    .partition(partition)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        }
    }
    let after = publish_system(&ledger, 6).await;
    assert_receives_exactly(&mut client, &ids(&after)).await;
    // A resume over the same records skips them too.
    let mut resumed = connect_ready(&stack.api, key, &format!("{query}&since={cursor}")).await;
    assert_receives_exactly(&mut resumed, &ids(&after)).await;
}
