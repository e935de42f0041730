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

use serde_json::{Value, json};
use sha2::Digest;

use crate::hl7::{Charset, Delimiters, Message, Segment, split_piece, unescape};
use datatypes::{is_empty, object};

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
        self.charset
            .decode(&unescape(raw, self.delimiters))
            .trim()
            .to_owned()
    }

    /// The whole repetition's text (separators kept, escapes decoded).
    pub fn text(&self) -> String {
        self.decode(self.raw)
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
        self.repetitions(segment, n)
            .into_iter()
            .next()
            .unwrap_or(Field {
                raw: b"",
                delimiters: self.message.delimiters(),
                charset: self.charset,
            })
    }

    /// Component 1 of field `n`, decoded.
    fn text(&self, segment: &Segment<'a>, n: usize) -> String {
        self.field(segment, n).component(1)
    }

    fn date_time(&self, segment: &Segment<'a>, n: usize) -> Value {
        datatypes::date_time(&self.text(segment, n), self.zone.as_deref())
            .map_or(Value::Null, Value::String)
    }
}

/// The resources of a Bundle being built.
struct Builder<'a> {
    ids: Ids<'a>,
    entries: Vec<Value>,
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
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }

    /// Add `resource`; returns its reference (`urn:uuid:…`). With `identifier` (a FHIR
    /// Identifier that has a system), a conditional update on it; else a create.
    fn add(&mut self, resource: Value, identifier: Option<&Value>) -> String {
        let full_url = format!("urn:uuid:{}", self.uuid(self.entries.len() + 1));
        let kind = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let search = identifier.and_then(|identifier| {
            let system = identifier["system"].as_str()?;
            let value = identifier["value"].as_str()?;
            Some(format!(
                "{kind}?identifier={}|{}",
                query_escape(system),
                query_escape(value)
            ))
        });
        let request = match search {
            Some(url) => json!({"method": "PUT", "url": url}),
            None => json!({"method": "POST", "url": kind}),
        };
        self.entries.push(json!({
            "fullUrl": full_url,
            "resource": resource,
            "request": request,
        }));
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

/// Convert `message` (decoded with `charset`) to a transaction Bundle.
pub fn bundle(message: &Message, charset: Charset, ids: Ids<'_>) -> Result<Value, Unsupported> {
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
    Ok(json!({
        "resourceType": "Bundle",
        "id": builder.uuid(0),
        "type": "transaction",
        "entry": builder.entries,
    }))
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
    let identifiers: Vec<Value> = source
        .repetitions(&pid, 3)
        .iter()
        .map(datatypes::identifier)
        .filter(|value| !is_empty(value))
        .collect();
    let names: Vec<Value> = source
        .repetitions(&pid, 5)
        .iter()
        .map(datatypes::human_name)
        .filter(|value| !is_empty(value))
        .collect();
    let mut telecom: Vec<Value> = source
        .repetitions(&pid, 13)
        .iter()
        .map(|xtn| datatypes::contact_point(xtn, "home"))
        .collect();
    telecom.extend(
        source
            .repetitions(&pid, 14)
            .iter()
            .map(|xtn| datatypes::contact_point(xtn, "work")),
    );
    telecom.retain(|value| !is_empty(value));
    let addresses: Vec<Value> = source
        .repetitions(&pid, 11)
        .iter()
        .map(datatypes::address)
        .filter(|value| !is_empty(value))
        .collect();
    let deceased = source.date_time(&pid, 29);
    let deceased_flag = match source.text(&pid, 30).to_ascii_uppercase().as_str() {
        "Y" => json!(true),
        "N" => json!(false),
        _ => Value::Null,
    };
    let resource = object([
        ("resourceType", json!("Patient")),
        ("identifier", Value::Array(identifiers.clone())),
        ("name", Value::Array(names)),
        ("telecom", Value::Array(telecom)),
        (
            "gender",
            codes::gender(&source.text(&pid, 8)).map_or(Value::Null, |code| json!(code)),
        ),
        (
            "birthDate",
            datatypes::date(&source.text(&pid, 7)).map_or(Value::Null, Value::String),
        ),
        (
            "deceasedDateTime",
            if is_empty(&deceased) {
                Value::Null
            } else {
                deceased.clone()
            },
        ),
        (
            "deceasedBoolean",
            if is_empty(&deceased) {
                deceased_flag
            } else {
                Value::Null
            },
        ),
        ("address", Value::Array(addresses)),
    ]);
    let key = identifiers
        .iter()
        .find(|identifier| identifier.get("system").is_some());
    Some(builder.add(resource, key))
}

fn reference(target: Option<&String>) -> Value {
    target.map_or(Value::Null, |target| json!({"reference": target}))
}

/// `ADT_A01[Bundle]` for A01, A03, A04, A08: Patient, and Encounter from PV1.
fn adt(source: &Source<'_>, trigger: &str, builder: &mut Builder<'_>) {
    let subject = patient(source, builder);
    let Some(pv1) = segments(source, b"PV1").into_iter().next() else {
        return;
    };
    let (class_system, class_code) = codes::encounter_class(&source.text(&pv1, 2));
    let discharged = !source.text(&pv1, 45).is_empty();
    let status = match trigger {
        "A03" => "finished",
        _ if discharged => "finished",
        "A04" => "arrived",
        _ => "in-progress",
    };
    let visit = datatypes::identifier(&source.field(&pv1, 19));
    let location = source.field(&pv1, 3);
    let location_text = (1..=4)
        .map(|n| location.component(n))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let participants: Vec<Value> = [(7, "ATND"), (8, "REF"), (17, "ADM")]
        .into_iter()
        .flat_map(|(field, role)| {
            source
                .repetitions(&pv1, field)
                .into_iter()
                .map(move |xcn| (xcn, role))
        })
        .map(|(xcn, role)| {
            let individual = datatypes::practitioner_reference(&xcn);
            object([
                (
                    "type",
                    json!([{"coding": [{"system": codes::V3_PARTICIPATION, "code": role}]}]),
                ),
                ("individual", individual),
            ])
        })
        .filter(|participant| participant.get("individual").is_some())
        .collect();
    let period = object([
        ("start", source.date_time(&pv1, 44)),
        ("end", source.date_time(&pv1, 45)),
    ]);
    let resource = object([
        ("resourceType", json!("Encounter")),
        (
            "identifier",
            Value::Array(if is_empty(&visit) {
                Vec::new()
            } else {
                vec![visit.clone()]
            }),
        ),
        ("status", json!(status)),
        ("class", json!({"system": class_system, "code": class_code})),
        ("subject", reference(subject.as_ref())),
        ("participant", Value::Array(participants)),
        ("period", period),
        (
            "location",
            if location_text.is_empty() {
                Value::Null
            } else {
                json!([{"location": {"display": location_text}}])
            },
        ),
    ]);
    let key = (!is_empty(&visit) && visit.get("system").is_some()).then_some(&visit);
    builder.add(resource, key);
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
        let mut results = Vec::new();
        for (obx, notes) in observations {
            let resource = observation(source, &obx, &notes, &effective, subject.as_ref());
            results.push(json!({"reference": builder.add(resource, None)}));
        }
        let identifiers: Vec<Value> = [(2, "PLAC"), (3, "FILL")]
            .into_iter()
            .filter_map(|(field, kind)| {
                let value = source.text(&obr, field);
                (!value.is_empty()).then(|| {
                    json!({
                        "type": {"coding": [{"system": codes::V2_0203, "code": kind}]},
                        "value": value,
                    })
                })
            })
            .collect();
        let code = datatypes::codeable_concept(&source.field(&obr, 4));
        let report = object([
            ("resourceType", json!("DiagnosticReport")),
            ("identifier", Value::Array(identifiers)),
            (
                "status",
                json!(codes::report_status(&source.text(&obr, 25))),
            ),
            ("code", required_concept(code)),
            ("subject", reference(subject.as_ref())),
            ("effectiveDateTime", effective),
            ("result", Value::Array(results)),
        ]);
        builder.add(report, None);
    }
}

/// A CodeableConcept that must be present: the given one, or "unknown".
fn required_concept(concept: Value) -> Value {
    if is_empty(&concept) {
        json!({"coding": [{"system": codes::V3_NULL_FLAVOR, "code": "UNK"}], "text": "unknown"})
    } else {
        concept
    }
}

/// `OBX[Observation]`: the value by OBX-2 (NM → valueQuantity, CWE/CE/CNE →
/// valueCodeableConcept, DT/TS/DTM → valueDateTime, anything else → valueString).
fn observation(
    source: &Source<'_>,
    obx: &Segment<'_>,
    notes: &[String],
    report_time: &Value,
    subject: Option<&String>,
) -> Value {
    let value_type = source.text(obx, 2).to_ascii_uppercase();
    let values = source.repetitions(obx, 5);
    let first = values.first().copied();
    let units = source.field(obx, 6);
    let (key, value) = match (value_type.as_str(), first) {
        (_, None) => ("valueString", Value::Null),
        ("NM", Some(field)) => match decimal(&field.text()) {
            Some(number) => {
                let unit = [units.component(1), units.component(2)]
                    .into_iter()
                    .find(|unit| !unit.is_empty())
                    .unwrap_or_default();
                let ucum = units.component(3).eq_ignore_ascii_case("UCUM");
                (
                    "valueQuantity",
                    object([
                        ("value", number),
                        ("unit", Value::String(unit)),
                        (
                            "system",
                            if ucum {
                                json!(codes::UCUM)
                            } else {
                                Value::Null
                            },
                        ),
                        (
                            "code",
                            if ucum {
                                Value::String(units.component(1))
                            } else {
                                Value::Null
                            },
                        ),
                    ]),
                )
            }
            None => ("valueString", Value::String(field.text())),
        },
        ("CWE" | "CE" | "CNE", Some(field)) => {
            ("valueCodeableConcept", datatypes::codeable_concept(&field))
        }
        ("DT" | "TS" | "DTM", Some(field)) => (
            "valueDateTime",
            datatypes::date_time(&field.component(1), source.zone.as_deref())
                .map_or(Value::Null, Value::String),
        ),
        (_, Some(_)) => {
            let text: Vec<String> = values
                .iter()
                .map(Field::text)
                .filter(|text| !text.is_empty())
                .collect();
            ("valueString", Value::String(text.join("\n")))
        }
    };
    let effective = match source.date_time(obx, 14) {
        Value::Null => report_time.clone(),
        time => time,
    };
    let interpretation: Vec<Value> = source
        .repetitions(obx, 8)
        .iter()
        .map(|field| field.component(1))
        .filter(|code| !code.is_empty())
        .map(|code| json!({"coding": [{"system": codes::V3_INTERPRETATION, "code": code}]}))
        .collect();
    let range = source.field(obx, 7).text();
    object([
        ("resourceType", json!("Observation")),
        (
            "status",
            json!(codes::observation_status(&source.text(obx, 11))),
        ),
        (
            "code",
            required_concept(datatypes::codeable_concept(&source.field(obx, 3))),
        ),
        ("subject", reference(subject)),
        ("effectiveDateTime", effective),
        (key, value),
        ("interpretation", Value::Array(interpretation)),
        (
            "referenceRange",
            if range.is_empty() {
                Value::Null
            } else {
                json!([{"text": range}])
            },
        ),
        (
            "note",
            Value::Array(notes.iter().map(|text| json!({"text": text})).collect()),
        ),
    ])
}

/// A FHIR decimal from text (`196`, `-0.5`, `+3.20`), kept as written.
fn decimal(text: &str) -> Option<Value> {
    let text = text.trim().trim_start_matches('+');
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole_digits = whole.strip_prefix('-').unwrap_or(whole);
    let valid = !whole_digits.is_empty()
        && whole_digits.chars().all(|c| c.is_ascii_digit())
        && fraction.chars().all(|c| c.is_ascii_digit())
        && !(text.contains('.') && fraction.is_empty());
    if !valid {
        return None;
    }
    serde_json::from_str::<serde_json::Number>(text)
        .ok()
        .map(Value::Number)
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
    for (rxa, rxr) in administrations {
        let status = codes::immunization_status(&source.text(&rxa, 20));
        let occurrence = source.date_time(&rxa, 3);
        let (occurrence_key, occurrence) = if is_empty(&occurrence) {
            ("occurrenceString", json!("unknown"))
        } else {
            ("occurrenceDateTime", occurrence)
        };
        let amount = source.text(&rxa, 6);
        let units = source.field(&rxa, 7);
        let dose = match decimal(&amount) {
            Some(value) if amount.trim() != "999" => {
                let ucum = units.component(3).eq_ignore_ascii_case("UCUM");
                object([
                    ("value", value),
                    ("unit", Value::String(units.component(1))),
                    (
                        "system",
                        if ucum {
                            json!(codes::UCUM)
                        } else {
                            Value::Null
                        },
                    ),
                    (
                        "code",
                        if ucum {
                            Value::String(units.component(1))
                        } else {
                            Value::Null
                        },
                    ),
                ])
            }
            _ => Value::Null,
        };
        let primary = match source.field(&rxa, 9).component(1).as_str() {
            "00" => json!(true),
            "01" => json!(false),
            _ => Value::Null,
        };
        let manufacturer = source.field(&rxa, 17);
        let manufacturer = [manufacturer.component(2), manufacturer.component(1)]
            .into_iter()
            .find(|name| !name.is_empty())
            .map_or(Value::Null, |name| json!({"display": name}));
        let route = rxr
            .as_ref()
            .map(|rxr| datatypes::codeable_concept(&source.field(rxr, 1)))
            .unwrap_or(Value::Null);
        let site = rxr
            .as_ref()
            .map(|rxr| datatypes::codeable_concept(&source.field(rxr, 2)))
            .unwrap_or(Value::Null);
        let reason = if status == "not-done" {
            datatypes::codeable_concept(&source.field(&rxa, 18))
        } else {
            Value::Null
        };
        let resource = object([
            ("resourceType", json!("Immunization")),
            ("status", json!(status)),
            ("statusReason", reason),
            (
                "vaccineCode",
                required_concept(datatypes::codeable_concept(&source.field(&rxa, 5))),
            ),
            ("patient", reference(subject.as_ref())),
            (occurrence_key, occurrence),
            ("primarySource", primary),
            ("manufacturer", manufacturer),
            ("lotNumber", Value::String(source.text(&rxa, 15))),
            (
                "expirationDate",
                datatypes::date(&source.text(&rxa, 16)).map_or(Value::Null, Value::String),
            ),
            ("site", site),
            ("route", route),
            ("doseQuantity", dose),
        ]);
        // `patient` is required on an Immunization: without a PID it cannot be written.
        if subject.is_some() {
            builder.add(resource, None);
        }
    }
}

#[cfg(test)]
mod tests;
