//! Encryption at rest (ADR 0011), through the real binary: a store written with
//! `ENCRYPTION_KEY_FILE` holds no patient text in any file of `DATA_DIR` (bodies, large
//! bodies, transformed copies, dead letters, audit), deliveries see the plain message, the
//! store refuses to open without its key or with a wrong one, and keys rotate with
//! `ENCRYPTION_OLD_KEY_FILES` and `mfoundry store rekey`, the audit chain intact throughout.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Server, run_binary};

const CANARY: &[u8] = b"PHICANARY";

fn message(control_id: &str, padding: usize) -> String {
    format!(
        "MSH|^~\\&|LAB|NORTH|EHR|NORTH|20261205100000||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r\
         PID|1||PHICANARYMRN^^^NORTH^MR||PHICANARYFAMILY^ANNA||19700101|F\r\
         NTE|1||{}\r",
        "PHICANARYNOTE ".repeat(padding)
    )
}

fn config(dir: &Path) -> String {
    format!(
        "connectors:
  - name: archive
    type: file
    directory: {}
    filename: \"{{entry}}.hl7\"
  - name: emr
    type: file
    directory: {}
    filename: \"{{entry}}.hl7\"
    transform:
      - copy: {{from: PID-5, to: PID-9}}
  - name: down
    type: mllp
    host: 127.0.0.1
    port: 1
    retry:
      initial_delay: 10ms
      max_attempts: 1
",
        dir.join("out").display(),
        dir.join("emr").display()
    )
}

fn write_key(path: &Path, byte: u8) {
    // Raw bytes for one key, base64 for the other: both forms are read.
    let raw = [byte; 32];
    if byte.is_multiple_of(2) {
        std::fs::write(path, raw).expect("key");
    } else {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::new();
        for chunk in raw.chunks(3) {
            let mut buffer = [0u8; 3];
            buffer[..chunk.len()].copy_from_slice(chunk);
            let n =
                (u32::from(buffer[0]) << 16) | (u32::from(buffer[1]) << 8) | u32::from(buffer[2]);
            for index in 0..=chunk.len() {
                text.push(alphabet[((n >> (18 - 6 * index)) & 63) as usize] as char);
            }
        }
        while !text.len().is_multiple_of(4) {
            text.push('=');
        }
        std::fs::write(path, format!("{text}\n")).expect("key");
    }
}

/// Files under `dir` whose bytes hold the canary.
fn files_with_canary(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_with_canary(&path));
        } else {
            let bytes = std::fs::read(&path).expect("read");
            if bytes.windows(CANARY.len()).any(|window| window == CANARY) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn send(server: &Server, dir: &Path, control_ids: &[(&str, usize)]) {
    for (control_id, padding) in control_ids {
        common::send_text(dir, &server.addr, &message(control_id, *padding));
    }
}

fn wait_for_files(dir: &Path, count: usize) {
    for _ in 0..300 {
        if std::fs::read_dir(dir)
            .map(|entries| entries.count())
            .unwrap_or(0)
            >= count
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} files did not appear in {}", count, dir.display());
}

fn store(dir: &Path, command: &[&str], envs: &[(&str, &str)]) -> (i32, String) {
    let data = dir.join("data").display().to_string();
    let mut args = vec!["store"];
    args.extend_from_slice(command);
    args.extend_from_slice(&["--data-dir", &data]);
    let (code, stdout, stderr) = run_binary(dir, &args, envs);
    (code, format!("{stdout}{stderr}"))
}

fn audit_verify(dir: &Path, envs: &[(&str, &str)]) -> (i32, String) {
    let data = dir.join("data").display().to_string();
    let (code, stdout, stderr) = run_binary(
        dir,
        &["audit", "verify", "--offline", "--data-dir", &data],
        envs,
    );
    (code, format!("{stdout}{stderr}"))
}

/// `serve` that must refuse to start: its exit code and what it printed.
fn refused_start(dir: &Path, envs: &[(&str, &str)]) -> (i32, String) {
    let data = dir.join("data").display().to_string();
    let mut all = vec![
        ("LISTEN_ADDR", "127.0.0.1:0"),
        ("ADMIN_ADDR", "off"),
        ("DATA_DIR", data.as_str()),
    ];
    all.extend_from_slice(envs);
    let (code, stdout, stderr) = run_binary(dir, &["serve", "--config", "gw.yaml"], &all);
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn an_encrypted_store_holds_no_patient_text_and_opens_only_with_its_key() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("gw.yaml"), config(dir)).expect("config");
    write_key(&dir.join("key-a"), 2);
    write_key(&dir.join("key-b"), 3);
    let key_a = [("ENCRYPTION_KEY_FILE", "key-a")];
    let server = Server::start(dir, "gw.yaml", "data", &key_a);
    // One small body (stored inline) and one of about 28 KiB (stored apart).
    send(&server, dir, &[("SMALL-1", 1), ("LARGE-1", 2000)]);
    wait_for_files(&dir.join("out"), 2);
    wait_for_files(&dir.join("emr"), 2);
    // Both dead-lettered at `down` (port 1 refuses).
    server.wait_for_log("moved to the dead-letter queue", 2);
    server.stop();

    // Deliveries saw the plain message, transformed copies too.
    for folder in ["out", "emr"] {
        for entry in std::fs::read_dir(dir.join(folder)).expect("out") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            assert!(bytes.windows(CANARY.len()).any(|window| window == CANARY));
        }
    }
    // Nothing plain in DATA_DIR: data file, journal, anything else.
    let data = dir.join("data");
    assert!(data.join("mfoundry.redb").exists());
    assert_eq!(files_with_canary(&data), Vec::<String>::new());

    // With its key, every record opens and the audit chain holds.
    let (code, output) = store(dir, &["verify"], &key_a);
    assert_eq!(code, 0, "{output}");
    let (code, output) = audit_verify(dir, &key_a);
    assert_eq!(code, 0, "{output}");

    // Without it, or with another key: refused at open, naming the setting.
    let (code, output) = refused_start(dir, &[]);
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("ENCRYPTION_KEY_FILE") && output.contains("encrypted"),
        "{output}"
    );
    let (code, output) = refused_start(dir, &[("ENCRYPTION_KEY_FILE", "key-b")]);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("wrong key"), "{output}");
    let (code, output) = store(dir, &["verify"], &[]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("ENCRYPTION_KEY_FILE"), "{output}");
    // A refusal writes nothing: the right key still opens it.
    let (code, output) = store(dir, &["verify"], &key_a);
    assert_eq!(code, 0, "{output}");
}

#[test]
fn keys_rotate_and_rekey_seals_plain_records_with_the_audit_chain_intact() {
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("gw.yaml"), config(dir)).expect("config");
    write_key(&dir.join("key-a"), 4);
    write_key(&dir.join("key-b"), 5);
    // A store that began plain: its files hold the patient text (the scan can see it).
    let server = Server::start(dir, "gw.yaml", "data", &[]);
    send(&server, dir, &[("PLAIN-1", 1), ("PLAIN-2", 2000)]);
    wait_for_files(&dir.join("out"), 2);
    server.stop();
    assert!(!files_with_canary(&dir.join("data")).is_empty());

    // A key is set: old records still read, new ones sealed; verify counts what is plain.
    let key_a = [("ENCRYPTION_KEY_FILE", "key-a")];
    let server = Server::start(dir, "gw.yaml", "data", &key_a);
    send(&server, dir, &[("SEALED-1", 1)]);
    wait_for_files(&dir.join("out"), 3);
    server.stop();
    let (code, output) = store(dir, &["verify", "--json"], &key_a);
    assert_eq!(code, 0, "{output}");
    let report: serde_json::Value = serde_json::from_str(&output).expect("json");
    assert!(
        report["unsealed"].as_u64().expect("unsealed") > 0,
        "{output}"
    );

    // Rekey with the same key: everything sealed, no plain page left in any file.
    let (code, output) = store(dir, &["rekey"], &key_a);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("rekeyed:"), "{output}");
    assert_eq!(files_with_canary(&dir.join("data")), Vec::<String>::new());
    let (code, output) = store(dir, &["verify", "--json"], &key_a);
    assert_eq!(code, 0, "{output}");
    let report: serde_json::Value = serde_json::from_str(&output).expect("json");
    assert_eq!(report["unsealed"], 0, "{output}");

    // Rotate to key B: with A as an old key the store opens and takes new messages.
    let rotated = [
        ("ENCRYPTION_KEY_FILE", "key-b"),
        ("ENCRYPTION_OLD_KEY_FILES", "key-a"),
    ];
    let server = Server::start(dir, "gw.yaml", "data", &rotated);
    send(&server, dir, &[("ROTATED-1", 1)]);
    wait_for_files(&dir.join("out"), 4);
    server.stop();
    // B alone is not enough yet (records sealed with A remain)...
    let key_b = [("ENCRYPTION_KEY_FILE", "key-b")];
    let (code, output) = refused_start(dir, &key_b);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("ENCRYPTION_OLD_KEY_FILES"), "{output}");
    // ...until a rekey rewrote them with B.
    let (code, output) = store(dir, &["rekey"], &rotated);
    assert_eq!(code, 0, "{output}");
    let (code, output) = store(dir, &["verify"], &key_b);
    assert_eq!(code, 0, "{output}");
    let (code, output) = audit_verify(dir, &key_b);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("intact"), "{output}");
    // A is retired: it no longer opens the store.
    let (code, output) = store(dir, &["verify"], &key_a);
    assert_eq!(code, 2, "{output}");
    assert_eq!(files_with_canary(&dir.join("data")), Vec::<String>::new());
    let server = Server::start(dir, "gw.yaml", "data", &key_b);
    // The rekey changed the index key: the patient index was built anew from the bodies.
    server.wait_for_log("the patient index is built", 1);
    send(&server, dir, &[("AFTER-1", 1)]);
    wait_for_files(&dir.join("out"), 5);
    let admin = server.admin_addr.clone().expect("admin API");
    let (code, stdout, stderr) = run_binary(
        dir,
        &[
            "messages",
            "search",
            "--patient-id",
            "phicanarymrn",
            "--admin-addr",
            &admin,
            "--data-dir",
            "data",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    for control_id in ["PLAIN-1", "PLAIN-2", "SEALED-1", "ROTATED-1", "AFTER-1"] {
        assert!(stdout.contains(control_id), "{control_id}: {stdout}");
    }
    server.stop();
}

/// The source of a rekey is opened with the new key for reading only: a rekey that stops
/// half way must not leave the store needing a key it did not need before. An open that
/// writes with a key does name it.
#[test]
fn reading_with_a_key_does_not_make_a_store_need_it() {
    use mfoundry::outbox::crypt::{Keys, StoreKey};
    use mfoundry::outbox::{Outbox, OutboxOptions};
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("mfoundry.redb");
    let open = |keys: Keys| {
        let mut options = OutboxOptions::new(path.clone());
        options.keys = keys;
        Outbox::open(options, &[]).map(|(outbox, writer)| {
            drop(outbox);
            writer.join();
        })
    };
    open(Keys::plain()).expect("a plain store");
    let key = Keys::new(StoreKey::from_bytes(&[1; 32]), Vec::new());
    open(key.for_reading()).expect("read with a key");
    open(Keys::plain()).expect("still opens without a key");
    open(key.clone()).expect("written with the key");
    let refused = open(Keys::plain()).expect_err("now needs the key");
    assert!(
        mfoundry::outbox::Chain(&refused)
            .to_string()
            .contains("ENCRYPTION_KEY_FILE"),
        "{}",
        mfoundry::outbox::Chain(&refused)
    );
}

/// A store created with a key holds no plain value: one put there (a record swapped for a
/// plain one by someone who can write the file) is damage, not a record from before the key.
#[test]
fn a_plain_value_put_into_a_sealed_store_is_damage() {
    use mfoundry::outbox::crypt::{Keys, StoreKey};
    use mfoundry::outbox::schema;
    use redb::ReadableTable;
    let directory = tempfile::tempdir().expect("tempdir");
    let dir = directory.path();
    std::fs::write(dir.join("gw.yaml"), config(dir)).expect("config");
    write_key(&dir.join("key-a"), 6);
    let key_a = [("ENCRYPTION_KEY_FILE", "key-a")];
    let server = Server::start(dir, "gw.yaml", "data", &key_a);
    send(&server, dir, &[("SWAP-1", 1)]);
    wait_for_files(&dir.join("out"), 1);
    server.stop();
    let (code, output) = store(dir, &["verify"], &key_a);
    assert_eq!(code, 0, "{output}");
    {
        let keys = Keys::new(StoreKey::from_bytes(&[6; 32]), Vec::new());
        let database = mfoundry::outbox::datafile::open_raw(&dir.join("data/mfoundry.redb"))
            .expect("open raw");
        let transaction = database.begin_write().expect("write");
        {
            let mut messages = transaction.open_table(schema::MESSAGES).expect("table");
            let (id, sealed) = {
                let (key, value) = messages.first().expect("read").expect("a message");
                (key.value(), value.value().to_vec())
            };
            let decoded = schema::decode_message_checked(&keys, id, &sealed).expect("opens");
            let plain = schema::encode_message(
                &Keys::plain(),
                id,
                &decoded.record,
                decoded.inline.as_deref(),
            )
            .expect("encodes");
            messages.insert(id, plain.as_slice()).expect("swap");
        }
        transaction.commit().expect("commit");
    }
    let (code, output) = store(dir, &["verify"], &key_a);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("stored plain"), "{output}");
}
