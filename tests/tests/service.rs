//! The shared service plumbing: the side listener's `/health` (real component checks against
//! the harness broker) and `/metrics`, served on a real socket and shut down by the token.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ledgerline_service::http::{self, Health};
use ledgerline_service::kafka::{KafkaConfig, KafkaProbe};
use ledgerline_service::telemetry;
use ledgerline_tests::{process, Harness};
use tokio_util::sync::CancellationToken;

fn probe_for(brokers: String) -> KafkaProbe {
    let config = KafkaConfig {
        brokers,
        ..KafkaConfig::default()
    };
    KafkaProbe::new(&config).unwrap()
}

fn kafka_health(probe: KafkaProbe) -> Health {
    Health::new().with_check("kafka", move || {
        let probe = probe.clone();
        async move { probe.check(Duration::from_secs(1)).await.map(|_| ()) }
    })
}

#[tokio::test]
async fn health_reports_each_component_and_metrics_render() {
    let harness = Harness::shared().unwrap();
    let live = probe_for(harness.broker.bootstrap());
    // Nothing listens on a port we just freed, so this component must report failing.
    let dead = probe_for(format!("127.0.0.1:{}", process::free_port().unwrap()));
    let metrics = telemetry::prometheus().unwrap();
    metrics::counter!("ledgerline_test_requests_total").increment(3);

    let shutdown = CancellationToken::new();
    let healthy_router = http::router(kafka_health(live.clone()), metrics.clone());
    let (healthy_addr, healthy_task) = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        healthy_router,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let failing = kafka_health(live).with_check("kafka-secondary", move || {
        let probe = dead.clone();
        async move { probe.check(Duration::from_millis(500)).await.map(|_| ()) }
    });
    let (failing_addr, failing_task) = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        http::router(failing, metrics),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{healthy_addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["components"]["kafka"]["status"], "ok");

    let response = client
        .get(format!("http://{failing_addr}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "failing");
    assert_eq!(body["components"]["kafka"]["status"], "ok");
    assert_eq!(body["components"]["kafka-secondary"]["status"], "failing");
    assert!(body["components"]["kafka-secondary"]["error"]
        .as_str()
        .unwrap()
        .contains("did not answer"));

    let response = client
        .get(format!("http://{healthy_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("ledgerline_test_requests_total 3"), "{text}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), healthy_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), failing_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reqwest::get(format!("http://{healthy_addr}/health"))
        .await
        .is_err());
}
