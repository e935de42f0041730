//! mfoundry as a TLS client: the MLLP connector delivers over mTLS, refuses a server it does
//! not trust (the message waits, never sent in the clear) and uses a changed client
//! certificate on its next connection; `mfoundry send` and `mfoundry bench` speak TLS and
//! mTLS to a listener requiring client certificates.

use super::*;

/// A server requiring client certificates from the test CA.
async fn mtls_server(directory: &Path) -> common::TestApp {
    let ca = directory.join("ca.pem").display().to_string();
    start(directory, &[("TLS_CLIENT_CA", &ca)]).await
}

#[tokio::test]
async fn the_mllp_output_delivers_over_mtls() {
    let certs = certificates();
    let directory = certs.path();
    let downstream = mtls_server(directory).await;
    let path = |name: &str| directory.join(name).display().to_string();
    let yaml = format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: localhost\n    port: {}\n    tls_ca_file: {}\n    tls_cert_file: {}\n    tls_key_file: {}\n",
        downstream.local_addr().port(),
        path("ca.pem"),
        path("client.pem"),
        path("client.key"),
    );
    let upstream = common::start_with_yaml(Some(&yaml), &[]).await;
    let mut stream = common::connect(&upstream).await;
    for id in ["OUT1", "OUT2", "OUT3"] {
        assert_eq!(exchange(&mut stream, id).await, Ok("AA".to_owned()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while common::stored_control_ids(downstream.outbox()).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered over TLS: {:?}",
            common::stored_control_ids(downstream.outbox())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        common::stored_control_ids(downstream.outbox()),
        ["OUT1", "OUT2", "OUT3"]
    );
    assert_eq!(
        audited_identities(&downstream).await,
        vec!["subject=CN=mfoundry; issuer=CN=mfoundry test CA; names=CN:mfoundry".to_owned(); 3],
        "the downstream saw the connector's client certificate"
    );
    upstream.shutdown(Duration::from_secs(5)).await;
    downstream.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_mllp_connector_refuses_a_server_it_does_not_trust() {
    let certs = certificates();
    let directory = certs.path();
    let downstream = start(directory, &[]).await;
    // No tls_ca_file: the test CA is not among the system's, so the handshake fails and the
    // message waits in the queue (retried), never sent in the clear.
    let yaml = format!(
        "connectors:\n  - name: downstream\n    type: mllp\n    host: localhost\n    port: {}\n    tls: true\n    retry: {{ initial_delay: 50ms, max_delay: 100ms }}\n",
        downstream.local_addr().port(),
    );
    let upstream = common::start_with_yaml(Some(&yaml), &[]).await;
    let mut stream = common::connect(&upstream).await;
    assert_eq!(
        exchange(&mut stream, "UNTRUSTED").await,
        Ok("AA".to_owned())
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let worker = upstream.worker("downstream");
    while worker
        .stats()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(common::stored_control_ids(downstream.outbox()).is_empty());
    assert!(downstream.stats().tls_handshake_failures >= 2);
    upstream.shutdown(Duration::from_secs(5)).await;
    downstream.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_changed_client_certificate_is_used_by_the_next_connection() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::client_named(directory, "lab", "/CN=lab", "DNS:lab.north.example");
    let downstream = mtls_server(directory).await;
    install(directory, "client.pem", "client.key");
    let settings = mfoundry::tls::ClientTlsSettings {
        ca_file: Some(directory.join("ca.pem")),
        cert_file: Some(directory.join("live.pem")),
        key_file: Some(directory.join("live.key")),
        server_name: Some("localhost".to_owned()),
    };
    let names = ["tls_ca_file", "tls_cert_file", "tls_key_file"];
    let tls = mfoundry::tls::TlsClient::new(settings, names).expect("loads");
    let addr = downstream.local_addr().to_string();
    let send = async |control_id: &str| {
        let mut client = mfoundry::mllp::MllpClient::connect_with(
            &addr,
            Some(&tls),
            Duration::from_secs(5),
            1 << 20,
        )
        .await
        .expect("connects");
        let ack = client
            .request(&common::adt(control_id, "2.5"), Duration::from_secs(5))
            .await
            .expect("ACK");
        common::field(&ack, "MSA", 1)
    };
    // The client looks at its files at most once per RELOAD_POLL, not on every connection:
    // the clock is moved past it rather than waited for.
    let poll_passes = async || {
        tokio::time::pause();
        tokio::time::advance(mfoundry::tls::RELOAD_POLL).await;
        tokio::time::resume();
    };
    assert_eq!(send("FIRST").await, "AA");
    install(directory, "lab.pem", "lab.key");
    poll_passes().await;
    assert_eq!(send("SECOND").await, "AA");
    // A broken pair keeps the previous one.
    std::fs::write(directory.join("live.key"), "not a key").expect("write");
    poll_passes().await;
    assert_eq!(send("THIRD").await, "AA");
    let identities = audited_identities(&downstream).await;
    assert_eq!(
        identities,
        [
            "subject=CN=mfoundry; issuer=CN=mfoundry test CA; names=CN:mfoundry",
            "subject=CN=lab; issuer=CN=mfoundry test CA; names=CN:lab,DNS:lab.north.example",
            "subject=CN=lab; issuer=CN=mfoundry test CA; names=CN:lab,DNS:lab.north.example",
        ]
    );
    downstream.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn mfoundry_send_speaks_tls_and_mtls() {
    let certs = certificates();
    let directory = certs.path().to_path_buf();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(mtls_server(&directory));
    let message = directory.join("adt.hl7");
    std::fs::write(&message, common::adt("SENT-TLS", "2.5")).expect("write");
    let path = |name: &str| directory.join(name).display().to_string();
    let send = |extra: &[String]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mfoundry"))
            .arg("send")
            .arg("--addr")
            .arg(format!("localhost:{}", server.local_addr().port()))
            .arg("--timeout")
            .arg("5s")
            .args(extra)
            .arg(&message)
            .output()
            .expect("mfoundry send runs")
    };
    let ok = send(&[
        "--tls-ca".to_owned(),
        path("ca.pem"),
        "--tls-cert".to_owned(),
        path("client.pem"),
        "--tls-key".to_owned(),
        path("client.key"),
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && stdout.contains("SENT-TLS\tAA"),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without a client certificate the server refuses the handshake.
    let refused = send(&["--tls-ca".to_owned(), path("ca.pem")]);
    assert!(!refused.status.success());
    // A certificate file that is not one is named.
    let bad = send(&["--tls-ca".to_owned(), path("adt.hl7")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--tls-ca"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(common::stored_control_ids(server.outbox()), ["SENT-TLS"]);
    runtime.block_on(server.shutdown(Duration::from_secs(5)));
}

#[tokio::test]
async fn bench_loads_an_mtls_listener() {
    let certs = certificates();
    let directory = certs.path();
    let app = mtls_server(directory).await;
    let path = |name: &str| Some(directory.join(name));
    let mut args = common::bench_args(&format!("localhost:{}", app.local_addr().port()), 3, 300);
    args.tls = mfoundry::cli::TlsArgs {
        tls: false,
        tls_ca: path("ca.pem"),
        tls_cert: path("client.pem"),
        tls_key: path("client.key"),
        tls_server_name: None,
    };
    let mut out = Vec::new();
    let report = mfoundry::cli::run_bench(&args, &mut out)
        .await
        .expect("bench runs");
    assert_eq!((report.answered, report.not_aa, report.failed), (300, 0, 0));
    assert_eq!(common::stored_control_ids(app.outbox()).len(), 300);
    assert_eq!(app.stats().tls_handshake_failures, 0);
    app.shutdown(Duration::from_secs(5)).await;
}
