//! A recording file layer: the outbox's [`Storage`] kept in memory, with every write, length
//! change, sync and directory change recorded in one ordered log, so any prefix of the log
//! can be turned into what a power cut at that point could leave on a disk.
//!
//! The model of a disk (Linux, ext4/xfs with `fdatasync`):
//! - a write lands in the page cache; a sync of the file makes every earlier write to it
//!   durable (and its length); until then, each 4 KiB block may hold any version written
//!   since the last sync, and each 512-byte sector of it may be torn between versions;
//! - a file's length after a crash is any length it had since its last sync;
//! - a created, removed or renamed name is durable once its directory is synced;
//! - a failed sync loses the writes it was to make durable: they stay in the cache (reads
//!   see them) but no later sync makes them durable (they stay "any version" for good).
//!
//! Faults: the `n`-th operation (a write, length change or sync) fails with the chosen error.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use mfoundry::outbox::{Storage, StoreFile};
use redb::{BackendError, StorageBackend};

pub const BLOCK: usize = 4096;
pub const SECTOR: usize = 512;

/// One recorded operation.
#[derive(Debug, Clone)]
pub enum Event {
    Write {
        inode: usize,
        offset: u64,
        data: Arc<[u8]>,
    },
    SetLen {
        inode: usize,
        len: u64,
    },
    /// A sync of the file; `ok: false` when it failed.
    Sync {
        inode: usize,
        ok: bool,
    },
    /// A name now points at a new, empty file.
    Create {
        name: StoreFile,
        inode: usize,
    },
    Remove {
        name: StoreFile,
    },
    Rename {
        from: StoreFile,
        to: StoreFile,
    },
    DirSync,
    /// The file's cached pages were dropped: from here on the file is what the disk held
    /// (writes a failed sync lost either reached the disk or did not, each as it happened).
    Reread {
        inode: usize,
        durable: Arc<[u8]>,
    },
}

impl Event {
    pub fn is_sync(&self) -> bool {
        matches!(
            self,
            Self::Sync { .. } | Self::DirSync | Self::Reread { .. }
        )
    }
}

/// Which error a fault injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Eio,
    Enospc,
}

impl FaultKind {
    fn error(self) -> io::Error {
        match self {
            Self::Eio => io::Error::other("injected EIO"),
            Self::Enospc => io::Error::new(io::ErrorKind::StorageFull, "injected ENOSPC"),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    events: Vec<Event>,
    /// Whether each event came from the outbox's writer thread.
    by_writer: Vec<bool>,
    /// Current bytes of each file (the page cache), by inode.
    files: Vec<Vec<u8>>,
    /// Which inode each name points at now.
    names: HashMap<StoreFile, usize>,
    /// Fail the data operation with this index (counted over data operations only).
    fault: Option<(u64, FaultKind)>,
    data_operations: u64,
    /// Which inode a data operation index touched (for choosing faults per file).
    operation_inodes: Vec<usize>,
    /// The data operation indices that were syncs.
    sync_operations: Vec<u64>,
    /// Where each fault actually hit: the event index of the failed operation.
    fault_hit: Option<usize>,
    /// Handles whose sync failed: syncing them again would be trusting a retried fsync.
    poisoned: HashMap<u64, usize>,
    /// A retried fsync, if one was seen: (handle, the event index of the retry).
    retried_sync: Option<(u64, usize)>,
    next_handle: u64,
    /// What each file held before the log started (for [`Disk::with_files`]).
    initial: BTreeMap<StoreFile, Vec<u8>>,
    /// Decides, when a cache is dropped, which lost writes had reached the disk.
    random: Option<Random>,
    /// Files with writes a failed sync lost (until their cache is dropped).
    lost_inodes: Vec<usize>,
}

/// The recording disk (cheap to clone: one shared log).
#[derive(Debug, Clone, Default)]
pub struct Disk {
    state: Arc<Mutex<State>>,
}

impl State {
    fn push(&mut self, event: Event) {
        self.events.push(event);
        self.by_writer
            .push(std::thread::current().name() == Some("outbox-writer"));
    }
}

impl Disk {
    /// One past the last sync the writer thread made among the first `before` events: the
    /// point after which a commit it then answered is durable.
    pub fn after_last_writer_sync(&self, before: usize) -> Option<usize> {
        let state = self.state.lock().expect("disk");
        (0..before.min(state.events.len()))
            .rev()
            .find(|&index| {
                state.by_writer[index]
                    && matches!(state.events[index], Event::Sync { ok: true, .. })
            })
            .map(|index| index + 1)
    }

    /// A disk holding `files` (name → bytes), all durable.
    pub fn with_files(files: &BTreeMap<StoreFile, Vec<u8>>) -> Self {
        let disk = Self::default();
        {
            let mut state = disk.state.lock().expect("disk");
            state.initial = files.clone();
            for (name, bytes) in files {
                let inode = state.files.len();
                state.files.push(bytes.clone());
                state.names.insert(*name, inode);
            }
        }
        disk
    }

    pub fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    /// Fail the `index`-th data operation (0-based) with `kind`.
    pub fn fail_at(&self, index: u64, kind: FaultKind) {
        self.state.lock().expect("disk").fault = Some((index, kind));
    }

    pub fn events(&self) -> Vec<Event> {
        self.state.lock().expect("disk").events.clone()
    }

    pub fn event_count(&self) -> usize {
        self.state.lock().expect("disk").events.len()
    }

    /// Which inode each data operation touched, in order.
    pub fn operation_inodes(&self) -> Vec<usize> {
        self.state.lock().expect("disk").operation_inodes.clone()
    }

    /// The indices (among data operations) of the syncs.
    pub fn sync_operations(&self) -> Vec<u64> {
        self.state.lock().expect("disk").sync_operations.clone()
    }

    pub fn fault_hit(&self) -> Option<usize> {
        self.state.lock().expect("disk").fault_hit
    }

    pub fn retried_sync(&self) -> Option<(u64, usize)> {
        self.state.lock().expect("disk").retried_sync
    }

    /// A data operation is about to run on `inode` via `handle`: count it, maybe fail it.
    fn operate(&self, handle: u64, inode: usize) -> io::Result<()> {
        let mut state = self.state.lock().expect("disk");
        let index = state.data_operations;
        state.data_operations += 1;
        state.operation_inodes.push(inode);
        if let Some((at, kind)) = state.fault
            && at == index
        {
            state.fault_hit = Some(state.events.len());
            let _ = handle;
            return Err(kind.error());
        }
        Ok(())
    }
}

impl Storage for Disk {
    fn name(&self, file: StoreFile) -> String {
        format!("disk:{file:?}")
    }

    fn exists(&self, file: StoreFile) -> io::Result<bool> {
        Ok(self.state.lock().expect("disk").names.contains_key(&file))
    }

    fn open(&self, file: StoreFile) -> io::Result<Box<dyn StorageBackend>> {
        let mut state = self.state.lock().expect("disk");
        let inode = match state.names.get(&file) {
            Some(inode) => *inode,
            None => {
                let inode = state.files.len();
                state.files.push(Vec::new());
                state.names.insert(file, inode);
                state.push(Event::Create { name: file, inode });
                inode
            }
        };
        state.next_handle += 1;
        let handle = state.next_handle;
        Ok(Box::new(RecordedFile {
            disk: self.clone(),
            inode,
            handle,
        }))
    }

    fn remove(&self, file: StoreFile) -> io::Result<()> {
        let mut state = self.state.lock().expect("disk");
        if state.names.remove(&file).is_none() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        }
        state.push(Event::Remove { name: file });
        Ok(())
    }

    fn rename(&self, from: StoreFile, to: StoreFile) -> io::Result<()> {
        let mut state = self.state.lock().expect("disk");
        let inode = state
            .names
            .remove(&from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        state.names.insert(to, inode);
        state.push(Event::Rename { from, to });
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.state.lock().expect("disk").push(Event::DirSync);
        Ok(())
    }

    fn size(&self, file: StoreFile) -> io::Result<Option<u64>> {
        let state = self.state.lock().expect("disk");
        Ok(state
            .names
            .get(&file)
            .map(|inode| state.files[*inode].len() as u64))
    }

    fn drop_cache(&self, file: StoreFile) -> io::Result<()> {
        let mut state = self.state.lock().expect("disk");
        let Some(inode) = state.names.get(&file).copied() else {
            return Ok(());
        };
        if !state.lost_inodes.contains(&inode) {
            // Nothing was lost: the cache is what the disk holds plus what is not yet synced.
            return Ok(());
        }
        state.lost_inodes.retain(|lost| *lost != inode);
        let histories = histories(&state.initial, &state.events, state.events.len());
        let history = histories.get(inode).cloned().unwrap_or_default();
        let random = state.random.get_or_insert_with(|| Random::new(0xD0C));
        let mut durable = history.durable.clone();
        for change in &history.lost {
            if random.chance(2) {
                apply(&mut durable, change);
            }
        }
        let mut cache = durable.clone();
        for change in &history.pending {
            apply(&mut cache, change);
        }
        state.files[inode] = cache;
        state.push(Event::Reread {
            inode,
            durable: Arc::from(durable.as_slice()),
        });
        Ok(())
    }
}

/// One open file of a [`Disk`].
#[derive(Debug)]
struct RecordedFile {
    disk: Disk,
    inode: usize,
    /// Tells handles apart (a reopen gets a new one).
    handle: u64,
}

impl StorageBackend for RecordedFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.state.lock().expect("disk").files[self.inode].len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.disk.state.lock().expect("disk");
        let file = &state.files[self.inode];
        let start = offset as usize;
        let source = file
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.disk.operate(self.handle, self.inode)?;
        let mut state = self.disk.state.lock().expect("disk");
        state.files[self.inode].resize(len as usize, 0);
        state.push(Event::SetLen {
            inode: self.inode,
            len,
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let mut state = self.disk.state.lock().expect("disk");
            let index = state.data_operations;
            state.sync_operations.push(index);
            if state.poisoned.contains_key(&self.handle) && state.retried_sync.is_none() {
                let at = state.events.len();
                state.retried_sync = Some((self.handle, at));
            }
        }
        let result = self.disk.operate(self.handle, self.inode);
        let mut state = self.disk.state.lock().expect("disk");
        state.push(Event::Sync {
            inode: self.inode,
            ok: result.is_ok(),
        });
        if result.is_err() {
            let at = state.events.len();
            state.poisoned.insert(self.handle, at);
            state.lost_inodes.push(self.inode);
        }
        result
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.disk.operate(self.handle, self.inode)?;
        let mut state = self.disk.state.lock().expect("disk");
        let file = &mut state.files[self.inode];
        let end = offset as usize + data.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset as usize..end].copy_from_slice(data);
        state.push(Event::Write {
            inode: self.inode,
            offset,
            data: Arc::from(data),
        });
        Ok(())
    }

    fn try_lock_range(&self, _start: Bound<u64>, _end: Bound<u64>) -> Result<bool, BackendError> {
        Err(BackendError::Unsupported)
    }
}

/// A tiny deterministic random source (xorshift), so a seed reproduces a run.
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// How a crash state treats what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Only what was synced.
    Nothing,
    /// Everything written (as if the cache reached the disk).
    Everything,
    /// Each block any of its versions, sectors torn, lengths and names any since their sync.
    Random(u64),
}

/// What one file looks like at a crash point: its durable bytes and length, and what was
/// written since (each write with the length the file had after it).
#[derive(Debug, Clone, Default)]
struct FileHistory {
    durable: Vec<u8>,
    /// Writes and length changes since the last successful sync, in order.
    pending: Vec<Change>,
    /// Writes a failed sync dropped: never durable, any version for good.
    lost: Vec<Change>,
    /// The cache (every write applied).
    current: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Change {
    Write { offset: u64, data: Arc<[u8]> },
    SetLen(u64),
}

fn apply(bytes: &mut Vec<u8>, change: &Change) {
    match change {
        Change::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        Change::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// Each file's history (by inode) after the first `upto` events, and the names (current,
/// durable) then.
fn replay_log(
    initial: &BTreeMap<StoreFile, Vec<u8>>,
    events: &[Event],
    upto: usize,
) -> (
    Vec<FileHistory>,
    HashMap<StoreFile, usize>,
    HashMap<StoreFile, usize>,
) {
    let mut files: Vec<FileHistory> = Vec::new();
    let mut names: HashMap<StoreFile, usize> = HashMap::new();
    for (inode, (name, bytes)) in initial.iter().enumerate() {
        files.push(FileHistory {
            durable: bytes.clone(),
            current: bytes.clone(),
            ..FileHistory::default()
        });
        names.insert(*name, inode);
    }
    let mut durable_names = names.clone();
    let ensure = |files: &mut Vec<FileHistory>, inode: usize| {
        if files.len() <= inode {
            files.resize(inode + 1, FileHistory::default());
        }
    };
    for event in &events[..upto] {
        match event {
            Event::Write {
                inode,
                offset,
                data,
            } => {
                ensure(&mut files, *inode);
                let change = Change::Write {
                    offset: *offset,
                    data: data.clone(),
                };
                apply(&mut files[*inode].current, &change);
                files[*inode].pending.push(change);
            }
            Event::SetLen { inode, len } => {
                ensure(&mut files, *inode);
                let change = Change::SetLen(*len);
                apply(&mut files[*inode].current, &change);
                files[*inode].pending.push(change);
            }
            Event::Sync { inode, ok } => {
                ensure(&mut files, *inode);
                let file = &mut files[*inode];
                let pending = std::mem::take(&mut file.pending);
                if *ok {
                    for change in &pending {
                        apply(&mut file.durable, change);
                    }
                } else {
                    file.lost.extend(pending);
                }
            }
            Event::Reread { inode, durable } => {
                ensure(&mut files, *inode);
                let file = &mut files[*inode];
                file.durable = durable.to_vec();
                file.lost.clear();
                let mut current = file.durable.clone();
                for change in &file.pending {
                    apply(&mut current, change);
                }
                file.current = current;
            }
            Event::Create { name, inode } => {
                ensure(&mut files, *inode);
                names.insert(*name, *inode);
            }
            Event::Remove { name } => {
                names.remove(name);
            }
            Event::Rename { from, to } => {
                if let Some(inode) = names.remove(from) {
                    names.insert(*to, inode);
                }
            }
            Event::DirSync => durable_names = names.clone(),
        }
    }
    (files, names, durable_names)
}

fn histories(
    initial: &BTreeMap<StoreFile, Vec<u8>>,
    events: &[Event],
    upto: usize,
) -> Vec<FileHistory> {
    replay_log(initial, events, upto).0
}

/// Files (by name) a power cut after the first `upto` events could leave, as `keep` says,
/// on a disk that held `initial` (all durable, as [`Disk::with_files`] numbers them) before.
pub fn crash_state(
    initial: &BTreeMap<StoreFile, Vec<u8>>,
    events: &[Event],
    upto: usize,
    keep: Keep,
) -> BTreeMap<StoreFile, Vec<u8>> {
    let (files, names, durable_names) = replay_log(initial, events, upto);
    let mut random = match keep {
        Keep::Random(seed) => Some(Random::new(seed)),
        _ => None,
    };
    let chosen_names = match (&mut random, keep) {
        (_, Keep::Nothing) => durable_names,
        (_, Keep::Everything) => names,
        (Some(random), _) => {
            if random.chance(2) {
                durable_names
            } else {
                names
            }
        }
        (None, _) => names,
    };
    let mut out = BTreeMap::new();
    for (name, inode) in chosen_names {
        let file = files.get(inode).cloned().unwrap_or_default();
        let bytes = match (&mut random, keep) {
            (_, Keep::Nothing) => file.durable.clone(),
            (_, Keep::Everything) => file.current.clone(),
            (Some(random), _) => random_version(&file, random),
            (None, _) => file.current.clone(),
        };
        out.insert(name, bytes);
    }
    out
}

/// Each block touched since the last sync takes one of its versions, some sectors torn to
/// another; the length is any the file had since its sync.
fn random_version(file: &FileHistory, random: &mut Random) -> Vec<u8> {
    let mut changes: Vec<&Change> = file.lost.iter().collect();
    changes.extend(file.pending.iter());
    if changes.is_empty() {
        return file.durable.clone();
    }
    // The lengths the file had, and which changes touched which block.
    let mut lengths = vec![file.durable.len()];
    let mut length = file.durable.len();
    let mut touching: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (index, change) in changes.iter().enumerate() {
        let (from, to) = match change {
            Change::Write { offset, data } => {
                let end = *offset as usize + data.len();
                let range = (*offset as usize, end);
                length = length.max(end);
                range
            }
            Change::SetLen(len) => {
                let len = *len as usize;
                let range = (len.min(length), len.max(length));
                length = len;
                range
            }
        };
        lengths.push(length);
        if to > from {
            for block in from / BLOCK..to.div_ceil(BLOCK) {
                touching.entry(block).or_default().push(index);
            }
        }
    }
    let widest = lengths.iter().copied().max().unwrap_or(0);
    let mut out = file.durable.clone();
    out.resize(widest, 0);
    for (block, indices) in touching {
        let start = block * BLOCK;
        let end = (start + BLOCK).min(widest);
        if start >= end {
            continue;
        }
        // Versions of this block: before the first change touching it, then after each.
        let mut versions = vec![slice(&file.durable, start, end)];
        let mut current = versions[0].clone();
        for index in indices {
            match changes[index] {
                Change::Write { offset, data } => {
                    let (write_start, write_end) =
                        (*offset as usize, *offset as usize + data.len());
                    let from = write_start.max(start);
                    let to = write_end.min(end);
                    if from < to {
                        current[from - start..to - start]
                            .copy_from_slice(&data[from - write_start..to - write_start]);
                    }
                }
                Change::SetLen(len) => {
                    let len = *len as usize;
                    if len < end {
                        let from = len.max(start);
                        for byte in &mut current[from - start..] {
                            *byte = 0;
                        }
                    }
                }
            }
            versions.push(current.clone());
        }
        let chosen = random.below(versions.len() as u64) as usize;
        for sector in (0..end - start).step_by(SECTOR) {
            let sector_end = (sector + SECTOR).min(end - start);
            let version = if random.chance(6) {
                random.below(versions.len() as u64) as usize
            } else {
                chosen
            };
            out[start + sector..start + sector_end]
                .copy_from_slice(&versions[version][sector..sector_end]);
        }
    }
    let length = lengths[random.below(lengths.len() as u64) as usize];
    out.resize(length, 0);
    out
}

fn slice(bytes: &[u8], start: usize, end: usize) -> Vec<u8> {
    let mut out = vec![0u8; end - start];
    if start < bytes.len() {
        let available = bytes.len().min(end) - start;
        out[..available].copy_from_slice(&bytes[start..start + available]);
    }
    out
}
