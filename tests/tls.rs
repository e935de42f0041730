//! MLLP over TLS as senders meet it: protocol versions, client certificates (mTLS), clients
//! that do not speak TLS, and `REQUIRE_TLS`. Test certificates come from the `openssl`
//! command (skipped with a reason when it is missing).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

fn tls_env(directory: &Path) -> Vec<(String, String)> {
    let path = |name: &str| directory.join(name).display().to_string();
    vec![
        ("TLS_CERT_FILE".to_owned(), path("server.pem")),
        ("TLS_KEY_FILE".to_owned(), path("server.key")),
    ]
}

async fn start(directory: &Path, extra: &[(&str, &str)]) -> common::TestApp {
    let mut env = tls_env(directory);
    env.extend(
        extra
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
    );
    let env: Vec<(&str, &str)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    common::start(&env).await
}

/// A TLS client of one protocol version, trusting the test CA, with an optional client
/// certificate (`name`.pem / `name`.key).
fn client(
    directory: &Path,
    version: &'static rustls::SupportedProtocolVersion,
    identity: Option<&str>,
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(directory.join("ca.pem")).expect("ca") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots);
    let config = match identity {
        Some(name) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(directory.join(format!("{name}.pem")))
                    .expect("chain")
                    .map(|cert| cert.expect("cert"))
                    .collect();
            let key =
                PrivateKeyDer::from_pem_file(directory.join(format!("{name}.key"))).expect("key");
            builder.with_client_auth_cert(chain, key).expect("identity")
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Send one ADT and return the ACK's MSA-1, or the error that ended the exchange.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    control_id: &str,
) -> Result<String, String> {
    stream
        .write_all(&common::framed(&common::adt(control_id, "2.5")))
        .await
        .map_err(|error| error.to_string())?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 1024];
    while !reply.ends_with(&[0x1C, 0x0D]) {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|error| error.to_string())?;
        if read == 0 {
            return Err("closed".to_owned());
        }
        reply.extend_from_slice(&buffer[..read]);
    }
    Ok(common::field(&reply[1..reply.len() - 2], "MSA", 1))
}

/// Connect over TLS and exchange one message.
async fn over_tls(
    app: &common::TestApp,
    connector: &tokio_rustls::TlsConnector,
    control_id: &str,
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .map_err(|error| error.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    exchange(&mut stream, control_id).await
}

fn certificates() -> Option<tempfile::TempDir> {
    let directory = tempfile::tempdir().expect("tempdir");
    common::certs::certificates(directory.path())?;
    Some(directory)
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_accepted_and_a_1_3_minimum_refuses_1_2() {
    let Some(certs) = certificates() else { return };
    let app = start(certs.path(), &[]).await;
    let v12 = client(certs.path(), &rustls::version::TLS12, None);
    let v13 = client(certs.path(), &rustls::version::TLS13, None);
    assert_eq!(over_tls(&app, &v12, "V12").await, Ok("AA".to_owned()));
    assert_eq!(over_tls(&app, &v13, "V13").await, Ok("AA".to_owned()));
    assert_eq!(common::stored_control_ids(app.outbox()), ["V12", "V13"]);
    app.shutdown(Duration::from_secs(5)).await;

    let app = start(certs.path(), &[("TLS_MIN_VERSION", "1.3")]).await;
    let refused = over_tls(&app, &v12, "OLD").await;
    assert!(refused.is_err(), "TLS 1.2 refused: {refused:?}");
    assert_eq!(over_tls(&app, &v13, "NEW").await, Ok("AA".to_owned()));
    assert_eq!(common::stored_control_ids(app.outbox()), ["NEW"]);
    assert_eq!(app.stats().tls_handshake_failures, 1);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused() {
    let Some(certs) = certificates() else { return };
    let app = start(certs.path(), &[]).await;
    let addr = app.local_addr().to_string();
    for flag in ["-tls1", "-tls1_1"] {
        let args = ["s_client", "-connect", addr.as_str(), flag].map(str::to_owned);
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new("openssl")
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
        })
        .await
        .expect("task")
        .expect("openssl s_client");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success() || !text.contains("BEGIN CERTIFICATE"),
            "{flag} got a session:\n{text}"
        );
    }
    assert!(common::stored_control_ids(app.outbox()).is_empty());
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn mtls_lets_only_a_client_with_a_valid_certificate_through() {
    let Some(certs) = certificates() else { return };
    let ca = certs.path().join("ca.pem").display().to_string();
    let app = start(certs.path(), &[("TLS_CLIENT_CA", &ca)]).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let anonymous = client(certs.path(), version, None);
        let refused = over_tls(&app, &anonymous, "ANON").await;
        assert!(refused.is_err(), "no client certificate: {refused:?}");
        // A certificate from the right CA but not for client authentication.
        let wrong_use = client(certs.path(), version, Some("server"));
        let refused = over_tls(&app, &wrong_use, "WRONG").await;
        assert!(
            refused.is_err(),
            "a server certificate as client: {refused:?}"
        );
        let valid = client(certs.path(), version, Some("client"));
        assert_eq!(over_tls(&app, &valid, "VALID").await, Ok("AA".to_owned()));
    }
    let stored = common::stored_control_ids(app.outbox());
    assert_eq!(
        stored,
        ["VALID"],
        "nothing was read from the refused ones (one retransmit)"
    );
    assert_eq!(app.stats().tls_handshake_failures, 4);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_client_that_does_not_speak_tls_gets_nothing() {
    let Some(certs) = certificates() else { return };
    let app = start(certs.path(), &[]).await;
    let mut plain = common::connect(&app).await;
    let answer = exchange(&mut plain, "PLAIN").await;
    assert!(
        answer.is_err(),
        "a plain MLLP frame gets no ACK: {answer:?}"
    );
    assert!(common::stored_control_ids(app.outbox()).is_empty());
    assert_eq!(app.stats().tls_handshake_failures, 1);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn require_tls_refuses_a_listener_without_it_on_the_network() {
    let directory = tempfile::tempdir().expect("tempdir");
    let config = common::config(
        directory.path(),
        None,
        &[("LISTEN_ADDR", ":0"), ("REQUIRE_TLS", "true")],
    );
    let error = mfoundry::app::RunningApp::start(config)
        .await
        .expect_err("refused");
    assert!(
        format!("{error:#}").contains("REQUIRE_TLS is set but LISTEN_ADDR=:0 has no TLS"),
        "{error:#}"
    );
    // Loopback needs no TLS, even with REQUIRE_TLS.
    let app = common::start(&[("REQUIRE_TLS", "true")]).await;
    app.shutdown(Duration::from_secs(5)).await;
}

/// Replace `live.pem`/`live.key` with `name`.pem/`name`.key, each by an atomic rename.
fn install(directory: &Path, cert: &str, key: &str) {
    for (from, to) in [(cert, "live.pem"), (key, "live.key")] {
        let temporary = directory.join(format!("{to}.tmp"));
        std::fs::copy(directory.join(from), &temporary).expect("copy");
        std::fs::rename(&temporary, directory.join(to)).expect("rename");
    }
}

/// The leaf certificate a new handshake sees.
async fn presented(app: &common::TestApp, connector: &tokio_rustls::TlsConnector) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

fn leaf(directory: &Path, file: &str) -> Vec<u8> {
    CertificateDer::pem_file_iter(directory.join(file))
        .expect("pem")
        .next()
        .expect("a certificate")
        .expect("parses")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_drop_nothing_and_a_broken_pair_keeps_the_old_one() {
    let Some(certs) = certificates() else { return };
    let dir = certs.path();
    common::certs::another_server_certificate(dir, "second");
    install(dir, "server.pem", "server.key");
    let path = |name: &str| dir.join(name).display().to_string();
    let app = Arc::new(
        common::start(&[
            ("TLS_CERT_FILE", &path("live.pem")),
            ("TLS_KEY_FILE", &path("live.key")),
        ])
        .await,
    );
    // Four connections streaming messages over TLS while the certificate changes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streams: Vec<_> = (0..4)
        .map(|index| {
            let (app, stop) = (Arc::clone(&app), Arc::clone(&stop));
            let connector = client(dir, &rustls::version::TLS13, None);
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(app.local_addr())
                    .await
                    .expect("tcp");
                let name = ServerName::try_from("localhost").expect("name");
                let mut stream = connector.connect(name, tcp).await.expect("handshake");
                let mut sent = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = exchange(&mut stream, &format!("R{index}-{sent}")).await;
                    assert_eq!(answer, Ok("AA".to_owned()), "stream {index} message {sent}");
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let connector = client(dir, &rustls::version::TLS13, None);
    let pairs = [("second.pem", "second.key"), ("server.pem", "server.key")];
    for round in 0..100 {
        let (cert, key) = pairs[round % 2];
        install(dir, cert, key);
        assert_eq!(app.reload_tls(), Some(Ok(())), "reload {round}");
        if round % 10 == 0 {
            assert_eq!(
                presented(&app, &connector).await,
                leaf(dir, cert),
                "new handshakes see the new certificate (round {round})"
            );
        }
    }
    // A key that does not match the certificate: refused, the previous pair stays.
    install(dir, "second.pem", "server.key");
    let refused = app.reload_tls().expect("TLS is on");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(presented(&app, &connector).await, leaf(dir, "server.pem"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for stream in streams {
        let sent = stream.await.expect("no stream broke");
        assert!(sent > 0);
    }
    assert_eq!(app.stats().tls_handshake_failures, 0);

    // Without a call: a change on disk is picked up by the watcher.
    install(dir, "second.pem", "second.key");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presented(&app, &connector).await != leaf(dir, "second.pem") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = Arc::try_unwrap(app).expect("the only handle");
    app.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn sighup_reloads_the_certificate_files() {
    let Some(certs) = certificates() else { return };
    let dir = certs.path();
    std::fs::write(dir.join("gw.yaml"), "").expect("yaml");
    let path = |name: &str| dir.join(name).display().to_string();
    let (cert, key) = (path("server.pem"), path("server.key"));
    let server = common::Server::start(
        dir,
        "gw.yaml",
        "data",
        &[
            ("TLS_CERT_FILE", cert.as_str()),
            ("TLS_KEY_FILE", key.as_str()),
        ],
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    server.wait_for_log("TLS configuration reloaded", 1);
    server.stop();

    // Without TLS, SIGHUP is logged, not fatal.
    let server = common::Server::start(dir, "gw.yaml", "plain-data", &[]);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    server.wait_for_log("SIGHUP: TLS is off, nothing to reload", 1);
    server.stop();
}

#[tokio::test]
async fn allowed_peers_closes_other_addresses_before_reading_and_lets_listed_ones_in() {
    let app = common::start(&[("ALLOWED_PEERS", "10.0.0.0/8, fd00::/8")]).await;
    let mut stream = common::connect(&app).await;
    let answer = exchange(&mut stream, "DENIED").await;
    assert!(answer.is_err(), "127.0.0.1 is not listed: {answer:?}");
    assert!(common::stored_control_ids(app.outbox()).is_empty());
    assert_eq!(app.stats().connections_denied, 1);
    app.shutdown(Duration::from_secs(5)).await;

    let app = common::start(&[("ALLOWED_PEERS", "10.0.0.0/8,127.0.0.1")]).await;
    let mut stream = common::connect(&app).await;
    assert_eq!(exchange(&mut stream, "ALLOWED").await, Ok("AA".to_owned()));
    assert_eq!(app.stats().connections_denied, 0);
    app.shutdown(Duration::from_secs(5)).await;
}
