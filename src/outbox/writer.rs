//! The writer thread: group commit, dedup, reopen after errors.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{
    BackendError, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, Table,
    WriteTransaction,
};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::audit::{self, AuditEvent, Head};
use super::dedup::{DedupIndex, prefix};
use super::journal::{self, Journaled};
use super::schema::{
    self, AUDIT, BODIES, CONNECTORS, DELIVERIES, DLQ, DeliveryRecord, DeliveryStatus, DlqEntry,
    FORMAT_VERSION, INLINE_BODY_MAX, MESSAGES, META, QUEUE, QueueEntry, RouteStatus,
};
use super::{Appended, Done, NewMessage, Op, OutboxOptions, Request, Retained, Shared, StoreError};

/// redb cache of the short-lived handle that rebuilds the retransmit index.
const REBUILD_CACHE_SIZE: usize = 256 << 10;

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
    let open_error = |reason: String| open_error(options, reason);
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
            let journal = journal_path(&options.path);
            let leftover = journal
                .try_exists()
                .map_err(|error| open_error(format!("{}: {error}", journal.display())))?;
            if options.journal {
                let backend = open_journaled(options, &journal, leftover)?;
                builder.create_with_backend(backend)
            } else {
                if leftover {
                    retire_journal(options, &journal)?;
                }
                builder.create(&options.path)
            }
        }
    }
    .map_err(|error| match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: options.path.display().to_string(),
            reason: error.to_string(),
        },
        error => open_error(error.to_string()),
    })?;

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
        if schema::read_meta(&meta, "instance_id")? == 0 {
            meta.insert("instance_id", new_instance_id(&options.path))?;
        }
        transaction.open_table(MESSAGES)?;
        transaction.open_table(BODIES)?;
        transaction.open_table(CONNECTORS)?;
        transaction.open_table(QUEUE)?;
        transaction.open_table(DLQ)?;
        transaction.open_table(DELIVERIES)?;
        transaction.open_table(AUDIT)?;
    }
    transaction.commit()?;
    Ok(database)
}

fn open_error(options: &OutboxOptions, reason: String) -> StoreError {
    StoreError::Open {
        path: options.path.display().to_string(),
        reason,
    }
}

/// The journal file next to a data file: `mfoundry.redb` → `mfoundry.redb-journal`.
pub(crate) fn journal_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-journal");
    path.with_file_name(name)
}

/// The data file and the journal, both opened and locked (the data file first), so no
/// other process replays into, writes or removes a journal in use. `existed`: whether the
/// journal file was there before (a new one's directory entry is synced).
fn lock_both(
    options: &OutboxOptions,
    journal_path: &std::path::Path,
    existed: bool,
) -> Result<(FileBackend, FileBackend), StoreError> {
    let failed = |reason: String| open_error(options, reason);
    let open = |path: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|error| error.to_string())
            .and_then(|file| FileBackend::new(file).map_err(|error| error.to_string()))
            .map_err(|error| failed(format!("cannot open {}: {error}", path.display())))
    };
    let lock = |backend: &FileBackend, path: &std::path::Path| match backend
        .try_lock_range(Bound::Unbounded, Bound::Unbounded)
    {
        Ok(true) | Err(BackendError::Unsupported) => Ok(()),
        Ok(false) => Err(StoreError::InUse {
            path: options.path.display().to_string(),
            reason: format!(
                "{} is in use by another process (another mfoundry on this DATA_DIR?)",
                path.display()
            ),
        }),
        Err(error) => Err(failed(format!("cannot lock {}: {error}", path.display()))),
    };
    let main_existed = options
        .path
        .try_exists()
        .map_err(|error| failed(format!("{}: {error}", options.path.display())))?;
    let main = open(&options.path)?;
    lock(&main, &options.path)?;
    let journal = open(journal_path)?;
    lock(&journal, journal_path)?;
    if (!existed || !main_existed)
        && let Some(directory) = journal_path.parent()
    {
        // Commits will depend on both files: their names must survive a power cut too (an
        // empty data file beside a journal with records is refused as a deleted one).
        std::fs::File::open(directory)
            .and_then(|directory| directory.sync_all())
            .map_err(|error| failed(format!("cannot sync {}: {error}", directory.display())))?;
    }
    Ok((main, journal))
}

/// Open the data file through its journal, replaying the journal first (see [`journal`]).
/// The journal stays locked while the handle lives; the data file's lock is handed to redb.
fn open_journaled(
    options: &OutboxOptions,
    journal_path: &std::path::Path,
    existed: bool,
) -> Result<Journaled, StoreError> {
    let (main, journal_file) = lock_both(options, journal_path, existed)?;
    let (backend, replayed) = Journaled::open(
        Box::new(main),
        Box::new(journal_file),
        options.journal_capacity,
    )
    .map_err(|error| {
        open_error(
            options,
            format!("journal {}: {error}", journal_path.display()),
        )
    })?;
    let _ = backend.unlock_range(Bound::Unbounded, Bound::Unbounded);
    log_replayed(replayed);
    Ok(backend)
}

/// With the journal off: a journal left by a run with it on is replayed into the data file,
/// then removed (while both are still locked).
fn retire_journal(
    options: &OutboxOptions,
    journal_path: &std::path::Path,
) -> Result<(), StoreError> {
    let (main, journal_file) = lock_both(options, journal_path, true)?;
    let replayed = journal::retire(&main, &journal_file).map_err(|error| {
        open_error(
            options,
            format!("journal {}: {error}", journal_path.display()),
        )
    })?;
    log_replayed(replayed);
    std::fs::remove_file(journal_path).map_err(|error| {
        open_error(
            options,
            format!("cannot remove {}: {error}", journal_path.display()),
        )
    })?;
    info!("STORE_JOURNAL is off: the journal of an earlier run was replayed and removed");
    drop((journal_file, main));
    Ok(())
}

fn log_replayed(replayed: journal::Replayed) {
    if replayed.records > 0 {
        info!(
            commits = replayed.records,
            bytes = replayed.bytes,
            "commits written again from the journal into the data file"
        );
    }
}

/// A random, non-zero id for a new data file: message ids are unique within one file only,
/// so outputs that merge several gateways (a shared PostgreSQL table) key rows by both.
fn new_instance_id(path: &std::path::Path) -> u64 {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(now_micros().to_be_bytes());
    hasher.update(std::process::id().to_be_bytes());
    hasher.update(path.as_os_str().as_encoded_bytes());
    hasher.update(format!("{:?}", std::time::Instant::now()).as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes).max(1)
}

/// The data file's instance id.
pub(super) fn instance_id(database: &Database) -> Result<u64, StoreError> {
    let meta = database.begin_read()?.open_table(META)?;
    schema::read_meta(&meta, "instance_id")
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
///
/// Read through a handle of its own with a small cache, closed before the caller opens the
/// writer's: the scan reads the newest records (the last hour's messages, hundreds of MB),
/// which would otherwise leave redb's cache full at idle.
pub(super) fn load_dedup_index(options: &OutboxOptions) -> Result<Option<DedupIndex>, StoreError> {
    let Some(window) = options.dedup_window else {
        return Ok(None);
    };
    let scan = OutboxOptions {
        cache_size: REBUILD_CACHE_SIZE.min(options.cache_size),
        ..options.clone()
    };
    let database = open_database(&scan)?;
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
        audit_head: None,
        dedup,
    };
    let failed = writer.shared.writer_failed.clone();
    std::thread::Builder::new()
        .name("outbox-writer".to_owned())
        .spawn(move || {
            // A panic (a bug, or one in redb) must not leave a gateway that answers AE
            // forever while its probes say it is fine: the callers of the batch in hand get
            // errors (their reply channels are dropped), and `writer_failed` tells the app.
            let run = std::panic::AssertUnwindSafe(move || writer.run(receiver));
            if std::panic::catch_unwind(run).is_err() {
                error!("the outbox writer failed (a panic); nothing can be stored until the process restarts");
                failed.cancel();
            }
        })
        .map_err(|error| StoreError::Storage(format!("cannot start the writer thread: {error}")))
}

struct Writer {
    options: OutboxOptions,
    shared: Arc<Shared>,
    /// Next message id, read from `meta` after each (re)open.
    next_id: Option<u64>,
    /// The audit chain's head, read from the table after each (re)open.
    audit_head: Option<Head>,
    /// Recently accepted frames; only committed ones are in it.
    dedup: Option<DedupIndex>,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Request>) {
        let max_batch = self.options.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        // Only to wait for a request with a deadline (see `hold_for_intake`).
        let clock = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(clock) => Some(clock),
            Err(error) => {
                warn!(error = %error, "outbox writer without a timer: delivery updates are not held for intake");
                None
            }
        };
        // Whether the last committed batch stored a received message.
        let mut intake_streaming = false;
        while let Some(first) = receiver.blocking_recv() {
            let mut bytes = first.op.body_len();
            batch.push(first);
            // Bounded by count and by bytes, so a few large bodies do not hold many small
            // messages' ACKs behind one huge transaction.
            while batch.len() < max_batch && bytes < MAX_BATCH_BYTES {
                match receiver.try_recv() {
                    Ok(request) => {
                        bytes += request.op.body_len();
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let has_append = |batch: &[Request]| batch.iter().any(|r| r.op.is_append());
            if intake_streaming
                && !has_append(&batch)
                && !self.options.intake_hold.is_zero()
                && let Some(clock) = &clock
            {
                let hold = self.options.intake_hold;
                hold_for_intake(
                    clock,
                    hold,
                    &mut receiver,
                    &mut batch,
                    &mut bytes,
                    max_batch,
                );
            }
            intake_streaming = has_append(&batch);
            let result = match self.database() {
                Some(database) => self.write_batch(&database, &batch),
                None => Err(StoreError::Storage(
                    "the database is not open; reopening failed".to_owned(),
                )),
            };
            match result {
                Ok((outcomes, woken)) => self.answer(batch.drain(..), outcomes, woken),
                Err(failure) => {
                    let reason = failure.to_string();
                    self.shared
                        .stats
                        .failed_batches
                        .fetch_add(1, Ordering::Relaxed);
                    self.reopen_after(&failure);
                    if batch.len() == 1 {
                        error!(error = %reason, "outbox commit failed; the request gets an error");
                        for request in batch.drain(..) {
                            let _ = request.reply.send(Err(StoreError::Storage(reason.clone())));
                        }
                    } else {
                        // One bad operation (a record that will not decode, say) must not fail
                        // the others: try each on its own. A disk that fails every commit
                        // fails the first two too, and then the rest are answered at once.
                        error!(error = %reason, records = batch.len(), "outbox commit failed; trying the batch's requests one by one");
                        self.one_by_one(&mut batch);
                    }
                }
            }
        }
        info!("outbox writer stopped");
    }

    /// Answer a committed batch and wake the connectors whose queues grew.
    fn answer(
        &self,
        requests: impl Iterator<Item = Request>,
        outcomes: Vec<Done>,
        woken: BTreeSet<u32>,
    ) {
        let stats = &self.shared.stats;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        for (request, outcome) in requests.zip(outcomes) {
            match &outcome {
                Done::Appended(Appended::Duplicate { .. }) => {
                    stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Done::Appended(Appended::Stored { .. }) => {
                    stats.records.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            let _ = request.reply.send(Ok(outcome));
        }
        for connector in woken {
            if let Some(waker) = self.shared.wakers.get(&connector) {
                waker.notify_one();
            }
        }
    }

    /// After a failed batch: commit each request in its own transaction, so only the ones
    /// that fail on their own get an error. Two failures in a row mean the store itself is
    /// failing: the rest get the error without more attempts.
    fn one_by_one(&mut self, batch: &mut Vec<Request>) {
        let mut failures_in_a_row = 0;
        let mut last_error = String::new();
        for request in batch.drain(..) {
            if failures_in_a_row >= 2 {
                let _ = request
                    .reply
                    .send(Err(StoreError::Storage(last_error.clone())));
                continue;
            }
            let result = match self.database() {
                Some(database) => self.write_batch(&database, std::slice::from_ref(&request)),
                None => Err(StoreError::Storage(
                    "the database is not open; reopening failed".to_owned(),
                )),
            };
            match result {
                Ok((outcomes, woken)) => {
                    failures_in_a_row = 0;
                    self.answer(std::iter::once(request), outcomes, woken);
                }
                Err(failure) => {
                    failures_in_a_row += 1;
                    last_error = failure.to_string();
                    warn!(error = %last_error, "an outbox request failed on its own");
                    self.shared
                        .stats
                        .failed_batches
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = request
                        .reply
                        .send(Err(StoreError::Storage(last_error.clone())));
                    self.reopen_after(&failure);
                }
            }
        }
    }

    /// After a failed transaction: reopen, unless the failure was a record that would not
    /// encode or decode (the transaction was dropped; the handle and the file are fine, and a
    /// reopen would only make readers wait).
    fn reopen_after(&mut self, failure: &StoreError) {
        if !matches!(failure, StoreError::Encoding(_)) {
            self.reopen();
        }
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
        self.audit_head = None;
        if let Ok(mut slot) = self.shared.database.write() {
            slot.take();
        }
        // A commit that reported an error may still have reached the disk: learn its
        // messages so a resend is recognised.
        match load_dedup_index(&self.options) {
            Ok(index) => self.dedup = index,
            Err(error) => error!(error = %error, "retransmit index could not be rebuilt"),
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
    ) -> Result<(Vec<Done>, BTreeSet<u32>), StoreError> {
        let mut transaction = database.begin_write()?;
        transaction.set_durability(Durability::Immediate)?;
        let now = now_micros();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut woken = BTreeSet::new();
        // Accepted in this transaction: (key, id), entered in the index after the commit.
        let mut accepted: Vec<([u8; 32], u64)> = Vec::new();
        let next_id_after;
        let audit_head_after;
        {
            let mut tables = Tables {
                messages: transaction.open_table(MESSAGES)?,
                queue: transaction.open_table(QUEUE)?,
                delivery: None,
                audit: None,
                audit_head: self.audit_head,
            };
            let mut next_id = match self.next_id {
                Some(next_id) => next_id,
                None => {
                    let meta = transaction.open_table(META)?;
                    next_message_id(&meta, &tables.messages)?
                }
            };
            let mut raise_floor = false;
            for request in batch {
                let done = match &request.op {
                    Op::Append(message) => self.append(
                        &transaction,
                        &mut tables,
                        message,
                        &mut next_id,
                        now,
                        &mut accepted,
                        &mut woken,
                    )?,
                    Op::Retain {
                        cutoff_micros,
                        after_id,
                        max_scan,
                    } => {
                        let retained = retain(
                            &transaction,
                            &mut tables,
                            *cutoff_micros,
                            *after_id,
                            *max_scan,
                        )?;
                        raise_floor |= retained.removed > 0;
                        Done::Retained(retained)
                    }
                    Op::Audit(event) => Done::Audited {
                        seq: tables.audit(&transaction, now, event.clone())?,
                    },
                    Op::PruneAudit { cutoff_micros, max } => Done::Pruned {
                        removed: tables.prune_audit(&transaction, *cutoff_micros, *max)?,
                    },
                    op => {
                        let done =
                            apply_delivery_op(&transaction, &mut tables, op, now, &mut next_id)?;
                        if let (Done::Replayed { .. }, Op::Replay { to, .. }) = (&done, op) {
                            woken.insert(*to);
                            raise_floor = true;
                        }
                        done
                    }
                };
                outcomes.push(done);
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
        }
        transaction.commit()?;
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
        Ok((outcomes, woken))
    }

    #[allow(clippy::too_many_arguments)]
    fn append<'txn>(
        &self,
        transaction: &'txn WriteTransaction,
        tables: &mut Tables<'txn>,
        message: &NewMessage,
        next_id: &mut u64,
        now: i64,
        accepted: &mut Vec<([u8; 32], u64)>,
        woken: &mut BTreeSet<u32>,
    ) -> Result<Done, StoreError> {
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
                    Some(value) => Some(schema::decode_message(value.value())?.0),
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
                    return Ok(Done::Appended(Appended::Duplicate {
                        id: original,
                        ack: stored.ack,
                    }));
                }
            }
        }
        let id = *next_id;
        *next_id += 1;
        let mut record = message.record.clone();
        record.dedup_key = dedup_key;
        record.body_inline = message.body.len() <= INLINE_BODY_MAX;
        let inline = record.body_inline.then_some(message.body.as_ref());
        tables
            .messages
            .insert(id, schema::encode_message(&record, inline)?.as_slice())?;
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
            tables
                .queue
                .insert((route.connector, id), schema::encode(&entry)?.as_slice())?;
            woken.insert(route.connector);
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
        Ok(Done::Appended(Appended::Stored { id }))
    }
}

/// Wait up to `hold` for a request that stores a received message, adding whatever arrives
/// meanwhile to `batch`; once one arrives, take everything else already waiting.
///
/// Why (`OutboxOptions::intake_hold`): a single ordered sender sends its next frame about one
/// round trip after its ACK. If the writer meanwhile starts a commit for delivery updates alone
/// (a connector marking a message delivered), that frame waits for that whole commit and then
/// for its own: two fsyncs per ACK where the sender should pay one. Held, the delivery updates
/// share the next frame's commit instead. They are delayed by at most `hold`, and only right
/// after a commit that stored a received message.
fn hold_for_intake(
    clock: &tokio::runtime::Runtime,
    hold: Duration,
    receiver: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
    bytes: &mut usize,
    max_batch: usize,
) {
    let deadline = std::time::Instant::now() + hold;
    let mut appended = false;
    while batch.len() < max_batch && *bytes < MAX_BATCH_BYTES {
        let next = if appended {
            receiver.try_recv().ok()
        } else {
            // The timer is created inside `block_on`: outside a runtime it would panic.
            clock
                .block_on(async { tokio::time::timeout_at(deadline.into(), receiver.recv()).await })
                .ok()
                .flatten()
        };
        let Some(request) = next else { break };
        appended |= request.op.is_append();
        *bytes += request.op.body_len();
        batch.push(request);
    }
}

/// The tables a batch writes.
struct Tables<'txn> {
    messages: Table<'txn, u64, &'static [u8]>,
    queue: Table<'txn, (u32, u64), &'static [u8]>,
    /// `dlq` and `deliveries`, opened by the first operation that needs them: a batch of
    /// appends only must not touch them (every table a commit touches costs a root update).
    delivery: Option<DeliveryTables<'txn>>,
    /// The audit trail, opened by the first record of the batch.
    audit: Option<Table<'txn, u64, &'static [u8]>>,
    /// The chain's head as of this transaction (None until first needed).
    audit_head: Option<Head>,
}

type DeliveryTables<'txn> = (
    Table<'txn, (u32, u64), &'static [u8]>,
    Table<'txn, (u64, u32), &'static [u8]>,
);

impl<'txn> Tables<'txn> {
    /// The audit table, opened once per transaction (a second `open_table` of a table that is
    /// open fails, and would fail the whole batch).
    fn audit_table(
        &mut self,
        transaction: &'txn WriteTransaction,
    ) -> Result<&mut Table<'txn, u64, &'static [u8]>, StoreError> {
        if self.audit.is_none() {
            self.audit = Some(transaction.open_table(AUDIT)?);
        }
        self.audit
            .as_mut()
            .ok_or_else(|| StoreError::Storage("audit table not open".to_owned()))
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
            if audit::written_at(value.value())? >= cutoff_micros {
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
    fn audit(
        &mut self,
        transaction: &'txn WriteTransaction,
        now: i64,
        event: AuditEvent,
    ) -> Result<u64, StoreError> {
        let cached = self.audit_head;
        let table = self.audit_table(transaction)?;
        let mut head = match cached {
            Some(head) => head,
            None => Head::load(table)?,
        };
        let (seq, value) = audit::chain(&mut head, now, event)?;
        table.insert(seq, value.as_slice())?;
        self.audit_head = Some(head);
        Ok(seq)
    }

    fn delivery(
        &mut self,
        transaction: &'txn WriteTransaction,
    ) -> Result<&mut DeliveryTables<'txn>, StoreError> {
        if self.delivery.is_none() {
            self.delivery = Some((
                transaction.open_table(DLQ)?,
                transaction.open_table(DELIVERIES)?,
            ));
        }
        self.delivery
            .as_mut()
            .ok_or_else(|| StoreError::Storage("delivery tables not open".to_owned()))
    }
}

/// Apply a delivery-state operation (anything but append and retain).
fn apply_delivery_op<'txn>(
    transaction: &'txn WriteTransaction,
    tables: &mut Tables<'txn>,
    op: &Op,
    now: i64,
    next_id: &mut u64,
) -> Result<Done, StoreError> {
    tables.delivery(transaction)?;
    let Tables {
        messages,
        queue,
        delivery: Some((dlq, deliveries)),
        ..
    } = tables
    else {
        return Err(StoreError::Storage("delivery tables not open".to_owned()));
    };
    // What the connector held of the message before this operation: the latest record's
    // count, or the first queue entry when intake queued it and nothing happened since.
    let held_before = |deliveries: &Table<'txn, (u64, u32), &'static [u8]>,
                       message_id: u64,
                       connector: u32,
                       queued_at_intake: &dyn Fn() -> Result<bool, StoreError>|
     -> Result<u32, StoreError> {
        match deliveries.get((message_id, connector))? {
            Some(value) => Ok(schema::decode::<DeliveryRecord>(value.value())?.held),
            None => Ok(u32::from(queued_at_intake()?)),
        }
    };
    let record = |status, attempts, last_error, held| DeliveryRecord {
        status,
        at_micros: now,
        attempts,
        last_error,
        held,
    };
    // An entry that is (or was) in a queue or DLQ counts as held when no record says otherwise.
    let held = || Ok(true);
    match op {
        Op::Delivered {
            connector,
            seq,
            attempts,
        } => {
            let Some(entry) = take_queue_entry(queue, *connector, *seq)? else {
                return Ok(Done::Missing);
            };
            let before = held_before(deliveries, entry.message_id, *connector, &held)?;
            let delivered = record(
                DeliveryStatus::Delivered,
                *attempts,
                entry.last_error,
                before.saturating_sub(1),
            );
            deliveries.insert(
                (entry.message_id, *connector),
                schema::encode(&delivered)?.as_slice(),
            )?;
            Ok(Done::Applied)
        }
        Op::Retry {
            connector,
            seq,
            attempts,
            next_attempt_micros,
            error,
        } => {
            let current: Option<QueueEntry> = match queue.get((*connector, *seq))? {
                Some(value) => Some(schema::decode(value.value())?),
                None => None,
            };
            let Some(mut entry) = current else {
                return Ok(Done::Missing);
            };
            entry.attempts = *attempts;
            entry.next_attempt_micros = *next_attempt_micros;
            entry.last_error = Some(error.clone());
            queue.insert((*connector, *seq), schema::encode(&entry)?.as_slice())?;
            Ok(Done::Applied)
        }
        Op::DeadLetter {
            connector,
            seq,
            attempts,
            reason,
        } => {
            let Some(entry) = take_queue_entry(queue, *connector, *seq)? else {
                return Ok(Done::Missing);
            };
            let dead = DlqEntry {
                message_id: entry.message_id,
                attempts: *attempts,
                reason: reason.clone(),
                failed_at_micros: now,
            };
            dlq.insert((*connector, *seq), schema::encode(&dead)?.as_slice())?;
            let before = held_before(deliveries, entry.message_id, *connector, &held)?;
            let state = record(
                DeliveryStatus::DeadLettered,
                *attempts,
                Some(reason.clone()),
                before,
            );
            deliveries.insert(
                (entry.message_id, *connector),
                schema::encode(&state)?.as_slice(),
            )?;
            Ok(Done::Applied)
        }
        Op::Replay { connector, seq, to } => {
            let dead: Option<DlqEntry> = match dlq.remove((*connector, *seq))? {
                Some(value) => Some(schema::decode(value.value())?),
                None => None,
            };
            let Some(dead) = dead else {
                return Ok(Done::Missing);
            };
            let new_seq = *next_id;
            *next_id += 1;
            let entry = QueueEntry {
                message_id: dead.message_id,
                attempts: 0,
                next_attempt_micros: 0,
                last_error: None,
            };
            queue.insert((*to, new_seq), schema::encode(&entry)?.as_slice())?;
            let from_before = held_before(deliveries, dead.message_id, *connector, &held)?;
            if to == connector {
                let state = record(DeliveryStatus::Queued, 0, None, from_before);
                deliveries.insert((dead.message_id, *to), schema::encode(&state)?.as_slice())?;
            } else {
                // The original connector's DLQ entry is gone: it holds one entry less.
                let purged = record(
                    DeliveryStatus::Purged,
                    dead.attempts,
                    Some(dead.reason),
                    from_before.saturating_sub(1),
                );
                deliveries.insert(
                    (dead.message_id, *connector),
                    schema::encode(&purged)?.as_slice(),
                )?;
                let queued_at_intake = || -> Result<bool, StoreError> {
                    let routes = match messages.get(dead.message_id)? {
                        Some(value) => schema::decode_message(value.value())?.0.routes,
                        None => Vec::new(),
                    };
                    Ok(routes
                        .iter()
                        .any(|route| route.connector == *to && route.status == RouteStatus::Queued))
                };
                let to_before = held_before(deliveries, dead.message_id, *to, &queued_at_intake)?;
                let state = record(DeliveryStatus::Queued, 0, None, to_before + 1);
                deliveries.insert((dead.message_id, *to), schema::encode(&state)?.as_slice())?;
            }
            Ok(Done::Replayed { seq: new_seq })
        }
        Op::Purge { connector, seq } => {
            let dead: Option<DlqEntry> = match dlq.remove((*connector, *seq))? {
                Some(value) => Some(schema::decode(value.value())?),
                None => None,
            };
            let Some(dead) = dead else {
                return Ok(Done::Missing);
            };
            let before = held_before(deliveries, dead.message_id, *connector, &held)?;
            let purged = record(
                DeliveryStatus::Purged,
                dead.attempts,
                Some(dead.reason),
                before.saturating_sub(1),
            );
            deliveries.insert(
                (dead.message_id, *connector),
                schema::encode(&purged)?.as_slice(),
            )?;
            Ok(Done::Applied)
        }
        Op::Append(_) | Op::Audit(_) | Op::PruneAudit { .. } | Op::Retain { .. } => {
            Err(StoreError::Storage("not a delivery operation".to_owned()))
        }
    }
}

fn take_queue_entry(
    queue: &mut Table<'_, (u32, u64), &'static [u8]>,
    connector: u32,
    seq: u64,
) -> Result<Option<QueueEntry>, StoreError> {
    match queue.remove((connector, seq))? {
        Some(value) => Ok(Some(schema::decode(value.value())?)),
        None => Ok(None),
    }
}

/// One bounded retention step (see [`super::Outbox::retain`]).
fn retain<'txn>(
    transaction: &'txn WriteTransaction,
    tables: &mut Tables<'txn>,
    cutoff_micros: i64,
    after_id: u64,
    max_scan: usize,
) -> Result<Retained, StoreError> {
    let mut retained = Retained::default();
    let mut removable = Vec::new();
    let mut reached_cutoff = true;
    let mut last_scanned = after_id;
    tables.delivery(transaction)?;
    let Tables {
        messages,
        delivery: Some((_, deliveries)),
        ..
    } = tables
    else {
        return Err(StoreError::Storage("delivery tables not open".to_owned()));
    };
    {
        for entry in messages.range(after_id.saturating_add(1)..)? {
            if retained.scanned as usize >= max_scan {
                reached_cutoff = false;
                break;
            }
            let (id, value) = entry?;
            let id = id.value();
            let (record, _) = schema::decode_message(value.value())?;
            if record.received_at_micros >= cutoff_micros {
                break;
            }
            retained.scanned += 1;
            last_scanned = id;
            if message_is_done(deliveries, id, &record)? {
                removable.push((id, record.body_inline));
            }
        }
    }
    if !removable.is_empty() {
        let mut bodies = None;
        for (id, inline) in &removable {
            messages.remove(*id)?;
            if !inline {
                if bodies.is_none() {
                    bodies = Some(transaction.open_table(BODIES)?);
                }
                if let Some(bodies) = bodies.as_mut() {
                    bodies.remove(*id)?;
                }
            }
            deliveries.retain_in((*id, 0)..=(*id, u32::MAX), |_, _| false)?;
        }
    }
    retained.removed = removable.len() as u64;
    retained.resume_after = (!reached_cutoff).then_some(last_scanned);
    Ok(retained)
}

/// True when no connector holds this message any more: every route queued at intake has a
/// delivery record, and no record holds a queue or dead-letter entry.
fn message_is_done(
    deliveries: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: u64,
    record: &schema::MessageRecord,
) -> Result<bool, StoreError> {
    let mut states = HashMap::new();
    for entry in deliveries.range((id, 0)..=(id, u32::MAX))? {
        let (key, value) = entry?;
        let state: DeliveryRecord = schema::decode(value.value())?;
        if state.held > 0 {
            return Ok(false);
        }
        states.insert(key.value().1, state.status);
    }
    Ok(record
        .routes
        .iter()
        .filter(|route| route.status == RouteStatus::Queued)
        .all(|route| states.contains_key(&route.connector)))
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
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
