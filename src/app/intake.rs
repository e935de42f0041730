//! The intake subsystem: the MLLP listener, its connections, and its TLS reload.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::hl7::AckStamper;
use crate::ingest::{Ingest, RouteCounters};
use crate::mllp::{self, ListenerStats};
use crate::outbox::Outbox;
use crate::rules::RuleSet;
use crate::tls::TlsServer;
use crate::transform::Transforms;

/// The bound listener and its connection tasks.
#[derive(Debug)]
pub(super) struct Intake {
    /// The bound address (useful with port 0).
    pub(super) local_addr: SocketAddr,
    /// The listener's counters.
    pub(super) stats: Arc<ListenerStats>,
    /// What intake decided per connector.
    pub(super) route_counters: Vec<Arc<RouteCounters>>,
    /// The listener's TLS (reloaded on SIGHUP and file changes).
    pub(super) tls: Option<TlsServer>,
    /// Cancelled to stop accepting and close idle connections.
    shutdown: CancellationToken,
    /// Tracks the accept loop, every connection task and the TLS watcher.
    tracker: TaskTracker,
}

impl Intake {
    /// Load the listener's TLS (a bad certificate or key stops startup before any port is
    /// bound), bind `LISTEN_ADDR` (a port clash fails before traffic) and serve.
    pub(super) async fn bind(
        config: &Config,
        rules: &Arc<RuleSet>,
        transforms: &Arc<Transforms>,
        outbox: &Outbox,
        stamper: Arc<dyn AckStamper>,
    ) -> anyhow::Result<Self> {
        let settings = &config.settings;
        let tls = match &settings.tls {
            Some(tls) => Some(TlsServer::load(tls).map_err(|error| anyhow::anyhow!(error))?),
            None => None,
        };
        let listen_addr = settings.listener.listen_addr.clone();
        let listener = mllp::bind(&listen_addr).await.map_err(|error| {
            super::bind_error(
                "LISTEN_ADDR",
                &listen_addr,
                &error,
                "a free port, e.g. :2576",
            )
        })?;
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
        let ingest = Ingest::new(
            settings.default_charset,
            stamper,
            Arc::clone(rules),
            outbox.clone(),
            |name| outbox.connector_id(name),
            &settings.listener.name,
        )
        .context("cannot route to the configured connectors")?
        .with_senders(config.senders.clone())
        .with_transforms(Arc::clone(transforms));
        let route_counters = ingest.route_counters();
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let served = mllp::Listener::new(
            settings.listener.clone(),
            ingest,
            Arc::clone(&stats),
            tls.clone(),
            shutdown.clone(),
        );
        tracker.spawn(served.serve(listener, tracker.clone()));
        // Installed here, before the listener says it is listening: SIGHUP's default action
        // ends the process, and an operator's reload must not, however early it comes.
        let hangups = crate::shutdown::Hangups::install();
        match &tls {
            Some(server) => {
                tracker.spawn(crate::tls::watch(server.clone(), hangups, shutdown.clone()));
            }
            None => {
                tracker.spawn(ignore_hangups(hangups, shutdown.clone()));
            }
        }
        info!(
            addr = %local_addr,
            listener = %settings.listener.name,
            data = %settings.outbox_path().display(),
            journal = settings.store_journal,
            connectors = config.connectors.len(),
            rules = rules.rule_count(),
            max_frame_size = settings.listener.max_frame_size,
            tls = tls.is_some(),
            mtls = settings.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
            "listening for MLLP"
        );
        Ok(Self {
            local_addr,
            stats,
            route_counters,
            tls,
            shutdown,
            tracker,
        })
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

/// Without TLS there is nothing to reload: log SIGHUP instead of dying of it.
async fn ignore_hangups(mut hangups: crate::shutdown::Hangups, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangups.recv() => info!("SIGHUP: TLS is off, nothing to reload"),
        }
    }
}
