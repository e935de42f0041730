//! HL7 escape sequences, decoded only when a caller asks.
//!
//! Stored and forwarded bytes are never unescaped. [`unescape`] decodes `\F\ \S\ \T\ \R\ \E\`,
//! `\P\` (the v2.7 truncation character) and `\Xhh..\`; every other sequence (`\H\`, `\N\`,
//! `\.br\`, `\Cxxyy\`, `\Zxx\` …) and any malformed one is kept byte for byte. [`escape`] does
//! the reverse for text mfoundry writes into a message (ACK reasons).

use std::borrow::Cow;

use super::Delimiters;

/// Decode the escape sequences of one value.
pub fn unescape<'a>(value: &'a [u8], delimiters: &Delimiters) -> Cow<'a, [u8]> {
    let Some(escape) = delimiters.escape else {
        return Cow::Borrowed(value);
    };
    if memchr::memchr(escape, value).is_none() {
        return Cow::Borrowed(value);
    }
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = memchr::memchr(escape, rest) {
        out.extend_from_slice(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(length) = memchr::memchr(escape, after) else {
            // Unterminated: keep the remainder as it is.
            out.extend_from_slice(&rest[start..]);
            return Cow::Owned(out);
        };
        let body = &after[..length];
        if !decode_sequence(body, delimiters, &mut out) {
            out.extend_from_slice(&rest[start..start + length + 2]);
        }
        rest = &after[length + 1..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Append the decoded form of one sequence body; false when it is to be kept as written.
fn decode_sequence(body: &[u8], delimiters: &Delimiters, out: &mut Vec<u8>) -> bool {
    let single = match body {
        b"F" => Some(delimiters.field),
        b"S" => delimiters.component,
        b"T" => delimiters.subcomponent,
        b"R" => delimiters.repetition,
        b"E" => delimiters.escape,
        b"P" => delimiters.truncation,
        _ => None,
    };
    if let Some(byte) = single {
        out.push(byte);
        return true;
    }
    let Some(hex) = body.strip_prefix(b"X") else {
        return false;
    };
    if hex.is_empty() || hex.len() % 2 != 0 {
        return false;
    }
    let mut decoded = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(high), Some(low)) => decoded.push(high << 4 | low),
            _ => return false,
        }
    }
    out.extend_from_slice(&decoded);
    true
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Escape text so it can stand inside one field (or component) of a message.
///
/// Delimiters become `\F\ \S\ \T\ \R\ \E\ \P\`; CR and LF become `\X0D\` and `\X0A\` so the
/// text cannot end a segment.
pub fn escape(text: &[u8], delimiters: &Delimiters) -> Vec<u8> {
    let escape_byte = delimiters.escape.unwrap_or(b'\\');
    let mut out = Vec::with_capacity(text.len());
    for &byte in text {
        let code: Option<&[u8]> = if byte == delimiters.field {
            Some(b"F")
        } else if Some(byte) == delimiters.component {
            Some(b"S")
        } else if Some(byte) == delimiters.subcomponent {
            Some(b"T")
        } else if Some(byte) == delimiters.repetition {
            Some(b"R")
        } else if byte == escape_byte {
            Some(b"E")
        } else if Some(byte) == delimiters.truncation {
            Some(b"P")
        } else if byte == b'\r' {
            Some(b"X0D")
        } else if byte == b'\n' {
            Some(b"X0A")
        } else {
            None
        };
        match code {
            Some(code) => {
                out.push(escape_byte);
                out.extend_from_slice(code);
                out.push(escape_byte);
            }
            None => out.push(byte),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_standard_sequences() {
        let delimiters = Delimiters::parse(b'|', b"^~\\&#").expect("delimiters");
        let decoded = unescape(b"a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\P\\g", &delimiters);
        assert_eq!(&*decoded, b"a|b^c&d~e\\f#g");
        assert_eq!(&*unescape(b"\\X0D0A\\", &delimiters), b"\r\n");
        assert_eq!(&*unescape(b"caf\\XC3A9\\", &delimiters), "café".as_bytes());
    }

    #[test]
    fn keeps_other_and_malformed_sequences() {
        let delimiters = Delimiters::standard();
        for kept in [
            &b"\\H\\bold\\N\\"[..],
            b"line\\.br\\next",
            b"\\C2842\\",
            b"\\X0\\",
            b"\\XZZ\\",
            b"\\P\\",
            b"open \\F",
        ] {
            assert_eq!(&*unescape(kept, &delimiters), kept);
        }
    }

    #[test]
    fn custom_escape_character_is_honoured() {
        let delimiters = Delimiters::parse(b'!', b"@*$%").expect("delimiters");
        assert_eq!(&*unescape(b"x$F$y$S$z", &delimiters), b"x!y@z");
        assert!(matches!(unescape(b"plain", &delimiters), Cow::Borrowed(_)));
    }

    proptest! {
        #[test]
        fn escape_then_unescape_is_identity(text in proptest::collection::vec(any::<u8>(), 0..64)) {
            let delimiters = Delimiters::parse(b'|', b"^~\\&#").expect("delimiters");
            let escaped = escape(&text, &delimiters);
            for byte in [b'|', b'^', b'~', b'&', b'#', b'\r', b'\n'] {
                prop_assert!(!escaped.contains(&byte));
            }
            prop_assert_eq!(unescape(&escaped, &delimiters).into_owned(), text);
        }
    }
}
