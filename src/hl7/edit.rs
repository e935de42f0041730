//! An editable copy of a message, for transforms: segments as byte strings, changed one
//! place at a time, written back with the message's own delimiters and segment terminator.
//!
//! Values given to [`Document::set`] are raw (already escaped): the caller escapes text with
//! [`super::escape`]. Every place the message lacks is created on write (fields, repetitions
//! and components padded with empty ones); a segment is never created. MSH-1 and MSH-2 (the
//! delimiters) are never written.

use super::delimiters::Delimiters;
use super::message::{Message, nth_split};
use super::path::{FieldPath, FieldPattern, PathPattern, Pick};

/// Why a write could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// MSH-1/MSH-2 (or FHS/BHS) hold the delimiters.
    #[error("{0}-1 and {0}-2 are the message's delimiters and cannot be written")]
    Delimiters(String),
    /// The message declares no separator for that level.
    #[error("the message declares no {0} separator, so {1} cannot be written")]
    NoSeparator(&'static str, String),
}

/// A message being transformed.
#[derive(Clone, Debug)]
pub struct Document {
    delimiters: Delimiters,
    segments: Vec<Vec<u8>>,
    /// Where the segments of each name are (writes never change a segment's name; removing
    /// segments rebuilds it), so a step over every OBX stays linear in the message.
    index: std::collections::HashMap<[u8; 3], Vec<usize>>,
    terminator: &'static [u8],
    trailing_terminator: bool,
}

impl Document {
    /// A copy of `message` to edit.
    pub fn new(message: &Message) -> Self {
        let raw = message.raw();
        let terminator: &'static [u8] = match memchr::memchr2(b'\r', b'\n', raw) {
            Some(at) if raw[at] == b'\r' && raw.get(at + 1) == Some(&b'\n') => b"\r\n",
            Some(at) if raw[at] == b'\n' => b"\n",
            _ => b"\r",
        };
        let mut document = Self {
            delimiters: message.delimiters().clone(),
            segments: message
                .segments()
                .map(|segment| segment.bytes().to_vec())
                .collect(),
            index: std::collections::HashMap::new(),
            terminator,
            trailing_terminator: raw.ends_with(b"\r") || raw.ends_with(b"\n"),
        };
        document.reindex();
        document
    }

    fn reindex(&mut self) {
        let separator = self.delimiters.field;
        self.index.clear();
        for (position, segment) in self.segments.iter().enumerate() {
            let Some(name) = segment.get(..3) else {
                continue;
            };
            if segment.get(3).is_none_or(|&byte| byte == separator) {
                let name = [name[0], name[1], name[2]];
                self.index.entry(name).or_default().push(position);
            }
        }
    }

    /// The delimiters writes are escaped with.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// The message as bytes: segments joined by the terminator the message used (a trailing
    /// one when the message had one).
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize = self.segments.iter().map(|segment| segment.len() + 2).sum();
        let mut out = Vec::with_capacity(size);
        for (index, segment) in self.segments.iter().enumerate() {
            if index > 0 {
                out.extend_from_slice(self.terminator);
            }
            out.extend_from_slice(segment);
        }
        if self.trailing_terminator && !self.segments.is_empty() {
            out.extend_from_slice(self.terminator);
        }
        out
    }

    /// Positions (in `segments`) of the segments named `name`, in order.
    fn positions(&self, name: &[u8; 3]) -> &[usize] {
        self.index.get(name).map_or(&[], Vec::as_slice)
    }

    fn position(&self, name: &[u8; 3], occurrence: usize) -> Option<usize> {
        self.positions(name)
            .get(occurrence.checked_sub(1)?)
            .copied()
    }

    /// The raw value at `path` (escape sequences kept); `None` where the message has none.
    pub fn get(&self, path: &FieldPath) -> Option<&[u8]> {
        let segment = &self.segments[self.position(&path.segment, path.segment_index)?];
        let header = is_header(&path.segment);
        if header && path.field <= 2 {
            let value = if path.field == 1 {
                segment.get(3..4)
            } else {
                nth_split(segment, Some(self.delimiters.field), 1)
            };
            return value.filter(|_| path.repetition == 1 && path.component.is_none());
        }
        let index = if header { path.field - 1 } else { path.field };
        let field = nth_split(segment, Some(self.delimiters.field), index)?;
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

    /// Write `raw` at `path`, creating the field, repetition, component or subcomponent when
    /// missing. Returns `Ok(false)` when the message lacks the segment (nothing written).
    pub fn set(&mut self, path: &FieldPath, raw: &[u8]) -> Result<bool, EditError> {
        let header = is_header(&path.segment);
        let name = String::from_utf8_lossy(&path.segment).into_owned();
        if header && path.field <= 2 {
            return Err(EditError::Delimiters(name));
        }
        let Some(position) = self.position(&path.segment, path.segment_index) else {
            return Ok(false);
        };
        let separators = [
            self.delimiters.repetition,
            self.delimiters.component,
            self.delimiters.subcomponent,
        ];
        let indices = [Some(path.repetition), path.component, path.subcomponent];
        // The levels below the field this write goes down to, each with its separator.
        let mut levels = Vec::with_capacity(3);
        for ((separator, index), level) in
            separators
                .into_iter()
                .zip(indices)
                .zip(["repetition", "component", "subcomponent"])
        {
            let Some(index) = index else { break };
            match separator {
                Some(separator) => levels.push((separator, index - 1)),
                None if index == 1 => levels.push((0, 0)),
                None => return Err(EditError::NoSeparator(level, path.to_string())),
            }
        }
        let field_index = if header { path.field - 1 } else { path.field };
        let segment = &self.segments[position];
        let replaced = replace_piece(segment, self.delimiters.field, field_index, raw, &levels);
        self.segments[position] = replaced;
        Ok(true)
    }

    /// Empty field `path.field` of the segment `path` names, every repetition (its
    /// repetition and components are ignored). `Ok(false)` when the segment is absent.
    pub fn clear_field(&mut self, path: &FieldPath) -> Result<bool, EditError> {
        let header = is_header(&path.segment);
        if header && path.field <= 2 {
            return Err(EditError::Delimiters(
                String::from_utf8_lossy(&path.segment).into_owned(),
            ));
        }
        let Some(position) = self.position(&path.segment, path.segment_index) else {
            return Ok(false);
        };
        let field_index = if header { path.field - 1 } else { path.field };
        let segment = &self.segments[position];
        self.segments[position] =
            replace_piece(segment, self.delimiters.field, field_index, b"", &[]);
        Ok(true)
    }

    /// How many repetitions field `field` of the `occurrence`-th `segment` has (0 when the
    /// segment or field is absent or empty).
    fn repetitions(&self, segment: &[u8; 3], occurrence: usize, field: usize) -> usize {
        let Some(position) = self.position(segment, occurrence) else {
            return 0;
        };
        let index = if is_header(segment) { field - 1 } else { field };
        match nth_split(&self.segments[position], Some(self.delimiters.field), index) {
            None | Some(b"") => 0,
            Some(value) => match self.delimiters.repetition {
                Some(separator) => memchr::memchr_iter(separator, value).count() + 1,
                None => 1,
            },
        }
    }

    /// Every place `pattern` names in the message as it is now (a field pattern only; whole
    /// segments are removed with [`Document::remove`]). With `[*]` on the repetition, only
    /// repetitions that exist; otherwise the place named, whether it exists or not.
    pub fn expand(&self, pattern: &PathPattern) -> Vec<FieldPath> {
        let Some(FieldPattern {
            field,
            repetition,
            component,
            subcomponent,
        }) = pattern.field
        else {
            return Vec::new();
        };
        let count = self.positions(&pattern.segment).len();
        let mut paths = Vec::new();
        for segment_index in pattern.segment_index.positions(count) {
            if segment_index > count {
                continue;
            }
            let repetitions = match repetition {
                Pick::One(_) => 0,
                Pick::Every => self.repetitions(&pattern.segment, segment_index, field),
            };
            for repetition in repetition.positions(repetitions) {
                paths.push(FieldPath {
                    segment: pattern.segment,
                    segment_index,
                    field,
                    repetition,
                    component,
                    subcomponent,
                });
            }
        }
        paths
    }

    /// Remove the segments `pattern` names (`NTE`, `NTE[2]`, `NTE[*]`; a bare name removes
    /// every one); returns how many went.
    pub fn remove(&mut self, segment: &[u8; 3], pick: Option<Pick>) -> usize {
        let positions = self.positions(segment);
        let doomed: Vec<usize> = match pick {
            None | Some(Pick::Every) => positions.to_vec(),
            Some(Pick::One(index)) => positions
                .get(index.saturating_sub(1))
                .copied()
                .into_iter()
                .collect(),
        };
        if doomed.is_empty() {
            return 0;
        }
        let mut doomed_iter = doomed.iter().peekable();
        let mut position = 0;
        self.segments.retain(|_| {
            let keep = doomed_iter.peek() != Some(&&position);
            if !keep {
                doomed_iter.next();
            }
            position += 1;
            keep
        });
        self.reindex();
        doomed.len()
    }
}

fn is_header(name: &[u8; 3]) -> bool {
    matches!(name, b"MSH" | b"FHS" | b"BHS")
}

/// `bytes` with its `index`-th (0-based) piece on `separator` replaced, going down `levels`
/// (separator, index) to the piece written; missing pieces are added empty. Writing an empty
/// value where nothing was changes nothing.
fn replace_piece(
    bytes: &[u8],
    separator: u8,
    index: usize,
    raw: &[u8],
    levels: &[(u8, usize)],
) -> Vec<u8> {
    let count = memchr::memchr_iter(separator, bytes).count() + 1;
    let existing = nth_split(bytes, Some(separator), index);
    let inner = match (levels.split_first(), existing) {
        (None, _) => raw.to_vec(),
        (Some(((next, next_index), rest)), Some(piece)) => {
            replace_piece(piece, *next, *next_index, raw, rest)
        }
        (Some(((next, next_index), rest)), None) => {
            replace_piece(b"", *next, *next_index, raw, rest)
        }
    };
    if existing.is_none() && inner.is_empty() {
        return bytes.to_vec();
    }
    let mut out = Vec::with_capacity(bytes.len() + inner.len() + index.saturating_sub(count) + 1);
    let mut pieces = bytes.split(|&byte| byte == separator);
    for position in 0..count.max(index + 1) {
        if position > 0 {
            out.push(separator);
        }
        let piece = pieces.next().unwrap_or_default();
        if position == index {
            out.extend_from_slice(&inner);
        } else {
            out.extend_from_slice(piece);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn document(text: &str) -> Document {
        Document::new(&Message::parse(Bytes::from(text.to_owned())).expect("parses"))
    }

    fn path(text: &str) -> FieldPath {
        text.parse().expect("path")
    }

    fn text(document: &Document) -> String {
        String::from_utf8(document.to_bytes()).expect("utf-8")
    }

    const ADT: &str = "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ADT^A01|C1|P|2.5\rPID|1||123^^^H~456^^^S||DOE^JOHN\rNTE|1||first\rNTE|2||second\r";

    #[test]
    fn an_unchanged_document_writes_the_message_back() {
        for message in [
            ADT,
            "MSH|^~\\&|A\nPID|1\n",
            "MSH|^~\\&|A\r\nPID|1",
            "MSH#$%@!#A#B\rPID#1#x$y",
        ] {
            assert_eq!(text(&document(message)), message);
        }
    }

    #[test]
    fn reads_what_message_reads() {
        let document = document(ADT);
        let message = Message::parse(Bytes::from_static(ADT.as_bytes())).expect("parses");
        for place in [
            "MSH-1",
            "MSH-2",
            "MSH-3",
            "MSH-9.2",
            "PID-3[2].1",
            "PID-5",
            "NTE[2]-3",
            "PID-30",
            "PID-3[3]",
            "ZZZ-1",
        ] {
            assert_eq!(
                document.get(&path(place)),
                message.get(&path(place)),
                "{place}"
            );
        }
    }

    #[test]
    fn writes_create_what_is_missing_and_keep_the_rest() {
        let mut edited = document(ADT);
        assert_eq!(edited.set(&path("MSH-5"), b"EMR"), Ok(true));
        assert_eq!(edited.set(&path("PID-3[2].4"), b"NORTH"), Ok(true));
        assert_eq!(edited.set(&path("PID-8"), b"F"), Ok(true));
        assert_eq!(edited.set(&path("PID-5.2.3"), b"X"), Ok(true));
        assert_eq!(edited.set(&path("NTE[2]-3"), b""), Ok(true));
        assert_eq!(edited.set(&path("ZZZ-1"), b"never"), Ok(false));
        assert_eq!(
            text(&edited),
            "MSH|^~\\&|APP|FAC|EMR|RFAC|20240101||ADT^A01|C1|P|2.5\rPID|1||123^^^H~456^^^NORTH||DOE^JOHN&&X|||F\rNTE|1||first\rNTE|2||\r"
        );
        assert_eq!(
            edited.set(&path("MSH-2"), b"x"),
            Err(EditError::Delimiters("MSH".to_owned()))
        );
        // An empty value where nothing was adds nothing.
        let before = text(&edited);
        assert_eq!(edited.set(&path("PID-40"), b""), Ok(true));
        assert_eq!(text(&edited), before);
    }

    #[test]
    fn patterns_expand_to_the_places_there_are() {
        let edited = document(ADT);
        let every: PathPattern = "NTE[*]-3".parse().expect("pattern");
        let places: Vec<String> = edited
            .expand(&every)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(places, ["NTE-3", "NTE[2]-3"]);
        let repetitions: PathPattern = "PID-3[*].1".parse().expect("pattern");
        let places: Vec<String> = edited
            .expand(&repetitions)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(places, ["PID-3.1", "PID-3[2].1"]);
        let absent: PathPattern = "OBX[*]-5".parse().expect("pattern");
        assert!(edited.expand(&absent).is_empty());
        let empty: PathPattern = "PID-2[*]".parse().expect("pattern");
        assert!(edited.expand(&empty).is_empty());
    }

    #[test]
    fn clearing_a_field_empties_every_repetition() {
        let mut edited = document(ADT);
        assert_eq!(edited.clear_field(&path("PID-3")), Ok(true));
        assert_eq!(edited.get(&path("PID-3")), Some(&b""[..]));
        assert_eq!(edited.get(&path("PID-3[2]")), None);
        assert_eq!(
            edited.get(&path("PID-5")),
            Some(&b"DOE^JOHN"[..]),
            "later fields keep their numbers"
        );
    }

    #[test]
    fn removes_segments() {
        let mut edited = document(ADT);
        assert_eq!(edited.remove(b"NTE", Some(Pick::One(1))), 1);
        assert_eq!(edited.get(&path("NTE-3")), Some(&b"second"[..]));
        assert_eq!(edited.remove(b"NTE", None), 1);
        assert_eq!(edited.remove(b"NTE", None), 0);
        assert_eq!(
            text(&edited),
            "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ADT^A01|C1|P|2.5\rPID|1||123^^^H~456^^^S||DOE^JOHN\r"
        );
    }

    fn place() -> impl Strategy<Value = FieldPath> {
        (
            prop_oneof![Just(*b"PID"), Just(*b"NTE"), Just(*b"MSH")],
            1usize..3,
            3usize..12,
            1usize..3,
            proptest::option::of(1usize..4),
            proptest::option::of(1usize..3),
        )
            .prop_map(
                |(segment, segment_index, field, repetition, component, sub)| FieldPath {
                    segment,
                    segment_index,
                    field,
                    repetition,
                    component,
                    subcomponent: component.and(sub),
                },
            )
    }

    proptest! {
        /// A value written reads back; every other place keeps its value.
        #[test]
        fn a_write_reads_back_and_touches_nothing_else(
            target in place(),
            value in "[A-Za-z0-9 ]{0,8}",
            others in proptest::collection::vec(place(), 1..8),
        ) {
            let mut edited = document(ADT);
            let before: Vec<Option<Vec<u8>>> = others
                .iter()
                .map(|other| edited.get(other).map(<[u8]>::to_vec))
                .collect();
            let written = edited.set(&target, value.as_bytes()).expect("writable");
            if written {
                if value.is_empty() {
                    prop_assert!(matches!(edited.get(&target), None | Some(b"")));
                } else {
                    prop_assert_eq!(edited.get(&target), Some(value.as_bytes()));
                }
            }
            for (other, was) in others.iter().zip(before) {
                let inside = |outer: &FieldPath, inner: &FieldPath| {
                    outer.segment == inner.segment
                        && outer.segment_index == inner.segment_index
                        && outer.field == inner.field
                        && outer.repetition == inner.repetition
                        && (outer.component.is_none()
                            || inner.component.is_none()
                            || outer.component == inner.component)
                };
                if !inside(other, &target) {
                    let now = edited.get(other).map(<[u8]>::to_vec);
                    // A place that was absent may now exist, empty (padding).
                    let same = now == was || (was.is_none() && now.as_deref() == Some(b""));
                    prop_assert!(same, "{} changed writing {}", other, target);
                }
            }
            // The delimiters are kept.
            prop_assert!(text(&edited).starts_with("MSH|^~\\&|"));
        }
    }
}
