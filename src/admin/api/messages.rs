//! `GET /api/v1/messages` (search), `POST /api/v1/messages/search` (by patient, audited)
//! and `GET /api/v1/messages/{id}` (one message, audited).

use axum::Extension;
use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::ApiError;
use super::AuthErrors;
use super::ErrorBody;
use super::MAX_SCAN;
use super::RECEIVE_SKEW_MICROS;
use super::Shared;
use super::audit;
use super::page_limit;
use super::{ApiJson, ApiPath, ApiQuery};
use crate::admin::auth::Caller;
use crate::admin::views::MessageSummary;
use crate::admin::views::connector_states;
use crate::admin::views::summary;
use crate::outbox::audit::AuditEvent;
use crate::outbox::{Disposition, MessageId, StoredCopy};
/// Search filters. Every filter given must match.
#[derive(Debug, Default, Clone, Deserialize, Serialize, IntoParams, ToSchema)]
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
    /// The acknowledgement that was sent for an accepted message (kept to answer its
    /// retransmissions); absent for refused messages and those that asked for none.
    pub ack: Option<String>,
    /// What each connector with transform steps delivers instead of the received bytes.
    pub copies: Vec<CopyView>,
    /// For a DICOM object: its identifiers (`body` is then its header view, an HL7 MSH and
    /// PID built from them; the object itself is stored as received).
    pub dicom: Option<DicomView>,
}

/// A stored DICOM object's identifiers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DicomView {
    /// (0008,0060) Modality.
    pub modality: String,
    /// (0008,0016) SOP Class UID.
    pub sop_class_uid: String,
    /// (0008,0018) SOP Instance UID.
    pub sop_instance_uid: String,
    /// (0020,000D) Study Instance UID.
    pub study_uid: String,
    /// (0020,000E) Series Instance UID.
    pub series_uid: String,
    /// (0008,0050) Accession Number.
    pub accession: String,
    /// (0010,0020) Patient ID.
    pub patient_id: String,
    /// The transfer syntax it was received in.
    pub transfer_syntax: String,
    /// Bytes stored (the Part 10 file).
    pub bytes: u64,
}

/// A connector's own copy of the message (after its transform steps), for one queue entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CopyView {
    /// Connector name.
    pub connector: String,
    /// The queue entry it belongs to (the message id for the first; reprocessing adds
    /// entries, each with the copy its transform gave then).
    pub entry: u64,
    /// The bytes it delivers, decoded like `body`; absent when its transform failed.
    pub body: Option<String>,
    /// Why its transform failed for this message (the step and the reason).
    pub transform_failure: Option<String>,
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
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    refuse_unknown_parameters(raw.as_deref().unwrap_or_default())?;
    let plan = plan(&state, query, Vec::new())?;
    Ok(Json(run(&state, plan).await?))
}

/// The query parameters of the message search.
const SEARCH_PARAMETERS: [&str; 11] = [
    "from",
    "to",
    "type",
    "trigger",
    "control_id",
    "sender",
    "disposition",
    "connector",
    "status",
    "limit",
    "before",
];

/// 400 for a parameter the search does not know, rather than a page that ignores it (a
/// patient identifier among them would be taken for a search by it, and is in the URL).
fn refuse_unknown_parameters(raw: &str) -> Result<(), ApiError> {
    for pair in raw.split('&').filter(|pair| !pair.is_empty()) {
        let name = pair.split('=').next().unwrap_or_default();
        if SEARCH_PARAMETERS.contains(&name) {
            continue;
        }
        if name == "patient_id" || name == "family_name" {
            return Err(ApiError::bad_request(
                "search by patient with POST /api/v1/messages/search and the values in the body: a patient's identifier or name must not be in a URL",
            ));
        }
        return Err(ApiError::bad_request(format!(
            "unknown parameter {:?}; known: {}",
            name.chars().take(40).collect::<String>(),
            SEARCH_PARAMETERS.join(", ")
        )));
    }
    Ok(())
}

/// A search by patient, with any of the other filters. In a request body, so the patient's
/// identifier or name is never in a URL.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
pub struct PatientSearch {
    /// A patient identifier (PID-3, its first component), exactly, case and surrounding space
    /// aside.
    pub patient_id: Option<String>,
    /// A family name (PID-5.1), exactly, case and surrounding space aside.
    pub family_name: Option<String>,
    /// Every filter of `GET /api/v1/messages`.
    #[serde(flatten)]
    #[schema(inline)]
    pub filters: SearchQuery,
}

/// Search stored messages by patient identifier (PID-3) or family name (PID-5.1), newest
/// first, through the patient index (keyed hashes: the store holds no patient value outside
/// the bodies). The search is written to the audit trail, which fields were given but never
/// their values.
#[utoipa::path(post, path = "/api/v1/messages/search", tag = "messages", security(("bearer" = [])),
    request_body = PatientSearch,
    responses((status = 200, description = "A page of messages", body = MessagePage),
        (status = 400, description = "No patient field, or a filter is malformed", body = ErrorBody),
        (status = 409, description = "The patient index is off (PATIENT_INDEX)", body = ErrorBody), AuthErrors))]
pub async fn search_patient(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<PatientSearch>,
) -> Result<Json<MessagePage>, ApiError> {
    use crate::outbox::patients::IndexField;
    if !state.gateway.outbox.patient_index_on() {
        return Err(ApiError::conflict(
            "search by patient needs the patient index, which is off (PATIENT_INDEX=false); set PATIENT_INDEX=true: the next start builds it",
        ));
    }
    let given = [
        (
            IndexField::Identifier,
            "patient identifier",
            &request.patient_id,
        ),
        (IndexField::FamilyName, "family name", &request.family_name),
    ];
    let mut tags = Vec::new();
    let mut fields = Vec::new();
    for (field, name, value) in given {
        let Some(value) = value else { continue };
        let tag = state
            .gateway
            .outbox
            .index_tag(field, value)
            .ok_or_else(|| ApiError::bad_request(format!("the {name} is blank")))?;
        tags.push(tag);
        fields.push(name);
    }
    if tags.is_empty() {
        return Err(ApiError::bad_request(
            "give patient_id or family_name (or both); for other searches use GET /api/v1/messages",
        ));
    }
    let plan = plan(&state, request.filters, tags)?;
    // On the trail before any answer: which fields were searched, never their values.
    let event = AuditEvent::Admin {
        token_id: caller.token_id.clone(),
        action: "message.search_patient".to_owned(),
        target: format!("by {}", fields.join(" and ")),
        outcome: "searched".to_owned(),
    };
    state.gateway.outbox.audit(event).await?;
    Ok(Json(run(&state, plan).await?))
}

/// A search checked and ready to run.
struct Plan {
    query: SearchQuery,
    tags: Vec<crate::outbox::patients::Tag>,
    limit: usize,
    from: Option<i64>,
    to: Option<i64>,
    disposition: Option<Disposition>,
    status: Option<String>,
    connector_id: Option<crate::outbox::ConnectorId>,
}

/// Check `query`'s filters (before anything is read or audited).
fn plan(
    state: &crate::admin::AdminState,
    query: SearchQuery,
    tags: Vec<crate::outbox::patients::Tag>,
) -> Result<Plan, ApiError> {
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
                .connector_names()
                .iter()
                .find(|(_, known)| known.as_str() == name)
                .map(|(id, _)| *id)
                .ok_or_else(|| ApiError::not_found(format!("no connector named {name:?}")))?,
        ),
        None => None,
    };
    Ok(Plan {
        query,
        tags,
        limit,
        from,
        to,
        disposition,
        status,
        connector_id,
    })
}

/// A page of the messages matching the plan's filters (and carrying every tag of it).
async fn run(state: &crate::admin::AdminState, plan: Plan) -> Result<MessagePage, ApiError> {
    let Plan {
        query,
        tags,
        limit,
        from,
        to,
        disposition,
        status,
        connector_id,
    } = plan;
    let names = state.gateway.connector_names();
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
            let mut next = snapshot.scan_patient_messages_desc(
                &tags,
                query.before.map(MessageId),
                MAX_SCAN,
                |id, record| {
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
                },
            )?;
            if full {
                next = messages.last().map(|message| MessageId(message.id));
            }
            Ok(MessagePage {
                messages,
                next_before: next.map(|id| id.0),
                scanned,
            })
        })
        .await?;
    Ok(page)
}

/// One message with its body and delivery history. The read is written to the audit trail.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = u64, Path, description = "Message id")),
    responses((status = 200, description = "The message", body = MessageDetail), AuthErrors,
        (status = 404, description = "No such message", body = ErrorBody)))]
pub async fn show_message(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<MessageDetail>, ApiError> {
    let names = state.gateway.connector_names();
    let id = MessageId(id);
    let found = state
        .gateway
        .outbox
        .read(move |snapshot| {
            let Some(record) = snapshot.message(id)? else {
                return Ok(None);
            };
            let states = connector_states(snapshot, id, &record, &names)?;
            let body = snapshot
                .body_head(id, crate::outbox::spool::VIEW_HEAD)?
                .unwrap_or_default();
            let copies = snapshot
                .copies(id)?
                .into_iter()
                .map(|(connector, seq, copy)| {
                    let name = names
                        .get(&connector)
                        .cloned()
                        .unwrap_or_else(|| format!("#{connector}"));
                    (name, seq.0, copy)
                })
                .collect::<Vec<_>>();
            let ack = record.ack.clone();
            Ok(Some((summary(id, &record, states), body, copies, ack)))
        })
        .await?;
    let Some((summary, body, copies, ack)) = found else {
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
    let mut body = Bytes::from(body);
    // A DICOM object is shown by its identifiers and its header view, not its bytes.
    let dicom = crate::ingest::stored_identifiers(&body).map(|mut identifiers| {
        // The titles of the association it came on are the record's (MSH-3, MSH-5).
        identifiers.calling_ae.clone_from(&summary.sending_app);
        identifiers.called_ae.clone_from(&summary.receiving_app);
        let view = crate::ingest::header_view(&identifiers, summary_received(&summary))
            .map(|view| view.raw().clone())
            .unwrap_or_default();
        let shown = DicomView {
            modality: identifiers.modality,
            sop_class_uid: identifiers.sop_class_uid,
            sop_instance_uid: identifiers.sop_instance_uid,
            study_uid: identifiers.study_uid,
            series_uid: identifiers.series_uid,
            accession: identifiers.accession,
            patient_id: identifiers.patient_id,
            transfer_syntax: identifiers.transfer_syntax,
            bytes: body.len() as u64,
        };
        body = view;
        shown
    });
    let charset = match crate::hl7::Message::parse(body.clone()) {
        Ok(message) => message.charset(state.gateway.default_charset).charset(),
        Err(_) => state.gateway.default_charset,
    };
    let copies = copies
        .into_iter()
        .map(|(connector, entry, copy)| match copy {
            StoredCopy::Bytes(bytes) => {
                // A copy names its own character set (a report's ORU^R01 its report's).
                let own = match crate::hl7::Message::parse(bytes.clone()) {
                    Ok(copy) => copy.charset(charset).charset(),
                    Err(_) => charset,
                };
                CopyView {
                    connector,
                    entry,
                    body: Some(own.decode(&bytes).into_owned()),
                    transform_failure: None,
                }
            }
            StoredCopy::Failed(reason) => CopyView {
                connector,
                entry,
                body: None,
                transform_failure: Some(reason),
            },
        })
        .collect();
    Ok(Json(MessageDetail {
        summary,
        body: charset.decode(&body).into_owned(),
        ack: ack.map(|ack| charset.decode(&ack).into_owned()),
        copies,
        dicom,
    }))
}

/// The receive time of a summary, µs since the epoch (0 when unreadable).
fn summary_received(summary: &MessageSummary) -> i64 {
    chrono::DateTime::parse_from_rfc3339(&summary.received_at)
        .map(|time| time.timestamp_micros())
        .unwrap_or_default()
}

/// Most messages one reprocess request takes.
pub const MAX_REPROCESS: usize = 1_000;

/// What to reprocess, and where.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReprocessRequest {
    /// Message ids, in the order their new queue entries take.
    pub ids: Vec<u64>,
    /// The connector to queue them for.
    pub to: String,
    /// Also reprocess messages that were refused (REJECTED, ERROR).
    #[serde(default)]
    pub include_rejected: bool,
}

/// What a reprocess did, per message.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReprocessResult {
    /// Queued again: message id and its new queue entry.
    pub queued: Vec<ReprocessedEntry>,
    /// Queued, but the connector's transform failed: the entry is in its dead-letter queue
    /// with the reason.
    pub dead_lettered: Vec<ReprocessedEntry>,
    /// Not stored (never, or removed by retention).
    pub missing: Vec<u64>,
    /// Refused messages left alone (pass `include_rejected`).
    pub refused: Vec<u64>,
}

/// A message and the queue entry it got.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReprocessedEntry {
    /// Message id.
    pub id: u64,
    /// The new queue entry (its seq).
    pub entry: u64,
    /// For a transform that failed: the step and the reason.
    pub reason: Option<String>,
}

/// Queue stored messages again for a connector, whatever their state (delivered, filtered,
/// dead-lettered; refused ones only with `include_rejected`), each through the connector's
/// current transform. Each gets a new queue entry, so outputs' idempotency keys treat it
/// as a new delivery. One transaction, audited in it.
#[utoipa::path(post, path = "/api/v1/messages/reprocess", tag = "messages", security(("bearer" = [])),
    request_body = ReprocessRequest,
    responses((status = 200, description = "Reprocessed", body = ReprocessResult),
        (status = 400, description = "Malformed request", body = ErrorBody), AuthErrors,
        (status = 404, description = "No such connector", body = ErrorBody)))]
pub async fn reprocess_messages(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<ReprocessRequest>,
) -> Result<Json<ReprocessResult>, ApiError> {
    if request.ids.is_empty() || request.ids.len() > MAX_REPROCESS {
        return Err(ApiError::bad_request(format!(
            "ids must list 1 to {MAX_REPROCESS} message ids"
        )));
    }
    let connector = super::connector(&state, &request.to)?;
    let (to, name) = (connector.id, connector.name.clone());
    let ids: Vec<MessageId> = request.ids.iter().copied().map(MessageId).collect();
    let read = ids.clone();
    let stored = state
        .gateway
        .outbox
        .read(move |snapshot| {
            read.into_iter()
                .map(|id| {
                    let Some(record) = snapshot.message(id)? else {
                        return Ok((id, None));
                    };
                    let mut body = snapshot
                        .body_head(id, crate::outbox::spool::VIEW_HEAD)?
                        .unwrap_or_default();
                    // A spooled report is mapped from the whole of it, as at intake.
                    if crate::ingest::report_needs_whole_body(&body, record.body_len) {
                        body = snapshot.body(id)?.unwrap_or(body);
                    }
                    Ok((id, Some((record, body))))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut result = ReprocessResult {
        queued: Vec::new(),
        dead_lettered: Vec::new(),
        missing: Vec::new(),
        refused: Vec::new(),
    };
    let mut items = Vec::new();
    for (id, found) in stored {
        let Some((record, body)) = found else {
            result.missing.push(id.0);
            continue;
        };
        let refused = matches!(
            record.disposition,
            Disposition::Rejected | Disposition::Error
        );
        if refused && !request.include_rejected {
            result.refused.push(id.0);
            continue;
        }
        // A DICOM object: for an output that sends HL7, its report's ORU^R01 (ADR 0020).
        if crate::dicom::object::is_dicom(&body) {
            let copy = crate::ingest::reprocessed_object_copy(
                &body,
                record.received_at_micros,
                connector.sends_hl7,
                &state.gateway.transforms(),
                &name,
                &record.listener,
                state.gateway.default_charset,
            );
            items.push((id, copy));
            continue;
        }
        // Through the connector's current transform (ADR 0009): its copy, or why not.
        let copy = match crate::hl7::Message::parse(Bytes::from(body)) {
            Ok(message) => {
                let charset = message.charset(state.gateway.default_charset).charset();
                match state
                    .gateway
                    .transforms()
                    .apply(&name, &message, charset, &record.listener)
                {
                    Ok(Some(bytes)) => Some(StoredCopy::Bytes(Bytes::from(bytes))),
                    Ok(None) => None,
                    Err(failure) => Some(StoredCopy::Failed(failure.to_string())),
                }
            }
            // A stored frame without a header (kept for the record) has nothing to transform.
            Err(_) if state.gateway.transforms().transforms(&name) => Some(StoredCopy::Failed(
                "the stored frame has no MSH segment to transform".to_owned(),
            )),
            Err(_) => None,
        };
        items.push((id, copy));
    }
    let reasons: Vec<Option<String>> = items
        .iter()
        .map(|(_, copy)| match copy {
            Some(StoredCopy::Failed(reason)) => Some(reason.clone()),
            _ => None,
        })
        .collect();
    let order: Vec<MessageId> = items.iter().map(|(id, _)| *id).collect();
    if items.is_empty() {
        audit(
            &state,
            &caller,
            "message.reprocess",
            format!("connector {name}"),
            format!(
                "reprocessed 0, refused {}, missing {}",
                result.refused.len(),
                result.missing.len()
            ),
        )
        .await;
    } else {
        let context = crate::outbox::AuditContext {
            token_id: caller.token_id.clone(),
            action: "message.reprocess".to_owned(),
            target: format!(
                "connector {name} ({} ids: {} refused, {} not stored)",
                request.ids.len(),
                result.refused.len(),
                result.missing.len()
            ),
        };
        let answers = state
            .gateway
            .outbox
            .reprocess(items, to, Some(context))
            .await?;
        for ((id, seq), reason) in order.into_iter().zip(answers).zip(reasons) {
            match seq {
                None => result.missing.push(id.0),
                Some(seq) => {
                    let entry = ReprocessedEntry {
                        id: id.0,
                        entry: seq.0,
                        reason: reason.clone(),
                    };
                    if reason.is_some() {
                        result.dead_lettered.push(entry);
                    } else {
                        result.queued.push(entry);
                    }
                }
            }
        }
    }
    tracing::info!(token = %caller.token_id, connector = %name, queued = result.queued.len(), dead_lettered = result.dead_lettered.len(), missing = result.missing.len(), refused = result.refused.len(), "messages reprocessed");
    Ok(Json(result))
}
