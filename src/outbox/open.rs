//! Opening the store: the directory and its files, their locks, the journal (replayed when
//! on; replayed and retired when off), the file's format version, the tables, connector ids
//! and the retransmit index.

use std::collections::HashMap;
use std::ops::Bound;

use redb::{BackendError, Database, ReadableDatabase, ReadableTable, StorageBackend};
use tracing::info;

use super::dedup::DedupIndex;
use super::journal::{self, Journaled};
use super::schema::{
    self, AUDIT, BODIES, CONNECTORS, DELIVERIES, DLQ, FORMAT_VERSION, MESSAGES, META, QUEUE,
};
use super::storage::StoreFile;
use super::{OpenError, OutboxOptions, StoreError, now_micros};

/// redb cache of the short-lived handle that rebuilds the retransmit index.
const REBUILD_CACHE_SIZE: usize = 256 << 10;

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
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}

/// Builds the errors of one open, naming the data file.
struct Opening<'a> {
    options: &'a OutboxOptions,
}

impl Opening<'_> {
    fn path(&self) -> String {
        self.options.storage.name(StoreFile::Data)
    }

    fn io(&self, what: String) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
        move |source| OpenError::Io {
            path: self.path(),
            what,
            source,
        }
    }

    fn store(&self) -> impl FnOnce(StoreError) -> OpenError + '_ {
        move |source| OpenError::Store {
            path: self.path(),
            source,
        }
    }

    /// Open a file and take its lock: a running gateway holds both files.
    fn open_locked(&self, file: StoreFile) -> Result<Box<dyn StorageBackend>, OpenError> {
        let storage = &self.options.storage;
        let backend = storage
            .open(file)
            .map_err(self.io(format!("cannot open {}", storage.name(file))))?;
        match backend.try_lock_range(Bound::Unbounded, Bound::Unbounded) {
            Ok(true) | Err(BackendError::Unsupported) => Ok(backend),
            Ok(false) => Err(OpenError::InUse {
                path: self.path(),
                detail: format!(
                    "{} is in use by another process (another mfoundry on this DATA_DIR?)",
                    storage.name(file)
                ),
            }),
            Err(BackendError::Io(source)) => Err(OpenError::Io {
                path: self.path(),
                what: format!("cannot lock {}", storage.name(file)),
                source,
            }),
            Err(other) => Err(OpenError::Io {
                path: self.path(),
                what: format!("cannot lock {}", storage.name(file)),
                source: std::io::Error::other(other.to_string()),
            }),
        }
    }

    fn sync_directory(&self) -> Result<(), OpenError> {
        self.options
            .storage
            .sync_directory()
            .map_err(self.io("cannot create or sync the data directory".to_owned()))
    }

    fn exists(&self, file: StoreFile) -> Result<bool, OpenError> {
        let storage = &self.options.storage;
        storage
            .exists(file)
            .map_err(self.io(format!("cannot look for {}", storage.name(file))))
    }
}

/// Open or create the database and make sure every table exists and the format is known.
pub(super) fn open_database(options: &OutboxOptions) -> Result<Database, OpenError> {
    let opening = Opening { options };
    // Creates the directory when missing (private to the gateway's user), with its name
    // made durable in its parent.
    opening.sync_directory()?;
    let data_existed = opening.exists(StoreFile::Data)?;
    let journal_existed = opening.exists(StoreFile::Journal)?;
    let backend: Box<dyn StorageBackend> = if options.journal {
        Box::new(open_journaled(&opening, data_existed && journal_existed)?)
    } else {
        if journal_existed {
            retire_journal(&opening)?;
        }
        let main = opening.open_locked(StoreFile::Data)?;
        if !data_existed {
            // Commits sync the file, not its name: a power cut must not lose the file.
            opening.sync_directory()?;
        }
        // redb takes the lock itself.
        let _ = main.unlock_range(Bound::Unbounded, Bound::Unbounded);
        main
    };
    let mut builder = Database::builder();
    builder.set_cache_size(options.cache_size);
    let database =
        builder
            .create_with_backend(DynBackend(backend))
            .map_err(|source| match source {
                redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
                    path: opening.path(),
                    detail: source.to_string(),
                },
                source => OpenError::Database {
                    path: opening.path(),
                    source,
                },
            })?;
    prepare(&opening, &database)?;
    Ok(database)
}

/// Check the format version, give a new file its instance id, create every table.
fn prepare(opening: &Opening<'_>, database: &Database) -> Result<(), OpenError> {
    let prepared = (|| -> Result<Result<(), u64>, StoreError> {
        let transaction = database.begin_write()?;
        {
            let mut meta = transaction.open_table(META)?;
            match schema::read_meta(&meta, "format_version")? {
                0 => {
                    meta.insert("format_version", FORMAT_VERSION)?;
                }
                FORMAT_VERSION => {}
                newer => return Ok(Err(newer)),
            }
            if schema::read_meta(&meta, "instance_id")? == 0 {
                meta.insert("instance_id", new_instance_id(&opening.path()))?;
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
        Ok(Ok(()))
    })()
    .map_err(opening.store())?;
    prepared.map_err(|found| OpenError::Refused {
        path: opening.path(),
        reason: format!(
            "the file has format version {found}; this mfoundry reads version {FORMAT_VERSION} \
             (run the mfoundry release that wrote it)"
        ),
    })
}

/// Open the data file through its journal, replaying the journal first (see [`journal`]).
/// Both files are locked, the data file first, so no other process replays into, writes or
/// removes a journal in use; the journal stays locked while the handle lives, the data file's
/// lock is handed to redb.
fn open_journaled(opening: &Opening<'_>, both_existed: bool) -> Result<Journaled, OpenError> {
    let main = opening.open_locked(StoreFile::Data)?;
    let journal_file = opening.open_locked(StoreFile::Journal)?;
    if !both_existed {
        // Commits will depend on both files: their names must survive a power cut too (an
        // empty data file beside a journal with records is refused as a deleted one).
        opening.sync_directory()?;
    }
    let storage = &opening.options.storage;
    let (backend, replayed) = Journaled::open(main, journal_file, opening.options.journal_capacity)
        .map_err(opening.io(format!("journal {}", storage.name(StoreFile::Journal))))?;
    let _ = backend.unlock_range(Bound::Unbounded, Bound::Unbounded);
    log_replayed(replayed);
    Ok(backend)
}

/// With the journal off: a journal left by a run with it on is replayed into the data file,
/// then removed (while both are still locked).
fn retire_journal(opening: &Opening<'_>) -> Result<(), OpenError> {
    let storage = &opening.options.storage;
    let journal_name = storage.name(StoreFile::Journal);
    let main = opening.open_locked(StoreFile::Data)?;
    let journal_file = opening.open_locked(StoreFile::Journal)?;
    let replayed = journal::retire(main.as_ref(), journal_file.as_ref())
        .map_err(opening.io(format!("journal {journal_name}")))?;
    log_replayed(replayed);
    storage
        .remove(StoreFile::Journal)
        .map_err(opening.io(format!("cannot remove {journal_name}")))?;
    opening.sync_directory()?;
    info!("STORE_JOURNAL is off: the journal of an earlier run was replayed and removed");
    let _ = journal_file.close();
    let _ = main.close();
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
fn new_instance_id(path: &str) -> u64 {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(now_micros().to_be_bytes());
    hasher.update(std::process::id().to_be_bytes());
    hasher.update(path.as_bytes());
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

/// Every connector name the file knows.
pub(super) fn known_connectors(database: &Database) -> Result<Vec<String>, StoreError> {
    let table = database.begin_read()?.open_table(CONNECTORS)?;
    let mut names = Vec::new();
    for entry in table.iter()? {
        names.push(entry?.0.value().to_owned());
    }
    Ok(names)
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
                    next = next.checked_add(1).ok_or_else(|| {
                        StoreError::Encoding("connector ids exhausted".to_owned())
                    })?;
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
pub(super) fn load_dedup_index(options: &OutboxOptions) -> Result<Option<DedupIndex>, OpenError> {
    let Some(window) = options.dedup_window else {
        return Ok(None);
    };
    let scan = OutboxOptions {
        cache_size: REBUILD_CACHE_SIZE.min(options.cache_size),
        ..options.clone()
    };
    let database = open_database(&scan)?;
    let opening = Opening { options };
    let window = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
    let mut index = DedupIndex::new(window, options.dedup_max_entries);
    let rebuilt = (|| -> Result<(), StoreError> {
        let messages = database.begin_read()?.open_table(MESSAGES)?;
        index.rebuild(&messages, now_micros())
    })();
    rebuilt.map_err(opening.store())?;
    Ok(Some(index))
}
