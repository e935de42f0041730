//! The tolerant byte parser: one frame in, an index of segments out, bytes untouched.
//!
//! Parsing finds the header segment (`MSH`, or `FHS`/`BHS` for batch envelopes), reads the
//! delimiters from it, and records where every segment starts and ends. Segment terminators
//! `\r`, `\n` and `\r\n` are all accepted; empty lines are skipped. Field values are found on
//! request by splitting the segment bytes, so parsing costs one pass over the frame.

use std::fmt;

use bytes::Bytes;

use super::delimiters::{DelimiterError, Delimiters, is_valid_separator};
use super::path::FieldPath;

/// Which header segment opens the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    /// A single message (`MSH`).
    Message,
    /// A file batch envelope (`FHS`).
    FileBatch,
    /// A batch envelope (`BHS`).
    Batch,
}

/// Why a frame cannot be read as HL7 v2 at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The frame does not start with `MSH` (or `FHS`/`BHS`) and a field separator.
    #[error(
        "the frame does not start with MSH (or FHS/BHS) followed by a field separator character"
    )]
    NoHeader,
}

/// Byte range of one segment inside the frame, terminator excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn start(self) -> usize {
        self.start
    }

    fn end(self) -> usize {
        self.end
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// The segments of a frame, found as they are walked (`\r`, `\n` or `\r\n`, empty lines
/// skipped). There is no stored index: every lookup walks from the start, which costs no more
/// than the linear searches an index served, and a frame of millions of tiny segments costs
/// no memory beyond its bytes.
#[derive(Clone)]
struct Spans<'a> {
    raw: &'a [u8],
    next: usize,
}

impl Iterator for Spans<'_> {
    type Item = Span;

    fn next(&mut self) -> Option<Span> {
        while self.next < self.raw.len() {
            let start = self.next;
            let end = memchr::memchr2(b'\r', b'\n', &self.raw[start..])
                .map_or(self.raw.len(), |position| start + position);
            self.next = end + 1;
            if end > start {
                return Some(Span { start, end });
            }
        }
        None
    }
}

/// One parsed HL7 v2 frame. Cheap to clone: the bytes are shared.
///
/// Its `Debug` output shows the shape (kind, size, segment count), never the bytes: a stray
/// `{:?}` must not put patient data in a log.
#[derive(Clone)]
pub struct Message {
    raw: Bytes,
    kind: HeaderKind,
    delimiters: Delimiters,
    delimiter_error: Option<DelimiterError>,
    /// Where the header segment starts.
    first: usize,
}

/// A view of one segment. Like [`Message`], its `Debug` output shows no content.
#[derive(Clone, Copy)]
pub struct Segment<'a> {
    bytes: &'a [u8],
    field_separator: u8,
}

impl fmt::Debug for Message {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Message")
            .field("kind", &self.kind)
            .field("bytes", &self.raw.len())
            .field("segments", &self.spans().count())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Segment<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        let printable = name.len() <= 3 && name.iter().all(u8::is_ascii_alphanumeric);
        formatter
            .debug_struct("Segment")
            .field(
                "name",
                &if printable {
                    String::from_utf8_lossy(name)
                } else {
                    "?".into()
                },
            )
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl<'a> Segment<'a> {
    /// The segment name (the bytes before the first field separator).
    pub fn name(&self) -> &'a [u8] {
        let end = memchr::memchr(self.field_separator, self.bytes).unwrap_or(self.bytes.len());
        &self.bytes[..end]
    }

    /// The whole segment, terminator excluded.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Header segments number their fields from the separator itself (MSH-1 is `|`).
    fn is_header(&self) -> bool {
        matches!(self.name(), b"MSH" | b"FHS" | b"BHS")
    }

    /// Every field, indexed by field number (index 0 is the segment name; for `MSH`, index 1 is
    /// the field separator itself). One pass, for callers that read many fields.
    pub fn fields(&self) -> Vec<&'a [u8]> {
        self.fields_up_to(usize::MAX)
    }

    /// Like [`Segment::fields`], but stops after field `last`, so a segment with a million
    /// separators costs no more than the fields a caller wants.
    pub fn fields_up_to(&self, last: usize) -> Vec<&'a [u8]> {
        let mut fields = Vec::with_capacity(last.saturating_add(1).min(32));
        let mut pieces = self.bytes.split(move |&byte| byte == self.field_separator);
        if self.is_header() {
            fields.push(pieces.next().unwrap_or_default());
            fields.push(self.bytes.get(3..4).unwrap_or_default());
        }
        let wanted = last.saturating_add(1).saturating_sub(fields.len());
        fields.extend(pieces.take(wanted));
        fields
    }

    /// Raw field `number` (1-based) with all its repetitions, or `None` when absent.
    pub fn field(&self, number: usize) -> Option<&'a [u8]> {
        if number == 0 {
            return None;
        }
        if self.is_header() {
            return match number {
                1 => self.bytes.get(3..4),
                _ => nth_split(self.bytes, Some(self.field_separator), number - 1),
            };
        }
        nth_split(self.bytes, Some(self.field_separator), number)
    }
}

impl Message {
    /// Parse a frame. Fails only when no header segment can be found; every other oddity is
    /// kept for the caller to judge (see [`Message::delimiter_error`]).
    pub fn parse(raw: Bytes) -> Result<Self, ParseError> {
        let start = header_start(&raw).ok_or(ParseError::NoHeader)?;
        let kind = match &raw[start..start + 3] {
            b"MSH" => HeaderKind::Message,
            b"FHS" => HeaderKind::FileBatch,
            _ => HeaderKind::Batch,
        };
        let field = raw[start + 3];
        let header_span = Spans {
            raw: &raw,
            next: start,
        }
        .next()
        .ok_or(ParseError::NoHeader)?;
        let header = &raw[header_span.range()];
        let encoding = nth_split(header, Some(field), 1).unwrap_or_default();
        let (delimiters, delimiter_error) = match Delimiters::parse(field, encoding) {
            Ok(delimiters) => (delimiters, None),
            Err(error) => (Delimiters::with_field(field), Some(error)),
        };
        Ok(Self {
            raw,
            kind,
            delimiters,
            delimiter_error,
            first: start,
        })
    }

    fn spans(&self) -> Spans<'_> {
        Spans {
            raw: &self.raw,
            next: self.first,
        }
    }

    /// The frame exactly as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether this frame is a single message or a batch envelope.
    pub fn kind(&self) -> HeaderKind {
        self.kind
    }

    /// The delimiters used to read the message. When MSH-2 is unusable these are the standard
    /// encoding characters with the sender's field separator.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// Why MSH-2 could not be used, if it could not.
    pub fn delimiter_error(&self) -> Option<&DelimiterError> {
        self.delimiter_error.as_ref()
    }

    /// Every segment in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> + '_ {
        self.spans().map(|span| Segment {
            bytes: &self.raw[span.range()],
            field_separator: self.delimiters.field,
        })
    }

    /// The `index`-th (1-based) segment named `name`.
    pub fn segment(&self, name: &[u8], index: usize) -> Option<Segment<'_>> {
        self.segments()
            .filter(|segment| segment.name() == name)
            .nth(index.checked_sub(1)?)
    }

    /// The segment holding byte `offset` of the frame, its 1-based occurrence among segments
    /// of the same name, and the offset within it.
    pub(crate) fn segment_containing(&self, offset: usize) -> Option<(Segment<'_>, usize, usize)> {
        let (position, span) = self
            .spans()
            .enumerate()
            .find(|(_, span)| span.start() <= offset && offset <= span.end())?;
        let segment = Segment {
            bytes: &self.raw[span.range()],
            field_separator: self.delimiters.field,
        };
        let occurrence = self
            .spans()
            .take(position)
            .filter(|earlier| {
                let name = Segment {
                    bytes: &self.raw[earlier.range()],
                    field_separator: self.delimiters.field,
                }
                .name();
                name == segment.name()
            })
            .count()
            + 1;
        Some((segment, occurrence, offset - span.start()))
    }

    /// The frame from the first segment named `name` to the end (shares the bytes).
    pub(crate) fn tail_from_segment(&self, name: &[u8]) -> Option<Bytes> {
        let span = self.spans().find(|span| {
            let segment = &self.raw[span.range()];
            segment.starts_with(name) && segment.get(name.len()) == Some(&self.delimiters.field)
        })?;
        Some(self.raw.slice(span.start()..))
    }

    /// The value at `path`, raw (escape sequences kept). `None` when the segment, field,
    /// repetition or component does not exist; `Some(b"")` when it exists and is empty.
    pub fn get(&self, path: &FieldPath) -> Option<&[u8]> {
        let segment = self.segment(&path.segment, path.segment_index)?;
        let field = segment.field(path.field)?;
        if segment.is_header() && path.field <= 2 {
            // MSH-1 and MSH-2 are the delimiters themselves; they have no inner structure.
            return (path.repetition == 1 && path.component.is_none()).then_some(field);
        }
        let repetition = nth_split(field, self.delimiters.repetition, path.repetition - 1)?;
        let Some(component) = path.component else {
            return Some(repetition);
        };
        let component = nth_split(repetition, self.delimiters.component, component - 1)?;
        match path.subcomponent {
            None => Some(component),
            Some(sub) => nth_split(component, self.delimiters.subcomponent, sub - 1),
        }
    }

    /// Convenience: [`Message::get`] with a path written as text. Invalid paths give `None`.
    pub fn value(&self, path: &str) -> Option<&[u8]> {
        self.get(&path.parse().ok()?)
    }

    /// Raw header field `number` (MSH-n, or FHS-n/BHS-n for a batch), all repetitions.
    pub fn header_field(&self, number: usize) -> &[u8] {
        self.segments()
            .next()
            .and_then(|header| header.field(number))
            .unwrap_or_default()
    }

    /// Component `component` (1-based) of the first repetition of header field `number`.
    pub fn header_component(&self, number: usize, component: usize) -> &[u8] {
        let field = self.header_field(number);
        nth_split(field, self.delimiters.repetition, 0)
            .and_then(|first| nth_split(first, self.delimiters.component, component - 1))
            .unwrap_or_default()
    }

    /// MSH-12.1, parsed.
    pub fn version(&self) -> Option<Version> {
        Version::parse(self.header_component(12, 1))
    }
}

/// An HL7 v2 version such as `2.5.1`, compared numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Always 2 for HL7 v2.
    pub major: u8,
    /// 3 in `2.3.1`.
    pub minor: u8,
    /// 1 in `2.3.1`; 0 when absent.
    pub patch: u8,
}

impl Version {
    /// Build a version from its parts.
    pub const fn new(major: u8, minor: u8, patch: u8) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parse `2.5`, `2.5.1`, `2.3.1` … ; `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?.trim();
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(patch) => patch.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self::new(major, minor, patch))
    }
}

/// Where the header segment starts: after any leading CR/LF/space/tab and UTF-8 BOM.
fn header_start(raw: &[u8]) -> Option<usize> {
    let mut start = 0;
    if raw.starts_with(&[0xEF, 0xBB, 0xBF]) {
        start = 3;
    }
    while raw
        .get(start)
        .is_some_and(|byte| matches!(byte, b'\r' | b'\n' | b' ' | b'\t'))
    {
        start += 1;
    }
    let name = raw.get(start..start + 3)?;
    let separator = *raw.get(start + 3)?;
    let known = matches!(name, b"MSH" | b"FHS" | b"BHS");
    (known && is_valid_separator(separator)).then_some(start)
}

/// The `index`-th (0-based) piece of `bytes` split on `separator`. Without a separator the
/// whole value is piece 0.
pub(crate) fn nth_split(bytes: &[u8], separator: Option<u8>, index: usize) -> Option<&[u8]> {
    let Some(separator) = separator else {
        return (index == 0).then_some(bytes);
    };
    let mut start = 0;
    let mut count = 0;
    for position in memchr::memchr_iter(separator, bytes) {
        if count == index {
            return Some(&bytes[start..position]);
        }
        count += 1;
        start = position + 1;
    }
    (count == index).then(|| &bytes[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No segment index is stored: a frame of a million tiny segments costs its bytes, and
    /// its segments are still all found, in order.
    #[test]
    fn a_frame_of_a_million_segments_keeps_no_index() {
        let mut frame = b"MSH|^~\\&|A|B|C|D|20261205||ADT^A08|1|P|2.5\r".to_vec();
        for _ in 0..1_000_000 {
            frame.extend_from_slice(b"Z\r");
        }
        let message = Message::parse(Bytes::from(frame)).expect("parses");
        assert_eq!(message.segments().count(), 1_000_001);
        assert_eq!(
            message.segment(b"Z", 1_000_000).map(|z| z.name().len()),
            Some(1)
        );
    }

    const ADT: &[u8] =
        b"MSH|^~\\&|SEND|FAC|RECV|RFAC|20260101120000||ADT^A01^ADT_A01|CTRL1|P|2.5.1\r\
EVN|A01|20260101120000\r\
PID|1||111^^^HOSP^MR~222^^^NAT^SS||DOE^JOHN^Q||19700101|M\r\
OBX|1|ST|A^Alpha||first\r\
OBX|2|ST|B^Beta||second\r\
OBX|3|TX|C^Gamma||x&y&z\r\
ZPI|custom|value\r";

    fn parse(bytes: &[u8]) -> Message {
        Message::parse(Bytes::copy_from_slice(bytes)).expect("parses")
    }

    fn text(message: &Message, path: &str) -> Option<String> {
        message
            .value(path)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    #[test]
    fn field_paths_reach_every_level() {
        let message = parse(ADT);
        assert_eq!(text(&message, "MSH-1").as_deref(), Some("|"));
        assert_eq!(text(&message, "MSH-2").as_deref(), Some("^~\\&"));
        assert_eq!(text(&message, "MSH-3").as_deref(), Some("SEND"));
        assert_eq!(text(&message, "MSH-9").as_deref(), Some("ADT^A01^ADT_A01"));
        assert_eq!(text(&message, "MSH-9.1").as_deref(), Some("ADT"));
        assert_eq!(text(&message, "MSH-9.2").as_deref(), Some("A01"));
        assert_eq!(text(&message, "MSH-12").as_deref(), Some("2.5.1"));
        assert_eq!(text(&message, "PID-3").as_deref(), Some("111^^^HOSP^MR"));
        assert_eq!(text(&message, "PID-3[2].1").as_deref(), Some("222"));
        assert_eq!(text(&message, "PID-3[2].4").as_deref(), Some("NAT"));
        assert_eq!(text(&message, "PID-3[3]"), None);
        assert_eq!(text(&message, "PID-5.2").as_deref(), Some("JOHN"));
        assert_eq!(text(&message, "PID-4").as_deref(), Some(""));
        assert_eq!(text(&message, "OBX-5").as_deref(), Some("first"));
        assert_eq!(text(&message, "OBX[3]-5").as_deref(), Some("x&y&z"));
        assert_eq!(text(&message, "OBX[3]-5.1.2").as_deref(), Some("y"));
        assert_eq!(text(&message, "OBX[4]-5"), None);
        assert_eq!(text(&message, "ZPI-2").as_deref(), Some("value"));
        assert_eq!(text(&message, "PID-99"), None);
        assert_eq!(message.version(), Some(Version::new(2, 5, 1)));
        assert_eq!(message.segments().count(), 7);
    }

    #[test]
    fn fields_index_like_field_numbers() {
        let message = parse(ADT);
        for segment in message.segments() {
            let fields = segment.fields();
            for (number, field) in fields.iter().enumerate().skip(1) {
                assert_eq!(segment.field(number), Some(*field), "field {number}");
            }
            assert_eq!(segment.field(fields.len()), None);
            let first_three = segment.fields_up_to(3);
            assert_eq!(first_three.len(), fields.len().min(4));
            assert_eq!(first_three[..], fields[..first_three.len()]);
        }
    }

    #[test]
    fn every_segment_terminator_gives_the_same_fields() {
        let with_cr = parse(ADT);
        let lf: Vec<u8> = ADT
            .iter()
            .map(|&b| if b == b'\r' { b'\n' } else { b })
            .collect();
        let crlf = String::from_utf8_lossy(ADT).replace('\r', "\r\n");
        for other in [parse(&lf), parse(crlf.as_bytes())] {
            let names: Vec<_> = other.segments().map(|s| s.name().to_vec()).collect();
            let expected: Vec<_> = with_cr.segments().map(|s| s.name().to_vec()).collect();
            assert_eq!(names, expected);
            assert_eq!(other.value("PID-3[2].1"), with_cr.value("PID-3[2].1"));
            assert_eq!(other.value("ZPI-2"), with_cr.value("ZPI-2"));
        }
        let message = parse(crlf.as_bytes());
        assert_eq!(
            message.raw().as_ref(),
            crlf.as_bytes(),
            "bytes kept unchanged"
        );
    }

    #[test]
    fn custom_delimiters_and_v27_truncation_character() {
        let message = parse(
            b"MSH!@*$%#!SEND!FAC!RECV!RFAC!20260101!!ORU@R01@ORU_R01!C9!P!2.7\rPID!1!!A@B*C@D\r",
        );
        assert_eq!(message.delimiters().truncation, Some(b'#'));
        assert_eq!(message.header_field(2), b"@*$%#");
        assert_eq!(text(&message, "MSH-9.2").as_deref(), Some("R01"));
        assert_eq!(text(&message, "PID-3[2].2").as_deref(), Some("D"));
        assert!(message.delimiter_error().is_none());
    }

    #[test]
    fn leading_whitespace_and_bom_are_skipped_but_kept() {
        let raw = b"\xEF\xBB\xBF\r\nMSH|^~\\&|A|B|C|D|||ADT^A04|X|P|2.4\r";
        let message = parse(raw);
        assert_eq!(message.header_field(10), b"X");
        assert_eq!(message.raw().as_ref(), raw);
    }

    #[test]
    fn unreadable_headers_are_refused() {
        for bad in [
            &b""[..],
            b"MS",
            b"MSH",
            b"PID|1",
            b"MSHA^~\\&|",
            b"MSH\r^~\\&",
            b"hello world",
        ] {
            assert_eq!(
                Message::parse(Bytes::copy_from_slice(bad)).err(),
                Some(ParseError::NoHeader)
            );
        }
    }

    #[test]
    fn unusable_msh2_is_reported_not_fatal() {
        let message = parse(b"MSH|^^\\&|A|B|C|D|||ADT^A01|X|P|2.5\r");
        assert!(message.delimiter_error().is_some());
        assert!(parse(b"MSH|^~|A|B\r").delimiter_error().is_some());
        assert_eq!(message.header_field(10), b"X");
        assert_eq!(message.delimiters().encoding_characters(), b"^~\\&");
    }

    #[test]
    fn batch_headers_are_recognised() {
        assert_eq!(
            parse(b"FHS|^~\\&|A\rBHS|^~\\&|A\r").kind(),
            HeaderKind::FileBatch
        );
        assert_eq!(parse(b"BHS|^~\\&|A\r").kind(), HeaderKind::Batch);
        assert_eq!(parse(ADT).kind(), HeaderKind::Message);
    }

    #[test]
    fn debug_output_shows_no_content() {
        let message = parse(ADT);
        let shown = format!("{message:?} {:?}", message.segment(b"PID", 1));
        assert!(shown.contains("segments: 7"), "{shown}");
        assert!(!shown.contains("DOE"), "{shown}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(Version::parse(b"2.3.1") > Version::parse(b"2.3"));
        assert!(Version::parse(b"2.10") > Version::parse(b"2.9"));
        assert_eq!(Version::parse(b"two"), None);
        assert_eq!(Version::parse(b"2.5.1.9"), None);
    }

    #[test]
    fn nth_split_covers_edges() {
        assert_eq!(nth_split(b"a|b|c", Some(b'|'), 0), Some(&b"a"[..]));
        assert_eq!(nth_split(b"a|b|c", Some(b'|'), 2), Some(&b"c"[..]));
        assert_eq!(nth_split(b"a|b|c", Some(b'|'), 3), None);
        assert_eq!(nth_split(b"a||", Some(b'|'), 2), Some(&b""[..]));
        assert_eq!(nth_split(b"", Some(b'|'), 0), Some(&b""[..]));
        assert_eq!(nth_split(b"abc", None, 0), Some(&b"abc"[..]));
        assert_eq!(nth_split(b"abc", None, 1), None);
    }
}
