//! The admin API's routes, request and response types, and the OpenAPI document.
//!
//! Lists never carry message bodies or patient fields: ids, header routing fields (message
//! type, control id, sending and receiving application and facility), states and reasons.
//! A message's body is returned only by `GET /api/v1/messages/{id}` (operator), and that read
//! is written to the audit trail before the body is sent.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{MethodRouter, get, post};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::auth::{Caller, Role};
use super::{AdminState, ConnectorHandle};
use crate::outbox::audit::AuditEvent;

/// Most items in one page of a list.
pub const MAX_PAGE: usize = 500;
/// Items in a page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;
/// Most message records one search request reads; the answer's `next_before` continues.
pub const MAX_SCAN: usize = 100_000;
/// Most DLQ entries one replay or purge request handles; the answer's `remaining` says how
/// many are left.
pub const MAX_BATCH: usize = 10_000;
/// How far a message's receive time may lag behind its id order (ids are given at commit).
/// A search with `from` stops this far past it.
pub(super) const RECEIVE_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

pub(super) type Shared = State<Arc<AdminState>>;

mod audit;
mod control;
mod dlq;
mod error;
mod health;
mod logs;
mod messages;
mod stats;

pub use audit::*;
pub use control::*;
pub use dlq::*;
pub use error::*;
pub use health::*;
pub use logs::*;
pub use messages::*;
pub use stats::*;

pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        ))),
    }
}

pub(super) fn connector(state: &AdminState, name: &str) -> Result<ConnectorHandle, ApiError> {
    state.gateway.connector(name).ok_or_else(|| {
        let known: Vec<String> = state
            .gateway
            .connectors()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        ApiError::not_found(format!(
            "no connector named {name:?}; known: {}",
            known.join(", ")
        ))
    })
}

/// Write an admin action to the audit trail; failures are logged (the action happened).
pub(super) async fn audit(
    state: &AdminState,
    caller: &Caller,
    action: &str,
    target: String,
    outcome: String,
) {
    let event = AuditEvent::Admin {
        token_id: caller.token_id.clone(),
        action: action.to_owned(),
        target,
        outcome,
    };
    if let Err(error) = state.gateway.outbox.audit(event).await {
        tracing::error!(error = %crate::outbox::Chain(&error), action, "admin action could not be written to the audit trail");
    }
}

// ----------------------------------------------------------------------------------------
// Routes and the document

/// One `/api/v1` route: method, path, the least role it needs, its handler.
#[derive(Debug)]
pub struct ApiRoute {
    /// HTTP method.
    pub method: &'static str,
    /// Path template (axum syntax, as in the OpenAPI document).
    pub path: &'static str,
    /// Least role.
    pub role: Role,
    /// The handler.
    pub handler: MethodRouter<Arc<AdminState>>,
}

/// Every `/api/v1` route. The router is built from this list only, so a route cannot skip
/// authentication, and the tests check every entry against the OpenAPI document.
pub fn api_routes() -> Vec<ApiRoute> {
    let route = |method, path, role, handler| ApiRoute {
        method,
        path,
        role,
        handler,
    };
    vec![
        route("GET", "/api/v1/stats", Role::Viewer, get(stats)),
        route(
            "GET",
            "/api/v1/messages",
            Role::Viewer,
            get(search_messages),
        ),
        route(
            "POST",
            "/api/v1/messages/search",
            Role::Operator,
            post(search_patient),
        ),
        route(
            "GET",
            "/api/v1/messages/{id}",
            Role::Operator,
            get(show_message),
        ),
        route(
            "POST",
            "/api/v1/messages/reprocess",
            Role::Operator,
            post(reprocess_messages),
        ),
        route("GET", "/api/v1/dlq", Role::Viewer, get(list_dlq)),
        route(
            "GET",
            "/api/v1/dlq/{connector}/{seq}",
            Role::Viewer,
            get(show_dlq),
        ),
        route(
            "POST",
            "/api/v1/dlq/{connector}/replay",
            Role::Operator,
            post(replay_dlq),
        ),
        route(
            "POST",
            "/api/v1/dlq/{connector}/purge",
            Role::Admin,
            post(purge_dlq),
        ),
        route(
            "POST",
            "/api/v1/connectors/{connector}/pause",
            Role::Operator,
            post(pause),
        ),
        route(
            "POST",
            "/api/v1/connectors/{connector}/resume",
            Role::Operator,
            post(resume),
        ),
        route("GET", "/api/v1/logs", Role::Viewer, get(logs)),
        route("GET", "/api/v1/audit", Role::Operator, get(list_audit)),
        route(
            "GET",
            "/api/v1/audit/verify",
            Role::Operator,
            get(verify_audit),
        ),
    ]
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "mfoundry admin API", version = "1",
        description = "See and steer a running mfoundry: stats, messages, dead-letter queues, pause and resume, logs, the audit trail. Every /api/v1 route needs a bearer token; roles: viewer < operator < admin."),
    paths(health::livez, health::readyz, stats::stats, messages::search_messages, messages::search_patient,
        messages::show_message, messages::reprocess_messages, dlq::list_dlq, dlq::show_dlq, dlq::replay_dlq, dlq::purge_dlq,
        control::pause, control::resume, logs::logs, audit::list_audit, audit::verify_audit),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

/// How long the CLI waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
