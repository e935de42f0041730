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

mod disk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mfoundry::outbox::audit::AuditRecord;
use mfoundry::outbox::{
    Appended, ConnectorId, DeliveryRecord, Disposition, DlqEntry, HeaderFields, MessageId,
    MessageRecord, NewMessage, Outbox, OutboxOptions, QueueEntry, Route, RouteStatus, Seq,
    StoreFile,
};
use serde::{Deserialize, Serialize};

use disk::{Disk, Event, FaultKind, Keep, Random};

const CONNECTORS: [&str; 2] = ["a", "b"];
/// Small, so laps wrap every few commits and a body can be larger than half of it.
const JOURNAL_CAPACITY: u64 = 1 << 20;

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

/// The gateway's options, on `storage`.
fn options(storage: Arc<dyn mfoundry::outbox::Storage>, journal: bool) -> OutboxOptions {
    let mut options = OutboxOptions::with_storage(storage);
    options.journal = journal;
    options.journal_capacity = JOURNAL_CAPACITY;
    options
}

fn names() -> Vec<String> {
    CONNECTORS.iter().map(|name| (*name).to_owned()).collect()
}

/// The logical content of a store: what a request's acknowledgement promises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Dump {
    connectors: BTreeMap<String, ConnectorId>,
    messages: BTreeMap<u64, (MessageRecord, Vec<u8>)>,
    queues: BTreeMap<ConnectorId, Vec<(Seq, QueueEntry)>>,
    dead: BTreeMap<ConnectorId, Vec<(Seq, DlqEntry)>>,
    deliveries: BTreeMap<u64, Vec<(ConnectorId, DeliveryRecord)>>,
    audit: Vec<(u64, AuditRecord)>,
}

fn dump(outbox: &Outbox) -> Result<Dump, String> {
    let snapshot = outbox.snapshot().map_err(|error| error.to_string())?;
    let failed = |error: mfoundry::outbox::StoreError| error.to_string();
    let mut dump = Dump {
        connectors: snapshot.connectors().map_err(failed)?.into_iter().collect(),
        messages: BTreeMap::new(),
        queues: BTreeMap::new(),
        dead: BTreeMap::new(),
        deliveries: BTreeMap::new(),
        audit: snapshot.audit_records(None, usize::MAX).map_err(failed)?,
    };
    for (id, record) in snapshot.messages().map_err(failed)? {
        let body = snapshot
            .body(id)
            .map_err(failed)?
            .ok_or_else(|| format!("message {id} has no body"))?;
        dump.messages.insert(id.0, (record, body));
        let deliveries = snapshot.deliveries(id).map_err(failed)?;
        if !deliveries.is_empty() {
            dump.deliveries.insert(id.0, deliveries);
        }
    }
    for id in dump.connectors.values() {
        dump.queues
            .insert(*id, snapshot.queue(*id).map_err(failed)?);
        dump.dead
            .insert(*id, snapshot.dead_letters(*id).map_err(failed)?);
    }
    Ok(dump)
}

/// What differs between two dumps, briefly (for failure messages).
fn diff(found: &Dump, expected: &Dump) -> String {
    let mut out = Vec::new();
    let found_ids: Vec<&u64> = found.messages.keys().collect();
    let expected_ids: Vec<&u64> = expected.messages.keys().collect();
    if found_ids != expected_ids {
        out.push(format!("message ids {found_ids:?} vs {expected_ids:?}"));
    } else if found.messages != expected.messages {
        out.push("message contents differ".to_owned());
    }
    if found.queues != expected.queues {
        out.push(format!(
            "queues {:?} vs {:?}",
            found.queues, expected.queues
        ));
    }
    if found.dead != expected.dead {
        out.push("dead letters differ".to_owned());
    }
    if found.deliveries != expected.deliveries {
        out.push("deliveries differ".to_owned());
    }
    if found.audit.len() != expected.audit.len() || found.audit != expected.audit {
        out.push(format!(
            "audit {} vs {} records",
            found.audit.len(),
            expected.audit.len()
        ));
    }
    if found.connectors != expected.connectors {
        out.push("connectors differ".to_owned());
    }
    out.join("; ")
}

fn message(outbox: &Outbox, serial: u64, targets: &[&str], body_len: usize) -> NewMessage {
    let routes = CONNECTORS
        .iter()
        .map(|name| Route {
            connector: outbox.connector_id(name).expect("connector"),
            status: if targets.contains(name) {
                RouteStatus::Queued
            } else {
                RouteStatus::Filtered
            },
        })
        .collect();
    let mut body =
        format!("MSH|^~\\&|PC|CUT|R|F|20261204||ADT^A08|PC{serial}|P|2.5\r").into_bytes();
    let mut filler = serial.wrapping_mul(2654435761);
    while body.len() < body_len {
        filler = filler.wrapping_mul(6364136223846793005).wrapping_add(1);
        body.push(b'A' + (filler >> 59) as u8);
    }
    NewMessage {
        record: MessageRecord {
            received_at_micros: 1_700_000_000_000_000 + serial as i64,
            peer: "127.0.0.1:9".to_owned(),
            listener: "mllp".to_owned(),
            header: HeaderFields {
                control_id: format!("PC{serial}"),
                msg_type: "ADT".to_owned(),
                trigger: "A08".to_owned(),
                ..HeaderFields::default()
            },
            disposition: if targets.is_empty() {
                Disposition::Unrouted
            } else {
                Disposition::Routed
            },
            reason: None,
            ack_code: "AA".to_owned(),
            body_len: body.len() as u64,
            routes,
            ack: Some(format!("MSA|AA|PC{serial}").into_bytes()),
            dedup_key: Some({
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&serial.to_be_bytes());
                key
            }),
            body_inline: false,
        },
        body: Bytes::from(body),
        dedup_key: Some({
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&serial.to_be_bytes());
            key
        }),
        tls_identity: None,
        copies: Vec::new(),
    }
}

/// A request that returned Ok, and the store's content right after it.
#[derive(Debug, Clone)]
struct Ack {
    /// Events recorded when it was submitted and when its Ok was seen.
    submitted: usize,
    acked: usize,
    state: Arc<Dump>,
}

/// A recorded run of the workload.
#[derive(Debug)]
struct Recording {
    disk: Disk,
    journal: bool,
    /// The content after the first open (index 0), then after each acknowledged request.
    acks: Vec<Ack>,
    /// Every message id handed out by an append that returned, with the event count at its
    /// submission (an id is handed out in the commit, before the answer).
    ids: Vec<(usize, u64)>,
    /// Appends that returned Ok: (id, control id, body).
    acked_appends: Vec<(u64, String, Vec<u8>)>,
    /// Requests that failed (faulted runs).
    failures: usize,
    /// Requests that returned Ok after the first failure, and all requests made after it.
    ok_after_failure: usize,
    attempted_after_failure: usize,
    /// The store's content when the workload ended (before the close).
    final_state: Option<Dump>,
    /// Events recorded when the workload ended, before the close (a power cut there finds
    /// no clean close to lean on).
    before_close: usize,
}

enum Step {
    Append {
        targets: Vec<&'static str>,
        len: usize,
    },
    Deliver(&'static str),
    DeadLetter(&'static str),
    Replay(&'static str),
    Retain,
    CloseAndReopen,
}

/// The workload: appends of every size (inline, in `bodies`, one larger than half the
/// journal), deliveries, dead letters and replays, retention removing messages, and a clean
/// close and reopen; seeded.
fn steps(seed: u64) -> Vec<Step> {
    let mut random = Random::new(seed);
    let mut steps = Vec::new();
    for index in 0..48 {
        if index == 20 {
            steps.push(Step::Append {
                targets: vec!["a", "b"],
                len: (JOURNAL_CAPACITY as usize) * 2 / 3,
            });
            continue;
        }
        if index == 30 {
            steps.push(Step::CloseAndReopen);
            continue;
        }
        let connector = if random.chance(2) { "a" } else { "b" };
        let step = match random.below(20) {
            0..=10 => {
                let targets = match random.below(4) {
                    0 => vec!["a"],
                    1 => vec!["b"],
                    2 => vec!["a", "b"],
                    _ => vec![],
                };
                let len = if random.chance(4) {
                    20_000 + random.below(20_000) as usize
                } else {
                    200 + random.below(3000) as usize
                };
                Step::Append { targets, len }
            }
            11..=14 => Step::Deliver(connector),
            15..=16 => Step::DeadLetter(connector),
            17 => Step::Replay(connector),
            _ => Step::Retain,
        };
        steps.push(step);
    }
    steps
}

fn open_retrying(disk: &Disk, journal: bool) -> Option<(Outbox, mfoundry::outbox::WriterHandle)> {
    // A fault may fail an open; the gateway would exit and be restarted: try again.
    for _ in 0..3 {
        if let Ok(opened) = Outbox::open(options(disk.storage(), journal), &names()) {
            return Some(opened);
        }
    }
    None
}

/// Run the workload on `disk`, recording acknowledgements (and checking nothing yet).
fn record(disk: Disk, journal: bool, seed: u64, dumps: bool) -> Recording {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut recording = Recording {
        disk: disk.clone(),
        journal,
        acks: Vec::new(),
        ids: Vec::new(),
        acked_appends: Vec::new(),
        failures: 0,
        ok_after_failure: 0,
        attempted_after_failure: 0,
        final_state: None,
        before_close: 0,
    };
    let Some((mut outbox, mut writer)) = open_retrying(&disk, journal) else {
        return recording;
    };
    let initial = if dumps {
        dump(&outbox).expect("dump")
    } else {
        Dump::default_empty()
    };
    recording.acks.push(Ack {
        submitted: 0,
        acked: disk.event_count(),
        state: Arc::new(initial),
    });
    let mut serial = 0;
    for step in steps(seed) {
        let submitted = disk.event_count();
        if recording.failures > 0 {
            recording.attempted_after_failure += 1;
        }
        let reopen = matches!(step, Step::CloseAndReopen);
        let result: Result<Option<u64>, String> = runtime.block_on(async {
            match step {
                Step::Append { targets, len } => {
                    serial += 1;
                    let message = message(&outbox, serial, &targets, len);
                    let body = message.body.to_vec();
                    let control = message.record.header.control_id.clone();
                    match outbox.append(message).await {
                        Ok(Appended::Stored { id }) => {
                            recording.acked_appends.push((id.0, control, body));
                            Ok(Some(id.0))
                        }
                        Ok(Appended::Duplicate { id, .. }) => Ok(Some(id.0)),
                        Err(error) => Err(error.to_string()),
                    }
                }
                Step::Deliver(name) | Step::DeadLetter(name) | Step::Replay(name) => {
                    let connector = outbox.connector_id(name).expect("connector");
                    let head = outbox
                        .snapshot()
                        .and_then(|snapshot| {
                            Ok((
                                snapshot.queue_head(connector)?,
                                snapshot.dead_letters(connector)?,
                            ))
                        })
                        .map_err(|error| error.to_string())?;
                    let outcome = match (step, head) {
                        (Step::Deliver(_), (Some((seq, entry)), _)) => outbox
                            .mark_delivered(connector, seq, entry.attempts + 1)
                            .await
                            .map(|_| None),
                        (Step::DeadLetter(_), (Some((seq, entry)), _)) => outbox
                            .dead_letter(connector, seq, entry.attempts + 1, "refused".to_owned())
                            .await
                            .map(|_| None),
                        (Step::Replay(_), (_, dead)) if !dead.is_empty() => outbox
                            .replay(connector, dead[0].0, None)
                            .await
                            .map(|seq| seq.map(|seq| seq.0)),
                        _ => Ok(None),
                    };
                    outcome.map_err(|error| error.to_string())
                }
                Step::Retain => outbox
                    .retain(i64::MAX, None, 1000)
                    .await
                    .map(|_| None)
                    .map_err(|error| error.to_string()),
                Step::CloseAndReopen => Ok(None),
            }
        });
        if reopen {
            drop(outbox);
            writer.join();
            let Some(opened) = open_retrying(&disk, journal) else {
                return recording;
            };
            (outbox, writer) = opened;
            continue;
        }
        match result {
            Ok(id) => {
                if let Some(id) = id {
                    recording.ids.push((submitted, id));
                }
                if recording.failures > 0 {
                    recording.ok_after_failure += 1;
                }
                let state = if dumps {
                    dump(&outbox).expect("dump after an acknowledged request")
                } else {
                    Dump::default_empty()
                };
                // The answer came after the commit's sync returned: the request is durable from
                // just after the writer's last sync (later events, the flusher's, do not count).
                let seen = disk.event_count();
                let acked = disk
                    .after_last_writer_sync(seen)
                    .filter(|point| *point > submitted)
                    .unwrap_or(seen);
                recording.acks.push(Ack {
                    submitted,
                    acked,
                    state: Arc::new(state),
                });
            }
            Err(_) => recording.failures += 1,
        }
    }
    recording.final_state = dump(&outbox).ok();
    recording.before_close = disk.event_count();
    drop(outbox);
    writer.join();
    recording
}

impl Dump {
    fn default_empty() -> Self {
        Self {
            connectors: BTreeMap::new(),
            messages: BTreeMap::new(),
            queues: BTreeMap::new(),
            dead: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            audit: Vec::new(),
        }
    }
}

/// One crash state to check, and what it may recover to.
#[derive(Debug, Serialize, Deserialize)]
struct Case {
    label: String,
    journal: bool,
    files: BTreeMap<String, Vec<u8>>,
    allowed: Vec<Dump>,
    /// A new message must get an id above this.
    max_id: u64,
}

fn file_name(file: StoreFile) -> String {
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

/// Recover a crash state and check it (see the module documentation).
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

fn replay_case(case: &Case) -> Result<(), String> {
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
struct Tally {
    events: usize,
    crash_points: usize,
    states: usize,
    recovery_states: usize,
    failures: Vec<String>,
}

/// Check the crash states of one recording.
fn check_recording(recording: &Recording, seed: u64, tally: &mut Tally) {
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
