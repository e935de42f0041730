//! `mfoundry send`: a small MLLP client for users and tests.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;

use super::SendArgs;
use crate::hl7::{AcceptAckType, AckCode, AckMode, Message, split_messages, unescape};
use crate::mllp::{ClientError, MllpClient};

/// ACK frames larger than this are refused by the client.
const MAX_ACK_SIZE: usize = 1 << 20;

/// What `send` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Messages sent.
    pub sent: usize,
    /// Messages answered with AA or CA (or, for MSH-15 NE/ER, not answered as asked).
    pub accepted: usize,
}

impl SendSummary {
    /// True when every message was accepted.
    pub fn all_accepted(&self) -> bool {
        self.sent == self.accepted
    }
}

/// A message read from a file, ready to send.
struct Outgoing {
    origin: String,
    bytes: Vec<u8>,
}

/// Send every message of `args.files`, printing one line per message to `out`.
pub async fn run_send(args: &SendArgs, out: &mut dyn Write) -> anyhow::Result<SendSummary> {
    let mut outgoing = Vec::new();
    for path in &args.files {
        let contents =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let messages = split_messages(&contents).with_context(|| format!("{}", path.display()))?;
        if messages.is_empty() {
            anyhow::bail!(
                "{}: no MSH segment found; the file holds no HL7 message",
                path.display()
            );
        }
        for (index, bytes) in messages.into_iter().enumerate() {
            outgoing.push(Outgoing {
                origin: format!("{}#{}", path.display(), index + 1),
                bytes,
            });
        }
    }

    let mut summary = SendSummary::default();
    let mut client: Option<MllpClient> = None;
    for message in outgoing {
        let connection = match client.take() {
            Some(connection) => connection,
            None => MllpClient::connect(&args.addr, Duration::from_secs(10), MAX_ACK_SIZE).await?,
        };
        let (line, accepted, keep) = send_one(connection, &message, args.timeout).await;
        summary.sent += 1;
        if accepted {
            summary.accepted += 1;
        }
        client = keep;
        writeln!(out, "{line}")?;
    }
    Ok(summary)
}

/// Send one message; returns the line to print, whether it was accepted, and the connection
/// if it can be reused.
async fn send_one(
    mut client: MllpClient,
    message: &Outgoing,
    timeout: Duration,
) -> (String, bool, Option<MllpClient>) {
    let parsed = Message::parse(Bytes::copy_from_slice(&message.bytes)).ok();
    let control_id = parsed
        .as_ref()
        .map(|parsed| String::from_utf8_lossy(parsed.header_field(10)).into_owned())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| message.origin.clone());
    let mode = parsed.as_ref().map_or(AckMode::Original, AckMode::of);
    let line = |code: &str, text: &str| format!("{control_id}\t{code}\t{text}");

    if let Err(error) = client.send(&message.bytes).await {
        return (line("--", &format!("not sent: {error}")), false, None);
    }
    if mode == AckMode::Enhanced(AcceptAckType::Never) {
        return (
            line("--", "no ACK requested (MSH-15=NE)"),
            true,
            Some(client),
        );
    }
    let reply = match client.receive(timeout).await {
        Ok(reply) => reply,
        Err(ClientError::Timeout(_)) if mode == AckMode::Enhanced(AcceptAckType::ErrorOnly) => {
            return (
                line("--", "no ACK within the timeout; MSH-15=ER means accepted"),
                true,
                None,
            );
        }
        Err(error) => return (line("--", &format!("no ACK: {error}")), false, None),
    };
    let Ok(ack) = Message::parse(reply) else {
        return (line("??", "the reply is not an HL7 message"), false, None);
    };
    let code_field = ack.value("MSA-1").unwrap_or_default();
    let Some(code) = AckCode::parse(code_field) else {
        return (line("??", "the reply has no valid MSA-1 code"), false, None);
    };
    let answered = ack.value("MSA-2").unwrap_or_default();
    if answered != message_control_id(parsed.as_ref()) {
        return (
            line(
                code.as_str(),
                "the ACK's MSA-2 does not match the sent MSH-10",
            ),
            false,
            None,
        );
    }
    (
        line(code.as_str(), &ack_text(&ack)),
        code.is_accept(),
        Some(client),
    )
}

fn message_control_id(parsed: Option<&Message>) -> &[u8] {
    parsed
        .map(|message| message.header_field(10))
        .unwrap_or_default()
}

/// The human-readable text of an ACK: ERR-8, else MSA-3, else the text of the error code.
fn ack_text(ack: &Message) -> String {
    let candidates = ["ERR-8", "MSA-3", "ERR-1.4.2", "ERR-3.2"];
    let text = candidates
        .iter()
        .filter_map(|path| ack.value(path))
        .find(|value| !value.is_empty())
        .unwrap_or_default();
    String::from_utf8_lossy(&unescape(text, ack.delimiters())).into_owned()
}
