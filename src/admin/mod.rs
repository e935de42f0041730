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
pub mod dlq;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

pub use api::{ApiDoc, ApiRoute, api_routes};
pub use auth::{Caller, Role, TokenSource, TokenStore};

use crate::delivery::WorkerControl;
use crate::hl7::Charset;
use crate::ingest::RouteCounters;
use crate::mllp::ListenerStats;
use crate::outbox::Outbox;
use crate::telemetry::LogRing;

/// Largest request body accepted (replay and purge requests are small).
const MAX_BODY: usize = 64 * 1024;
/// Longest a request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once; more wait.
const MAX_IN_FLIGHT: usize = 32;

/// Whether the gateway takes traffic, for `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Config loaded, store open, listener bound.
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::Release);
    }

    /// Shutdown started: no new traffic.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// `starting`, `ready` or `draining`.
    pub fn state(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

/// One connector as the admin API sees it.
#[derive(Debug, Clone)]
pub struct ConnectorHandle {
    /// Name.
    pub name: String,
    /// Output kind (`mllp`, `http`, `file`, `postgres`).
    pub kind: &'static str,
    /// Outbox id.
    pub id: u32,
    /// Its delivery worker (absent for a connector without an output).
    pub worker: Option<WorkerControl>,
    /// Intake counters of all connectors, and this one's index in them.
    pub intake: Option<(Arc<[RouteCounters]>, usize)>,
}

/// One listener as the admin API sees it.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    /// Name (`LISTENER_NAME`).
    pub name: String,
    /// Its counters.
    pub stats: Arc<ListenerStats>,
    /// Its certificate's expiry and reloads, when TLS is on.
    pub tls: Option<Arc<crate::tls::ReloadStats>>,
}

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState {
    /// The outbox (reads are MVCC snapshots; writes go through its writer).
    pub outbox: Outbox,
    /// Configured connectors, in configuration order.
    pub connectors: Vec<ConnectorHandle>,
    /// Every connector name the data file knows (configured or not), by outbox id.
    pub connector_names: std::collections::HashMap<u32, String>,
    /// Listeners.
    pub listeners: Vec<ListenerHandle>,
    /// Known tokens.
    pub tokens: Arc<TokenStore>,
    /// For `/readyz`.
    pub readiness: Arc<Readiness>,
    /// Decodes bodies whose MSH-18 is empty.
    pub default_charset: Charset,
    /// Recent log lines.
    pub logs: Arc<LogRing>,
    /// When the gateway started.
    pub started: Instant,
}

impl AdminState {
    /// A configured connector by name.
    pub fn connector(&self, name: &str) -> Option<&ConnectorHandle> {
        self.connectors
            .iter()
            .find(|connector| connector.name == name)
    }

    /// The name of a connector id (`#id` when the file does not know it).
    pub fn connector_name(&self, id: u32) -> String {
        self.connector_names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
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

/// Refuse a request without a known token (401) or with too weak a role (403); otherwise put
/// the [`Caller`] in its extensions. Runs before the body or the query is read.
async fn authorize(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
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

/// Serve the admin API until `shutdown` is cancelled (requests in flight are finished).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    let app = router(state);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(error = %error, "admin API stopped with an error");
    }
}

/// Bind `ADMIN_ADDR` (Go syntax: `:8080` is every interface).
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = crate::units::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
