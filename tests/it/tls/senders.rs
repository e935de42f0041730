//! `tls_senders`: a client certificate mapped to the sending applications and facilities it
//! may send as (every receipt audited with the certificate it came over), an identity bound
//! to its issuer when several CAs are trusted, the list's checks at load (not empty, mTLS on),
//! and a reserved connection slot for a known sender when the listener is full.

use super::*;

#[tokio::test]
async fn tls_senders_maps_a_certificate_to_the_senders_it_may_send_as() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::client_named(
        directory,
        "lab",
        "/CN=lab gateway/O=North Hospital",
        "DNS:lab.north.example",
    );
    let path = |name: &str| directory.join(name).display().to_string();
    let yaml = "tls_senders:\n  - identity: lab.north.example\n    sending_applications: [LAB]\n    sending_facilities: [NORTH, SOUTH]\n";
    let app = start_with(directory, Some(yaml), &[("TLS_CLIENT_CA", &path("ca.pem"))]).await;
    let message = |control_id: &str, application: &str, facility: &str| {
        String::from_utf8(common::adt(control_id, "2.5"))
            .expect("text")
            .replacen("SENDAPP|SENDFAC", &format!("{application}|{facility}"), 1)
            .into_bytes()
    };
    let send = async |identity: &str, frame: Vec<u8>| {
        let connector = client(directory, &rustls::version::TLS13, Some(identity));
        over_tls_message(&app, &connector, &frame).await
    };
    assert_eq!(
        send("lab", message("OK1", "LAB", "NORTH")).await,
        Ok("AA".to_owned())
    );
    assert_eq!(
        send("lab", message("OK2", "LAB", "SOUTH")).await,
        Ok("AA".to_owned())
    );
    assert_eq!(
        send("lab", message("BADAPP", "PHARMACY", "NORTH")).await,
        Ok("AR".to_owned())
    );
    assert_eq!(
        send("lab", message("BADFAC", "LAB", "EAST")).await,
        Ok("AR".to_owned())
    );
    // A valid certificate that no entry names may not send at all.
    assert_eq!(
        send("client", message("UNMAPPED", "LAB", "NORTH")).await,
        Ok("AR".to_owned())
    );

    // Every message is audited with the certificate it came over.
    let received = audited(&app).await;
    let lab = "subject=CN=lab gateway, O=North Hospital; issuer=CN=mfoundry test CA; names=CN:lab gateway,DNS:lab.north.example";
    let other = "subject=CN=mfoundry; issuer=CN=mfoundry test CA; names=CN:mfoundry";
    assert_eq!(
        received,
        [
            ("OK1", "AA", lab),
            ("OK2", "AA", lab),
            ("BADAPP", "AR", lab),
            ("BADFAC", "AR", lab),
            ("UNMAPPED", "AR", other),
        ]
        .map(|(id, code, identity)| (id.to_owned(), code.to_owned(), identity.to_owned()))
    );
    app.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn tls_senders_binds_an_identity_to_its_issuer_when_several_cas_are_trusted() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::untrusted_client(directory, "stranger");
    common::certs::client_named(directory, "lab", "/CN=lab", "DNS:lab.north.example");
    // Another trusted CA issues a certificate with the same name.
    common::certs::client_named_by(
        directory,
        "other-ca",
        "impostor",
        "/CN=lab",
        "DNS:lab.north.example",
    );
    let bundle = directory.join("bundle.pem");
    let mut text = std::fs::read_to_string(directory.join("ca.pem")).expect("ca");
    text.push_str(&std::fs::read_to_string(directory.join("other-ca.pem")).expect("other"));
    std::fs::write(&bundle, text).expect("bundle");
    let yaml = "tls_senders:\n  - identity: lab.north.example\n    issuer: CN=mfoundry test CA\n    sending_applications: [\"*\"]\n    sending_facilities: [\"*\"]\n  - identity: \"CN=lab\"\n    issuer: CN=another CA\n    sending_applications: [ONLY]\n    sending_facilities: [ONLY]\n";
    let bundle = bundle.display().to_string();
    let app = start_with(directory, Some(yaml), &[("TLS_CLIENT_CA", &bundle)]).await;
    let send = async |identity: &str, control_id: &str| {
        let connector = client(directory, &rustls::version::TLS13, Some(identity));
        over_tls(&app, &connector, control_id).await
    };
    assert_eq!(send("lab", "REAL").await, Ok("AA".to_owned()));
    // Same name, other issuer: only the second entry (whole subject, its own issuer) applies,
    // and it does not allow SENDAPP.
    assert_eq!(send("impostor", "FAKE").await, Ok("AR".to_owned()));
    app.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn an_empty_tls_senders_list_is_refused() {
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("senders.yaml");
    std::fs::write(&file, "tls_senders: []\n").expect("write");
    let errors = mfoundry::config::Config::load_with(Some(&file), &|_| None)
        .expect_err("refused")
        .to_string();
    assert!(errors.contains("tls_senders is empty"), "{errors}");
}

#[tokio::test]
async fn tls_senders_needs_mtls() {
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("senders.yaml");
    std::fs::write(
        &file,
        "tls_senders:\n  - identity: lab.north.example\n    sending_applications: [LAB]\n    sending_facilities: []\n",
    )
    .expect("write");
    let errors = mfoundry::config::Config::load_with(Some(&file), &|_| None)
        .expect_err("refused")
        .to_string();
    assert!(
        errors.contains("sending_facilities")
            && errors.contains("tls_senders maps client certificates")
            && errors.contains("TLS_CLIENT_CA"),
        "{errors}"
    );
}

/// With mTLS and `tls_senders`, a known sender still gets in when MAX_CONNECTIONS are held
/// by others (idle TCP connections and a client with a valid but unlisted certificate): it
/// takes one of the reserved slots, while the unlisted certificate is refused.
#[tokio::test]
async fn a_known_sender_gets_a_reserved_slot_when_the_listener_is_full() {
    let certs = certificates();
    let directory = certs.path();
    common::certs::client_named(
        directory,
        "lab",
        "/CN=lab gateway/O=North Hospital",
        "DNS:lab.north.example",
    );
    let path = |name: &str| directory.join(name).display().to_string();
    let yaml = "tls_senders:\n  - identity: lab.north.example\n    sending_applications: [\"*\"]\n    sending_facilities: [\"*\"]\n";
    let app = start_with(
        directory,
        Some(yaml),
        &[("TLS_CLIENT_CA", &path("ca.pem")), ("MAX_CONNECTIONS", "4")],
    )
    .await;
    // Four idle connections (a flood that never handshakes) hold every slot.
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(
            tokio::net::TcpStream::connect(app.local_addr())
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A valid certificate that no entry names: refused (no reserved slot for it).
    let unlisted = client(directory, &rustls::version::TLS13, Some("client"));
    assert!(over_tls(&app, &unlisted, "UNLISTED").await.is_err());
    // The known sender: served from the reserve, twice in a row.
    let lab = client(directory, &rustls::version::TLS13, Some("lab"));
    assert_eq!(over_tls(&app, &lab, "KNOWN1").await, Ok("AA".to_owned()));
    assert_eq!(over_tls(&app, &lab, "KNOWN2").await, Ok("AA".to_owned()));
    let stats = app.stats();
    assert!(stats.connections_refused >= 1, "{stats:?}");
    drop(flood);
    app.shutdown(Duration::from_secs(5)).await;
}
