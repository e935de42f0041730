//! The listener's certificate on a running server: an expired pair is refused, on reload and
//! at start, while the days left are reported; a hundred reloads under load drop nothing, a
//! broken pair keeps the old one and a change on disk is picked up by the watcher; SIGHUP
//! reloads the files (and is only logged without TLS).

use super::*;

#[tokio::test]
async fn an_expired_certificate_is_refused_and_the_days_left_are_reported() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::expired_server(directory, "expired");
    let app = start(directory, &[]).await;
    let tls_stats = async || {
        mfoundry::tls::install_crypto_provider();
        let token =
            std::fs::read_to_string(app.directory.path().join("admin.token")).expect("admin token");
        let stats: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/stats", app.admin_url()))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        stats["listeners"][0]["tls"].clone()
    };
    let before = tls_stats().await;
    let days = before["certificate_days_left"].as_f64().expect("days left");
    assert!(
        (1.5..=2.01).contains(&days),
        "issued for two days: {before}"
    );

    // An expired pair is refused on reload; the current certificate stays in use.
    let live = leaf(directory, "server.pem");
    for (from, to) in [("expired.pem", "server.pem"), ("expired.key", "server.key")] {
        std::fs::copy(directory.join(from), directory.join(to)).expect("copy");
    }
    let error = app.reload_tls().expect("TLS on").expect_err("refused");
    assert!(
        error.contains("expired") && error.contains("server.pem"),
        "{error}"
    );
    let after = tls_stats().await;
    assert_eq!(after["reload_failures"], 1, "{after}");
    assert_eq!(
        after["certificate_days_left"],
        before["certificate_days_left"]
    );
    let connector = client(directory, &rustls::version::TLS13, None);
    assert_eq!(presented(&app, &connector).await, live);
    app.shutdown(Duration::from_secs(5)).await;

    // Starting with it is refused too, naming the file.
    let data = tempfile::tempdir().expect("tempdir");
    let env = tls_env(directory);
    let error = mfoundry::app::RunningApp::start(common::config(data.path(), None, &pairs(&env)))
        .await
        .expect_err("refused");
    assert!(format!("{error:#}").contains("expired"), "{error:#}");
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
    let certs = certificates();
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
    let certs = certificates();
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
    common::signal(&server.child, rustix::process::Signal::HUP);
    server.wait_for_log("TLS configuration reloaded", 1);
    server.stop();

    // Without TLS, SIGHUP is logged, not fatal.
    let server = common::Server::start(dir, "gw.yaml", "plain-data", &[]);
    common::signal(&server.child, rustix::process::Signal::HUP);
    server.wait_for_log("SIGHUP: this listener has no TLS, nothing to reload", 1);
    server.stop();
}
