//! What a sender hears because of a rule: the go-gateway example on master files and patient
//! messages, `AR` (never `AE`) for a rule that cannot be evaluated, and what `mfoundry check`
//! says of a rule whose meaning changed.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mfoundry::hl7::{AckCode, Charset, FixedStamper};
use mfoundry::ingest::{Decided, Decider, Decision};
use mfoundry::outbox::{ConnectorId, Disposition};
use mfoundry::rules::{ExpressionSource, FilterSpec, Origin, RuleSet, RuleSpec};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The cases of `tests/fixtures/go-gateway` (an MFN^M02 master-file message, which carries
/// no patient; ADT^A01 with a patient id, without PID-3, and without PID) run through the
/// gateway's own decision with `examples/go-gateway.yaml`, as `mfoundry test` runs them.
#[test]
fn the_go_gateway_example_accepts_master_files_and_refuses_patient_messages_without_an_id() {
    let (code, stdout, stderr) = common::run_binary(
        root(),
        &[
            "test",
            "--config",
            "examples/go-gateway.yaml",
            "tests/fixtures/go-gateway",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for case in [
        "ok     tests/fixtures/go-gateway/mfn-m02-master-file",
        "ok     tests/fixtures/go-gateway/adt-a01-without-pid-3",
        "ok     tests/fixtures/go-gateway/adt-a01-without-pid",
        "ok     tests/fixtures/go-gateway/adt-a01-with-patient-id",
        "4 passed, 0 failed",
    ] {
        assert!(stdout.contains(case), "missing {case:?} in\n{stdout}");
    }
    let expected = |case: &str| {
        std::fs::read_to_string(
            root()
                .join("tests/fixtures/go-gateway")
                .join(case)
                .join("expect.yaml"),
        )
        .expect("expect.yaml")
    };
    assert!(expected("mfn-m02-master-file").starts_with("ack: AA\n"));
    assert!(expected("adt-a01-without-pid-3").starts_with("ack: AR\n"));
    assert!(expected("adt-a01-without-pid").starts_with("ack: AR\n"));
}

fn source(text: &str) -> ExpressionSource {
    ExpressionSource {
        text: text.to_owned(),
        origin: Origin::default(),
    }
}

fn decide(
    rules: &[(&str, &str)],
    filter: Option<&str>,
    budget: Duration,
    message: &str,
) -> Decided {
    let rules: Vec<RuleSpec> = rules
        .iter()
        .map(|(name, text)| RuleSpec {
            name: (*name).to_owned(),
            expression: source(text),
            message: None,
        })
        .collect();
    let filters = [FilterSpec {
        connector: "lab".to_owned(),
        expression: filter.map(source),
        order_by: None,
    }];
    let set = RuleSet::compile(&rules, &filters, budget).expect("compiles");
    let decider = Decider::new(
        Charset::UTF_8,
        Arc::new(FixedStamper(common::fixed_stamp())),
        Arc::new(set),
        |_| Some(ConnectorId(1)),
        "mllp",
    )
    .expect("decider");
    match decider.decide_frame(Bytes::from(message.replace('\n', "\r")), None) {
        Decision::Decided(decided) => *decided,
        Decision::Done(outcome) => panic!("not decided: {outcome:?}"),
    }
}

const MFN: &str = "MSH|^~\\&|MDM|HOSP|HUB|HUBFAC|20260101120000||MFN^M02^MFN_M02|MFN0001|P|2.5.1
MFI|PRA^Practitioner master file^HL70175||UPD|||AL
MFE|MAD|U0001|20260101120000|0042^SMITH^ALEX^^^DR|CWE
";

#[test]
fn a_rule_that_cannot_be_evaluated_answers_ar_never_ae() {
    let second = Duration::from_secs(1);
    // A segment the message lacks no longer errors: the rule is false, the message REJECTED.
    let absent = decide(&[("require-pid", "pid.id != ''")], None, second, MFN);
    assert_eq!(absent.reply_code, Some(AckCode::AR));
    assert_eq!(absent.disposition, Disposition::Rejected);

    // What can still fail to evaluate: a conversion of a value that is not a number (PID-7
    // is "" here), a filter, the time budget. Each answers AR and is stored as ERROR.
    let cases = [
        (
            decide(
                &[("born-after-1900", "int(pid.dob) > 19000101")],
                None,
                second,
                MFN,
            ),
            "validation rule \"born-after-1900\"",
        ),
        (
            decide(&[], Some("int(obx.value) > 5"), second, MFN),
            "filter of connector \"lab\"",
        ),
        (
            decide(&[("slow", "true")], None, Duration::ZERO, MFN),
            "validation rule \"slow\"",
        ),
    ];
    for (decided, subject) in cases {
        assert_eq!(decided.reply_code, Some(AckCode::AR), "{subject}");
        assert_eq!(decided.decided, AckCode::AR, "{subject}");
        assert_eq!(decided.disposition, Disposition::Error, "{subject}");
        let ack = decided.ack.expect("an ACK is sent");
        assert_eq!(common::field(&ack, "MSA", 1), "AR", "{subject}");
        assert!(
            common::field(&ack, "ERR", 3).starts_with("207"),
            "{subject}"
        );
        assert!(
            common::field(&ack, "ERR", 8).contains(&format!(
                "{subject} could not be evaluated for this message"
            )),
            "{}",
            String::from_utf8_lossy(&ack)
        );
    }

    // Enhanced mode (MSH-15 AL): CR, never CE.
    let enhanced = MFN.replacen("|P|2.5.1", "|P|2.5.1|||AL|NE", 1);
    let decided = decide(
        &[("born-after-1900", "int(pid.dob) > 19000101")],
        None,
        second,
        &enhanced,
    );
    assert_eq!(decided.decided, AckCode::CR);
    assert_eq!(decided.reply_code, Some(AckCode::CR));
    assert_eq!(decided.disposition, Disposition::Error);
}

#[test]
fn check_warns_of_a_rule_whose_meaning_changed_and_still_passes() {
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("changed.yaml");
    std::fs::write(
        &file,
        "connectors:
  - name: visits
    type: file
    directory: ./out
    filter: 'size(pv1) > 0'
    transform:
      - set: MSH-5
        value: '\"EMR\"'
        when: 'pid.?id.hasValue()'
validation:
  rules:
    - name: has-patient
      expression: has(pid.id)
    - name: patient-id
      expression: 'pid.?id.orValue(\"\") != \"\"'
",
    )
    .expect("config");
    let config = file.display().to_string();
    let (code, stdout, stderr) =
        common::run_binary(directory.path(), &["check", "--config", &config], &[]);
    assert_eq!(code, 0, "a warning is not a failure: {stdout}{stderr}");
    assert!(stdout.starts_with("ok: "), "{stdout}");
    let warnings: Vec<&str> = stderr.lines().collect();
    assert_eq!(warnings.len(), 3, "{stderr}");
    assert!(
        warnings[0].starts_with(&format!(
            "mfoundry check: warning: {config}:13:19: validation rule \"has-patient\": has(pid.id) is true for every message"
        )),
        "{stderr}"
    );
    assert!(
        warnings[1].contains("filter of connector \"visits\": pv1 used as a whole map"),
        "{stderr}"
    );
    assert!(
        warnings[2]
            .contains("transform step 1 (set) `when`: pid.?id has a value for every message"),
        "{stderr}"
    );
    for warning in warnings {
        assert!(warning.contains("size(segments("), "{warning}");
    }
}
