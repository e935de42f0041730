//! A `type: dicom` listener entry's own keys: the AE title it answers to, the callers it
//! accepts, the storage SOP classes it takes, and its size limits ([`DicomSettings`]).

use crate::mllp::DicomSettings;
use crate::yaml::Spanned;

/// The scalar keys only a dicom entry takes.
pub const DICOM_SCALAR_KEYS: [&str; 4] = [
    "ae_title",
    "max_object_size",
    "max_pdu_size",
    "inline_object_size",
];
/// The list keys only a dicom entry takes.
pub const DICOM_LIST_KEYS: [&str; 2] = ["allowed_callers", "sop_classes"];

/// Defaults.
const DEFAULT_AE_TITLE: &str = "MFOUNDRY";
const DEFAULT_MAX_OBJECT: u64 = 512 << 20;
/// Objects up to this are held in memory and stored in the store; larger ones are spooled.
const DEFAULT_INLINE_OBJECT: u64 = 1 << 20;
/// The smallest `inline_object_size`: an object's head (its identifiers) is read from this
/// many bytes.
const MIN_INLINE_OBJECT: u64 = 64 << 10;
const DEFAULT_MAX_PDU: u64 = 64 << 10;
/// The largest object a listener may take.
const MAX_OBJECT: u64 = 0xFFFF_FFFE;
/// A PDU this side receives is at least this long (the standard's smallest useful).
const MIN_PDU: u64 = 4 << 10;
/// ... and at most this (a larger PDU is one allocation per read).
const MAX_PDU: u64 = 4 << 20;

/// An AE title's problem: 1 to 16 characters of printable ASCII, no backslash, not all
/// spaces.
fn ae_title_problem(title: &str) -> Option<String> {
    if title.is_empty() || title.len() > 16 {
        return Some(format!(
            "an AE title has 1 to 16 characters; {title:?} has {}",
            title.len()
        ));
    }
    if title
        .bytes()
        .any(|byte| !(0x20..0x7f).contains(&byte) || byte == b'\\')
    {
        return Some("an AE title is printable ASCII without a backslash".to_owned());
    }
    None
}

/// Resolve a dicom entry's keys; `problem(value, key, text)` reports one.
pub(super) fn resolve(
    scalars: &[(&'static str, Spanned<String>)],
    lists: &[(&'static str, Vec<Spanned<String>>)],
    mut problem: impl FnMut(Option<&Spanned<String>>, &str, String),
) -> Option<DicomSettings> {
    let get = |key: &str| {
        scalars
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    };
    let list = |key: &str| {
        lists
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, values)| values)
    };
    let mut ok = true;
    let ae_title = get("ae_title").map_or(DEFAULT_AE_TITLE.to_owned(), |title| {
        title.value.trim().to_owned()
    });
    if let Some(text) = ae_title_problem(&ae_title) {
        problem(get("ae_title"), "ae_title", text);
        ok = false;
    }
    let allowed_callers = list("allowed_callers").map(|callers| {
        callers
            .iter()
            .filter_map(|caller| {
                let title = caller.value.trim().to_owned();
                match ae_title_problem(&title) {
                    Some(text) => {
                        problem(Some(caller), "allowed_callers", text);
                        ok = false;
                        None
                    }
                    None => Some(title),
                }
            })
            .collect::<Vec<_>>()
    });
    if allowed_callers.as_ref().is_some_and(Vec::is_empty) && ok {
        problem(None, "allowed_callers", "is empty, so no modality could send; list the calling AE titles, or remove the key to accept any".to_owned());
        ok = false;
    }
    let sop_classes = match list("sop_classes") {
        // Every standard Storage SOP class.
        None => Vec::new(),
        Some(classes) if classes.is_empty() => {
            problem(None, "sop_classes", "is empty, so no object could be stored; list the SOP class UIDs, or remove the key to accept every standard storage class".to_owned());
            ok = false;
            Vec::new()
        }
        Some(classes) => classes
            .iter()
            .filter_map(|class| {
                let uid = class.value.trim().to_owned();
                if crate::dicom::is_uid(&uid) {
                    Some(uid)
                } else {
                    problem(Some(class), "sop_classes", "expected a SOP class UID such as 1.2.840.10008.5.1.4.1.1.2 (digits and dots)".to_owned());
                    ok = false;
                    None
                }
            })
            .collect(),
    };
    let mut size = |key: &str, default: u64| match get(key) {
        None => Some(default),
        Some(value) => match crate::units::parse_size(value.value.trim()) {
            Ok(bytes) => Some(bytes),
            Err(text) => {
                problem(Some(value), key, text);
                None
            }
        },
    };
    let max_object_size = size("max_object_size", DEFAULT_MAX_OBJECT);
    let max_pdu_size = size("max_pdu_size", DEFAULT_MAX_PDU);
    let inline_object_size = size("inline_object_size", DEFAULT_INLINE_OBJECT);
    if inline_object_size.is_some_and(|size| size < MIN_INLINE_OBJECT) {
        problem(
            get("inline_object_size"),
            "inline_object_size",
            format!(
                "must be at least {}KiB (an object's identifiers are read from its first bytes)",
                MIN_INLINE_OBJECT >> 10
            ),
        );
        ok = false;
    }
    if max_object_size.is_some_and(|size| size > MAX_OBJECT) {
        problem(
            get("max_object_size"),
            "max_object_size",
            "must be below 4GiB (DICOM lengths are 32-bit)".to_owned(),
        );
        ok = false;
    }
    if max_object_size == Some(0) {
        problem(
            get("max_object_size"),
            "max_object_size",
            "must be larger than 0".to_owned(),
        );
        ok = false;
    }
    if let Some(pdu) = max_pdu_size
        && !(MIN_PDU..=MAX_PDU).contains(&pdu)
    {
        problem(
            get("max_pdu_size"),
            "max_pdu_size",
            format!(
                "must be between {}KiB and {}MiB",
                MIN_PDU >> 10,
                MAX_PDU >> 20
            ),
        );
        ok = false;
    }
    let (Some(max_object_size), Some(max_pdu_size), Some(inline_object_size)) =
        (max_object_size, max_pdu_size, inline_object_size)
    else {
        return None;
    };
    ok.then(|| DicomSettings {
        ae_title,
        allowed_callers,
        sop_classes,
        max_object_size: usize::try_from(max_object_size).unwrap_or(usize::MAX),
        max_pdu_size: u32::try_from(max_pdu_size).unwrap_or(u32::MAX),
        inline_object_size: usize::try_from(inline_object_size).unwrap_or(usize::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::At;

    fn spanned(value: &str) -> Spanned<String> {
        Spanned {
            value: value.to_owned(),
            at: At::default(),
        }
    }

    #[test]
    fn defaults_and_problems_are_reported_by_key() {
        let settings =
            resolve(&[], &[], |_, key, text| panic!("{key}: {text}")).expect("in the test");
        assert_eq!(settings.ae_title, "MFOUNDRY");
        assert!(settings.allowed_callers.is_none());
        for class in [
            "1.2.840.10008.5.1.4.1.1.2",     // CT
            "1.2.840.10008.5.1.4.1.1.481.2", // RT Dose
            "1.2.840.10008.5.1.4.1.1.9.1.1", // 12-lead ECG
            "1.2.840.10008.5.1.4.1.1.88.33", // Comprehensive SR
        ] {
            assert!(settings.accepts_class(class), "{class}");
        }
        for class in ["1.2.840.10008.5.1.4.1.1", "1.2.840.10008.1.1", "1.2.3.4"] {
            assert!(!settings.accepts_class(class), "{class}");
        }
        let mut problems = Vec::new();
        let found = resolve(
            &[
                ("ae_title", spanned("A_VERY_LONG_AE_TITLE")),
                ("max_pdu_size", spanned("1KiB")),
            ],
            &[("sop_classes", vec![spanned("CT")])],
            |_, key, text| problems.push(format!("{key}: {text}")),
        );
        assert!(found.is_none());
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("ae_title"));
    }
}
