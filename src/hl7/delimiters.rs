//! Delimiters declared by a message header (MSH-1 and MSH-2).
//!
//! The field separator is the byte right after the segment name `MSH` (or `FHS`/`BHS`);
//! MSH-2 lists, in order, the component, repetition, escape and subcomponent separators,
//! and from v2.7 on a fifth character, the truncation character. Each byte must be printable
//! ASCII, not alphanumeric, and distinct from the others.

/// The delimiter bytes of one message.
///
/// MSH-2 must declare the four separators; the truncation character is optional (`None` when
/// absent, as before v2.7), and a value is never split on an absent one. The raw
/// MSH-2 bytes are kept so an ACK can echo them exactly (including a v2.7 truncation character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delimiters {
    /// MSH-1, the field separator (almost always `|`).
    pub field: u8,
    /// First character of MSH-2 (almost always `^`).
    pub component: Option<u8>,
    /// Second character of MSH-2 (almost always `~`).
    pub repetition: Option<u8>,
    /// Third character of MSH-2 (almost always `\`).
    pub escape: Option<u8>,
    /// Fourth character of MSH-2 (almost always `&`).
    pub subcomponent: Option<u8>,
    /// Fifth character of MSH-2, v2.7 and later (usually `#`).
    pub truncation: Option<u8>,
    encoding_characters: Vec<u8>,
}

/// Why MSH-1/MSH-2 cannot be used as delimiters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DelimiterError {
    /// MSH-2 holds fewer than the four required characters.
    #[error(
        "{0} characters given; component, repetition, escape and subcomponent separators are all required"
    )]
    TooShort(usize),
    /// MSH-2 holds more than five characters.
    #[error(
        "{0} characters given; at most 5 (component, repetition, escape, subcomponent, truncation) are allowed"
    )]
    TooLong(usize),
    /// A delimiter is a letter, digit, space, control character or non-ASCII byte.
    #[error("character {position} is not a printable, non-alphanumeric ASCII character")]
    NotPunctuation {
        /// 1-based position within MSH-2.
        position: usize,
    },
    /// Two delimiters are the same byte.
    #[error("character {position} repeats the field separator or an earlier delimiter")]
    Duplicate {
        /// 1-based position within MSH-2.
        position: usize,
    },
}

/// True when `byte` may serve as a field separator: printable ASCII punctuation.
pub fn is_valid_separator(byte: u8) -> bool {
    byte.is_ascii_graphic() && !byte.is_ascii_alphanumeric()
}

impl Delimiters {
    /// The delimiters of the standard encoding `|^~\&`.
    pub fn standard() -> Self {
        Self::with_field(b'|')
    }

    /// The standard encoding characters `^~\&` with the given field separator.
    ///
    /// Used to read a message whose MSH-2 is unusable. Its ACK also keeps the sender's field
    /// separator and the standard encoding characters, but replaces one equal to the field
    /// separator (see `ack.rs`), which this reading does not.
    pub fn with_field(field: u8) -> Self {
        Self {
            field,
            component: Some(b'^'),
            repetition: Some(b'~'),
            escape: Some(b'\\'),
            subcomponent: Some(b'&'),
            truncation: None,
            encoding_characters: b"^~\\&".to_vec(),
        }
    }

    /// Build the delimiters from the field separator and the raw MSH-2 bytes.
    pub fn parse(field: u8, encoding_characters: &[u8]) -> Result<Self, DelimiterError> {
        if encoding_characters.len() < 4 {
            return Err(DelimiterError::TooShort(encoding_characters.len()));
        }
        if encoding_characters.len() > 5 {
            return Err(DelimiterError::TooLong(encoding_characters.len()));
        }
        let mut seen = vec![field];
        for (index, &byte) in encoding_characters.iter().enumerate() {
            if !is_valid_separator(byte) {
                return Err(DelimiterError::NotPunctuation {
                    position: index + 1,
                });
            }
            if seen.contains(&byte) {
                return Err(DelimiterError::Duplicate {
                    position: index + 1,
                });
            }
            seen.push(byte);
        }
        let at = |index: usize| encoding_characters.get(index).copied();
        Ok(Self {
            field,
            component: at(0),
            repetition: at(1),
            escape: at(2),
            subcomponent: at(3),
            truncation: at(4),
            encoding_characters: encoding_characters.to_vec(),
        })
    }

    /// The MSH-2 bytes exactly as declared.
    pub fn encoding_characters(&self) -> &[u8] {
        &self.encoding_characters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_and_custom_delimiters_parse() {
        let standard = Delimiters::parse(b'|', b"^~\\&").expect("standard delimiters");
        assert_eq!(standard, Delimiters::standard());
        let custom = Delimiters::parse(b'!', b"@*$%#").expect("custom delimiters");
        assert_eq!(custom.field, b'!');
        assert_eq!(custom.component, Some(b'@'));
        assert_eq!(custom.repetition, Some(b'*'));
        assert_eq!(custom.escape, Some(b'$'));
        assert_eq!(custom.subcomponent, Some(b'%'));
        assert_eq!(custom.truncation, Some(b'#'));
        assert_eq!(custom.encoding_characters(), b"@*$%#");
    }

    #[test]
    fn short_msh2_is_rejected() {
        assert_eq!(
            Delimiters::parse(b'|', b"^~"),
            Err(DelimiterError::TooShort(2))
        );
        assert_eq!(
            Delimiters::parse(b'|', b""),
            Err(DelimiterError::TooShort(0))
        );
    }

    #[test]
    fn unusable_msh2_is_rejected_with_position() {
        assert_eq!(
            Delimiters::parse(b'|', b"^~\\&#!"),
            Err(DelimiterError::TooLong(6))
        );
        assert_eq!(
            Delimiters::parse(b'|', b"^A\\&"),
            Err(DelimiterError::NotPunctuation { position: 2 })
        );
        assert_eq!(
            Delimiters::parse(b'|', b"^~|&"),
            Err(DelimiterError::Duplicate { position: 3 })
        );
    }
}
