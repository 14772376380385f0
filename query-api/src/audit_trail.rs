//! The audit of the audit: every read of `/v1/audit/*` is published as an
//! `audit.archive.read` event before its answer leaves. The event names the key's id and role,
//! the route, the filter and how many rows were returned. If it cannot be published (the
//! broker or the registry is down, or the acknowledgement does not come in time), the read is
//! refused with 503: a read nobody can see in the audit trail must not happen.
//!
//! The data is read first, so the event can say how many rows it returned, and is released
//! only after the broker acknowledged the event (acks=all, idempotent producer).

use std::time::Duration;

use futures::future::BoxFuture;
use ledgerline_producer::event::{Actor, Outcome};
use ledgerline_producer::Ledger;

use crate::error::ApiError;
use crate::state::Authenticated;

/// The event name every audit read is recorded under.
pub const EVENT_NAME: &str = "audit.archive.read";

/// One audit read, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRead {
    pub key_id: String,
    pub role: String,
    pub ip: String,
    pub user_agent: Option<String>,
    /// The route template, e.g. `/v1/audit/events`.
    pub route: String,
    /// The parameters as given (and the path's event id, when there is one).
    pub filter: serde_json::Value,
    pub rows: u64,
    /// A refused attempt (the wrong role): recorded with outcome DENIED.
    pub denied: bool,
}

impl AuditRead {
    pub fn new(who: &Authenticated, route: &str, filter: serde_json::Value, rows: u64) -> Self {
        Self {
            key_id: who.caller.key_id.clone(),
            role: who.caller.role.as_str().to_owned(),
            ip: who.ip.clone(),
            user_agent: who.user_agent.clone(),
            route: route.to_owned(),
            filter,
            rows,
            denied: false,
        }
    }
}

/// Where audit reads are recorded. The API uses [`LedgerTrail`]; tests may record elsewhere.
pub trait AuditTrail: Send + Sync {
    /// Records `read`, returning only once it is durably recorded.
    fn record(&self, read: AuditRead) -> BoxFuture<'_, Result<(), ApiError>>;
}

/// Publishes audit reads through the producer crate.
#[derive(Debug)]
pub struct LedgerTrail {
    ledger: Ledger,
    timeout: Duration,
}

impl LedgerTrail {
    pub fn new(ledger: Ledger, timeout: Duration) -> Self {
        Self { ledger, timeout }
    }
}

impl AuditTrail for LedgerTrail {
    fn record(&self, read: AuditRead) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            let actor = Actor {
                id: read.key_id.clone(),
                kind: "api_key".to_owned(),
                ip: read.ip.clone(),
                user_agent: read.user_agent.clone(),
            };
            let details = serde_json::json!({
                "role": read.role,
                "route": read.route,
                "filter": read.filter,
                "rows": read.rows,
            });
            let draft = self
                .ledger
                .audit(
                    EVENT_NAME,
                    actor,
                    "read",
                    if read.denied {
                        Outcome::Denied
                    } else {
                        Outcome::Success
                    },
                    details,
                )
                .target("archive", "ledgerline_audit")
                .attribute("key_id", read.key_id.clone())
                .message(if read.denied {
                    format!(
                        "Audit archive read through {} by key {} refused: role {}",
                        read.route, read.key_id, read.role
                    )
                } else {
                    format!(
                        "Audit archive read through {} by key {} ({} rows)",
                        read.route, read.key_id, read.rows
                    )
                });
            let draft = if read.denied {
                draft.level(ledgerline_producer::event::Level::Warn)
            } else {
                draft
            };
            match tokio::time::timeout(self.timeout, draft.send()).await {
                Ok(Ok(delivered)) => {
                    metrics::counter!("ledgerline_api_audit_reads_recorded_total").increment(1);
                    tracing::info!(
                        key_id = %read.key_id,
                        route = %read.route,
                        rows = read.rows,
                        partition = delivered.partition,
                        offset = delivered.offset,
                        "audit read recorded"
                    );
                    Ok(())
                }
                Ok(Err(error)) => Err(refused(
                    &read,
                    &ledgerline_service::errors::error_chain(&error),
                )),
                Err(_) => Err(refused(
                    &read,
                    &format!("no acknowledgement within {} ms", self.timeout.as_millis()),
                )),
            }
        })
    }
}

fn refused(read: &AuditRead, why: &str) -> ApiError {
    metrics::counter!("ledgerline_api_audit_reads_refused_total").increment(1);
    tracing::error!(key_id = %read.key_id, route = %read.route, error = why, "audit read refused: it could not be recorded");
    ApiError::unavailable(
        "audit_trail_unavailable",
        "this audit read could not be recorded in the audit trail, so it was refused; try again when the broker is reachable",
    )
    .with_retry_after(5)
}
