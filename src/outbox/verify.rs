//! Finding damage: read every record of a store and check it (its checksum, that it decodes,
//! the audit chain), and, offline, redb's own check of its pages. `mfoundry store verify`
//! runs it on a stopped gateway's `DATA_DIR`; the gateway runs the record part in the
//! background (`STORE_VERIFY_INTERVAL`) and counts what it finds.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;

use super::audit::{self, Verification};
use super::crypt::{Keys, Place};
use super::open::{OpenReport, open_with};
use super::schema::{
    self, AUDIT, BODIES, CONNECTORS, COPIES, DELIVERIES, DLQ, DeliveryRecord, DlqEntry, MESSAGES,
    META, QUEUE, QueueEntry,
};
use super::{OpenError, OutboxOptions, StoreError};
use crate::outbox::journal::Policy;

/// Most damaged records listed (all are counted).
const MAX_LISTED: usize = 100;

/// What a verification found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StoreReport {
    /// redb's check of its pages and trees (offline only): `true` passed, `false` it found
    /// problems (repaired, or not: see `redb_problem`); `None` when not run.
    pub redb_intact: Option<bool>,
    /// What redb's check found when it could not repair it.
    pub redb_problem: Option<String>,
    /// Records read, per table.
    pub records: BTreeMap<&'static str, u64>,
    /// Damaged records, at most 100, each named by table and key (never content).
    pub damaged: Vec<String>,
    /// Damaged records in all.
    pub damaged_count: u64,
    /// Records written before checksums existed (format 1): read, but not checkable.
    pub unchecked: u64,
    /// With a store key: values still stored plain (written before the key was set);
    /// `mfoundry store rekey` seals them. Zero without a key.
    pub unsealed: u64,
    /// The audit trail's chain.
    pub audit: Verification,
}

impl StoreReport {
    /// True when nothing is damaged (redb's check passed, if it ran; no record damaged; the
    /// audit chain intact).
    pub fn is_intact(&self) -> bool {
        self.redb_intact != Some(false) && self.damaged_count == 0 && self.audit.is_intact()
    }

    fn damaged(&mut self, what: String) {
        self.damaged_count += 1;
        if self.damaged.len() < MAX_LISTED {
            self.damaged.push(what);
        }
    }

    fn count(&mut self, table: &'static str) {
        *self.records.entry(table).or_default() += 1;
    }
}

/// Read and check every record through a read transaction (works while the gateway runs).
pub(super) fn read_all(
    transaction: &redb::ReadTransaction,
    keys: &Keys,
    spool: Option<&super::spool::Spool>,
    removed_since: &dyn Fn(u64, u128) -> bool,
) -> Result<StoreReport, StoreError> {
    let mut report = StoreReport::default();
    let seen = |report: &mut StoreReport, place: Place, stored: &[u8]| {
        if keys.encrypts() && !keys.is_sealed(place, stored) {
            report.unsealed += 1;
        }
    };
    let messages = transaction.open_table(MESSAGES)?;
    let bodies = transaction.open_table(BODIES)?;
    let spooled = transaction.open_table(super::spool::SPOOL)?;
    for entry in messages.iter()? {
        let (key, value) = entry?;
        let id = key.value();
        report.count("messages");
        seen(&mut report, Place::Message(id), value.value());
        match schema::decode_message_checked(keys, id, value.value()) {
            Ok(decoded) => {
                if !decoded.checked {
                    report.unchecked += 1;
                }
                if !decoded.record.body_inline {
                    match bodies.get(id)? {
                        Some(body) => {
                            report.count("bodies");
                            seen(&mut report, Place::Body(id), body.value());
                            if let Err(error) = schema::check_body(keys, id, &decoded, body.value())
                            {
                                report.damaged(format!("bodies {id}: {error}"));
                            }
                        }
                        None => match spooled.get(id)? {
                            Some(entry) => {
                                report.count("spool");
                                seen(&mut report, Place::Spool(id), entry.value());
                                if let Err(error) = check_spooled(
                                    keys,
                                    spool,
                                    id,
                                    &decoded,
                                    entry.value(),
                                    removed_since,
                                ) {
                                    report.damaged(format!("spool {id}: {error}"));
                                }
                            }
                            None => report.damaged(format!("bodies {id}: missing")),
                        },
                    }
                }
            }
            Err(error) => report.damaged(format!("messages {id}: {error}")),
        }
    }
    let queue = transaction.open_table(QUEUE)?;
    for entry in queue.iter()? {
        let (key, value) = entry?;
        let (connector, seq) = key.value();
        report.count("queue");
        let place = Place::Queue(connector, seq);
        seen(&mut report, place, value.value());
        if let Err(error) = schema::decode::<QueueEntry>(keys, place, value.value()) {
            report.damaged(format!("queue {connector}/{seq}: {error}"));
        }
    }
    let dlq = transaction.open_table(DLQ)?;
    for entry in dlq.iter()? {
        let (key, value) = entry?;
        let (connector, seq) = key.value();
        report.count("dlq");
        let place = Place::Dlq(connector, seq);
        seen(&mut report, place, value.value());
        if let Err(error) = schema::decode::<DlqEntry>(keys, place, value.value()) {
            report.damaged(format!("dlq {connector}/{seq}: {error}"));
        }
    }
    let deliveries = transaction.open_table(DELIVERIES)?;
    for entry in deliveries.iter()? {
        let (key, value) = entry?;
        let (id, connector) = key.value();
        report.count("deliveries");
        let place = Place::Delivery(id, connector);
        seen(&mut report, place, value.value());
        if let Err(error) = schema::decode::<DeliveryRecord>(keys, place, value.value()) {
            report.damaged(format!("deliveries {id}/{connector}: {error}"));
        }
    }
    let copies = transaction.open_table(COPIES)?;
    for entry in copies.iter()? {
        let (key, value) = entry?;
        let (id, connector, seq) = key.value();
        report.count("copies");
        seen(&mut report, Place::Copy(id, connector, seq), value.value());
        if let Err(error) = schema::decode_copy(keys, (id, connector, seq), value.value()) {
            report.damaged(format!("copies {id}/{connector}/{seq}: {error}"));
        }
    }
    let connectors = transaction.open_table(CONNECTORS)?;
    for entry in connectors.iter()? {
        entry?;
        report.count("connectors");
    }
    let meta = transaction.open_table(META)?;
    for entry in meta.iter()? {
        entry?;
        report.count("meta");
    }
    let audit_table = transaction.open_table(AUDIT)?;
    let first = schema::read_meta(&meta, "audit_first_seq")?;
    for entry in audit_table.iter()? {
        let (key, value) = entry?;
        seen(&mut report, Place::Audit(key.value()), value.value());
    }
    report.audit = audit::verify(keys, &audit_table, &messages, first)?;
    *report.records.entry("audit").or_default() = report.audit.records;
    Ok(report)
}

/// Open a stopped store as the gateway does (its journal replayed), run redb's own check,
/// then read every record. Refuses as the gateway would (see [`OpenError`]); damage found
/// once the store is open is reported, not an error. Nothing is written to the store: the
/// open, the replay and redb's check work on an in-memory view ([`super::storage::Overlay`]).
pub fn verify_offline(options: &OutboxOptions) -> Result<(OpenReport, StoreReport), OpenError> {
    let view = OutboxOptions {
        storage: std::sync::Arc::new(super::storage::Overlay::new(std::sync::Arc::clone(
            &options.storage,
        ))),
        ..options.clone()
    };
    let (mut database, opened) = open_with(&view, Policy::Strict)?;
    let (redb_intact, redb_problem) = match database.check_integrity() {
        Ok(intact) => (intact, None),
        Err(error) => (false, Some(super::Chain(&error).to_string())),
    };
    let read = (|| -> Result<StoreReport, StoreError> {
        let transaction = database.begin_read()?;
        let spool = options
            .storage
            .spool_dir()
            .map(|dir| super::spool::Spool::reading(dir, options.keys.clone()));
        read_all(&transaction, &options.keys, spool.as_ref(), &|_, _| false)
    })();
    let mut report = match read {
        Ok(report) => report,
        Err(error) => {
            let mut report = StoreReport::default();
            report.damaged(format!(
                "the tables cannot be read to the end: {}",
                super::Chain(&error)
            ));
            report
        }
    };
    report.redb_intact = Some(redb_intact);
    report.redb_problem = redb_problem;
    Ok((opened, report))
}

/// A spooled body's entry, and its whole file when the spool is at hand.
fn check_spooled(
    keys: &Keys,
    spool: Option<&super::spool::Spool>,
    id: u64,
    decoded: &schema::DecodedMessage<'_>,
    entry: &[u8],
    removed_since: &dyn Fn(u64, u128) -> bool,
) -> Result<(), StoreError> {
    let reference: super::spool::SpoolRef = schema::decode(keys, Place::Spool(id), entry)?;
    if reference.len != decoded.record.body_len {
        return Err(StoreError::Damaged(
            "its length differs from its record's".to_owned(),
        ));
    }
    match spool.map(|spool| spool.check(&reference)) {
        // Removed by retention while this pass ran: not damage.
        Some(Err(_)) if removed_since(id, reference.file) => Ok(()),
        Some(result) => result,
        None => Ok(()),
    }
}
