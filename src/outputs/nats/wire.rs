//! The NATS client protocol, as much as publishing to JetStream takes: the server's `INFO`,
//! TLS, `CONNECT` with credentials, `PING`/`PONG`, one reply subscription, `HPUB` with
//! headers, and the replies (`MSG`/`HMSG`).
//!
//! A [`Connection`] is never re-established behind its user. When it fails, every publish
//! still waiting for its answer fails with it, and nothing written afterwards goes out on
//! another connection. So what the server took is a prefix of what was written (TCP keeps
//! the order), which is what lets the output keep a window of publishes in flight without
//! storing them out of order. (A client that reconnects by itself resends its queue on the
//! new connection while the bytes lost with the old one are gone: later messages would be
//! stored before earlier ones.)

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::NatsAuth;
use crate::tls::ClientStream;

/// The longest protocol line read (an `INFO` with many cluster URLs is a few KiB).
const LINE_MAX: usize = 64 * 1024;
/// The largest message taken from the server (its own `max_payload` ceiling).
const PAYLOAD_MAX: usize = 64 * 1024 * 1024;
/// The one subscription: every reply comes to it.
const REPLY_SID: &str = "1";

/// What the server says about itself when a client connects (the fields used).
#[derive(Debug, Default, Deserialize)]
struct ServerInfo {
    #[serde(default)]
    max_payload: usize,
    #[serde(default)]
    headers: bool,
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    nonce: Option<String>,
}

/// Where and how to connect.
#[derive(Debug)]
pub(super) struct Target<'a> {
    /// The host, for errors and the TLS name.
    pub host: &'a str,
    /// The port.
    pub port: u16,
    /// The addresses to connect to, when already resolved (and checked by `EGRESS_ALLOW`).
    pub resolved: Option<Vec<SocketAddr>>,
    /// TLS, when the connection must use it.
    pub tls: Option<&'a crate::tls::TlsClient>,
    /// The credentials.
    pub auth: &'a NatsAuth,
    /// For the TCP connection, the handshake and the server's first answer together.
    pub timeout: Duration,
}

/// One message to publish.
pub(super) struct Outgoing<'a> {
    /// The subject.
    pub subject: &'a str,
    /// Headers (names and values free of control characters).
    pub headers: &'a [(&'static str, String)],
    /// The body.
    pub payload: &'a [u8],
}

impl std::fmt::Debug for Outgoing<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the body: it is patient data.
        formatter
            .debug_struct("Outgoing")
            .field("subject", &self.subject)
            .field("size", &self.payload.len())
            .finish()
    }
}

impl Outgoing<'_> {
    /// The bytes the server counts against its `max_payload`: headers and body.
    pub fn size(&self) -> usize {
        header_block(self.headers).len() + self.payload.len()
    }
}

/// The answer to one publish (or request).
#[derive(Debug)]
pub(super) struct Answer {
    /// The status in the answer's header line, when it has one (503: no responders).
    pub status: Option<u16>,
    /// The body (JetStream's JSON acknowledgement or error).
    pub payload: Bytes,
}

/// Why a publish has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unanswered {
    /// The connection failed or the time ran out: the server may or may not have taken it.
    Lost(String),
    /// The server refused it (a permissions violation) and keeps the connection: it was not
    /// taken.
    Refused(String),
}

/// The `max_payload` assumed when a server does not say (its default).
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A server operation.
#[derive(Debug, PartialEq)]
enum Op {
    Info(Bytes),
    Ping,
    Pong,
    Ok,
    Err(String),
    Msg {
        subject: String,
        headers: Option<Bytes>,
        payload: Bytes,
    },
}

/// One connection to a NATS server, with a reply subscription.
#[derive(Debug)]
pub(super) struct Connection {
    stream: ClientStream,
    buffer: BytesMut,
    /// `_INBOX.<random>.`: replies come to this prefix followed by a number.
    inbox: String,
    /// The number of the next reply subject.
    next: u64,
    max_payload: usize,
    used: tokio::time::Instant,
}

impl Connection {
    /// Connect, upgrade to TLS when asked or required, authenticate and subscribe to the
    /// replies, all within `target.timeout`.
    pub async fn open(target: Target<'_>) -> Result<Self, String> {
        let timeout = target.timeout;
        let (host, port) = (target.host, target.port);
        tokio::time::timeout(timeout, Self::handshake(target))
            .await
            .map_err(|_| format!("{host}:{port} did not answer within {timeout:?}"))?
    }

    async fn handshake(target: Target<'_>) -> Result<Self, String> {
        let (host, port) = (target.host, target.port);
        let tcp = match &target.resolved {
            Some(addresses) => TcpStream::connect(&addresses[..]).await,
            None => TcpStream::connect((host, port)).await,
        }
        .map_err(|error| format!("cannot connect to {host}:{port}: {error}"))?;
        tcp.set_nodelay(true).ok();
        let mut connection = Self {
            stream: ClientStream::Plain(tcp),
            buffer: BytesMut::with_capacity(8 * 1024),
            inbox: inbox(),
            next: 0,
            max_payload: 0,
            used: tokio::time::Instant::now(),
        };
        let info = match connection.next_op().await? {
            Op::Info(json) => serde_json::from_slice::<ServerInfo>(&json).map_err(|error| {
                format!("{host}:{port} sent an INFO that does not read: {error}")
            })?,
            _ => return Err(format!("{host}:{port} is not a NATS server (no INFO)")),
        };
        if !info.headers {
            return Err(format!(
                "{host}:{port} does not take message headers: NATS Server 2.2 or later is needed"
            ));
        }
        connection.max_payload = match info.max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            max => max,
        };
        let tls = match (target.tls, info.tls_required) {
            (Some(tls), _) => {
                if !connection.buffer.is_empty() {
                    return Err(format!("{host}:{port} sent data before the TLS handshake"));
                }
                let ClientStream::Plain(tcp) = connection.stream else {
                    return Err("TLS twice".to_owned());
                };
                let secured = tls
                    .connect_named(Some(host), tcp)
                    .await
                    .map_err(|error| format!("TLS handshake with {host}:{port} failed: {error}"))?;
                connection.stream = ClientStream::Tls(Box::new(secured));
                true
            }
            (None, true) => {
                return Err(format!(
                    "{host}:{port} requires TLS: use a tls:// URL or set `tls_ca_file`"
                ));
            }
            (None, false) => false,
        };
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": tls,
            "name": "mfoundry",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": false,
            "headers": true,
            "no_responders": true,
        });
        if let Some(fields) = connect.as_object_mut() {
            fields.extend(credentials(target.auth, info.nonce.as_deref())?);
        }
        // The subscription goes before the PING, so the PONG confirms it too.
        let mut hello = BytesMut::new();
        hello.put_slice(b"CONNECT ");
        hello.put_slice(connect.to_string().as_bytes());
        hello
            .put_slice(format!("\r\nSUB {}* {REPLY_SID}\r\nPING\r\n", connection.inbox).as_bytes());
        connection.write(&hello).await?;
        loop {
            match connection.next_op().await? {
                Op::Pong => break,
                Op::Ping => connection.write(b"PONG\r\n").await?,
                Op::Err(text) => {
                    return Err(format!("{host}:{port} refused the connection: {text}"));
                }
                _ => {}
            }
        }
        Ok(connection)
    }

    /// The most bytes (headers and body) one message may have.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// How long since the connection last carried anything.
    pub fn idle(&self) -> Duration {
        self.used.elapsed()
    }

    /// A `PING` answered by a `PONG` within `timeout`: the connection still works.
    pub async fn ping(&mut self, timeout: Duration) -> Result<(), String> {
        let exchange = async {
            self.write(b"PING\r\n").await?;
            loop {
                match self.next_op().await? {
                    Op::Pong => return Ok(()),
                    Op::Ping => self.write(b"PONG\r\n").await?,
                    Op::Err(text) => return Err(format!("the server reported: {text}")),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no PONG within {timeout:?}"))?
    }

    /// Publish `messages` in one write, each with its own reply subject, then wait up to
    /// `timeout` for their answers. Returns one answer per message (or why there is none)
    /// and whether the connection failed; a failed connection must not be used again.
    pub async fn publish(
        &mut self,
        messages: &[Outgoing<'_>],
        timeout: Duration,
    ) -> (Vec<Result<Answer, Unanswered>>, bool) {
        let first = self.next;
        let count = messages.len() as u64;
        self.next += count;
        let mut out = BytesMut::new();
        for (number, message) in (first..).zip(messages) {
            encode(&mut out, message, &format!("{}{number}", self.inbox));
        }
        let mut answers: Vec<Option<Result<Answer, Unanswered>>> =
            messages.iter().map(|_| None).collect();
        let mut waiting = messages.len();
        // Permissions violations: the server drops that publish, says so, and goes on.
        let mut refusals: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failure = match tokio::time::timeout_at(deadline, self.write(&out)).await {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error),
            Err(_) => Some(format!("could not write within {timeout:?}")),
        };
        while waiting > refusals.len() && failure.is_none() {
            let op = match tokio::time::timeout_at(deadline, self.next_op()).await {
                Err(_) => {
                    failure = Some(format!("no acknowledgement within {timeout:?}"));
                    break;
                }
                Ok(Err(error)) => {
                    failure = Some(error);
                    break;
                }
                Ok(Ok(op)) => op,
            };
            match op {
                Op::Ping => {
                    match tokio::time::timeout_at(deadline, self.write(b"PONG\r\n")).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => failure = Some(error),
                        Err(_) => failure = Some(format!("could not write within {timeout:?}")),
                    }
                }
                Op::Err(text)
                    if text
                        .to_ascii_lowercase()
                        .starts_with("permissions violation") =>
                {
                    refusals.push(text);
                }
                Op::Err(text) => failure = Some(format!("the server reported: {text}")),
                Op::Msg {
                    subject,
                    headers,
                    payload,
                } => {
                    let number = subject
                        .strip_prefix(&self.inbox)
                        .and_then(|number| number.parse::<u64>().ok());
                    // An answer to an earlier publish (after its time ran out) is not one
                    // of these.
                    let Some(index) = number
                        .and_then(|number| number.checked_sub(first))
                        .filter(|index| *index < count)
                        .and_then(|index| usize::try_from(index).ok())
                    else {
                        continue;
                    };
                    if answers[index].is_none() {
                        answers[index] = Some(Ok(Answer {
                            status: headers.as_deref().and_then(status),
                            payload,
                        }));
                        waiting -= 1;
                    }
                }
                Op::Info(_) | Op::Pong | Op::Ok => {}
            }
        }
        let unanswered = |index: usize| match &failure {
            Some(reason) => Unanswered::Lost(reason.clone()),
            // Every publish left without an answer was refused; each refusal names its
            // subject, so each goes to the publishes with that subject.
            None => {
                let subject = messages[index].subject;
                let text = refusals
                    .iter()
                    .find(|text| text.contains(&format!("\"{subject}\"")))
                    .or(refusals.first())
                    .cloned()
                    .unwrap_or_default();
                Unanswered::Refused(text)
            }
        };
        let answers = answers
            .into_iter()
            .enumerate()
            .map(|(index, answer)| answer.unwrap_or_else(|| Err(unanswered(index))))
            .collect();
        (answers, failure.is_some())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.used = tokio::time::Instant::now();
        self.stream
            .write_all(bytes)
            .await
            .map_err(|error| format!("the connection failed: {error}"))?;
        self.stream
            .flush()
            .await
            .map_err(|error| format!("the connection failed: {error}"))
    }

    /// The next operation from the server.
    async fn next_op(&mut self) -> Result<Op, String> {
        loop {
            if let Some(op) = parse(&mut self.buffer)? {
                self.used = tokio::time::Instant::now();
                return Ok(op);
            }
            self.buffer.reserve(8 * 1024);
            let read = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(|error| format!("the connection failed: {error}"))?;
            if read == 0 {
                return Err("the server closed the connection".to_owned());
            }
        }
    }
}

/// A reply prefix no other client uses.
fn inbox() -> String {
    let mut random = [0u8; 12];
    if getrandom::fill(&mut random).is_err() {
        // Not secret: only unique. The clock will do.
        random[..8].copy_from_slice(&crate::outbox::now_micros().to_le_bytes());
    }
    let hex: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("_INBOX.{hex}.")
}

/// The `CONNECT` fields for `auth`; `nonce` is what the server asks NKey users to sign.
fn credentials(
    auth: &NatsAuth,
    nonce: Option<&str>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut fields = serde_json::Map::new();
    let sign = |seed: &str, what: &str| -> Result<(String, String), String> {
        let pair = nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|_| format!("{what} does not hold a usable NKey seed"))?;
        let nonce = nonce.ok_or_else(|| {
            "the server did not ask for a signature (no nonce): it does not take NKeys".to_owned()
        })?;
        let signature = pair
            .sign(nonce.as_bytes())
            .map_err(|_| format!("signing with the seed in {what} failed"))?;
        Ok((
            pair.public_key(),
            data_encoding::BASE64URL_NOPAD.encode(&signature),
        ))
    };
    match auth {
        NatsAuth::None => {}
        NatsAuth::Token(token) => {
            fields.insert("auth_token".to_owned(), token.clone().into());
        }
        NatsAuth::UserPassword(user, password) => {
            fields.insert("user".to_owned(), user.clone().into());
            fields.insert("pass".to_owned(), password.clone().into());
        }
        NatsAuth::NkeyFile(path) => {
            let what = format!("nkey_file {}", path.display());
            let seed = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read {what}: {error}"))?;
            let (public, signature) = sign(&seed, &what)?;
            fields.insert("nkey".to_owned(), public.into());
            fields.insert("sig".to_owned(), signature.into());
        }
        NatsAuth::CredsFile(path) => {
            let what = format!("creds_file {}", path.display());
            let text = std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read {what}: {error}"))?;
            let (jwt, seed) = creds(&text)
                .ok_or_else(|| format!("{what} does not hold a user JWT and an NKey seed"))?;
            let (_, signature) = sign(seed, &what)?;
            fields.insert("jwt".to_owned(), jwt.to_owned().into());
            fields.insert("sig".to_owned(), signature.into());
        }
    }
    Ok(fields)
}

/// The user JWT and the seed in a `.creds` file: each is the first line after its
/// `-----BEGIN … JWT-----` or `-----BEGIN … SEED-----` line.
fn creds(text: &str) -> Option<(&str, &str)> {
    let after = |marker: &str| {
        let mut lines = text.lines().map(str::trim);
        lines.find(|line| line.starts_with("-----BEGIN") && line.contains(marker))?;
        lines.find(|line| !line.is_empty())
    };
    Some((after("JWT")?, after("SEED")?))
}

/// `NATS/1.0`, the headers, and the blank line that ends them.
fn header_block(headers: &[(&'static str, String)]) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, value) in headers {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    block
}

/// `HPUB subject reply header-size total-size` (or `PUB` without headers) and the bytes.
fn encode(out: &mut BytesMut, message: &Outgoing<'_>, reply: &str) {
    if message.headers.is_empty() {
        out.put_slice(
            format!(
                "PUB {} {reply} {}\r\n",
                message.subject,
                message.payload.len()
            )
            .as_bytes(),
        );
    } else {
        let block = header_block(message.headers);
        out.put_slice(
            format!(
                "HPUB {} {reply} {} {}\r\n",
                message.subject,
                block.len(),
                block.len() + message.payload.len()
            )
            .as_bytes(),
        );
        out.put_slice(&block);
    }
    out.put_slice(message.payload);
    out.put_slice(b"\r\n");
}

/// The status code in a header block's first line (`NATS/1.0 503`), when there is one.
fn status(headers: &[u8]) -> Option<u16> {
    let line = headers.split(|byte| *byte == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    text.strip_prefix("NATS/1.0")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Take one whole operation off the front of `buffer`; `None` until one is complete.
fn parse(buffer: &mut BytesMut) -> Result<Option<Op>, String> {
    let Some(end) = memchr::memmem::find(buffer, b"\r\n") else {
        if buffer.len() > LINE_MAX {
            return Err("the server sent a line longer than 64 KiB".to_owned());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buffer[..end])
        .map_err(|_| "the server sent a line that is not UTF-8".to_owned())?
        .to_owned();
    let (verb, rest) = match line.split_once([' ', '\t']) {
        Some((verb, rest)) => (verb, rest.trim()),
        None => (line.as_str(), ""),
    };
    let simple = |op| Ok(Some(op));
    let verb = verb.to_ascii_uppercase();
    let op = match verb.as_str() {
        "PING" => simple(Op::Ping),
        "PONG" => simple(Op::Pong),
        "+OK" => simple(Op::Ok),
        "-ERR" => simple(Op::Err(rest.trim_matches('\'').to_owned())),
        "INFO" => simple(Op::Info(Bytes::copy_from_slice(rest.as_bytes()))),
        "MSG" | "HMSG" => {
            let args: Vec<&str> = rest.split_whitespace().collect();
            let numbers = if verb == "MSG" { 1 } else { 2 };
            if args.len() < 2 + numbers || args.len() > 3 + numbers {
                return Err(format!("the server sent a malformed {verb} line"));
            }
            let sizes: Vec<usize> = args[args.len() - numbers..]
                .iter()
                .map(|size| size.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("the server sent a malformed {verb} size"))?;
            let total = *sizes.last().unwrap_or(&0);
            let header_size = if numbers == 2 { sizes[0] } else { 0 };
            if total > PAYLOAD_MAX || header_size > total {
                return Err(format!("the server sent a {verb} of {total} bytes"));
            }
            if buffer.len() < end + 2 + total + 2 {
                return Ok(None);
            }
            let subject = args[0].to_owned();
            buffer.advance(end + 2);
            let mut body = buffer.split_to(total).freeze();
            if &buffer[..2] != b"\r\n" {
                return Err(format!(
                    "the server's {verb} does not end where its size says"
                ));
            }
            buffer.advance(2);
            let headers = (numbers == 2).then(|| body.split_to(header_size));
            return Ok(Some(Op::Msg {
                subject,
                headers,
                payload: body,
            }));
        }
        _ => Err(format!("the server sent an unknown operation {verb:?}")),
    };
    buffer.advance(end + 2);
    op
}

#[cfg(test)]
mod tests;
