//! `type: nats`: publish to NATS JetStream, the hand-off for scaling out. Each message is
//! published with `Nats-Msg-Id` set to the delivery's idempotency key (a resend after a
//! crash is dropped by the stream's duplicate window) and waits for the stream's
//! acknowledgement before it counts as delivered, and before the next one is published: a
//! window of outstanding publishes is not used, because a reconnect drops the client's
//! unsent buffer while later publishes still go out, which would store them out of order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};

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
            && (stream.is_empty() || stream.contains(['.', '*', '>', ' ', '/', '\\']))
        {
            reader.problem(
                "stream",
                format!("{stream:?} is not a stream name (no '.', '*', '>', '/', '\\' or spaces)"),
            );
        }
        let auth = read_auth(reader);
        let format = Format::read(reader, &Format::ALL);
        let timeout = reader.duration("timeout", Duration::from_secs(10));
        let files = reader.tls_files();
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

/// Publishes to JetStream; connects on first use and again after a failure.
#[derive(Debug)]
pub struct NatsOutput {
    spec: NatsSpec,
    context: Option<async_nats::jetstream::Context>,
}

impl NatsOutput {
    /// An output for `spec`; connects on first use.
    pub fn new(spec: NatsSpec) -> Self {
        Self {
            spec,
            context: None,
        }
    }

    async fn connect(&self) -> Result<async_nats::jetstream::Context, DeliveryError> {
        let spec = &self.spec;
        let mut servers = Vec::with_capacity(spec.urls.len());
        for url in &spec.urls {
            if let (Some(allow), Some((host, port))) = (&spec.egress, server_destination(url)) {
                allow
                    .resolve(&host, port)
                    .await
                    .map_err(DeliveryError::transient)?;
            }
            servers.push(url.parse::<async_nats::ServerAddr>().map_err(|error| {
                DeliveryError::permanent(format!("{url:?} is not a NATS server address: {error}"))
            })?);
        }
        // Only the servers configured (and checked by EGRESS_ALLOW), not those a cluster
        // advertises.
        let mut options = async_nats::ConnectOptions::new()
            .name("mfoundry")
            .connection_timeout(CONNECT_TIMEOUT)
            .ignore_discovered_servers();
        options = match &spec.auth {
            NatsAuth::None => options,
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::UserPassword(user, password) => {
                options.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::NkeyFile(path) => {
                let seed = std::fs::read_to_string(path).map_err(|error| {
                    DeliveryError::transient(format!(
                        "cannot read nkey_file {}: {error}",
                        path.display()
                    ))
                })?;
                options.nkey(seed.trim().to_owned())
            }
            NatsAuth::CredsFile(path) => options.credentials_file(path).await.map_err(|error| {
                DeliveryError::transient(format!(
                    "cannot read creds_file {}: {error}",
                    path.display()
                ))
            })?,
        };
        if let Some(tls) = &spec.tls {
            options = options
                .tls_client_config((*tls.config()).clone())
                .require_tls(true);
        }
        let client = tokio::time::timeout(CONNECT_TIMEOUT, options.connect(servers))
            .await
            .map_err(|_| {
                DeliveryError::transient(format!("could not connect within {CONNECT_TIMEOUT:?}"))
            })?
            .map_err(|error| DeliveryError::transient(format!("cannot connect: {error}")))?;
        let mut context = async_nats::jetstream::new(client);
        context.set_timeout(spec.timeout);
        if let Some(stream) = &spec.stream {
            context.get_stream(stream).await.map_err(|error| {
                DeliveryError::transient(format!(
                    "stream {stream} is not there ({error}): create it (nats stream add {stream} --subjects ...) or correct `stream`"
                ))
            })?;
        }
        Ok(context)
    }

    async fn context(&mut self) -> Result<async_nats::jetstream::Context, DeliveryError> {
        if let Some(context) = &self.context {
            return Ok(context.clone());
        }
        let context = self.connect().await?;
        self.context = Some(context.clone());
        Ok(context)
    }

    /// Send one message to the server; its acknowledgement comes later.
    async fn send(
        &mut self,
        context: &async_nats::jetstream::Context,
        envelope: &Envelope,
    ) -> Result<PublishAckFuture, DeliveryError> {
        let body = self.spec.format.render(envelope)?;
        let header = &envelope.record.header;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            super::http::idempotency_key(envelope).as_str(),
        );
        headers.insert(
            "Mfoundry-Message-Id",
            envelope.message_id.to_string().as_str(),
        );
        headers.insert("Mfoundry-Entry", envelope.seq.to_string().as_str());
        headers.insert("Mfoundry-Type", header_value(&header.msg_type).as_str());
        headers.insert("Mfoundry-Trigger", header_value(&header.trigger).as_str());
        headers.insert(
            "Mfoundry-Control-Id",
            header_value(&header.control_id).as_str(),
        );
        headers.insert(
            "Mfoundry-Source",
            format!("{:016x}", envelope.instance_id).as_str(),
        );
        let subject = self.spec.subject.render(envelope);
        match context.publish_with_headers(subject, headers, body).await {
            Ok(ack) => Ok(ack),
            Err(error) => Err(self.failed(&error)),
        }
    }

    /// What a failed publish means. Permanent (the dead-letter queue): larger than the
    /// server's `max_payload` or the stream's largest message, a broken expectation, and no
    /// stream for the subject when `stream` is not set. Without `stream`, "no responders"
    /// cannot be told from JetStream being unavailable; with it (the stream was there when
    /// connecting) it means the stream is unavailable for now (a leader election, a
    /// restart) and is retried. Anything else is retried, on a new connection.
    fn failed(&mut self, error: &async_nats::jetstream::context::PublishError) -> DeliveryError {
        let stream_code = std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
            .map(async_nats::jetstream::Error::error_code);
        let permanent = match error.kind() {
            PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence => true,
            PublishErrorKind::StreamNotFound => self.spec.stream.is_none(),
            PublishErrorKind::Other => {
                stream_code
                    == Some(async_nats::jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
            }
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => false,
        };
        if permanent {
            DeliveryError::permanent(format!("the stream refused the message: {error}"))
        } else {
            self.context = None;
            DeliveryError::transient(format!("publish failed: {error}"))
        }
    }

    /// Publish one message and wait for the stream's acknowledgement.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        let context = self.context().await?;
        let ack = self.send(&context, envelope).await?;
        match ack.await {
            Ok(_) => Ok(()),
            Err(error) => Err(self.failed(&error)),
        }
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
