//! The monitoring that ships in `deploy/`: Debian's Prometheus scrapes the real services
//! (registry, projector, archiver and API, each its own process, as `deploy/local/up
//! --monitoring` runs them) with `deploy/monitoring/prometheus.yml.in` and evaluates
//! `deploy/monitoring/rules.yml`; Alertmanager runs `deploy/monitoring/alertmanager.yml`.
//!
//! - Every alert rule is loaded and evaluates without error, and every expression of the
//!   Grafana dashboard (`deploy/grafana/ledgerline.json`) runs; every metric any of them names
//!   is one the services really export (a renamed metric fails here, not on a dashboard).
//! - A dead letter fires `LedgerlineDeadLetters`; stopping the projector fires
//!   `LedgerlineProjectorDown` in Prometheus's `/api/v1/alerts` and reaches Alertmanager.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod events_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use events_support::{create_event_topics, ledger_for};
use ledgerline_consumers::archive::checkpoint;
use ledgerline_producer::event::{Actor, ConnectionPhase, Direction, JobStatus, Level, Outcome};
use ledgerline_producer::ProducerConfig;
use ledgerline_query_api::auth::{generate_key, Role};
use ledgerline_schemas::Category;
use ledgerline_tests::prometheus::{monitoring_dir, Alertmanager, Prometheus, ScrapeTargets};
use ledgerline_tests::services::{free_address, Service};
use ledgerline_tests::{Broker, BrokerStorage, ClickHouseServer};
use secrecy::ExposeSecret;
use serde_json::Value;

/// Scrape and rule evaluation interval of the test's Prometheus.
const INTERVAL: Duration = Duration::from_secs(1);

/// Every Ledgerline service as its own process on one broker, registry and ClickHouse.
struct Stack {
    broker: Broker,
    _clickhouse: ClickHouseServer,
    registry: Service,
    projector: Service,
    archiver: Service,
    api: Service,
    analyst_key: String,
    _dir: tempfile::TempDir,
}

fn start_stack() -> Stack {
    let clickhouse = std::thread::spawn(ClickHouseServer::start);
    let broker = Broker::start(BrokerStorage::Memory).unwrap();
    let clickhouse = clickhouse.join().unwrap().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(create_event_topics(&broker, 2));

    let signing = checkpoint::generate().unwrap();
    let key_file = dir.path().join("archive.key");
    std::fs::write(&key_file, signing.secret_file.expose_secret()).unwrap();
    let public_key_file = dir.path().join("public.key");
    std::fs::write(&public_key_file, format!("{}\n", signing.public_key_hex)).unwrap();
    let analyst = generate_key(Role::Analyst, None).unwrap();

    let [registry, projector, archiver, api] = [(); 4].map(|()| free_address().unwrap());
    let clickhouse_section = |user: &str, database: &str| {
        format!(
            "url = \"{}\"\nuser = \"{user}\"\npassword = \"{}\"\ndatabase = \"{database}\"\n",
            clickhouse.url(),
            clickhouse.password()
        )
    };
    let config = format!(
        r#"[kafka]
brokers = "{brokers}"

[schema_registry]
url = "http://{registry}"

[registry]
listen = "{registry}"

[projector]
listen = "{projector}"
batch_max_wait_ms = 100

[projector.clickhouse]
{projector_clickhouse}
[archive]
listen = "{archiver}"
batch_max_wait_ms = 100
signing_key_file = "{key_file}"
checkpoint_every_records = 1000
checkpoint_every_secs = 1
self_verify_interval_secs = 1

[archive.clickhouse]
{archive_clickhouse}
[api]
listen = "{api}"
archive_public_key_files = ["{public_key_file}"]

[api.clickhouse]
{api_clickhouse}
[api.audit_clickhouse]
{audit_clickhouse}
[[api.keys]]
id = "{key_id}"
role = "analyst"
sha256 = "{key_sha256}"
"#,
        brokers = broker.bootstrap(),
        projector_clickhouse = clickhouse_section("projector", "ledgerline"),
        archive_clickhouse = clickhouse_section("archiver", "ledgerline_audit"),
        api_clickhouse = clickhouse_section("api", "ledgerline"),
        audit_clickhouse = clickhouse_section("auditor", "ledgerline_audit"),
        key_file = key_file.display(),
        public_key_file = public_key_file.display(),
        key_id = analyst.entry.id,
        key_sha256 = analyst.entry.sha256,
    );
    let config_file = dir.path().join("ledgerline.toml");
    std::fs::write(&config_file, config).unwrap();
    let logs = dir.path();
    let registry = Service::start(
        "registry",
        "ledgerline-registry",
        &[],
        &config_file,
        &registry,
        logs,
    )
    .unwrap();
    let projector = Service::start(
        "projector",
        "ledgerline-consumer",
        &["projector"],
        &config_file,
        &projector,
        logs,
    )
    .unwrap();
    let archiver = Service::start(
        "archiver",
        "ledgerline-consumer",
        &["archive"],
        &config_file,
        &archiver,
        logs,
    )
    .unwrap();
    let api = Service::start("api", "ledgerline-api", &[], &config_file, &api, logs).unwrap();
    Stack {
        broker,
        _clickhouse: clickhouse,
        registry,
        projector,
        archiver,
        api,
        analyst_key: analyst.key,
        _dir: dir,
    }
}

/// Events of every category and level, API requests that answer 200, 400 and 401, and a
/// live-stream client that connects and leaves: with [`dead_letter`], what makes each service
/// export the series the rules and the dashboard read.
async fn traffic(stack: &Stack) {
    let ledger = ledger_for(
        &stack.broker.bootstrap(),
        &format!("http://{}", stack.registry.listen()),
        ProducerConfig {
            service_name: "monitoring-test".to_owned(),
            linger_ms: 1,
            create_topics: false,
            ..ProducerConfig::default()
        },
    )
    .await;
    for round in 0..3 {
        let job_id = format!("job-{round}");
        for (progress, status) in [
            (0, JobStatus::Queued),
            (50, JobStatus::Running),
            (100, JobStatus::Completed),
        ] {
            ledger
                .job("job.step", &job_id, "backup", "Backup", status)
                .progress(progress)
                .publish()
                .await
                .unwrap();
        }
        ledger
            .connection(
                "device.connection",
                "dev-1",
                "router 1",
                ConnectionPhase::Connect,
                Outcome::Success,
            )
            .publish()
            .await
            .unwrap();
        ledger
            .session("dev-1", Direction::Output, "ok\n")
            .publish()
            .await
            .unwrap();
        ledger
            .system("disk.full", Level::Error, "monitoring::test", "disk full")
            .publish()
            .await
            .unwrap();
        ledger
            .audit(
                "user.login.failure",
                Actor {
                    id: "mallory".to_owned(),
                    kind: "user".to_owned(),
                    ip: "203.0.113.9".to_owned(),
                    user_agent: None,
                },
                "login",
                Outcome::Failure,
                serde_json::json!({}),
            )
            .publish()
            .await
            .unwrap();
    }
    ledger.flush(Duration::from_secs(30)).await.unwrap();

    let http = reqwest::Client::new();
    let api = format!("http://{}", stack.api.listen());
    let at = |offset: time::Duration| {
        (time::OffsetDateTime::now_utc() + offset)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let events = format!(
        "{api}/v1/events?since={}&until={}",
        at(time::Duration::hours(-1)),
        at(time::Duration::minutes(1))
    );
    for (key, url, expected) in [
        (Some(stack.analyst_key.as_str()), events.as_str(), 200),
        (
            Some(stack.analyst_key.as_str()),
            &format!("{events}&bogus=1"),
            400,
        ),
        (None, events.as_str(), 401),
    ] {
        let mut request = http.get(url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let status = request.send().await.unwrap().status().as_u16();
        assert_eq!(status, expected, "GET {url}");
    }
    let stream = format!(
        "ws://{}/v1/stream?key={}&category=job",
        stack.api.listen(),
        stack.analyst_key
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(stream).await.unwrap();
    use futures::StreamExt as _;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(
        matches!(first, Ok(Some(Ok(_)))),
        "no message on the stream: {first:?}"
    );
    ws.close(None).await.unwrap();
}

/// A record that is not an event at all: the projector dead-letters it.
async fn dead_letter(stack: &Stack) {
    let producer: rdkafka::producer::FutureProducer =
        stack.broker.producer_config().create().unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(Category::Job.topic_name())
                .payload("not a Confluent-framed Avro record"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// GET `url` as JSON, with Prometheus's `status: success` asserted.
async fn prometheus_get(http: &reqwest::Client, url: &str) -> Value {
    let body: Value = http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "success", "{url}: {body}");
    body["data"].clone()
}

async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Value {
    let response = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(
        status.is_success() && body["status"] == "success",
        "Prometheus refused `{expr}` ({status}): {body}"
    );
    body["data"].clone()
}

/// The metric names an expression refers to: identifiers starting with `ledgerline_`, and
/// `up`. (Label names and functions never start with `ledgerline_` here.)
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("ledgerline_") || *word == "up")
        .map(str::to_owned)
        .collect()
}

/// The dashboard's expressions, with Grafana's interval variables given a value.
fn dashboard_expressions() -> Vec<(String, String)> {
    let path = monitoring_dir()
        .parent()
        .unwrap()
        .join("grafana")
        .join("ledgerline.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            expressions.push((
                format!("panel {:?}", panel["title"].as_str().unwrap_or("")),
                expr.replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m"),
            ));
        }
    }
    assert!(
        expressions.len() >= 12,
        "the dashboard lost panels: {expressions:?}"
    );
    expressions
}

/// Alert `name`'s state in Prometheus (`pending`, `firing`), if it is active.
async fn alert_state(http: &reqwest::Client, prometheus: &str, name: &str) -> Option<String> {
    let data = prometheus_get(http, &format!("{prometheus}/api/v1/alerts")).await;
    data["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| alert["labels"]["alertname"] == name)
        .map(|alert| alert["state"].as_str().unwrap_or_default().to_owned())
}

async fn wait_for_alert(
    http: &reqwest::Client,
    prometheus: &Prometheus,
    name: &str,
    bound: Duration,
) {
    let started = Instant::now();
    loop {
        let state = alert_state(http, &prometheus.url(), name).await;
        if state.as_deref() == Some("firing") {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "{name} did not fire within {bound:?} (state {state:?}); Prometheus log: {}",
            ledgerline_tests::process::tail(prometheus.log(), 20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn rules_and_dashboard_run_against_the_services_and_a_stopped_projector_alerts() {
    let mut stack = start_stack();
    let alertmanager = Alertmanager::start().unwrap();
    let prometheus = Prometheus::start(
        &ScrapeTargets {
            projector: stack.projector.listen().to_owned(),
            archiver: stack.archiver.listen().to_owned(),
            api: stack.api.listen().to_owned(),
            registry: stack.registry.listen().to_owned(),
        },
        &alertmanager,
        INTERVAL,
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        traffic(&stack).await;
        let http = reqwest::Client::new();
        let url = prometheus.url();

        // Every scrape target is up.
        let started = Instant::now();
        loop {
            let targets = prometheus_get(&http, &format!("{url}/api/v1/targets")).await;
            let active = targets["activeTargets"].as_array().unwrap().clone();
            let down: Vec<&Value> = active.iter().filter(|t| t["health"] != "up").collect();
            if active.len() == 5 && down.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "targets not all up: {down:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // The rules as Prometheus loaded them: as many as the file has, each evaluated
        // without an error.
        let file = std::fs::read_to_string(monitoring_dir().join("rules.yml")).unwrap();
        let in_file = file.matches("- alert: ").count();
        let started = Instant::now();
        let rules = loop {
            let data = prometheus_get(&http, &format!("{url}/api/v1/rules")).await;
            let rules: Vec<Value> = data["groups"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|group| group["rules"].as_array().unwrap().clone())
                .collect();
            if rules.len() == in_file && rules.iter().all(|rule| rule["health"] != "unknown") {
                break rules;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} of {in_file} rules loaded or evaluated: {rules:?}",
                rules.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        for rule in &rules {
            assert_eq!(rule["health"], "ok", "rule failed to evaluate: {rule}");
        }
        // Nothing was dead-lettered yet, so its alert is quiet; now one record is.
        assert_eq!(
            alert_state(&http, &url, "LedgerlineDeadLetters").await,
            None,
            "no dead letter yet"
        );
        dead_letter(&stack).await;
        let mut expressions: Vec<(String, String)> = rules
            .iter()
            .map(|rule| {
                (
                    format!("alert {}", rule["name"].as_str().unwrap()),
                    rule["query"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        expressions.extend(dashboard_expressions());

        // Every name they use is exported. Some series appear a few seconds after the
        // traffic (lag is measured every 5 s, the archive verifies every second), so wait
        // for them, and report what is still missing.
        let wanted: BTreeSet<String> = expressions
            .iter()
            .flat_map(|(_, expr)| metric_names(expr))
            .collect();
        assert!(wanted.len() >= 15, "too few metric names found: {wanted:?}");
        let started = Instant::now();
        loop {
            let names = prometheus_get(&http, &format!("{url}/api/v1/label/__name__/values")).await;
            let exported: BTreeSet<String> = names
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect();
            let missing: Vec<&String> = wanted.difference(&exported).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "named by the rules or the dashboard but exported by no service: {missing:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Each runs (query() asserts Prometheus's `success`; a parse error is a 400).
        for (source, expr) in &expressions {
            let data = query(&http, &url, expr).await;
            assert!(data["result"].is_array(), "{source}: `{expr}` gave {data}");
        }
        // The figures are the traffic's, so the test cannot pass on empty results: the three
        // ERROR events, as stored by the projector and scraped.
        let started = Instant::now();
        loop {
            let stored = query(
                &http,
                &url,
                "sum(ledgerline_projector_events_by_level_total{level=\"ERROR\"})",
            )
            .await;
            if stored["result"][0]["value"][1] == "3" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ERROR events counted: {stored}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        // The dead letter fires its alert (no `for`); the projector is not reported down.
        wait_for_alert(
            &http,
            &prometheus,
            "LedgerlineDeadLetters",
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(
            alert_state(&http, &url, "LedgerlineProjectorDown").await,
            None,
            "the projector is up"
        );

        // Stop the projector: after its rule's `for: 1m`, it fires.
        stack.projector.terminate();
        wait_for_alert(
            &http,
            &prometheus,
            "LedgerlineProjectorDown",
            Duration::from_secs(150),
        )
        .await;
        assert_eq!(
            alert_state(&http, &url, "LedgerlineApiDown").await,
            None,
            "only the projector stopped"
        );
        // And Prometheus hands it to Alertmanager.
        let started = Instant::now();
        loop {
            let alerts: Value = http
                .get(format!("{}/api/v2/alerts", alertmanager.url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if alerts
                .as_array()
                .unwrap()
                .iter()
                .any(|alert| alert["labels"]["alertname"] == "LedgerlineProjectorDown")
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Alertmanager did not get LedgerlineProjectorDown: {alerts}; log: {}",
                ledgerline_tests::process::tail(alertmanager.log(), 20)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

#[test]
fn metric_names_are_read_from_expressions() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(ledgerline_api_request_duration_seconds_bucket{route=~\"x\"}[1m]))) + up{job=\"a\"}",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["ledgerline_api_request_duration_seconds_bucket", "up"]
    );
    assert!(Path::new(&monitoring_dir()).join("rules.yml").is_file());
}
