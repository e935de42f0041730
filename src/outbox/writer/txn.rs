//! What one batch does inside its transaction: store messages ([`super::append`]), append and prune the audit trail, and hand delivery outcomes, replays and purges
//! to [`super::delivery`] and old messages to [`super::retain`].

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

use super::Writer;
use super::delivery::Delivery;
use super::retain::retain;
use crate::outbox::audit::{self, AuditEvent, Head};
use crate::outbox::crypt::Keys;
use crate::outbox::dedup::prefix;
use crate::outbox::depth::DepthChanges;
use crate::outbox::patients;
use crate::outbox::request::{AuditContext, Request};
use crate::outbox::schema::{
    self, AUDIT, COPIES, DELIVERIES, DLQ, FILES, FileRecord, MESSAGES, META, PATIENTS, QUEUE,
};
use crate::outbox::{Appended, BatchAppended, ConnectorId, StoreError, StoredCopy, now_micros};

impl Writer {
    /// Write every request of `batch` in one transaction with `Durability::Immediate` and
    /// commit it; each request's reply holds its outcome afterwards. Returns the connectors
    /// whose queues grew. Nothing is answered here: the caller answers after this returns.
    pub(super) fn write_batch(
        &mut self,
        database: &Database,
        batch: &mut [Request],
    ) -> Result<(BTreeSet<ConnectorId>, DepthChanges), StoreError> {
        let mut transaction = database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        let now = now_micros();
        let mut woken = BTreeSet::new();
        // Accepted in this transaction: (key, id), entered in the index after the commit.
        let mut accepted: Vec<([u8; 32], u64)> = Vec::new();
        let next_id_after;
        let audit_head_after;
        let depths;
        let spool_removed;
        {
            let mut tables = Tables {
                messages: transaction.open_table(MESSAGES)?,
                queue: transaction.open_table(QUEUE)?,
                delivery: None,
                audit: None,
                files: None,
                patients: None,
                objects: None,
                salt: self.shared.salt,
                audit_head: self.audit_head,
                depths: DepthChanges::default(),
                keys: self.options.keys.clone(),
                spool_removed: Vec::new(),
            };
            let mut next_id = match self.next_id {
                Some(next_id) => next_id,
                None => {
                    let meta = transaction.open_table(META)?;
                    next_message_id(&meta, &tables.messages)?
                }
            };
            let mut raise_floor = false;
            for request in batch.iter_mut() {
                match request {
                    Request::Append {
                        message,
                        tags,
                        reply,
                    } => reply.set(self.append(
                        &transaction,
                        &mut tables,
                        message,
                        tags,
                        &mut next_id,
                        now,
                        &mut accepted,
                        &mut woken,
                    )?),
                    Request::AppendBatch {
                        messages,
                        tags,
                        file,
                        reply,
                    } => {
                        let seen = match file {
                            Some(file) => tables.file_seen(&transaction, &file.sha256)?,
                            None => None,
                        };
                        if let Some(seen) = seen {
                            reply.set(BatchAppended::FileSeen(seen));
                            continue;
                        }
                        let mut appended = Vec::with_capacity(messages.len());
                        for (message, tags) in messages.iter().zip(tags.iter()) {
                            appended.push(self.append(
                                &transaction,
                                &mut tables,
                                message,
                                tags,
                                &mut next_id,
                                now,
                                &mut accepted,
                                &mut woken,
                            )?);
                        }
                        if let Some(file) = file {
                            let record = FileRecord {
                                stored_at_micros: now,
                                listener: file.listener.clone(),
                                size: file.size,
                                messages: u32::try_from(appended.len()).unwrap_or(u32::MAX),
                                first_message: appended.iter().find_map(
                                    |appended| match appended {
                                        Appended::Stored { id } => Some(id.0),
                                        Appended::Duplicate { .. } => None,
                                    },
                                ),
                            };
                            tables.mark_file(&transaction, &file.sha256, &record)?;
                        }
                        reply.set(BatchAppended::Stored(appended));
                    }
                    Request::Retain {
                        cutoff_micros,
                        after,
                        max_scan,
                        reply,
                    } => {
                        let mut retained =
                            retain(&transaction, &mut tables, *cutoff_micros, *after, *max_scan)?;
                        if retained.resume_after.is_none() {
                            // A whole pass: file marks as old as the messages go too.
                            retained.file_marks =
                                tables.prune_files(&transaction, *cutoff_micros, *max_scan)?;
                        }
                        raise_floor |= retained.removed > 0;
                        reply.set(retained);
                    }
                    Request::MergeIndex { max, reply } => {
                        let table = opened_once(&mut tables.patients, &transaction, PATIENTS)?;
                        reply.set(patients::merge(&transaction, table, *max)?);
                    }
                    Request::Audit { event, reply } => {
                        reply.set(tables.audit(&transaction, now, event.clone())?)
                    }
                    Request::Register { names, reply } => {
                        reply.set(crate::outbox::open::assign_ids(&transaction, names)?);
                    }
                    Request::PruneAudit {
                        cutoff_micros,
                        max,
                        reply,
                    } => reply.set(tables.prune_audit(&transaction, *cutoff_micros, *max)?),
                    Request::Delivered {
                        connector,
                        seq,
                        attempts,
                        reply,
                    } => reply.set(
                        tables
                            .delivery(&transaction, now)?
                            .delivered(*connector, *seq, *attempts)?,
                    ),
                    Request::DeliveredMany {
                        connector,
                        entries,
                        reply,
                    } => {
                        let mut delivery = tables.delivery(&transaction, now)?;
                        let mut marked = 0;
                        for (seq, attempts) in entries.iter() {
                            marked += usize::from(delivery.delivered(*connector, *seq, *attempts)?);
                        }
                        reply.set(marked);
                    }
                    Request::Retry {
                        connector,
                        seq,
                        attempts,
                        next_attempt_micros,
                        error,
                        reply,
                    } => reply.set(tables.delivery(&transaction, now)?.retry(
                        *connector,
                        *seq,
                        *attempts,
                        *next_attempt_micros,
                        error,
                    )?),
                    Request::DeadLetter {
                        connector,
                        seq,
                        attempts,
                        reason,
                        downstream,
                        reply,
                    } => reply.set(tables.delivery(&transaction, now)?.dead_letter(
                        *connector,
                        *seq,
                        *attempts,
                        reason,
                        downstream.clone(),
                    )?),
                    Request::Replay {
                        connector,
                        seqs,
                        to,
                        audit,
                        reply,
                    } => {
                        let mut answers = Vec::with_capacity(seqs.len());
                        let mut moved = Vec::new();
                        {
                            let mut delivery = tables.delivery(&transaction, now)?;
                            for seq in seqs.iter() {
                                let replayed =
                                    delivery.replay(*connector, *seq, *to, &mut next_id)?;
                                if let Some((new_seq, message_id)) = replayed {
                                    moved.push((message_id, *seq, new_seq));
                                }
                                answers.push(replayed.map(|(new_seq, _)| new_seq));
                            }
                        }
                        if !moved.is_empty() {
                            // The entry's copy goes with it to its new place; replayed to
                            // another connector it has none (that connector's own steps
                            // never ran on it: the admin layer refuses those with steps).
                            // Its seal names its place: opened and sealed again for the new one.
                            let mut copies = transaction.open_table(COPIES)?;
                            for (message_id, old_seq, new_seq) in moved {
                                let old = (message_id.0, connector.0, old_seq.0);
                                let copy = match copies.remove(old)? {
                                    Some(value) if to == connector => Some(
                                        match schema::decode_copy(&tables.keys, old, value.value())
                                        {
                                            Ok(copy) => copy,
                                            // Never absent (that would deliver the received
                                            // bytes): the new entry fails with the reason.
                                            Err(error) if schema::is_damage(&error) => {
                                                StoredCopy::Failed(format!(
                                                    "the stored copy is damaged ({})",
                                                    schema::damage_detail(&error)
                                                ))
                                            }
                                            Err(error) => return Err(error),
                                        },
                                    ),
                                    _ => None,
                                };
                                if let Some(copy) = copy {
                                    let new = (message_id.0, to.0, new_seq.0);
                                    copies.insert(
                                        new,
                                        schema::encode_copy(&tables.keys, new, &copy).as_slice(),
                                    )?;
                                }
                            }
                        }
                        let replayed = answers.iter().filter(|answer| answer.is_some()).count();
                        if replayed > 0 {
                            woken.insert(*to);
                            // Its dead letters changed: a key it held may be free.
                            woken.insert(*connector);
                            raise_floor = true;
                        }
                        if let Some(context) = audit {
                            let outcome = format!(
                                "replayed {replayed}, missing {}",
                                answers.len() - replayed
                            );
                            tables.audit(&transaction, now, admin_event(context, outcome))?;
                        }
                        reply.set(answers);
                    }
                    Request::Reprocess {
                        items,
                        to,
                        audit,
                        reply,
                    } => {
                        let mut answers = Vec::with_capacity(items.len());
                        let mut failed = 0;
                        for (message_id, copy) in items.iter() {
                            let seq = tables.delivery(&transaction, now)?.reprocess(
                                *message_id,
                                *to,
                                &mut next_id,
                            )?;
                            if let Some(seq) = seq {
                                let mut copies = transaction.open_table(COPIES)?;
                                if let Some(copy) = copy {
                                    let place = (message_id.0, to.0, seq.0);
                                    copies.insert(
                                        place,
                                        schema::encode_copy(&tables.keys, place, copy).as_slice(),
                                    )?;
                                }
                                drop(copies);
                                if let Some(StoredCopy::Failed(reason)) = copy {
                                    failed += 1;
                                    tables
                                        .delivery(&transaction, now)?
                                        .dead_letter(*to, seq, 0, reason, None)?;
                                }
                            }
                            answers.push(seq);
                        }
                        let queued = answers.iter().filter(|answer| answer.is_some()).count();
                        if queued > 0 {
                            woken.insert(*to);
                            raise_floor = true;
                        }
                        if let Some(context) = audit {
                            let outcome = format!(
                                "reprocessed {}, transform failed {failed}, missing {}",
                                queued - failed,
                                answers.len() - queued
                            );
                            tables.audit(&transaction, now, admin_event(context, outcome))?;
                        }
                        reply.set(answers);
                    }
                    Request::Purge {
                        connector,
                        seqs,
                        audit,
                        reply,
                    } => {
                        let mut answers = Vec::with_capacity(seqs.len());
                        {
                            let mut delivery = tables.delivery(&transaction, now)?;
                            for seq in seqs.iter() {
                                answers.push(delivery.purge(*connector, *seq)?);
                            }
                        }
                        if answers.iter().any(|purged| *purged) {
                            // A purge can release a key its worker holds for the dead
                            // letter (`on_dead_letter: hold_key`): it looks again.
                            woken.insert(*connector);
                        }
                        if let Some(context) = audit {
                            let purged = answers.iter().filter(|purged| **purged).count();
                            let outcome =
                                format!("purged {purged}, missing {}", answers.len() - purged);
                            tables.audit(&transaction, now, admin_event(context, outcome))?;
                        }
                        reply.set(answers);
                    }
                    // The loop never puts a stop in a batch.
                    Request::Stop { .. } => {}
                }
            }
            if raise_floor {
                // Re-queued entries take ids from the message counter and retention may have
                // removed the newest message: keep the counter past both, so no id or seq is
                // ever reused.
                let mut meta = transaction.open_table(META)?;
                let floor = schema::read_meta(&meta, "next_message_id")?.max(next_id);
                meta.insert("next_message_id", floor)?;
            }
            next_id_after = next_id;
            audit_head_after = tables.audit_head;
            depths = tables.depths;
            spool_removed = tables.spool_removed;
        }
        transaction.commit()?;
        // Off the writer thread: unlinking large files must not hold up the next commit (a
        // crash before leaves them to the sweep at the next open).
        if let Some(spool) = &self.shared.spool
            && !spool_removed.is_empty()
        {
            let spool = std::sync::Arc::clone(spool);
            let removing = std::thread::Builder::new()
                .name("spool-remove".to_owned())
                .spawn(move || {
                    for file in spool_removed {
                        spool.remove(file);
                    }
                });
            if let Err(error) = removing {
                tracing::warn!(%error, "spooled files could not be removed now; the next start removes them");
            }
        }
        self.next_id = Some(next_id_after);
        self.audit_head = audit_head_after;
        if let Some(index) = &mut self.dedup {
            for (key, id) in accepted {
                index.insert(prefix(&key), id, now);
            }
            index.expire(now);
            self.shared
                .stats
                .dedup_entries
                .store(index.len() as u64, Ordering::Relaxed);
        }
        Ok((woken, depths))
    }
}

/// The audit record of an admin operation.
fn admin_event(context: &AuditContext, outcome: String) -> AuditEvent {
    AuditEvent::Admin {
        token_id: context.token_id.clone(),
        action: context.action.clone(),
        target: context.target.clone(),
        outcome,
    }
}

/// `slot`'s table, opened in `transaction` on first use: a second `open_table` of a table that
/// is open fails, and would fail the whole batch.
pub(super) fn opened_once<'slot, 'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'slot mut Option<Table<'txn, K, V>>,
    transaction: &'txn WriteTransaction,
    definition: redb::TableDefinition<K, V>,
) -> Result<&'slot mut Table<'txn, K, V>, StoreError> {
    let table = match slot.take() {
        Some(table) => table,
        None => transaction.open_table(definition)?,
    };
    Ok(slot.insert(table))
}

/// The tables a batch writes.
pub(super) struct Tables<'txn> {
    pub(super) messages: Table<'txn, u64, &'static [u8]>,
    pub(super) queue: Table<'txn, (u32, u64), &'static [u8]>,
    /// `dlq` and `deliveries`, opened by the first operation that needs them: a batch of
    /// appends only must not touch them (every table a commit touches costs a root update).
    delivery: Option<DeliveryTables<'txn>>,
    /// The audit trail, opened by the first record of the batch.
    audit: Option<Table<'txn, u64, &'static [u8]>>,
    /// The file marks, opened by the first batch from a file.
    files: Option<Table<'txn, &'static [u8], &'static [u8]>>,
    /// The patient index, opened by the first message with patient values (or retention).
    pub(super) patients: Option<patients::PatientsTable<'txn>>,
    /// The DICOM object index, opened by the first object (or retention).
    pub(super) objects: Option<Table<'txn, (u64, u64), &'static [u8]>>,
    /// The object index's salt (the store's instance id).
    pub(super) salt: u64,
    /// The chain's head as of this transaction (None until first needed).
    audit_head: Option<Head>,
    /// What this transaction added to and removed from each queue and dead-letter queue.
    pub(super) depths: DepthChanges,
    /// What values are sealed with.
    pub(super) keys: Keys,
    /// Spooled files whose entries this transaction removed: deleted once it is committed.
    pub(super) spool_removed: Vec<u128>,
}

struct DeliveryTables<'txn> {
    dlq: Table<'txn, (u32, u64), &'static [u8]>,
    deliveries: Table<'txn, (u64, u32), &'static [u8]>,
}

impl<'txn> Tables<'txn> {
    /// The audit table, opened once per transaction.
    fn audit_table(
        &mut self,
        transaction: &'txn WriteTransaction,
    ) -> Result<&mut Table<'txn, u64, &'static [u8]>, StoreError> {
        opened_once(&mut self.audit, transaction, AUDIT)
    }

    /// The file marks table, opened once per transaction.
    fn files_table(
        &mut self,
        transaction: &'txn WriteTransaction,
    ) -> Result<&mut Table<'txn, &'static [u8], &'static [u8]>, StoreError> {
        opened_once(&mut self.files, transaction, FILES)
    }

    /// The mark of a file stored before, if any. A mark that does not decode is taken as
    /// present: the file is not stored twice (its messages were committed with the mark).
    fn file_seen(
        &mut self,
        transaction: &'txn WriteTransaction,
        sha256: &[u8; 32],
    ) -> Result<Option<FileRecord>, StoreError> {
        let table = self.files_table(transaction)?;
        let Some(value) = table.get(sha256.as_slice())? else {
            return Ok(None);
        };
        match schema::decode_plain::<FileRecord>(value.value()) {
            Ok(record) => Ok(Some(record)),
            Err(error) if schema::is_damage(&error) => Ok(Some(FileRecord {
                stored_at_micros: 0,
                listener: String::new(),
                size: 0,
                messages: 0,
                first_message: None,
            })),
            Err(error) => Err(error),
        }
    }

    fn mark_file(
        &mut self,
        transaction: &'txn WriteTransaction,
        sha256: &[u8; 32],
        record: &FileRecord,
    ) -> Result<(), StoreError> {
        let value = schema::encode_plain(record)?;
        self.files_table(transaction)?
            .insert(sha256.as_slice(), value.as_slice())?;
        Ok(())
    }

    /// Remove up to `max` file marks stored before `cutoff_micros`, looking at no more than
    /// `max` marks from a point that moves with the clock (keys are hashes, spread evenly:
    /// a start that differs from pass to pass reaches every mark over the passes).
    fn prune_files(
        &mut self,
        transaction: &'txn WriteTransaction,
        cutoff_micros: i64,
        max: usize,
    ) -> Result<u64, StoreError> {
        let table = self.files_table(transaction)?;
        // The clock's fast-moving low bytes first: a start that differs from pass to pass.
        let start = crate::outbox::now_micros().swap_bytes().to_be_bytes();
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let wrapped = table
            .range(start.as_slice()..)?
            .chain(table.range(..start.as_slice())?);
        for entry in wrapped.take(max) {
            let (key, value) = entry?;
            let old = match schema::decode_plain::<FileRecord>(value.value()) {
                Ok(record) => record.stored_at_micros < cutoff_micros,
                // A damaged mark is kept (it still stops a second store of its file).
                Err(error) if schema::is_damage(&error) => false,
                Err(error) => return Err(error),
            };
            if old {
                doomed.push(key.value().to_vec());
            }
        }
        for key in &doomed {
            table.remove(key.as_slice())?;
        }
        Ok(doomed.len() as u64)
    }

    /// Remove up to `max` of the oldest audit records written before `cutoff_micros`, never
    /// the newest one (the chain's head is read from the last record), and move
    /// `meta["audit_first_seq"]` to the first record kept.
    fn prune_audit(
        &mut self,
        transaction: &'txn WriteTransaction,
        cutoff_micros: i64,
        max: usize,
    ) -> Result<u64, StoreError> {
        let keys = self.keys.clone();
        let table = self.audit_table(transaction)?;
        let Some(newest) = table.last()?.map(|(key, _)| key.value()) else {
            return Ok(0);
        };
        let mut doomed = Vec::new();
        for entry in table.range(..newest)? {
            if doomed.len() >= max {
                break;
            }
            let (key, value) = entry?;
            if audit::written_at(&keys, key.value(), value.value())? >= cutoff_micros {
                break;
            }
            doomed.push(key.value());
        }
        for seq in &doomed {
            table.remove(*seq)?;
        }
        if let Some(last) = doomed.last() {
            let mut meta = transaction.open_table(META)?;
            meta.insert("audit_first_seq", last + 1)?;
        }
        Ok(doomed.len() as u64)
    }

    /// Append a record to the audit trail; returns its seq.
    pub(super) fn audit(
        &mut self,
        transaction: &'txn WriteTransaction,
        now: i64,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let cached = self.audit_head;
        let keys = self.keys.clone();
        let table = self.audit_table(transaction)?;
        let mut head = match cached {
            Some(head) => head,
            None => Head::load(&keys, table)?,
        };
        let (seq, value) = audit::chain(&keys, &mut head, now, event)?;
        table.insert(seq, value.as_slice())?;
        self.audit_head = Some(head);
        Ok(seq)
    }

    /// The delivery-state operations, with `dlq` and `deliveries` opened on first use.
    pub(super) fn delivery<'a>(
        &'a mut self,
        transaction: &'txn WriteTransaction,
        now: i64,
    ) -> Result<Delivery<'a, 'txn>, StoreError> {
        let tables = match self.delivery.take() {
            Some(tables) => tables,
            None => DeliveryTables {
                dlq: transaction.open_table(DLQ)?,
                deliveries: transaction.open_table(DELIVERIES)?,
            },
        };
        let DeliveryTables { dlq, deliveries } = self.delivery.insert(tables);
        Ok(Delivery {
            messages: &mut self.messages,
            queue: &mut self.queue,
            dlq,
            deliveries,
            depths: &mut self.depths,
            keys: &self.keys,
            now,
        })
    }
}

/// The next message id after an open: one past the newest message, past
/// `meta["next_message_id"]` (written by whatever removes the newest messages or takes a
/// seq: retention, replay), and at least the current time in microseconds.
///
/// The clock is the floor because the file alone cannot know every id it ever handed out: a
/// data file restored from a backup, a journal lost, any rollback forgets the newest ones,
/// and a downstream system that already took them (the PostgreSQL output's key, the HTTP
/// output's `Idempotency-Key`, a file name) would drop a new message that got one again. An
/// id handed out before this open was at most the time of that open in microseconds plus
/// the messages since, and a gateway stores far fewer than a million messages a second, so
/// the ids of this open start above all of them, as long as the clock did not step back past
/// the previous run. Ids still only grow (queue order relies on it).
fn next_message_id(
    meta: &impl ReadableTable<&'static str, u64>,
    messages: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<u64, StoreError> {
    let newest = messages.last()?.map(|(id, _)| id.value()).unwrap_or(0);
    let clock = u64::try_from(now_micros()).unwrap_or(0);
    Ok(schema::read_meta(meta, "next_message_id")?
        .max(newest + 1)
        .max(clock))
}
