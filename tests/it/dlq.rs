//! The dead-letter queue as an operator meets it: real processes, `mfoundry send`, a
//! downstream that refuses everything, then `mfoundry dlq --offline list/show/replay/purge` on
//! the stopped gateway's data directory, and a restart that delivers what was replayed.

use crate::common;

use std::time::Duration;

use common::{Server, run_binary};

const DOWNSTREAM: &str = "validation:\n  rules:\n    - name: refuse-everything\n      expression: msh.msg_type == \"NONE\"\n";

fn upstream(port: &str) -> String {
    format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: 127.0.0.1\n    port: {port}\n  - name: files\n    type: file\n    directory: ./out\n    filename: \"{{id}}-{{control_id}}.hl7\"\n    filter: msh.msg_type == \"NONE\"\n"
    )
}

fn files(directory: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory.join("out"))
        .map(|entries| {
            entries
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                // A file being written has a temporary dot-name until it is complete.
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refused_messages_can_be_listed_replayed_elsewhere_and_purged() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("down.yaml"), DOWNSTREAM).expect("write");
    let downstream = Server::start(dir, "down.yaml", "down-data", &[]);
    let port = downstream.addr.rsplit(':').next().expect("port").to_owned();
    std::fs::write(dir.join("up.yaml"), upstream(&port)).expect("write");
    let gateway = Server::start(dir, "up.yaml", "up-data", &[("STORE_JOURNAL", "true")]);
    let examples = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/messages/adt-a04-batch.hl7"
    );
    let (code, stdout, stderr) = run_binary(dir, &["send", "--addr", &gateway.addr, examples], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    // While the gateway runs, the data file is locked and the command says so.
    let data = dir.join("up-data");
    let data = data.to_str().expect("utf-8 path");
    gateway.wait_for_log("moved to the dead-letter queue", 2);
    let journal = dir.join("up-data").join("mfoundry.redb-journal");
    assert!(
        journal.exists(),
        "the gateway commits through its journal when STORE_JOURNAL is on"
    );
    let (code, _, stderr) = run_binary(dir, &["dlq", "--offline", "--data-dir", data, "list"], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("in use by a running mfoundry; leave out --offline"),
        "{stderr}"
    );
    gateway.stop();
    let (code, listed, _) = run_binary(
        dir,
        &["dlq", "--offline", "--data-dir", data, "--json", "list"],
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        journal.exists(),
        "an offline tool opens the directory through its journal and leaves it"
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let entries = listed.as_array().expect("array");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["connector"], "downstream");
    assert_eq!(entries[0]["control_id"], "B-1");
    assert_eq!(entries[0]["attempts"], 1);
    assert!(
        entries[0]["reason"]
            .as_str()
            .expect("reason")
            .starts_with("the peer answered AR")
    );
    let first = entries[0]["seq"].to_string();
    let second = entries[1]["seq"].to_string();

    // `--offline` after the subcommand too; the same JSON as the admin API gives.
    let (code, shown, stderr) = run_binary(
        dir,
        &[
            "dlq",
            "show",
            "downstream",
            &first,
            "--offline",
            "--data-dir",
            data,
            "--json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["entry"]["control_id"], "B-1");
    assert_eq!(shown["message"]["connectors"][0]["status"], "DEAD_LETTERED");
    let answer = shown["entry"]["downstream"]
        .as_str()
        .expect("the peer's answer");
    assert!(
        answer.starts_with("MSA|AR|B-1") && answer.contains("refuse-everything"),
        "the dead letter keeps the peer's own MSA and ERR text: {answer}"
    );

    // A mix of known and unknown seqs: the known one is replayed, the unknown named (exit 1).
    let (code, out, stderr) = run_binary(
        dir,
        &[
            "dlq",
            "--offline",
            "--data-dir",
            data,
            "replay",
            "downstream",
            "999",
            &first,
            "--to",
            "files",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}{stderr}");
    assert!(
        out.contains("replayed 1 entries") && out.contains("not in the dead-letter queue: [999]"),
        "{out}"
    );
    let (code, _, stderr) = run_binary(
        dir,
        &[
            "dlq",
            "--offline",
            "--data-dir",
            data,
            "replay",
            "nowhere",
            "--all",
        ],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no connector named \"nowhere\""),
        "{stderr}"
    );
    let (code, out, _) = run_binary(
        dir,
        &[
            "dlq",
            "--offline",
            "--data-dir",
            data,
            "purge",
            "downstream",
            &second,
            "--yes",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = run_binary(dir, &["dlq", "--offline", "--data-dir", data, "list"], &[]);
    assert!(out.contains("no dead-letter entries"), "{out}");

    // Every offline change is in the audit trail, which reads offline too.
    let (code, out, stderr) = run_binary(
        dir,
        &["audit", "--offline", "list", "--data-dir", data, "--json"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    let records: serde_json::Value = serde_json::from_str(&out).expect("json");
    let admin: Vec<String> = records
        .as_array()
        .expect("records")
        .iter()
        .filter(|record| record["kind"] == "admin")
        .filter_map(|record| record["action"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(admin, vec!["dlq.replay", "dlq.purge"], "{out}");
    assert!(
        out.contains("cli-offline") && out.contains("replayed 1, missing 1"),
        "{out}"
    );

    // Restarted, the gateway delivers the replayed message to the file connector.
    let gateway = Server::start(dir, "up.yaml", "up-data", &[]);
    wait_for("the replayed file", || files(dir).len() == 1);
    let delivered = files(dir);
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].ends_with("-B-1.hl7"), "{delivered:?}");
    gateway.stop();
    downstream.stop();
}
