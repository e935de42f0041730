//! Load-time warnings: expressions that still load but whose meaning changed when a segment
//! the message lacks began to bind empty values ([`super::bindings`]) instead of an empty
//! map. They are not errors (every such expression evaluates), but each now says something
//! else for a message without the segment, so `mfoundry check` prints them:
//!
//! - `has(pid.id)` was false without PID; it is true for every message.
//! - `pid.?id` was `optional.none()` without PID; it is `optional.of("")`, so `.hasValue()`
//!   is true and `.orValue("x")` gives `""`. `.orValue("")` (and `.orValue([])`) give what
//!   they gave, and are not warned about.
//! - `pid` as a whole map (`size(pid) == 0`, `"id" in pid`, `pid == {}`) was empty without
//!   PID; it holds every key it is read with.
//!
//! `msh` is not among them: the first segment is always there. Reading a key (`pid.id`,
//! `pid["id"]`) is not either: it was an evaluation error without the segment, and is `""`.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue};

use super::scope::Scope;

/// The map variables whose segment a message may lack, with the segment's name.
const SEGMENT_VARIABLES: &[(&str, &str)] = &[("pid", "PID"), ("pv1", "PV1"), ("obx", "OBX")];

/// Push a warning to `found` for each use in `expression` whose meaning changed (once each).
pub fn check(expression: &IdedExpr, found: &mut Vec<String>) {
    walk(expression, &mut Scope::default(), found);
}

/// `(variable, segment)` when `expression` is a segment variable not shadowed by a loop
/// variable.
fn segment_variable(expression: &IdedExpr, scope: &Scope) -> Option<(&'static str, &'static str)> {
    let Expr::Ident(name) = &expression.expr else {
        return None;
    };
    if scope.shadows(name) {
        return None;
    }
    SEGMENT_VARIABLES
        .iter()
        .find(|(variable, _)| variable == name)
        .copied()
}

fn push(found: &mut Vec<String>, warning: String) {
    if !found.contains(&warning) {
        found.push(warning);
    }
}

/// `x.orValue("")` or `x.orValue([])`: the same for an absent key as for an empty value.
fn or_empty(call: &cel::common::ast::CallExpr) -> bool {
    call.func_name == "orValue"
        && match call.args.as_slice() {
            [argument] => match &argument.expr {
                Expr::Literal(LiteralValue::String(text)) => text.to_string().is_empty(),
                Expr::List(list) => list.elements.is_empty(),
                _ => false,
            },
            _ => false,
        }
}

/// `pid.?id` or `pid[?"id"]`: the variable, segment and key.
fn optional_key(
    expression: &IdedExpr,
    scope: &Scope,
) -> Option<(&'static str, &'static str, String)> {
    let Expr::Call(call) = &expression.expr else {
        return None;
    };
    if !matches!(call.func_name.as_str(), "_?._" | "_[?_]") || call.args.len() != 2 {
        return None;
    }
    let (variable, segment) = segment_variable(&call.args[0], scope)?;
    let key = match &call.args[1].expr {
        Expr::Literal(LiteralValue::String(key)) => key.to_string(),
        _ => "…".to_owned(),
    };
    Some((variable, segment, key))
}

fn walk(expression: &IdedExpr, scope: &mut Scope, found: &mut Vec<String>) {
    match &expression.expr {
        Expr::Select(select) => {
            if let Some((variable, segment)) = segment_variable(&select.operand, scope) {
                if select.test {
                    let key = &select.field;
                    push(
                        found,
                        format!(
                            "has({variable}.{key}) is true for every message: without a {segment} segment {variable}.{key} is \"\" (earlier versions bound an empty map there, where has() was false); to ask whether the message carries a {segment} segment write size(segments(\"{segment}\")) > 0, to ask for a value write {variable}.{key} != \"\""
                        ),
                    );
                }
                return;
            }
            walk(&select.operand, scope, found);
        }
        Expr::Ident(_) => {
            if let Some((variable, segment)) = segment_variable(expression, scope) {
                push(
                    found,
                    format!(
                        "{variable} used as a whole map no longer tells whether the message carries a {segment} segment: without one, {variable} holds each key it is read with as \"\" (earlier versions bound an empty map, so size({variable}) == 0); to ask whether the message carries a {segment} segment write size(segments(\"{segment}\")) > 0"
                    ),
                );
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target
                && or_empty(call)
                && optional_key(target, scope).is_some()
            {
                // `pid.?id.orValue("")`: `""` with or without PID, as before.
                return;
            }
            if let Some((variable, segment, key)) = optional_key(expression, scope) {
                push(
                    found,
                    format!(
                        "{variable}.?{key} has a value for every message: without a {segment} segment it is \"\" (earlier versions bound an empty map there, where it had none), so .hasValue() is true and .orValue(x) gives \"\"; write {variable}.?{key}.orValue(\"\") or {variable}.{key} to read it, size(segments(\"{segment}\")) > 0 to ask whether the message carries the segment"
                    ),
                );
                return;
            }
            if call.func_name == "_[_]"
                && call.args.len() == 2
                && segment_variable(&call.args[0], scope).is_some()
            {
                // `pid["id"]`: a key read, like `pid.id`.
                walk(&call.args[1], scope, found);
                return;
            }
            if let Some(target) = &call.target {
                walk(target, scope, found);
            }
            for argument in &call.args {
                walk(argument, scope, found);
            }
        }
        Expr::List(list) => {
            for element in &list.elements {
                walk(element, scope, found);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(pair) = &entry.expr {
                    walk(&pair.key, scope, found);
                    walk(&pair.value, scope, found);
                }
            }
        }
        Expr::Struct(structure) => {
            for entry in &structure.entries {
                if let cel::common::ast::EntryExpr::StructField(field) = &entry.expr {
                    walk(&field.value, scope, found);
                }
            }
        }
        Expr::Comprehension(comprehension) => {
            walk(&comprehension.iter_range, scope, found);
            walk(&comprehension.accu_init, scope, found);
            let depth = scope.enter(comprehension);
            for part in [
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                walk(part, scope, found);
            }
            scope.leave(depth);
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(text: &str) -> Vec<String> {
        let expression = cel::Env::stdlib().parser().parse(text).expect("parses");
        let mut found = Vec::new();
        check(&expression, &mut found);
        found
    }

    #[test]
    fn reading_keys_is_not_warned_about() {
        for text in [
            "pid.id != \"\"",
            "pid[\"id\"] != \"\"",
            "pid.?id.orValue(\"\") != \"\"",
            "pid.?id_list.orValue([]).size() > 0",
            "msh.msg_type == \"ACK\" || pid.?id.orValue(\"\") != \"\"",
            "has(msh.msg_type) && size(msh) > 0",
            "obx_list.exists(o, has(o.status))",
            "[1].exists(pid, has(pid.id))",
            "size(segments(\"PID\")) > 0",
        ] {
            assert_eq!(warnings(text), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn uses_whose_meaning_changed_are_named_with_the_fix() {
        let cases = [
            ("has(pid.id)", "has(pid.id) is true for every message"),
            ("!has(pv1.patient_class)", "has(pv1.patient_class)"),
            ("size(pid) == 0", "pid used as a whole map"),
            ("\"status\" in obx", "obx used as a whole map"),
            (
                "pid.?id.hasValue()",
                "pid.?id has a value for every message",
            ),
            (
                "pid.?id.orValue(\"none\") != \"none\"",
                "pid.?id has a value",
            ),
        ];
        for (text, wanted) in cases {
            let found = warnings(text);
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert!(found[0].contains(wanted), "{text}: {found:?}");
            assert!(found[0].contains("size(segments("), "{text}: {found:?}");
        }
        assert_eq!(warnings("has(pid.id) && has(pid.id)").len(), 1, "once each");
    }
}
