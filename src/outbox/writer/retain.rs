//! Retention inside the writer's transaction: remove, in bounded steps, the messages every
//! connector is done with.

use std::collections::HashMap;

use redb::{ReadableTable, WriteTransaction};

use super::delivery::Delivery;
use super::txn::{Tables, opened_once};
use crate::outbox::crypt::{Keys, Place};
use crate::outbox::schema::{self, BODIES, COPIES, DeliveryRecord, PATIENTS, RouteStatus};
use crate::outbox::spool::{SPOOL, SPOOL_FILES, SpoolRef};
use crate::outbox::{ConnectorId, MessageId, Retained, StoreError};
use crate::outbox::{objects, patients};

/// One bounded retention step (see [`crate::outbox::Outbox::retain`]).
pub(super) fn retain<'txn>(
    transaction: &'txn WriteTransaction,
    tables: &mut Tables<'txn>,
    cutoff_micros: i64,
    after: Option<MessageId>,
    max_scan: usize,
) -> Result<Retained, StoreError> {
    let mut retained = Retained::default();
    let mut removable = Vec::new();
    let mut reached_cutoff = true;
    let mut last_scanned = after;
    let Delivery {
        messages,
        deliveries,
        keys,
        ..
    } = tables.delivery(transaction, 0)?;
    let start = after.map_or(0, |after| after.0.saturating_add(1));
    for entry in messages.range(start..)? {
        if retained.scanned as usize >= max_scan {
            reached_cutoff = false;
            break;
        }
        let (id, value) = entry?;
        let id = id.value();
        let record = match schema::decode_message_record(keys, id, value.value()) {
            Ok(record) => record,
            Err(error) if schema::is_damage(&error) => {
                // Kept, as evidence (`mfoundry store verify` names it), and stepped over:
                // one damaged record must not stop retention for every message after it.
                retained.scanned += 1;
                retained.damaged += 1;
                last_scanned = Some(MessageId(id));
                continue;
            }
            Err(error) => return Err(error),
        };
        if record.received_at_micros >= cutoff_micros {
            break;
        }
        retained.scanned += 1;
        last_scanned = Some(MessageId(id));
        if message_is_done(keys, &*deliveries, id, &record)? {
            // A DICOM object's entry in the object index goes with it (ADR 0020).
            let object = (record.header.msg_type == "DICOM")
                .then(|| (record.listener.clone(), record.header.control_id.clone()));
            removable.push((id, record.body_inline, object));
        }
    }
    let mut bodies = None;
    let mut spool = None;
    let mut removed_files = Vec::new();
    let mut copies = if removable.is_empty() {
        None
    } else {
        Some(transaction.open_table(COPIES)?)
    };
    for (id, inline, _) in &removable {
        messages.remove(*id)?;
        if !inline {
            let table = match bodies.take() {
                Some(table) => table,
                None => transaction.open_table(BODIES)?,
            };
            bodies.insert(table).remove(*id)?;
            let table = match spool.take() {
                Some(table) => table,
                None => transaction.open_table(SPOOL)?,
            };
            let table = spool.insert(table);
            if let Some(value) = table.remove(*id)? {
                // The file goes once this transaction is committed; an entry that does not
                // open leaves its file to the sweep at the next open.
                if let Ok(reference) =
                    schema::decode::<SpoolRef>(keys, Place::Spool(*id), value.value())
                {
                    transaction
                        .open_table(SPOOL_FILES)?
                        .remove(reference.file)?;
                    removed_files.push(reference.file);
                }
            }
        }
        deliveries.retain_in((*id, 0)..=(*id, u32::MAX), |_, _| false)?;
        if let Some(copies) = copies.as_mut() {
            copies.retain_in((*id, 0, 0)..=(*id, u32::MAX, u64::MAX), |_, _| false)?;
        }
    }
    tables.spool_removed.extend(removed_files);
    // Their patient index entries (the table may be open already, for an append).
    for (id, _, object) in &removable {
        if let Some((listener, uid)) = object {
            let salt = tables.salt;
            let table = opened_once(&mut tables.objects, transaction, objects::OBJECTS)?;
            objects::remove(table, salt, listener, uid, *id)?;
        }
        patients::remove(
            opened_once(&mut tables.patients, transaction, PATIENTS)?,
            *id,
        )?;
    }
    retained.removed = removable.len() as u64;
    retained.resume_after = if reached_cutoff { None } else { last_scanned };
    Ok(retained)
}

/// True when no connector holds this message any more: every route queued at intake has a
/// delivery record, and no record holds a queue or dead-letter entry.
fn message_is_done(
    keys: &Keys,
    deliveries: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: u64,
    record: &schema::MessageRecord,
) -> Result<bool, StoreError> {
    let mut states = HashMap::new();
    for entry in deliveries.range((id, 0)..=(id, u32::MAX))? {
        let (key, value) = entry?;
        let (message, connector) = key.value();
        let place = Place::Delivery(message, connector);
        let state: DeliveryRecord = match schema::decode(keys, place, value.value()) {
            Ok(state) => state,
            // Unknown state: the message is kept.
            Err(error) if schema::is_damage(&error) => return Ok(false),
            Err(error) => return Err(error),
        };
        if state.held > 0 {
            return Ok(false);
        }
        states.insert(ConnectorId(connector), state.status);
    }
    Ok(record
        .routes
        .iter()
        .filter(|route| route.status == RouteStatus::Queued)
        .all(|route| states.contains_key(&route.connector)))
}
