//! The query API when things fail under it: a query over ClickHouse's limits is a 4xx naming
//! the limit; an audit read whose audit event cannot be published is refused with 503 (while
//! other reads go on); ClickHouse down is a JSON 503 and `/health` says why. The stack is this
//! test's own, since it stops servers.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ledgerline_producer::event::Level;
use ledgerline_query_api::config::LimitsConfig;
use ledgerline_tests::names;

mod api_support;
use api_support::{recent_range, ApiStack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_an_unrecordable_audit_read_and_clickhouse_down_are_clear_errors() {
    let stack = ApiStack::start(LimitsConfig {
        max_rows_to_read: 100,
        audit_publish_timeout_ms: 3_000,
        ..LimitsConfig::default()
    });
    let analyst = stack.analyst(0);
    let auditor = stack.auditor(0);
    let ledger = stack.ledger(&names::unique("busy")).await;
    for n in 0..300 {
        let event = ledger
            .system("load.item", Level::Info, "app", &format!("item {n}"))
            .build();
        ledger.send_event(event).await.unwrap();
    }
    let admin = stack.clickhouse.lock().unwrap().client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: u64 = admin
            .query("SELECT count() FROM ledgerline.events")
            .fetch_one()
            .await
            .unwrap_or(0);
        if stored >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "only {stored} events stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Over max_rows_to_read: a 422 that names the limit, not a 500.
    let (status, body) = stack
        .get(
            Some(analyst),
            &format!("/v1/events?{}&text=item", recent_range()),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "query_limit");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_rows_to_read"),
        "{body}"
    );

    // An audit read is answered while its audit event can be published...
    let audit = format!("/v1/audit/events?{}&limit=5", recent_range());
    let (status, body) = stack.get(Some(auditor), &audit).await;
    assert_eq!(status, 200, "{body}");

    // ...and refused once it cannot: the broker is gone.
    stack.broker.lock().unwrap().kill();
    let started = Instant::now();
    let (status, body) = stack.get(Some(auditor), &audit).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "audit_trail_unavailable");
    assert!(started.elapsed() < Duration::from_secs(30));
    let proof = format!("/v1/audit/events/{}/proof", uuid::Uuid::now_v7());
    for path in ["/v1/audit/verify", "/v1/audit/export", proof.as_str()] {
        let (status, body) = stack.get(Some(auditor), path).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("audit_trail_unavailable")),
            "{path}: {body}"
        );
    }
    // Reads that are not audit review do not depend on the broker.
    let (status, body) = stack.get(Some(analyst), "/v1/jobs").await;
    assert_eq!(status, 200, "{body}");

    // ClickHouse down: a JSON 503, and /health names the failing component.
    stack.clickhouse.lock().unwrap().kill();
    let (status, body) = stack.get(Some(analyst), "/v1/jobs").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "clickhouse_unavailable");
    let (status, health) = stack.get(None, "/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["components"]["clickhouse"]["status"], "failing");
    assert!(
        health["components"]["clickhouse"]["error"].is_string(),
        "{health}"
    );
}
