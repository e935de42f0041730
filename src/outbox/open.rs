//! Opening the store: the directory and its files, their locks, the journal (replayed when
//! on; replayed and retired when off), the file's format version, the tables, connector ids
//! and the retransmit index.

use std::collections::HashMap;
use std::ops::Bound;

use redb::{BackendError, Database, ReadableDatabase, ReadableTable, StorageBackend};
use tracing::{info, warn};

use super::crypt;
use super::datafile::{DataFile, INITIALIZED, Layout, read_layout};
use super::dedup::DedupIndex;
use super::journal::{self, HeaderRead, JournalError, Journaled, Policy, Refusal, Replayed};
use super::schema::{
    self, AUDIT, BODIES, CONNECTORS, COPIES, DELIVERIES, DLQ, FORMAT_VERSION, MESSAGES, META, QUEUE,
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

    fn refused(&self, reason: String) -> OpenError {
        OpenError::Refused {
            path: self.path(),
            reason,
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

/// What an open found and did, beyond opening.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// A new data file was created.
    pub created: bool,
    /// A data file of format 1 was converted to format 2 (its size in bytes).
    pub upgraded: Option<u64>,
    /// Journal records written again into the data file.
    pub replayed: Replayed,
    /// Accepting loss: what could not be opened as it was, and journal records given up.
    pub lost: Option<(Refusal, u64)>,
    /// Accepting loss: the data file's header was damaged and was written anew.
    pub header_rewritten: bool,
}

/// Open or create the database and make sure every table exists and the format is known.
/// Refuses (writing nothing) when the files do not belong together or are damaged.
pub(super) fn open_database(options: &OutboxOptions) -> Result<Database, OpenError> {
    open_with(options, Policy::Strict).map(|(database, _)| database)
}

/// [`open_database`] with a policy for what it would refuse, and a report of what it did.
pub(crate) fn open_with(
    options: &OutboxOptions,
    policy: Policy,
) -> Result<(Database, OpenReport), OpenError> {
    let opening = Opening { options };
    // Creates the directory when missing (private to the gateway's user), with its name
    // made durable in its parent.
    opening.sync_directory()?;
    let mut report = OpenReport::default();
    let mut dropped = false;
    let (data, journal_file, journal_existed) = loop {
        let data_existed = opening.exists(StoreFile::Data)?;
        let journal_existed = opening.exists(StoreFile::Journal)?;
        // Both files locked, the data file first, before anything is read: a running
        // gateway holds them, and nothing here may replay into or remove a journal in use.
        let main = opening.open_locked(StoreFile::Data)?;
        let journal_file = if options.journal || journal_existed {
            Some(opening.open_locked(StoreFile::Journal)?)
        } else {
            None
        };
        let mut layout = read_layout(main.as_ref())
            .map_err(opening.io("cannot read the data file".to_owned()))?;
        let unclean = match layout {
            Layout::Current(header) => header.left_open(),
            Layout::Damaged | Layout::Legacy => true,
            Layout::New => false,
        };
        if unclean && !dropped {
            // The last run did not close the files cleanly (a crash, or a failed write or
            // sync, in this process or one that exited on it). Read what the disk holds, not
            // what the cache kept: after a failed sync the cache may still show writes that
            // never reached the disk, and building on them would lose later commits at the
            // next power cut.
            for file in [StoreFile::Data, StoreFile::Journal] {
                if let Err(error) = options.storage.drop_cache(file) {
                    warn!(error = %error, file = ?file, "cannot drop the file's cached pages before opening");
                }
            }
            dropped = true;
            layout = read_layout(main.as_ref())
                .map_err(opening.io("cannot read the data file".to_owned()))?;
        }
        let data = match layout {
            Layout::Legacy => {
                report.upgraded = Some(upgrade_legacy(&opening, main, journal_file)?);
                // Open again what the conversion left (the journal, if any, holds nothing).
                continue;
            }
            Layout::Damaged if policy == Policy::Strict => {
                return Err(opening.refused(
                    "the data file's own header (its first 8 KiB) is damaged and the file cannot be identified; `mfoundry store recover --accept-loss` writes a new header and opens what redb can read"
                        .to_owned(),
                ));
            }
            Layout::Damaged => {
                report.header_rewritten = true;
                DataFile::adopt(main)
                    .map_err(opening.io("cannot rewrite the data file's header".to_owned()))?
            }
            Layout::New => {
                if let Some(journal) = &journal_file
                    && let Some(records) = journal::held_records(journal.as_ref())
                        .map_err(opening.io("cannot read the journal".to_owned()))?
                {
                    let refusal = Refusal::DataMissing { records };
                    if policy == Policy::Strict {
                        return Err(opening.refused(refusal.to_string()));
                    }
                    report.lost = Some((refusal, records));
                }
                let data = DataFile::create(main)
                    .and_then(|data| data.inner().sync_data().map(|()| data))
                    .map_err(opening.io("cannot create the data file".to_owned()))?;
                report.created = !data_existed;
                if !data_existed {
                    // Commits sync the file, not its name: a power cut must not lose it.
                    opening.sync_directory()?;
                }
                data
            }
            Layout::Current(header) => DataFile::open(main, header)
                .map_err(opening.io("cannot open the data file".to_owned()))?,
        };
        break (data, journal_file, journal_existed);
    };
    let storage = &options.storage;
    let journal_name = storage.name(StoreFile::Journal);
    let journal_error = |error: JournalError| match error {
        JournalError::Refused(refusal) => opening.refused(refusal.to_string()),
        JournalError::Io(source) => OpenError::Io {
            path: opening.path(),
            what: format!("journal {journal_name}"),
            source,
        },
    };
    let backend: Box<dyn StorageBackend> = match journal_file {
        Some(journal_file) if options.journal => {
            if !journal_existed {
                // Commits will depend on the journal: its name must survive a power cut.
                opening.sync_directory()?;
            }
            let (backend, recovered) =
                Journaled::open(data, journal_file, options.journal_capacity, policy)
                    .map_err(journal_error)?;
            note(&mut report, recovered);
            // redb takes the data file's lock itself; the journal's stays held.
            let _ = backend.unlock_range(Bound::Unbounded, Bound::Unbounded);
            Box::new(backend)
        }
        Some(journal_file) => {
            // The journal is off: what a journal left is replayed, then it is removed.
            let recovered =
                journal::retire(&data, journal_file.as_ref(), policy).map_err(journal_error)?;
            let replayed = recovered.replayed.records;
            note(&mut report, recovered);
            storage
                .remove(StoreFile::Journal)
                .map_err(opening.io(format!("cannot remove {journal_name}")))?;
            opening.sync_directory()?;
            let _ = journal_file.close();
            info!(
                commits = replayed,
                "STORE_JOURNAL is off: the journal of an earlier run was checked, replayed and removed"
            );
            data.mark_open()
                .map_err(opening.io("cannot write the data file's header".to_owned()))?;
            let _ = data.unlock_range(Bound::Unbounded, Bound::Unbounded);
            Box::new(data)
        }
        None => {
            data.mark_open()
                .map_err(opening.io("cannot write the data file's header".to_owned()))?;
            let _ = data.unlock_range(Bound::Unbounded, Bound::Unbounded);
            Box::new(data)
        }
    };
    let mut builder = Database::builder();
    builder.set_cache_size(options.cache_size);
    // A data file damaged in ways redb does not expect can make its open panic: that is an
    // error with a way out, not a crash.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.create_with_backend(DynBackend(backend))
    }));
    let database = match opened {
        Ok(Ok(database)) => database,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(OpenError::InUse {
                path: opening.path(),
                detail: "the data file is open in another process".to_owned(),
            });
        }
        Ok(Err(source)) => {
            return Err(OpenError::Database {
                path: opening.path(),
                source,
            });
        }
        Err(_) => {
            return Err(opening.refused(
                "redb failed (panicked) while opening the data file: it is damaged. Run `mfoundry store verify` for details; `mfoundry store recover --accept-loss` opens what can be read"
                    .to_owned(),
            ));
        }
    };
    prepare(&opening, &database)?;
    log_report(&report);
    Ok((database, report))
}

fn note(report: &mut OpenReport, recovered: journal::Recovered) {
    report.replayed = recovered.replayed;
    if recovered.lost.is_some() {
        report.lost = recovered.lost;
    }
}

fn log_report(report: &OpenReport) {
    if report.replayed.records > 0 {
        info!(
            commits = report.replayed.records,
            bytes = report.replayed.bytes,
            "commits written again from the journal into the data file"
        );
    }
    if let Some((refusal, records)) = &report.lost {
        warn!(records, reason = %refusal, "opened accepting loss");
    }
}

/// Convert a data file of format 1 (a plain redb file) to format 2: a journal of format 1
/// that still holds commits is replayed into it first; the file is copied behind a new header
/// into `mfoundry.redb-upgrade`, synced, and renamed over the data file. A crash on the way
/// leaves the old file (the next start converts again). Returns the size converted.
fn upgrade_legacy(
    opening: &Opening<'_>,
    main: Box<dyn StorageBackend>,
    journal_file: Option<Box<dyn StorageBackend>>,
) -> Result<u64, OpenError> {
    let storage = &opening.options.storage;
    if let Some(journal_file) = &journal_file {
        match journal::read_header(journal_file.as_ref())
            .map_err(opening.io("cannot read the journal".to_owned()))?
        {
            HeaderRead::Legacy => {
                let replayed = journal::retire_legacy(main.as_ref(), journal_file.as_ref())
                    .map_err(opening.io("cannot replay the journal of format 1".to_owned()))?;
                info!(
                    commits = replayed.records,
                    "the journal of format 1 was replayed into the data file before converting it"
                );
            }
            HeaderRead::Empty => {}
            HeaderRead::Valid(_) | HeaderRead::Unreadable => {
                if journal::held_records(journal_file.as_ref())
                    .map_err(opening.io("cannot read the journal".to_owned()))?
                    .is_some()
                {
                    return Err(opening.refused(
                        Refusal::Mismatched { records: 0 }.to_string()
                            + " (a data file of format 1 beside a journal of format 2)",
                    ));
                }
            }
        }
    }
    let size = main
        .len()
        .map_err(opening.io("cannot read the data file".to_owned()))?;
    let temporary = storage
        .open(StoreFile::Upgrade)
        .map_err(opening.io(format!(
            "cannot create {}",
            storage.name(StoreFile::Upgrade)
        )))?;
    let converted = (|| -> std::io::Result<()> {
        let upgraded = DataFile::create(temporary)?;
        let mut buffer = vec![0u8; 4 << 20];
        let mut offset = 0;
        while offset < size {
            let chunk = (size - offset).min(buffer.len() as u64) as usize;
            main.read(offset, &mut buffer[..chunk])?;
            upgraded.write(offset, &buffer[..chunk])?;
            offset += chunk as u64;
        }
        if size > 0 {
            upgraded.update_header(|header| header.flags |= INITIALIZED)?;
        }
        upgraded.inner().sync_data()?;
        upgraded.close()
    })();
    converted.map_err(opening.io(format!(
        "cannot convert the data file to format 2 (it needs as much free space as its size, {size} bytes)"
    )))?;
    drop(journal_file);
    let _ = main.close();
    drop(main);
    storage
        .rename(StoreFile::Upgrade, StoreFile::Data)
        .map_err(opening.io("cannot put the converted data file in place".to_owned()))?;
    opening.sync_directory()?;
    info!(
        bytes = size,
        "the data file was converted to format 2 (a header of its own in front of redb's file)"
    );
    Ok(size)
}

/// Check the format version and the store keys, give a new file its instance id, create
/// every table.
fn prepare(opening: &Opening<'_>, database: &Database) -> Result<(), OpenError> {
    let prepared = (|| -> Result<Result<(), String>, StoreError> {
        let transaction = database.begin_write()?;
        {
            let mut meta = transaction.open_table(META)?;
            let created = schema::read_meta(&meta, "format_version")? == 0;
            match schema::read_meta(&meta, "format_version")? {
                // New, or written by format 1 to 7: its records stay readable as they are
                // (see `schema`); from now on older builds refuse the file. The patient index
                // of a file of format 5 is built by the gateway's open (`patients::prepare`).
                0..=7 => {
                    meta.insert("format_version", FORMAT_VERSION)?;
                }
                FORMAT_VERSION => {}
                newer => {
                    return Ok(Err(format!(
                        "the file has format version {newer}; this mfoundry reads version {FORMAT_VERSION} \
                         (run the mfoundry release that wrote it)"
                    )));
                }
            }
            if let Err(refusal) = check_keys(&mut meta, &opening.options.keys)? {
                return Ok(Err(refusal));
            }
            // A store created with a key (or rewritten by a rekey) holds no plain value: one
            // found there later was put there, and is damage (ADR 0011).
            let keys = &opening.options.keys;
            if created && keys.registers() {
                meta.insert("sealed_only", 1)?;
            }
            if keys.encrypts() && schema::read_meta(&meta, "sealed_only")? == 1 {
                keys.require_sealed();
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
            transaction.open_table(COPIES)?;
            transaction.open_table(schema::FILES)?;
            transaction.open_table(schema::PATIENTS)?;
            transaction.open_table(schema::INDEX_KEYS)?;
            transaction.open_table(super::objects::OBJECTS)?;
            transaction.open_table(super::spool::SPOOL)?;
            transaction.open_table(super::spool::SPOOL_FILES)?;
        }
        transaction.commit()?;
        Ok(Ok(()))
    })()
    .map_err(opening.store())?;
    prepared.map_err(|reason| OpenError::Refused {
        path: opening.path(),
        reason,
    })
}

/// `meta` names every key that may have sealed a record: `key:<id>` = 1 (ADR 0011). Refuse
/// (the reason) a store whose keys are not all held, so a missing or wrong key is caught
/// here rather than at the first read; register the current key before it seals anything.
fn check_keys(
    meta: &mut redb::Table<'_, &'static str, u64>,
    keys: &crypt::Keys,
) -> Result<Result<(), String>, StoreError> {
    let sealed_with = keys_in_use(meta)?;
    let held = keys.ids();
    let missing: Vec<String> = sealed_with
        .iter()
        .filter(|id| !held.contains(id))
        .map(|id| crypt::key_id_text(*id))
        .collect();
    if !missing.is_empty() {
        let reason = match keys.current_id() {
            None => format!(
                "the store is encrypted (records sealed with key {}); set ENCRYPTION_KEY_FILE to that key's file",
                missing.join(", ")
            ),
            Some(current) => format!(
                "the store holds records sealed with key {}, which neither ENCRYPTION_KEY_FILE (key {}) nor ENCRYPTION_OLD_KEY_FILES holds: a wrong key file, or an earlier key missing from ENCRYPTION_OLD_KEY_FILES",
                missing.join(", "),
                crypt::key_id_text(current)
            ),
        };
        return Ok(Err(reason));
    }
    if let Some(current) = keys.current_id()
        && keys.registers()
        && !sealed_with.contains(&current)
    {
        meta.insert(format!("key:{}", crypt::key_id_text(current)).as_str(), 1)?;
    }
    Ok(Ok(()))
}

/// The ids of the keys `meta` says may have sealed records.
pub(super) fn keys_in_use(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for entry in meta.range("key:".."key;")? {
        let (name, in_use) = entry?;
        if in_use.value() == 0 {
            continue;
        }
        let id = name
            .value()
            .strip_prefix("key:")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or_else(|| {
                StoreError::Encoding(format!("meta names an unreadable key: {}", name.value()))
            })?;
        ids.push(id);
    }
    Ok(ids)
}

/// A random, non-zero id for a new data file: message ids are unique within one file only,
/// so outputs that merge several gateways (a shared PostgreSQL table) key rows by both.
/// The store's spool directory (created when missing), swept of every file no committed
/// entry names: what a crash between a spooled file and its commit, a failed store or a
/// failed removal left (ADR 0020). `None` for stores in memory.
pub(super) fn open_spool(
    options: &OutboxOptions,
    database: &Database,
) -> Result<Option<std::sync::Arc<super::spool::Spool>>, StoreError> {
    let Some(dir) = options.storage.spool_dir() else {
        return Ok(None);
    };
    let spool = super::spool::Spool::open(dir, options.keys.clone(), instance_id(database)?)?;
    let mut referenced = std::collections::HashSet::new();
    let transaction = database.begin_read()?;
    let table = transaction.open_table(super::spool::SPOOL)?;
    for entry in table.iter()? {
        let (id, value) = entry?;
        let place = crate::outbox::crypt::Place::Spool(id.value());
        match schema::decode::<super::spool::SpoolRef>(&options.keys, place, value.value()) {
            Ok(reference) => {
                referenced.insert(reference.file);
            }
            // A damaged entry names no file that can be known: nothing is removed, so the
            // file stays as evidence for `store verify`.
            Err(error) if schema::is_damage(&error) => {
                warn!(
                    message_id = id.value(),
                    "a spooled body's entry is damaged; the spool directory is not swept"
                );
                return Ok(Some(std::sync::Arc::new(spool)));
            }
            Err(error) => return Err(error),
        }
    }
    // Files the reverse index names are kept too (the two agree unless damaged).
    let files = transaction.open_table(super::spool::SPOOL_FILES)?;
    for entry in files.iter()? {
        referenced.insert(entry?.0.value());
    }
    let (removed, foreign) = spool.sweep(&referenced)?;
    if removed > 0 {
        warn!(
            files = removed,
            "removed spooled files no stored message names (left by a crash or a failed store)"
        );
    }
    if foreign > 0 {
        warn!(
            files = foreign,
            directory = %spool.dir().display(),
            "the spool directory holds files another store wrote; they are left as they are (move them away: this store never reads them)"
        );
    }
    Ok(Some(std::sync::Arc::new(spool)))
}

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
) -> Result<HashMap<String, schema::ConnectorId>, StoreError> {
    let transaction = database.begin_write()?;
    let ids = assign_ids(&transaction, names)?;
    transaction.commit()?;
    Ok(ids)
}

/// In `transaction`: give every connector name an id, keeping the ids of names seen before
/// (ids are never reused).
pub(super) fn assign_ids(
    transaction: &redb::WriteTransaction,
    names: &[String],
) -> Result<HashMap<String, schema::ConnectorId>, StoreError> {
    let mut ids = HashMap::new();
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
                    .ok_or_else(|| StoreError::Encoding("connector ids exhausted".to_owned()))?;
                connectors.insert(name.as_str(), id)?;
                id
            }
        };
        ids.insert(name.clone(), schema::ConnectorId(id));
    }
    meta.insert("next_connector_id", u64::from(next))?;
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
    let rebuilt = (|| -> Result<u64, StoreError> {
        let messages = database.begin_read()?.open_table(MESSAGES)?;
        index.rebuild(&options.keys, &messages, now_micros())
    })();
    rebuilt.map_err(opening.store())?;
    Ok(Some(index))
}
