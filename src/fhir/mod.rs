//! HL7 v2 to FHIR R4, after the HL7 "V2-to-FHIR" implementation guide (its mapping tables
//! in the HL7/v2-to-fhir repository: `mappings/messages`, `segments`, `datatypes`,
//! `codesystems`), for the message families hospitals send most:
//!
//! - ADT^A01, A03, A04, A08 (`ADT_A01[Bundle]`): Patient (`PID[Patient]`), Encounter
//!   (`PV1[Encounter]`);
//! - ORU^R01 (`ORU_R01[Bundle]`): Patient, a DiagnosticReport per OBR
//!   (`OBR[DiagnosticReport]`) with the Observations of its OBX segments
//!   (`OBX[Observation]`, the value by OBX-2);
//! - VXU^V04 (`VXU_V04[Bundle]`): Patient, an Immunization per RXA (`RXA[Immunization]`,
//!   route and site from `RXR[Immunization]`).
//!
//! The result is a `transaction` Bundle. Patient and Encounter are written as conditional
//! updates on their identifier when it has a system (`PUT Patient?identifier=system|value`),
//! so an A08 updates the patient an A01 created; otherwise, and for results and
//! immunizations, as creates. Resource ids in the Bundle are `urn:uuid:`s derived from the
//! data file, message and connector, so a resend of the same entry converts to the same
//! Bundle. Other message types are refused with a reason (their copy goes to the
//! dead-letter queue). Values are decoded (escapes, MSH-18 character set); nothing is
//! invented: a part the message lacks is left out.

mod codes;
mod datatypes;
mod model;

use sha2::Digest;

use crate::hl7::{Charset, Delimiters, Message, Segment, split_piece, unescape};
pub use model::Bundle;
use model::{
    CodeableConcept, Coding, DiagnosticReport, Encounter, Entry, Identifier, Immunization,
    LocationEntry, Observation, Participant, Patient, Period, Quantity, Reference, Request,
    Resource, TextOnly, text,
};

/// What names the Bundle's resources (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Ids<'a> {
    /// The data file's instance id.
    pub instance_id: u64,
    /// The message id.
    pub message_id: u64,
    /// The queue entry.
    pub entry: u64,
    /// The connector.
    pub connector: &'a str,
}

/// Why a message cannot be converted (names the message type, never patient data).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(String);

/// The message types converted, for errors and docs.
pub const SUPPORTED: &str = "ADT^A01, ADT^A03, ADT^A04, ADT^A08, ORU^R01 and VXU^V04";

/// One repetition of a field, decoded on request.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    raw: &'a [u8],
    delimiters: &'a Delimiters,
    charset: Charset,
}

impl Field<'_> {
    fn decode(&self, raw: &[u8]) -> String {
        if raw.is_empty() {
            return String::new();
        }
        let unescaped = unescape(raw, self.delimiters);
        let text = self.charset.decode(&unescaped);
        let trimmed = text.trim();
        if trimmed.len() == text.len() {
            text.into_owned()
        } else {
            trimmed.to_owned()
        }
    }

    /// The whole repetition's text (separators kept, escapes decoded).
    pub fn text(&self) -> String {
        self.decode(self.raw)
    }

    /// An empty field with the same delimiters (no units, no value).
    fn blank(&self) -> Self {
        Self { raw: b"", ..*self }
    }

    /// Component `n` (1-based), decoded; `""` when absent.
    pub fn component(&self, n: usize) -> String {
        split_piece(self.raw, self.delimiters.component, n - 1)
            .map(|raw| self.decode(raw))
            .unwrap_or_default()
    }

    /// Subcomponent `s` of component `n`, decoded; `""` when absent.
    pub fn subcomponent(&self, n: usize, s: usize) -> String {
        split_piece(self.raw, self.delimiters.component, n - 1)
            .and_then(|component| split_piece(component, self.delimiters.subcomponent, s - 1))
            .map(|raw| self.decode(raw))
            .unwrap_or_default()
    }
}

/// The message being converted.
struct Source<'a> {
    message: &'a Message,
    charset: Charset,
    /// MSH-7's offset, for times that carry none.
    zone: Option<String>,
}

impl<'a> Source<'a> {
    /// Every repetition of field `n` of `segment` (none when empty).
    fn repetitions(&self, segment: &Segment<'a>, n: usize) -> Vec<Field<'a>> {
        let Some(raw) = segment.field(n).filter(|raw| !raw.is_empty()) else {
            return Vec::new();
        };
        let delimiters = self.message.delimiters();
        let mut out = Vec::new();
        let mut index = 0;
        while let Some(repetition) = split_piece(raw, delimiters.repetition, index) {
            if !repetition.is_empty() {
                out.push(Field {
                    raw: repetition,
                    delimiters,
                    charset: self.charset,
                });
            }
            index += 1;
        }
        out
    }

    /// The first repetition of field `n` (empty when absent).
    fn field(&self, segment: &Segment<'a>, n: usize) -> Field<'a> {
        let delimiters = self.message.delimiters();
        let raw = segment
            .field(n)
            .and_then(|raw| split_piece(raw, delimiters.repetition, 0))
            .unwrap_or_default();
        Field {
            raw,
            delimiters,
            charset: self.charset,
        }
    }

    /// Component 1 of field `n`, decoded.
    fn text(&self, segment: &Segment<'a>, n: usize) -> String {
        self.field(segment, n).component(1)
    }

    fn date_time(&self, segment: &Segment<'a>, n: usize) -> Option<String> {
        datatypes::date_time(&self.text(segment, n), self.zone.as_deref())
    }
}

/// The resources of a Bundle being built.
struct Builder<'a> {
    ids: Ids<'a>,
    entries: Vec<Entry>,
}

impl Builder<'_> {
    /// A deterministic `urn:uuid:` for the `index`-th resource.
    fn uuid(&self, index: usize) -> String {
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"mfoundry fhir");
        hasher.update(self.ids.instance_id.to_be_bytes());
        hasher.update(self.ids.message_id.to_be_bytes());
        hasher.update(self.ids.entry.to_be_bytes());
        hasher.update(self.ids.connector.as_bytes());
        hasher.update((index as u64).to_be_bytes());
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        // RFC 9562 version 8 (custom), variant 10.
        bytes[6] = (bytes[6] & 0x0f) | 0x80;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = String::with_capacity(36);
        for (index, byte) in bytes.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                text.push('-');
            }
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        text
    }

    /// Add `resource`; returns its reference (`urn:uuid:…`). With `identifier` (one that
    /// has a system), a conditional update on it; else a create.
    fn add(&mut self, resource: Resource, identifier: Option<&Identifier>) -> String {
        let full_url = format!("urn:uuid:{}", self.uuid(self.entries.len() + 1));
        let kind = resource.kind();
        let request = match identifier
            .and_then(|identifier| Some((identifier.system.as_deref()?, &identifier.value)))
        {
            Some((system, value)) => Request {
                method: "PUT",
                url: format!(
                    "{kind}?identifier={}|{}",
                    query_escape(system),
                    query_escape(value)
                ),
            },
            None => Request {
                method: "POST",
                url: kind.to_owned(),
            },
        };
        self.entries.push(Entry {
            full_url: full_url.clone(),
            resource,
            request,
        });
        full_url
    }
}

/// Percent-encode what a search value cannot hold as is.
fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Convert `message` (decoded with `charset`) to a transaction Bundle (serialize it with
/// `serde_json`).
pub fn bundle(message: &Message, charset: Charset, ids: Ids<'_>) -> Result<Bundle, Unsupported> {
    let kind = String::from_utf8_lossy(message.header_component(9, 1)).to_ascii_uppercase();
    let trigger = String::from_utf8_lossy(message.header_component(9, 2)).to_ascii_uppercase();
    let zone = datatypes::zone_of(&String::from_utf8_lossy(message.header_component(7, 1)))
        .map(str::to_owned);
    let source = Source {
        message,
        charset,
        zone,
    };
    let mut builder = Builder {
        ids,
        entries: Vec::new(),
    };
    let patients = segments(&source, b"PID").len();
    if patients > 1 {
        return Err(Unsupported(format!(
            "the message holds {patients} patients (PID segments); the FHIR conversion takes one patient per message"
        )));
    }
    match (kind.as_str(), trigger.as_str()) {
        ("ADT", "A01" | "A03" | "A04" | "A08") => adt(&source, &trigger, &mut builder),
        ("ORU", "R01") => oru(&source, &mut builder),
        ("VXU", "V04") => vxu(&source, &mut builder),
        _ => {
            return Err(Unsupported(format!(
                "the FHIR conversion covers {SUPPORTED}; this message is {}^{}",
                sanitize(&kind),
                sanitize(&trigger)
            )));
        }
    }
    if builder.entries.is_empty() {
        return Err(Unsupported(format!(
            "the {kind}^{trigger} message has none of the segments the FHIR conversion reads"
        )));
    }
    Ok(Bundle {
        resource_type: "Bundle",
        id: builder.uuid(0),
        kind: "transaction",
        entry: builder.entries,
    })
}

/// Message type text for errors: letters and digits only, at most 8.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect()
}

fn segments<'a>(source: &Source<'a>, name: &'static [u8]) -> Vec<Segment<'a>> {
    source
        .message
        .segments()
        .filter(|segment| segment.name() == name)
        .collect()
}

/// `PID[Patient]`; returns its reference.
fn patient(source: &Source<'_>, builder: &mut Builder<'_>) -> Option<String> {
    let pid = segments(source, b"PID").into_iter().next()?;
    let identifier: Vec<Identifier> = source
        .repetitions(&pid, 3)
        .iter()
        .filter_map(datatypes::identifier)
        .collect();
    let name = source
        .repetitions(&pid, 5)
        .iter()
        .map(datatypes::human_name)
        .filter(|name| !name.is_empty())
        .collect();
    let mut telecom: Vec<_> = source
        .repetitions(&pid, 13)
        .iter()
        .filter_map(|xtn| datatypes::contact_point(xtn, "home"))
        .collect();
    telecom.extend(
        source
            .repetitions(&pid, 14)
            .iter()
            .filter_map(|xtn| datatypes::contact_point(xtn, "work")),
    );
    let address = source
        .repetitions(&pid, 11)
        .iter()
        .map(datatypes::address)
        .filter(|address| !address.is_empty())
        .collect();
    let deceased_date_time = source.date_time(&pid, 29);
    let deceased_boolean = match source.text(&pid, 30).to_ascii_uppercase().as_str() {
        _ if deceased_date_time.is_some() => None,
        "Y" => Some(true),
        "N" => Some(false),
        _ => None,
    };
    let key = identifier
        .iter()
        .find(|identifier| identifier.system.is_some())
        .cloned();
    let resource = Patient {
        identifier,
        name,
        telecom,
        gender: codes::gender(&source.text(&pid, 8)),
        birth_date: datatypes::date(&source.text(&pid, 7)),
        deceased_date_time,
        deceased_boolean,
        address,
    };
    Some(builder.add(Resource::Patient(resource), key.as_ref()))
}

fn reference(target: Option<&String>) -> Option<Reference> {
    target.map(|target| Reference::to(target))
}

/// `ADT_A01[Bundle]` for A01, A03, A04, A08: Patient, and Encounter from PV1.
fn adt(source: &Source<'_>, trigger: &str, builder: &mut Builder<'_>) {
    let subject = patient(source, builder);
    let Some(pv1) = segments(source, b"PV1").into_iter().next() else {
        return;
    };
    let (class_system, class_code) = codes::encounter_class(&source.text(&pv1, 2));
    // `PV1[Encounter]`: a discharge time finishes it, else the patient class says
    // (`CM PatientClass[EncounterStatus]`); an A03 is a discharge.
    let discharged = !source.text(&pv1, 45).is_empty();
    let status = if trigger == "A03" || discharged {
        "finished"
    } else {
        codes::encounter_status(&source.text(&pv1, 2))
    };
    // PV1-19 is the visit number: its type is VN unless CX.5 says otherwise.
    let visit = datatypes::identifier(&source.field(&pv1, 19)).map(|mut visit| {
        if visit.kind.is_none() {
            visit.kind = Some(CodeableConcept::of(codes::V2_0203, "VN"));
        }
        visit
    });
    let location = source.field(&pv1, 3);
    let location_text = (1..=4)
        .map(|n| location.component(n))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let participant = [(7, "ATND"), (8, "REF"), (17, "ADM")]
        .into_iter()
        .flat_map(|(field, role)| {
            source
                .repetitions(&pv1, field)
                .into_iter()
                .map(move |xcn| (xcn, role))
        })
        .map(|(xcn, role)| Participant {
            kind: vec![CodeableConcept::of(codes::V3_PARTICIPATION, role)],
            individual: datatypes::practitioner_reference(&xcn),
        })
        .filter(|participant| !participant.individual.is_empty())
        .collect();
    let period = Period {
        start: source.date_time(&pv1, 44),
        end: source.date_time(&pv1, 45),
    };
    let key = visit
        .as_ref()
        .filter(|visit| visit.system.is_some())
        .cloned();
    let resource = Encounter {
        identifier: visit.into_iter().collect(),
        status,
        class: Coding {
            system: Some(class_system.to_owned()),
            code: Some(class_code),
            display: None,
        },
        subject: reference(subject.as_ref()),
        participant,
        period: (period.start.is_some() || period.end.is_some()).then_some(period),
        location: text(location_text)
            .map(|display| LocationEntry {
                location: Reference::display(display),
            })
            .into_iter()
            .collect(),
    };
    builder.add(Resource::Encounter(resource), key.as_ref());
}

/// An OBR with its OBX segments, each with the text of the NTE segments after it.
type ResultGroup<'a> = (Segment<'a>, Vec<(Segment<'a>, Vec<String>)>);

/// `ORU_R01[Bundle]`: Patient; per OBR a DiagnosticReport with its OBX Observations.
fn oru(source: &Source<'_>, builder: &mut Builder<'_>) {
    let subject = patient(source, builder);
    // Each OBR with the OBX (and their NTE) that follow it.
    let mut current: Option<ResultGroup<'_>> = None;
    let mut groups = Vec::new();
    for segment in source.message.segments() {
        match segment.name() {
            b"OBR" => {
                if let Some(group) = current.take() {
                    groups.push(group);
                }
                current = Some((segment, Vec::new()));
            }
            b"OBX" => {
                if let Some((_, observations)) = current.as_mut() {
                    observations.push((segment, Vec::new()));
                }
            }
            b"NTE" => {
                if let Some((_, observations)) = current.as_mut()
                    && let Some((_, notes)) = observations.last_mut()
                {
                    let note = source.field(&segment, 3).text();
                    if !note.is_empty() {
                        notes.push(note);
                    }
                }
            }
            _ => {}
        }
    }
    groups.extend(current);
    for (obr, observations) in groups {
        let effective = source.date_time(&obr, 7);
        // OBR-8 valued: the observation period is OBR-7 to OBR-8.
        let end = source.date_time(&obr, 8);
        let issued = source.date_time(&obr, 22).filter(|time| time.contains('T'));
        let mut result = Vec::new();
        for (obx, notes) in observations {
            let resource = observation(source, &obx, &notes, effective.as_ref(), subject.as_ref());
            result.push(Reference::to(
                &builder.add(Resource::Observation(Box::new(resource)), None),
            ));
        }
        let identifier = [(2, "PLAC"), (3, "FILL")]
            .into_iter()
            .filter_map(|(field, kind)| {
                text(source.text(&obr, field)).map(|value| Identifier {
                    kind: Some(CodeableConcept::of(codes::V2_0203, kind)),
                    system: None,
                    value,
                    assigner: None,
                })
            })
            .collect();
        let report = DiagnosticReport {
            identifier,
            status: codes::report_status(&source.text(&obr, 25)),
            code: required_concept(datatypes::codeable_concept(&source.field(&obr, 4))),
            subject: reference(subject.as_ref()),
            effective_date_time: if end.is_none() {
                effective.clone()
            } else {
                None
            },
            effective_period: end.map(|end| Period {
                start: effective,
                end: Some(end),
            }),
            issued,
            result,
        };
        builder.add(Resource::DiagnosticReport(report), None);
    }
}

/// A CodeableConcept that must be present: the given one, or "unknown".
fn required_concept(concept: CodeableConcept) -> CodeableConcept {
    if concept.is_empty() {
        CodeableConcept {
            coding: vec![Coding {
                system: Some(codes::V3_NULL_FLAVOR.to_owned()),
                code: Some("UNK".to_owned()),
                display: None,
            }],
            text: Some("unknown".to_owned()),
        }
    } else {
        concept
    }
}

/// A quantity from a value and its units (`CWE[Quantity]`: the unit is CWE.2, else CWE.1;
/// with a coding system in CWE.3, CWE.1 is the code in that system).
fn quantity(value: Box<serde_json::value::RawValue>, units: &Field<'_>) -> Quantity {
    let unit = [units.component(2), units.component(1)]
        .into_iter()
        .find(|unit| !unit.is_empty());
    let system = codes::coding_system(&units.component(3));
    Quantity {
        value,
        comparator: None,
        unit,
        code: system.as_ref().and_then(|_| text(units.component(1))),
        system,
    }
}

/// `OBX[Observation]`: the value by OBX-2 (NM → valueQuantity, CWE/CE/CNE →
/// valueCodeableConcept, DT/TS/DTM → valueDateTime, anything else → valueString).
fn observation(
    source: &Source<'_>,
    obx: &Segment<'_>,
    notes: &[String],
    report_time: Option<&String>,
    subject: Option<&String>,
) -> Observation {
    let value_type = source.text(obx, 2).to_ascii_uppercase();
    let values = source.repetitions(obx, 5);
    let mut resource = Observation {
        status: codes::observation_status(&source.text(obx, 11)),
        code: required_concept(datatypes::codeable_concept(&source.field(obx, 3))),
        subject: reference(subject),
        effective_date_time: source.date_time(obx, 14).or_else(|| report_time.cloned()),
        value_quantity: None,
        value_codeable_concept: None,
        value_date_time: None,
        value_time: None,
        value_range: None,
        value_ratio: None,
        value_string: None,
        // `CM InterpretationCodes`: the listed codes are v3 ObservationInterpretation;
        // others keep the message's own coding.
        interpretation: source
            .repetitions(obx, 8)
            .iter()
            .filter(|field| !field.component(1).is_empty())
            .map(|field| {
                let code = field.component(1);
                if codes::interpretation(&code) {
                    CodeableConcept::of(codes::V3_INTERPRETATION, &code)
                } else {
                    datatypes::codeable_concept(field)
                }
            })
            .collect(),
        reference_range: text(source.field(obx, 7).text())
            .map(|text| TextOnly { text })
            .into_iter()
            .collect(),
        note: notes
            .iter()
            .map(|text| TextOnly { text: text.clone() })
            .collect(),
    };
    let Some(first) = values.first() else {
        return resource;
    };
    match value_type.as_str() {
        "NM" => match decimal(&first.text()) {
            Some(number) => {
                resource.value_quantity = Some(quantity(number, &source.field(obx, 6)));
            }
            None => resource.value_string = text(first.text()),
        },
        "CWE" | "CE" | "CNE" => {
            resource.value_codeable_concept = datatypes::codeable_concept(first).present();
        }
        "DT" | "TS" | "DTM" => {
            resource.value_date_time =
                datatypes::date_time(&first.component(1), source.zone.as_deref());
        }
        "SN" => structured_numeric(&mut resource, first, &source.field(obx, 6)),
        "TM" => {
            resource.value_time = datatypes::time(&first.component(1));
            if resource.value_time.is_none() {
                resource.value_string = text(first.text());
            }
        }
        _ => {
            let joined: Vec<String> = values
                .iter()
                .map(Field::text)
                .filter(|text| !text.is_empty())
                .collect();
            resource.value_string = text(joined.join("\n"));
        }
    }
    resource
}

/// `SN[Quantity]`/`SN[Range]`/`SN[Ratio]`: `<^5` a quantity with its comparator, `^1^-^5` a
/// range, `^1^:^128` a ratio; anything else the text as written.
fn structured_numeric(resource: &mut Observation, sn: &Field<'_>, units: &Field<'_>) {
    let (comparator, first, separator, second) = (
        sn.component(1),
        sn.component(2),
        sn.component(3),
        sn.component(4),
    );
    let comparator = match comparator.as_str() {
        "" | "=" => Some(None),
        "<" | "<=" | ">=" | ">" => Some(Some(comparator)),
        _ => None,
    };
    match (
        comparator,
        decimal(&first),
        separator.as_str(),
        decimal(&second),
    ) {
        (Some(comparator), Some(value), "", None) if second.is_empty() => {
            let mut quantity = quantity(value, units);
            quantity.comparator = comparator;
            resource.value_quantity = Some(quantity);
        }
        (Some(None), Some(low), "-", Some(high)) => {
            resource.value_range = Some(model::Range {
                low: quantity(low, units),
                high: quantity(high, units),
            });
        }
        (Some(None), Some(numerator), ":" | "/", Some(denominator)) => {
            resource.value_ratio = Some(model::Ratio {
                numerator: quantity(numerator, &sn.blank()),
                denominator: quantity(denominator, &sn.blank()),
            });
        }
        _ => {
            let written: Vec<String> = [sn.component(1), first, separator, second]
                .into_iter()
                .filter(|part| !part.is_empty())
                .collect();
            resource.value_string = text(written.join(" "));
        }
    }
}

/// A FHIR decimal from text (`196`, `-0.5`, `+3.20`, `007`), its digits as written (a
/// leading `+` and leading zeros dropped, which JSON does not allow); `None` when it is not
/// a decimal.
fn decimal(text: &str) -> Option<Box<serde_json::value::RawValue>> {
    let text = text.trim().trim_start_matches('+');
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|fraction| !digits(fraction)) {
        return None;
    }
    let whole = match whole.trim_start_matches('0') {
        "" => "0",
        trimmed => trimmed,
    };
    let mut number = String::with_capacity(text.len() + 1);
    if negative {
        number.push('-');
    }
    number.push_str(whole);
    if let Some(fraction) = fraction {
        number.push('.');
        number.push_str(fraction);
    }
    serde_json::value::RawValue::from_string(number).ok()
}

/// `VXU_V04[Bundle]`: Patient; an Immunization per RXA, route and site from its RXR.
fn vxu(source: &Source<'_>, builder: &mut Builder<'_>) {
    let subject = patient(source, builder);
    let mut administrations: Vec<(Segment<'_>, Option<Segment<'_>>)> = Vec::new();
    for segment in source.message.segments() {
        match segment.name() {
            b"RXA" => administrations.push((segment, None)),
            b"RXR" => {
                if let Some((_, route)) = administrations.last_mut()
                    && route.is_none()
                {
                    *route = Some(segment);
                }
            }
            _ => {}
        }
    }
    // `patient` is required on an Immunization: without a PID none can be written.
    let Some(subject) = subject else {
        return;
    };
    for (rxa, rxr) in administrations {
        // `RXA[Immunization]`: RXA-21 D (deleted) is entered-in-error, else RXA-20.
        let status = if source.text(&rxa, 21).eq_ignore_ascii_case("D") {
            "entered-in-error"
        } else {
            codes::immunization_status(&source.text(&rxa, 20))
        };
        let occurrence = source.date_time(&rxa, 3);
        let amount = source.text(&rxa, 6);
        let dose_quantity = decimal(&amount)
            .filter(|_| amount.trim() != "999")
            .map(|value| quantity(value, &source.field(&rxa, 7)));
        let primary_source = match source.field(&rxa, 9).component(1).as_str() {
            "00" => Some(true),
            "01" => Some(false),
            _ => None,
        };
        let manufacturer = source.field(&rxa, 17);
        let manufacturer = [manufacturer.component(2), manufacturer.component(1)]
            .into_iter()
            .find(|name| !name.is_empty())
            .map(Reference::display);
        let concept = |segment: &Option<Segment<'_>>, field: usize| {
            segment.as_ref().and_then(|segment| {
                datatypes::codeable_concept(&source.field(segment, field)).present()
            })
        };
        let resource = Immunization {
            status,
            status_reason: if status == "not-done" {
                datatypes::codeable_concept(&source.field(&rxa, 18)).present()
            } else {
                None
            },
            vaccine_code: required_concept(datatypes::codeable_concept(&source.field(&rxa, 5))),
            patient: Reference::to(&subject),
            occurrence_string: occurrence.is_none().then(|| "unknown".to_owned()),
            occurrence_date_time: occurrence,
            primary_source,
            manufacturer,
            lot_number: text(source.text(&rxa, 15)),
            expiration_date: datatypes::date(&source.text(&rxa, 16)),
            site: concept(&rxr, 2),
            route: concept(&rxr, 1),
            dose_quantity,
        };
        builder.add(Resource::Immunization(Box::new(resource)), None);
    }
}

#[cfg(test)]
mod tests;
