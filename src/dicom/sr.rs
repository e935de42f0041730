//! A DICOM Structured Report as an HL7 v2.5.1 ORU^R01 (ADR 0020, docs/formats.md "DICOM
//! Structured Report to ORU^R01").
//!
//! - **MSH**: MSH-3 the calling AE title the report came from, MSH-4 (0008,0080)
//!   InstitutionName, MSH-7 when it was built (UTC), MSH-9 `ORU^R01^ORU_R01`, MSH-10 the given
//!   control id, MSH-11 `P`, MSH-12 `2.5.1`, MSH-18 the report's SpecificCharacterSet in
//!   HL7's terms (the text is encoded in it; a set HL7 has no name for is written as UTF-8).
//! - **PID** from the patient module: PID-3 PatientID `^^^` IssuerOfPatientID, PID-5
//!   PatientName (DICOM's family^given^middle^prefix^suffix as XPN's
//!   family^given^middle^suffix^prefix), PID-7 PatientBirthDate, PID-8 PatientSex.
//! - **ORC** `RE`, ORC-3 the AccessionNumber.
//! - **OBR**: OBR-3 the AccessionNumber, OBR-4 the document title (the root's concept name:
//!   code^meaning^scheme), OBR-7 ContentDate+ContentTime, OBR-25 `F` when CompletionFlag is
//!   COMPLETE and VerificationFlag VERIFIED, else `P`.
//! - **OBX**, one per content item below the root, depth first: OBX-2 the value type (NUM
//!   `NM`, TEXT `TX` with one repetition per line, CODE `CE`, DATE `DT`, TIME `TM`, DATETIME
//!   `TS`, PNAME `PN`, UIDREF `ST`), OBX-3 the concept name, OBX-4 the item's position in
//!   the tree (`1`, `1.2`, `1.2.3`: the n-th item of each level), OBX-5 the value, OBX-6 the
//!   measurement units of a NUM (UCUM: code^meaning^`UCUM`), OBX-11 as OBR-25. CONTAINERs
//!   only group (their position numbers their children); IMAGE, COMPOSITE, WAVEFORM,
//!   SCOORD, SCOORD3D and TCOORD items reference other objects and are not mapped.

use super::dataset::{self, DataSet, Syntax, TextCharset};
use super::object::hl7_text;
use super::object::read_part10;
use crate::hl7::Charset;

/// Why an object cannot be an ORU: mfoundry's words, never report content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrError {
    /// Not a Structured Report.
    #[error(
        "the DICOM object is not a Structured Report (SOP class {0}); only Structured Reports are delivered as HL7 (ORU^R01)"
    )]
    NotAReport(String),
    /// Its data set cannot be read.
    #[error("the Structured Report cannot be read: {0}")]
    Unreadable(String),
}

/// Whether a SOP class is a Structured Report's (1.2.840.10008.5.1.4.1.1.88.x, Key Object
/// Selection aside).
pub fn is_report(sop_class: &str) -> bool {
    // Key Object Selection (88.59) lists images, it reports nothing.
    sop_class
        .strip_prefix("1.2.840.10008.5.1.4.1.1.88.")
        .is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) && rest != "59"
        })
}

const CONCEPT_NAME: dataset::Tag = (0x0040, 0xA043);
const CONTENT: dataset::Tag = (0x0040, 0xA730);
const VALUE_TYPE: dataset::Tag = (0x0040, 0xA040);
const CODE_VALUE: dataset::Tag = (0x0008, 0x0100);
const CODING_SCHEME: dataset::Tag = (0x0008, 0x0102);
const CODE_MEANING: dataset::Tag = (0x0008, 0x0104);
const MEASURED_VALUE: dataset::Tag = (0x0040, 0xA300);
const NUMERIC_VALUE: dataset::Tag = (0x0040, 0xA30A);
const UNITS: dataset::Tag = (0x0040, 0x08EA);
const TEXT_VALUE: dataset::Tag = (0x0040, 0xA160);
const CONCEPT_CODE: dataset::Tag = (0x0040, 0xA168);
const DATE: dataset::Tag = (0x0040, 0xA121);
const TIME: dataset::Tag = (0x0040, 0xA122);
const DATETIME: dataset::Tag = (0x0040, 0xA120);
const PERSON_NAME: dataset::Tag = (0x0040, 0xA123);
const UID: dataset::Tag = (0x0040, 0xA124);
const COMPLETION: dataset::Tag = (0x0040, 0xA491);
const VERIFICATION: dataset::Tag = (0x0040, 0xA493);
const CONTENT_DATE: dataset::Tag = (0x0008, 0x0023);
const CONTENT_TIME: dataset::Tag = (0x0008, 0x0033);
const INSTITUTION: dataset::Tag = (0x0008, 0x0080);

/// Most OBX segments one report gives (a larger tree is cut, and says so in a last NTE).
pub const MAX_OBX: usize = 10_000;

/// The HL7 name of a DICOM character set, and the charset the text is encoded in.
fn hl7_charset(term: &str) -> (&'static str, Charset) {
    let last = term
        .split('\\')
        .map(str::trim)
        .rfind(|term| !term.is_empty())
        .unwrap_or("");
    let name = match last {
        "" | "ISO_IR 6" | "ISO 2022 IR 6" => "",
        "ISO_IR 100" | "ISO 2022 IR 100" => "8859/1",
        "ISO_IR 101" | "ISO 2022 IR 101" => "8859/2",
        "ISO_IR 109" | "ISO 2022 IR 109" => "8859/3",
        "ISO_IR 110" | "ISO 2022 IR 110" => "8859/4",
        "ISO_IR 144" | "ISO 2022 IR 144" => "8859/5",
        "ISO_IR 127" | "ISO 2022 IR 127" => "8859/6",
        "ISO_IR 126" | "ISO 2022 IR 126" => "8859/7",
        "ISO_IR 138" | "ISO 2022 IR 138" => "8859/8",
        "ISO_IR 148" | "ISO 2022 IR 148" => "8859/9",
        "ISO_IR 203" | "ISO 2022 IR 203" => "8859/15",
        _ => "UNICODE UTF-8",
    };
    let charset = match name {
        "" => Charset::from_name("ASCII"),
        name => Charset::from_name(name),
    }
    .unwrap_or(Charset::UTF_8);
    (name, charset)
}

/// A coded entry (code^meaning^scheme) of the first item of `sequence` in `set`.
fn code(
    set: &DataSet<'_>,
    sequence: dataset::Tag,
    text: &dyn Fn(&DataSet<'_>, dataset::Tag) -> String,
) -> String {
    let Some(item) = set.items(sequence).first() else {
        return String::new();
    };
    join(&[
        text(item, CODE_VALUE),
        text(item, CODE_MEANING),
        text(item, CODING_SCHEME),
    ])
}

/// Components joined with `^`, trailing empty ones dropped.
fn join(parts: &[String]) -> String {
    parts.join("^").trim_end_matches('^').to_owned()
}

/// Build the ORU^R01 of the stored object `body` (a Part 10 file), with `control_id` as
/// MSH-10 and `created` (YYYYMMDDHHMMSS) as MSH-7.
pub fn oru(body: &[u8], control_id: &str, created: &str) -> Result<Vec<u8>, SrError> {
    let stored =
        read_part10(body).ok_or_else(|| SrError::Unreadable("not a DICOM file".to_owned()))?;
    if !is_report(&stored.sop_class) {
        return Err(SrError::NotAReport(stored.sop_class));
    }
    let syntax = Syntax::of(&stored.transfer_syntax).ok_or_else(|| {
        SrError::Unreadable(format!(
            "transfer syntax {} is not readable",
            stored.transfer_syntax
        ))
    })?;
    let set = dataset::parse(stored.data_set, syntax)
        .map_err(|error| SrError::Unreadable(error.to_string()))?;
    let dicom_charset = set.charset();
    let term = set
        .raw(dataset::SPECIFIC_CHARACTER_SET)
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
        .unwrap_or_default();
    let (charset_name, charset) = hl7_charset(&term);
    // Text of an element, decoded from the report's set and escaped for HL7.
    let esc = hl7_text;
    let text = |item: &DataSet<'_>, tag: dataset::Tag| esc(&item.text(tag, dicom_charset));
    let identifiers = super::Identifiers::read(&set, &stored.sop_class, &stored.sop_instance);
    let status = if item_text(&set, COMPLETION, dicom_charset) == "COMPLETE"
        && item_text(&set, VERIFICATION, dicom_charset) == "VERIFIED"
    {
        "F"
    } else {
        "P"
    };
    let source_ae = source_ae(body);
    // MSH is written last, once the character set the text can be sent in is known.
    let msh = |charset_name: &str| {
        format!(
            "MSH|^~\\&|{}|{}|||{}+0000||ORU^R01^ORU_R01|{}|P|2.5.1||||||{}\r",
            esc(&source_ae),
            text(&set, INSTITUTION),
            esc(created),
            esc(control_id),
            charset_name,
        )
    };
    let mut out = String::new();
    let view = identifiers.header_message(created);
    // The header view's PID (the same mapping as for listings and the patient index).
    let view = String::from_utf8_lossy(&view).into_owned();
    if let Some(pid) = view.split('\r').find(|segment| segment.starts_with("PID|")) {
        out.push_str("PID|1");
        out.push_str(&pid[4..]);
        out.push('\r');
    }
    let accession = text(&set, dataset::ACCESSION_NUMBER);
    out.push_str(&format!("ORC|RE||{accession}\r"));
    let observed = format!(
        "{}{}",
        item_text(&set, CONTENT_DATE, dicom_charset),
        item_text(&set, CONTENT_TIME, dicom_charset)
    );
    let title = code(&set, CONCEPT_NAME, &text);
    out.push_str(&format!(
        "OBR|1||{accession}|{title}|||{}||||||||||||||||||{status}\r",
        esc(&observed),
    ));
    let mut count = 0usize;
    let mut cut = false;
    let mut position = Vec::new();
    walk(
        &set,
        &mut position,
        &mut |item, position| {
            if count >= MAX_OBX {
                cut = true;
                return;
            }
            if let Some(segment) = obx(item, position, count + 1, status, &text, dicom_charset) {
                count += 1;
                out.push_str(&segment);
                out.push('\r');
            }
        },
        0,
    );
    if cut {
        out.push_str(&format!(
            "NTE|1|L|the report has more than {MAX_OBX} content items; the rest are not in this message\r"
        ));
    }
    // The text in the report's own set, named in MSH-18; when it does not fit (characters
    // the set cannot hold, or non-ASCII text in a report that declares none), UTF-8.
    let encoded = match charset_name {
        "" if !out.is_ascii() => None,
        _ => charset.encode(&out).map(std::borrow::Cow::into_owned),
    };
    let bytes = match encoded {
        Some(body) => {
            let mut bytes = msh(charset_name).into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        }
        None => {
            let mut bytes = msh("UNICODE UTF-8").into_bytes();
            bytes.extend_from_slice(out.as_bytes());
            bytes
        }
    };
    Ok(bytes)
}

/// The calling AE title kept in the stored file's meta (0002,0016).
fn source_ae(body: &[u8]) -> String {
    let Some(rest) = body.get(132..) else {
        return String::new();
    };
    let Some(head) = rest.get(..12) else {
        return String::new();
    };
    let length = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let Some(meta) = rest.get(12..12usize.saturating_add(length)) else {
        return String::new();
    };
    dataset::parse(meta, Syntax::ExplicitLittle)
        .map(|set| set.text((0x0002, 0x0016), TextCharset::default()))
        .unwrap_or_default()
}

fn item_text(set: &DataSet<'_>, tag: dataset::Tag, charset: TextCharset) -> String {
    set.text(tag, charset)
}

/// Visit every content item below `set`, depth first, with its position.
fn walk<'a>(
    set: &DataSet<'a>,
    position: &mut Vec<usize>,
    visit: &mut dyn FnMut(&DataSet<'a>, &[usize]),
    depth: usize,
) {
    if depth > dataset::MAX_DEPTH {
        return;
    }
    for (index, item) in set.items(CONTENT).iter().enumerate() {
        position.push(index + 1);
        visit(item, position);
        walk(item, position, visit, depth + 1);
        position.pop();
    }
}

/// The OBX of one content item; `None` for a CONTAINER or a reference item.
fn obx(
    item: &DataSet<'_>,
    position: &[usize],
    set_id: usize,
    status: &str,
    text: &dyn Fn(&DataSet<'_>, dataset::Tag) -> String,
    charset: TextCharset,
) -> Option<String> {
    let value_type = item.text(VALUE_TYPE, charset);
    let name = code(item, CONCEPT_NAME, text);
    let (hl7_type, value, units) = match value_type.as_str() {
        "NUM" => {
            let measured = item.items(MEASURED_VALUE).first();
            let value = measured.map(|m| text(m, NUMERIC_VALUE)).unwrap_or_default();
            let units = measured.map(|m| code(m, UNITS, text)).unwrap_or_default();
            ("NM", value, units)
        }
        "TEXT" => {
            // One repetition per line (TX).
            let text = item.text(TEXT_VALUE, charset);
            let value = text
                .split("\r\n")
                .flat_map(|line| line.split(['\r', '\n']))
                .map(hl7_text)
                .collect::<Vec<_>>()
                .join("~");
            ("TX", value, String::new())
        }
        "CODE" => ("CE", code(item, CONCEPT_CODE, text), String::new()),
        "DATE" => ("DT", text(item, DATE), String::new()),
        "TIME" => ("TM", text(item, TIME), String::new()),
        "DATETIME" => ("TS", text(item, DATETIME), String::new()),
        "PNAME" => {
            let name = item.text(PERSON_NAME, charset);
            let parts: Vec<&str> = name.split('=').next().unwrap_or("").split('^').collect();
            let part = |index: usize| hl7_text(parts.get(index).copied().unwrap_or(""));
            let xpn = join(&[part(0), part(1), part(2), part(4), part(3)]);
            ("XPN", xpn, String::new())
        }
        "UIDREF" => ("ST", text(item, UID), String::new()),
        _ => return None,
    };
    let position: Vec<String> = position.iter().map(ToString::to_string).collect();
    Some(format!(
        "OBX|{set_id}|{hl7_type}|{name}|{}|{value}|{units}|||||{status}",
        position.join(".")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::dataset::write::{element, sequence};
    use crate::dicom::object::part10;

    fn code_item(syntax: Syntax, value: &str, scheme: &str, meaning: &str) -> Vec<u8> {
        let mut out = Vec::new();
        element(&mut out, syntax, CODE_VALUE, b"SH", value.as_bytes());
        element(&mut out, syntax, CODING_SCHEME, b"SH", scheme.as_bytes());
        element(&mut out, syntax, CODE_MEANING, b"LO", meaning.as_bytes());
        out
    }

    fn report(syntax: Syntax, complete: bool) -> Vec<u8> {
        let sr = "1.2.840.10008.5.1.4.1.1.88.33";
        let mut out = Vec::new();
        element(
            &mut out,
            syntax,
            dataset::SPECIFIC_CHARACTER_SET,
            b"CS",
            b"ISO_IR 100",
        );
        element(
            &mut out,
            syntax,
            dataset::SOP_CLASS_UID,
            b"UI",
            sr.as_bytes(),
        );
        element(
            &mut out,
            syntax,
            dataset::SOP_INSTANCE_UID,
            b"UI",
            b"1.2.3.4",
        );
        element(&mut out, syntax, CONTENT_DATE, b"DA", b"20261206");
        element(&mut out, syntax, CONTENT_TIME, b"TM", b"101500");
        element(&mut out, syntax, dataset::ACCESSION_NUMBER, b"SH", b"ACC|7");
        element(
            &mut out,
            syntax,
            dataset::PATIENT_NAME,
            b"PN",
            b"M\xfcller^Anna",
        );
        element(&mut out, syntax, dataset::PATIENT_ID, b"LO", b"P1");
        sequence(
            &mut out,
            syntax,
            CONCEPT_NAME,
            &[code_item(
                syntax,
                "18748-4",
                "LN",
                "Diagnostic imaging report",
            )],
        );
        element(&mut out, syntax, VALUE_TYPE, b"CS", b"CONTAINER");
        let mut num = Vec::new();
        element(&mut num, syntax, VALUE_TYPE, b"CS", b"NUM");
        sequence(
            &mut num,
            syntax,
            CONCEPT_NAME,
            &[code_item(syntax, "8867-4", "LN", "Heart rate")],
        );
        let mut measured = Vec::new();
        element(&mut measured, syntax, NUMERIC_VALUE, b"DS", b"72");
        sequence(
            &mut measured,
            syntax,
            UNITS,
            &[code_item(syntax, "/min", "UCUM", "per minute")],
        );
        sequence(&mut num, syntax, MEASURED_VALUE, &[measured]);
        let mut text = Vec::new();
        element(&mut text, syntax, VALUE_TYPE, b"CS", b"TEXT");
        sequence(
            &mut text,
            syntax,
            CONCEPT_NAME,
            &[code_item(syntax, "121071", "DCM", "Finding")],
        );
        element(
            &mut text,
            syntax,
            TEXT_VALUE,
            b"UT",
            b"No acute findings.\r\nSee image 3 & 4.",
        );
        let mut coded = Vec::new();
        element(&mut coded, syntax, VALUE_TYPE, b"CS", b"CODE");
        sequence(
            &mut coded,
            syntax,
            CONCEPT_NAME,
            &[code_item(syntax, "121071", "DCM", "Finding")],
        );
        sequence(
            &mut coded,
            syntax,
            CONCEPT_CODE,
            &[code_item(syntax, "17621005", "SCT", "Normal")],
        );
        let mut container = Vec::new();
        element(&mut container, syntax, VALUE_TYPE, b"CS", b"CONTAINER");
        sequence(&mut container, syntax, CONTENT, &[text, coded]);
        sequence(&mut out, syntax, CONTENT, &[num, container]);
        element(
            &mut out,
            syntax,
            COMPLETION,
            b"CS",
            if complete { b"COMPLETE" } else { b"PARTIAL" },
        );
        element(&mut out, syntax, VERIFICATION, b"CS", b"VERIFIED");
        part10(
            sr,
            "1.2.3.4",
            match syntax {
                Syntax::ExplicitLittle => dataset::EXPLICIT_VR_LITTLE_ENDIAN,
                Syntax::ImplicitLittle => dataset::IMPLICIT_VR_LITTLE_ENDIAN,
            },
            "CT1",
            &out,
        )
    }

    fn segments(bytes: &[u8]) -> Vec<String> {
        Charset::from_name("8859/1")
            .expect("latin-1")
            .decode(bytes)
            .split('\r')
            .filter(|segment| !segment.is_empty())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_report_maps_to_an_oru_in_both_syntaxes() {
        for syntax in [Syntax::ExplicitLittle, Syntax::ImplicitLittle] {
            let oru = oru(&report(syntax, true), "MF1", "20261206120000").expect("maps");
            let segments = segments(&oru);
            let message =
                crate::hl7::Message::parse(bytes::Bytes::from(oru.clone())).expect("parses");
            assert_eq!(message.header_component(9, 1), b"ORU");
            assert_eq!(message.header_field(18), b"8859/1");
            assert_eq!(message.header_field(3), b"CT1");
            assert!(
                segments[1].starts_with("PID|1||P1||Müller^Anna"),
                "{segments:?}"
            );
            assert_eq!(segments[2], "ORC|RE||ACC\\F\\7");
            assert!(segments[3].starts_with(
                "OBR|1||ACC\\F\\7|18748-4^Diagnostic imaging report^LN|||20261206101500"
            ));
            assert!(segments[3].ends_with("|F"), "{}", segments[3]);
            assert_eq!(
                segments[4],
                "OBX|1|NM|8867-4^Heart rate^LN|1|72|/min^per minute^UCUM|||||F"
            );
            assert_eq!(
                segments[5],
                "OBX|2|TX|121071^Finding^DCM|2.1|No acute findings.~See image 3 \\T\\ 4.||||||F"
            );
            assert_eq!(
                segments[6],
                "OBX|3|CE|121071^Finding^DCM|2.2|17621005^Normal^SCT||||||F"
            );
            assert_eq!(segments.len(), 7);
        }
    }

    #[test]
    fn control_characters_cannot_end_a_segment_or_a_frame() {
        assert_eq!(hl7_text("a\u{1c}b|c"), "a\\X1C\\b\\F\\c");
        assert_eq!(hl7_text("x\ry"), "x\\X0D\\y");
    }

    #[test]
    fn an_unverified_report_is_preliminary_and_other_objects_are_refused() {
        let oru = oru(
            &report(Syntax::ExplicitLittle, false),
            "MF1",
            "20261206120000",
        )
        .expect("maps");
        assert!(segments(&oru)[3].ends_with("|P"));
        let mut ct = Vec::new();
        element(
            &mut ct,
            Syntax::ExplicitLittle,
            dataset::MODALITY,
            b"CS",
            b"CT",
        );
        let file = part10(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3",
            dataset::EXPLICIT_VR_LITTLE_ENDIAN,
            "",
            &ct,
        );
        assert!(matches!(oru_of(&file), Err(SrError::NotAReport(_))));
        assert!(matches!(oru_of(b"MSH|^~\\&|"), Err(SrError::Unreadable(_))));
    }

    fn oru_of(body: &[u8]) -> Result<Vec<u8>, SrError> {
        oru(body, "MF1", "20261206120000")
    }
}
