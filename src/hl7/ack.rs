//! HL7 v2 acknowledgements, built from the received header with the sender's delimiters.
//!
//! Layout of what is written (segments end with `\r`, the standard terminator):
//!
//! ```text
//! MSH|<MSH-2>|<MSH-5>|<MSH-6>|<MSH-3>|<MSH-4>|<now>||<ACK type>|<new id>|<MSH-11>|<MSH-12>[|||||||<MSH-18>]
//! MSA|<code>|<received MSH-10>[|<text, NACK only, before v2.7>]
//! ERR|...   (NACK only)
//! ```
//!
//! `<ACK type>` is `ACK^<trigger>^ACK` from v2.4 on and `ACK` before. The ERR segment takes
//! the form the message's version expects: for v2.3 and v2.4, ERR-1 (ELD: location and a
//! table 0357 code with its text), the readable reason travelling in MSA-3; from v2.5 on,
//! ERR-2 location, ERR-3 code, ERR-4 severity, ERR-7 diagnostics and ERR-8 the reason.
//! Unknown or missing versions get the v2.5 form.
//!
//! **Invariant:** every ACK reads back with its own MSH-1/MSH-2, fields in place. MSH-1 is the
//! sender's field separator. MSH-2 is the sender's as received when usable; when it is not, the
//! standard `^~\&`, the one equal to the field separator (if any) replaced by `!`, which
//! collides with nothing (`MSH^` gets `!~\&`). `<now>` is the stamp's local time with its UTC
//! offset (`20261122143005+0100`), except when `+` or `-` is the field separator or one of the
//! ACK's encoding characters: the offset's sign would split or shift the field, so MSH-7 is
//! then the same instant in UTC without an offset (`20261122133005`).

use std::borrow::Cow;
use std::fmt;

use super::escape::escape;
use super::message::{HeaderKind, Version};
use super::{Delimiters, Message};

/// Acknowledgement codes (HL7 table 0008).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckCode {
    /// Original mode: application accept.
    AA,
    /// Original mode: application error.
    AE,
    /// Original mode: application reject.
    AR,
    /// Enhanced mode: commit accept.
    CA,
    /// Enhanced mode: commit error.
    CE,
    /// Enhanced mode: commit reject.
    CR,
}

impl AckCode {
    /// The two letters on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AA => "AA",
            Self::AE => "AE",
            Self::AR => "AR",
            Self::CA => "CA",
            Self::CE => "CE",
            Self::CR => "CR",
        }
    }

    /// Parse the two letters of MSA-1.
    pub fn parse(text: &[u8]) -> Option<Self> {
        Some(match text {
            b"AA" => Self::AA,
            b"AE" => Self::AE,
            b"AR" => Self::AR,
            b"CA" => Self::CA,
            b"CE" => Self::CE,
            b"CR" => Self::CR,
            _ => return None,
        })
    }

    /// True for AA and CA.
    pub fn is_accept(&self) -> bool {
        matches!(self, Self::AA | Self::CA)
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The outcome ingest decided, before it is mapped onto a mode's code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The message is accepted (AA / CA).
    Accept,
    /// Something failed on our side (AE / CE).
    Error,
    /// The message itself is refused (AR / CR).
    Reject,
}

/// Which acknowledgement mode the sender asked for (MSH-15 and MSH-16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 both empty: AA / AE / AR, always sent.
    Original,
    /// MSH-15 or MSH-16 valued (an empty one counts as `NE`).
    Enhanced {
        /// MSH-15: when a commit ACK (CA / CE / CR) is wanted.
        accept: AckCondition,
        /// MSH-16: when an application ACK (AA / AE / AR) is wanted.
        application: AckCondition,
    },
}

/// When an acknowledgement is wanted (HL7 table 0155).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCondition {
    /// `AL`: always.
    Always,
    /// `NE`: never.
    Never,
    /// `ER`: only on error or reject.
    ErrorOnly,
    /// `SU`: only on success.
    SuccessOnly,
}

impl AckCondition {
    /// Read MSH-15 or MSH-16: `None` when empty (or the HL7 null `""`); unknown values are
    /// taken as `AL`, so a sender that asked for something gets an answer rather than silence.
    fn parse(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        if value.is_empty() || value == b"\"\"" {
            return None;
        }
        Some(match value {
            b"NE" => Self::Never,
            b"ER" => Self::ErrorOnly,
            b"SU" => Self::SuccessOnly,
            _ => Self::Always,
        })
    }

    /// Whether the condition asks for an ACK after this verdict.
    pub fn holds(&self, verdict: Verdict) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::ErrorOnly => verdict != Verdict::Accept,
            Self::SuccessOnly => verdict == Verdict::Accept,
        }
    }
}

impl AckMode {
    /// The mode requested by a message.
    pub fn of(message: &Message) -> Self {
        let accept = AckCondition::parse(message.header_component(15, 1));
        let application = AckCondition::parse(message.header_component(16, 1));
        if accept.is_none() && application.is_none() {
            return Self::Original;
        }
        Self::Enhanced {
            accept: accept.unwrap_or(AckCondition::Never),
            application: application.unwrap_or(AckCondition::Never),
        }
    }

    /// The code to send for a verdict, or `None` when the sender asked for no ACK in this
    /// case. In enhanced mode a wanted commit ACK (CA/CE/CR) comes first; when MSH-15 wants
    /// none but MSH-16 wants an application ACK (e.g. `NE|AL`, which HL7 equates with original
    /// mode), mfoundry answers AA/AE/AR as the application that took the message.
    pub fn reply_code(&self, verdict: Verdict) -> Option<AckCode> {
        match self {
            Self::Original => Some(original_code(verdict)),
            Self::Enhanced {
                accept,
                application,
            } => {
                if accept.holds(verdict) {
                    Some(commit_code(verdict))
                } else if application.holds(verdict) {
                    Some(original_code(verdict))
                } else {
                    None
                }
            }
        }
    }

    /// The code that describes the verdict in this mode, sent or not.
    pub fn decided_code(&self, verdict: Verdict) -> AckCode {
        match self {
            Self::Original => original_code(verdict),
            Self::Enhanced { .. } => commit_code(verdict),
        }
    }
}

fn original_code(verdict: Verdict) -> AckCode {
    match verdict {
        Verdict::Accept => AckCode::AA,
        Verdict::Error => AckCode::AE,
        Verdict::Reject => AckCode::AR,
    }
}

fn commit_code(verdict: Verdict) -> AckCode {
    match verdict {
        Verdict::Accept => AckCode::CA,
        Verdict::Error => AckCode::CE,
        Verdict::Reject => AckCode::CR,
    }
}

/// HL7 table 0357, message error condition codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: accepted, with a warning (ERR-4 severity `W`).
    MessageAccepted,
    /// 100
    SegmentSequenceError,
    /// 101
    RequiredFieldMissing,
    /// 102
    DataTypeError,
    /// 103
    TableValueNotFound,
    /// 200
    UnsupportedMessageType,
    /// 201
    UnsupportedEventCode,
    /// 202
    UnsupportedProcessingId,
    /// 203
    UnsupportedVersionId,
    /// 207
    ApplicationInternalError,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(&self) -> u16 {
        match self {
            Self::MessageAccepted => 0,
            Self::SegmentSequenceError => 100,
            Self::RequiredFieldMissing => 101,
            Self::DataTypeError => 102,
            Self::TableValueNotFound => 103,
            Self::UnsupportedMessageType => 200,
            Self::UnsupportedEventCode => 201,
            Self::UnsupportedProcessingId => 202,
            Self::UnsupportedVersionId => 203,
            Self::ApplicationInternalError => 207,
        }
    }

    /// The table's text for the code.
    pub fn text(&self) -> &'static str {
        match self {
            Self::MessageAccepted => "Message accepted",
            Self::SegmentSequenceError => "Segment sequence error",
            Self::RequiredFieldMissing => "Required field missing",
            Self::DataTypeError => "Data type error",
            Self::TableValueNotFound => "Table value not found",
            Self::UnsupportedMessageType => "Unsupported message type",
            Self::UnsupportedEventCode => "Unsupported event code",
            Self::UnsupportedProcessingId => "Unsupported processing id",
            Self::UnsupportedVersionId => "Unsupported version id",
            Self::ApplicationInternalError => "Application internal error",
        }
    }
}

/// Where in the message an error was found (ERR-2, or the first components of ERR-1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorLocation {
    /// Segment name, e.g. `PID`.
    pub segment: String,
    /// 1-based occurrence of that segment.
    pub sequence: usize,
    /// Field number, if known.
    pub field: Option<usize>,
}

impl ErrorLocation {
    /// A location pointing at a header field (MSH-n).
    pub fn header(field: usize) -> Self {
        Self {
            segment: "MSH".to_owned(),
            sequence: 1,
            field: Some(field),
        }
    }
}

/// The error carried by a NACK. Its texts are mfoundry's own words: never message data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckError {
    /// Table 0357 code.
    pub code: ErrorCode,
    /// Where, if known.
    pub location: Option<ErrorLocation>,
    /// The human-readable reason (ERR-8, MSA-3 before v2.7, the text of ERR-1 before v2.5).
    pub user_message: String,
    /// Technical detail for the sender's interface team (ERR-7, v2.5+).
    pub diagnostic: Option<String>,
    /// mfoundry's own code for the failure, e.g. the failing rule's name (ERR-5, v2.5+).
    pub application_code: Option<String>,
}

impl AckError {
    /// An error with a code, an optional location and a reason.
    pub fn new(code: ErrorCode, location: Option<ErrorLocation>, user_message: String) -> Self {
        Self {
            code,
            location,
            user_message,
            diagnostic: None,
            application_code: None,
        }
    }
}

/// The two values an ACK invents: its own control id (MSH-10) and time (MSH-7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckStamp {
    /// MSH-7, e.g. `20261122143005+0100` (written in UTC without the offset when `+` or `-`
    /// is one of the ACK's delimiters).
    pub timestamp: String,
    /// MSH-10, unique per ACK.
    pub control_id: String,
}

/// Build the acknowledgement for `message`.
///
/// For a batch envelope (`FHS`/`BHS`) the apps and facilities are taken from the envelope,
/// MSA-2 is the batch control id (BHS-11, else FHS-11) and the version from the first MSH inside.
pub fn build_ack(
    message: &Message,
    code: AckCode,
    error: Option<&AckError>,
    stamp: &AckStamp,
) -> Vec<u8> {
    let ack_delimiters = answer_delimiters(message);
    let delimiters = &ack_delimiters;
    // MSH-9, -11, -12 and -18 come from the message header; for a batch, from its first MSH
    // (an envelope's fields 9 to 12 mean other things), or nothing when it holds none.
    let inner = first_inner_message(message);
    let version_source = match message.kind() {
        HeaderKind::Message => Some(message),
        HeaderKind::FileBatch | HeaderKind::Batch => inner.as_ref(),
    };
    let header_value = |number: usize| {
        version_source
            .map(|source| source.header_field(number))
            .unwrap_or_default()
    };
    let version = version_source.and_then(Message::version);
    let control_id = match message.kind() {
        HeaderKind::Message => message.header_field(10),
        HeaderKind::FileBatch | HeaderKind::Batch => batch_control_id(message),
    };
    let trigger = version_source
        .map(|source| source.header_component(9, 2))
        .unwrap_or_default();

    let field = [delimiters.field];
    let component = delimiters.component.unwrap_or(b'^');
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"MSH");
    out.extend_from_slice(&field);
    out.extend_from_slice(delimiters.encoding_characters());
    for value in [
        message.header_field(5),
        message.header_field(6),
        message.header_field(3),
        message.header_field(4),
        &header_timestamp(&stamp.timestamp, delimiters),
        b"",
    ] {
        out.extend_from_slice(&field);
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&field);
    out.extend_from_slice(b"ACK");
    if uses_structured_type(version) && !trigger.is_empty() {
        out.push(component);
        out.extend_from_slice(trigger);
        out.push(component);
        out.extend_from_slice(b"ACK");
    }
    out.extend_from_slice(&field);
    out.extend_from_slice(&escape(stamp.control_id.as_bytes(), delimiters));
    out.extend_from_slice(&field);
    out.extend_from_slice(header_value(11));
    out.extend_from_slice(&field);
    out.extend_from_slice(header_value(12));
    let charset = header_value(18);
    if !charset.is_empty() {
        for _ in 13..18 {
            out.extend_from_slice(&field);
        }
        out.extend_from_slice(&field);
        out.extend_from_slice(charset);
    }
    out.push(b'\r');

    out.extend_from_slice(b"MSA");
    out.extend_from_slice(&field);
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(&field);
    out.extend_from_slice(control_id);
    if let Some(error) = error {
        if carries_msa3(version) {
            out.extend_from_slice(&field);
            out.extend_from_slice(&escape(error.user_message.as_bytes(), delimiters));
        }
        out.push(b'\r');
        write_err(&mut out, error, version, delimiters);
    }
    out.push(b'\r');
    out
}

/// The delimiters the ACK declares and writes with: the sender's when its MSH-2 is usable,
/// else the standard `^~\&` with the one equal to the field separator, if any, replaced by
/// [`FALLBACK_SPARE`].
fn answer_delimiters(message: &Message) -> Delimiters {
    let received = message.delimiters();
    if message.delimiter_error().is_none() {
        return received.clone();
    }
    let field = received.field;
    let mut encoding_characters = *b"^~\\&";
    for byte in &mut encoding_characters {
        if *byte == field {
            *byte = FALLBACK_SPARE;
        }
    }
    match Delimiters::parse(field, &encoding_characters) {
        Ok(delimiters) => delimiters,
        Err(error) => {
            debug_assert!(false, "fallback encoding characters are usable: {error}");
            received.clone()
        }
    }
}

/// Stand-in for the standard encoding character equal to the field separator. It is none of
/// `^~\&`, so it cannot equal that field separator or another encoding character; it is
/// neither `+` nor `-` (which would move MSH-7 to UTC) nor `#` (the usual v2.7 truncation
/// character).
const FALLBACK_SPARE: u8 = b'!';

/// MSH-7 of the ACK. When `+` or `-` is a delimiter, an offset's sign would be read as one, so
/// a stamp with an offset (`20261205213000-0500`) is written as the same instant in UTC without
/// one (`20261206023000`); otherwise the stamp is written as it is. Any delimiter still left
/// (only a stamper of another form could leave one) is escaped, so the fields stay in place.
pub(super) fn header_timestamp<'a>(timestamp: &'a str, delimiters: &Delimiters) -> Cow<'a, [u8]> {
    let signs_are_delimiters = std::iter::once(delimiters.field)
        .chain(delimiters.encoding_characters().iter().copied())
        .any(|byte| byte == b'+' || byte == b'-');
    let written = if signs_are_delimiters {
        match chrono::DateTime::parse_from_str(timestamp, "%Y%m%d%H%M%S%z") {
            Ok(time) => Cow::Owned(
                time.with_timezone(&chrono::Utc)
                    .format("%Y%m%d%H%M%S")
                    .to_string()
                    .into_bytes(),
            ),
            Err(_) => Cow::Borrowed(timestamp.as_bytes()),
        }
    } else {
        Cow::Borrowed(timestamp.as_bytes())
    };
    let needs_escape = written.iter().any(|&byte| {
        matches!(byte, b'\r' | b'\n')
            || byte == delimiters.field
            || delimiters.encoding_characters().contains(&byte)
    });
    if needs_escape {
        Cow::Owned(escape(&written, delimiters))
    } else {
        written
    }
}

/// `ACK^<trigger>^ACK` from v2.4 on (and for unknown versions).
fn uses_structured_type(version: Option<Version>) -> bool {
    version.is_none_or(|version| version >= Version::new(2, 4, 0))
}

/// MSA-3 was withdrawn in v2.7.
fn carries_msa3(version: Option<Version>) -> bool {
    version.is_none_or(|version| version < Version::new(2, 7, 0))
}

/// ERR-2..8 from v2.5 on (and for unknown versions); ERR-1 before.
fn uses_err_v25(version: Option<Version>) -> bool {
    version.is_none_or(|version| version >= Version::new(2, 5, 0))
}

fn write_err(
    out: &mut Vec<u8>,
    error: &AckError,
    version: Option<Version>,
    delimiters: &Delimiters,
) {
    let field = delimiters.field;
    let component = delimiters.component.unwrap_or(b'^');
    let subcomponent = delimiters.subcomponent.unwrap_or(b'&');
    let code = error.code.code().to_string();
    out.extend_from_slice(b"ERR");
    out.push(field);
    if uses_err_v25(version) {
        // ERR-1 (withdrawn) stays empty; ERR-2 location.
        out.push(field);
        if let Some(location) = &error.location {
            write_location(out, location, false, delimiters);
        }
        // ERR-3 HL7 error code (CWE): code^text^HL70357.
        out.push(field);
        out.extend_from_slice(code.as_bytes());
        out.push(component);
        out.extend_from_slice(error.code.text().as_bytes());
        out.push(component);
        out.extend_from_slice(b"HL70357");
        // ERR-4 severity (table 0516): E = error, W = warning (accepted).
        out.push(field);
        out.push(if error.code == ErrorCode::MessageAccepted {
            b'W'
        } else {
            b'E'
        });
        // ERR-5 application error code (mfoundry's own, e.g. a rule name); ERR-6 not used.
        out.push(field);
        if let Some(code) = &error.application_code {
            out.extend_from_slice(&escape(code.as_bytes(), delimiters));
        }
        out.push(field);
        // ERR-7 diagnostic information.
        out.push(field);
        if let Some(diagnostic) = &error.diagnostic {
            out.extend_from_slice(&escape(diagnostic.as_bytes(), delimiters));
        }
        // ERR-8 user message.
        out.push(field);
        out.extend_from_slice(&escape(error.user_message.as_bytes(), delimiters));
    } else {
        // ERR-1 (ELD): segment^sequence^field^code&text&HL70357.
        match &error.location {
            Some(location) => write_location(out, location, true, delimiters),
            None => {
                out.push(component);
                out.push(component);
            }
        }
        out.push(component);
        out.extend_from_slice(code.as_bytes());
        out.push(subcomponent);
        out.extend_from_slice(error.code.text().as_bytes());
        out.push(subcomponent);
        out.extend_from_slice(b"HL70357");
    }
}

/// Segment^sequence^field. With `fixed_width` (ERR-1, where the error code follows as the
/// fourth component) an unknown field still leaves its empty component.
fn write_location(
    out: &mut Vec<u8>,
    location: &ErrorLocation,
    fixed_width: bool,
    delimiters: &Delimiters,
) {
    let component = delimiters.component.unwrap_or(b'^');
    out.extend_from_slice(&escape(location.segment.as_bytes(), delimiters));
    out.push(component);
    out.extend_from_slice(location.sequence.to_string().as_bytes());
    match location.field {
        Some(field) => {
            out.push(component);
            out.extend_from_slice(field.to_string().as_bytes());
        }
        None if fixed_width => out.push(component),
        None => {}
    }
}

/// The first MSH inside a batch, parsed on its own.
fn first_inner_message(message: &Message) -> Option<Message> {
    if message.kind() == HeaderKind::Message {
        return None;
    }
    Message::parse(message.tail_from_segment(b"MSH")?).ok()
}

fn batch_control_id(message: &Message) -> &[u8] {
    let from = |name: &[u8]| {
        message
            .segment(name, 1)
            .and_then(|segment| segment.field(11))
            .filter(|value| !value.is_empty())
    };
    from(b"BHS").or_else(|| from(b"FHS")).unwrap_or_default()
}

/// Source of [`AckStamp`]s. Tests use a fixed one to compare ACK bytes exactly.
pub trait AckStamper: Send + Sync + fmt::Debug {
    /// A fresh stamp: the current time and a control id never handed out before.
    fn stamp(&self) -> AckStamp;
}

/// Local time with UTC offset (the ACK writes it in UTC without one when `+` or `-` is a
/// delimiter), and control ids from a microsecond clock that never repeats
/// within a process (16 digits, within the 20 characters MSH-10 allows in every version).
#[derive(Debug, Default)]
pub struct SystemStamper {
    last_id: std::sync::atomic::AtomicU64,
}

impl AckStamper for SystemStamper {
    fn stamp(&self) -> AckStamp {
        use std::sync::atomic::Ordering;
        let now = chrono::Local::now();
        let micros = u64::try_from(now.timestamp_micros()).unwrap_or_default();
        let mut previous = self.last_id.load(Ordering::Relaxed);
        let id = loop {
            let candidate = micros.max(previous + 1);
            match self.last_id.compare_exchange_weak(
                previous,
                candidate,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break candidate,
                Err(actual) => previous = actual,
            }
        };
        AckStamp {
            timestamp: now.format("%Y%m%d%H%M%S%z").to_string(),
            control_id: id.to_string(),
        }
    }
}

/// Always the same stamp; for tests and golden files.
#[derive(Debug, Clone)]
pub struct FixedStamper(pub AckStamp);

impl AckStamper for FixedStamper {
    fn stamp(&self) -> AckStamp {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_stamps_are_unique_and_well_formed() {
        let stamper = SystemStamper::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let stamp = stamper.stamp();
            assert!(stamp.control_id.len() <= 20);
            assert!(seen.insert(stamp.control_id));
            assert_eq!(stamp.timestamp.len(), 19, "{}", stamp.timestamp);
        }
    }

    fn ack_for(raw: &str, timestamp: &str) -> String {
        let message = Message::parse(bytes::Bytes::from(raw.to_owned())).expect("parses");
        let stamp = AckStamp {
            timestamp: timestamp.to_owned(),
            control_id: "A1".to_owned(),
        };
        String::from_utf8(build_ack(&message, AckCode::AA, None, &stamp)).expect("ascii")
    }

    #[test]
    fn msh7_moves_to_utc_only_when_a_sign_is_a_delimiter() {
        let stamp = "20261205213000-0500";
        assert_eq!(
            ack_for("MSH|^~\\&|A|B|C|D|||ADT|X|P|2.3\r", stamp),
            "MSH|^~\\&|C|D|A|B|20261205213000-0500||ACK|A1|P|2.3\rMSA|AA|X\r"
        );
        for raw in [
            "MSH+^~\\&+A+B+C+D+++ADT+X+P+2.3\r",
            "MSH|-~\\&|A|B|C|D|||ADT|X|P|2.3\r",
            "MSH|^+\\&|A|B|C|D|||ADT|X|P|2.3\r",
            "MSH|^~-&|A|B|C|D|||ADT|X|P|2.3\r",
            "MSH|^~\\+|A|B|C|D|||ADT|X|P|2.3\r",
            "MSH|^~\\&-|A|B|C|D|||ADT|X|P|2.7\r",
        ] {
            let ack = ack_for(raw, stamp);
            let field = &raw[3..4];
            assert!(
                ack.contains(&format!("{field}20261206023000{field}")),
                "{raw:?} -> {ack:?}"
            );
        }
        // A stamp in another form is kept, its delimiters escaped.
        assert!(ack_for("MSH+^~\\&+A+B+C+D+++ADT+X+P+2.3\r", "2026+1").contains("+2026\\F\\1+"));
    }

    #[test]
    fn unusable_msh2_is_answered_with_characters_apart_from_the_field_separator() {
        for (field, expected) in [
            ('|', "^~\\&"),
            ('^', "!~\\&"),
            ('~', "^!\\&"),
            ('\\', "^~!&"),
            ('&', "^~\\!"),
        ] {
            let raw = format!(
                "MSH{field}%%{field}A{field}B{field}C{field}D{field}{field}{field}ADT{field}X\r"
            );
            let ack = ack_for(&raw, "20261205213000+0100");
            assert!(
                ack.starts_with(&format!("MSH{field}{expected}{field}C{field}D{field}")),
                "{raw:?} -> {ack:?}"
            );
            assert!(
                ack.contains(&format!("\rMSA{field}AA{field}X\r")),
                "{ack:?}"
            );
        }
    }

    #[test]
    fn enhanced_mode_follows_msh15_and_msh16() {
        let mode = |msh15: &str, msh16: &str| {
            let raw = format!("MSH|^~\\&|A|B|C|D|||ADT^A01|X|P|2.5|||{msh15}|{msh16}\r");
            AckMode::of(&Message::parse(bytes::Bytes::from(raw)).expect("parses"))
        };
        let codes = |mode: AckMode| {
            [Verdict::Accept, Verdict::Error, Verdict::Reject]
                .map(|verdict| mode.reply_code(verdict))
        };
        use AckCode::{AA, AE, AR, CA, CE, CR};
        assert_eq!(mode("", ""), AckMode::Original);
        assert_eq!(mode("\"\"", ""), AckMode::Original, "HL7 null is empty");
        assert_eq!(codes(mode("", "")), [Some(AA), Some(AE), Some(AR)]);
        assert_eq!(codes(mode("AL", "NE")), [Some(CA), Some(CE), Some(CR)]);
        assert_eq!(codes(mode("AL", "AL")), [Some(CA), Some(CE), Some(CR)]);
        assert_eq!(codes(mode("NE", "NE")), [None, None, None]);
        assert_eq!(codes(mode("ER", "NE")), [None, Some(CE), Some(CR)]);
        assert_eq!(codes(mode("SU", "NE")), [Some(CA), None, None]);
        assert_eq!(codes(mode("NE", "AL")), [Some(AA), Some(AE), Some(AR)]);
        assert_eq!(codes(mode("", "AL")), [Some(AA), Some(AE), Some(AR)]);
        assert_eq!(codes(mode("SU", "ER")), [Some(CA), Some(AE), Some(AR)]);
        assert_eq!(codes(mode("XX", "")), [Some(CA), Some(CE), Some(CR)]);
        assert_eq!(mode("NE", "NE").decided_code(Verdict::Accept), CA);
    }
}
