//! HTTP intake (`type: http` listeners): `POST /hl7` with one HL7 v2 message as the body,
//! answered with its ACK, with the same decisions and durability as MLLP: the message and its
//! queue entries are committed before the answer ([`Ingest::handle`]).
//!
//! - Body: the message as sent (`Content-Type: application/hl7-v2`, `x-application/hl7-v2+er7`
//!   or `text/plain`; none is taken as HL7), or JSON `{"message": "MSH|..."}`; segments end
//!   with `\r`, `\n` or `\r\n`. The bytes are stored as received.
//! - Answer: the ACK as the body (`application/hl7-v2`; JSON `{"code", "ack"}` for a JSON
//!   request) with `200` for AA/CA, `422` for AR/CR, `503` for AE/CE (the sender retries);
//!   `400` for a body with no readable header, an empty body or an ACK (nothing stored).
//! - Who may post: a bearer token of `tokens_file` (the lines `mfoundry token create` prints;
//!   any role), or a client certificate (mTLS) whose identity `tls_senders` checks against
//!   MSH-3/MSH-4; the configuration refuses a listener with neither unless it binds loopback.
//!   `allowed_peers` closes the door to other addresses with `403`.
//!
//! Nothing from the message travels in a URL, a log line or an error text.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::admin::ConnectionInfo;
use crate::admin::auth::TokenStore;
use crate::hl7::AckCode;
use crate::ingest::{Ingest, Reason, Reply};
use crate::mllp::ListenerStats;
use crate::mllp::budget::{FrameBudget, Share};
use crate::units::Cidr;

/// The media type of an HL7 v2 message in ER7 (pipe) encoding.
pub const HL7_MEDIA_TYPE: &str = "application/hl7-v2";

/// One HTTP listener's state.
#[derive(Debug)]
pub struct HttpIntake {
    /// Decides, stores and answers.
    pub ingest: Ingest,
    /// The senders' tokens, when `tokens_file` is set.
    pub tokens: Option<Arc<TokenStore>>,
    /// The listener's counters.
    pub stats: Arc<ListenerStats>,
    /// `allowed_peers`.
    pub allowed_peers: Option<Vec<Cidr>>,
    /// The listener's name (the metrics' `mfoundry.listener`).
    pub name: String,
    /// `max_frame_size`: the largest body.
    pub max_body: usize,
    /// `frame_timeout`: a body must have arrived this long after its headers.
    pub body_timeout: Option<std::time::Duration>,
    /// `max_frame_memory`: the bodies being received, together.
    pub budget: Arc<FrameBudget>,
}

/// `POST /hl7`. The sender's address and token are checked from the headers before a byte of
/// the body is read; the body is read within `frame_timeout`, up to `max_frame_size`, with a
/// share of the listener's `max_frame_memory`.
pub fn router(state: Arc<HttpIntake>) -> Router {
    Router::new()
        .route("/hl7", post(receive))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not found: post HL7 v2 messages to /hl7",
            )
        })
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": text }))).into_response()
}

/// The HTTP status of an ACK code.
pub fn status_of(code: AckCode) -> StatusCode {
    match code {
        AckCode::AA | AckCode::CA => StatusCode::OK,
        AckCode::AR | AckCode::CR => StatusCode::UNPROCESSABLE_ENTITY,
        AckCode::AE | AckCode::CE => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The bearer token of a request, when it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The message of a request: the body itself, or the `message` of a JSON body.
fn message_of(
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Bytes, bool), (StatusCode, &'static str)> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media.as_str() {
        ""
        | HL7_MEDIA_TYPE
        | "x-application/hl7-v2+er7"
        | "application/hl7-v2+er7"
        | "text/plain" => Ok((body, false)),
        "application/json" => {
            #[derive(serde::Deserialize)]
            struct Posted {
                message: String,
            }
            serde_json::from_slice::<Posted>(&body)
                .map(|posted| (Bytes::from(posted.message.into_bytes()), true))
                .map_err(|_| {
                    (
                        StatusCode::BAD_REQUEST,
                        "a JSON body is an object with the message as a string: {\"message\": \"MSH|^~\\\\&|...\"}",
                    )
                })
        }
        _ => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "post the message as application/hl7-v2 (or text/plain), or as JSON {\"message\": \"...\"}",
        )),
    }
}

/// The body, read within the listener's limits: `Err` is the answer.
async fn read_body(
    state: &HttpIntake,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Bytes, Share), Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<usize>().ok());
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than this listener's max_frame_size",
        )
    };
    if declared.is_some_and(|length| length > state.max_body) {
        return Err(too_large());
    }
    let mut share = Share::new(Arc::clone(&state.budget));
    let read = async {
        share.cover(declared.unwrap_or(state.max_body), || {}).await;
        axum::body::to_bytes(body, state.max_body).await
    };
    let read = match state.body_timeout {
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(read) => read,
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive within this listener's frame_timeout; nothing was stored",
                ));
            }
        },
        None => read.await,
    };
    match read {
        Ok(bytes) => Ok((bytes, share)),
        Err(_) if declared.is_none() => Err(too_large()),
        Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "the body ended before its Content-Length; nothing was stored",
        )),
    }
}

async fn receive(
    State(state): State<Arc<HttpIntake>>,
    Extension(connection): Extension<ConnectionInfo>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    if let Some(allowed) = &state.allowed_peers
        && !allowed
            .iter()
            .any(|range| range.contains(connection.peer.ip()))
    {
        return error(StatusCode::FORBIDDEN, "this address may not post messages");
    }
    let mut sender = None;
    if let Some(tokens) = &state.tokens {
        let known = bearer(&headers).and_then(|token| tokens.authenticate(token));
        sender = known
            .as_ref()
            .map(|caller| format!("token={}", caller.token_id));
        if known.is_none() && connection.identity.is_none() {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token of this listener's tokens_file is needed (Authorization: Bearer <token>)",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let (body, _share) = match read_body(&state, &headers, body).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let (message, json) = match message_of(&headers, body) {
        Ok(found) => found,
        Err((status, text)) => return error(status, text),
    };
    state.stats.count_request();
    let started = std::time::Instant::now();
    let outcome = state
        .ingest
        .handle_from(
            message,
            connection.peer,
            connection.identity.as_ref(),
            sender.as_deref(),
        )
        .await;
    if let Reply::Ack { code, .. } | Reply::Suppressed { code } = &outcome.reply {
        use crate::telemetry::metrics::{ACK_CODE, LISTENER, instruments, record};
        record(
            &instruments().process,
            started.elapsed(),
            &[
                opentelemetry::KeyValue::new(LISTENER, state.name.clone()),
                opentelemetry::KeyValue::new(ACK_CODE, code.as_str()),
            ],
        );
    }
    match outcome.reply {
        Reply::Ack { bytes, code } => {
            state.stats.count_answer(code, true);
            let status = status_of(code);
            if json {
                let ack = String::from_utf8_lossy(&bytes).into_owned();
                (
                    status,
                    axum::Json(serde_json::json!({ "code": code.as_str(), "ack": ack })),
                )
                    .into_response()
            } else {
                (
                    status,
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(HL7_MEDIA_TYPE),
                    )],
                    bytes,
                )
                    .into_response()
            }
        }
        Reply::Suppressed { code } => {
            // The message asked for no ACK in this case: the status still tells.
            state.stats.count_answer(code, false);
            if json {
                (
                    status_of(code),
                    axum::Json(serde_json::json!({ "code": code.as_str() })),
                )
                    .into_response()
            } else {
                status_of(code).into_response()
            }
        }
        Reply::Ignore => error(
            StatusCode::BAD_REQUEST,
            "the body is empty or is itself an ACK; nothing was stored",
        ),
        // Storing failed and the message asked for no error ACK: still "resend later".
        Reply::Close if outcome.reason == Some(Reason::StoreFailed) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the message could not be stored; send it again later",
        ),
        Reply::Close => {
            state.stats.count_unreadable();
            error(
                StatusCode::BAD_REQUEST,
                "the body has no readable HL7 header (MSH, or FHS/BHS for a batch); nothing was stored",
            )
        }
    }
}

/// The HTTP listener's connections, counted as the MLLP listener counts its own.
impl crate::admin::ConnectionEvents for ListenerStats {
    fn opened(&self) {
        self.count_opened();
    }

    fn closed(&self) {
        self.count_closed();
    }

    fn refused(&self) {
        self.count_refused();
    }

    fn handshake_failed(&self) {
        self.count_handshake_failure();
    }
}
