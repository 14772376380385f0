//! The producer crate against a real broker and registry: what it publishes decodes with
//! `schema_registry_converter` on its own, secrets never reach Kafka, acknowledged and queued
//! events survive a broker outage, a broker gone for longer than the delivery timeout fails
//! `send` and `publish` without hanging, a full queue behaves as configured, and the tracing
//! layer publishes span context and nothing below its level.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events_support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use events_support::ledger_for;
use ledgerline_producer::config::TracingLevel;
use ledgerline_producer::event::*;
use ledgerline_producer::{
    DeliveryFailure, DeliveryStats, Ledger, ProducerConfig, PublishError, QueueFullPolicy,
};
use ledgerline_schemas::Category;
use ledgerline_service::kafka::KafkaConfig;
use ledgerline_service::telemetry;
use ledgerline_tests::{names, Broker, BrokerStorage, Harness, RegistryServer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;

fn producer_config(service: &str) -> ProducerConfig {
    ProducerConfig {
        service_name: service.to_owned(),
        service_version: "9.9.9".to_owned(),
        host: "test-host".to_owned(),
        linger_ms: 1,
        ..ProducerConfig::default()
    }
}

/// Raw records of `category`'s topic whose service is `service`, read from the beginning until
/// `expected` of them arrived (or 30 s passed).
async fn consume(
    brokers: &str,
    category: Category,
    service: &str,
    expected: usize,
    registry_url: &str,
) -> Vec<(Vec<u8>, Option<Vec<u8>>, BTreeMap<String, Value>)> {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", names::group())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create().unwrap();
    consumer.subscribe(&[category.topic_name()]).unwrap();
    let decoder = AvroDecoder::new(SrSettings::new(registry_url.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found = Vec::new();
    while found.len() < expected && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let payload = message.payload().unwrap().to_vec();
        let decoded = decoder.decode(Some(&payload)).await.unwrap();
        let fields = record(decoded.value);
        let envelope = record(fields["envelope"].clone());
        if envelope["service"] == Value::String(service.to_owned()) {
            found.push((payload, message.key().map(<[u8]>::to_vec), fields));
        }
    }
    found
}

fn record(value: Value) -> BTreeMap<String, Value> {
    match value {
        Value::Record(fields) => fields.into_iter().collect(),
        other => panic!("not a record: {other:?}"),
    }
}

/// Every system event `ledger`'s service published, read to an exact end. Unlike [`consume`],
/// which stops at an expected count, this sees everything, so a test can show that something
/// was *not* published.
///
/// The end is a marker event sent through `ledger` after everything else was acknowledged.
/// System events are keyed by service, so the marker lands in the partition that holds every
/// event of the service, after them. A high watermark would not do: Tansu 0.6.0 reports 1
/// after a two-record batch at offsets 0 and 1, and a reader stopping there misses the second.
async fn system_events_of(
    ledger: &Ledger,
    brokers: &str,
    service: &str,
    registry_url: &str,
) -> Vec<BTreeMap<String, Value>> {
    let marker = ledger
        .system("test.end_marker", Level::Info, "ledgerline_tests", "end")
        .build();
    let marker_id = marker.envelope().event_id.to_string();
    let end = ledger.send_event(marker).await.unwrap();

    let topic = Category::System.topic_name();
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", names::group())
        .set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, end.partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let decoder = AvroDecoder::new(SrSettings::new(registry_url.to_owned()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut found = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "{topic}: the end marker at {end:?} not reached within 60 s"
        );
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let decoded = decoder.decode(message.payload()).await.unwrap();
        let fields = record(decoded.value);
        let envelope = record(fields["envelope"].clone());
        if string(&envelope["event_id"]) == marker_id {
            return found;
        }
        assert!(message.offset() < end.offset, "read past the end marker");
        if envelope["service"] == Value::String(service.to_owned()) {
            found.push(fields);
        }
    }
}

fn string(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Uuid(id) => id.to_string(),
        Value::Union(_, inner) => string(inner),
        Value::Enum(_, symbol) => symbol.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

#[tokio::test]
async fn every_category_decodes_with_schema_registry_converter_alone() {
    let harness = Harness::shared().unwrap();
    let service = names::unique("svc");
    let ledger = ledger_for(
        &harness.broker.bootstrap(),
        &harness.registry.url(),
        producer_config(&service),
    )
    .await;

    let actor = Actor {
        id: "user-7".to_owned(),
        kind: "user".to_owned(),
        ip: "192.0.2.1".to_owned(),
        user_agent: None,
    };
    let mut sent = BTreeMap::new();
    let audit = ledger
        .audit(
            "user.login.success",
            actor,
            "login",
            Outcome::Success,
            serde_json::json!({"method": "sso"}),
        )
        .target("account", "acct-9")
        .message("Alice signed in")
        .build();
    let job = ledger
        .job(
            "job.progress",
            "job-42",
            "backup",
            "Nightly backup",
            JobStatus::Running,
        )
        .progress(40)
        .build();
    let connection = ledger
        .connection(
            "device.connect",
            "dev-1",
            "core router",
            ConnectionPhase::Connect,
            Outcome::Success,
        )
        .job_id("job-42")
        .duration(Duration::from_millis(12))
        .build();
    let system = ledger
        .system(
            "service.started",
            Level::Info,
            "billing::main",
            "Billing service started",
        )
        .field("port", "8080")
        .build();
    let session = ledger
        .session("dev-1", Direction::Output, "show version\n")
        .build();
    for event in [audit, job, connection, system, session] {
        sent.insert(event.category(), event.clone());
        let delivered = ledger.send_event(event).await.unwrap();
        assert!(delivered.offset >= 0);
    }

    for (category, event) in sent {
        let records = consume(
            &harness.broker.bootstrap(),
            category,
            &service,
            1,
            &harness.registry.url(),
        )
        .await;
        assert_eq!(records.len(), 1, "{category}: no record found");
        let (payload, key, fields) = &records[0];
        assert_eq!(payload[0], 0, "magic byte");
        assert_eq!(
            key.as_deref(),
            Some(event.partition_key().as_bytes()),
            "{category} key"
        );
        let envelope = record(fields["envelope"].clone());
        assert_eq!(
            string(&envelope["event_id"]),
            event.envelope().event_id.to_string()
        );
        assert_eq!(string(&envelope["name"]), event.envelope().name);
        assert_eq!(
            string(&envelope["category"]),
            category.as_str().to_ascii_uppercase()
        );
        assert_eq!(string(&envelope["service_version"]), "9.9.9");
        assert_eq!(string(&envelope["host"]), "test-host");
        match category {
            Category::Audit => {
                assert_eq!(string(&record(fields["actor"].clone())["ip"]), "192.0.2.1");
                assert_eq!(string(&fields["outcome"]), "SUCCESS");
            }
            Category::Job => {
                assert_eq!(string(&fields["job_id"]), "job-42");
                assert_eq!(fields["progress"], Value::Int(40));
            }
            Category::Connection => {
                assert_eq!(
                    fields["duration_ms"],
                    Value::Union(1, Box::new(Value::Long(12)))
                );
            }
            Category::System => assert_eq!(string(&fields["target"]), "billing::main"),
            Category::Session => assert_eq!(string(&fields["data"]), "show version\n"),
        }
    }
}

#[tokio::test]
async fn no_secret_in_the_redaction_table_reaches_kafka() {
    let harness = Harness::shared().unwrap();
    let service = names::unique("svc");
    let ledger = ledger_for(
        &harness.broker.bootstrap(),
        &harness.registry.url(),
        producer_config(&service),
    )
    .await;

    // (where it appears, the secret) — every row must be gone from the bytes on the wire.
    let table: &[(&str, &str)] = &[
        ("details.password", "pw-hunter2"),
        ("details.nested.PassWd", "pw-nested-77"),
        ("details.list[].token", "tok-in-list-31"),
        ("details.Api-Key", "ak-live-5551"),
        ("details.authorization", "basic-dXNlcjpwYXNz"),
        ("details.cookie", "sessionid-cookie-9"),
        ("details.Set-Cookie", "set-cookie-value-4"),
        ("details.ssn", "078-05-1120"),
        ("details.credit_card", "cc-field-value-2"),
        ("details.client_secret", "client-secret-88"),
        ("message bearer", "Bearer mF_9.B5f-4.1JqM"),
        (
            "message jwt",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNpZw",
        ),
        ("message card", "4111 1111 1111 1111"),
        ("reason card", "5500-0000-0000-0004"),
        ("attribute token", "attr-token-value-1"),
        (
            "attribute value jwt",
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig_part",
        ),
        ("details string card", "378282246310005"),
    ];
    let secrets: Vec<&str> = table.iter().map(|(_, secret)| *secret).collect();
    let actor = Actor {
        id: "user-1".to_owned(),
        kind: "user".to_owned(),
        ip: "198.51.100.1".to_owned(),
        user_agent: None,
    };
    let details = serde_json::json!({
        "password": secrets[0],
        "nested": {"PassWd": secrets[1], "safe": "keep-me"},
        "list": [{"token": secrets[2]}],
        "Api-Key": secrets[3],
        "authorization": secrets[4],
        "cookie": secrets[5],
        "Set-Cookie": secrets[6],
        "ssn": secrets[7],
        "credit_card": secrets[8],
        "client_secret": secrets[9],
        "note": format!("card {}", secrets[16]),
    });
    ledger
        .audit(
            "user.password.change",
            actor,
            "change_password",
            Outcome::Failure,
            details,
        )
        .message(format!(
            "header {} jwt {} card {}",
            secrets[10], secrets[11], secrets[12]
        ))
        .reason(format!("declined {}", secrets[13]))
        .attribute("refresh_token", secrets[14])
        .attribute("note", secrets[15])
        .send()
        .await
        .unwrap();
    let system_error = std::io::Error::other(format!("upstream said {}", secrets[10]));
    ledger
        .system(
            "service.error",
            Level::Error,
            "billing::pay",
            &format!("charging {}", secrets[12]),
        )
        .field("password", secrets[0])
        .error(&system_error)
        .send()
        .await
        .unwrap();

    let mut seen = 0;
    for category in [Category::Audit, Category::System] {
        for (payload, _, fields) in consume(
            &harness.broker.bootstrap(),
            category,
            &service,
            1,
            &harness.registry.url(),
        )
        .await
        {
            seen += 1;
            let text = String::from_utf8_lossy(&payload);
            for (row, secret) in table {
                assert!(
                    !text.contains(secret),
                    "{row}: `{secret}` reached kafka in {category}"
                );
            }
            assert!(text.contains("[REDACTED]"));
            if category == Category::Audit {
                let details: serde_json::Value =
                    serde_json::from_str(&string(&fields["details"])).unwrap();
                assert_eq!(details["nested"]["safe"], "keep-me", "non-secrets survive");
            }
        }
    }
    assert_eq!(seen, 2);
}

#[tokio::test]
async fn tracing_layer_publishes_span_context() {
    use tracing_subscriber::prelude::*;

    let harness = Harness::shared().unwrap();
    let service = names::unique("svc");
    let ledger = ledger_for(
        &harness.broker.bootstrap(),
        &harness.registry.url(),
        producer_config(&service),
    )
    .await;
    let subscriber = tracing_subscriber::registry().with(ledger.tracing_layer());
    let _guard = tracing::subscriber::set_default(subscriber);

    let error = std::io::Error::other("disk full");
    {
        let request = tracing::info_span!(
            "request",
            request_id = "req-77",
            traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            user_id = "user-5"
        );
        let _request = request.enter();
        let job = tracing::info_span!("job", job_id = "job-9");
        let _job = job.enter();
        tracing::warn!(
            attempt = 3,
            error = &error as &(dyn std::error::Error + 'static),
            "backup retried"
        );
        tracing::debug!("below the level: not published");
        // Typed events inside the span get the same context.
        ledger
            .job(
                "job.progress",
                "job-9",
                "backup",
                "Backup",
                JobStatus::Running,
            )
            .progress(10)
            .send()
            .await
            .unwrap();
    }
    ledger.flush(Duration::from_secs(10)).await.unwrap();

    // Read to the end of the topic, not to the first match: the debug event must be absent.
    let records = system_events_of(
        &ledger,
        &harness.broker.bootstrap(),
        &service,
        &harness.registry.url(),
    )
    .await;
    assert_eq!(records.len(), 1, "exactly the warn event is published");
    let fields = &records[0];
    let envelope = record(fields["envelope"].clone());
    assert_eq!(string(&envelope["request_id"]), "req-77");
    assert_eq!(
        string(&envelope["trace_id"]),
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(string(&envelope["span_id"]), "b7ad6b7169203331");
    assert_eq!(string(&envelope["level"]), "WARN");
    assert_eq!(string(&envelope["message"]), "backup retried");
    let Value::Map(attributes) = &envelope["attributes"] else {
        panic!("attributes")
    };
    assert_eq!(string(&attributes["job_id"]), "job-9");
    assert_eq!(string(&attributes["user_id"]), "user-5");
    let Value::Union(_, error_info) = &fields["error"] else {
        panic!("error")
    };
    assert_eq!(
        string(&record((**error_info).clone())["message"]),
        "disk full"
    );

    let jobs = consume(
        &harness.broker.bootstrap(),
        Category::Job,
        &service,
        1,
        &harness.registry.url(),
    )
    .await;
    let job_envelope = record(jobs[0].2["envelope"].clone());
    assert_eq!(string(&job_envelope["request_id"]), "req-77");
    assert_eq!(
        string(&job_envelope["trace_id"]),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

#[tokio::test]
async fn tracing_layer_publishes_exactly_the_events_at_or_above_its_level() {
    use tracing_subscriber::prelude::*;

    let harness = Harness::shared().unwrap();
    let service = names::unique("svc");
    let ledger = ledger_for(
        &harness.broker.bootstrap(),
        &harness.registry.url(),
        ProducerConfig {
            tracing_level: TracingLevel::Info,
            ..producer_config(&service)
        },
    )
    .await;
    {
        let subscriber = tracing_subscriber::registry().with(ledger.tracing_layer());
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!(
            event_name = "test.info",
            attempt = 1,
            "at the level: published"
        );
        tracing::debug!(event_name = "test.debug", "below the level: not published");
    }
    let stats = ledger.flush(Duration::from_secs(30)).await.unwrap();
    // Only the layer published through this ledger, so its counts are the layer's.
    assert_eq!(
        stats,
        DeliveryStats {
            delivered: 1,
            failed: 0,
            pending: 0
        }
    );

    let records = system_events_of(
        &ledger,
        &harness.broker.bootstrap(),
        &service,
        &harness.registry.url(),
    )
    .await;
    let published: Vec<String> = records
        .iter()
        .map(|fields| string(&record(fields["envelope"].clone())["name"]))
        .collect();
    assert_eq!(
        published,
        ["test.info"],
        "exactly the info event is on the topic"
    );
    let envelope = record(records[0]["envelope"].clone());
    assert_eq!(string(&envelope["level"]), "INFO");
    assert_eq!(string(&envelope["message"]), "at the level: published");
}

/// Event ids found on `category`'s topic for `service`.
async fn ids_on(
    brokers: &str,
    registry_url: &str,
    category: Category,
    service: &str,
    expected: usize,
) -> HashSet<String> {
    consume(brokers, category, service, expected, registry_url)
        .await
        .into_iter()
        .map(|(_, _, fields)| string(&record(fields["envelope"].clone())["event_id"]))
        .collect()
}

#[tokio::test]
async fn acknowledged_and_queued_events_survive_a_broker_outage() {
    let mut broker = Broker::start(BrokerStorage::Sqlite).unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let service = names::unique("svc");
    let ledger = ledger_for(
        &broker.bootstrap(),
        &registry.url(),
        producer_config(&service),
    )
    .await;
    let job = |n: u32| {
        ledger
            .job(
                "job.progress",
                &format!("job-{}", n % 4),
                "backup",
                "Backup",
                JobStatus::Running,
            )
            .progress((n % 100) as u8)
    };

    let mut acknowledged = HashSet::new();
    for n in 0..50 {
        let event = job(n).build();
        let id = event.envelope().event_id.to_string();
        ledger.send_event(event).await.unwrap();
        acknowledged.insert(id);
    }
    let mut queued = HashSet::new();
    for n in 50..100 {
        let event = job(n).build();
        queued.insert(event.envelope().event_id.to_string());
        ledger.publish_event(event).await.unwrap();
    }

    broker.kill();
    // Published while the broker is down: accepted into the queue, delivered after.
    for n in 100..200 {
        let event = job(n).build();
        queued.insert(event.envelope().event_id.to_string());
        ledger.publish_event(event).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.restart().unwrap();

    let stats = ledger.flush(Duration::from_secs(60)).await.unwrap();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(stats.pending, 0);

    let on_topic = ids_on(
        &broker.bootstrap(),
        &registry.url(),
        Category::Job,
        &service,
        200,
    )
    .await;
    let lost_acknowledged: Vec<_> = acknowledged.difference(&on_topic).collect();
    assert!(
        lost_acknowledged.is_empty(),
        "acknowledged events lost: {lost_acknowledged:?}"
    );
    let lost_queued: Vec<_> = queued.difference(&on_topic).collect();
    assert!(
        lost_queued.is_empty(),
        "queued events lost: {} of {}",
        lost_queued.len(),
        queued.len()
    );
}

/// The value of `ledgerline_producer_events_total{category, outcome}` in Prometheus text.
fn events_total(metrics: &str, category: Category, outcome: &str) -> u64 {
    let category = format!("category=\"{}\"", category.as_str());
    let outcome = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|line| line.starts_with("ledgerline_producer_events_total{"))
        .filter(|line| line.contains(&category) && line.contains(&outcome))
        .filter_map(|line| line.rsplit(' ').next())
        .map(|value| value.parse::<f64>().unwrap() as u64)
        .sum()
}

/// A bound on waits that must end by themselves; reaching it means something hung. Far above
/// the delivery timeouts below, so a slow machine never trips it.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// How long the producer keeps trying a record, for the tests that outlast it.
const SHORT_DELIVERY_TIMEOUT_MS: u64 = 3_000;

#[tokio::test]
async fn a_broker_gone_past_the_delivery_timeout_fails_send_and_publish_without_hanging() {
    let harness = Harness::shared().unwrap();
    let metrics = telemetry::prometheus().unwrap();
    let mut broker = Broker::start(BrokerStorage::Memory).unwrap();
    let service = names::unique("svc");
    let reported: Arc<Mutex<Vec<DeliveryFailure>>> = Arc::default();
    // The registry lives on the shared broker, so encoding still works with this one gone.
    let ledger = Ledger::builder(service.clone())
        .config(ProducerConfig {
            delivery_timeout_ms: SHORT_DELIVERY_TIMEOUT_MS,
            ..producer_config(&service)
        })
        .brokers(broker.bootstrap())
        .registry_url(harness.registry.url())
        .on_delivery_failure({
            let reported = Arc::clone(&reported);
            move |failure| reported.lock().unwrap().push(failure.clone())
        })
        .build()
        .await
        .unwrap();
    // Session events, which no other test in this file fails to deliver, so the failure
    // counter (process-wide, shared with the tests running beside this one) moves only for ours.
    let event = |n: u32| {
        ledger
            .session(&format!("dev-{n}"), Direction::Output, "show clock\n")
            .build()
    };
    // Connected, with the topic's leaders known, before the broker goes.
    ledger.send_event(event(0)).await.unwrap();
    let failed_before = events_total(&metrics.render(), Category::Session, "failed");

    broker.kill();

    let sent = event(1);
    let sent_id = sent.envelope().event_id;
    let error = tokio::time::timeout(HANG_GUARD, ledger.send_event(sent))
        .await
        .expect("send() hung with the broker gone")
        .expect_err("send() succeeded with the broker gone");
    match &error {
        PublishError::Delivery {
            event_id, category, ..
        } => {
            assert_eq!(*event_id, sent_id);
            assert_eq!(*category, Category::Session);
        }
        other => panic!("expected a delivery error, got {other:?}"),
    }
    assert!(
        error.to_string().to_lowercase().contains("timed out"),
        "the error does not name the cause: {error}"
    );

    let mut published = HashSet::new();
    for n in 2..7 {
        let event = event(n);
        published.insert(event.envelope().event_id);
        // Accepted: the queue has room; delivery fails later, in the background.
        ledger.publish_event(event).await.unwrap();
    }
    let stats = tokio::time::timeout(HANG_GUARD, ledger.flush(HANG_GUARD))
        .await
        .expect("flush() hung with the broker gone")
        .expect("flush() gave up with events still unsettled");
    assert_eq!(
        stats,
        DeliveryStats {
            delivered: 0,
            failed: 5,
            pending: 0
        },
        "every published event settles as failed"
    );

    let reported = reported.lock().unwrap().clone();
    let reported_ids: HashSet<_> = reported.iter().map(|failure| failure.event_id).collect();
    let mut expected_ids = published.clone();
    expected_ids.insert(sent_id);
    assert_eq!(
        reported_ids, expected_ids,
        "the failure hook saw {reported:?}"
    );
    assert_eq!(
        reported.len(),
        6,
        "each failure reported once: {reported:?}"
    );
    for failure in &reported {
        assert_eq!(failure.category, Category::Session);
        assert!(
            failure.error.to_lowercase().contains("timed out"),
            "the reported error does not name the cause: {failure:?}"
        );
    }
    let failed_after = events_total(&metrics.render(), Category::Session, "failed");
    assert_eq!(
        failed_after - failed_before,
        6,
        "ledgerline_producer_events_total{{category=\"session\",outcome=\"failed\"}}"
    );
}

/// A connection event: the test below fails these, so the test above can count session ones.
fn connection(ledger: &Ledger) -> Event {
    ledger
        .connection(
            "device.connect",
            "dev-1",
            "core router",
            ConnectionPhase::Connect,
            Outcome::Success,
        )
        .build()
}

/// `[kafka] librdkafka` is documented as applied last, so that it wins. A delivery timeout set
/// there, under either of librdkafka's names for it, must bound delivery, whatever
/// `[producer] delivery_timeout_ms` (here its 120 s default) says. Several producers take the
/// alias, because which of two aliased keys librdkafka applies last can vary per client.
#[tokio::test]
async fn a_delivery_timeout_passed_through_to_librdkafka_bounds_delivery() {
    let harness = Harness::shared().unwrap();
    let mut broker = Broker::start(BrokerStorage::Memory).unwrap();
    let service = names::unique("svc");
    // Five producers on the alias: if which of the two aliased keys wins were a coin toss per
    // client, at least one of the five would keep the 120 s default in 31 runs of 32.
    let keys = [
        "delivery.timeout.ms",
        "message.timeout.ms",
        "message.timeout.ms",
        "message.timeout.ms",
        "message.timeout.ms",
        "message.timeout.ms",
    ];
    let mut ledgers = Vec::new();
    for key in keys {
        let mut kafka = KafkaConfig {
            brokers: broker.bootstrap(),
            ..KafkaConfig::default()
        };
        kafka
            .librdkafka
            .insert(key.to_owned(), SHORT_DELIVERY_TIMEOUT_MS.to_string());
        let ledger = Ledger::builder(service.clone())
            .config(producer_config(&service))
            .kafka(kafka)
            .registry_url(harness.registry.url())
            .build()
            .await
            .unwrap();
        ledger.send_event(connection(&ledger)).await.unwrap();
        ledgers.push((key, ledger));
    }

    broker.kill();

    let mut sends = tokio::task::JoinSet::new();
    for (index, (key, ledger)) in ledgers.into_iter().enumerate() {
        sends.spawn(async move {
            let sent =
                tokio::time::timeout(HANG_GUARD, ledger.send_event(connection(&ledger))).await;
            (
                index,
                key,
                sent.map(|result| result.map_err(|e| e.to_string())),
            )
        });
    }
    let mut problems = Vec::new();
    while let Some(joined) = sends.join_next().await {
        let (index, key, sent) = joined.unwrap();
        match sent {
            Err(_) => problems.push(format!(
                "producer {index} ({key} = {SHORT_DELIVERY_TIMEOUT_MS}): send() still waiting \
                 after {HANG_GUARD:?}, so the passthrough value was not applied"
            )),
            Ok(Ok(delivered)) => problems.push(format!(
                "producer {index} ({key}): delivered with the broker gone: {delivered:?}"
            )),
            Ok(Err(error)) if !error.to_lowercase().contains("timed out") => problems.push(
                format!("producer {index} ({key}): error does not name the cause: {error}"),
            ),
            Ok(Err(_)) => {}
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn a_full_queue_errors_or_waits_as_configured() {
    let mut broker = Broker::start(BrokerStorage::Sqlite).unwrap();
    let registry = RegistryServer::start(&broker.bootstrap()).unwrap();
    let service = names::unique("svc");
    let mut kafka = KafkaConfig {
        brokers: broker.bootstrap(),
        ..KafkaConfig::default()
    };
    // One record may sit in librdkafka's queue, so the delivery task stalls on the second
    // while the broker is down and the producer's own queue fills.
    kafka
        .librdkafka
        .insert("queue.buffering.max.messages".to_owned(), "1".to_owned());
    let build = |policy: QueueFullPolicy| {
        let kafka = kafka.clone();
        let registry_url = registry.url();
        let service = service.clone();
        async move {
            Ledger::builder(service.clone())
                .config(ProducerConfig {
                    queue_capacity: 2,
                    queue_full: policy,
                    ..producer_config(&service)
                })
                .kafka(kafka)
                .registry_url(registry_url)
                .build()
                .await
                .unwrap()
        }
    };
    let erroring = build(QueueFullPolicy::Error).await;
    let waiting = build(QueueFullPolicy::Wait).await;
    // Warm the encoders' schema caches while everything is up.
    for ledger in [&erroring, &waiting] {
        ledger
            .job("job.warm", "job-w", "t", "n", JobStatus::Queued)
            .send()
            .await
            .unwrap();
    }

    broker.kill();
    // The delivery task stalls on its second record; after the queue's two slots fill (how
    // many publishes that takes depends on how the task drains its queue), `error` refuses.
    let mut refused = None;
    for n in 0..50 {
        let publish = erroring
            .job(
                "job.progress",
                &format!("job-{n}"),
                "t",
                "n",
                JobStatus::Running,
            )
            .publish()
            .await;
        if let Err(error) = publish {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("the queue never filled");
    assert!(
        matches!(refused, PublishError::QueueFull { capacity: 2, .. }),
        "{refused}"
    );

    // With `wait`, a publish into the full queue blocks instead of failing. A publish dropped
    // while waiting queued nothing (publish is cancel-safe).
    let mut waited = false;
    for n in 0..50 {
        let publish = waiting
            .job(
                "job.progress",
                &format!("job-{n}"),
                "t",
                "n",
                JobStatus::Running,
            )
            .publish();
        if tokio::time::timeout(Duration::from_millis(500), publish)
            .await
            .is_err()
        {
            waited = true;
            break;
        }
    }
    assert!(waited, "publish never waited on a full queue");
    let blocked = waiting
        .job("job.progress", "job-blocked", "t", "n", JobStatus::Running)
        .publish();
    tokio::pin!(blocked);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut blocked)
            .await
            .is_err(),
        "publish did not wait on a full queue"
    );
    // ...and completes once the broker is back and the queue drains.
    broker.restart().unwrap();
    tokio::time::timeout(Duration::from_secs(30), blocked)
        .await
        .unwrap()
        .unwrap();
    for ledger in [&erroring, &waiting] {
        let stats = ledger.flush(Duration::from_secs(60)).await.unwrap();
        assert_eq!(stats.failed, 0, "{stats:?}");
    }
}
