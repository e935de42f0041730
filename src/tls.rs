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

/// Reload outcomes, for logs and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Configurations loaded after startup.
    pub reloads: std::sync::atomic::AtomicU64,
    /// Attempts that failed (the previous configuration stayed).
    pub failures: std::sync::atomic::AtomicU64,
}

/// The acceptor for one listener. Cheap to clone; a reload swaps the configuration for every
/// clone: new handshakes use it, established connections keep their session.
#[derive(Clone)]
pub struct TlsServer {
    current: Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>,
    settings: TlsSettings,
    stats: Arc<ReloadStats>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsServer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Load the files and build the acceptor.
    pub fn load(settings: &TlsSettings) -> Result<Self, String> {
        Ok(Self {
            current: Arc::new(std::sync::RwLock::new(tokio_rustls::TlsAcceptor::from(
                server_config(settings)?,
            ))),
            settings: settings.clone(),
            stats: Arc::default(),
        })
    }

    /// Reload counters.
    pub fn stats(&self) -> &ReloadStats {
        &self.stats
    }

    /// Build a new configuration from the files and swap it in. On any problem the current
    /// one stays and the reason is returned (it names the file, never key material).
    pub fn reload(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        match server_config(&self.settings) {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = tokio_rustls::TlsAcceptor::from(config);
                }
                self.stats.reloads.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(error) => {
                self.stats.failures.fetch_add(1, Relaxed);
                Err(error)
            }
        }
    }

    fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.current.read().ok().map(|acceptor| acceptor.clone())
    }

    /// Run the handshake on an accepted connection, within the handshake timeout.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
        let acceptor = self
            .acceptor()
            .ok_or_else(|| "the TLS configuration is not readable".to_owned())?;
        match tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "no handshake within TLS_HANDSHAKE_TIMEOUT ({:?})",
                self.settings.handshake_timeout
            )),
        }
    }

    /// Size and modification time of every file the configuration is built from.
    fn fingerprint(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        let mut files = vec![&self.settings.cert_file, &self.settings.key_file];
        if let Some(ca) = &self.settings.client_ca {
            files.push(ca);
        }
        files
            .into_iter()
            .map(|path| {
                std::fs::metadata(path)
                    .ok()
                    .and_then(|meta| Some((meta.modified().ok()?, meta.len())))
            })
            .collect()
    }
}

/// How often the certificate files are looked at (Kubernetes updates mounted secrets without
/// a signal).
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Reload on SIGHUP, and when a file's size or modification time changes, until `shutdown`.
/// A new set of files is tried once (a half-written pair fails, the next write of the pair is
/// tried again); a failure keeps the previous configuration and is logged.
pub async fn watch(server: TlsServer, shutdown: tokio_util::sync::CancellationToken) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut attempted = server.fingerprint();
    loop {
        #[cfg(unix)]
        let signalled = async {
            match hangup.as_mut() {
                Some(hangup) => {
                    hangup.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let reason = tokio::select! {
            () = shutdown.cancelled() => return,
            () = signalled => "SIGHUP",
            () = tokio::time::sleep(RELOAD_POLL) => {
                let now = server.fingerprint();
                if now == attempted {
                    continue;
                }
                attempted = now;
                "the files changed"
            }
        };
        match server.reload() {
            Ok(()) => tracing::info!(reason, "TLS configuration reloaded; new handshakes use it"),
            Err(error) => {
                tracing::warn!(reason, error = %error, "TLS configuration not reloaded; the previous one stays")
            }
        }
    }
}
