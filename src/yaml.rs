//! The configuration file as a tree of YAML nodes, each with its place, and a reader that
//! collects every problem instead of stopping at the first (ADR 0008).
//!
//! Parsing has two steps. [`parse`] turns the text into a [`Node`] tree: only what makes the
//! text unreadable stops there (not YAML, a duplicate key, a document over the size
//! budget), with one error naming the line. Then each part of mfoundry reads the keys it
//! owns through a [`Map`]: a missing key, a value of the wrong kind, a value out of range and
//! a key nobody reads each become a [`Problem`] with its place, and reading goes on, so one
//! `mfoundry check` names everything wrong in the file.
//!
//! A leaf: it imports nothing of mfoundry, so outputs can read their own settings from it
//! without knowing how the configuration is loaded.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

/// Where a node was written: 1-based line and column (0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct At {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl fmt::Display for At {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.line, self.column)
    }
}

/// A value with the place it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub at: At,
}

/// One YAML node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// What it holds.
    pub value: Value,
    /// Where it was written.
    pub at: At,
}

/// What a node holds, as YAML's core schema resolves it (`30` is a number, `"30"` text).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A whole number.
    Int(i128),
    /// A number with a fraction.
    Float(f64),
    /// Text.
    Text(String),
    /// A sequence.
    List(Vec<Node>),
    /// A mapping, in file order.
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// What kind of value this is, for problems ("found a list").
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Bool(_) => "true or false",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Text(_) => "text",
            Value::List(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// What it holds without where it was written, in one line (`Debug` of the values):
    /// two nodes are the same configuration when these are equal, wherever they stand in
    /// their files. `skip`: keys of a mapping left out (at this level only).
    pub fn without_places(&self, skip: &[&str]) -> String {
        match &self.value {
            Value::List(items) => {
                let items: Vec<String> =
                    items.iter().map(|item| item.without_places(&[])).collect();
                format!("[{}]", items.join(", "))
            }
            Value::Map(entries) => {
                let entries: Vec<String> = entries
                    .iter()
                    .filter(|(key, _)| {
                        !key.scalar_text()
                            .is_some_and(|key| skip.contains(&key.as_str()))
                    })
                    .map(|(key, value)| {
                        format!("{}: {}", key.without_places(&[]), value.without_places(&[]))
                    })
                    .collect();
                format!("{{{}}}", entries.join(", "))
            }
            scalar => format!("{scalar:?}"),
        }
    }

    /// A scalar as text (numbers and booleans as written in canonical form); `None` for
    /// lists, mappings and null.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::Text(text) => Some(text.clone()),
            Value::Int(number) => Some(number.to_string()),
            Value::Float(number) => Some(number.to_string()),
            Value::Bool(value) => Some(value.to_string()),
            Value::Null | Value::List(_) | Value::Map(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<Value>::deserialize(deserializer)?;
        Ok(Self {
            value: spanned.value,
            at: At {
                line: spanned.referenced.line(),
                column: spanned.referenced.column(),
            },
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;

        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Value;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any YAML value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<Value, D::Error> {
                Value::deserialize(inner)
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Value, E> {
                Ok(Value::Bool(value))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Value, E> {
                Ok(Value::Int(value.into()))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Value, E> {
                Ok(Value::Int(value.into()))
            }
            fn visit_i128<E: de::Error>(self, value: i128) -> Result<Value, E> {
                Ok(Value::Int(value))
            }
            fn visit_u128<E: de::Error>(self, value: u128) -> Result<Value, E> {
                i128::try_from(value)
                    .map(Value::Int)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
                Ok(Value::Float(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Value, E> {
                Ok(Value::Text(value.to_owned()))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Value, E> {
                Ok(Value::Text(value))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Value::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Node>()? {
                    let value = map.next_value::<Node>()?;
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
        }

        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Read `text` into a node tree. Errors are what makes the text unreadable (not YAML, a
/// duplicate key, over the budget), rendered with `source_name`, the line and the text around
/// it. An empty document is an empty mapping.
pub fn parse(text: &str, source_name: &str) -> Result<Node, String> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! { max_depth: 32, max_nodes: 100_000, max_total_scalar_bytes: 8 << 20 },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let parsed =
        serde_saphyr::from_str_with_options::<Option<Node>>(text, options).map_err(|error| {
            error.render_with_options(serde_saphyr::render_options! {
                source_name: Some(source_name),
            })
        })?;
    Ok(parsed.unwrap_or(Node {
        value: Value::Map(Vec::new()),
        at: At { line: 1, column: 1 },
    }))
}

/// One problem found while reading: where, and what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The place of the key or value at fault.
    pub at: At,
    /// What is wrong, naming the key, and what to write instead.
    pub message: String,
}

/// Every problem found so far, in the order found.
pub type Problems = Vec<Problem>;

/// Reads the keys of one mapping, recording every problem with its place. Each key read is
/// marked; [`Map::finish`] reports the keys nobody read, naming the keys that are known.
#[derive(Debug)]
pub struct Map<'a> {
    at: At,
    entries: &'a [(Node, Node)],
    used: Vec<bool>,
    /// Dotted path of this mapping for problems (`retry.`), empty at the top.
    prefix: String,
}

impl<'a> Map<'a> {
    /// Read `node` as a mapping. `null` reads as an empty one; anything else is a problem
    /// (naming `what`) and `None`.
    pub fn new(node: &'a Node, what: &str, problems: &mut Problems) -> Option<Self> {
        match &node.value {
            Value::Map(entries) => Some(Self {
                at: node.at,
                entries,
                used: vec![false; entries.len()],
                prefix: String::new(),
            }),
            Value::Null => Some(Self {
                at: node.at,
                entries: &[],
                used: Vec::new(),
                prefix: String::new(),
            }),
            _ => {
                problems.push(Problem {
                    at: node.at,
                    message: format!("{what} must be a mapping of keys, found {}", node.kind()),
                });
                None
            }
        }
    }

    /// Where the mapping starts.
    pub fn at(&self) -> At {
        self.at
    }

    /// How this mapping's keys are named in problems: `retry.initial_delay`.
    pub fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The node under `key`, marked as read; `None` when absent.
    pub fn node(&mut self, key: &str) -> Option<&'a Node> {
        let entries = self.entries;
        let index = entries
            .iter()
            .position(|(name, _)| matches!(&name.value, Value::Text(text) if text == key))?;
        self.used[index] = true;
        let node = &entries[index].1;
        (node.value != Value::Null).then_some(node)
    }

    /// Where `key`'s value is written, or where the mapping starts when it is not.
    pub fn place(&self, key: &str) -> At {
        self.entries
            .iter()
            .find(|(name, _)| matches!(&name.value, Value::Text(text) if text == key))
            .map_or(self.at, |(_, value)| value.at)
    }

    /// Whether `key` is written (with a value other than null). Does not mark it read.
    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(name, value)| {
            matches!(&name.value, Value::Text(text) if text == key) && value.value != Value::Null
        })
    }

    /// The value under `key` read by `read`; a node of another kind is a problem saying it
    /// must be `expected`.
    fn of_kind<T>(
        &mut self,
        key: &str,
        expected: &str,
        problems: &mut Problems,
        read: impl FnOnce(&'a Node) -> Option<T>,
    ) -> Option<T> {
        let node = self.node(key)?;
        let value = read(node);
        if value.is_none() {
            problems.push(self.wrong_kind(key, node, expected));
        }
        value
    }

    /// A scalar as text: text as written, numbers and booleans in canonical form (so
    /// `port: 6661` and `port: "6661"` read alike).
    pub fn text(&mut self, key: &str, problems: &mut Problems) -> Option<Spanned<String>> {
        self.of_kind(key, "text", problems, |node| {
            node.scalar_text()
                .map(|value| Spanned { value, at: node.at })
        })
    }

    /// `true` or `false`.
    pub fn bool(&mut self, key: &str, problems: &mut Problems) -> Option<bool> {
        self.of_kind(key, "true or false", problems, |node| match node.value {
            Value::Bool(value) => Some(value),
            _ => None,
        })
    }

    /// A number (whole or with a fraction).
    pub fn number(&mut self, key: &str, problems: &mut Problems) -> Option<f64> {
        self.of_kind(key, "a number", problems, |node| match node.value {
            Value::Float(value) => Some(value),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(value) => Some(value as f64),
            _ => None,
        })
    }

    /// A whole number that fits `T` (`u32`, `u64` …).
    pub fn whole<T: TryFrom<i128>>(&mut self, key: &str, problems: &mut Problems) -> Option<T> {
        let node = self.node(key)?;
        match node.value {
            Value::Int(value) => match T::try_from(value) {
                Ok(value) => Some(value),
                Err(_) => {
                    problems.push(Problem {
                        at: node.at,
                        message: format!("`{}` is {value}, out of range", self.name(key)),
                    });
                    None
                }
            },
            _ => {
                problems.push(self.wrong_kind(key, node, "a whole number"));
                None
            }
        }
    }

    /// A nested mapping, whose keys are named `key.inner` in problems.
    pub fn map(&mut self, key: &str, problems: &mut Problems) -> Option<Map<'a>> {
        let node = self.node(key)?;
        let name = self.name(key);
        let mut map = Map::new(node, &format!("`{name}`"), problems)?;
        map.prefix = format!("{name}.");
        Some(map)
    }

    /// A sequence; a single scalar is a problem.
    pub fn list(&mut self, key: &str, problems: &mut Problems) -> Option<&'a [Node]> {
        self.of_kind(key, "a list", problems, |node| match &node.value {
            Value::List(items) => Some(items.as_slice()),
            _ => None,
        })
    }

    /// A sequence of scalars, each as text.
    pub fn text_list(&mut self, key: &str, problems: &mut Problems) -> Option<Vec<String>> {
        let items = self.list(key, problems)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item.scalar_text() {
                Some(text) => out.push(text),
                None => problems.push(Problem {
                    at: item.at,
                    message: format!(
                        "each item of `{}` must be text, found {}",
                        self.name(key),
                        item.kind()
                    ),
                }),
            }
        }
        Some(out)
    }

    /// A mapping of text to text (`headers`).
    pub fn text_map(
        &mut self,
        key: &str,
        problems: &mut Problems,
    ) -> Option<BTreeMap<String, String>> {
        let node = self.node(key)?;
        let name = self.name(key);
        let Value::Map(entries) = &node.value else {
            problems.push(self.wrong_kind(key, node, "a mapping"));
            return None;
        };
        let mut out = BTreeMap::new();
        for (inner, value) in entries {
            match (inner.scalar_text(), value.scalar_text()) {
                (Some(inner), Some(value)) => {
                    out.insert(inner, value);
                }
                _ => problems.push(Problem {
                    at: value.at,
                    message: format!("`{name}` maps text to text; found {}", value.kind()),
                }),
            }
        }
        Some(out)
    }

    /// Report every key nobody read: `known` lists the keys this mapping takes (for the
    /// message), `what` names the mapping (`a file connector`).
    pub fn finish(self, what: &str, known: &[&str], problems: &mut Problems) {
        for ((name, _), used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let key = name.scalar_text().unwrap_or_default();
            let close = known
                .iter()
                .find(|candidate| similar(candidate, &key))
                .map(|candidate| format!("did you mean `{}`? ", self.name(candidate)))
                .unwrap_or_default();
            problems.push(Problem {
                at: name.at,
                message: format!(
                    "unknown key `{}` in {what}; {close}keys here: {}",
                    self.name(&key),
                    known.join(", ")
                ),
            });
        }
    }

    /// The keys written that nobody has read yet, with their places.
    pub fn unread(&self) -> Vec<Spanned<String>> {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(_, used)| !**used)
            .map(|((name, _), _)| Spanned {
                value: name.scalar_text().unwrap_or_default(),
                at: name.at,
            })
            .collect()
    }

    /// Mark `key` read without reading it (the caller reported it another way).
    pub fn skip(&mut self, key: &str) {
        let _ = self.node(key);
    }

    fn wrong_kind(&self, key: &str, node: &Node, expected: &str) -> Problem {
        Problem {
            at: node.at,
            message: format!(
                "`{}` must be {expected}, found {}",
                self.name(key),
                node.kind()
            ),
        }
    }
}

/// A likely typo: one edit apart, or the same letters without `_`.
fn similar(known: &str, written: &str) -> bool {
    if known.replace('_', "") == written.replace(['_', '-'], "") {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (known.chars().collect(), written.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    // Levenshtein distance of at most 1.
    let (mut i, mut j, mut edits) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        edits += 1;
        if edits > 1 {
            return false;
        }
        match a.len().cmp(&b.len()) {
            std::cmp::Ordering::Greater => i += 1,
            std::cmp::Ordering::Less => j += 1,
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    edits + (a.len() - i) + (b.len() - j) <= 1
}

/// Replace `${NAME}` with the environment variable's value, `${NAME:-default}` with the value
/// or, when it is unset or empty, the default (`$$` is a literal `$`).
pub fn expand_env(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "`${` without a closing `}`".to_owned())?;
            let (name, default) = match after[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&after[..end], None),
            };
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("`${{{name}}}` is not an environment variable name"));
            }
            let value = match (lookup(name).filter(|value| !value.is_empty()), default) {
                (Some(value), _) => value,
                (None, Some(default)) => default.to_owned(),
                (None, None) => lookup(name).ok_or_else(|| {
                    format!("refers to ${{{name}}}, which is not set in the environment")
                })?,
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_keep_their_places_and_kinds() {
        let node = parse(
            "a: 1\nb:\n  - x\n  - \"2\"\nc: {d: true, e: 1.5}\nf: ~\n",
            "t.yaml",
        )
        .expect("parses");
        let Value::Map(entries) = &node.value else {
            panic!("a mapping")
        };
        let keys: Vec<(String, At)> = entries
            .iter()
            .map(|(key, _)| (key.scalar_text().unwrap_or_default(), key.at))
            .collect();
        assert_eq!(keys[0], ("a".to_owned(), At { line: 1, column: 1 }));
        assert_eq!(keys[1], ("b".to_owned(), At { line: 2, column: 1 }));
        assert_eq!(entries[0].1.value, Value::Int(1));
        assert_eq!(entries[0].1.at, At { line: 1, column: 4 });
        let Value::List(items) = &entries[1].1.value else {
            panic!("a list")
        };
        assert_eq!(items[1].value, Value::Text("2".to_owned()));
        assert_eq!(items[1].at.line, 4);
        assert_eq!(entries[3].1.value, Value::Null);
    }

    #[test]
    fn every_problem_is_collected_with_its_place() {
        let node = parse(
            "port: [1]\nflag: maybe\ncount: -1\nretry: {initial_delay: 1s, multipler: 2}\nfiltr: x\n",
            "t.yaml",
        )
        .expect("parses");
        let mut problems = Vec::new();
        let mut map = Map::new(&node, "the file", &mut problems).expect("a mapping");
        assert_eq!(map.text("port", &mut problems), None);
        assert_eq!(map.bool("flag", &mut problems), None);
        assert_eq!(map.whole::<u32>("count", &mut problems), None);
        let mut retry = map.map("retry", &mut problems).expect("a mapping");
        assert_eq!(
            retry.text("initial_delay", &mut problems).map(|t| t.value),
            Some("1s".to_owned())
        );
        retry.finish("`retry`", &["initial_delay", "multiplier"], &mut problems);
        map.finish(
            "the file",
            &["port", "flag", "count", "retry", "filter"],
            &mut problems,
        );
        let messages: Vec<String> = problems
            .iter()
            .map(|problem| format!("{}: {}", problem.at, problem.message))
            .collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(messages[0].starts_with("1:7: `port` must be text, found a list"));
        assert!(messages[1].starts_with("2:7: `flag` must be true or false, found text"));
        assert!(messages[2].starts_with("3:8: `count` is -1, out of range"));
        assert!(
            messages[3].contains("unknown key `retry.multipler`")
                && messages[3].contains("did you mean `retry.multiplier`?"),
            "{}",
            messages[3]
        );
        assert!(
            messages[4].starts_with("5:1: unknown key `filtr` in the file; did you mean `filter`?"),
            "{}",
            messages[4]
        );
    }

    #[test]
    fn unreadable_text_is_one_error_with_its_line() {
        let error = parse("a: 1\na: 2\n", "t.yaml").expect_err("duplicate key");
        assert!(error.contains("t.yaml"), "{error}");
        let error = parse("a: [1\n", "t.yaml").expect_err("not YAML");
        assert!(error.contains("t.yaml"), "{error}");
        assert_eq!(
            parse("", "t.yaml").expect("empty").value,
            Value::Map(Vec::new())
        );
    }

    #[test]
    fn typos_are_one_edit_away() {
        assert!(similar("filter", "filtr"));
        assert!(similar("filter", "filters"));
        assert!(similar("max_delay", "maxdelay"));
        assert!(similar("on_reject", "on-reject"));
        assert!(!similar("filter", "format"));
    }

    #[test]
    fn env_references_expand_and_missing_ones_are_named() {
        let env = |name: &str| match name {
            "DSN" => Some("host=db user=x".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_env("a ${DSN} b", &env).as_deref(),
            Ok("a host=db user=x b")
        );
        assert_eq!(expand_env("$${DSN} $5", &env).as_deref(), Ok("${DSN} $5"));
        assert_eq!(expand_env("${EMPTY}x", &env).as_deref(), Ok("x"));
        let missing = expand_env("${NOPE}", &env).expect_err("unset");
        assert!(
            missing.contains("${NOPE}") && missing.contains("not set"),
            "{missing}"
        );
        assert!(expand_env("${BAD NAME}", &env).is_err());
        assert_eq!(expand_env("${NOPE:-a b}", &env).as_deref(), Ok("a b"));
        assert_eq!(expand_env("${EMPTY:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(
            expand_env("${DSN:-x}", &env).as_deref(),
            Ok("host=db user=x")
        );
        assert!(expand_env("${OPEN", &env).is_err());
    }
}
