//! The admin HTTP API: health, stats, message search, DLQ replay and purge, pause and resume,
//! recent logs, the audit trail.
//!
//! `/livez`, `/readyz` and `/openapi.json` need no token; every route under `/api/v1` needs
//! `Authorization: Bearer <token>` with a role at least the route's ([`api_routes`] lists
//! each route with its role, and the router is built from that list only). Authentication
//! runs before anything of the request is parsed. Request bodies, page sizes, time per
//! request and requests in flight are bounded.

pub mod api;
pub mod auth;
pub mod console;
pub mod dlq;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use api::{ApiDoc, ApiRoute, api_routes};
pub use auth::{Caller, Role, TokenSource, TokenStore};

pub use crate::gateway::{ConnectorHandle, Gateway, ListenerHandle, Readiness};
use crate::telemetry::LogRing;

/// Largest request body accepted (replay and purge requests are small).
const MAX_BODY: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once; more wait.
const MAX_IN_FLIGHT: usize = 32;
/// Connections open at once; one more is closed as soon as it is accepted (and counted), so
/// idle or slow clients can never take the descriptors the MLLP listener needs.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a client may take to send a request's headers, and to start the next request on
/// a kept connection; then the connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share: the gateway's state, the tokens and the recent log lines.
#[derive(Debug)]
pub struct AdminState {
    /// The gateway (outbox, connectors, listeners, readiness), as the metrics see it too.
    pub gateway: Arc<Gateway>,
    /// Known tokens.
    pub tokens: Arc<TokenStore>,
    /// Recent log lines.
    pub logs: Arc<LogRing>,
    /// The web console's sessions and assets.
    pub console: console::Console,
    /// Per token, a fingerprint of the connectors' last errors it was last shown (see
    /// `api::stats`): a change is a new PHI view, written to the audit trail; the same
    /// errors polled again are not.
    pub errors_shown: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// What the auth layer of one route needs.
#[derive(Clone)]
struct Gate {
    tokens: Arc<TokenStore>,
    role: Role,
}

/// The whole router: health, `/openapi.json`, and every `/api/v1` route behind its role.
pub fn router(state: Arc<AdminState>) -> Router {
    let mut api = Router::new();
    for route in api_routes() {
        let gate = Gate {
            tokens: Arc::clone(&state.tokens),
            role: route.role,
        };
        api = api.route(
            route.path,
            route
                .handler
                .route_layer(middleware::from_fn_with_state(gate, authorize)),
        );
    }
    Router::new()
        .merge(api)
        .merge(console::router(&state))
        .route("/livez", axum::routing::get(api::livez))
        .route("/readyz", axum::routing::get(api::readyz))
        .route("/openapi.json", axum::routing::get(api::openapi))
        .fallback(api::not_found)
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    api::overloaded_or_timed_out,
                ))
                .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
                .layer(tower::timeout::TimeoutLayer::new(REQUEST_TIMEOUT)),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// The token of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 9110, section 11.1), spaces around the token are ignored.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Refuse a request without a known token (401) or with too weak a role (403); otherwise put
/// the [`Caller`] in its extensions. Runs before the body or the query is read.
async fn authorize(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .filter(|token| !token.is_empty());
    let Some(caller) = token.and_then(|token| gate.tokens.authenticate(token)) else {
        tracing::debug!("admin request refused: no valid token");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(api::ErrorBody::new(
                "a valid token is required: Authorization: Bearer <token> (see ADMIN_TOKENS_FILE)",
            )),
        )
            .into_response();
    };
    if caller.role < gate.role {
        tracing::info!(token = %caller.token_id, role = %caller.role, needed = %gate.role, "admin request refused: role too weak");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(api::ErrorBody::new(format!(
                "this needs the {} role; the token {:?} has {}",
                gate.role, caller.token_id, caller.role
            ))),
        )
            .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Serve the admin API and the console until `shutdown` is cancelled (requests in flight
/// are finished), over TLS when `tls` is set. At most [`MAX_CONNECTIONS`] connections at
/// once (more are closed at once, counted in `refused`); each must send its headers within
/// [`HEADER_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
    tls: Option<crate::tls::TlsServer>,
) {
    let limits = ConnectionLimits {
        name: "admin API",
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
    };
    serve_router_with(
        listener,
        router(state),
        shutdown,
        limits,
        Arc::default(),
        tls,
        None,
    )
    .await;
}

/// An HTTP listener's connection limits (the admin API's, the metrics endpoint's).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// What the listener serves, for its log lines (`admin API`).
    pub name: &'static str,
    /// Connections open at once ([`MAX_CONNECTIONS`] for the admin API).
    pub max_connections: usize,
    /// Time to send a request's headers ([`HEADER_TIMEOUT`]).
    pub header_timeout: Duration,
}

/// Connections the admin listener closed because its limit was reached.
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Closed at once, over the cap.
    pub refused: std::sync::atomic::AtomicU64,
}

/// [`serve`] for any router and limits (the metrics endpoint serves its own; tests serve a
/// small one with short limits).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
    counters: Arc<AdminCounters>,
) {
    serve_router_with(listener, app, shutdown, limits, counters, None, None).await;
}

/// What a serving loop tells about its connections (an HTTP listener counts them as the MLLP
/// listener counts its own).
pub trait ConnectionEvents: Send + Sync {
    /// A connection was accepted (after its TLS handshake, with TLS) and is served.
    fn opened(&self);
    /// A served connection ended.
    fn closed(&self);
    /// A connection was closed at once: the limit was reached.
    fn refused(&self);
    /// A TLS handshake failed or timed out (a peer that sent nothing is not counted).
    fn handshake_failed(&self);
}

/// Calls [`ConnectionEvents::closed`] when the connection's task ends, however it ends.
struct OpenConnection(Option<Arc<dyn ConnectionEvents>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(events) = &self.0 {
            events.closed();
        }
    }
}

/// Who is on the other end of a connection: handlers find it as an `Extension`.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The peer's address.
    pub peer: SocketAddr,
    /// Its client certificate's identity (mTLS), when it presented one.
    pub identity: Option<crate::tls::PeerIdentity>,
}

/// [`serve_router`], over TLS when `tls` is set: each connection's handshake runs in its own
/// task within the handshake timeout (a failed one is logged, told to `events` and closed);
/// every request carries the connection's [`ConnectionInfo`]; `events` hears of every
/// connection opened, closed and refused.
pub async fn serve_router_with(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: ConnectionLimits,
    counters: Arc<AdminCounters>,
    tls: Option<crate::tls::TlsServer>,
    events: Option<Arc<dyn ConnectionEvents>>,
) {
    use hyper_util::rt::TokioIo;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin.
                tracing::warn!(error = %error, "{} cannot accept a connection", limits.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            counters
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(events) = &events {
                events.refused();
            }
            drop(stream);
            let now = tokio::time::Instant::now();
            if last_warning.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                last_warning = Some(now);
                tracing::warn!(
                    limit = limits.max_connections,
                    refused = counters.refused.load(std::sync::atomic::Ordering::Relaxed),
                    "{} connections at their limit; a new one was closed",
                    limits.name
                );
            }
            continue;
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        let events = events.clone();
        connections.spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    if let Some(events) = &events {
                        events.opened();
                    }
                    let _open = OpenConnection(events);
                    let info = ConnectionInfo {
                        peer,
                        identity: None,
                    };
                    let app = app.layer(axum::Extension(info));
                    serve_connection(TokioIo::new(stream), app, limits, &shutdown).await;
                }
                Some(tls) => {
                    let stream = match tls.accept(stream).await {
                        Ok(stream) => stream,
                        Err(crate::tls::HandshakeError::Silent) => return,
                        Err(crate::tls::HandshakeError::Failed(error)) => {
                            if let Some(events) = &events {
                                events.handshake_failed();
                            }
                            tracing::info!(%peer, error = %error, "{}: TLS handshake failed", limits.name);
                            return;
                        }
                    };
                    if let Some(events) = &events {
                        events.opened();
                    }
                    let _open = OpenConnection(events);
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(<[_]>::first)
                        .and_then(crate::tls::PeerIdentity::from_certificate);
                    let app = app.layer(axum::Extension(ConnectionInfo { peer, identity }));
                    serve_connection(TokioIo::new(stream), app, limits, &shutdown).await;
                }
            }
        });
    }
    // Requests in flight finish; idle connections close.
    while connections.join_next().await.is_some() {}
}

/// Serve HTTP/1.1 on one connection until it ends; on `shutdown`, requests in flight
/// finish and the connection closes.
async fn serve_connection<I>(
    io: I,
    app: Router,
    limits: ConnectionLimits,
    shutdown: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Bind `ADMIN_ADDR` (or `METRICS_ADDR`; Go syntax: `:8080` is every interface).
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = crate::units::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc "] {
            assert_eq!(bearer_token(value), Some("abc"), "{value}");
        }
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer "), Some(""));
    }
}
