//! `type: mllp`: forward each message over one kept-open MLLP connection and judge the ACK.
//!
//! AA/CA is delivered; AE/CE is transient; AR/CR is permanent unless `on_reject: retry`. The
//! ACK's MSA-2 must equal the sent MSH-10. Anything else (a mismatched MSA-2, garbage, a
//! closed socket, no ACK within `ack_timeout`) closes the connection before the retry, so a
//! late ACK can never be taken for the answer to the next message. Before a kept connection
//! is used again it is checked without waiting: one the peer closed while idle (or that holds
//! unsolicited bytes) is replaced by a new one instead of costing a failed attempt.

use std::time::Duration;

use bytes::Bytes;

use crate::delivery::{DeliveryError, Envelope};
use crate::hl7::Message;
use crate::mllp::{ClientError, MllpClient};

/// What an AR/CR answer from an MLLP peer means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectAction {
    /// The message goes to the dead-letter queue at once.
    DeadLetter,
    /// Treated like AE: retried with backoff.
    Retry,
}

/// `type: mllp`.
#[derive(Clone, Debug)]
pub struct MllpSpec {
    /// `host:port`.
    pub addr: String,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// How long to wait for the ACK.
    pub ack_timeout: Duration,
    /// What AR/CR means.
    pub on_reject: RejectAction,
    /// TLS, when on (files loaded and checked; reloaded when they change).
    pub tls: Option<std::sync::Arc<crate::tls::TlsClient>>,
    /// `EGRESS_ALLOW`, when set: the host is resolved through it before connecting.
    pub egress: Option<std::sync::Arc<super::egress::EgressAllow>>,
}

impl MllpSpec {
    /// `host` and `port` of [`Self::addr`].
    pub fn destination(&self) -> Option<(String, u16)> {
        let (host, port) = self.addr.rsplit_once(':')?;
        Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
    }
}

/// The keys an MLLP connector takes.
pub const KEYS: [&str; 11] = [
    "format",
    "host",
    "port",
    "connect_timeout",
    "ack_timeout",
    "on_reject",
    "tls",
    "tls_server_name",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

impl MllpSpec {
    /// Read an MLLP connector's keys; `None` when a problem was recorded.
    pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<Self> {
        let problems_before = reader.problems.len();
        // MLLP carries HL7 v2: `format: hl7` is accepted, anything else explained.
        super::format::Format::read(reader, &[super::format::Format::Hl7]);
        reader.require("host", "for type mllp (the peer's name or address)");
        let host = reader.text("host");
        let port = match reader.text("port").map(|port| port.trim().parse::<u16>()) {
            Some(Ok(port)) if port > 0 => port,
            Some(_) => {
                reader.problem("port", "`port` must be a number from 1 to 65535");
                0
            }
            None => {
                reader.require("port", "for type mllp (1-65535)");
                0
            }
        };
        let connect_timeout = reader.duration("connect_timeout", Duration::from_secs(10));
        let ack_timeout = reader.duration("ack_timeout", Duration::from_secs(30));
        let on_reject = match reader.raw_text("on_reject").as_deref() {
            None | Some("dead_letter") => RejectAction::DeadLetter,
            Some("retry") => RejectAction::Retry,
            Some(other) => {
                reader.problem(
                    "on_reject",
                    format!("`on_reject` is {other:?}; use dead_letter or retry"),
                );
                RejectAction::DeadLetter
            }
        };
        let host = host.unwrap_or_default();
        let (addr, tls) = reader.peer(&host, port);
        (reader.problems.len() == problems_before).then_some(Self {
            addr,
            connect_timeout,
            ack_timeout,
            on_reject,
            tls,
            egress: None,
        })
    }
}

/// Largest ACK frame accepted from a peer.
const MAX_ACK_SIZE: usize = 1 << 20;

/// An MLLP peer.
#[derive(Debug)]
pub struct MllpOutput {
    spec: MllpSpec,
    client: Option<MllpClient>,
}

impl MllpOutput {
    /// An output for `spec`; connects on first use.
    pub fn new(spec: MllpSpec) -> Self {
        Self { spec, client: None }
    }

    /// Send one message and judge its ACK.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        let result = self.exchange(&envelope.body).await;
        if matches!(result, Err(Failure::Reset(_))) {
            // Never reuse a connection whose state is unknown.
            self.client = None;
        }
        result.map_err(|failure| match failure {
            Failure::Reset(reason) => DeliveryError::transient(reason),
            Failure::Keep(reason, answer) => {
                DeliveryError::transient(reason).with_downstream(answer)
            }
            Failure::Rejected(reason, answer) => match self.spec.on_reject {
                RejectAction::DeadLetter => DeliveryError::permanent(reason),
                RejectAction::Retry => DeliveryError::transient(reason),
            }
            .with_downstream(answer),
        })
    }

    async fn exchange(&mut self, body: &Bytes) -> Result<(), Failure> {
        let sent_control_id = Message::parse(body.clone())
            .map(|message| message.header_field(10).to_vec())
            .unwrap_or_default();
        if self
            .client
            .as_mut()
            .is_some_and(|client| !client.is_reusable())
        {
            // Closed by the peer while idle (or it sent something unasked): a new connection
            // costs nothing, a failed attempt would cost a backoff.
            tracing::debug!(addr = %self.spec.addr, "kept MLLP connection is closed or dirty; reconnecting");
            self.client = None;
        }
        if self.client.is_none() {
            let resolved = match (&self.spec.egress, self.spec.destination()) {
                (Some(allow), Some((host, port))) => {
                    Some(allow.resolve(&host, port).await.map_err(Failure::Reset)?)
                }
                _ => None,
            };
            let client = MllpClient::connect_to(
                &self.spec.addr,
                resolved.as_deref(),
                self.spec.tls.as_deref(),
                self.spec.connect_timeout,
                MAX_ACK_SIZE,
            )
            .await
            .map_err(|error| Failure::Reset(describe(&error)))?;
            self.client = Some(client);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(Failure::Reset("not connected".to_owned()));
        };
        // The write is bounded too: a peer that stops reading must not hold the queue.
        let limit = self.spec.ack_timeout;
        let answer = tokio::time::timeout(limit, client.request(body, limit))
            .await
            .map_err(|_| Failure::Reset(format!("no ACK within {limit:?}; connection closed")))?
            .map_err(|error| Failure::Reset(describe(&error)))?;
        let ack = Message::parse(answer).map_err(|_| {
            Failure::Reset("the answer is not an HL7 message; connection closed".to_owned())
        })?;
        let Some(msa) = ack.segment(b"MSA", 1) else {
            return Err(Failure::Reset(
                "the answer has no MSA segment; connection closed".to_owned(),
            ));
        };
        let answered = msa.field(2).unwrap_or_default();
        if trim(answered) != trim(&sent_control_id) {
            return Err(Failure::Reset(
                "the ACK's MSA-2 does not match the sent MSH-10 (a late or foreign ACK); connection closed"
                    .to_owned(),
            ));
        }
        let code = msa.field(1).unwrap_or_default();
        let component = ack.delimiters().component.unwrap_or(b'^');
        let code = trim(
            code.split(|byte| *byte == component)
                .next()
                .unwrap_or_default(),
        );
        let error_code = ack
            .value("ERR-3.1")
            .filter(|value| {
                !value.is_empty() && value.len() <= 8 && value.iter().all(u8::is_ascii_digit)
            })
            .map(|value| format!(" (ERR-3 {})", String::from_utf8_lossy(value)))
            .unwrap_or_default();
        match code {
            b"AA" | b"CA" => Ok(()),
            b"AE" | b"CE" => Err(Failure::Keep(
                format!(
                    "the peer answered {}{error_code}",
                    String::from_utf8_lossy(code)
                ),
                answer_text(&ack),
            )),
            b"AR" | b"CR" => Err(Failure::Rejected(
                format!(
                    "the peer answered {}{error_code}",
                    String::from_utf8_lossy(code)
                ),
                answer_text(&ack),
            )),
            _ => Err(Failure::Reset(
                "the ACK's MSA-1 is not an acknowledgment code; connection closed".to_owned(),
            )),
        }
    }
}

enum Failure {
    /// Retry on a new connection.
    Reset(String),
    /// Retry on this connection (AE/CE), with the peer's answer.
    Keep(String, Option<String>),
    /// AR/CR, with the peer's answer.
    Rejected(String, Option<String>),
}

/// The peer's own words: its ACK's MSA and ERR segments, as text (they can hold patient
/// data: kept only where body readers see it, never logged).
fn answer_text(ack: &Message) -> Option<String> {
    let raw = ack.raw();
    let mut parts = Vec::new();
    for segment in raw.split(|byte| *byte == b'\r' || *byte == b'\n') {
        if segment.starts_with(b"MSA") || segment.starts_with(b"ERR") {
            parts.push(String::from_utf8_lossy(segment).into_owned());
        }
    }
    let text = parts.join("\r");
    (!text.is_empty()).then_some(text)
}

fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Timeout(limit) => {
            format!("no ACK within {limit:?}; connection closed")
        }
        other => format!("{other}"),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}
