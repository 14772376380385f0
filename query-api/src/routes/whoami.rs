//! `GET /v1/whoami`: the key's id and role, so a client (the console, a script) can tell what
//! it may do before it tries. It reads nothing else and is never an audit read.

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Role;
use crate::error::ErrorBody;
use crate::state::Authenticated;

#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    /// The key's id from `[[api.keys]]` (never the key).
    pub key_id: String,
    pub role: Role,
    /// Whether `/v1/audit/*` answers this key (the auditor role alone).
    pub can_review_audit: bool,
}

#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "session",
    responses(
        (status = 200, body = WhoAmI),
        (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)
    ),
    security(("bearer" = []))
)]
pub async fn whoami(who: Authenticated) -> Json<WhoAmI> {
    Json(WhoAmI {
        key_id: who.caller.key_id.clone(),
        role: who.role(),
        can_review_audit: who.role().can_review_audit(),
    })
}
