//! `/livez`, `/readyz` and `/openapi.json`: no token needed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::Shared;
/// Health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `alive`, `ready`, `starting` or `draining`.
    pub status: String,
}

/// The process is alive (never checks downstreams).
#[utoipa::path(get, path = "/livez", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn livez() -> Json<Health> {
    Json(Health {
        status: "alive".to_owned(),
    })
}

/// Ready for traffic: configuration loaded, store open, listeners bound, not draining.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = Health),
        (status = 503, description = "Starting or draining", body = Health)))]
pub async fn readyz(State(state): Shared) -> Response {
    let status = state.gateway.readiness.state();
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status: status.to_owned(),
        }),
    )
        .into_response()
}

/// The OpenAPI document of this API.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<super::ApiDoc as utoipa::OpenApi>::openapi())
}
