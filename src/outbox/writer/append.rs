//! Storing one received message inside the batch's transaction: the object index (a
//! DICOM object stored before), retransmit detection, the record and body, the patient
//! index list, the queue entries of the connectors that take it, their copies (a failed
//! copy dead-lettered at once), and its audit record.

use std::collections::BTreeSet;

use redb::{ReadableTable, WriteTransaction};

use super::Writer;
use super::txn::{Tables, opened_once};
use crate::outbox::audit;
use crate::outbox::crypt::Place;
use crate::outbox::dedup::prefix;
use crate::outbox::schema::{
    self, BODIES, COPIES, INLINE_BODY_MAX, PATIENTS, QueueEntry, RouteStatus,
};
use crate::outbox::spool::{SPOOL, SPOOL_FILES};
use crate::outbox::{Appended, ConnectorId, MessageId, NewMessage, Seq, StoreError, StoredCopy};
use crate::outbox::{objects, patients};

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn append<'txn>(
        &self,
        transaction: &'txn WriteTransaction,
        tables: &mut Tables<'txn>,
        message: &NewMessage,
        tags: &[patients::Tag],
        next_id: &mut u64,
        now: i64,
        accepted: &mut Vec<([u8; 32], u64)>,
        woken: &mut BTreeSet<ConnectorId>,
    ) -> Result<Appended, StoreError> {
        if let Some(reference) = &message.spool
            && let Some(stored) = transaction
                .open_table(SPOOL_FILES)?
                .get(reference.file)?
                .map(|id| id.value())
        {
            // This very request, committed before (a retried commit that did reach the
            // disk): answered as stored, the file already its body.
            return Ok(Appended::Stored {
                id: MessageId(stored),
            });
        }
        if let Some(key) = &message.object {
            let salt = tables.salt;
            let messages = &tables.messages;
            let table = opened_once(&mut tables.objects, transaction, objects::OBJECTS)?;
            let seen = objects::lookup(table, salt, key, |id| Ok(messages.get(id)?.is_some()))?;
            if let objects::Seen::Same(original) = seen {
                // A duplicate's spooled file (named by no message: see above) goes once this
                // transaction is committed.
                if let Some(reference) = &message.spool {
                    tables.spool_removed.push(reference.file);
                }
                let event = audit::received(
                    original,
                    true,
                    &message.record,
                    &message.record.ack_code,
                    message.tls_identity.as_deref(),
                );
                tables.audit(transaction, now, event)?;
                return Ok(Appended::Duplicate {
                    id: MessageId(original),
                    ack: None,
                });
            }
        }
        let dedup_key = message.dedup_key.filter(|_| self.dedup.is_some());
        if let (Some(key), Some(index)) = (dedup_key, &self.dedup) {
            let candidate = accepted
                .iter()
                .rev()
                .find(|(pending, _)| *pending == key)
                .map(|(_, id)| *id)
                .or_else(|| index.candidate(prefix(&key), now));
            if let Some(original) = candidate {
                let stored = match tables.messages.get(original)? {
                    Some(value) => {
                        match schema::decode_message_record(&tables.keys, original, value.value()) {
                            Ok(stored) => Some(stored),
                            // The earlier message cannot be read: this one is taken as new (a
                            // duplicate delivered is better than a message dropped).
                            Err(error) if schema::is_damage(&error) => {
                                tracing::warn!(
                                    message_id = original,
                                    "the stored message a retransmission matches is damaged; the retransmission is accepted as a new message"
                                );
                                None
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    None => None,
                };
                if let Some(stored) = stored.filter(|stored| stored.dedup_key == Some(key)) {
                    let event = audit::received(
                        original,
                        true,
                        &message.record,
                        &stored.ack_code,
                        message.tls_identity.as_deref(),
                    );
                    tables.audit(transaction, now, event)?;
                    return Ok(Appended::Duplicate {
                        id: MessageId(original),
                        ack: stored.ack,
                    });
                }
            }
        }
        let id = *next_id;
        *next_id += 1;
        let mut record = message.record.clone();
        record.dedup_key = dedup_key;
        record.body_inline = message.spool.is_none() && message.body.len() <= INLINE_BODY_MAX;
        let inline = record.body_inline.then_some(message.body.as_ref());
        tables.messages.insert(
            id,
            schema::encode_message(&tables.keys, id, &record, inline)?.as_slice(),
        )?;
        if let Some(reference) = &message.spool {
            // The file is durable already; this entry, committed with the record, makes it
            // the message's body (ADR 0020).
            transaction.open_table(SPOOL)?.insert(
                id,
                schema::encode(&tables.keys, Place::Spool(id), reference)?.as_slice(),
            )?;
            transaction
                .open_table(SPOOL_FILES)?
                .insert(reference.file, id)?;
        } else if !record.body_inline {
            transaction.open_table(BODIES)?.insert(
                id,
                schema::encode_body(&tables.keys, id, &message.body).as_slice(),
            )?;
        }
        if !tags.is_empty() {
            let table = opened_once(&mut tables.patients, transaction, PATIENTS)?;
            patients::insert_list(table, id, tags)?;
        }
        if let Some(key) = &message.object {
            let salt = tables.salt;
            let table = opened_once(&mut tables.objects, transaction, objects::OBJECTS)?;
            objects::insert(table, salt, key, id)?;
        }
        for route in &record.routes {
            if route.status != RouteStatus::Queued {
                continue;
            }
            let entry = QueueEntry {
                message_id: MessageId(id),
                order_key: message
                    .order_keys
                    .iter()
                    .find(|(connector, _)| *connector == route.connector)
                    .map(|(_, key)| *key),
                ..QueueEntry::default()
            };
            let place = Place::Queue(route.connector.0, id);
            let replaced = tables
                .queue
                .insert(
                    (route.connector.0, id),
                    schema::encode(&tables.keys, place, &entry)?.as_slice(),
                )?
                .is_some();
            if !replaced {
                tables.depths.queue(route.connector, 1);
            }
            woken.insert(route.connector);
        }
        if !message.copies.is_empty() {
            let mut copies = transaction.open_table(COPIES)?;
            for (connector, copy) in &message.copies {
                debug_assert!(
                    record
                        .routes
                        .iter()
                        .any(|route| route.connector == *connector
                            && route.status == RouteStatus::Queued),
                    "copies only for connectors that take the message"
                );
                // The first entry's seq is the message id.
                let place = (id, connector.0, id);
                copies.insert(
                    place,
                    schema::encode_copy(&tables.keys, place, copy).as_slice(),
                )?;
            }
            drop(copies);
            for (connector, copy) in &message.copies {
                if let StoredCopy::Failed(reason) = copy {
                    // The transform failed: the entry goes to the dead-letter queue at once,
                    // with the step and the reason; the message is still accepted.
                    tables.delivery(transaction, now)?.dead_letter(
                        *connector,
                        Seq(id),
                        0,
                        reason,
                        None,
                    )?;
                }
            }
        }
        if let Some(key) = dedup_key {
            accepted.push((key, id));
        }
        let event = audit::received(
            id,
            false,
            &record,
            &record.ack_code,
            message.tls_identity.as_deref(),
        );
        tables.audit(transaction, now, event)?;
        Ok(Appended::Stored { id: MessageId(id) })
    }
}
