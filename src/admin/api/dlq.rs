//! Dead-letter queues: the one implementation shared with `dlq --offline` is
//! [`crate::admin::dlq`]; these are its routes.

use axum::Extension;
use axum::Json;
use axum::extract::State;

use super::ApiError;
use super::AuthErrors;
use super::ErrorBody;
use super::Shared;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::admin::AdminState;
use crate::admin::auth::Caller;
use crate::admin::auth::Role;
use crate::admin::dlq::{DeadLetters, DlqError};
pub use crate::admin::dlq::{
    DlqDetail, DlqItem, DlqPage, DlqQuery, EntryView, PastView, PurgeRequest, PurgeResult,
    ReplayRequest, ReplayResult, Replayed,
};

impl From<DlqError> for ApiError {
    fn from(error: DlqError) -> Self {
        match error {
            DlqError::BadRequest(text) => Self::bad_request(text),
            DlqError::NotFound(text) => Self::not_found(text),
            DlqError::Store(error) => Self::from(error),
        }
    }
}

/// The dead-letter queues of the configured connectors.
fn dead_letters(state: &AdminState) -> DeadLetters<'_> {
    DeadLetters::new(
        &state.gateway.outbox,
        state
            .gateway
            .connectors()
            .iter()
            .map(|connector| (connector.name.clone(), connector.id))
            .collect(),
        state.gateway.connector_names().as_ref().clone(),
    )
    .with_orphaned(state.gateway.orphaned())
    .with_transforming(
        state
            .gateway
            .connectors()
            .iter()
            .filter(|connector| state.gateway.transforms().transforms(&connector.name))
            .map(|connector| connector.name.clone())
            .collect(),
    )
}

/// Whether the caller may read what downstream systems answered (it can hold patient data,
/// like message bodies).
fn reveals_downstream(caller: &Caller) -> bool {
    caller.role >= Role::Operator
}

/// Dead-letter entries (no bodies; what the downstream answered only for roles that read
/// bodies).
#[utoipa::path(get, path = "/api/v1/dlq", tag = "dlq", security(("bearer" = [])),
    params(DlqQuery),
    responses((status = 200, description = "Entries", body = DlqPage), AuthErrors,
        (status = 404, description = "No such connector", body = ErrorBody)))]
pub async fn list_dlq(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiQuery(query): ApiQuery<DlqQuery>,
) -> Result<Json<DlqPage>, ApiError> {
    let page = dead_letters(&state)
        .list(&query, reveals_downstream(&caller))
        .await?;
    audit_downstream_read(&state, &caller, &page.entries).await?;
    Ok(Json(page))
}

/// What downstream systems answered can hold patient data: showing it is a PHI view, on
/// the trail before the answer leaves (which messages, never the text).
async fn audit_downstream_read(
    state: &crate::admin::AdminState,
    caller: &Caller,
    entries: &[crate::admin::dlq::DlqItem],
) -> Result<(), ApiError> {
    let shown: Vec<String> = entries
        .iter()
        .filter(|entry| entry.downstream.is_some())
        .map(|entry| entry.message_id.to_string())
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    let event = crate::outbox::audit::AuditEvent::Admin {
        token_id: caller.token_id.clone(),
        action: "dlq.read".to_owned(),
        target: format!("the downstream's answers for messages {}", shown.join(", ")),
        outcome: "ok".to_owned(),
    };
    state.gateway.outbox.audit(event).await?;
    Ok(())
}

/// One dead-letter entry with its message's summary.
#[utoipa::path(get, path = "/api/v1/dlq/{connector}/{seq}", tag = "dlq", security(("bearer" = [])),
    params(("connector" = String, Path, description = "Connector name"),
        ("seq" = u64, Path, description = "The entry's seq")),
    responses((status = 200, description = "The entry", body = DlqDetail), AuthErrors,
        (status = 404, description = "No such connector or entry", body = ErrorBody)))]
pub async fn show_dlq(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath((name, seq)): ApiPath<(String, u64)>,
) -> Result<Json<DlqDetail>, ApiError> {
    let detail = dead_letters(&state)
        .show(&name, seq, reveals_downstream(&caller))
        .await?;
    audit_downstream_read(&state, &caller, std::slice::from_ref(&detail.entry)).await?;
    Ok(Json(detail))
}

/// Put dead-letter entries back at the tail of a queue (theirs or `to`), in order: each
/// takes a fresh place and keeps its origin and history; unknown seqs are named. One
/// transaction, audited in it.
#[utoipa::path(post, path = "/api/v1/dlq/{connector}/replay", tag = "dlq", security(("bearer" = [])),
    params(("connector" = String, Path, description = "Connector name")),
    request_body = ReplayRequest,
    responses((status = 200, description = "Replayed", body = ReplayResult),
        (status = 400, description = "Malformed request", body = ErrorBody), AuthErrors,
        (status = 404, description = "No such connector", body = ErrorBody)))]
pub async fn replay_dlq(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<Json<ReplayResult>, ApiError> {
    let result = dead_letters(&state)
        .replay(&caller.token_id, &name, request)
        .await?;
    tracing::info!(token = %caller.token_id, connector = %name, replayed = result.replayed.len(), missing = result.missing.len(), "dead-letter entries replayed");
    Ok(Json(result))
}

/// Remove dead-letter entries without delivering them. One transaction, audited in it.
#[utoipa::path(post, path = "/api/v1/dlq/{connector}/purge", tag = "dlq", security(("bearer" = [])),
    params(("connector" = String, Path, description = "Connector name")),
    request_body = PurgeRequest,
    responses((status = 200, description = "Purged", body = PurgeResult),
        (status = 400, description = "Malformed request", body = ErrorBody), AuthErrors,
        (status = 404, description = "No such connector", body = ErrorBody)))]
pub async fn purge_dlq(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<PurgeRequest>,
) -> Result<Json<PurgeResult>, ApiError> {
    let result = dead_letters(&state)
        .purge(&caller.token_id, &name, request)
        .await?;
    tracing::info!(token = %caller.token_id, connector = %name, purged = result.purged.len(), "dead-letter entries purged");
    Ok(Json(result))
}
