//! The outbox on its own: FIFO per connector, atomic fan-out, dedup, failed commits, and a
//! model test against a plain in-memory queue model.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::MemoryDisk;
use mfoundry::outbox::{
    Appended, ConnectorId, Disposition, HeaderFields, MessageId, MessageRecord, NewMessage, Outbox,
    OutboxOptions, Route, RouteStatus, Seq,
};
use proptest::prelude::*;

fn options_with(memory: &MemoryDisk) -> OutboxOptions {
    OutboxOptions::with_storage(memory.storage())
}

/// The id a stored message got.
fn stored(appended: Appended) -> MessageId {
    match appended {
        Appended::Stored { id } => id,
        other => panic!("expected a stored message, got {other:?}"),
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

fn message(outbox: &Outbox, control_id: &str, queued: &[&str], filtered: &[&str]) -> NewMessage {
    let mut routes = Vec::new();
    for (names, status) in [
        (queued, RouteStatus::Queued),
        (filtered, RouteStatus::Filtered),
    ] {
        for name in names {
            routes.push(Route {
                connector: outbox.connector_id(name).expect("known connector"),
                status,
            });
        }
    }
    NewMessage {
        record: MessageRecord {
            received_at_micros: 1,
            peer: "127.0.0.1:1".to_owned(),
            listener: "mllp".to_owned(),
            header: HeaderFields {
                control_id: control_id.to_owned(),
                ..HeaderFields::default()
            },
            disposition: if queued.is_empty() {
                Disposition::Unrouted
            } else {
                Disposition::Routed
            },
            reason: None,
            ack_code: "AA".to_owned(),
            body_len: 3,
            routes,
            ack: None,
            dedup_key: None,
            body_inline: false,
        },
        body: Bytes::from(format!("MSH|{control_id}")),
        dedup_key: None,
        tls_identity: None,
        copies: Vec::new(),
    }
}

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
async fn a_failed_commit_stores_nothing_and_the_writer_recovers() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    outbox
        .append(message(&outbox, "BEFORE", &["a"], &[]))
        .await
        .expect("stored");
    memory.fail_sync.store(true, Ordering::SeqCst);
    let failed = outbox.append(message(&outbox, "DURING", &["a"], &[])).await;
    assert!(
        failed.is_err(),
        "a commit whose fsync failed must not report success"
    );
    memory.fail_sync.store(false, Ordering::SeqCst);
    let mut recovered = None;
    for _ in 0..20 {
        match outbox.append(message(&outbox, "AFTER", &["a"], &[])).await {
            Ok(appended) => {
                recovered = Some(appended);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    assert!(recovered.is_some(), "the writer reopens and carries on");
    assert!(outbox.stats().reopens.load(Ordering::Relaxed) >= 1);
    let stored = common::stored_control_ids(&outbox);
    assert!(stored.contains(&"BEFORE".to_owned()));
    assert!(stored.contains(&"AFTER".to_owned()));
    // The queue size /stats shows was counted again at the reopen: it is what the store holds.
    let id = outbox.connector_id("a").expect("id");
    let held = outbox
        .snapshot()
        .expect("snapshot")
        .queue_len(id)
        .expect("len");
    assert_eq!(outbox.depth(id).queued, held);
    drop(outbox);
    writer.join();
}

/// `stop` commits what was sent before it, answers what comes after with an error (never a
/// success), and closes the store so the writer can be joined while handles remain.
#[tokio::test]
async fn stop_commits_what_came_before_and_refuses_what_comes_after() {
    let memory = MemoryDisk::default();
    let (outbox, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("opens");
    let before = outbox.clone();
    let pending = tokio::spawn({
        let message = message(&outbox, "BEFORE", &["a"], &[]);
        async move { before.append(message).await }
    });
    // The append is in the channel before the stop (one sender keeps its order; wait until
    // the spawned task has sent it).
    while outbox.stats().records.load(Ordering::Relaxed) == 0 && !pending.is_finished() {
        tokio::task::yield_now().await;
    }
    outbox.stop().await.expect("stops");
    assert!(matches!(
        pending.await.expect("task"),
        Ok(Appended::Stored { .. })
    ));
    let after = outbox.append(message(&outbox, "AFTER", &["a"], &[])).await;
    assert!(
        after.is_err(),
        "nothing is stored after the stop: {after:?}"
    );
    // The handle still exists, yet the writer has stopped.
    writer.join();
    drop(outbox);
    let (reopened, writer) = Outbox::open(options_with(&memory), &names(&["a"])).expect("reopens");
    assert_eq!(common::stored_control_ids(&reopened), vec!["BEFORE"]);
    drop(reopened);
    writer.join();
}

#[derive(Clone, Debug)]
struct Step {
    targets: Vec<bool>,
    dedup_key: Option<u8>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        proptest::collection::vec(any::<bool>(), 3),
        proptest::option::of(0u8..4),
    )
        .prop_map(|(targets, dedup_key)| Step { targets, dedup_key })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// The outbox against a model: queues are the ordered lists of the ids routed to each
    /// connector; a repeated dedup key answers the first id and adds nothing.
    #[test]
    fn outbox_matches_a_simple_queue_model(steps in proptest::collection::vec(step(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let memory = MemoryDisk::default();
            let connectors = names(&["x", "y", "z"]);
            let (outbox, writer) = Outbox::open(options_with(&memory), &connectors).expect("opens");
            let mut model_queues: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            let mut model_dedup: HashMap<u8, u64> = HashMap::new();
            // Ids start where the store says (above the clock) and grow by one within a run.
            let mut next_id: Option<u64> = None;
            let mut stored_count = 0;
            for (index, step) in steps.iter().enumerate() {
                let queued: Vec<&str> = connectors.iter().zip(&step.targets)
                    .filter(|(_, on)| **on).map(|(name, _)| name.as_str()).collect();
                let mut new = message(&outbox, &format!("S{index}"), &queued, &[]);
                new.dedup_key = step.dedup_key.map(|key| [key; 32]);
                let appended = outbox.append(new).await.expect("append");
                match step.dedup_key.and_then(|key| model_dedup.get(&key).copied()) {
                    Some(original) => prop_assert_eq!(appended, Appended::Duplicate { id: MessageId(original), ack: None }),
                    None => {
                        let Appended::Stored { id } = appended else {
                            return Err(TestCaseError::fail(format!("expected a new message, got {appended:?}")));
                        };
                        let id = id.0;
                        if let Some(expected) = next_id {
                            prop_assert_eq!(id, expected);
                        }
                        if let Some(key) = step.dedup_key { model_dedup.insert(key, id); }
                        for name in &queued { model_queues.entry((*name).to_owned()).or_default().push(id); }
                        next_id = Some(id + 1);
                        stored_count += 1;
                    }
                }
            }
            let snapshot = outbox.snapshot().expect("snapshot");
            for name in &connectors {
                let actual: Vec<u64> = snapshot.queue(outbox.connector_id(name).expect("id")).expect("queue")
                    .into_iter().map(|(_, entry)| entry.message_id.0).collect();
                prop_assert_eq!(actual, model_queues.get(name).cloned().unwrap_or_default());
            }
            prop_assert_eq!(snapshot.message_count().expect("count"), stored_count);
            drop(snapshot);
            drop(outbox);
            writer.join();
            Ok(())
        })?;
    }
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

/// One step of the delivery-state model test.
#[derive(Clone, Debug)]
enum Op {
    /// Append a message queued for these connectors.
    Append(Vec<bool>),
    /// Connector n delivers its head.
    Deliver(usize),
    /// Connector n fails its head (stays at the head).
    Fail(usize),
    /// Connector n gives up on its head.
    DeadLetter(usize),
    /// Replay the oldest DLQ entry of connector n to connector m.
    Replay(usize, usize),
    /// Purge the oldest DLQ entry of connector n.
    Purge(usize),
    /// Run retention over everything.
    Retain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec(any::<bool>(), 3).prop_map(Op::Append),
        3 => (0usize..3).prop_map(Op::Deliver),
        1 => (0usize..3).prop_map(Op::Fail),
        2 => (0usize..3).prop_map(Op::DeadLetter),
        1 => (0usize..3, 0usize..3).prop_map(|(from, to)| Op::Replay(from, to)),
        1 => (0usize..3).prop_map(Op::Purge),
        1 => Just(Op::Retain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Queues, dead-letter queues and retention against a model: a message stays stored while
    /// any connector still has it queued or dead-lettered, and is removed by retention once
    /// every connector is done with it. Ids and seqs are never reused, even after the newest
    /// message is removed and the outbox is reopened.
    #[test]
    fn delivery_state_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let memory = MemoryDisk::default();
            let connectors = names(&["x", "y", "z"]);
            let (mut outbox, mut writer) = Outbox::open(options_with(&memory), &connectors).expect("opens");
            let ids: Vec<ConnectorId> = connectors.iter().map(|name| outbox.connector_id(name).expect("id")).collect();
            // Per connector: (seq, message id) in order.
            let mut queues: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 3];
            let mut dlqs: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 3];
            let mut stored: std::collections::BTreeSet<u64> = Default::default();
            let mut highest = 0u64;
            for (index, op) in ops.iter().enumerate() {
                match op {
                    Op::Append(targets) => {
                        let queued: Vec<&str> = connectors.iter().zip(targets)
                            .filter(|(_, on)| **on).map(|(name, _)| name.as_str()).collect();
                        let Appended::Stored { id } = outbox.append(message(&outbox, &format!("M{index}"), &queued, &[])).await.expect("append") else {
                            panic!("not a duplicate");
                        };
                        let id = id.0;
                        prop_assert!(id > highest, "id {} reused (highest so far {})", id, highest);
                        highest = id;
                        stored.insert(id);
                        for (n, on) in targets.iter().enumerate() {
                            if *on { queues[n].push((id, id)); }
                        }
                    }
                    Op::Deliver(n) => {
                        if let Some(&(seq, _)) = queues[*n].first() {
                            prop_assert!(outbox.mark_delivered(ids[*n], Seq(seq), 1).await.expect("mark"));
                            queues[*n].remove(0);
                        } else {
                            prop_assert!(!outbox.mark_delivered(ids[*n], Seq(1), 1).await.expect("mark"));
                        }
                    }
                    Op::Fail(n) => {
                        if let Some(&(seq, _)) = queues[*n].first() {
                            prop_assert!(outbox.record_failure(ids[*n], Seq(seq), 2, 5, "refused".to_owned()).await.expect("fail"));
                        }
                    }
                    Op::DeadLetter(n) => {
                        if let Some(&(seq, id)) = queues[*n].first() {
                            prop_assert!(outbox.dead_letter(ids[*n], Seq(seq), 3, "AR from peer".to_owned()).await.expect("dlq"));
                            queues[*n].remove(0);
                            dlqs[*n].push((seq, id));
                        }
                    }
                    Op::Replay(from, to) => {
                        if let Some(&(seq, id)) = dlqs[*from].first() {
                            let new_seq = outbox.replay(ids[*from], Seq(seq), Some(ids[*to])).await.expect("replay").expect("was there").0;
                            prop_assert!(new_seq > highest, "seq {} reused (highest so far {})", new_seq, highest);
                            highest = new_seq;
                            dlqs[*from].remove(0);
                            queues[*to].push((new_seq, id));
                        } else {
                            prop_assert_eq!(outbox.replay(ids[*from], Seq(1), None).await.expect("replay"), None);
                        }
                    }
                    Op::Purge(n) => {
                        if let Some(&(seq, _)) = dlqs[*n].first() {
                            prop_assert!(outbox.purge(ids[*n], Seq(seq)).await.expect("purge"));
                            dlqs[*n].remove(0);
                        }
                    }
                    Op::Retain => {
                        let mut after = None;
                        loop {
                            let retained = outbox.retain(i64::MAX, after, 7).await.expect("retain");
                            match retained.resume_after {
                                Some(next) => after = Some(next),
                                None => break,
                            }
                        }
                        stored.retain(|id| queues.iter().chain(&dlqs).any(|list| list.iter().any(|(_, held)| held == id)));
                        // Reopen now and then: the id floor must survive.
                        if index % 2 == 0 {
                            drop(outbox);
                            writer.join();
                            (outbox, writer) = Outbox::open(options_with(&memory), &connectors).expect("reopens");
                        }
                    }
                }
            }
            let snapshot = outbox.snapshot().expect("snapshot");
            for n in 0..3 {
                let queue: Vec<(u64, u64)> = snapshot.queue(ids[n]).expect("queue").into_iter().map(|(seq, entry)| (seq.0, entry.message_id.0)).collect();
                prop_assert_eq!(&queue, &queues[n]);
                let dlq: Vec<(u64, u64)> = snapshot.dead_letters(ids[n]).expect("dlq").into_iter().map(|(seq, entry)| (seq.0, entry.message_id.0)).collect();
                prop_assert_eq!(&dlq, &dlqs[n]);
                // The writer's counts (what /stats and the metrics show) agree with the model.
                let depth = outbox.depth(ids[n]);
                prop_assert_eq!((depth.queued, depth.dead), (queues[n].len() as u64, dlqs[n].len() as u64), "connector {} counts", n);
                let figures = snapshot.queue_figures(ids[n], 0).expect("figures");
                prop_assert_eq!((figures.depth, figures.dead_letters), (queues[n].len() as u64, dlqs[n].len() as u64));
                for (seq, id) in &queues[n] {
                    let pending = snapshot.pending(ids[n], Some(Seq(seq - 1)), 1, usize::MAX).expect("pending");
                    prop_assert_eq!(pending.first().map(|p| (p.seq.0, p.record.is_some(), p.body.is_some())), Some((*seq, true, true)), "queued message {} must be readable", id);
                }
            }
            let present: std::collections::BTreeSet<u64> = snapshot.messages().expect("messages").into_iter().map(|(id, _)| id.0).collect();
            let retained_any = ops.iter().any(|op| matches!(op, Op::Retain));
            if retained_any {
                // Everything the model keeps is present; what is absent was done everywhere.
                prop_assert!(stored.is_subset(&present));
            }
            drop(snapshot);
            drop(outbox);
            writer.join();
            Ok(())
        })?;
    }
}

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

#[tokio::test]
async fn one_request_that_fails_on_its_own_does_not_fail_the_others_in_its_commit() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("mfoundry.redb");
    let open = || {
        let mut options = OutboxOptions::new(path.clone());
        options.dedup_window = None;
        Outbox::open(options, &names(&["a"])).expect("opens")
    };
    let (outbox, writer) = open();
    let connector = outbox.connector_id("a").expect("id");
    drop(outbox);
    writer.join();
    // A queue entry that cannot be decoded (a damaged or future record).
    {
        let database = mfoundry::outbox::datafile::open_raw(&path).expect("redb");
        let transaction = database.begin_write().expect("write");
        {
            let mut queue = transaction
                .open_table(mfoundry::outbox::schema::QUEUE)
                .expect("queue");
            queue
                .insert((connector.0, 999), b"\xff\xff".as_slice())
                .expect("insert");
        }
        transaction.commit().expect("commit");
    }
    let (outbox, writer) = open();
    for index in 0..30 {
        let (appended, marked) = tokio::join!(
            outbox.append(message(&outbox, &format!("OK{index}"), &["a"], &[])),
            outbox.mark_delivered(connector, Seq(999), 1),
        );
        appended.expect("the append is stored despite its neighbour");
        assert!(marked.is_err(), "the damaged entry fails on its own");
    }
    assert_eq!(common::stored_control_ids(&outbox).len(), 30);
    drop(outbox);
    writer.join();
}

/// An outbox with one connector `a` and `intake_hold` set, after one message was stored:
/// returns it, its writer, `a`'s id and the seq of that message's queue entry.
async fn one_message_stored(
    hold: std::time::Duration,
) -> (Outbox, mfoundry::outbox::WriterHandle, ConnectorId, Seq) {
    let memory = MemoryDisk::default();
    let mut options = options_with(&memory);
    options.intake_hold = hold;
    let (outbox, writer) = Outbox::open(options, &names(&["a"])).expect("opens");
    let a = outbox.connector_id("a").expect("a");
    outbox
        .append(message(&outbox, "R1", &["a"], &[]))
        .await
        .expect("1");
    let first = outbox
        .snapshot()
        .expect("snapshot")
        .queue(a)
        .expect("queue")[0]
        .0;
    (outbox, writer, a, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_update_right_after_intake_shares_the_next_messages_commit() {
    // Long enough that only the next message, never the deadline, ends the hold here.
    let (outbox, writer, a, first) = one_message_stored(std::time::Duration::from_secs(30)).await;
    let outbox = Arc::new(outbox);
    let commits = outbox.stats().commits.load(Ordering::Relaxed);

    let marking = tokio::spawn({
        let outbox = Arc::clone(&outbox);
        async move { outbox.mark_delivered(a, first, 1).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !marking.is_finished(),
        "the update waits for the next received message"
    );
    let second = stored(
        outbox
            .append(message(&outbox, "R2", &["a"], &[]))
            .await
            .expect("2"),
    );
    assert!(marking.await.expect("task").expect("mark"));
    assert_eq!(
        outbox.stats().commits.load(Ordering::Relaxed),
        commits + 1,
        "one commit carried the update and the message"
    );
    let snapshot = outbox.snapshot().expect("snapshot");
    let queued: Vec<MessageId> = snapshot
        .queue(a)
        .expect("queue")
        .into_iter()
        .map(|(_, entry)| entry.message_id)
        .collect();
    assert_eq!(
        queued,
        vec![second],
        "the first delivered, the second queued"
    );
    drop(snapshot);
    drop(outbox);
    writer.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_update_is_held_only_right_after_intake_and_only_until_the_deadline() {
    let hold = std::time::Duration::from_secs(1);
    let (outbox, writer, a, first) = one_message_stored(hold).await;
    // No message follows: the update commits on its own when the hold ends.
    let started = std::time::Instant::now();
    assert!(outbox.mark_delivered(a, first, 1).await.expect("mark"));
    assert!(started.elapsed() >= hold, "{:?}", started.elapsed());
    // The last commit stored no message: nothing is held now.
    let started = std::time::Instant::now();
    assert!(!outbox.mark_delivered(a, first, 1).await.expect("mark"));
    assert!(started.elapsed() < hold, "{:?}", started.elapsed());
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
