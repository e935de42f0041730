//! Splitting a file of messages: one or many messages, any line endings, batch envelopes.
//!
//! Used by `mfoundry send`. Lines may end in `\r`, `\n` or `\r\n`; blank lines and MLLP
//! framing bytes (`0x0B`, `0x1C`) are dropped; `FHS`/`BHS`/`BTS`/`FTS` envelope segments are
//! dropped; every `MSH` starts a new message. Each message comes out with `\r` terminators,
//! the form HL7 prescribes on the wire.

/// Why a file cannot be split into messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// A segment appears before the first MSH.
    #[error(
        "line {line}: a segment appears before any MSH segment; each message must start with MSH"
    )]
    SegmentBeforeHeader {
        /// 1-based line number.
        line: usize,
    },
}

/// Split the contents of a file into messages.
pub fn split_messages(contents: &[u8]) -> Result<Vec<Vec<u8>>, SplitError> {
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for (index, line) in contents.split(|&byte| byte == b'\n').enumerate() {
        let line_number = index + 1;
        for piece in line.split(|&byte| matches!(byte, b'\r' | 0x0B | 0x1C)) {
            if piece.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let name = piece.get(..3).unwrap_or(piece);
            let is_envelope = matches!(name, b"FHS" | b"BHS" | b"BTS" | b"FTS")
                && piece
                    .get(3)
                    .is_none_or(|byte| !byte.is_ascii_alphanumeric());
            if is_envelope {
                continue;
            }
            let starts_message = name == b"MSH"
                && piece
                    .get(3)
                    .is_some_and(|byte| !byte.is_ascii_alphanumeric());
            if starts_message {
                messages.push(Vec::with_capacity(1024));
            }
            let Some(current) = messages.last_mut() else {
                return Err(SplitError::SegmentBeforeHeader { line: line_number });
            };
            current.extend_from_slice(piece);
            current.push(b'\r');
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_any_line_ending_and_drops_envelopes() {
        let file = b"FHS|^~\\&|A\r\nBHS|^~\\&|A\nMSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\r\nPID|1\n\nMSH|^~\\&|A|B|C|D|||ADT^A01|2|P|2.5\rPID|2\rBTS|2\nFTS|1\n";
        let messages = split_messages(file).expect("splits");
        assert_eq!(
            messages,
            vec![
                b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1\r".to_vec(),
                b"MSH|^~\\&|A|B|C|D|||ADT^A01|2|P|2.5\rPID|2\r".to_vec(),
            ]
        );
    }

    #[test]
    fn strips_mllp_framing_bytes() {
        let file = b"\x0bMSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1\r\x1c\r";
        let messages = split_messages(file).expect("splits");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0], b"MSH|^~\\&|A|B|C|D|||ADT^A01|1|P|2.5\rPID|1\r");
    }

    #[test]
    fn segment_before_header_names_the_line() {
        assert_eq!(
            split_messages(b"\nPID|1\nMSH|^~\\&|A\n"),
            Err(SplitError::SegmentBeforeHeader { line: 2 })
        );
        assert_eq!(
            split_messages(b"").expect("empty file"),
            Vec::<Vec<u8>>::new()
        );
    }
}
