//! The command line over the API: `stats`, `messages`, `resume` and `audit` steer a running
//! server with the local token (a wrong token is refused), and `audit verify --offline`
//! detects a changed, removed, reordered or truncated record in a copy of the audit trail.

use super::*;

fn audit_records(data: &Path) -> Vec<(u64, Vec<u8>)> {
    let database = mfoundry::outbox::datafile::open_raw(&data.join("mfoundry.redb")).expect("open");
    let transaction = redb::ReadableDatabase::begin_read(&database).expect("read");
    let table = transaction.open_table(AUDIT).expect("audit table");
    redb::ReadableTable::iter(&table)
        .expect("iter")
        .map(|entry| {
            let (key, value) = entry.expect("entry");
            (key.value(), value.value().to_vec())
        })
        .collect()
}

const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");

/// Apply `change` to the audit table of a copy of `data`; return `audit verify --offline`'s
/// exit code and output.
fn tamper(
    directory: &Path,
    data: &Path,
    name: &str,
    change: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>, &[(u64, Vec<u8>)]),
) -> (i32, String) {
    let copy = directory.join(name);
    std::fs::create_dir_all(&copy).expect("copy dir");
    std::fs::copy(data.join("mfoundry.redb"), copy.join("mfoundry.redb")).expect("copy");
    let records = audit_records(&copy);
    {
        let database =
            mfoundry::outbox::datafile::open_raw(&copy.join("mfoundry.redb")).expect("open");
        let transaction = database.begin_write().expect("write");
        {
            let mut table = transaction.open_table(AUDIT).expect("table");
            change(&mut table, &records);
        }
        transaction.commit().expect("commit");
    }
    let copy_text = copy.display().to_string();
    let (code, stdout, stderr) = common::run_binary(
        directory,
        &["audit", "verify", "--offline", "--data-dir", &copy_text],
        &[],
    );
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn the_cli_steers_a_running_server_with_the_local_token_and_the_audit_trail_detects_tampering() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        directory.path().join("gw.yaml"),
        file_yaml(directory.path()),
    )
    .expect("yaml");
    let server = common::Server::start(directory.path(), "gw.yaml", "data", &[]);
    let data = directory.path().join("data");
    let token_path = data.join("admin.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the generated token is private");
    }
    let admin = server.admin_addr.clone().expect("admin address");
    let data_text = data.display().to_string();
    let env = [
        ("ADMIN_ADDR", admin.as_str()),
        ("DATA_DIR", data_text.as_str()),
    ];
    let message = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages/adt-a01.hl7");
    let message = message.display().to_string();
    for _ in 0..2 {
        let (code, _, stderr) = common::run_binary(
            directory.path(),
            &["send", "--addr", &server.addr, &message],
            &[],
        );
        assert_eq!(code, 0, "{stderr}");
    }
    let oru = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/messages/oru-r01-lf.hl7");
    let (code, _, stderr) = common::run_binary(
        directory.path(),
        &["send", "--addr", &server.addr, &oru.display().to_string()],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");

    let (code, stdout, stderr) = common::run_binary(directory.path(), &["stats"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("archive") && stdout.contains("paused"),
        "{stdout}"
    );
    // Counters restart with the process, and say so.
    assert!(stdout.starts_with("counts since start ("), "{stdout}");
    let (code, stdout, stderr) = common::run_binary(directory.path(), &["stats", "--json"], &env);
    assert_eq!(code, 0, "{stderr}");
    let stats: Value = serde_json::from_str(&stdout).expect("json");
    assert!(
        stats["counters_since"]
            .as_str()
            .is_some_and(|since| since.ends_with('Z') && since.len() == 20),
        "{stats}"
    );
    assert_eq!(stats["listeners"][0]["received"], 3);
    assert_eq!(
        stats["connectors"][0]["queue_depth"], 2,
        "a retransmit is queued once"
    );

    let (code, stdout, _) = common::run_binary(
        directory.path(),
        &["messages", "search", "--type", "ORU"],
        &env,
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains("ORU^R01") && !stdout.contains("ADT^A01"),
        "{stdout}"
    );
    // The oldest message: the first ADT (ids are handed out by the store, above the clock).
    let (code, stdout, _) = common::run_binary(
        directory.path(),
        &["messages", "search", "--type", "ADT", "--json"],
        &env,
    );
    assert_eq!(code, 0);
    let found: Value = serde_json::from_str(&stdout).expect("json");
    let first = found
        .as_array()
        .and_then(|messages| messages.last())
        .map(|message| message["id"].to_string())
        .expect("the ADT is found");
    let (code, stdout, _) =
        common::run_binary(directory.path(), &["messages", "show", &first], &env);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("archive") && stdout.contains("MSH|"),
        "{stdout}"
    );
    let (code, stdout, _) = common::run_binary(directory.path(), &["resume", "archive"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("delivering"), "{stdout}");

    let wrong = [("ADMIN_ADDR", admin.as_str()), ("ADMIN_TOKEN", "mft_wrong")];
    let (code, _, stderr) = common::run_binary(directory.path(), &["stats"], &wrong);
    assert_eq!(code, 2);
    assert!(stderr.contains("401"), "{stderr}");

    let (code, stdout, _) = common::run_binary(directory.path(), &["audit", "verify"], &env);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("intact"), "{stdout}");
    let (code, stdout, _) = common::run_binary(directory.path(), &["audit", "list"], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains("(retransmit)"), "{stdout}");
    assert!(
        stdout.contains("local-admin: message.read message 1"),
        "{stdout}"
    );
    server.stop();

    let (code, stdout) = tamper(directory.path(), &data, "untouched", |_, _| {});
    assert_eq!(code, 0, "{stdout}");
    let (code, stdout) = tamper(directory.path(), &data, "changed", |table, records| {
        let mut value = records[1].1.clone();
        let last = value.len() - 1;
        value[last] ^= 0x01;
        table.insert(1, value.as_slice()).expect("insert");
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("record 1: content does not match"),
        "{stdout}"
    );
    let (code, stdout) = tamper(directory.path(), &data, "removed", |table, _| {
        table.remove(1).expect("remove");
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("records 1..1 are missing"), "{stdout}");
    let (code, stdout) = tamper(directory.path(), &data, "reordered", |table, records| {
        table.insert(1, records[2].1.as_slice()).expect("insert");
        table.insert(2, records[1].1.as_slice()).expect("insert");
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("does not match its hash"), "{stdout}");
    // The newest receive record removed: its message has no record any more.
    let (code, stdout) = tamper(directory.path(), &data, "truncated", |table, records| {
        let received: Vec<u64> = records
            .iter()
            .filter(|(seq, value)| {
                let keys = mfoundry::outbox::crypt::Keys::plain();
                mfoundry::outbox::audit::decode(&keys, *seq, value).is_ok_and(|record| {
                    matches!(
                        record.event,
                        mfoundry::outbox::audit::AuditEvent::Received {
                            duplicate: false,
                            ..
                        }
                    )
                })
            })
            .map(|(seq, _)| *seq)
            .collect();
        let newest = *received.last().expect("a receive record");
        let last = records.last().expect("records").0;
        for seq in newest..=last {
            table.remove(seq).expect("remove");
        }
    });
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("have no receive record"), "{stdout}");
}
