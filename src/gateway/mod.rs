//! The gateway's shared state: the outbox, the connectors with their workers and intake
//! counters, the listeners, readiness. The admin API and the metrics read it
//! ([`observe`]); the app builds it once everything is started.

pub mod observe;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use crate::delivery::WorkerControl;
use crate::hl7::Charset;
use crate::ingest::RouteCounters;
use crate::locks::{read, write};
use crate::mllp::ListenerStats;
use crate::outbox::Outbox;

/// Whether the gateway takes traffic, for `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness(AtomicU8);

const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Config loaded, store open, listener bound.
    pub fn set_ready(&self) {
        self.0.store(READY, Ordering::Release);
    }

    /// Shutdown started: no new traffic.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// `starting`, `ready` or `draining`.
    pub fn state(&self) -> &'static str {
        match self.0.load(Ordering::Acquire) {
            READY => "ready",
            DRAINING => "draining",
            _ => "starting",
        }
    }
}

/// One connector as the admin API and the metrics see it.
#[derive(Debug, Clone)]
pub struct ConnectorHandle {
    /// Name.
    pub name: String,
    /// Output kind (`mllp`, `http`, `file`, `postgres`).
    pub kind: &'static str,
    /// Whether its output sends HL7 (a DICOM object it takes becomes an ORU^R01 or a dead
    /// letter, ADR 0020).
    pub sends_hl7: bool,
    /// Outbox id.
    pub id: crate::outbox::ConnectorId,
    /// Its delivery worker (absent for a connector without an output).
    pub worker: Option<WorkerControl>,
    /// What intake decided for it.
    pub intake: Option<Arc<RouteCounters>>,
}

/// One listener as the admin API and the metrics see it.
#[derive(Debug, Clone)]
pub struct ListenerHandle {
    /// Name (`LISTENER_NAME`).
    pub name: String,
    /// Its counters.
    pub stats: Arc<ListenerStats>,
    /// Its certificate's expiry and reloads, when TLS is on.
    pub tls: Option<Arc<crate::tls::ReloadStats>>,
}

/// The gateway's shared state: what the admin API and the metrics read.
#[derive(Debug)]
pub struct Gateway {
    /// The outbox (reads are MVCC snapshots; writes go through its writer).
    pub outbox: Outbox,
    /// Configured connectors, in configuration order (replaced by a configuration reload;
    /// read through [`Gateway::connectors`]).
    pub connectors: std::sync::RwLock<Arc<Vec<ConnectorHandle>>>,
    /// Every connector name the data file knows (configured or not), by outbox id (read
    /// through [`Gateway::connector_names`]).
    pub connector_names: std::sync::RwLock<Arc<ConnectorNames>>,
    /// Listeners, in configuration order (replaced by a configuration reload; read through
    /// [`Gateway::listeners`]).
    pub listeners: std::sync::RwLock<Arc<Vec<ListenerHandle>>>,
    /// For `/readyz`.
    pub readiness: Arc<Readiness>,
    /// Decodes bodies whose MSH-18 is empty.
    pub default_charset: Charset,
    /// The connectors' transform steps, for reprocessing (replaced by a configuration
    /// reload; read through [`Gateway::transforms`]).
    pub transforms: std::sync::RwLock<Arc<crate::transform::Transforms>>,
    /// When the gateway started.
    pub started: Instant,
    /// Configuration reloads since start.
    pub reloads: ReloadCounts,
}

/// Connector names by outbox id.
pub type ConnectorNames = std::collections::HashMap<crate::outbox::ConnectorId, String>;

/// Configuration reloads since start (`stats`).
#[derive(Debug, Default)]
pub struct ReloadCounts {
    /// New files put in force.
    pub applied: std::sync::atomic::AtomicU64,
    /// New files refused (the running configuration stayed).
    pub refused: std::sync::atomic::AtomicU64,
    /// The last refusal: when (RFC 3339) and how many problems (the log has them).
    pub last_refusal: std::sync::Mutex<Option<(String, usize)>>,
}

impl Gateway {
    /// The connectors' transform steps in force now.
    pub fn transforms(&self) -> Arc<crate::transform::Transforms> {
        Arc::clone(&read(&self.transforms))
    }

    /// Use these transform steps from now on (a configuration reload).
    pub fn replace_transforms(&self, transforms: Arc<crate::transform::Transforms>) {
        *write(&self.transforms) = transforms;
    }

    /// The listeners now, in configuration order.
    pub fn listeners(&self) -> Arc<Vec<ListenerHandle>> {
        Arc::clone(&read(&self.listeners))
    }

    /// The listeners from now on (a configuration reload).
    pub fn replace_listeners(&self, listeners: Vec<ListenerHandle>) {
        *write(&self.listeners) = Arc::new(listeners);
    }

    /// The configured connectors now, in configuration order.
    pub fn connectors(&self) -> Arc<Vec<ConnectorHandle>> {
        Arc::clone(&read(&self.connectors))
    }

    /// Every connector name the data file knows, by outbox id.
    pub fn connector_names(&self) -> Arc<ConnectorNames> {
        Arc::clone(&read(&self.connector_names))
    }

    /// Connectors the data file knows that are not configured (removed from the file):
    /// their queues and dead letters stay in the store. Name and id, by name.
    pub fn orphaned(&self) -> Vec<(String, crate::outbox::ConnectorId)> {
        let configured = self.connectors();
        let mut orphaned: Vec<(String, crate::outbox::ConnectorId)> = self
            .connector_names()
            .iter()
            .filter(|(id, _)| !configured.iter().any(|c| c.id == **id))
            .map(|(id, name)| (name.clone(), *id))
            .collect();
        orphaned.sort();
        orphaned
    }

    /// The configured connectors from now on (a configuration reload), and the names the
    /// data file knows.
    pub fn replace_connectors(&self, connectors: Vec<ConnectorHandle>, names: ConnectorNames) {
        // Connectors first: a connector just added is never seen as orphaned.
        *write(&self.connectors) = Arc::new(connectors);
        *write(&self.connector_names) = Arc::new(names);
    }

    /// A configured connector by name.
    pub fn connector(&self, name: &str) -> Option<ConnectorHandle> {
        self.connectors()
            .iter()
            .find(|connector| connector.name == name)
            .cloned()
    }

    /// The name of a connector id (`#id` when the file does not know it).
    pub fn connector_name(&self, id: crate::outbox::ConnectorId) -> String {
        self.connector_names()
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }
}
