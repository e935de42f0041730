//! The admin API's routes, request and response types, and the OpenAPI document.
//!
//! Lists never carry message bodies or patient fields: ids, header routing fields (message
//! type, control id, sending and receiving application and facility), states and reasons.
//! A message's body is returned only by `GET /api/v1/messages/{id}` (operator), and that read
//! is written to the audit trail before the body is sent.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use super::auth::{Caller, Role};
use super::views::{MessageSummary, connector_states, summary};
use super::{AdminState, ConnectorHandle};
use crate::outbox::audit::AuditEvent;
use crate::outbox::{Disposition, StoreError};
use crate::units::format_micros;

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
const RECEIVE_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;

type Shared = State<Arc<AdminState>>;

// ----------------------------------------------------------------------------------------
// Errors

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}

/// The answers of the auth layer, which every `/api/v1` route can give.
#[derive(Debug, utoipa::IntoResponses)]
pub enum AuthErrors {
    /// No token, or one mfoundry does not know.
    #[response(status = 401, description = "No valid token")]
    Unauthorized(ErrorBody),
    /// The token's role is too weak for the route.
    #[response(status = 403, description = "Role too weak")]
    Forbidden(ErrorBody),
}

/// An error answer: a status and a sentence.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let error = crate::outbox::Chain(&error);
        tracing::error!(error = %error, "admin API: the outbox failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("the store could not answer: {error}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.message))).into_response()
    }
}

/// 404 for paths that are not routes.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such route: {}; see /openapi.json", uri.path()))
}

/// Answers for requests the limits stopped.
pub async fn overloaded_or_timed_out(error: tower::BoxError) -> Response {
    if error.is::<tower::timeout::error::Elapsed>() {
        (
            StatusCode::REQUEST_TIMEOUT,
            Json(ErrorBody::new("the request took too long")),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(ErrorBody::new(format!("cannot serve the request: {error}"))),
        )
            .into_response()
    }
}

fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(_) => Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        ))),
    }
}

fn connector<'a>(state: &'a AdminState, name: &str) -> Result<&'a ConnectorHandle, ApiError> {
    state.gateway.connector(name).ok_or_else(|| {
        let known: Vec<&str> = state
            .gateway
            .connectors
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        ApiError::not_found(format!(
            "no connector named {name:?}; known: {}",
            known.join(", ")
        ))
    })
}

/// Write an admin action to the audit trail; failures are logged (the action happened).
async fn audit(state: &AdminState, caller: &Caller, action: &str, target: String, outcome: String) {
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
// Health

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
    Json(ApiDoc::openapi())
}

// ----------------------------------------------------------------------------------------
// Stats

/// Counters and gauges of the whole gateway.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// One per listener.
    pub listeners: Vec<ListenerStatsView>,
    /// One per configured connector.
    pub connectors: Vec<ConnectorStatsView>,
    /// The outbox.
    pub store: StoreStatsView,
}

/// A listener's counters since start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListenerStatsView {
    /// Listener name.
    pub name: String,
    /// Connections open now.
    pub connections_active: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections refused (MAX_CONNECTIONS).
    pub connections_refused: u64,
    /// Frames received.
    pub received: u64,
    /// Answered AA or CA.
    pub accepted: u64,
    /// Answered AR or CR.
    pub rejected: u64,
    /// Answered AE or CE.
    pub errors: u64,
    /// Frames without a readable header, frames over MAX_FRAME_SIZE, frame timeouts.
    pub unreadable: u64,
    /// TLS handshakes that failed (bad or missing client certificate, timeout, protocol).
    pub tls_handshake_failures: u64,
    /// Connections closed at once because the peer is not in ALLOWED_PEERS.
    pub connections_denied: u64,
    /// The listener's certificate, when TLS is on.
    pub tls: Option<TlsStatsView>,
}

/// The listener's TLS certificate and its reloads.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TlsStatsView {
    /// When the certificate in use expires (RFC 3339, UTC).
    pub certificate_expires_at: String,
    /// Days until then (negative once expired).
    pub certificate_days_left: f64,
    /// Certificates loaded after start (SIGHUP or a file change).
    pub reloads: u64,
    /// Reload attempts refused (the previous certificate stayed in use).
    pub reload_failures: u64,
}

/// A connector's state: intake counters since start, queue and DLQ now, delivery since start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectorStatsView {
    /// Connector name.
    pub name: String,
    /// Output kind.
    pub kind: String,
    /// Delivery paused by an operator (or `paused: true`).
    pub paused: bool,
    /// Waiting for a retry time.
    pub backing_off: bool,
    /// Messages its filter took since start.
    pub queued: u64,
    /// Messages its filter did not take since start.
    pub filtered: u64,
    /// Entries in its queue now.
    pub queue_depth: u64,
    /// Age of the oldest queued message, seconds (absent when the queue is empty).
    pub oldest_queued_age_secs: Option<f64>,
    /// Messages delivered since start.
    pub delivered: u64,
    /// Failed delivery attempts since start (retried or dead-lettered).
    pub failed: u64,
    /// Entries in its dead-letter queue now.
    pub dlq_size: u64,
}

/// Outbox figures.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreStatsView {
    /// Messages stored now.
    pub messages: u64,
    /// Size of the data file, bytes.
    pub file_bytes: u64,
    /// Transactions committed since start.
    pub commits: u64,
    /// Transactions that failed since start.
    pub failed_commits: u64,
}

/// Counters per listener and connector, queue depths, DLQ sizes.
#[utoipa::path(get, path = "/api/v1/stats", tag = "stats", security(("bearer" = [])),
    responses((status = 200, description = "Stats", body = Stats), AuthErrors))]
pub async fn stats(State(state): Shared) -> Result<Json<Stats>, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let ids: Vec<u32> = state.gateway.connectors.iter().map(|c| c.id).collect();
    let now = crate::outbox::now_micros();
    let (messages, per_connector) = state
        .gateway
        .outbox
        .read(move |snapshot| {
            let figures = ids
                .into_iter()
                .map(|id| snapshot.queue_figures(id, now))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((snapshot.message_count()?, figures))
        })
        .await?;
    let listeners = state
        .gateway
        .listeners
        .iter()
        .map(|listener| {
            let stats = listener.stats.snapshot();
            ListenerStatsView {
                name: listener.name.clone(),
                connections_active: stats.connections_active,
                connections_accepted: stats.connections_accepted,
                connections_refused: stats.connections_refused,
                received: stats.frames_received,
                accepted: stats.acks[0] + stats.acks[3],
                rejected: stats.acks[2] + stats.acks[5],
                errors: stats.acks[1] + stats.acks[4],
                unreadable: stats.unreadable_frames + stats.oversize_frames + stats.frame_timeouts,
                tls_handshake_failures: stats.tls_handshake_failures,
                connections_denied: stats.connections_denied,
                tls: listener.tls.as_ref().map(|tls| {
                    let not_after = tls.not_after.load(Relaxed);
                    TlsStatsView {
                        certificate_expires_at: chrono::DateTime::from_timestamp(not_after, 0)
                            .map(|time| time.to_rfc3339())
                            .unwrap_or_default(),
                        certificate_days_left: (tls.days_left() * 100.0).round() / 100.0,
                        reloads: tls.reloads.load(Relaxed),
                        reload_failures: tls.failures.load(Relaxed),
                    }
                }),
            }
        })
        .collect();
    let connectors = state
        .gateway
        .connectors
        .iter()
        .zip(per_connector)
        .map(|(connector, figures)| {
            let (queued, filtered) = match &connector.intake {
                Some((counters, index)) => counters
                    .get(*index)
                    .map(|c| (c.queued.load(Relaxed), c.filtered.load(Relaxed)))
                    .unwrap_or_default(),
                None => (0, 0),
            };
            let worker = connector.worker.as_ref();
            ConnectorStatsView {
                name: connector.name.clone(),
                kind: connector.kind.to_owned(),
                paused: worker.is_some_and(|w| w.is_paused()),
                backing_off: worker.is_some_and(|w| w.stats().backing_off.load(Relaxed)),
                queued,
                filtered,
                queue_depth: figures.depth,
                oldest_queued_age_secs: figures.oldest_age_secs,
                delivered: worker.map_or(0, |w| w.stats().delivered.load(Relaxed)),
                failed: worker.map_or(0, |w| {
                    w.stats().retries.load(Relaxed) + w.stats().dead_lettered.load(Relaxed)
                }),
                dlq_size: figures.dead_letters,
            }
        })
        .collect();
    let outbox_stats = state.gateway.outbox.stats();
    Ok(Json(Stats {
        uptime_secs: state.gateway.started.elapsed().as_secs(),
        listeners,
        connectors,
        store: StoreStatsView {
            messages,
            file_bytes: state.gateway.outbox.file_size().unwrap_or(0),
            commits: outbox_stats.commits.load(Relaxed),
            failed_commits: outbox_stats.failed_batches.load(Relaxed),
        },
    }))
}

// ----------------------------------------------------------------------------------------
// Messages

/// Search filters. Every filter given must match.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Received at or after: RFC 3339 (`2026-11-29T10:00:00Z`) or a Go duration ago (`1h`).
    pub from: Option<String>,
    /// Received before: RFC 3339 or a Go duration ago.
    pub to: Option<String>,
    /// MSH-9.1, e.g. `ORU`.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub message_type: Option<String>,
    /// MSH-9.2, e.g. `R01`.
    pub trigger: Option<String>,
    /// MSH-10, exactly.
    pub control_id: Option<String>,
    /// MSH-3 or MSH-4.
    pub sender: Option<String>,
    /// ROUTED, UNROUTED, REJECTED or ERROR.
    pub disposition: Option<String>,
    /// Only messages with a state at this connector (with `status`: that state).
    pub connector: Option<String>,
    /// QUEUED, FILTERED, DELIVERED, DEAD_LETTERED or PURGED (at `connector`, or at any).
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// Continue below this id (the previous page's `next_before`).
    pub before: Option<u64>,
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// The messages.
    pub messages: Vec<MessageSummary>,
    /// Pass as `before` for the next page; absent when the search is complete.
    pub next_before: Option<u64>,
    /// Records read for this page.
    pub scanned: u64,
}

/// One message with its body and its delivery history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageDetail {
    /// Everything the list shows.
    #[serde(flatten)]
    pub summary: MessageSummary,
    /// The message as received, decoded with its MSH-18 character set (segments end in `\r`).
    pub body: String,
}

fn parse_time(text: &str, name: &str, now: i64) -> Result<i64, ApiError> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(time.timestamp_micros());
    }
    match crate::units::parse_duration(text) {
        Ok(ago) => Ok(now.saturating_sub(i64::try_from(ago.as_micros()).unwrap_or(i64::MAX))),
        Err(_) => Err(ApiError::bad_request(format!(
            "{name} must be an RFC 3339 time (2026-11-29T10:00:00Z) or a duration ago (90m, 24h)"
        ))),
    }
}

fn parse_status(text: &str) -> Result<String, ApiError> {
    let upper = text.trim().to_ascii_uppercase();
    match upper.as_str() {
        "QUEUED" | "FILTERED" | "DELIVERED" | "DEAD_LETTERED" | "PURGED" => Ok(upper),
        _ => Err(ApiError::bad_request(
            "status must be QUEUED, FILTERED, DELIVERED, DEAD_LETTERED or PURGED",
        )),
    }
}

fn parse_disposition(text: &str) -> Result<Disposition, ApiError> {
    match text.trim().to_ascii_uppercase().as_str() {
        "ROUTED" => Ok(Disposition::Routed),
        "UNROUTED" => Ok(Disposition::Unrouted),
        "REJECTED" => Ok(Disposition::Rejected),
        "ERROR" => Ok(Disposition::Error),
        _ => Err(ApiError::bad_request(
            "disposition must be ROUTED, UNROUTED, REJECTED or ERROR",
        )),
    }
}

/// Search stored messages, newest first (no bodies).
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", security(("bearer" = [])),
    params(SearchQuery),
    responses((status = 200, description = "A page of messages", body = MessagePage),
        (status = 400, description = "A filter is malformed", body = ErrorBody), AuthErrors))]
pub async fn search_messages(
    State(state): Shared,
    Query(query): Query<SearchQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let now = crate::outbox::now_micros();
    let from = query
        .from
        .as_deref()
        .map(|text| parse_time(text, "from", now))
        .transpose()?;
    let to = query
        .to
        .as_deref()
        .map(|text| parse_time(text, "to", now))
        .transpose()?;
    let disposition = query
        .disposition
        .as_deref()
        .map(parse_disposition)
        .transpose()?;
    let status = query.status.as_deref().map(parse_status).transpose()?;
    let connector_id = match query.connector.as_deref() {
        Some(name) => Some(
            state
                .gateway
                .connector_names
                .iter()
                .find(|(_, known)| known.as_str() == name)
                .map(|(id, _)| *id)
                .ok_or_else(|| ApiError::not_found(format!("no connector named {name:?}")))?,
        ),
        None => None,
    };
    let names = state.gateway.connector_names.clone();
    let page = state
        .gateway
        .outbox
        .read(move |snapshot| {
            let eq = |wanted: &Option<String>, value: &str| {
                wanted
                    .as_deref()
                    .is_none_or(|wanted| wanted.eq_ignore_ascii_case(value))
            };
            let mut messages = Vec::new();
            let mut scanned = 0u64;
            let mut full = false;
            let mut next = snapshot.scan_messages_desc(query.before, MAX_SCAN, |id, record| {
                scanned += 1;
                if let Some(from) = from
                    && record.received_at_micros < from
                {
                    // Ids follow commit order; stop once well past `from`.
                    return Ok(record.received_at_micros >= from - RECEIVE_SKEW_MICROS);
                }
                let header = &record.header;
                let matches = to.is_none_or(|to| record.received_at_micros < to)
                    && eq(&query.message_type, &header.msg_type)
                    && eq(&query.trigger, &header.trigger)
                    && query
                        .control_id
                        .as_deref()
                        .is_none_or(|wanted| wanted == header.control_id)
                    && query.sender.as_deref().is_none_or(|wanted| {
                        wanted.eq_ignore_ascii_case(&header.sending_app)
                            || wanted.eq_ignore_ascii_case(&header.sending_fac)
                    })
                    && disposition.is_none_or(|wanted| wanted == record.disposition);
                if !matches {
                    return Ok(true);
                }
                let states = connector_states(snapshot, id, record, &names)?;
                if connector_id.is_some() || status.is_some() {
                    let wanted_name =
                        connector_id.map(|id| names.get(&id).cloned().unwrap_or_default());
                    let hit = states.iter().any(|state| {
                        wanted_name
                            .as_deref()
                            .is_none_or(|name| name == state.connector)
                            && status
                                .as_deref()
                                .is_none_or(|status| status == state.status)
                    });
                    if !hit {
                        return Ok(true);
                    }
                }
                messages.push(summary(id, record, states));
                if messages.len() >= limit {
                    full = true;
                    return Ok(false);
                }
                Ok(true)
            })?;
            if full {
                next = messages.last().map(|message| message.id);
            }
            Ok(MessagePage {
                messages,
                next_before: next,
                scanned,
            })
        })
        .await?;
    Ok(Json(page))
}

/// One message with its body and delivery history. The read is written to the audit trail.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Message id")),
    responses((status = 200, description = "The message", body = MessageDetail), AuthErrors,
        (status = 404, description = "No such message", body = ErrorBody)))]
pub async fn show_message(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<Json<MessageDetail>, ApiError> {
    let names = state.gateway.connector_names.clone();
    let found = state
        .gateway
        .outbox
        .read(move |snapshot| {
            let Some(record) = snapshot.message(id)? else {
                return Ok(None);
            };
            let states = connector_states(snapshot, id, &record, &names)?;
            let body = snapshot.body(id)?.unwrap_or_default();
            Ok(Some((summary(id, &record, states), body)))
        })
        .await?;
    let Some((summary, body)) = found else {
        audit(
            &state,
            &caller,
            "message.read",
            format!("message {id}"),
            "not found".to_owned(),
        )
        .await;
        return Err(ApiError::not_found(format!("no message {id}")));
    };
    // The read is on the trail before the body leaves: no audit, no body.
    let event = AuditEvent::Admin {
        token_id: caller.token_id.clone(),
        action: "message.read".to_owned(),
        target: format!("message {id}"),
        outcome: "ok".to_owned(),
    };
    state.gateway.outbox.audit(event).await?;
    let body = Bytes::from(body);
    let charset = match crate::hl7::Message::parse(body.clone()) {
        Ok(message) => message.charset(state.gateway.default_charset).charset(),
        Err(_) => state.gateway.default_charset,
    };
    Ok(Json(MessageDetail {
        summary,
        body: charset.decode(&body).into_owned(),
    }))
}

// ----------------------------------------------------------------------------------------
// Dead-letter queues (the one implementation shared with `dlq --offline`: [`super::dlq`])

use super::dlq::{DeadLetters, DlqError};
pub use super::dlq::{
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
            .connectors
            .iter()
            .map(|connector| (connector.name.clone(), connector.id))
            .collect(),
        state.gateway.connector_names.clone(),
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
    Query(query): Query<DlqQuery>,
) -> Result<Json<DlqPage>, ApiError> {
    let page = dead_letters(&state)
        .list(&query, reveals_downstream(&caller))
        .await?;
    Ok(Json(page))
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
    Path((name, seq)): Path<(String, u64)>,
) -> Result<Json<DlqDetail>, ApiError> {
    let detail = dead_letters(&state)
        .show(&name, seq, reveals_downstream(&caller))
        .await?;
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
    Path(name): Path<String>,
    Json(request): Json<ReplayRequest>,
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
    Path(name): Path<String>,
    Json(request): Json<PurgeRequest>,
) -> Result<Json<PurgeResult>, ApiError> {
    let result = dead_letters(&state)
        .purge(&caller.token_id, &name, request)
        .await?;
    tracing::info!(token = %caller.token_id, connector = %name, purged = result.purged.len(), "dead-letter entries purged");
    Ok(Json(result))
}

// ----------------------------------------------------------------------------------------
// Connectors

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
    Path(name): Path<String>,
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
    Path(name): Path<String>,
) -> Result<Json<ConnectorControl>, ApiError> {
    set_paused(&state, &caller, &name, false).await
}

// ----------------------------------------------------------------------------------------
// Logs and audit

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
    Query(query): Query<LogsQuery>,
) -> Result<Json<LogsPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    Ok(Json(LogsPage {
        lines: state.logs.recent(limit),
    }))
}

/// Which audit records.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Continue after this seq (default: from the oldest).
    pub after: Option<u64>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<usize>,
}

/// What an audit record says happened.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEventView {
    /// A message was received and answered.
    Received {
        /// The stored message (the original for a retransmit).
        message_id: u64,
        /// A retransmit answered with the original's ACK.
        duplicate: bool,
        /// Remote address.
        peer: String,
        /// Client certificate identity (mTLS).
        tls_identity: Option<String>,
        /// Listener name.
        listener: String,
        /// MSH-10.
        control_id: String,
        /// MSH-9 as `type^trigger`.
        message_type: String,
        /// ACK code.
        ack_code: String,
    },
    /// An admin API action.
    Admin {
        /// The token's id.
        token_id: String,
        /// What.
        action: String,
        /// On what.
        target: String,
        /// How it went.
        outcome: String,
    },
}

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Position in the trail.
    pub seq: u64,
    /// When, RFC 3339.
    pub at: String,
    /// What.
    #[serde(flatten)]
    pub event: AuditEventView,
}

/// A page of audit records, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The records.
    pub records: Vec<AuditView>,
    /// Pass as `after` for the next page; absent at the end.
    pub next_after: Option<u64>,
}

/// The result of checking the trail.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// True when every hash and link checks out.
    pub intact: bool,
    /// Records read.
    pub records: u64,
    /// The oldest seq.
    pub first_seq: Option<u64>,
    /// The newest seq.
    pub last_seq: Option<u64>,
    /// Problems found (the first 100).
    pub problems: Vec<String>,
    /// Number of problems.
    pub problem_count: u64,
}

impl From<crate::outbox::audit::Verification> for AuditVerification {
    fn from(report: crate::outbox::audit::Verification) -> Self {
        Self {
            intact: report.is_intact(),
            records: report.records,
            first_seq: report.first_seq,
            last_seq: report.last_seq,
            problems: report.problems,
            problem_count: report.problem_count,
        }
    }
}

/// Convert a stored record for the API.
pub fn audit_view(seq: u64, record: crate::outbox::audit::AuditRecord) -> AuditView {
    let event = match record.event {
        AuditEvent::Received {
            message_id,
            duplicate,
            peer,
            tls_identity,
            listener,
            control_id,
            message_type,
            ack_code,
        } => AuditEventView::Received {
            message_id,
            duplicate,
            peer,
            tls_identity,
            listener,
            control_id,
            message_type,
            ack_code,
        },
        AuditEvent::Admin {
            token_id,
            action,
            target,
            outcome,
        } => AuditEventView::Admin {
            token_id,
            action,
            target,
            outcome,
        },
    };
    AuditView {
        seq,
        at: format_micros(record.at_micros),
        event,
    }
}

/// Audit records, oldest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, description = "Records", body = AuditPage), AuthErrors))]
pub async fn list_audit(
    State(state): Shared,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let after = query.after;
    let found = state
        .gateway
        .outbox
        .read(move |snapshot| snapshot.audit_records(after, limit + 1))
        .await?;
    let more = found.len() > limit;
    let records: Vec<AuditView> = found
        .into_iter()
        .take(limit)
        .map(|(seq, record)| audit_view(seq, record))
        .collect();
    let next_after = if more {
        records.last().map(|record| record.seq)
    } else {
        None
    };
    Ok(Json(AuditPage {
        records,
        next_after,
    }))
}

/// Check the audit trail's hash chain: changed, removed or reordered records are reported.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("bearer" = [])),
    responses((status = 200, description = "The check's result", body = AuditVerification), AuthErrors))]
pub async fn verify_audit(State(state): Shared) -> Result<Json<AuditVerification>, ApiError> {
    let report = state
        .gateway
        .outbox
        .read(|snapshot| snapshot.verify_audit())
        .await?;
    Ok(Json(report.into()))
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
            "GET",
            "/api/v1/messages/{id}",
            Role::Operator,
            get(show_message),
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
    paths(livez, readyz, stats, search_messages, show_message, list_dlq, show_dlq, replay_dlq,
        purge_dlq, pause, resume, logs, list_audit, verify_audit),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

/// How long the CLI waits for an answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
