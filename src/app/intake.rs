//! The intake subsystem: the listeners (MLLP, HTTP, directories), their connections, their
//! TLS reload, and their changes by a configuration reload.

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
    /// An MLLP listener (its connections can outlive its accept loop).
    mllp: bool,
    /// Stops it: accepting, its watchers, and its connections between frames.
    stop: CancellationToken,
    /// Stops accepting only, leaving its connections open (a listener a reload changed).
    accepting: CancellationToken,
    /// The switches of the listeners it replaced whose connections are still open: they
    /// close with it.
    retired: Vec<CancellationToken>,
    /// A second handle on its listening socket (network listeners): a changed listener on
    /// the same address takes it over, so the port never closes.
    socket: Option<std::net::TcpListener>,
    /// Its folder reader (directory listeners): a changed one's successor starts once it
    /// has finished the file in hand.
    reader: Option<tokio::task::JoinHandle<()>>,
}

/// What a running gateway may not change about a listener without replacing it: its type,
/// settings and TLS (its `rules:` and `tls_senders` are the decider's).
pub(super) fn started_with(listener: &ListenerConfig) -> String {
    format!(
        "{:?} {:?} {:?} {} {}",
        listener.kind, listener.settings, listener.tls, listener.require_tls, listener.entry
    )
}

/// A listener ready to start, everything that can fail done: its TLS loaded, its socket
/// bound (or a handle on the socket of the listener it replaces), its tokens read, its
/// folder checked. Starting it cannot fail.
#[derive(Debug)]
pub(super) struct Prepared {
    listener: ListenerConfig,
    ingest: Ingest,
    tls: Option<TlsServer>,
    /// Its socket to serve, and a second handle on it (network listeners).
    socket: Option<(tokio::net::TcpListener, std::net::TcpListener)>,
    /// Its counters: the ones of the listener it replaces, or new.
    stats: Arc<ListenerStats>,
    /// HTTP: its bearer tokens (`tokens_file`).
    tokens: Option<Arc<crate::admin::auth::TokenStore>>,
    /// Directory: its reader.
    reader: Option<crate::file_intake::DirectoryListener>,
    /// Unchanged: the running one goes on (nothing else here is set).
    keep: bool,
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
        let prepared = prepare(config.listeners.iter().zip(ingests), |_| Ok(Plan::Bind)).await?;
        let intake = Self {
            listeners: std::sync::Mutex::new(Vec::new()),
            route_counters,
            stamper,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        };
        let bound: Vec<Bound> = prepared
            .into_iter()
            .map(|prepared| intake.start(prepared))
            .collect();
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

    /// Start a prepared listener (not one to keep).
    fn start(&self, prepared: Prepared) -> Bound {
        let Prepared {
            listener,
            ingest,
            tls,
            socket,
            stats,
            tokens,
            reader,
            keep: _,
        } = prepared;
        let stop = self.shutdown.child_token();
        let accepting = stop.child_token();
        let handle = ingest.clone();
        let settings = &listener.settings;
        let mut local_addr = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut second = None;
        let mut reading = None;
        if let Some(reader) = reader {
            reading = Some(self.tracker.spawn(reader.run(stop.clone())));
            if let ListenerKind::Directory(directory) = &listener.kind {
                info!(
                    listener = %settings.name,
                    path = %directory.path.display(),
                    pattern = %directory.pattern,
                    settle_time = ?directory.settle_time,
                    "reading files from a folder"
                );
            }
        }
        if let Some((socket, kept)) = socket {
            local_addr = socket.local_addr().unwrap_or(local_addr);
            second = Some(kept);
            // SIGHUP handled before the listener says it listens (its default action ends
            // the process).
            watch_tls(tls.as_ref(), &settings.name, &accepting, &self.tracker);
            if let ListenerKind::Http { .. } = listener.kind {
                self.serve_http(
                    &listener,
                    tokens,
                    ingest,
                    tls.clone(),
                    socket,
                    &stats,
                    &stop,
                );
            } else {
                let mut served = mllp::Listener::new(
                    settings.clone(),
                    ingest,
                    Arc::clone(&stats),
                    tls.clone(),
                    stop.clone(),
                )
                .accepting_until(accepting.clone());
                if let ListenerKind::Dicom(dicom) = &listener.kind {
                    served = served.dicom(dicom.clone());
                    info!(
                        addr = %local_addr,
                        listener = %settings.name,
                        ae_title = %dicom.ae_title,
                        max_object_size = dicom.max_object_size,
                        inline_object_size = dicom.inline_object_size,
                        max_connections = settings.max_connections,
                        tls = tls.is_some(),
                        mtls = listener.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
                        "listening for DICOM"
                    );
                } else {
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
                self.tracker
                    .spawn(served.serve(socket, self.tracker.clone()));
            }
        }
        Bound {
            name: settings.name.clone(),
            local_addr,
            listen_addr: settings.listen_addr.clone(),
            stats,
            tls,
            ingest: Some(handle),
            started_with: started_with(&listener),
            mllp: matches!(listener.kind, ListenerKind::Mllp | ListenerKind::Dicom(_)),
            stop,
            accepting,
            retired: Vec::new(),
            socket: second,
            reader: reading,
        }
    }

    /// Serve HTTP intake (`POST /hl7`, [`crate::http_intake`]) on `socket` until `stop`.
    #[allow(clippy::too_many_arguments)]
    fn serve_http(
        &self,
        listener: &ListenerConfig,
        tokens: Option<Arc<crate::admin::auth::TokenStore>>,
        ingest: Ingest,
        tls: Option<TlsServer>,
        socket: tokio::net::TcpListener,
        stats: &Arc<ListenerStats>,
        stop: &CancellationToken,
    ) {
        let settings = &listener.settings;
        if let (
            Some(store),
            ListenerKind::Http {
                tokens_file: Some(path),
            },
        ) = (&tokens, &listener.kind)
        {
            self.tracker.spawn(crate::admin::auth::watch_tokens_file(
                Arc::clone(store),
                path.clone(),
                crate::tls::fingerprint([path]),
                stop.clone(),
            ));
        }
        let has_tokens = tokens.is_some();
        let local_addr = socket
            .local_addr()
            .map_or_else(|_| settings.listen_addr.clone(), |addr| addr.to_string());
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
            tokens = has_tokens,
            "listening for HL7 over HTTP (POST /hl7)"
        );
    }

    /// Make the listeners match `prepared` (a configuration reload: every listener of the
    /// new file in order, each ready, so nothing here fails): a removed listener stops (its
    /// connections, and those of the listeners it replaced, close between frames); a
    /// changed MLLP listener stops accepting while its open connections stay until their
    /// peers close them (an HTTP or directory listener stops: HTTP clients reconnect, a
    /// reader finishes the file in hand first), and the new one serves the same socket when
    /// the address did not change (the port never closes); an added one starts. Listeners
    /// that did not change keep running untouched.
    pub(super) async fn apply(&self, prepared: Vec<Prepared>) -> super::reload::Changes {
        let mut changes = super::reload::Changes::default();
        let mut old: Vec<Bound> = self.bound().drain(..).collect();
        let mut next = Vec::with_capacity(prepared.len());
        for prepared in prepared {
            let name = prepared.listener.settings.name.clone();
            let before = old
                .iter()
                .position(|b| b.name == name)
                .map(|at| old.remove(at));
            let Some(mut before) = before else {
                changes.added.push(name);
                next.push(self.start(prepared));
                continue;
            };
            if prepared.keep {
                next.push(before);
                continue;
            }
            before.accepting.cancel();
            let mut retired = std::mem::take(&mut before.retired);
            if before.mllp {
                // Its connections stay; they close with its successor.
                retired.push(before.stop.clone());
            } else {
                before.stop.cancel();
            }
            if let Some(reader) = before.reader.take() {
                let _ = reader.await;
            }
            drop(before);
            let mut started = self.start(prepared);
            started.retired = retired;
            changes.changed.push(name);
            next.push(started);
        }
        for removed in old {
            removed.stop.cancel();
            for retired in &removed.retired {
                retired.cancel();
            }
            changes.removed.push(removed.name);
        }
        *self.bound() = next;
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
#[derive(Debug)]
pub(super) enum Plan {
    /// New, or changed to another address: bind it.
    Bind,
    /// Changed: its counters go on; on the same address, it serves a handle on the running
    /// one's socket (the port never closes).
    Replace {
        stats: Arc<ListenerStats>,
        socket: Option<std::net::TcpListener>,
    },
    /// Unchanged: it keeps running.
    Keep,
}

impl Intake {
    /// What a reload does with `listener` (see [`Plan`]).
    pub(super) fn plan(&self, listener: &ListenerConfig) -> std::io::Result<Plan> {
        let bound = self.bound();
        let Some(running) = bound.iter().find(|b| b.name == listener.settings.name) else {
            return Ok(Plan::Bind);
        };
        if running.started_with == started_with(listener) {
            return Ok(Plan::Keep);
        }
        // The same address: as written, or the very address it is bound to (`:0` then the
        // port it got).
        let wanted = &listener.settings.listen_addr;
        let same_address = (running.listen_addr == *wanted
            || wanted.parse::<SocketAddr>().ok() == Some(running.local_addr))
            && !matches!(listener.kind, ListenerKind::Directory(_));
        let socket = match (&running.socket, same_address) {
            (Some(socket), true) => Some(socket.try_clone()?),
            _ => None,
        };
        Ok(Plan::Replace {
            stats: Arc::clone(&running.stats),
            socket,
        })
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

/// Get each listener ready (see [`Prepared`]): every certificate loaded and every tokens
/// file read before any port is bound, then each address bound (unless `plan` says it
/// takes over a running listener's socket, or keeps the running one), each folder checked.
/// The first problem, naming the listener, when one cannot be made ready: nothing is
/// started, and sockets bound here close again.
pub(super) async fn prepare<'a>(
    listeners: impl IntoIterator<Item = (&'a ListenerConfig, Ingest)>,
    plan: impl Fn(&ListenerConfig) -> std::io::Result<Plan>,
) -> anyhow::Result<Vec<Prepared>> {
    let named = |listener: &ListenerConfig| {
        let name = listener.settings.name.clone();
        move |error: String| anyhow::anyhow!("listener {name}: {error}")
    };
    let mut loaded = Vec::new();
    for (listener, ingest) in listeners {
        let planned = plan(listener).map_err(|error| named(listener)(error.to_string()))?;
        let (stats, mut socket) = match planned {
            Plan::Keep => {
                loaded.push((
                    Prepared {
                        listener: listener.clone(),
                        ingest,
                        tls: None,
                        socket: None,
                        stats: Arc::default(),
                        tokens: None,
                        reader: None,
                        keep: true,
                    },
                    None,
                ));
                continue;
            }
            Plan::Bind => (Arc::default(), None),
            Plan::Replace { stats, socket } => (stats, socket),
        };
        let tls = match &listener.tls {
            Some(tls) => Some(TlsServer::load(tls).map_err(named(listener))?),
            None => None,
        };
        let tokens = match &listener.kind {
            ListenerKind::Http {
                tokens_file: Some(path),
            } => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    named(listener)(format!(
                        "cannot read tokens_file {}: {error}",
                        path.display()
                    ))
                })?;
                Some(Arc::new(
                    crate::admin::auth::TokenStore::parse(&text, path)
                        .map_err(|error| named(listener)(error.to_string()))?,
                ))
            }
            _ => None,
        };
        let taken_over = socket.take();
        loaded.push((
            Prepared {
                listener: listener.clone(),
                ingest,
                tls,
                socket: None,
                stats,
                tokens,
                reader: None,
                keep: false,
            },
            taken_over,
        ));
    }
    let mut ready = Vec::with_capacity(loaded.len());
    for (mut prepared, taken_over) in loaded {
        if prepared.keep {
            ready.push(prepared);
            continue;
        }
        let listener = &prepared.listener;
        let settings = &listener.settings;
        let kind = match &listener.kind {
            ListenerKind::Directory(directory) => {
                prepared.reader = Some(
                    crate::file_intake::DirectoryListener::new(
                        directory.clone(),
                        prepared.ingest.clone(),
                        Arc::clone(&prepared.stats),
                        settings.name.clone(),
                    )
                    .map_err(named(listener))?,
                );
                ready.push(prepared);
                continue;
            }
            ListenerKind::Mllp => "MLLP",
            ListenerKind::Http { .. } => "HTTP",
            ListenerKind::Dicom(_) => "DICOM",
        };
        let socket = match taken_over {
            Some(socket) => tokio::net::TcpListener::from_std(socket).map_err(|error| {
                named(listener)(format!("cannot take over its socket: {error}"))
            })?,
            None => {
                // With `listeners:`, the address is the entry's `listen_addr`, not LISTEN_ADDR.
                let setting = if listener.entry {
                    format!("listen_addr of listener {}", settings.name)
                } else {
                    "LISTEN_ADDR".to_owned()
                };
                let instead = if kind == "HTTP" { ":8443" } else { ":2576" };
                crate::units::bind(&settings.listen_addr)
                    .await
                    .map_err(|error| {
                        super::bind_error(
                            &setting,
                            &settings.listen_addr,
                            &error,
                            &format!("a free port, e.g. {instead}"),
                        )
                    })?
            }
        };
        let local_addr = socket
            .local_addr()
            .context("listener has no local address")?;
        refuse_clear_text(listener, prepared.tls.is_some(), local_addr, kind)?;
        let pair = duplicate(socket)
            .map_err(|error| named(listener)(format!("cannot share its socket: {error}")))?;
        prepared.socket = Some(pair);
        ready.push(prepared);
    }
    Ok(ready)
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
    .with_config(config.sha256)
    .with_hl7_outputs(|name| config.sends_hl7(name));
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
