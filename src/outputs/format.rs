//! What an output sends: the connector's copy of the message as HL7 v2 (the bytes), as
//! mfoundry's JSON shape, or as a FHIR R4 transaction Bundle (`format: hl7 | json | fhir`).
//!
//! Rendering is a pure function of the entry (its bytes, record and ids), so a retry or a
//! resend after a crash sends the same body. A message the FHIR conversion does not cover
//! is a permanent failure: that copy goes to the dead-letter queue with the reason.

use bytes::Bytes;
use serde_json::{Value, json};

use super::settings::Reader;
use crate::delivery::{DeliveryError, Envelope};
use crate::hl7::{Charset, Delimiters, Message, split_piece, unescape};

/// The body format of an output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// The bytes of the copy, unchanged.
    #[default]
    Hl7,
    /// mfoundry's JSON shape ([`to_json`]).
    Json,
    /// A FHIR R4 transaction Bundle ([`crate::fhir`]).
    Fhir,
    /// A DICOM object as it was stored (`file` only): the Part 10 file, named `.dcm`; an
    /// HL7 message is refused.
    Dicom,
}

impl Format {
    /// Every format an HL7 output takes.
    pub const ALL: [Self; 3] = [Self::Hl7, Self::Json, Self::Fhir];
    /// What a file connector takes: those, and DICOM objects as they were stored.
    pub const FILE: [Self; 4] = [Self::Hl7, Self::Json, Self::Fhir, Self::Dicom];

    /// Its name in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hl7 => "hl7",
            Self::Json => "json",
            Self::Fhir => "fhir",
            Self::Dicom => "dicom",
        }
    }

    /// Read `format` (default `hl7`); a format not in `allowed` is a problem naming those.
    pub fn read(reader: &mut Reader<'_, '_>, allowed: &[Self]) -> Self {
        let Some(text) = reader.raw_text("format") else {
            return Self::Hl7;
        };
        let names: Vec<&str> = allowed.iter().map(|format| format.as_str()).collect();
        match allowed.iter().find(|format| format.as_str() == text) {
            Some(format) => *format,
            None => {
                let hint = if allowed == [Self::Hl7] {
                    " (MLLP carries HL7 v2: send JSON or FHIR with an http, file or postgres connector)"
                } else {
                    ""
                };
                reader.problem(
                    "format",
                    format!("`format` is {text:?}; use {}{hint}", names.join(", ")),
                );
                Self::Hl7
            }
        }
    }

    /// The media type of the body.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Hl7 => super::http::HL7_MEDIA_TYPE,
            Self::Json => "application/json",
            Self::Fhir => "application/fhir+json",
            Self::Dicom => "application/dicom",
        }
    }

    /// The body for `envelope`.
    pub fn render(self, envelope: &Envelope) -> Result<Bytes, DeliveryError> {
        let object = crate::dicom::is_dicom(&envelope.body);
        match (self, object) {
            (Self::Dicom, true) => return Ok(envelope.body.clone()),
            (Self::Dicom, false) => {
                return Err(DeliveryError::permanent(
                    "a connector with format: dicom writes DICOM objects; this is an HL7 message (leave HL7 out with a filter such as `dicom.sop_instance_uid != \"\"`)",
                ));
            }
            // The bytes as stored: connectors that carry objects (NATS); those that send HL7
            // got an ORU^R01 or a dead letter at intake.
            (Self::Hl7, true) => return Ok(envelope.body.clone()),
            (_, true) => {
                return Err(DeliveryError::permanent(format!(
                    "a DICOM object has no {} form (only a Structured Report becomes HL7, an ORU^R01, for connectors that send HL7)",
                    self.as_str()
                )));
            }
            (_, false) => {}
        }
        match self {
            Self::Dicom => Ok(envelope.body.clone()),
            Self::Hl7 => Ok(envelope.body.clone()),
            Self::Json => Ok(Bytes::from(to_json(envelope).to_string())),
            Self::Fhir => fhir(envelope).and_then(|bundle| {
                serde_json::to_vec(&bundle)
                    .map(Bytes::from)
                    .map_err(|error| {
                        DeliveryError::permanent(format!(
                            "the FHIR Bundle cannot be written: {error}"
                        ))
                    })
            }),
        }
    }
}

/// The copy as a FHIR Bundle; a message the conversion does not cover is permanent.
pub fn fhir(envelope: &Envelope) -> Result<crate::fhir::Bundle, DeliveryError> {
    let message = Message::parse(envelope.body.clone()).map_err(|_| {
        DeliveryError::permanent(
            "the FHIR conversion needs an HL7 v2 message; this copy has no MSH segment",
        )
    })?;
    let charset = message.charset(envelope.default_charset).charset();
    crate::fhir::bundle(
        &message,
        charset,
        crate::fhir::Ids {
            instance_id: envelope.instance_id,
            message_id: envelope.message_id,
            entry: envelope.seq,
            connector: &envelope.connector,
        },
    )
    .map_err(|unsupported| DeliveryError::permanent(unsupported.to_string()))
}

/// mfoundry's JSON shape of a message (documented, with its JSON Schema, in
/// `docs/json-format.md`):
///
/// ```json
/// {"id": 7, "entry": 7, "received_at": "2026-11-22T08:00:00.123456Z", "connector": "ehr",
///  "listener": "mllp", "header": {"msg_type": "ADT", ...},
///  "segments": [{"name": "MSH", "fields": ["|", "^~\\&", "SENDAPP", ...]}, ...],
///  "decoded": [{"name": "PID", "fields": [[[["1"]]], [], [[["123"], [""], [""], ["HOSP"]]]]}],
///  "hl7": "MSH|^~\\&|..."}
/// ```
///
/// `segments` (kept as the first version of the shape had it): each field's raw text
/// (components, repetitions and escapes as written), decoded with the message's MSH-18
/// character set; `fields[0]` is field 1 (for MSH, MSH-1, the field separator).
/// `decoded`: each field as repetitions of components of subcomponents, every value with
/// its escape sequences decoded (an empty field is `[]`; MSH-1 and MSH-2 are one value).
pub fn to_json(envelope: &Envelope) -> serde_json::Value {
    let header = &envelope.record.header;
    let received_at = chrono::DateTime::from_timestamp_micros(envelope.record.received_at_micros)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    let (segments, decoded, text) = match Message::parse(envelope.body.clone()) {
        Ok(message) => {
            let charset = message.charset(envelope.default_charset).charset();
            let segments: Vec<serde_json::Value> = message
                .segments()
                .map(|segment| {
                    let fields: Vec<String> = segment
                        .fields()
                        .into_iter()
                        .skip(1)
                        .map(|field| charset.decode(field).into_owned())
                        .collect();
                    serde_json::json!({
                        "name": String::from_utf8_lossy(segment.name()),
                        "fields": fields,
                    })
                })
                .collect();
            (
                segments,
                decoded(&message, charset),
                charset.decode(&envelope.body).into_owned(),
            )
        }
        Err(_) => (
            Vec::new(),
            Vec::new(),
            String::from_utf8_lossy(&envelope.body).into_owned(),
        ),
    };
    serde_json::json!({
        "id": envelope.message_id,
        "entry": envelope.seq,
        "received_at": received_at,
        "connector": envelope.connector.as_ref(),
        "listener": envelope.record.listener,
        "header": {
            "msg_type": header.msg_type,
            "trigger": header.trigger,
            "structure": header.structure,
            "control_id": header.control_id,
            "sending_app": header.sending_app,
            "sending_fac": header.sending_fac,
            "receiving_app": header.receiving_app,
            "receiving_fac": header.receiving_fac,
            "version": header.version,
            "processing_id": header.processing_id,
        },
        "segments": segments,
        "decoded": decoded,
        "hl7": text,
    })
}

/// Every segment's fields as repetitions → components → subcomponents, decoded.
fn decoded(message: &Message, charset: Charset) -> Vec<Value> {
    let delimiters = message.delimiters();
    message
        .segments()
        .map(|segment| {
            let header = matches!(segment.name(), b"MSH" | b"FHS" | b"BHS");
            let fields: Vec<Value> = segment
                .fields()
                .into_iter()
                .enumerate()
                .skip(1)
                .map(|(number, raw)| {
                    if header && number <= 2 {
                        return json!([[[charset.decode(raw)]]]);
                    }
                    if raw.is_empty() {
                        return json!([]);
                    }
                    Value::Array(
                        pieces(raw, delimiters.repetition)
                            .map(|repetition| {
                                Value::Array(
                                    pieces(repetition, delimiters.component)
                                        .map(|component| {
                                            Value::Array(
                                                pieces(component, delimiters.subcomponent)
                                                    .map(|value| {
                                                        json!(text(value, delimiters, charset))
                                                    })
                                                    .collect(),
                                            )
                                        })
                                        .collect(),
                                )
                            })
                            .collect(),
                    )
                })
                .collect();
            json!({"name": String::from_utf8_lossy(segment.name()), "fields": fields})
        })
        .collect()
}

/// The pieces of `bytes` split on `separator` (the whole when there is none).
fn pieces(bytes: &[u8], separator: Option<u8>) -> impl Iterator<Item = &[u8]> {
    let mut index = 0;
    std::iter::from_fn(move || {
        let piece = split_piece(bytes, separator, index)?;
        index += 1;
        Some(piece)
    })
}

fn text(raw: &[u8], delimiters: &Delimiters, charset: Charset) -> String {
    charset.decode(&unescape(raw, delimiters)).into_owned()
}
