//! Golden ACK bytes across HL7 versions, delimiters and acknowledgement modes.
//!
//! Every expected ACK is written out in full from the HL7 v2 rules (MSH-3/4 swapped with
//! MSH-5/6, sender's delimiters, MSH-9 form by version, ERR form by version, table 0357 codes).
//! A property test then answers headers with every usable field separator and any MSH-2, and
//! reads each ACK back with mfoundry's own parser.

use crate::common;

use mfoundry::hl7::{AckCode, Charset, Delimiters, Message};
use mfoundry::ingest::Reply;
use proptest::prelude::*;

/// Segments joined with the HL7 terminator `\r`.
fn segments(lines: &[&str]) -> String {
    lines.iter().map(|line| format!("{line}\r")).collect()
}

fn reply(message: &[u8]) -> Reply {
    common::reply_to(message, Charset::UTF_8)
}

fn ack_text(message: &[u8]) -> String {
    match reply(message) {
        Reply::Ack { bytes, .. } => String::from_utf8(bytes).expect("ACK is UTF-8 here"),
        other => panic!("expected an ACK, got {other:?}"),
    }
}

#[test]
fn accept_v23_uses_plain_ack_type() {
    let message = segments(&[
        "MSH|^~\\&|LAB|LABFAC|HUB|HUBFAC|20261122080000||ORU^R01|C23|P|2.3",
        "PID|1||1",
    ]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|HUB|HUBFAC|LAB|LABFAC|20261122083000+0000||ACK|ACK00001|P|2.3",
            "MSA|AA|C23",
        ])
    );
}

#[test]
fn accept_v231_uses_plain_ack_type() {
    let message = segments(&["MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A08^ADT_A01|C231|T|2.3.1"]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK|ACK00001|T|2.3.1",
            "MSA|AA|C231",
        ])
    );
}

#[test]
fn accept_v24_and_v251_use_structured_ack_type() {
    for version in ["2.4", "2.5.1"] {
        let message = segments(&[&format!(
            "MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A04^ADT_A01|C{version}|P|{version}"
        )]);
        assert_eq!(
            ack_text(message.as_bytes()),
            segments(&[
                &format!(
                    "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A04^ACK|ACK00001|P|{version}"
                ),
                &format!("MSA|AA|C{version}"),
            ]),
            "version {version}"
        );
    }
}

#[test]
fn accept_v27_with_custom_delimiters_and_truncation_character() {
    let message = segments(&[
        "MSH!@*$%#!A@1.2.3@ISO!AF!B!BF!20261122080000!!ADT@A01@ADT_A01!C27!P!2.7",
        "PID!1!!1@@@H@MR*2@@@N@SS",
    ]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH!@*$%#!B!BF!A@1.2.3@ISO!AF!20261122083000+0000!!ACK@A01@ACK!ACK00001!P!2.7",
            "MSA!AA!C27",
        ])
    );
}

#[test]
fn enhanced_mode_answers_commit_codes_as_msh15_asks() {
    let with_msh15 = |msh15: &str, control_id: &str| {
        segments(&[&format!(
            "MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A01^ADT_A01|{control_id}|P|2.5.1|||{msh15}|NE"
        )])
    };
    assert_eq!(
        ack_text(with_msh15("AL", "E1").as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|CA|E1",
        ])
    );
    assert_eq!(
        reply(with_msh15("NE", "E2").as_bytes()),
        Reply::Suppressed { code: AckCode::CA }
    );
    assert_eq!(
        reply(with_msh15("ER", "E3").as_bytes()),
        Reply::Suppressed { code: AckCode::CA }
    );
    assert_eq!(
        ack_text(with_msh15("SU", "E4").as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|CA|E4",
        ])
    );
    // NE|AL is original mode in all but name: the application ACK AA answers.
    assert_eq!(
        ack_text(
            segments(&["MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A01^ADT_A01|E5|P|2.5.1|||NE|AL",])
                .as_bytes()
        ),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|AA|E5",
        ])
    );
    // A rejected message: ER answers CR, SU and NE stay silent.
    let rejected = |msh15: &str| {
        segments(&[&format!(
            "MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A01^ADT_A01||P|2.5.1|||{msh15}|NE"
        )])
    };
    assert_eq!(
        ack_text(rejected("ER").as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|CR||MSH-10 (message control id) is empty; it is required",
            "ERR||MSH^1^10|101^Required field missing^HL70357|E||||MSH-10 (message control id) is empty; it is required",
        ])
    );
    assert_eq!(
        reply(rejected("SU").as_bytes()),
        Reply::Suppressed { code: AckCode::CR }
    );
    assert_eq!(
        reply(rejected("NE").as_bytes()),
        Reply::Suppressed { code: AckCode::CR }
    );
}

#[test]
fn nack_v23_carries_err1_and_msa3() {
    let message = segments(&["MSH|^~\\&|A|AF|B|BF|20261122080000|||C9|P|2.3"]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK|ACK00001|P|2.3",
            "MSA|AR|C9|MSH-9 (message type) is empty; it is required",
            "ERR|MSH^1^9^101&Required field missing&HL70357",
        ])
    );
}

#[test]
fn nack_v24_escapes_reason_and_falls_back_to_standard_encoding_characters() {
    let message = segments(&["MSH|^^\\&|A|AF|B|BF|20261122080000||ADT^A04|C4|P|2.4"]);
    let reason = "MSH-2 encoding characters are unusable: character 2 repeats the field separator or an earlier delimiter; use \\S\\\\R\\\\E\\\\T\\ (or \\S\\\\R\\\\E\\\\T\\# from v2.7)";
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A04^ACK|ACK00001|P|2.4",
            &format!("MSA|AR|C4|{reason}"),
            "ERR|MSH^1^2^102&Data type error&HL70357",
        ])
    );
}

#[test]
fn nack_v251_carries_err2_to_err8_and_msa3() {
    let message = segments(&["MSH|^~\\&|A|AF|B|BF|20261122080000||^A01|C251|P|2.5.1"]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|AR|C251|MSH-9 (message type) is empty; it is required",
            "ERR||MSH^1^9|101^Required field missing^HL70357|E||||MSH-9 (message type) is empty; it is required",
        ])
    );
}

#[test]
fn nack_v27_custom_delimiters_drops_msa3_and_locates_invalid_utf8() {
    let mut message =
        b"MSH!@*$%#!A!AF!B!BF!20261122080000!!ADT@A01@ADT_A01!C7!P!2.7!!!!!!UNICODE UTF-8\r"
            .to_vec();
    let offset = message.len() + "PID!1!!123!!B".len();
    message.extend_from_slice(b"PID!1!!123!!B\xC3\x28D\r");
    let expected = segments(&[
        "MSH!@*$%#!B!BF!A!AF!20261122083000+0000!!ACK@A01@ACK!ACK00001!P!2.7!!!!!!UNICODE UTF-8",
        "MSA!AR!C7",
        &format!(
            "ERR!!PID@1@5!102@Data type error@HL70357!E!!!first invalid byte at offset {offset} of the frame!PID-5 holds bytes that are not valid UTF-8 as MSH-18 declares; fix the sender's encoding or MSH-18"
        ),
    ]);
    assert_eq!(ack_text(&message), expected);
}

#[test]
fn batch_frame_gets_a_batch_of_acks() {
    // FHS-11 and BHS-11 are the control ids; the answer's FHS-12 and BHS-12 name them, its
    // apps are swapped, and each message gets its own ACK (ADR 0014).
    let message = segments(&[
        "FHS|^~\\&|A|AF|B|BF|20261122080000||||FILE7",
        "BHS|^~\\&|A|AF|B|BF|20261122080000||||BATCH7",
        "MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A04^ADT_A01|M1|P|2.5.1",
        "PID|1",
        "BTS|1",
        "FTS|1",
    ]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "FHS|^~\\&|B|BF|A|AF|20261122083000+0000||||ACK00001.1|FILE7",
            "BHS|^~\\&|B|BF|A|AF|20261122083000+0000||||ACK00001.2|BATCH7",
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A04^ACK|ACK00001|P|2.5.1",
            "MSA|AA|M1",
            "BTS|1",
            "FTS|1",
        ])
    );
}

#[test]
fn several_messages_in_one_frame_are_rejected() {
    let message = segments(&[
        "MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A01^ADT_A01|FIRST|P|2.5.1",
        "PID|1",
        "MSH|^~\\&|A|AF|B|BF|20261122080000||ADT^A01^ADT_A01|SECOND|P|2.5.1",
        "PID|2",
    ]);
    let reason =
        "the frame holds more than one MSH segment; send each message in its own MLLP frame";
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            &format!("MSA|AR|FIRST|{reason}"),
            &format!("ERR|||100^Segment sequence error^HL70357|E||||{reason}"),
        ])
    );
}

#[test]
fn batch_without_messages_echoes_no_version_fields() {
    let message = segments(&[
        "FHS|^~\\&|A|AF|B|BF|20261122080000||name^part||F1|REF9",
        "FTS|0",
    ]);
    let reason = "the batch cannot be read: the batch holds no message (no MSH segment)";
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^~\\&|B|BF|A|AF|20261122083000+0000||ACK|ACK00001||",
            &format!("MSA|AR|F1|{reason}"),
            &format!("ERR|||100^Segment sequence error^HL70357|E||||{reason}"),
        ])
    );
}

#[test]
fn received_acks_are_not_acknowledged() {
    let ack = segments(&[
        "MSH|^~\\&|A|AF|B|BF|20261122080000||ACK^A01^ACK|A1|P|2.5.1",
        "MSA|AA|X1",
    ]);
    assert_eq!(reply(ack.as_bytes()), Reply::Ignore);
}

#[test]
fn unreadable_header_gets_no_ack_and_empty_frame_is_ignored() {
    assert_eq!(reply(b"PID|1||x\r"), Reply::Close);
    assert_eq!(reply(b"MSH"), Reply::Close);
    assert_eq!(reply(b"\r\n"), Reply::Ignore);
    assert_eq!(reply(b""), Reply::Ignore);
}

#[tokio::test]
async fn ack_on_the_wire_is_one_exact_mllp_frame() {
    let app = common::start(&[]).await;
    let mut stream = common::connect(&app).await;
    common::write(&mut stream, &common::framed(&common::adt("WIRE1", "2.5.1"))).await;
    let ack = common::expect_ack(&mut stream).await;
    assert_eq!(
        String::from_utf8(ack).expect("utf-8"),
        segments(&[
            "MSH|^~\\&|RECVAPP|RECVFAC|SENDAPP|SENDFAC|20261122083000+0000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|AA|WIRE1",
        ])
    );
}

#[test]
fn sign_delimiters_get_msh7_in_utc_without_offset() {
    let message = segments(&["MSH+^~\\&+A+AF+B+BF+20261122080000++ADT^A01^ADT_A01+C1+P+2.5.1"]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH+^~\\&+B+BF+A+AF+20261122083000++ACK^A01^ACK+ACK00001+P+2.5.1",
            "MSA+AA+C1",
        ])
    );
    let message = segments(&["MSH|^-\\&|A|AF|B|BF|20261122080000||ADT^A01^ADT_A01|C2|P|2.5.1"]);
    assert_eq!(
        ack_text(message.as_bytes()),
        segments(&[
            "MSH|^-\\&|B|BF|A|AF|20261122083000||ACK^A01^ACK|ACK00001|P|2.5.1",
            "MSA|AA|C2",
        ])
    );
}

#[test]
fn unusable_msh2_falls_back_to_characters_apart_from_the_field_separator() {
    // Field separator `^`, MSH-2 `~\&` (too short): the standard `^` would split fields.
    let message = segments(&["MSH^~\\&^A^AF^B^BF^20261122080000^^ADT^C3^P^2.5.1"]);
    let ack = ack_text(message.as_bytes());
    assert!(
        ack.starts_with("MSH^!~\\&^"),
        "component separator moves off the field separator: {ack}"
    );
    let parsed = Message::parse(bytes::Bytes::from(ack.into_bytes())).expect("ACK parses");
    assert!(parsed.delimiter_error().is_none());
    assert_eq!(parsed.value("MSA-1"), Some(&b"AR"[..]));
    assert_eq!(parsed.value("MSA-2"), Some(&b"C3"[..]));
    assert_eq!(parsed.header_field(10), b"ACK00001");
}

/// Every byte HL7 allows as a field separator (printable ASCII, not a letter or digit).
fn separators() -> Vec<u8> {
    (b'!'..=b'~')
        .filter(|byte| !byte.is_ascii_alphanumeric())
        .collect()
}

/// A usable MSH-2 (four or five distinct separators, none the field separator) or any
/// printable bytes without it (too short, too long, repeats, letters, spaces …).
fn encoding_characters(field: u8) -> BoxedStrategy<Vec<u8>> {
    let others: Vec<u8> = separators()
        .into_iter()
        .filter(|&byte| byte != field)
        .collect();
    let usable = (4usize..=5)
        .prop_flat_map(move |length| {
            Just(others.clone())
                .prop_shuffle()
                .prop_map(move |shuffled| shuffled[..length].to_vec())
        })
        .boxed();
    let printable: Vec<u8> = (b' '..=b'~').filter(|&byte| byte != field).collect();
    let anything = proptest::collection::vec(proptest::sample::select(printable), 0..8).boxed();
    prop_oneof![usable, anything].boxed()
}

fn header() -> impl Strategy<Value = (u8, Vec<u8>, String, &'static str)> {
    proptest::sample::select(separators()).prop_flat_map(|field| {
        (
            Just(field),
            encoding_characters(field),
            "[A-Za-z0-9]{1,12}",
            proptest::sample::select(vec!["2.3", "2.4", "2.5.1", "2.7", ""]),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever MSH-1 and MSH-2 a sender uses, the ACK reads back with its own MSH-1/MSH-2,
    /// fields in place, MSH-7 free of delimiters and MSA-2 the received control id.
    #[test]
    fn every_ack_parses_back_with_its_own_delimiters(
        (field, msh2, control_id, version) in header()
    ) {
        let separator = char::from(field);
        let component = msh2.first().map(|&byte| char::from(byte).to_string()).unwrap_or_default();
        let mut frame = format!("MSH{separator}").into_bytes();
        frame.extend_from_slice(&msh2);
        frame.extend_from_slice(
            format!(
                "{separator}A{separator}AF{separator}B{separator}BF{separator}20261122080000\
                 {separator}{separator}ADT{component}A01{separator}{control_id}{separator}P\
                 {separator}{version}\rPID{separator}1\r"
            )
            .as_bytes(),
        );
        let received = Message::parse(bytes::Bytes::from(frame.clone())).expect("header reads");
        prop_assert_eq!(received.header_field(10), control_id.as_bytes());
        let Reply::Ack { bytes, code } = reply(&frame) else {
            return Err(TestCaseError::fail("an ACK is expected for a readable header"));
        };

        let ack = Message::parse(bytes::Bytes::from(bytes)).expect("ACK has a header");
        prop_assert!(ack.delimiter_error().is_none(), "ACK MSH-2 unusable: {:?}", ack.delimiter_error());
        prop_assert_eq!(ack.header_field(1), &[field][..]);
        let declared = ack.header_field(2);
        prop_assert_eq!(declared, ack.delimiters().encoding_characters());
        if received.delimiter_error().is_none() {
            prop_assert_eq!(declared, msh2.as_slice());
        }
        let parsed = Delimiters::parse(field, declared);
        prop_assert!(parsed.is_ok(), "ACK MSH-1/MSH-2 not distinct: {:?}", parsed);

        let delimiters: Vec<u8> = std::iter::once(field).chain(declared.iter().copied()).collect();
        let timestamp = ack.header_field(7);
        prop_assert!(!timestamp.iter().any(|byte| delimiters.contains(byte)));
        if delimiters.contains(&b'+') || delimiters.contains(&b'-') {
            prop_assert_eq!(timestamp, b"20261122083000");
        } else {
            prop_assert_eq!(timestamp, b"20261122083000+0000");
        }
        prop_assert_eq!(ack.header_component(9, 1), b"ACK");
        prop_assert_eq!(ack.header_field(10), b"ACK00001");

        let msa = ack.segment(b"MSA", 1);
        prop_assert!(msa.is_some(), "ACK has no MSA");
        let msa = msa.expect("checked");
        prop_assert_eq!(msa.field(1), Some(code.as_str().as_bytes()));
        prop_assert_eq!(msa.field(2), Some(control_id.as_bytes()));
    }
}
