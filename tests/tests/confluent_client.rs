//! A client written against Confluent's API works unchanged: Python's confluent-kafka
//! (`SchemaRegistryClient` + `AvroSerializer`, as a new user would write it) registers the
//! audit schema with Ledgerline's registry and publishes; Ledgerline's decoder reads every event.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ledgerline_schemas::event::Event;
use ledgerline_schemas::{avro, Category, EventCodec};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::{names, Harness};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

fn python() -> String {
    std::env::var(ledgerline_service::env::PYTHON).unwrap_or_else(|_| "python3".to_owned())
}

#[tokio::test]
async fn confluent_python_client_registers_and_our_decoder_reads() {
    let harness = Harness::shared().unwrap();
    let topic = names::topic();
    harness.broker.create_topic(&topic, 2).await.unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let schema_file = repo.join("schemas/avro/audit.v1.avsc");
    let script = repo.join("tests/python/confluent_produce.py");

    let output = tokio::process::Command::new(python())
        .arg(&script)
        .arg(harness.broker.bootstrap())
        .arg(harness.registry.url())
        .arg(&topic)
        .arg(&schema_file)
        .arg("20")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "python client failed (is tests/python/requirements.txt installed? deploy/local/install does it):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    let expected: HashSet<String> = lines
        .iter()
        .map(|line| line["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(lines.iter().all(|line| line["magic"] == 0));

    // The Python client registered under TopicNameStrategy: subject `<topic>-value`, and the
    // schema is the same (canonical form) as ours, so it shares the audit schema's id.
    let subject = format!("{topic}-value");
    let registered: serde_json::Value = reqwest::get(format!(
        "{}/subjects/{subject}/versions/latest",
        harness.registry.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(registered["id"], lines[0]["schema_id"]);
    let ours = apache_avro::Schema::parse_str(avro::current(Category::Audit).text).unwrap();
    let theirs = apache_avro::Schema::parse_str(registered["schema"].as_str().unwrap()).unwrap();
    assert_eq!(ours.canonical_form(), theirs.canonical_form());

    let codec = EventCodec::new(&SchemaRegistryConfig {
        url: harness.registry.url(),
        ..SchemaRegistryConfig::default()
    })
    .unwrap();
    let consumer: StreamConsumer = harness
        .broker
        .consumer_config(&names::group())
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < expected.len() && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let Event::Audit(audit) = codec
            .decode(Category::Audit, message.payload().unwrap())
            .await
            .unwrap()
        else {
            panic!("not an audit event");
        };
        assert_eq!(audit.envelope.service, "python-billing");
        assert_eq!(audit.actor.ip, "198.51.100.7");
        assert_eq!(audit.target.as_ref().map(|t| t.id.as_str()), Some("acct-1"));
        seen.insert(audit.envelope.event_id.to_string());
    }
    assert_eq!(seen, expected);
}
