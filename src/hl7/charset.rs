//! MSH-18 character sets, mapped onto `encoding_rs` encodings.
//!
//! Names follow HL7 table 0211 (`ASCII`, `8859/1` … `8859/15`, `UNICODE UTF-8`, `GB 18030-2000`,
//! `KS X 1001`, `BIG-5`, `ISO IR87` …); WHATWG labels such as `UTF-8` or `windows-1252` are
//! accepted too. Bytes are never rewritten: a character set is used to check a declared encoding
//! at intake and to decode text when something asks for it.

use std::borrow::Cow;

use encoding_rs::{Encoding, UTF_8};

use super::Message;

/// A resolved character set: the name it was given and the encoding used to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charset {
    encoding: &'static Encoding,
}

impl Charset {
    /// UTF-8.
    pub const UTF_8: Self = Self { encoding: UTF_8 };

    /// Resolve an HL7 table 0211 name or a WHATWG label (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        let trimmed = name.trim();
        let upper = trimmed.to_ascii_uppercase();
        let label = match upper.as_str() {
            // HL7 says ASCII; real senders put Windows-1252 bytes behind it, so decode leniently.
            "ASCII" | "8859/1" => "windows-1252",
            "8859/2" => "iso-8859-2",
            "8859/3" => "iso-8859-3",
            "8859/4" => "iso-8859-4",
            "8859/5" => "iso-8859-5",
            "8859/6" => "iso-8859-6",
            "8859/7" => "iso-8859-7",
            "8859/8" => "iso-8859-8",
            "8859/9" => "windows-1254",
            "8859/15" => "iso-8859-15",
            "UNICODE" | "UNICODE UTF-8" => "utf-8",
            "GB 18030-2000" | "GB18030" => "gb18030",
            "KS X 1001" => "euc-kr",
            "BIG-5" | "CNS 11643-1992" => "big5",
            "ISO IR14" => "shift_jis",
            "ISO IR87" => "iso-2022-jp",
            "ISO IR159" => "euc-jp",
            _ => trimmed,
        };
        let encoding = Encoding::for_label(label.as_bytes())?;
        // UTF-16 cannot travel inside MLLP frames (its bytes collide with the framing).
        if encoding == encoding_rs::UTF_16BE || encoding == encoding_rs::UTF_16LE {
            return None;
        }
        Some(Self { encoding })
    }

    /// The `encoding_rs` encoding.
    pub fn encoding(&self) -> &'static Encoding {
        self.encoding
    }

    /// The canonical encoding name, e.g. `UTF-8` or `windows-1252` (never message data).
    pub fn name(&self) -> &'static str {
        self.encoding.name()
    }

    /// Decode bytes, replacing what does not decode with U+FFFD.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Cow<'a, str> {
        self.encoding.decode_without_bom_handling(bytes).0
    }

    /// Encode text in this character set; `None` when it holds a character the set cannot
    /// carry (never replaced silently).
    pub fn encode<'a>(&self, text: &'a str) -> Option<Cow<'a, [u8]>> {
        if self.encoding == UTF_8 {
            return Some(Cow::Borrowed(text.as_bytes()));
        }
        let (bytes, _, unmappable) = self.encoding.encode(text);
        (!unmappable).then_some(bytes)
    }

    /// Byte offset of the first byte sequence that is not valid in this character set.
    pub fn first_invalid_byte(&self, bytes: &[u8]) -> Option<usize> {
        if self.encoding == UTF_8 {
            return std::str::from_utf8(bytes)
                .err()
                .map(|error| error.valid_up_to());
        }
        let mut decoder = self.encoding.new_decoder_without_bom_handling();
        let mut output = String::with_capacity(4096);
        let mut consumed = 0;
        loop {
            output.clear();
            let (result, read) =
                decoder.decode_to_string_without_replacement(&bytes[consumed..], &mut output, true);
            consumed += read;
            match result {
                encoding_rs::DecoderResult::InputEmpty => return None,
                encoding_rs::DecoderResult::OutputFull => {
                    if read == 0 {
                        output.reserve(4096);
                    }
                }
                encoding_rs::DecoderResult::Malformed(bad, unread) => {
                    let bad_start = consumed - usize::from(unread) - usize::from(bad);
                    return Some(bad_start);
                }
            }
        }
    }
}

/// What MSH-18 said and what mfoundry made of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclaredCharset {
    /// MSH-18 is empty: the configured default applies and is not enforced.
    Undeclared(Charset),
    /// MSH-18 names a known character set: the message bytes must be valid in it.
    Declared(Charset),
    /// MSH-18 names something unknown: the configured default applies and is not enforced.
    Unknown(Charset),
}

impl DeclaredCharset {
    /// The character set used to decode the message text.
    pub fn charset(&self) -> Charset {
        match self {
            Self::Undeclared(charset) | Self::Declared(charset) | Self::Unknown(charset) => {
                *charset
            }
        }
    }
}

impl Message {
    /// The character set of this message: MSH-18 (first repetition) if it names a known one,
    /// otherwise `default`.
    pub fn charset(&self, default: Charset) -> DeclaredCharset {
        let declared = self.header_component(18, 1);
        if declared.iter().all(u8::is_ascii_whitespace) {
            return DeclaredCharset::Undeclared(default);
        }
        match std::str::from_utf8(declared)
            .ok()
            .and_then(Charset::from_name)
        {
            Some(charset) => DeclaredCharset::Declared(charset),
            None => DeclaredCharset::Unknown(default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_names_resolve() {
        let cases = [
            ("8859/1", "windows-1252"),
            ("ASCII", "windows-1252"),
            ("8859/15", "ISO-8859-15"),
            ("UNICODE UTF-8", "UTF-8"),
            ("unicode utf-8", "UTF-8"),
            ("UTF-8", "UTF-8"),
            ("GB 18030-2000", "gb18030"),
            ("KS X 1001", "EUC-KR"),
            ("BIG-5", "Big5"),
            ("ISO IR87", "ISO-2022-JP"),
        ];
        for (name, expected) in cases {
            let charset = Charset::from_name(name).expect(name);
            assert_eq!(charset.name(), expected, "{name}");
        }
        assert_eq!(Charset::from_name("UNICODE UTF-16"), None);
        assert_eq!(Charset::from_name("KLINGON"), None);
    }

    #[test]
    fn invalid_bytes_are_located_without_panicking() {
        let utf8 = Charset::UTF_8;
        assert_eq!(utf8.first_invalid_byte("héllo".as_bytes()), None);
        assert_eq!(utf8.first_invalid_byte(b"ab\xC3"), Some(2));
        assert_eq!(utf8.first_invalid_byte(b"abc\xFFdef"), Some(3));
        let sjis = Charset::from_name("shift_jis").expect("sjis");
        assert_eq!(sjis.first_invalid_byte(b"ok\x82\xA0"), None);
        assert_eq!(sjis.first_invalid_byte(b"ok\x82"), Some(2));
        let latin1 = Charset::from_name("8859/1").expect("latin1");
        let every_byte: Vec<u8> = (0..=255).collect();
        assert_eq!(latin1.first_invalid_byte(&every_byte), None);
        assert_eq!(latin1.decode(b"M\xFCller"), "Müller");
    }
}
