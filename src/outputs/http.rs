//! `type: http`: one request per message.
//!
//! 2xx is delivered; 408, 429 and 5xx are transient (honouring `Retry-After` in seconds);
//! other statuses are permanent; connection errors and timeouts are transient. The body is
//! the connector's copy of the message in its `format` ([`super::format`]). The URL and headers come from the configuration only: nothing from the
//! message goes into them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};

use super::format::Format;
use crate::delivery::{DeliveryError, Envelope};

/// Where an HTTP output's bearer token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Read from this environment variable at startup.
    Env(String),
    /// Read from this file (re-read when it changes).
    File(PathBuf),
}

/// `type: http`.
#[derive(Clone, Debug)]
pub struct HttpSpec {
    /// Endpoint.
    pub url: String,
    /// Method.
    pub method: String,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Bearer token, if any.
    pub token: Option<TokenSource>,
    /// Body format.
    pub format: Format,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// TLS files (`tls_*` keys), when set.
    pub tls: Option<std::sync::Arc<crate::tls::TlsClient>>,
    /// `EGRESS_ALLOW`, when set: names in the URL are resolved through it.
    pub egress: Option<std::sync::Arc<super::egress::EgressAllow>>,
    /// `type: stowrs`: the body is the DICOM object as a multipart/related STOW-RS request
    /// to this URL (`{url}/studies`), and a 202 is judged per instance ([`super::stowrs`]).
    pub stow: bool,
}

/// The keys an HTTP connector takes.
pub const KEYS: [&str; 10] = [
    "url",
    "method",
    "headers",
    "bearer_token_env",
    "bearer_token_file",
    "format",
    "timeout",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

impl HttpSpec {
    /// Read an HTTP connector's keys; `None` when a problem was recorded.
    pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<Self> {
        let problems_before = reader.problems.len();
        reader.require("url", "for type http");
        let url = reader.text("url").unwrap_or_default();
        if reader.has("url") && !(url.starts_with("http://") || url.starts_with("https://")) {
            reader.problem("url", "`url` must start with http:// or https://");
        }
        let method = reader
            .raw_text("method")
            .unwrap_or_else(|| "POST".to_owned())
            .to_ascii_uppercase();
        if !matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            reader.problem(
                "method",
                format!("`method` is {method:?}; use POST, PUT or PATCH"),
            );
        }
        let headers = reader.text_map("headers");
        let format = Format::read(reader, &Format::ALL);
        let token = match (
            reader.raw_text("bearer_token_env"),
            reader.text("bearer_token_file"),
        ) {
            (Some(_), Some(_)) => {
                reader.problem(
                    "bearer_token_file",
                    "set `bearer_token_env` or `bearer_token_file`, not both",
                );
                None
            }
            (Some(name), None) => Some(TokenSource::Env(name)),
            (None, Some(path)) => Some(TokenSource::File(PathBuf::from(path))),
            (None, None) => None,
        };
        if let Some(TokenSource::Env(name)) = &token
            && (reader.lookup)(name).is_none()
        {
            reader.problem(
                "bearer_token_env",
                format!("`bearer_token_env` names {name}, which is not set in the environment"),
            );
        }
        let timeout = reader.duration("timeout", Duration::from_secs(30));
        let files = reader.tls_files();
        let tls = reader.tls_client(files.as_ref(), None);
        (reader.problems.len() == problems_before).then_some(Self {
            url,
            method,
            headers,
            token,
            format,
            timeout,
            tls,
            egress: None,
            stow: false,
        })
    }
}

/// Media type of an ER7-encoded HL7 v2 message.
pub const HL7_MEDIA_TYPE: &str = "x-application/hl7-v2+er7";

/// An HTTP endpoint.
#[derive(Debug)]
pub struct HttpOutput {
    spec: HttpSpec,
    client: Result<reqwest::Client, String>,
    /// The TLS configuration `client` was built with, to notice a reload.
    tls_in_use: Option<Arc<rustls::ClientConfig>>,
    method: reqwest::Method,
    headers: HeaderMap,
}

impl HttpOutput {
    /// An output for `spec`. A client that cannot be built (bad header, TLS setup) makes every
    /// delivery fail transiently with the reason, so nothing is lost while the operator fixes
    /// the configuration.
    pub fn new(spec: HttpSpec) -> Self {
        crate::tls::install_crypto_provider();
        let mut headers = HeaderMap::new();
        let mut problem = None;
        for (name, value) in &spec.headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => problem = Some(format!("header {name:?} is not a valid HTTP header")),
            }
        }
        let tls_in_use = spec.tls.as_ref().map(|tls| tls.config());
        let client = match problem {
            Some(problem) => Err(problem),
            None => build_client(&spec, tls_in_use.as_deref()),
        };
        let method =
            reqwest::Method::from_bytes(spec.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        Self {
            spec,
            client,
            tls_in_use,
            method,
            headers,
        }
    }

    /// Whether this is a `type: stowrs` output.
    pub fn is_stow(&self) -> bool {
        self.spec.stow
    }

    /// Send one message.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        self.reload_tls();
        let client = self
            .client
            .as_ref()
            .map_err(|problem| DeliveryError::transient(problem.clone()))?;
        let mut request = client
            .request(self.method.clone(), &self.spec.url)
            .headers(self.headers.clone())
            .header("X-Mfoundry-Message-Id", envelope.message_id)
            .header("X-Mfoundry-Entry", envelope.seq)
            // The key names the queue entry: a resend of it after a crash is recognised
            // downstream, while a replayed or reprocessed copy (a new entry) is a new
            // delivery. The instance id tells data files (gateways) apart; ids never repeat
            // within one (ADR 0007).
            .header("Idempotency-Key", idempotency_key(envelope));
        let stow = self.stow_object(envelope)?;
        request = match &stow {
            Some((content_type, body)) => request
                .header(CONTENT_TYPE, content_type.as_str())
                .header(reqwest::header::ACCEPT, "application/dicom+json")
                .body(body.clone()),
            None => {
                let body = self.spec.format.render(envelope)?;
                request
                    .header(CONTENT_TYPE, self.spec.format.media_type())
                    .body(body)
            }
        };
        if let Some(token) = self.token().await? {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                DeliveryError::transient("the bearer token is not a valid header value")
            })?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let started = std::time::Instant::now();
        let sent = request.send().await;
        let status_code = sent
            .as_ref()
            .map_or(0, |response| i64::from(response.status().as_u16()));
        crate::telemetry::metrics::record(
            &crate::telemetry::metrics::instruments().http,
            started.elapsed(),
            &[
                opentelemetry::KeyValue::new(
                    crate::telemetry::metrics::CONNECTOR,
                    opentelemetry::StringValue::from(Arc::clone(&envelope.connector)),
                ),
                opentelemetry::KeyValue::new("http.request.method", self.method.to_string()),
                opentelemetry::KeyValue::new("http.response.status_code", status_code),
            ],
        );
        let response = sent.map_err(|error| {
            let kind = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            DeliveryError::transient(format!("{kind}: {}", without_url(error)))
        })?;
        let status = response.status();
        // STOW-RS: the answer's body says what became of the object, on success and on
        // 400/409 alike (a full disk, a duplicate, an earlier try still in flight).
        if stow.is_some() && (status.is_success() || matches!(status.as_u16(), 400 | 409)) {
            let answer = first_bytes_up_to(response, STOW_ANSWER_MAX).await;
            let downstream = || {
                let text = String::from_utf8_lossy(&answer);
                let text = text.trim();
                (!text.is_empty()).then(|| {
                    text.chars()
                        .take(crate::delivery::DOWNSTREAM_MAX)
                        .collect::<String>()
                })
            };
            return match super::stowrs::judge(status.as_u16(), &answer) {
                super::stowrs::Judged::Stored => Ok(()),
                super::stowrs::Judged::Retry(reason) => {
                    Err(DeliveryError::transient(reason).with_downstream(downstream()))
                }
                super::stowrs::Judged::Refused(reason) => {
                    Err(DeliveryError::permanent(reason).with_downstream(downstream()))
                }
            };
        }
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let reason = format!("the endpoint answered HTTP {}", status.as_u16());
        let downstream = first_bytes(response).await;
        // 409: a request with the same Idempotency-Key is still being processed (an earlier
        // attempt that timed out on our side); it may yet succeed, so try again later. For
        // STOW-RS, 409 is the server refusing the instance (a conflict): permanent.
        let conflict_retried = !self.spec.stow && status.as_u16() == 409;
        if matches!(status.as_u16(), 408 | 429) || conflict_retried || status.is_server_error() {
            Err(DeliveryError::Transient {
                reason,
                retry_after,
                downstream: None,
            }
            .with_downstream(downstream))
        } else {
            Err(DeliveryError::permanent(reason).with_downstream(downstream))
        }
    }

    /// For `type: stowrs`: the request's Content-Type and body; `None` for `type: http`. An
    /// HL7 message is permanent.
    fn stow_object(&self, envelope: &Envelope) -> Result<Option<(String, Bytes)>, DeliveryError> {
        if !self.spec.stow {
            return Ok(None);
        }
        if !crate::dicom::is_dicom(&envelope.body) {
            return Err(DeliveryError::permanent(
                "a stowrs connector sends DICOM objects; this is an HL7 message (leave HL7 out with a filter such as `dicom.sop_instance_uid != \"\"`)",
            ));
        };
        let (content_type, body) = super::stowrs::multipart(&envelope.body);
        Ok(Some((content_type, body)))
    }

    async fn token(&self) -> Result<Option<String>, DeliveryError> {
        match &self.spec.token {
            None => Ok(None),
            Some(TokenSource::Env(name)) => std::env::var(name)
                .map(|token| Some(token.trim().to_owned()))
                .map_err(|_| {
                    DeliveryError::transient(format!("the bearer token variable {name} is not set"))
                }),
            // Read each time, so a rotated secret is picked up without a restart.
            Some(TokenSource::File(path)) => tokio::fs::read_to_string(path)
                .await
                .map(|token| Some(token.trim().to_owned()))
                .map_err(|error| {
                    DeliveryError::transient(format!(
                        "cannot read the bearer token file {}: {error}",
                        path.display()
                    ))
                }),
        }
    }
}

impl HttpOutput {
    /// Rebuild the client when the TLS files changed and loaded (new connections use them;
    /// a request in flight keeps its own).
    fn reload_tls(&mut self) {
        let (Some(tls), Ok(_)) = (&self.spec.tls, &self.client) else {
            return;
        };
        let current = tls.config();
        if self
            .tls_in_use
            .as_ref()
            .is_some_and(|in_use| Arc::ptr_eq(in_use, &current))
        {
            return;
        }
        match build_client(&self.spec, Some(&current)) {
            Ok(client) => self.client = Ok(client),
            Err(error) => {
                tracing::warn!(error = %error, "HTTP client not rebuilt with the new TLS files; the previous one stays");
            }
        }
        self.tls_in_use = Some(current);
    }
}

fn build_client(
    spec: &HttpSpec,
    tls: Option<&rustls::ClientConfig>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10).min(spec.timeout))
        .timeout(spec.timeout)
        // A redirect would turn the POST into a GET without the message (301-303) and still
        // end in a 2xx: treat a 3xx as a refusal instead.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("mfoundry/", env!("CARGO_PKG_VERSION")));
    if let Some(allow) = &spec.egress {
        // Every name goes through the list; an address in the URL was checked at load. No
        // proxy: it would connect for us to wherever it likes.
        let port = super::egress::url_destination(&spec.url).map_or(443, |(_, port)| port);
        builder = builder
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(super::egress::Resolver {
                allow: std::sync::Arc::clone(allow),
                port,
            }));
    }
    if let Some(tls) = tls {
        // The connector's own configuration (system CAs plus tls_ca_file, client
        // certificate); reqwest leaves ALPN to it.
        let mut tls = tls.clone();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder = builder.tls_backend_preconfigured(tls);
    }
    builder
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {error}"))
}

/// The error and its causes, without the URL (it can carry credentials in its user info).
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The first [`crate::delivery::DOWNSTREAM_MAX`] bytes of an answer's body (read with a
/// bound: a large or endless body is not waited for), as text; `None` when empty.
async fn first_bytes(response: reqwest::Response) -> Option<String> {
    let kept = first_bytes_up_to(response, crate::delivery::DOWNSTREAM_MAX).await;
    let text = String::from_utf8_lossy(&kept).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// Most bytes of a STOW-RS 202 answer read (it lists the instances of one request: ours).
const STOW_ANSWER_MAX: usize = 256 * 1024;

/// The first `max` bytes of an answer's body, read within 5 seconds.
async fn first_bytes_up_to(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let read = async {
        while kept.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    kept.truncate(max);
    kept
}

/// `Idempotency-Key` of a delivery: `mfoundry-<instance>-<connector>-<entry>`.
pub fn idempotency_key(envelope: &Envelope) -> String {
    format!(
        "mfoundry-{:016x}-{}-{}",
        envelope.instance_id, envelope.connector, envelope.seq
    )
}
