//! The outbox: every message with a readable header, stored durably before it is answered.
//!
//! # Commit protocol (group commit)
//! One writer thread owns every write transaction. [`Outbox::append`] sends the record and a
//! reply channel over a bounded channel; the writer takes everything waiting (up to
//! `max_batch`), writes it all in **one** transaction with `Durability::Immediate`, commits,
//! and only then answers each caller. One fsync covers many frames; no caller hears "stored"
//! before its commit returned. If anything in the transaction fails, every caller in the batch
//! hears the error, the transaction is dropped (nothing of the batch is on disk), and the
//! writer reopens the database before the next batch (after an I/O error redb refuses further
//! use of the handle; a retried fsync cannot be trusted).
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

mod dedup;
pub mod schema;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend};
use tokio::sync::{mpsc, oneshot};

pub use schema::{Disposition, HeaderFields, MessageRecord, QueueEntry, Route, RouteStatus};

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
    /// The database could not be opened.
    #[error("cannot open the outbox at {path}: {reason}")]
    Open {
        /// The file.
        path: String,
        /// redb's reason.
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

struct Request {
    message: NewMessage,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// Shared between the handle, readers and the writer thread.
struct Shared {
    /// The open database; replaced by the writer when it reopens. Readers clone the `Arc`.
    database: RwLock<Option<Arc<Database>>>,
    stats: OutboxStats,
}

/// Handle to the outbox. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    connectors: Arc<HashMap<String, u32>>,
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
        let database = writer::open_database(&options)?;
        let connectors = writer::register_connectors(&database, connector_names)?;
        let dedup = writer::load_dedup_index(&database, &options)?;
        let shared = Arc::new(Shared {
            database: RwLock::new(Some(Arc::new(database))),
            stats: OutboxStats::default(),
        });
        let (requests, receiver) = mpsc::channel(options.channel_capacity.max(1));
        if let Some(index) = &dedup {
            shared
                .stats
                .dedup_entries
                .store(index.len() as u64, Ordering::Relaxed);
        }
        let thread = writer::spawn(options, Arc::clone(&shared), receiver, dedup)?;
        Ok((
            Self {
                requests,
                shared,
                connectors: Arc::new(connectors),
            },
            WriterHandle(thread),
        ))
    }

    /// The id of a configured connector.
    pub fn connector_id(&self, name: &str) -> Option<u32> {
        self.connectors.get(name).copied()
    }

    /// Store a message durably. Returns once the transaction holding it has committed (or
    /// failed). Cancel-safe in the sense that dropping the future never half-writes: the
    /// writer commits or drops the whole batch regardless.
    pub async fn append(&self, message: NewMessage) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request { message, reply };
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
