//! The delivery subsystem: one worker per connector, retention and store verification.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::Config;
use crate::delivery::upkeep::{retention_task, verify_task};
use crate::delivery::{WorkerControl, WorkerSettings, spawn_laned_worker, spawn_worker};
use crate::outbox::Outbox;
use crate::outputs::Output;

/// The running workers and upkeep tasks.
#[derive(Debug)]
pub(super) struct Delivery {
    /// Cancelled to stop the workers (after the delivery in hand) and the upkeep tasks.
    shutdown: CancellationToken,
    tracker: TaskTracker,
    /// One per connector with valid output settings, in configuration order.
    workers: Vec<(String, WorkerControl)>,
}

impl Delivery {
    /// Start a worker for each connector the outbox knows, retention when `RETENTION` is set
    /// and verification when `STORE_VERIFY_INTERVAL` is.
    pub(super) fn start(config: &Config, outbox: &Outbox) -> Self {
        let settings = &config.settings;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut workers = Vec::new();
        for connector in &config.connectors {
            let (Some(output), Some(id)) =
                (&connector.output, outbox.connector_id(&connector.name))
            else {
                continue;
            };
            let settings = WorkerSettings {
                name: Arc::from(connector.name.as_str()),
                connector: id,
                retry: output.retry.clone(),
                min_interval: output.min_interval,
                paused: output.paused,
                default_charset: config.settings.default_charset,
            };
            let control = if output.keyed {
                // Keyed lanes (ADR 0015): an output (a connection) per lane.
                let outputs = (0..output.lanes.unwrap_or(1))
                    .map(|_| Output::new(&output.output))
                    .collect();
                spawn_laned_worker(
                    settings,
                    outputs,
                    output.on_dead_letter.unwrap_or_default(),
                    outbox.clone(),
                    shutdown.child_token(),
                    &tracker,
                )
            } else {
                spawn_worker(
                    settings,
                    Output::new(&output.output),
                    outbox.clone(),
                    shutdown.child_token(),
                    &tracker,
                )
            };
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
            tracker.spawn(retention_task(
                outbox.clone(),
                retention,
                audit_retention,
                shutdown.child_token(),
            ));
        }
        if let Some(interval) = settings.store_verify_interval {
            tracker.spawn(verify_task(
                outbox.clone(),
                interval,
                shutdown.child_token(),
            ));
        }
        Self {
            shutdown,
            tracker,
            workers,
        }
    }

    /// A connector's worker control (pause, resume, counters).
    pub(super) fn worker(&self, connector: &str) -> Option<&WorkerControl> {
        self.workers
            .iter()
            .find(|(name, _)| name == connector)
            .map(|(_, control)| control)
    }

    /// Let each worker finish the delivery in hand (outputs bound it with their timeouts),
    /// until `deadline`. Returns false, after logging the connectors still delivering, when
    /// the deadline came first: those deliveries stay queued and are made again after the
    /// restart.
    pub(super) async fn shutdown(self, deadline: Instant) -> bool {
        let finished = super::stop_tasks(&self.shutdown, &self.tracker, deadline).await;
        if !finished {
            let in_hand: Vec<&str> = self
                .workers
                .iter()
                .filter(|(_, control)| control.stats().delivering.load(Ordering::Relaxed))
                .map(|(name, _)| name.as_str())
                .collect();
            warn!(
                connectors = %in_hand.join(","),
                "DRAIN_TIMEOUT reached with deliveries in hand; they stay queued and are delivered again after the restart"
            );
        }
        finished
    }
}
