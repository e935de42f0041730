//! What intake reads from a message's header: the header checks (batch, MSH-2, MSH-9/10,
//! MSH-18 bytes), the sender check against `tls_senders`, the
//! searchable header fields, the retransmit key, where an offset lies (for ERR), and the
//! control id shown in logs.

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{Reason, Refusal};
use crate::hl7::{
    AckCode, AckError, DeclaredCharset, ErrorCode, ErrorLocation, HeaderKind, Message,
};
use crate::outbox::HeaderFields;

/// Refuse (AR) a message whose MSH-3/MSH-4 its connection's certificate may not send as.
pub(super) fn check_sender(
    senders: &crate::tls::SenderMap,
    message: &Message,
    identity: Option<&crate::tls::PeerIdentity>,
) -> Result<(), Box<Refusal>> {
    use crate::tls::SenderRefusal;
    let refusal = match senders.check(
        identity,
        message.header_component(3, 1),
        message.header_component(4, 1),
    ) {
        Ok(()) => return Ok(()),
        Err(refusal) => refusal,
    };
    let (field, text) = match refusal {
        SenderRefusal::NoCertificate => (
            3,
            "the connection presented no client certificate, so no sender is allowed on it (tls_senders)",
        ),
        SenderRefusal::UnknownIdentity => (
            3,
            "the connection's client certificate is not named in tls_senders, so it may not send",
        ),
        SenderRefusal::Application => (
            3,
            "MSH-3 (sending application) is not one the connection's client certificate may send as (tls_senders)",
        ),
        SenderRefusal::Facility => (
            4,
            "MSH-4 (sending facility) is not one the connection's client certificate may send as (tls_senders)",
        ),
    };
    Err(Refusal::reject(
        Reason::SenderNotAllowed,
        AckError::new(
            ErrorCode::TableValueNotFound,
            Some(ErrorLocation::header(field)),
            text.to_owned(),
        ),
    ))
}

/// Longest header value kept in a stored record's searchable fields.
const MAX_HEADER_FIELD: usize = 256;

/// MSA-1 of an ACK.
pub(super) fn ack_code_of(ack: &[u8]) -> Option<AckCode> {
    let parsed = Message::parse(Bytes::copy_from_slice(ack)).ok()?;
    AckCode::parse(parsed.value("MSA-1")?)
}

/// Retransmit key: SHA-256 over sending application, facility, control id and the frame.
pub(super) fn dedup_key(message: &Message) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [
        message.header_field(3),
        message.header_field(4),
        message.header_field(10),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(message.raw());
    hasher.finalize().into()
}

/// The header fields a stored record keeps (each cut at 256 bytes).
pub fn header_fields(message: &Message) -> HeaderFields {
    let text = |raw: &[u8]| -> String {
        let cut = &raw[..raw.len().min(MAX_HEADER_FIELD)];
        String::from_utf8_lossy(cut).into_owned()
    };
    HeaderFields {
        msg_type: text(message.header_component(9, 1)),
        trigger: text(message.header_component(9, 2)),
        structure: text(message.header_component(9, 3)),
        control_id: text(message.header_field(10)),
        sending_app: text(message.header_field(3)),
        sending_fac: text(message.header_field(4)),
        receiving_app: text(message.header_field(5)),
        receiving_fac: text(message.header_field(6)),
        version: text(message.header_component(12, 1)),
        processing_id: text(message.header_component(11, 1)),
    }
}

/// The segment and field holding byte `offset` of the frame.
pub(super) fn locate(message: &Message, offset: usize) -> Option<ErrorLocation> {
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

pub(super) fn control_id_for_logs(message: &Message) -> Option<String> {
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

impl super::Decider {
    /// The checks of a message's header before its rules: a batch envelope, several MSH, unusable
    /// delimiters, missing MSH-9/MSH-10, bytes invalid in the declared character set.
    pub(super) fn check_header(&self, message: &Message) -> Result<(), Box<Refusal>> {
        if message.kind() != HeaderKind::Message {
            let segment = if message.kind() == HeaderKind::FileBatch {
                "FHS"
            } else {
                "BHS"
            };
            return Err(Refusal::reject(
                Reason::BatchNotSupported,
                AckError::new(
                    ErrorCode::UnsupportedMessageType,
                    Some(ErrorLocation {
                        segment: segment.to_owned(),
                        sequence: 1,
                        field: None,
                    }),
                    "batch envelopes (FHS/BHS) are not accepted yet; send each message in its own MLLP frame".to_owned(),
                ),
            ));
        }
        if message
            .segments()
            .skip(1)
            .any(|segment| segment.name() == b"MSH")
        {
            return Err(Refusal::reject(
                Reason::SeveralMessagesInFrame,
                AckError::new(
                    ErrorCode::SegmentSequenceError,
                    None,
                    "the frame holds more than one MSH segment; send each message in its own MLLP frame".to_owned(),
                ),
            ));
        }
        if let Some(problem) = message.delimiter_error() {
            return Err(Refusal::reject(
                Reason::BadEncodingCharacters,
                AckError::new(
                    ErrorCode::DataTypeError,
                    Some(ErrorLocation::header(2)),
                    format!(
                        "MSH-2 encoding characters are unusable: {problem}; use ^~\\& (or ^~\\&# from v2.7)"
                    ),
                ),
            ));
        }
        for (field, name) in [(9, "message type"), (10, "message control id")] {
            if message.header_component(field, 1).is_empty() {
                return Err(Refusal::reject(
                    Reason::RequiredFieldMissing,
                    AckError::new(
                        ErrorCode::RequiredFieldMissing,
                        Some(ErrorLocation::header(field)),
                        format!("MSH-{field} ({name}) is empty; it is required"),
                    ),
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
            let mut error = AckError::new(
                ErrorCode::DataTypeError,
                location,
                format!(
                    "{place} holds bytes that are not valid {} as MSH-18 declares; fix the sender's encoding or MSH-18",
                    charset.name()
                ),
            );
            error.diagnostic = Some(format!(
                "first invalid byte at offset {offset} of the frame"
            ));
            return Err(Refusal::reject(Reason::InvalidCharacters, error));
        }
        Ok(())
    }
}
