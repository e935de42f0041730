//! A data directory restored from an older backup must never hand out an id (or queue entry)
//! a downstream system already saw: every message sent after the restore reaches PostgreSQL
//! (when it is there), an HTTP endpoint that drops repeated `Idempotency-Key`s, files named by
//! entry, and an MLLP peer.

use super::*;

use crate::common::peer::{Answer, peer};

/// Copy a directory's files (one level, as `DATA_DIR` is).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("target directory");
    for entry in std::fs::read_dir(from).expect("source directory") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A gateway on `data` with `yaml`, fixed ACK stamps.
async fn start_on(
    data: &std::path::Path,
    yaml: &str,
    envs: &[(&str, &str)],
) -> mfoundry::app::RunningApp {
    let config = common::config(data, Some(yaml), envs);
    mfoundry::app::RunningApp::start(config)
        .await
        .expect("the gateway starts")
}

/// Send ADTs with these control ids to `app`, each answered AA.
async fn send_to(app: &mfoundry::app::RunningApp, ids: &[String]) {
    let mut stream = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connects");
    for id in ids {
        common::write(&mut stream, &common::framed(&common::adt(id, "2.5"))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{id}");
    }
}

/// Wait until every connector of `app` delivered `count` messages since it started.
async fn delivered_everywhere(app: &mfoundry::app::RunningApp, connectors: &[&str], count: u64) {
    for connector in connectors {
        let worker = app.worker(connector).expect("worker");
        eventually(&format!("{connector} delivers {count}"), || {
            worker.stats().delivered.load(Ordering::SeqCst) >= count
        })
        .await;
    }
}

/// A data directory restored from an older backup must never hand out an id (or queue entry)
/// a downstream system already saw: every message sent after the restore reaches PostgreSQL,
/// an HTTP endpoint that drops repeated `Idempotency-Key`s, files named by entry, and an MLLP
/// peer, and nothing delivered before is overwritten.
#[tokio::test]
async fn after_a_restore_from_an_older_backup_every_new_message_reaches_all_four_outputs() {
    let pg = postgres().await;
    let (http_port, requests) = http_server(|_| (200, "")).await;
    let mllp = peer(|_, _| Answer::Ack("AA")).await;
    let out = tempfile::tempdir().expect("out");
    let root = tempfile::tempdir().expect("root");
    let data = root.path().join("data");
    let table = format!(
        "mfoundry_restore_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos()
    );
    let mut yaml = format!(
        "connectors:\n  - name: files\n    type: file\n    directory: {}\n    filename: \"{{entry}}.hl7\"\n  - name: http\n    type: http\n    url: http://127.0.0.1:{http_port}/in\n  - name: lab\n    type: mllp\n    host: 127.0.0.1\n    port: {}\n",
        out.path().display(),
        mllp.addr.port()
    );
    let mut connectors = vec!["files", "http", "lab"];
    let dsn = pg.as_ref().map(|(_, dsn)| dsn.clone()).unwrap_or_default();
    if pg.is_some() {
        yaml.push_str(&format!(
            "  - name: archive\n    type: postgres\n    dsn: ${{TEST_DSN}}\n    table: {table}\n"
        ));
        connectors.push("archive");
    }
    let envs = [("TEST_DSN", dsn.as_str())];
    let batch = |prefix: &str| -> Vec<String> { (1..=3).map(|n| format!("{prefix}{n}")).collect() };

    let app = start_on(&data, &yaml, &envs).await;
    send_to(&app, &batch("A")).await;
    delivered_everywhere(&app, &connectors, 3).await;
    assert!(app.shutdown(Duration::from_secs(5)).await);
    let backup = root.path().join("backup");
    copy_dir(&data, &backup);

    let app = start_on(&data, &yaml, &envs).await;
    send_to(&app, &batch("B")).await;
    delivered_everywhere(&app, &connectors, 3).await;
    assert!(app.shutdown(Duration::from_secs(5)).await);

    // The backup is restored: the store forgets B.
    std::fs::remove_dir_all(&data).expect("remove");
    copy_dir(&backup, &data);
    let app = start_on(&data, &yaml, &envs).await;
    send_to(&app, &batch("C")).await;
    delivered_everywhere(&app, &connectors, 3).await;

    // HTTP: nine different keys, so an endpoint that drops repeats took every message.
    let keys: std::collections::BTreeSet<String> = requests
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|request| request.header("idempotency-key"))
        .collect();
    assert_eq!(keys.len(), 9, "{keys:?}");
    // Files: nine, none overwritten; C's bodies among them.
    let mut bodies = Vec::new();
    for entry in walk(out.path()) {
        bodies.push(std::fs::read(entry).expect("read"));
    }
    assert_eq!(bodies.len(), 9, "no file was overwritten by a new message");
    for id in batch("B").iter().chain(&batch("C")) {
        assert!(
            bodies.contains(&common::adt(id, "2.5")),
            "{id} reached the file output"
        );
    }
    // MLLP: the peer got C.
    let received = mllp.received();
    for id in batch("C") {
        assert!(received.contains(&id), "{id} reached the MLLP peer");
    }
    // PostgreSQL: a row for every message, C included.
    if let Some((client, _)) = &pg {
        let rows = client
            .query(&format!("SELECT control_id FROM {table}"), &[])
            .await
            .expect("select");
        let stored: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
        assert_eq!(stored.len(), 9, "{stored:?}");
        for id in batch("C") {
            assert!(stored.contains(&id), "{id} reached PostgreSQL");
        }
        client
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .expect("drop");
    }
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

fn walk(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(directory).expect("directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if !path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        {
            out.push(path);
        }
    }
    out
}
