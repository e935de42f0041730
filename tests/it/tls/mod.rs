//! MLLP over TLS as senders meet it, and mfoundry as a TLS client. Test certificates are made
//! in-process (`common::certs`). This file holds what every part shares: a server with TLS
//! on, rustls clients of one protocol version (with an optional client certificate), one
//! exchange over TLS, certificate files swapped in by rename, and the client identities the
//! audit trail recorded. The tests, by subject:
//!
//! - [`versions`]: the protocol versions and cipher suites a listener accepts;
//! - [`client_certificates`]: client certificates (mTLS) and revocation lists;
//! - [`senders`]: `tls_senders`, a certificate mapped to the senders it may send as;
//! - [`access`]: a client that does not speak TLS, `REQUIRE_TLS` and `ALLOWED_PEERS`;
//! - [`reload`]: the listener's certificate changed or expired on a running server;
//! - [`outgoing`]: mfoundry as a TLS client (the MLLP connector, `send`, `bench`).

mod access;
mod client_certificates;
mod outgoing;
mod reload;
mod senders;
mod versions;

use crate::common;

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

/// Borrowed pairs, as the app helpers take them.
fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

async fn start(directory: &Path, extra: &[(&str, &str)]) -> common::TestApp {
    start_with(directory, None, extra).await
}

/// Start with TLS on, a YAML file and `extra` environment.
async fn start_with(
    directory: &Path,
    yaml: Option<&str>,
    extra: &[(&str, &str)],
) -> common::TestApp {
    let env = tls_env(directory);
    let mut env = pairs(&env);
    env.extend_from_slice(extra);
    common::start_with_yaml(yaml, &env).await
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
    exchange_message(stream, &common::adt(control_id, "2.5")).await
}

/// Send one message and return the ACK's MSA-1, or the error that ended the exchange.
async fn exchange_message<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    message: &[u8],
) -> Result<String, String> {
    stream
        .write_all(&common::framed(message))
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

/// Connect over TLS and exchange one ADT.
async fn over_tls(
    app: &common::TestApp,
    connector: &tokio_rustls::TlsConnector,
    control_id: &str,
) -> Result<String, String> {
    over_tls_message(app, connector, &common::adt(control_id, "2.5")).await
}

/// Connect over TLS and exchange `message`.
async fn over_tls_message(
    app: &common::TestApp,
    connector: &tokio_rustls::TlsConnector,
    message: &[u8],
) -> Result<String, String> {
    let tcp = tokio::net::TcpStream::connect(app.local_addr())
        .await
        .map_err(|error| error.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|error| format!("handshake: {error}"))?;
    exchange_message(&mut stream, message).await
}

fn certificates() -> tempfile::TempDir {
    let directory = tempfile::tempdir().expect("tempdir");
    common::certs::certificates(directory.path());
    directory
}

/// Replace `live.pem`/`live.key` with `name`.pem/`name`.key, each by an atomic rename.
fn install(directory: &Path, cert: &str, key: &str) {
    for (from, to) in [(cert, "live.pem"), (key, "live.key")] {
        let temporary = directory.join(format!("{to}.tmp"));
        std::fs::copy(directory.join(from), &temporary).expect("copy");
        std::fs::rename(&temporary, directory.join(to)).expect("rename");
    }
}

/// The client identities a server's audit trail recorded, in order.
async fn audited_identities(app: &common::TestApp) -> Vec<String> {
    audited(app)
        .await
        .into_iter()
        .map(|(_, _, identity)| identity)
        .collect()
}

/// (control id, ACK code, client identity) of every audited receipt, in order.
async fn audited(app: &common::TestApp) -> Vec<(String, String, String)> {
    app.outbox()
        .read(|snapshot| snapshot.audit_records(None, 1000))
        .await
        .expect("audit")
        .into_iter()
        .filter_map(|(_, record)| match record.event {
            mfoundry::outbox::audit::AuditEvent::Received {
                control_id,
                ack_code,
                tls_identity,
                ..
            } => Some((control_id, ack_code, tls_identity.unwrap_or_default())),
            _ => None,
        })
        .collect()
}
