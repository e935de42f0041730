//! TLS for the MLLP listener: the server configuration built from PEM files (rustls with the
//! ring provider; certificates read with rustls-pki-types), optional client certificates
//! (mTLS), the minimum protocol version.
//!
//! Errors name the setting and the file, never key material.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The lowest TLS version accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (AEAD suites only) and 1.3.
    V1_2,
    /// TLS 1.3 only.
    V1_3,
}

/// Inbound TLS settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `TLS_CERT_FILE`: the server's certificate chain, PEM, leaf first.
    pub cert_file: PathBuf,
    /// `TLS_KEY_FILE`: its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// `TLS_CLIENT_CA`: CA certificates, PEM; when set, every client must present a
    /// certificate signed by one of them (mTLS).
    pub client_ca: Option<PathBuf>,
    /// `TLS_MIN_VERSION`.
    pub min_version: TlsVersion,
    /// `TLS_HANDSHAKE_TIMEOUT`: a handshake not done by then closes the connection.
    pub handshake_timeout: Duration,
}

fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("{setting} {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{setting} {}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{setting} {}: no PEM certificate found",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Build and check the server configuration: the chain parses, the key matches the leaf
/// certificate, the client CA (if any) parses.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&settings.cert_file, "TLS_CERT_FILE")?;
    let key = PrivateKeyDer::from_pem_file(&settings.key_file).map_err(|error| {
        format!(
            "TLS_KEY_FILE {}: no usable private key ({error})",
            settings.key_file.display()
        )
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|error| format!("TLS_MIN_VERSION: {error}"))?;
    let builder = match &settings.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(path, "TLS_CLIENT_CA")? {
                roots
                    .add(certificate)
                    .map_err(|error| format!("TLS_CLIENT_CA {}: {error}", path.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|error| format!("TLS_CLIENT_CA {}: {error}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|error| {
        format!(
            "TLS_CERT_FILE/TLS_KEY_FILE ({}, {}): {error}",
            settings.cert_file.display(),
            settings.key_file.display()
        )
    })?;
    Ok(Arc::new(config))
}

/// The acceptor for one listener.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsServer")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Load the files and build the acceptor.
    pub fn load(settings: &TlsSettings) -> Result<Self, String> {
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(server_config(settings)?),
            handshake_timeout: settings.handshake_timeout,
        })
    }

    /// Run the handshake on an accepted connection, within the handshake timeout.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no handshake within TLS_HANDSHAKE_TIMEOUT ({:?})",
                self.handshake_timeout
            )),
        }
    }
}
