//! Documentation that must follow the code: the settings table and the README commands.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

#[test]
fn every_environment_variable_is_documented_with_its_default() {
    let documented = common::configuration_table("\n## Environment variables\n");
    let in_code: BTreeMap<String, String> = mfoundry::config::ENV_VARS
        .iter()
        .map(|var| (var.name.to_owned(), var.default.to_owned()))
        .collect();
    assert_eq!(documented, in_code);
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = read("README.md");
    assert!(readme.contains("```sh\ncargo test\n```"));
    assert!(readme.contains("```sh\ncargo run --release\n```"));
    let ci = read(".ci/run");
    assert!(ci.lines().any(|line| line.trim().starts_with("cargo test")));
}

/// The commands of each `sh` block of the README, continuation lines joined.
fn readme_commands() -> Vec<Vec<String>> {
    let readme = read("README.md");
    readme
        .split("```sh\n")
        .skip(1)
        .map(|rest| {
            let block = rest.split("```").next().unwrap_or_default();
            block
                .replace("\\\n", " ")
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// Some walkthroughs start servers side by side (the peers of "Deliver messages"), each in
/// its own terminal: they run exactly as written only when no two take the same listen or
/// admin address (both have defaults), else the later one stops with "address in use".
#[test]
fn servers_the_readme_starts_together_do_not_share_an_address() {
    for block in readme_commands() {
        let servers: Vec<&String> = block
            .iter()
            .filter(|command| {
                command.trim_end().ends_with("cargo run --release") || command.contains("-- serve")
            })
            .collect();
        if servers.len() < 2 {
            continue;
        }
        for setting in ["LISTEN_ADDR=", "ADMIN_ADDR="] {
            let on_default = servers
                .iter()
                .filter(|command| !command.contains(setting))
                .count();
            assert!(
                on_default <= 1,
                "{on_default} servers started together in the README take the default {setting}: {servers:#?}"
            );
        }
    }
}

#[test]
fn every_example_message_file_splits_and_parses() {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages");
    let mut count = 0;
    for entry in std::fs::read_dir(directory).expect("examples/messages") {
        let path = entry.expect("entry").path();
        let contents = std::fs::read(&path).expect("read");
        let messages = mfoundry::hl7::split_messages(&contents)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        assert!(!messages.is_empty(), "{}", path.display());
        for message in messages {
            let parsed = mfoundry::hl7::Message::parse(bytes::Bytes::from(message))
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            assert!(!parsed.header_field(10).is_empty(), "{}", path.display());
            count += 1;
        }
    }
    assert!(count >= 5);
}

#[test]
fn every_metric_is_listed_in_the_operations_guide() {
    let guide = read("docs/operations.md");
    for name in mfoundry::telemetry::metrics::ALL {
        assert!(
            guide.contains(&format!("| `{name}` |")),
            "{name} is missing from docs/operations.md"
        );
    }
}
