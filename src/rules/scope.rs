//! The loop variables of comprehensions, as the load-time checks see them.
//!
//! A loop variable shadows a variable of the same name. One that walks a list mfoundry binds
//! (`o` in `obx_list.exists(o, o.status == "F")`) is known to be a map with that list's keys
//! (OBX's), so its keys are checked like `obx.status` — `o.id` is a load error, not a missing
//! key at run time — and its values are strings. Any other loop variable is of unknown type.

use cel::IdedExpr;
use cel::common::ast::{ComprehensionExpr, Expr};

use super::bindings::{KeySpec, OBX_KEYS};

/// The list variables whose entries are maps, with the keys of each entry.
pub const LIST_VARIABLES: &[(&str, &[KeySpec])] = &[("obx_list", OBX_KEYS)];

/// A comprehension's variable.
#[derive(Clone, Debug)]
pub struct LoopVariable {
    /// Its name.
    pub name: String,
    /// The keys of its value, when it is an entry of a list of [`LIST_VARIABLES`].
    pub entry_of: Option<(&'static str, &'static [KeySpec])>,
}

/// The loop variables in force, innermost last.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    variables: Vec<LoopVariable>,
}

impl Scope {
    /// Whether `name` is a loop variable here (and so not one of mfoundry's variables).
    pub fn shadows(&self, name: &str) -> bool {
        self.variables.iter().any(|variable| variable.name == name)
    }

    /// Enter `comprehension`: its variables are in scope until [`Scope::leave`] with the
    /// returned depth.
    pub fn enter(&mut self, comprehension: &ComprehensionExpr) -> usize {
        let depth = self.variables.len();
        let entry_of = self.list_variable(&comprehension.iter_range);
        match &comprehension.iter_var2 {
            // `list.all(index, entry, …)`: the first is the index.
            Some(second) => {
                self.push(&comprehension.iter_var, None);
                self.push(second, entry_of);
            }
            None => self.push(&comprehension.iter_var, entry_of),
        }
        self.push(&comprehension.accu_var, None);
        depth
    }

    /// Leave the comprehension entered at `depth`.
    pub fn leave(&mut self, depth: usize) {
        self.variables.truncate(depth);
    }

    /// The list variable and keys of the map `expression` gives, when it is an entry of a
    /// list mfoundry binds: a loop variable over it (`o`), or an index into it
    /// (`obx_list[0]`).
    pub fn entry(&self, expression: &IdedExpr) -> Option<(&'static str, &'static [KeySpec])> {
        match &expression.expr {
            Expr::Ident(name) => self
                .variables
                .iter()
                .rev()
                .find(|variable| variable.name == *name)
                .and_then(|variable| variable.entry_of),
            Expr::Call(call) if call.func_name == "_[_]" && call.args.len() == 2 => {
                self.list_variable(&call.args[0])
            }
            _ => None,
        }
    }

    /// `obx_list` itself, not shadowed.
    fn list_variable(&self, expression: &IdedExpr) -> Option<(&'static str, &'static [KeySpec])> {
        let Expr::Ident(name) = &expression.expr else {
            return None;
        };
        if self.shadows(name) {
            return None;
        }
        LIST_VARIABLES
            .iter()
            .find(|(list, _)| *list == name)
            .copied()
    }

    fn push(&mut self, name: &str, entry_of: Option<(&'static str, &'static [KeySpec])>) {
        self.variables.push(LoopVariable {
            name: name.to_owned(),
            entry_of,
        });
    }
}
