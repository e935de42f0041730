//! The data file's own header, in front of redb's file (format 2, ADR 0007).
//!
//! Bytes `0..8192` of `mfoundry.redb` are mfoundry's; redb's file starts at 8192, and this
//! backend shows redb only its part (every offset moved by 8192). The header has two copies,
//! one in each of the two 4 KiB blocks, written alternately (the older copy is overwritten),
//! so a torn write leaves the other copy whole. A copy is:
//!
//! `magic "MFDATA02" (8) ‖ generation (8) ‖ store id (16) ‖ journal id (16) ‖ flushed lap (8)
//! ‖ flags (4) ‖ crc32 (4)`, little-endian; the valid copy with the higher generation counts.
//!
//! - **store id**: random, given when the file is created; a journal names the store it
//!   belongs to, so a journal beside another data file is never replayed into it.
//! - **journal id**: the journal this file is bound to while it may need that journal's
//!   records (set before the first journaled commit, cleared by a clean close). A file bound
//!   to a journal that is missing is refused at open.
//! - **flushed lap**: the journal lap up to which this file was synced (written before the
//!   sync that makes that lap durable). A data file restored from an older backup beside a
//!   newer journal has a lower value than the journal expects and is refused.
//! - **flags**: `INITIALIZED` once redb's first state in the file was synced. Until then
//!   nothing can have been committed, so whatever lies in redb's part is an interrupted
//!   creation and is discarded at open. `OPEN` while a process uses the file (set and synced
//!   at open, cleared by a close after which every write was synced): an open that finds it
//!   set drops the files' cached pages first, since the run before may have ended on a failed
//!   sync whose lost writes the cache still shows.

use std::io;
use std::ops::Bound;
use std::sync::Mutex;

use redb::{BackendError, StorageBackend};

/// mfoundry's part of the data file; redb's starts here.
pub const HEADER_AREA: u64 = 8192;
const BLOCK: u64 = 4096;
const MAGIC: [u8; 8] = *b"MFDATA02";
const COPY_LEN: usize = 64;
/// redb's file starts with these bytes (a data file of format 1 is a plain redb file).
const REDB_MAGIC: &[u8; 4] = b"redb";

/// Header flag: redb's first state in the file was synced.
pub const INITIALIZED: u32 = 1;
/// Header flag: a process has the file open (not yet closed cleanly).
pub const OPEN: u32 = 2;

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataHeader {
    /// Counts header writes; the copy with the higher value is the current one.
    pub generation: u64,
    /// The store's identity, random.
    pub store_id: [u8; 16],
    /// The journal this file is bound to; zero when no journal holds anything it needs.
    pub journal_id: [u8; 16],
    /// The journal lap up to which this file was synced.
    pub flushed_lap: u64,
    /// [`INITIALIZED`].
    pub flags: u32,
}

impl DataHeader {
    /// Whether redb's first state was synced.
    pub fn initialized(&self) -> bool {
        self.flags & INITIALIZED != 0
    }

    /// Whether the last process to use the file did not close it cleanly.
    pub fn left_open(&self) -> bool {
        self.flags & OPEN != 0
    }

    /// Whether a journal may hold commits this file needs.
    pub fn bound(&self) -> bool {
        self.journal_id != [0; 16]
    }

    fn encode(&self) -> [u8; COPY_LEN] {
        let mut out = [0u8; COPY_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..32].copy_from_slice(&self.store_id);
        out[32..48].copy_from_slice(&self.journal_id);
        out[48..56].copy_from_slice(&self.flushed_lap.to_le_bytes());
        out[56..60].copy_from_slice(&self.flags.to_le_bytes());
        let crc = crc32fast::hash(&out[..60]);
        out[60..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; COPY_LEN]) -> Option<Self> {
        let crc = u32::from_le_bytes(bytes[60..].try_into().ok()?);
        if bytes[..8] != MAGIC || crc32fast::hash(&bytes[..60]) != crc {
            return None;
        }
        let header = Self {
            generation: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            store_id: bytes[16..32].try_into().ok()?,
            journal_id: bytes[32..48].try_into().ok()?,
            flushed_lap: u64::from_le_bytes(bytes[48..56].try_into().ok()?),
            flags: u32::from_le_bytes(bytes[56..60].try_into().ok()?),
        };
        // Values no writer produces: the arithmetic on them must never overflow.
        (header.generation < u64::MAX / 2 && header.flushed_lap < 1 << 60).then_some(header)
    }
}

/// What a data file holds, read before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// No valid header, and no longer than the header area: a new store (or one whose
    /// creation was cut short before anything could be committed).
    New,
    /// mfoundry's header (format 2).
    Current(DataHeader),
    /// A plain redb file (format 1, before the header).
    Legacy,
    /// Bytes in redb's part but no valid header copy: damaged.
    Damaged,
}

/// Read the layout of a data file.
pub fn read_layout(file: &dyn StorageBackend) -> io::Result<Layout> {
    let len = file.len()?;
    if len == 0 {
        return Ok(Layout::New);
    }
    if len >= REDB_MAGIC.len() as u64 {
        let mut magic = [0u8; 4];
        file.read(0, &mut magic)?;
        if &magic == REDB_MAGIC {
            return Ok(Layout::Legacy);
        }
    }
    let mut best: Option<DataHeader> = None;
    for block in 0..2 {
        let offset = block * BLOCK;
        if offset + COPY_LEN as u64 > len {
            continue;
        }
        let mut copy = [0u8; COPY_LEN];
        file.read(offset, &mut copy)?;
        if let Some(header) = DataHeader::decode(&copy)
            && best.is_none_or(|best| header.generation > best.generation)
        {
            best = Some(header);
        }
    }
    match best {
        Some(header) => Ok(Layout::Current(header)),
        // A creation cut short before its header was synced never grew past the header area
        // (redb's part is written only after that sync). A longer file without a valid
        // header holds something: it is never taken for a new one and emptied.
        None if len <= HEADER_AREA => Ok(Layout::New),
        None => Ok(Layout::Damaged),
    }
}

/// Whether redb's part starts with redb's magic number.
fn has_redb_magic(file: &dyn StorageBackend) -> io::Result<bool> {
    if file.len()? < HEADER_AREA + REDB_MAGIC.len() as u64 {
        return Ok(false);
    }
    let mut magic = [0u8; 4];
    file.read(HEADER_AREA, &mut magic)?;
    Ok(&magic == REDB_MAGIC)
}

/// Write the next generation of `header` into the block holding the older copy (no sync).
pub fn write_header(file: &dyn StorageBackend, header: &mut DataHeader) -> io::Result<()> {
    header.generation += 1;
    let offset = (header.generation % 2) * BLOCK;
    file.write(offset, &header.encode())
}

/// A random identity (stores, journals, salts).
pub fn random_id() -> io::Result<[u8; 16]> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|error| io::Error::other(error.to_string()))?;
    if id == [0; 16] {
        id[0] = 1;
    }
    Ok(id)
}

/// Open a stopped store's data file with redb itself, behind its header (tests and tools that
/// look at tables directly). No journal is replayed: use it on a cleanly closed store.
pub fn open_raw(path: &std::path::Path) -> io::Result<redb::Database> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let inner: Box<dyn StorageBackend> =
        Box::new(redb::backends::FileBackend::new(file).map_err(io::Error::other)?);
    let data = match read_layout(inner.as_ref())? {
        Layout::Current(header) => DataFile::open(inner, header)?,
        other => {
            return Err(io::Error::other(format!(
                "not a data file of this format: {other:?}"
            )));
        }
    };
    redb::Database::builder()
        .create_with_backend(data)
        .map_err(io::Error::other)
}

/// Marks the file failed if a panic unwinds through the operation it guards (a sync that
/// panicked is as untrusted as one that failed).
struct FailOnUnwind<'a>(&'a DataFile);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.mark_failed();
        }
    }
}

/// The data file as redb sees it: everything after the header (see the module docs).
#[derive(Debug)]
pub struct DataFile {
    inner: Box<dyn StorageBackend>,
    header: Mutex<DataHeader>,
    /// Set by a failed write, length change or sync (here, or reported by the journal above):
    /// a close then leaves `OPEN` set, so the next open does not trust the cache.
    failed: std::sync::atomic::AtomicBool,
}

impl DataFile {
    /// A data file whose layout is [`Layout::New`]: its header is written (a new store id,
    /// not initialized, not bound) and redb's part emptied; the caller syncs.
    pub fn create(inner: Box<dyn StorageBackend>) -> io::Result<Self> {
        let mut header = DataHeader {
            generation: 0,
            store_id: random_id()?,
            journal_id: [0; 16],
            flushed_lap: 0,
            flags: 0,
        };
        inner.set_len(0)?;
        inner.set_len(HEADER_AREA)?;
        write_header(inner.as_ref(), &mut header)?;
        Ok(Self {
            inner,
            header: Mutex::new(header),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A data file of [`Layout::Current`] with this header. One whose redb part was never
    /// completed (not [`INITIALIZED`], and no redb magic: redb writes it last, after its
    /// first state was synced) has that part emptied: its creation was cut short, and nothing
    /// in it was ever committed. (The flag alone is not enough: a sync that failed after it
    /// was written can leave it written only in the page cache while later commits reach the
    /// disk; the magic then says the file is redb's.)
    pub fn open(inner: Box<dyn StorageBackend>, header: DataHeader) -> io::Result<Self> {
        if !header.initialized() && !has_redb_magic(inner.as_ref())? && inner.len()? > HEADER_AREA {
            inner.set_len(HEADER_AREA)?;
        }
        Ok(Self {
            inner,
            header: Mutex::new(header),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A data file whose header is damaged ([`Layout::Damaged`]), taken as it is: a new
    /// header (a new store id, not bound to any journal, marked initialized since redb's part
    /// holds data) is written over both copies and synced. Only when accepting loss.
    pub fn adopt(inner: Box<dyn StorageBackend>) -> io::Result<Self> {
        let mut header = DataHeader {
            generation: 0,
            store_id: random_id()?,
            journal_id: [0; 16],
            flushed_lap: 0,
            flags: INITIALIZED,
        };
        write_header(inner.as_ref(), &mut header)?;
        write_header(inner.as_ref(), &mut header)?;
        inner.sync_data()?;
        Ok(Self {
            inner,
            header: Mutex::new(header),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Mark the file in use (synced before anything else is written through it).
    pub fn mark_open(&self) -> io::Result<()> {
        self.update_header(|header| header.flags |= OPEN)?;
        self.inner.sync_data().inspect_err(|_| self.mark_failed())
    }

    /// Remember that a write or sync through this file (or the journal over it) failed.
    pub fn mark_failed(&self) {
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a write or sync failed.
    pub fn has_failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The header as last written.
    pub fn header(&self) -> DataHeader {
        self.header.lock().map(|header| *header).unwrap_or_default()
    }

    /// Change the header and write it (not synced: the next sync of this file makes it
    /// durable with everything written before).
    pub fn update_header(&self, change: impl FnOnce(&mut DataHeader)) -> io::Result<()> {
        let mut header = self
            .header
            .lock()
            .map_err(|_| io::Error::other("the data header's lock is poisoned"))?;
        let mut next = *header;
        change(&mut next);
        write_header(self.inner.as_ref(), &mut next).inspect_err(|_| self.mark_failed())?;
        *header = next;
        Ok(())
    }

    /// The file itself (header included), for the journal's replay checks.
    pub fn inner(&self) -> &dyn StorageBackend {
        self.inner.as_ref()
    }

    /// Whether redb's part is empty (a new store before its first commit).
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.inner.len()? <= HEADER_AREA)
    }

    /// Whether redb's first state is in the file: marked [`INITIALIZED`], or redb's magic is
    /// there (see [`DataFile::open`]).
    pub fn started(&self) -> bool {
        self.header().initialized() || has_redb_magic(self.inner.as_ref()).unwrap_or(false)
    }

    /// Sync, and once redb's first state is durable, mark the header so a later open never
    /// mistakes the file for an interrupted creation. redb writes its magic number last when
    /// it creates a file: the file is marked after a sync that made the magic durable.
    pub fn sync_and_mark(&self) -> io::Result<()> {
        let _unwinding = FailOnUnwind(self);
        self.inner.sync_data().inspect_err(|_| self.mark_failed())?;
        if !self.header().initialized() && has_redb_magic(self.inner.as_ref())? {
            self.update_header(|header| header.flags |= INITIALIZED)?;
            self.inner.sync_data().inspect_err(|_| self.mark_failed())?;
        }
        Ok(())
    }
}

impl StorageBackend for DataFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.len()?.saturating_sub(HEADER_AREA))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset + HEADER_AREA, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner
            .set_len(len + HEADER_AREA)
            .inspect_err(|_| self.mark_failed())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync_and_mark()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let _unwinding = FailOnUnwind(self);
        self.inner
            .write(offset + HEADER_AREA, data)
            .inspect_err(|_| self.mark_failed())
    }

    fn close(&self) -> io::Result<()> {
        // Cleared only when nothing failed: every write before was synced (redb syncs each
        // commit; the journal syncs the data file in its close), so the next open may trust
        // the cache.
        let cleared = if self.header().left_open() && !self.has_failed() {
            self.update_header(|header| header.flags &= !OPEN)
                .and_then(|()| self.inner.sync_data())
        } else {
            Ok(())
        };
        cleared.and(self.inner.close())
    }

    // Lock ranges are redb's lock bytes, not file data: passed on unchanged.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;

    #[test]
    fn the_newer_valid_copy_counts_and_a_torn_copy_leaves_the_other() {
        let file = InMemoryBackend::new();
        file.set_len(HEADER_AREA).expect("length");
        let data = DataFile::create(Box::new(InMemoryBackend::new())).expect("creates");
        let mut header = data.header();
        header.generation = 0;
        write_header(&file, &mut header).expect("first");
        header.flushed_lap = 7;
        write_header(&file, &mut header).expect("second");
        let Layout::Current(found) = read_layout(&file).expect("reads") else {
            panic!("a header")
        };
        assert_eq!((found.generation, found.flushed_lap), (2, 7));
        // Tear the newer copy (block 0 holds generation 2): the older one counts.
        file.write(10, &[0xFF; 4]).expect("tears");
        let Layout::Current(found) = read_layout(&file).expect("reads") else {
            panic!("a header")
        };
        assert_eq!((found.generation, found.flushed_lap), (1, 0));
    }

    #[test]
    fn layouts_are_told_apart() {
        let empty = InMemoryBackend::new();
        assert_eq!(read_layout(&empty).expect("reads"), Layout::New);
        let legacy = InMemoryBackend::new();
        legacy.set_len(4096).expect("length");
        legacy
            .write(0, b"redb\x1a\x0a\xa9\x0d\x0a")
            .expect("writes");
        assert_eq!(read_layout(&legacy).expect("reads"), Layout::Legacy);
        let damaged = InMemoryBackend::new();
        damaged.set_len(HEADER_AREA + 4096).expect("length");
        damaged.write(HEADER_AREA + 5, b"data").expect("writes");
        assert_eq!(read_layout(&damaged).expect("reads"), Layout::Damaged);
        let interrupted = InMemoryBackend::new();
        interrupted.set_len(HEADER_AREA).expect("len");
        assert_eq!(read_layout(&interrupted).expect("reads"), Layout::New);
        // Zeros where both header copies belong, in a file longer than the header area: not
        // a creation cut short, even when redb's first pages are zero too.
        let zeroed = InMemoryBackend::new();
        zeroed.set_len(HEADER_AREA + (128 << 10)).expect("length");
        zeroed
            .write(HEADER_AREA + (100 << 10), b"data")
            .expect("writes");
        assert_eq!(read_layout(&zeroed).expect("reads"), Layout::Damaged);
    }

    #[test]
    fn redb_sees_only_its_part_and_a_creation_cut_short_is_emptied() {
        let data = DataFile::create(Box::new(InMemoryBackend::new())).expect("creates");
        assert_eq!(data.len().expect("len"), 0);
        data.set_len(4096).expect("length");
        data.write(4, b"page").expect("writes");
        let mut out = [0u8; 4];
        data.inner().read(HEADER_AREA + 4, &mut out).expect("reads");
        assert_eq!(&out, b"page");
        data.sync_data().expect("syncs");
        assert!(
            !data.header().initialized(),
            "not marked before redb's magic is synced"
        );
        data.write(0, REDB_MAGIC).expect("writes");
        data.sync_data().expect("syncs");
        assert!(
            data.header().initialized(),
            "marked once redb's magic is synced"
        );

        // A file whose header was never marked: what lies in redb's part is discarded.
        let interrupted = InMemoryBackend::new();
        interrupted.set_len(HEADER_AREA + 4096).expect("length");
        let mut header = DataHeader::default();
        write_header(&interrupted, &mut header).expect("header");
        interrupted
            .write(HEADER_AREA, b"half a creation")
            .expect("writes");
        let Layout::Current(found) = read_layout(&interrupted).expect("reads") else {
            panic!("a header")
        };
        let reopened = DataFile::open(Box::new(interrupted), found).expect("opens");
        assert_eq!(reopened.len().expect("len"), 0);
    }
}
