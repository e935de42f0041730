//! `GET /api/v1/logs`: the recent log lines kept in memory.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::ApiError;
use super::ApiQuery;
use super::AuthErrors;
use super::Shared;
use super::page_limit;
/// How many lines.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Newest lines to return, 1 to 500 (default 50).
    pub limit: Option<usize>,
}

/// Recent log lines, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogsPage {
    /// The lines.
    pub lines: Vec<crate::telemetry::LogLine>,
}

/// The newest log lines from the in-process ring (what passed `RUST_LOG`).
#[utoipa::path(get, path = "/api/v1/logs", tag = "logs", security(("bearer" = [])),
    params(LogsQuery),
    responses((status = 200, description = "Lines", body = LogsPage), AuthErrors))]
pub async fn logs(
    State(state): Shared,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<LogsPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    Ok(Json(LogsPage {
        lines: state.logs.recent(limit),
    }))
}
