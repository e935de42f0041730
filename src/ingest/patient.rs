//! A message's patient values for the patient index (ADR 0019): every identifier of PID-3
//! (CX.1 of each repetition) and every family name of PID-5 (the surname, XPN.1.1, of each
//! repetition), of every PID segment; escape sequences decoded, text decoded with the
//! message's character set. The outbox keeps only keyed hashes of them.

use std::sync::Arc;

use bytes::Bytes;

use crate::hl7::{Charset, Message, unescape};
use crate::outbox::patients::{IndexField, PatientReader};

/// The patient values of `message` (read with `default` when MSH-18 is empty).
pub fn patient_values(message: &Message, default: Charset) -> Vec<(IndexField, String)> {
    let delimiters = message.delimiters();
    let charset = message.charset(default).charset();
    let mut values = Vec::new();
    let first = |value: &[u8], separator: Option<u8>| -> usize {
        separator
            .and_then(|separator| memchr::memchr(separator, value))
            .unwrap_or(value.len())
    };
    for segment in message.segments() {
        if segment.name() != b"PID" {
            continue;
        }
        for (number, field) in [(3, IndexField::Identifier), (5, IndexField::FamilyName)] {
            let Some(raw) = segment.field(number) else {
                continue;
            };
            // Without a repetition separator the field is one repetition.
            for repetition in raw.split(|byte| Some(*byte) == delimiters.repetition) {
                let component = &repetition[..first(repetition, delimiters.component)];
                let value = &component[..first(component, delimiters.subcomponent)];
                if value.is_empty() {
                    continue;
                }
                let text = charset.decode(&unescape(value, delimiters)).into_owned();
                if !text.trim().is_empty() && text.trim() != "\"\"" {
                    values.push((field, text));
                }
            }
        }
    }
    values
}

/// Reads a stored body's patient values (for the outbox's index rebuild), as intake does
/// with `default` as the default character set.
pub fn reader(default: Charset) -> PatientReader {
    PatientReader {
        read: Arc::new(move |body: &[u8]| {
            if let Some(values) = super::dicom::object_patient_values(body) {
                return values;
            }
            match Message::parse(Bytes::copy_from_slice(body)) {
                Ok(message) => patient_values(&message, default),
                Err(_) => Vec::new(),
            }
        }),
        version: format!("PID-3.1 PID-5.1.1 charset={}", default.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(IndexField, String)> {
        let message = Message::parse(Bytes::from(text.replace('\n', "\r"))).expect("parses");
        patient_values(&message, Charset::UTF_8)
    }

    #[test]
    fn every_identifier_and_family_name_of_every_pid_is_read() {
        let found = values(
            "MSH|^~\\&|A|B|C|D|20260101||ADT^A17|1|P|2.5\n\
             PID|1||MRN1^^^H^MR~  ^^^X~NHS9&x^^^N||O\\T\\Brien&van^Pat~Smith^Al\n\
             PID|2||MRN2||\"\"\n",
        );
        let expected = [
            (IndexField::Identifier, "MRN1"),
            (IndexField::Identifier, "NHS9"),
            (IndexField::FamilyName, "O&Brien"),
            (IndexField::FamilyName, "Smith"),
            (IndexField::Identifier, "MRN2"),
        ];
        let expected: Vec<(IndexField, String)> = expected
            .into_iter()
            .map(|(field, value)| (field, value.to_owned()))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn a_message_without_pid_has_none() {
        assert!(values("MSH|^~\\&|A|B|C|D|20260101||ACK|1|P|2.5\nMSA|AA|1\n").is_empty());
    }
}
