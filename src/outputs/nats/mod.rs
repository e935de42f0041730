//! `type: nats`: publish to NATS JetStream, the hand-off for scaling out. Each message is
//! published with `Nats-Msg-Id` set to the delivery's idempotency key (a resend after a
//! crash is dropped by the stream's duplicate window) and counts as delivered only once
//! the stream has acknowledged it. Up to [`BATCH`] messages go out in one write and their
//! acknowledgements are awaited together, over a connection that is never re-established
//! behind the output's back ([`wire`]): when it fails, what the server took is a prefix of
//! what was written, the rest is published again in order, and the duplicate window drops
//! what had been taken.

mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::file::{Placeholder, placeholder, received};
use super::format::Format;
use crate::delivery::{DeliveryError, Envelope};

/// The keys a NATS connector takes.
pub const KEYS: [&str; 13] = [
    "url",
    "subject",
    "stream",
    "creds_file",
    "nkey_file",
    "token",
    "user",
    "password",
    "format",
    "timeout",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the connection authenticates.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// Nothing.
    #[default]
    None,
    /// A `.creds` file (JWT and NKey seed).
    CredsFile(PathBuf),
    /// A file holding an NKey seed.
    NkeyFile(PathBuf),
    /// A token.
    Token(String),
    /// A user and a password.
    UserPassword(String, String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        formatter.write_str(match self {
            Self::None => "None",
            Self::CredsFile(_) => "CredsFile",
            Self::NkeyFile(_) => "NkeyFile",
            Self::Token(_) => "Token",
            Self::UserPassword(..) => "UserPassword",
        })
    }
}

/// `type: nats`.
#[derive(Clone, Debug)]
pub struct NatsSpec {
    /// The servers (`url`: one, or several separated by commas).
    pub urls: Vec<String>,
    /// Where each message is published.
    pub subject: SubjectTemplate,
    /// The stream that must take the subject (checked when connecting).
    pub stream: Option<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// What is published: the bytes (`hl7`) or JSON.
    pub format: Format,
    /// How long to wait for the stream's acknowledgement.
    pub timeout: Duration,
    /// TLS files (`tls_*` keys), when set.
    pub tls: Option<Arc<crate::tls::TlsClient>>,
    /// `EGRESS_ALLOW`, when set: every server must be allowed.
    pub egress: Option<Arc<super::egress::EgressAllow>>,
}

impl NatsSpec {
    /// Read a NATS connector's keys; `None` when a problem was recorded.
    pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<Self> {
        let problems_before = reader.problems.len();
        reader.require("url", "for type nats");
        reader.require("subject", "for type nats");
        let urls: Vec<String> = reader
            .text("url")
            .unwrap_or_default()
            .split(',')
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty())
            .collect();
        for url in &urls {
            if url.contains('@') {
                // Not echoed: it holds a secret.
                reader.problem(
                    "url",
                    "a server URL with credentials is refused: use `user` and `password`, `token`, `creds_file` or `nkey_file`",
                );
            } else if server_destination(url).is_none() {
                reader.problem(
                    "url",
                    format!("{url:?} is not a NATS server address (nats://host:4222, tls://host:4222 or host:port)"),
                );
            }
        }
        let subject = match reader
            .raw_text("subject")
            .map(|text| SubjectTemplate::parse(&text))
        {
            Some(Ok(subject)) => Some(subject),
            Some(Err(problem)) => {
                reader.problem("subject", problem);
                None
            }
            None => None,
        };
        let stream = reader.text("stream");
        if let Some(stream) = &stream
            && (stream.is_empty()
                || stream.contains(['.', '*', '>', '/', '\\'])
                || stream.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            reader.problem(
                "stream",
                format!("{stream:?} is not a stream name (no '.', '*', '>', '/', '\\' or spaces)"),
            );
        }
        let auth = read_auth(reader);
        let format = Format::read(reader, &Format::ALL);
        let timeout = reader.duration("timeout", Duration::from_secs(10));
        // A tls:// server without `tls_*` keys: TLS checked against the system's CAs.
        let tls_url = urls.iter().any(|url| url.starts_with("tls://"));
        let files = reader
            .tls_files()
            .or_else(|| tls_url.then(super::settings::TlsFiles::default));
        let tls = reader.tls_client(files.as_ref(), None);
        let subject = subject?;
        (reader.problems.len() == problems_before).then_some(Self {
            urls,
            subject,
            stream,
            auth,
            format,
            timeout,
            tls,
            egress: None,
        })
    }

    /// Every `host:port` it connects to.
    pub fn destinations(&self) -> Option<Vec<(String, u16)>> {
        self.urls
            .iter()
            .map(|url| server_destination(url))
            .collect()
    }
}

/// The credentials keys: at most one kind.
fn read_auth(reader: &mut super::settings::Reader<'_, '_>) -> NatsAuth {
    let creds = reader.text("creds_file");
    let nkey = reader.text("nkey_file");
    let token = reader.text("token");
    let user = reader.text("user");
    let password = reader.text("password");
    let kinds = [
        creds.is_some(),
        nkey.is_some(),
        token.is_some(),
        user.is_some() || password.is_some(),
    ]
    .iter()
    .filter(|set| **set)
    .count();
    if kinds > 1 {
        reader.problem(
            "creds_file",
            "set one of `creds_file`, `nkey_file`, `token` or `user` with `password`",
        );
        return NatsAuth::None;
    }
    for (key, path) in [("creds_file", &creds), ("nkey_file", &nkey)] {
        if let Some(path) = path
            && let Err(error) = std::fs::metadata(path)
        {
            reader.problem(key, format!("cannot read {path}: {error}"));
        }
    }
    match (creds, nkey, token, user, password) {
        (Some(path), ..) => NatsAuth::CredsFile(PathBuf::from(path)),
        (_, Some(path), ..) => NatsAuth::NkeyFile(PathBuf::from(path)),
        (_, _, Some(token), ..) => NatsAuth::Token(token),
        (_, _, _, Some(user), Some(password)) => NatsAuth::UserPassword(user, password),
        (_, _, _, Some(_), None) => {
            reader.problem("password", "`user` needs `password`");
            NatsAuth::None
        }
        (_, _, _, None, Some(_)) => {
            reader.problem("user", "`password` needs `user`");
            NatsAuth::None
        }
        _ => NatsAuth::None,
    }
}

/// `host` and `port` of a server URL (`nats://`, `tls://` or none; port 4222 by default).
pub fn server_destination(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .unwrap_or(url);
    // Credentials in the URL are refused: they would show in logs and `check`.
    if rest.contains('@') || rest.contains('/') {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, port.parse().ok()?),
        _ => (rest, 4222),
    };
    let host = host.trim_matches(['[', ']']);
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// A subject such as `hl7.{msg_type}.{trigger}`: the file output's placeholders (never
/// patient data), each value reduced to letters, digits, `-` and `_`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    parts: Vec<SubjectPart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SubjectPart {
    Literal(String),
    Placeholder(Placeholder),
}

impl SubjectTemplate {
    /// Parse and check a subject template: known placeholders, no wildcards or spaces, no
    /// empty token.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("`{{` without `}}` in {template:?}"))?;
                parts.push(SubjectPart::Placeholder(placeholder(&after[..end])?));
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                if let Some(bad) = literal
                    .chars()
                    .find(|c| c.is_whitespace() || matches!(c, '*' | '>' | '}'))
                {
                    return Err(format!(
                        "{template:?} holds {bad:?}: a subject to publish to has no spaces and no wildcards"
                    ));
                }
                parts.push(SubjectPart::Literal(literal.to_owned()));
                rest = &rest[end..];
            }
        }
        let shape: String = parts
            .iter()
            .map(|part| match part {
                SubjectPart::Literal(text) => text.as_str(),
                _ => "x",
            })
            .collect();
        if shape.is_empty() || shape.split('.').any(str::is_empty) {
            return Err(format!(
                "{template:?} has an empty token: no leading, trailing or double '.'"
            ));
        }
        Ok(Self { parts })
    }

    /// The subject for a message.
    pub fn render(&self, envelope: &Envelope) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                SubjectPart::Literal(text) => out.push_str(text),
                SubjectPart::Placeholder(Placeholder::Received(format)) => {
                    out.push_str(&token(&received(envelope, format)));
                }
                SubjectPart::Placeholder(Placeholder::Field(field)) => {
                    out.push_str(&token(&field.value(envelope)));
                }
            }
        }
        out
    }
}

/// A header value as written, without control characters (each becomes `_`), at most 256
/// characters.
fn header_value(value: &str) -> String {
    value
        .chars()
        .take(256)
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

/// A value as one subject token: letters, digits, `-` and `_` (anything else `_`), at most
/// 64 characters, never empty.
fn token(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// Most messages published at once (one write; their acknowledgements come back together).
/// The worker reads 64 entries ahead, so more would not be used.
pub const BATCH: usize = 64;

/// A connection idle longer than this is checked with a `PING` before it is used again.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// JetStream's error code for a message larger than the stream takes.
const STREAM_MESSAGE_EXCEEDS_MAXIMUM: u64 = 10054;
/// JetStream's error code for a stream that is not there.
const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream's error code for a subject taken by another stream than `Nats-Expected-Stream`.
const STREAM_NOT_MATCH: u64 = 10060;

/// Publishes to JetStream over one connection of its own ([`wire::Connection`]); connects
/// on first use and again after a failure.
#[derive(Debug)]
pub struct NatsOutput {
    spec: NatsSpec,
    connection: Option<wire::Connection>,
}

/// One message, ready to publish.
struct Prepared {
    subject: String,
    headers: Vec<(&'static str, String)>,
    payload: bytes::Bytes,
}

/// What JetStream answers to a publish (the fields used).
#[derive(Debug, serde::Deserialize)]
struct Acknowledgement {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    error: Option<ApiError>,
}

/// A JetStream API error.
#[derive(Debug, serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl NatsOutput {
    /// An output for `spec`; connects on first use.
    pub fn new(spec: NatsSpec) -> Self {
        Self {
            spec,
            connection: None,
        }
    }

    /// Connect to the first server that answers, and check the stream when one is named.
    async fn connect(&self) -> Result<wire::Connection, DeliveryError> {
        let spec = &self.spec;
        let mut last = None;
        // Each connection starts at a random server (gateways spread over a cluster) and
        // tries the others in turn.
        let mut random = [0u8; 2];
        let start = match getrandom::fill(&mut random) {
            Ok(()) => usize::from(u16::from_le_bytes(random)) % spec.urls.len().max(1),
            Err(_) => 0,
        };
        for url in spec.urls.iter().cycle().skip(start).take(spec.urls.len()) {
            let Some((host, port)) = server_destination(url) else {
                return Err(DeliveryError::permanent(format!(
                    "{url:?} is not a NATS server address"
                )));
            };
            let resolved = match &spec.egress {
                Some(allow) => match allow.resolve(&host, port).await {
                    Ok(addresses) => Some(addresses),
                    Err(error) => {
                        // Another server may resolve (a pod's name can be gone for a while).
                        last = Some(error);
                        continue;
                    }
                },
                None => None,
            };
            let target = wire::Target {
                host: &host,
                port,
                resolved,
                tls: spec.tls.as_deref(),
                auth: &spec.auth,
                timeout: CONNECT_TIMEOUT,
            };
            match wire::Connection::open(target).await {
                Ok(connection) => return self.check_stream(connection).await,
                Err(error) => last = Some(error),
            }
        }
        Err(DeliveryError::transient(
            last.unwrap_or_else(|| "no server is configured".to_owned()),
        ))
    }

    /// With `stream` set: ask JetStream for it, and name it and the fix when it is not
    /// there.
    async fn check_stream(
        &self,
        mut connection: wire::Connection,
    ) -> Result<wire::Connection, DeliveryError> {
        let Some(stream) = &self.spec.stream else {
            return Ok(connection);
        };
        let subject = format!("$JS.API.STREAM.INFO.{stream}");
        let request = wire::Outgoing {
            subject: &subject,
            headers: &[],
            payload: b"",
        };
        let (mut answers, _) = connection.publish(&[request], self.spec.timeout).await;
        let missing = |why: &str| {
            DeliveryError::transient(format!(
                "stream {stream} is not there ({why}): create it (nats stream add {stream} --subjects ...) or correct `stream`"
            ))
        };
        let answer = match answers.pop() {
            Some(Ok(answer)) => answer,
            Some(Err(wire::Unanswered::Lost(why) | wire::Unanswered::Refused(why))) => {
                return Err(missing(&why));
            }
            None => return Err(missing("no answer")),
        };
        if answer.status == Some(503) {
            return Err(missing("JetStream is not enabled on the server"));
        }
        match serde_json::from_slice::<Acknowledgement>(&answer.payload) {
            Ok(Acknowledgement {
                error: Some(error), ..
            }) => Err(missing(&error.description)),
            Ok(_) => Ok(connection),
            Err(_) => Err(missing("JetStream's answer does not read")),
        }
    }

    /// The message as published: subject, headers, body.
    fn prepare(&self, envelope: &Envelope) -> Result<Prepared, DeliveryError> {
        let payload = self.spec.format.render(envelope)?;
        let header = &envelope.record.header;
        let mut headers = vec![
            ("Nats-Msg-Id", super::http::idempotency_key(envelope)),
            ("Mfoundry-Message-Id", envelope.message_id.to_string()),
            ("Mfoundry-Entry", envelope.seq.to_string()),
            ("Mfoundry-Type", header_value(&header.msg_type)),
            ("Mfoundry-Trigger", header_value(&header.trigger)),
            ("Mfoundry-Control-Id", header_value(&header.control_id)),
            ("Mfoundry-Source", format!("{:016x}", envelope.instance_id)),
        ];
        if let Some(stream) = &self.spec.stream {
            // Taken by another stream, it is refused rather than counted as delivered.
            headers.push(("Nats-Expected-Stream", stream.clone()));
        }
        Ok(Prepared {
            subject: self.spec.subject.render(envelope),
            headers,
            payload,
        })
    }

    /// What JetStream's answer means. Permanent (the dead-letter queue): larger than the
    /// stream's largest message, and no stream for the subject when `stream` is not set.
    /// Without `stream`, "no responders" cannot be told from JetStream being unavailable;
    /// with it (the stream was there when connecting) it means the stream is unavailable
    /// for now (a leader election, a restart) and is retried. Anything else is retried.
    fn judge(&self, subject: &str, answer: &wire::Answer) -> Result<(), DeliveryError> {
        if answer.status == Some(503) {
            return Err(match &self.spec.stream {
                Some(stream) => DeliveryError::transient(format!(
                    "stream {stream} did not answer (no responders): JetStream is restarting or electing a leader"
                )),
                None => DeliveryError::permanent(format!(
                    "no stream takes subject {subject} (no responders): add it to a stream's subjects, or correct `subject`"
                )),
            });
        }
        if let Some(status) = answer.status.filter(|status| *status >= 300) {
            return Err(DeliveryError::transient(format!(
                "the server answered status {status}"
            )));
        }
        match serde_json::from_slice::<Acknowledgement>(&answer.payload) {
            Ok(Acknowledgement {
                error: Some(error), ..
            }) => {
                let text = format!(
                    "the stream refused the message: {} (error {})",
                    error.description, error.err_code
                );
                let permanent = error.err_code == STREAM_MESSAGE_EXCEEDS_MAXIMUM
                    || error.err_code == STREAM_NOT_MATCH
                    || (error.err_code == STREAM_NOT_FOUND && self.spec.stream.is_none());
                Err(if permanent {
                    DeliveryError::permanent(text)
                } else {
                    DeliveryError::transient(text)
                })
            }
            Ok(Acknowledgement {
                stream: Some(_), ..
            }) => Ok(()),
            _ => Err(DeliveryError::transient(
                "the answer is not a JetStream acknowledgement (is the subject taken by a stream?)",
            )),
        }
    }

    /// The connection, opened when there is none, and checked when it has been idle.
    async fn connection(&mut self) -> Result<&mut wire::Connection, DeliveryError> {
        if let Some(connection) = &mut self.connection
            && connection.idle() > IDLE_CHECK
            && connection
                .ping(self.spec.timeout.min(Duration::from_secs(5)))
                .await
                .is_err()
        {
            self.connection = None;
        }
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        Ok(self.connection.insert(connection))
    }

    /// Publish `envelopes` at once and wait for their acknowledgements: one `Ok` per
    /// message taken, from the first, ending at the first failure (see
    /// [`crate::delivery::Deliver::deliver_batch`]). A failure other than a refusal of the
    /// message itself drops the connection: nothing goes out on it afterwards.
    pub async fn deliver_batch(
        &mut self,
        envelopes: &[Envelope],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut prepared = Vec::with_capacity(envelopes.len());
        let mut refused = None;
        for envelope in envelopes {
            match self.prepare(envelope) {
                Ok(message) => prepared.push(message),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        if prepared.is_empty()
            && let Some(error) = refused
        {
            // The first message cannot be published at all: no connection needed to say so.
            return vec![Err(error)];
        }
        let timeout = self.spec.timeout;
        let connection = match self.connection().await {
            Ok(connection) => connection,
            Err(error) => return vec![Err(error)],
        };
        let max = connection.max_payload();
        let mut outgoing = Vec::with_capacity(prepared.len());
        for message in &prepared {
            let message = wire::Outgoing {
                subject: &message.subject,
                headers: &message.headers,
                payload: &message.payload,
            };
            let size = message.size();
            if size > max {
                refused = Some(DeliveryError::permanent(format!(
                    "the message is {size} bytes with its headers; the server takes at most {max} (its max_payload)"
                )));
                break;
            }
            outgoing.push(message);
        }
        let (answers, broken) = if outgoing.is_empty() {
            (Vec::new(), false)
        } else {
            connection.publish(&outgoing, timeout).await
        };
        let mut outcomes = Vec::with_capacity(answers.len() + 1);
        let mut failed_at = None;
        for (index, (message, answer)) in outgoing.iter().zip(&answers).enumerate() {
            let outcome = match answer {
                Ok(answer) => self.judge(message.subject, answer),
                Err(wire::Unanswered::Lost(reason)) => Err(DeliveryError::transient(format!(
                    "publish failed: {reason}"
                ))),
                Err(wire::Unanswered::Refused(reason)) => Err(DeliveryError::permanent(format!(
                    "the server refused the publish ({reason}): allow the gateway's NATS user to publish to {}, or correct `subject`",
                    message.subject
                ))),
            };
            if failed_at.is_none() {
                let failed = outcome.is_err();
                outcomes.push(outcome);
                if failed {
                    failed_at = Some(index);
                }
            } else if outcome.is_ok() {
                // Taken after an earlier one of the same write was not: the stream holds
                // it ahead of that one's resend. Only a refusal of one message while the
                // stream takes the next (a leader election in between) does this; a lost
                // connection never does.
                tracing::warn!(
                    output = "nats",
                    position = index,
                    "the stream took a message after refusing an earlier one; they may be stored out of order"
                );
            }
        }
        let transient = outcomes
            .last()
            .is_some_and(|outcome| matches!(outcome, Err(DeliveryError::Transient { .. })));
        if broken || transient {
            self.connection = None;
        }
        if failed_at.is_none()
            && let Some(error) = refused
        {
            outcomes.push(Err(error));
        }
        outcomes
    }

    /// Publish one message and wait for the stream's acknowledgement.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        self.deliver_batch(std::slice::from_ref(envelope))
            .await
            .pop()
            .unwrap_or_else(|| Err(DeliveryError::transient("nothing was published")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_when_loaded() {
        assert!(SubjectTemplate::parse("hl7.{msg_type}.{trigger}").is_ok());
        assert!(SubjectTemplate::parse("hl7.adt").is_ok());
        for bad in [
            "hl7.*",
            "hl7.>",
            "hl7 adt",
            ".hl7",
            "hl7.",
            "hl7..adt",
            "hl7.{patient}",
            "{received:%Q}",
            "hl7.{msg_type",
            "",
        ] {
            assert!(
                SubjectTemplate::parse(bad).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn values_become_one_token() {
        assert_eq!(token("A.B C>*"), "A_B_C__");
        assert_eq!(token(""), "_");
    }

    #[test]
    fn headers_keep_the_value_without_control_characters() {
        assert_eq!(header_value("CTRL.1-2 x"), "CTRL.1-2 x");
        assert_eq!(header_value("a\r\nInjected: 1"), "a__Injected: 1");
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let shown = format!(
            "{:?} {:?}",
            NatsAuth::Token("s3cret".to_owned()),
            NatsAuth::UserPassword("u".to_owned(), "pw-s3cret".to_owned())
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            server_destination("nats://127.0.0.1:4222"),
            Some(("127.0.0.1".to_owned(), 4222))
        );
        assert_eq!(
            server_destination("tls://nats.example.org"),
            Some(("nats.example.org".to_owned(), 4222))
        );
        assert_eq!(server_destination("nats://user:secret@host:4222"), None);
    }
}
