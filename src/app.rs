//! Wiring and lifecycle: compile rules, open the outbox, bind the listener, serve, drain.
//!
//! Start order: compile every rule (a bad one stops startup) → open the outbox and start its
//! writer → start one delivery worker per connector and the retention task → bind the
//! listener (a port clash fails before traffic) → serve.
//! Stop order: stop accepting → let connections finish the frame in hand (each gets its ACK
//! after its commit) → stop the workers after the delivery in hand → drop the last outbox
//! handle → the writer answers what is queued, commits, and stops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, TokenSource, TokenStore};
use crate::config::Config;
use crate::delivery::{WorkerControl, WorkerSettings, spawn_worker};
use crate::gateway::{ConnectorHandle, Gateway, ListenerHandle, Readiness};
use crate::hl7::{AckStamper, SystemStamper};
use crate::ingest::Ingest;
use crate::mllp::{self, ListenerStats, StatsSnapshot};
use crate::outbox::{Outbox, OutboxOptions, Storage, WriterHandle};
use crate::outputs::Output;
use crate::rules::RuleSet;

/// How long admin API requests in flight get once shutdown reaches the admin API, at least
/// (within `DRAIN_TIMEOUT` when more of it is left).
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// Choices tests make differently from production.
#[derive(Clone, Default)]
pub struct AppOptions {
    /// ACK stamps (default: the system clock).
    pub stamper: Option<Arc<dyn AckStamper>>,
    /// Outbox storage (default: the files in `DATA_DIR`).
    pub storage: Option<Arc<dyn Storage>>,
}

impl std::fmt::Debug for AppOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AppOptions")
            .field("stamper", &self.stamper)
            .field("storage", &self.storage)
            .finish()
    }
}

/// A running gateway.
#[derive(Debug)]
pub struct RunningApp {
    local_addr: SocketAddr,
    stats: Arc<ListenerStats>,
    /// Kept for reads (tests, later the admin API); dropped before the writer is joined.
    outbox: Outbox,
    writer: WriterHandle,
    /// Cancelled to stop accepting and close idle connections.
    shutdown: CancellationToken,
    /// Tracks the accept loop and every connection task.
    tracker: TaskTracker,
    /// Cancelled to stop the delivery workers and the retention task.
    delivery_shutdown: CancellationToken,
    /// Tracks the workers and the retention task.
    delivery_tracker: TaskTracker,
    /// One per connector, in configuration order.
    workers: Vec<(String, WorkerControl)>,
    /// For `/readyz`: ready once serving, draining once shutdown starts.
    readiness: Arc<Readiness>,
    /// Cancelled to stop the admin API (last, so the drain can be watched).
    admin_shutdown: CancellationToken,
    /// The admin API's address and task (it holds an outbox handle until it ends).
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The listener's TLS (reloaded on SIGHUP and file changes).
    tls: Option<crate::tls::TlsServer>,
    /// What the admin API and the metrics read; holds an outbox handle, dropped before the
    /// writer is joined (metric callbacks hold it weakly).
    gateway: Arc<Gateway>,
}

impl RunningApp {
    /// Start with production choices.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, AppOptions::default()).await
    }

    /// Compile the rules and start with the given options.
    pub async fn start_with(config: Config, options: AppOptions) -> anyhow::Result<Self> {
        let rules = config
            .compile_rules()
            .map_err(|errors| anyhow::anyhow!("{errors}"))?;
        Self::start_compiled(config, Arc::new(rules), options).await
    }

    /// Start with rules compiled beforehand (as `serve` does, to exit 64 on a bad rule).
    pub async fn start_compiled(
        config: Config,
        rules: Arc<RuleSet>,
        options: AppOptions,
    ) -> anyhow::Result<Self> {
        let settings = config.settings.clone();
        let mut outbox_options = OutboxOptions::new(settings.outbox_path());
        outbox_options.dedup_window = settings.dedup_window;
        outbox_options.dedup_max_entries = settings.dedup_max_entries;
        outbox_options.journal = settings.store_journal;
        if let Some(storage) = options.storage {
            outbox_options.storage = storage;
        }
        let journal_on = outbox_options.journal;
        let connector_names: Vec<String> = config
            .connectors
            .iter()
            .map(|connector| connector.name.clone())
            .collect();
        let path = settings.outbox_path();
        let (outbox, writer) =
            tokio::task::spawn_blocking(move || Outbox::open(outbox_options, &connector_names))
                .await
                .context("outbox open task failed")?
                .with_context(|| {
                    format!("cannot open the outbox in DATA_DIR ({})", path.display())
                })?;
        let connector_ids: Vec<u32> = config
            .connectors
            .iter()
            .filter_map(|connector| outbox.connector_id(&connector.name))
            .collect();

        let delivery_shutdown = CancellationToken::new();
        let delivery_tracker = TaskTracker::new();
        let mut workers = Vec::new();
        for connector in &config.connectors {
            let (Some(output), Some(id)) =
                (&connector.output, outbox.connector_id(&connector.name))
            else {
                continue;
            };
            let control = spawn_worker(
                WorkerSettings {
                    name: Arc::from(connector.name.as_str()),
                    connector: id,
                    retry: output.retry.clone(),
                    min_interval: output.min_interval,
                    paused: output.paused,
                },
                Output::new(&output.output),
                outbox.clone(),
                delivery_shutdown.child_token(),
                &delivery_tracker,
            );
            workers.push((connector.name.clone(), control));
        }
        if let (Some(retention), Some(window)) = (settings.retention, settings.dedup_window)
            && retention < window
        {
            warn!(
                retention_secs = retention.as_secs(),
                dedup_window_secs = window.as_secs(),
                "RETENTION is shorter than DEDUP_WINDOW: a retransmit of a message already removed is stored and delivered again"
            );
        }
        if let Some(retention) = settings.retention {
            // The trail outlives the messages it describes.
            let audit_retention = settings.audit_retention.map(|audit| audit.max(retention));
            delivery_tracker.spawn(retention_task(
                outbox.clone(),
                retention,
                audit_retention,
                delivery_shutdown.child_token(),
            ));
        }

        if let Some(interval) = settings.store_verify_interval {
            delivery_tracker.spawn(verify_task(
                outbox.clone(),
                interval,
                delivery_shutdown.child_token(),
            ));
        }

        // Tokens before any port: a bad ADMIN_TOKENS_FILE stops startup.
        let tokens = match &settings.admin_addr {
            Some(_) => {
                let tokens_file = settings.admin_tokens_file.clone();
                let data_dir = settings.data_dir.clone();
                let (tokens, source) = tokio::task::spawn_blocking(move || {
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
                Some((Arc::new(tokens), source))
            }
            None => None,
        };

        // TLS before any port: a bad certificate or key stops startup.
        let tls = match &settings.tls {
            Some(tls) => {
                Some(crate::tls::TlsServer::load(tls).map_err(|error| anyhow::anyhow!(error))?)
            }
            None => None,
        };
        let listen_addr = settings.listener.listen_addr.clone();
        let listener = mllp::bind(&listen_addr)
            .await
            .with_context(|| format!("cannot listen on LISTEN_ADDR={listen_addr}"))?;
        let local_addr = listener
            .local_addr()
            .context("listener has no local address")?;
        if tls.is_none() && !local_addr.ip().is_loopback() {
            if settings.require_tls {
                anyhow::bail!(
                    "REQUIRE_TLS is set but LISTEN_ADDR={listen_addr} has no TLS; set TLS_CERT_FILE and TLS_KEY_FILE"
                );
            }
            warn!(
                addr = %local_addr,
                "MLLP listener without TLS on a non-loopback address: HL7 (patient data) crosses the network in clear; set TLS_CERT_FILE and TLS_KEY_FILE, or REQUIRE_TLS=true to refuse this"
            );
        }
        let tls_on = tls.is_some();
        let tls_server = tls.clone();
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stamper = options
            .stamper
            .unwrap_or_else(|| Arc::new(SystemStamper::default()));
        let ingest = Ingest::new(
            settings.default_charset,
            stamper,
            Arc::clone(&rules),
            outbox.clone(),
            connector_ids.clone(),
            &settings.listener.name,
        )
        .with_senders(config.senders.clone());
        let route_counters = ingest.route_counters();
        tracker.spawn(mllp::serve(
            listener,
            settings.listener.clone(),
            ingest,
            Arc::clone(&stats),
            shutdown.clone(),
            tracker.clone(),
            tls,
        ));
        match &tls_server {
            Some(server) => {
                tracker.spawn(crate::tls::watch(server.clone(), shutdown.clone()));
            }
            None => {
                // SIGHUP's default action ends the process: an operator's reload must not.
                tracker.spawn(ignore_hangups(shutdown.clone()));
            }
        }
        info!(
            addr = %local_addr,
            listener = %settings.listener.name,
            data = %settings.outbox_path().display(),
            journal = journal_on,
            connectors = config.connectors.len(),
            rules = rules.rule_count(),
            max_frame_size = settings.listener.max_frame_size,
            tls = tls_on,
            mtls = settings.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
            "listening for MLLP"
        );
        let readiness = Arc::new(Readiness::default());
        let admin_shutdown = CancellationToken::new();
        let connector_names = outbox
            .read(|snapshot| snapshot.connectors())
            .await
            .context("cannot read the connectors of the data file")?
            .into_iter()
            .map(|(name, id)| (id, name))
            .collect();
        let connectors = config
            .connectors
            .iter()
            .filter_map(|connector| {
                let id = outbox.connector_id(&connector.name)?;
                Some(ConnectorHandle {
                    name: connector.name.clone(),
                    kind: connector.kind.as_str(),
                    id,
                    worker: workers
                        .iter()
                        .find(|(name, _)| *name == connector.name)
                        .map(|(_, control)| control.clone()),
                    intake: connector_ids
                        .iter()
                        .position(|known| *known == id)
                        .map(|index| (Arc::clone(&route_counters), index)),
                })
            })
            .collect();
        let (tokens, token_source) = match tokens {
            Some((tokens, source)) => (tokens, Some(source)),
            None => (Arc::new(TokenStore::default()), None),
        };
        let gateway = Arc::new(Gateway {
            outbox: outbox.clone(),
            connectors,
            connector_names,
            listeners: vec![ListenerHandle {
                name: settings.listener.name.clone(),
                stats: Arc::clone(&stats),
                tls: tls_server.as_ref().map(crate::tls::TlsServer::stats),
            }],
            readiness: Arc::clone(&readiness),
            default_charset: settings.default_charset,
            started: std::time::Instant::now(),
        });
        // Observable metrics read the same counters and queues as the admin API.
        crate::gateway::observe::register(&gateway);
        let state = Arc::new(AdminState {
            gateway: Arc::clone(&gateway),
            tokens,
            logs: crate::telemetry::log_ring(),
        });
        let mut admin = None;
        if let (Some(addr), Some((source, tokens_seen))) = (&settings.admin_addr, token_source) {
            let (admin_listener, admin_addr) = admin::bind(addr)
                .await
                .with_context(|| format!("cannot listen on ADMIN_ADDR={addr}"))?;
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
                        tokens_seen,
                        admin_shutdown.clone(),
                    ));
                }
            }
            info!(admin_addr = %admin_addr, "admin API listening");
            let task = tokio::spawn(admin::serve(admin_listener, state, admin_shutdown.clone()));
            admin = Some((admin_addr, task));
        }
        readiness.set_ready();
        Ok(Self {
            local_addr,
            stats,
            outbox,
            writer,
            shutdown,
            tracker,
            delivery_shutdown,
            delivery_tracker,
            workers,
            readiness,
            admin_shutdown,
            admin,
            gateway,
            tls: tls_server,
        })
    }

    /// Reload the listener's TLS files now (as SIGHUP does); `None` without TLS.
    pub fn reload_tls(&self) -> Option<Result<(), String>> {
        self.tls.as_ref().map(crate::tls::TlsServer::reload)
    }

    /// The admin API's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(addr, _)| *addr)
    }

    /// A connector's worker control (pause, resume, counters).
    pub fn worker(&self, connector: &str) -> Option<&WorkerControl> {
        self.workers
            .iter()
            .find(|(name, _)| name == connector)
            .map(|(_, control)| control)
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Listener counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The outbox, for reading what was stored.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Drain within `drain_timeout` (all of it, not per step): `/readyz` turns 503, stop
    /// accepting, let connections finish the frame in hand (each gets its ACK after its
    /// commit), let workers finish the delivery in hand, stop the admin API, then stop the
    /// outbox writer once it has answered everything queued. What the deadline cut short is
    /// logged. Returns false when something was cut short.
    pub async fn shutdown(self, drain_timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + drain_timeout;
        self.readiness.set_draining();
        self.shutdown.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            warn!(
                busy = self.tracker.len(),
                "DRAIN_TIMEOUT reached with connections still receiving a frame; they get no ACK and their senders resend"
            );
        }
        // Workers finish the delivery in hand (outputs bound it with their timeouts).
        self.delivery_shutdown.cancel();
        self.delivery_tracker.close();
        let delivered = tokio::time::timeout_at(deadline, self.delivery_tracker.wait())
            .await
            .is_ok();
        if !delivered {
            let in_hand: Vec<&str> = self
                .workers
                .iter()
                .filter(|(_, control)| {
                    control
                        .stats()
                        .delivering
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .map(|(name, _)| name.as_str())
                .collect();
            warn!(
                connectors = %in_hand.join(","),
                "DRAIN_TIMEOUT reached with deliveries in hand; they stay queued and are delivered again after the restart"
            );
        }
        // The admin API answers during the drain; it stops last, before the writer.
        self.admin_shutdown.cancel();
        let admin_deadline = deadline.max(tokio::time::Instant::now() + ADMIN_GRACE);
        if let Some((_, mut task)) = self.admin
            && tokio::time::timeout_at(admin_deadline, &mut task)
                .await
                .is_err()
        {
            warn!("admin API requests still running at shutdown; cancelled");
            task.abort();
            let _ = task.await;
        }
        let finished = finished && delivered;
        let stats = self.stats.snapshot();
        if !finished {
            // Connections or workers may still hold outbox handles: stop the writer
            // explicitly. What was queued before is committed and answered; anything later is
            // answered with an error (never AA), and the data file is closed cleanly.
            if let Err(error) = self.outbox.stop().await {
                warn!(error = %crate::outbox::Chain(&error), "the outbox writer was already stopped");
            }
        }
        drop(self.workers);
        drop(self.gateway);
        drop(self.outbox);
        // Every handle is gone, or the writer was told to stop: it ends once it has
        // committed what is queued, and is joined before the process exits.
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        info!(
            connections = stats.connections_accepted,
            frames = stats.frames_received,
            "stopped"
        );
        finished
    }
}

/// How often retention looks for old messages, at most (a short `RETENTION` looks more often:
/// a quarter of it, at least every second).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Messages looked at per retention transaction (bounds how long it holds the writer).
const RETENTION_BATCH: usize = 1000;

/// Audit records removed per pruning transaction.
const AUDIT_PRUNE_BATCH: usize = 10_000;

fn cutoff(age: Duration) -> i64 {
    crate::outbox::now_micros().saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX))
}

/// Every `interval`, read every stored record through a snapshot and check it (see
/// [`crate::outbox::verify`]); damage is logged by table and key and its count kept for the
/// `mfoundry.store.verify.damaged` gauge.
async fn verify_task(outbox: Outbox, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let started = std::time::Instant::now();
        match outbox.read(|snapshot| snapshot.verify()).await {
            Ok(report) => {
                let stats = outbox.stats();
                stats
                    .verified_damaged
                    .store(report.damaged_count, std::sync::atomic::Ordering::Relaxed);
                let records: u64 = report.records.values().sum();
                if report.damaged_count == 0 && report.audit.is_intact() {
                    info!(
                        records,
                        unchecked = report.unchecked,
                        took_ms = started.elapsed().as_millis() as u64,
                        "store verified: every record intact"
                    );
                } else {
                    for what in &report.damaged {
                        error!(record = %what, "store verification: a stored record is damaged");
                    }
                    error!(
                        records,
                        damaged = report.damaged_count,
                        audit_problems = report.audit.problem_count,
                        "store verification found damage; run `mfoundry store verify` on a copy of DATA_DIR"
                    );
                }
            }
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "store verification could not read the store; trying again at the next interval");
            }
        }
    }
}

/// Remove delivered and filtered messages older than `retention`, in bounded steps; after
/// each full pass, audit records older than `audit_retention`.
async fn retention_task(
    outbox: Outbox,
    retention: Duration,
    audit_retention: Option<Duration>,
    shutdown: CancellationToken,
) {
    let interval = (retention / 4).clamp(Duration::from_secs(1), RETENTION_INTERVAL);
    let mut after = 0u64;
    let mut removed_in_pass = 0u64;
    let mut damaged_in_pass = 0u64;
    loop {
        let pause = match outbox
            .retain(cutoff(retention), after, RETENTION_BATCH)
            .await
        {
            Ok(step) => {
                removed_in_pass += step.removed;
                damaged_in_pass += step.damaged;
                match step.resume_after {
                    Some(next) => {
                        after = next;
                        // Let intake commits through between steps.
                        Duration::from_millis(10)
                    }
                    None => {
                        if removed_in_pass > 0 {
                            info!(removed = removed_in_pass, "retention removed old messages");
                        }
                        if damaged_in_pass > 0 {
                            warn!(
                                damaged = damaged_in_pass,
                                "retention stepped over damaged message records and kept them; run `mfoundry store verify` on a copy of DATA_DIR"
                            );
                        }
                        after = 0;
                        removed_in_pass = 0;
                        damaged_in_pass = 0;
                        if let Some(age) = audit_retention {
                            prune_audit(&outbox, age).await;
                        }
                        interval
                    }
                }
            }
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "retention step failed; trying again later");
                interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Remove audit records older than `age`, in bounded transactions.
async fn prune_audit(outbox: &Outbox, age: Duration) {
    let mut removed = 0;
    loop {
        match outbox.prune_audit(cutoff(age), AUDIT_PRUNE_BATCH).await {
            Ok(0) => break,
            Ok(count) => {
                removed += count;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "audit pruning failed; trying again later");
                break;
            }
        }
    }
    if removed > 0 {
        info!(removed, "audit records older than AUDIT_RETENTION removed");
    }
}

/// Without TLS there is nothing to reload: log SIGHUP instead of dying of it.
async fn ignore_hangups(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = hangup.recv() => info!("SIGHUP: TLS is off, nothing to reload"),
            }
        }
    }
    #[cfg(not(unix))]
    shutdown.cancelled().await;
}

/// The drain after the outbox writer failed, at most: nothing can be stored, so connections
/// only get errors.
const WRITER_FAILED_DRAIN: Duration = Duration::from_secs(5);

/// Exit code when a second signal cuts the drain short.
pub const EXIT_SECOND_SIGNAL: i32 = 130;

/// Exit code when `DRAIN_TIMEOUT` cut the drain short (EX_TEMPFAIL): connections still
/// receiving a frame or deliveries in hand were not waited for. Nothing acknowledged is lost;
/// what was cut short is logged and delivered after the restart.
pub const EXIT_DRAIN_CUT_SHORT: u8 = 75;

/// How `serve` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Everything in hand finished within `DRAIN_TIMEOUT`.
    Drained,
    /// `DRAIN_TIMEOUT` cut the drain short (exit code [`EXIT_DRAIN_CUT_SHORT`]).
    DrainCutShort,
}

/// Serve until SIGTERM or SIGINT, then drain within `DRAIN_TIMEOUT`. A second signal during
/// the drain exits at once (safe: the outbox is crash-safe, and nothing unstored was
/// acknowledged).
pub async fn run(config: Config, rules: Arc<RuleSet>) -> anyhow::Result<Stopped> {
    let drain_timeout = config.settings.drain_timeout;
    let mut signals = crate::shutdown::Signals::install();
    let app = RunningApp::start_compiled(config, rules, AppOptions::default()).await?;
    let writer_failed = tokio::select! {
        () = signals.recv() => false,
        () = app.outbox().writer_failed() => true,
    };
    if writer_failed {
        // Every message is being answered AE; a restart reopens (and if needed repairs) the
        // file. Drain briefly so connections close cleanly, then exit non-zero.
        error!("the outbox writer stopped; draining and exiting so the process is restarted");
        app.shutdown(drain_timeout.min(WRITER_FAILED_DRAIN)).await;
        anyhow::bail!(
            "the outbox writer failed; see the log above. Restart mfoundry: the data file is reopened and checked"
        );
    }
    info!(
        drain_timeout_ms = drain_timeout.as_millis() as u64,
        "shutdown requested; draining (a second signal exits at once)"
    );
    let drained = tokio::select! {
        drained = app.shutdown(drain_timeout) => drained,
        () = signals.recv() => {
            warn!("second signal: exiting without finishing the drain; nothing unstored was acknowledged, and delivery resumes after the restart");
            std::process::exit(EXIT_SECOND_SIGNAL);
        }
    };
    tokio::task::spawn_blocking(crate::telemetry::metrics::shutdown)
        .await
        .ok();
    if drained {
        Ok(Stopped::Drained)
    } else {
        warn!(
            code = EXIT_DRAIN_CUT_SHORT,
            "DRAIN_TIMEOUT cut the drain short; exiting with a code of its own"
        );
        Ok(Stopped::DrainCutShort)
    }
}
