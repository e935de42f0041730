//! The writer thread: group commit, dedup, reopen after errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, StorageBackend};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::dedup::{DedupIndex, prefix};
use super::schema::{
    self, BODIES, CONNECTORS, FORMAT_VERSION, INLINE_BODY_MAX, MESSAGES, META, QUEUE, QueueEntry,
    RouteStatus,
};
use super::{Appended, OutboxOptions, Request, Shared, StoreError};

/// Most body bytes written in one transaction (one body may exceed it on its own).
const MAX_BATCH_BYTES: usize = 32 << 20;

/// Adapts a boxed backend to redb's `impl StorageBackend` parameter.
#[derive(Debug)]
struct DynBackend(Box<dyn StorageBackend>);

impl StorageBackend for DynBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
}

/// Open or create the database and make sure every table exists and the format is known.
pub(super) fn open_database(options: &OutboxOptions) -> Result<Database, StoreError> {
    let open_error = |reason: String| StoreError::Open {
        path: options.path.display().to_string(),
        reason,
    };
    let mut builder = Database::builder();
    builder.set_cache_size(options.cache_size);
    let database = match &options.backend {
        Some(factory) => {
            let backend = factory().map_err(|error| open_error(error.to_string()))?;
            builder.create_with_backend(DynBackend(backend))
        }
        None => {
            if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|error| open_error(format!("cannot create the directory: {error}")))?;
            }
            builder.create(&options.path)
        }
    }
    .map_err(|error| open_error(error.to_string()))?;

    let transaction = database.begin_write()?;
    {
        let mut meta = transaction.open_table(META)?;
        match schema::read_meta(&meta, "format_version")? {
            0 => {
                meta.insert("format_version", FORMAT_VERSION)?;
            }
            FORMAT_VERSION => {}
            newer => {
                return Err(open_error(format!(
                    "the file has format version {newer}; this mfoundry reads version {FORMAT_VERSION}"
                )));
            }
        }
        transaction.open_table(MESSAGES)?;
        transaction.open_table(BODIES)?;
        transaction.open_table(CONNECTORS)?;
        transaction.open_table(QUEUE)?;
    }
    transaction.commit()?;
    Ok(database)
}

/// Give every connector name an id, keeping the ids of names seen before.
pub(super) fn register_connectors(
    database: &Database,
    names: &[String],
) -> Result<HashMap<String, u32>, StoreError> {
    let transaction = database.begin_write()?;
    let mut ids = HashMap::new();
    {
        let mut meta = transaction.open_table(META)?;
        let mut connectors = transaction.open_table(CONNECTORS)?;
        let mut next = u32::try_from(schema::read_meta(&meta, "next_connector_id")?)
            .unwrap_or(u32::MAX)
            .max(1);
        for name in names {
            let existing = connectors.get(name.as_str())?.map(|id| id.value());
            let id = match existing {
                Some(id) => id,
                None => {
                    let id = next;
                    next = next
                        .checked_add(1)
                        .ok_or_else(|| StoreError::Storage("connector ids exhausted".to_owned()))?;
                    connectors.insert(name.as_str(), id)?;
                    id
                }
            };
            ids.insert(name.clone(), id);
        }
        meta.insert("next_connector_id", u64::from(next))?;
    }
    transaction.commit()?;
    Ok(ids)
}

/// The retransmit index, rebuilt from the newest message records (None when dedup is off).
pub(super) fn load_dedup_index(
    database: &Database,
    options: &OutboxOptions,
) -> Result<Option<DedupIndex>, StoreError> {
    let Some(window) = options.dedup_window else {
        return Ok(None);
    };
    let window = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    let mut index = DedupIndex::new(window, options.dedup_max_entries);
    let messages = database.begin_read()?.open_table(MESSAGES)?;
    index.rebuild(&messages, now_micros())?;
    Ok(Some(index))
}

pub(super) fn spawn(
    options: OutboxOptions,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Request>,
    dedup: Option<DedupIndex>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let writer = Writer {
        options,
        shared,
        next_id: None,
        dedup,
    };
    std::thread::Builder::new()
        .name("outbox-writer".to_owned())
        .spawn(move || writer.run(receiver))
        .map_err(|error| StoreError::Storage(format!("cannot start the writer thread: {error}")))
}

struct Writer {
    options: OutboxOptions,
    shared: Arc<Shared>,
    /// Next message id, read from `meta` after each (re)open.
    next_id: Option<u64>,
    /// Recently accepted frames; only committed ones are in it.
    dedup: Option<DedupIndex>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let max_batch = self.options.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = receiver.blocking_recv() {
            let mut bytes = first.message.body.len();
            batch.push(first);
            // Bounded by count and by bytes, so a few large bodies do not hold many small
            // messages' ACKs behind one huge transaction.
            while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(request) => {
                        bytes += request.message.body.len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let result = match self.database() {
                Some(database) => self.write_batch(&database, &batch),
                None => Err(StoreError::Storage(
                    "the database is not open; reopening failed".to_owned(),
                )),
            };
            match result {
                Ok(outcomes) => {
                    let stats = &self.shared.stats;
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    for (request, outcome) in batch.drain(..).zip(outcomes) {
                        if matches!(outcome, Appended::Duplicate { .. }) {
                            stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else {
                            stats.records.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = request.reply.send(Ok(outcome));
                    }
                }
                Err(failure) => {
                    let reason = failure.to_string();
                    error!(error = %reason, records = batch.len(), "outbox commit failed; every message of the batch gets an error");
                    self.shared
                        .stats
                        .failed_batches
                        .fetch_add(1, Ordering::Relaxed);
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(StoreError::Storage(reason.clone())));
                    }
                    self.reopen();
                }
            }
        }
        info!("outbox writer stopped");
    }

    /// The open database, reopening it if an earlier error closed it.
    fn database(&mut self) -> Option<Arc<Database>> {
        let current = self.shared.database.read().ok()?.clone();
        if current.is_some() {
            return current;
        }
        self.reopen();
        self.shared.database.read().ok()?.clone()
    }

    /// Drop the current handle and open the database again. After an I/O error redb refuses
    /// further use of a handle, and a retried fsync cannot be trusted: start from what is on disk.
    fn reopen(&mut self) {
        self.next_id = None;
        if let Ok(mut slot) = self.shared.database.write() {
            slot.take();
        }
        match open_database(&self.options) {
            Ok(database) => {
                self.shared.stats.reopens.fetch_add(1, Ordering::Relaxed);
                warn!("outbox database reopened after an error");
                // A commit that reported an error may still have reached the disk: learn its
                // messages so a resend is recognised.
                match load_dedup_index(&database, &self.options) {
                    Ok(index) => self.dedup = index,
                    Err(error) => error!(error = %error, "retransmit index could not be rebuilt"),
                }
                if let Ok(mut slot) = self.shared.database.write() {
                    *slot = Some(Arc::new(database));
                }
            }
            Err(error) => {
                error!(error = %error, "outbox database could not be reopened; will retry with the next message");
                // Do not spin: the next attempt comes with the next batch.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn write_batch(
        &mut self,
        database: &Database,
        batch: &[Request],
    ) -> Result<Vec<Appended>, StoreError> {
        let mut transaction = database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        let now = now_micros();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Accepted in this transaction: (key, id), entered in the index after the commit.
        let mut accepted: Vec<([u8; 32], u64)> = Vec::new();
        let next_id_after;
        {
            let mut messages = transaction.open_table(MESSAGES)?;
            let mut queue = transaction.open_table(QUEUE)?;
            let mut next_id = match self.next_id {
                Some(next_id) => next_id,
                None => {
                    let meta = transaction.open_table(META)?;
                    next_message_id(&meta, &messages)?
                }
            };
            for request in batch {
                let message = &request.message;
                let dedup_key = message.dedup_key.filter(|_| self.dedup.is_some());
                if let (Some(key), Some(index)) = (dedup_key, &self.dedup) {
                    let candidate = accepted
                        .iter()
                        .rev()
                        .find(|(pending, _)| *pending == key)
                        .map(|(_, id)| *id)
                        .or_else(|| index.candidate(prefix(&key), now));
                    if let Some(original) = candidate {
                        let stored = match messages.get(original)? {
                            Some(value) => Some(schema::decode_message(value.value())?.0),
                            None => None,
                        };
                        if let Some(stored) = stored.filter(|stored| stored.dedup_key == Some(key))
                        {
                            outcomes.push(Appended::Duplicate {
                                id: original,
                                ack: stored.ack,
                            });
                            continue;
                        }
                    }
                }
                let id = next_id;
                next_id += 1;
                let mut record = message.record.clone();
                record.dedup_key = dedup_key;
                record.body_inline = message.body.len() <= INLINE_BODY_MAX;
                let inline = record.body_inline.then_some(message.body.as_ref());
                messages.insert(id, schema::encode_message(&record, inline)?.as_slice())?;
                if !record.body_inline {
                    transaction
                        .open_table(BODIES)?
                        .insert(id, message.body.as_ref())?;
                }
                for route in &record.routes {
                    if route.status != RouteStatus::Queued {
                        continue;
                    }
                    let entry = QueueEntry {
                        message_id: id,
                        attempts: 0,
                        next_attempt_micros: 0,
                        last_error: None,
                    };
                    queue.insert((route.connector, id), schema::encode(&entry)?.as_slice())?;
                }
                if let Some(key) = dedup_key {
                    accepted.push((key, id));
                }
                outcomes.push(Appended::Stored { id });
            }
            next_id_after = next_id;
        }
        transaction.commit()?;
        self.next_id = Some(next_id_after);
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
        Ok(outcomes)
    }
}

/// The next message id: one past the newest message, or past `meta["next_message_id"]` if
/// that is higher. The counter in `meta` is written only by whatever removes the newest
/// messages (retention, later), so ids are never reused; commits need not touch `meta`.
fn next_message_id(
    meta: &impl ReadableTable<&'static str, u64>,
    messages: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<u64, StoreError> {
    let newest = messages.last()?.map(|(id, _)| id.value()).unwrap_or(0);
    Ok(schema::read_meta(meta, "next_message_id")?.max(newest + 1))
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
