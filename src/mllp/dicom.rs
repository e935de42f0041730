//! What a `type: dicom` listener accepts (its settings, the default storage SOP classes,
//! the transfer syntax it picks), and the PDU read the DICOM output shares (ADR 0020).

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::dicom::dataset;
use crate::dicom::pdu::{self, PduType};

/// What a `type: dicom` listener takes (beyond the network listener's settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DicomSettings {
    /// `ae_title`: the called AE title it answers to.
    pub ae_title: String,
    /// `allowed_callers`: calling AE titles it accepts; `None`: any.
    pub allowed_callers: Option<Vec<String>>,
    /// `sop_classes`: the storage SOP classes accepted (Verification always is); empty:
    /// every standard Storage SOP class ([`STORAGE_CLASS_ROOT`]).
    pub sop_classes: Vec<String>,
    /// `max_object_size`: the largest data set, in bytes.
    pub max_object_size: usize,
    /// `max_pdu_size`: the longest PDU this side receives (announced in the A-ASSOCIATE-AC).
    pub max_pdu_size: u32,
    /// `inline_object_size`: objects up to this many bytes are held in memory while they
    /// arrive and stored in the store; a larger one is spooled to a file as it arrives,
    /// only its first this-many bytes held (its identifiers are read from them).
    pub inline_object_size: usize,
}

/// The root of the standard Storage SOP classes (images, waveforms, radiotherapy, Structured
/// Reports, encapsulated documents, presentation states, raw data …): a listener without
/// `sop_classes` accepts every class under it.
pub const STORAGE_CLASS_ROOT: &str = "1.2.840.10008.5.1.4.1.1.";

impl DicomSettings {
    /// Whether a C-STORE of this SOP class is accepted: one of `sop_classes`, or, when none
    /// are listed, any standard Storage SOP class.
    pub fn accepts_class(&self, class: &str) -> bool {
        if self.sop_classes.is_empty() {
            class
                .strip_prefix(STORAGE_CLASS_ROOT)
                .is_some_and(|rest| !rest.is_empty())
        } else {
            self.sop_classes.iter().any(|listed| listed == class)
        }
    }
}

/// Read one PDU whose body is at most `limit` bytes (a longer one is refused from its
/// header, before anything is allocated): the DICOM output's reads.
pub async fn read_pdu<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u32,
) -> Result<(PduType, Vec<u8>), String> {
    let mut header = [0u8; pdu::HEADER_LEN];
    reader
        .read_exact(&mut header)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "the peer closed the connection".to_owned(),
            _ => format!("the connection failed: {error}"),
        })?;
    let (kind, length) = pdu::header(&header, limit).map_err(|error| error.to_string())?;
    let mut body = vec![0u8; length as usize];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|error| format!("the connection failed within a PDU: {error}"))?;
    Ok((kind, body))
}

/// The transfer syntax to accept of those proposed: Explicit VR Little Endian, then
/// Implicit, then the first compressed one (carried as opaque bytes).
pub(super) fn choose_transfer_syntax(proposed: &[String]) -> Option<&str> {
    [
        dataset::EXPLICIT_VR_LITTLE_ENDIAN,
        dataset::IMPLICIT_VR_LITTLE_ENDIAN,
    ]
    .into_iter()
    .find(|syntax| proposed.iter().any(|offered| offered == syntax))
    .or_else(|| {
        proposed
            .iter()
            .map(String::as_str)
            .find(|offered| dataset::is_compressed(offered))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_little_endian_is_preferred_and_compressed_ones_are_taken() {
        let offered = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            choose_transfer_syntax(&offered(&["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])),
            Some("1.2.840.10008.1.2.1")
        );
        assert_eq!(
            choose_transfer_syntax(&offered(&["1.2.840.10008.1.2.4.90"])),
            Some("1.2.840.10008.1.2.4.90")
        );
        assert_eq!(
            choose_transfer_syntax(&offered(&["1.2.840.10008.1.2.2"])),
            None
        );
    }
}
