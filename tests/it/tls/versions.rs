//! The TLS protocol versions a listener accepts: 1.2 (with an AEAD suite) and 1.3, a 1.3
//! minimum that refuses 1.2, and 1.0, 1.1 and CBC-only 1.2 refused; the old-protocol test
//! drives the `openssl s_client` command as a third-party client (skipped with a reason when
//! it is missing).

use super::*;

#[tokio::test]
async fn tls_1_2_and_1_3_are_accepted_and_a_1_3_minimum_refuses_1_2() {
    let certs = certificates();
    let app = start(certs.path(), &[]).await;
    let v12 = client(certs.path(), &rustls::version::TLS12, None);
    let v13 = client(certs.path(), &rustls::version::TLS13, None);
    assert_eq!(over_tls(&app, &v12, "V12").await, Ok("AA".to_owned()));
    let tcp = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let session = v12.connect(name, tcp).await.expect("handshake");
    let suite = format!(
        "{:?}",
        session
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .expect("suite")
            .suite()
    );
    assert!(
        suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
        "TLS 1.2 negotiates an AEAD suite: {suite}"
    );
    drop(session);
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
async fn tls_1_0_and_1_1_and_1_2_without_aead_are_refused() {
    let installed = std::process::Command::new("openssl")
        .arg("version")
        .output();
    if !installed.is_ok_and(|output| output.status.success()) {
        eprintln!("SKIPPED: the openssl command is the old-protocol client of this test");
        return;
    }
    let certs = certificates();
    let app = start(certs.path(), &[]).await;
    let addr = app.local_addr().to_string();
    // SECLEVEL=0 lets the local openssl offer what it would refuse by default, so the
    // refusal seen is the server's.
    for (case, flags) in [
        ("TLS 1.0", ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"]),
        ("TLS 1.1", ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]),
        (
            "TLS 1.2 with CBC suites only",
            [
                "-tls1_2",
                "-cipher",
                "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:AES128-SHA",
            ],
        ),
    ] {
        let mut args = vec!["s_client".to_owned(), "-connect".to_owned(), addr.clone()];
        args.extend(flags.map(str::to_owned));
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
            text.contains("Cipher is (NONE)") && !text.contains("BEGIN CERTIFICATE"),
            "{case} got a session:\n{text}"
        );
    }
    assert_eq!(
        app.stats().tls_handshake_failures,
        3,
        "each attempt reached the server and was refused there"
    );
    assert!(common::stored_control_ids(app.outbox()).is_empty());
    app.shutdown(Duration::from_secs(5)).await;
}
