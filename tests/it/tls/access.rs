//! Who gets to send at all: a client that does not speak TLS gets nothing (TCP probes are not
//! failed handshakes), `REQUIRE_TLS` refuses a network listener without TLS (loopback needs
//! none), and `ALLOWED_PEERS` closes other addresses before reading.

use super::*;

#[tokio::test]
async fn a_client_that_does_not_speak_tls_gets_nothing() {
    let certs = certificates();
    let app = start(certs.path(), &[]).await;
    // TCP probes (connect, close) are not failed handshakes.
    for _ in 0..3 {
        drop(common::connect(&app).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.stats().connections_active > 0 {
        assert!(tokio::time::Instant::now() < deadline, "probes closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.stats().tls_handshake_failures, 0);
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
