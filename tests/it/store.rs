//! The store as an operator meets it, through the real binary: a data directory written by
//! the last build of format 1 is converted and keeps every message; damage is found and
//! never delivered; a refused store names its way out and `store recover --accept-loss`
//! takes it; `store verify` reports.

use crate::common;

use std::path::Path;

use common::{Server, run_binary};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1");

/// The fixtures' connectors, delivering into `out`.
fn config(directory: &Path) -> String {
    let out = directory.join("out");
    format!(
        "connectors:\n  - name: archive\n    type: file\n    directory: {}\n  - name: broken\n    type: mllp\n    host: 127.0.0.1\n    port: 1\n    retry: {{initial_delay: 10ms, max_attempts: 1}}\n",
        out.display()
    )
}

/// Rebuild a journal file from its non-zero blocks (`MFSEGS01 ‖ size ‖ (offset ‖ len ‖
/// bytes)*`, the fixture's form: the journal itself is 64 MiB of mostly zeros).
fn unpack_segments(packed: &[u8], into: &Path) {
    assert_eq!(&packed[..8], b"MFSEGS01");
    let size = u64::from_le_bytes(packed[8..16].try_into().expect("8 bytes"));
    let mut file = vec![0u8; size as usize];
    let mut rest = &packed[16..];
    while !rest.is_empty() {
        let offset = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
        let len = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")) as usize;
        file[offset..offset + len].copy_from_slice(&rest[12..12 + len]);
        rest = &rest[12 + len..];
    }
    std::fs::write(into, file).expect("journal written");
}

fn files_in(directory: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in walk(directory) {
        out.push(std::fs::read(entry).expect("read"));
    }
    out
}

fn walk(directory: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(directory) else {
        return out;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if !path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            // The file output's temporary files (`.<name>.<id>.tmp`) are not delivered yet.
            out.push(path);
        }
    }
    out
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A data directory of format 1 (cleanly stopped, a large body in `bodies`, a dead letter)
/// and one that crashed with commits in its journal of format 1: both are converted at the
/// first start and every message is there and delivered, the large body byte for byte.
#[test]
fn a_store_of_format_1_is_converted_and_keeps_every_message() {
    let big = {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/format1/big.hl7"
        ))
        .expect("big message");
        text.into_bytes()
    };
    for (fixture, journal) in [("clean", false), ("crashed", true)] {
        let directory = tempfile::tempdir().expect("tempdir");
        let dir = directory.path();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::copy(
            Path::new(FIXTURES).join(format!("{fixture}.redb")),
            data.join("mfoundry.redb"),
        )
        .expect("fixture");
        if journal {
            let packed = std::fs::read(Path::new(FIXTURES).join("crashed.redb-journal.segments"))
                .expect("segments");
            unpack_segments(&packed, &data.join("mfoundry.redb-journal"));
        }
        std::fs::write(dir.join("gw.yaml"), config(dir)).expect("config");
        let switch = if journal { "true" } else { "false" };
        let server = Server::start(dir, "gw.yaml", "data", &[("STORE_JOURNAL", switch)]);
        let out = dir.join("out");
        wait_until(
            "the archive connector delivers the fixture's messages",
            || walk(&out).len() >= 5,
        );
        let delivered = files_in(&out);
        assert_eq!(delivered.len(), 5, "{fixture}: every message, once");
        assert!(
            delivered.contains(&big),
            "{fixture}: the large body (stored apart in format 1) is delivered byte for byte"
        );
        server.stop();
        let converted = std::fs::read(data.join("mfoundry.redb")).expect("data file");
        assert_eq!(
            &converted[..8],
            b"MFDATA02",
            "{fixture}: the data file has a header of its own"
        );
        let data_dir = data.to_str().expect("utf-8");
        let (code, stdout, stderr) = run_binary(
            dir,
            &["store", "verify", "--data-dir", data_dir, "--json"],
            &[],
        );
        assert_eq!(code, 0, "{fixture}: {stdout}{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).expect("json");
        assert_eq!(report["intact"], true);
        assert_eq!(report["records"]["messages"], 5);
        assert_eq!(
            report["unchecked"], 5,
            "{fixture}: records of format 1 are read as they are, without a checksum"
        );
    }
}

/// Write five messages through a gateway and stop it cleanly.
fn store_with_messages(dir: &Path, envs: &[(&str, &str)]) {
    let yaml = format!(
        "connectors:\n  - name: archive\n    type: file\n    directory: {}\n    paused: true\n",
        dir.join("out").display()
    );
    std::fs::write(dir.join("gw.yaml"), yaml).expect("config");
    let server = Server::start(dir, "gw.yaml", "data", envs);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/messages/adt-a04-batch.hl7"
    );
    let oru = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/messages/oru-r01-lf.hl7"
    );
    let (code, stdout, stderr) =
        run_binary(dir, &["send", "--addr", &server.addr, example, oru], &[]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    server.stop();
}

/// Flip one bit inside the stored copy of the body that contains `marker`.
fn flip_inside(data_file: &Path, marker: &[u8]) {
    let mut bytes = std::fs::read(data_file).expect("read");
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker)
        .expect("marker stored");
    bytes[at + marker.len() + 2] ^= 0x04;
    std::fs::write(data_file, bytes).expect("write");
}

/// A bit flipped in a stopped store: `store verify` names the message and exits 1; the
/// gateway starts, the admin API answers with an error naming the message instead of the
/// altered body, and the worker moves it to the dead-letter queue instead of delivering it.
#[test]
fn damage_is_found_named_and_never_delivered() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    store_with_messages(dir, &[]);
    let data = dir.join("data");
    flip_inside(&data.join("mfoundry.redb"), b"LAB00042");
    let data_dir = data.to_str().expect("utf-8");
    let (code, stdout, stderr) = run_binary(dir, &["store", "verify", "--data-dir", data_dir], &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("damaged records: 1"), "{stdout}");
    // The report names the record by table and id: "messages <id>: stored record is damaged".
    let line = stdout
        .lines()
        .find(|line| line.contains(": stored record is damaged"))
        .expect("the damaged record is named");
    let id = line
        .trim()
        .strip_prefix("messages ")
        .and_then(|rest| rest.split(':').next())
        .expect("a message id")
        .to_owned();

    let yaml = format!(
        "connectors:\n  - name: archive\n    type: file\n    directory: {}\n",
        dir.join("out").display()
    );
    std::fs::write(dir.join("gw.yaml"), yaml).expect("config");
    let server = Server::start(
        dir,
        "gw.yaml",
        "data",
        &[("STORE_VERIFY_INTERVAL", "300ms")],
    );
    server.wait_for_log("the stored message is damaged", 1);
    // The background verification names the damaged record too.
    server.wait_for_log("store verification: a stored record is damaged", 1);
    let out = dir.join("out");
    wait_until("the two intact messages are delivered", || {
        walk(&out).len() >= 2
    });
    assert_eq!(walk(&out).len(), 2, "the damaged message is not delivered");
    for body in files_in(&out) {
        assert!(
            !body.windows(8).any(|window| window == b"LAB00042"),
            "no altered copy of the damaged message left"
        );
    }
    let admin = server.admin_addr.clone().expect("admin API");
    let envs = [("ADMIN_ADDR", admin.as_str()), ("DATA_DIR", data_dir)];
    let (code, stdout, stderr) = run_binary(dir, &["messages", "show", &id], &envs);
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains(&format!("message {id}")) && stderr.contains("damaged"),
        "{stderr}"
    );
    server.stop();
}

/// A journal removed after a crash: the gateway refuses to start and names both ways out;
/// `store recover --accept-loss` opens it, records that in the audit trail, and the
/// gateway then starts with what the data file holds.
#[test]
fn a_refused_store_names_its_way_out_and_recover_takes_it() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(
        dir.join("gw.yaml"),
        "connectors:\n  - name: archive\n    type: file\n    directory: out\n    paused: true\n",
    )
    .expect("config");
    let mut server = Server::start(dir, "gw.yaml", "data", &[("STORE_JOURNAL", "true")]);
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/messages/adt-a01.hl7");
    let (code, _, stderr) = run_binary(dir, &["send", "--addr", &server.addr, example], &[]);
    assert_eq!(code, 0, "{stderr}");
    server.child.kill().expect("kill");
    server.child.wait().expect("killed");
    let data = dir.join("data");
    std::fs::remove_file(data.join("mfoundry.redb-journal")).expect("journal removed");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mfoundry"))
        .args(["serve", "--config", "gw.yaml"])
        .env_clear()
        .current_dir(dir)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "off")
        .env("DATA_DIR", &data)
        .env("STORE_JOURNAL", "true")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Put the journal back") && stderr.contains("store recover --accept-loss"),
        "{stderr}"
    );
    let data_dir = data.to_str().expect("utf-8");
    let (code, stdout, stderr) = run_binary(dir, &["store", "verify", "--data-dir", data_dir], &[]);
    assert_eq!(code, 2, "verify reports the refusal: {stdout}{stderr}");
    assert!(stdout.contains("Put the journal back"), "{stdout}");

    let (code, stdout, stderr) = run_binary(
        dir,
        &["store", "recover", "--accept-loss", "--data-dir", data_dir],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("opened accepting loss"), "{stdout}");
    assert!(stdout.contains("recorded in the audit trail"), "{stdout}");

    let server = Server::start(dir, "gw.yaml", "data", &[("STORE_JOURNAL", "true")]);
    let admin = server.admin_addr.clone().expect("admin API");
    let envs = [("ADMIN_ADDR", admin.as_str()), ("DATA_DIR", data_dir)];
    let (code, stdout, stderr) = run_binary(dir, &["audit", "list", "--json"], &envs);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("store.recover") && stdout.contains("journal records replayed"),
        "the recovery is in the audit trail: {stdout}"
    );
    server.stop();
}
