//! Reading the YAML configuration file: settings, `tls_senders`, connectors (with their
//! transform steps), code tables and validation rules (ADR 0008).
//!
//! The text becomes a node tree first ([`crate::yaml::parse`]: only unreadable text stops
//! there); then every section is read key by key and every problem is collected with its
//! place: a missing or unknown key, a value of the wrong kind. A connector's output keys are
//! read by its output (`crate::outputs`), through [`super::connectors`]. The shape is the one
//! the single-binary Go gateways use (`connectors: [{name, type, url, filter}]`,
//! `validation.rules: [{name, expression, message}]`), so their files load unchanged; every
//! setting that has an environment variable may also be written here in lower case.
//! [`super::schema`] documents the same keys for editors.

use std::collections::BTreeMap;

use super::env::{ENV_ONLY, ENV_VARS};
pub use crate::outputs::ConnectorKind;
use crate::rules::{ExpressionSource, Origin};
use crate::transform::{ACTIONS, ActionSpec, Located, StepSpec, TableSource, TableSpec};
use crate::yaml::{self, Map, Node, Problems, Spanned};

/// What the file says, read; problems are collected by [`read`].
#[derive(Clone, Debug, Default)]
pub struct FileConfig {
    /// Settings written in the file, by lower-case key (the text as written).
    pub scalars: BTreeMap<String, Spanned<String>>,
    /// `tls_senders`, when written.
    pub tls_senders: Option<Vec<TlsSender>>,
    /// Where the top-level `tls_senders` key is, when written.
    pub tls_senders_at: Option<yaml::At>,
    /// `listeners:`, when written ([`super::listeners`]).
    pub listeners: Option<Vec<super::listeners::ListenerEntry>>,
    /// Connectors in file order (those without a readable name or type are left out; their
    /// problems are reported).
    pub connectors: Vec<ConnectorEntry>,
    /// Validation rules in file order.
    pub rules: Vec<RuleEntry>,
    /// Code tables, in file order.
    pub tables: Vec<TableSpec>,
}

/// One `tls_senders` entry.
#[derive(Clone, Debug)]
pub struct TlsSender {
    /// The client certificate's identity.
    pub identity: Spanned<String>,
    /// The CA that must have issued it.
    pub issuer: Option<String>,
    /// MSH-3.1 values it may send as.
    pub sending_applications: Vec<String>,
    /// MSH-4.1 values it may send as.
    pub sending_facilities: Vec<String>,
}

/// One connector: the keys every connector has, and its whole mapping for the rest.
#[derive(Clone, Debug)]
pub struct ConnectorEntry {
    /// Its name.
    pub name: Spanned<String>,
    /// Its type.
    pub kind: ConnectorKind,
    /// Its CEL filter.
    pub filter: Option<Spanned<String>>,
    /// Its `order_by` (CEL giving a string: the key messages are ordered by).
    pub order_by: Option<Spanned<String>>,
    /// Its transform steps, in order (places without the file name: see
    /// [`StepSpec::origins_mut`]).
    pub transform: Vec<StepSpec>,
    /// The connector's mapping, for the keys read by its delivery settings and its output.
    pub node: Node,
}

/// One validation rule.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    /// Its name.
    pub name: Spanned<String>,
    /// Its CEL expression.
    pub expression: Spanned<String>,
    /// The reason sent back when it fails.
    pub message: Option<String>,
}

/// The top-level keys that are not settings.
const SECTIONS: [&str; 5] = [
    "tls_senders",
    "connectors",
    "validation",
    "tables",
    "listeners",
];
/// The keys every connector has; the rest belong to its delivery settings and its output.
pub const CONNECTOR_KEYS: [&str; 5] = ["name", "type", "filter", "order_by", "transform"];
/// The keys of a transform step: one action, its `value` (for `set`), `when`.
pub(crate) const STEP_KEYS: [&str; 6] = ["set", "copy", "map", "delete", "value", "when"];
/// The keys of `copy`.
pub(crate) const COPY_KEYS: [&str; 2] = ["from", "to"];
/// The keys of `map`.
pub(crate) const MAP_KEYS: [&str; 2] = ["field", "table"];
/// The keys of a table.
pub(crate) const TABLE_KEYS: [&str; 3] = ["file", "values", "default"];
/// The keys of a `tls_senders` entry.
pub(crate) const SENDER_KEYS: [&str; 4] = [
    "identity",
    "issuer",
    "sending_applications",
    "sending_facilities",
];
/// The keys of a validation rule.
pub(crate) const RULE_KEYS: [&str; 3] = ["name", "expression", "message"];

/// The settings that may be written in the file: every environment variable but the ones
/// only the environment can set, in lower case.
pub fn setting_keys() -> Vec<String> {
    ENV_VARS
        .iter()
        .filter(|var| !ENV_ONLY.contains(&var.name))
        .map(|var| var.name.to_ascii_lowercase())
        .collect()
}

/// Every top-level key the file takes.
pub fn top_keys() -> Vec<String> {
    let mut keys = setting_keys();
    keys.extend(SECTIONS.map(str::to_owned));
    keys
}

/// Read a configuration file's text. `Err` is text that cannot be read as YAML (one error,
/// rendered with the file name, line and the lines around it); otherwise every problem the
/// sections have is in `problems`, and what could be read is returned.
pub fn parse(text: &str, file_name: &str, problems: &mut Problems) -> Result<FileConfig, String> {
    let node = yaml::parse(text, file_name)?;
    Ok(read(&node, problems))
}

/// Read every section of `node`, collecting problems.
pub fn read(node: &Node, problems: &mut Problems) -> FileConfig {
    let first = problems.len();
    let file = read_sections(node, problems);
    // In the order they appear in the file.
    problems[first..].sort_by_key(|problem| problem.at);
    file
}

fn read_sections(node: &Node, problems: &mut Problems) -> FileConfig {
    let mut file = FileConfig::default();
    let Some(mut top) = Map::new(node, "the configuration file", problems) else {
        return file;
    };
    for key in setting_keys() {
        if let Some(value) = top.text(&key, problems) {
            file.scalars.insert(key, value);
        }
    }
    if top.has("tls_senders") {
        file.tls_senders_at = Some(top.place("tls_senders"));
    }
    if let Some(items) = top.list("listeners", problems) {
        file.listeners = Some(
            items
                .iter()
                .filter_map(|item| super::listeners::read_entry(item, sender, problems))
                .collect(),
        );
    }
    if let Some(items) = top.list("tls_senders", problems) {
        file.tls_senders = Some(
            items
                .iter()
                .filter_map(|item| sender(item, problems))
                .collect(),
        );
    }
    if let Some(items) = top.list("connectors", problems) {
        file.connectors = items
            .iter()
            .filter_map(|item| connector(item, problems))
            .collect();
    }
    if let Some(tables) = top.node("tables") {
        file.tables = read_tables(tables, problems);
    }
    if let Some(mut validation) = top.map("validation", problems) {
        if let Some(items) = validation.list("rules", problems) {
            file.rules = items
                .iter()
                .filter_map(|item| rule(item, problems))
                .collect();
        }
        validation.finish("`validation`", &["rules"], problems);
    }
    let keys = top_keys();
    let known: Vec<&str> = keys.iter().map(String::as_str).collect();
    top.finish("the configuration file", &known, problems);
    file
}

/// A required text key: its absence is a problem naming `what`.
fn required(
    map: &mut Map<'_>,
    key: &str,
    what: &str,
    problems: &mut Problems,
) -> Option<Spanned<String>> {
    let value = map.text(key, problems);
    if value.is_none() && !map.has(key) {
        problems.push(yaml::Problem {
            at: map.at(),
            message: format!("{what} has no `{key}`; add one"),
        });
    }
    value
}

fn sender(node: &Node, problems: &mut Problems) -> Option<TlsSender> {
    let mut map = Map::new(node, "a tls_senders entry", problems)?;
    let identity = required(&mut map, "identity", "this tls_senders entry", problems);
    let issuer = map.text("issuer", problems).map(|issuer| issuer.value);
    // Missing and empty lists are reported together with the entry (super::read_senders).
    let mut list =
        |key: &str, problems: &mut Problems| map.text_list(key, problems).unwrap_or_default();
    let sending_applications = list("sending_applications", problems);
    let sending_facilities = list("sending_facilities", problems);
    map.finish("a tls_senders entry", &SENDER_KEYS, problems);
    Some(TlsSender {
        identity: identity?,
        issuer,
        sending_applications,
        sending_facilities,
    })
}

fn connector(node: &Node, problems: &mut Problems) -> Option<ConnectorEntry> {
    let mut map = Map::new(node, "a connector", problems)?;
    let name = required(&mut map, "name", "this connector", problems);
    let kind = required(&mut map, "type", "this connector", problems).and_then(|kind| {
        let found = ConnectorKind::ALL
            .into_iter()
            .find(|known| known.as_str() == kind.value);
        if found.is_none() {
            let kinds: Vec<&str> = ConnectorKind::ALL
                .iter()
                .map(ConnectorKind::as_str)
                .collect();
            problems.push(yaml::Problem {
                at: kind.at,
                message: format!(
                    "`type` is {:?}; use one of {}",
                    kind.value,
                    kinds.join(", ")
                ),
            });
        }
        found
    });
    let filter = map.text("filter", problems);
    let order_by = map.text("order_by", problems);
    let transform = map
        .list("transform", problems)
        .map(|steps| {
            steps
                .iter()
                .filter_map(|step| read_step(step, problems))
                .collect()
        })
        .unwrap_or_default();
    // The other keys are read by the connector's delivery settings and its output, which
    // report the ones nobody reads.
    Some(ConnectorEntry {
        name: name?,
        kind: kind?,
        filter,
        order_by,
        transform,
        node: node.clone(),
    })
}

/// A place in the file, without the file's name (filled in by the caller).
fn origin(at: yaml::At) -> Origin {
    Origin {
        file: None,
        line: at.line,
        column: at.column,
    }
}

fn located(value: Spanned<String>) -> Located {
    Located {
        origin: origin(value.at),
        text: value.value,
    }
}

fn expression(value: Spanned<String>) -> ExpressionSource {
    ExpressionSource {
        origin: origin(value.at),
        text: value.value,
    }
}

/// One transform step: exactly one action key, with `value` for `set`, and `when`.
fn read_step(node: &Node, problems: &mut Problems) -> Option<StepSpec> {
    let what = "a transform step";
    let mut map = Map::new(node, what, problems)?;
    let written: Vec<&str> = ACTIONS.into_iter().filter(|key| map.has(key)).collect();
    if written.len() != 1 {
        for key in ACTIONS {
            map.skip(key);
        }
        map.skip("value");
        map.skip("when");
        let at = map.at();
        map.finish(what, &STEP_KEYS, problems);
        problems.push(yaml::Problem {
            at,
            message: if written.is_empty() {
                format!("a transform step needs one action: {}", ACTIONS.join(", "))
            } else {
                format!(
                    "a transform step does one thing, this one has {}; write one step for each",
                    written.join(" and ")
                )
            },
        });
        return None;
    }
    let at = map.at();
    let when = map.text("when", problems).map(expression);
    // Read in a closure so the step's unknown keys are reported below even when an action
    // could not be read.
    let action = (|| match written[0] {
        "set" => {
            let target = map.text("set", problems);
            let value = required(&mut map, "value", "this `set` step", problems);
            Some(ActionSpec::Set {
                target: located(target?),
                value: expression(value?),
            })
        }
        "copy" => {
            let mut inner = map.map("copy", problems)?;
            let from = required(&mut inner, "from", "`copy`", problems);
            let to = required(&mut inner, "to", "`copy`", problems);
            inner.finish("`copy`", &COPY_KEYS, problems);
            Some(ActionSpec::Copy {
                from: located(from?),
                to: located(to?),
            })
        }
        "map" => {
            let mut inner = map.map("map", problems)?;
            let field = required(&mut inner, "field", "`map`", problems);
            let table = required(&mut inner, "table", "`map`", problems);
            inner.finish("`map`", &MAP_KEYS, problems);
            Some(ActionSpec::Map {
                field: located(field?),
                table: located(table?),
            })
        }
        _ => map
            .text("delete", problems)
            .map(|target| ActionSpec::Delete {
                target: located(target),
            }),
    })();
    if written[0] != "set" && map.has("value") {
        map.skip("value");
        problems.push(yaml::Problem {
            at: map.place("value"),
            message: format!(
                "`value` belongs to a `set` step; a `{}` step takes none",
                written[0]
            ),
        });
    }
    map.finish(what, &STEP_KEYS, problems);
    Some(StepSpec {
        action: action?,
        when,
        origin: origin(at),
    })
}

/// `tables:`: name → `{file}` or `{values}`, with an optional `default`.
fn read_tables(node: &Node, problems: &mut Problems) -> Vec<TableSpec> {
    let yaml::Value::Map(entries) = &node.value else {
        problems.push(yaml::Problem {
            at: node.at,
            message: format!(
                "`tables` must be a mapping of table names to tables, found {}",
                node.kind()
            ),
        });
        return Vec::new();
    };
    let mut tables = Vec::new();
    for (name, table) in entries {
        let Some(name) = name.scalar_text() else {
            continue;
        };
        let what = format!("table `{name}`");
        let Some(mut map) = Map::new(table, &what, problems) else {
            continue;
        };
        let written = map.has("file") || map.has("values");
        let file = map.text("file", problems);
        let values = map.text_map("values", problems);
        let default = map.text("default", problems).map(|value| value.value);
        map.finish(&what, &TABLE_KEYS, problems);
        let source = match (file, values) {
            (Some(file), None) => TableSource::File(file.value.into()),
            (None, Some(values)) => TableSource::Values(values.into_iter().collect()),
            (Some(_), Some(_)) => {
                problems.push(yaml::Problem {
                    at: table.at,
                    message: format!("{what} takes `file` or `values`, not both"),
                });
                continue;
            }
            (None, None) => {
                if !written {
                    problems.push(yaml::Problem {
                        at: table.at,
                        message: format!(
                            "{what} needs `file` (a CSV file with a header line from,to) or `values` (a mapping of codes)"
                        ),
                    });
                }
                continue;
            }
        };
        tables.push(TableSpec {
            name,
            source,
            default,
            origin: origin(table.at),
        });
    }
    tables
}

fn rule(node: &Node, problems: &mut Problems) -> Option<RuleEntry> {
    let mut map = Map::new(node, "a validation rule", problems)?;
    let name = required(&mut map, "name", "this validation rule", problems);
    let expression = required(&mut map, "expression", "this validation rule", problems);
    let message = map.text("message", problems).map(|message| message.value);
    map.finish("a validation rule", &RULE_KEYS, problems);
    Some(RuleEntry {
        name: name?,
        expression: expression?,
        message,
    })
}
