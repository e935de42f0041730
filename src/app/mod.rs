//! Wiring and lifecycle: four subsystems, each started from the configuration and stopped
//! through its handle, and the metrics endpoint.
//!
//! Start order: the store ([`store`]: the outbox opened and its writer started) → delivery
//! ([`delivery`]: one worker per connector, retention, verification) → the admin tokens and
//! intake ([`intake`]: TLS loaded, then the listener bound, so a bad file or a port clash
//! fails before traffic) → the metrics endpoint when `METRICS_ADDR` is on ([`metrics`]) →
//! the admin API ([`admin`]) → ready.
//! Stop order, within one deadline: intake (stop accepting; connections finish the frame in
//! hand, each ACKed after its commit) → delivery (workers finish the delivery in hand) → the
//! admin API and the metrics endpoint (last, so the drain can be watched) → the store (the
//! writer answers what is queued, commits, and stops).

mod admin;
mod delivery;
/// Why a listener could not bind, naming the setting to change; for an address in use
/// (another mfoundry, or another program, listens there) what to set it to.
fn bind_error(setting: &str, addr: &str, error: &std::io::Error, instead: &str) -> anyhow::Error {
    if error.kind() == std::io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {setting}={addr}: the address is in use (another mfoundry, or another program, listens there); set {setting} to {instead}"
        )
    } else {
        anyhow::anyhow!("cannot listen on {setting}={addr}: {error}")
    }
}

mod descriptors;
mod intake;
mod metrics;
mod reload;
mod store;

pub use reload::Reloaded;

/// How long requests in flight on the admin API or the metrics endpoint get once shutdown
/// reaches them, at least (within `DRAIN_TIMEOUT` when more of it is left).
const HTTP_GRACE: Duration = Duration::from_secs(1);

/// An HTTP listener's serving task (the admin API's, the metrics endpoint's) and its switch.
#[derive(Debug)]
struct HttpServing {
    /// Serves until `shutdown` is cancelled, then lets the requests in flight finish.
    task: tokio::task::JoinHandle<()>,
    /// Cancelled to stop serving (and whatever else the listener started with it).
    shutdown: tokio_util::sync::CancellationToken,
}

impl HttpServing {
    /// Stop serving; requests in flight get until `deadline`, or [`HTTP_GRACE`] when less is
    /// left, and are cancelled after.
    async fn stop(self, deadline: tokio::time::Instant, what: &str) {
        self.shutdown.cancel();
        let deadline = deadline.max(tokio::time::Instant::now() + HTTP_GRACE);
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            warn!("{what} requests still running at shutdown; cancelled");
            task.abort();
            let _ = task.await;
        }
    }
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{error, info, warn};

use crate::admin::AdminState;
use crate::config::{Compiled, Config};
use crate::delivery::WorkerControl;
use crate::gateway::{ConnectorHandle, Gateway, ListenerHandle, Readiness};
use crate::hl7::{AckStamper, SystemStamper};
use crate::mllp::StatsSnapshot;
use crate::outbox::{Outbox, Storage};

/// Choices tests make differently from production.
#[derive(Clone, Default)]
pub struct AppOptions {
    /// ACK stamps (default: the system clock).
    pub stamper: Option<Arc<dyn AckStamper>>,
    /// Outbox storage (default: the files in `DATA_DIR`).
    pub storage: Option<Arc<dyn Storage>>,
    /// Where a configuration reload reads the environment (default: the process's), so it
    /// sees the values the configuration was loaded with.
    pub environment: Option<Environment>,
}

/// A stand-in for the process environment: a variable's value by name.
pub type Environment = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl std::fmt::Debug for AppOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AppOptions")
            .field("stamper", &self.stamper)
            .field("storage", &self.storage)
            .field("environment", &self.environment.is_some())
            .finish()
    }
}

/// A running gateway: its four subsystems, the metrics endpoint and the state they share.
#[derive(Debug)]
pub struct RunningApp {
    store: store::Store,
    delivery: delivery::Delivery,
    intake: Arc<intake::Intake>,
    admin: Option<admin::Admin>,
    /// `METRICS_ADDR`'s endpoint, when on.
    metrics: Option<metrics::Metrics>,
    /// What the admin API and the metrics read; holds an outbox handle, dropped before the
    /// writer is joined (metric callbacks hold it weakly).
    gateway: Arc<Gateway>,
    /// Configuration reloads (with a file): the reloader, its watching task and its switch.
    reload: Option<Reload>,
}

/// The configuration reload's parts.
#[derive(Debug)]
struct Reload {
    reloader: Arc<tokio::sync::Mutex<reload::Reloader>>,
    task: tokio::task::JoinHandle<()>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl RunningApp {
    /// Start with production choices.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, AppOptions::default()).await
    }

    /// Compile the rules and transforms and start with the given options.
    pub async fn start_with(config: Config, options: AppOptions) -> anyhow::Result<Self> {
        let compiled = config
            .compile()
            .map_err(|errors| anyhow::anyhow!("{errors}"))?;
        Self::start_compiled(config, compiled, options).await
    }

    /// Start with rules and transforms compiled beforehand (as `serve` does, to exit 64 on a
    /// bad rule or step).
    pub async fn start_compiled(
        config: Config,
        compiled: Compiled,
        options: AppOptions,
    ) -> anyhow::Result<Self> {
        let rules = Arc::new(compiled.rules);
        let transforms = Arc::new(compiled.transforms);
        let settings = &config.settings;
        descriptors::ensure(&config);
        let names = config.connectors.iter().map(|c| c.name.clone()).collect();
        let store = store::Store::open(settings, names, options.storage).await?;
        let delivery = delivery::Delivery::start(&config, &store.outbox);
        // Tokens and TLS before any port: a bad file stops startup.
        let tokens = admin::Tokens::load(settings).await?;
        let stamper = options
            .stamper
            .unwrap_or_else(|| Arc::new(SystemStamper::default()));
        let intake = Arc::new(
            intake::Intake::bind(&config, &rules, &transforms, &store.outbox, stamper).await?,
        );
        let gateway = Arc::new(
            gateway(
                &config,
                &store.outbox,
                &delivery,
                &intake,
                Arc::clone(&transforms),
            )
            .await?,
        );
        // Observable metrics read the same counters and queues as the admin API.
        crate::gateway::observe::register(&gateway);
        let state = Arc::new(AdminState {
            gateway: Arc::clone(&gateway),
            tokens: Arc::clone(&tokens.store),
            logs: crate::telemetry::log_ring(),
            console: crate::admin::console::Console::new(
                settings.console_idle_timeout,
                settings.admin_tls.is_some(),
            ),
            errors_shown: std::sync::Mutex::default(),
        });
        // Before the admin API, whose address line ends what tests wait for at startup.
        let metrics = metrics::Metrics::bind(settings).await?;
        let admin = admin::Admin::bind(settings, tokens, state).await?;
        let environment = options
            .environment
            .unwrap_or_else(|| Arc::new(|name: &str| std::env::var(name).ok()));
        let reload = reload::Reloader::new(
            &config,
            Arc::clone(&intake),
            store.outbox.clone(),
            Arc::clone(&gateway),
            Arc::clone(&delivery.workers),
            environment,
        )
        .map(|reloader| {
            let reloader = Arc::new(tokio::sync::Mutex::new(reloader));
            let shutdown = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(reload::watch(Arc::clone(&reloader), shutdown.clone()));
            Reload {
                reloader,
                task,
                shutdown,
            }
        });
        gateway.readiness.set_ready();
        Ok(Self {
            store,
            delivery,
            intake,
            admin,
            metrics,
            gateway,
            reload,
        })
    }

    /// Reload every listener's TLS files now (as SIGHUP does); `None` when no listener has
    /// TLS, else the first failure.
    pub fn reload_tls(&self) -> Option<Result<(), String>> {
        let mut outcome = None;
        for server in self
            .intake
            .bound()
            .iter()
            .filter_map(|bound| bound.tls.as_ref())
        {
            let reloaded = server.reload();
            if !matches!(outcome, Some(Err(_))) {
                outcome = Some(reloaded);
            }
        }
        outcome
    }

    /// Load the configuration file again now (as SIGHUP does): what intake decides with is
    /// replaced, or every reason why not (the running configuration then stays). A file
    /// reloaded before (by a signal or a change) answers as it did then. An error when the
    /// gateway runs without a file.
    pub async fn reload_config(&self) -> Result<Reloaded, Vec<String>> {
        let Some(reload) = &self.reload else {
            return Err(vec![
                "the gateway runs without a configuration file".to_owned(),
            ]);
        };
        let mut reloader = reload.reloader.lock().await;
        let (fresh, reloaded) = reloader.reload().await;
        if fresh {
            reload::report(reloader.file(), &reloaded);
        }
        reloaded
    }

    /// The admin API's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|admin| admin.addr)
    }

    /// A connector's worker control (pause, resume, counters).
    pub fn worker(&self, connector: &str) -> Option<WorkerControl> {
        self.delivery.worker(connector)
    }

    /// The first listener's bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.intake.bound()[0].local_addr
    }

    /// Every listener's name and bound address, in configuration order.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.intake
            .bound()
            .iter()
            .map(|bound| (bound.name.clone(), bound.local_addr))
            .collect()
    }

    /// The first listener's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.intake.bound()[0].stats.snapshot()
    }

    /// The outbox, for reading what was stored.
    pub fn outbox(&self) -> &Outbox {
        &self.store.outbox
    }

    /// Drain within `drain_timeout` (all of it, not per step): `/readyz` turns 503, then
    /// intake, delivery, the admin API, the metrics endpoint and the store stop in that order (see the module
    /// documentation). What the deadline cut short is logged. Returns false when something
    /// was cut short.
    pub async fn shutdown(self, drain_timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + drain_timeout;
        self.gateway.readiness.set_draining();
        if let Some(reload) = self.reload {
            // A reload in progress (waiting for a changed connector's delivery in hand) is
            // cut short at the deadline.
            reload.shutdown.cancel();
            let mut task = reload.task;
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        let received = self.intake.shutdown(deadline).await;
        let delivered = self.delivery.shutdown(deadline).await;
        if let Some(admin) = self.admin {
            admin.shutdown(deadline).await;
        }
        if let Some(metrics) = self.metrics {
            metrics.shutdown(deadline).await;
        }
        drop(self.gateway);
        // The listeners' ingest handles hold the outbox: gone before its writer is joined.
        for bound in self.intake.bound().iter_mut() {
            bound.ingest = None;
        }
        self.store.shutdown(!(received && delivered)).await;
        let (connections, frames) = self.intake.bound().iter().fold((0, 0), |sum, bound| {
            let stats = bound.stats.snapshot();
            (
                sum.0 + stats.connections_accepted,
                sum.1 + stats.frames_received,
            )
        });
        info!(connections, frames, "stopped");
        received && delivered
    }
}

/// Cancel `shutdown`, then wait until `deadline` for every task on `tracker` to end; false
/// when the deadline came first.
async fn stop_tasks(
    shutdown: &tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
    deadline: tokio::time::Instant,
) -> bool {
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_ok()
}

/// The shared state the admin API and the metrics read.
async fn gateway(
    config: &Config,
    outbox: &Outbox,
    delivery: &delivery::Delivery,
    intake: &intake::Intake,
    transforms: Arc<crate::transform::Transforms>,
) -> anyhow::Result<Gateway> {
    let settings = &config.settings;
    let connector_names = known_connectors(outbox).await?;
    let connectors = connector_handles(config, outbox, &delivery.workers, &intake.route_counters);
    Ok(Gateway {
        outbox: outbox.clone(),
        connectors: std::sync::RwLock::new(Arc::new(connectors)),
        connector_names: std::sync::RwLock::new(Arc::new(connector_names)),
        listeners: std::sync::RwLock::new(Arc::new(listener_handles(intake))),
        readiness: Arc::new(Readiness::default()),
        default_charset: settings.default_charset,
        transforms: std::sync::RwLock::new(transforms),
        reloads: crate::gateway::ReloadCounts::default(),
        started: std::time::Instant::now(),
    })
}

/// The running listeners as the admin API and the metrics see them.
fn listener_handles(intake: &intake::Intake) -> Vec<ListenerHandle> {
    intake
        .bound()
        .iter()
        .map(|bound| ListenerHandle {
            name: bound.name.clone(),
            stats: Arc::clone(&bound.stats),
            tls: bound.tls.as_ref().map(crate::tls::TlsServer::stats),
        })
        .collect()
}

/// Every connector name the data file knows, by id.
async fn known_connectors(outbox: &Outbox) -> anyhow::Result<crate::gateway::ConnectorNames> {
    Ok(outbox
        .read(|snapshot| snapshot.connectors())
        .await
        .context("cannot read the connectors of the data file")?
        .into_iter()
        .map(|(name, id)| (id, name))
        .collect())
}

/// The configured connectors as the admin API and the metrics see them: each with its
/// worker and intake counters.
fn connector_handles(
    config: &Config,
    outbox: &Outbox,
    workers: &delivery::Workers,
    route_counters: &[Arc<crate::ingest::RouteCounters>],
) -> Vec<ConnectorHandle> {
    config
        .connectors
        .iter()
        .filter_map(|connector| {
            let id = outbox.connector_id(&connector.name)?;
            Some(ConnectorHandle {
                name: connector.name.clone(),
                kind: connector.kind.as_str(),
                sends_hl7: config.sends_hl7(&connector.name),
                id,
                worker: workers.control(&connector.name),
                intake: route_counters
                    .iter()
                    .find(|counters| counters.connector == id)
                    .cloned(),
            })
        })
        .collect()
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
pub async fn run(config: Config, compiled: Compiled) -> anyhow::Result<Stopped> {
    let drain_timeout = config.settings.drain_timeout;
    let mut signals = crate::shutdown::Signals::install();
    let app = RunningApp::start_compiled(config, compiled, AppOptions::default()).await?;
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
