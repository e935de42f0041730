//! CEL rules: load-time checks and message-time evaluation.

use std::time::Duration;

use bytes::Bytes;
use mfoundry::hl7::{Charset, Message};
use mfoundry::rules::{
    Evaluation, ExpressionSource, FUNCTIONS, FilterSpec, Origin, RuleProblem, RuleSet, RuleSpec,
    Validation,
};

const ORU: &str = "MSH|^~\\&|LAB|LABFAC|HUB|HUBFAC|20261122080000||ORU^R01^ORU_R01|C1|P|2.5.1\r\
PID|1||111^^^H^MR~222^^^N^SS||DOE^JANE^Q||19800101|F|||1 Main St^^Town^ST^12345^USA||||||||123-45-6789\r\
PV1|1|I|WARD^101^A||||0042^ATTEND^ANNA\r\
OBX|1|NM|2093-3^CHOL^LN||196|mg/dL|||||F\r\
OBX|2|ST|NOTE^Note^L||a \\T\\ b||||||F\r";

fn source(text: &str) -> ExpressionSource {
    ExpressionSource {
        text: text.to_owned(),
        origin: Origin {
            file: Some("test.yaml".to_owned()),
            line: 3,
            column: 17,
        },
    }
}

fn rule(name: &str, text: &str) -> RuleSpec {
    RuleSpec {
        name: name.to_owned(),
        expression: source(text),
        message: Some(format!("{name} failed")),
    }
}

fn compile(rules: &[RuleSpec], filters: &[FilterSpec]) -> Result<RuleSet, Vec<RuleProblem>> {
    RuleSet::compile(rules, filters, Duration::from_secs(1))
}

fn evaluate(expressions: &[&str], message: &str) -> Evaluation {
    let rules: Vec<RuleSpec> = expressions
        .iter()
        .enumerate()
        .map(|(index, text)| rule(&format!("r{index}"), text))
        .collect();
    let set = compile(&rules, &[]).unwrap_or_else(|problems| panic!("{problems:?}"));
    let message = Message::parse(Bytes::from(message.to_owned())).expect("parses");
    set.evaluate(&message, Charset::UTF_8, "mllp")
}

fn passes(expression: &str) -> bool {
    match evaluate(&[expression], ORU).validation {
        Validation::Passed => true,
        Validation::Failed { .. } => false,
        Validation::Errored { detail, .. } => panic!("{expression}: {detail}"),
    }
}

#[test]
fn variables_carry_the_documented_fields() {
    for expression in [
        "msh.msg_type == 'ORU' && msh.trigger == 'R01' && msh.structure == 'ORU_R01'",
        "msh.sending_app == 'LAB' && msh.sending_fac == 'LABFAC'",
        "msh.receiving_app == 'HUB' && msh.receiving_fac == 'HUBFAC'",
        "msh.control_id == 'C1' && msh.version == '2.5.1' && msh.processing_id == 'P' && msh.charset == ''",
        "pid.id == '111' && pid.id_list == ['111', '222']",
        "pid.family == 'DOE' && pid.given == 'JANE' && pid.name == 'DOE^JANE^Q'",
        "pid.dob == '19800101' && pid.sex == 'F' && pid.ssn == '123-45-6789' && pid.country == 'USA'",
        "pv1.patient_class == 'I' && pv1.assigned_location == 'WARD^101^A'",
        "pv1.attending_doctor == '0042^ATTEND^ANNA' && pv1.admit_datetime == ''",
        "obx.value_type == 'NM' && obx.identifier == '2093-3' && obx.value == '196'",
        "obx.unit == 'mg/dL' && obx.status == 'F'",
        "size(obx_list) == 2 && obx_list[1].value == 'a & b'",
        "obx_list.exists(o, o.identifier == 'NOTE')",
        "field('PID-3[2].1') == '222' && field('OBX[2]-3.2') == 'Note' && field('ZZZ-1') == ''",
        "size(segments('OBX')) == 2 && segments('OBX')[0][5] == '196' && segments('PID')[0].name == 'PID'",
        "inbound == 'mllp'",
        "pid.?country.orValue('') == 'USA'",
        "has(pid.id) && has(pv1.patient_class)",
        "size(msh) == 11 && size(pid) == 9 && size(pv1) == 4 && size(obx) == 5",
        "msh['msg_type'] == 'ORU' && pid['family'] == 'DOE'",
    ] {
        assert!(passes(expression), "{expression}");
    }
    assert!(!passes("msh.msg_type == 'ADT'"));
}

#[test]
fn a_missing_segment_is_an_empty_map() {
    let without_pid = "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|X|P|2.5\r";
    let optional = evaluate(
        &["pid.?country.orValue('') == '' && size(pid) == 0"],
        without_pid,
    );
    assert_eq!(optional.validation, Validation::Passed);
    match evaluate(&["pid.id != ''"], without_pid).validation {
        Validation::Errored { subject, detail } => {
            assert!(subject.contains("r0"), "{subject}");
            assert!(detail.contains("a map key is missing"), "{detail}");
        }
        other => panic!("expected an evaluation error, got {other:?}"),
    }
}

#[test]
fn run_time_errors_never_quote_message_values() {
    let mut errored = 0;
    for expression in [
        "{'MRN001': true}[pid.id]",
        "int(pid.dob) * 1000000000000000 > 0",
        "field('PID-' + pid.family) == ''",
        "timestamp(pid.family) > timestamp('2020-01-01T00:00:00Z')",
        "int(pid.family) > 0",
    ] {
        let rules = [rule("r", expression)];
        let set = compile(&rules, &[]).unwrap_or_else(|problems| panic!("{problems:?}"));
        let message = Message::parse(Bytes::from_static(ORU.as_bytes())).expect("parses");
        if let Validation::Errored { detail, .. } =
            set.evaluate(&message, Charset::UTF_8, "mllp").validation
        {
            errored += 1;
            for value in ["111", "DOE", "JANE", "19800101", "PID-DOE"] {
                assert!(!detail.contains(value), "{expression}: {detail}");
            }
        }
    }
    assert_eq!(errored, 5, "every expression fails at run time");
}

#[test]
fn rules_run_in_order_and_the_first_false_one_rejects() {
    let evaluation = evaluate(&["true", "pid.sex == 'M'", "1 / 0 == 1"], ORU);
    assert_eq!(
        evaluation.validation,
        Validation::Failed {
            rule: "r1".to_owned(),
            message: "r1 failed".to_owned()
        }
    );
    // A value whose type only the message decides is checked when it is evaluated…
    match evaluate(&["dyn(msh.msg_type)"], ORU).validation {
        Validation::Errored { detail, .. } => assert!(detail.contains("true or false"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // …one known at load is refused then.
    let problems = compile(&[rule("r0", "msh.msg_type")], &[]).expect_err("not a bool");
    assert!(
        problems[0].to_string().contains("gives a string"),
        "{problems:?}"
    );
}

#[test]
fn filters_route_per_connector() {
    let filters = vec![
        FilterSpec {
            connector: "lab".to_owned(),
            expression: Some(source("msh.msg_type == 'ORU'")),
        },
        FilterSpec {
            connector: "adt".to_owned(),
            expression: Some(source("msh.msg_type == 'ADT'")),
        },
        FilterSpec {
            connector: "all".to_owned(),
            expression: None,
        },
    ];
    let set = compile(&[], &filters).expect("compiles");
    let message = Message::parse(Bytes::from_static(ORU.as_bytes())).expect("parses");
    let evaluation = set.evaluate(&message, Charset::UTF_8, "mllp");
    assert_eq!(evaluation.validation, Validation::Passed);
    assert_eq!(evaluation.routes, vec![true, false, true]);
}

#[test]
fn text_is_decoded_with_the_message_charset() {
    let latin1 =
        b"MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|X|P|2.5|||||DEU|8859/1\rPID|1||1||M\xfcller\r";
    let set = compile(&[rule("name", "pid.family == 'Müller'")], &[]).expect("compiles");
    let message = Message::parse(Bytes::from_static(latin1)).expect("parses");
    let charset = Charset::from_name("8859/1").expect("latin1");
    assert_eq!(
        set.evaluate(&message, charset, "mllp").validation,
        Validation::Passed
    );
}

fn problems(text: &str) -> Vec<String> {
    match compile(&[rule("bad", text)], &[]) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn load_time_checks_name_the_problem_and_place() {
    let unknown_variable = problems("patient.id == '1'");
    assert_eq!(unknown_variable.len(), 1);
    assert!(
        unknown_variable[0]
            .starts_with("test.yaml:3:17: validation rule \"bad\": unknown variable \"patient\""),
        "{unknown_variable:?}"
    );
    assert!(problems("frobnicate(msh.msg_type)")[0].contains("unknown function \"frobnicate\""));
    assert!(problems("msh['msg_typ'] == 'ADT'")[0].contains("msh has no field \"msg_typ\""));
    let syntax = problems("msh.msg_type == ");
    assert!(syntax[0].contains("does not compile"), "{syntax:?}");
    assert!(
        syntax[0].contains("(expression line 1, column"),
        "{syntax:?}"
    );
    assert!(problems("field('PID-x')")[0].contains("field path \"PID-x\" is invalid"));
    assert!(problems("field('PID-3', 'x') == ''")[0].contains("takes exactly one argument"));
    assert!(problems("size(segments('OBXX')) > 0")[0].contains("three letters"));
    assert!(problems("")[0].contains("empty"));
    assert!(problems(&"a".repeat(5000))[0].contains("at most 4096"));
    let deep = format!("{}true{}", "(".repeat(60), ")".repeat(60));
    assert!(!problems(&deep).is_empty(), "nesting is bounded");
    let nested = "obx_list.all(a, obx_list.all(b, obx_list.all(c, true)))";
    assert!(problems(nested)[0].contains("nested more than 2 deep"));
    // Nested over two message lists: a million evaluations of the body (ADR 0012).
    assert!(problems("obx_list.all(a, obx_list.exists(b, a == b))")[0].contains("steps"));
    assert!(problems("['GLU', 'NA'].all(code, obx_list.exists(o, o.id == code))").is_empty());
    // A pattern from message data cannot be bounded: refused at load.
    assert!(problems("pid.family.matches(pid.given + '(')")[0].contains("literal pattern"));
}

#[test]
fn every_allowed_function_exists_in_the_engine() {
    let samples = [
        ("field", "field('MSH-9.1') == 'ORU'"),
        ("segments", "size(segments('OBX')) == 2"),
        ("size", "size('abc') == 3"),
        ("contains", "'abc'.contains('b')"),
        ("startsWith", "'abc'.startsWith('a')"),
        ("endsWith", "'abc'.endsWith('c')"),
        ("matches", "'abc'.matches('^a.c$')"),
        ("int", "int('42') == 42"),
        ("uint", "uint(42) == 42u"),
        ("double", "double(1) == 1.0"),
        ("string", "string(1) == '1'"),
        ("bytes", "bytes('a') == b'a'"),
        ("bool", "bool('true')"),
        ("type", "type(1) == int"),
        ("dyn", "dyn(1) == 1"),
        ("duration", "duration('1s') == duration('1000ms')"),
        (
            "timestamp",
            "timestamp('2026-01-01T00:00:00Z') < timestamp('2027-01-01T00:00:00Z')",
        ),
        (
            "getDate",
            "timestamp('2026-01-02T00:00:00Z').getDate() == 2",
        ),
        (
            "getDayOfMonth",
            "timestamp('2026-01-02T00:00:00Z').getDayOfMonth() == 1",
        ),
        (
            "getDayOfWeek",
            "timestamp('2026-01-02T00:00:00Z').getDayOfWeek() >= 0",
        ),
        (
            "getDayOfYear",
            "timestamp('2026-01-02T00:00:00Z').getDayOfYear() == 1",
        ),
        (
            "getFullYear",
            "timestamp('2026-01-02T00:00:00Z').getFullYear() == 2026",
        ),
        (
            "getHours",
            "timestamp('2026-01-02T03:00:00Z').getHours() == 3",
        ),
        (
            "getMilliseconds",
            "timestamp('2026-01-02T00:00:00Z').getMilliseconds() == 0",
        ),
        (
            "getMinutes",
            "timestamp('2026-01-02T00:04:00Z').getMinutes() == 4",
        ),
        (
            "getMonth",
            "timestamp('2026-01-02T00:00:00Z').getMonth() == 0",
        ),
        (
            "getSeconds",
            "timestamp('2026-01-02T00:00:05Z').getSeconds() == 5",
        ),
        ("hasValue", "optional.of(1).hasValue()"),
        ("value", "optional.of(1).value() == 1"),
        ("or", "optional.none().or(optional.of(2)).value() == 2"),
        ("orValue", "optional.none().orValue(3) == 3"),
        ("of", "optional.of(1).hasValue()"),
        ("none", "!optional.none().hasValue()"),
        ("ofNonZeroValue", "!optional.ofNonZeroValue(0).hasValue()"),
    ];
    let covered: Vec<&str> = samples.iter().map(|(name, _)| *name).collect();
    for name in FUNCTIONS {
        assert!(
            covered.contains(name),
            "no sample for allowed function {name}"
        );
    }
    for (name, expression) in samples {
        assert!(passes(expression), "{name}: {expression}");
    }
}
