//! Every CEL expression the project ships loads and evaluates: the rules, filters, `when`s
//! and transform values of `examples/` and `deploy/`, of the YAML blocks of the README and
//! `docs/`, and the CEL written inline in the rules chapter of `docs/configuration.md`.
//! Where the docs show a mistake on purpose, it is refused, with the message the docs print.
//! None of them fails to evaluate on the example messages, on a master-file message (no PID,
//! PV1 or OBX) or on a message of MSH alone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use mfoundry::hl7::{Charset, Message};
use mfoundry::rules::types::Expect;
use mfoundry::rules::{Compiler, ExpressionSource, Origin, RuleProblem};
use mfoundry::yaml::{Node, Value};

/// One expression as shipped.
#[derive(Debug)]
struct Shipped {
    /// `file:line` where it is written.
    place: String,
    /// The CEL text.
    text: String,
    /// What it belongs to, as the configuration names it (`validation rule "r1"`).
    subject: String,
    /// What it must give.
    expect: Expect,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Files under `directory` (recursively) ending in one of `extensions`, sorted.
fn files(directory: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .extension()
                .is_some_and(|ext| extensions.iter().any(|wanted| ext == *wanted))
            {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Whether YAML text holds a key mfoundry reads as CEL.
fn mentions_cel(text: &str) -> bool {
    text.lines().any(|line| {
        let key = line.trim_start().trim_start_matches("- ");
        ["filter:", "expression:", "when:"]
            .iter()
            .any(|wanted| key.starts_with(wanted))
    })
}

/// The expressions of a YAML document: `filter` (of a connector), `expression` (of a
/// validation rule), `when` and the `value` of a `set` step (of a transform). A text value
/// that is itself a configuration (Helm's `config: |`) is read too.
fn collect(node: &Node, place: &str, found: &mut Vec<Shipped>) {
    match &node.value {
        Value::Map(entries) => {
            let text_of = |key: &str| {
                entries.iter().find_map(|(name, value)| {
                    (name.scalar_text().as_deref() == Some(key))
                        .then(|| value.scalar_text())
                        .flatten()
                })
            };
            let name = text_of("name").unwrap_or_default();
            let is_step = text_of("set").is_some();
            for (key, value) in entries {
                let key = key.scalar_text().unwrap_or_default();
                let shipped = match (key.as_str(), &value.value) {
                    ("filter", Value::Text(text)) => {
                        Some((text, format!("filter of connector {name:?}"), Expect::Bool))
                    }
                    ("expression", Value::Text(text)) => {
                        Some((text, format!("validation rule {name:?}"), Expect::Bool))
                    }
                    ("when", Value::Text(text)) => {
                        Some((text, "transform step `when`".to_owned(), Expect::Bool))
                    }
                    ("value", Value::Text(text)) if is_step => {
                        Some((text, "transform step value".to_owned(), Expect::String))
                    }
                    _ => None,
                };
                match shipped {
                    Some((text, subject, expect)) => found.push(Shipped {
                        place: format!("{place}:{}", value.at.line),
                        text: text.clone(),
                        subject,
                        expect,
                    }),
                    None => collect(value, place, found),
                }
            }
        }
        Value::List(items) => {
            for item in items {
                collect(item, place, found);
            }
        }
        Value::Text(text) if text.contains('\n') && mentions_cel(text) => {
            let embedded = mfoundry::yaml::parse(text, place)
                .unwrap_or_else(|error| panic!("{place}: embedded configuration: {error}"));
            collect(&embedded, &format!("{place} (embedded)"), found);
        }
        _ => {}
    }
}

/// The expressions of a YAML text (one or more `---` documents) that mentions CEL.
fn collect_text(text: &str, place: &str, line_offset: u64, found: &mut Vec<Shipped>) {
    if !mentions_cel(text) {
        return;
    }
    for document in text.split("\n---\n") {
        if !mentions_cel(document) {
            continue;
        }
        let node = mfoundry::yaml::parse(document, place)
            .unwrap_or_else(|error| panic!("{place}: {error}"));
        let mut here = Vec::new();
        collect(&node, place, &mut here);
        for mut shipped in here {
            if line_offset > 0
                && let Some((file, line)) = shipped.place.rsplit_once(':')
                && let Ok(line) = line.parse::<u64>()
            {
                shipped.place = format!("{file}:{}", line + line_offset);
            }
            found.push(shipped);
        }
    }
}

/// The fenced ```yaml blocks of a Markdown file, with the line each starts after.
fn yaml_blocks(markdown: &str) -> Vec<(u64, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(u64, String)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let number = index as u64 + 1;
        match &mut current {
            None if line.trim_start().starts_with("```yaml") => {
                current = Some((number, String::new()));
            }
            Some((_, text)) if line.trim_start().starts_with("```") => {
                let text = std::mem::take(text);
                let start = current.take().map(|(start, _)| start).unwrap_or_default();
                blocks.push((start, text));
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

fn markdown_files() -> Vec<PathBuf> {
    let mut markdown = vec![root().join("README.md")];
    markdown.extend(files(&root().join("docs"), &["md"]));
    markdown
}

/// Every expression in examples/, deploy/ and the YAML blocks of the docs.
fn shipped_expressions() -> (Vec<Shipped>, Vec<Shipped>) {
    let mut configurations = Vec::new();
    for directory in ["examples", "deploy"] {
        for file in files(&root().join(directory), &["yaml", "yml"]) {
            collect_text(&read(&file), &relative(&file), 0, &mut configurations);
        }
    }
    let mut documented = Vec::new();
    for file in markdown_files() {
        for (start, block) in yaml_blocks(&read(&file)) {
            collect_text(&block, &relative(&file), start, &mut documented);
        }
    }
    (configurations, documented)
}

/// Compile one expression on its own: its problems, and its warnings.
fn compile(shipped: &Shipped) -> Result<Vec<String>, Vec<RuleProblem>> {
    let mut compiler = Compiler::new();
    let source = ExpressionSource {
        text: shipped.text.clone(),
        origin: Origin::default(),
    };
    compiler.compile(&source, &shipped.subject, shipped.expect);
    let program = compiler.finish(Duration::from_secs(1))?;
    Ok(program.warnings().iter().map(ToString::to_string).collect())
}

/// Messages that lack segments, and every example message.
fn messages() -> Vec<(String, Message)> {
    let mut messages = vec![
        (
            "an MFN^M02 (no PID, PV1, OBX)".to_owned(),
            std::fs::read(root().join("tests/fixtures/go-gateway/mfn-m02-master-file/message.hl7"))
                .expect("fixture"),
        ),
        (
            "MSH alone".to_owned(),
            b"MSH|^~\\&|A|B|C|D|20260101120000||ADT^A01|X1|P|2.5.1\r".to_vec(),
        ),
    ];
    for file in files(&root().join("examples/messages"), &["hl7"]) {
        let contents = std::fs::read(&file).expect("message file");
        for message in mfoundry::hl7::split_messages(&contents).expect("splits") {
            messages.push((relative(&file), message));
        }
    }
    messages
        .into_iter()
        .map(|(name, bytes)| {
            let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\r");
            let text = text.replace('\n', "\r");
            let parsed = Message::parse(Bytes::from(text.into_bytes()))
                .unwrap_or_else(|error| panic!("{name}: {error}"));
            (name, parsed)
        })
        .collect()
}

/// Evaluate `shipped` on every message: `Err` naming the first message it fails on.
fn evaluates_everywhere(shipped: &Shipped, messages: &[(String, Message)]) -> Result<(), String> {
    let mut compiler = Compiler::new();
    let source = ExpressionSource {
        text: shipped.text.clone(),
        origin: Origin::default(),
    };
    let expression = compiler
        .compile(&source, &shipped.subject, shipped.expect)
        .ok_or("does not compile")?;
    let program = compiler
        .finish(Duration::from_secs(1))
        .map_err(|problems| format!("{problems:?}"))?;
    for (name, message) in messages {
        let charset = message.charset(Charset::UTF_8).charset();
        let scope = program.scope(message, charset, "mllp");
        let result = match shipped.expect {
            Expect::Bool => scope.bool(&expression).map(|_| ()),
            Expect::String => scope.string(&expression).map(|_| ()),
        };
        result.map_err(|detail| format!("on {name}: {detail}"))?;
    }
    Ok(())
}

#[test]
fn every_expression_in_examples_and_deploy_loads_without_warnings_and_evaluates() {
    let (configurations, _) = shipped_expressions();
    assert!(configurations.len() >= 20, "found only {configurations:#?}");
    for file in [
        "examples/go-gateway.yaml",
        "examples/transform.yaml",
        "deploy/base/mfoundry.yaml",
        "deploy/helm/mfoundry/values.yaml (embedded)",
    ] {
        assert!(
            configurations
                .iter()
                .any(|shipped| shipped.place.starts_with(&format!("{file}:"))),
            "no expression found in {file}"
        );
    }
    let messages = messages();
    for shipped in &configurations {
        match compile(shipped) {
            Ok(warnings) => assert!(
                warnings.is_empty(),
                "{}: {}: {warnings:#?}",
                shipped.place,
                shipped.text
            ),
            Err(problems) => panic!("{}: {}: {problems:#?}", shipped.place, shipped.text),
        }
        if let Err(error) = evaluates_everywhere(shipped, &messages) {
            panic!(
                "{}: {} fails to evaluate {error}",
                shipped.place, shipped.text
            );
        }
    }
}

#[test]
fn every_expression_in_the_docs_yaml_loads_or_is_refused_as_the_docs_print() {
    let (_, documented) = shipped_expressions();
    assert!(documented.len() >= 10, "found only {documented:#?}");
    let messages = messages();
    let mut refused = 0;
    for shipped in &documented {
        let file = shipped.place.split(':').next().unwrap_or_default();
        match compile(shipped) {
            Ok(warnings) => {
                assert!(warnings.is_empty(), "{}: {warnings:#?}", shipped.place);
                if let Err(error) = evaluates_everywhere(shipped, &messages) {
                    panic!(
                        "{}: {} fails to evaluate {error}",
                        shipped.place, shipped.text
                    );
                }
            }
            // A mistake shown on purpose: the docs print what `check` says, word for word.
            Err(problems) => {
                let text = read(&root().join(file));
                for problem in problems {
                    let printed = problem.to_string();
                    let printed = printed.trim_start_matches("<config>: ");
                    assert!(
                        text.contains(printed),
                        "{}: {} is refused, and {file} does not print why:\n{printed}",
                        shipped.place,
                        shipped.text
                    );
                    refused += 1;
                }
            }
        }
    }
    // `filter: msh.msg_typ == "ADT" && patient.id != ""` (two problems) and
    // `expression: pid.id ==` in the "Strictness" example.
    assert_eq!(refused, 3, "the docs' deliberate mistakes");
}

/// CEL written inline in the rules chapter, refused on purpose, and what for.
const INLINE_MISTAKES: &[(&str, &str)] = &[
    ("msh.msg_typ", "msh has no field \"msg_typ\""),
    ("pid.id == 5", "compares values of different types"),
    ("pid.dob > 19000101", "compares values of different types"),
    ("field(\"PID-x\")", "field path \"PID-x\" is invalid"),
    ("segments(\"OBXX\")", "three letters or digits"),
    ("obx_list.all(a, obx_list.exists(b, a == b))", "steps"),
    (
        "obx_list.exists(o, o.id == \"GLU\")",
        "an entry of obx_list has no field \"id\"",
    ),
    ("obx_list.map(o, o.value + \"!\")", "`+` inside"),
];

/// The `code spans` of the "Rules (CEL)" chapter that are CEL over mfoundry's variables.
fn inline_cel() -> Vec<String> {
    let guide = read(&root().join("docs/configuration.md"));
    let start = guide.find("\n## Rules (CEL)").expect("rules chapter");
    let chapter = &guide[start + 1..];
    let chapter = &chapter[..chapter.find("\n## ").unwrap_or(chapter.len())];
    let uses_ours = |span: &str| {
        ["msh", "pid", "pv1", "obx", "inbound", "field(", "segments("]
            .iter()
            .any(|name| span.contains(name))
    };
    chapter
        .split('`')
        .skip(1)
        .step_by(2)
        // Prose names a function as `field()`; `…` stands for what is left out.
        .filter(|span| uses_ours(span) && !span.contains('…') && !span.ends_with("()"))
        .filter(|span| cel::Env::stdlib().parser().parse(span).is_ok())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_cel_written_inline_in_the_rules_chapter_loads_unless_shown_as_a_mistake() {
    let spans = inline_cel();
    assert!(spans.len() >= 15, "{spans:#?}");
    for span in &spans {
        let shipped = Shipped {
            place: "docs/configuration.md".to_owned(),
            text: span.clone(),
            subject: "inline".to_owned(),
            expect: Expect::Bool,
        };
        // A fragment (`pid.?id.orValue("")`, `field("PID-3[2].1")`) need not be a whole
        // rule: only what it gives is not checked.
        let problems: Vec<String> = match compile(&shipped) {
            Ok(_) => Vec::new(),
            Err(problems) => problems
                .iter()
                .map(ToString::to_string)
                .filter(|problem| !problem.contains("the expression gives"))
                .collect(),
        };
        match INLINE_MISTAKES.iter().find(|(mistake, _)| mistake == span) {
            Some((_, why)) => assert!(
                problems.iter().any(|problem| problem.contains(why)),
                "{span}: {problems:#?}"
            ),
            None => assert!(
                problems.is_empty(),
                "docs/configuration.md shows {span} as CEL, which does not load: {problems:#?}"
            ),
        }
    }
    for (mistake, _) in INLINE_MISTAKES {
        assert!(
            spans.iter().any(|span| span == mistake),
            "{mistake} is no longer in the rules chapter: remove it from INLINE_MISTAKES"
        );
    }
}

/// The rules chapter quotes what `check` says of `pid.dob > 19000101`: word for word.
#[test]
fn the_rules_chapter_quotes_the_type_problem_as_check_prints_it() {
    let shipped = Shipped {
        place: "docs/configuration.md".to_owned(),
        text: "pid.dob > 19000101".to_owned(),
        subject: "validation rule \"born-after-1900\"".to_owned(),
        expect: Expect::Bool,
    };
    let problems = compile(&shipped).expect_err("refused");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let printed = problems[0].to_string();
    let printed = printed.trim_start_matches("<config>: ");
    let guide = read(&root().join("docs/configuration.md"));
    assert!(
        guide.contains(&format!("`{printed}`")),
        "docs/configuration.md does not quote:\n{printed}"
    );
}
