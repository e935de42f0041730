//! The data set reader's tests: both syntaxes, limits, heads, and no panic on any bytes.

use super::write::{element, sequence};
use super::*;
use proptest::prelude::*;

fn sample(syntax: Syntax) -> Vec<u8> {
    let mut out = Vec::new();
    element(
        &mut out,
        syntax,
        SPECIFIC_CHARACTER_SET,
        b"CS",
        b"ISO_IR 100",
    );
    element(
        &mut out,
        syntax,
        SOP_CLASS_UID,
        b"UI",
        b"1.2.840.10008.5.1.4.1.1.88.11",
    );
    element(&mut out, syntax, MODALITY, b"CS", b"SR");
    element(&mut out, syntax, PATIENT_NAME, b"PN", b"M\xfcller^Anna");
    let mut item = Vec::new();
    element(&mut item, syntax, (0x0008, 0x0100), b"SH", b"121071");
    let mut content = Vec::new();
    sequence(&mut content, syntax, (0x0040, 0xA043), &[item]);
    sequence(
        &mut out,
        syntax,
        (0x0040, 0xA730),
        &[content.clone(), content],
    );
    element(&mut out, syntax, PIXEL_DATA, b"OB", b"\x01\x02");
    out
}

#[test]
fn both_syntaxes_read_to_the_same_values() {
    for syntax in [Syntax::ExplicitLittle, Syntax::ImplicitLittle] {
        let bytes = sample(syntax);
        let set = parse(&bytes, syntax).expect("in the test");
        let charset = set.charset();
        assert_eq!(set.text(PATIENT_NAME, charset), "Müller^Anna");
        assert_eq!(set.text(MODALITY, charset), "SR");
        assert_eq!(
            set.text(SOP_CLASS_UID, charset),
            "1.2.840.10008.5.1.4.1.1.88.11"
        );
        let content = set.items((0x0040, 0xA730));
        assert_eq!(content.len(), 2);
        let name = content[1].items((0x0040, 0xA043));
        assert_eq!(name[0].text((0x0008, 0x0100), charset), "121071");
        assert!(
            set.get(PIXEL_DATA).is_none(),
            "reading stops at the pixel data"
        );
    }
}

#[test]
fn damage_inside_a_head_is_an_error_not_a_cut() {
    for syntax in [Syntax::ExplicitLittle, Syntax::ImplicitLittle] {
        let mut bytes = sample(syntax);
        let item = bytes
            .windows(4)
            .position(|window| window == [0xFE, 0xFF, 0x00, 0xE0])
            .expect("an item");
        bytes[item + 3] = 0xE1;
        assert!(parse_head(&bytes, syntax).is_err());
        // The same bytes cut inside that sequence read as a head.
        assert!(parse_head(&sample(syntax)[..item + 6], syntax).is_ok());
    }
    // A length past its defined-length item (however large) is damage, not a cut.
    for claimed in [0x40u32, 0x7FFF_FFF0] {
        let mut inner = vec![0x08, 0x00, 0x00, 0x01, b'U', b'T', 0, 0];
        inner.extend_from_slice(&claimed.to_le_bytes());
        inner.extend_from_slice(b"abcd");
        let mut item = vec![0xFE, 0xFF, 0x00, 0xE0];
        item.extend_from_slice(&(inner.len() as u32).to_le_bytes());
        item.extend_from_slice(&inner);
        let mut bytes = Vec::new();
        element(&mut bytes, Syntax::ExplicitLittle, MODALITY, b"CS", b"CT");
        bytes.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0]);
        bytes.extend_from_slice(&(item.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&item);
        element(
            &mut bytes,
            Syntax::ExplicitLittle,
            (0x0040, 0xA731),
            b"CS",
            b"X",
        );
        assert!(
            parse_head(&bytes, Syntax::ExplicitLittle).is_err(),
            "a length of {claimed:#x}"
        );
    }
}

#[test]
fn a_length_past_the_end_is_an_error_not_an_allocation() {
    let mut bytes = Vec::new();
    element(&mut bytes, Syntax::ExplicitLittle, MODALITY, b"CS", b"CT");
    // An OB claiming 4 GB - 2 bytes.
    bytes.extend_from_slice(&[0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
    bytes.extend_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
    assert_eq!(
        parse(&bytes, Syntax::ExplicitLittle),
        Err(DatasetError::Truncated(0x0009, 0x0010))
    );
}

#[test]
fn nesting_is_capped() {
    let mut inner = Vec::new();
    element(&mut inner, Syntax::ExplicitLittle, MODALITY, b"CS", b"CT");
    for _ in 0..(MAX_DEPTH + 2) {
        let mut outer = Vec::new();
        sequence(
            &mut outer,
            Syntax::ExplicitLittle,
            (0x0040, 0xA730),
            &[inner],
        );
        inner = outer;
    }
    assert_eq!(
        parse(&inner, Syntax::ExplicitLittle),
        Err(DatasetError::TooDeep)
    );
}

#[test]
fn an_undefined_item_cannot_read_past_its_defined_container() {
    // A sequence of defined length 8 whose one item has an undefined length: the item's
    // delimiter would have to lie beyond the sequence's end.
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0]);
    bytes.extend_from_slice(&8u32.to_le_bytes());
    bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
    assert!(parse(&bytes, Syntax::ExplicitLittle).is_err());
}

#[test]
fn fragments_count_as_elements() {
    // Encapsulated fragments of an OB other than the pixel data (where reading stops).
    let mut item = Vec::new();
    item.extend_from_slice(&[0x09, 0x00, 0x10, 0x00, b'O', b'B', 0, 0]);
    item.extend_from_slice(&u32::MAX.to_le_bytes());
    for _ in 0..(MAX_ELEMENTS + 1) {
        item.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    }
    item.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    assert_eq!(
        parse(&item, Syntax::ExplicitLittle),
        Err(DatasetError::TooManyElements)
    );
}

#[test]
fn transfer_syntaxes_are_recognised() {
    assert_eq!(
        Syntax::of("1.2.840.10008.1.2"),
        Some(Syntax::ImplicitLittle)
    );
    assert_eq!(
        Syntax::of("1.2.840.10008.1.2.4.50"),
        Some(Syntax::ExplicitLittle)
    );
    assert_eq!(Syntax::of("1.2.840.10008.1.2.2"), None);
    assert_eq!(Syntax::of("1.2.840.10008.1.2.1.99"), None);
    assert_eq!(Syntax::of("1.2.840.10008.1.2.4.95"), None);
    assert!(!is_compressed("1.2.840.10008.1.2.4."));
}

#[test]
fn character_sets_map_to_encodings() {
    assert!(TextCharset::from_term("ISO_IR 192").is_utf8());
    assert_eq!(
        TextCharset::from_term("ISO_IR 100").decode(b"M\xfcller"),
        "Müller"
    );
    assert_eq!(
        TextCharset::from_term("\\ISO 2022 IR 149").0,
        encoding_rs::EUC_KR
    );
}

proptest! {
    #[test]
    fn no_bytes_make_the_reader_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&bytes, Syntax::ExplicitLittle);
        let _ = parse(&bytes, Syntax::ImplicitLittle);
    }

    #[test]
    fn a_head_reads_the_whole_elements_before_its_cut(cut in 0usize..400) {
        for syntax in [Syntax::ExplicitLittle, Syntax::ImplicitLittle] {
            let bytes = sample(syntax);
            let whole = parse(&bytes, syntax).expect("in the test");
            let cut = cut.min(bytes.len());
            let head = parse_head(&bytes[..cut], syntax).expect("a cut is no error");
            prop_assert!(head.elements.len() <= whole.elements.len());
            prop_assert_eq!(&head.elements[..], &whole.elements[..head.elements.len()]);
            if cut == bytes.len() {
                prop_assert_eq!(head.elements.len(), whole.elements.len());
            }
        }
    }

    #[test]
    fn a_cut_data_set_reads_or_fails_cleanly(cut in 0usize..200) {
        let bytes = sample(Syntax::ExplicitLittle);
        let cut = cut.min(bytes.len());
        let _ = parse(&bytes[..cut], Syntax::ExplicitLittle);
    }
}
