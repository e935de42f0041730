//! The intake subsystem: the listeners (MLLP, HTTP, directories), their connections, their
//! TLS reload, and their changes by a configuration reload.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, ListenerConfig, ListenerKind};
use crate::hl7::AckStamper;
use crate::ingest::{Ingest, RouteCounters};
use crate::mllp::{self, ListenerStats};
use crate::outbox::Outbox;
use crate::rules::RuleSet;
use crate::tls::TlsServer;
use crate::transform::Transforms;

/// One running listener.
#[derive(Debug)]
pub(super) struct Bound {
    /// Its name (`inbound` in CEL).
    pub(super) name: String,
    /// The bound address (useful with port 0).
    pub(super) local_addr: SocketAddr,
    /// The address as configured (`listen_addr`).
    listen_addr: String,
    /// Its counters (kept when a reload changes the listener).
    pub(super) stats: Arc<ListenerStats>,
    /// Its TLS (reloaded on SIGHUP and file changes).
    pub(super) tls: Option<TlsServer>,
    /// Its ingest (a clone shares the decider a configuration reload replaces); taken at
    /// shutdown (it holds the outbox).
    pub(super) ingest: Option<Ingest>,
    /// What it was started with (type, settings, TLS), compared whole to tell a changed
    /// listener; never shown.
    pub(super) started_with: String,
    /// Stops it: accepting, its watchers, and its connections between frames.
    stop: CancellationToken,
    /// Stops accepting only, leaving its connections open (a listener a reload changed).
    accepting: CancellationToken,
    /// A second handle on its listening socket (network listeners): a changed listener on
    /// the same address takes it over, so the port never closes.
    socket: Option<std::net::TcpListener>,
}

/// What a running gateway may not change about a listener without replacing it: its type,
/// settings and TLS (its `rules:` and `tls_senders` are the decider's).
pub(super) fn started_with(listener: &ListenerConfig) -> String {
    format!(
        "{:?} {:?} {:?} {} {}",
        listener.kind, listener.settings, listener.tls, listener.require_tls, listener.entry
    )
}

/// A listener ready to start: its ingest, its TLS loaded, its socket bound (or to be taken
/// over from the listener it replaces).
#[derive(Debug)]
pub(super) struct Prepared {
    listener: ListenerConfig,
    ingest: Ingest,
    tls: Option<TlsServer>,
    socket: Option<tokio::net::TcpListener>,
    /// The counters of the listener it replaces.
    stats: Option<Arc<ListenerStats>>,
}

/// The bound listeners and their connection tasks.
#[derive(Debug)]
pub(super) struct Intake {
    /// Every listener, in configuration order; changed by a configuration reload.
    pub(super) listeners: std::sync::Mutex<Vec<Bound>>,
    /// What intake decided per connector, over every listener (at start-up).
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
        let mut route_counters: Vec<Arc<RouteCounters>> = Vec::new();
        let mut ingests = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let decider = decider(
                config,
                listener,
                rules,
                transforms,
                outbox,
                &stamper,
                Some(&route_counters),
            )?;
            // The first listener's counters are every listener's.
            if route_counters.is_empty() {
                route_counters = decider.route_counters().to_vec();
            }
            ingests.push(
                Ingest::with_decider(decider, outbox.clone())
                    .with_batches(listener.settings.batches),
            );
        }
        // Every certificate first, then every port: a bad file or a port clash stops
        // startup before any listener serves (or any file is taken).
        let prepared = prepare(config.listeners.iter().zip(ingests), |_| Plan::Bind).await?;
        let intake = Self {
            listeners: std::sync::Mutex::new(Vec::new()),
            route_counters,
            stamper,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let mut bound = Vec::with_capacity(prepared.len());
        for prepared in prepared {
            bound.push(intake.start(prepared, None)?);
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
        *intake.bound() = bound;
        Ok(intake)
    }

    /// The running listeners.
    pub(super) fn bound(&self) -> std::sync::MutexGuard<'_, Vec<Bound>> {
        crate::locks::lock(&self.listeners)
    }

    /// What a configuration reload needs to give every listener a new decider.
    pub(super) fn reload_handles(&self) -> super::reload::Deciders {
        super::reload::Deciders {
            listeners: self
                .bound()
                .iter()
                .filter_map(|bound| Some((bound.name.clone(), bound.ingest.clone()?)))
                .collect(),
            route_counters: self.route_counters.clone(),
            stamper: Arc::clone(&self.stamper),
        }
    }

    /// Start a prepared listener; `replacing`: the socket of the listener it replaces on
    /// the same address.
    fn start(
        &self,
        prepared: Prepared,
        replacing: Option<std::net::TcpListener>,
    ) -> anyhow::Result<Bound> {
        let Prepared {
            listener,
            ingest,
            tls,
            socket,
            stats,
        } = prepared;
        let socket = match (socket, replacing) {
            (Some(socket), _) => Some(socket),
            (None, Some(socket)) => Some(
                tokio::net::TcpListener::from_std(socket)
                    .context("cannot take over the listening socket")?,
            ),
            (None, None) => None,
        };
        let stop = self.shutdown.child_token();
        let accepting = stop.child_token();
        let stats = stats.unwrap_or_default();
        let handle = ingest.clone();
        let settings = &listener.settings;
        let (local_addr, socket) = match (&listener.kind, socket) {
            (ListenerKind::Directory(directory), _) => {
                let name = settings.name.clone();
                let reader = crate::file_intake::DirectoryListener::new(
                    directory.clone(),
                    ingest,
                    Arc::clone(&stats),
                    name.clone(),
                )
                .map_err(|problem| anyhow::anyhow!("listener {name}: {problem}"))?;
                self.tracker.spawn(reader.run(stop.clone()));
                info!(
                    listener = %name,
                    path = %directory.path.display(),
                    pattern = %directory.pattern,
                    settle_time = ?directory.settle_time,
                    "reading files from a folder"
                );
                (SocketAddr::from(([0, 0, 0, 0], 0)), None)
            }
            (_, None) => anyhow::bail!("listener {} has no socket", settings.name),
            (kind, Some(socket)) => {
                let (socket, second) = duplicate(socket).with_context(|| {
                    format!("listener {}: cannot share its socket", settings.name)
                })?;
                let local_addr = socket
                    .local_addr()
                    .context("listener has no local address")?;
                // SIGHUP handled before the listener says it listens (its default action
                // ends the process).
                watch_tls(tls.as_ref(), &settings.name, &accepting, &self.tracker);
                match kind {
                    ListenerKind::Http { tokens_file } => self.serve_http(
                        &listener,
                        tokens_file.as_deref(),
                        ingest,
                        tls.clone(),
                        socket,
                        &stats,
                        &stop,
                    )?,
                    _ => {
                        let served = mllp::Listener::new(
                            settings.clone(),
                            ingest,
                            Arc::clone(&stats),
                            tls.clone(),
                            stop.clone(),
                        )
                        .accepting_until(accepting.clone());
                        self.tracker
                            .spawn(served.serve(socket, self.tracker.clone()));
                        info!(
                            addr = %local_addr,
                            listener = %settings.name,
                            max_frame_size = settings.max_frame_size,
                            max_connections = settings.max_connections,
                            tls = tls.is_some(),
                            mtls = listener.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
                            "listening for MLLP"
                        );
                    }
                }
                (local_addr, Some(second))
            }
        };
        Ok(Bound {
            name: settings.name.clone(),
            local_addr,
            listen_addr: settings.listen_addr.clone(),
            stats,
            tls,
            ingest: Some(handle),
            started_with: started_with(&listener),
            stop,
            accepting,
            socket,
        })
    }

    /// Serve HTTP intake (`POST /hl7`, [`crate::http_intake`]) on `socket` until `stop`.
    #[allow(clippy::too_many_arguments)]
    fn serve_http(
        &self,
        listener: &ListenerConfig,
        tokens_file: Option<&std::path::Path>,
        ingest: Ingest,
        tls: Option<TlsServer>,
        socket: tokio::net::TcpListener,
        stats: &Arc<ListenerStats>,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
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
                self.tracker.spawn(crate::admin::auth::watch_tokens_file(
                    Arc::clone(&store),
                    path.to_path_buf(),
                    crate::tls::fingerprint([&path.to_path_buf()]),
                    stop.clone(),
                ));
                Some(store)
            }
            None => None,
        };
        let local_addr = socket
            .local_addr()
            .context("listener has no local address")?;
        let state = Arc::new(crate::http_intake::HttpIntake {
            ingest,
            tokens,
            stats: Arc::clone(stats),
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
        let events: Arc<dyn crate::admin::ConnectionEvents> = Arc::clone(stats) as _;
        self.tracker.spawn(crate::admin::serve_router_with(
            socket,
            crate::http_intake::router(state),
            stop.clone(),
            limits,
            Arc::default(),
            tls.clone(),
            Some(events),
        ));
        info!(
            addr = %local_addr,
            listener = %settings.name,
            tls = tls.is_some(),
            mtls = listener.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
            tokens = tokens_file.is_some(),
            "listening for HL7 over HTTP (POST /hl7)"
        );
        Ok(())
    }

    /// Make the listeners match `prepared` (a configuration reload, every listener of the
    /// new file in order, each with the ingest it decides with): a removed listener stops
    /// (its connections close between frames); a changed one stops accepting, its open
    /// MLLP connections stay until their peers close them, and the new one serves on the
    /// same socket when the address did not change (the port never closes); an added one
    /// starts. Listeners that did not change keep running untouched.
    pub(super) fn apply(&self, prepared: Vec<Prepared>) -> super::reload::Changes {
        let mut changes = super::reload::Changes::default();
        let mut bound = self.bound();
        let mut old: Vec<Bound> = bound.drain(..).collect();
        let mut next = Vec::with_capacity(prepared.len());
        for prepared in prepared {
            let name = prepared.listener.settings.name.clone();
            let before = old
                .iter()
                .position(|b| b.name == name)
                .map(|at| old.remove(at));
            let Some(mut before) = before else {
                match self.start(prepared, None) {
                    Ok(started) => {
                        changes.added.push(name);
                        next.push(started);
                    }
                    Err(error) => {
                        error!(listener = %name, error = %format!("{error:#}"), "the added listener could not start")
                    }
                }
                continue;
            };
            if before.started_with == started_with(&prepared.listener) {
                next.push(before);
                continue;
            }
            let mut prepared = prepared;
            prepared.stats = Some(Arc::clone(&before.stats));
            // Changed: the old one stops accepting (HTTP and directory listeners stop:
            // HTTP clients reconnect per request), the new one takes its socket when the
            // address is the same.
            before.accepting.cancel();
            if !matches!(prepared.listener.kind, ListenerKind::Mllp) || before.socket.is_none() {
                before.stop.cancel();
            }
            let takeover = if prepared.socket.is_none() {
                before.socket.take()
            } else {
                None
            };
            match self.start(prepared, takeover) {
                Ok(started) => {
                    changes.changed.push(name);
                    next.push(started);
                }
                Err(error) => {
                    error!(listener = %name, error = %format!("{error:#}"), "the changed listener could not start")
                }
            }
        }
        for removed in old {
            removed.stop.cancel();
            changes.removed.push(removed.name);
        }
        *bound = next;
        changes
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

/// What a configuration reload does with a listener of the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// New, or changed to another address: bind it.
    Bind,
    /// Changed, on the same address: take over the running one's socket (bound here).
    TakeOver(SocketAddr),
    /// Unchanged: it keeps running.
    Keep,
}

impl Intake {
    /// What a reload does with `listener` (see [`Plan`]).
    pub(super) fn plan(&self, listener: &ListenerConfig) -> Plan {
        let bound = self.bound();
        let Some(running) = bound.iter().find(|b| b.name == listener.settings.name) else {
            return Plan::Bind;
        };
        if running.started_with == started_with(listener) {
            Plan::Keep
        } else if running.socket.is_some() && running.listen_addr == listener.settings.listen_addr {
            Plan::TakeOver(running.local_addr)
        } else {
            Plan::Bind
        }
    }
}

/// Two handles on one listening socket: one to serve, one kept to hand over.
fn duplicate(
    socket: tokio::net::TcpListener,
) -> std::io::Result<(tokio::net::TcpListener, std::net::TcpListener)> {
    let socket = socket.into_std()?;
    let second = socket.try_clone()?;
    Ok((tokio::net::TcpListener::from_std(socket)?, second))
}

/// Get each listener ready: its TLS loaded (every certificate before any port), then its
/// address bound, unless `takes_over` gives the address of a running listener's socket it
/// will take over (a changed listener on the same address). Directory listeners need
/// neither. The first problem, naming the listener, when one cannot be made ready
/// (nothing is started; sockets bound here close again).
pub(super) async fn prepare<'a>(
    listeners: impl IntoIterator<Item = (&'a ListenerConfig, Ingest)>,
    plan: impl Fn(&ListenerConfig) -> Plan,
) -> anyhow::Result<Vec<Prepared>> {
    let mut loaded = Vec::new();
    for (listener, ingest) in listeners {
        let tls = match (&listener.tls, plan(listener)) {
            (_, Plan::Keep) | (None, _) => None,
            (Some(tls), _) => Some(TlsServer::load(tls).map_err(|error| {
                anyhow::anyhow!("listener {}: {error}", listener.settings.name)
            })?),
        };
        loaded.push(Prepared {
            listener: listener.clone(),
            ingest,
            tls,
            socket: None,
            stats: None,
        });
    }
    for prepared in &mut loaded {
        let listener = &prepared.listener;
        let settings = &listener.settings;
        let kind = match listener.kind {
            ListenerKind::Directory(_) => continue,
            ListenerKind::Mllp => "MLLP",
            ListenerKind::Http { .. } => "HTTP",
        };
        match plan(listener) {
            Plan::Keep => continue,
            Plan::TakeOver(local_addr) => {
                refuse_clear_text(listener, prepared.tls.is_some(), local_addr, kind)?;
                continue;
            }
            Plan::Bind => {}
        }
        // With `listeners:`, the address is the entry's `listen_addr`, not LISTEN_ADDR.
        let setting = if listener.entry {
            format!("listen_addr of listener {}", settings.name)
        } else {
            "LISTEN_ADDR".to_owned()
        };
        let instead = if kind == "HTTP" { ":8443" } else { ":2576" };
        let socket = crate::units::bind(&settings.listen_addr)
            .await
            .map_err(|error| {
                super::bind_error(
                    &setting,
                    &settings.listen_addr,
                    &error,
                    &format!("a free port, e.g. {instead}"),
                )
            })?;
        let local_addr = socket
            .local_addr()
            .context("listener has no local address")?;
        refuse_clear_text(listener, prepared.tls.is_some(), local_addr, kind)?;
        prepared.socket = Some(socket);
    }
    Ok(loaded)
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
