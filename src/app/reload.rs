//! Configuration reload: on SIGHUP, and when the file changes (its size, times and inode,
//! looked at every [`POLL`]), the file is loaded and compiled again. What intake decides with
//! (validation rules, filters, `order_by`, transform steps and tables, `tls_senders`, each
//! listener's `rules:`) is replaced for the next frame of every listener: a message is
//! decided by the old or the new configuration, never a mix. Connectors are added (their
//! names registered in the store first), removed (the worker stops after the delivery in
//! hand; queue and dead letters stay, shown as orphaned) or restarted when their delivery
//! as written changed; the others keep their workers and connections. Listeners are
//! prepared (TLS, ports, folders) before anything changes, then added, changed (taking over
//! the socket on the same address) or removed. A file that does not load, or that changes
//! the settings (which need a restart), keeps the running configuration, and says why. Every reload, applied or not,
//! is in the audit trail with the SHA-256 of the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::hl7::AckStamper;
use crate::ingest::{Ingest, RouteCounters};
use crate::outbox::Outbox;
use crate::outbox::audit::AuditEvent;

/// How often the file is looked at for a change.
const POLL: Duration = Duration::from_secs(2);

/// Every listener's ingest, and what their deciders are built with.
#[derive(Debug)]
pub(super) struct Deciders {
    /// `(listener name, ingest)`, in the order the listeners were bound.
    pub(super) listeners: Vec<(String, Ingest)>,
    /// The connectors' intake counters, shared by every listener (and kept over reloads
    /// for the connectors that stay).
    pub(super) route_counters: Vec<Arc<RouteCounters>>,
    /// The ACK stamps.
    pub(super) stamper: Arc<dyn AckStamper>,
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new configuration (listeners, connectors, rules, filters, transforms, tables,
    /// senders) is in force.
    Applied,
    /// The file is the one the gateway started with.
    Unchanged,
}

/// What a reload added, changed and removed (listeners or connectors), by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Changes {
    pub(super) added: Vec<String>,
    pub(super) changed: Vec<String>,
    pub(super) removed: Vec<String>,
}

impl Changes {
    /// Log them (names only), when there are any.
    fn log(&self, what: &str) {
        if *self != Self::default() {
            info!(
                added = %self.added.join(","),
                changed = %self.changed.join(","),
                removed = %self.removed.join(","),
                "{what}"
            );
        }
    }
}

/// A reload's outcome: in force, or every reason why not.
pub type Outcome = Result<Reloaded, Vec<String>>;

/// What reloads need between them.
pub(super) struct Reloader {
    file: PathBuf,
    deciders: Deciders,
    intake: Arc<super::intake::Intake>,
    outbox: Outbox,
    gateway: Arc<Gateway>,
    workers: Arc<super::delivery::Workers>,
    /// What must not change without a restart, as it was loaded.
    fixed: String,
    /// The SHA-256 of the file in force.
    in_force: String,
    /// The environment the configuration is read with.
    environment: super::Environment,
    /// What the reload of the file with the SHA-256 `in_force` gave (the same file is not
    /// loaded twice: asked again, it answers the same).
    last: Outcome,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Reloader")
            .field("file", &self.file)
            .field("in_force", &self.in_force)
            .finish_non_exhaustive()
    }
}

/// What a running gateway cannot change: the settings. Compared as a whole; never shown.
fn fixed_part(config: &Config) -> String {
    format!("{:?}\n", config.settings)
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::admin::auth::hex(&Sha256::digest(bytes))
}

impl Reloader {
    /// A reloader for the file `config` was loaded from; `None` without a file.
    pub(super) fn new(
        config: &Config,
        intake: Arc<super::intake::Intake>,
        outbox: Outbox,
        gateway: Arc<Gateway>,
        workers: Arc<super::delivery::Workers>,
        environment: super::Environment,
    ) -> Option<Self> {
        let file = config.file.clone()?;
        // The bytes the running configuration was read from.
        let in_force = config
            .sha256
            .map(|sha| crate::admin::auth::hex(&sha))
            .unwrap_or_default();
        Some(Self {
            file,
            deciders: intake.reload_handles(),
            intake,
            outbox,
            gateway,
            workers,
            fixed: fixed_part(config),
            in_force,
            environment,
            last: Ok(Reloaded::Unchanged),
        })
    }

    /// The file reloaded.
    pub(super) fn file(&self) -> &Path {
        &self.file
    }

    /// Load the file again and put what intake decides with in force; every problem, or
    /// what would need a restart, otherwise (the running configuration stays). The first
    /// value says whether the file was new (a file already reloaded answers as it did then).
    pub(super) async fn reload(&mut self) -> (bool, Outcome) {
        let bytes = match std::fs::read(&self.file) {
            Ok(bytes) => bytes,
            Err(error) => {
                return (
                    true,
                    Err(vec![format!(
                        "cannot read {}: {error}",
                        self.file.display()
                    )]),
                );
            }
        };
        let mut sha = sha256_hex(&bytes);
        if sha == self.in_force {
            return (false, self.last.clone());
        }
        let outcome = self.load(&self.file.clone()).await.map(|loaded| {
            // The bytes the configuration was read from (the file may have changed since
            // the read above): what the messages it decides carry.
            if let Some(loaded) = loaded {
                sha = crate::admin::auth::hex(&loaded);
            }
        });
        let audit_outcome = match &outcome {
            Ok(()) => format!("applied; sha256 {sha}"),
            Err(problems) => format!(
                "refused ({} problems), the running configuration stays; sha256 {sha}",
                problems.len()
            ),
        };
        let event = AuditEvent::Admin {
            token_id: "system".to_owned(),
            action: "config.reload".to_owned(),
            target: self.file.display().to_string(),
            outcome: audit_outcome,
        };
        if let Err(error) = self.outbox.audit(event).await {
            warn!(error = %crate::outbox::Chain(&error), "the configuration reload could not be written to the audit trail");
        }
        let counts = &self.gateway.reloads;
        match &outcome {
            Ok(()) => {
                counts
                    .applied
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(problems) => {
                counts
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut last) = counts.last_refusal.lock() {
                    *last = Some((
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        problems.len(),
                    ));
                }
            }
        }
        // A refused file is not tried again until it changes.
        self.in_force = sha;
        self.last = outcome.map(|()| Reloaded::Applied);
        (true, self.last.clone())
    }

    /// Load, check and put in force; the SHA-256 of the bytes loaded.
    async fn load(&mut self, file: &Path) -> Result<Option<[u8; 32]>, Vec<String>> {
        let environment = Arc::clone(&self.environment);
        let lookup = move |name: &str| environment(name);
        let config = Config::load_with(Some(file), &lookup)
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let compiled = config
            .compile()
            .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let fixed = fixed_part(&config);
        if fixed != self.fixed {
            return Err(vec!["the settings changed: that needs a restart (a reload changes listeners, connectors, rules, filters, order_by, transforms, tables and tls_senders)".to_owned()]);
        }
        // New connectors get their ids (durably) before anything routes to them.
        let names: Vec<String> = config.connectors.iter().map(|c| c.name.clone()).collect();
        self.outbox.register(&names).await.map_err(|error| {
            vec![format!(
                "cannot register the connectors in the store: {}",
                crate::outbox::Chain(&error)
            )]
        })?;
        let rules = Arc::new(compiled.rules);
        let transforms = Arc::new(compiled.transforms);
        // The intake counters of the connectors that stay are kept; a connector new to
        // this file gets one set, shared by every listener.
        let mut counters = self.deciders.route_counters.clone();
        let mut built = Vec::with_capacity(config.listeners.len());
        let mut replaced = Vec::new();
        for listener in &config.listeners {
            let decider = super::intake::decider(
                &config,
                listener,
                &rules,
                &transforms,
                &self.outbox,
                &self.deciders.stamper,
                Some(&counters),
            )
            .map_err(|error| vec![format!("{error:#}")])?;
            for route in decider.route_counters() {
                if !counters
                    .iter()
                    .any(|known| known.connector == route.connector)
                {
                    counters.push(Arc::clone(route));
                }
            }
            let name = &listener.settings.name;
            let batches = listener.settings.batches;
            // A listener that stays (changed or not) keeps its ingest, whose decider every
            // connection shares: connections it keeps open decide with the new one too.
            let ingest = match self.deciders.listeners.iter().find(|(n, _)| n == name) {
                Some((_, ingest)) => {
                    replaced.push((ingest.clone(), decider));
                    ingest.clone().with_batches(batches)
                }
                None => Ingest::with_decider(decider, self.outbox.clone()).with_batches(batches),
            };
            built.push((listener, ingest));
        }
        // Listeners added or changed: TLS loaded and ports bound before anything changes (a
        // bad certificate or a port in use refuses the reload).
        let prepared = {
            let intake = Arc::clone(&self.intake);
            super::intake::prepare(built, move |listener| intake.plan(listener))
                .await
                .map_err(|error| vec![format!("{error:#}")])?
        };
        // Every listener decides with the new configuration from its next frame; then the
        // listeners and the workers follow: added ones start, removed and changed ones stop
        // (connectors after the delivery in hand; changed ones start again on the same
        // queue). What a removed connector was given before the switch stays in its queue.
        for (ingest, decider) in replaced {
            ingest.replace(decider);
        }
        let listeners = self.intake.apply(prepared).await;
        self.deciders.listeners = self.intake.reload_handles().listeners;
        self.gateway
            .replace_listeners(super::listener_handles(&self.intake));
        listeners.log("listeners reloaded: connections of changed ones stay open, removed ones' close between frames");
        let changes = self.workers.apply(&config).await;
        self.gateway.replace_transforms(transforms);
        let names = super::known_connectors(&self.outbox)
            .await
            .unwrap_or_else(|_| self.gateway.connector_names().as_ref().clone());
        self.gateway.replace_connectors(
            super::connector_handles(&config, &self.outbox, &self.workers, &counters),
            names,
        );
        self.deciders.route_counters = counters;
        changes.log(
            "connectors reloaded: removed ones keep their queues and dead letters (shown as orphaned)",
        );
        Ok(config.sha256)
    }
}

/// Reload on SIGHUP and when the file changes, until `shutdown`.
pub(super) async fn watch(
    reloader: Arc<tokio::sync::Mutex<Reloader>>,
    shutdown: CancellationToken,
) {
    let mut hangups = crate::shutdown::Hangups::install();
    let file = reloader.lock().await.file.clone();
    let mut seen = crate::tls::fingerprint([&file]);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = hangups.recv() => {}
            () = tokio::time::sleep(POLL) => {
                let now = crate::tls::fingerprint([&file]);
                if now == seen {
                    continue;
                }
                seen = now;
            }
        }
        let (fresh, reloaded) = reloader.lock().await.reload().await;
        if fresh {
            report(&file, &reloaded);
        }
    }
}

/// Log what a reload did.
pub(super) fn report(file: &Path, reloaded: &Outcome) {
    {
        match reloaded {
            Ok(Reloaded::Applied) => {
                info!(file = %file.display(), "configuration reloaded: listeners, connectors, rules, filters, order_by, transforms, tables and tls_senders in force from the next message")
            }
            Ok(Reloaded::Unchanged) => {}
            Err(problems) => {
                for problem in problems {
                    error!(file = %file.display(), problem = %problem, "configuration reload refused");
                }
                error!(file = %file.display(), problems = problems.len(), "configuration reload refused; the running configuration stays");
            }
        }
    }
}
