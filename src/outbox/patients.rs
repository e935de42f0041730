//! The patient index (ADR 0019): find a patient's messages by identifier (PID-3) or family
//! name (PID-5.1) without a scan and without the store holding patient values in the clear
//! outside the bodies.
//!
//! Ingest hands the outbox each message's patient values (plain, in memory only);
//! [`super::Outbox::append`] turns each into a *tag*, `HMAC-SHA256(index key, field ‖
//! normalized value)` cut to 8 bytes (never 0), in the caller's task, and the writer stores
//! the message's list of tags, `(0, message id) → tag ‖ tag …`, in [`PATIENTS`] in the
//! message's own commit. [`merge`] later enters `(tag, message id) → ""` for many messages
//! at once, sorted (random tags inserted one commit at a time would each write a page of
//! their own); `meta["patient_index_merged"]` says up to which id. A search computes the tag
//! of what it is given, reads the lists of the messages after the mark, then the ids under
//! the tag up to it, newest first: every stored message is found either way. Retention
//! removes a message's list and entries with it.
//!
//! The index key: derived from the current store key when the store is encrypted (a copy of
//! `DATA_DIR` alone then cannot test guesses), else 32 random bytes kept in the store itself
//! ([`INDEX_KEYS`]; anyone with the data directory can then test guesses against the index,
//! as they could read the bodies anyway). `meta["patient_index"]` names the build (the key
//! and how bodies are read: [`PatientReader::version`]); when it is not the build in use (the
//! store predates the index, was rekeyed, got its first encryption key, or the default
//! character set changed), the gateway's open rebuilds the index from the bodies before it
//! serves, in steps it resumes after a restart.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use ring::hmac;
use tracing::info;

use super::StoreError;
use super::crypt::Keys;
use super::schema::{self, INDEX_KEYS, MESSAGES, META, PATIENTS};

/// The `meta` entry naming the build the index holds (0: not built).
const META_BUILT: &str = "patient_index";
/// The build a rebuild in progress makes (absent when none).
const META_BUILDING: &str = "patient_index_building";
/// How far the rebuild in progress got: messages up to this id are in (0: none yet).
const META_BUILT_UP_TO: &str = "patient_index_up_to";
/// Messages up to this id have their `(tag, id)` entries; later ones only their list of
/// tags, `(0, id)`, until a merge enters them (absent: 0).
pub(super) const META_MERGED_UP_TO: &str = "patient_index_merged";
/// Bytes of a tag (a `u64`; 0 is the key of a message's list of tags).
pub const TAG_LEN: usize = 8;
/// A tag.
pub type Tag = u64;
/// Messages read per transaction while rebuilding.
const REBUILD_CHUNK: usize = 5_000;

/// What an index value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexField {
    /// An identifier of PID-3 (its first component, CX.1).
    Identifier,
    /// A family name: PID-5.1 (the surname of XPN.1).
    FamilyName,
}

impl IndexField {
    fn byte(self) -> u8 {
        match self {
            Self::Identifier => b'I',
            Self::FamilyName => b'F',
        }
    }
}

/// Reads a stored body's patient values (ingest parses HL7; the outbox does not).
pub type PatientReaderFn = Arc<dyn Fn(&[u8]) -> Vec<(IndexField, String)> + Send + Sync>;

/// What the outbox rebuilds the index with: the reader, and a text naming how it reads
/// (e.g. the default character set) so a change of it rebuilds the index.
#[derive(Clone)]
pub struct PatientReader {
    /// The reader.
    pub read: PatientReaderFn,
    /// How it reads, e.g. `charset=UTF-8`.
    pub version: String,
}

impl std::fmt::Debug for PatientReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "PatientReader({})", self.version)
    }
}

/// The value as it is compared: surrounding space removed, inner runs of space one space,
/// upper case (so `o'brien ` finds `O'BRIEN`).
pub fn normalize(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
}

/// The key tags are made with.
pub struct IndexKey {
    key: hmac::Key,
    id: u64,
}

impl std::fmt::Debug for IndexKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "IndexKey({:016x})", self.id)
    }
}

impl IndexKey {
    fn from_secret(secret: &[u8]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let id = hmac::sign(&key, b"mfoundry patient index key id");
        let mut first = [0u8; 8];
        first.copy_from_slice(&id.as_ref()[..8]);
        // Never 0: that means "not built".
        Self {
            key,
            id: u64::from_le_bytes(first).max(1),
        }
    }

    /// The id of an index built with this key and a reader of `version` (never 0).
    fn build_id(&self, version: &str) -> u64 {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(b"mfoundry patient index build ");
        context.update(version.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&context.sign().as_ref()[..8]);
        u64::from_le_bytes(first).max(1)
    }

    /// The tag of `value` in `field`, or None when nothing is left of it once normalized.
    pub fn tag(&self, field: IndexField, value: &str) -> Option<Tag> {
        let value = normalize(value);
        if value.is_empty() {
            return None;
        }
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&[field.byte()]);
        context.update(value.as_bytes());
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&context.sign().as_ref()[..TAG_LEN]);
        Some(u64::from_le_bytes(tag).max(1))
    }

    /// The tags of a message's patient values, each once.
    pub fn tags(&self, values: &[(IndexField, String)]) -> Vec<Tag> {
        let mut tags: Vec<Tag> = values
            .iter()
            .filter_map(|(field, value)| self.tag(*field, value))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }
}

/// The patient index open for writing.
pub(super) type PatientsTable<'txn> = redb::Table<'txn, (u64, u64), &'static [u8]>;

/// Enter `id`'s list of tags, `(0, id)` (none: nothing is written). The commit that stores
/// a message writes only this: its ids follow each other, so they fill the same page. The
/// `(tag, id)` entries follow in [`merge`], sorted, many messages at a time.
pub(super) fn insert_list(
    table: &mut PatientsTable<'_>,
    id: u64,
    tags: &[Tag],
) -> Result<(), StoreError> {
    if tags.is_empty() {
        return Ok(());
    }
    let mut list = Vec::with_capacity(tags.len() * TAG_LEN);
    for tag in tags {
        list.extend_from_slice(&tag.to_le_bytes());
    }
    table.insert((0, id), list.as_slice())?;
    Ok(())
}

/// Enter `id`'s list and its `(tag, id)` entries at once (the rebuild).
fn insert(table: &mut PatientsTable<'_>, id: u64, tags: &[Tag]) -> Result<(), StoreError> {
    for tag in tags {
        table.insert((*tag, id), [].as_slice())?;
    }
    insert_list(table, id, tags)
}

/// The tags of a list value.
pub(super) fn list_tags(list: &[u8]) -> impl Iterator<Item = Tag> + '_ {
    list.chunks_exact(TAG_LEN).map(|tag| {
        let mut bytes = [0u8; TAG_LEN];
        bytes.copy_from_slice(tag);
        u64::from_le_bytes(bytes)
    })
}

/// Enter the `(tag, id)` entries of up to `max` messages stored after the last merge,
/// sorted (each page of the tag-ordered entries is written once per merge, not once per
/// commit), and move the mark past them. Answers how many, and whether more wait.
pub(super) fn merge(
    transaction: &redb::WriteTransaction,
    table: &mut PatientsTable<'_>,
    max: usize,
) -> Result<(usize, bool), StoreError> {
    let mut meta = transaction.open_table(META)?;
    let merged = schema::read_meta(&meta, META_MERGED_UP_TO)?;
    let mut entries: Vec<(Tag, u64)> = Vec::new();
    let mut last = None;
    let mut count = 0;
    let mut more = false;
    for entry in table.range((0, merged.saturating_add(1))..=(0, u64::MAX))? {
        if count >= max {
            more = true;
            break;
        }
        let (key, value) = entry?;
        let id = key.value().1;
        entries.extend(list_tags(value.value()).map(|tag| (tag, id)));
        last = Some(id);
        count += 1;
    }
    entries.sort_unstable();
    for (tag, id) in entries {
        table.insert((tag, id), [].as_slice())?;
    }
    if let Some(last) = last {
        meta.insert(META_MERGED_UP_TO, last)?;
    }
    Ok((count, more))
}

/// Remove `id`'s tags.
pub(super) fn remove(table: &mut PatientsTable<'_>, id: u64) -> Result<(), StoreError> {
    let Some(list) = table.remove((0, id))?.map(|stored| stored.value().to_vec()) else {
        return Ok(());
    };
    // Entries of a message not merged yet are simply absent.
    for tag in list_tags(&list) {
        table.remove((tag, id))?;
    }
    Ok(())
}

/// The index key of this store (created for a plain store that has none).
fn resolve(database: &Database, keys: &Keys) -> Result<Arc<IndexKey>, StoreError> {
    let transaction = database.begin_write()?;
    let key;
    {
        let mut secrets = transaction.open_table(INDEX_KEYS)?;
        key = match keys.index_secret() {
            Some(secret) => {
                // A key kept beside the data is of no use any more: the index is rebuilt
                // with the derived one.
                secrets.remove("patient_index")?;
                IndexKey::from_secret(&secret)
            }
            None => {
                let stored = secrets
                    .get("patient_index")?
                    .map(|secret| secret.value().to_vec());
                match stored {
                    Some(secret) => IndexKey::from_secret(&secret),
                    None => {
                        let mut secret = [0u8; 32];
                        ring::rand::SecureRandom::fill(
                            &ring::rand::SystemRandom::new(),
                            &mut secret,
                        )
                        .map_err(|_| {
                            StoreError::Encoding("no randomness for the patient index key".into())
                        })?;
                        secrets.insert("patient_index", secret.as_slice())?;
                        IndexKey::from_secret(&secret)
                    }
                }
            }
        };
        transaction.open_table(PATIENTS)?;
    }
    transaction.commit()?;
    Ok(Arc::new(key))
}

/// The index key, with the index rebuilt from the bodies first when it does not hold the
/// build `reader` makes (the gateway's open). Offline tools pass None: they store no
/// message, and the next gateway start rebuilds. With the index off (`on` false) it is
/// marked as not built, so the first open with it on builds it.
pub(super) fn prepare(
    database: &Database,
    keys: &Keys,
    reader: Option<&PatientReader>,
    on: bool,
    spool: Option<&super::spool::Spool>,
) -> Result<Arc<IndexKey>, StoreError> {
    let key = resolve(database, keys)?;
    if !on {
        // Messages stored from now on get no entries: the index is not whole any more.
        let transaction = database.begin_write()?;
        {
            let mut meta = transaction.open_table(META)?;
            meta.insert(META_BUILT, 0)?;
            meta.remove(META_BUILDING)?;
            meta.remove(META_BUILT_UP_TO)?;
        }
        transaction.commit()?;
        return Ok(key);
    }
    if let Some(reader) = reader {
        let build = key.build_id(&reader.version);
        let meta = database.begin_read()?.open_table(META)?;
        if schema::read_meta(&meta, META_BUILT)? != build {
            let resume = (schema::read_meta(&meta, META_BUILDING)? == build)
                .then(|| schema::read_meta(&meta, META_BUILT_UP_TO))
                .transpose()?;
            drop(meta);
            rebuild(database, keys, &key, reader, build, resume, spool)?;
        }
    }
    Ok(key)
}

/// Enter every stored message again, in bounded transactions, each recording how far it
/// got: from scratch (the index emptied first), or after the messages up to `resume` of an
/// earlier run of the same build. The index counts as built (`meta`) only at the end.
fn rebuild(
    database: &Database,
    keys: &Keys,
    key: &IndexKey,
    reader: &PatientReader,
    build: u64,
    resume: Option<u64>,
    spool: Option<&super::spool::Spool>,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let total = database.begin_read()?.open_table(MESSAGES)?.len()?;
    if resume.is_none() {
        let transaction = database.begin_write()?;
        {
            let mut meta = transaction.open_table(META)?;
            meta.insert(META_BUILT, 0)?;
            meta.insert(META_BUILDING, build)?;
            meta.insert(META_BUILT_UP_TO, 0)?;
            meta.insert(META_MERGED_UP_TO, 0)?;
            transaction.delete_table(PATIENTS)?;
            transaction.open_table(PATIENTS)?;
        }
        transaction.commit()?;
    }
    let mut after = resume.filter(|up_to| *up_to > 0);
    if total > 0 {
        info!(
            messages = total,
            resumed = after.is_some(),
            "building the patient index from the stored messages (after an upgrade, a new store key or a new default character set)"
        );
    }
    let mut done = 0u64;
    let mut skipped = 0u64;
    loop {
        let transaction = database.begin_write()?;
        let mut last = None;
        {
            let messages = transaction.open_table(MESSAGES)?;
            let mut patients = transaction.open_table(PATIENTS)?;
            let start = after.map_or(0, |after| after.saturating_add(1));
            let mut read = 0;
            for entry in messages.range(start..)? {
                if read >= REBUILD_CHUNK {
                    break;
                }
                read += 1;
                let (id, value) = entry?;
                let id = id.value();
                last = Some(id);
                // A record or body that cannot be read (damaged, or of a revision this
                // build does not know) gets no tags; it is kept, `store verify` names it.
                let Ok(body) = stored_body(&transaction, keys, id, value.value(), spool) else {
                    skipped += 1;
                    continue;
                };
                // Entries of a message done before a restart are written again, the same.
                remove(&mut patients, id)?;
                insert(&mut patients, id, &key.tags(&(reader.read)(&body)))?;
            }
            done += read as u64;
            let mut meta = transaction.open_table(META)?;
            match last {
                Some(last) => {
                    meta.insert(META_BUILT_UP_TO, last)?;
                    // Everything up to here has its `(tag, id)` entries.
                    meta.insert(META_MERGED_UP_TO, last)?;
                }
                None => {
                    meta.insert(META_BUILT, build)?;
                    meta.remove(META_BUILDING)?;
                    meta.remove(META_BUILT_UP_TO)?;
                }
            }
        }
        transaction.commit()?;
        let Some(last) = last else { break };
        after = Some(last);
        if total > 0 {
            info!(done, of = total, "building the patient index");
        }
    }
    if total > 0 {
        info!(
            messages = done,
            unreadable = skipped,
            millis = started.elapsed().as_millis() as u64,
            "the patient index is built"
        );
    }
    Ok(())
}

/// The body of the message whose `messages` value is `value`.
fn stored_body(
    transaction: &redb::WriteTransaction,
    keys: &Keys,
    id: u64,
    value: &[u8],
    spool: Option<&super::spool::Spool>,
) -> Result<Vec<u8>, StoreError> {
    let decoded = schema::decode_message_checked(keys, id, value)?;
    if let Some(inline) = &decoded.inline {
        return Ok(inline.to_vec());
    }
    let bodies = transaction.open_table(schema::BODIES)?;
    if let Some(stored) = bodies.get(id)? {
        return Ok(schema::decode_body(keys, id, &decoded, stored.value())?.into_owned());
    }
    // A spooled object: its head holds the patient module.
    let missing = || StoreError::Damaged(format!("message {id}: its body is missing"));
    let entries = transaction.open_table(super::spool::SPOOL)?;
    let entry = entries.get(id)?.ok_or_else(missing)?;
    let reference: super::spool::SpoolRef =
        schema::decode(keys, crate::outbox::crypt::Place::Spool(id), entry.value())?;
    spool
        .ok_or_else(missing)?
        .read_head(&reference, super::spool::VIEW_HEAD)
}
