//! The operator console: a web UI under `/ui` on the admin listener, for the people who run
//! interfaces (ADR 0018). Its page, script and style sheet are built into the binary (no
//! external assets) and named by their content's hash. A browser signs in with an admin
//! token and gets a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over TLS) that
//! closes after `CONSOLE_IDLE_TIMEOUT` without use; the page then reads and acts through
//! `/ui/api/v1/…`, the admin API's own routes and roles behind the session instead of a
//! bearer token (so `/api/v1` stays bearer-only, ADR 0004). Every change needs the
//! session's CSRF token in `X-CSRF-Token`. Every answer carries a strict
//! Content-Security-Policy (scripts and styles from this origin only, no inline script) and
//! refuses framing.

pub mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::sessions::{Sessions, csrf_matches};
use super::AdminState;
use super::api::{ErrorBody, api_routes};
use super::auth::{Role, TokenStore, hash_token};

/// The session cookie's name.
pub const COOKIE: &str = "mfoundry_session";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The header the page's own periodic refreshes carry: they do not keep a session open.
pub const REFRESH_HEADER: &str = "x-console-refresh";

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The console's policy: this origin's scripts, styles and requests, nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The page and its assets, named by content (a new build is a new name: never a stale
/// script from a cache).
#[derive(Debug)]
struct Assets {
    index: String,
    js_name: String,
    css_name: String,
}

impl Assets {
    fn new() -> Self {
        let name = |stem: &str, extension: &str, content: &str| {
            let digest = Sha256::digest(content.as_bytes());
            format!("{stem}.{}.{extension}", super::auth::hex(&digest[..6]))
        };
        let js_name = name("app", "js", APP_JS);
        let css_name = name("app", "css", APP_CSS);
        let index = INDEX
            .replace("{{APP_JS}}", &js_name)
            .replace("{{APP_CSS}}", &css_name)
            .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"));
        Self {
            index,
            js_name,
            css_name,
        }
    }
}

/// The console's state: sessions, whether the listener serves TLS, the assets.
#[derive(Debug)]
pub struct Console {
    /// Open sessions.
    pub sessions: Sessions,
    /// Cookies get `Secure` (the admin listener serves HTTPS).
    pub secure: bool,
    assets: Assets,
}

impl Console {
    /// A console whose sessions close after `idle` without use; `secure` when the admin
    /// listener serves TLS.
    pub fn new(idle: std::time::Duration, secure: bool) -> Self {
        Self {
            sessions: Sessions::new(idle),
            secure,
            assets: Assets::new(),
        }
    }
}

/// What one `/ui/api` route's gate needs.
#[derive(Clone)]
struct Gate {
    state: Arc<AdminState>,
    role: Role,
}

/// The console's routes (merged into the admin router, which holds the state).
pub fn router(state: &Arc<AdminState>) -> Router<Arc<AdminState>> {
    let mut api = Router::new();
    for route in api_routes() {
        let gate = Gate {
            state: Arc::clone(state),
            role: route.role,
        };
        let path = format!("/ui{}", route.path);
        api = api.route(
            &path,
            route
                .handler
                .route_layer(middleware::from_fn_with_state(gate, session_gate)),
        );
    }
    Router::new()
        .route("/ui", get(redirect_to_console))
        .route("/ui/", get(page))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
        .merge(api)
        .layer(middleware::from_fn_with_state(
            state.console.secure,
            security_headers,
        ))
}

/// The headers every console answer carries (`secure`: the listener serves HTTPS, so
/// browsers are told to keep to it).
async fn security_headers(State(secure): State<bool>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if secure {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

async fn redirect_to_console() -> Response {
    (StatusCode::FOUND, [(header::LOCATION, "/ui/")]).into_response()
}

async fn page(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        state.console.assets.index.clone(),
    )
        .into_response()
}

async fn asset(State(state): State<Arc<AdminState>>, Path(name): Path<String>) -> Response {
    let assets = &state.console.assets;
    let (content_type, body) = if name == assets.js_name {
        ("text/javascript; charset=utf-8", APP_JS)
    } else if name == assets.css_name {
        ("text/css; charset=utf-8", APP_CSS)
    } else {
        return error(StatusCode::NOT_FOUND, "no such asset: reload the page");
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(ErrorBody::new(text))).into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// A request from another site (the browser says so with `Sec-Fetch-Site`) is refused;
/// older browsers that do not send it are covered by `SameSite=Strict` and the CSRF token.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

fn set_cookie(value: &str, secure: bool, max_age: Option<u64>) -> HeaderValue {
    let mut cookie = format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict");
    if secure {
        cookie.push_str("; Secure");
    }
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What the page learns about its session.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    /// The token's id.
    pub token_id: String,
    /// Its role.
    pub role: Role,
    /// Whether this role sees message bodies and patient fields (operator and above).
    pub phi: bool,
    /// Send in `X-CSRF-Token` with every change.
    pub csrf: String,
    /// The session closes after this many seconds without use.
    pub idle_timeout_secs: u64,
}

/// `POST /ui/login`.
#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    /// An admin token.
    pub token: String,
}

async fn login(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    // A form on another site can post text/plain without asking the browser first; only
    // the console's own script sends JSON.
    if cross_site(&headers) || !json {
        return error(
            StatusCode::FORBIDDEN,
            "sign in from the console's own page (JSON from this origin)",
        );
    }
    let Ok(request) = serde_json::from_slice::<LoginRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"token\": \"mft_...\"}",
        );
    };
    let hash = hash_token(&request.token);
    let Some(caller) = state.tokens.authenticate_hash(&hash) else {
        tracing::info!("console sign-in refused: unknown token");
        return error(
            StatusCode::UNAUTHORIZED,
            "unknown token: use a token from ADMIN_TOKENS_FILE (or the data directory's admin.token)",
        );
    };
    let console = &state.console;
    let (id, csrf) = match console.sessions.open(hash) {
        Ok(opened) => opened,
        Err(problem) => return error(StatusCode::SERVICE_UNAVAILABLE, &problem),
    };
    super::api::audit(
        &state,
        &caller,
        "console.login",
        String::new(),
        "ok".to_owned(),
    )
    .await;
    tracing::info!(token = %caller.token_id, role = %caller.role, "console sign-in");
    let view = SessionView {
        phi: caller.role >= Role::Operator,
        token_id: caller.token_id,
        role: caller.role,
        csrf,
        idle_timeout_secs: console.sessions.idle().as_secs(),
    };
    let mut response = axum::Json(view).into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&id, console.secure, None));
    response
}

async fn logout(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let console = &state.console;
    if let Some(id) = cookie(&headers, COOKIE) {
        let active = console.sessions.get(id, &state.tokens, true);
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        match active {
            Some(active) if csrf_matches(presented, &active.csrf) => {
                console.sessions.close(id);
                super::api::audit(
                    &state,
                    &active.caller,
                    "console.logout",
                    String::new(),
                    "ok".to_owned(),
                )
                .await;
            }
            Some(_) => {
                return error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token");
            }
            None => {}
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", console.secure, Some(0)));
    response
}

async fn session(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let console = &state.console;
    match cookie(&headers, COOKIE).and_then(|id| console.sessions.get(id, &state.tokens, true)) {
        Some(active) => axum::Json(SessionView {
            phi: active.caller.role >= Role::Operator,
            token_id: active.caller.token_id,
            role: active.caller.role,
            csrf: active.csrf,
            idle_timeout_secs: console.sessions.idle().as_secs(),
        })
        .into_response(),
        None => error(StatusCode::UNAUTHORIZED, "not signed in"),
    }
}

/// The session check of one `/ui/api` route: a session (401), the CSRF token on every
/// change and no other site (403), the route's role (403); then the caller goes in the
/// request's extensions as the bearer check puts it.
async fn session_gate(State(gate): State<Gate>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    if cross_site(headers) {
        return error(
            StatusCode::FORBIDDEN,
            "requests from other sites are refused",
        );
    }
    let tokens: &TokenStore = &gate.state.tokens;
    let touch = !headers.contains_key(REFRESH_HEADER);
    let Some(active) =
        cookie(headers, COOKIE).and_then(|id| gate.state.console.sessions.get(id, tokens, touch))
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "not signed in, or the session closed: sign in again",
        );
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !csrf_matches(presented, &active.csrf) {
            return error(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token");
        }
    }
    if active.caller.role < gate.role {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "this needs the {} role; the token {:?} has {}",
                gate.role, active.caller.token_id, active.caller.role
            ),
        );
    }
    request.extensions_mut().insert(active.caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mfoundry_session=abc; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn assets_are_named_by_content_and_the_page_names_them() {
        let assets = Assets::new();
        assert!(assets.js_name.starts_with("app.") && assets.js_name.ends_with(".js"));
        assert!(assets.index.contains(&assets.js_name));
        assert!(assets.index.contains(&assets.css_name));
        assert!(!assets.index.contains("{{"));
        // No inline script: the policy would refuse it.
        assert!(!assets.index.contains("<script>"));
        for handler in [" onload=", " onclick=", " onerror=", " onsubmit="] {
            assert!(!assets.index.contains(handler), "no inline event handlers");
        }
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let plain = set_cookie("x", false, None);
        let plain = plain.to_str().expect("text");
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let secure = set_cookie("x", true, None);
        assert!(secure.to_str().expect("text").contains("; Secure"));
    }
}
