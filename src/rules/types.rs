//! Static types of expressions over mfoundry's variables and functions, checked at load.
//!
//! The `cel` crate evaluates but does not type-check, so this walks the parsed expression
//! and infers what it can: literals, operators, mfoundry's variables (every key of `msh`,
//! `pid`, `pv1`, `obx` and of an `obx_list` entry is a string, `pid.id_list` a list of
//! strings), `field()` (a string), the conversion functions. Where the type depends on data
//! (`dyn`, a map read with a computed key, a list element) it is unknown and accepted; where
//! it is known and wrong —
//! a rule that gives a string, a value that is not a string, a string compared with a number
//! — the configuration does not load, with the fix in the message.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue};

use super::bindings::MAP_VARIABLES;
use super::scope::Scope;

/// What an expression gives, as far as it can be known before a message arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `true` or `false`.
    Bool,
    /// A signed integer.
    Int,
    /// An unsigned integer (`1u`).
    Uint,
    /// A floating-point number.
    Double,
    /// Text.
    String,
    /// Bytes.
    Bytes,
    /// A list.
    List,
    /// A map.
    Map,
    /// `null`.
    Null,
    /// A timestamp.
    Timestamp,
    /// A duration.
    Duration,
}

impl Kind {
    /// How an error names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Bool => "true or false",
            Self::Int => "an int",
            Self::Uint => "a uint",
            Self::Double => "a double",
            Self::String => "a string",
            Self::Bytes => "bytes",
            Self::List => "a list",
            Self::Map => "a map",
            Self::Null => "null",
            Self::Timestamp => "a timestamp",
            Self::Duration => "a duration",
        }
    }

    fn is_number(self) -> bool {
        matches!(self, Self::Int | Self::Uint | Self::Double)
    }
}

/// The type an expression must give where it is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A rule, a filter, a `when`: true or false.
    Bool,
    /// A value written into a message.
    String,
}

/// Check `expression` gives what `expect` asks and its comparisons compare like with like;
/// each problem found is pushed to `found`.
pub fn check(expression: &IdedExpr, expect: Expect, found: &mut Vec<String>) {
    let mut scope = Scope::default();
    let kind = infer(expression, &mut scope, found);
    let wanted = match expect {
        Expect::Bool => Kind::Bool,
        Expect::String => Kind::String,
    };
    if let Some(kind) = kind
        && kind != wanted
    {
        let hint = match expect {
            Expect::Bool => bool_hint(expression, kind),
            Expect::String => {
                "a value must be a string: quote a constant ('\"EMR\"') or convert with string(...)"
                    .to_owned()
            }
        };
        found.push(format!("the expression gives {}; {hint}", kind.describe()));
    }
}

/// How to turn an expression of `kind` into a condition, with the expression itself when it
/// is short enough to quote (`pid.id` → `pid.id != ""`).
fn bool_hint(expression: &IdedExpr, kind: Kind) -> String {
    let text = render(expression);
    let example = match (kind, &text) {
        (Kind::String, Some(text)) => format!("to require a value, write {text} != \"\""),
        (Kind::List | Kind::Map, Some(text)) => {
            format!("to require an entry, write size({text}) > 0")
        }
        (Kind::Int | Kind::Uint | Kind::Double, Some(text)) => {
            format!("compare it, e.g. {text} > 0")
        }
        _ => "e.g. msh.msg_type == \"ADT\"".to_owned(),
    };
    format!("a rule, filter or `when` must be true or false: {example}")
}

/// The source of a variable, a key of one, a `size(...)` or `field("...")` of one, or a
/// literal: what an error message may quote as the fix. `None` for anything longer.
fn render(expression: &IdedExpr) -> Option<String> {
    match &expression.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(select) if !select.test => {
            Some(format!("{}.{}", render(&select.operand)?, select.field))
        }
        Expr::Call(call)
            if call.target.is_none()
                && call.args.len() == 1
                && matches!(call.func_name.as_str(), "size" | "field") =>
        {
            Some(format!("{}({})", call.func_name, render(&call.args[0])?))
        }
        Expr::Literal(LiteralValue::String(text)) => Some(format!("{:?}", text.to_string())),
        Expr::Literal(LiteralValue::Int(number)) => Some(number.to_string()),
        Expr::Literal(LiteralValue::UInt(number)) => Some(format!("{}u", **number)),
        Expr::Literal(LiteralValue::Double(number)) => Some(number.to_string()),
        _ => None,
    }
}

/// `left operator right` where one is a string and the other a number (or other kind):
/// what CEL makes of it, and the fix, quoting the operands where they are short.
fn comparison_problem(operator: &str, left: Kind, right: Kind, operands: &[IdedExpr]) -> String {
    let outcome = match operator {
        "==" => "which is never true",
        "!=" => "which is always true",
        _ => "which fails to evaluate for every message (such values cannot be ordered)",
    };
    let mut problem = format!(
        "{} {operator} {} compares values of different types, {outcome}",
        left.describe(),
        right.describe()
    );
    if left != Kind::String && right != Kind::String {
        return problem;
    }
    // A string field against a number written in the rule: quote both fixes in full.
    let pair = match operands {
        [field, number] if left == Kind::String && right.is_number() => {
            Some((field, number, right))
        }
        [number, field] if right == Kind::String && left.is_number() => Some((field, number, left)),
        _ => None,
    };
    let written = |number: &IdedExpr| match &number.expr {
        Expr::Literal(LiteralValue::Int(value)) => Some(value.to_string()),
        Expr::Literal(LiteralValue::UInt(value)) => Some(value.to_string()),
        Expr::Literal(LiteralValue::Double(value)) => Some(value.to_string()),
        _ => None,
    };
    let quoted = pair.and_then(|(field, number, kind)| {
        Some((render(field)?, written(number)?, render(number)?, kind))
    });
    let Some((field, written, literal, kind)) = quoted else {
        problem.push_str(
            "; message values are strings: compare with a quoted value (\"5\") or convert (int(x) == 5)",
        );
        return problem;
    };
    let order = if matches!(operator, "==" | "!=") {
        ""
    } else {
        " (text order: right for dates and codes of one length)"
    };
    let conversion = match kind {
        Kind::Uint => "uint",
        Kind::Double => "double",
        _ => "int",
    };
    problem.push_str(&format!(
        "; message values are strings: write {field} {operator} {written:?}{order}, or {conversion}({field}) {operator} {literal} (an evaluation error, so AR, for a message whose value is not a number)",
    ));
    problem
}

/// The kind of `expression`, when it can be known; loop variables are in `scope` (unknown).
fn infer(expression: &IdedExpr, scope: &mut Scope, found: &mut Vec<String>) -> Option<Kind> {
    match &expression.expr {
        Expr::Literal(literal) => Some(match literal {
            LiteralValue::Boolean(_) => Kind::Bool,
            LiteralValue::Bytes(_) => Kind::Bytes,
            LiteralValue::Double(_) => Kind::Double,
            LiteralValue::Int(_) => Kind::Int,
            LiteralValue::Null => Kind::Null,
            LiteralValue::String(_) => Kind::String,
            LiteralValue::UInt(_) => Kind::Uint,
        }),
        Expr::Ident(name) if scope.shadows(name) => None,
        Expr::Ident(name) => match name.as_str() {
            "inbound" => Some(Kind::String),
            "obx_list" => Some(Kind::List),
            name if MAP_VARIABLES.iter().any(|(variable, _)| *variable == name) => Some(Kind::Map),
            _ => None,
        },
        Expr::Select(select) => {
            let operand = infer(&select.operand, scope, found);
            if select.test {
                return Some(Kind::Bool);
            }
            match &select.operand.expr {
                Expr::Ident(variable)
                    if !scope.shadows(variable)
                        && MAP_VARIABLES.iter().any(|(name, _)| name == variable) =>
                {
                    Some(if select.field == "id_list" {
                        Kind::List
                    } else {
                        Kind::String
                    })
                }
                // `o.status` of an `obx_list` entry (its keys are checked by name).
                _ if scope.entry(&select.operand).is_some() => Some(Kind::String),
                _ => operand.and(None),
            }
        }
        Expr::List(list) => {
            for element in &list.elements {
                infer(element, scope, found);
            }
            Some(Kind::List)
        }
        Expr::Map(_) | Expr::Struct(_) => Some(Kind::Map),
        Expr::Comprehension(comprehension) => {
            infer(&comprehension.iter_range, scope, found);
            let depth = scope.enter(comprehension);
            infer(&comprehension.loop_step, scope, found);
            let result = infer(&comprehension.result, scope, found);
            scope.leave(depth);
            result
        }
        Expr::Call(call) => {
            let target = call
                .target
                .as_ref()
                .map(|target| infer(target, scope, found));
            let arguments: Vec<Option<Kind>> = call
                .args
                .iter()
                .map(|argument| infer(argument, scope, found))
                .collect();
            call_kind(
                &call.func_name,
                target.flatten(),
                &arguments,
                &call.args,
                found,
            )
        }
        Expr::Unspecified => None,
    }
}

fn call_kind(
    name: &str,
    target: Option<Kind>,
    arguments: &[Option<Kind>],
    operands: &[IdedExpr],
    found: &mut Vec<String>,
) -> Option<Kind> {
    let pair = || match arguments {
        [Some(left), Some(right)] => Some((*left, *right)),
        _ => None,
    };
    match name {
        "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => {
            if let Some((left, right)) = pair()
                && left != right
                && !(left.is_number() && right.is_number())
                && left != Kind::Null
                && right != Kind::Null
            {
                found.push(comparison_problem(
                    name.trim_matches('_'),
                    left,
                    right,
                    operands,
                ));
            }
            Some(Kind::Bool)
        }
        "_&&_" | "_||_" | "!_" => {
            for kind in arguments.iter().flatten() {
                if *kind != Kind::Bool {
                    found.push(format!(
                        "{} is used as true or false with {}; compare it instead (x != \"\")",
                        kind.describe(),
                        name.trim_matches('_').trim_end_matches('_')
                    ));
                }
            }
            Some(Kind::Bool)
        }
        "@in" | "contains" | "startsWith" | "endsWith" | "matches" | "@not_strictly_false" => {
            Some(Kind::Bool)
        }
        "_?_:_" => match arguments {
            [_, Some(yes), Some(no)] if yes == no => Some(*yes),
            _ => None,
        },
        "_+_" => match pair() {
            Some((left, right)) if left == right => Some(left),
            Some((left, right)) => {
                let fix = if left == Kind::String || right == Kind::String {
                    "; convert with string(...) to join text"
                } else {
                    ""
                };
                found.push(format!(
                    "{} + {} adds values of different types{fix}",
                    left.describe(),
                    right.describe()
                ));
                None
            }
            None => None,
        },
        "_-_" | "_*_" | "_/_" | "_%_" => pair().filter(|(l, r)| l == r).map(|(l, _)| l),
        "-_" => arguments.first().copied().flatten(),
        "field" | "string" => Some(Kind::String),
        "segments" => Some(Kind::List),
        "size" | "int" => Some(Kind::Int),
        "uint" => Some(Kind::Uint),
        "double" => Some(Kind::Double),
        "bytes" => Some(Kind::Bytes),
        "bool" => Some(Kind::Bool),
        "timestamp" => Some(Kind::Timestamp),
        "duration" => Some(Kind::Duration),
        "getDate" | "getDayOfMonth" | "getDayOfWeek" | "getDayOfYear" | "getFullYear"
        | "getHours" | "getMilliseconds" | "getMinutes" | "getMonth" | "getSeconds" => {
            Some(Kind::Int)
        }
        _ => target.and(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str, expect: Expect) -> Vec<String> {
        let expression = cel::Env::stdlib().parser().parse(text).expect("parses");
        let mut found = Vec::new();
        check(&expression, expect, &mut found);
        found
    }

    #[test]
    fn well_typed_expressions_pass() {
        for rule in [
            "msh.msg_type == \"ADT\"",
            "pid.id != \"\" && msh.trigger in [\"A01\", \"A04\"]",
            "field(\"PID-3.1\").startsWith(\"MRN\")",
            "size(obx_list) > 0",
            "obx_list.exists(o, o.status == \"F\")",
            "int(field(\"OBX-5\")) > 5",
            "has(pid.id)",
            "dyn(msh.version) == 2",
            "segments(\"NTE\").size() < 3",
        ] {
            assert_eq!(problems(rule, Expect::Bool), Vec::<String>::new(), "{rule}");
        }
        for value in [
            "\"EMR\"",
            "field(\"PV1-3.1\") + \"-N\"",
            "msh.sending_fac",
            "string(size(obx_list))",
            "pid.sex == \"M\" ? \"male\" : \"female\"",
        ] {
            assert_eq!(
                problems(value, Expect::String),
                Vec::<String>::new(),
                "{value}"
            );
        }
    }

    #[test]
    fn wrong_types_are_named_with_the_fix() {
        let cases = [
            ("msh.msg_type", Expect::Bool, "gives a string"),
            (
                "pid.id == 5",
                Expect::Bool,
                "compares values of different types",
            ),
            (
                "size(obx_list) == \"3\"",
                Expect::Bool,
                "compares values of different types",
            ),
            ("pid.id && true", Expect::Bool, "used as true or false"),
            ("1 + 2", Expect::String, "gives an int"),
            (
                "msh.msg_type == \"ADT\"",
                Expect::String,
                "gives true or false",
            ),
            (
                "field(\"PID-3\") + 1",
                Expect::String,
                "adds values of different types",
            ),
        ];
        for (text, expect, wanted) in cases {
            let found = problems(text, expect);
            assert!(
                found.iter().any(|problem| problem.contains(wanted)),
                "{text}: {found:?}"
            );
        }
    }
}
