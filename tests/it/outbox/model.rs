//! The outbox against plain in-memory models (proptest): queues as the ordered lists of the ids
//! routed to each connector, with dedup; and delivery state (queues, dead letters, replay,
//! purges, retention, reopens), where ids and seqs are never reused.

use super::*;

use std::collections::{BTreeMap, HashMap};

use mfoundry::outbox::{ConnectorId, Seq};
use proptest::prelude::*;

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
