//! Rule evaluation cost: `cargo bench --bench rules`.
//!
//! Loads `examples/bench.yaml` (three validation rules, three connector filters) and the
//! 1.5 KB ORU of `examples/bench/oru-r01.hl7`, then times `RuleSet::evaluate` (binding the
//! variables plus all six expressions). Prints the median of 15 runs, per message and per
//! expression. Target: well under 10 µs per rule per message.
//!
//! Then the worst case the load-time bound allows (ADR 0012): one rule near the cost limit
//! (a comprehension over 1000 OBX segments with a literal pattern and a few comparisons in
//! its body) on a 16 MiB-class ORU whose OBX values are 16 KiB each; prints its time.

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
    worst_case();
}

fn worst_case() {
    use mfoundry::rules::{ExpressionSource, Origin, RuleSet, RuleSpec};
    let text = "obx_list.all(o, o.value.matches('^[A-Z0-9 ]*(X|Y)[A-Z0-9 ]*$') || (o.status == 'F' && o.value.contains('QQ')) || o.id.startsWith('Z'))";
    let rules = [RuleSpec {
        name: "worst".to_owned(),
        expression: ExpressionSource {
            text: text.to_owned(),
            origin: Origin::default(),
        },
        message: None,
    }];
    let set = RuleSet::compile(&rules, &[], std::time::Duration::from_secs(60))
        .expect("within the load-time bound");
    let mut raw = b"MSH|^~\\&|LAB|N|EHR|N|20261205||ORU^R01|W1|P|2.5.1\rPID|1||1\r".to_vec();
    let value = "A1 ".repeat(16 * 1024 / 3);
    for index in 0..1000 {
        raw.extend_from_slice(format!("OBX|{index}|ST|C{index}||{value}|||||F\r").as_bytes());
    }
    let message = Message::parse(Bytes::from(raw)).expect("parses");
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(set.evaluate(&message, Charset::UTF_8, "mllp"));
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    println!(
        "worst case within the load-time bound: one rule over 1000 OBX of 16 KiB ({} MiB message): median {:.1} ms (min {:.1}, max {:.1})",
        message.raw().len() >> 20,
        runs[runs.len() / 2],
        runs[0],
        runs[runs.len() - 1]
    );
}
