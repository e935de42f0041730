//! Client certificates (mTLS): only a valid certificate from the trusted CA gets through
//! (none, a server certificate, an untrusted, expired or revoked one are refused before
//! anything is read); a revocation list from another issuer leaves the status unknown and
//! refuses; an expired list is refused on reload and the current one stays.

use super::*;

#[tokio::test]
async fn mtls_lets_only_a_client_with_a_valid_certificate_through() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::untrusted_client(directory, "stranger");
    common::certs::expired_client(directory, "expired");
    common::certs::revoked_client(directory, "revoked");
    let path = |name: &str| directory.join(name).display().to_string();
    let (ca, crl) = (path("ca.pem"), path("crl.pem"));
    let app = start(
        directory,
        &[("TLS_CLIENT_CA", &ca), ("TLS_CLIENT_CRL", &crl)],
    )
    .await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        for (case, identity) in [
            ("no client certificate", None),
            ("a server certificate as client", Some("server")),
            ("a certificate from an untrusted CA", Some("stranger")),
            ("an expired certificate", Some("expired")),
            ("a revoked certificate", Some("revoked")),
        ] {
            let connector = client(directory, version, identity);
            let refused = over_tls(&app, &connector, "REFUSED").await;
            assert!(refused.is_err(), "{case} ({version:?}): {refused:?}");
        }
        let valid = client(directory, version, Some("client"));
        assert_eq!(over_tls(&app, &valid, "VALID").await, Ok("AA".to_owned()));
    }
    let stored = common::stored_control_ids(app.outbox());
    assert_eq!(
        stored,
        ["VALID"],
        "nothing was read from the refused ones (one retransmit)"
    );
    assert_eq!(app.stats().tls_handshake_failures, 10);
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_revocation_list_from_another_issuer_leaves_the_status_unknown_and_refuses() {
    let certs = certificates();
    let directory = certs.path();
    // The list is the untrusted CA's: no list covers the test CA's client certificates.
    common::certs::untrusted_client(directory, "stranger");
    let other = directory.join("other");
    std::fs::create_dir(&other).expect("dir");
    for file in ["other-ca.pem", "other-ca.key"] {
        std::fs::copy(directory.join(file), other.join(file.replace("other-", ""))).expect("copy");
    }
    common::certs::revocation_list(&other);
    let path = |name: &Path| name.display().to_string();
    let app = start(
        directory,
        &[
            ("TLS_CLIENT_CA", &path(&directory.join("ca.pem"))),
            ("TLS_CLIENT_CRL", &path(&other.join("crl.pem"))),
        ],
    )
    .await;
    let valid = client(directory, &rustls::version::TLS13, Some("client"));
    let refused = over_tls(&app, &valid, "UNKNOWN").await;
    assert!(refused.is_err(), "unknown status fails closed: {refused:?}");
    assert!(common::stored_control_ids(app.outbox()).is_empty());
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_expired_revocation_list_is_refused_and_the_current_one_stays() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::revocation_list(directory);
    common::certs::expired_revocation_list(directory);
    let path = |name: &str| directory.join(name).display().to_string();
    let live = directory.join("live-crl.pem");
    std::fs::copy(directory.join("crl.pem"), &live).expect("copy");
    let app = start(
        directory,
        &[
            ("TLS_CLIENT_CA", &path("ca.pem")),
            ("TLS_CLIENT_CRL", &live.display().to_string()),
        ],
    )
    .await;
    let valid = client(directory, &rustls::version::TLS13, Some("client"));
    assert_eq!(over_tls(&app, &valid, "BEFORE").await, Ok("AA".to_owned()));
    std::fs::copy(directory.join("old-crl.pem"), &live).expect("copy");
    let error = app.reload_tls().expect("TLS on").expect_err("refused");
    assert!(
        error.contains("expired") && error.contains("nextUpdate"),
        "{error}"
    );
    assert_eq!(over_tls(&app, &valid, "AFTER").await, Ok("AA".to_owned()));
    app.shutdown(Duration::from_secs(5)).await;
}
