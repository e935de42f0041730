//! The HTTP output over TLS, against an HTTPS server that requires a client certificate from
//! the test CA: a custom CA and a client certificate, a renewed client certificate used
//! without a restart; and every output's TLS files checked when the configuration loads.

use super::*;

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
