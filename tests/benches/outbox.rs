//! What one ordered sender pays in the store: `cargo bench --bench outbox [-- DIR]
//! [--no-journal]`.
//!
//! Runs, interleaved in rounds on the same disk (`DIR`, default the system temp directory):
//! - `bare`: one redb commit of one 4 KiB value into one table (the floor `mfoundry bench`
//!   probes);
//! - `outbox`: `Outbox::append` of the 1.5 KB bench ORU with two queued connectors and a
//!   filtered one, one at a time, as the intake of a single sender does (the hand-off to the
//!   writer thread, the transaction, the commit, the reply), through the commit journal as
//!   the gateway does by default (`--no-journal`: as with `STORE_JOURNAL=false`).
//!
//! The disk's fsync latency swings a lot with neighbours, so each round takes both in turn
//! and the figure to read is the median of the per-round ratios `outbox / bare`.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use mfoundry::cli::ProbeStore;
use mfoundry::outbox::patients::IndexField;
use mfoundry::outbox::{
    Disposition, HeaderFields, MessageRecord, NewMessage, Outbox, OutboxOptions, Route, RouteStatus,
};

const ROUNDS: usize = 9;
const PER_ROUND: usize = 200;

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn record(body_len: usize, seq: usize) -> MessageRecord {
    MessageRecord {
        received_at_micros: 1_700_000_000_000_000,
        peer: "127.0.0.1:40000".to_owned(),
        listener: "mllp".to_owned(),
        header: HeaderFields {
            msg_type: "ORU".to_owned(),
            trigger: "R01".to_owned(),
            structure: "ORU_R01".to_owned(),
            control_id: format!("BENCH{seq:010}"),
            sending_app: "LAB".to_owned(),
            sending_fac: "HOSP".to_owned(),
            receiving_app: "EHR".to_owned(),
            receiving_fac: "HOSP".to_owned(),
            version: "2.5.1".to_owned(),
            processing_id: "P".to_owned(),
        },
        disposition: Disposition::Routed,
        reason: None,
        routes: vec![
            Route {
                connector: mfoundry::outbox::ConnectorId(1),
                status: RouteStatus::Queued,
            },
            Route {
                connector: mfoundry::outbox::ConnectorId(2),
                status: RouteStatus::Queued,
            },
            Route {
                connector: mfoundry::outbox::ConnectorId(3),
                status: RouteStatus::Filtered,
            },
        ],
        ack_code: "AA".to_owned(),
        body_len: body_len as u64,
        ack: Some(vec![b'A'; 120]),
        dedup_key: None,
        body_inline: true,
        config: None,
    }
}

fn key(seq: usize) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(seq as u64).to_be_bytes());
    key[8..16].copy_from_slice(
        &(seq as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_be_bytes(),
    );
    key
}

fn main() {
    let directory = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::Builder::new()
        .prefix(".mfoundry-outbox-bench")
        .tempdir_in(&directory)
        .expect("a scratch directory");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let body = Bytes::from(std::fs::read(root.join("examples/bench/oru-r01.hl7")).expect("sample"));

    // The same bare commit `mfoundry bench` probes.
    let mut bare = ProbeStore::open(scratch.path()).expect("bare database");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let names = ["a", "b", "c"].map(str::to_owned);
    let mut options = OutboxOptions::new(scratch.path().join("mfoundry.redb"));
    options.journal = !std::env::args().any(|arg| arg == "--no-journal");
    println!(
        "outbox {} the commit journal",
        if options.journal { "with" } else { "without" }
    );
    let (outbox, writer) = Outbox::open(options, &names).expect("outbox");

    let mut seq = 0usize;
    let mut ratios = Vec::new();
    let (mut bare_all, mut outbox_all) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let bare_samples = bare.commits(PER_ROUND).expect("bare commits");
        let outbox_samples = runtime.block_on(async {
            let mut samples = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                seq += 1;
                let message = NewMessage {
                    record: record(body.len(), seq),
                    body: body.clone(),
                    dedup_key: Some(key(seq)),
                    tls_identity: None,
                    copies: Vec::new(),
                    order_keys: Vec::new(),
                    // As a message with a PID: an identifier and a family name indexed.
                    patient: vec![
                        (IndexField::Identifier, format!("MRN{seq}")),
                        (IndexField::FamilyName, "DOE".to_owned()),
                    ],
                    object: None,
                    spool: None,
                };
                let started = Instant::now();
                outbox.append(message).await.expect("append");
                samples.push(started.elapsed().as_secs_f64() * 1e6);
            }
            samples
        });
        let (bare_p50, outbox_p50) = (median(bare_samples.clone()), median(outbox_samples.clone()));
        let ratio = outbox_p50 / bare_p50;
        println!(
            "round {round}: bare commit p50 {bare_p50:.0} µs, outbox append p50 {outbox_p50:.0} µs, ratio {ratio:.2}"
        );
        ratios.push(ratio);
        bare_all.extend(bare_samples);
        outbox_all.extend(outbox_samples);
    }
    println!(
        "median of {ROUNDS} rounds × {PER_ROUND}: bare commit {:.0} µs, outbox append {:.0} µs, ratio {:.2} (min {:.2}, max {:.2})",
        median(bare_all),
        median(outbox_all),
        median(ratios.clone()),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    drop(outbox);
    writer.join();
}
