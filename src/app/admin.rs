//! The admin subsystem: the token store (read before any port is bound) and the admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, AdminState, TokenSource, TokenStore};
use crate::config::Settings;
use crate::tls::Fingerprint;

/// The admin tokens, read at startup: a bad `ADMIN_TOKENS_FILE` stops startup before any port
/// is bound.
#[derive(Debug)]
pub(super) struct Tokens {
    /// What the auth layer checks (empty when the admin API is off).
    pub(super) store: Arc<TokenStore>,
    /// Where they came from, and the file's state when read (for the watcher); `None` when
    /// the admin API is off.
    source: Option<(TokenSource, Fingerprint)>,
}

impl Tokens {
    /// Read the tokens when `ADMIN_ADDR` is on (off the runtime: it reads, and may create,
    /// files).
    pub(super) async fn load(settings: &Settings) -> anyhow::Result<Self> {
        if settings.admin_addr.is_none() {
            return Ok(Self {
                store: Arc::new(TokenStore::default()),
                source: None,
            });
        }
        let tokens_file = settings.admin_tokens_file.clone();
        let data_dir = settings.data_dir.clone();
        let (store, source) = tokio::task::spawn_blocking(move || {
            // Taken before the read, so a change made meanwhile is still noticed.
            let seen = crate::tls::fingerprint(&tokens_file);
            let loaded = TokenStore::load(tokens_file.as_deref(), &data_dir)
                .map(|(tokens, source)| (tokens, (source, seen)));
            let path = TokenStore::source_path(tokens_file.as_deref(), &data_dir);
            if let Some(mode) = crate::admin::auth::world_readable(&path) {
                warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the admin token file is readable by every user of this host; anyone who reads it can use the admin API: chmod 600 it (or 640 for a group that needs it)"
                );
            }
            loaded
        })
        .await
        .context("token load task failed")?
        .map_err(|error| anyhow::anyhow!(error))?;
        Ok(Self {
            store: Arc::new(store),
            source: Some(source),
        })
    }
}

/// The admin API's listener and task.
#[derive(Debug)]
pub(super) struct Admin {
    /// The bound address.
    pub(super) addr: SocketAddr,
    /// The serving task; its token also stops the token file watcher.
    serving: super::HttpServing,
}

impl Admin {
    /// Bind `ADMIN_ADDR` and serve `state`; `None` when the admin API is off.
    pub(super) async fn bind(
        settings: &Settings,
        tokens: Tokens,
        state: Arc<AdminState>,
    ) -> anyhow::Result<Option<Self>> {
        let (Some(addr), Some((source, seen))) = (&settings.admin_addr, tokens.source) else {
            return Ok(None);
        };
        let shutdown = CancellationToken::new();
        // Before the port is bound: a bad pair stops startup with the setting named.
        let tls = match &settings.admin_tls {
            None => None,
            Some((cert_file, key_file)) => {
                let tls_settings = crate::tls::TlsSettings {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                    client_ca: None,
                    client_crl: None,
                    min_version: crate::tls::TlsVersion::V1_2,
                    handshake_timeout: std::time::Duration::from_secs(10),
                };
                let server = crate::tls::TlsServer::load(&tls_settings).map_err(|error| {
                    anyhow::anyhow!(
                        "{}",
                        error
                            .replace("TLS_CERT_FILE", "ADMIN_TLS_CERT_FILE")
                            .replace("TLS_KEY_FILE", "ADMIN_TLS_KEY_FILE")
                    )
                })?;
                Some(server)
            }
        };
        let (listener, local) = admin::bind(addr).await.map_err(|error| {
            super::bind_error(
                "ADMIN_ADDR",
                addr,
                &error,
                "a free address, e.g. 127.0.0.1:8081, or off",
            )
        })?;
        match &source {
            TokenSource::Created(path) => info!(
                path = %path.display(),
                "created an admin token for the admin API and the CLI on this host (mode 0600); keep it secret"
            ),
            TokenSource::Local(path) => {
                info!(path = %path.display(), "admin API token read")
            }
            TokenSource::File(path) => {
                info!(path = %path.display(), tokens = state.tokens.len(), "admin API tokens read from ADMIN_TOKENS_FILE; changes are picked up without a restart");
                tokio::spawn(admin::auth::watch_tokens_file(
                    Arc::clone(&state.tokens),
                    path.clone(),
                    seen,
                    shutdown.clone(),
                ));
            }
        }
        if let Some(server) = &tls {
            // Once the port is bound: nothing is left running when startup fails.
            use tracing::Instrument as _;
            tokio::spawn(
                crate::tls::watch(
                    server.clone(),
                    crate::shutdown::Hangups::install(),
                    shutdown.clone(),
                )
                .instrument(tracing::info_span!("tls", listener = "admin")),
            );
        }
        info!(admin_addr = %local, tls = tls.is_some(), console = %format!("{}://{local}/ui/", if tls.is_some() { "https" } else { "http" }), "admin API listening");
        let task = tokio::spawn(admin::serve(listener, state, shutdown.clone(), tls));
        Ok(Some(Self {
            addr: local,
            serving: super::HttpServing { task, shutdown },
        }))
    }

    /// Stop serving (see [`super::HttpServing::stop`]).
    pub(super) async fn shutdown(self, deadline: Instant) {
        self.serving.stop(deadline, "admin API").await;
    }
}
