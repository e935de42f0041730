//! A DICOM data set read from bytes (PS3.5 §7), bounded: every length is checked against the
//! bytes that are there before anything is sliced, values are slices of the input (nothing
//! is copied or allocated by a declared length), nesting and element counts are capped, and
//! reading stops at the pixel data, which is carried, never decoded.
//!
//! Explicit and Implicit VR Little Endian are read; compressed transfer syntaxes encode the
//! data set as Explicit VR Little Endian with encapsulated pixel data, so they read the same.

use std::borrow::Cow;

/// A tag: (group, element).
pub type Tag = (u16, u16);

/// (0008,0005) SpecificCharacterSet
pub const SPECIFIC_CHARACTER_SET: Tag = (0x0008, 0x0005);
/// (0008,0016) SOPClassUID
pub const SOP_CLASS_UID: Tag = (0x0008, 0x0016);
/// (0008,0018) SOPInstanceUID
pub const SOP_INSTANCE_UID: Tag = (0x0008, 0x0018);
/// (0008,0050) AccessionNumber
pub const ACCESSION_NUMBER: Tag = (0x0008, 0x0050);
/// (0008,0060) Modality
pub const MODALITY: Tag = (0x0008, 0x0060);
/// (0010,0010) PatientName
pub const PATIENT_NAME: Tag = (0x0010, 0x0010);
/// (0010,0020) PatientID
pub const PATIENT_ID: Tag = (0x0010, 0x0020);
/// (0010,0021) IssuerOfPatientID
pub const ISSUER_OF_PATIENT_ID: Tag = (0x0010, 0x0021);
/// (0010,0030) PatientBirthDate
pub const PATIENT_BIRTH_DATE: Tag = (0x0010, 0x0030);
/// (0010,0040) PatientSex
pub const PATIENT_SEX: Tag = (0x0010, 0x0040);
/// (0020,000D) StudyInstanceUID
pub const STUDY_INSTANCE_UID: Tag = (0x0020, 0x000D);
/// (0020,000E) SeriesInstanceUID
pub const SERIES_INSTANCE_UID: Tag = (0x0020, 0x000E);
/// (7FE0,0010) PixelData
pub const PIXEL_DATA: Tag = (0x7FE0, 0x0010);

const ITEM: Tag = (0xFFFE, 0xE000);
const ITEM_END: Tag = (0xFFFE, 0xE00D);
const SEQUENCE_END: Tag = (0xFFFE, 0xE0DD);
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Deepest nesting of sequences read.
pub const MAX_DEPTH: usize = 32;
/// Most elements read in one data set, all levels together.
pub const MAX_ELEMENTS: usize = 200_000;

/// Sequences an Implicit VR data set may give a defined length, by tag: the ones a
/// Structured Report's content tree is made of.
const KNOWN_SEQUENCES: &[Tag] = &[
    (0x0040, 0xA730), // ContentSequence
    (0x0040, 0xA043), // ConceptNameCodeSequence
    (0x0040, 0xA168), // ConceptCodeSequence
    (0x0040, 0xA300), // MeasuredValueSequence
    (0x0040, 0x08EA), // MeasurementUnitsCodeSequence
    (0x0040, 0xA504), // ContentTemplateSequence
    (0x0040, 0xA073), // VerifyingObserverSequence
    (0x0008, 0x1115), // ReferencedSeriesSequence
    (0x0040, 0xA375), // CurrentRequestedProcedureEvidenceSequence
    (0x0040, 0xA370), // ReferencedRequestSequence
    (0x0008, 0x1199), // ReferencedSOPSequence
];

/// How the data set is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// Implicit VR Little Endian (1.2.840.10008.1.2).
    ImplicitLittle,
    /// Explicit VR Little Endian (1.2.840.10008.1.2.1) and the compressed syntaxes.
    ExplicitLittle,
}

/// Implicit VR Little Endian.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

impl Syntax {
    /// How a transfer syntax encodes its data set; `None` for one mfoundry cannot read
    /// (Explicit VR Big Endian, Deflated).
    pub fn of(transfer_syntax: &str) -> Option<Self> {
        match transfer_syntax {
            IMPLICIT_VR_LITTLE_ENDIAN => Some(Self::ImplicitLittle),
            EXPLICIT_VR_LITTLE_ENDIAN => Some(Self::ExplicitLittle),
            other if is_compressed(other) => Some(Self::ExplicitLittle),
            _ => None,
        }
    }
}

/// Whether a transfer syntax is one of the compressed (encapsulated pixel data) ones: JPEG,
/// JPEG-LS, JPEG 2000, HTJ2K, JPEG XL, MPEG, HEVC (1.2.840.10008.1.2.4.x but .95, which
/// deflates) and RLE (1.2.840.10008.1.2.5).
pub fn is_compressed(transfer_syntax: &str) -> bool {
    // 1.2.840.10008.1.2.4.95 (JPIP Referenced Deflate) deflates the data set: not readable.
    transfer_syntax
        .strip_prefix("1.2.840.10008.1.2.4.")
        .is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) && rest != "95"
        })
        || transfer_syntax == "1.2.840.10008.1.2.5"
}

/// What is wrong with a data set: where, never what it holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    /// An element runs past the end of the bytes.
    #[error("element ({0:04X},{1:04X}) runs past the end of the data set")]
    Truncated(u16, u16),
    /// Sequences nested too deep.
    #[error("sequences are nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Too many elements.
    #[error("the data set has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    /// A sequence item that is not one.
    #[error("sequence ({0:04X},{1:04X}) holds something that is not an item")]
    NotAnItem(u16, u16),
}

/// One element: its tag, VR (`b"??"` when Implicit VR and not known) and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element<'a> {
    /// The tag.
    pub tag: Tag,
    /// The VR as written (Explicit VR) or known.
    pub vr: [u8; 2],
    /// Its value.
    pub value: Value<'a>,
}

/// An element's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// The bytes as written.
    Bytes(&'a [u8]),
    /// A sequence's items.
    Items(Vec<DataSet<'a>>),
    /// Encapsulated pixel data (skipped).
    Encapsulated,
}

/// A data set: its elements in order, and the character set of its text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataSet<'a> {
    /// Elements in the order read.
    pub elements: Vec<Element<'a>>,
}

/// The character set of a data set's text (PS3.5 §6.1), from SpecificCharacterSet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextCharset(&'static encoding_rs::Encoding);

impl Default for TextCharset {
    fn default() -> Self {
        // The default repertoire is ASCII; Latin-1 reads it and never fails.
        Self(encoding_rs::WINDOWS_1252)
    }
}

impl TextCharset {
    /// The character set a SpecificCharacterSet value names (the last of several
    /// ISO 2022 terms; an unknown term reads as Latin-1).
    pub fn from_term(value: &str) -> Self {
        let term = value
            .split('\\')
            .map(str::trim)
            .rfind(|term| !term.is_empty())
            .unwrap_or("");
        let label = match term {
            "ISO_IR 192" => "utf-8",
            "ISO_IR 100" | "ISO 2022 IR 100" => "iso-8859-1",
            "ISO_IR 101" | "ISO 2022 IR 101" => "iso-8859-2",
            "ISO_IR 109" | "ISO 2022 IR 109" => "iso-8859-3",
            "ISO_IR 110" | "ISO 2022 IR 110" => "iso-8859-4",
            "ISO_IR 144" | "ISO 2022 IR 144" => "iso-8859-5",
            "ISO_IR 127" | "ISO 2022 IR 127" => "iso-8859-6",
            "ISO_IR 126" | "ISO 2022 IR 126" => "iso-8859-7",
            "ISO_IR 138" | "ISO 2022 IR 138" => "iso-8859-8",
            "ISO_IR 148" | "ISO 2022 IR 148" => "iso-8859-9",
            "ISO_IR 203" | "ISO 2022 IR 203" => "iso-8859-15",
            "ISO_IR 166" | "ISO 2022 IR 166" => "windows-874",
            "ISO_IR 13" | "ISO 2022 IR 13" => "shift_jis",
            "ISO 2022 IR 87" | "ISO 2022 IR 159" => "iso-2022-jp",
            "ISO 2022 IR 149" => "euc-kr",
            "ISO 2022 IR 58" | "GB2312" | "GBK" => "gbk",
            "GB18030" => "gb18030",
            _ => "windows-1252",
        };
        Self(
            encoding_rs::Encoding::for_label(label.as_bytes()).unwrap_or(encoding_rs::WINDOWS_1252),
        )
    }

    /// Whether text is UTF-8.
    pub fn is_utf8(self) -> bool {
        self.0 == encoding_rs::UTF_8
    }

    /// Decode a value.
    pub fn decode(self, bytes: &[u8]) -> Cow<'_, str> {
        self.0.decode_without_bom_handling(bytes).0
    }
}

impl<'a> DataSet<'a> {
    /// The element with `tag` at this level.
    pub fn get(&self, tag: Tag) -> Option<&Element<'a>> {
        self.elements.iter().find(|element| element.tag == tag)
    }

    /// How many elements with `tag` this level holds (more than one is malformed).
    pub fn count(&self, tag: Tag) -> usize {
        self.elements
            .iter()
            .filter(|element| element.tag == tag)
            .count()
    }

    /// A value's bytes, trailing padding (spaces, NULs) removed.
    pub fn raw(&self, tag: Tag) -> Option<&'a [u8]> {
        match self.get(tag)?.value {
            Value::Bytes(bytes) => Some(trim(bytes)),
            _ => None,
        }
    }

    /// A text value decoded with `charset`, padding removed (`""` when absent). Multi-valued
    /// text keeps its backslashes.
    pub fn text(&self, tag: Tag, charset: TextCharset) -> String {
        self.raw(tag)
            .map(|bytes| charset.decode(bytes).trim().to_owned())
            .unwrap_or_default()
    }

    /// The items of a sequence (`[]` when absent).
    pub fn items(&self, tag: Tag) -> &[DataSet<'a>] {
        match self.get(tag).map(|element| &element.value) {
            Some(Value::Items(items)) => items,
            _ => &[],
        }
    }

    /// The character set its SpecificCharacterSet names.
    pub fn charset(&self) -> TextCharset {
        self.raw(SPECIFIC_CHARACTER_SET)
            .map(|bytes| TextCharset::from_term(&String::from_utf8_lossy(bytes)))
            .unwrap_or_default()
    }
}

/// Bytes without trailing spaces and NULs.
fn trim(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|byte| *byte != b' ' && *byte != 0)
        .map_or(0, |last| last + 1);
    &bytes[..end]
}

/// VRs whose explicit header has two reserved bytes and a 4-byte length.
fn long_form(vr: [u8; 2]) -> bool {
    matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    )
}

/// Reads elements. Every read names the end of what encloses it (`limit`): a defined
/// length's end, or the enclosing one's for an undefined length, so nothing is read twice
/// or past its container, and the work is linear in the bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    elements: usize,
    /// The bytes are the head of a longer data set: an element cut at their end ends the
    /// reading (see [`parse_head`]).
    head: bool,
    /// A read went past the end of the bytes where nothing but their end bounded it.
    cut: std::cell::Cell<bool>,
}

impl<'a> Reader<'a> {
    /// `n` bytes at `at`, all before `limit`.
    fn get(&self, at: usize, n: usize, limit: usize) -> Option<&'a [u8]> {
        let Some(end) = at.checked_add(n) else {
            self.cut.set(limit >= self.bytes.len());
            return None;
        };
        if end > self.bytes.len() && limit >= self.bytes.len() {
            self.cut.set(true);
        }
        if end > limit {
            return None;
        }
        self.bytes.get(at..end)
    }
    /// `at + length` when it is no further than `limit`; marks a cut when it is past the
    /// end of the bytes and only the end of the bytes bounds it (not a container that ends
    /// before: a length past that is damage).
    fn end_within(&self, at: usize, length: usize, limit: usize) -> Option<usize> {
        let end = at.checked_add(length);
        if end.is_none_or(|end| end > self.bytes.len()) && limit >= self.bytes.len() {
            self.cut.set(true);
        }
        end.filter(|end| *end <= limit)
    }

    fn u16(&self, at: usize, limit: usize) -> Option<u16> {
        let b = self.get(at, 2, limit)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize, limit: usize) -> Option<u32> {
        let b = self.get(at, 4, limit)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A tag and a 4-byte length at the cursor (an item, a delimiter, Implicit VR).
    fn tag_and_length(&self, limit: usize) -> Option<(Tag, u32)> {
        Some((
            (self.u16(self.at, limit)?, self.u16(self.at + 2, limit)?),
            self.u32(self.at + 4, limit)?,
        ))
    }

    fn count(&mut self) -> Result<(), DatasetError> {
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(DatasetError::TooManyElements);
        }
        Ok(())
    }

    /// Elements until `end` (a defined length) or an item delimiter (an undefined length,
    /// which must come before `limit`), or the pixel data at the top level.
    fn data_set(
        &mut self,
        end: Option<usize>,
        limit: usize,
        syntax: Syntax,
        depth: usize,
    ) -> Result<DataSet<'a>, DatasetError> {
        if depth > MAX_DEPTH {
            return Err(DatasetError::TooDeep);
        }
        let limit = end.unwrap_or(limit);
        let mut set = DataSet::default();
        loop {
            if self.at >= limit {
                if end.is_none() && depth > 0 {
                    // An undefined-length item without its delimiter: the data ended.
                    if self.at >= self.bytes.len() {
                        self.cut.set(true);
                    }
                    return Err(DatasetError::Truncated(0xFFFE, 0xE00D));
                }
                return Ok(set);
            }
            let tag = match (self.u16(self.at, limit), self.u16(self.at + 2, limit)) {
                (Some(group), Some(element)) => (group, element),
                _ if self.head && depth == 0 && self.cut.get() => return Ok(set),
                _ => return Err(DatasetError::Truncated(0, 0)),
            };
            if tag == ITEM_END {
                // Only an undefined-length item ends so, with a length of 0.
                let length = self.u32(self.at + 4, limit);
                self.at += 8;
                if self.at > limit || end.is_some() || depth == 0 || length != Some(0) {
                    return Err(DatasetError::NotAnItem(tag.0, tag.1));
                }
                return Ok(set);
            }
            if tag.0 == 0xFFFE {
                // An item or a sequence delimiter where an element belongs.
                return Err(DatasetError::NotAnItem(tag.0, tag.1));
            }
            if depth == 0 && tag == PIXEL_DATA {
                // Carried, never decoded: reading stops here.
                return Ok(set);
            }
            self.count()?;
            let element = match self.element(tag, syntax, depth, limit) {
                Ok(element) => element,
                // The head ends inside this element: what came before is the head's.
                // (A cut inside a sequence may also show as a delimiter out of place.) Only
                // a read past the end of the head is a cut: an error within it is damage.
                Err(DatasetError::Truncated(..) | DatasetError::NotAnItem(..))
                    if self.head && depth == 0 && self.cut.get() =>
                {
                    return Ok(set);
                }
                Err(error) => return Err(error),
            };
            set.elements.push(element);
        }
    }

    fn element(
        &mut self,
        tag: Tag,
        syntax: Syntax,
        depth: usize,
        limit: usize,
    ) -> Result<Element<'a>, DatasetError> {
        let truncated = || DatasetError::Truncated(tag.0, tag.1);
        let (vr, length, header) = match syntax {
            Syntax::ExplicitLittle if tag.0 != 0xFFFE => {
                let vr_bytes = self.get(self.at + 4, 2, limit).ok_or_else(truncated)?;
                let vr = [vr_bytes[0], vr_bytes[1]];
                if long_form(vr) {
                    (vr, self.u32(self.at + 8, limit).ok_or_else(truncated)?, 12)
                } else {
                    let length = self.u16(self.at + 6, limit).ok_or_else(truncated)?;
                    (vr, u32::from(length), 8)
                }
            }
            _ => {
                let length = self.u32(self.at + 4, limit).ok_or_else(truncated)?;
                let vr = if length == UNDEFINED || KNOWN_SEQUENCES.contains(&tag) {
                    *b"SQ"
                } else {
                    *b"??"
                };
                (vr, length, 8)
            }
        };
        self.at += header;
        if length == UNDEFINED {
            if tag == PIXEL_DATA || (&vr != b"SQ" && &vr != b"UN") {
                self.skip_fragments(tag, limit)?;
                return Ok(Element {
                    tag,
                    vr,
                    value: Value::Encapsulated,
                });
            }
            // A UN of undefined length is a sequence encoded Implicit VR.
            let inner = if &vr == b"UN" {
                Syntax::ImplicitLittle
            } else {
                syntax
            };
            let items = self.items(tag, None, limit, inner, depth)?;
            return Ok(Element {
                tag,
                vr: *b"SQ",
                value: Value::Items(items),
            });
        }
        let length = usize::try_from(length).map_err(|_| truncated())?;
        let end = self
            .end_within(self.at, length, limit)
            .ok_or_else(truncated)?;
        if &vr == b"SQ" {
            let items = self.items(tag, Some(end), end, syntax, depth)?;
            return Ok(Element {
                tag,
                vr,
                value: Value::Items(items),
            });
        }
        let value = &self.bytes[self.at..end];
        self.at = end;
        Ok(Element {
            tag,
            vr,
            value: Value::Bytes(value),
        })
    }

    /// A sequence's items, until `end` (a defined length, reached exactly) or the sequence
    /// delimiter (before `limit`).
    fn items(
        &mut self,
        sequence: Tag,
        end: Option<usize>,
        limit: usize,
        syntax: Syntax,
        depth: usize,
    ) -> Result<Vec<DataSet<'a>>, DatasetError> {
        let truncated = || DatasetError::Truncated(sequence.0, sequence.1);
        let limit = end.unwrap_or(limit);
        let mut items = Vec::new();
        loop {
            if end.is_some() && self.at >= limit {
                return if self.at == limit {
                    Ok(items)
                } else {
                    Err(truncated())
                };
            }
            let (tag, length) = self.tag_and_length(limit).ok_or_else(truncated)?;
            self.at += 8;
            self.count()?;
            match tag {
                SEQUENCE_END => return Ok(items),
                ITEM if length == UNDEFINED => {
                    items.push(self.data_set(None, limit, syntax, depth + 1)?);
                }
                ITEM => {
                    let length = usize::try_from(length).map_err(|_| truncated())?;
                    let item_end = self
                        .end_within(self.at, length, limit)
                        .ok_or_else(truncated)?;
                    items.push(self.data_set(Some(item_end), item_end, syntax, depth + 1)?);
                    if self.at != item_end {
                        return Err(truncated());
                    }
                }
                _ => return Err(DatasetError::NotAnItem(sequence.0, sequence.1)),
            }
        }
    }

    /// Skip encapsulated fragments up to and including the sequence delimiter, all before
    /// `limit`; each fragment counts as an element.
    fn skip_fragments(&mut self, tag: Tag, limit: usize) -> Result<(), DatasetError> {
        let truncated = || DatasetError::Truncated(tag.0, tag.1);
        loop {
            let (item, length) = self.tag_and_length(limit).ok_or_else(truncated)?;
            self.at += 8;
            self.count()?;
            match item {
                SEQUENCE_END => return Ok(()),
                ITEM if length != UNDEFINED => {
                    let length = usize::try_from(length).map_err(|_| truncated())?;
                    self.at = self
                        .end_within(self.at, length, limit)
                        .ok_or_else(truncated)?;
                }
                _ => return Err(DatasetError::NotAnItem(tag.0, tag.1)),
            }
        }
    }
}

/// Read a data set encoded with `syntax`, up to its pixel data.
pub fn parse(bytes: &[u8], syntax: Syntax) -> Result<DataSet<'_>, DatasetError> {
    let mut reader = Reader {
        bytes,
        at: 0,
        elements: 0,
        head: false,
        cut: std::cell::Cell::new(false),
    };
    reader.data_set(None, bytes.len(), syntax, 0)
}

/// Read the first bytes of a longer data set (a spooled object's head): like [`parse`], but
/// an element cut off by the end of `bytes` ends the reading instead of failing it. Every
/// element returned is whole.
pub fn parse_head(bytes: &[u8], syntax: Syntax) -> Result<DataSet<'_>, DatasetError> {
    let mut reader = Reader {
        bytes,
        at: 0,
        elements: 0,
        head: true,
        cut: std::cell::Cell::new(false),
    };
    reader.data_set(None, bytes.len(), syntax, 0)
}

/// Encoding data sets (for tests and the bench): elements written in either syntax.
pub mod write {
    use super::{Syntax, Tag, long_form};

    /// One element in `syntax`, its value padded to even length (`pad`).
    pub fn element(out: &mut Vec<u8>, syntax: Syntax, tag: Tag, vr: &[u8; 2], value: &[u8]) {
        let pad = if vr == b"UI" || vr == b"OB" { 0 } else { b' ' };
        // A short-form value is at most 65,534 bytes (even): longer is cut, never written
        // with a wrong length (callers write checked UIDs and titles).
        let value = if syntax == Syntax::ExplicitLittle && !long_form(*vr) {
            &value[..value.len().min(usize::from(u16::MAX) - 1)]
        } else {
            value
        };
        let mut value = value.to_vec();
        if value.len() % 2 == 1 {
            value.push(pad);
        }
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        let length = u32::try_from(value.len()).unwrap_or(u32::MAX);
        match syntax {
            Syntax::ImplicitLittle => out.extend_from_slice(&length.to_le_bytes()),
            Syntax::ExplicitLittle => {
                out.extend_from_slice(vr);
                if long_form(*vr) {
                    out.extend_from_slice(&[0, 0]);
                    out.extend_from_slice(&length.to_le_bytes());
                } else {
                    out.extend_from_slice(&u16::try_from(length).unwrap_or(0).to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&value);
    }

    /// A sequence of undefined length holding `items` (each already encoded).
    pub fn sequence(out: &mut Vec<u8>, syntax: Syntax, tag: Tag, items: &[Vec<u8>]) {
        out.extend_from_slice(&tag.0.to_le_bytes());
        out.extend_from_slice(&tag.1.to_le_bytes());
        if syntax == Syntax::ExplicitLittle {
            out.extend_from_slice(b"SQ\0\0");
        }
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        for item in items {
            out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
            out.extend_from_slice(&u32::MAX.to_le_bytes());
            out.extend_from_slice(item);
            out.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        }
        out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    }
}

#[cfg(test)]
mod tests;
