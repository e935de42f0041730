//! What an append stores: fan-out is FIFO per connector and records filtered routes (ids grow,
//! connector ids stay across a reopen), large bodies are stored apart and read back
//! unchanged, identical frames within the dedup window are stored once, and dedup records
//! expire after the window.

use super::*;

use mfoundry::outbox::ConnectorId;

#[tokio::test]
async fn fan_out_is_fifo_per_connector_and_records_filtered_routes() {
    let memory = MemoryDisk::default();
    let (outbox, writer) =
        Outbox::open(options_with(&memory), &names(&["a", "b", "c"])).expect("opens");
    let mut stored_ids = Vec::new();
    for index in 0..20 {
        let queued: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|name| match *name {
                "a" => true,
                "b" => index % 2 == 0,
                _ => index % 3 == 0,
            })
            .collect();
        let filtered: Vec<&str> = ["b", "c"]
            .into_iter()
            .filter(|name| !queued.contains(name))
            .collect();
        let appended = outbox
            .append(message(&outbox, &format!("M{index}"), &queued, &filtered))
            .await
            .expect("stored");
        stored_ids.push(stored(appended));
    }
    assert!(
        stored_ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids grow with each message"
    );
    let snapshot = outbox.snapshot().expect("snapshot");
    let ids = |name: &str| -> Vec<MessageId> {
        snapshot
            .queue(outbox.connector_id(name).expect("id"))
            .expect("queue")
            .into_iter()
            .map(|(_, entry)| entry.message_id)
            .collect()
    };
    assert_eq!(ids("a"), stored_ids);
    assert_eq!(
        ids("b"),
        stored_ids.iter().copied().step_by(2).collect::<Vec<_>>()
    );
    assert_eq!(
        ids("c"),
        stored_ids.iter().copied().step_by(3).collect::<Vec<_>>()
    );
    let second = snapshot
        .message(stored_ids[1])
        .expect("read")
        .expect("exists");
    let filtered: Vec<_> = second
        .routes
        .iter()
        .filter(|route| route.status == RouteStatus::Filtered)
        .map(|route| route.connector)
        .collect();
    assert_eq!(
        filtered,
        vec![
            outbox.connector_id("b").expect("b"),
            outbox.connector_id("c").expect("c")
        ]
    );
    assert_eq!(
        snapshot.body(stored_ids[1]).expect("read").as_deref(),
        Some(&b"MSH|M1"[..])
    );
    drop(snapshot);
    drop(outbox);
    writer.join();

    // Reopened: same connector ids, new ids continue above the old ones.
    let (outbox, writer) =
        Outbox::open(options_with(&memory), &names(&["c", "new", "a"])).expect("reopens");
    assert_eq!(outbox.connector_id("a"), Some(ConnectorId(1)));
    assert_eq!(outbox.connector_id("c"), Some(ConnectorId(3)));
    assert_eq!(outbox.connector_id("new"), Some(ConnectorId(4)));
    let appended = outbox
        .append(message(&outbox, "after", &["a"], &[]))
        .await
        .expect("stored");
    assert!(stored(appended) > stored_ids[19]);
    drop(outbox);
    writer.join();
}

#[tokio::test]
async fn large_bodies_are_stored_apart_and_read_back_unchanged() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    let mut small = message(&outbox, "SMALL", &["a"], &[]);
    small.body = Bytes::from(vec![b's'; 100]);
    let mut large = message(&outbox, "LARGE", &["a"], &[]);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    large.body = Bytes::from(big.clone());
    let small_id = stored(outbox.append(small).await.expect("stored"));
    let large_id = stored(outbox.append(large).await.expect("stored"));
    let snapshot = outbox.snapshot().expect("snapshot");
    assert_eq!(
        snapshot.body(small_id).expect("read"),
        Some(vec![b's'; 100])
    );
    assert_eq!(snapshot.body(large_id).expect("read"), Some(big));
    assert!(
        snapshot
            .message(small_id)
            .expect("read")
            .expect("exists")
            .body_inline
    );
    assert!(
        !snapshot
            .message(large_id)
            .expect("read")
            .expect("exists")
            .body_inline
    );
    assert_eq!(
        snapshot.body(MessageId(large_id.0 + 1)).expect("read"),
        None
    );
    drop(snapshot);
    drop(outbox);
    writer.join();
}

#[tokio::test]
async fn identical_frames_within_the_window_are_stored_once() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    let mut first = message(&outbox, "D1", &["a"], &[]);
    first.record.ack = Some(b"ACK-ORIGINAL".to_vec());
    first.dedup_key = Some([7; 32]);
    let mut again = first.clone();
    again.record.ack = Some(b"ACK-NEW".to_vec());
    let first_id = stored(outbox.append(first).await.expect("stored"));
    assert_eq!(
        outbox.append(again).await.expect("answered"),
        Appended::Duplicate {
            id: first_id,
            ack: Some(b"ACK-ORIGINAL".to_vec())
        }
    );
    let snapshot = outbox.snapshot().expect("snapshot");
    assert_eq!(snapshot.message_count().expect("count"), 1);
    assert_eq!(
        snapshot
            .queue(outbox.connector_id("a").expect("id"))
            .expect("queue")
            .len(),
        1
    );
    drop(snapshot);
    drop(outbox);
    writer.join();
}

#[tokio::test]
async fn dedup_records_expire_after_the_window() {
    let memory = MemoryDisk::default();
    let mut options = options_with(&memory);
    options.dedup_window = Some(std::time::Duration::from_millis(100));
    let (outbox, writer) = Outbox::open(options, &names(&["a"])).expect("opens");
    let now = || chrono::Utc::now().timestamp_micros();
    let mut first = message(&outbox, "E1", &["a"], &[]);
    first.record.received_at_micros = now();
    first.dedup_key = Some([1; 32]);
    let first_id = stored(outbox.append(first.clone()).await.expect("stored"));
    assert!(matches!(
        outbox.append(first.clone()).await.expect("answered"),
        Appended::Duplicate { id, .. } if id == first_id
    ));
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    // Any commit expires what is older than the window; then the same frame is new again.
    let mut other = message(&outbox, "E2", &["a"], &[]);
    other.record.received_at_micros = now();
    outbox.append(other).await.expect("stored");
    assert_eq!(
        outbox
            .stats()
            .dedup_entries
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the expired entry is gone, not just ignored"
    );
    first.record.received_at_micros = now();
    assert!(stored(outbox.append(first).await.expect("stored")).0 > first_id.0 + 1);
    drop(outbox);
    writer.join();
}
