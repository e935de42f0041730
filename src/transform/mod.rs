//! Transforms: each connector's list of steps (`set`, `copy`, `map`, `delete`, each with an
//! optional `when`), compiled and checked at load, applied to that connector's copy of a
//! message.
//!
//! The received bytes are never changed: a transform works on a [`Document`] made from the
//! message and gives the bytes that connector delivers. Steps run in order, and each sees
//! the copy as the steps before it left it (`field()` and the variables read the copy).
//! Values are escaped with the message's own delimiters and encoded in its character set;
//! the delimiters and segment terminator of the message are kept.
//!
//! A step on a segment the message lacks does nothing (use `when` to be explicit). A step
//! that cannot be done for one message — a code a table without `default` lacks, a value
//! its character set cannot carry, an expression that fails — is a [`StepFailure`]: that
//! connector's copy goes to its dead-letter queue, naming the step; the failure text never
//! quotes message data.

pub mod table;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::hl7::{Charset, Document, FieldPath, Message, PathPattern, Pick, escape, unescape};
use crate::rules::types::Expect;
use crate::rules::{Compiler, Expression, ExpressionSource, Origin, Program, RuleProblem};
pub use table::{Table, TableSource, TableSpec, Tables};

/// A value written in the configuration with its place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The text.
    pub text: String,
    /// Where it was written.
    pub origin: Origin,
}

/// What a step does, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionSpec {
    /// `set: PATH`, `value: CEL`: write the expression's string at every place of PATH.
    Set {
        /// Where to write.
        target: Located,
        /// A CEL expression giving a string.
        value: ExpressionSource,
    },
    /// `copy: {from, to}`: write the value at `from` (as it is, escapes kept) at `to`.
    Copy {
        /// One place.
        from: Located,
        /// Where to write.
        to: Located,
    },
    /// `map: {field, table}`: replace each value at `field` by its row in `table`.
    Map {
        /// The places to map.
        field: Located,
        /// The table's name.
        table: Located,
    },
    /// `delete: NTE` (segments) or `delete: PID-19` (empty the field).
    Delete {
        /// A segment or a field path.
        target: Located,
    },
}

impl ActionSpec {
    /// The action's key, as written.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::Set { .. } => "set",
            Self::Copy { .. } => "copy",
            Self::Map { .. } => "map",
            Self::Delete { .. } => "delete",
        }
    }
}

/// The actions a step may have, for "use one of".
pub const ACTIONS: [&str; 4] = ["set", "copy", "map", "delete"];

/// One step as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// What it does.
    pub action: ActionSpec,
    /// Optional CEL condition (true or false) on the copy so far.
    pub when: Option<ExpressionSource>,
    /// Where the step was written.
    pub origin: Origin,
}

impl StepSpec {
    /// Every place this step holds (for a reader that learns the file's name later).
    pub fn origins_mut(&mut self) -> Vec<&mut Origin> {
        let mut origins = vec![&mut self.origin];
        if let Some(when) = &mut self.when {
            origins.push(&mut when.origin);
        }
        match &mut self.action {
            ActionSpec::Set { target, value } => {
                origins.extend([&mut target.origin, &mut value.origin]);
            }
            ActionSpec::Copy { from, to } => origins.extend([&mut from.origin, &mut to.origin]),
            ActionSpec::Map { field, table } => {
                origins.extend([&mut field.origin, &mut table.origin]);
            }
            ActionSpec::Delete { target } => origins.push(&mut target.origin),
        }
        origins
    }
}

/// A connector's steps as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransformSpec {
    /// The connector.
    pub connector: String,
    /// Its steps, in order.
    pub steps: Vec<StepSpec>,
}

/// Why a step could not be done for one message (never quoting message data).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transform step {step} ({action}): {reason}")]
pub struct StepFailure {
    /// 1-based step number.
    pub step: usize,
    /// The step, e.g. `map OBX[*]-3.1 with lab_codes`.
    pub action: String,
    /// What went wrong.
    pub reason: String,
}

#[derive(Debug)]
enum Action {
    Set {
        target: PathPattern,
        value: Expression,
    },
    Copy {
        from: FieldPath,
        to: PathPattern,
    },
    Map {
        target: PathPattern,
        table: Arc<Table>,
        name: String,
    },
    RemoveSegments {
        segment: [u8; 3],
        pick: Pick,
    },
    Clear {
        target: PathPattern,
    },
    /// `delete: PID-13`: the whole field, every repetition.
    ClearField {
        target: PathPattern,
    },
}

#[derive(Debug)]
struct Step {
    label: String,
    action: Action,
    when: Option<Expression>,
}

impl Step {
    fn uses_expressions(&self) -> bool {
        self.when.is_some() || matches!(self.action, Action::Set { .. })
    }
}

/// Every connector's compiled steps, sharing one expression program.
#[derive(Debug)]
pub struct Transforms {
    program: Program,
    connectors: Vec<(String, Vec<Step>)>,
    budget: Duration,
}

impl Transforms {
    /// Compile every connector's steps against `tables`; report every problem at once.
    pub fn compile(
        specs: &[TransformSpec],
        tables: &Tables,
        budget: Duration,
    ) -> Result<Self, Vec<RuleProblem>> {
        let mut compiler = Compiler::new();
        let mut problems = Vec::new();
        let mut connectors = Vec::new();
        for spec in specs {
            let mut steps = Vec::new();
            for (index, step) in spec.steps.iter().enumerate() {
                let subject = format!(
                    "connector {:?} transform step {} ({})",
                    spec.connector,
                    index + 1,
                    step.action.keyword()
                );
                let when = step
                    .when
                    .as_ref()
                    .map(|when| compiler.compile(when, &format!("{subject} `when`"), Expect::Bool));
                let compiled = compile_action(&step.action, &subject, tables, &mut compiler)
                    .map_err(|found| problems.extend(found));
                if let (Ok((label, action)), None | Some(Some(_))) = (compiled, &when) {
                    steps.push(Step {
                        label,
                        action,
                        when: when.flatten(),
                    });
                }
            }
            connectors.push((spec.connector.clone(), steps));
        }
        let program = match compiler.finish(budget) {
            Ok(program) => program,
            Err(found) => {
                problems.extend(found);
                return Err(problems);
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            program,
            connectors,
            budget,
        })
    }

    /// `when` conditions and values that load but whose meaning changed
    /// ([`crate::rules::warnings`]).
    pub fn warnings(&self) -> &[RuleProblem] {
        self.program.warnings()
    }

    /// Steps of every connector.
    pub fn step_count(&self) -> usize {
        self.connectors.iter().map(|(_, steps)| steps.len()).sum()
    }

    /// True when `connector` has steps (its copy differs from the received bytes).
    pub fn transforms(&self, connector: &str) -> bool {
        self.steps(connector).is_some()
    }

    fn steps(&self, connector: &str) -> Option<&[Step]> {
        self.connectors
            .iter()
            .find(|(name, steps)| name == connector && !steps.is_empty())
            .map(|(_, steps)| steps.as_slice())
    }

    /// `connector`'s copy of `message`: `Ok(None)` when it has no steps (it delivers the
    /// received bytes), the transformed bytes otherwise.
    pub fn apply(
        &self,
        connector: &str,
        message: &Message,
        charset: Charset,
        inbound: &str,
    ) -> Result<Option<Vec<u8>>, StepFailure> {
        let Some(steps) = self.steps(connector) else {
            return Ok(None);
        };
        let started = Instant::now();
        let mut document = Document::new(message);
        // The copy as a parsed message, for expressions; `None` after a change.
        let mut parsed = Some(message.clone());
        for (index, step) in steps.iter().enumerate() {
            let fail = |reason: String| StepFailure {
                step: index + 1,
                action: step.label.clone(),
                reason,
            };
            let view = if step.uses_expressions() {
                let current = match parsed.take() {
                    Some(current) => current,
                    None => Message::parse(Bytes::from(document.to_bytes()))
                        .map_err(|error| fail(error.to_string()))?,
                };
                Some(parsed.insert(current).clone())
            } else {
                None
            };
            let scope = view
                .as_ref()
                .map(|view| self.program.scope(view, charset, inbound));
            if let (Some(when), Some(scope)) = (&step.when, &scope)
                && !scope.bool(when).map_err(fail)?
            {
                continue;
            }
            let deadline = started + self.budget;
            let changed =
                run(step, &mut document, scope.as_ref(), charset, deadline).map_err(fail)?;
            if changed {
                parsed = None;
            }
            if started.elapsed() > self.budget {
                return Err(fail(format!(
                    "the transform exceeded its time budget of {:?}",
                    self.budget
                )));
            }
        }
        Ok(Some(document.to_bytes()))
    }
}

/// Do one step's action; `Ok(true)` when the copy may have changed.
fn run(
    step: &Step,
    document: &mut Document,
    scope: Option<&crate::rules::Scope<'_>>,
    charset: Charset,
    deadline: Instant,
) -> Result<bool, String> {
    let encode = |text: &str, document: &Document| -> Result<Vec<u8>, String> {
        let bytes = charset.encode(text).ok_or_else(|| {
            format!(
                "the value holds a character the message's character set ({}) cannot carry",
                charset.name()
            )
        })?;
        Ok(escape(&bytes, document.delimiters()))
    };
    let write = |document: &mut Document, paths: Vec<FieldPath>, raw: &[u8]| {
        for path in paths {
            document
                .set(&path, raw)
                .map_err(|error| error.to_string())?;
        }
        Ok::<bool, String>(true)
    };
    match &step.action {
        Action::Set { target, value } => {
            let scope = scope.ok_or("no expression scope")?;
            let text = scope.string(value)?;
            let raw = encode(&text, document)?;
            let paths = document.expand(target);
            write(document, paths, &raw)
        }
        Action::Copy { from, to } => {
            let raw = document.get(from).unwrap_or_default().to_vec();
            let paths = document.expand(to);
            write(document, paths, &raw)
        }
        Action::Map {
            target,
            table,
            name,
        } => {
            for path in document.expand(target) {
                check_deadline(deadline)?;
                let Some(raw) = document.get(&path).filter(|raw| !raw.is_empty()) else {
                    continue;
                };
                let code = charset
                    .decode(&unescape(raw, document.delimiters()))
                    .into_owned();
                let mapped = table.get(&code).ok_or_else(|| {
                    format!("table {name:?} has no row for the value at {path} and no default")
                })?;
                let raw = encode(mapped, document)?;
                document
                    .set(&path, &raw)
                    .map_err(|error| error.to_string())?;
            }
            Ok(true)
        }
        Action::RemoveSegments { segment, pick } => Ok(document.remove(segment, Some(*pick)) > 0),
        Action::Clear { target } => {
            let paths = document.expand(target);
            write(document, paths, b"")
        }
        Action::ClearField { target } => {
            for path in document.expand(target) {
                check_deadline(deadline)?;
                document
                    .clear_field(&path)
                    .map_err(|error| error.to_string())?;
            }
            Ok(true)
        }
    }
}

/// An error once the transform's time budget is spent (checked inside steps over many
/// places, so a message with a million segments cannot hold intake).
fn check_deadline(deadline: Instant) -> Result<(), String> {
    if Instant::now() > deadline {
        return Err("the transform exceeded its time budget (RULES_TIME_BUDGET)".to_owned());
    }
    Ok(())
}

/// Compile one action: its label and the action, or every problem found.
fn compile_action(
    action: &ActionSpec,
    subject: &str,
    tables: &Tables,
    compiler: &mut Compiler,
) -> Result<(String, Action), Vec<RuleProblem>> {
    let problem = |located: &Located, detail: String| RuleProblem {
        origin: located.origin.clone(),
        subject: subject.to_owned(),
        position: None,
        detail,
    };
    // A field pattern that may be written (not a segment alone, not MSH-1/MSH-2).
    let writable = |located: &Located| -> Result<PathPattern, RuleProblem> {
        let pattern: PathPattern = located
            .text
            .parse()
            .map_err(|error: crate::hl7::PathError| problem(located, error.to_string()))?;
        match pattern.field {
            None => Err(problem(
                located,
                format!(
                    "{} names a whole segment; this step needs a field, e.g. {}-3",
                    located.text, located.text
                ),
            )),
            Some(target)
                if target.field <= 2 && matches!(&pattern.segment, b"MSH" | b"FHS" | b"BHS") =>
            {
                Err(problem(
                    located,
                    format!(
                        "{} is part of the message's delimiters (MSH-1, MSH-2), which are kept as received",
                        located.text
                    ),
                ))
            }
            Some(_) => Ok(pattern),
        }
    };
    match action {
        ActionSpec::Set { target, value } => {
            let target = writable(target);
            let value = compiler.compile(value, &format!("{subject} `value`"), Expect::String);
            match (target, value) {
                (Ok(target), Some(value)) => {
                    Ok((format!("set {target}"), Action::Set { target, value }))
                }
                (Err(problem), _) => Err(vec![problem]),
                // The expression's problems are the compiler's to report.
                (Ok(_), None) => Err(Vec::new()),
            }
        }
        ActionSpec::Copy { from, to } => {
            let source = from
                .text
                .parse::<PathPattern>()
                .map_err(|error| problem(from, error.to_string()))
                .and_then(|pattern| {
                    pattern.single().ok_or_else(|| {
                        problem(
                            from,
                            format!(
                                "copy reads one place; {} names several (drop the [*]) or a whole segment",
                                from.text
                            ),
                        )
                    })
                });
            let source = source.and_then(|path| {
                if path.field <= 2 && matches!(&path.segment, b"MSH" | b"FHS" | b"BHS") {
                    return Err(problem(
                        from,
                        format!(
                            "{} is one of the message's delimiters; copy a field's value instead",
                            from.text
                        ),
                    ));
                }
                Ok(path)
            });
            let target = writable(to);
            // A value holds the separators of the levels below it: written deeper (a
            // repetition into a component), they would shift the places after it.
            let depth = |component: Option<usize>, subcomponent: Option<usize>| {
                usize::from(component.is_some()) + usize::from(subcomponent.is_some())
            };
            if let (Ok(source), Ok(destination)) = (&source, &target)
                && let Some(field) = destination.field
                && depth(field.component, field.subcomponent)
                    > depth(source.component, source.subcomponent)
            {
                return Err(vec![problem(
                    to,
                    format!(
                        "copy from {} into {} would put separators inside a component; copy a part at the same level (e.g. {}.1)",
                        from.text, to.text, from.text
                    ),
                )]);
            }
            match (source, target) {
                (Ok(from), Ok(to)) => {
                    Ok((format!("copy {from} to {to}"), Action::Copy { from, to }))
                }
                (source, target) => Err(source.err().into_iter().chain(target.err()).collect()),
            }
        }
        ActionSpec::Map { field, table } => {
            let target = writable(field);
            let found = tables.get(&table.text).cloned().ok_or_else(|| {
                let names = tables.names();
                problem(
                    table,
                    if names.is_empty() {
                        format!(
                            "unknown table {:?}: no tables are defined; add it under `tables:`",
                            table.text
                        )
                    } else {
                        format!(
                            "unknown table {:?}; the tables are {}",
                            table.text,
                            names.join(", ")
                        )
                    },
                )
            });
            match (target, found) {
                (Ok(target), Ok(found)) => Ok((
                    format!("map {target} with {}", table.text),
                    Action::Map {
                        target,
                        table: found,
                        name: table.text.clone(),
                    },
                )),
                (target, found) => Err(target.err().into_iter().chain(found.err()).collect()),
            }
        }
        ActionSpec::Delete { target } => {
            let pattern: PathPattern = target
                .text
                .parse()
                .map_err(|error: crate::hl7::PathError| vec![problem(target, error.to_string())])?;
            if pattern.field.is_none() {
                if matches!(&pattern.segment, b"MSH" | b"FHS" | b"BHS") {
                    return Err(vec![problem(
                        target,
                        format!(
                            "{} is the message header, which cannot be deleted",
                            target.text
                        ),
                    )]);
                }
                // A bare name (`NTE`) removes every one; `NTE[2]` the second.
                let pick = if target.text.contains('[') {
                    pattern.segment_index
                } else {
                    Pick::Every
                };
                let shown = PathPattern {
                    segment_index: pick,
                    ..pattern
                };
                return Ok((
                    format!("delete {shown}"),
                    Action::RemoveSegments {
                        segment: shown.segment,
                        pick,
                    },
                ));
            }
            let pattern = writable(target).map_err(|problem| vec![problem])?;
            // `PID-13` empties the whole field (every repetition); `PID-13[2]` or
            // `PID-13.1` one place in it.
            let whole_field = pattern.field.is_some_and(|field| field.component.is_none())
                && !target
                    .text
                    .split_once('-')
                    .is_some_and(|(_, after)| after.contains('['));
            let label = format!("delete {pattern}");
            let action = if whole_field {
                Action::ClearField { target: pattern }
            } else {
                Action::Clear { target: pattern }
            };
            Ok((label, action))
        }
    }
}

impl fmt::Display for TransformSpec {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "connector {:?}: {} steps",
            self.connector,
            self.steps.len()
        )
    }
}

#[cfg(test)]
mod tests;
