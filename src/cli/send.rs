//! `mfoundry send`: a small MLLP client for users and tests.
//!
//! Every file is read and split before anything is sent, so a bad file fails fast. Messages go
//! out in order on one connection; each waits for its ACK. A connection the server closed
//! between messages is replaced and the message sent again once (MLLP senders resend what was
//! not acknowledged). ACKs for messages that asked for none (MSH-15/16 `NE`) are skipped
//! if the server sends them anyway, so they are never taken for the next message's ACK.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::time::Instant;

use super::SendArgs;
use crate::hl7::{AckCode, AckMode, Message, Verdict, split_messages, unescape};
use crate::mllp::{ClientError, MllpClient};

/// ACK frames larger than this are refused by the client.
const MAX_ACK_SIZE: usize = 1 << 20;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `send` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SendSummary {
    /// Messages sent.
    pub sent: usize,
    /// Messages answered with AA or CA (or, when MSH-15/16 asked for no ACK, not answered).
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
    /// A whole file sent as one batch (`--batch`).
    batch: bool,
    bytes: Vec<u8>,
    /// MSH-10 (or `file#n` when empty), printable.
    label: String,
    control_id: Vec<u8>,
    mode: AckMode,
}

/// The printed result for one message.
struct Report {
    code: String,
    text: String,
    accepted: bool,
    /// For a batch: each ACK it held (control id, code, text).
    acks: Vec<(String, String, String)>,
}

impl Report {
    fn failed(code: &str, text: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            text: text.into(),
            accepted: false,
            acks: Vec::new(),
        }
    }
}

/// Send every message of `args.files`, printing one line per message to `out`.
pub async fn run_send(args: &SendArgs, out: &mut dyn Write) -> anyhow::Result<SendSummary> {
    let outgoing = read_files(args)?;
    let tls = args.tls.client(&args.addr)?;
    let mut session = Session {
        addr: args.addr.clone(),
        tls,
        timeout: args.timeout,
        client: None,
        ever_connected: false,
        unawaited: HashSet::new(),
    };
    let mut summary = SendSummary::default();
    for message in &outgoing {
        let report = session.deliver(message).await?;
        summary.sent += 1;
        if report.accepted {
            summary.accepted += 1;
        }
        writeln!(
            out,
            "{}\t{}\t{}",
            printable(&message.label),
            report.code,
            printable(&report.text)
        )?;
        for (control_id, code, text) in &report.acks {
            writeln!(
                out,
                "  {}\t{code}\t{}",
                printable(control_id),
                printable(text)
            )?;
        }
    }
    Ok(summary)
}

fn read_files(args: &SendArgs) -> anyhow::Result<Vec<Outgoing>> {
    let mut outgoing = Vec::new();
    for path in &args.files {
        let contents =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if args.batch {
            outgoing.push(batch_of(path, &contents)?);
            continue;
        }
        let messages = split_messages(&contents).with_context(|| path.display().to_string())?;
        if messages.is_empty() {
            anyhow::bail!(
                "{}: no MSH segment found; the file holds no HL7 message",
                path.display()
            );
        }
        for (index, bytes) in messages.into_iter().enumerate() {
            let parsed = Message::parse(Bytes::copy_from_slice(&bytes))
                .with_context(|| format!("{} message {}", path.display(), index + 1))?;
            let control_id = parsed.header_field(10).to_vec();
            let label = if control_id.is_empty() {
                format!("{}#{}", path.display(), index + 1)
            } else {
                String::from_utf8_lossy(&control_id).into_owned()
            };
            let mode = AckMode::of(&parsed);
            outgoing.push(Outgoing {
                batch: false,
                bytes,
                label,
                control_id,
                mode,
            });
        }
    }
    Ok(outgoing)
}

/// One connection, replaced when the server closes it.
struct Session {
    addr: String,
    tls: Option<crate::tls::TlsClient>,
    timeout: Duration,
    client: Option<MllpClient>,
    ever_connected: bool,
    /// Control ids of messages sent without waiting for an ACK.
    unawaited: HashSet<Vec<u8>>,
}

impl Session {
    /// Send one message and read its ACK. Fails only when the very first connection cannot
    /// be made (the server is not there at all); later problems become a failed report.
    async fn deliver(&mut self, message: &Outgoing) -> anyhow::Result<Report> {
        for attempt in 0..2 {
            let reused = self.client.is_some();
            if self.client.is_none() {
                match MllpClient::connect_with(
                    &self.addr,
                    self.tls.as_ref(),
                    CONNECT_TIMEOUT,
                    MAX_ACK_SIZE,
                )
                .await
                {
                    Ok(client) => {
                        self.client = Some(client);
                        self.ever_connected = true;
                    }
                    Err(error) if !self.ever_connected => return Err(error.into()),
                    Err(error) => return Ok(Report::failed("--", format!("not sent: {error}"))),
                }
            }
            match self.exchange(message).await {
                Ok(report) => return Ok(report),
                Err(error) => {
                    self.client = None;
                    let stale = matches!(error, ClientError::Closed | ClientError::Frame(_));
                    if !(reused && stale && attempt == 0) {
                        return Ok(Report::failed("--", format!("no ACK: {error}")));
                    }
                }
            }
        }
        Ok(Report::failed("--", "no ACK"))
    }

    /// One send and the wait for its ACK on the current connection.
    async fn exchange(&mut self, message: &Outgoing) -> Result<Report, ClientError> {
        let Some(client) = self.client.as_mut() else {
            return Err(ClientError::Closed);
        };
        let deadline = Instant::now() + self.timeout;
        tokio::time::timeout_at(deadline, client.send(&message.bytes))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        let wants_ack_on_accept = message.mode.reply_code(Verdict::Accept).is_some();
        let wants_ack_on_reject = message.mode.reply_code(Verdict::Reject).is_some();
        if !wants_ack_on_accept && !wants_ack_on_reject {
            self.unawaited.insert(message.control_id.clone());
            return Ok(Report {
                code: "--".to_owned(),
                text: "no ACK requested (MSH-15/16 NE)".to_owned(),
                accepted: true,
                acks: Vec::new(),
            });
        }
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reply = match client.receive(remaining).await {
                Ok(reply) => reply,
                Err(ClientError::Timeout(_)) if !wants_ack_on_accept => {
                    // MSH-15 ER: silence means the message was accepted.
                    self.client = None;
                    return Ok(Report {
                        code: "--".to_owned(),
                        text: "no ACK within the timeout; MSH-15=ER means accepted".to_owned(),
                        accepted: true,
                        acks: Vec::new(),
                    });
                }
                Err(ClientError::Timeout(_)) => return Err(ClientError::Timeout(self.timeout)),
                Err(error) => return Err(error),
            };
            if message.batch && crate::hl7::is_envelope(&reply) {
                return Ok(batch_report(&reply));
            }
            let Ok(ack) = Message::parse(reply) else {
                return Ok(Report::failed("??", "the reply is not an HL7 message"));
            };
            let answered = ack.value("MSA-2").unwrap_or_default();
            if answered != message.control_id.as_slice() && self.unawaited.remove(answered) {
                continue;
            }
            let Some(code) = AckCode::parse(ack.value("MSA-1").unwrap_or_default()) else {
                return Ok(Report::failed("??", "the reply has no valid MSA-1 code"));
            };
            if answered != message.control_id.as_slice() {
                self.client = None;
                return Ok(Report::failed(
                    code.as_str(),
                    "the ACK's MSA-2 does not match the sent MSH-10",
                ));
            }
            return Ok(Report {
                code: code.as_str().to_owned(),
                text: ack_text(&ack),
                accepted: code.is_accept(),
                acks: Vec::new(),
            });
        }
    }
}

/// A whole file as one batch frame: line ends made `\r`, MLLP framing bytes dropped, bare
/// messages wrapped in a `BHS`/`BTS`; its control id the batch's (BHS-11, else FHS-11), which
/// a one-ACK answer carries in MSA-2.
fn batch_of(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<Outgoing> {
    let raw = Bytes::copy_from_slice(contents);
    let envelope = crate::hl7::parse_envelope(&raw)
        .with_context(|| format!("{}: not a batch", path.display()))?;
    let mut bytes = Vec::with_capacity(contents.len());
    let segment = |bytes: &mut Vec<u8>, segment: &[u8]| {
        bytes.extend_from_slice(segment);
        bytes.push(b'\r');
    };
    if let Some(header) = &envelope.file_header {
        segment(&mut bytes, header);
    }
    // As the gateway's one-ACK answer names it: the first BHS-11, else FHS-11.
    let control_id = envelope
        .groups
        .iter()
        .filter_map(|group| group.header.as_ref())
        .chain(envelope.file_header.as_ref())
        .map(|header| crate::hl7::envelope_field(header, 11))
        .find(|value| !value.is_empty())
        .unwrap_or_default()
        .to_vec();
    for group in &envelope.groups {
        if let Some(header) = &group.header {
            segment(&mut bytes, header);
        }
        for message in &group.messages {
            bytes.extend_from_slice(message);
        }
        if let Some(trailer) = &group.trailer {
            segment(&mut bytes, trailer);
        }
    }
    if let Some(trailer) = &envelope.file_trailer {
        segment(&mut bytes, trailer);
    }
    if !envelope.has_envelope() {
        // Messages one after another: sent as one batch, in a BHS/BTS of their own (a frame
        // of bare messages is not a batch on the wire).
        let mut wrapped = b"BHS|^~\\&\r".to_vec();
        wrapped.extend_from_slice(&bytes);
        wrapped.extend_from_slice(format!("BTS|{}\r", envelope.message_count()).as_bytes());
        bytes = wrapped;
    }
    Ok(Outgoing {
        batch: true,
        bytes,
        label: path.display().to_string(),
        control_id,
        mode: AckMode::Original,
    })
}

/// What a batch of ACKs says: the worst code, a count per code, and each ACK.
fn batch_report(reply: &Bytes) -> Report {
    let Ok(envelope) = crate::hl7::parse_envelope(reply) else {
        return Report::failed("??", "the reply is a batch that cannot be read");
    };
    let mut acks = Vec::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut accepted = true;
    let mut worst: Option<AckCode> = None;
    for message in envelope.messages() {
        let Ok(ack) = Message::parse(message.clone()) else {
            continue;
        };
        let Some(code) = AckCode::parse(ack.value("MSA-1").unwrap_or_default()) else {
            continue;
        };
        accepted &= code.is_accept();
        let rank = |code: AckCode| match code {
            AckCode::AA | AckCode::CA => 0,
            AckCode::AR | AckCode::CR => 1,
            AckCode::AE | AckCode::CE => 2,
        };
        if worst.is_none_or(|worst| rank(code) > rank(worst)) {
            worst = Some(code);
        }
        match counts.iter_mut().find(|(name, _)| name == code.as_str()) {
            Some((_, count)) => *count += 1,
            None => counts.push((code.as_str().to_owned(), 1)),
        }
        acks.push((
            String::from_utf8_lossy(ack.value("MSA-2").unwrap_or_default()).into_owned(),
            code.as_str().to_owned(),
            ack_text(&ack),
        ));
    }
    let Some(worst) = worst else {
        return Report::failed("??", "the reply is a batch without ACKs");
    };
    let counted: Vec<String> = counts
        .iter()
        .map(|(code, count)| format!("{count} {code}"))
        .collect();
    Report {
        code: worst.as_str().to_owned(),
        text: format!("batch of {} ACKs: {}", acks.len(), counted.join(", ")),
        accepted,
        acks,
    }
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

/// Replace control characters so a server's reply cannot drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
