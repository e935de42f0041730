//! Ingest: the one place that decides what a frame gets back.
//!
//! A frame is parsed, checked, and answered. The answer follows the acknowledgement mode the
//! sender chose (MSH-15): original mode always gets AA/AE/AR, enhanced mode gets CA/CE/CR only
//! when MSH-15 asks for it. A frame whose header cannot be read gets no guessed ACK: the
//! connection is closed. An empty frame (some senders use one as a keep-alive) is ignored.
//!
//! Until the durable outbox exists, an accepted message is answered right after these checks.
//!
//! **Invariant:** no message text reaches an ACK, a log line or an error string; reasons are
//! mfoundry's own words plus field locations.

use std::sync::Arc;

use bytes::Bytes;

use crate::hl7::{
    AckCode, AckError, AckMode, AckStamper, Charset, DeclaredCharset, ErrorCode, ErrorLocation,
    HeaderKind, Message, Verdict, build_ack,
};

/// What to do with the connection after a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Write these bytes (an ACK, to be MLLP-framed).
    Ack {
        /// The ACK message.
        bytes: Vec<u8>,
        /// Its MSA-1.
        code: AckCode,
    },
    /// The sender's MSH-15 asked for no ACK in this case.
    Suppressed {
        /// The code that was decided but not sent.
        code: AckCode,
    },
    /// Nothing is answered: the frame was empty (some senders use one as a keep-alive) or
    /// was itself an ACK. `Outcome::reason` says which.
    Ignore,
    /// The header cannot be read: close the connection without an ACK.
    Close,
}

/// The decision for one frame, with what is safe to log about it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What to send.
    pub reply: Reply,
    /// MSH-10 as text (control ids are not patient data), at most 64 characters.
    pub control_id: Option<String>,
    /// A short machine-readable reason for anything but acceptance.
    pub reason: Option<&'static str>,
}

/// Checks frames and builds their ACKs.
#[derive(Debug, Clone)]
pub struct Ingest {
    default_charset: Charset,
    stamper: Arc<dyn AckStamper>,
}

/// A refusal: the code category, a short reason for logs and counters, and the ERR details.
struct Refusal {
    verdict: Verdict,
    reason: &'static str,
    error: AckError,
}

impl Ingest {
    /// An ingest that decodes undeclared text as `default_charset` and stamps ACKs with `stamper`.
    pub fn new(default_charset: Charset, stamper: Arc<dyn AckStamper>) -> Self {
        Self {
            default_charset,
            stamper,
        }
    }

    /// Decide the reply to one frame.
    pub fn handle(&self, frame: Bytes) -> Outcome {
        if frame.iter().all(u8::is_ascii_whitespace) {
            return Outcome {
                reply: Reply::Ignore,
                control_id: None,
                reason: Some("empty_frame"),
            };
        }
        let Ok(message) = Message::parse(frame) else {
            return Outcome {
                reply: Reply::Close,
                control_id: None,
                reason: Some("unreadable_header"),
            };
        };
        let control_id = control_id_for_logs(&message);
        if message.kind() == HeaderKind::Message && message.header_component(9, 1) == b"ACK" {
            // ACKs are never acknowledged (two gateways would ping-pong forever).
            return Outcome {
                reply: Reply::Ignore,
                control_id,
                reason: Some("ack_received"),
            };
        }
        let mode = AckMode::of(&message);
        let (verdict, reason, error) = match self.check(&message) {
            Ok(()) => (Verdict::Accept, None, None),
            Err(refusal) => (refusal.verdict, Some(refusal.reason), Some(refusal.error)),
        };
        let reply = match mode.reply_code(verdict) {
            Some(code) => Reply::Ack {
                bytes: build_ack(&message, code, error.as_ref(), &self.stamper.stamp()),
                code,
            },
            None => Reply::Suppressed {
                code: mode.decided_code(verdict),
            },
        };
        Outcome {
            reply,
            control_id,
            reason,
        }
    }

    fn check(&self, message: &Message) -> Result<(), Box<Refusal>> {
        let reject = |reason, error| {
            Box::new(Refusal {
                verdict: Verdict::Reject,
                reason,
                error,
            })
        };
        if message.kind() != HeaderKind::Message {
            let segment = if message.kind() == HeaderKind::FileBatch {
                "FHS"
            } else {
                "BHS"
            };
            return Err(reject(
                "batch_not_supported",
                AckError {
                    code: ErrorCode::UnsupportedMessageType,
                    location: Some(ErrorLocation {
                        segment: segment.to_owned(),
                        sequence: 1,
                        field: None,
                    }),
                    user_message: "batch envelopes (FHS/BHS) are not accepted yet; send each message in its own MLLP frame".to_owned(),
                    diagnostic: None,
                },
            ));
        }
        if message
            .segments()
            .skip(1)
            .any(|segment| segment.name() == b"MSH")
        {
            return Err(reject(
                "several_messages_in_frame",
                AckError {
                    code: ErrorCode::SegmentSequenceError,
                    location: None,
                    user_message: "the frame holds more than one MSH segment; send each message in its own MLLP frame".to_owned(),
                    diagnostic: None,
                },
            ));
        }
        if let Some(problem) = message.delimiter_error() {
            return Err(reject(
                "bad_encoding_characters",
                AckError {
                    code: ErrorCode::DataTypeError,
                    location: Some(ErrorLocation::header(2)),
                    user_message: format!(
                        "MSH-2 encoding characters are unusable: {problem}; use ^~\\& (or ^~\\&# from v2.7)"
                    ),
                    diagnostic: None,
                },
            ));
        }
        for (field, name) in [(9, "message type"), (10, "message control id")] {
            if message.header_component(field, 1).is_empty() {
                return Err(reject(
                    "required_field_missing",
                    AckError {
                        code: ErrorCode::RequiredFieldMissing,
                        location: Some(ErrorLocation::header(field)),
                        user_message: format!("MSH-{field} ({name}) is empty; it is required"),
                        diagnostic: None,
                    },
                ));
            }
        }
        if let DeclaredCharset::Declared(charset) = message.charset(self.default_charset)
            && let Some(offset) = charset.first_invalid_byte(message.raw())
        {
            let location = locate(message, offset);
            let place = match &location {
                Some(ErrorLocation {
                    segment,
                    field: Some(field),
                    ..
                }) => format!("{segment}-{field}"),
                Some(location) => location.segment.clone(),
                None => "the message".to_owned(),
            };
            return Err(reject(
                "invalid_characters",
                AckError {
                    code: ErrorCode::DataTypeError,
                    location,
                    user_message: format!(
                        "{place} holds bytes that are not valid {} as MSH-18 declares; fix the sender's encoding or MSH-18",
                        charset.name()
                    ),
                    diagnostic: Some(format!(
                        "first invalid byte at offset {offset} of the frame"
                    )),
                },
            ));
        }
        Ok(())
    }
}

/// The segment and field holding byte `offset` of the frame.
fn locate(message: &Message, offset: usize) -> Option<ErrorLocation> {
    let (segment, sequence, within) = message.segment_containing(offset)?;
    let separators = segment.bytes()[..within]
        .iter()
        .filter(|&&byte| byte == message.delimiters().field)
        .count();
    let is_header = matches!(segment.name(), b"MSH" | b"FHS" | b"BHS");
    let field = match (separators, is_header) {
        (0, _) => None,
        (count, true) => Some(count + 1),
        (count, false) => Some(count),
    };
    let name = segment.name();
    let printable = name.len() <= 3 && name.iter().all(u8::is_ascii_alphanumeric);
    Some(ErrorLocation {
        segment: if printable {
            String::from_utf8_lossy(name).into_owned()
        } else {
            "???".to_owned()
        },
        sequence,
        field,
    })
}

fn control_id_for_logs(message: &Message) -> Option<String> {
    let raw = message.header_field(10);
    if raw.is_empty() {
        return None;
    }
    let text: String = String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    Some(text)
}
