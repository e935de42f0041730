//! DICOM as bytes, no I/O: the upper layer protocol's PDUs ([`pdu`]), DIMSE command sets
//! ([`dimse`]), a bounded data set reader ([`dataset`]), and the stored object with its
//! identifiers ([`object`]). Headers and Structured Reports only: pixel data is carried,
//! never decoded. See ADR 0020.

pub mod dataset;
pub mod dimse;
pub mod object;
pub mod pdu;

pub use object::{Identifiers, is_dicom};
