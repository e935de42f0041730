//! The load-time check of names in an expression: variables (and the keys of `msh`, `pid`,
//! `pv1`, `obx`), functions (the [`FUNCTIONS`] allow-list), the arguments of `field()` and
//! `segments()`, and the nesting of comprehensions; it also notes which variables and keys
//! the expressions use, so only those are built per message. The keys of an `obx_list` entry
//! (`o` in `obx_list.exists(o, …)`, or `obx_list[0]`) are checked like those of `obx`
//! ([`super::scope`]). Types are checked after it ([`super::types`]).

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr};

use super::bindings::{KeySpec, MAP_VARIABLES, Needed, VARIABLES};
use super::scope::Scope;
use super::{FUNCTIONS, MAX_COMPREHENSION_NESTING};
use crate::hl7::FieldPath;

/// Type names an expression may use as values (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "list",
    "map",
    "null_type",
    "type",
    "timestamp",
    "duration",
];

fn is_operator(name: &str) -> bool {
    name.starts_with('_') || name.starts_with('@') || name == "!_" || name == "-_"
}

/// Walk the expression: unknown variables and functions, `field()`/`segments()` arguments,
/// comprehension nesting. Loop variables are in `scope`.
pub(super) fn check(
    expression: &IdedExpr,
    scope: &mut Scope,
    comprehension_depth: usize,
    needed: &mut Needed,
    found: &mut Vec<String>,
) {
    match &expression.expr {
        Expr::Ident(name) => {
            if name.starts_with('@') || scope.shadows(name) {
                return;
            }
            if VARIABLES.contains(&name.as_str()) {
                needed.add(name);
            } else if name == "optional" || TYPE_NAMES.contains(&name.as_str()) {
                // The namespace of optional.of / optional.none, or a type (`type(x) == int`).
            } else {
                found.push(format!(
                    "unknown variable {name:?}; known variables are {}",
                    VARIABLES.join(", ")
                ));
            }
        }
        Expr::Call(call) if call.func_name == "_[_]" && is_map_key_index(call, scope) => {
            // `msh["msg_type"]`: a literal key of a map variable, checked like `msh.msg_type`.
            if let (
                Expr::Ident(variable),
                Expr::Literal(cel::common::ast::LiteralValue::String(key)),
            ) = (&call.args[0].expr, &call.args[1].expr)
                && !needed.select(variable, key)
            {
                found.push(format!("{variable} has no field {:?}", key.to_string()));
            }
        }
        Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
            // `o["value"]` on an `obx_list` entry: a literal key is checked like `o.value`.
            if let (
                Some((list, keys)),
                Expr::Literal(cel::common::ast::LiteralValue::String(key)),
            ) = (scope.entry(&call.args[0]), &call.args[1].expr)
            {
                check_entry_key(list, keys, key, found);
            }
            for argument in &call.args {
                check(argument, scope, comprehension_depth, needed, found);
            }
        }
        Expr::Call(call) => {
            let name = call.func_name.as_str();
            if !is_operator(name) && !FUNCTIONS.contains(&name) {
                found.push(format!("unknown function {name:?}"));
            }
            if name == "field" || name == "segments" {
                needed.message = true;
                check_message_function(name, call, found);
            }
            if let Some(target) = &call.target {
                check(target, scope, comprehension_depth, needed, found);
            }
            for argument in &call.args {
                check(argument, scope, comprehension_depth, needed, found);
            }
        }
        Expr::Select(select) => {
            if let Expr::Ident(variable) = &select.operand.expr
                && !scope.shadows(variable)
                && let Some((_, keys)) = MAP_VARIABLES.iter().find(|(name, _)| name == variable)
            {
                // `msh.msg_type`: only that key needs building.
                if !needed.select(variable, &select.field) {
                    let names: Vec<&str> = keys.iter().map(|(name, _, _)| *name).collect();
                    found.push(format!(
                        "{variable} has no field {:?}; its fields are {}",
                        select.field,
                        names.join(", ")
                    ));
                }
                return;
            }
            if let Some((list, keys)) = scope.entry(&select.operand) {
                // `o.status` in `obx_list.exists(o, …)`: an OBX key.
                check_entry_key(list, keys, &select.field, found);
            }
            check(&select.operand, scope, comprehension_depth, needed, found);
        }
        Expr::List(list) => {
            for element in &list.elements {
                check(element, scope, comprehension_depth, needed, found);
            }
        }
        Expr::Map(map) => check_entries(&map.entries, scope, comprehension_depth, needed, found),
        Expr::Struct(structure) => {
            check_entries(
                &structure.entries,
                scope,
                comprehension_depth,
                needed,
                found,
            );
        }
        Expr::Comprehension(comprehension) => {
            if comprehension_depth + 1 > MAX_COMPREHENSION_NESTING {
                found.push(format!(
                    "comprehensions (all, exists, map, filter …) are nested more than {MAX_COMPREHENSION_NESTING} deep"
                ));
                return;
            }
            check(
                &comprehension.iter_range,
                scope,
                comprehension_depth,
                needed,
                found,
            );
            check(
                &comprehension.accu_init,
                scope,
                comprehension_depth,
                needed,
                found,
            );
            let depth = scope.enter(comprehension);
            for part in [
                &comprehension.loop_cond,
                &comprehension.loop_step,
                &comprehension.result,
            ] {
                check(part, scope, comprehension_depth + 1, needed, found);
            }
            scope.leave(depth);
        }
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// `variable["literal"]` on a map variable not shadowed by a loop variable.
fn is_map_key_index(call: &cel::common::ast::CallExpr, scope: &Scope) -> bool {
    call.target.is_none()
        && call.args.len() == 2
        && matches!(&call.args[0].expr, Expr::Ident(variable)
            if !scope.shadows(variable) && MAP_VARIABLES.iter().any(|(name, _)| name == variable))
        && matches!(
            &call.args[1].expr,
            Expr::Literal(cel::common::ast::LiteralValue::String(_))
        )
}

/// A key of an entry of `list` (whose entries have `keys`).
fn check_entry_key(list: &str, keys: &[KeySpec], key: &str, found: &mut Vec<String>) {
    if keys.iter().any(|(name, _, _)| *name == key) {
        return;
    }
    let names: Vec<&str> = keys.iter().map(|(name, _, _)| *name).collect();
    found.push(format!(
        "an entry of {list} has no field {key:?}; its fields are {}",
        names.join(", ")
    ));
}

/// Map and struct literal entries: keys and values.
fn check_entries(
    entries: &[cel::common::ast::IdedEntryExpr],
    scope: &mut Scope,
    comprehension_depth: usize,
    needed: &mut Needed,
    found: &mut Vec<String>,
) {
    for entry in entries {
        match &entry.expr {
            EntryExpr::MapEntry(pair) => {
                check(&pair.key, scope, comprehension_depth, needed, found);
                check(&pair.value, scope, comprehension_depth, needed, found);
            }
            EntryExpr::StructField(field) => {
                check(&field.value, scope, comprehension_depth, needed, found);
            }
        }
    }
}

/// `field("PID-3[2].1")` and `segments("OBX")` take exactly one argument; a literal one is
/// checked now.
fn check_message_function(name: &str, call: &cel::common::ast::CallExpr, found: &mut Vec<String>) {
    if call.target.is_some() || call.args.len() != 1 {
        found.push(format!("{name}() takes exactly one argument"));
        return;
    }
    let Expr::Literal(cel::common::ast::LiteralValue::String(argument)) = &call.args[0].expr else {
        return;
    };
    if name == "field" {
        if let Err(error) = argument.parse::<FieldPath>() {
            found.push(error.to_string());
        }
    } else if argument.len() != 3 || !argument.bytes().all(|b| b.is_ascii_alphanumeric()) {
        found.push(format!(
            "segments({argument:?}): a segment name has three letters or digits, e.g. \"OBX\""
        ));
    }
}
