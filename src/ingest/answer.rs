//! What intake answers a frame with: the reply for the connection, the reason for logs and
//! counters, and the outcome the listener acts on.

use crate::hl7::AckCode;

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
    /// The sender's MSH-15/16 asked for no ACK in this case.
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

/// Why a frame got anything but a first-time acceptance: logged, counted and stored with a
/// refused message (as its snake_case name), and what the listener acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// An empty frame (some senders use one as a keep-alive): nothing is answered.
    EmptyFrame,
    /// The header cannot be read: the connection is closed without an ACK.
    UnreadableHeader,
    /// The frame was itself an ACK: nothing is answered.
    AckReceived,
    /// A retransmission of a stored message: answered with the stored ACK.
    Duplicate,
    /// The outbox could not store the message: nothing positive is answered.
    StoreFailed,
    /// A validation rule refused the message.
    RuleFailed,
    /// A validation rule could not be evaluated.
    RuleError,
    /// Bytes that are not valid in the message's character set (MSH-18).
    InvalidCharacters,
    /// MSH-3 or MSH-4 is not one the client certificate may send as (`tls_senders`).
    SenderNotAllowed,
    /// A batch envelope (FHS/BHS) where only single messages are taken (`mfoundry test`).
    BatchNotSupported,
    /// A batch refused whole: unreadable, its counts differ (`batch_count_mismatch: reject`),
    /// or one of its messages was refused with `batch_ack: batch`.
    BatchRefused,
    /// More than one MSH segment in one frame.
    SeveralMessagesInFrame,
    /// MSH-2 encoding characters are unusable.
    BadEncodingCharacters,
    /// MSH-9 or MSH-10 is missing.
    RequiredFieldMissing,
}

impl Reason {
    /// The name used in logs and stored reasons (`store_failed`, `rule_failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyFrame => "empty_frame",
            Self::UnreadableHeader => "unreadable_header",
            Self::AckReceived => "ack_received",
            Self::Duplicate => "duplicate",
            Self::StoreFailed => "store_failed",
            Self::RuleFailed => "rule_failed",
            Self::RuleError => "rule_error",
            Self::InvalidCharacters => "invalid_characters",
            Self::SenderNotAllowed => "sender_not_allowed",
            Self::BatchNotSupported => "batch_not_supported",
            Self::BatchRefused => "batch_refused",
            Self::SeveralMessagesInFrame => "several_messages_in_frame",
            Self::BadEncodingCharacters => "bad_encoding_characters",
            Self::RequiredFieldMissing => "required_field_missing",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The decision for one frame, with what is safe to log about it.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What to send.
    pub reply: Reply,
    /// MSH-10 as text (control ids are not patient data), at most 64 characters.
    pub control_id: Option<String>,
    /// A short machine-readable reason for anything but a first-time acceptance.
    pub reason: Option<Reason>,
    /// The stored message's id, when it was stored (or found as a duplicate).
    pub message_id: Option<crate::outbox::MessageId>,
}

impl Outcome {
    pub(super) fn bare(reply: Reply, control_id: Option<String>, reason: Reason) -> Self {
        Self {
            reply,
            control_id,
            reason: Some(reason),
            message_id: None,
        }
    }
}
