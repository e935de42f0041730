//! Rule evaluation cost: `cargo bench --bench rules`.
//!
//! Loads `examples/bench.yaml` (three validation rules, three connector filters) and the
//! 1.5 KB ORU of `examples/bench/oru-r01.hl7`, then times `RuleSet::evaluate` (binding the
//! variables plus all six expressions). Prints the median of 15 runs, per message and per
//! expression. Target: well under 10 µs per rule per message.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use mfoundry::config::Config;
use mfoundry::hl7::{Charset, Message, split_messages};
use mfoundry::rules::Validation;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load_with(Some(&root.join("examples/bench.yaml")), &|_| None)
        .expect("examples/bench.yaml loads");
    let rules = config.compile_rules().expect("rules compile");
    let expressions = config.rules.len() + config.filters.len();
    let sample = std::fs::read(root.join("examples/bench/oru-r01.hl7")).expect("sample");
    let message = split_messages(&sample)
        .expect("splits")
        .into_iter()
        .next()
        .map(|bytes| Message::parse(Bytes::from(bytes)).expect("parses"))
        .expect("one message");
    let evaluation = rules.evaluate(&message, Charset::UTF_8, "mllp");
    assert_eq!(evaluation.validation, Validation::Passed);

    let iterations = 20_000;
    let mut runs: Vec<f64> = (0..15)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(rules.evaluate(
                    std::hint::black_box(&message),
                    Charset::UTF_8,
                    "mllp",
                ));
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    let median = runs[runs.len() / 2];
    println!(
        "rules: {} expressions ({} rules, {} filters) on a {} byte ORU^R01",
        expressions,
        config.rules.len(),
        config.filters.len(),
        message.raw().len()
    );
    println!(
        "median {:.2} µs per message, {:.2} µs per expression (min {:.2}, max {:.2} µs per message)",
        median,
        median / expressions as f64,
        runs[0],
        runs[runs.len() - 1]
    );
}
