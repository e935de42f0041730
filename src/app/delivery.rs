//! The delivery subsystem: one worker per connector, retention and store verification.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use crate::config::Config;
use crate::delivery::upkeep::{patient_index_task, retention_task, verify_task};
use crate::delivery::{WorkerControl, WorkerSettings, spawn_laned_worker, spawn_worker};
use crate::outbox::Outbox;
use crate::outputs::Output;

/// The running workers and upkeep tasks.
#[derive(Debug)]
pub(super) struct Delivery {
    /// Cancelled to stop the workers (after the delivery in hand) and the upkeep tasks.
    shutdown: CancellationToken,
    /// Every worker (each through a task waiting for it) and the upkeep tasks.
    tracker: TaskTracker,
    /// One per connector with valid output settings, in configuration order; changed by a
    /// configuration reload.
    pub(super) workers: Arc<Workers>,
}

/// The connectors' workers: started, and stopped or restarted when a configuration reload
/// removes or changes a connector.
#[derive(Debug)]
pub(super) struct Workers {
    outbox: Outbox,
    /// The parent of every worker's switch.
    shutdown: CancellationToken,
    /// Where a task waiting for each worker runs (what shutdown waits for).
    tracker: TaskTracker,
    default_charset: crate::hl7::Charset,
    running: std::sync::Mutex<Vec<Running>>,
}

/// One running worker.
#[derive(Debug)]
struct Running {
    name: String,
    /// What it was started with (the connector's type and output settings), compared as a
    /// whole to tell a changed connector; never shown (it holds secrets).
    started_with: String,
    /// `paused:` as the file said when it was started.
    paused_setting: bool,
    control: WorkerControl,
    /// Stops this worker alone.
    stop: CancellationToken,
    /// Its task (closed: `wait` ends when the worker has stopped).
    task: TaskTracker,
}

/// A connector's delivery as written, to compare (see [`crate::config::Connector::delivery`]).
fn started_with(connector: &crate::config::Connector) -> String {
    connector.delivery.clone()
}

impl Workers {
    /// Start a worker for `connector` (when it has output settings and an id), paused when
    /// `paused`, or continuing `continues` (its pause and counters).
    fn start(
        &self,
        connector: &crate::config::Connector,
        paused: bool,
        continues: Option<WorkerControl>,
    ) -> Option<Running> {
        let (Some(output), Some(id)) =
            (&connector.output, self.outbox.connector_id(&connector.name))
        else {
            return None;
        };
        let settings = WorkerSettings {
            name: Arc::from(connector.name.as_str()),
            connector: id,
            retry: output.retry.clone(),
            min_interval: output.min_interval,
            paused,
            default_charset: self.default_charset,
            continues,
        };
        let stop = self.shutdown.child_token();
        let task = TaskTracker::new();
        let control = if output.keyed {
            // Keyed lanes (ADR 0015): an output (a connection) per lane.
            let outputs = (0..output.lanes.unwrap_or(1))
                .map(|_| Output::new(&output.output))
                .collect();
            spawn_laned_worker(
                settings,
                outputs,
                output.on_dead_letter.unwrap_or_default(),
                self.outbox.clone(),
                stop.clone(),
                &task,
            )
        } else {
            spawn_worker(
                settings,
                Output::new(&output.output),
                self.outbox.clone(),
                stop.clone(),
                &task,
            )
        };
        task.close();
        let waited = task.clone();
        self.tracker.spawn(async move { waited.wait().await });
        Some(Running {
            name: connector.name.clone(),
            started_with: started_with(connector),
            paused_setting: output.paused,
            control,
            stop,
            task,
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        crate::locks::lock(&self.running)
    }

    /// A connector's worker control (pause, resume, counters).
    pub(super) fn control(&self, connector: &str) -> Option<WorkerControl> {
        self.running()
            .iter()
            .find(|running| running.name == connector)
            .map(|running| running.control.clone())
    }

    /// Make the workers match `config` (a configuration reload): a removed connector's
    /// worker stops after the delivery in hand (its queue stays in the store); a changed
    /// one's stops the same way and a new one starts on the same queue (order kept: never
    /// two workers on one queue) with the same control, so its pause (unless the file's
    /// `paused:` changed), its counters and every handle to it carry on; an added one
    /// starts. Workers whose connector did not change keep running, with their
    /// connections.
    pub(super) async fn apply(&self, config: &Config) -> super::reload::Changes {
        let mut changes = super::reload::Changes::default();
        let mut stopping = Vec::new();
        {
            let mut running = self.running();
            let mut kept = Vec::with_capacity(running.len());
            for worker in running.drain(..) {
                let wanted = config
                    .connectors
                    .iter()
                    .find(|connector| connector.name == worker.name);
                match wanted {
                    Some(connector) if started_with(connector) == worker.started_with => {
                        kept.push(worker);
                    }
                    Some(_) => {
                        changes.changed.push(worker.name.clone());
                        stopping.push(worker);
                    }
                    None => {
                        changes.removed.push(worker.name.clone());
                        stopping.push(worker);
                    }
                }
            }
            *running = kept;
        }
        for worker in &stopping {
            worker.stop.cancel();
        }
        for worker in &stopping {
            worker.task.wait().await;
        }
        let mut running = self.running();
        let mut ordered = Vec::with_capacity(config.connectors.len());
        for connector in &config.connectors {
            if let Some(index) = running.iter().position(|w| w.name == connector.name) {
                ordered.push(running.swap_remove(index));
                continue;
            }
            let before = stopping.iter().find(|w| w.name == connector.name);
            let paused = connector
                .output
                .as_ref()
                .is_some_and(|output| output.paused);
            let continues = before.map(|before| {
                if before.paused_setting != paused {
                    if paused {
                        before.control.pause();
                    } else {
                        before.control.resume();
                    }
                }
                before.control.clone()
            });
            if let Some(started) = self.start(connector, paused, continues) {
                if before.is_none() {
                    changes.added.push(connector.name.clone());
                }
                ordered.push(started);
            }
        }
        *running = ordered;
        changes
    }
}

impl Delivery {
    /// Start a worker for each connector the outbox knows, retention when `RETENTION` is set
    /// and verification when `STORE_VERIFY_INTERVAL` is.
    pub(super) fn start(config: &Config, outbox: &Outbox) -> Self {
        let settings = &config.settings;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let workers = Workers {
            outbox: outbox.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            default_charset: settings.default_charset,
            running: std::sync::Mutex::new(Vec::new()),
        };
        let started: Vec<Running> = config
            .connectors
            .iter()
            .filter_map(|connector| {
                let paused = connector.output.as_ref().is_some_and(|o| o.paused);
                workers.start(connector, paused, None)
            })
            .collect();
        *workers.running() = started;
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
        if settings.patient_index {
            tracker.spawn(patient_index_task(outbox.clone(), shutdown.child_token()));
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
            workers: Arc::new(workers),
        }
    }

    /// A connector's worker control (pause, resume, counters).
    pub(super) fn worker(&self, connector: &str) -> Option<WorkerControl> {
        self.workers.control(connector)
    }

    /// Let each worker finish the delivery in hand (outputs bound it with their timeouts),
    /// until `deadline`. Returns false, after logging the connectors still delivering, when
    /// the deadline came first: those deliveries stay queued and are made again after the
    /// restart.
    pub(super) async fn shutdown(self, deadline: Instant) -> bool {
        let finished = super::stop_tasks(&self.shutdown, &self.tracker, deadline).await;
        if !finished {
            let in_hand: Vec<String> = self
                .workers
                .running()
                .iter()
                .filter(|running| running.control.stats().delivering.load(Ordering::Relaxed))
                .map(|running| running.name.clone())
                .collect();
            warn!(
                connectors = %in_hand.join(","),
                "DRAIN_TIMEOUT reached with deliveries in hand; they stay queued and are delivered again after the restart"
            );
        }
        finished
    }
}
