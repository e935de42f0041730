//! A received DICOM object as mfoundry stores it: a DICOM Part 10 file (PS3.10 §7) whose
//! file meta information mfoundry writes (SOP class and instance from the C-STORE request,
//! the negotiated transfer syntax, the calling AE title) and whose data set is the bytes
//! received, unchanged. Its identifiers are read once at intake ([`Identifiers`]); the
//! header view ([`Identifiers::header_message`]) gives every HL7-shaped part of mfoundry
//! (listing, search, patient index, filters) the object's identifiers.

use super::dataset::{self, DataSet, Syntax, TextCharset};

/// mfoundry's implementation class UID (a UUID-derived `2.25` UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.248560403093573120152409288500203801472";
/// mfoundry's implementation version name (SH, at most 16 characters).
pub const IMPLEMENTATION_VERSION: &str = "MFOUNDRY";
/// The Part 10 preamble and prefix.
const PREAMBLE_LEN: usize = 128;
const PREFIX: &[u8; 4] = b"DICM";

/// Whether `body` is a stored DICOM object (a Part 10 file: `DICM` after the preamble, the
/// file meta group next), not an HL7 message.
pub fn is_dicom(body: &[u8]) -> bool {
    let hl7 = [b"MSH", b"FHS", b"BHS"]
        .iter()
        .any(|header| body.starts_with(*header));
    !hl7 && body.get(PREAMBLE_LEN..PREAMBLE_LEN + 6)
        == Some(&[b'D', b'I', b'C', b'M', 0x02, 0x00][..])
}

/// The start of the Part 10 file for a data set received with `transfer_syntax`: the
/// preamble, `DICM` and mfoundry's file meta group. The data set follows it unchanged.
pub fn part10_prefix(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    source_ae: &str,
) -> Vec<u8> {
    let syntax = Syntax::ExplicitLittle;
    let mut meta = Vec::new();
    dataset::write::element(&mut meta, syntax, (0x0002, 0x0001), b"OB", &[0, 1]);
    dataset::write::element(
        &mut meta,
        syntax,
        (0x0002, 0x0002),
        b"UI",
        sop_class.as_bytes(),
    );
    dataset::write::element(
        &mut meta,
        syntax,
        (0x0002, 0x0003),
        b"UI",
        sop_instance.as_bytes(),
    );
    dataset::write::element(
        &mut meta,
        syntax,
        (0x0002, 0x0010),
        b"UI",
        transfer_syntax.as_bytes(),
    );
    dataset::write::element(
        &mut meta,
        syntax,
        (0x0002, 0x0012),
        b"UI",
        IMPLEMENTATION_CLASS_UID.as_bytes(),
    );
    dataset::write::element(
        &mut meta,
        syntax,
        (0x0002, 0x0013),
        b"SH",
        IMPLEMENTATION_VERSION.as_bytes(),
    );
    if !source_ae.is_empty() {
        dataset::write::element(
            &mut meta,
            syntax,
            (0x0002, 0x0016),
            b"AE",
            source_ae.as_bytes(),
        );
    }
    let mut out = Vec::with_capacity(PREAMBLE_LEN + 4 + 12 + meta.len());
    out.extend_from_slice(&[0; PREAMBLE_LEN]);
    out.extend_from_slice(PREFIX);
    dataset::write::element(
        &mut out,
        syntax,
        (0x0002, 0x0000),
        b"UL",
        &u32::try_from(meta.len()).unwrap_or(0).to_le_bytes(),
    );
    out.extend_from_slice(&meta);
    out
}

/// The whole Part 10 file for a data set ([`part10_prefix`] and the data set).
pub fn part10(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    source_ae: &str,
    data_set: &[u8],
) -> Vec<u8> {
    let mut out = part10_prefix(sop_class, sop_instance, transfer_syntax, source_ae);
    out.extend_from_slice(data_set);
    out
}

/// A stored object taken apart: its file meta values and where its data set starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored<'a> {
    /// (0002,0002) MediaStorageSOPClassUID.
    pub sop_class: String,
    /// (0002,0003) MediaStorageSOPInstanceUID.
    pub sop_instance: String,
    /// (0002,0010) TransferSyntaxUID.
    pub transfer_syntax: String,
    /// (0002,0016) SourceApplicationEntityTitle: the AE that wrote the file (for a stored
    /// object, the calling AE title it came from); empty when absent.
    pub source_ae: String,
    /// The data set, as received.
    pub data_set: &'a [u8],
}

/// Take a Part 10 file apart; `None` when it is not one.
pub fn read_part10(bytes: &[u8]) -> Option<Stored<'_>> {
    if !is_dicom(bytes) {
        return None;
    }
    let rest = &bytes[PREAMBLE_LEN + 4..];
    // (0002,0000) UL 4 <length>
    let head = rest.get(..12)?;
    if head[..6] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return None;
    }
    let group_len =
        usize::try_from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])).ok()?;
    let meta_end = 12usize.checked_add(group_len)?;
    let meta = rest.get(12..meta_end)?;
    let set = dataset::parse(meta, Syntax::ExplicitLittle).ok()?;
    let charset = TextCharset::default();
    Some(Stored {
        sop_class: set.text((0x0002, 0x0002), charset),
        sop_instance: set.text((0x0002, 0x0003), charset),
        transfer_syntax: set.text((0x0002, 0x0010), charset),
        source_ae: set.text((0x0002, 0x0016), charset),
        data_set: &rest[meta_end..],
    })
}

/// A DICOM value as HL7 text: the delimiters escaped (`|` is `\F\` …), and every other
/// control character (a CR would end the segment, a 0x1C the MLLP frame) as `\Xhh\`.
pub fn hl7_text(value: &str) -> String {
    let escaped = crate::hl7::escape(value.as_bytes(), &crate::hl7::Delimiters::standard());
    let mut out = String::with_capacity(escaped.len());
    for character in String::from_utf8_lossy(&escaped).chars() {
        if character.is_ascii_control() {
            out.push_str(&format!("\\X{:02X}\\", u32::from(character)));
        } else {
            out.push(character);
        }
    }
    out
}

/// What filters, listings and searches see of an object. Its `Debug` shows the UIDs and
/// titles only: the patient's values never reach a log by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Identifiers {
    /// (0008,0060) Modality.
    pub modality: String,
    /// (0008,0016) SOPClassUID.
    pub sop_class_uid: String,
    /// (0008,0018) SOPInstanceUID.
    pub sop_instance_uid: String,
    /// (0020,000D) StudyInstanceUID.
    pub study_uid: String,
    /// (0020,000E) SeriesInstanceUID.
    pub series_uid: String,
    /// (0008,0050) AccessionNumber.
    pub accession: String,
    /// (0010,0020) PatientID.
    pub patient_id: String,
    /// (0010,0021) IssuerOfPatientID.
    pub issuer: String,
    /// (0010,0010) PatientName (PN: family^given^middle^prefix^suffix).
    pub patient_name: String,
    /// (0010,0030) PatientBirthDate.
    pub birth_date: String,
    /// (0010,0040) PatientSex.
    pub sex: String,
    /// The calling AE title of the association it came on.
    pub calling_ae: String,
    /// The called AE title.
    pub called_ae: String,
    /// The transfer syntax it was received in.
    pub transfer_syntax: String,
}

impl std::fmt::Debug for Identifiers {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Identifiers")
            .field("modality", &self.modality)
            .field("sop_class_uid", &self.sop_class_uid)
            .field("sop_instance_uid", &self.sop_instance_uid)
            .field("calling_ae", &self.calling_ae)
            .field("called_ae", &self.called_ae)
            .finish_non_exhaustive()
    }
}

/// The `dicom` keys CEL sees, in this order ([`Identifiers::cel_values`]).
pub const CEL_KEYS: [&str; 8] = [
    "modality",
    "sop_class_uid",
    "sop_instance_uid",
    "study_uid",
    "series_uid",
    "accession",
    "patient_id",
    "calling_ae",
];

impl Identifiers {
    /// Read from a data set; the SOP class and instance fall back to the command's.
    pub fn read(set: &DataSet<'_>, command_class: &str, command_instance: &str) -> Self {
        let charset = set.charset();
        let text = |tag| set.text(tag, charset);
        let or = |value: String, fallback: &str| {
            if value.is_empty() {
                fallback.to_owned()
            } else {
                value
            }
        };
        Self {
            modality: text(dataset::MODALITY),
            sop_class_uid: or(text(dataset::SOP_CLASS_UID), command_class),
            sop_instance_uid: or(text(dataset::SOP_INSTANCE_UID), command_instance),
            study_uid: text(dataset::STUDY_INSTANCE_UID),
            series_uid: text(dataset::SERIES_INSTANCE_UID),
            accession: text(dataset::ACCESSION_NUMBER),
            patient_id: text(dataset::PATIENT_ID),
            issuer: text(dataset::ISSUER_OF_PATIENT_ID),
            patient_name: text(dataset::PATIENT_NAME),
            birth_date: text(dataset::PATIENT_BIRTH_DATE),
            sex: text(dataset::PATIENT_SEX),
            ..Self::default()
        }
    }

    /// The values of [`CEL_KEYS`], in order.
    pub fn cel_values(&self) -> [&str; 8] {
        [
            &self.modality,
            &self.sop_class_uid,
            &self.sop_instance_uid,
            &self.study_uid,
            &self.series_uid,
            &self.accession,
            &self.patient_id,
            &self.calling_ae,
        ]
    }

    /// The object's header view: an HL7 v2 header and PID in UTF-8 (never stored, never
    /// sent) from which the record's header fields, the patient index and the HL7 CEL
    /// variables are read:
    ///
    /// - MSH-3 the calling AE title, MSH-5 the called AE title, MSH-7 `received`
    ///   (YYYYMMDDHHMMSS), MSH-9 `DICOM^<Modality>`, MSH-10 the SOP Instance UID, MSH-11
    ///   `P`, MSH-18 `UNICODE UTF-8`;
    /// - PID-3 `<PatientID>^^^<IssuerOfPatientID>`, PID-5 the PatientName (DICOM's
    ///   family^given^middle^prefix^suffix as XPN's family^given^middle^suffix^prefix),
    ///   PID-7 the birth date, PID-8 the sex.
    pub fn header_message(&self, received: &str) -> Vec<u8> {
        let esc = hl7_text;
        let name = {
            let parts: Vec<&str> = self
                .patient_name
                .split('=')
                .next()
                .unwrap_or("")
                .split('^')
                .collect();
            let part = |index: usize| parts.get(index).copied().unwrap_or("");
            let xpn = [part(0), part(1), part(2), part(4), part(3)]
                .iter()
                .map(|value| esc(value))
                .collect::<Vec<_>>()
                .join("^");
            xpn.trim_end_matches('^').to_owned()
        };
        let identifier = if self.issuer.is_empty() {
            esc(&self.patient_id)
        } else {
            format!("{}^^^{}", esc(&self.patient_id), esc(&self.issuer))
        };
        format!(
            "MSH|^~\\&|{}||{}||{}||DICOM^{}|{}|P|||||||UNICODE UTF-8\rPID|||{}||{}||{}|{}\r",
            esc(&self.calling_ae),
            esc(&self.called_ae),
            received,
            esc(&self.modality),
            esc(&self.sop_instance_uid),
            identifier,
            name,
            esc(&self.birth_date),
            esc(&self.sex),
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::dataset::write::element;

    #[test]
    fn a_part10_file_gives_back_its_meta_and_the_data_set_unchanged() {
        let mut data = Vec::new();
        element(
            &mut data,
            Syntax::ImplicitLittle,
            dataset::MODALITY,
            b"CS",
            b"CT",
        );
        let file = part10("1.2.3", "1.2.3.4.5", "1.2.840.10008.1.2", "CT1", &data);
        assert!(is_dicom(&file));
        let stored = read_part10(&file).expect("in the test");
        assert_eq!(stored.sop_class, "1.2.3");
        assert_eq!(stored.sop_instance, "1.2.3.4.5");
        assert_eq!(stored.transfer_syntax, "1.2.840.10008.1.2");
        assert_eq!(stored.data_set, &data[..]);
        assert!(!is_dicom(b"MSH|^~\\&|A"));
        assert!(read_part10(b"MSH|^~\\&|A").is_none());
    }

    #[test]
    fn the_header_view_is_a_readable_hl7_message_with_the_identifiers() {
        let ids = Identifiers {
            modality: "CT".to_owned(),
            sop_instance_uid: "1.2.3.4".to_owned(),
            patient_id: "PAT|1".to_owned(),
            issuer: "HOSP".to_owned(),
            patient_name: "Doe^John^Q^Dr^Jr".to_owned(),
            calling_ae: "CT1".to_owned(),
            called_ae: "MFOUNDRY".to_owned(),
            ..Identifiers::default()
        };
        let bytes = ids.header_message("20261206120000");
        let message = crate::hl7::Message::parse(bytes::Bytes::from(bytes)).expect("in the test");
        assert_eq!(message.header_component(9, 1), b"DICOM");
        assert_eq!(message.header_component(9, 2), b"CT");
        assert_eq!(message.header_component(3, 1), b"CT1");
        assert_eq!(message.header_field(18), b"UNICODE UTF-8");
        let path = |text: &str| text.parse::<crate::hl7::FieldPath>().expect("in the test");
        assert_eq!(
            message.get(&path("MSH-10")).expect("in the test"),
            b"1.2.3.4"
        );
        assert_eq!(
            message.get(&path("PID-3.1")).expect("in the test"),
            b"PAT\\F\\1"
        );
        assert_eq!(message.get(&path("PID-3.4")).expect("in the test"), b"HOSP");
        assert_eq!(message.get(&path("PID-5.1")).expect("in the test"), b"Doe");
        assert_eq!(message.get(&path("PID-5.4")).expect("in the test"), b"Jr");
        assert_eq!(message.get(&path("PID-5.5")).expect("in the test"), b"Dr");
    }
}
