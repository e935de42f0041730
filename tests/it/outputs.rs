//! The HTTP and PostgreSQL outputs against real peers: an HTTP server played by the test,
//! and the PostgreSQL server of the machine (skipped with a printed reason when it is not
//! there, unless `MFOUNDRY_REQUIRE_SERVICES=1`).

use crate::common;

use std::sync::atomic::Ordering;

use common::peer::{Answer, peer};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the test server saw it.
#[derive(Clone, Debug)]
struct Request {
    head: String,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

type Script = dyn Fn(usize) -> (u16, &'static str) + Send + Sync;

/// Serve HTTP/1.1 requests on one connection, recording each.
async fn serve_http<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    script: Arc<Script>,
    recorded: Arc<Mutex<Vec<Request>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        let number = {
            let mut seen = recorded.lock().expect("lock");
            seen.push(Request { head, body });
            seen.len()
        };
        let (status, extra) = script(number);
        let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n{extra}\r\n");
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// An HTTP/1.1 server answering the n-th request (from 1) with `script(n)`: (status, extra
/// header lines).
async fn http_server(
    script: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let script: Arc<Script> = Arc::new(script);
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (script, recorded) = (Arc::clone(&script), Arc::clone(&recorded));
            tokio::spawn(serve_http(stream, script, recorded));
        }
    });
    (port, seen)
}

async fn send(app: &common::TestApp, ids: &[&str]) {
    let mut stream = common::connect(app).await;
    for id in ids {
        common::write(&mut stream, &common::framed(&common::adt(id, "2.5"))).await;
        let reply = common::expect_ack(&mut stream).await;
        assert_eq!(common::field(&reply, "MSA", 1), "AA", "{id}");
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stat(app: &common::TestApp, connector: &str, which: &str) -> u64 {
    let stats = app.worker(connector).stats();
    match which {
        "delivered" => stats.delivered.load(Ordering::SeqCst),
        "dead" => stats.dead_lettered.load(Ordering::SeqCst),
        _ => stats.retries.load(Ordering::SeqCst),
    }
}

/// The id the store gave the message with this control id.
fn id_of(app: &common::TestApp, control_id: &str) -> u64 {
    app.outbox()
        .snapshot()
        .expect("snapshot")
        .messages()
        .expect("messages")
        .into_iter()
        .find(|(_, record)| record.header.control_id == control_id)
        .map(|(id, _)| id.0)
        .unwrap_or_else(|| panic!("{control_id} is stored"))
}

#[tokio::test]
async fn http_posts_the_bytes_as_received_with_the_token_and_retries_what_is_transient() {
    // 1: 503 with Retry-After 0 → retried; 2: 409 (the key is still being processed) →
    // retried; 3: 200 (M1); 4: 302 (M2 → DLQ: a redirect is not followed, it would turn the
    // POST into a GET without the message); 5: 200 (M3).
    let (port, requests) = http_server(|n| match n {
        1 => (503, "retry-after: 0\r\n"),
        2 => (409, ""),
        4 => (302, "location: /elsewhere\r\n"),
        _ => (200, ""),
    })
    .await;
    let token_file = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token_file.path(), "s3cret\n").expect("token");
    let yaml = format!(
        "connectors:\n  - name: ehr\n    type: http\n    url: http://127.0.0.1:{port}/hl7\n    bearer_token_file: {}\n    headers:\n      X-Site: ${{SITE}}\n    retry:\n      initial_delay: 5ms\n      max_delay: 20ms\n",
        token_file.path().display()
    );
    let app = common::start_with_yaml(Some(&yaml), &[("SITE", "north")]).await;
    send(&app, &["M1", "M2", "M3"]).await;
    eventually("2 delivered, 1 dead", || {
        stat(&app, "ehr", "delivered") == 2 && stat(&app, "ehr", "dead") == 1
    })
    .await;
    let requests = requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 5, "the redirect was not followed");
    let ids: Vec<String> = requests
        .iter()
        .map(|r| common::field(&r.body, "MSH", 10))
        .collect();
    assert_eq!(ids, vec!["M1", "M1", "M1", "M2", "M3"]);
    let first = &requests[2];
    assert!(
        first.head.starts_with("POST /hl7 HTTP/1.1"),
        "{}",
        first.head
    );
    assert_eq!(first.body, common::adt("M1", "2.5"));
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("x-application/hl7-v2+er7")
    );
    assert_eq!(
        first.header("authorization").as_deref(),
        Some("Bearer s3cret")
    );
    assert_eq!(first.header("x-site").as_deref(), Some("north"));
    let m1 = id_of(&app, "M1");
    assert_eq!(
        first.header("idempotency-key"),
        Some(format!(
            "mfoundry-{:016x}-ehr-{m1}",
            app.outbox().instance_id()
        )),
        "the key names the queue entry (a first delivery's entry is its message id)"
    );
    assert_eq!(first.header("x-mfoundry-entry"), Some(m1.to_string()));
    let connector = app.outbox().connector_id("ehr").expect("id");
    let dead = app
        .outbox()
        .snapshot()
        .expect("snapshot")
        .dead_letters(connector)
        .expect("dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].1.message_id.0, id_of(&app, "M2"));
    assert_eq!(dead[0].1.reason, "the endpoint answered HTTP 302");
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn http_json_format_carries_header_and_segments() {
    let (port, requests) = http_server(|_| (204, "")).await;
    let yaml = format!(
        "connectors:\n  - name: fhir\n    type: http\n    method: PUT\n    format: json\n    url: http://127.0.0.1:{port}/in\n"
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["J1"]).await;
    eventually("delivered", || stat(&app, "fhir", "delivered") == 1).await;
    let request = requests.lock().expect("lock")[0].clone();
    assert!(request.head.starts_with("PUT /in HTTP/1.1"));
    assert_eq!(
        request.header("content-type").as_deref(),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_slice(&request.body).expect("json");
    assert_eq!(json["id"], id_of(&app, "J1"));
    assert_eq!(json["entry"], id_of(&app, "J1"));
    assert_eq!(json["connector"], "fhir");
    assert_eq!(json["header"]["control_id"], "J1");
    assert_eq!(json["header"]["msg_type"], "ADT");
    assert_eq!(json["segments"][0]["name"], "MSH");
    assert_eq!(json["segments"][0]["fields"][0], "|");
    assert_eq!(
        json["segments"][0]["fields"][9], "J1",
        "fields[n-1] is MSH-n"
    );
    assert_eq!(json["segments"][2]["name"], "PID");
    assert_eq!(json["segments"][2]["fields"][2], "12345^^^HOSP^MR", "PID-3");
    assert_eq!(
        json["hl7"].as_str().map(str::as_bytes),
        Some(common::adt("J1", "2.5").as_slice())
    );
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

/// The test database, or `None` (after saying why) when PostgreSQL is not reachable and
/// services are not required.
async fn postgres() -> Option<(tokio_postgres::Client, String)> {
    let dsn = std::env::var("MFOUNDRY_TEST_POSTGRES_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned());
    match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            Some((client, dsn))
        }
        Err(error) => {
            let required =
                std::env::var("MFOUNDRY_REQUIRE_SERVICES").is_ok_and(|value| value == "1");
            assert!(
                !required,
                "PostgreSQL is required (MFOUNDRY_REQUIRE_SERVICES=1) but {dsn:?} failed: {error}"
            );
            eprintln!(
                "SKIPPED: PostgreSQL not reachable at {dsn:?} ({error}); set MFOUNDRY_REQUIRE_SERVICES=1 to fail instead"
            );
            None
        }
    }
}

#[tokio::test]
async fn postgres_gets_one_row_per_message_even_when_delivered_twice() {
    let Some((client, dsn)) = postgres().await else {
        return;
    };
    let table = format!(
        "mfoundry_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos()
    );
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

/// An HTTPS server that requires a client certificate signed by the test CA.
async fn https_server(directory: &std::path::Path) -> (u16, Arc<Mutex<Vec<Request>>>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(directory.join("ca.pem")).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let verifier = tokio_rustls::rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .expect("verifier");
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(directory.join("server.pem"))
            .expect("server cert")
            .map(|cert| cert.expect("cert"))
            .collect();
    let key = PrivateKeyDer::from_pem_file(directory.join("server.key")).expect("server key");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
    let recorded = Arc::clone(&seen);
    let script: Arc<Script> = Arc::new(|_| (200, ""));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, script, recorded) =
                (acceptor.clone(), Arc::clone(&script), Arc::clone(&recorded));
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve_http(stream, script, recorded).await;
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn https_with_a_custom_ca_and_a_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    common::certs::certificates(certs.path());
    let (port, requests) = https_server(certs.path()).await;
    let path = |name: &str| certs.path().join(name).display().to_string();
    let yaml = format!(
        "connectors:\n  - name: mtls\n    type: http\n    url: https://127.0.0.1:{port}/hl7\n    tls_ca_file: {}\n    tls_cert_file: {}\n    tls_key_file: {}\n  - name: no-client-cert\n    type: http\n    url: https://127.0.0.1:{port}/hl7\n    tls_ca_file: {}\n    retry:\n      initial_delay: 10ms\n      max_delay: 20ms\n",
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
        path("ca.pem"),
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["T1"]).await;
    eventually("delivered over mTLS", || {
        stat(&app, "mtls", "delivered") == 1
    })
    .await;
    eventually("the other retried", || {
        stat(&app, "no-client-cert", "retries") >= 2
    })
    .await;
    assert_eq!(
        stat(&app, "no-client-cert", "delivered"),
        0,
        "no client certificate, no delivery"
    );
    let requests = requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1, "only the mTLS connector got through");
    assert_eq!(requests[0].body, common::adt("T1", "2.5"));
    assert!(app.shutdown(Duration::from_secs(5)).await);
}

#[test]
fn tls_files_are_checked_when_the_configuration_loads() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("junk.pem"), "not a certificate").expect("write");
    let junk = directory.path().join("junk.pem").display().to_string();
    let yaml = format!(
        "connectors:\n  - name: a\n    type: http\n    url: https://x\n    tls_ca_file: {junk}\n    tls_cert_file: {junk}\n  - name: b\n    type: file\n    directory: out\n    tls_ca_file: {junk}\n"
    );
    std::fs::write(directory.path().join("bad.yaml"), yaml).expect("write");
    let (code, _, stderr) =
        common::run_binary(directory.path(), &["check", "--config", "bad.yaml"], &[]);
    assert_eq!(code, 64);
    for expected in [
        "`tls_ca_file`",
        "junk.pem: no PEM certificate found",
        "set both `tls_cert_file` and `tls_key_file`",
        "`tls_ca_file` does not apply to type file",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
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

#[tokio::test]
async fn a_renewed_http_client_certificate_is_used_without_a_restart() {
    let certs = tempfile::tempdir().expect("tempdir");
    common::certs::certificates(certs.path());
    let directory = certs.path();
    // The connector starts with a certificate the server does not trust.
    common::certs::untrusted_client(directory, "stranger");
    let install = |name: &str| {
        for (from, to) in [
            (format!("{name}.pem"), "live.pem"),
            (format!("{name}.key"), "live.key"),
        ] {
            let temporary = directory.join(format!("{to}.tmp"));
            std::fs::copy(directory.join(from), &temporary).expect("copy");
            std::fs::rename(&temporary, directory.join(to)).expect("rename");
        }
    };
    install("stranger");
    let (port, requests) = https_server(directory).await;
    let path = |name: &str| directory.join(name).display().to_string();
    let yaml = format!(
        "connectors:\n  - name: mtls\n    type: http\n    url: https://127.0.0.1:{port}/hl7\n    tls_ca_file: {}\n    tls_cert_file: {}\n    tls_key_file: {}\n    retry:\n      initial_delay: 20ms\n      max_delay: 50ms\n",
        path("ca.pem"),
        path("live.pem"),
        path("live.key"),
    );
    let app = common::start_with_yaml(Some(&yaml), &[]).await;
    send(&app, &["R1"]).await;
    eventually("refused while the certificate is untrusted", || {
        stat(&app, "mtls", "retries") >= 2
    })
    .await;
    assert_eq!(stat(&app, "mtls", "delivered"), 0);
    install("client");
    eventually("delivered with the renewed certificate", || {
        stat(&app, "mtls", "delivered") == 1
    })
    .await;
    let requests = requests.lock().expect("lock").clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, common::adt("R1", "2.5"));
    assert!(app.shutdown(Duration::from_secs(5)).await);
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
