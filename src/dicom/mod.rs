//! DICOM as bytes, no I/O: the upper layer protocol's PDUs ([`pdu`]), DIMSE command sets
//! ([`dimse`]), a bounded data set reader ([`dataset`]), and the stored object with its
//! identifiers ([`object`]). Headers and Structured Reports only: pixel data is carried,
//! never decoded. See ADR 0020.

pub mod dataset;
pub mod dimse;
pub mod object;
pub mod pdu;
pub mod sr;

pub use object::{Identifiers, is_dicom};

/// Whether `uid` is a UID (PS3.5 §9.1): 1 to 64 characters, digits and dots, no empty
/// component, no component with a leading zero (`0` alone is one).
pub fn is_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|byte| byte.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn uids_are_digits_and_dots_without_leading_zeros() {
        assert!(super::is_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(super::is_uid("1.0.3"));
        assert!(!super::is_uid("1.02.3"));
        assert!(!super::is_uid("1..2"));
        assert!(!super::is_uid("1.2a"));
        assert!(!super::is_uid(&"1".repeat(65)));
    }
}
