//! CEL rules: load-time checks and message-time evaluation; every shipped expression
//! ([`shipped`]); what a sender hears because of a rule ([`answers`]).

mod answers;
mod shipped;

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

/// A master-file message: MSH and the MFN segments, no PID, PV1 or OBX (synthetic).
const MFN_M02: &str = "MSH|^~\\&|MDM|HOSP|HUB|HUBFAC|20260101120000||MFN^M02^MFN_M02|MFN0001|P|2.5.1\r\
MFI|PRA^Practitioner master file^HL70175||UPD|||AL\r\
MFE|MAD|U0001|20260101120000|0042^SMITH^ALEX^^^DR|CWE\r\
STF|0042|U0001|SMITH^ALEX^^^DR\r";

#[test]
fn a_missing_segment_binds_empty_values_and_never_fails_to_evaluate() {
    // Every key of every variable: `""`, and `[]` for the lists (the docs' promise for
    // fields, now for segments too).
    for expression in [
        "pid.id == '' && pid.id_list == [] && pid.name == '' && pid.family == '' && pid.given == ''",
        "pid.dob == '' && pid.sex == '' && pid.ssn == '' && pid.country == ''",
        "pv1.patient_class == '' && pv1.assigned_location == '' && pv1.attending_doctor == '' && pv1.admit_datetime == ''",
        "obx.value_type == '' && obx.identifier == '' && obx.value == '' && obx.unit == '' && obx.status == ''",
        "obx_list == [] && size(obx_list) == 0 && !obx_list.exists(o, o.status == 'F')",
        "pid['id'] == '' && size(pid.id_list) == 0 && !('MRN1' in pid.id_list)",
        "msh.msg_type == 'MFN' && msh.trigger == 'M02' && msh.control_id == 'MFN0001'",
        // The optional forms the shipped configurations use still give "".
        "pid.?id.orValue('') == '' && pid.?sex.orValue('') != 'F'",
        "msh.msg_type == 'ACK' || pid.?id.orValue('') == ''",
        // Whether the message carries a segment: segments(), field() gives "" as always.
        "size(segments('PID')) == 0 && size(segments('STF')) == 1 && field('PID-3') == ''",
        // has() and size() still evaluate; their meaning changed (see the warnings below).
        "has(pid.id) && has(pv1.patient_class) && size(pid) == 9",
    ] {
        match evaluate(&[expression], MFN_M02).validation {
            Validation::Passed => {}
            other => panic!("{expression}: {other:?}"),
        }
    }
    // Was an evaluation error (no such key): now simply false, so the rule's message is
    // what the sender gets.
    assert_eq!(
        evaluate(&["pid.id != ''"], MFN_M02).validation,
        Validation::Failed {
            rule: "r0".to_owned(),
            message: "r0 failed".to_owned(),
        }
    );
    let only_msh = "MSH|^~\\&|A|B|C|D|20261122080000||ADT^A01|X|P|2.5\r";
    assert_eq!(
        evaluate(
            &["pid.id == '' && obx.status == '' && pv1.patient_class == ''"],
            only_msh
        )
        .validation,
        Validation::Passed
    );
}

#[test]
fn an_expression_whose_meaning_changed_loads_with_a_warning_naming_it_and_the_fix() {
    let rules = [
        rule("has-pid", "has(pid.id)"),
        rule(
            "optional",
            "pid.?id.hasValue() && pid.?id.orValue('') != ''",
        ),
        rule("fine", "pid.?id.orValue('') != '' && pid.id != ''"),
    ];
    let filters = [FilterSpec {
        connector: "no-visit".to_owned(),
        expression: Some(source("size(pv1) == 0")),
        order_by: None,
    }];
    let set = compile(&rules, &filters).expect("loads: a warning is not an error");
    let warnings: Vec<String> = set.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(
            "test.yaml:3:17: validation rule \"has-pid\": has(pid.id) is true for every message"
        ),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].contains("validation rule \"optional\": pid.?id has a value for every message")
    );
    assert!(warnings[2].contains("filter of connector \"no-visit\": pv1 used as a whole map"));
    for warning in &warnings {
        assert!(warning.contains("size(segments("), "{warning}");
    }
}

#[test]
fn a_string_compared_with_a_number_is_refused_naming_the_rule_and_the_fix() {
    let refused = problems("pid.dob > 19000101");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0],
        "test.yaml:3:17: validation rule \"bad\": a string > an int compares values of different types, \
which fails to evaluate for every message (such values cannot be ordered); message values are \
strings: write pid.dob > \"19000101\" (text order: right for dates and codes of one length), or \
int(pid.dob) > 19000101 (an evaluation error, so AR, for a message whose value is not a number)"
    );
    for (text, wanted) in [
        ("19000101 <= pid.dob", "write pid.dob <= \"19000101\""),
        ("pid.id == 5", "which is never true"),
        ("pid.id != 5", "which is always true"),
        ("field('PID-7') >= 1.5", "double(field(\"PID-7\")) >= 1.5"),
        ("obx_list.exists(o, o.value > 5)", "write o.value > \"5\""),
        (
            "obx_list[0].status == 1",
            "compares values of different types",
        ),
    ] {
        let found = problems(text);
        assert!(
            found.iter().any(|problem| problem.contains(wanted)),
            "{text}: {found:?}"
        );
    }
    assert!(
        problems("pid.id == size(obx_list)")[0].contains("compare with a quoted value (\"5\")"),
        "only a number written in the rule is quoted back"
    );
    // What the fixes say loads…
    assert!(problems("pid.dob > '19000101' && int(pid.dob) > 19000101").is_empty());
    // …and what the problems say of CEL holds: an ordering of a string and a number fails to
    // evaluate, an equality is false (`dyn` hides the types from the load-time check).
    assert!(matches!(
        evaluate(&["dyn(pid.dob) > 19000101"], ORU).validation,
        Validation::Errored { .. }
    ));
    assert!(matches!(
        evaluate(&["dyn(pid.id) == 111"], ORU).validation,
        Validation::Failed { .. }
    ));
    assert_eq!(
        evaluate(&["dyn(pid.id) != 111"], ORU).validation,
        Validation::Passed
    );
}

#[test]
fn a_rule_or_filter_that_is_not_true_or_false_is_refused_naming_it_and_the_fix() {
    for (text, wanted) in [
        (
            "pid.id",
            "the expression gives a string; a rule, filter or `when` must be true or false: to require a value, write pid.id != \"\"",
        ),
        (
            "size(obx_list)",
            "gives an int; a rule, filter or `when` must be true or false: compare it, e.g. size(obx_list) > 0",
        ),
        (
            "pid.id_list",
            "gives a list; a rule, filter or `when` must be true or false: to require an entry, write size(pid.id_list) > 0",
        ),
        (
            "field('PID-3') + '-N'",
            "gives a string; a rule, filter or `when` must be true or false: e.g. msh.msg_type == \"ADT\"",
        ),
    ] {
        let found = problems(text);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert!(
            found[0].starts_with("test.yaml:3:17: validation rule \"bad\": "),
            "{found:?}"
        );
        assert!(found[0].contains(wanted), "{text}: {found:?}");
    }
    let filters = [FilterSpec {
        connector: "lab".to_owned(),
        expression: Some(source("msh.msg_type")),
        order_by: None,
    }];
    let refused = compile(&[], &filters).expect_err("a string is not a filter");
    assert!(
        refused[0].to_string().starts_with(
            "test.yaml:3:17: filter of connector \"lab\": the expression gives a string"
        ),
        "{refused:?}"
    );
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
            order_by: None,
        },
        FilterSpec {
            connector: "adt".to_owned(),
            expression: Some(source("msh.msg_type == 'ADT'")),
            order_by: None,
        },
        FilterSpec {
            connector: "all".to_owned(),
            expression: None,
            order_by: None,
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
    assert!(
        problems("['GLU', 'NA'].all(code, obx_list.exists(o, o.identifier == code))").is_empty()
    );
    // An `obx_list` entry has the keys of `obx`: a wrong one would be a missing key at run
    // time, so it is a load error.
    assert!(
        problems("obx_list.exists(o, o.id == 'GLU')")[0].contains(
            "an entry of obx_list has no field \"id\"; its fields are value_type, identifier, value, unit, status"
        )
    );
    assert!(problems("obx_list[0]['stat'] == 'F'")[0].contains("no field \"stat\""));
    assert!(problems("obx_list.map(o, o.status == 'F', o.value).size() >= 0").is_empty());
    assert!(problems("obx_list.map(o, o.valu).size() > 0")[0].contains("no field \"valu\""));
    assert!(
        problems("[{'id': 1}].exists(o, o.id == 1)").is_empty(),
        "other lists: unknown"
    );
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
