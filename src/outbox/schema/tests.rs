//! The format's encodings read back what they wrote, and damage is told apart.

use super::*;

fn entry() -> QueueEntry {
    QueueEntry {
        message_id: MessageId(7),
        attempts: 2,
        next_attempt_micros: 99,
        last_error: Some("timeout".to_owned()),
        origin: Some(EntryRef {
            connector: ConnectorId(1),
            seq: Seq(5),
        }),
        history: vec![PastEntry {
            entry: EntryRef {
                connector: ConnectorId(1),
                seq: Seq(5),
            },
            attempts: 3,
            reason: "refused".to_owned(),
            failed_at_micros: 42,
        }],
        order_key: Some(77),
    }
}

/// A record of an older revision is read as today's (the upgrade path each later field
/// takes): revision 1 queue and dead-letter entries, in format 1's envelope and in
/// format 2's, and revision 2 queue entries, gain empty new fields.
#[test]
fn older_revisions_are_read_as_todays() {
    #[derive(Serialize)]
    struct QueueV1 {
        message_id: u64,
        attempts: u32,
        next_attempt_micros: i64,
        last_error: Option<String>,
    }
    #[derive(Serialize)]
    struct DlqV1 {
        message_id: u64,
        attempts: u32,
        reason: String,
        failed_at_micros: i64,
    }
    let v1 = postcard::to_stdvec(&QueueV1 {
        message_id: 9,
        attempts: 1,
        next_attempt_micros: 5,
        last_error: None,
    })
    .expect("encodes");
    let mut format1 = vec![LEGACY_ENVELOPE];
    format1.extend_from_slice(&v1);
    let expected = QueueEntry {
        message_id: MessageId(9),
        attempts: 1,
        next_attempt_micros: 5,
        ..QueueEntry::default()
    };
    assert_eq!(
        decode_plain::<QueueEntry>(&format1).expect("format 1"),
        expected
    );
    assert_eq!(
        decode_plain::<QueueEntry>(&seal(1, &v1)).expect("revision 1"),
        expected
    );
    let dead = postcard::to_stdvec(&DlqV1 {
        message_id: 9,
        attempts: 4,
        reason: "refused".to_owned(),
        failed_at_micros: 77,
    })
    .expect("encodes");
    let upgraded = decode_plain::<DlqEntry>(&seal(1, &dead)).expect("revision 1");
    assert_eq!((upgraded.attempts, upgraded.downstream), (4, None));
    assert!(matches!(
        decode_plain::<QueueEntry>(&seal(9, &v1)),
        Err(StoreError::Encoding(_))
    ));
    // Revision 2 (before keyed lanes): every field but `order_key`.
    #[derive(Serialize)]
    struct QueueV2 {
        message_id: MessageId,
        attempts: u32,
        next_attempt_micros: i64,
        last_error: Option<String>,
        origin: Option<EntryRef>,
        history: Vec<PastEntry>,
    }
    let today = entry();
    let v2 = postcard::to_stdvec(&QueueV2 {
        message_id: today.message_id,
        attempts: today.attempts,
        next_attempt_micros: today.next_attempt_micros,
        last_error: today.last_error.clone(),
        origin: today.origin,
        history: today.history.clone(),
    })
    .expect("encodes");
    assert_eq!(
        decode_plain::<QueueEntry>(&seal(2, &v2)).expect("revision 2"),
        QueueEntry {
            order_key: None,
            ..today
        }
    );
}

#[test]
fn records_round_trip_in_their_envelope() {
    let bytes = encode_plain(&entry()).expect("encodes");
    assert_eq!((bytes[0], bytes[1]), (ENVELOPE, QueueEntry::REVISION));
    assert_eq!(
        decode_plain::<QueueEntry>(&bytes).expect("decodes"),
        entry()
    );
    let mut future = bytes.clone();
    future[0] = 9;
    assert!(matches!(
        decode_plain::<QueueEntry>(&future),
        Err(StoreError::Encoding(_))
    ));
    assert!(decode_plain::<QueueEntry>(&[]).is_err());
}

/// Every single flipped bit of a record is caught by its checksum, never read as a
/// different record.
#[test]
fn any_flipped_bit_is_damage() {
    let bytes = encode_plain(&entry()).expect("encodes");
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        match decode_plain::<QueueEntry>(&flipped) {
            Err(StoreError::Damaged(_) | StoreError::Encoding(_)) => {}
            other => panic!("bit {bit}: {other:?}"),
        }
    }
}

/// Records of format 1 (a version byte, no checksum) are still read.
#[test]
fn records_of_format_1_are_read() {
    // A queue entry of format 1 had the first four fields; the later ones read as empty.
    let plain = QueueEntry {
        origin: None,
        history: Vec::new(),
        order_key: None,
        ..entry()
    };
    let mut legacy = vec![LEGACY_ENVELOPE];
    legacy.extend(postcard::to_stdvec(&plain).expect("encodes"));
    assert_eq!(decode_plain::<QueueEntry>(&legacy).expect("decodes"), plain);
    let record = MessageRecord {
        received_at_micros: 1,
        peer: "p".to_owned(),
        listener: "l".to_owned(),
        header: HeaderFields::default(),
        disposition: Disposition::Routed,
        reason: None,
        routes: Vec::new(),
        ack_code: "AA".to_owned(),
        body_len: 4,
        ack: None,
        dedup_key: None,
        body_inline: true,
        config: None,
    };
    // Revision 1's fields are today's without `config` (postcard writes fields in order:
    // today's encoding with `config: None` is revision 1's plus the `None` byte).
    let mut v1 = postcard::to_stdvec(&record).expect("encodes");
    assert_eq!(v1.pop(), Some(0), "config: None is the last byte");
    let mut legacy = vec![LEGACY_ENVELOPE];
    legacy.extend_from_slice(&v1);
    legacy.extend_from_slice(b"MSH|");
    let decoded = decode_message_checked(&Keys::plain(), 1, &legacy).expect("decodes");
    assert_eq!(decoded.record, record);
    assert_eq!(decoded.inline.as_deref(), Some(&b"MSH|"[..]));
    assert!(!decoded.checked);
    // Revision 1 in format 2's envelope (checked), its inline body after it.
    let sealed_v1 = seal(1, &[v1.as_slice(), b"MSH|"].concat());
    let decoded = decode_message_checked(&Keys::plain(), 1, &sealed_v1).expect("revision 1");
    assert_eq!(decoded.record, record);
    assert_eq!(decoded.inline.as_deref(), Some(&b"MSH|"[..]));
    assert!(decoded.checked);
    // Today's revision keeps the configuration's hash.
    let configured = MessageRecord {
        config: Some(*b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        ..record.clone()
    };
    let sealed = encode_message(&Keys::plain(), 1, &configured, Some(b"MSH|")).expect("encodes");
    let decoded = decode_message_checked(&Keys::plain(), 1, &sealed).expect("decodes");
    assert_eq!(decoded.record, configured);
    assert_eq!(decoded.inline.as_deref(), Some(&b"MSH|"[..]));
    let sealed = encode_message(&Keys::plain(), 1, &record, Some(b"MSH|")).expect("encodes");
    let decoded = decode_message_checked(&Keys::plain(), 1, &sealed).expect("decodes");
    assert!(decoded.checked);
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(matches!(
        decode_message_checked(&Keys::plain(), 1, &flipped),
        Err(StoreError::Damaged(_))
    ));
}
