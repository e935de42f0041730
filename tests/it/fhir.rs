//! `format: fhir` and `format: json` through the real app: every example message (and test
//! fixture) of the three families becomes a FHIR R4 Bundle that an independent validator accepts (the
//! `fhir.resources` package, 6.x, which models R4); other types are dead-lettered with the
//! reason; the JSON shape carries the decoded tree next to its first keys.
//!
//! The validator runs in the Python of `MFOUNDRY_FHIR_PYTHON` (`.ci/run` makes a virtual
//! environment with it); without one the validation is skipped with a reason, unless
//! `MFOUNDRY_REQUIRE_SERVICES=1`.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Checks each Bundle file named on the command line: the R4 model (structure, required
/// elements, no unknown ones), then the formats of every date and dateTime, which the
/// model alone lets through. Prints one line per problem; exits 1 when there is any.
const VALIDATOR: &str = r#"
import json, re, sys
from fhir.resources.bundle import Bundle
DATE = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")
DATETIME = re.compile(r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)))?)?)?$")
problems = 0
def walk(path, value, where):
    global problems
    if isinstance(value, dict):
        for key, inner in value.items():
            walk(path, inner, where + "." + key)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            walk(path, inner, where + "[%d]" % index)
    elif isinstance(value, str):
        key = where.rsplit(".", 1)[-1]
        if key in ("birthDate", "expirationDate") and not DATE.match(value):
            problems += 1; print(path, where, "is not a FHIR date:", value)
        if (key.endswith("DateTime") or key in ("start", "end")) and not DATETIME.match(value):
            problems += 1; print(path, where, "is not a FHIR dateTime:", value)
for path in sys.argv[1:]:
    document = json.load(open(path))
    try:
        Bundle.parse_obj(document)
    except Exception as error:
        problems += 1; print(path, "does not validate:", error)
    walk(path, document, "Bundle")
print("checked", len(sys.argv) - 1, "bundles")
sys.exit(1 if problems else 0)
"#;

/// The Python that has `fhir.resources`, or `None` (after saying why) to skip.
fn validator_python() -> Option<PathBuf> {
    let python = std::env::var_os("MFOUNDRY_FHIR_PYTHON").map(PathBuf::from);
    let usable = python.as_ref().is_some_and(|python| {
        std::process::Command::new(python)
            .args(["-c", "import fhir.resources.bundle"])
            .output()
            .is_ok_and(|output| output.status.success())
    });
    if usable {
        return python;
    }
    let reason =
        "no Python with fhir.resources (6.x) in MFOUNDRY_FHIR_PYTHON to validate FHIR Bundles";
    assert!(
        std::env::var("MFOUNDRY_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "{reason}"
    );
    eprintln!("SKIPPED: {reason}");
    None
}

/// Every example message, and the fixtures of cases the examples do not show (an A03 with
/// identifiers that have systems).
fn example_messages() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = ["examples/messages", "tests/fixtures/fhir"]
        .iter()
        .flat_map(|directory| {
            std::fs::read_dir(root.join(directory))
                .expect("message directory")
                .map(|entry| entry.expect("entry").path())
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            mfoundry::hl7::split_messages(&std::fs::read(path).expect("read")).expect("splits")
        })
        .collect()
}

fn json_files(directory: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").path())
                .filter(|path| {
                    path.extension()
                        .is_some_and(|extension| extension == "json")
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn every_example_of_the_three_families_becomes_a_valid_bundle() {
    let out = tempfile::tempdir().expect("tempdir");
    let (fhir, json) = (out.path().join("fhir"), out.path().join("json"));
    let yaml = format!(
        "connectors:\n  - name: fhir\n    type: file\n    format: fhir\n    directory: {}\n    filename: \"{{id}}.json\"\n  - name: json\n    type: file\n    format: json\n    filter: msh.control_id == \"LAB00042\"\n    directory: {}\n    filename: \"{{id}}.json\"\n",
        fhir.display(),
        json.display()
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    let messages = example_messages();
    let families = |message: &Vec<u8>| {
        let parsed =
            mfoundry::hl7::Message::parse(bytes::Bytes::from(message.clone())).expect("parses");
        let kind = String::from_utf8_lossy(parsed.header_component(9, 1)).into_owned();
        let trigger = String::from_utf8_lossy(parsed.header_component(9, 2)).into_owned();
        matches!(
            (kind.as_str(), trigger.as_str()),
            ("ADT", "A01" | "A03" | "A04" | "A08") | ("ORU", "R01") | ("VXU", "V04")
        )
    };
    let convertible = messages.iter().filter(|message| families(message)).count();
    let others = messages.len() - convertible;
    assert!(convertible >= 6 && others >= 1, "{convertible} {others}");
    let mut stream = common::connect(&app).await;
    for message in &messages {
        common::write(&mut stream, &common::framed(message)).await;
        let reply = common::expect_ack(&mut stream).await;
        assert!(
            matches!(common::field(&reply, "MSA", 1).as_str(), "AA" | "CA"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dead = || {
        app.worker("fhir")
            .stats()
            .dead_lettered
            .load(std::sync::atomic::Ordering::SeqCst) as usize
    };
    while json_files(&fhir).len() < convertible || dead() < others {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(json_files(&fhir).len(), convertible);
    assert_eq!(dead(), others, "the other types go to the DLQ");

    // Every Bundle is a transaction whose references resolve inside it.
    for path in json_files(&fhir) {
        let bundle: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(bundle["type"], "transaction");
        let entries = bundle["entry"].as_array().expect("entries");
        let urls: Vec<&str> = entries
            .iter()
            .map(|entry| entry["fullUrl"].as_str().expect("fullUrl"))
            .collect();
        let text = bundle.to_string();
        for reference in text.split("\"reference\":\"").skip(1) {
            let target = reference.split('"').next().unwrap_or_default();
            assert!(
                urls.contains(&target),
                "{target} is not in {}",
                path.display()
            );
        }
    }

    // The JSON shape keeps its first keys and adds the decoded tree.
    let files = json_files(&json);
    assert_eq!(files.len(), 1);
    let shape: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files[0]).expect("read")).expect("json");
    for key in [
        "id",
        "entry",
        "received_at",
        "connector",
        "listener",
        "header",
        "segments",
        "hl7",
    ] {
        assert!(shape.get(key).is_some(), "{key} kept: {shape}");
    }
    let pid = shape["decoded"]
        .as_array()
        .expect("decoded")
        .iter()
        .find(|segment| segment["name"] == "PID")
        .expect("PID");
    assert_eq!(pid["fields"][2][0][0][0], "555444", "PID-3.1");
    assert_eq!(pid["fields"][4][0][1][0], "JANE", "PID-5.2");
    assert_eq!(pid["fields"][1], serde_json::json!([]), "an empty field");
    app.shutdown(Duration::from_secs(5)).await;

    let Some(python) = validator_python() else {
        return;
    };
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(VALIDATOR)
        .args(json_files(&fhir))
        .output()
        .expect("validator runs");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn mllp_takes_only_hl7_and_format_names_are_checked() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        directory.path().join("gateway.yaml"),
        "connectors:\n  - name: emr\n    type: mllp\n    host: 127.0.0.1\n    port: 2576\n    format: fhir\n  - name: files\n    type: file\n    directory: out\n    format: xml\n",
    )
    .expect("yaml");
    let (code, stdout, stderr) = common::run_binary(
        directory.path(),
        &["check", "--config", "gateway.yaml"],
        &[],
    );
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(
        stderr.contains("gateway.yaml:6:13") && stderr.contains("MLLP carries HL7 v2"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`format` is \"xml\"; use hl7, json, fhir"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_message_without_msh_18_is_decoded_with_the_default_character_set() {
    let out = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "connectors:\n  - name: fhir\n    type: file\n    format: fhir\n    directory: {}\n    filename: \"{{id}}.json\"\n",
        out.path().display()
    );
    let app = common::start_with_yaml(Some(&yaml), &[("DEFAULT_CHARACTER_SET", "8859/1")]).await;
    let mut message = b"MSH|^~\\&|ADT1|HOSP|HUB|HUB|20261122110000+0100||ADT^A08^ADT_A01|L1|P|2.5\rPID|1||4711^^^HOSP^MR||M".to_vec();
    message.push(0xFC); // ü in Latin-1
    message.extend_from_slice(b"ller^J\rPV1|1|O\r");
    let mut stream = common::connect(&app).await;
    common::write(&mut stream, &common::framed(&message)).await;
    let reply = common::expect_ack(&mut stream).await;
    assert_eq!(common::field(&reply, "MSA", 1), "AA");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while json_files(out.path()).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&json_files(out.path())[0]).expect("utf-8 JSON");
    assert!(text.contains("\"family\":\"Müller\""), "{text}");
    app.shutdown(Duration::from_secs(5)).await;
}
