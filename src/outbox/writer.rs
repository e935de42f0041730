//! The writer thread: group commit, dedup, reopen after errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, StorageBackend};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::schema::{
    self, BODIES, CONNECTORS, DEDUP, DEDUP_EXPIRY, DedupRecord, FORMAT_VERSION, MESSAGES, META,
    QUEUE, QueueEntry, RouteStatus,
};
use super::{Appended, OutboxOptions, Request, Shared, StoreError};

/// Most expired dedup records removed per transaction, so expiry never delays a batch much.
const EXPIRY_PER_BATCH: usize = 256;

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
        transaction.open_table(DEDUP)?;
        transaction.open_table(DEDUP_EXPIRY)?;
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

pub(super) fn spawn(
    options: OutboxOptions,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Request>,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let writer = Writer {
        options,
        shared,
        counters: None,
    };
    std::thread::Builder::new()
        .name("outbox-writer".to_owned())
        .spawn(move || writer.run(receiver))
        .map_err(|error| StoreError::Storage(format!("cannot start the writer thread: {error}")))
}

struct Writer {
    options: OutboxOptions,
    shared: Arc<Shared>,
    /// `(next message id, next queue seq)`, read from `meta` after each (re)open.
    counters: Option<(u64, u64)>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let max_batch = self.options.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match receiver.try_recv() {
                    Ok(request) => batch.push(request),
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
        self.counters = None;
        if let Ok(mut slot) = self.shared.database.write() {
            slot.take();
        }
        match open_database(&self.options) {
            Ok(database) => {
                self.shared.stats.reopens.fetch_add(1, Ordering::Relaxed);
                warn!("outbox database reopened after an error");
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
        let window = self
            .options
            .dedup_window
            .map(|window| i64::try_from(window.as_micros()).unwrap_or(i64::MAX));
        let mut outcomes = Vec::with_capacity(batch.len());
        let counters;
        {
            let mut meta = transaction.open_table(META)?;
            let mut messages = transaction.open_table(MESSAGES)?;
            let mut bodies = transaction.open_table(BODIES)?;
            let mut queue = transaction.open_table(QUEUE)?;
            let mut dedup = transaction.open_table(DEDUP)?;
            let mut dedup_expiry = transaction.open_table(DEDUP_EXPIRY)?;
            let (mut next_id, mut next_seq) = match self.counters {
                Some(counters) => counters,
                None => (
                    schema::read_meta(&meta, "next_message_id")?.max(1),
                    schema::read_meta(&meta, "next_queue_seq")?.max(1),
                ),
            };
            for request in batch {
                let message = &request.message;
                let dedup_request = message.dedup.as_ref().filter(|_| window.is_some());
                if let (Some(dedup_request), Some(window)) = (dedup_request, window) {
                    let existing = match dedup.get(&dedup_request.key)? {
                        Some(value) => Some(schema::decode::<DedupRecord>(value.value())?),
                        None => None,
                    };
                    if let Some(existing) = existing
                        && now.saturating_sub(existing.accepted_at_micros) < window
                    {
                        outcomes.push(Appended::Duplicate {
                            id: existing.message_id,
                            ack: existing.ack,
                        });
                        continue;
                    }
                }
                let id = next_id;
                next_id += 1;
                messages.insert(id, schema::encode(&message.record)?.as_slice())?;
                bodies.insert(id, message.body.as_ref())?;
                for route in &message.record.routes {
                    if route.status != RouteStatus::Queued {
                        continue;
                    }
                    let entry = QueueEntry {
                        message_id: id,
                        attempts: 0,
                        next_attempt_micros: 0,
                        last_error: None,
                    };
                    queue.insert(
                        (route.connector, next_seq),
                        schema::encode(&entry)?.as_slice(),
                    )?;
                    next_seq += 1;
                }
                if let Some(dedup_request) = dedup_request {
                    let record = DedupRecord {
                        message_id: id,
                        accepted_at_micros: now,
                        ack: dedup_request.ack.clone(),
                    };
                    dedup.insert(&dedup_request.key, schema::encode(&record)?.as_slice())?;
                    dedup_expiry.insert((now, &dedup_request.key), ())?;
                }
                outcomes.push(Appended::Stored { id });
            }
            if let Some(window) = window {
                expire_dedup(&mut dedup, &mut dedup_expiry, now.saturating_sub(window))?;
            }
            meta.insert("next_message_id", next_id)?;
            meta.insert("next_queue_seq", next_seq)?;
            counters = (next_id, next_seq);
        }
        transaction.commit()?;
        self.counters = Some(counters);
        Ok(outcomes)
    }
}

/// Remove up to [`EXPIRY_PER_BATCH`] dedup records accepted before `cutoff`.
fn expire_dedup(
    dedup: &mut redb::Table<&'static [u8; 32], &'static [u8]>,
    dedup_expiry: &mut redb::Table<(i64, &'static [u8; 32]), ()>,
    cutoff: i64,
) -> Result<(), StoreError> {
    let mut expired: Vec<(i64, [u8; 32])> = Vec::new();
    for entry in dedup_expiry.range(..(cutoff, &[0u8; 32]))? {
        let (key, _) = entry?;
        let (accepted_at, hash) = key.value();
        expired.push((accepted_at, *hash));
        if expired.len() >= EXPIRY_PER_BATCH {
            break;
        }
    }
    for (accepted_at, hash) in expired {
        dedup_expiry.remove((accepted_at, &hash))?;
        // A newer record under the same key (re-accepted after expiry) stays.
        let current = match dedup.get(&hash)? {
            Some(value) => Some(schema::decode::<DedupRecord>(value.value())?.accepted_at_micros),
            None => None,
        };
        if current == Some(accepted_at) {
            dedup.remove(&hash)?;
        }
    }
    Ok(())
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
