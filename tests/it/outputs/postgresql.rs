//! The PostgreSQL output against the machine's server: one row per message even when
//! delivered twice (a NUL in a header field does not block the queue), an unreachable server
//! keeps the message queued without showing the DSN, TLS checks the server's certificate, and
//! an unknown `PGSSLMODE` is refused at load.

use super::*;

/// A table name no other test run uses.
fn unique_table(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos()
    )
}

#[tokio::test]
async fn postgres_gets_one_row_per_message_even_when_delivered_twice() {
    let Some((client, dsn)) = postgres().await else {
        return;
    };
    let table = unique_table("mfoundry_test");
    let yaml = format!(
        "connectors:\n  - name: archive\n    type: postgres\n    dsn: ${{TEST_DSN}}\n    table: {table}\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[("TEST_DSN", &dsn)]).await;
    send(&app, &["P1", "P2", "P3"]).await;
    eventually("3 rows", || stat(&app, "archive", "delivered") == 3).await;
    let rows = client
        .query(
            &format!("SELECT id, control_id, msg_type, trigger, sending_app, sending_facility, message, header->>'control_id', source, entry FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .expect("select");
    assert_eq!(rows.len(), 3);
    for (index, row) in rows.iter().enumerate() {
        let control_id = format!("P{}", index + 1);
        let id = id_of(&app, &control_id) as i64;
        assert_eq!(row.get::<_, i64>(0), id);
        assert_eq!(
            row.get::<_, i64>(9),
            id,
            "a first delivery's entry is its id"
        );
        assert_eq!(row.get::<_, String>(1), control_id);
        assert_eq!(row.get::<_, String>(2), "ADT");
        assert_eq!(row.get::<_, String>(3), "A01");
        assert_eq!(row.get::<_, String>(4), "SENDAPP");
        assert_eq!(row.get::<_, String>(5), "SENDFAC");
        assert_eq!(row.get::<_, Vec<u8>>(6), common::adt(&control_id, "2.5"));
        assert_eq!(row.get::<_, String>(7), control_id);
        assert_eq!(
            row.get::<_, String>(8),
            format!("{:016x}", app.outbox().instance_id())
        );
    }

    // A redelivery of the same entry (a crash between the insert and the mark) adds no row;
    // a replayed copy (a new entry) is a new row.
    let p1 = id_of(&app, "P1");
    let record = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .message(mfoundry::outbox::MessageId(p1))
        .expect("read")
        .expect("message P1");
    let spec = mfoundry::outputs::postgres::PostgresSpec {
        dsn: dsn.clone(),
        table: table.clone(),
        format: mfoundry::outputs::format::Format::Hl7,
        tls: None,
        egress: None,
    };
    let mut output = mfoundry::outputs::postgres::PostgresOutput::new(spec);
    let mut envelope = mfoundry::delivery::Envelope {
        instance_id: app.outbox().instance_id(),
        message_id: p1,
        seq: p1,
        connector: Arc::from("archive"),
        record,
        body: bytes::Bytes::from(common::adt("P1", "2.5")),
        attempt: 2,
        default_charset: mfoundry::hl7::Charset::UTF_8,
    };
    output.deliver(&envelope).await.expect("idempotent insert");
    let count_query = format!("SELECT count(*) FROM {table}");
    let count = client
        .query_one(&count_query, &[])
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(count, 3);
    envelope.seq = p1 + 1_000_000;
    output.deliver(&envelope).await.expect("a new entry");
    let count = client
        .query_one(&count_query, &[])
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(count, 4, "a replayed copy is a new row");
    client
        .batch_execute(&format!(
            "DELETE FROM {table} WHERE entry = {}",
            p1 + 1_000_000
        ))
        .await
        .expect("delete");

    // A NUL in a header field (PostgreSQL text refuses it) does not block the queue: the
    // header columns drop it, the message column keeps the exact bytes.
    send(&app, &["N\u{0}UL", "P5"]).await;
    eventually("5 rows", || stat(&app, "archive", "delivered") == 5).await;
    let row = client
        .query_one(
            &format!(
                "SELECT control_id, header->>'control_id', message FROM {table} WHERE id = {}",
                id_of(&app, "N\u{0}UL")
            ),
            &[],
        )
        .await
        .expect("row 4");
    assert_eq!(row.get::<_, String>(0), "NUL");
    assert_eq!(row.get::<_, String>(1), "NUL");
    assert_eq!(row.get::<_, Vec<u8>>(2), common::adt("N\u{0}UL", "2.5"));
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn postgres_that_is_unreachable_keeps_the_message_queued() {
    let reserved = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    drop(reserved);
    let yaml = format!(
        "connectors:\n  - name: archive\n    type: postgres\n    dsn: host=127.0.0.1 port={port} user=nobody password=hunter2\n    retry:\n      initial_delay: 5ms\n      max_delay: 10ms\n      max_attempts: 0\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["Q1"]).await;
    eventually("retried", || stat(&app, "archive", "retries") >= 3).await;
    let connector = app.outbox().connector_id("archive").expect("id");
    let queue = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .queue(connector)
        .expect("queue");
    assert_eq!(queue.len(), 1);
    let error = queue[0].1.last_error.clone().unwrap_or_default();
    assert!(error.starts_with("could not connect"), "{error}");
    assert!(!error.contains("hunter2"), "the DSN never shows: {error}");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// The server's certificate, when the local PostgreSQL serves TLS with the Debian
/// self-signed one (CN and SAN `localhost`).
fn postgres_server_certificate() -> Option<&'static str> {
    let path = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
    if std::path::Path::new(path).exists() {
        Some(path)
    } else {
        eprintln!("SKIPPED: {path} (the local PostgreSQL's TLS certificate) is not there");
        None
    }
}

#[tokio::test]
async fn postgres_over_tls_checks_the_server_certificate() {
    let Some((client, _)) = postgres().await else {
        return;
    };
    let ssl: String = client
        .query_one("SHOW ssl", &[])
        .await
        .expect("show ssl")
        .get(0);
    if ssl != "on" {
        eprintln!("SKIPPED: the local PostgreSQL does not serve TLS (ssl = {ssl})");
        return;
    }
    let Some(certificate) = postgres_server_certificate() else {
        return;
    };
    let table = format!("mfoundry_tls_{}", std::process::id());
    let dsn = "host=localhost port=5432 user=postgres dbname=test sslmode=require application_name=mfoundry-tls-test";
    // Trusting the server's certificate: delivered, over TLS.
    let yaml = format!(
        "connectors:\n  - name: archive\n    type: postgres\n    dsn: \"{dsn}\"\n    table: {table}\n    tls_ca_file: {certificate}\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["TLS1"]).await;
    eventually("1 row", || stat(&app, "archive", "delivered") == 1).await;
    let encrypted: bool = client
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'mfoundry-tls-test'",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert!(encrypted, "the connector's connection uses TLS");
    assert!(app.shutdown(Duration::from_secs(5)).await);

    // By address, the certificate (for localhost only) does not match: nothing is sent,
    // the message waits.
    let by_address = dsn.replace("host=localhost", "host=127.0.0.1");
    let yaml = format!(
        "connectors:\n  - name: archive\n    type: postgres\n    dsn: \"{by_address}\"\n    table: {table}\n    tls_ca_file: {certificate}\n    retry: {{ initial_delay: 50ms, max_delay: 100ms }}\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["TLS2"]).await;
    eventually("two failed attempts", || {
        stat(&app, "archive", "retries") >= 2
    })
    .await;
    assert_eq!(stat(&app, "archive", "delivered"), 0);
    let rows: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "only the first message arrived");
    assert!(app.shutdown(Duration::from_secs(5)).await);
    client
        .execute(&format!("DROP TABLE {table}"), &[])
        .await
        .expect("drop");
}

#[test]
fn an_unknown_pgsslmode_is_refused_at_load() {
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("pg.yaml");
    std::fs::write(
        &file,
        "connectors:\n  - name: archive\n    type: postgres\n",
    )
    .expect("write");
    let lookup = |name: &str| (name == "PGSSLMODE").then(|| "verify-full".to_owned());
    let errors = mfoundry::config::Config::load_with(Some(&file), &lookup)
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("PGSSLMODE is \"verify-full\""), "{errors}");
    let fine = |name: &str| (name == "PGSSLMODE").then(|| "require".to_owned());
    assert!(mfoundry::config::Config::load_with(Some(&file), &fine).is_ok());
}

/// Messages queued while the connector was paused go out in batches (one transaction per
/// batch); a row PostgreSQL refuses for its data fails its batch, which is then sent one
/// message at a time: the refused one goes to the dead-letter queue, every other one is
/// inserted once.
#[tokio::test]
async fn postgres_batches_and_isolates_a_refused_row() {
    let Some((client, dsn)) = postgres().await else {
        return;
    };
    let table = unique_table("mfoundry_batch");
    let yaml = format!(
        "connectors:\n  - name: archive\n    type: postgres\n    dsn: ${{TEST_DSN}}\n    table: {table}\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[("TEST_DSN", &dsn)]).await;
    send(&app, &["FIRST"]).await;
    eventually("the table made", || stat(&app, "archive", "delivered") == 1).await;
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT no_bad CHECK (control_id <> 'BAD')"
        ))
        .await
        .expect("constraint");
    app.worker("archive").pause();
    let ids: Vec<String> = (1..=40).map(|n| format!("Q{n}")).collect();
    let mut sent: Vec<&str> = ids.iter().map(String::as_str).collect();
    sent.insert(17, "BAD");
    send(&app, &sent).await;
    app.worker("archive").resume();
    eventually("every row in, the refused one dead-lettered", || {
        stat(&app, "archive", "delivered") == 41 && stat(&app, "archive", "dead") == 1
    })
    .await;
    let rows = client
        .query(&format!("SELECT control_id FROM {table} ORDER BY id"), &[])
        .await
        .expect("select");
    let controls: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let mut expected = vec!["FIRST".to_owned()];
    expected.extend(ids);
    assert_eq!(controls, expected, "each once, the refused one absent");
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// kill -9 while a file and a PostgreSQL connector deliver in batches, twice, then a clean
/// restart: every acknowledged message has its file and its row, each row once (a batch
/// resent after a kill is absorbed by the entry key), and no temporary file is left.
#[test]
fn batches_lose_nothing_and_repeat_no_row_across_sigkill() {
    use std::sync::atomic::AtomicBool;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let Some((client, dsn)) = runtime.block_on(postgres()) else {
        return;
    };
    let table = unique_table("mfoundry_kill");
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path();
    let yaml = format!(
        "connectors:\n  - name: files\n    type: file\n    directory: ${{DATA_DIR}}/out\n    filename: \"{{entry}}-{{control_id}}.hl7\"\n  - name: rows\n    type: postgres\n    dsn: ${{TEST_DSN}}\n    table: {table}\n"
    );
    std::fs::write(dir.join("mfoundry.yaml"), yaml).expect("config");
    let message = |sender: usize, sequence: usize| {
        let control = format!("B{sender}-{sequence}");
        (control.clone(), common::adt(&control, "2.5"))
    };
    let out = dir.join("data").join("out");
    let mut acknowledged = Vec::new();
    let kills = 2;
    for round in 0..=kills {
        let mut gateway =
            common::Server::start(dir, "mfoundry.yaml", "data", &[("TEST_DSN", &dsn)]);
        let stop = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..4)
            .map(|index| {
                let (addr, stop) = (gateway.addr.clone(), Arc::clone(&stop));
                std::thread::spawn(move || {
                    common::send_until_stopped(&addr, round * 4 + index, &stop, message)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        if round < kills {
            gateway.child.kill().expect("SIGKILL");
            gateway.child.wait().expect("reaped");
        }
        stop.store(true, Ordering::Relaxed);
        for sender in senders {
            acknowledged.extend(sender.join().expect("sender"));
        }
        if round == kills {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                let names = common::file_names(&out);
                let rows: i64 = runtime
                    .block_on(client.query_one(
                        &format!("SELECT count(DISTINCT control_id) FROM {table}"),
                        &[],
                    ))
                    .map(|row| row.get(0))
                    .unwrap_or(0);
                let files_done = acknowledged.iter().all(|control| {
                    names
                        .iter()
                        .any(|name| name.ends_with(&format!("-{control}.hl7")))
                });
                if files_done && rows as usize >= acknowledged.len() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "every acknowledged message written within 60 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            gateway.stop();
        }
    }
    assert!(
        acknowledged.len() > 100,
        "the load ran: {}",
        acknowledged.len()
    );
    let names = common::file_names(&out);
    assert!(
        names.iter().all(|name| !name.starts_with('.')),
        "no temporary file left: {:?}",
        names
            .iter()
            .filter(|name| name.starts_with('.'))
            .collect::<Vec<_>>()
    );
    let (rows, distinct): (i64, i64) = runtime
        .block_on(client.query_one(
            &format!("SELECT count(*), count(DISTINCT (source, connector, entry)) FROM {table}"),
            &[],
        ))
        .map(|row| (row.get(0), row.get(1)))
        .expect("count");
    assert_eq!(rows, distinct, "each entry's row once");
    runtime
        .block_on(client.batch_execute(&format!("DROP TABLE {table}")))
        .expect("drop");
}
