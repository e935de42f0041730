//! MSH-18 character sets: declared encodings are checked, bytes always travel unchanged.

use crate::common;

use bytes::Bytes;
use common::{connect, expect_ack, field, framed, start, write};
use mfoundry::hl7::{Charset, Message};
use mfoundry::ingest::Reply;
use proptest::prelude::*;

/// Field `number` of the MSH segment of an ACK, as raw bytes.
fn msh_bytes(ack: &[u8], number: usize) -> Vec<u8> {
    let end = ack
        .iter()
        .position(|&byte| byte == b'\r')
        .unwrap_or(ack.len());
    ack[..end]
        .split(|&byte| byte == b'|')
        .nth(number - 1)
        .unwrap_or_default()
        .to_vec()
}

#[tokio::test]
async fn iso_8859_1_names_round_trip_byte_identical() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let facility = b"Kr\xe4nkenhaus G\xf6ttingen".to_vec();
    let mut message = b"MSH|^~\\&|ADT|".to_vec();
    message.extend_from_slice(&facility);
    message.extend_from_slice(b"|HUB|HUBFAC|20261122080000||ADT^A01^ADT_A01|L1|P|2.5|||||DEU|8859/1\rPID|1||1||M\xfcller^J\xfcrgen\r");
    write(&mut stream, &framed(&message)).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(
        msh_bytes(&ack, 6),
        facility,
        "sending facility echoed byte for byte"
    );
    assert_eq!(msh_bytes(&ack, 18), b"8859/1");

    let parsed = Message::parse(Bytes::from(message.clone())).expect("parses");
    assert_eq!(parsed.raw().as_ref(), message.as_slice());
    let charset = parsed.charset(Charset::UTF_8).charset();
    let name = parsed.value("PID-5.1").expect("PID-5.1");
    assert_eq!(charset.decode(name), "Müller");
}

#[tokio::test]
async fn utf8_names_round_trip_byte_identical() {
    let app = start(&[("DEFAULT_CHARACTER_SET", "8859/1")]).await;
    let mut stream = connect(&app).await;
    let facility = "Hôpital Zürich 東京".as_bytes().to_vec();
    let mut message = b"MSH|^~\\&|ADT|".to_vec();
    message.extend_from_slice(&facility);
    message.extend_from_slice(
        "|HUB|HUBFAC|20261122080000||ADT^A01^ADT_A01|U1|P|2.5.1||||||UNICODE UTF-8\rPID|1||1||Ødegård^Zoë\r"
            .as_bytes(),
    );
    write(&mut stream, &framed(&message)).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 1), "AA");
    assert_eq!(msh_bytes(&ack, 6), facility);
    assert_eq!(msh_bytes(&ack, 18), b"UNICODE UTF-8");
    let parsed = Message::parse(Bytes::from(message)).expect("parses");
    let charset = parsed.charset(Charset::from_name("8859/1").expect("latin1"));
    assert_eq!(
        charset.charset(),
        Charset::UTF_8,
        "MSH-18 wins over the default"
    );
    assert_eq!(
        charset
            .charset()
            .decode(parsed.value("PID-5.2").expect("given")),
        "Zoë"
    );
}

#[tokio::test]
async fn invalid_utf8_declared_as_utf8_gets_ar_with_err() {
    let app = start(&[]).await;
    let mut stream = connect(&app).await;
    let message = b"MSH|^~\\&|ADT|FAC|HUB|HUBFAC|20261122080000||ADT^A01^ADT_A01|BAD8|P|2.5.1||||||UNICODE UTF-8\rPID|1||1||M\xfcller\r";
    write(&mut stream, &framed(message)).await;
    let ack = expect_ack(&mut stream).await;
    assert_eq!(field(&ack, "MSA", 1), "AR");
    assert_eq!(field(&ack, "MSA", 2), "BAD8");
    assert_eq!(field(&ack, "ERR", 2), "PID^1^5");
    assert_eq!(field(&ack, "ERR", 3), "102^Data type error^HL70357");
    assert!(field(&ack, "ERR", 8).contains("not valid UTF-8"));
    assert!(
        !String::from_utf8_lossy(&ack).contains("ller"),
        "no message text in the ACK"
    );
    // The connection survives the rejection.
    write(&mut stream, &framed(&common::adt("OK8", "2.5.1"))).await;
    assert_eq!(field(&expect_ack(&mut stream).await, "MSA", 1), "AA");
}

#[test]
fn undeclared_or_unknown_charsets_are_not_enforced() {
    for msh18 in ["", "KLINGON"] {
        let message =
            format!("MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|X|P|2.5||||||{msh18}\rPID|1||1||M");
        let mut bytes = message.into_bytes();
        bytes.extend_from_slice(b"\xfcller\r");
        match common::reply_to(&bytes, Charset::UTF_8) {
            Reply::Ack { code, .. } => assert_eq!(code.as_str(), "AA", "MSH-18 {msh18:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_utf8_is_enforced_exactly(
        body in proptest::collection::vec(any::<u8>(), 0..200)
    ) {
        let mut message = b"MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|P1|P|2.5.1||||||UNICODE UTF-8\rPID|".to_vec();
        message.extend_from_slice(&body);
        let valid = std::str::from_utf8(&message).is_ok();
        match common::reply_to(&message, Charset::UTF_8) {
            Reply::Ack { code, .. } => prop_assert_eq!(code.is_accept(), valid),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = common::reply_to(&frame, Charset::UTF_8);
        let mut with_header = b"MSH".to_vec();
        with_header.extend_from_slice(&frame);
        let _ = common::reply_to(&with_header, Charset::UTF_8);
    }
}
