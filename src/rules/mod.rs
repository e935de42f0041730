//! CEL rules: validation rules and connector filters, compiled once at startup.
//!
//! Every expression is parsed when the configuration loads, with bounded size and nesting,
//! and checked (`names.rs`, then [`types`], then [`cost`]) against the variables and
//! functions mfoundry provides, so an unknown name or a wrong type is a load error, not a
//! message-time surprise; [`warnings`] names the expressions whose meaning changed when
//! absent segments began to bind empty values. At message time, one shared root context (the
//! standard library plus `field()` and `segments()`) gets a cheap child scope holding only the
//! variables some expression references (see [`bindings`]). Every key an expression reads is
//! bound for every message, so a message that lacks a segment never makes a rule fail to
//! evaluate: its keys are `""`, its lists `[]`.
//!
//! Evaluation order: validation rules in their configured order (the first that is false
//! rejects the message); then every connector's filter. An expression that still fails to
//! evaluate (a conversion such as `int(pid.dob)` of a value that is not a number, a type only
//! the message decides, the time budget spent) is an error for the message, which intake
//! answers `AR`, never `AE` (ADR 0010).

pub mod bindings;
pub mod cost;
mod names;
mod scope;
pub mod types;
pub mod warnings;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cel::{Context, Env, ExecutionError, FunctionContext, IdedExpr, Value};

use crate::hl7::{Charset, FieldPath, Message};
use bindings::{MESSAGE_VARIABLE, MessageValue, Needed, View};

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// Deepest nesting of sub-expressions accepted by the parser.
pub const MAX_NESTING: u16 = 32;
/// Deepest nesting of comprehensions (`all`, `exists`, `map`, `filter` …): each level can
/// multiply the work by [`bindings::MAX_LIST_ENTRIES`].
pub const MAX_COMPREHENSION_NESTING: usize = 2;

/// Functions an expression may call: mfoundry's own, the CEL standard library as this
/// engine provides it, and the optional-value functions. Operators and macros (`has`, `all`,
/// `exists`, `exists_one`, `map`, `filter`) are always allowed.
pub const FUNCTIONS: &[&str] = &[
    "field",
    "segments",
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "dyn",
    "duration",
    "timestamp",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "hasValue",
    "value",
    "or",
    "orValue",
    "of",
    "none",
    "ofNonZeroValue",
];

/// Where an expression came from, for error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The configuration file, if the expression came from one.
    pub file: Option<String>,
    /// 1-based line of the expression's value in the file (0 if unknown).
    pub line: u64,
    /// 1-based column of the expression's value in the file (0 if unknown).
    pub column: u64,
}

impl fmt::Display for Origin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<config>");
        if self.line == 0 {
            write!(formatter, "{file}")
        } else {
            write!(formatter, "{file}:{}:{}", self.line, self.column)
        }
    }
}

/// An expression as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpressionSource {
    /// The CEL text.
    pub text: String,
    /// Where it was written.
    pub origin: Origin,
}

/// A validation rule as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// Name, shown in the ERR segment and logs.
    pub name: String,
    /// Must evaluate to true for the message to be accepted.
    pub expression: ExpressionSource,
    /// Reason sent back when the rule fails.
    pub message: Option<String>,
}

/// A connector's filter as configured (`None`: the connector takes every message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    /// Connector name.
    pub connector: String,
    /// The filter, if any.
    pub expression: Option<ExpressionSource>,
    /// `order_by`: the key messages are ordered by at this connector (keyed lanes), if any.
    pub order_by: Option<ExpressionSource>,
}

/// One problem found while compiling expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleProblem {
    /// Where the expression is.
    pub origin: Origin,
    /// What it belongs to, e.g. `validation rule "require-pid"`.
    pub subject: String,
    /// Line and column inside the expression (1-based), when the problem has one.
    pub position: Option<(isize, isize)>,
    /// What is wrong.
    pub detail: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}: {}: {}",
            self.origin, self.subject, self.detail
        )?;
        if let Some((line, column)) = self.position {
            write!(formatter, " (expression line {line}, column {column})")?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct CompiledRule {
    name: String,
    message: String,
    expression: Expression,
}

/// The outcome of the validation rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Every rule was true.
    Passed,
    /// A rule was false.
    Failed {
        /// The rule's name.
        rule: String,
        /// Its configured message.
        message: String,
    },
    /// An expression could not be evaluated.
    Errored {
        /// The rule or filter (`filter of connector "x"`).
        subject: String,
        /// Why (mfoundry's and CEL's words; never message text).
        detail: String,
    },
}

/// Validation and routing for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// The validation outcome (routing only runs when it passed).
    pub validation: Validation,
    /// Per connector (in the order of [`RuleSet::filter_connectors`]): does its filter take
    /// the message?
    pub routes: Vec<bool>,
    /// Per connector, in the same order: its `order_by` key ([`order_key`]) when it takes
    /// the message and has `order_by`.
    pub order_keys: Vec<Option<u64>>,
}

/// The stored form of an `order_by` value: the first 8 bytes of its SHA-256 (the value may
/// be patient data and is never stored; equal values give equal keys, and two values that
/// share a key are only delivered in order with each other).
pub fn order_key(value: &str) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(value.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A connector's compiled filter and `order_by`.
struct CompiledFilter {
    connector: String,
    filter: Option<Expression>,
    order_by: Option<Expression>,
}

/// Compiles expressions into one [`Program`]: each is checked (size, nesting, names, types)
/// and the variables they use are noted, so only those are built per message.
pub struct Compiler {
    env: Arc<Env>,
    needed: Needed,
    problems: Vec<RuleProblem>,
    /// Expressions that load but whose meaning changed ([`warnings`]).
    warnings: Vec<RuleProblem>,
}

impl fmt::Debug for Compiler {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Compiler")
            .field("problems", &self.problems.len())
            .field("warnings", &self.warnings.len())
            .finish_non_exhaustive()
    }
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

/// One compiled expression of a [`Program`].
#[derive(Debug)]
pub struct Expression {
    expression: IdedExpr,
    /// What it belongs to, for errors (`filter of connector "lab"`).
    subject: String,
}

impl Expression {
    /// What it belongs to.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Compiler {
    /// A compiler with the standard library and mfoundry's functions.
    pub fn new() -> Self {
        Self {
            env: Arc::new(Env::stdlib()),
            needed: Needed::default(),
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Compile `source`, which must give `expect`; `None` (its problems kept for
    /// [`Compiler::finish`]) when it does not compile.
    pub fn compile(
        &mut self,
        source: &ExpressionSource,
        subject: &str,
        expect: types::Expect,
    ) -> Option<Expression> {
        let expression = compile_one(
            &self.env,
            source,
            subject,
            expect,
            &mut self.needed,
            &mut self.problems,
            &mut self.warnings,
        )?;
        Some(Expression {
            expression,
            subject: subject.to_owned(),
        })
    }

    /// The program every compiled expression runs in; every problem found, otherwise.
    pub fn finish(self, budget: Duration) -> Result<Program, Vec<RuleProblem>> {
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        let mut root = Context::with_env(self.env);
        let registered = root
            .add_function("field", field_function)
            .and_then(|()| root.add_function("segments", segments_function));
        if let Err(error) = registered {
            return Err(vec![RuleProblem {
                origin: Origin::default(),
                subject: "rule engine".to_owned(),
                position: None,
                detail: format!("cannot register functions: {error:?}"),
            }]);
        }
        Ok(Program {
            root,
            needed: self.needed,
            budget,
            warnings: self.warnings,
        })
    }
}

/// The shared root context of compiled expressions and the variables they use.
pub struct Program {
    root: Context<'static, 'static>,
    needed: Needed,
    budget: Duration,
    /// What [`Compiler`] warned about, for `mfoundry check` to print.
    warnings: Vec<RuleProblem>,
}

impl fmt::Debug for Program {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Program")
            .field("needed", &self.needed)
            .field("budget", &self.budget)
            .field("warnings", &self.warnings.len())
            .finish_non_exhaustive()
    }
}

/// The variables of one message, for evaluating a [`Program`]'s expressions under its time
/// budget (counted from the scope's creation).
pub struct Scope<'a> {
    context: Context<'a, 'a>,
    started: Instant,
    budget: Duration,
}

impl fmt::Debug for Scope<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Scope")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Program {
    /// Expressions that load but whose meaning changed ([`warnings`]): each with its place
    /// and what to write instead.
    pub fn warnings(&self) -> &[RuleProblem] {
        &self.warnings
    }

    /// Bind the variables the expressions use for `message`.
    pub fn scope<'a>(&'a self, message: &'a Message, charset: Charset, inbound: &str) -> Scope<'a> {
        self.scope_of(message, charset, inbound, None)
    }

    /// [`Program::scope`] for a DICOM object's header view, with its identifiers as `dicom`.
    pub fn scope_of<'a>(
        &'a self,
        message: &'a Message,
        charset: Charset,
        inbound: &str,
        dicom: Option<&'a crate::dicom::Identifiers>,
    ) -> Scope<'a> {
        let view = View {
            message,
            charset,
            dicom,
        };
        let mut scope = self.root.new_inner_scope();
        let needed = self.needed;
        if needed.message {
            scope.add_variable_as_val(
                MESSAGE_VARIABLE,
                Box::new(MessageValue {
                    message: message.clone(),
                    charset,
                }),
            );
        }
        let [msh, pid, pv1, obx, dicom_keys] = needed.keys;
        if msh != 0 {
            scope.add_variable_as_val("msh", view.msh(msh));
        }
        if pid != 0 {
            scope.add_variable_as_val("pid", view.pid(pid));
        }
        if pv1 != 0 {
            scope.add_variable_as_val("pv1", view.pv1(pv1));
        }
        if obx != 0 {
            scope.add_variable_as_val("obx", view.obx(obx));
        }
        if dicom_keys != 0 {
            scope.add_variable_as_val("dicom", view.dicom(dicom_keys));
        }
        if needed.obx_list {
            scope.add_variable_as_val("obx_list", view.obx_list());
        }
        if needed.inbound {
            scope.add_variable_from_value("inbound", inbound.to_owned());
        }
        Scope {
            context: scope,
            started: Instant::now(),
            budget: self.budget,
        }
    }
}

impl Scope<'_> {
    /// Evaluate a true-or-false expression.
    pub fn bool(&self, expression: &Expression) -> Result<bool, String> {
        evaluate_bool(&expression.expression, &self.context)
    }

    /// Evaluate an expression that gives a string.
    pub fn string(&self, expression: &Expression) -> Result<String, String> {
        match Value::resolve(&expression.expression, &self.context) {
            Ok(Value::String(text)) => Ok(text.to_string()),
            Ok(other) => Err(format!(
                "the expression gave a {} where a string is needed",
                other.type_of()
            )),
            Err(error) => Err(describe_execution_error(&error)),
        }
    }

    /// An error when the time budget is spent.
    pub fn within_budget(&self) -> Result<(), String> {
        if self.started.elapsed() > self.budget {
            return Err(format!(
                "expression evaluation exceeded its time budget of {:?}",
                self.budget
            ));
        }
        Ok(())
    }
}

/// Compiled rules and filters, shared by every connection.
pub struct RuleSet {
    program: Program,
    rules: Vec<CompiledRule>,
    /// Each connector's filter (`None` takes every message) and `order_by`, in configuration
    /// order.
    filters: Vec<CompiledFilter>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("filters", &self.filters.len())
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl RuleSet {
    /// Compile every rule and filter; report every problem at once.
    pub fn compile(
        rules: &[RuleSpec],
        filters: &[FilterSpec],
        budget: Duration,
    ) -> Result<Self, Vec<RuleProblem>> {
        let mut compiler = Compiler::new();
        let mut compiled_rules = Vec::new();
        for rule in rules {
            let subject = format!("validation rule {:?}", rule.name);
            if let Some(expression) =
                compiler.compile(&rule.expression, &subject, types::Expect::Bool)
            {
                compiled_rules.push(CompiledRule {
                    name: rule.name.clone(),
                    message: rule
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("validation rule {} failed", rule.name)),
                    expression,
                });
            }
        }
        let mut compiled_filters = Vec::new();
        for filter in filters {
            let subject = format!("filter of connector {:?}", filter.connector);
            let expression = filter
                .expression
                .as_ref()
                .and_then(|source| compiler.compile(source, &subject, types::Expect::Bool));
            let subject = format!("order_by of connector {:?}", filter.connector);
            let order_by = filter
                .order_by
                .as_ref()
                .and_then(|source| compiler.compile(source, &subject, types::Expect::String));
            compiled_filters.push(CompiledFilter {
                connector: filter.connector.clone(),
                filter: expression,
                order_by,
            });
        }
        Ok(Self {
            program: compiler.finish(budget)?,
            rules: compiled_rules,
            filters: compiled_filters,
        })
    }

    /// The connectors with a filter, in the order of [`Evaluation::routes`].
    pub fn filter_connectors(&self) -> impl ExactSizeIterator<Item = &str> {
        self.filters
            .iter()
            .map(|compiled| compiled.connector.as_str())
    }

    /// Rules and filters that load but whose meaning changed ([`warnings`]).
    pub fn warnings(&self) -> &[RuleProblem] {
        self.program.warnings()
    }

    /// Number of validation rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether any expression is evaluated for a message (a rule, or a filter).
    pub fn evaluates(&self) -> bool {
        !self.rules.is_empty()
            || self
                .filters
                .iter()
                .any(|compiled| compiled.filter.is_some() || compiled.order_by.is_some())
    }

    /// Evaluate validation rules, then (if they pass) every filter.
    pub fn evaluate(&self, message: &Message, charset: Charset, inbound: &str) -> Evaluation {
        self.evaluate_with(message, charset, inbound, None)
    }

    /// Evaluate every filter for a DICOM object (its header view and identifiers): the
    /// validation rules are written for HL7 messages and are not applied (ADR 0020).
    pub fn evaluate_object(
        &self,
        view: &Message,
        inbound: &str,
        identifiers: &crate::dicom::Identifiers,
    ) -> Evaluation {
        self.evaluate_with(view, Charset::UTF_8, inbound, Some(identifiers))
    }

    fn evaluate_with(
        &self,
        message: &Message,
        charset: Charset,
        inbound: &str,
        dicom: Option<&crate::dicom::Identifiers>,
    ) -> Evaluation {
        let scope = self.program.scope_of(message, charset, inbound, dicom);
        // Evaluate one expression, then check the budget (a false validation rule answers at
        // once, so `final_if_false` skips the check): `Err` ends the evaluation.
        let step = |expression: &Expression, final_if_false: bool| -> Result<bool, Validation> {
            let errored = |detail| Validation::Errored {
                subject: expression.subject.clone(),
                detail,
            };
            let result = scope.bool(expression).map_err(errored)?;
            if result || !final_if_false {
                scope.within_budget().map_err(|_| {
                    errored(format!(
                        "rule evaluation exceeded its time budget of {:?}",
                        self.program.budget
                    ))
                })?;
            }
            Ok(result)
        };
        let stop = |validation| Evaluation {
            validation,
            routes: Vec::new(),
            order_keys: Vec::new(),
        };
        let rules = if dicom.is_some() {
            &[][..]
        } else {
            &self.rules[..]
        };
        for rule in rules {
            match step(&rule.expression, true) {
                Ok(true) => {}
                Ok(false) => {
                    return stop(Validation::Failed {
                        rule: rule.name.clone(),
                        message: rule.message.clone(),
                    });
                }
                Err(validation) => return stop(validation),
            }
        }
        let mut routes = Vec::with_capacity(self.filters.len());
        let mut order_keys = Vec::with_capacity(self.filters.len());
        for compiled in &self.filters {
            let taken = match &compiled.filter {
                None => true,
                Some(expression) => match step(expression, false) {
                    Ok(taken) => taken,
                    Err(validation) => return stop(validation),
                },
            };
            routes.push(taken);
            let key = match (&compiled.order_by, taken) {
                (Some(expression), true) => Some(
                    match scope
                        .string(expression)
                        .and_then(|value| scope.within_budget().map(|()| value))
                    {
                        Ok(value) => order_key(&value),
                        Err(detail) => {
                            // Still delivered: with the messages whose key is empty, in order.
                            tracing::warn!(subject = %expression.subject, error = %detail, "order_by could not be evaluated; the message is ordered with those whose key is empty");
                            order_key("")
                        }
                    },
                ),
                _ => None,
            };
            order_keys.push(key);
        }
        Evaluation {
            validation: Validation::Passed,
            routes,
            order_keys,
        }
    }
}

fn evaluate_bool(expression: &IdedExpr, scope: &Context<'_, '_>) -> Result<bool, String> {
    match Value::resolve(expression, scope) {
        Ok(Value::Bool(result)) => Ok(result),
        Ok(other) => Err(format!(
            "the expression gave a {} where true or false is needed",
            other.type_of()
        )),
        Err(error) => Err(describe_execution_error(&error)),
    }
}

/// What went wrong, in fixed words. CEL's own error texts can quote message values (a map
/// key read from the message, the operands of an overflow, a regex built from a field), so
/// none of them is passed on: this text goes into logs and into ERR-7 of the ACK.
fn describe_execution_error(error: &ExecutionError) -> String {
    let what = match error {
        ExecutionError::NoSuchKey(_) => {
            "a map key is missing (a field number past the last field of a segments(...) entry, or a key a map literal lacks: test it with has(...) or `in` first)"
        }
        ExecutionError::UndeclaredReference(_) => "a name is not bound",
        ExecutionError::NoSuchOverload(_) | ExecutionError::UnexpectedType { .. } => {
            "a function or operator got a value of the wrong type"
        }
        ExecutionError::InvalidArgumentCount { .. } | ExecutionError::MissingArgumentOrTarget => {
            "a function got the wrong number of arguments"
        }
        ExecutionError::ValuesNotComparable(..) => "two values cannot be compared",
        ExecutionError::DivisionByZero(_) | ExecutionError::RemainderByZero(_) => {
            "division by zero"
        }
        ExecutionError::Overflow(..) => "an arithmetic overflow",
        ExecutionError::IndexOutOfBounds(_) => "a list index is out of bounds",
        ExecutionError::FunctionError { .. } => {
            "a function failed (e.g. an invalid field path or pattern)"
        }
        _ => "an operation is not supported on these values",
    };
    format!("the expression failed at run time: {what}")
}

fn compile_one(
    env: &Env,
    source: &ExpressionSource,
    subject: &str,
    expect: types::Expect,
    needed: &mut Needed,
    problems: &mut Vec<RuleProblem>,
    warnings: &mut Vec<RuleProblem>,
) -> Option<IdedExpr> {
    let problem = |position, detail: String| RuleProblem {
        origin: source.origin.clone(),
        subject: subject.to_owned(),
        position,
        detail,
    };
    if source.text.trim().is_empty() {
        problems.push(problem(None, "the expression is empty".to_owned()));
        return None;
    }
    if source.text.len() > MAX_EXPRESSION_BYTES {
        problems.push(problem(
            None,
            format!(
                "the expression is {} bytes long; at most {MAX_EXPRESSION_BYTES} are allowed",
                source.text.len()
            ),
        ));
        return None;
    }
    let parsed = env
        .parser()
        .max_recursion_depth(MAX_NESTING)
        .parse(&source.text);
    let expression = match parsed {
        Ok(expression) => expression,
        Err(errors) => {
            for error in errors.errors {
                let position = (error.pos.0 > 0).then_some(error.pos);
                problems.push(problem(
                    position,
                    format!("does not compile: {}", error.msg),
                ));
            }
            return None;
        }
    };
    let mut found = Vec::new();
    names::check(
        &expression,
        &mut scope::Scope::default(),
        0,
        needed,
        &mut found,
    );
    if found.is_empty() {
        // Names first: a type said of an unknown name would only add noise.
        types::check(&expression, expect, &mut found);
    }
    if found.is_empty() {
        cost::check(&expression, &mut found);
    }
    if found.is_empty() {
        let mut changed = Vec::new();
        self::warnings::check(&expression, &mut changed);
        warnings.extend(changed.into_iter().map(|detail| problem(None, detail)));
        Some(expression)
    } else {
        problems.extend(found.into_iter().map(|detail| problem(None, detail)));
        None
    }
}

/// Run `read` on the message bound for this evaluation.
fn with_message<T>(
    context: &FunctionContext<'_, '_>,
    read: impl FnOnce(&MessageValue) -> T,
) -> Result<T, ExecutionError> {
    let value = context
        .ptx
        .get_variable(MESSAGE_VARIABLE)
        .ok_or_else(|| context.error("the message is not bound"))?;
    let message = value
        .downcast_ref::<MessageValue>()
        .ok_or_else(|| context.error("the message is not bound"))?;
    Ok(read(message))
}

fn field_function(
    context: &FunctionContext,
    path: Arc<String>,
) -> Result<Arc<String>, ExecutionError> {
    // The path may be computed from message data: do not quote it.
    let path: FieldPath = path
        .parse()
        .map_err(|_: crate::hl7::PathError| context.error("the field path is not valid"))?;
    with_message(context, |message| Arc::new(message.view().path_text(&path)))
}

fn segments_function(
    context: &FunctionContext,
    name: Arc<String>,
) -> Result<Value, ExecutionError> {
    with_message(context, |message| message.view().segments(&name))
}
