//! Reading the YAML configuration file: settings, `tls_senders`, connectors and validation
//! rules (ADR 0008).
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
use crate::yaml::{self, Map, Node, Problems, Spanned};

/// What the file says, read; problems are collected by [`read`].
#[derive(Clone, Debug, Default)]
pub struct FileConfig {
    /// Settings written in the file, by lower-case key (the text as written).
    pub scalars: BTreeMap<String, Spanned<String>>,
    /// `tls_senders`, when written.
    pub tls_senders: Option<Vec<TlsSender>>,
    /// Connectors in file order (those without a readable name or type are left out; their
    /// problems are reported).
    pub connectors: Vec<ConnectorEntry>,
    /// Validation rules in file order.
    pub rules: Vec<RuleEntry>,
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
const SECTIONS: [&str; 3] = ["tls_senders", "connectors", "validation"];
/// The keys every connector has; the rest belong to its delivery settings and its output.
pub const CONNECTOR_KEYS: [&str; 3] = ["name", "type", "filter"];
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
    // The other keys are read by the connector's delivery settings and its output, which
    // report the ones nobody reads.
    Some(ConnectorEntry {
        name: name?,
        kind: kind?,
        filter,
        node: node.clone(),
    })
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
