//! What leaves the store, and what cannot be read: retention keeps what a connector still
//! needs and wakes nothing; every append has a chained audit record and pruning keeps the
//! chain verifiable; damaged records are stepped over, named and removable, not a stall.

use super::*;

use mfoundry::outbox::Seq;

#[tokio::test]
async fn retention_keeps_what_a_connector_still_needs_and_wakes_nothing() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a", "b"])).expect("opens");
    let a = outbox.connector_id("a").expect("a");
    let b = outbox.connector_id("b").expect("b");
    let waker_b = outbox.waker(b).expect("waker");
    // 1: a only; 2: a and b; 3: filtered everywhere (unrouted).
    let one = stored(
        outbox
            .append(message(&outbox, "R1", &["a"], &["b"]))
            .await
            .expect("1"),
    );
    let two = stored(
        outbox
            .append(message(&outbox, "R2", &["a", "b"], &[]))
            .await
            .expect("2"),
    );
    let three = stored(
        outbox
            .append(message(&outbox, "R3", &[], &["a", "b"]))
            .await
            .expect("3"),
    );
    // Message 2 was queued for b: its waker holds a permit.
    tokio::time::timeout(std::time::Duration::from_secs(1), waker_b.notified())
        .await
        .expect("b was woken by the commit that queued for it");
    assert!(
        outbox
            .mark_delivered(a, Seq::from(one), 1)
            .await
            .expect("mark")
    );
    assert!(
        outbox
            .mark_delivered(a, Seq::from(two), 1)
            .await
            .expect("mark")
    );
    let retained = outbox.retain(i64::MAX, None, 100).await.expect("retain");
    assert_eq!(
        retained.removed, 2,
        "1 (delivered) and 3 (unrouted) go; 2 waits for b"
    );
    assert_eq!(retained.resume_after, None);
    let snapshot = outbox.snapshot().expect("snapshot");
    let left: Vec<MessageId> = snapshot
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, vec![two]);
    let history = snapshot.deliveries(two).expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].0, a);
    assert_eq!(
        history[0].1.status,
        mfoundry::outbox::DeliveryStatus::Delivered
    );
    drop(snapshot);
    // A cutoff before the receive time keeps everything.
    assert!(
        outbox
            .mark_delivered(b, Seq::from(two), 1)
            .await
            .expect("mark")
    );
    assert_eq!(
        outbox.retain(0, None, 100).await.expect("retain").removed,
        0
    );
    assert_eq!(
        outbox
            .retain(i64::MAX, None, 100)
            .await
            .expect("retain")
            .removed,
        1
    );
    // The newest message is gone, yet the next id is new.
    let next = outbox
        .append(message(&outbox, "R4", &["a"], &[]))
        .await
        .expect("4");
    assert_eq!(
        next,
        Appended::Stored {
            id: MessageId(three.0 + 1)
        }
    );
    drop(outbox);
    writer.join();
}

#[tokio::test]
async fn every_append_has_a_chained_audit_record_and_pruning_keeps_the_chain_verifiable() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    for index in 0..5 {
        outbox
            .append(message(&outbox, &format!("A{index}"), &["a"], &[]))
            .await
            .expect("stored");
    }
    let records = outbox
        .read(|snapshot| snapshot.audit_records(None, 100))
        .await
        .expect("records");
    assert_eq!(records.len(), 5, "one receive record per message");
    let report = outbox
        .read(|snapshot| snapshot.verify_audit())
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");

    let future = mfoundry::outbox::now_micros() + 60_000_000;
    assert_eq!(outbox.prune_audit(future, 2).await.expect("prune"), 2);
    let report = outbox
        .read(|snapshot| snapshot.verify_audit())
        .await
        .expect("verify");
    assert!(report.is_intact(), "pruning is not tampering: {report:?}");
    assert_eq!(report.first_seq, Some(2));
    // Everything older than the cutoff, but never the newest record.
    assert_eq!(outbox.prune_audit(future, 100).await.expect("prune"), 2);
    let report = outbox
        .read(|snapshot| snapshot.verify_audit())
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.first_seq, report.last_seq), (Some(4), Some(4)));
    // The chain goes on from the kept record.
    outbox
        .append(message(&outbox, "A5", &["a"], &[]))
        .await
        .expect("stored");
    let report = outbox
        .read(|snapshot| snapshot.verify_audit())
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.last_seq, Some(5));
    // Nothing is pruned before the cutoff.
    assert_eq!(outbox.prune_audit(0, 100).await.expect("prune"), 0);
    // Pruning in the same group commit as appends (the retention task runs next to intake).
    for index in 0..50 {
        let (appended, pruned) = tokio::join!(
            outbox.append(message(&outbox, &format!("J{index}"), &["a"], &[])),
            outbox.prune_audit(future, 10),
        );
        appended.expect("an append next to pruning is stored");
        pruned.expect("pruning next to an append works");
    }
    let report = outbox
        .read(|snapshot| snapshot.verify_audit())
        .await
        .expect("verify");
    assert!(report.is_intact(), "{report:?}");
    drop(outbox);
    writer.join();
}

/// Flip one bit near the end of a stored value (inside the part its checksum covers).
fn flip_last_byte(value: &[u8]) -> Vec<u8> {
    let mut damaged = value.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    damaged
}

#[tokio::test]
async fn damaged_records_are_stepped_over_named_and_removable_not_a_stall() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("mfoundry.redb");
    let open = || Outbox::open(OutboxOptions::new(path.clone()), &names(&["a"])).expect("opens");
    let (outbox, writer) = open();
    let a = outbox.connector_id("a").expect("a");
    let mut first = message(&outbox, "M1", &["a"], &[]);
    first.dedup_key = Some([9; 32]);
    let ids: Vec<MessageId> = {
        let mut ids = vec![stored(outbox.append(first.clone()).await.expect("1"))];
        for control_id in ["M2", "M3"] {
            let appended = outbox.append(message(&outbox, control_id, &["a"], &[]));
            ids.push(stored(appended.await.expect("stored")));
        }
        ids
    };
    let seqs: Vec<Seq> = outbox
        .snapshot()
        .expect("snapshot")
        .queue(a)
        .expect("queue")
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    drop(outbox);
    writer.join();

    // Bit rot: the first message's record and the second message's queue entry.
    {
        let database = mfoundry::outbox::datafile::open_raw(&path).expect("redb");
        let transaction = database.begin_write().expect("write");
        {
            use redb::ReadableTable;
            let mut messages = transaction
                .open_table(mfoundry::outbox::schema::MESSAGES)
                .expect("messages");
            let value = flip_last_byte(messages.get(ids[0].0).expect("get").expect("M1").value());
            messages.insert(ids[0].0, value.as_slice()).expect("insert");
            let mut queue = transaction
                .open_table(mfoundry::outbox::schema::QUEUE)
                .expect("queue");
            let value = flip_last_byte(
                queue
                    .get((a.0, seqs[1].0))
                    .expect("get")
                    .expect("M2")
                    .value(),
            );
            queue
                .insert((a.0, seqs[1].0), value.as_slice())
                .expect("insert");
        }
        transaction.commit().expect("commit");
    }

    let (outbox, writer) = open();
    let pending = outbox
        .snapshot()
        .expect("snapshot")
        .pending(a, None, 10, 1 << 20)
        .expect("a damaged record does not fail the read of the queue");
    assert_eq!(pending.len(), 3);
    assert!(
        pending[0]
            .damage
            .as_deref()
            .is_some_and(|damage| damage.contains("stored message is damaged")),
        "{:?}",
        pending[0].damage
    );
    assert!(
        pending[1]
            .damage
            .as_deref()
            .is_some_and(|damage| damage.contains("queue entry itself is damaged")),
        "{:?}",
        pending[1].damage
    );
    assert_eq!(
        pending[1].entry.message_id,
        mfoundry::outbox::schema::UNKNOWN_MESSAGE,
        "its message cannot be known"
    );
    assert!(pending[2].damage.is_none());

    // The damaged entry can leave the queue (as the delivery worker moves it), and purged.
    assert!(
        outbox
            .dead_letter(a, seqs[1], 0, "damaged".to_owned())
            .await
            .expect("a damaged queue entry can be dead-lettered")
    );
    let snapshot = outbox.snapshot().expect("snapshot");
    let dead = snapshot.dead_letters(a).expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].0, dead[0].1.message_id),
        (seqs[1], mfoundry::outbox::schema::UNKNOWN_MESSAGE)
    );
    assert!(
        snapshot
            .deliveries(mfoundry::outbox::schema::UNKNOWN_MESSAGE)
            .expect("deliveries")
            .is_empty(),
        "nothing is recorded for an unknown message"
    );
    drop(snapshot);
    assert!(outbox.purge(a, seqs[1]).await.expect("purged"));

    // Retention steps over the damaged message record and keeps it, and goes on past it.
    assert!(outbox.mark_delivered(a, seqs[2], 1).await.expect("marked"));
    let retained = outbox
        .retain(i64::MAX, None, 100)
        .await
        .expect("retention is not stopped by a damaged record");
    assert_eq!((retained.damaged, retained.removed), (1, 1), "{retained:?}");
    let snapshot = outbox.snapshot().expect("snapshot");
    assert!(
        snapshot.message(ids[2]).expect("read").is_none(),
        "M3 removed"
    );
    assert!(snapshot.message(ids[0]).is_err(), "M1 kept, still damaged");
    drop(snapshot);

    // A retransmission of the damaged message is taken as a new message, not refused.
    let again = outbox.append(first).await.expect("accepted");
    assert!(matches!(again, Appended::Stored { .. }), "{again:?}");
    drop(outbox);
    writer.join();
}
