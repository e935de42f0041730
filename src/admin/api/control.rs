//! Pause and resume a connector's delivery.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;
use super::ApiPath;
use super::AuthErrors;
use super::ErrorBody;
use super::Shared;
use super::audit;
use super::connector;
use crate::admin::AdminState;
use crate::admin::auth::Caller;
/// A connector's delivery state after pause or resume.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectorControl {
    /// Connector name.
    pub connector: String,
    /// Whether delivery is paused now.
    pub paused: bool,
}

async fn set_paused(
    state: &AdminState,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> Result<Json<ConnectorControl>, ApiError> {
    let handle = connector(state, name)?;
    let Some(worker) = &handle.worker else {
        return Err(ApiError::bad_request(format!(
            "connector {name:?} has no output to pause"
        )));
    };
    if paused {
        worker.pause();
    } else {
        worker.resume();
    }
    let action = if paused {
        "connector.pause"
    } else {
        "connector.resume"
    };
    audit(
        state,
        caller,
        action,
        format!("connector {name}"),
        "ok".to_owned(),
    )
    .await;
    tracing::info!(token = %caller.token_id, connector = %name, paused, "connector delivery {}", if paused { "paused" } else { "resumed" });
    Ok(Json(ConnectorControl {
        connector: handle.name.clone(),
        paused: worker.is_paused(),
    }))
}

/// Stop delivering after the message in hand; intake keeps queueing. Not kept across a
/// restart (use `paused: true` in the configuration for that).
#[utoipa::path(post, path = "/api/v1/connectors/{connector}/pause", tag = "connectors",
    security(("bearer" = [])),
    params(("connector" = String, Path, description = "Connector name")),
    responses((status = 200, description = "Paused", body = ConnectorControl), AuthErrors,
        (status = 404, description = "No such connector", body = ErrorBody)))]
pub async fn pause(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ConnectorControl>, ApiError> {
    set_paused(&state, &caller, &name, true).await
}

/// Deliver again.
#[utoipa::path(post, path = "/api/v1/connectors/{connector}/resume", tag = "connectors",
    security(("bearer" = [])),
    params(("connector" = String, Path, description = "Connector name")),
    responses((status = 200, description = "Resumed", body = ConnectorControl), AuthErrors,
        (status = 404, description = "No such connector", body = ErrorBody)))]
pub async fn resume(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ConnectorControl>, ApiError> {
    set_paused(&state, &caller, &name, false).await
}
