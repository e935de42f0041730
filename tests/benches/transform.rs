//! Transform and FHIR conversion cost: `cargo bench --bench transform`.
//!
//! On the 1.5 KB ORU of `examples/bench/oru-r01.hl7` (20 OBX): a six-step transform (two
//! `set`s of constants, a `copy`, a `map` of every OBX-3.1 through a table, a `delete` of
//! every NTE, a `set` with a `when` and `field()`), and the FHIR conversion to a Bundle
//! serialized as JSON (what `format: fhir` sends). Then the load of a 100,000-row table.
//! Prints medians of 15 runs. Targets: under 20 µs and 100 µs per message; the table well
//! under a second.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mfoundry::hl7::{Charset, Message, split_messages};
use mfoundry::rules::{ExpressionSource, Origin};
use mfoundry::transform::{
    ActionSpec, Located, StepSpec, TableSource, TableSpec, Tables, TransformSpec, Transforms,
};

fn located(text: &str) -> Located {
    Located {
        text: text.to_owned(),
        origin: Origin::default(),
    }
}

fn cel(text: &str) -> ExpressionSource {
    ExpressionSource {
        text: text.to_owned(),
        origin: Origin::default(),
    }
}

fn step(action: ActionSpec, when: Option<&str>) -> StepSpec {
    StepSpec {
        action,
        when: when.map(cel),
        origin: Origin::default(),
    }
}

/// Median microseconds per call of `work` over 15 runs of `iterations`.
fn median_micros(iterations: u32, mut work: impl FnMut()) -> (f64, f64, f64) {
    let mut runs: Vec<f64> = (0..15)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                work();
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    (runs[runs.len() / 2], runs[0], runs[runs.len() - 1])
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = std::fs::read(root.join("examples/bench/oru-r01.hl7")).expect("sample");
    let message = split_messages(&sample)
        .expect("splits")
        .into_iter()
        .next()
        .map(|bytes| Message::parse(Bytes::from(bytes)).expect("parses"))
        .expect("one message");

    let rows: Vec<(String, String)> = (1..=40)
        .map(|n| (format!("{}-{}", 2000 + n, n), format!("LOINC-{n}")))
        .collect();
    let tables = Tables::load(
        &[TableSpec {
            name: "lab_codes".to_owned(),
            source: TableSource::Values(rows),
            default: None,
            origin: Origin::default(),
        }],
        Path::new("."),
    )
    .expect("table");
    let steps = vec![
        step(
            ActionSpec::Set {
                target: located("MSH-5"),
                value: cel("\"EMR\""),
            },
            None,
        ),
        step(
            ActionSpec::Set {
                target: located("MSH-6"),
                value: cel("\"NORTH\""),
            },
            None,
        ),
        step(
            ActionSpec::Copy {
                from: located("PID-3[1].1"),
                to: located("PID-2"),
            },
            None,
        ),
        step(
            ActionSpec::Map {
                field: located("OBX[*]-3.1"),
                table: located("lab_codes"),
            },
            None,
        ),
        step(
            ActionSpec::Delete {
                target: located("NTE"),
            },
            None,
        ),
        step(
            ActionSpec::Set {
                target: located("PV1-3.1"),
                value: cel("field(\"PV1-3.1\") + \"-N\""),
            },
            Some("msh.sending_fac == \"CENTRAL LAB\""),
        ),
    ];
    let transforms = Transforms::compile(
        &[TransformSpec {
            connector: "emr".to_owned(),
            steps,
        }],
        &tables,
        Duration::from_secs(1),
    )
    .expect("compiles");
    let copy = transforms
        .apply("emr", &message, Charset::UTF_8, "mllp")
        .expect("applies")
        .expect("a copy");
    assert!(copy.windows(6).any(|window| window == b"LOINC-"), "mapped");

    let (median, min, max) = median_micros(5_000, || {
        std::hint::black_box(
            transforms
                .apply(
                    "emr",
                    std::hint::black_box(&message),
                    Charset::UTF_8,
                    "mllp",
                )
                .expect("applies"),
        );
    });
    println!(
        "transform: 6 steps on a {} byte ORU^R01 with 20 OBX: median {median:.2} µs per message (min {min:.2}, max {max:.2})",
        message.raw().len()
    );

    let ids = mfoundry::fhir::Ids {
        instance_id: 1,
        message_id: 2,
        entry: 2,
        connector: "fhir",
    };
    let (median, min, max) = median_micros(2_000, || {
        let bundle = mfoundry::fhir::bundle(std::hint::black_box(&message), Charset::UTF_8, ids)
            .expect("converts");
        std::hint::black_box(serde_json::to_vec(&bundle).expect("serializes"));
    });
    println!(
        "fhir: Bundle (Patient, DiagnosticReport, 20 Observations) serialized: median {median:.2} µs per message (min {min:.2}, max {max:.2})"
    );

    let directory = tempfile::tempdir().expect("tempdir");
    let mut csv = String::from("from,to\n");
    for n in 0..100_000 {
        csv.push_str(&format!("LOCAL{n:06},{}-{}\n", 10_000 + n, n % 10));
    }
    std::fs::write(directory.path().join("big.csv"), csv).expect("write");
    let spec = TableSpec {
        name: "big".to_owned(),
        source: TableSource::File("big.csv".into()),
        default: None,
        origin: Origin::default(),
    };
    let mut loads: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let tables =
                Tables::load(std::slice::from_ref(&spec), directory.path()).expect("loads");
            assert_eq!(tables.get("big").map(|table| table.len()), Some(100_000));
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    loads.sort_by(f64::total_cmp);
    println!("table: 100,000 rows from CSV: median {:.1} ms", loads[2]);
}
