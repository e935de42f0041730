//! Crash test: the real binary under load from several connections is killed with SIGKILL at
//! an arbitrary moment and restarted; every message that got AA must be stored with exactly
//! the queue entries its connector filters chose (atomic fan-out), and nothing else may be
//! half-written.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mfoundry::outbox::{Outbox, OutboxOptions};

const SENDERS: usize = 4;
const YAML: &str = r#"
connectors:
  - name: everything
    type: file
    directory: ./out
  - name: adt
    type: http
    url: http://127.0.0.1:9/
    filter: msh.msg_type == "ADT"
  - name: female
    type: postgres
    filter: pid.sex == "F"
validation:
  rules:
    - name: require-patient-id
      expression: pid.id != ""
"#;

fn start(directory: &Path, journal: &str) -> (Child, String) {
    let envs = [("RUST_LOG", "info"), ("STORE_JOURNAL", journal)];
    let server = common::Server::start(directory, "mfoundry.yaml", "data", &envs);
    (server.child, server.addr)
}

/// The message a sender sends: type and sex follow the sequence number, so the expected
/// routes can be computed from the control id alone.
fn message(sender: usize, sequence: usize) -> (String, Vec<u8>) {
    let msg_type = if sequence.is_multiple_of(2) {
        "ADT"
    } else {
        "ORU"
    };
    let sex = if sequence.is_multiple_of(3) { "F" } else { "M" };
    let control_id = format!("S{sender}-{sequence}-{msg_type}-{sex}");
    let body = format!(
        "MSH|^~\\&|CRASH|FAC|HUB|HFAC|20261122080000||{msg_type}^A01|{control_id}|P|2.5.1\rPID|1||{sequence}^^^H^MR||DOE^JO||19800101|{sex}\r"
    );
    (control_id, body.into_bytes())
}

fn expected_routes(control_id: &str) -> BTreeSet<String> {
    let mut routes = BTreeSet::from(["everything".to_owned()]);
    if control_id.contains("-ADT-") {
        routes.insert("adt".to_owned());
    }
    if control_id.ends_with("-F") {
        routes.insert("female".to_owned());
    }
    routes
}

/// Message ids of the files the file connector wrote (`{id}-{control_id}.hl7` under a
/// directory per day).
fn written_message_ids(out: &Path) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let Ok(days) = std::fs::read_dir(out) else {
        return ids;
    };
    for day in days {
        for file in std::fs::read_dir(day.expect("day").path()).expect("day dir") {
            let name = file
                .expect("file")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if let Some(id) = name.split('-').next().and_then(|id| id.parse().ok()) {
                ids.insert(id);
            }
        }
    }
    ids
}

#[test]
fn every_aa_survives_sigkill_with_exactly_its_queue_entries() {
    survives_sigkill("false");
}

/// The same with the commit journal on (ADR 0006). The last open below has it off, so it
/// also checks that a journal left by a killed process is replayed and removed.
#[test]
fn every_aa_survives_sigkill_with_the_journal_on() {
    survives_sigkill("true");
}

/// Kill-and-restart rounds before the final check: 2, or `MFOUNDRY_CRASH_ROUNDS` for a
/// longer soak by hand (`MFOUNDRY_CRASH_ROUNDS=50 cargo test --test crash`).
fn rounds() -> usize {
    match std::env::var("MFOUNDRY_CRASH_ROUNDS") {
        Ok(rounds) => match rounds.parse::<usize>() {
            Ok(rounds) if rounds > 0 => rounds,
            _ => panic!("MFOUNDRY_CRASH_ROUNDS={rounds:?}: expected a whole number above 0"),
        },
        Err(_) => 2,
    }
}

fn survives_sigkill(journal: &str) {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("mfoundry.yaml"), YAML).expect("yaml");
    let mut acknowledged: Vec<String> = Vec::new();
    let rounds = rounds();

    for round in 0..rounds {
        let (mut child, addr) = start(directory.path(), journal);
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SENDERS)
            .map(|index| {
                let addr = addr.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    common::send_until_stopped(&addr, index + round * SENDERS, &stop, message)
                })
            })
            .collect();
        let kill_after = common::pseudo_random_millis(300, 900);
        std::thread::sleep(Duration::from_millis(kill_after));
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            acknowledged.extend(sender.join().expect("sender thread"));
        }
        eprintln!(
            "round {round}: killed after {kill_after} ms; {} AA so far",
            acknowledged.len()
        );
    }
    assert!(
        acknowledged.len() > 50,
        "the load ran: {} AA",
        acknowledged.len()
    );

    // Restart once more: the file recovers and the gateway serves again.
    let (mut child, addr) = start(directory.path(), journal);
    let after_restart = AtomicBool::new(false);
    // A sender index no round used, so its control ids are new.
    let last_sender = rounds * SENDERS;
    let sender = std::thread::scope(|scope| {
        let handle =
            scope.spawn(|| common::send_until_stopped(&addr, last_sender, &after_restart, message));
        std::thread::sleep(Duration::from_millis(100));
        after_restart.store(true, Ordering::Relaxed);
        handle.join().expect("sender")
    });
    assert!(!sender.is_empty(), "the restarted gateway accepts messages");
    acknowledged.extend(sender);
    common::signal(&child, rustix::process::Signal::TERM);
    assert!(child.wait().expect("exits").success());

    let mut options = OutboxOptions::new(directory.path().join("data").join("mfoundry.redb"));
    options.dedup_window = None;
    let names: Vec<String> = ["everything", "adt", "female"].map(str::to_owned).to_vec();
    let (outbox, writer) = Outbox::open(options, &names).expect("opens after the crashes");
    assert!(
        !directory.path().join("data/mfoundry.redb-journal").exists(),
        "opened with the journal off, a journal left behind is replayed and removed"
    );
    let snapshot = outbox.snapshot().expect("snapshot");
    let by_id: HashMap<mfoundry::outbox::MessageId, String> = snapshot
        .messages()
        .expect("messages")
        .into_iter()
        .map(|(id, record)| (id, record.header.control_id))
        .collect();
    // A connector holds a message while it is queued; once delivered, its delivery record
    // says so. Either way the fan-out decided at intake must be intact.
    let mut queued: HashMap<String, BTreeSet<String>> = HashMap::new();
    for name in &names {
        let connector = outbox.connector_id(name).expect("connector");
        for (_, entry) in snapshot.queue(connector).expect("queue") {
            let control_id = by_id
                .get(&entry.message_id)
                .unwrap_or_else(|| panic!("queue entry {} has no message", entry.message_id));
            let fresh = queued
                .entry(control_id.clone())
                .or_default()
                .insert(name.clone());
            assert!(fresh, "{control_id} is queued twice for {name}");
        }
    }
    let written = written_message_ids(&directory.path().join("out"));
    let everything = outbox.connector_id("everything").expect("connector");
    let mut delivered = 0;
    for (id, control_id) in &by_id {
        for (connector, record) in snapshot.deliveries(*id).expect("deliveries") {
            let name = names
                .iter()
                .find(|name| outbox.connector_id(name) == Some(connector))
                .expect("known connector");
            assert_eq!(record.status, mfoundry::outbox::DeliveryStatus::Delivered);
            let fresh = queued
                .entry(control_id.clone())
                .or_default()
                .insert(name.clone());
            assert!(
                fresh,
                "{control_id} is both queued and delivered for {name}"
            );
            if connector == everything {
                delivered += 1;
                assert!(
                    written.contains(&id.0),
                    "message {id} is marked delivered but has no file"
                );
            }
        }
    }
    eprintln!("{delivered} messages delivered to files across the kills");
    for control_id in by_id.values() {
        let routes = queued.get(control_id).cloned().unwrap_or_default();
        assert_eq!(
            routes,
            expected_routes(control_id),
            "fan-out of {control_id}"
        );
    }
    let stored: BTreeSet<&String> = by_id.values().collect();
    for control_id in &acknowledged {
        assert!(
            stored.contains(control_id),
            "{control_id} got AA but is not stored"
        );
    }
    drop(snapshot);
    drop(outbox);
    writer.join();
}
