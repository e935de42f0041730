//! Crash states, checked: at the crash points of a recording, the states a power cut could
//! leave are each recovered as `store verify` and the gateway's open would, compared with what
//! was acknowledged, given a new message, and at sampled points crashed again during that
//! recovery. A failing state is saved under `target/power-cut-failures/` and replayed from its
//! file (`MFOUNDRY_POWER_CUT_REPLAY`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mfoundry::outbox::{Appended, Outbox, StoreFile};
use serde::{Deserialize, Serialize};

use crate::disk::{self, Disk, Event, Keep, Random};
use crate::dump::{Dump, diff, dump};
use crate::scale;
use crate::workload::{Recording, message, names, options};

/// One crash state to check, and what it may recover to.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Case {
    pub(crate) label: String,
    pub(crate) journal: bool,
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    pub(crate) allowed: Vec<Dump>,
    /// A new message must get an id above this.
    pub(crate) max_id: u64,
}

pub(crate) fn file_name(file: StoreFile) -> String {
    format!("{file:?}")
}

fn store_file(name: &str) -> StoreFile {
    match name {
        "Data" => StoreFile::Data,
        "Journal" => StoreFile::Journal,
        _ => StoreFile::Upgrade,
    }
}

/// What a recovery of a crash state found, for the crash-during-recovery round.
struct Recovered {
    state: Dump,
    /// The recovery's own operations, up to the first commit after the open.
    events: Vec<Event>,
}

/// [`check_inner`], with a panic (inside redb, on a state it cannot read) reported as a
/// failure of that state rather than ending the run.
fn check(
    files: &BTreeMap<StoreFile, Vec<u8>>,
    journal: bool,
    allowed: &[&Dump],
    max_id: u64,
) -> Result<Recovered, String> {
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_inner(files, journal, allowed, max_id)
    }));
    match checked {
        Ok(result) => result,
        Err(panic) => Err(format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
                .unwrap_or_default()
        )),
    }
}

/// Recover a crash state and check it (see the crate documentation, `main.rs`).
fn check_inner(
    files: &BTreeMap<StoreFile, Vec<u8>>,
    journal: bool,
    allowed: &[&Dump],
    max_id: u64,
) -> Result<Recovered, String> {
    // store verify: the open, the replay and redb's check on an in-memory view.
    let view = Disk::with_files(files);
    let (_, report) = mfoundry::outbox::verify::verify_offline(&options(view.storage(), journal))
        .map_err(|error| format!("refused: {}", mfoundry::outbox::Chain(&error)))?;
    if view.event_count() != 0 {
        return Err("store verify wrote to the store".to_owned());
    }
    if !report.is_intact() {
        return Err(format!(
            "not intact: redb {:?} {:?}, damaged {:?}, audit {:?}",
            report.redb_intact, report.redb_problem, report.damaged, report.audit.problems
        ));
    }
    // The gateway's open, recorded.
    let disk = Disk::with_files(files);
    let (outbox, writer) = Outbox::open(options(disk.storage(), journal), &names())
        .map_err(|error| format!("refused: {}", mfoundry::outbox::Chain(&error)))?;
    let opened_events = disk.event_count();
    let state = dump(&outbox)?;
    if !allowed.iter().any(|expected| **expected == state) {
        let differences: Vec<String> = allowed
            .iter()
            .map(|expected| diff(&state, expected))
            .collect();
        drop(outbox);
        writer.join();
        return Err(format!(
            "content is none of the allowed states: {}",
            differences.join(" | ")
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let appended = runtime.block_on(outbox.append(message(&outbox, 9_999_999, &["a"], 300)));
    drop(outbox);
    writer.join();
    match appended {
        Ok(Appended::Stored { id }) if id.0 > max_id => {}
        Ok(other) => {
            return Err(format!(
                "a new message got {other:?}, not an id above {max_id} (an id handed out before)"
            ));
        }
        Err(error) => {
            return Err(format!(
                "the recovered store does not take a message: {error}"
            ));
        }
    }
    let events = disk.events();
    Ok(Recovered {
        state,
        events: events[..opened_events.min(events.len())].to_vec(),
    })
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("power-cut-failures"))
        .unwrap_or_else(|| PathBuf::from("power-cut-failures"))
}

/// Save a failing case so it can be replayed (`MFOUNDRY_POWER_CUT_REPLAY`).
fn save(case: &Case) -> PathBuf {
    let directory = failures_dir();
    let _ = std::fs::create_dir_all(&directory);
    let path = directory.join(format!("{}.json", case.label.replace([' ', '/'], "_")));
    if let Ok(text) = serde_json::to_vec(case) {
        let _ = std::fs::write(&path, text);
    }
    path
}

pub(crate) fn replay_case(case: &Case) -> Result<(), String> {
    let files = case
        .files
        .iter()
        .map(|(name, bytes)| (store_file(name), bytes.clone()))
        .collect();
    let allowed: Vec<&Dump> = case.allowed.iter().collect();
    check(&files, case.journal, &allowed, case.max_id).map(|_| ())
}

/// Figures of one harness run.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) events: usize,
    pub(crate) crash_points: usize,
    pub(crate) states: usize,
    pub(crate) recovery_states: usize,
    pub(crate) failures: Vec<String>,
}

/// Check the crash states of one recording.
pub(crate) fn check_recording(recording: &Recording, seed: u64, tally: &mut Tally) {
    let events = recording.disk.events();
    tally.events += events.len();
    let mut random = Random::new(seed ^ 0xC0FFEE);
    // Every sync (both sides of it) and one in four of the other operations; more with
    // MFOUNDRY_POWER_CUT_SCALE.
    let sample = (4 / scale()).max(1);
    let mut points: Vec<usize> = Vec::new();
    for (index, event) in events.iter().enumerate() {
        if event.is_sync() {
            points.push(index);
            points.push(index + 1);
        } else if random.chance(sample) {
            points.push(index);
        }
    }
    points.push(events.len());
    points.sort_unstable();
    points.dedup();
    let initial = BTreeMap::new();
    for point in points {
        tally.crash_points += 1;
        // The last request acknowledged before this point, and the one in flight.
        let done = recording
            .acks
            .iter()
            .rposition(|ack| ack.acked <= point)
            .unwrap_or(0);
        let mut allowed = vec![recording.acks[done].state.as_ref()];
        if let Some(next) = recording.acks.get(done + 1)
            && next.submitted <= point
        {
            allowed.push(next.state.as_ref());
        }
        let max_id = recording
            .ids
            .iter()
            .filter(|(submitted, _)| *submitted <= point)
            .map(|(_, id)| *id)
            .max()
            .unwrap_or(0);
        let mut keeps = vec![Keep::Nothing, Keep::Everything];
        for _ in 0..(2 + scale()) {
            keeps.push(Keep::Random(random.next()));
        }
        for keep in keeps {
            tally.states += 1;
            let files = disk::crash_state(&initial, &events, point, keep);
            let label = format!(
                "journal-{} seed {seed} point {point} {keep:?}",
                recording.journal
            );
            let recovered = match check(&files, recording.journal, &allowed, max_id) {
                Ok(recovered) => recovered,
                Err(problem) => {
                    let case = Case {
                        label: label.clone(),
                        journal: recording.journal,
                        files: files
                            .iter()
                            .map(|(name, bytes)| (file_name(*name), bytes.clone()))
                            .collect(),
                        allowed: allowed.iter().map(|dump| (*dump).clone()).collect(),
                        max_id,
                    };
                    let saved = save(&case);
                    tally
                        .failures
                        .push(format!("{label}: {problem} (saved: {})", saved.display()));
                    continue;
                }
            };
            // A crash during that recovery, at a few of its syncs and one other point.
            if !random.chance(4) {
                continue;
            }
            let recovery_points: Vec<usize> = recovered
                .events
                .iter()
                .enumerate()
                .filter(|(_, event)| event.is_sync())
                .map(|(index, _)| index + 1)
                .collect();
            for _ in 0..2 {
                if recovery_points.is_empty() {
                    break;
                }
                let at = recovery_points[random.below(recovery_points.len() as u64) as usize];
                let again =
                    disk::crash_state(&files, &recovered.events, at, Keep::Random(random.next()));
                tally.recovery_states += 1;
                if let Err(problem) = check(&again, recording.journal, &[&recovered.state], max_id)
                {
                    tally.failures.push(format!(
                        "{label}, then a crash at recovery operation {at}: {problem}"
                    ));
                }
            }
        }
    }
}
