//! Power cuts and I/O errors, proven on recorded operations.
//!
//! A workload runs through the real outbox (the writer thread, the journal when on, the same
//! `OutboxOptions` the gateway builds) on a recording disk ([`disk`]): every write, length
//! change and sync, in order, and every request that returned Ok with the store's logical
//! content right after it. For crash points along the log (every sync, on both sides, and a
//! seeded sample of the other operations), crash states are built: nothing unsynced kept,
//! everything kept, and random states (each 4 KiB block at any of its versions since the last
//! sync, 512-byte sectors torn, lengths and names at any value since their sync). For each:
//!
//! - the store opens (a refusal is a failure: crashes alone never call for one), writing
//!   nothing while `store verify` checks it: redb's integrity check passes and every record
//!   passes its checksum;
//! - its content is exactly the content after the last acknowledged request, or after the
//!   request in flight (all or nothing): every acknowledged append and delivery outcome is
//!   there byte for byte, every acknowledged removal is gone;
//! - a new message gets an id above every id handed out before the crash;
//! - a crash during that recovery, at sampled points, recovers to the same content.
//!
//! The I/O sweep fails one operation (EIO, ENOSPC) on either file per run: no request that
//! returned Ok is lost after a power cut at the end, the store keeps working, and no handle
//! whose sync failed is synced again (a retried fsync is never trusted).
//!
//! `MFOUNDRY_POWER_CUT_SCALE` (default 1) multiplies the sampled points and sweep runs;
//! `MFOUNDRY_POWER_CUT_SEED` picks the seed. A failing state is saved under
//! `target/power-cut-failures/` and `MFOUNDRY_POWER_CUT_REPLAY=<dir>` replays it.
//!
//! The parts: [`workload`] runs the workload and records it, [`dump`] reads a store's logical
//! content, [`recovery`] builds the crash states of a recording and checks each, and [`disk`]
//! is the recording file layer. This file holds the knobs, the runs and the tests.

mod disk;
mod dump;
mod recovery;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mfoundry::outbox::{MessageId, MessageRecord, Outbox, StoreFile};

use disk::{Disk, FaultKind, Keep, Random};
use recovery::{Case, Tally, check_recording, file_name, replay_case};
use workload::{names, options, record};

fn scale() -> u64 {
    std::env::var("MFOUNDRY_POWER_CUT_SCALE")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|scale| *scale > 0)
        .unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("MFOUNDRY_POWER_CUT_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(20261204)
}

fn run_power_cuts(journal: bool) {
    let started = Instant::now();
    let mut tally = Tally::default();
    let base = seed();
    let runs = 1 + scale();
    for run in 0..runs {
        let seed = base.wrapping_add(run);
        let recording = record(Disk::default(), journal, seed, true);
        assert!(
            recording.acks.len() > 40,
            "the workload ran ({} acknowledged)",
            recording.acks.len()
        );
        check_recording(&recording, seed, &mut tally);
    }
    eprintln!(
        "power cuts, journal {journal}: {runs} workload(s), {} operations, {} crash points, {} \
         crash states, {} crashes during recovery, {} failures, {:.1} s",
        tally.events,
        tally.crash_points,
        tally.states,
        tally.recovery_states,
        tally.failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        tally.failures.is_empty(),
        "{} of {} crash states failed; the first:\n{}",
        tally.failures.len(),
        tally.states + tally.recovery_states,
        tally.failures[..tally.failures.len().min(40)].join("\n")
    );
}

#[test]
fn every_acknowledged_request_survives_a_power_cut_at_any_point_without_the_journal() {
    run_power_cuts(false);
}

#[test]
fn every_acknowledged_request_survives_a_power_cut_at_any_point_with_the_journal() {
    run_power_cuts(true);
}

/// Fail one operation of a workload on either file (EIO or ENOSPC), then cut the power at
/// the end: every request that returned Ok is there; requests went on succeeding after the
/// failure; no handle whose sync failed was synced again.
fn run_io_sweep(journal: bool) {
    let started = Instant::now();
    let base = record(Disk::default(), journal, seed(), false);
    let operations = base.disk.operation_inodes();
    let syncs = base.disk.sync_operations();
    let mut random = Random::new(seed() ^ 0xE10);
    // Every sync of either file, and a seeded sample of the writes and length changes.
    let mut points: Vec<u64> = syncs;
    let per_file = 12 * scale();
    let inodes: Vec<usize> = {
        let mut inodes: Vec<usize> = operations.clone();
        inodes.sort_unstable();
        inodes.dedup();
        inodes
    };
    for inode in inodes {
        let mine: Vec<u64> = operations
            .iter()
            .enumerate()
            .filter(|(_, of)| **of == inode)
            .map(|(index, _)| index as u64)
            .collect();
        for _ in 0..per_file {
            if let Some(index) = mine.get(random.below(mine.len() as u64) as usize) {
                points.push(*index);
            }
        }
    }
    points.sort_unstable();
    points.dedup();
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut hit = 0;
    for point in &points {
        for kind in [FaultKind::Eio, FaultKind::Enospc] {
            runs += 1;
            let disk = Disk::default();
            disk.fail_at(*point, kind);
            let recording = record(disk.clone(), journal, seed(), false);
            let label = format!("journal-{journal} fault {kind:?} at operation {point}");
            if disk.fault_hit().is_none() {
                continue;
            }
            hit += 1;
            if let Some((handle, at)) = disk.retried_sync() {
                failures.push(format!(
                    "{label}: handle {handle} was synced again at event {at} after its sync failed"
                ));
            }
            if recording.attempted_after_failure > 1 && recording.ok_after_failure == 0 {
                failures.push(format!("{label}: no request succeeded after the failure"));
            }
            // Cut the power when the workload ends, before the close: only what was synced.
            let events = disk.events();
            let files = disk::crash_state(
                &BTreeMap::new(),
                &events,
                recording.before_close,
                Keep::Nothing,
            );
            let view = Disk::with_files(&files);
            let opened = Outbox::open(options(view.storage(), journal), &names());
            let (outbox, writer) = match opened {
                Ok(opened) => opened,
                Err(error) => {
                    failures.push(format!(
                        "{label}: the store does not open after the power cut: {}",
                        mfoundry::outbox::Chain(&error)
                    ));
                    continue;
                }
            };
            let snapshot = outbox.snapshot().expect("snapshot");
            let present = snapshot.messages().expect("messages");
            let present: BTreeMap<u64, MessageRecord> = present
                .into_iter()
                .map(|(id, record)| (id.0, record))
                .collect();
            // Retention removes messages every connector is done with: an acknowledged message
            // may be absent only when the store no longer held it when the workload ended.
            let final_ids: Vec<u64> = recording
                .final_state
                .as_ref()
                .map(|state| state.messages.keys().copied().collect())
                .unwrap_or_default();
            for (id, control, body) in &recording.acked_appends {
                match present.get(id) {
                    Some(record) => {
                        let stored = snapshot.body(MessageId(*id)).ok().flatten();
                        if record.header.control_id != *control || stored.as_deref() != Some(body) {
                            failures.push(format!(
                                "{label}: message {id} is not what was acknowledged"
                            ));
                        }
                    }
                    None if final_ids.contains(id) => failures.push(format!(
                        "{label}: acknowledged message {id} ({control}) is lost"
                    )),
                    None => {}
                }
            }
            drop(snapshot);
            drop(outbox);
            writer.join();
        }
    }
    eprintln!(
        "I/O sweep, journal {journal}: {} operations in the workload, {} error points, {runs} \
         runs ({hit} hit their fault), {} failures, {:.1} s",
        operations.len(),
        points.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} problems; the first:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

#[test]
fn io_errors_at_sampled_operations_never_lose_an_acknowledged_request_without_the_journal() {
    run_io_sweep(false);
}

#[test]
fn io_errors_at_sampled_operations_never_lose_an_acknowledged_request_with_the_journal() {
    run_io_sweep(true);
}

/// A saved case replays: `MFOUNDRY_POWER_CUT_REPLAY` names a saved case (a file) or a
/// directory of them. Without it, a case is saved and replayed here, and a case whose
/// expectation was altered must fail, so the replay itself is known to check.
#[test]
fn saved_cases_replay() {
    if let Ok(path) = std::env::var("MFOUNDRY_POWER_CUT_REPLAY") {
        let path = PathBuf::from(path);
        let files: Vec<PathBuf> = if path.is_dir() {
            std::fs::read_dir(&path)
                .expect("directory")
                .map(|entry| entry.expect("entry").path())
                .collect()
        } else {
            vec![path]
        };
        for file in files {
            let case: Case =
                serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("a case");
            if let Err(problem) = replay_case(&case) {
                panic!("{}: {problem}", case.label);
            }
        }
        return;
    }
    let recording = record(Disk::default(), true, seed(), true);
    let events = recording.disk.events();
    let point = events.len() / 2;
    let done = recording
        .acks
        .iter()
        .rposition(|ack| ack.acked <= point)
        .unwrap_or(0);
    let mut allowed = vec![recording.acks[done].state.as_ref().clone()];
    if let Some(next) = recording.acks.get(done + 1) {
        allowed.push(next.state.as_ref().clone());
    }
    let files = disk::crash_state(&BTreeMap::new(), &events, point, Keep::Random(7));
    let mut case = Case {
        label: "replay self-test".to_owned(),
        journal: true,
        files: files
            .iter()
            .map(|(name, bytes)| (file_name(*name), bytes.clone()))
            .collect(),
        allowed,
        max_id: 0,
    };
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("case.json");
    std::fs::write(&path, serde_json::to_vec(&case).expect("json")).expect("saved");
    let loaded: Case = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("case");
    replay_case(&loaded).expect("a good case replays");
    for allowed in &mut case.allowed {
        allowed.audit.clear();
    }
    assert!(
        replay_case(&case).is_err(),
        "a case whose expected content is wrong fails"
    );
}

#[test]
fn the_disk_model_keeps_what_was_synced_and_tears_what_was_not() {
    let disk = Disk::default();
    let storage = disk.storage();
    let file = storage.open(StoreFile::Data).expect("open");
    file.set_len(8192).expect("len");
    file.write(0, &[1u8; 8192]).expect("write");
    file.sync_data().expect("sync");
    storage.sync_directory().expect("dir");
    file.write(0, &[2u8; 8192]).expect("write");
    file.set_len(12288).expect("grow");
    let events = disk.events();
    let nothing = disk::crash_state(&BTreeMap::new(), &events, events.len(), Keep::Nothing);
    assert_eq!(nothing[&StoreFile::Data], vec![1u8; 8192]);
    let everything = disk::crash_state(&BTreeMap::new(), &events, events.len(), Keep::Everything);
    assert_eq!(everything[&StoreFile::Data].len(), 12288);
    assert!(
        everything[&StoreFile::Data][..8192]
            .iter()
            .all(|byte| *byte == 2)
    );
    let mut torn = false;
    for seed in 0..64 {
        let state = disk::crash_state(&BTreeMap::new(), &events, events.len(), Keep::Random(seed));
        let data = &state[&StoreFile::Data];
        assert!(data.len() == 8192 || data.len() == 12288, "{}", data.len());
        for sector in data[..8192].chunks(disk::SECTOR) {
            assert!(
                sector.iter().all(|byte| *byte == 1) || sector.iter().all(|byte| *byte == 2),
                "a sector is one version or the other"
            );
        }
        let block = &data[..disk::BLOCK];
        torn |= block.contains(&1) && block.contains(&2);
    }
    assert!(torn, "some states tear a block between versions");
    // A name created but not yet synced in its directory may be gone.
    let disk = Disk::default();
    disk.storage().open(StoreFile::Journal).expect("open");
    let events = disk.events();
    let state = disk::crash_state(&BTreeMap::new(), &events, events.len(), Keep::Nothing);
    assert!(!state.contains_key(&StoreFile::Journal));
    let _ = Duration::ZERO;
}
