//! The workload and its recording: appends of every size, deliveries, dead letters and
//! replays, retention and a clean close and reopen, seeded, run through the real outbox with
//! the gateway's options on a recording disk; every request that returned Ok is kept with the
//! event count at its submission and acknowledgement and the store's content right after it.

use std::sync::Arc;

use bytes::Bytes;
use mfoundry::outbox::{
    Appended, Disposition, HeaderFields, MessageRecord, NewMessage, Outbox, OutboxOptions, Route,
    RouteStatus,
};

use crate::disk::{Disk, Random};
use crate::dump::{Dump, dump};

const CONNECTORS: [&str; 2] = ["a", "b"];
/// Small, so laps wrap every few commits and a body can be larger than half of it.
const JOURNAL_CAPACITY: u64 = 1 << 20;

/// The gateway's options, on `storage`.
pub(crate) fn options(storage: Arc<dyn mfoundry::outbox::Storage>, journal: bool) -> OutboxOptions {
    let mut options = OutboxOptions::with_storage(storage);
    options.journal = journal;
    options.journal_capacity = JOURNAL_CAPACITY;
    options
}

pub(crate) fn names() -> Vec<String> {
    CONNECTORS.iter().map(|name| (*name).to_owned()).collect()
}

pub(crate) fn message(
    outbox: &Outbox,
    serial: u64,
    targets: &[&str],
    body_len: usize,
) -> NewMessage {
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
            config: None,
        },
        body: Bytes::from(body),
        dedup_key: Some({
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&serial.to_be_bytes());
            key
        }),
        tls_identity: None,
        copies: Vec::new(),
        order_keys: Vec::new(),
        patient: Vec::new(),
        object: None,
        spool: None,
    }
}

/// A request that returned Ok, and the store's content right after it.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    /// Events recorded when it was submitted and when its Ok was seen.
    pub(crate) submitted: usize,
    pub(crate) acked: usize,
    pub(crate) state: Arc<Dump>,
}

/// A recorded run of the workload.
#[derive(Debug)]
pub(crate) struct Recording {
    pub(crate) disk: Disk,
    pub(crate) journal: bool,
    /// The content after the first open (index 0), then after each acknowledged request.
    pub(crate) acks: Vec<Ack>,
    /// Every message id handed out by an append that returned, with the event count at its
    /// submission (an id is handed out in the commit, before the answer).
    pub(crate) ids: Vec<(usize, u64)>,
    /// Appends that returned Ok: (id, control id, body).
    pub(crate) acked_appends: Vec<(u64, String, Vec<u8>)>,
    /// Requests that failed (faulted runs).
    pub(crate) failures: usize,
    /// Requests that returned Ok after the first failure, and all requests made after it.
    pub(crate) ok_after_failure: usize,
    pub(crate) attempted_after_failure: usize,
    /// The store's content when the workload ended (before the close).
    pub(crate) final_state: Option<Dump>,
    /// Events recorded when the workload ended, before the close (a power cut there finds
    /// no clean close to lean on).
    pub(crate) before_close: usize,
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
pub(crate) fn record(disk: Disk, journal: bool, seed: u64, dumps: bool) -> Recording {
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
