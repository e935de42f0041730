//! DIMSE command sets (PS3.7 §9–10): group 0000, always Implicit VR Little Endian.
//!
//! Only what C-ECHO and C-STORE use is read or written; other elements are skipped.

/// C-STORE-RQ
pub const C_STORE_RQ: u16 = 0x0001;
/// C-STORE-RSP
pub const C_STORE_RSP: u16 = 0x8001;
/// C-ECHO-RQ
pub const C_ECHO_RQ: u16 = 0x0030;
/// C-ECHO-RSP
pub const C_ECHO_RSP: u16 = 0x8030;
/// CommandDataSetType: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;

/// Success.
pub const SUCCESS: u16 = 0x0000;
/// Out of resources (storage failure).
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Data set does not match SOP class (the data set's UIDs are not the request's).
pub const DATA_SET_DOES_NOT_MATCH: u16 = 0xA900;
/// Cannot understand.
pub const CANNOT_UNDERSTAND: u16 = 0xC000;
/// SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;

/// Most bytes a command set may have (they are a few hundred at most).
pub const MAX_COMMAND_LEN: usize = 64 * 1024;

/// A command set's fields that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// (0000,0100) CommandField.
    pub field: u16,
    /// (0000,0002) AffectedSOPClassUID.
    pub sop_class: String,
    /// (0000,1000) AffectedSOPInstanceUID.
    pub sop_instance: String,
    /// (0000,0110) MessageID.
    pub message_id: u16,
    /// (0000,0120) MessageIDBeingRespondedTo.
    pub responding_to: u16,
    /// (0000,0800) CommandDataSetType (0x0101: none).
    pub data_set_type: u16,
    /// (0000,0900) Status.
    pub status: u16,
    /// (0000,0902) ErrorComment.
    pub error_comment: String,
    /// (0000,0700) Priority.
    pub priority: u16,
    /// (0000,1030) MoveOriginatorApplicationEntityTitle (kept when present).
    pub move_originator: String,
}

impl Command {
    /// Whether a data set follows the command.
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATA_SET
    }
}

fn text(value: &[u8]) -> String {
    let end = value
        .iter()
        .rposition(|byte| *byte != 0 && *byte != b' ')
        .map_or(0, |last| last + 1);
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn u16_of(value: &[u8]) -> u16 {
    match value {
        [a, b, ..] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    }
}

/// Read a command set. `None`: the bytes are not a command set (an element runs past the
/// end).
pub fn parse(bytes: &[u8]) -> Option<Command> {
    let mut command = Command::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let head = bytes.get(at..at.checked_add(8)?)?;
        let group = u16::from_le_bytes([head[0], head[1]]);
        let element = u16::from_le_bytes([head[2], head[3]]);
        let length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let start = at + 8;
        let end = start.checked_add(usize::try_from(length).ok()?)?;
        let value = bytes.get(start..end)?;
        at = end;
        if group != 0 {
            return None;
        }
        match element {
            0x0002 => command.sop_class = text(value),
            0x0100 => command.field = u16_of(value),
            0x0110 => command.message_id = u16_of(value),
            0x0120 => command.responding_to = u16_of(value),
            0x0700 => command.priority = u16_of(value),
            0x0800 => command.data_set_type = u16_of(value),
            0x0900 => command.status = u16_of(value),
            0x0902 => command.error_comment = text(value),
            0x1000 => command.sop_instance = text(value),
            0x1030 => command.move_originator = text(value),
            _ => {}
        }
    }
    Some(command)
}

fn element(out: &mut Vec<u8>, tag: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
}

/// A UID or text value padded to even length (UIDs with NUL, text with a space).
fn padded(value: &str, pad: u8) -> Vec<u8> {
    let mut bytes = value.as_bytes().to_vec();
    if bytes.len() % 2 == 1 {
        bytes.push(pad);
    }
    bytes
}

/// Encode a command set, group length first.
pub fn encode(command: &Command) -> Vec<u8> {
    let mut body = Vec::new();
    if !command.sop_class.is_empty() {
        element(&mut body, 0x0002, &padded(&command.sop_class, 0));
    }
    element(&mut body, 0x0100, &command.field.to_le_bytes());
    if command.field & 0x8000 == 0 {
        element(&mut body, 0x0110, &command.message_id.to_le_bytes());
    } else {
        element(&mut body, 0x0120, &command.responding_to.to_le_bytes());
    }
    if command.field == C_STORE_RQ {
        element(&mut body, 0x0700, &command.priority.to_le_bytes());
    }
    element(&mut body, 0x0800, &command.data_set_type.to_le_bytes());
    if command.field & 0x8000 != 0 {
        element(&mut body, 0x0900, &command.status.to_le_bytes());
        if !command.error_comment.is_empty() {
            // ErrorComment is LO: at most 64 characters.
            let comment: String = command.error_comment.chars().take(64).collect();
            element(&mut body, 0x0902, &padded(&comment, b' '));
        }
    }
    if !command.sop_instance.is_empty() {
        element(&mut body, 0x1000, &padded(&command.sop_instance, 0));
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    element(
        &mut out,
        0x0000,
        &u32::try_from(body.len()).unwrap_or(0).to_le_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

/// The response to `request` with `status` (and a comment for a failure).
pub fn response(request: &Command, field: u16, status: u16, comment: &str) -> Vec<u8> {
    encode(&Command {
        field,
        sop_class: request.sop_class.clone(),
        sop_instance: request.sop_instance.clone(),
        responding_to: request.message_id,
        data_set_type: NO_DATA_SET,
        status,
        error_comment: comment.to_owned(),
        ..Command::default()
    })
}

/// How a C-STORE-RSP status reads for a sender (PS3.4 Annex B.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// 0x0000
    Success,
    /// 0xB000, 0xB007, 0xB006 and the rest of 0xB0xx: stored, with a warning.
    Warning,
    /// 0xA7xx: out of resources; try again later.
    Retry,
    /// 0xA9xx, 0xCxxx and anything else: the object is refused.
    Refused,
}

/// The class of a C-STORE status (PS3.7 Table C.1-1, PS3.4 Annex B.2.3): warnings are
/// `0001`, `0107`, `0116` and `Bxxx`; `0111` (duplicate SOP instance: the peer holds it,
/// usually from an attempt whose response was lost) is a success; `A7xx` and `0213`
/// (resource limitation) are worth retrying; every other status refuses the object.
pub fn classify(status: u16) -> StatusClass {
    match status {
        SUCCESS | DUPLICATE_INSTANCE => StatusClass::Success,
        0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF => StatusClass::Warning,
        0xA700..=0xA7FF | 0x0213 => StatusClass::Retry,
        _ => StatusClass::Refused,
    }
}

/// Duplicate SOP instance.
pub const DUPLICATE_INSTANCE: u16 = 0x0111;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_store_request_round_trips() {
        let request = Command {
            field: C_STORE_RQ,
            sop_class: "1.2.840.10008.5.1.4.1.1.2".to_owned(),
            sop_instance: "1.2.3.4.5".to_owned(),
            message_id: 7,
            data_set_type: 0x0000,
            priority: 0,
            ..Command::default()
        };
        let parsed = parse(&encode(&request)).expect("in the test");
        assert_eq!(parsed.field, C_STORE_RQ);
        assert_eq!(parsed.sop_class, request.sop_class);
        assert_eq!(parsed.sop_instance, request.sop_instance);
        assert_eq!(parsed.message_id, 7);
        assert!(parsed.has_data_set());
        let answer =
            parse(&response(&parsed, C_STORE_RSP, OUT_OF_RESOURCES, "disk")).expect("in the test");
        assert_eq!(answer.field, C_STORE_RSP);
        assert_eq!(answer.responding_to, 7);
        assert_eq!(answer.status, OUT_OF_RESOURCES);
        assert_eq!(answer.error_comment, "disk");
        assert!(!answer.has_data_set());
    }

    #[test]
    fn statuses_are_classed_as_the_standard_says() {
        assert_eq!(classify(0x0000), StatusClass::Success);
        assert_eq!(classify(0xB007), StatusClass::Warning);
        assert_eq!(classify(0xB1FF), StatusClass::Warning);
        assert_eq!(classify(0x0107), StatusClass::Warning);
        assert_eq!(classify(0x0111), StatusClass::Success);
        assert_eq!(classify(0x0213), StatusClass::Retry);
        assert_eq!(classify(0xA700), StatusClass::Retry);
        assert_eq!(classify(0xA900), StatusClass::Refused);
        assert_eq!(classify(0xC000), StatusClass::Refused);
        assert_eq!(classify(0x0122), StatusClass::Refused);
    }

    proptest! {
        #[test]
        fn no_bytes_make_the_reader_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }
    }
}
