//! The shape of the code, checked: which module may use which, and no cycles between the
//! top-level modules of `src/`. A failure names the file and line and the rule it breaks;
//! `docs/ARCHITECTURE.md` describes the map these rules keep.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A use of another top-level module: `crate::<module>` in code (comments are skipped, so a
/// doc link is not a dependency).
#[derive(Debug)]
struct Use {
    /// The file, relative to `src/`.
    file: String,
    line: usize,
    /// The top-level module the file belongs to (`main` for `main.rs`).
    from: String,
    /// The top-level module it uses.
    to: String,
    /// The rest of the path after `crate::`.
    path: String,
}

fn source_files(directory: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(directory)
        .expect("src is readable")
        .map(|entry| entry.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module of a file under `src/` (`outbox` for `outbox/journal/mod.rs`).
fn module_of(relative: &str) -> String {
    let first = relative.split('/').next().unwrap_or(relative);
    first.trim_end_matches(".rs").to_owned()
}

fn uses() -> Vec<Use> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut out = Vec::new();
    for path in files {
        let relative = path
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let from = module_of(&relative);
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (index, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            // `mfoundry::` is how main.rs names the library.
            for prefix in ["crate::", "mfoundry::"] {
                let mut rest = code;
                while let Some(at) = rest.find(prefix) {
                    let after = &rest[at + prefix.len()..];
                    let path: String = after
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    let to = path.split("::").next().unwrap_or("").to_owned();
                    if !to.is_empty() && to != from {
                        out.push(Use {
                            file: relative.clone(),
                            line: index + 1,
                            from: from.clone(),
                            to,
                            path: path.clone(),
                        });
                    }
                    rest = after;
                }
            }
        }
    }
    out
}

fn violations(rule: &str, found: Vec<&Use>) -> Vec<String> {
    found
        .into_iter()
        .map(|used| {
            format!(
                "src/{}:{}: uses crate::{}: {rule}",
                used.file, used.line, used.path
            )
        })
        .collect()
}

#[test]
fn modules_use_only_what_they_may() {
    let all = uses();
    assert!(
        all.iter().any(|used| used.to == "config"),
        "the scan finds uses at all (app uses config)"
    );
    let mut problems = Vec::new();
    // Configuration (loading, layering, the environment) is read by the application's edges
    // only; everything else gets typed settings handed to it.
    problems.extend(violations(
        "only app, cli and main use config; take the typed settings as a parameter",
        all.iter()
            .filter(|used| used.to == "config")
            .filter(|used| !matches!(used.from.as_str(), "app" | "cli" | "main" | "lib"))
            .collect(),
    ));
    // The store and the MLLP framing know nothing of HL7.
    problems.extend(violations(
        "the outbox and the MLLP codec know nothing of HL7",
        all.iter()
            .filter(|used| used.to == "hl7")
            .filter(|used| used.from == "outbox" || used.file == "mllp/codec.rs")
            .collect(),
    ));
    // Leaves: units of settings, shutdown signals, the YAML nodes outputs read their own
    // settings from.
    problems.extend(violations(
        "units, shutdown and yaml are leaves: they use nothing of mfoundry",
        all.iter()
            .filter(|used| matches!(used.from.as_str(), "units" | "shutdown" | "yaml"))
            .collect(),
    ));
    // Nothing below the application reaches up to it.
    problems.extend(violations(
        "app, cli and main are the top: nothing else uses them",
        all.iter()
            .filter(|used| matches!(used.to.as_str(), "app" | "cli"))
            .filter(|used| !matches!(used.from.as_str(), "app" | "cli" | "main" | "lib"))
            .collect(),
    ));
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// A cycle in `graph` through `start`, if any (modules in order, `start` first and last).
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_owned(), vec![start.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let all = uses();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut example: BTreeMap<(String, String), String> = BTreeMap::new();
    for used in &all {
        if used.from == "main" || used.from == "lib" {
            continue;
        }
        graph
            .entry(used.from.clone())
            .or_default()
            .insert(used.to.clone());
        example
            .entry((used.from.clone(), used.to.clone()))
            .or_insert_with(|| {
                format!("src/{}:{} uses crate::{}", used.file, used.line, used.path)
            });
    }
    for start in graph.keys() {
        if let Some(cycle) = cycle_from(&graph, start) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|pair| example[&(pair[0].clone(), pair[1].clone())].clone())
                .collect();
            panic!(
                "modules in a cycle: {}\n{}",
                cycle.join(" -> "),
                steps.join("\n")
            );
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(from, to)| (from.to_owned(), to.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        cycle_from(&graph, "a"),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(cycle_from(&graph, "d"), None);
}
