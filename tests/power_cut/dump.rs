//! The logical content of a store, what a request's acknowledgement promises: read from an
//! outbox through one snapshot (connectors, messages and bodies, queues, dead letters,
//! deliveries, the audit trail), and what differs between two, briefly, for failure messages.

use std::collections::BTreeMap;

use mfoundry::outbox::audit::AuditRecord;
use mfoundry::outbox::{
    ConnectorId, DeliveryRecord, DlqEntry, MessageRecord, Outbox, QueueEntry, Seq,
};
use serde::{Deserialize, Serialize};

/// The logical content of a store: what a request's acknowledgement promises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Dump {
    pub(crate) connectors: BTreeMap<String, ConnectorId>,
    pub(crate) messages: BTreeMap<u64, (MessageRecord, Vec<u8>)>,
    pub(crate) queues: BTreeMap<ConnectorId, Vec<(Seq, QueueEntry)>>,
    pub(crate) dead: BTreeMap<ConnectorId, Vec<(Seq, DlqEntry)>>,
    pub(crate) deliveries: BTreeMap<u64, Vec<(ConnectorId, DeliveryRecord)>>,
    pub(crate) audit: Vec<(u64, AuditRecord)>,
}

pub(crate) fn dump(outbox: &Outbox) -> Result<Dump, String> {
    let snapshot = outbox.snapshot().map_err(|error| error.to_string())?;
    let failed = |error: mfoundry::outbox::StoreError| error.to_string();
    let mut dump = Dump {
        connectors: snapshot.connectors().map_err(failed)?.into_iter().collect(),
        messages: BTreeMap::new(),
        queues: BTreeMap::new(),
        dead: BTreeMap::new(),
        deliveries: BTreeMap::new(),
        audit: snapshot.audit_records(None, usize::MAX).map_err(failed)?,
    };
    for (id, record) in snapshot.messages().map_err(failed)? {
        let body = snapshot
            .body(id)
            .map_err(failed)?
            .ok_or_else(|| format!("message {id} has no body"))?;
        dump.messages.insert(id.0, (record, body));
        let deliveries = snapshot.deliveries(id).map_err(failed)?;
        if !deliveries.is_empty() {
            dump.deliveries.insert(id.0, deliveries);
        }
    }
    for id in dump.connectors.values() {
        dump.queues
            .insert(*id, snapshot.queue(*id).map_err(failed)?);
        dump.dead
            .insert(*id, snapshot.dead_letters(*id).map_err(failed)?);
    }
    Ok(dump)
}

/// What differs between two dumps, briefly (for failure messages).
pub(crate) fn diff(found: &Dump, expected: &Dump) -> String {
    let mut out = Vec::new();
    let found_ids: Vec<&u64> = found.messages.keys().collect();
    let expected_ids: Vec<&u64> = expected.messages.keys().collect();
    if found_ids != expected_ids {
        out.push(format!("message ids {found_ids:?} vs {expected_ids:?}"));
    } else if found.messages != expected.messages {
        out.push("message contents differ".to_owned());
    }
    if found.queues != expected.queues {
        out.push(format!(
            "queues {:?} vs {:?}",
            found.queues, expected.queues
        ));
    }
    if found.dead != expected.dead {
        out.push("dead letters differ".to_owned());
    }
    if found.deliveries != expected.deliveries {
        out.push("deliveries differ".to_owned());
    }
    if found.audit.len() != expected.audit.len() || found.audit != expected.audit {
        out.push(format!(
            "audit {} vs {} records",
            found.audit.len(),
            expected.audit.len()
        ));
    }
    if found.connectors != expected.connectors {
        out.push("connectors differ".to_owned());
    }
    out.join("; ")
}

impl Dump {
    pub(crate) fn default_empty() -> Self {
        Self {
            connectors: BTreeMap::new(),
            messages: BTreeMap::new(),
            queues: BTreeMap::new(),
            dead: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            audit: Vec::new(),
        }
    }
}
