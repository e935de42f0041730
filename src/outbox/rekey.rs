//! `mfoundry store rekey` (ADR 0011): rewrite a stopped store with the current key.
//!
//! Every value is opened (with whichever key sealed it, or read plain) and sealed again with
//! the current key into a **new** data file beside the old one (`mfoundry.redb-rekey`);
//! the new file is read back and checked (every record opens, the audit chain is intact and
//! as long as before, the counts agree), the old file is closed cleanly, its (empty) journal
//! removed, and the new file renamed over it. Writing a new file rather than rewriting
//! values in place leaves no old page behind: a store that held plain records before it had
//! a key holds none afterwards, and an old key's ciphertext is gone with the old file. A
//! crash at any point leaves the old store whole (the rename is the switch) or the new one.
//!
//! The new file names only the current key: older keys are no longer needed to open it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::audit::{self, AuditEvent, Head};
use super::crypt::{self, Keys, Place};
use super::journal::Policy;
use super::open::{keys_in_use, open_with};
use super::schema::{AUDIT, BODIES, CONNECTORS, COPIES, DELIVERIES, DLQ, MESSAGES, META, QUEUE};
use super::{Chain, OpenError, OutboxOptions, StoreError, now_micros};

/// Records copied per transaction.
const CHUNK: usize = 5_000;

/// What a rekey did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rekeyed {
    /// The key everything is sealed with now.
    pub key: String,
    /// Keys the store named before and no longer needs.
    pub retired: Vec<String>,
    /// Records rewritten, per table.
    pub records: BTreeMap<&'static str, u64>,
    /// Of those, values that were stored plain before.
    pub were_plain: u64,
}

/// Rewrite the stopped store at `data` (its journal beside it) with `keys`' current key.
/// `progress(table, done)` is called every few thousand records and at each table's end.
pub fn rekey(
    data: &Path,
    journal: bool,
    keys: &Keys,
    mut progress: impl FnMut(&str, u64),
) -> Result<Rekeyed, anyhow::Error> {
    let Some(current) = keys.current_id() else {
        anyhow::bail!(
            "set ENCRYPTION_KEY_FILE to the key to seal the store with (and ENCRYPTION_OLD_KEY_FILES to the keys it is sealed with now)"
        );
    };
    let mut old_options = OutboxOptions::new(data.to_path_buf());
    old_options.dedup_window = None;
    old_options.journal = journal;
    // Read only: a rekey that stops half way must leave the store needing what it needed.
    old_options.keys = keys.for_reading();
    let target = sibling(data, "-rekey");
    remove_if_present(&target)?;
    remove_if_present(&super::journal_path(&target))?;
    let (old, _) = open_with(&old_options, Policy::Strict).map_err(open_error)?;
    let before = {
        let meta = old.begin_read()?.open_table(META)?;
        keys_in_use(&meta)?
    };
    let mut new_options = OutboxOptions::new(target.clone());
    new_options.dedup_window = None;
    new_options.journal = false;
    new_options.keys = keys.clone();
    let (new, _) = open_with(&new_options, Policy::Strict).map_err(open_error)?;
    let mut done = Rekeyed {
        key: crypt::key_id_text(current),
        retired: before
            .iter()
            .filter(|id| **id != current)
            .map(|id| crypt::key_id_text(*id))
            .collect(),
        ..Rekeyed::default()
    };
    copy_meta(&old, &new, current)?;
    copy_raw(&old, &new, CONNECTORS)?;
    copy_raw(&old, &new, super::schema::FILES)?;
    // The object index holds no patient data and keeps its salt (the instance id, copied
    // with `meta`).
    copy_raw(&old, &new, super::objects::OBJECTS)?;
    // Old values are opened with the reading keys (a plain one is no damage there), new
    // ones sealed with `keys` (the new file seals every value).
    let mut copier = Copier {
        old: &old,
        new: &new,
        reading: &old_options.keys,
        keys,
        done: &mut done,
        progress: &mut progress,
    };
    copier.table("messages", MESSAGES, Place::Message)?;
    copier.table("bodies", BODIES, Place::Body)?;
    copier.table("queue", QUEUE, |(connector, seq)| {
        Place::Queue(connector, seq)
    })?;
    copier.table("dlq", DLQ, |(connector, seq)| Place::Dlq(connector, seq))?;
    copier.table("deliveries", DELIVERIES, |(id, connector)| {
        Place::Delivery(id, connector)
    })?;
    copier.table("copies", COPIES, |(id, connector, seq)| {
        Place::Copy(id, connector, seq)
    })?;
    copier.table("audit", AUDIT, Place::Audit)?;
    // Spooled bodies: each file copied into a new one sealed with the current key, which
    // the new store's entry names; the old files go once the new store is in place (a
    // crash before leaves the new files unnamed, and the next start removes them).
    let store = super::open::instance_id(&old)?;
    let old_spool =
        super::spool::Spool::open(super::spool::dir_of(data), keys.for_reading(), store)?;
    let new_spool = super::spool::Spool::open(super::spool::dir_of(data), keys.clone(), store)?;
    let old_files = reseal_spool(&old, &new, &old_spool, &old_options.keys, keys, &mut done)?;
    let old_audit = old.begin_read()?.verify_audit(&old_options.keys)?;
    let new_audit = new.begin_read()?.verify_audit(keys)?;
    if !old_audit.is_intact() {
        anyhow::bail!(
            "the audit trail was not intact before the rekey ({} problems; `mfoundry audit verify --offline` lists them): nothing was changed",
            old_audit.problem_count
        );
    }
    if !new_audit.is_intact() || new_audit.records != old_audit.records {
        anyhow::bail!(
            "the rewritten store's audit trail does not verify as the old one did: nothing was changed"
        );
    }
    // The rekey itself goes in the trail, after the checks.
    append_audit(&new, keys, &done)?;
    let report = {
        let transaction = new.begin_read()?;
        super::verify::read_all(&transaction, keys, Some(&new_spool), &|_, _| false)?
    };
    if report.damaged_count > 0 || report.unsealed > 0 {
        anyhow::bail!(
            "the rewritten store does not read back whole ({} damaged, {} plain): nothing was changed",
            report.damaged_count,
            report.unsealed
        );
    }
    // Switch: both closed; the old store opened once more with its journal off, which
    // replays anything the journal still holds into the data file and removes it (so no
    // commit is lost with the journal), then the new file renamed over the old.
    drop(new);
    drop(old);
    let retire = OutboxOptions {
        journal: false,
        ..old_options.clone()
    };
    drop(open_with(&retire, Policy::Strict).map_err(open_error)?);
    let directory = data.parent().unwrap_or(Path::new("."));
    remove_if_present(&super::journal_path(data))?;
    sync_dir(directory)?;
    std::fs::rename(&target, data).map_err(|error| {
        anyhow::anyhow!(
            "cannot rename {} over {}: {error}",
            target.display(),
            data.display()
        )
    })?;
    sync_dir(directory)?;
    for file in old_files {
        old_spool.remove(file);
    }
    Ok(done)
}

/// Copy every spooled body into a new file sealed with `keys`, and its entry into the new
/// store; returns the old files.
fn reseal_spool(
    old: &Database,
    new: &Database,
    spool: &super::spool::Spool,
    reading: &Keys,
    keys: &Keys,
    done: &mut Rekeyed,
) -> Result<Vec<u128>, anyhow::Error> {
    use super::spool::{SPOOL, SPOOL_FILES, SpoolRef};
    let read = old.begin_read()?;
    let source = read.open_table(SPOOL)?;
    let mut old_files = Vec::new();
    let transaction = new.begin_write()?;
    {
        let mut target = transaction.open_table(SPOOL)?;
        let mut files = transaction.open_table(SPOOL_FILES)?;
        for entry in source.iter()? {
            let (id, value) = entry?;
            let id = id.value();
            let place = Place::Spool(id);
            if !reading.is_sealed(place, value.value()) {
                done.were_plain += 1;
            }
            let reference: SpoolRef = super::schema::decode(reading, place, value.value())
                .map_err(|error| {
                    anyhow::anyhow!(
                        "spool: an entry does not open ({error}); nothing was changed. Run `mfoundry store verify`"
                    )
                })?;
            let resealed = spool.reseal(&reference, keys).map_err(|error| {
                anyhow::anyhow!(
                    "spool: message {id}'s spooled file does not read back ({error}); nothing was changed. Run `mfoundry store verify`"
                )
            })?;
            target.insert(
                id,
                super::schema::encode(keys, place, &resealed)?.as_slice(),
            )?;
            files.insert(resealed.file, id)?;
            old_files.push(reference.file);
        }
    }
    transaction.commit()?;
    done.records.insert("spool", old_files.len() as u64);
    Ok(old_files)
}

fn open_error(error: OpenError) -> anyhow::Error {
    if error.is_in_use() {
        anyhow::anyhow!("the store is in use by a running mfoundry; stop it first")
    } else {
        anyhow::anyhow!("{}", Chain(&error))
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn remove_if_present(path: &Path) -> Result<(), anyhow::Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(anyhow::anyhow!("cannot remove {}: {error}", path.display())),
    }
}

fn sync_dir(path: &Path) -> Result<(), anyhow::Error> {
    std::fs::File::open(path)
        .and_then(|directory| directory.sync_all())
        .map_err(|error| anyhow::anyhow!("cannot sync {}: {error}", path.display()))
}

/// Every `meta` value but the key names; the new file names the current key only.
fn copy_meta(old: &Database, new: &Database, current: u64) -> Result<(), StoreError> {
    let read = old.begin_read()?;
    let source = read.open_table(META)?;
    let transaction = new.begin_write()?;
    {
        let mut meta = transaction.open_table(META)?;
        for entry in source.iter()? {
            let (name, value) = entry?;
            // The patient index (its table and every mark about it) is not copied: the next
            // gateway start builds it anew.
            if !name.value().starts_with("key:") && !name.value().starts_with("patient_index") {
                meta.insert(name.value(), value.value())?;
            }
        }
        // The new file's open registered the current key; nothing else names one.
        meta.insert(format!("key:{}", crypt::key_id_text(current)).as_str(), 1)?;
        // Every value of the new file is sealed (checked before the switch).
        meta.insert("sealed_only", 1)?;
    }
    transaction.commit()?;
    Ok(())
}

/// Copy a table whose values are not sealed (`connectors`, `files`, `objects`) as it is.
fn copy_raw<K, V>(
    old: &Database,
    new: &Database,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    for<'b> K::SelfType<'b>: std::borrow::Borrow<K::SelfType<'b>>,
{
    let read = old.begin_read()?;
    let source = read.open_table(table)?;
    let transaction = new.begin_write()?;
    {
        let mut target = transaction.open_table(table)?;
        for entry in source.iter()? {
            let (name, value) = entry?;
            target.insert(name.value(), value.value())?;
        }
    }
    transaction.commit()?;
    Ok(())
}

struct Copier<'a, P: FnMut(&str, u64)> {
    old: &'a Database,
    new: &'a Database,
    reading: &'a Keys,
    keys: &'a Keys,
    done: &'a mut Rekeyed,
    progress: &'a mut P,
}

impl<P: FnMut(&str, u64)> Copier<'_, P> {
    /// Open and seal again every value of `table`, in chunks.
    fn table<K>(
        &mut self,
        name: &'static str,
        table: TableDefinition<K, &'static [u8]>,
        place: impl Fn(K) -> Place,
    ) -> Result<(), anyhow::Error>
    where
        K: redb::Key + for<'b> redb::Value<SelfType<'b> = K> + Copy + 'static,
    {
        let read = self.old.begin_read()?;
        let source = read.open_table(table)?;
        let total = source.len()?;
        let mut count = 0u64;
        let mut entries = source.iter()?;
        loop {
            let transaction = self.new.begin_write()?;
            let mut more = false;
            {
                let mut target = transaction.open_table(table)?;
                for _ in 0..CHUNK {
                    let Some(entry) = entries.next() else { break };
                    let (key, value) = entry?;
                    let key = key.value();
                    let at = place(key);
                    let stored = value.value();
                    if !self.reading.is_sealed(at, stored) {
                        self.done.were_plain += 1;
                    }
                    let plain = self.reading.open(at, stored).map_err(|error| {
                        anyhow::anyhow!(
                            "{name}: a record does not open ({error}); nothing was changed. Run `mfoundry store verify`"
                        )
                    })?;
                    target.insert(key, self.keys.seal(at, plain.into_owned()).as_slice())?;
                    count += 1;
                    more = true;
                }
            }
            transaction.commit()?;
            (self.progress)(name, count);
            if !more || count >= total {
                break;
            }
        }
        self.done.records.insert(name, count);
        Ok(())
    }
}

/// Verify the audit chain of a database (as `audit verify` does).
trait VerifyAudit {
    fn verify_audit(&self, keys: &Keys) -> Result<audit::Verification, StoreError>;
}

impl VerifyAudit for redb::ReadTransaction {
    fn verify_audit(&self, keys: &Keys) -> Result<audit::Verification, StoreError> {
        let table = self.open_table(AUDIT)?;
        let messages = self.open_table(MESSAGES)?;
        let meta = self.open_table(META)?;
        let first = super::schema::read_meta(&meta, "audit_first_seq")?;
        audit::verify(keys, &table, &messages, first)
    }
}

fn append_audit(new: &Database, keys: &Keys, done: &Rekeyed) -> Result<(), StoreError> {
    let transaction = new.begin_write()?;
    {
        let mut table = transaction.open_table(AUDIT)?;
        let mut head = Head::load(keys, &table)?;
        let event = AuditEvent::Admin {
            token_id: "cli".to_owned(),
            action: "store.rekey".to_owned(),
            target: "store".to_owned(),
            outcome: format!(
                "sealed {} with key {}; retired {}",
                crate::units::count(done.records.values().sum::<u64>(), "record", "records"),
                done.key,
                if done.retired.is_empty() {
                    "none".to_owned()
                } else {
                    done.retired.join(", ")
                }
            ),
        };
        let (seq, value) = audit::chain(keys, &mut head, now_micros(), event)?;
        table.insert(seq, value.as_slice())?;
    }
    transaction.commit()?;
    Ok(())
}
