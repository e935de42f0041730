//! The DICOM upper layer protocol (PS3.8 §9): protocol data units as bytes, no I/O.
//!
//! A PDU is a type byte, a reserved byte, a 4-byte big-endian length and that many bytes.
//! [`header`] reads the six bytes and refuses a length above the caller's cap before a byte
//! of the body is read or allocated: a declared length is never trusted. The body parsers
//! take the bytes read and check every item length against what is there.

use std::fmt;

/// Bytes of a PDU header (type, reserved, length).
pub const HEADER_LEN: usize = 6;
/// The DICOM application context name.
pub const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";
/// Most presentation contexts an association has (their ids are the odd numbers 1–255).
pub const MAX_CONTEXTS: usize = 128;
/// The Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";

/// A PDU's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduType {
    /// A-ASSOCIATE-RQ
    AssociateRq,
    /// A-ASSOCIATE-AC
    AssociateAc,
    /// A-ASSOCIATE-RJ
    AssociateRj,
    /// P-DATA-TF
    PData,
    /// A-RELEASE-RQ
    ReleaseRq,
    /// A-RELEASE-RP
    ReleaseRp,
    /// A-ABORT
    Abort,
}

impl PduType {
    fn of(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::AssociateRq,
            2 => Self::AssociateAc,
            3 => Self::AssociateRj,
            4 => Self::PData,
            5 => Self::ReleaseRq,
            6 => Self::ReleaseRp,
            7 => Self::Abort,
            _ => return None,
        })
    }

    fn byte(self) -> u8 {
        match self {
            Self::AssociateRq => 1,
            Self::AssociateAc => 2,
            Self::AssociateRj => 3,
            Self::PData => 4,
            Self::ReleaseRq => 5,
            Self::ReleaseRp => 6,
            Self::Abort => 7,
        }
    }
}

/// What is wrong with bytes received: mfoundry's words, never the peer's data.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// An unknown PDU type.
    #[error("unknown PDU type 0x{0:02x}")]
    UnknownType(u8),
    /// A PDU longer than allowed.
    #[error("a PDU of {length} bytes is larger than the {limit} this side accepts")]
    TooLong {
        /// The declared length.
        length: u64,
        /// The cap.
        limit: u64,
    },
    /// A malformed body.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// Read a PDU header: its type and body length, refused above `limit`.
pub fn header(bytes: &[u8; HEADER_LEN], limit: u32) -> Result<(PduType, u32), PduError> {
    let kind = PduType::of(bytes[0]).ok_or(PduError::UnknownType(bytes[0]))?;
    let length = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    if length > limit {
        return Err(PduError::TooLong {
            length: u64::from(length),
            limit: u64::from(limit),
        });
    }
    Ok((kind, length))
}

/// A PDU with `body`, header included.
pub fn encode(kind: PduType, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(kind.byte());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One presentation context proposed in an A-ASSOCIATE-RQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedContext {
    /// Its id (odd, 1–255).
    pub id: u8,
    /// The abstract syntax (SOP class) UID.
    pub abstract_syntax: String,
    /// The transfer syntaxes offered, in the requestor's order.
    pub transfer_syntaxes: Vec<String>,
}

/// An A-ASSOCIATE-RQ (or, for a requestor, the AC's mirror of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssociateRq {
    /// The called AE title (trimmed).
    pub called_ae: String,
    /// The calling AE title (trimmed).
    pub calling_ae: String,
    /// The application context name.
    pub application_context: String,
    /// Presentation contexts proposed.
    pub contexts: Vec<ProposedContext>,
    /// The requestor's maximum P-DATA-TF length (0: unlimited).
    pub max_pdu: u32,
    /// Its implementation class UID.
    pub implementation_class: String,
}

/// The answer to one proposed presentation context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextAnswer {
    /// The context's id.
    pub id: u8,
    /// 0 acceptance, 1 user rejection, 2 no reason, 3 abstract syntax not supported, 4
    /// transfer syntaxes not supported.
    pub result: u8,
    /// The transfer syntax chosen (meaningful when accepted).
    pub transfer_syntax: String,
}

/// An A-ASSOCIATE-AC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssociateAc {
    /// The called AE title, echoed.
    pub called_ae: String,
    /// The calling AE title, echoed.
    pub calling_ae: String,
    /// One answer per proposed context.
    pub contexts: Vec<ContextAnswer>,
    /// The acceptor's maximum P-DATA-TF length.
    pub max_pdu: u32,
    /// The acceptor's implementation class UID.
    pub implementation_class: String,
    /// Its implementation version name.
    pub implementation_version: String,
}

/// A cursor over a body, every read checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PduError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(PduError::Malformed(what))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, PduError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, PduError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }
    /// An item: its type and its body.
    fn item(&mut self, what: &'static str) -> Result<(u8, &'a [u8]), PduError> {
        let kind = self.u8(what)?;
        self.take(1, what)?;
        let length = self.u16(what)?;
        Ok((kind, self.take(usize::from(length), what)?))
    }
}

/// Text of an AE title or UID field: trailing spaces and NULs (UID padding) removed.
fn text(bytes: &[u8]) -> String {
    let trimmed = bytes
        .iter()
        .rposition(|byte| *byte != b' ' && *byte != 0)
        .map_or(&[][..], |last| &bytes[..=last]);
    let start = trimmed
        .iter()
        .position(|byte| *byte != b' ')
        .unwrap_or(trimmed.len());
    String::from_utf8_lossy(&trimmed[start..]).into_owned()
}

/// Parse an A-ASSOCIATE-RQ body (after the PDU header).
pub fn parse_associate_rq(body: &[u8]) -> Result<AssociateRq, PduError> {
    let mut cursor = Cursor { bytes: body, at: 0 };
    let what = "A-ASSOCIATE-RQ";
    cursor.take(4, what)?; // protocol version, reserved
    let called_ae = text(cursor.take(16, what)?);
    let calling_ae = text(cursor.take(16, what)?);
    cursor.take(32, what)?;
    let mut request = AssociateRq {
        called_ae,
        calling_ae,
        ..AssociateRq::default()
    };
    while !cursor.done() {
        let (kind, item) = cursor.item(what)?;
        match kind {
            0x10 => request.application_context = text(item),
            0x20 => {
                let mut inner = Cursor { bytes: item, at: 0 };
                let what = "presentation context item";
                let id = inner.u8(what)?;
                inner.take(3, what)?;
                let mut context = ProposedContext {
                    id,
                    abstract_syntax: String::new(),
                    transfer_syntaxes: Vec::new(),
                };
                while !inner.done() {
                    let (sub, value) = inner.item(what)?;
                    match sub {
                        0x30 => context.abstract_syntax = text(value),
                        0x40 => context.transfer_syntaxes.push(text(value)),
                        _ => {}
                    }
                }
                if request.contexts.len() >= MAX_CONTEXTS {
                    return Err(PduError::Malformed(
                        "A-ASSOCIATE-RQ: more than 128 presentation contexts",
                    ));
                }
                request.contexts.push(context);
            }
            0x50 => {
                let mut inner = Cursor { bytes: item, at: 0 };
                let what = "user information item";
                while !inner.done() {
                    let (sub, value) = inner.item(what)?;
                    match sub {
                        0x51 if value.len() == 4 => {
                            request.max_pdu =
                                u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                        }
                        0x52 => request.implementation_class = text(value),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(request)
}

fn push_item(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(value);
}

/// An AE title as its 16-byte field (space padded, cut at 16).
fn ae_field(title: &str) -> [u8; 16] {
    let mut field = [b' '; 16];
    for (slot, byte) in field.iter_mut().zip(title.bytes()) {
        *slot = byte;
    }
    field
}

fn user_information(out: &mut Vec<u8>, max_pdu: u32, class: &str, version: &str) {
    let mut user = Vec::new();
    push_item(&mut user, 0x51, &max_pdu.to_be_bytes());
    push_item(&mut user, 0x52, class.as_bytes());
    if !version.is_empty() {
        push_item(&mut user, 0x55, version.as_bytes());
    }
    push_item(out, 0x50, &user);
}

/// An A-ASSOCIATE-AC PDU.
pub fn encode_associate_ac(ac: &AssociateAc) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 1, 0, 0]);
    body.extend_from_slice(&ae_field(&ac.called_ae));
    body.extend_from_slice(&ae_field(&ac.calling_ae));
    body.extend_from_slice(&[0; 32]);
    push_item(&mut body, 0x10, APPLICATION_CONTEXT.as_bytes());
    for context in &ac.contexts {
        let mut item = vec![context.id, 0, context.result, 0];
        push_item(&mut item, 0x40, context.transfer_syntax.as_bytes());
        push_item(&mut body, 0x21, &item);
    }
    user_information(
        &mut body,
        ac.max_pdu,
        &ac.implementation_class,
        &ac.implementation_version,
    );
    encode(PduType::AssociateAc, &body)
}

/// An A-ASSOCIATE-RQ PDU.
pub fn encode_associate_rq(rq: &AssociateRq, version: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0, 1, 0, 0]);
    body.extend_from_slice(&ae_field(&rq.called_ae));
    body.extend_from_slice(&ae_field(&rq.calling_ae));
    body.extend_from_slice(&[0; 32]);
    push_item(&mut body, 0x10, APPLICATION_CONTEXT.as_bytes());
    for context in &rq.contexts {
        let mut item = vec![context.id, 0, 0, 0];
        push_item(&mut item, 0x30, context.abstract_syntax.as_bytes());
        for syntax in &context.transfer_syntaxes {
            push_item(&mut item, 0x40, syntax.as_bytes());
        }
        push_item(&mut body, 0x20, &item);
    }
    user_information(&mut body, rq.max_pdu, &rq.implementation_class, version);
    encode(PduType::AssociateRq, &body)
}

/// Parse an A-ASSOCIATE-AC body.
pub fn parse_associate_ac(body: &[u8]) -> Result<AssociateAc, PduError> {
    let mut cursor = Cursor { bytes: body, at: 0 };
    let what = "A-ASSOCIATE-AC";
    cursor.take(4, what)?;
    let called_ae = text(cursor.take(16, what)?);
    let calling_ae = text(cursor.take(16, what)?);
    cursor.take(32, what)?;
    let mut ac = AssociateAc {
        called_ae,
        calling_ae,
        ..AssociateAc::default()
    };
    while !cursor.done() {
        let (kind, item) = cursor.item(what)?;
        match kind {
            0x21 => {
                let mut inner = Cursor { bytes: item, at: 0 };
                let what = "presentation context item";
                let id = inner.u8(what)?;
                inner.take(1, what)?;
                let result = inner.u8(what)?;
                inner.take(1, what)?;
                let mut transfer_syntax = String::new();
                while !inner.done() {
                    let (sub, value) = inner.item(what)?;
                    if sub == 0x40 {
                        transfer_syntax = text(value);
                    }
                }
                ac.contexts.push(ContextAnswer {
                    id,
                    result,
                    transfer_syntax,
                });
            }
            0x50 => {
                let mut inner = Cursor { bytes: item, at: 0 };
                while !inner.done() {
                    let (sub, value) = inner.item("user information item")?;
                    match sub {
                        0x51 if value.len() == 4 => {
                            ac.max_pdu =
                                u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                        }
                        0x52 => ac.implementation_class = text(value),
                        0x55 => ac.implementation_version = text(value),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(ac)
}

/// Why an association was rejected (A-ASSOCIATE-RJ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// 1 permanent, 2 transient.
    pub result: u8,
    /// 1 service user, 2 service provider (ACSE), 3 service provider (presentation).
    pub source: u8,
    /// The reason (its meaning depends on the source).
    pub reason: u8,
}

impl Rejection {
    /// The service user rejected: no reason given (permanent).
    pub const NO_REASON: Self = Self {
        result: 1,
        source: 1,
        reason: 1,
    };
    /// The called AE title is not recognized (permanent).
    pub const CALLED_AE: Self = Self {
        result: 1,
        source: 1,
        reason: 7,
    };
    /// The calling AE title is not recognized (permanent).
    pub const CALLING_AE: Self = Self {
        result: 1,
        source: 1,
        reason: 3,
    };
    /// Application context name not supported (permanent).
    pub const APPLICATION_CONTEXT: Self = Self {
        result: 1,
        source: 1,
        reason: 2,
    };
    /// Temporary congestion (transient).
    pub const CONGESTION: Self = Self {
        result: 2,
        source: 3,
        reason: 1,
    };

    /// Whether a later attempt may succeed.
    pub fn transient(self) -> bool {
        self.result == 2
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match (self.source, self.reason) {
            (1, 2) => "application context name not supported",
            (1, 3) => "calling AE title not recognized",
            (1, 7) => "called AE title not recognized",
            (1, _) => "rejected by the peer, no reason given",
            (2, 2) => "protocol version not supported",
            (2, _) => "rejected by the peer's ACSE, no reason given",
            (3, 1) => "temporary congestion",
            (3, 2) => "local limit exceeded",
            _ => "rejected by the peer",
        };
        let kind = if self.transient() {
            "transient"
        } else {
            "permanent"
        };
        write!(formatter, "association rejected ({kind}): {reason}")
    }
}

/// An A-ASSOCIATE-RJ PDU.
pub fn encode_associate_rj(rejection: Rejection) -> Vec<u8> {
    encode(
        PduType::AssociateRj,
        &[0, rejection.result, rejection.source, rejection.reason],
    )
}

/// Parse an A-ASSOCIATE-RJ body.
pub fn parse_associate_rj(body: &[u8]) -> Result<Rejection, PduError> {
    match body {
        [_, result, source, reason, ..] => Ok(Rejection {
            result: *result,
            source: *source,
            reason: *reason,
        }),
        _ => Err(PduError::Malformed("A-ASSOCIATE-RJ")),
    }
}

/// A-RELEASE-RQ.
pub fn release_rq() -> Vec<u8> {
    encode(PduType::ReleaseRq, &[0; 4])
}

/// A-RELEASE-RP.
pub fn release_rp() -> Vec<u8> {
    encode(PduType::ReleaseRp, &[0; 4])
}

/// A-ABORT from the service provider (`reason` 0: not specified, 2: unexpected PDU, 6:
/// invalid PDU parameter).
pub fn abort(reason: u8) -> Vec<u8> {
    encode(PduType::Abort, &[0, 0, 2, reason])
}

/// One presentation data value of a P-DATA-TF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pdv<'a> {
    /// The presentation context id.
    pub context: u8,
    /// A command fragment (else a data set fragment).
    pub command: bool,
    /// The last fragment of its command or data set.
    pub last: bool,
    /// The fragment.
    pub data: &'a [u8],
}

/// The PDVs of a P-DATA-TF body, each length checked against the body.
pub fn pdvs(body: &[u8]) -> Result<Vec<Pdv<'_>>, PduError> {
    let mut cursor = Cursor { bytes: body, at: 0 };
    let mut out = Vec::new();
    while !cursor.done() {
        let what = "P-DATA-TF";
        let length = cursor.take(4, what)?;
        let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
        let length = usize::try_from(length).map_err(|_| PduError::Malformed(what))?;
        if length < 2 {
            return Err(PduError::Malformed(what));
        }
        let item = cursor.take(length, what)?;
        out.push(Pdv {
            context: item[0],
            command: item[1] & 1 == 1,
            last: item[1] & 2 == 2,
            data: &item[2..],
        });
    }
    Ok(out)
}

/// P-DATA-TF PDUs carrying `data` (a command or a data set) on `context`, each at most
/// `max_pdu` long (the peer's maximum; 0: none, and then at most [`MAX_SENT_PDU`]), the last
/// fragment marked. Built one at a time as they are written, so an object is never held
/// twice.
pub fn encode_pdata(
    context: u8,
    command: bool,
    data: &[u8],
    max_pdu: u32,
) -> impl Iterator<Item = Vec<u8>> + '_ {
    // A PDV item adds 6 bytes (length, context id, control header) to its fragment.
    let max = match max_pdu {
        0 => MAX_SENT_PDU,
        max => max.min(MAX_SENT_PDU),
    };
    let room = usize::try_from(max).unwrap_or(usize::MAX).max(7) - 6;
    let count = data.len().div_ceil(room).max(1);
    (0..count).map(move |index| {
        let start = index * room;
        let end = (start + room).min(data.len());
        pdata_one(context, command, index + 1 == count, &data[start..end])
    })
}

/// The longest PDU mfoundry sends (a peer announcing no maximum, or a larger one, gets
/// PDUs of this length).
pub const MAX_SENT_PDU: u32 = 1 << 20;
/// The smallest maximum a peer may announce for mfoundry to send to it (below it, sending
/// an object would take a PDU per few bytes).
pub const MIN_PEER_PDU: u32 = 1024;

fn pdata_one(context: u8, command: bool, last: bool, fragment: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(6 + fragment.len());
    body.extend_from_slice(
        &u32::try_from(fragment.len() + 2)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.push(context);
    body.push(u8::from(command) | (u8::from(last) << 1));
    body.extend_from_slice(fragment);
    encode(PduType::PData, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_declared_length_above_the_cap_is_refused_before_the_body() {
        let mut bytes = [4u8, 0, 0, 0, 0, 0];
        bytes[2..].copy_from_slice(&(1u32 << 30).to_be_bytes());
        assert!(matches!(
            header(&bytes, 16_384),
            Err(PduError::TooLong { .. })
        ));
        bytes[2..].copy_from_slice(&100u32.to_be_bytes());
        assert_eq!(header(&bytes, 16_384), Ok((PduType::PData, 100)));
        assert_eq!(
            header(&[9, 0, 0, 0, 0, 0], 10),
            Err(PduError::UnknownType(9))
        );
    }

    #[test]
    fn an_associate_request_round_trips() {
        let rq = AssociateRq {
            called_ae: "MFOUNDRY".to_owned(),
            calling_ae: "CT1".to_owned(),
            application_context: APPLICATION_CONTEXT.to_owned(),
            contexts: vec![
                ProposedContext {
                    id: 1,
                    abstract_syntax: VERIFICATION.to_owned(),
                    transfer_syntaxes: vec!["1.2.840.10008.1.2".to_owned()],
                },
                ProposedContext {
                    id: 3,
                    abstract_syntax: "1.2.840.10008.5.1.4.1.1.2".to_owned(),
                    transfer_syntaxes: vec![
                        "1.2.840.10008.1.2.1".to_owned(),
                        "1.2.840.10008.1.2".to_owned(),
                    ],
                },
            ],
            max_pdu: 16_384,
            implementation_class: "1.2.3.4".to_owned(),
        };
        let bytes = encode_associate_rq(&rq, "TEST");
        let (kind, length) =
            header(bytes[..6].try_into().expect("in the test"), 1 << 20).expect("in the test");
        assert_eq!(kind, PduType::AssociateRq);
        assert_eq!(length as usize, bytes.len() - 6);
        assert_eq!(parse_associate_rq(&bytes[6..]).expect("in the test"), rq);
    }

    #[test]
    fn an_associate_accept_round_trips() {
        let ac = AssociateAc {
            called_ae: "MFOUNDRY".to_owned(),
            calling_ae: "CT1".to_owned(),
            contexts: vec![ContextAnswer {
                id: 1,
                result: 0,
                transfer_syntax: "1.2.840.10008.1.2.1".to_owned(),
            }],
            max_pdu: 65_536,
            implementation_class: "2.25.1".to_owned(),
            implementation_version: "MFOUNDRY".to_owned(),
        };
        let bytes = encode_associate_ac(&ac);
        assert_eq!(parse_associate_ac(&bytes[6..]).expect("in the test"), ac);
    }

    #[test]
    fn data_is_fragmented_within_the_peers_maximum_and_reassembles() {
        let data: Vec<u8> = (0..1000u32).map(|n| (n % 251) as u8).collect();
        let pdus: Vec<Vec<u8>> = encode_pdata(5, false, &data, 100).collect();
        let mut joined = Vec::new();
        for (index, pdu) in pdus.iter().enumerate() {
            assert!(pdu.len() - 6 <= 100, "each PDU within the maximum");
            let items = pdvs(&pdu[6..]).expect("in the test");
            assert_eq!(items.len(), 1);
            assert_eq!(items[0].last, index == pdus.len() - 1);
            assert!(!items[0].command);
            joined.extend_from_slice(items[0].data);
        }
        assert_eq!(joined, data);
    }

    proptest! {
        #[test]
        fn no_body_makes_the_parsers_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_associate_rq(&body);
            let _ = parse_associate_ac(&body);
            let _ = parse_associate_rj(&body);
            let _ = pdvs(&body);
        }

        #[test]
        fn pdvs_never_reach_outside_the_body(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(items) = pdvs(&body) {
                let total: usize = items.iter().map(|item| item.data.len() + 6).sum();
                prop_assert_eq!(total, body.len());
            }
        }
    }
}
