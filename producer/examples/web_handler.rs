//! A web handler emitting audit events.
//!
//! Each request runs in a span carrying its `request_id` and the caller's W3C `traceparent`;
//! the audit event picks both up without the handler passing them. The failed login's
//! `password` field in the details never reaches Kafka: the producer redacts it.
//!
//! Run against the local stack (`deploy/local/up`): `cargo run -p ledgerline-producer --example web_handler`

// An example reports to its terminal.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use ledgerline_producer::event::{Actor, Outcome};
use ledgerline_producer::Ledger;
use ledgerline_service::ConfigSource;
use tracing::Instrument;
use tracing_subscriber::prelude::*;

#[derive(serde::Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(ledger): State<Ledger>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<Login>,
) -> StatusCode {
    let accepted = body.password == "correct horse";
    let actor = Actor {
        id: body.user.clone(),
        kind: "user".to_owned(),
        ip: peer.ip().to_string(),
        user_agent: headers
            .get("user-agent")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
    };
    let (name, outcome) = if accepted {
        ("user.login.success", Outcome::Success)
    } else {
        ("user.login.failure", Outcome::Failure)
    };
    // The details carry the submitted password on purpose: redaction removes it.
    let sent = ledger
        .audit(
            name,
            actor,
            "login",
            outcome,
            serde_json::json!({"method": "password", "password": body.password}),
        )
        .message(if accepted {
            "User signed in"
        } else {
            "Sign-in refused: wrong password"
        })
        .send()
        .await;
    match sent {
        Ok(_) if accepted => StatusCode::OK,
        Ok(_) => StatusCode::UNAUTHORIZED,
        Err(error) => {
            tracing::error!(%error, "audit event not recorded");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let source = ConfigSource::from_process_env().context("failed to load configuration")?;
    let ledger = Ledger::builder_from(&source)?
        .config(ledgerline_producer::ProducerConfig {
            service_name: "example-web".to_owned(),
            ..source.section("producer")?
        })
        .build()
        .await
        .context("failed to start the producer")?;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(ledger.tracing_layer())
        .init();

    let app = Router::new()
        .route("/login", post(login))
        .with_state(ledger.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "server stopped");
        }
    });

    // Play the client: two logins, each in a request span with its own request id.
    let client = reqwest::Client::new();
    for (n, password) in ["correct horse", "hunter2"].into_iter().enumerate() {
        let span = tracing::info_span!(
            "request",
            request_id = %format!("req-{n}"),
            traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let status = client
            .post(format!("http://{addr}/login"))
            .json(&serde_json::json!({"user": "alice", "password": password}))
            .send()
            .instrument(span)
            .await?
            .status();
        tracing::info!(%status, "login answered");
    }
    let stats = ledger.flush(std::time::Duration::from_secs(10)).await?;
    println!(
        "delivered {} audit event(s), {} failed",
        stats.delivered, stats.failed
    );
    Ok(())
}
