//! The delivery-state operations one transaction applies: a delivered entry, a retry, a dead
//! letter, a replay, a purge; each keeps the connector's delivery record and the queue sizes
//! in step.

use redb::{ReadableTable, Table};

use crate::outbox::crypt::{Keys, Place};
use crate::outbox::depth::DepthChanges;
use crate::outbox::schema::{
    self, DeliveryRecord, DeliveryStatus, DlqEntry, EntryRef, MAX_HISTORY, PastEntry, QueueEntry,
    RouteStatus,
};
use crate::outbox::{ConnectorId, MessageId, Seq, StoreError};

/// The tables a delivery-state operation touches, for one operation.
pub(super) struct Delivery<'a, 'txn> {
    pub(super) messages: &'a mut Table<'txn, u64, &'static [u8]>,
    pub(super) queue: &'a mut Table<'txn, (u32, u64), &'static [u8]>,
    pub(super) dlq: &'a mut Table<'txn, (u32, u64), &'static [u8]>,
    pub(super) deliveries: &'a mut Table<'txn, (u64, u32), &'static [u8]>,
    pub(super) depths: &'a mut DepthChanges,
    pub(super) keys: &'a Keys,
    pub(super) now: i64,
}

impl Delivery<'_, '_> {
    /// What the connector held of the message before this operation: the latest record's
    /// count or, when nothing happened since intake, whether intake queued it there.
    pub(super) fn held_before(
        &self,
        message_id: MessageId,
        connector: ConnectorId,
        queued_at_intake: impl FnOnce() -> Result<bool, StoreError>,
    ) -> Result<u32, StoreError> {
        let held = match self.deliveries.get((message_id.0, connector.0))? {
            Some(value) => match schema::decode::<DeliveryRecord>(
                self.keys,
                Place::Delivery(message_id.0, connector.0),
                value.value(),
            ) {
                Ok(record) => Some(record.held),
                // A damaged record is written anew by the caller: count as intake did.
                Err(error) if schema::is_damage(&error) => None,
                Err(error) => return Err(error),
            },
            None => None,
        };
        match held {
            Some(held) => Ok(held),
            None => Ok(u32::from(queued_at_intake()?)),
        }
    }

    /// An entry that is (or was) in a queue or DLQ counts as held when no record says
    /// otherwise.
    pub(super) fn held(
        &self,
        message_id: MessageId,
        connector: ConnectorId,
    ) -> Result<u32, StoreError> {
        self.held_before(message_id, connector, || Ok(true))
    }

    pub(super) fn record(
        &mut self,
        message_id: MessageId,
        connector: ConnectorId,
        status: DeliveryStatus,
        attempts: u32,
        last_error: Option<String>,
        held: u32,
    ) -> Result<(), StoreError> {
        if message_id == schema::UNKNOWN_MESSAGE {
            // A damaged entry whose message is unknown: there is no message to record for.
            return Ok(());
        }
        let record = DeliveryRecord {
            status,
            at_micros: self.now,
            attempts,
            last_error,
            held,
        };
        let place = Place::Delivery(message_id.0, connector.0);
        self.deliveries.insert(
            (message_id.0, connector.0),
            schema::encode(self.keys, place, &record)?.as_slice(),
        )?;
        Ok(())
    }

    pub(super) fn take_queue_entry(
        &mut self,
        connector: ConnectorId,
        seq: Seq,
    ) -> Result<Option<QueueEntry>, StoreError> {
        match self.queue.remove((connector.0, seq.0))? {
            Some(value) => Ok(Some({
                self.depths.queue(connector, -1);
                schema::read_queue_entry(self.keys, (connector.0, seq.0), value.value())?
            })),
            None => Ok(None),
        }
    }

    pub(super) fn take_dead_letter(
        &mut self,
        connector: ConnectorId,
        seq: Seq,
    ) -> Result<Option<DlqEntry>, StoreError> {
        match self.dlq.remove((connector.0, seq.0))? {
            Some(value) => Ok(Some({
                self.depths.dead(connector, -1);
                schema::read_dead_letter(self.keys, (connector.0, seq.0), value.value())?
            })),
            None => Ok(None),
        }
    }

    /// The output confirmed the entry: it leaves the queue, DELIVERED is recorded.
    pub(super) fn delivered(
        &mut self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        let Some(entry) = self.take_queue_entry(connector, seq)? else {
            return Ok(false);
        };
        let before = self.held(entry.message_id, connector)?;
        self.record(
            entry.message_id,
            connector,
            DeliveryStatus::Delivered,
            attempts,
            entry.last_error,
            before.saturating_sub(1),
        )?;
        Ok(true)
    }

    /// A failed attempt to be retried at `next_attempt_micros`.
    pub(super) fn retry(
        &mut self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        next_attempt_micros: i64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let current: Option<QueueEntry> = match self.queue.get((connector.0, seq.0))? {
            Some(value) => Some(schema::decode(
                self.keys,
                Place::Queue(connector.0, seq.0),
                value.value(),
            )?),
            None => None,
        };
        let Some(mut entry) = current else {
            return Ok(false);
        };
        entry.attempts = attempts;
        entry.next_attempt_micros = next_attempt_micros;
        entry.last_error = Some(error.to_owned());
        let place = Place::Queue(connector.0, seq.0);
        self.queue.insert(
            (connector.0, seq.0),
            schema::encode(self.keys, place, &entry)?.as_slice(),
        )?;
        Ok(true)
    }

    /// Give up on an entry: it moves to the connector's dead-letter queue, keeping where it
    /// came from and its earlier lives.
    pub(super) fn dead_letter(
        &mut self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        reason: &str,
        downstream: Option<String>,
    ) -> Result<bool, StoreError> {
        let Some(entry) = self.take_queue_entry(connector, seq)? else {
            return Ok(false);
        };
        let dead = DlqEntry {
            message_id: entry.message_id,
            attempts,
            reason: reason.to_owned(),
            failed_at_micros: self.now,
            downstream,
            origin: entry.origin,
            history: entry.history.clone(),
            order_key: entry.order_key,
        };
        if self
            .dlq
            .insert(
                (connector.0, seq.0),
                schema::encode(self.keys, Place::Dlq(connector.0, seq.0), &dead)?.as_slice(),
            )?
            .is_none()
        {
            self.depths.dead(connector, 1);
        }
        let before = self.held(entry.message_id, connector)?;
        self.record(
            entry.message_id,
            connector,
            DeliveryStatus::DeadLettered,
            attempts,
            Some(reason.to_owned()),
            before,
        )?;
        Ok(true)
    }

    /// Put `entry` at `seq` in `to`'s queue, counting it.
    fn enqueue(&mut self, to: ConnectorId, seq: u64, entry: &QueueEntry) -> Result<(), StoreError> {
        if self
            .queue
            .insert(
                (to.0, seq),
                schema::encode(self.keys, Place::Queue(to.0, seq), entry)?.as_slice(),
            )?
            .is_none()
        {
            self.depths.queue(to, 1);
        }
        Ok(())
    }

    /// Queue a stored message again at the tail of `to`'s queue under a fresh seq from the
    /// message counter, whatever its state (reprocessing); `None` when it is not stored.
    pub(super) fn reprocess(
        &mut self,
        message_id: MessageId,
        to: ConnectorId,
        next_id: &mut u64,
    ) -> Result<Option<Seq>, StoreError> {
        let Some(routes) = self
            .messages
            .get(message_id.0)?
            .map(|value| {
                schema::decode_message_record(self.keys, message_id.0, value.value())
                    .map(|record| record.routes)
            })
            .transpose()?
        else {
            return Ok(None);
        };
        let new_seq = *next_id;
        *next_id += 1;
        let entry = QueueEntry {
            message_id,
            ..QueueEntry::default()
        };
        self.enqueue(to, new_seq, &entry)?;
        let before = self.held_before(message_id, to, || Ok(queued_at_intake(&routes, to)))?;
        self.record(message_id, to, DeliveryStatus::Queued, 0, None, before + 1)?;
        Ok(Some(Seq(new_seq)))
    }

    /// Put a dead letter back at the tail of `to`'s queue under a fresh seq from the message
    /// counter; the new seq and the message, or `None` when it was not in the dead-letter
    /// queue.
    pub(super) fn replay(
        &mut self,
        connector: ConnectorId,
        seq: Seq,
        to: ConnectorId,
        next_id: &mut u64,
    ) -> Result<Option<(Seq, MessageId)>, StoreError> {
        let Some(dead) = self.take_dead_letter(connector, seq)? else {
            return Ok(None);
        };
        let new_seq = *next_id;
        *next_id += 1;
        // A fresh place at the tail (FIFO), the same message; where it came from and every
        // earlier life go with it, so a runbook can follow it.
        let here = EntryRef { connector, seq };
        let mut history = dead.history.clone();
        history.push(PastEntry {
            entry: here,
            attempts: dead.attempts,
            reason: dead.reason.clone(),
            failed_at_micros: dead.failed_at_micros,
        });
        if history.len() > MAX_HISTORY {
            history.drain(..history.len() - MAX_HISTORY);
        }
        let entry = QueueEntry {
            message_id: dead.message_id,
            origin: Some(dead.origin.unwrap_or(here)),
            history,
            // The key means something at its own connector only (another's `order_by` may
            // differ).
            order_key: dead.order_key.filter(|_| to == connector),
            ..QueueEntry::default()
        };
        self.enqueue(to, new_seq, &entry)?;
        let from_before = self.held(dead.message_id, connector)?;
        if to == connector {
            self.record(
                dead.message_id,
                to,
                DeliveryStatus::Queued,
                0,
                None,
                from_before,
            )?;
        } else {
            // The original connector's DLQ entry is gone: it holds one entry less.
            self.record(
                dead.message_id,
                connector,
                DeliveryStatus::Purged,
                dead.attempts,
                Some(dead.reason),
                from_before.saturating_sub(1),
            )?;
            let (messages, keys) = (&*self.messages, self.keys);
            let to_before = self.held_before(dead.message_id, to, || {
                let routes = match messages.get(dead.message_id.0)? {
                    Some(value) => {
                        schema::decode_message_record(keys, dead.message_id.0, value.value())?
                            .routes
                    }
                    None => Vec::new(),
                };
                Ok(queued_at_intake(&routes, to))
            })?;
            self.record(
                dead.message_id,
                to,
                DeliveryStatus::Queued,
                0,
                None,
                to_before + 1,
            )?;
        }
        Ok(Some((Seq(new_seq), dead.message_id)))
    }

    /// Remove a dead letter without delivering it.
    pub(super) fn purge(&mut self, connector: ConnectorId, seq: Seq) -> Result<bool, StoreError> {
        let Some(dead) = self.take_dead_letter(connector, seq)? else {
            return Ok(false);
        };
        let before = self.held(dead.message_id, connector)?;
        self.record(
            dead.message_id,
            connector,
            DeliveryStatus::Purged,
            dead.attempts,
            Some(dead.reason),
            before.saturating_sub(1),
        )?;
        Ok(true)
    }
}

/// Whether intake queued the message for `to` (its filter took it).
fn queued_at_intake(routes: &[schema::Route], to: ConnectorId) -> bool {
    routes
        .iter()
        .any(|route| route.connector == to && route.status == RouteStatus::Queued)
}
