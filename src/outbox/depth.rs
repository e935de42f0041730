//! How many entries each connector's queue and dead-letter queue hold, kept by the writer so
//! monitoring (`/stats`, the metrics) reads two numbers instead of walking every entry of a
//! large backlog. Counted once at open and after every reopen (a commit that reported an
//! error may still have landed); each committed batch applies what it added and removed.
//! The figures are as of the last commit, which may be a moment newer than a snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::StoreError;
use super::schema::{self, ConnectorId};

/// One connector's figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    /// Entries in its queue.
    pub queued: u64,
    /// Entries in its dead-letter queue.
    pub dead: u64,
}

/// Every connector's figures, shared by the writer and the readers.
#[derive(Debug, Default)]
pub(crate) struct Depths {
    per_connector: Mutex<HashMap<ConnectorId, Depth>>,
}

impl Depths {
    /// Count every entry of both tables once (at open and after a reopen).
    pub(crate) fn recount(&self, database: &Database) -> Result<(), StoreError> {
        let transaction = database.begin_read()?;
        let mut counted: HashMap<ConnectorId, Depth> = HashMap::new();
        for (table, field) in [
            (
                schema::QUEUE,
                (|depth: &mut Depth| &mut depth.queued) as fn(&mut Depth) -> &mut u64,
            ),
            (schema::DLQ, |depth: &mut Depth| &mut depth.dead),
        ] {
            let table = match transaction.open_table(table) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(error) => return Err(error.into()),
            };
            for entry in table.iter()? {
                *field(counted.entry(ConnectorId(entry?.0.value().0)).or_default()) += 1;
            }
        }
        if let Ok(mut per_connector) = self.per_connector.lock() {
            *per_connector = counted;
        }
        Ok(())
    }

    /// Apply what a committed batch changed.
    pub(crate) fn apply(&self, changes: &DepthChanges) {
        if changes.0.is_empty() {
            return;
        }
        if let Ok(mut per_connector) = self.per_connector.lock() {
            for (connector, (queued, dead)) in &changes.0 {
                let depth = per_connector.entry(*connector).or_default();
                depth.queued = depth.queued.saturating_add_signed(*queued);
                depth.dead = depth.dead.saturating_add_signed(*dead);
            }
        }
    }

    /// A connector's figures as of the last commit.
    pub(crate) fn get(&self, connector: ConnectorId) -> Depth {
        self.per_connector
            .lock()
            .ok()
            .and_then(|per_connector| per_connector.get(&connector).copied())
            .unwrap_or_default()
    }
}

/// What one transaction added to (+) and removed from (-) each connector's queue and
/// dead-letter queue; applied only once it is committed.
#[derive(Debug, Default)]
pub(crate) struct DepthChanges(BTreeMap<ConnectorId, (i64, i64)>);

impl DepthChanges {
    /// An entry entered (+1) or left (-1) `connector`'s queue.
    pub(crate) fn queue(&mut self, connector: ConnectorId, change: i64) {
        self.0.entry(connector).or_default().0 += change;
    }

    /// An entry entered (+1) or left (-1) `connector`'s dead-letter queue.
    pub(crate) fn dead(&mut self, connector: ConnectorId, change: i64) {
        self.0.entry(connector).or_default().1 += change;
    }
}
