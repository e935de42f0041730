//! The load-time bound on what one expression may cost (ADR 0012). The `cel` crate has no
//! hook to count steps while it evaluates, so an expression whose work or memory cannot be
//! bounded before a message arrives does not load:
//!
//! - **Work**: every node of the expression costs one, times the size of every
//!   comprehension (`all`, `exists`, `exists_one`, `map`, `filter`) around it: the length of
//!   a list or map literal, else [`MAX_LIST_ENTRIES`] (the most entries any list mfoundry
//!   binds has). The sum must stay within [`MAX_COST`]: one comprehension over the OBX
//!   segments with a body of up to 100 nodes passes, one such comprehension inside another
//!   (a million evaluations of its body) does not.
//! - **Regular expressions** must be literal (`x.matches('^[0-9]+$')`): a pattern built from
//!   message data is compiled for every evaluation and can be anything. Each literal is
//!   compiled at load (a bad one is a load error) within [`MAX_PATTERN_BYTES`] of compiled
//!   program; the `regex` crate matches in time linear in the input.
//! - **Growth**: values bound from a message are at most 64 KiB each and lists at most
//!   [`MAX_LIST_ENTRIES`]; `+` (which concatenates strings and lists) is refused inside a
//!   comprehension, where it would build a new value for every element, and at most
//!   [`MAX_CONCATENATIONS`] appear in one expression. The `+` the macros write themselves
//!   (`map` and `filter` append one element per step to their result, `exists_one` counts)
//!   is not the expression's: their result holds at most one entry per element of the list,
//!   so it is neither refused nor counted; a `+` in what `map` computes still is.

use cel::IdedExpr;
use cel::common::ast::{EntryExpr, Expr, LiteralValue};

use super::bindings::MAX_LIST_ENTRIES;

/// Most node evaluations one expression may need, by the count above.
pub const MAX_COST: u64 = 100_000;
/// Most `+` operators in one expression.
pub const MAX_CONCATENATIONS: usize = 8;
/// Largest compiled program of a `matches` pattern.
pub const MAX_PATTERN_BYTES: usize = 256 * 1024;

/// Check `expression`; each problem found is pushed to `found`.
pub fn check(expression: &IdedExpr, found: &mut Vec<String>) {
    let mut walk = Walk::default();
    walk.visit(expression, 1, false);
    if walk.cost > MAX_COST {
        found.push(format!(
            "the expression may need {} steps for one message (each comprehension multiplies the steps of what it holds by its list's size, up to {MAX_LIST_ENTRIES}); at most {MAX_COST} are allowed: do not nest all/exists/map/filter over message lists, or iterate a list literal",
            walk.cost
        ));
    }
    if walk.concatenations > MAX_CONCATENATIONS {
        found.push(format!(
            "the expression has {} `+` operators; at most {MAX_CONCATENATIONS} are allowed",
            walk.concatenations
        ));
    }
    found.extend(walk.problems);
}

#[derive(Default)]
struct Walk {
    cost: u64,
    concatenations: usize,
    problems: Vec<String>,
}

impl Walk {
    fn visit(&mut self, expression: &IdedExpr, multiplier: u64, in_loop: bool) {
        self.cost = self.cost.saturating_add(multiplier);
        match &expression.expr {
            Expr::Call(call) => {
                if call.func_name == "_+_" && !is_macro_accumulation(call) {
                    self.concatenations += 1;
                    if in_loop {
                        self.problems.push(
                            "`+` inside all/exists/map/filter would build a new value for every element; compare or test the parts instead (e.g. a.startsWith(b))"
                                .to_owned(),
                        );
                    }
                }
                // These walk the whole message or a whole list for each call: a call counts
                // as many steps as a list can hold.
                if matches!(call.func_name.as_str(), "field" | "segments" | "@in") {
                    self.cost = self
                        .cost
                        .saturating_add(multiplier.saturating_mul(MAX_LIST_ENTRIES as u64));
                }
                if call.func_name == "matches" {
                    let pattern = if call.target.is_some() {
                        call.args.first()
                    } else {
                        call.args.get(1)
                    };
                    self.pattern(pattern);
                }
                if let Some(target) = &call.target {
                    self.visit(target, multiplier, in_loop);
                }
                for argument in &call.args {
                    self.visit(argument, multiplier, in_loop);
                }
            }
            Expr::Select(select) => self.visit(&select.operand, multiplier, in_loop),
            Expr::List(list) => {
                for element in &list.elements {
                    self.visit(element, multiplier, in_loop);
                }
            }
            Expr::Map(map) => self.entries(&map.entries, multiplier, in_loop),
            Expr::Struct(structure) => self.entries(&structure.entries, multiplier, in_loop),
            Expr::Comprehension(comprehension) => {
                self.visit(&comprehension.iter_range, multiplier, in_loop);
                self.visit(&comprehension.accu_init, multiplier, in_loop);
                let size = match &comprehension.iter_range.expr {
                    Expr::List(list) => list.elements.len() as u64,
                    Expr::Map(map) => map.entries.len() as u64,
                    // Lists joined with `+`: as many lists as it may join.
                    Expr::Call(call) if call.func_name == "_+_" => {
                        (MAX_LIST_ENTRIES * (MAX_CONCATENATIONS + 1)) as u64
                    }
                    _ => MAX_LIST_ENTRIES as u64,
                };
                let inner = multiplier.saturating_mul(size.max(1));
                for part in [&comprehension.loop_cond, &comprehension.loop_step] {
                    self.visit(part, inner, true);
                }
                self.visit(&comprehension.result, multiplier, in_loop);
            }
            Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn entries(
        &mut self,
        entries: &[cel::common::ast::IdedEntryExpr],
        multiplier: u64,
        in_loop: bool,
    ) {
        for entry in entries {
            match &entry.expr {
                EntryExpr::MapEntry(pair) => {
                    self.visit(&pair.key, multiplier, in_loop);
                    self.visit(&pair.value, multiplier, in_loop);
                }
                EntryExpr::StructField(field) => self.visit(&field.value, multiplier, in_loop),
            }
        }
    }

    fn pattern(&mut self, pattern: Option<&IdedExpr>) {
        let Some(pattern) = pattern else { return };
        let Expr::Literal(LiteralValue::String(text)) = &pattern.expr else {
            self.problems.push(
                "matches() takes a literal pattern (a quoted string): a pattern built from message data is compiled anew for every message and cannot be bounded"
                    .to_owned(),
            );
            return;
        };
        if let Err(error) = regex::RegexBuilder::new(text)
            .size_limit(MAX_PATTERN_BYTES)
            .build()
        {
            // The pattern is configuration, not message data: it may be quoted.
            self.problems.push(format!(
                "matches({:?}): not a usable pattern: {}",
                text.to_string(),
                error.to_string().lines().last().unwrap_or_default()
            ));
        }
    }
}

/// `@result + [x]` or `@result + 1`: the step a `map`, `filter` or `exists_one` macro expands
/// to. Its left operand is the macro's accumulator, which CEL source cannot name (`@`).
fn is_macro_accumulation(call: &cel::common::ast::CallExpr) -> bool {
    matches!(call.args.first().map(|left| &left.expr), Some(Expr::Ident(name)) if name.starts_with('@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let expression = cel::Env::stdlib().parser().parse(text).expect("parses");
        let mut found = Vec::new();
        check(&expression, &mut found);
        found
    }

    #[test]
    fn one_comprehension_passes_a_nested_one_over_message_lists_does_not() {
        assert_eq!(
            problems("obx_list.all(o, o.value_type != 'ED')"),
            Vec::<String>::new()
        );
        assert_eq!(
            problems("['A', 'B'].all(code, obx_list.exists(o, o.id == code))"),
            Vec::<String>::new()
        );
        let nested = problems("obx_list.all(a, obx_list.exists(b, a.value == b.value))");
        assert!(nested[0].contains("steps"), "{nested:?}");
        // A call that walks the message counts as a list's worth of steps.
        assert!(problems("field('PID-3') != ''").is_empty());
        let walks = problems("obx_list.all(o, field('PID-3') != o.value)");
        assert!(walks[0].contains("steps"), "{walks:?}");
        let membership = problems("obx_list.all(o, o.value in ['A', 'B'])");
        assert!(membership[0].contains("steps"), "{membership:?}");
        // The macros' own accumulation is not the expression's `+`.
        for macro_use in [
            "obx_list.map(o, o.value).size() > 0",
            "obx_list.filter(o, o.status == 'F').size() > 0",
            "obx_list.exists_one(o, o.status == 'F')",
            "obx_list.map(o, o.status == 'F', o.value).size() > 0",
        ] {
            assert_eq!(problems(macro_use), Vec::<String>::new(), "{macro_use}");
        }
        let computed = problems("obx_list.map(o, o.value + '!').size() > 0");
        assert!(computed[0].contains("`+` inside"), "{computed:?}");
        let growth = problems("obx_list.map(a, obx_list.map(b, a.value + b.value)).size() > 0");
        assert!(
            growth.iter().any(|problem| problem.contains("`+` inside")),
            "{growth:?}"
        );
    }

    #[test]
    fn patterns_must_be_literal_and_compile() {
        assert_eq!(problems("pid.id.matches('^[0-9]+$')"), Vec::<String>::new());
        assert_eq!(
            problems("matches(pid.id, '^[0-9]+$')"),
            Vec::<String>::new()
        );
        let computed = problems("obx_list.all(a, a.value.matches(pid.id))");
        assert!(computed[0].contains("literal pattern"), "{computed:?}");
        let broken = problems("pid.id.matches('(unclosed')");
        assert!(broken[0].contains("not a usable pattern"), "{broken:?}");
        let huge = problems("pid.id.matches('\\\\w{1000}{1000}')");
        assert!(huge[0].contains("not a usable pattern"), "{huge:?}");
    }

    #[test]
    fn concatenations_are_counted() {
        assert!(problems("pid.family + pid.given == 'AB'").is_empty());
        let many = problems(
            "pid.id + pid.id + pid.id + pid.id + pid.id + pid.id + pid.id + pid.id + pid.id + pid.id == ''",
        );
        assert!(many[0].contains("`+` operators"), "{many:?}");
    }
}
