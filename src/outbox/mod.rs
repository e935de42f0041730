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
//! # Modules
//! [`open`](self) opens the files ([`storage`]) and the database, [`journal`] is the optional
//! commit journal under redb, `writer` is the thread (the batching loop, and `writer::txn`
//! for what a batch does inside its transaction), `request` the typed requests it answers,
//! [`schema`] the tables and records, `dedup` the retransmit index, [`audit`] the trail,
//! [`error`] the error types, `outcomes` what becomes of queue entries (delivered, retried,
//! dead-lettered, replayed, reprocessed, purged).
//!
//! The outbox knows nothing of HL7 or sockets: it stores what ingest hands it.

pub mod audit;
pub mod crypt;
pub mod datafile;
mod dedup;
mod depth;
pub mod error;
pub mod journal;
mod objects;
mod open;
mod outcomes;
pub mod patients;
pub mod rekey;
mod request;
pub mod schema;
mod snapshot;
pub mod spool;
pub mod storage;
pub mod verify;
mod writer;

pub use depth::Depth;
pub use error::{Chain, OpenError, StoreError};
pub use objects::ObjectKey;
pub use open::OpenReport;
pub use snapshot::{Pending, QueueFigures, Snapshot};
pub use storage::{Directory, Storage, StoreFile, journal_path};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redb::Database;
use tokio::sync::{Notify, mpsc};

use crate::locks::{read as read_lock, write as write_lock};

pub use request::AuditContext;
use request::{Answer, Reply, Request};

pub use schema::{
    ConnectorId, DeliveryRecord, DeliveryStatus, Disposition, DlqEntry, EntryRef, FileRecord,
    HeaderFields, MessageId, MessageRecord, PastEntry, QueueEntry, Route, RouteStatus, Seq,
    StoredCopy,
};

/// Name of the database file inside `DATA_DIR`.
pub const FILE_NAME: &str = "mfoundry.redb";

/// How to open the outbox.
#[derive(Clone)]
pub struct OutboxOptions {
    /// The store's files: the data file and its journal (see [`storage`]).
    pub storage: Arc<dyn Storage>,
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
    /// Right after a commit that stored a received message, how long a batch of other
    /// requests alone (delivery updates) waits for the next received message to share its
    /// commit, so a single ordered sender pays one commit per ACK (default 1 ms; zero: never).
    pub intake_hold: Duration,
    /// Commit through a journal next to the data file (see [`journal`]). Off, a journal
    /// left by an earlier run is still replayed, then removed. False in [`Self::new`]; the
    /// gateway sets it from `STORE_JOURNAL`.
    pub journal: bool,
    /// Size of the journal file, bytes.
    pub journal_capacity: u64,
    /// The keys values are sealed with (ADR 0011); plain by default.
    pub keys: crypt::Keys,
    /// Reads a stored body's patient values, to build the patient index when it is not
    /// built with the index key in use (ADR 0019). None (offline tools, tests): the index
    /// is left for the next open that has it.
    pub patient_fields: Option<patients::PatientReader>,
    /// Keep the patient index (ADR 0019); off, appends write no tags and the open marks the
    /// index as not built, so the next open with it on builds it whole. On by default.
    pub patient_index: bool,
}

impl std::fmt::Debug for OutboxOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OutboxOptions")
            .field("storage", &self.storage)
            .field("cache_size", &self.cache_size)
            .field("max_batch", &self.max_batch)
            .field("channel_capacity", &self.channel_capacity)
            .field("dedup_window", &self.dedup_window)
            .field("dedup_max_entries", &self.dedup_max_entries)
            .field("intake_hold", &self.intake_hold)
            .field("journal", &self.journal)
            .field("journal_capacity", &self.journal_capacity)
            .field("keys", &self.keys)
            .field("patient_fields", &self.patient_fields.is_some())
            .field("patient_index", &self.patient_index)
            .finish()
    }
}

impl OutboxOptions {
    /// Defaults for a database file at `path` (its journal beside it).
    pub fn new(path: PathBuf) -> Self {
        Self::with_storage(Arc::new(Directory::new(&path)))
    }

    /// Defaults for a store in `storage` (tests keep files in memory).
    pub fn with_storage(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            cache_size: 8 << 20,
            max_batch: 512,
            channel_capacity: 4096,
            dedup_window: Some(Duration::from_secs(3600)),
            dedup_max_entries: 100_000,
            intake_hold: Duration::from_millis(1),
            journal: false,
            journal_capacity: journal::DEFAULT_CAPACITY,
            keys: crypt::Keys::plain(),
            patient_fields: None,
            patient_index: true,
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
    /// The copies of connectors with transform steps (ADR 0009), for queued routes only: a
    /// copy that failed puts that connector's entry straight into its dead-letter queue.
    pub copies: Vec<(ConnectorId, StoredCopy)>,
    /// The `order_by` key of each connector that has one and takes the message, written
    /// into its queue entry (ADR 0015).
    pub order_keys: Vec<(ConnectorId, u64)>,
    /// The patient's identifiers and family names, for the patient index (only their keyed
    /// hashes are stored, ADR 0019).
    pub patient: Vec<(patients::IndexField, String)>,
    /// For a DICOM object: its SOP Instance UID and digest. An object stored before with the
    /// same bytes is answered [`Appended::Duplicate`] and nothing is written (ADR 0020).
    pub object: Option<ObjectKey>,
    /// A body spooled to a file (ADR 0020): `body` is empty and the store keeps where the
    /// file is, committed with the record.
    pub spool: Option<spool::SpoolRef>,
}

/// What `append` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored under this id.
    Stored {
        /// The new message id.
        id: MessageId,
    },
    /// An identical frame was accepted within the dedup window: nothing was written.
    Duplicate {
        /// The id of the original.
        id: MessageId,
        /// The ACK the original got.
        ack: Option<Vec<u8>>,
    },
}

/// The file a batch of messages was read from (a directory listener), recorded in the commit
/// that stores them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMark {
    /// SHA-256 of the file's bytes: the key a file read again is recognised by.
    pub sha256: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// The listener that read it.
    pub listener: String,
}

/// What `append_batch` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchAppended {
    /// Every message was stored (or found to be a retransmission), in one commit: one
    /// answer per message, in order.
    Stored(Vec<Appended>),
    /// The file was stored before (its [`FileMark`] is in the store): nothing was written.
    FileSeen(FileRecord),
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
    /// Stored records found damaged (failing their checksum) by a worker before delivery.
    pub damaged: AtomicU64,
    /// Damaged records the last background verification found.
    pub verified_damaged: AtomicU64,
}

/// What one retention pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Messages removed.
    pub removed: u64,
    /// Messages looked at.
    pub scanned: u64,
    /// Messages whose stored record is damaged: kept and stepped over.
    pub damaged: u64,
    /// Continue after this id next time; `None` when the pass reached the cutoff (start again
    /// from the oldest message next time).
    pub resume_after: Option<MessageId>,
    /// File marks removed (older than the cutoff), after a whole pass.
    pub file_marks: u64,
}

/// Shared between the handle, readers and the writer thread.
struct Shared {
    /// The open database; replaced by the writer when it reopens. Readers clone the `Arc`.
    database: RwLock<Option<Arc<Database>>>,
    stats: OutboxStats,
    /// One per registered connector: notified after a commit that added to its queue.
    wakers: RwLock<HashMap<ConnectorId, Arc<Notify>>>,
    /// The registered connectors' ids by name (more are registered by a configuration
    /// reload; none is ever removed: ids are never reused).
    connectors: RwLock<HashMap<String, ConnectorId>>,
    /// Cancelled when the writer thread panicked: nothing can be stored any more.
    writer_failed: tokio_util::sync::CancellationToken,
    /// Entries per connector in its queue and dead-letter queue, as of the last commit.
    depths: Arc<depth::Depths>,
    /// The key of the patient index's tags.
    index: Arc<patients::IndexKey>,
    /// Whether appends write index tags (`OutboxOptions::patient_index`).
    index_on: bool,
    /// The DICOM object index's salt: the store's instance id.
    salt: u64,
    /// Where large bodies are spooled (`None`: stores in memory).
    spool: Option<Arc<spool::Spool>>,
}

/// Handle to the outbox. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Clone)]
pub struct Outbox {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    instance_id: u64,
    /// The store's files.
    storage: Arc<dyn Storage>,
    /// What values are sealed with.
    keys: crypt::Keys,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Outbox")
            .field("connectors", &self.connectors().len())
            .finish_non_exhaustive()
    }
}

/// Joins the writer thread.
#[derive(Debug)]
pub struct WriterHandle(std::thread::JoinHandle<()>);

impl WriterHandle {
    /// Wait until the writer has answered every request and stopped. It stops once every
    /// [`Outbox`] handle is dropped, or after [`Outbox::stop`].
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
    ) -> Result<(Self, WriterHandle), OpenError> {
        let dedup = open::load_dedup_index(&options)?;
        let database = open::open_database(&options)?;
        let path = || options.storage.name(StoreFile::Data);
        let spool = open::open_spool(&options, &database).map_err(|source| OpenError::Store {
            path: path(),
            source,
        })?;
        let index = patients::prepare(
            &database,
            &options.keys,
            options.patient_fields.as_ref(),
            options.patient_index,
            spool.as_deref(),
        )
        .map_err(|source| OpenError::Store {
            path: path(),
            source,
        })?;
        let connectors =
            open::register_connectors(&database, connector_names).map_err(|source| {
                OpenError::Store {
                    path: path(),
                    source,
                }
            })?;
        let instance_id = open::instance_id(&database).map_err(|source| OpenError::Store {
            path: path(),
            source,
        })?;
        let depths = Arc::new(depth::Depths::default());
        depths
            .recount(&database)
            .map_err(|source| OpenError::Store {
                path: path(),
                source,
            })?;
        let shared = Arc::new(Shared {
            depths,
            database: RwLock::new(Some(Arc::new(database))),
            stats: OutboxStats::default(),
            wakers: RwLock::new(
                connectors
                    .values()
                    .map(|id| (*id, Arc::new(Notify::new())))
                    .collect(),
            ),
            connectors: RwLock::new(connectors),
            writer_failed: tokio_util::sync::CancellationToken::new(),
            index,
            index_on: options.patient_index,
            salt: instance_id,
            spool,
        });
        let (requests, receiver) = mpsc::channel(options.channel_capacity.max(1));
        if let Some(index) = &dedup {
            shared
                .stats
                .dedup_entries
                .store(index.len() as u64, Ordering::Relaxed);
        }
        let storage = Arc::clone(&options.storage);
        let keys = options.keys.clone();
        let thread =
            writer::spawn(options, Arc::clone(&shared), receiver, dedup).map_err(|source| {
                OpenError::Io {
                    path: storage.name(StoreFile::Data),
                    what: "cannot start the writer thread".to_owned(),
                    source,
                }
            })?;
        Ok((
            Self {
                requests,
                shared,
                instance_id,
                storage,
                keys,
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
    pub fn open_existing(options: OutboxOptions) -> Result<(Self, WriterHandle), OpenError> {
        let path = options.storage.name(StoreFile::Data);
        let exists = options
            .storage
            .exists(StoreFile::Data)
            .map_err(|source| OpenError::Io {
                path: path.clone(),
                what: "cannot look for the data file".to_owned(),
                source,
            })?;
        if !exists {
            return Err(OpenError::Refused {
                path,
                reason: "no such file (check DATA_DIR or --data-dir)".to_owned(),
            });
        }
        let names = {
            let database = open::open_database(&options)?;
            open::known_connectors(&database).map_err(|source| OpenError::Store { path, source })?
        };
        Self::open(options, &names)
    }

    /// The id of a registered connector.
    pub fn connector_id(&self, name: &str) -> Option<ConnectorId> {
        read_lock(&self.shared.connectors).get(name).copied()
    }

    /// Every registered connector: name and id.
    pub fn connectors(&self) -> Vec<(String, ConnectorId)> {
        read_lock(&self.shared.connectors)
            .iter()
            .map(|(name, id)| (name.clone(), *id))
            .collect()
    }

    fn registered(&self, connector: ConnectorId) -> bool {
        read_lock(&self.shared.connectors)
            .values()
            .any(|id| *id == connector)
    }

    /// Register connectors while running (a configuration reload added them): new names
    /// get new ids (durably, before this returns), names seen before keep theirs. Answers
    /// every name's id.
    pub async fn register(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, ConnectorId>, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::Register {
            names: names.to_vec(),
            reply,
        };
        let ids = self.submit(request, answer).await?;
        {
            let mut wakers = write_lock(&self.shared.wakers);
            for id in ids.values() {
                wakers.entry(*id).or_insert_with(|| Arc::new(Notify::new()));
            }
        }
        write_lock(&self.shared.connectors).extend(ids.iter().map(|(n, id)| (n.clone(), *id)));
        Ok(ids)
    }

    /// Notified after every commit that added an entry to this connector's queue. A
    /// notification that arrives while nobody waits is kept (one permit), so a worker that
    /// checks its queue and then waits never misses one.
    pub fn waker(&self, connector: ConnectorId) -> Option<Arc<Notify>> {
        read_lock(&self.shared.wakers).get(&connector).cloned()
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
        let (reply, answer) = Reply::new();
        // The tags are made here, in the caller's task, not on the writer's thread.
        let tags = self.tags(&message);
        let message = Box::new(message);
        self.submit(
            Request::Append {
                message,
                tags,
                reply,
            },
            answer,
        )
        .await
    }

    /// Store several messages in one commit: all of them or none (a batch, a file). With
    /// `file`, a file whose mark is already stored writes nothing and answers
    /// [`BatchAppended::FileSeen`]; otherwise the mark is written in the same commit.
    pub async fn append_batch(
        &self,
        messages: Vec<NewMessage>,
        file: Option<FileMark>,
    ) -> Result<BatchAppended, StoreError> {
        let (reply, answer) = Reply::new();
        let tags = messages.iter().map(|message| self.tags(message)).collect();
        self.submit(
            Request::AppendBatch {
                messages,
                tags,
                file,
                reply,
            },
            answer,
        )
        .await
    }

    /// One bounded retention step: look at up to `max_scan` messages with ids above
    /// `after` (from the oldest when `None`), received before `cutoff_micros`, and remove those every connector is done
    /// with (delivered, filtered or purged everywhere; never one still queued or in a DLQ).
    pub async fn retain(
        &self,
        cutoff_micros: i64,
        after: Option<MessageId>,
        max_scan: usize,
    ) -> Result<Retained, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::Retain {
            cutoff_micros,
            after,
            max_scan: max_scan.max(1),
            reply,
        };
        self.submit(request, answer).await
    }

    /// Enter the patient index tags of up to `max` messages stored since the last merge
    /// into the tag-ordered entries (ADR 0019); returns how many, and whether more wait.
    /// Searches see every stored message either way.
    pub async fn merge_patient_index(&self, max: usize) -> Result<(usize, bool), StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::MergeIndex {
            max: max.max(1),
            reply,
        };
        self.submit(request, answer).await
    }

    /// Append an admin action to the audit trail; returns its seq.
    pub async fn audit(&self, event: audit::AuditEvent) -> Result<u64, StoreError> {
        let (reply, answer) = Reply::new();
        self.submit(Request::Audit { event, reply }, answer).await
    }

    /// Remove up to `max` of the oldest audit records written before `cutoff_micros`; returns
    /// how many. The newest record is always kept, and `meta["audit_first_seq"]` records
    /// where the trail now starts, so verification tells pruning from removal.
    pub async fn prune_audit(&self, cutoff_micros: i64, max: usize) -> Result<u64, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::PruneAudit {
            cutoff_micros,
            max: max.max(1),
            reply,
        };
        self.submit(request, answer).await
    }

    /// Stop the writer: what was sent before is committed and answered, what comes after is
    /// answered [`StoreError::WriterGone`], and the database is closed (cleanly: with the
    /// journal on, it is left empty). Returns once the database is closed; then
    /// [`WriterHandle::join`] returns at once. Used when a drain is cut short while
    /// connections still hold handles.
    pub async fn stop(&self) -> Result<(), StoreError> {
        let (reply, answer) = Reply::new();
        self.submit(Request::Stop { reply }, answer).await
    }

    async fn submit<T>(&self, request: Request, answer: Answer<T>) -> Result<T, StoreError> {
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
            .map_err(|error| StoreError::Encoding(format!("read task failed: {error}")))?
    }

    /// The index tags of `message` (none with the index off).
    fn tags(&self, message: &NewMessage) -> Vec<patients::Tag> {
        if self.shared.index_on {
            self.shared.index.tags(&message.patient)
        } else {
            Vec::new()
        }
    }

    /// Whether the patient index is kept (`OutboxOptions::patient_index`).
    pub fn patient_index_on(&self) -> bool {
        self.shared.index_on
    }

    /// The patient index's tag of `value` (None when it is blank): what a search by
    /// patient looks up ([`Snapshot::patient_messages`]).
    pub fn index_tag(&self, field: patients::IndexField, value: &str) -> Option<patients::Tag> {
        self.shared.index.tag(field, value)
    }

    /// Size of the data file in bytes (None when it cannot be read).
    pub fn file_size(&self) -> Option<u64> {
        self.storage.size(StoreFile::Data).ok().flatten()
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
        Ok(Snapshot::new(&database, self.keys.clone())?
            .with_depths(Arc::clone(&self.shared.depths))
            .with_spool(self.shared.spool.clone(), &database))
    }

    /// Where large bodies are spooled; `None` for a store in memory (bodies stored whole).
    pub fn spool(&self) -> Option<&Arc<spool::Spool>> {
        self.shared.spool.as_ref()
    }

    /// A connector's queue and dead-letter queue sizes as of the last commit, without
    /// reading the store.
    pub fn depth(&self, connector: ConnectorId) -> Depth {
        self.shared.depths.get(connector)
    }
}

/// Open a store that would be refused, accepting the loss of what cannot be read (see
/// [`journal::Policy::AcceptLoss`]); the report says what was given up. The database is
/// closed when the returned handle is dropped. For `mfoundry store recover`.
pub fn open_accepting_loss(options: &OutboxOptions) -> Result<(Database, OpenReport), OpenError> {
    open::open_with(options, journal::Policy::AcceptLoss)
}

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
