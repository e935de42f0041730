//! Reads: a consistent view of the outbox in one MVCC read transaction (writers are not
//! blocked), for workers, the admin API, metrics and the offline tools.

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::crypt::{Keys, Place};
use super::schema::{
    self, ConnectorId, DeliveryRecord, DlqEntry, MessageId, MessageRecord, QueueEntry, Seq,
    StoredCopy,
};
mod spooled;

use super::{StoreError, audit};

/// A queue entry with its message, as a worker delivers it.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Position in the connector's queue.
    pub seq: Seq,
    /// Delivery state so far.
    pub entry: QueueEntry,
    /// The message's record (`None` if it is missing, which retention never causes, or
    /// damaged).
    pub record: Option<MessageRecord>,
    /// The bytes to deliver: the connector's copy when it has one (ADR 0009), else the bytes
    /// as received (`None` if missing or damaged).
    pub body: Option<Bytes>,
    /// Why the connector's transform failed for this message: such an entry is never
    /// delivered (the received bytes are not what it was meant to get).
    pub transform_failure: Option<String>,
    /// Why the record or body could not be read: it fails its checksum (damaged after it
    /// was written). Such an entry is never delivered.
    pub damage: Option<String>,
}

/// A connector's queue figures (see [`Snapshot::queue_figures`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueFigures {
    /// Entries in its queue.
    pub depth: u64,
    /// Age of the oldest queued message, seconds; `None` when the queue is empty.
    pub oldest_age_secs: Option<f64>,
    /// Entries in its dead-letter queue.
    pub dead_letters: u64,
    /// Failed attempts of the entry at the head of the queue (0 when empty).
    pub head_attempts: u32,
    /// Why the head entry's last attempt failed (the downstream's own words can be in it:
    /// patient data).
    pub head_error: Option<String>,
    /// The newest entry of its dead-letter queue (by queue order): when it failed and why
    /// (the reason can quote the downstream).
    pub newest_dead_letter: Option<(i64, String)>,
}

impl QueueFigures {
    /// Whether the queue and the dead-letter queue are both empty.
    pub fn is_empty(&self) -> bool {
        self.depth == 0 && self.dead_letters == 0
    }
}

/// Name the message in a damage report.
fn name_message(id: MessageId, error: StoreError) -> StoreError {
    match error {
        StoreError::Damaged(what) => StoreError::Damaged(format!("message {id}: {what}")),
        other => other,
    }
}

/// Audit records read newest first, and the seq to continue below (`None`: the start).
pub type AuditPageRead = (Vec<(u64, audit::AuditRecord)>, Option<u64>);

/// A read transaction over the outbox.
pub struct Snapshot {
    transaction: redb::ReadTransaction,
    /// What values are sealed with.
    keys: Keys,
    /// The writer's queue sizes, when a writer runs (offline reads count entries instead).
    depths: Option<std::sync::Arc<super::depth::Depths>>,
    /// Where spooled bodies are (`None`: a store in memory, or an offline read that has
    /// none).
    spool: Option<std::sync::Arc<super::spool::Spool>>,
    /// The database, to tell a spooled file retention removed since this snapshot began
    /// from a missing one (`None` offline, where nothing removes them).
    /// Weak: a snapshot must not keep the file open past the writer's close or reopen.
    database: Option<std::sync::Weak<Database>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    pub(super) fn new(database: &Database, keys: Keys) -> Result<Self, StoreError> {
        Ok(Self {
            transaction: database.begin_read()?,
            keys,
            depths: None,
            spool: None,
            database: None,
        })
    }

    /// Read spooled bodies from `spool`; `database` tells a file removed by retention since
    /// this snapshot began from a missing one.
    pub(super) fn with_spool(
        mut self,
        spool: Option<std::sync::Arc<super::spool::Spool>>,
        database: &std::sync::Arc<Database>,
    ) -> Self {
        self.spool = spool;
        self.database = Some(std::sync::Arc::downgrade(database));
        self
    }

    /// Take queue sizes from the writer's counts instead of counting entries.
    pub(super) fn with_depths(mut self, depths: std::sync::Arc<super::depth::Depths>) -> Self {
        self.depths = Some(depths);
        self
    }

    /// One message's record. A damaged record is [`StoreError::Damaged`] naming the message.
    pub fn message(&self, id: MessageId) -> Result<Option<MessageRecord>, StoreError> {
        let table = self.transaction.open_table(schema::MESSAGES)?;
        match table.get(id.0)? {
            Some(value) => Ok(Some(
                schema::decode_message_record(&self.keys, id.0, value.value())
                    .map_err(|error| name_message(id, error))?,
            )),
            None => Ok(None),
        }
    }

    /// One message's body, checked against its checksum. A damaged body (or record) is
    /// [`StoreError::Damaged`] naming the message, never bytes that are not the message's.
    pub fn body(&self, id: MessageId) -> Result<Option<Vec<u8>>, StoreError> {
        let messages = self.transaction.open_table(schema::MESSAGES)?;
        let Some(value) = messages.get(id.0)? else {
            return Ok(None);
        };
        let decoded = schema::decode_message_checked(&self.keys, id.0, value.value())
            .map_err(|error| name_message(id, error))?;
        if let Some(inline) = decoded.inline {
            return Ok(Some(inline.into_owned()));
        }
        let table = self.transaction.open_table(schema::BODIES)?;
        match table.get(id.0)? {
            Some(stored) => Ok(Some(
                schema::decode_body(&self.keys, id.0, &decoded, stored.value())
                    .map_err(|error| name_message(id, error))?
                    .into_owned(),
            )),
            None => {
                let (spool, reference) = self.spooled(id, decoded.record.body_len)?;
                match spool.read(&reference) {
                    Ok(body) => Ok(Some(body)),
                    Err(_) if self.removed_since(id, reference.file) => Ok(None),
                    Err(error) => Err(name_message(id, error)),
                }
            }
        }
    }

    /// Read and check every record (see [`super::verify`]); works while the gateway runs.
    pub fn verify(&self) -> Result<super::verify::StoreReport, StoreError> {
        super::verify::read_all(
            &self.transaction,
            &self.keys,
            self.spool.as_deref(),
            &|id, file| self.removed_since(MessageId(id), file),
        )
    }

    /// Every stored message record, in id order.
    pub fn messages(&self) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        let table = self.transaction.open_table(schema::MESSAGES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((
                MessageId(key.value()),
                schema::decode_message_record(&self.keys, key.value(), value.value())?,
            ));
        }
        Ok(out)
    }

    /// Number of stored messages.
    pub fn message_count(&self) -> Result<u64, StoreError> {
        Ok(self.transaction.open_table(schema::MESSAGES)?.len()?)
    }

    /// One connector's queue in FIFO order: `(seq, entry)`.
    pub fn queue(&self, connector: ConnectorId) -> Result<Vec<(Seq, QueueEntry)>, StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        let mut out = Vec::new();
        for entry in table.range((connector.0, 0)..=(connector.0, u64::MAX))? {
            let (key, value) = entry?;
            let (connector, seq) = key.value();
            out.push((
                Seq(seq),
                schema::read_queue_entry(&self.keys, (connector, seq), value.value())?,
            ));
        }
        Ok(out)
    }

    /// Visit up to `max_entries` entries of a connector's queue in FIFO order from seq
    /// `from`, without their messages: `visit(seq, entry)`, until it answers false (keyed
    /// lanes' scheduling). A damaged entry reads as one without a key (it is dead-lettered
    /// when its turn comes).
    pub fn visit_queue(
        &self,
        connector: ConnectorId,
        from: Seq,
        max_entries: usize,
        mut visit: impl FnMut(Seq, &QueueEntry) -> bool,
    ) -> Result<(), StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        for entry in table
            .range((connector.0, from.0)..=(connector.0, u64::MAX))?
            .take(max_entries)
        {
            let (key, value) = entry?;
            let (connector, seq) = key.value();
            let entry = schema::read_queue_entry(&self.keys, (connector, seq), value.value())?;
            if !visit(Seq(seq), &entry) {
                break;
            }
        }
        Ok(())
    }

    /// The `order_key`s of a connector's dead letters that have one (`on_dead_letter:
    /// hold_key`).
    pub fn dead_letter_keys(
        &self,
        connector: ConnectorId,
    ) -> Result<std::collections::HashSet<u64>, StoreError> {
        // A dead letter without a key (queued before `order_by`, damaged, reprocessed) holds
        // nothing: its key is unknown, not shared.
        Ok(self
            .dead_letters(connector)?
            .into_iter()
            .filter_map(|(_, entry)| entry.order_key)
            .collect())
    }

    /// Up to `max_entries` entries of a connector's queue in FIFO order, starting after seq
    /// `after` (from the head when `None`), each with its message; stops early once `max_bytes`
    /// of bodies are loaded (the first entry is always returned).
    pub fn pending(
        &self,
        connector: ConnectorId,
        after: Option<Seq>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let queue = self.transaction.open_table(schema::QUEUE)?;
        let start = after.map_or(0, |seq| seq.0.saturating_add(1));
        if after == Some(Seq(u64::MAX)) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in queue.range((connector.0, start)..=(connector.0, u64::MAX))? {
            if out.len() >= max_entries.max(1) || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let (key, value) = entry?;
            let seq = Seq(key.value().1);
            let entry: QueueEntry =
                match schema::decode(&self.keys, Place::Queue(connector.0, seq.0), value.value()) {
                    Ok(entry) => entry,
                    Err(error) if schema::is_damage(&error) => {
                        // Its message cannot be known: the worker moves it to the dead-letter
                        // queue (it can never be delivered) and goes on with the next.
                        out.push(Pending {
                            seq,
                            entry: schema::damaged_queue_entry(schema::damage_detail(&error)),
                            record: None,
                            body: None,
                            transform_failure: None,
                            damage: Some(format!(
                                "the queue entry itself is damaged ({})",
                                schema::damage_detail(&error)
                            )),
                        });
                        continue;
                    }
                    Err(error) => return Err(error),
                };
            let read = self.message(entry.message_id).and_then(|record| {
                let copy = self.copy(entry.message_id, connector, seq)?;
                let body = match &copy {
                    Some(StoredCopy::Bytes(bytes)) => Some(bytes.clone()),
                    _ => self.body(entry.message_id)?.map(Bytes::from),
                };
                let failure = match copy {
                    Some(StoredCopy::Failed(reason)) => Some(reason),
                    _ => None,
                };
                Ok((record, body, failure))
            });
            let (record, body, transform_failure, damage) = match read {
                Ok((record, body, failure)) => (record, body, failure, None),
                Err(error) if schema::is_damage(&error) => (
                    None,
                    None,
                    None,
                    Some(format!(
                        "the stored message is damaged ({})",
                        schema::damage_detail(&error)
                    )),
                ),
                Err(other) => return Err(other),
            };
            bytes += body.as_ref().map_or(0, Bytes::len);
            out.push(Pending {
                seq,
                entry,
                record,
                body,
                transform_failure,
                damage,
            });
        }
        Ok(out)
    }

    /// What one queue entry of a connector delivers (ADR 0009), checked against its
    /// checksum; `None` when it delivers the received bytes.
    pub fn copy(
        &self,
        id: MessageId,
        connector: ConnectorId,
        seq: Seq,
    ) -> Result<Option<StoredCopy>, StoreError> {
        let copies = self.transaction.open_table(schema::COPIES)?;
        copies
            .get((id.0, connector.0, seq.0))?
            .map(|value| {
                schema::decode_copy(&self.keys, (id.0, connector.0, seq.0), value.value()).map_err(
                    |error| match error {
                        StoreError::Damaged(what) => StoreError::Damaged(format!(
                            "message {id}: the copy of connector {connector} {what}"
                        )),
                        other => other,
                    },
                )
            })
            .transpose()
    }

    /// Whether any entry of `connector` has a copy (it has, or had, transform steps). Reads
    /// the whole table: for offline commands.
    pub fn has_copies(&self, connector: ConnectorId) -> Result<bool, StoreError> {
        let copies = self.transaction.open_table(schema::COPIES)?;
        for entry in copies.iter()? {
            let (key, _) = entry?;
            if key.value().1 == connector.0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every copy of a message (ADR 0009): connector, entry, copy.
    pub fn copies(&self, id: MessageId) -> Result<Vec<(ConnectorId, Seq, StoredCopy)>, StoreError> {
        let copies = self.transaction.open_table(schema::COPIES)?;
        let mut out = Vec::new();
        for entry in copies.range((id.0, 0, 0)..=(id.0, u32::MAX, u64::MAX))? {
            let (key, _) = entry?;
            let (_, connector, seq) = key.value();
            let (connector, seq) = (ConnectorId(connector), Seq(seq));
            if let Some(copy) = self.copy(id, connector, seq)? {
                out.push((connector, seq, copy));
            }
        }
        Ok(out)
    }

    /// Entries in a connector's queue.
    pub fn queue_len(&self, connector: ConnectorId) -> Result<u64, StoreError> {
        let queue = self.transaction.open_table(schema::QUEUE)?;
        let mut count = 0;
        for entry in queue.range((connector.0, 0)..=(connector.0, u64::MAX))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// A connector's dead-letter queue, oldest first: `(seq, entry)`.
    pub fn dead_letters(&self, connector: ConnectorId) -> Result<Vec<(Seq, DlqEntry)>, StoreError> {
        let table = self.transaction.open_table(schema::DLQ)?;
        let mut out = Vec::new();
        for entry in table.range((connector.0, 0)..=(connector.0, u64::MAX))? {
            let (key, value) = entry?;
            let (connector, seq) = key.value();
            out.push((
                Seq(seq),
                schema::read_dead_letter(&self.keys, (connector, seq), value.value())?,
            ));
        }
        Ok(out)
    }

    /// One dead-letter entry.
    pub fn dead_letter(
        &self,
        connector: ConnectorId,
        seq: Seq,
    ) -> Result<Option<DlqEntry>, StoreError> {
        let table = self.transaction.open_table(schema::DLQ)?;
        match table.get((connector.0, seq.0))? {
            Some(value) => Ok(Some(schema::read_dead_letter(
                &self.keys,
                (connector.0, seq.0),
                value.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// What became of a message at each connector after intake: `(connector id, record)`.
    pub fn deliveries(
        &self,
        message_id: MessageId,
    ) -> Result<Vec<(ConnectorId, DeliveryRecord)>, StoreError> {
        let table = self.transaction.open_table(schema::DELIVERIES)?;
        let mut out = Vec::new();
        for entry in table.range((message_id.0, 0)..=(message_id.0, u32::MAX))? {
            let (key, value) = entry?;
            let (message, connector) = key.value();
            out.push((
                ConnectorId(connector),
                schema::decode(
                    &self.keys,
                    Place::Delivery(message, connector),
                    value.value(),
                )?,
            ));
        }
        Ok(out)
    }

    /// Visit stored messages newest first, starting below id `before` (from the newest when
    /// `None`), until `visit` returns false or `max_scan` records were read. Returns the id to
    /// pass as `before` to continue, or `None` when the scan reached the oldest message or
    /// `visit` stopped it.
    pub fn scan_messages_desc(
        &self,
        before: Option<MessageId>,
        max_scan: usize,
        mut visit: impl FnMut(MessageId, &MessageRecord) -> Result<bool, StoreError>,
    ) -> Result<Option<MessageId>, StoreError> {
        let table = self.transaction.open_table(schema::MESSAGES)?;
        let end = before.map_or(u64::MAX, |before| before.0);
        for (scanned, entry) in table.range(..end)?.rev().enumerate() {
            let (key, value) = entry?;
            let id = MessageId(key.value());
            if scanned >= max_scan.max(1) {
                return Ok(Some(MessageId(id.0.saturating_add(1))));
            }
            let record = match schema::decode_message_record(&self.keys, id.0, value.value()) {
                Ok(record) => record,
                // Not searchable; `mfoundry store verify` names it.
                Err(error) if schema::is_damage(&error) => continue,
                Err(error) => return Err(error),
            };
            if !visit(id, &record)? {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Whether messages wait for the patient index merge (their lists are above the mark).
    pub fn patient_index_behind(&self) -> Result<bool, StoreError> {
        let merged = {
            let meta = self.transaction.open_table(schema::META)?;
            schema::read_meta(&meta, super::patients::META_MERGED_UP_TO)?
        };
        let index = self.transaction.open_table(schema::PATIENTS)?;
        Ok(index
            .range((0, merged.saturating_add(1))..=(0, u64::MAX))?
            .next()
            .is_some())
    }

    /// Entries in the patient index: one per (tag, message) and one per message with tags.
    pub fn patient_index_len(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        Ok(self.transaction.open_table(schema::PATIENTS)?.len()?)
    }

    /// [`Self::scan_messages_desc`] over the messages that have every patient tag of `tags`
    /// (see [`super::patients`]; all messages when `tags` is empty): read through the index,
    /// so `max_scan` counts index entries, not the whole store. Messages stored after the
    /// last merge are read from their lists of tags, the others from the tag-ordered
    /// entries of the first tag.
    pub fn scan_patient_messages_desc(
        &self,
        tags: &[super::patients::Tag],
        before: Option<MessageId>,
        max_scan: usize,
        mut visit: impl FnMut(MessageId, &MessageRecord) -> Result<bool, StoreError>,
    ) -> Result<Option<MessageId>, StoreError> {
        let Some((first, rest)) = tags.split_first() else {
            return self.scan_messages_desc(before, max_scan, visit);
        };
        let index = self.transaction.open_table(schema::PATIENTS)?;
        let messages = self.transaction.open_table(schema::MESSAGES)?;
        let merged = {
            let meta = self.transaction.open_table(schema::META)?;
            schema::read_meta(&meta, super::patients::META_MERGED_UP_TO)?
        };
        let end = before.map_or(u64::MAX, |before| before.0);
        let mut scanned = 0usize;
        // Count one list or entry looked at: Some(continuation) once `max_scan` were (every
        // id above it was examined).
        let mut count = |id: u64| {
            if scanned >= max_scan.max(1) {
                return Some(MessageId(id.saturating_add(1)));
            }
            scanned += 1;
            None
        };
        // Visit one candidate; None to go on, Some(answer) to stop with it.
        let mut candidate = |id: MessageId| -> Result<Option<Option<MessageId>>, StoreError> {
            let Some(value) = messages.get(id.0)? else {
                return Ok(None);
            };
            let record = match schema::decode_message_record(&self.keys, id.0, value.value()) {
                Ok(record) => record,
                Err(error) if schema::is_damage(&error) => return Ok(None),
                Err(error) => return Err(error),
            };
            Ok((!visit(id, &record)?).then_some(None))
        };
        // Stored since the last merge: their lists, newest first.
        let tail_start = merged.saturating_add(1);
        if end > tail_start {
            for entry in index.range((0, tail_start)..(0, end))?.rev() {
                let (key, list) = entry?;
                if let Some(next) = count(key.value().1) {
                    return Ok(Some(next));
                }
                let held: Vec<u64> = super::patients::list_tags(list.value()).collect();
                if !held.contains(first) || !rest.iter().all(|tag| held.contains(tag)) {
                    continue;
                }
                if let Some(answer) = candidate(MessageId(key.value().1))? {
                    return Ok(answer);
                }
            }
        }
        // The merged ones, through the first tag's entries.
        let range = (*first, 0)..(*first, end.min(tail_start));
        'entries: for entry in index.range(range)?.rev() {
            let id = MessageId(entry?.0.value().1);
            if let Some(next) = count(id.0) {
                return Ok(Some(next));
            }
            for tag in rest {
                if index.get((*tag, id.0))?.is_none() {
                    continue 'entries;
                }
            }
            if let Some(answer) = candidate(id)? {
                return Ok(answer);
            }
        }
        Ok(None)
    }

    /// What operators watch about a connector's queues, as of `now_micros`. With a running
    /// writer the sizes are its counts as of the last commit (reading them costs nothing
    /// however large the backlog); offline they are counted.
    pub fn queue_figures(
        &self,
        connector: ConnectorId,
        now_micros: i64,
    ) -> Result<QueueFigures, StoreError> {
        let head = self.queue_head(connector)?.map(|(_, entry)| entry);
        let oldest_age_secs = match &head {
            Some(entry) => match self.message(entry.message_id) {
                Ok(record) => record
                    .map(|record| (now_micros - record.received_at_micros).max(0) as f64 / 1e6),
                Err(error) if schema::is_damage(&error) => None,
                Err(error) => return Err(error),
            },
            None => None,
        };
        let (head_attempts, head_error) =
            head.map_or((0, None), |entry| (entry.attempts, entry.last_error));
        let newest_dead_letter = {
            let table = self.transaction.open_table(schema::DLQ)?;
            let newest = table
                .range((connector.0, 0)..=(connector.0, u64::MAX))?
                .next_back()
                .transpose()?;
            match newest {
                Some((key, value)) => {
                    let entry = schema::read_dead_letter(&self.keys, key.value(), value.value())?;
                    Some((entry.failed_at_micros, entry.reason))
                }
                None => None,
            }
        };
        let (depth, dead_letters) = match &self.depths {
            Some(depths) => {
                let depth = depths.get(connector);
                (depth.queued, depth.dead)
            }
            None => (
                self.queue_len(connector)?,
                self.dead_letter_count(connector)?,
            ),
        };
        Ok(QueueFigures {
            depth,
            oldest_age_secs,
            dead_letters,
            head_attempts,
            head_error,
            newest_dead_letter,
        })
    }

    /// One queue entry.
    pub fn queue_entry(
        &self,
        connector: ConnectorId,
        seq: Seq,
    ) -> Result<Option<QueueEntry>, StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        match table.get((connector.0, seq.0))? {
            Some(value) => Ok(Some(schema::read_queue_entry(
                &self.keys,
                (connector.0, seq.0),
                value.value(),
            )?)),
            None => Ok(None),
        }
    }

    /// The head of a connector's queue (its oldest entry), if any.
    pub fn queue_head(
        &self,
        connector: ConnectorId,
    ) -> Result<Option<(Seq, QueueEntry)>, StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        let mut range = table.range((connector.0, 0)..=(connector.0, u64::MAX))?;
        match range.next() {
            Some(entry) => {
                let (key, value) = entry?;
                let (connector, seq) = key.value();
                Ok(Some((
                    Seq(seq),
                    schema::read_queue_entry(&self.keys, (connector, seq), value.value())?,
                )))
            }
            None => Ok(None),
        }
    }

    /// Entries in a connector's dead-letter queue.
    pub fn dead_letter_count(&self, connector: ConnectorId) -> Result<u64, StoreError> {
        let table = self.transaction.open_table(schema::DLQ)?;
        let mut count = 0;
        for entry in table.range((connector.0, 0)..=(connector.0, u64::MAX))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// Up to `limit` dead-letter entries of a connector with seqs above `after`, oldest first.
    pub fn dead_letters_after(
        &self,
        connector: ConnectorId,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<(Seq, DlqEntry)>, StoreError> {
        if after == Some(Seq(u64::MAX)) {
            return Ok(Vec::new());
        }
        let start = after.map_or(0, |seq| seq.0 + 1);
        let table = self.transaction.open_table(schema::DLQ)?;
        let mut out = Vec::new();
        for entry in table.range((connector.0, start)..=(connector.0, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            let (connector, seq) = key.value();
            out.push((
                Seq(seq),
                schema::read_dead_letter(&self.keys, (connector, seq), value.value())?,
            ));
        }
        Ok(out)
    }

    /// Up to `limit` audit records with seqs above `after` (from the oldest when `None`).
    pub fn audit_records(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, audit::AuditRecord)>, StoreError> {
        if after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        let start = after.map_or(0, |seq| seq + 1);
        let table = self.transaction.open_table(schema::AUDIT)?;
        let mut out = Vec::new();
        for entry in table.range(start..)? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            out.push((
                key.value(),
                audit::decode(&self.keys, key.value(), value.value())?,
            ));
        }
        Ok(out)
    }

    /// Audit records with seqs below `before` (from the newest when `None`), newest first,
    /// that `keep` accepts: up to `limit` of them, reading at most `scan` records. Also
    /// the seq to continue below when the scan stopped early (`None` at the start of the
    /// trail).
    pub fn audit_records_newest_first(
        &self,
        before: Option<u64>,
        limit: usize,
        scan: usize,
        keep: impl Fn(&audit::AuditRecord) -> bool,
    ) -> Result<AuditPageRead, StoreError> {
        let table = self.transaction.open_table(schema::AUDIT)?;
        let mut out = Vec::new();
        let range = match before {
            Some(end) => table.range(..end)?,
            None => table.range::<u64>(..)?,
        };
        for (read, entry) in range.rev().enumerate() {
            let (key, value) = entry?;
            let seq = key.value();
            if out.len() >= limit || read >= scan {
                return Ok((out, Some(seq + 1)));
            }
            let record = audit::decode(&self.keys, seq, value.value())?;
            if keep(&record) {
                out.push((seq, record));
            }
        }
        Ok((out, None))
    }

    /// Check the audit trail's hash chain (reads all of it).
    pub fn verify_audit(&self) -> Result<audit::Verification, StoreError> {
        let table = self.transaction.open_table(schema::AUDIT)?;
        let messages = self.transaction.open_table(schema::MESSAGES)?;
        let meta = self.transaction.open_table(schema::META)?;
        let first = schema::read_meta(&meta, "audit_first_seq")?;
        audit::verify(&self.keys, &table, &messages, first)
    }

    /// Connector names and ids.
    pub fn connectors(&self) -> Result<Vec<(String, ConnectorId)>, StoreError> {
        let table = self.transaction.open_table(schema::CONNECTORS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, id) = entry?;
            out.push((name.value().to_owned(), ConnectorId(id.value())));
        }
        Ok(out)
    }
}
