//! Transforms on real message shapes: each action, `when`, escaping, character sets, the
//! failures that send one connector's copy to its DLQ, and the load-time checks.

use super::*;
use crate::rules::Origin;

const ORU: &str = "MSH|^~\\&|LAB|NORTH|EHR|HOSP|20240101120000||ORU^R01|C1|P|2.5\rPID|1||123^^^MRN~456^^^SSA||DOE^JOHN||19700101|M\rPV1|1|I|WARD1^101^A\rOBR|1||||\rOBX|1|NM|GLU^Glucose||5.5|mmol/L\rNTE|1||checked twice\rOBX|2|NM|K^Potassium||4.1|mmol/L\rNTE|1||hemolysed\r";

fn located(text: &str) -> Located {
    Located {
        text: text.to_owned(),
        origin: Origin {
            file: Some("gateway.yaml".to_owned()),
            line: 7,
            column: 9,
        },
    }
}

fn cel(text: &str) -> ExpressionSource {
    ExpressionSource {
        text: text.to_owned(),
        origin: Origin::default(),
    }
}

fn step(action: ActionSpec) -> StepSpec {
    StepSpec {
        action,
        when: None,
        origin: Origin::default(),
    }
}

fn set(target: &str, value: &str) -> StepSpec {
    step(ActionSpec::Set {
        target: located(target),
        value: cel(value),
    })
}

fn tables() -> Tables {
    Tables::load(
        &[
            TableSpec {
                name: "lab_codes".to_owned(),
                source: TableSource::Values(vec![
                    ("GLU".to_owned(), "2345-7".to_owned()),
                    ("K".to_owned(), "2823-3".to_owned()),
                ]),
                default: None,
                origin: Origin::default(),
            },
            TableSpec {
                name: "sex".to_owned(),
                source: TableSource::Values(vec![("M".to_owned(), "male".to_owned())]),
                default: Some("unknown".to_owned()),
                origin: Origin::default(),
            },
        ],
        std::path::Path::new("."),
    )
    .expect("tables")
}

fn compile(steps: Vec<StepSpec>) -> Result<Transforms, Vec<RuleProblem>> {
    Transforms::compile(
        &[TransformSpec {
            connector: "emr".to_owned(),
            steps,
        }],
        &tables(),
        Duration::from_secs(1),
    )
}

fn apply(steps: Vec<StepSpec>, message: &str) -> Result<String, StepFailure> {
    let transforms = compile(steps).expect("compiles");
    let message = Message::parse(Bytes::from(message.to_owned())).expect("parses");
    let out = transforms
        .apply("emr", &message, Charset::UTF_8, "mllp")?
        .expect("emr has steps");
    Ok(String::from_utf8(out).expect("utf-8"))
}

fn segment<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split('\r')
        .filter(|segment| segment.starts_with(name))
        .collect()
}

#[test]
fn the_documented_steps_rewrite_the_copy() {
    let out = apply(
        vec![
            set("MSH-5", "\"EMR\""),
            step(ActionSpec::Copy {
                from: located("PID-3[1].1"),
                to: located("PID-2"),
            }),
            step(ActionSpec::Map {
                field: located("OBX[*]-3.1"),
                table: located("lab_codes"),
            }),
            step(ActionSpec::Delete {
                target: located("NTE"),
            }),
            step(ActionSpec::Delete {
                target: located("PID-19"),
            }),
            StepSpec {
                when: Some(cel("msh.sending_fac == \"NORTH\"")),
                ..set("PV1-3.1", "field(\"PV1-3.1\") + \"-N\"")
            },
        ],
        ORU,
    )
    .expect("applies");
    assert!(out.starts_with("MSH|^~\\&|LAB|NORTH|EMR|HOSP|"), "{out}");
    assert_eq!(
        segment(&out, "PID")[0],
        "PID|1|123|123^^^MRN~456^^^SSA||DOE^JOHN||19700101|M"
    );
    assert_eq!(segment(&out, "PV1")[0], "PV1|1|I|WARD1-N^101^A");
    let observations = segment(&out, "OBX");
    assert!(
        observations[0].starts_with("OBX|1|NM|2345-7^Glucose|"),
        "{out}"
    );
    assert!(
        observations[1].starts_with("OBX|2|NM|2823-3^Potassium|"),
        "{out}"
    );
    assert!(segment(&out, "NTE").is_empty());
    assert!(out.ends_with('\r'));
}

#[test]
fn each_step_sees_the_copy_so_far_and_when_skips() {
    let out = apply(
        vec![
            set("PID-2", "\"A\""),
            set("PID-4", "field(\"PID-2\") + \"B\""),
            StepSpec {
                when: Some(cel("field(\"PID-4\") == \"AB\"")),
                ..set("PID-6", "\"seen\"")
            },
            StepSpec {
                when: Some(cel("msh.sending_fac == \"SOUTH\"")),
                ..set("PID-9", "\"never\"")
            },
        ],
        ORU,
    )
    .expect("applies");
    assert_eq!(
        segment(&out, "PID")[0],
        "PID|1|A|123^^^MRN~456^^^SSA|AB|DOE^JOHN|seen|19700101|M"
    );
}

#[test]
fn written_values_are_escaped_with_the_messages_delimiters() {
    let custom = ORU.replace("MSH|^~\\&|", "MSH|^~$&|");
    let out = apply(vec![set("PID-2", "\"a|b^c&d~e$f\\\\g\"")], &custom).expect("applies");
    assert_eq!(
        segment(&out, "PID")[0].split('|').nth(2),
        Some("a$F$b$S$c$T$d$R$e$E$f\\g")
    );
}

#[test]
fn map_uses_the_default_and_fails_without_one() {
    let out = apply(
        vec![step(ActionSpec::Map {
            field: located("PID-8"),
            table: located("sex"),
        })],
        &ORU.replace("19700101|M", "19700101|X"),
    )
    .expect("default");
    assert!(segment(&out, "PID")[0].ends_with("|unknown"), "{out}");
    let failure = apply(
        vec![
            set("MSH-5", "\"EMR\""),
            step(ActionSpec::Map {
                field: located("OBX[*]-3.1"),
                table: located("lab_codes"),
            }),
        ],
        &ORU.replace("K^Potassium", "NA^Sodium"),
    )
    .expect_err("no row for NA");
    assert_eq!(failure.step, 2);
    assert_eq!(failure.action, "map OBX[*]-3.1 with lab_codes");
    let text = failure.to_string();
    assert!(
        text.contains("OBX[2]-3.1") && !text.contains("NA"),
        "{text}"
    );
}

#[test]
fn deleting_one_occurrence_and_clearing_repetitions() {
    let out = apply(
        vec![
            step(ActionSpec::Delete {
                target: located("NTE[2]"),
            }),
            step(ActionSpec::Delete {
                target: located("PID-3[*].4"),
            }),
        ],
        ORU,
    )
    .expect("applies");
    assert_eq!(segment(&out, "NTE"), ["NTE|1||checked twice"]);
    assert!(segment(&out, "PID")[0].contains("|123^^^~456^^^|"), "{out}");
}

#[test]
fn a_value_the_character_set_cannot_carry_fails_the_step() {
    let latin = ORU.replace("|P|2.5\r", "|P|2.5|||||8859/1\r");
    let message = Message::parse(Bytes::from(latin)).expect("parses");
    let transforms =
        compile(vec![set("PID-2", "\"Zoë\""), set("PID-4", "\"日本\"")]).expect("compiles");
    let charset = Charset::from_name("8859/1").expect("charset");
    let failure = transforms
        .apply("emr", &message, charset, "mllp")
        .expect_err("Japanese is not Latin-1");
    assert_eq!(failure.step, 2);
    assert!(failure.reason.contains("windows-1252"), "{failure}");
}

#[test]
fn a_connector_without_steps_delivers_the_received_bytes() {
    let transforms = compile(Vec::new()).expect("compiles");
    let message = Message::parse(Bytes::from_static(ORU.as_bytes())).expect("parses");
    assert!(!transforms.transforms("emr"));
    assert_eq!(
        transforms.apply("emr", &message, Charset::UTF_8, "mllp"),
        Ok(None)
    );
    assert_eq!(
        transforms.apply("other", &message, Charset::UTF_8, "mllp"),
        Ok(None)
    );
}

#[test]
fn load_checks_name_every_problem_with_its_place() {
    let problems = compile(vec![
        set("MSH-2", "\"x\""),
        set("PID", "\"x\""),
        set("PID-5", "1 + 2"),
        step(ActionSpec::Copy {
            from: located("OBX[*]-5"),
            to: located("pid-2"),
        }),
        step(ActionSpec::Map {
            field: located("OBX-3.1"),
            table: located("loinc"),
        }),
        StepSpec {
            when: Some(cel("msh.msg_type")),
            ..step(ActionSpec::Delete {
                target: located("MSH"),
            })
        },
        set("PID-6", "unknown_name"),
    ])
    .expect_err("refused");
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let all = text.join("\n");
    for wanted in [
        "step 1 (set): MSH-2 is part of the message's delimiters",
        "gateway.yaml:7:9: connector \"emr\" transform step 2 (set): PID names a whole segment",
        "step 3 (set) `value`: the expression gives an int",
        "copy reads one place; OBX[*]-5 names several",
        "field path \"pid-2\" is invalid",
        "unknown table \"loinc\"; the tables are lab_codes, sex",
        "step 6 (delete) `when`: the expression gives a string",
        "MSH is the message header, which cannot be deleted",
        "unknown variable \"unknown_name\"",
    ] {
        assert!(all.contains(wanted), "missing {wanted:?} in\n{all}");
    }
}

#[test]
fn deleting_a_field_empties_every_repetition_and_a_repetition_only_itself() {
    let out = apply(
        vec![step(ActionSpec::Delete {
            target: located("PID-3"),
        })],
        ORU,
    )
    .expect("applies");
    assert_eq!(segment(&out, "PID")[0], "PID|1||||DOE^JOHN||19700101|M");
    let out = apply(
        vec![step(ActionSpec::Delete {
            target: located("PID-3[2]"),
        })],
        ORU,
    )
    .expect("applies");
    assert_eq!(
        segment(&out, "PID")[0],
        "PID|1||123^^^MRN~||DOE^JOHN||19700101|M"
    );
}

#[test]
fn copies_that_would_shift_places_are_refused_at_load() {
    let problems = compile(vec![
        step(ActionSpec::Copy {
            from: located("MSH-1"),
            to: located("PID-2"),
        }),
        step(ActionSpec::Copy {
            from: located("PID-3[1]"),
            to: located("PID-5.1"),
        }),
        set("PID-100000", "\"x\""),
    ])
    .expect_err("refused");
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let all = all.join("\n");
    for wanted in [
        "MSH-1 is one of the message's delimiters",
        "copy from PID-3[1] into PID-5.1 would put separators inside a component",
        "numbers from 1 to 99999",
    ] {
        assert!(all.contains(wanted), "missing {wanted:?} in\n{all}");
    }
}

#[test]
fn a_step_over_many_segments_stays_within_the_time_budget() {
    // 200,000 OBX segments: linear work, and the budget is checked inside the step.
    let mut message = String::from("MSH|^~\\&|LAB|NORTH|EHR|HOSP|20240101||ORU^R01|C1|P|2.5\r");
    for _ in 0..200_000 {
        message.push_str("OBX|1|NM|GLU\r");
    }
    let transforms = Transforms::compile(
        &[TransformSpec {
            connector: "emr".to_owned(),
            steps: vec![step(ActionSpec::Map {
                field: located("OBX[*]-3.1"),
                table: located("lab_codes"),
            })],
        }],
        &tables(),
        Duration::from_millis(1),
    )
    .expect("compiles");
    let message = Message::parse(Bytes::from(message)).expect("parses");
    let failure = transforms
        .apply("emr", &message, Charset::UTF_8, "mllp")
        .expect_err("over budget");
    assert!(failure.reason.contains("time budget"), "{failure}");
}
