//! Configuration as users meet it: `mfoundry check`, `mfoundry config schema`, and the
//! defaults < file < environment layering.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mfoundry::config::Config;

const BINARY: &str = env!("CARGO_BIN_EXE_mfoundry");

/// Secrets the examples refer to with `${...}`, as a deployment would provide them.
const EXAMPLE_ENV: &[(&str, &str)] = &[("LAB_ARCHIVE_DSN", "host=127.0.0.1 user=postgres")];

fn check(file: &Path) -> Output {
    Command::new(BINARY)
        .arg("check")
        .arg("--config")
        .arg(file)
        .env_clear()
        .envs(EXAMPLE_ENV.iter().copied())
        .output()
        .expect("check runs")
}

fn yaml_examples() -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("examples")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

#[test]
fn every_example_configuration_passes_check() {
    for file in yaml_examples() {
        let output = check(&file);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}: {}{}",
            file.display(),
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with("ok: "), "{stdout}");
    }
}

#[test]
fn an_unset_env_reference_names_the_variable_and_the_connector() {
    let stderr = failing_check(
        "connectors:\n  - name: lab-archive\n    type: postgres\n    dsn: ${LAB_SECRET_DSN}\n  - name: emr\n    type: mllp\n    host: ${EMR_HOST:-127.0.0.1}\n    port: ${EMR_PORT:-2576}\n",
    );
    assert!(
        stderr.contains("connector \"lab-archive\" (type postgres)")
            && stderr.contains("${LAB_SECRET_DSN}, which is not set"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("emr"),
        "defaults cover unset variables: {stderr}"
    );
}

#[test]
fn connector_keys_are_checked_per_type() {
    let message = failing_check(
        "connectors:\n  - name: a\n    type: file\n    port: 2575\n  - name: b\n    type: mllp\n    host: x\n  - name: c\n    type: file\n    directory: out\n    filename: \"../{id}\"\n  - name: d\n    type: mllp\n    host: h\n    port: 1\n    on_reject: ignore\n    retry:\n      initial_delay: 10m\n      max_delay: 1m\n",
    );
    for expected in [
        "connector \"a\" (type file): `port` does not apply to type file",
        "connector \"a\" (type file): `directory` is required",
        "connector \"b\" (type mllp): `port` is required",
        "connector \"c\" (type file): `filename`:",
        "connector \"d\" (type mllp): `on_reject` is \"ignore\"",
        "`retry.initial_delay` is longer than `retry.max_delay`",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in:\n{message}"
        );
    }
}

fn write(directory: &Path, text: &str) -> PathBuf {
    let path = directory.join("bad.yaml");
    std::fs::write(&path, text).expect("write");
    path
}

fn failing_check(text: &str) -> String {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = write(directory.path(), text);
    let output = check(&path);
    assert_eq!(output.status.code(), Some(64), "{text}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn an_unknown_key_names_the_key_file_and_line() {
    let stderr = failing_check(
        "connectors:\n  - name: ehr\n    type: http\n    url: https://x\n    filtr: msh.msg_type == \"ADT\"\n",
    );
    assert!(stderr.contains("unknown key `filtr`"), "{stderr}");
    assert!(stderr.contains("did you mean `filter`?"), "{stderr}");
    assert!(stderr.contains("bad.yaml:5:5"), "{stderr}");
}

/// A file with a mistake in every section is reported whole in one run, each problem at its
/// place, not just the first one the parser meets.
#[test]
fn every_structural_problem_is_reported_in_one_run() {
    let stderr = failing_check(
        r#"listen_adr: ":2575"
connectors:
  - name: ehr
    type: http
    url: https://x
    filtr: msh.msg_type == "ADT"
    retry: {initial_delay: 1s, multipler: 2}
  - name: lab
    type: mllp
    host: [a, b]
    port: 70000
    directory: /tmp
  - type: file
    directory: out
  - name: x
    type: kafka
tls_senders:
  - identity: lab
validation:
  rules:
    - name: r1
      expresion: pid.id != ""
"#,
    );
    for expected in [
        "bad.yaml:1:1: unknown key `listen_adr` in the configuration file; did you mean `listen_addr`?",
        "bad.yaml:6:5: connector \"ehr\" (type http): unknown key `filtr`",
        "bad.yaml:7:32: connector \"ehr\" (type http): unknown key `retry.multipler` in `retry`; did you mean `retry.multiplier`?",
        "bad.yaml:10:11: connector \"lab\" (type mllp): `host` must be text, found a list",
        "bad.yaml:11:11: connector \"lab\" (type mllp): `port` must be a number from 1 to 65535",
        "bad.yaml:12:5: connector \"lab\" (type mllp): `directory` does not apply to type mllp",
        "bad.yaml:13:5: this connector has no `name`",
        "bad.yaml:16:11: `type` is \"kafka\"; use one of mllp, http, file, postgres, nats",
        "tls_senders identity \"lab\": list at least one value in sending_applications",
        "bad.yaml:21:7: this validation rule has no `expression`",
        "bad.yaml:22:7: unknown key `expresion` in a validation rule; did you mean `expression`?",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let stderr = failing_check(
        r#"idle_timeout: 30
connectors:
  - name: ehr
    type: http
    filter: msh.msg_typ == "ADT" && patient.id != ""
  - name: ehr
    type: file
validation:
  rules:
    - name: r1
      expression: pid.id ==
"#,
    );
    for expected in [
        "bad.yaml:1:15: idle_timeout=\"30\": missing unit",
        "bad.yaml:6:11: connector name \"ehr\": another connector has this name",
        "bad.yaml:11:19: validation rule \"r1\": does not compile",
        "(expression line 1, column 10)",
        "bad.yaml:5:13: filter of connector \"ehr\": msh has no field \"msg_typ\"",
        "unknown variable \"patient\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn serve_refuses_to_start_on_the_same_problems() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = write(
        directory.path(),
        "validation:\n  rules:\n    - name: r\n      expression: nope.x\n",
    );
    let output = Command::new(BINARY)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("DATA_DIR", directory.path().join("data"))
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown variable \"nope\""));
    assert!(
        !directory.path().join("data").exists(),
        "nothing was opened or bound"
    );
}

#[test]
fn a_missing_explicit_file_is_an_error_but_no_file_is_fine() {
    let output = check(Path::new("/nonexistent/mfoundry.yaml"));
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot read the configuration file /nonexistent/mfoundry.yaml")
    );

    let directory = tempfile::tempdir().expect("tempdir");
    let output = Command::new(BINARY)
        .arg("check")
        .current_dir(directory.path())
        .env_clear()
        .output()
        .expect("runs");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("ok: no configuration file"));
}

#[test]
fn environment_overrides_file_overrides_defaults() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("mfoundry.yaml");
    std::fs::write(
        &path,
        "idle_timeout: 45s\nmax_connections: 10\nwrite_timeout: 2s\n",
    )
    .expect("write");
    let env = [
        ("IDLE_TIMEOUT", "90s"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("MFOUNDRY_PORT", "tcp://10.0.0.1:2575"),
    ];
    let config = Config::load_with(Some(&path), &|name| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| (*value).to_owned())
    })
    .expect("loads");
    let listener = &config.settings.listener;
    assert_eq!(
        listener.idle_timeout,
        Some(Duration::from_secs(90)),
        "env wins"
    );
    assert_eq!(listener.max_connections, Some(10), "file wins over default");
    assert_eq!(listener.write_timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        listener.frame_timeout,
        Some(Duration::from_secs(60)),
        "default"
    );

    // CONFIG_FILE names the file when --config is absent.
    let config = Config::load_with(None, &|name| {
        (name == "CONFIG_FILE").then(|| path.display().to_string())
    })
    .expect("loads");
    assert_eq!(config.settings.listener.max_connections, Some(10));
}

#[test]
fn the_go_gateway_shape_loads_unchanged() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/go-gateway.yaml");
    let config = Config::load_with(Some(&path), &|_| None).expect("loads");
    let names: Vec<&str> = config.connectors.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["ehr-ingest", "lab-archive"]);
    assert_eq!(config.rules.len(), 1);
    assert_eq!(
        config.rules[0].message.as_deref(),
        Some("patient id is required")
    );
    config.compile_rules().expect("compiles");
}

#[test]
fn config_schema_is_draft_07_json_describing_the_file() {
    let output = Command::new(BINARY)
        .args(["config", "schema"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["additionalProperties"], false);
    for key in [
        "connectors",
        "validation",
        "listen_addr",
        "data_dir",
        "dedup_window",
    ] {
        assert!(schema["properties"][key].is_object(), "no {key} in schema");
    }
    let connector = &schema["definitions"]["ConnectorFile"];
    assert_eq!(connector["additionalProperties"], false);
    assert!(
        connector["required"]
            .as_array()
            .expect("required")
            .contains(&"type".into())
    );
}

#[test]
fn a_malformed_admin_tokens_file_fails_check_and_serve_naming_the_line() {
    let directory = tempfile::tempdir().expect("tempdir");
    let tokens = directory.path().join("tokens");
    std::fs::write(&tokens, "# ops\nalice operator\n").expect("tokens");
    for command in ["check", "serve"] {
        let output = Command::new(BINARY)
            .arg(command)
            .env_clear()
            .current_dir(directory.path())
            .env("ADMIN_TOKENS_FILE", &tokens)
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(64), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("tokens:2: expected `<id> <role> <sha256 hex>`"),
            "{command}: {stderr}"
        );
        assert!(
            !directory.path().join("data").exists(),
            "{command}: nothing was opened"
        );
    }
}

#[test]
fn a_malformed_allowed_peers_entry_is_named() {
    let output = Command::new(BINARY)
        .arg("check")
        .env_clear()
        .env("ALLOWED_PEERS", "10.0.0.0/8, 10.0.0.0/33")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ALLOWED_PEERS")
            && stderr.contains("\"10.0.0.0/33\": the prefix length must be 0 to 32"),
        "{stderr}"
    );
}
