//! The audit trail and its chain verification.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::ApiError;
use super::ApiQuery;
use super::AuthErrors;
use super::MAX_SCAN;
use super::Shared;
use super::page_limit;
use crate::outbox::audit::AuditEvent;
use crate::units::format_micros;
/// Which audit records.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Continue after this seq (default: from the oldest).
    pub after: Option<u64>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// `newest`: newest first, continuing below `before` (the previous page's
    /// `next_before`); default `oldest`.
    pub order: Option<String>,
    /// With `order=newest`: records below this seq.
    pub before: Option<u64>,
    /// Only `received` or `admin` records.
    pub kind: Option<String>,
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
    /// With `order=newest`: pass as `before` for the next (older) page; absent at the start
    /// of the trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<u64>,
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

/// Audit records, oldest first (or newest first with `order=newest`, optionally only one
/// `kind`).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", security(("bearer" = [])),
    params(AuditQuery),
    responses((status = 200, description = "Records", body = AuditPage), AuthErrors))]
pub async fn list_audit(
    State(state): Shared,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = page_limit(query.limit)?;
    let received = match query.kind.as_deref() {
        None | Some("") => None,
        Some("received") => Some(true),
        Some("admin") => Some(false),
        Some(_) => return Err(ApiError::bad_request("kind must be received or admin")),
    };
    match query.order.as_deref() {
        None | Some("") | Some("oldest") => {}
        Some("newest") => {
            let before = query.before;
            let (found, next_before) = state
                .gateway
                .outbox
                .read(move |snapshot| {
                    snapshot.audit_records_newest_first(before, limit, MAX_SCAN, |record| {
                        received.is_none_or(|received| {
                            matches!(record.event, AuditEvent::Received { .. }) == received
                        })
                    })
                })
                .await?;
            return Ok(Json(AuditPage {
                records: found
                    .into_iter()
                    .map(|(seq, record)| audit_view(seq, record))
                    .collect(),
                next_after: None,
                next_before,
            }));
        }
        Some(_) => return Err(ApiError::bad_request("order must be oldest or newest")),
    }
    if received.is_some() {
        return Err(ApiError::bad_request("kind needs order=newest"));
    }
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
        next_before: None,
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
