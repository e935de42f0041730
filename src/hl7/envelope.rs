//! Batches as received: the `FHS`/`BHS`/`BTS`/`FTS` envelope around messages, and the batch of
//! ACKs that answers one.
//!
//! ```text
//! [FHS]  { [BHS]  { MSH ... }  [BTS|<messages>] }  [FTS|<batches>]
//! ```
//!
//! Segments may end in `\r`, `\n` or `\r\n` (files often use line ends); blank lines and MLLP
//! framing bytes are skipped. Each message comes out as the bytes received when its segments
//! end in `\r` (the wire form), else rebuilt with `\r` terminators. Nothing here decides
//! anything about the messages: [`Envelope::count_problems`] reports what BTS-1 and FTS-1
//! say against what was found, the caller decides what a mismatch means.

use bytes::Bytes;

use super::ack::{AckStamp, header_timestamp};
use super::escape::escape;
use super::{Delimiters, Message};

/// One batch (`BHS` ... `BTS`), or the messages of a file outside any `BHS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// The `BHS` segment, without its terminator.
    pub header: Option<Bytes>,
    /// The messages, in order.
    pub messages: Vec<Bytes>,
    /// The `BTS` segment, without its terminator.
    pub trailer: Option<Bytes>,
}

/// A file or batch as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The `FHS` segment, without its terminator.
    pub file_header: Option<Bytes>,
    /// The batches, in order.
    pub groups: Vec<Group>,
    /// The `FTS` segment, without its terminator.
    pub file_trailer: Option<Bytes>,
}

/// Why bytes cannot be read as a batch. Places are 1-based segment numbers; no content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Nothing but blank lines.
    #[error("it holds no segment")]
    Empty,
    /// A segment that is not an envelope segment appears before the first MSH of its batch.
    #[error("segment {segment} ({name}) appears before any MSH; each message must start with MSH")]
    BeforeHeader {
        /// 1-based segment number.
        segment: usize,
        /// The segment's name.
        name: String,
    },
    /// An envelope segment out of place (`FHS` not first, a second `FTS`, a segment after
    /// `FTS`, a `BTS` without its `BHS`...).
    #[error("segment {segment} ({name}) is out of place: {expected}")]
    OutOfPlace {
        /// 1-based segment number.
        segment: usize,
        /// The segment's name.
        name: &'static str,
        /// What the envelope's order expects.
        expected: &'static str,
    },
    /// An envelope without a single message.
    #[error("the batch holds no message (no MSH segment)")]
    NoMessage,
}

/// What a trailer says against what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountProblem {
    /// `BTS-1` or `FTS-1`.
    pub field: &'static str,
    /// The 1-based batch, for `BTS-1`.
    pub batch: Option<usize>,
    /// What the trailer says: its digits, or `not a number`.
    pub declared: String,
    /// What was found.
    pub found: usize,
}

impl std::fmt::Display for CountProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.field == "FTS-1" {
            "batches"
        } else {
            "messages"
        };
        match self.batch {
            Some(batch) => write!(
                formatter,
                "{} of batch {batch} says {:?} {what}, the batch holds {}",
                self.field, self.declared, self.found
            ),
            None => write!(
                formatter,
                "{} says {:?} {what}, the file holds {}",
                self.field, self.declared, self.found
            ),
        }
    }
}

/// The UTF-8 byte order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Whether `bytes` starts (after a byte order mark, blank space and framing bytes) with `FHS`
/// or `BHS`.
pub fn is_envelope(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|byte| !(byte.is_ascii_whitespace() || *byte == 0x0B))
        .unwrap_or(bytes.len());
    let rest = &bytes[start..];
    matches!(rest.get(..3), Some(b"FHS" | b"BHS"))
        && rest
            .get(3)
            .is_some_and(|byte| !byte.is_ascii_alphanumeric())
}

/// The kinds of segment the envelope's order knows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    FileHeader,
    BatchHeader,
    BatchTrailer,
    FileTrailer,
    MessageHeader,
    Other,
}

fn kind_of(segment: &[u8]) -> Kind {
    let separated = segment
        .get(3)
        .is_none_or(|byte| !byte.is_ascii_alphanumeric());
    match segment.get(..3) {
        Some(b"FHS") if separated => Kind::FileHeader,
        Some(b"BHS") if separated => Kind::BatchHeader,
        Some(b"BTS") if separated => Kind::BatchTrailer,
        Some(b"FTS") if separated => Kind::FileTrailer,
        Some(b"MSH") if separated => Kind::MessageHeader,
        _ => Kind::Other,
    }
}

/// Segment spans: `(start, end, terminator)` of each non-blank segment, `terminator` being
/// the byte after it when that is `\r` alone (not the start of `\r\n`).
fn segments(raw: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut spans = Vec::new();
    // A UTF-8 byte order mark (files written on Windows) is not part of the first segment.
    let mut start = if raw.starts_with(BOM) { BOM.len() } else { 0 };
    let is_end = |byte: u8| matches!(byte, b'\r' | b'\n' | 0x0B | 0x1C);
    for (at, &byte) in raw.iter().enumerate().skip(start) {
        if is_end(byte) {
            push_span(raw, &mut spans, start, at);
            start = at + 1;
        }
    }
    push_span(raw, &mut spans, start, raw.len());
    spans
}

fn push_span(raw: &[u8], spans: &mut Vec<(usize, usize, bool)>, start: usize, end: usize) {
    if raw[start..end].iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let carriage_return_only =
        raw.get(end) == Some(&b'\r') && raw.get(end + 1).is_none_or(|next| *next != b'\n');
    spans.push((start, end, carriage_return_only));
}

/// Read `raw` as a batch: a file or batch envelope, or messages one after another.
pub fn parse_envelope(raw: &Bytes) -> Result<Envelope, EnvelopeError> {
    let spans = segments(raw);
    if spans.is_empty() {
        return Err(EnvelopeError::Empty);
    }
    let mut envelope = Envelope::default();
    // The message being gathered: the spans of its segments.
    let mut message: Vec<(usize, usize, bool)> = Vec::new();
    let mut group: Option<Group> = None;
    let out_of_place = |segment: usize, name: &'static str, expected: &'static str| {
        Err(EnvelopeError::OutOfPlace {
            segment,
            name,
            expected,
        })
    };
    for (index, &(start, end, terminated)) in spans.iter().enumerate() {
        let number = index + 1;
        let segment = raw.slice(start..end);
        if envelope.file_trailer.is_some() {
            return out_of_place(number, name_of(&segment), "nothing may follow FTS");
        }
        match kind_of(&segment) {
            Kind::FileHeader => {
                if index != 0 {
                    return out_of_place(number, "FHS", "FHS must be the first segment");
                }
                envelope.file_header = Some(segment);
            }
            Kind::BatchHeader => {
                finish_message(raw, &mut message, &mut group);
                // A batch without its BTS ends where the next begins (BTS and FTS are
                // often left out; their counts are checked only when present).
                envelope.groups.extend(group.take());
                group = Some(Group {
                    header: Some(segment),
                    ..Group::default()
                });
            }
            Kind::BatchTrailer => {
                finish_message(raw, &mut message, &mut group);
                match group.as_mut() {
                    Some(open) if open.header.is_some() && open.trailer.is_none() => {
                        open.trailer = Some(segment);
                    }
                    _ => {
                        return out_of_place(number, "BTS", "BTS must close a batch opened by BHS");
                    }
                }
            }
            Kind::FileTrailer => {
                finish_message(raw, &mut message, &mut group);
                if envelope.file_header.is_none() {
                    return out_of_place(number, "FTS", "FTS must close a file opened by FHS");
                }
                envelope.file_trailer = Some(segment);
            }
            Kind::MessageHeader => {
                finish_message(raw, &mut message, &mut group);
                let open = group.get_or_insert_with(Group::default);
                if open.trailer.is_some() {
                    // Messages after a BTS without a new BHS: a batch of their own.
                    let done = std::mem::take(open);
                    envelope.groups.push(done);
                }
                message.push((start, end, terminated));
            }
            Kind::Other => {
                if message.is_empty() {
                    // The name only when it looks like one: this text reaches logs.
                    let name = segment
                        .get(..3)
                        .filter(|name| {
                            name[0].is_ascii_uppercase()
                                && name
                                    .iter()
                                    .all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit())
                        })
                        .map_or_else(
                            || "not a segment name".to_owned(),
                            |name| String::from_utf8_lossy(name).into_owned(),
                        );
                    return Err(EnvelopeError::BeforeHeader {
                        segment: number,
                        name,
                    });
                }
                message.push((start, end, terminated));
            }
        }
    }
    finish_message(raw, &mut message, &mut group);
    envelope.groups.extend(group);
    if envelope
        .groups
        .iter()
        .all(|group| group.messages.is_empty())
    {
        return Err(EnvelopeError::NoMessage);
    }
    Ok(envelope)
}

fn name_of(segment: &[u8]) -> &'static str {
    match kind_of(segment) {
        Kind::FileHeader => "FHS",
        Kind::BatchHeader => "BHS",
        Kind::BatchTrailer => "BTS",
        Kind::FileTrailer => "FTS",
        Kind::MessageHeader => "MSH",
        Kind::Other => "a segment",
    }
}

/// Close the message being gathered into `group`: the bytes received when its segments are
/// contiguous and end in `\r`, else its segments joined with `\r`.
fn finish_message(raw: &Bytes, message: &mut Vec<(usize, usize, bool)>, group: &mut Option<Group>) {
    if message.is_empty() {
        return;
    }
    let contiguous = message.windows(2).all(|pair| pair[0].1 + 1 == pair[1].0)
        && message.iter().all(|(_, _, terminated)| *terminated);
    let first = message[0].0;
    let last = message[message.len() - 1].1;
    let bytes = if contiguous {
        raw.slice(first..last + 1)
    } else {
        let mut joined = Vec::with_capacity(last - first + message.len());
        for (start, end, _) in message.iter() {
            joined.extend_from_slice(&raw[*start..*end]);
            joined.push(b'\r');
        }
        Bytes::from(joined)
    };
    group
        .get_or_insert_with(Group::default)
        .messages
        .push(bytes);
    message.clear();
}

/// Field `number` of an envelope segment (fields split on its own fourth byte).
pub fn envelope_field(segment: &[u8], number: usize) -> &[u8] {
    let Some(&separator) = segment.get(3) else {
        return &[];
    };
    // FHS-1/BHS-1 is the separator itself: field n is piece n-1 after the name.
    if number == 0 {
        return &segment[..3];
    }
    if number == 1 && matches!(kind_of(segment), Kind::FileHeader | Kind::BatchHeader) {
        return &segment[3..4];
    }
    let offset = usize::from(matches!(
        kind_of(segment),
        Kind::FileHeader | Kind::BatchHeader
    ));
    segment
        .split(|byte| *byte == separator)
        .nth(number - offset)
        .unwrap_or_default()
}

impl Envelope {
    /// The messages, in order over every batch.
    pub fn messages(&self) -> impl Iterator<Item = &Bytes> {
        self.groups.iter().flat_map(|group| group.messages.iter())
    }

    /// How many messages in all.
    pub fn message_count(&self) -> usize {
        self.groups.iter().map(|group| group.messages.len()).sum()
    }

    /// Whether the bytes had an envelope (`FHS` or `BHS`) rather than bare messages.
    pub fn has_envelope(&self) -> bool {
        self.file_header.is_some() || self.groups.iter().any(|group| group.header.is_some())
    }

    /// Each trailer count (`BTS-1`, `FTS-1`) that is set and differs from what was found. An
    /// empty count is not checked (the field is optional).
    pub fn count_problems(&self) -> Vec<CountProblem> {
        let mut problems = Vec::new();
        let mut check = |field, batch, segment: &Bytes, found: usize| {
            let declared = envelope_field(segment, 1);
            let text = String::from_utf8_lossy(declared).trim().to_owned();
            if text.is_empty() {
                return;
            }
            if text.parse::<usize>().ok() != Some(found) {
                // Only digits are repeated (this text reaches logs and ACKs).
                let declared = if text.len() <= 20 && text.bytes().all(|byte| byte.is_ascii_digit())
                {
                    text
                } else {
                    "not a number".to_owned()
                };
                problems.push(CountProblem {
                    field,
                    batch,
                    declared,
                    found,
                });
            }
        };
        let batches = self.groups.len();
        for (index, group) in self.groups.iter().enumerate() {
            if let Some(trailer) = &group.trailer {
                check("BTS-1", Some(index + 1), trailer, group.messages.len());
            }
        }
        if let Some(trailer) = &self.file_trailer {
            check("FTS-1", None, trailer, batches);
        }
        problems
    }

    /// The envelope's header (FHS, else the first BHS), parsed like a message header, to
    /// build one ACK for the whole batch (`build_ack` takes its apps and control id).
    pub fn header_message(&self, raw: &Bytes) -> Option<Message> {
        if !self.has_envelope() {
            return None;
        }
        Message::parse(raw.clone()).ok()
    }

    /// The batch of ACKs answering this envelope: its `FHS` and each `BHS` mirrored (sending
    /// and receiving apps swapped, a new control id, the received one as the reference),
    /// `acks[i]` (whole ACK messages) inside batch `i`, `BTS` and `FTS` with their counts.
    /// Without an envelope, the ACKs one after another.
    pub fn reply(&self, acks: &[Vec<Vec<u8>>], stamp: &AckStamp) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 * (1 + self.message_count()));
        let mut serial = 0;
        let mut header = |out: &mut Vec<u8>, segment: &Bytes| {
            serial += 1;
            write_header(out, segment, stamp, serial);
        };
        if let Some(file_header) = &self.file_header {
            header(&mut out, file_header);
        }
        let separator = self.separator();
        for (group, group_acks) in self.groups.iter().zip(acks) {
            if let Some(batch_header) = &group.header {
                header(&mut out, batch_header);
            }
            for ack in group_acks {
                out.extend_from_slice(ack);
            }
            if group.header.is_some() {
                out.extend_from_slice(b"BTS");
                out.push(separator);
                out.extend_from_slice(group_acks.len().to_string().as_bytes());
                out.push(b'\r');
            }
        }
        if self.file_header.is_some() {
            out.extend_from_slice(b"FTS");
            out.push(separator);
            out.extend_from_slice(self.groups.len().to_string().as_bytes());
            out.push(b'\r');
        }
        out
    }

    fn separator(&self) -> u8 {
        self.file_header
            .iter()
            .chain(self.groups.iter().filter_map(|group| group.header.as_ref()))
            .find_map(|segment| segment.get(3).copied())
            .unwrap_or(b'|')
    }
}

/// `FHS`/`BHS` answering `received`: its delimiters, apps and facilities swapped, the stamp's
/// time, a control id of its own (the stamp's, with `serial`), the received control id as
/// the reference (field 12).
fn write_header(out: &mut Vec<u8>, received: &Bytes, stamp: &AckStamp, serial: usize) {
    let separator = received.get(3).copied().unwrap_or(b'|');
    let encoding = envelope_field(received, 2);
    let delimiters = Delimiters::parse(separator, encoding)
        .or_else(|_| Delimiters::parse(separator, b"^~\\&"))
        .ok();
    out.extend_from_slice(&received[..3]);
    out.push(separator);
    out.extend_from_slice(encoding);
    let time = match &delimiters {
        Some(delimiters) => header_timestamp(&stamp.timestamp, delimiters).into_owned(),
        None => Vec::new(),
    };
    let control_id = format!("{}.{serial}", stamp.control_id);
    let control_id = match &delimiters {
        Some(delimiters) => escape(control_id.as_bytes(), delimiters),
        None => Vec::new(),
    };
    for value in [
        envelope_field(received, 5),
        envelope_field(received, 6),
        envelope_field(received, 3),
        envelope_field(received, 4),
        &time,
        b"",
        b"",
        b"",
        &control_id,
        envelope_field(received, 11),
    ] {
        out.push(separator);
        out.extend_from_slice(value);
    }
    out.push(b'\r');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MSG1: &[u8] = b"MSH|^~\\&|LAB|H|EHR|H|202601011200||ORU^R01|1|P|2.5\rPID|1||A\r";
    const MSG2: &[u8] = b"MSH|^~\\&|LAB|H|EHR|H|202601011200||ORU^R01|2|P|2.5\rPID|1||B\r";

    fn batch(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    #[test]
    fn a_file_with_two_batches_keeps_each_message_as_received() {
        let raw = batch(&[
            b"FHS|^~\\&|LAB|H|EHR|H|||||F1\r",
            b"BHS|^~\\&|LAB|H|EHR|H|||||B1\r",
            MSG1,
            b"BTS|1\rBHS|^~\\&|LAB|H|EHR|H|||||B2\r",
            MSG2,
            b"BTS|1\rFTS|2\r",
        ]);
        let envelope = parse_envelope(&raw).expect("parses");
        assert_eq!(envelope.groups.len(), 2);
        assert_eq!(envelope.groups[0].messages, vec![Bytes::from_static(MSG1)]);
        assert_eq!(envelope.groups[1].messages, vec![Bytes::from_static(MSG2)]);
        assert!(envelope.count_problems().is_empty());
        assert_eq!(envelope.message_count(), 2);
    }

    #[test]
    fn line_ends_are_rebuilt_as_carriage_returns() {
        let raw = Bytes::from_static(
            b"BHS|^~\\&|LAB\r\nMSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\r\nPID|1\r\n\r\nBTS|1\n",
        );
        let envelope = parse_envelope(&raw).expect("parses");
        assert_eq!(
            envelope.groups[0].messages,
            vec![Bytes::from_static(
                b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1\r"
            )]
        );
    }

    #[test]
    fn counts_that_differ_are_reported_with_their_place() {
        let raw = batch(&[b"FHS|^~\\&\rBHS|^~\\&\r", MSG1, MSG2, b"BTS|3\rFTS|2\r"]);
        let problems = parse_envelope(&raw).expect("parses").count_problems();
        assert_eq!(problems.len(), 2);
        assert_eq!(
            problems[0].to_string(),
            "BTS-1 of batch 1 says \"3\" messages, the batch holds 2"
        );
        assert_eq!(
            problems[1].to_string(),
            "FTS-1 says \"2\" batches, the file holds 1"
        );
        let empty = batch(&[b"BHS|^~\\&\r", MSG1, b"BTS|\r"]);
        assert!(
            parse_envelope(&empty)
                .expect("parses")
                .count_problems()
                .is_empty()
        );
    }

    #[test]
    fn out_of_order_envelopes_are_refused_with_the_segment_number() {
        let cases: [(&[&[u8]], &str); 4] = [
            (&[b"BHS|^~\\&\r", MSG1, b"FHS|^~\\&\r"], "FHS"),
            (&[b"BHS|^~\\&\r", MSG1, b"BTS|1\rBTS|1\r"], "BTS"),
            (&[b"FHS|^~\\&\r", MSG1, b"FTS|1\r", MSG2], "MSH"),
            (&[b"BHS|^~\\&\r", MSG1, b"FTS|1\r"], "FTS"),
        ];
        for (parts, name) in cases {
            match parse_envelope(&batch(parts)) {
                Err(EnvelopeError::OutOfPlace { name: found, .. }) => assert_eq!(found, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(
            parse_envelope(&batch(&[b"BHS|^~\\&\rPID|1\r"])),
            Err(EnvelopeError::BeforeHeader {
                segment: 2,
                name: "PID".to_owned()
            })
        );
        assert_eq!(
            parse_envelope(&batch(&[b"BHS|^~\\&\rBTS|0\r"])),
            Err(EnvelopeError::NoMessage)
        );
        assert_eq!(
            parse_envelope(&Bytes::from_static(b"\r\n\n")),
            Err(EnvelopeError::Empty)
        );
    }

    #[test]
    fn the_reply_mirrors_the_envelope_with_counts_and_references() {
        let raw = batch(&[
            b"FHS|^~\\&|LAB|H|EHR|H|||||F1\rBHS|^~\\&|LAB|H|EHR|H|||||B1\r",
            MSG1,
            MSG2,
            b"BTS|2\rFTS|1\r",
        ]);
        let envelope = parse_envelope(&raw).expect("parses");
        let stamp = AckStamp {
            timestamp: "20260101120000+0000".to_owned(),
            control_id: "X".to_owned(),
        };
        let acks = vec![vec![
            b"MSH|a\rMSA|AA|1\r".to_vec(),
            b"MSH|b\rMSA|AA|2\r".to_vec(),
        ]];
        let reply = envelope.reply(&acks, &stamp);
        assert_eq!(
            String::from_utf8(reply).expect("text"),
            "FHS|^~\\&|EHR|H|LAB|H|20260101120000+0000||||X.1|F1\r\
             BHS|^~\\&|EHR|H|LAB|H|20260101120000+0000||||X.2|B1\r\
             MSH|a\rMSA|AA|1\rMSH|b\rMSA|AA|2\rBTS|2\rFTS|1\r"
        );
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let raw = batch(&[b"\xEF\xBB\xBFBHS|^~\\&\r", MSG1, b"BTS|1\r"]);
        assert!(is_envelope(&raw));
        let envelope = parse_envelope(&raw).expect("parses");
        assert_eq!(envelope.groups[0].messages, vec![Bytes::from_static(MSG1)]);
        assert_eq!(
            envelope.groups[0].header.as_deref(),
            Some(&b"BHS|^~\\&"[..])
        );
    }

    #[test]
    fn bare_messages_are_one_group_without_envelope() {
        let raw = batch(&[MSG1, b"\n", MSG2]);
        let envelope = parse_envelope(&raw).expect("parses");
        assert!(!envelope.has_envelope());
        assert_eq!(envelope.message_count(), 2);
        assert!(!is_envelope(&raw));
        assert!(is_envelope(b"\x0b BHS|^~\\&\r"));
        assert!(!is_envelope(b"BHSX|"));
    }

    /// A message with `segments` extra segments of printable text.
    fn arbitrary_message() -> impl Strategy<Value = Vec<u8>> {
        (
            "[A-Z0-9]{1,10}",
            proptest::collection::vec("[A-Z][A-Z0-9]{2}\\|[ -~&&[^|]]{0,20}", 0..4),
        )
            .prop_filter("no envelope or MSH segment inside", |(_, segments)| {
                segments
                    .iter()
                    .all(|segment| !matches!(&segment[..3], "MSH" | "FHS" | "BHS" | "BTS" | "FTS"))
            })
            .prop_map(|(control, segments)| {
                let mut message =
                    format!("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{control}|P|2.5\r").into_bytes();
                for segment in segments {
                    message.extend_from_slice(segment.as_bytes());
                    message.push(b'\r');
                }
                message
            })
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let raw = Bytes::from(raw);
            if let Ok(envelope) = parse_envelope(&raw) {
                prop_assert!(envelope.message_count() > 0);
                let _ = envelope.count_problems();
            }
        }

        #[test]
        fn batches_give_back_their_messages_with_any_line_ends(
            groups in proptest::collection::vec(proptest::collection::vec(arbitrary_message(), 1..4), 1..4),
            file in any::<bool>(),
            line_end in prop_oneof![Just("\r"), Just("\n"), Just("\r\n")],
        ) {
            let mut raw = String::new();
            if file {
                raw.push_str("FHS|^~\\&|A|B|C|D\r");
            }
            for group in &groups {
                raw.push_str("BHS|^~\\&|A|B|C|D\r");
                for message in group {
                    raw.push_str(std::str::from_utf8(message).expect("text"));
                }
                raw.push_str(&format!("BTS|{}\r", group.len()));
            }
            if file {
                raw.push_str(&format!("FTS|{}\r", groups.len()));
            }
            let raw = Bytes::from(raw.replace('\r', line_end));
            let envelope = parse_envelope(&raw).expect("parses");
            prop_assert!(envelope.count_problems().is_empty());
            let found: Vec<Vec<Vec<u8>>> = envelope
                .groups
                .iter()
                .map(|group| group.messages.iter().map(|message| message.to_vec()).collect())
                .collect();
            prop_assert_eq!(found, groups.clone());
            // The reply reads back as a batch with one ACK per message and the counts.
            let stamp = AckStamp {
                timestamp: "20260101120000+0000".to_owned(),
                control_id: "X".to_owned(),
            };
            let acks: Vec<Vec<Vec<u8>>> = groups
                .iter()
                .map(|group| group.iter().map(|_| b"MSH|^~\\&|C|D|A|B\rMSA|AA|1\r".to_vec()).collect())
                .collect();
            let reply = Bytes::from(envelope.reply(&acks, &stamp));
            let back = parse_envelope(&reply).expect("the reply parses");
            prop_assert!(back.count_problems().is_empty());
            prop_assert_eq!(back.message_count(), envelope.message_count());
            prop_assert_eq!(back.file_header.is_some(), file);
        }
    }
}
