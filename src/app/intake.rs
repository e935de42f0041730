//! The intake subsystem: the MLLP listener, its connections, and its TLS reload.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::{Config, ListenerConfig, ListenerKind};
use crate::hl7::AckStamper;
use crate::ingest::{Ingest, RouteCounters};
use crate::mllp::{self, ListenerStats};
use crate::outbox::Outbox;
use crate::rules::RuleSet;
use crate::tls::TlsServer;
use crate::transform::Transforms;

/// One bound listener.
#[derive(Debug)]
pub(super) struct Bound {
    /// Its name (`inbound` in CEL).
    pub(super) name: String,
    /// The bound address (useful with port 0).
    pub(super) local_addr: SocketAddr,
    /// Its counters.
    pub(super) stats: Arc<ListenerStats>,
    /// Its TLS (reloaded on SIGHUP and file changes).
    pub(super) tls: Option<TlsServer>,
    /// Its ingest (a clone shares the decider a configuration reload replaces); taken at
    /// shutdown (it holds the outbox).
    pub(super) ingest: Option<Ingest>,
}

/// The bound listeners and their connection tasks.
#[derive(Debug)]
pub(super) struct Intake {
    /// Every listener, in configuration order.
    pub(super) listeners: Vec<Bound>,
    /// What intake decided per connector, over every listener.
    pub(super) route_counters: Vec<Arc<RouteCounters>>,
    /// The ACK stamps every listener uses (kept for the deciders a reload builds).
    stamper: Arc<dyn AckStamper>,
    /// Cancelled to stop accepting and close idle connections.
    shutdown: CancellationToken,
    /// Tracks the accept loops, every connection task and the TLS watchers.
    tracker: TaskTracker,
}

impl Intake {
    /// For each listener: load its TLS (a bad certificate or key stops startup before any
    /// port is bound), bind its address (a port clash fails before traffic) and serve.
    pub(super) async fn bind(
        config: &Config,
        rules: &Arc<RuleSet>,
        transforms: &Arc<Transforms>,
        outbox: &Outbox,
        stamper: Arc<dyn AckStamper>,
    ) -> anyhow::Result<Self> {
        // Every certificate first: a bad file stops startup before any port is bound.
        let mut servers = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            servers.push(match &listener.tls {
                Some(tls) => Some(TlsServer::load(tls).map_err(|error| {
                    anyhow::anyhow!("listener {}: {error}", listener.settings.name)
                })?),
                None => None,
            });
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut bound = Vec::with_capacity(config.listeners.len());
        let mut route_counters: Option<Vec<Arc<RouteCounters>>> = None;
        let mut directories = Vec::new();
        for (listener, tls) in config.listeners.iter().zip(servers) {
            let decider = decider(
                config,
                listener,
                rules,
                transforms,
                outbox,
                &stamper,
                route_counters.as_deref(),
            )?;
            let ingest = Ingest::with_decider(decider, outbox.clone())
                .with_batches(listener.settings.batches);
            // The first listener's counters are every listener's.
            route_counters.get_or_insert_with(|| ingest.route_counters());
            let served = match &listener.kind {
                ListenerKind::Directory(_) => {
                    // Started once every network listener is bound (a port clash fails
                    // startup before any file is taken).
                    directories.push((listener, ingest));
                    continue;
                }
                ListenerKind::Mllp => serve(listener, ingest, tls, &shutdown, &tracker).await?,
                ListenerKind::Http { tokens_file } => {
                    serve_http(
                        listener,
                        tokens_file.as_deref(),
                        ingest,
                        tls,
                        &shutdown,
                        &tracker,
                    )
                    .await?
                }
            };
            bound.push(served);
        }
        for (listener, ingest) in directories {
            bound.push(serve_directory(listener, ingest, &shutdown, &tracker)?);
        }
        info!(
            listeners = bound.len(),
            data = %config.settings.outbox_path().display(),
            journal = config.settings.store_journal,
            connectors = config.connectors.len(),
            rules = rules.rule_count(),
            config_sha256 = %config.sha256.map(|sha| crate::admin::auth::hex(&sha)).unwrap_or_default(),
            "intake started"
        );
        Ok(Self {
            listeners: bound,
            route_counters: route_counters.unwrap_or_default(),
            stamper,
            shutdown,
            tracker,
        })
    }

    /// What a configuration reload needs to give every listener a new decider.
    pub(super) fn reload_handles(&self) -> super::reload::Deciders {
        super::reload::Deciders {
            listeners: self
                .listeners
                .iter()
                .filter_map(|bound| Some((bound.name.clone(), bound.ingest.clone()?)))
                .collect(),
            route_counters: self.route_counters.clone(),
            stamper: Arc::clone(&self.stamper),
        }
    }

    /// Stop accepting and let connections finish the frame in hand (each gets its ACK after
    /// its commit), until `deadline`. Returns false, after logging, when the deadline came
    /// first: those frames get no ACK and their senders resend.
    pub(super) async fn shutdown(&self, deadline: Instant) -> bool {
        let finished = super::stop_tasks(&self.shutdown, &self.tracker, deadline).await;
        if !finished {
            warn!(
                busy = self.tracker.len(),
                "DRAIN_TIMEOUT reached with connections still receiving a frame; they get no ACK and their senders resend"
            );
        }
        finished
    }
}

/// What decides for `listener`: its rules (all, or its `rules:`), the connectors' filters,
/// `order_by` and transforms, its `tls_senders`; counting into `shared` (the other
/// listeners' route counters) when given. At start-up and at each configuration reload.
pub(super) fn decider(
    config: &Config,
    listener: &ListenerConfig,
    rules: &Arc<RuleSet>,
    transforms: &Arc<Transforms>,
    outbox: &Outbox,
    stamper: &Arc<dyn AckStamper>,
    shared: Option<&[Arc<RouteCounters>]>,
) -> anyhow::Result<crate::ingest::Decider> {
    let rules = listener_rules(config, listener, rules)?;
    let decider = crate::ingest::Decider::new(
        config.settings.default_charset,
        Arc::clone(stamper),
        rules,
        |name| outbox.connector_id(name),
        &listener.settings.name,
    )
    .context("cannot route to the configured connectors")?
    .with_senders(listener.senders.clone())
    .with_transforms(Arc::clone(transforms))
    .with_config(config.sha256);
    Ok(match shared {
        Some(counters) => decider.with_route_counters(counters),
        None => decider,
    })
}

/// The rules `listener` applies: every rule, or the ones its `rules:` names.
fn listener_rules(
    config: &Config,
    listener: &ListenerConfig,
    all: &Arc<RuleSet>,
) -> anyhow::Result<Arc<RuleSet>> {
    match config.listener_rules(listener) {
        Ok(Some(rules)) => Ok(Arc::new(rules)),
        Ok(None) => Ok(Arc::clone(all)),
        Err(errors) => Err(anyhow::anyhow!(
            "listener {}: {errors}",
            listener.settings.name
        )),
    }
}

/// A listener without TLS on a non-loopback address: refused with `require_tls`, else a
/// warning (HL7 carries patient data).
fn refuse_clear_text(
    listener: &ListenerConfig,
    tls: bool,
    local_addr: SocketAddr,
    kind: &str,
) -> anyhow::Result<()> {
    if tls || local_addr.ip().is_loopback() {
        return Ok(());
    }
    let settings = &listener.settings;
    let listen_addr = &settings.listen_addr;
    if listener.require_tls && listener.entry {
        anyhow::bail!(
            "REQUIRE_TLS is set but listener {} ({listen_addr}) has no TLS; set tls.cert_file and tls.key_file in its entry",
            settings.name
        );
    }
    if listener.require_tls {
        anyhow::bail!(
            "REQUIRE_TLS is set but LISTEN_ADDR={listen_addr} has no TLS; set TLS_CERT_FILE and TLS_KEY_FILE"
        );
    }
    warn!(
        addr = %local_addr,
        listener = %settings.name,
        "{kind} listener without TLS on a non-loopback address: HL7 (patient data) crosses the network in clear; give it a certificate, or set REQUIRE_TLS=true to refuse this"
    );
    Ok(())
}

/// Bind one listener and serve it on `tracker`.
async fn serve(
    listener: &ListenerConfig,
    ingest: Ingest,
    tls: Option<TlsServer>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Bound> {
    let settings = &listener.settings;
    let listen_addr = settings.listen_addr.clone();
    // With `listeners:`, the address is the entry's `listen_addr`, not LISTEN_ADDR.
    let setting = if listener.entry {
        format!("listen_addr of listener {}", settings.name)
    } else {
        "LISTEN_ADDR".to_owned()
    };
    let socket = mllp::bind(&listen_addr).await.map_err(|error| {
        super::bind_error(&setting, &listen_addr, &error, "a free port, e.g. :2576")
    })?;
    let local_addr = socket
        .local_addr()
        .context("listener has no local address")?;
    refuse_clear_text(listener, tls.is_some(), local_addr, "MLLP")?;
    let stats = Arc::new(ListenerStats::default());
    let handle = ingest.clone();
    let served = mllp::Listener::new(
        settings.clone(),
        ingest,
        Arc::clone(&stats),
        tls.clone(),
        shutdown.clone(),
    );
    tracker.spawn(served.serve(socket, tracker.clone()));
    watch_tls(tls.as_ref(), &settings.name, shutdown, tracker);
    info!(
        addr = %local_addr,
        listener = %settings.name,
        max_frame_size = settings.max_frame_size,
        max_connections = settings.max_connections,
        tls = tls.is_some(),
        mtls = listener.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        "listening for MLLP"
    );
    Ok(Bound {
        name: settings.name.clone(),
        local_addr,
        stats,
        tls,
        ingest: Some(handle),
    })
}

/// Bind one HTTP listener (`POST /hl7`, [`crate::http_intake`]) and serve it on `tracker`.
async fn serve_http(
    listener: &ListenerConfig,
    tokens_file: Option<&std::path::Path>,
    ingest: Ingest,
    tls: Option<TlsServer>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Bound> {
    let settings = &listener.settings;
    let tokens = match tokens_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "listener {}: cannot read tokens_file {}",
                    settings.name,
                    path.display()
                )
            })?;
            let store = crate::admin::auth::TokenStore::parse(&text, path)
                .map_err(|error| anyhow::anyhow!("listener {}: {error}", settings.name))?;
            let store = Arc::new(store);
            tracker.spawn(crate::admin::auth::watch_tokens_file(
                Arc::clone(&store),
                path.to_path_buf(),
                crate::tls::fingerprint([&path.to_path_buf()]),
                shutdown.clone(),
            ));
            Some(store)
        }
        None => None,
    };
    let (socket, local_addr) =
        crate::admin::bind(&settings.listen_addr)
            .await
            .map_err(|error| {
                super::bind_error(
                    &format!("listen_addr of listener {}", settings.name),
                    &settings.listen_addr,
                    &error,
                    "a free port, e.g. :8443",
                )
            })?;
    refuse_clear_text(listener, tls.is_some(), local_addr, "HTTP")?;
    let stats = Arc::new(ListenerStats::default());
    let handle = ingest.clone();
    let state = Arc::new(crate::http_intake::HttpIntake {
        ingest,
        tokens,
        stats: Arc::clone(&stats),
        allowed_peers: settings.allowed_peers.clone(),
        name: settings.name.clone(),
        max_body: settings.max_frame_size,
        body_timeout: settings.frame_timeout,
        budget: crate::mllp::budget::FrameBudget::new(
            settings.max_frame_memory,
            settings.max_frame_size,
        ),
    });
    let limits = crate::admin::ConnectionLimits {
        name: "HTTP listener",
        max_connections: settings.max_connections.unwrap_or(usize::MAX >> 4),
        header_timeout: crate::admin::HEADER_TIMEOUT,
    };
    let events: Arc<dyn crate::admin::ConnectionEvents> = Arc::clone(&stats) as _;
    tracker.spawn(crate::admin::serve_router_with(
        socket,
        crate::http_intake::router(state),
        shutdown.clone(),
        limits,
        Arc::default(),
        tls.clone(),
        Some(events),
    ));
    watch_tls(tls.as_ref(), &settings.name, shutdown, tracker);
    info!(
        addr = %local_addr,
        listener = %settings.name,
        tls = tls.is_some(),
        mtls = listener.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        tokens = tokens_file.is_some(),
        "listening for HL7 over HTTP (POST /hl7)"
    );
    Ok(Bound {
        name: settings.name.clone(),
        local_addr,
        stats,
        tls,
        ingest: Some(handle),
    })
}

/// Start one directory listener ([`crate::file_intake`]) on `tracker`.
fn serve_directory(
    listener: &ListenerConfig,
    ingest: Ingest,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Bound> {
    let ListenerKind::Directory(settings) = &listener.kind else {
        anyhow::bail!(
            "listener {} is not a directory listener",
            listener.settings.name
        );
    };
    let name = listener.settings.name.clone();
    let stats = Arc::new(ListenerStats::default());
    let handle = ingest.clone();
    let directory = crate::file_intake::DirectoryListener::new(
        settings.clone(),
        ingest,
        Arc::clone(&stats),
        name.clone(),
    )
    .map_err(|problem| anyhow::anyhow!("listener {name}: {problem}"))?;
    tracker.spawn(directory.run(shutdown.clone()));
    info!(
        listener = %name,
        path = %settings.path.display(),
        pattern = %settings.pattern,
        settle_time = ?settings.settle_time,
        "reading files from a folder"
    );
    Ok(Bound {
        name,
        local_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        stats,
        tls: None,
        ingest: Some(handle),
    })
}

/// Reload a listener's TLS on SIGHUP and when its files change (its log lines carry the
/// listener's name). Installed before the listener says it is listening: SIGHUP's default
/// action ends the process, and an operator's reload must not, however early it comes. Each
/// listener has its own handler; every one of them sees each SIGHUP.
fn watch_tls(
    tls: Option<&TlsServer>,
    name: &str,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    use tracing::Instrument as _;
    let hangups = crate::shutdown::Hangups::install();
    let span = tracing::info_span!("tls", listener = %name);
    match tls {
        Some(server) => {
            tracker.spawn(
                crate::tls::watch(server.clone(), hangups, shutdown.clone()).instrument(span),
            );
        }
        None => {
            tracker.spawn(ignore_hangups(hangups, shutdown.clone()).instrument(span));
        }
    }
}

/// Without TLS there is nothing to reload: log SIGHUP instead of dying of it.
async fn ignore_hangups(mut hangups: crate::shutdown::Hangups, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangups.recv() => info!("SIGHUP: this listener has no TLS, nothing to reload"),
        }
    }
}
