//! Static types of expressions over mfoundry's variables and functions, checked at load.
//!
//! The `cel` crate evaluates but does not type-check, so this walks the parsed expression
//! and infers what it can: literals, operators, mfoundry's variables (every key of `msh`,
//! `pid`, `pv1`, `obx` is a string, `pid.id_list` a list of strings), `field()` (a string),
//! the conversion functions. Where the type depends on data (`dyn`, a map read with a
//! computed key, a list element) it is unknown and accepted; where it is known and wrong —
//! a rule that gives a string, a value that is not a string, a string compared with a number
//! — the configuration does not load, with the fix in the message.

use cel::IdedExpr;
use cel::common::ast::{Expr, LiteralValue};

use super::bindings::MAP_VARIABLES;

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
    let mut scope = Vec::new();
    let kind = infer(expression, &mut scope, found);
    let (wanted, hint) = match expect {
        Expect::Bool => (
            Kind::Bool,
            "a rule, filter or `when` must be true or false, e.g. msh.msg_type == \"ADT\"",
        ),
        Expect::String => (
            Kind::String,
            "a value must be a string: quote a constant ('\"EMR\"') or convert with string(...)",
        ),
    };
    if let Some(kind) = kind
        && kind != wanted
    {
        found.push(format!("the expression gives {}; {hint}", kind.describe()));
    }
}

/// The kind of `expression`, when it can be known; loop variables are in `scope` (unknown).
fn infer(expression: &IdedExpr, scope: &mut Vec<String>, found: &mut Vec<String>) -> Option<Kind> {
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
        Expr::Ident(name) if scope.contains(name) => None,
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
                    if !scope.contains(variable)
                        && MAP_VARIABLES.iter().any(|(name, _)| name == variable) =>
                {
                    Some(if select.field == "id_list" {
                        Kind::List
                    } else {
                        Kind::String
                    })
                }
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
            let depth = scope.len();
            scope.push(comprehension.iter_var.clone());
            if let Some(second) = &comprehension.iter_var2 {
                scope.push(second.clone());
            }
            scope.push(comprehension.accu_var.clone());
            infer(&comprehension.loop_step, scope, found);
            let result = infer(&comprehension.result, scope, found);
            scope.truncate(depth);
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
            call_kind(&call.func_name, target.flatten(), &arguments, found)
        }
        Expr::Unspecified => None,
    }
}

fn call_kind(
    name: &str,
    target: Option<Kind>,
    arguments: &[Option<Kind>],
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
                let operator = name.trim_matches('_');
                let fix = if left == Kind::String || right == Kind::String {
                    "; message values are strings: compare with a quoted value (\"5\") or convert (int(x) == 5)"
                } else {
                    ""
                };
                found.push(format!(
                    "{} {operator} {} compares values of different types, which is never true{fix}",
                    left.describe(),
                    right.describe()
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
