//! The outbox: every message with a readable header, stored durably before it is answered.
//!
//! # Commit protocol (group commit)
//! One writer thread owns every write transaction. [`Outbox::append`] sends the record and a
//! reply channel over a bounded channel; the writer takes everything waiting (up to
//! `max_batch`), writes it all in **one** transaction with `Durability::Immediate`, commits,
//! and only then answers each caller. One fsync covers many frames; no caller hears "stored"
//! before its commit returned. If anything in the transaction fails, the transaction is
//! dropped (nothing of the batch is on disk) and the writer reopens the database (after an I/O
//! error redb refuses further use of the handle; a retried fsync cannot be trusted); then it
//! commits each request of the batch in its own transaction, so one request that fails on its
//! own (a damaged record) does not fail the others. Two failures in a row mean the store is
//! failing: the rest of the batch hears the error at once.
//!
//! # Layout
//! See [`schema`]: `messages` (record, and the body when small) and `bodies` (large bodies)
//! keyed by message id (`u64`, increasing), `queue`
//! keyed by `(connector id u32, seq u64)` so a range scan of one connector is its FIFO,
//! `connectors` mapping names to ids, and
//! `meta` holding counters and the format version. Retransmit detection keeps its index in
//! memory (see [`dedup`]); the key itself is stored in each accepted message's record.
//!
//! # Atomic fan-out
//! A message, its body, one queue entry per connector its filters chose, and its dedup record
//! are written in the same transaction: after a crash all of them exist or none.
//!
//! The outbox knows nothing of HL7 or sockets: it stores what ingest hands it.

pub mod audit;
mod dedup;
pub mod journal;
pub mod schema;
mod writer;

pub(crate) use writer::journal_path;
pub use writer::now_micros;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend};
use tokio::sync::{Notify, mpsc, oneshot};

pub use schema::{
    DeliveryRecord, DeliveryStatus, Disposition, DlqEntry, HeaderFields, MessageRecord, QueueEntry,
    Route, RouteStatus,
};

/// Name of the database file inside `DATA_DIR`.
pub const FILE_NAME: &str = "mfoundry.redb";

/// Why the outbox could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb reported a storage, transaction or table error.
    #[error("storage error: {0}")]
    Storage(String),
    /// A record could not be encoded or decoded.
    #[error("record encoding error: {0}")]
    Encoding(String),
    /// The writer thread is gone (shutting down, or it could not reopen the database).
    #[error("the outbox writer is not running")]
    WriterGone,
    /// A connector id that the configuration does not have.
    #[error("connector id {0} is not in the configuration")]
    UnknownConnector(u32),
    /// The database could not be opened.
    #[error("cannot open the outbox at {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// redb's reason.
        reason: String,
    },
    /// Another process holds the data file or its journal (a running gateway).
    #[error("cannot open the outbox at {path}: {reason}")]
    InUse {
        /// The file.
        path: String,
        /// Which lock was held.
        reason: String,
    },
}

macro_rules! storage_error_from {
    ($($source:ty),*) => {
        $(impl From<$source> for StoreError {
            fn from(error: $source) -> Self {
                Self::Storage(error.to_string())
            }
        })*
    };
}
storage_error_from!(
    redb::Error,
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// Makes a fresh storage backend each time the database is (re)opened. Tests use it to inject
/// faults; production opens the file in `DATA_DIR`.
pub type BackendFactory = Arc<dyn Fn() -> std::io::Result<Box<dyn StorageBackend>> + Send + Sync>;

/// How to open the outbox.
#[derive(Clone)]
pub struct OutboxOptions {
    /// The database file.
    pub path: PathBuf,
    /// redb page cache, bytes.
    pub cache_size: usize,
    /// Most records written in one transaction.
    pub max_batch: usize,
    /// Capacity of the channel into the writer.
    pub channel_capacity: usize,
    /// How long an accepted frame is remembered for retransmit detection; `None` disables.
    pub dedup_window: Option<Duration>,
    /// Most accepted frames remembered for retransmit detection.
    pub dedup_max_entries: usize,
    /// Storage backend to use instead of the file at `path`.
    pub backend: Option<BackendFactory>,
    /// Right after a commit that stored a received message, how long a batch of other
    /// requests alone (delivery updates) waits for the next received message to share its
    /// commit, so a single ordered sender pays one commit per ACK (default 1 ms; zero: never).
    pub intake_hold: Duration,
    /// Commit through a journal next to the data file (see [`journal`]). Off, a journal
    /// left by an earlier run is still replayed, then removed. False in [`Self::new`]; the
    /// gateway sets it from `STORE_JOURNAL`, which is on by default.
    pub journal: bool,
    /// Size of the journal file, bytes.
    pub journal_capacity: u64,
}

impl std::fmt::Debug for OutboxOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OutboxOptions")
            .field("path", &self.path)
            .field("cache_size", &self.cache_size)
            .field("max_batch", &self.max_batch)
            .field("channel_capacity", &self.channel_capacity)
            .field("dedup_window", &self.dedup_window)
            .field("dedup_max_entries", &self.dedup_max_entries)
            .field("custom_backend", &self.backend.is_some())
            .field("intake_hold", &self.intake_hold)
            .field("journal", &self.journal)
            .field("journal_capacity", &self.journal_capacity)
            .finish()
    }
}

impl OutboxOptions {
    /// Defaults for a database file at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache_size: 8 << 20,
            max_batch: 512,
            channel_capacity: 4096,
            dedup_window: Some(Duration::from_secs(3600)),
            dedup_max_entries: 100_000,
            backend: None,
            intake_hold: Duration::from_millis(1),
            journal: false,
            journal_capacity: journal::DEFAULT_CAPACITY,
        }
    }
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Everything but the body (for an accepted message, `record.ack` is the ACK to replay to
    /// retransmits).
    pub record: MessageRecord,
    /// The bytes as received.
    pub body: Bytes,
    /// Set for accepted messages: the retransmit key (SHA-256 over sender, control id and
    /// body). Ignored when dedup is off.
    pub dedup_key: Option<[u8; 32]>,
    /// The sender's client-certificate identity (mTLS), for the audit record.
    pub tls_identity: Option<String>,
}

/// What `append` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this id.
    Stored {
        /// The new message id.
        id: u64,
    },
    /// An identical frame was accepted within the dedup window: nothing was written.
    Duplicate {
        /// The id of the original.
        id: u64,
        /// The ACK the original got.
        ack: Option<Vec<u8>>,
    },
}

/// Counters of the outbox.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Records written.
    pub records: AtomicU64,
    /// Retransmits answered with the original ACK (nothing written).
    pub duplicates: AtomicU64,
    /// Batches that failed (each caller got an error).
    pub failed_batches: AtomicU64,
    /// Times `append` had to wait because the writer's channel was full.
    pub channel_full: AtomicU64,
    /// Times the database was reopened after an error.
    pub reopens: AtomicU64,
    /// Accepted frames currently remembered for retransmit detection.
    pub dedup_entries: AtomicU64,
}

/// A write the writer thread applies inside a group commit.
#[derive(Debug)]
enum Op {
    /// Store a new message and queue it for the connectors its filters chose.
    Append(Box<NewMessage>),
    /// A connector's output confirmed the queue entry: remove it, record DELIVERED.
    Delivered {
        connector: u32,
        seq: u64,
        attempts: u32,
    },
    /// A delivery attempt failed and will be retried: update the queue entry.
    Retry {
        connector: u32,
        seq: u64,
        attempts: u32,
        next_attempt_micros: i64,
        error: String,
    },
    /// Give up on a queue entry: move it to the connector's dead-letter queue.
    DeadLetter {
        connector: u32,
        seq: u64,
        attempts: u32,
        reason: String,
    },
    /// Put a dead-letter entry back at the tail of a connector's queue.
    Replay { connector: u32, seq: u64, to: u32 },
    /// Remove a dead-letter entry without delivering it.
    Purge { connector: u32, seq: u64 },
    /// Append an admin action to the audit trail.
    Audit(audit::AuditEvent),
    /// Remove up to `max` of the oldest audit records written before `cutoff_micros` (never
    /// the newest record, which carries the chain forward).
    PruneAudit { cutoff_micros: i64, max: usize },
    /// Remove old messages that every connector is done with.
    Retain {
        cutoff_micros: i64,
        after_id: u64,
        max_scan: usize,
    },
}

impl Op {
    /// Whether this operation stores a received message.
    fn is_append(&self) -> bool {
        matches!(self, Self::Append(_))
    }

    /// Body bytes this operation writes (for the batch's byte cap).
    fn body_len(&self) -> usize {
        match self {
            Self::Append(message) => message.body.len(),
            _ => 0,
        }
    }
}

/// What an [`Op`] did.
#[derive(Debug)]
enum Done {
    Appended(Appended),
    /// The entry was updated or moved.
    Applied,
    /// The entry was not there (already moved or removed).
    Missing,
    /// Re-queued under this seq.
    Replayed {
        seq: u64,
    },
    Retained(Retained),
    /// Appended to the audit trail under this seq.
    Audited {
        seq: u64,
    },
    /// Audit records removed.
    Pruned {
        removed: u64,
    },
}

/// What one retention pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Messages removed.
    pub removed: u64,
    /// Messages looked at.
    pub scanned: u64,
    /// Continue after this id next time; `None` when the pass reached the cutoff (start again
    /// from the oldest message next time).
    pub resume_after: Option<u64>,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// Shared between the handle, readers and the writer thread.
struct Shared {
    /// The open database; replaced by the writer when it reopens. Readers clone the `Arc`.
    database: RwLock<Option<Arc<Database>>>,
    stats: OutboxStats,
    /// One per registered connector: notified after a commit that added to its queue.
    wakers: HashMap<u32, Arc<Notify>>,
    /// Cancelled when the writer thread panicked: nothing can be stored any more.
    writer_failed: tokio_util::sync::CancellationToken,
}

/// Handle to the outbox. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    connectors: Arc<HashMap<String, u32>>,
    instance_id: u64,
    /// The data file (None with a custom backend).
    path: Option<Arc<PathBuf>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Outbox")
            .field("connectors", &self.connectors.len())
            .finish_non_exhaustive()
    }
}

/// Joins the writer thread.
#[derive(Debug)]
pub struct WriterHandle(std::thread::JoinHandle<()>);

impl WriterHandle {
    /// Wait until the writer has answered every request and stopped. It stops once every
    /// [`Outbox`] handle is dropped.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("outbox writer thread panicked");
        }
    }
}

impl Outbox {
    /// Open (or create) the database, register `connector_names` (new names get new ids; ids
    /// are never reused), and start the writer thread.
    pub fn open(
        options: OutboxOptions,
        connector_names: &[String],
    ) -> Result<(Self, WriterHandle), StoreError> {
        let dedup = writer::load_dedup_index(&options)?;
        let database = writer::open_database(&options)?;
        let connectors = writer::register_connectors(&database, connector_names)?;
        let instance_id = writer::instance_id(&database)?;
        let shared = Arc::new(Shared {
            database: RwLock::new(Some(Arc::new(database))),
            stats: OutboxStats::default(),
            wakers: connectors
                .values()
                .map(|id| (*id, Arc::new(Notify::new())))
                .collect(),
            writer_failed: tokio_util::sync::CancellationToken::new(),
        });
        let (requests, receiver) = mpsc::channel(options.channel_capacity.max(1));
        if let Some(index) = &dedup {
            shared
                .stats
                .dedup_entries
                .store(index.len() as u64, Ordering::Relaxed);
        }
        let path = options
            .backend
            .is_none()
            .then(|| Arc::new(options.path.clone()));
        let thread = writer::spawn(options, Arc::clone(&shared), receiver, dedup)?;
        Ok((
            Self {
                requests,
                shared,
                connectors: Arc::new(connectors),
                instance_id,
                path,
            },
            WriterHandle(thread),
        ))
    }

    /// A random id given to the data file when it was created. Message ids are unique within
    /// one file; this tells files (gateways) apart.
    pub fn instance_id(&self) -> u64 {
        self.instance_id
    }

    /// Open an existing data file for maintenance (the `dlq` commands): every connector the
    /// file knows is registered, nothing new. Fails if a running mfoundry holds the file.
    pub fn open_existing(options: OutboxOptions) -> Result<(Self, WriterHandle), StoreError> {
        if options.backend.is_none() && !options.path.exists() {
            return Err(StoreError::Open {
                path: options.path.display().to_string(),
                reason: "no such file (check DATA_DIR or --data-dir)".to_owned(),
            });
        }
        let names = {
            let database = writer::open_database(&options)?;
            let table = database.begin_read()?.open_table(schema::CONNECTORS)?;
            let mut names = Vec::new();
            for entry in table.iter()? {
                names.push(entry?.0.value().to_owned());
            }
            names
        };
        Self::open(options, &names)
    }

    /// The id of a configured connector.
    pub fn connector_id(&self, name: &str) -> Option<u32> {
        self.connectors.get(name).copied()
    }

    /// Every registered connector: name and id.
    pub fn connectors(&self) -> impl Iterator<Item = (&str, u32)> {
        self.connectors
            .iter()
            .map(|(name, id)| (name.as_str(), *id))
    }

    /// Notified after every commit that added an entry to this connector's queue. A
    /// notification that arrives while nobody waits is kept (one permit), so a worker that
    /// checks its queue and then waits never misses one.
    pub fn waker(&self, connector: u32) -> Option<Arc<Notify>> {
        self.shared.wakers.get(&connector).cloned()
    }

    /// Resolves if the writer thread failed (a panic): from then on every write is answered
    /// with an error, so the process should exit and be restarted, which reopens the file.
    pub async fn writer_failed(&self) {
        self.shared.writer_failed.cancelled().await;
    }

    /// Store a message durably. Returns once the transaction holding it has committed (or
    /// failed). Cancel-safe in the sense that dropping the future never half-writes: the
    /// writer commits or drops the whole batch regardless.
    pub async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        match self.submit(Op::Append(Box::new(message))).await? {
            Done::Appended(appended) => Ok(appended),
            other => Err(unexpected(&other)),
        }
    }

    /// Record that `connector` delivered its queue entry `seq` after `attempts` attempts: the
    /// entry leaves the queue. False when the entry was not there.
    pub async fn mark_delivered(
        &self,
        connector: u32,
        seq: u64,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        self.applied(Op::Delivered {
            connector,
            seq,
            attempts,
        })
        .await
    }

    /// Record a failed attempt that will be retried at `next_attempt_micros`. False when the
    /// entry was not there.
    pub async fn record_failure(
        &self,
        connector: u32,
        seq: u64,
        attempts: u32,
        next_attempt_micros: i64,
        error: String,
    ) -> Result<bool, StoreError> {
        self.applied(Op::Retry {
            connector,
            seq,
            attempts,
            next_attempt_micros,
            error,
        })
        .await
    }

    /// Move a queue entry to its connector's dead-letter queue. False when it was not there.
    pub async fn dead_letter(
        &self,
        connector: u32,
        seq: u64,
        attempts: u32,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.applied(Op::DeadLetter {
            connector,
            seq,
            attempts,
            reason,
        })
        .await
    }

    /// Put dead-letter entry `seq` of `connector` back at the tail of the queue of `to`
    /// (default: the same connector). Returns its new queue seq, or `None` when the entry was
    /// not in the dead-letter queue.
    pub async fn replay(
        &self,
        connector: u32,
        seq: u64,
        to: Option<u32>,
    ) -> Result<Option<u64>, StoreError> {
        let answers = self.replay_many(connector, &[seq], to).await?;
        Ok(answers.into_iter().next().flatten())
    }

    /// Replay several dead-letter entries of `connector`, in the order given: their new queue
    /// entries keep that order. Submitted together, so the writer commits them in few
    /// transactions. One answer per seq: the new seq, or `None` when it was not there.
    pub async fn replay_many(
        &self,
        connector: u32,
        seqs: &[u64],
        to: Option<u32>,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let to = to.unwrap_or(connector);
        if !self.connectors.values().any(|id| *id == to) {
            return Err(StoreError::UnknownConnector(to));
        }
        let ops = seqs.iter().map(|&seq| Op::Replay { connector, seq, to });
        let mut out = Vec::with_capacity(seqs.len());
        for done in self.submit_all(ops).await? {
            out.push(match done? {
                Done::Replayed { seq } => Some(seq),
                Done::Missing => None,
                other => return Err(unexpected(&other)),
            });
        }
        Ok(out)
    }

    /// Purge several dead-letter entries of `connector`; one answer per seq (false: not there).
    pub async fn purge_many(&self, connector: u32, seqs: &[u64]) -> Result<Vec<bool>, StoreError> {
        let ops = seqs.iter().map(|&seq| Op::Purge { connector, seq });
        let mut out = Vec::with_capacity(seqs.len());
        for done in self.submit_all(ops).await? {
            out.push(match done? {
                Done::Applied => true,
                Done::Missing => false,
                other => return Err(unexpected(&other)),
            });
        }
        Ok(out)
    }

    /// Send every op in order (the channel keeps it), then wait for all the answers.
    async fn submit_all(
        &self,
        ops: impl Iterator<Item = Op>,
    ) -> Result<Vec<Result<Done, StoreError>>, StoreError> {
        let mut answers = Vec::new();
        for op in ops {
            let (reply, answer) = oneshot::channel();
            self.requests
                .send(Request { op, reply })
                .await
                .map_err(|_| StoreError::WriterGone)?;
            answers.push(answer);
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(answer.await.map_err(|_| StoreError::WriterGone)?);
        }
        Ok(out)
    }

    /// Remove dead-letter entry `seq` of `connector` without delivering it. False when it was
    /// not there.
    pub async fn purge(&self, connector: u32, seq: u64) -> Result<bool, StoreError> {
        let answers = self.purge_many(connector, &[seq]).await?;
        Ok(answers.into_iter().next().unwrap_or(false))
    }

    /// One bounded retention step: look at up to `max_scan` messages with ids above
    /// `after_id`, received before `cutoff_micros`, and remove those every connector is done
    /// with (delivered, filtered or purged everywhere; never one still queued or in a DLQ).
    pub async fn retain(
        &self,
        cutoff_micros: i64,
        after_id: u64,
        max_scan: usize,
    ) -> Result<Retained, StoreError> {
        let op = Op::Retain {
            cutoff_micros,
            after_id,
            max_scan: max_scan.max(1),
        };
        match self.submit(op).await? {
            Done::Retained(retained) => Ok(retained),
            other => Err(unexpected(&other)),
        }
    }

    /// Append an admin action to the audit trail; returns its seq.
    pub async fn audit(&self, event: audit::AuditEvent) -> Result<u64, StoreError> {
        match self.submit(Op::Audit(event)).await? {
            Done::Audited { seq } => Ok(seq),
            other => Err(unexpected(&other)),
        }
    }

    /// Remove up to `max` of the oldest audit records written before `cutoff_micros`; returns
    /// how many. The newest record is always kept, and `meta["audit_first_seq"]` records
    /// where the trail now starts, so verification tells pruning from removal.
    pub async fn prune_audit(&self, cutoff_micros: i64, max: usize) -> Result<u64, StoreError> {
        let op = Op::PruneAudit {
            cutoff_micros,
            max: max.max(1),
        };
        match self.submit(op).await? {
            Done::Pruned { removed } => Ok(removed),
            other => Err(unexpected(&other)),
        }
    }

    async fn applied(&self, op: Op) -> Result<bool, StoreError> {
        match self.submit(op).await? {
            Done::Applied => Ok(true),
            Done::Missing => Ok(false),
            other => Err(unexpected(&other)),
        }
    }

    async fn submit(&self, op: Op) -> Result<Done, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request { op, reply };
        let request = match self.requests.try_send(request) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(request)) => Some(request),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::WriterGone),
        };
        if let Some(request) = request {
            self.shared
                .stats
                .channel_full
                .fetch_add(1, Ordering::Relaxed);
            self.requests
                .send(request)
                .await
                .map_err(|_| StoreError::WriterGone)?;
        }
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Run a read on a blocking thread (redb's API is synchronous).
    pub async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshot) -> Result<T, StoreError> + Send + 'static,
    {
        let snapshot = self.snapshot()?;
        tokio::task::spawn_blocking(move || read(&snapshot))
            .await
            .map_err(|error| StoreError::Storage(format!("read task failed: {error}")))?
    }

    /// Size of the data file in bytes (None with a custom backend or when it cannot be read).
    pub fn file_size(&self) -> Option<u64> {
        let path = self.path.as_ref()?;
        std::fs::metadata(path.as_path())
            .ok()
            .map(|meta| meta.len())
    }

    /// Counters.
    pub fn stats(&self) -> &OutboxStats {
        &self.shared.stats
    }

    /// A consistent read-only view of the outbox (MVCC: writers are not blocked).
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let database = self
            .shared
            .database
            .read()
            .map_err(|_| StoreError::WriterGone)?
            .clone()
            .ok_or(StoreError::WriterGone)?;
        Ok(Snapshot {
            transaction: database.begin_read()?,
        })
    }
}

fn unexpected(done: &Done) -> StoreError {
    StoreError::Storage(format!(
        "the writer answered with an unexpected outcome: {done:?}"
    ))
}

/// A queue entry with its message, as a worker delivers it.
#[derive(Clone, Debug)]
pub struct Pending {
    /// Position in the connector's queue.
    pub seq: u64,
    /// Delivery state so far.
    pub entry: QueueEntry,
    /// The message's record (`None` if it is missing, which retention never causes).
    pub record: Option<MessageRecord>,
    /// The bytes as received.
    pub body: Option<Bytes>,
}

/// A connector's queue figures (see [`Snapshot::queue_figures`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueFigures {
    /// Entries in its queue.
    pub depth: u64,
    /// Age of the oldest queued message, seconds; `None` when the queue is empty.
    pub oldest_age_secs: Option<f64>,
    /// Entries in its dead-letter queue.
    pub dead_letters: u64,
}

/// A read transaction over the outbox.
pub struct Snapshot {
    transaction: redb::ReadTransaction,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

impl Snapshot {
    /// One message's record.
    pub fn message(&self, id: u64) -> Result<Option<MessageRecord>, StoreError> {
        let table = self.transaction.open_table(schema::MESSAGES)?;
        match table.get(id)? {
            Some(value) => Ok(Some(schema::decode_message(value.value())?.0)),
            None => Ok(None),
        }
    }

    /// One message's body.
    pub fn body(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let messages = self.transaction.open_table(schema::MESSAGES)?;
        let Some(value) = messages.get(id)? else {
            return Ok(None);
        };
        if let (_, Some(inline)) = schema::decode_message(value.value())? {
            return Ok(Some(inline.to_vec()));
        }
        let table = self.transaction.open_table(schema::BODIES)?;
        Ok(table.get(id)?.map(|value| value.value().to_vec()))
    }

    /// Every stored message record, in id order.
    pub fn messages(&self) -> Result<Vec<(u64, MessageRecord)>, StoreError> {
        let table = self.transaction.open_table(schema::MESSAGES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((key.value(), schema::decode_message(value.value())?.0));
        }
        Ok(out)
    }

    /// Number of stored messages.
    pub fn message_count(&self) -> Result<u64, StoreError> {
        Ok(self.transaction.open_table(schema::MESSAGES)?.len()?)
    }

    /// One connector's queue in FIFO order: `(seq, entry)`.
    pub fn queue(&self, connector: u32) -> Result<Vec<(u64, QueueEntry)>, StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        let mut out = Vec::new();
        for entry in table.range((connector, 0)..=(connector, u64::MAX))? {
            let (key, value) = entry?;
            out.push((key.value().1, schema::decode(value.value())?));
        }
        Ok(out)
    }

    /// Up to `max_entries` entries of a connector's queue in FIFO order, starting after seq
    /// `after` (from the head when `None`), each with its message; stops early once `max_bytes`
    /// of bodies are loaded (the first entry is always returned).
    pub fn pending(
        &self,
        connector: u32,
        after: Option<u64>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Pending>, StoreError> {
        let queue = self.transaction.open_table(schema::QUEUE)?;
        let start = after.map_or(0, |seq| seq.saturating_add(1));
        if after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for entry in queue.range((connector, start)..=(connector, u64::MAX))? {
            if out.len() >= max_entries.max(1) || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            let (key, value) = entry?;
            let seq = key.value().1;
            let entry: QueueEntry = schema::decode(value.value())?;
            let record = self.message(entry.message_id)?;
            let body = self.body(entry.message_id)?.map(Bytes::from);
            bytes += body.as_ref().map_or(0, Bytes::len);
            out.push(Pending {
                seq,
                entry,
                record,
                body,
            });
        }
        Ok(out)
    }

    /// Entries in a connector's queue.
    pub fn queue_len(&self, connector: u32) -> Result<u64, StoreError> {
        let queue = self.transaction.open_table(schema::QUEUE)?;
        let mut count = 0;
        for entry in queue.range((connector, 0)..=(connector, u64::MAX))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// A connector's dead-letter queue, oldest first: `(seq, entry)`.
    pub fn dead_letters(&self, connector: u32) -> Result<Vec<(u64, DlqEntry)>, StoreError> {
        let table = self.transaction.open_table(schema::DLQ)?;
        let mut out = Vec::new();
        for entry in table.range((connector, 0)..=(connector, u64::MAX))? {
            let (key, value) = entry?;
            out.push((key.value().1, schema::decode(value.value())?));
        }
        Ok(out)
    }

    /// One dead-letter entry.
    pub fn dead_letter(&self, connector: u32, seq: u64) -> Result<Option<DlqEntry>, StoreError> {
        let table = self.transaction.open_table(schema::DLQ)?;
        match table.get((connector, seq))? {
            Some(value) => Ok(Some(schema::decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// What became of a message at each connector after intake: `(connector id, record)`.
    pub fn deliveries(&self, message_id: u64) -> Result<Vec<(u32, DeliveryRecord)>, StoreError> {
        let table = self.transaction.open_table(schema::DELIVERIES)?;
        let mut out = Vec::new();
        for entry in table.range((message_id, 0)..=(message_id, u32::MAX))? {
            let (key, value) = entry?;
            out.push((key.value().1, schema::decode(value.value())?));
        }
        Ok(out)
    }

    /// Visit stored messages newest first, starting below id `before` (from the newest when
    /// `None`), until `visit` returns false or `max_scan` records were read. Returns the id to
    /// pass as `before` to continue, or `None` when the scan reached the oldest message or
    /// `visit` stopped it.
    pub fn scan_messages_desc(
        &self,
        before: Option<u64>,
        max_scan: usize,
        mut visit: impl FnMut(u64, &MessageRecord) -> Result<bool, StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let table = self.transaction.open_table(schema::MESSAGES)?;
        let end = before.unwrap_or(u64::MAX);
        for (scanned, entry) in table.range(..end)?.rev().enumerate() {
            let (key, value) = entry?;
            let id = key.value();
            if scanned >= max_scan.max(1) {
                return Ok(Some(id.saturating_add(1)));
            }
            let (record, _) = schema::decode_message(value.value())?;
            if !visit(id, &record)? {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// What operators watch about a connector's queues, as of `now_micros`.
    pub fn queue_figures(
        &self,
        connector: u32,
        now_micros: i64,
    ) -> Result<QueueFigures, StoreError> {
        let oldest_age_secs = match self.queue_head(connector)? {
            Some((_, entry)) => self
                .message(entry.message_id)?
                .map(|record| (now_micros - record.received_at_micros).max(0) as f64 / 1e6),
            None => None,
        };
        Ok(QueueFigures {
            depth: self.queue_len(connector)?,
            oldest_age_secs,
            dead_letters: self.dead_letter_count(connector)?,
        })
    }

    /// One queue entry.
    pub fn queue_entry(&self, connector: u32, seq: u64) -> Result<Option<QueueEntry>, StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        match table.get((connector, seq))? {
            Some(value) => Ok(Some(schema::decode(value.value())?)),
            None => Ok(None),
        }
    }

    /// The head of a connector's queue (its oldest entry), if any.
    pub fn queue_head(&self, connector: u32) -> Result<Option<(u64, QueueEntry)>, StoreError> {
        let table = self.transaction.open_table(schema::QUEUE)?;
        let mut range = table.range((connector, 0)..=(connector, u64::MAX))?;
        match range.next() {
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((key.value().1, schema::decode(value.value())?)))
            }
            None => Ok(None),
        }
    }

    /// Entries in a connector's dead-letter queue.
    pub fn dead_letter_count(&self, connector: u32) -> Result<u64, StoreError> {
        let table = self.transaction.open_table(schema::DLQ)?;
        let mut count = 0;
        for entry in table.range((connector, 0)..=(connector, u64::MAX))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }

    /// Up to `limit` dead-letter entries of a connector with seqs above `after`, oldest first.
    pub fn dead_letters_after(
        &self,
        connector: u32,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, DlqEntry)>, StoreError> {
        if after == Some(u64::MAX) {
            return Ok(Vec::new());
        }
        let start = after.map_or(0, |seq| seq + 1);
        let table = self.transaction.open_table(schema::DLQ)?;
        let mut out = Vec::new();
        for entry in table.range((connector, start)..=(connector, u64::MAX))? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = entry?;
            out.push((key.value().1, schema::decode(value.value())?));
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
            out.push((key.value(), audit::decode(value.value())?));
        }
        Ok(out)
    }

    /// Check the audit trail's hash chain (reads all of it).
    pub fn verify_audit(&self) -> Result<audit::Verification, StoreError> {
        let table = self.transaction.open_table(schema::AUDIT)?;
        let messages = self.transaction.open_table(schema::MESSAGES)?;
        let meta = self.transaction.open_table(schema::META)?;
        let first = schema::read_meta(&meta, "audit_first_seq")?;
        audit::verify(&table, &messages, first)
    }

    /// Connector names and ids.
    pub fn connectors(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let table = self.transaction.open_table(schema::CONNECTORS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (name, id) = entry?;
            out.push((name.value().to_owned(), id.value()));
        }
        Ok(out)
    }
}
