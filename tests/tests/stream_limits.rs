//! The live stream's refusals and limits, each with its specific error, against a stack with
//! small limits: bad keys, filters and cursors (HTTP errors before the upgrade), bad and
//! oversize client messages, too many connections, idle and too-slow clients, and cursors
//! the broker cannot serve. After each, the server keeps serving.

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ledgerline_producer::event::Level;
use ledgerline_query_api::config::StreamConfig;
use ledgerline_query_api::stream::cursor::{encode_live, Positions};
use ledgerline_schemas::Category;
use ledgerline_tests::names;
use serde_json::Value;

mod api_support;
use api_support::ws::{connect, connect_ready, subscribe, StreamClient};
use api_support::{encode, ApiStack, StackOptions};

static STACK: OnceLock<ApiStack> = OnceLock::new();

const PER_KEY: usize = 3;
const MAX_MESSAGE: usize = 1024;

fn stack() -> &'static ApiStack {
    STACK.get_or_init(|| {
        ApiStack::start_with(StackOptions {
            stream: StreamConfig {
                max_connections_per_key: PER_KEY,
                max_message_bytes: MAX_MESSAGE,
                queue_events: 8,
                slow_client_timeout_secs: 2,
                heartbeat_secs: 1,
                idle_timeout_secs: 8,
                ..StreamConfig::default()
            },
            ..StackOptions::default()
        })
    })
}

/// Connects and expects an HTTP refusal.
async fn refused(key: Option<&str>, query: &str) -> (u16, Value) {
    match connect(&stack().api, key, query).await {
        Ok(_) => panic!("{query} was accepted"),
        Err(refusal) => refusal,
    }
}

/// The server still serves a stream: a fresh client gets a fresh event.
async fn still_serves() {
    let stack = stack();
    let service = names::unique("stream-alive");
    let mut client = subscribe(&stack.api, stack.admin(7), &format!("service={service}")).await;
    receives_a_fresh_event(&mut client, &service).await;
}

/// `client`, filtered on `service`, receives an event published now for `service`.
async fn receives_a_fresh_event(client: &mut StreamClient, service: &str) {
    let ledger = stack().ledger(service).await;
    let event = ledger
        .system("alive", Level::Info, "app", "still here")
        .build();
    let id = event.envelope().event_id.to_string();
    ledger.send_event(event).await.unwrap();
    let (events, _) = client
        .events_until(Duration::from_secs(30), |events| !events.is_empty())
        .await;
    assert_eq!(events[0]["event_id"], id.as_str());
}

/// Reads until the stream ends: the error message and the close frame.
async fn ending(client: &mut StreamClient) -> (Value, Value) {
    let mut error = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match client.next(Duration::from_secs(30)).await {
            Some(message) if message["type"] == "error" => error = message,
            Some(message) if message["type"] == "close" => return (error, message),
            Some(_) => continue,
            None => break,
        }
    }
    panic!("the stream did not end with a close frame (last error {error})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_filters_and_since_are_refused_before_the_upgrade() {
    let stack = stack();
    let (status, body) = refused(None, "service=x").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("key"));
    let (status, body) = refused(Some("llk_not-a-key"), "").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = refused(None, "key=llk_not-a-key").await;
    assert_eq!(status, 401);
    let analyst = stack.analyst(0);
    for (query, named) in [
        ("level=loud", "`level`"),
        ("servce=x", "`servce`"),
        ("category=audits", "`category`"),
        ("q=servce:x", "`q`"),
        ("since=yesterday", "`since`"),
        ("since=AQ", "`since`"),
        ("service=a&service=", "`service`"),
    ] {
        let (status, body) = refused(Some(analyst), query).await;
        assert_eq!(status, 400, "{query}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{query}: {message}");
    }
    // Not a websocket request at all.
    let (status, body) = stack.get(Some(analyst), "/v1/stream").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "not_a_websocket");
    // A browser's key in the URL works (once the fan-out has its partitions).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match connect(&stack.api, None, &format!("key={analyst}")).await {
            Ok(client) => break client,
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(refusal) => panic!("{refusal:?}"),
        }
    };
    assert_eq!(client.subscribed().await["type"], "subscribed");
    // /health reports the fan-out consumer.
    let (_, health) = stack.get(None, "/health").await;
    assert_eq!(health["components"]["fanout"]["status"], "ok", "{health}");
    still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_messages_get_errors_naming_the_problem_and_the_stream_stays() {
    let stack = stack();
    let service = names::unique("stream-messages");
    let mut client = subscribe(&stack.api, stack.analyst(1), &format!("service={service}")).await;
    for (message, code, named) in [
        ("not json", "bad_message", "not JSON"),
        (r#"{"type":"subscribe"}"#, "bad_message", "`subscribe`"),
        (
            r#"{"type":"filter","filter":{"level":"loud"}}"#,
            "bad_filter",
            "`level`",
        ),
        (
            r#"{"type":"filter","filter":{"servce":"x"}}"#,
            "bad_filter",
            "`servce`",
        ),
        (
            r#"{"type":"filter","filter":{"service":7}}"#,
            "bad_filter",
            "`service`",
        ),
        (
            r#"{"type":"filter","filter":"service=x"}"#,
            "bad_filter",
            "`filter`",
        ),
    ] {
        client.send(message).await;
        let reply = client.reply(Duration::from_secs(10)).await.unwrap();
        assert_eq!(reply["type"], "error", "{message}: {reply}");
        assert_eq!(reply["code"], code, "{message}: {reply}");
        assert!(
            reply["message"].as_str().unwrap().contains(named),
            "{message}: {reply}"
        );
    }
    // A flood of messages is cut to a steady rate, each refusal saying so.
    let same = format!(r#"{{"type":"filter","filter":{{"service":"{service}"}}}}"#);
    for _ in 0..40 {
        client.send(&same).await;
    }
    let mut limited = 0;
    let mut acknowledged = 0;
    while limited + acknowledged < 40 {
        let reply = client.next(Duration::from_secs(10)).await.expect("a reply");
        match (reply["type"].as_str(), reply["code"].as_str()) {
            (Some("error"), Some("rate_limited")) => limited += 1,
            (Some("subscribed"), _) => acknowledged += 1,
            (Some("heartbeat"), _) => {}
            _ => panic!("{reply}"),
        }
    }
    assert!(
        limited > 0 && acknowledged >= 10,
        "{limited} {acknowledged}"
    );
    assert_eq!(limited + acknowledged, 40);
    // The budget refills.
    tokio::time::sleep(Duration::from_secs(1)).await;
    client
        .send(&format!(
            r#"{{"type":"filter","filter":{{"service":"{service}"}}}}"#
        ))
        .await;
    let reply = client.reply(Duration::from_secs(10)).await.unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // Still open, and filtering.
    receives_a_fresh_event(&mut client, &service).await;

    // An oversize message ends the stream with 1009.
    client
        .send(&format!(
            r#"{{"type":"filter","filter":{{"service":"{}"}}}}"#,
            "x".repeat(MAX_MESSAGE * 2)
        ))
        .await;
    let (error, close) = ending(&mut client).await;
    assert_eq!(error["code"], "message_too_large", "{error}");
    assert!(error["message"].as_str().unwrap().contains("1024"));
    assert_eq!(close["code"], 1009);
    still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_key_limit_get_429_until_one_closes() {
    let stack = stack();
    let key = stack.analyst(2);
    let mut open = Vec::new();
    for _ in 0..PER_KEY {
        open.push(subscribe(&stack.api, key, "service=limits").await);
    }
    let (status, body) = refused(Some(key), "service=limits").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&format!("{PER_KEY}")));
    // A plain GET, which is how a browser learns why its websocket was refused, gets the
    // same answer rather than `not_a_websocket`.
    let (status, body) = stack.get(Some(key), "/v1/stream?service=limits").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_connections");
    // Another key is not affected.
    subscribe(&stack.api, stack.analyst(3), "service=limits")
        .await
        .close()
        .await;
    // A closed stream frees its place.
    open.pop().unwrap().close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(&stack.api, Some(key), "service=limits").await {
            Ok(_) => break,
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(refusal) => panic!("{refusal:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_as_idle() {
    let stack = stack();
    let mut client = subscribe(&stack.api, stack.analyst(4), "service=idle").await;
    // Reading nothing means answering no ping. The server closes at 8 s and waits 2 s for
    // the closing handshake; reading starts within that, so the close frame is not lost to a
    // reset connection.
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    let (error, close) = ending(&mut client).await;
    assert_eq!(error["code"], "idle_timeout", "{error}");
    assert_eq!(close["code"], 4408);
    assert_eq!(close["reason"], "idle_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_for_too_long_is_disconnected_with_the_reason() {
    let stack = stack();
    let service = names::unique("stream-slow");
    let mut client = subscribe(&stack.api, stack.analyst(5), &format!("service={service}")).await;
    let ledger = stack.ledger(&service).await;
    // Events for well over the 2 s the client may lag, far more than the socket buffers
    // hold, while it reads nothing.
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let event = ledger
            .system(
                "flood",
                Level::Info,
                "app",
                &format!("{n} {}", "x".repeat(8000)),
            )
            .build();
        ledger.publish_event(event).await.unwrap();
        n += 1;
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (error, close) = ending(&mut client).await;
    assert_eq!(error["code"], "too_slow", "{error}");
    assert_eq!(close["code"], 4410);
    still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_the_broker_cannot_serve_gets_a_gap_message_then_the_stream() {
    let stack = stack();
    let mut positions = Positions::new();
    positions.insert((Category::System, 0), 1_000_000_000_000);
    let cursor = encode_live(&positions);
    let mut client = connect_ready(
        &stack.api,
        stack.analyst(6),
        &format!("service=gap&since={}", encode(&cursor)),
    )
    .await;
    let gap = client.reply(Duration::from_secs(30)).await.unwrap();
    assert_eq!(gap["type"], "gap", "{gap}");
    let partition = &gap["partitions"][0];
    assert_eq!(partition["topic"], "ledgerline.system");
    assert_eq!(partition["partition"], 0);
    assert_eq!(partition["from"], 1_000_000_000_000_i64);
    assert!(partition["reason"].as_str().unwrap().contains("ahead"));
    assert!(gap["cursor"].is_string());
    assert_eq!(client.subscribed().await["type"], "subscribed");
}
