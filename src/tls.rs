//! TLS for the MLLP listener: the server configuration built from PEM files (rustls with the
//! ring provider; certificates read with rustls-pki-types), optional client certificates
//! (mTLS) with revocation lists, the minimum protocol version, the client certificate's
//! identity and the senders (MSH-3/MSH-4) each identity may send as.
//!
//! Errors name the setting and the file, never key material.

mod client_stream;

pub use client_stream::ClientStream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// Install the process's TLS crypto provider (ring) once; later calls do nothing. Everything
/// that builds a rustls configuration calls it first (listeners, outputs, the OTLP exporter,
/// the CLI's admin client).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

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
    /// `TLS_CLIENT_CRL`: certificate revocation lists, PEM, one per CA of `TLS_CLIENT_CA`;
    /// a client certificate whose status is unknown (no list from its issuer, or an expired
    /// list) is refused.
    pub client_crl: Option<PathBuf>,
    /// `TLS_MIN_VERSION`.
    pub min_version: TlsVersion,
    /// `TLS_HANDSHAKE_TIMEOUT`: a handshake not done by then closes the connection.
    pub handshake_timeout: Duration,
}

/// Every PEM item of one kind in `path`, at least one; errors name `setting`, the file and
/// `what` was looked for.
fn pem_items<T: PemObject>(path: &Path, setting: &str, what: &str) -> Result<Vec<T>, String> {
    let items: Vec<T> = T::pem_file_iter(path)
        .map_err(|error| format!("{setting} {}: {error}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|error| format!("{setting} {}: {error}", path.display()))?;
    if items.is_empty() {
        return Err(format!("{setting} {}: no {what} found", path.display()));
    }
    Ok(items)
}

fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    pem_items(path, setting, "PEM certificate")
}

/// When a certificate stops being valid, in seconds since the Unix epoch.
pub fn not_after(certificate: &CertificateDer<'_>) -> Result<i64, String> {
    x509_parser::parse_x509_certificate(certificate.as_ref())
        .map(|(_, parsed)| parsed.validity().not_after.timestamp())
        .map_err(|error| format!("the certificate cannot be read: {error}"))
}

fn revocation_lists(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let lists: Vec<CertificateRevocationListDer<'static>> = pem_items(
        path,
        "TLS_CLIENT_CRL",
        "PEM revocation list (-----BEGIN X509 CRL-----)",
    )?;
    // A list past its nextUpdate would refuse every client (unknown status): keep the
    // previous lists instead, and say which one is stale.
    let now = chrono::Utc::now().timestamp();
    for (index, list) in lists.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_crl(list.as_ref()).map_err(|error| {
            format!(
                "TLS_CLIENT_CRL {}: list {} cannot be read: {error}",
                path.display(),
                index + 1
            )
        })?;
        if let Some(next) = parsed.next_update()
            && next.timestamp() <= now
        {
            return Err(format!(
                "TLS_CLIENT_CRL {}: the list issued by {} expired at {} (nextUpdate); publish a new one",
                path.display(),
                parsed.issuer(),
                format_time(next.timestamp())
            ));
        }
    }
    Ok(lists)
}

/// A checked server configuration and when its certificate expires.
#[derive(Debug)]
pub struct LoadedServer {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Build and check the server configuration: the chain parses, the leaf certificate has not
/// expired, the key matches it, the client CA and revocation lists (if any) parse.
pub fn server_config(settings: &TlsSettings) -> Result<LoadedServer, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&settings.cert_file, "TLS_CERT_FILE")?;
    let not_after = not_after(&chain[0])
        .map_err(|error| format!("TLS_CERT_FILE {}: {error}", settings.cert_file.display()))?;
    let now = chrono::Utc::now().timestamp();
    if not_after <= now {
        return Err(format!(
            "TLS_CERT_FILE {}: the certificate expired at {}; install a renewed one",
            settings.cert_file.display(),
            format_time(not_after)
        ));
    }
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
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if let Some(crl) = &settings.client_crl {
                // Unknown status (no list from the issuer, or a list past its nextUpdate)
                // is refused: that is rustls' default, plus the expiry check.
                verifier = verifier
                    .with_crls(revocation_lists(crl)?)
                    .enforce_revocation_expiration();
            }
            let verifier = verifier
                .build()
                .map_err(|error| match &settings.client_crl {
                    Some(crl) => format!(
                        "TLS_CLIENT_CA {} / TLS_CLIENT_CRL {}: {error}",
                        path.display(),
                        crl.display()
                    ),
                    None => format!("TLS_CLIENT_CA {}: {error}", path.display()),
                })?;
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
    Ok(LoadedServer {
        config: Arc::new(config),
        not_after,
    })
}

/// A Unix time as RFC 3339 (UTC), for messages.
fn format_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map_or_else(|| seconds.to_string(), |time| time.to_rfc3339())
}

/// Why an inbound TLS handshake did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The peer closed (or reset) the connection before sending anything: a TCP health
    /// check or port probe, not a failed handshake.
    Silent,
    /// The handshake failed or took too long; the reason, without key material.
    Failed(String),
}

/// Reload outcomes, for logs and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Configurations loaded after startup.
    pub reloads: std::sync::atomic::AtomicU64,
    /// Attempts that failed (the previous configuration stayed).
    pub failures: std::sync::atomic::AtomicU64,
    /// The current certificate's notAfter, seconds since the Unix epoch.
    pub not_after: std::sync::atomic::AtomicI64,
}

impl ReloadStats {
    /// Days until the current certificate expires (negative once it has).
    pub fn days_left(&self) -> f64 {
        let left = self.not_after.load(std::sync::atomic::Ordering::Relaxed)
            - chrono::Utc::now().timestamp();
        left as f64 / 86_400.0
    }
}

/// Below this many days left, the certificate's coming expiry is logged as a warning (at
/// load, at each reload and once a day).
pub const EXPIRY_WARNING_DAYS: f64 = 30.0;

/// The acceptor for one listener. Cheap to clone; a reload swaps the configuration for every
/// clone: new handshakes use it, established connections keep their session.
#[derive(Clone)]
pub struct TlsServer {
    current: Arc<std::sync::RwLock<tokio_rustls::TlsAcceptor>>,
    settings: TlsSettings,
    stats: Arc<ReloadStats>,
    /// The files as they were just before the first load, so a change made while loading is
    /// noticed by [`watch`].
    loaded_from: Fingerprint,
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
        let loaded_from = server_fingerprint(settings);
        let loaded = server_config(settings)?;
        let stats = ReloadStats::default();
        stats
            .not_after
            .store(loaded.not_after, std::sync::atomic::Ordering::Relaxed);
        let server = Self {
            current: Arc::new(std::sync::RwLock::new(tokio_rustls::TlsAcceptor::from(
                loaded.config,
            ))),
            settings: settings.clone(),
            stats: Arc::new(stats),
            loaded_from,
        };
        server.warn_if_expiring();
        Ok(server)
    }

    /// Log a warning when the certificate expires within [`EXPIRY_WARNING_DAYS`].
    fn warn_if_expiring(&self) -> bool {
        let days_left = self.stats.days_left();
        if days_left < EXPIRY_WARNING_DAYS {
            tracing::warn!(
                days_left = days_left.floor(),
                file = %self.settings.cert_file.display(),
                expires = %format_time(self.stats.not_after.load(std::sync::atomic::Ordering::Relaxed)),
                "the MLLP listener's TLS certificate expires soon; install a renewed one (it is picked up without a restart)"
            );
            return true;
        }
        false
    }

    /// Reload counters and the certificate's expiry.
    pub fn stats(&self) -> Arc<ReloadStats> {
        Arc::clone(&self.stats)
    }

    /// Build a new configuration from the files and swap it in. On any problem the current
    /// one stays and the reason is returned (it names the file, never key material).
    pub fn reload(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        match server_config(&self.settings) {
            Ok(loaded) => {
                if let Ok(mut current) = self.current.write() {
                    *current = tokio_rustls::TlsAcceptor::from(loaded.config);
                }
                self.stats.not_after.store(loaded.not_after, Relaxed);
                self.stats.reloads.fetch_add(1, Relaxed);
                self.warn_if_expiring();
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

    /// Whether client certificates are asked for (`TLS_CLIENT_CA`).
    pub fn mutual(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// Run the handshake on an accepted connection, within the handshake timeout.
    pub async fn accept(
        &self,
        stream: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, HandshakeError> {
        let acceptor = self.acceptor().ok_or_else(|| {
            HandshakeError::Failed("the TLS configuration is not readable".to_owned())
        })?;
        let timed_out = || {
            HandshakeError::Failed(format!(
                "no handshake within TLS_HANDSHAKE_TIMEOUT ({:?})",
                self.settings.handshake_timeout
            ))
        };
        let deadline = tokio::time::Instant::now() + self.settings.handshake_timeout;
        // A peer that closes before sending a byte (a load balancer's or a port check's TCP
        // probe) did not try a handshake at all.
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(0) | Err(_)) => return Err(HandshakeError::Silent),
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(HandshakeError::Failed(error.to_string())),
            Err(_) => Err(timed_out()),
        }
    }

    /// The [`Fingerprint`] of every file the configuration is built from.
    fn fingerprint(&self) -> Fingerprint {
        server_fingerprint(&self.settings)
    }
}

fn server_fingerprint(settings: &TlsSettings) -> Fingerprint {
    fingerprint(
        [&settings.cert_file, &settings.key_file]
            .into_iter()
            .chain(&settings.client_ca)
            .chain(&settings.client_crl),
    )
}

/// How often the certificate files are looked at (Kubernetes updates mounted secrets without
/// a signal).
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Reload on SIGHUP, and when a file's size or modification time changes, until `shutdown`.
/// A new set of files is tried once (a half-written pair fails, the next write of the pair is
/// tried again); a failure keeps the previous configuration and is logged.
pub async fn watch(
    server: TlsServer,
    mut hangups: crate::shutdown::Hangups,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut attempted = server.loaded_from.clone();
    let mut last_expiry_check = tokio::time::Instant::now();
    loop {
        if last_expiry_check.elapsed() >= Duration::from_secs(86_400) {
            last_expiry_check = tokio::time::Instant::now();
            server.warn_if_expiring();
        }
        let signalled = hangups.recv();
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
        // Reading and checking the files is blocking work: off the runtime's threads.
        let reloading = server.clone();
        let outcome = tokio::task::spawn_blocking(move || reloading.reload())
            .await
            .unwrap_or_else(|error| Err(format!("the reload task failed: {error}")));
        match outcome {
            Ok(()) => tracing::info!(reason, "TLS configuration reloaded; new handshakes use it"),
            Err(error) => {
                tracing::warn!(reason, error = %error, "TLS configuration not reloaded; the previous one stays")
            }
        }
    }
}

/// Longest identity text kept in an audit record.
const MAX_IDENTITY_TEXT: usize = 512;

/// What a client certificate names: its subject and its subject alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject, as x509-parser prints it, in the certificate's order
    /// (`CN=lab.north, O=North Hospital`).
    pub subject: String,
    /// The issuer (the CA that signed it), printed the same way.
    pub issuer: String,
    /// The subject's common names, then its DNS, e-mail, URI and IP alternative names.
    pub names: Vec<String>,
    /// The audit record's text, made once per connection (see [`PeerIdentity::audit_text`]).
    audit: String,
}

impl PeerIdentity {
    /// Read the identity of a (verified) client certificate; `None` if it does not parse.
    pub fn from_certificate(certificate: &CertificateDer<'_>) -> Option<Self> {
        use x509_parser::extensions::GeneralName;
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
        let mut names = Vec::new();
        let mut labelled = Vec::new();
        let mut push = |kind: &str, name: String| {
            labelled.push(format!("{kind}:{name}"));
            names.push(name);
        };
        for common_name in parsed.subject().iter_common_name() {
            if let Ok(text) = common_name.as_str() {
                push("CN", text.to_owned());
            }
        }
        if let Ok(Some(alternative)) = parsed.subject_alternative_name() {
            for name in &alternative.value.general_names {
                match name {
                    GeneralName::DNSName(text) => push("DNS", (*text).to_owned()),
                    GeneralName::RFC822Name(text) => push("email", (*text).to_owned()),
                    GeneralName::URI(text) => push("URI", (*text).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        let address = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes)
                                .ok()
                                .map(|octets| std::net::IpAddr::from(octets).to_string()),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .ok()
                                .map(|octets| std::net::IpAddr::from(octets).to_string()),
                            _ => None,
                        };
                        if let Some(address) = address {
                            push("IP", address);
                        }
                    }
                    _ => {}
                }
            }
        }
        let subject = parsed.subject().to_string();
        let issuer = parsed.issuer().to_string();
        let mut audit = format!(
            "subject={subject}; issuer={issuer}; names={}",
            labelled.join(",")
        );
        if audit.len() > MAX_IDENTITY_TEXT {
            let mut end = MAX_IDENTITY_TEXT;
            while !audit.is_char_boundary(end) {
                end -= 1;
            }
            audit.truncate(end);
        }
        Some(Self {
            subject,
            issuer,
            names,
            audit,
        })
    }

    /// The text stored in the audit record: `subject=…; issuer=…; names=CN:…,DNS:…` (the
    /// names with their kind: `CN:`, `DNS:`, `email:`, `URI:`, `IP:`), at most 512 bytes.
    pub fn audit_text(&self) -> &str {
        &self.audit
    }

    /// Whether `identity` (as written in `tls_senders`) names this certificate: with an `=`
    /// it is a whole subject, compared exactly; otherwise one of its names, compared without
    /// regard to ASCII case.
    pub fn matches(&self, identity: &str) -> bool {
        if identity.contains('=') {
            self.subject == identity
        } else {
            self.names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(identity))
        }
    }
}

/// One `tls_senders` entry: a client certificate identity and the senders it may send as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderRule {
    /// A common name, DNS/e-mail/URI/IP alternative name, or whole subject.
    pub identity: String,
    /// When set, the certificate's issuer (whole subject of the signing CA) must equal it.
    pub issuer: Option<String>,
    /// Allowed MSH-3.1 values; `*` allows any.
    pub sending_applications: Vec<String>,
    /// Allowed MSH-4.1 values; `*` allows any.
    pub sending_facilities: Vec<String>,
}

/// Why a message's sender does not fit its connection's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenderRefusal {
    /// The connection has no client certificate.
    NoCertificate,
    /// No `tls_senders` entry names the certificate.
    UnknownIdentity,
    /// MSH-3 is not one the certificate may send as.
    Application,
    /// MSH-4 is not one the certificate may send as (with an allowed MSH-3).
    Facility,
}

/// The `tls_senders` mapping. Fails closed: once configured, a certificate it does not name
/// may not send at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderMap {
    rules: Vec<SenderRule>,
}

impl SenderMap {
    /// A mapping from its entries.
    pub fn new(rules: Vec<SenderRule>) -> Self {
        Self { rules }
    }

    /// Whether an entry names this certificate (identity and issuer): a known sender.
    pub fn knows(&self, identity: &PeerIdentity) -> bool {
        self.rules.iter().any(|rule| {
            identity.matches(&rule.identity)
                && rule
                    .issuer
                    .as_ref()
                    .is_none_or(|issuer| *issuer == identity.issuer)
        })
    }

    /// Whether a message with MSH-3.1 `application` and MSH-4.1 `facility` may come over a
    /// connection with this identity.
    pub fn check(
        &self,
        identity: Option<&PeerIdentity>,
        application: &[u8],
        facility: &[u8],
    ) -> Result<(), SenderRefusal> {
        let identity = identity.ok_or(SenderRefusal::NoCertificate)?;
        let allows = |allowed: &[String], value: &[u8]| {
            allowed
                .iter()
                .any(|entry| entry == "*" || entry.as_bytes() == value)
        };
        let mut named = false;
        let mut application_allowed = false;
        for rule in self.rules.iter().filter(|rule| {
            identity.matches(&rule.identity)
                && rule
                    .issuer
                    .as_ref()
                    .is_none_or(|issuer| *issuer == identity.issuer)
        }) {
            named = true;
            if allows(&rule.sending_applications, application) {
                application_allowed = true;
                if allows(&rule.sending_facilities, facility) {
                    return Ok(());
                }
            }
        }
        Err(match (named, application_allowed) {
            (false, _) => SenderRefusal::UnknownIdentity,
            (true, false) => SenderRefusal::Application,
            (true, true) => SenderRefusal::Facility,
        })
    }
}

/// Outbound TLS: an MLLP connector's, or `mfoundry send`'s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// PEM CA certificates trusted in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (leaf first) presented to the peer.
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM.
    pub key_file: Option<PathBuf>,
    /// The name the peer's certificate must carry (DNS name or IP address); `None` where
    /// the caller passes it per connection (PostgreSQL takes it from the connection string).
    pub server_name: Option<String>,
}

/// Build and check a client configuration from the files. `what` prefixes error messages
/// (`tls_ca_file` for a connector, `--tls-ca` for the command line).
pub fn client_config(
    settings: &ClientTlsSettings,
    names: [&str; 3],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let [ca_name, cert_name, key_name] = names;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra = match &settings.ca_file {
        Some(path) => certificates(path, ca_name)?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, Arc::clone(&provider))
            .map_err(|error| format!("the trusted CA certificates cannot be loaded: {error}"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert, cert_name)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                format!(
                    "{key_name} {}: no usable private key ({error})",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("{cert_name}/{key_name}: {error}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(format!("set both {cert_name} and {key_name}, or neither")),
    };
    Ok(Arc::new(config))
}

/// Outbound TLS with reload: the files are looked at before each new connection, and a
/// changed set is loaded (a broken one keeps the previous configuration and is logged).
#[derive(Debug)]
pub struct TlsClient {
    settings: ClientTlsSettings,
    names: [&'static str; 3],
    server_name: Option<rustls_pki_types::ServerName<'static>>,
    current: std::sync::Mutex<ClientState>,
}

/// What a [`TlsClient`] last loaded, and when it last looked at its files.
#[derive(Debug)]
struct ClientState {
    fingerprint: Fingerprint,
    config: Arc<rustls::ClientConfig>,
    /// The runtime's clock (the wall clock outside tests), so tests can move it.
    checked: tokio::time::Instant,
}

impl TlsClient {
    /// Load the files (errors name the setting and the file).
    pub fn new(settings: ClientTlsSettings, names: [&'static str; 3]) -> Result<Self, String> {
        let server_name = match &settings.server_name {
            None => None,
            Some(name) => Some(rustls_pki_types::ServerName::try_from(name.clone()).map_err(
                |_| {
                    format!(
                        "{name:?} is not a DNS name or IP address to check the peer's certificate against"
                    )
                },
            )?),
        };
        let fingerprint = client_fingerprint(&settings);
        let config = client_config(&settings, names)?;
        Ok(Self {
            settings,
            names,
            server_name,
            current: std::sync::Mutex::new(ClientState {
                fingerprint,
                config,
                checked: tokio::time::Instant::now(),
            }),
        })
    }

    /// The configuration for a new connection. The files are looked at (three `stat` calls)
    /// at most once per [`RELOAD_POLL`], not on every delivery, and parsed only when they
    /// changed; in between this is a clone of an `Arc`.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        let mut current = match self.current.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.checked.elapsed() < RELOAD_POLL {
            return Arc::clone(&current.config);
        }
        current.checked = tokio::time::Instant::now();
        let fingerprint = client_fingerprint(&self.settings);
        if fingerprint != current.fingerprint {
            current.fingerprint = fingerprint;
            match client_config(&self.settings, self.names) {
                Ok(config) => {
                    tracing::info!(
                        server = self.settings.server_name.as_deref().unwrap_or(""),
                        "outbound TLS files changed; new connections use them"
                    );
                    current.config = config;
                }
                Err(error) => {
                    tracing::warn!(server = self.settings.server_name.as_deref().unwrap_or(""), error = %error, "outbound TLS files changed but do not load; the previous ones stay");
                }
            }
        }
        Arc::clone(&current.config)
    }

    /// Run the handshake over `stream`, checking the peer's certificate against the
    /// configured name, else `name`.
    pub async fn connect_named(
        &self,
        name: Option<&str>,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let invalid = |text: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, text);
        let server_name = match (self.server_name.clone(), name) {
            (Some(configured), _) => configured,
            (None, Some(name)) => rustls_pki_types::ServerName::try_from(name.to_owned())
                .map_err(|_| invalid(format!("{name:?} is not a DNS name or IP address")))?,
            (None, None) => return Err(invalid("no TLS server name".to_owned())),
        };
        tokio_rustls::TlsConnector::from(self.config())
            .connect(server_name, stream)
            .await
    }

    /// Run the handshake over `stream` (the settings name the peer).
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connect_named(None, stream).await
    }
}

fn client_fingerprint(settings: &ClientTlsSettings) -> Fingerprint {
    fingerprint(
        [&settings.ca_file, &settings.cert_file, &settings.key_file]
            .into_iter()
            .flatten(),
    )
}

/// What is looked at to notice a changed file: modification time and size, and on Unix the
/// status-change time and inode too (a `chmod` that makes a refused key readable, or a file
/// replaced by another of the same size and time).
pub(crate) type Fingerprint = Vec<Option<(std::time::SystemTime, u64, i64, u64)>>;

/// The [`Fingerprint`] of `files` (a file that cannot be read counts as `None`).
pub(crate) fn fingerprint<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Fingerprint {
    files
        .into_iter()
        .map(|path| {
            std::fs::metadata(path).ok().and_then(|meta| {
                #[cfg(unix)]
                let (changed, inode) = {
                    use std::os::unix::fs::MetadataExt;
                    (
                        meta.ctime()
                            .saturating_mul(1_000_000_000)
                            .saturating_add(meta.ctime_nsec()),
                        meta.ino(),
                    )
                };
                #[cfg(not(unix))]
                let (changed, inode) = (0, 0);
                Some((meta.modified().ok()?, meta.len(), changed, inode))
            })
        })
        .collect()
}
