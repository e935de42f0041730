//! A redo journal under redb, so a commit costs one sequential fsync (`STORE_JOURNAL`,
//! ADR 0006).
//!
//! redb writes a commit's pages where its allocator puts them, a dozen or more 4 KiB pages
//! spread over the file, then syncs. On the virtual disks mfoundry was measured on, a sync
//! costs about one device round trip per separate run of pages, so a commit's sync takes
//! several times a sync of the same bytes in one run (docs/performance.md). This backend sits
//! between redb and the data file: every write still goes to the data file at once (into the
//! page cache, so reads see it) and is also appended to a pending record; redb's sync appends
//! that record to the journal file in one write and syncs the journal only.
//!
//! The record area is two halves; laps alternate between them. When a half is full the next
//! lap starts in the other half, and the flusher thread syncs the data file and then moves the
//! header past the finished lap. A half is reused only once the lap before in it is flushed.
//! Between laps the flusher also syncs the data file after every 1/16 of a half, so no one
//! sync of the data file holds the disk for long.
//!
//! Recovery (at every open): the laps the header still needs (at most two) are written again
//! into the data file, in order, the data file is synced, and a new lap begins. A record that
//! is torn, fails its checksum, is out of sequence or of another lap ends a lap: it was never
//! acknowledged (its sync did not return). The data file then holds, as after a crash without
//! the journal, the last acknowledged commit plus perhaps pages of an unacknowledged one,
//! which redb's own recovery discards. The first sync after opening an empty data file syncs
//! the data file instead of journaling, so a record never exists while the data file's
//! durable length is zero: an empty data file beside a journal with records means the data
//! file was deleted, and the open refuses rather than replay pages into nothing.
//!
//! Layout of the journal file (all integers little-endian):
//! - bytes 0..4096, the header: two copies, at 0 and 512, of `magic (8) ‖ oldest needed lap
//!   (8) ‖ size of a half (8) ‖ crc32 (4)`. The valid copy with the higher lap counts.
//! - then the two halves of records: `magic (4) ‖ lap (8) ‖ seq (8) ‖ len (4) ‖ crc32 (4) ‖
//!   payload (len)`, lap `l` in half `l % 2`, seq counting from 0 in each lap; the crc covers
//!   lap, seq, len and the payload. The payload is a list of operations: `1 ‖ offset (8) ‖
//!   len (4) ‖ bytes` (a write) or `2 ‖ len (8)` (a new length of the data file).

use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use redb::{BackendError, StorageBackend};

/// Default size of the journal file; a commit larger than half of it syncs the data file
/// instead.
pub const DEFAULT_CAPACITY: u64 = 64 << 20;
/// The flusher syncs the data file each time this fraction of a half has been journaled.
const TRICKLE_PARTS: u64 = 16;
/// Most pending-buffer capacity kept between commits.
const PENDING_KEPT: usize = 4 << 20;
/// Where the records start.
const RECORDS_START: u64 = 4096;
/// Offsets of the two header copies.
const HEADER_COPIES: [u64; 2] = [0, 512];
const HEADER_MAGIC: [u8; 8] = *b"MFJRNL01";
const HEADER_LEN: usize = 28;
const RECORD_MAGIC: [u8; 4] = *b"MFJR";
const RECORD_HEADER_LEN: usize = 28;
const OP_WRITE: u8 = 1;
const OP_SET_LEN: u8 = 2;

/// What [`Journaled::open`] found in the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records written again into the data file.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// A storage backend that journals redb's writes (see the module documentation).
#[derive(Debug)]
pub struct Journaled {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    main: Box<dyn StorageBackend>,
    journal: Box<dyn StorageBackend>,
    /// Size of each half of the record area.
    half: u64,
    state: Mutex<State>,
    /// Signals the flusher (a lap to flush, or closing) and the writer (a flush done).
    changed: Condvar,
    /// Held through every sync of the data file: one at a time, so an error cannot be
    /// reported to one and missed by another running beside it.
    main_sync: Mutex<()>,
    /// Set, before `main_sync` is released, by a failed sync of the data file. Linux reports
    /// a writeback error once: a later sync may succeed although pages were lost, so after
    /// one failure the header never moves again in this handle (a reopen replays).
    main_failed: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// Operations written to the data file since the last sync, encoded as in a record.
    pending: Vec<u8>,
    /// The lap records are appended to; lap `l` uses half `l % 2`.
    lap: u64,
    /// Seq of the next record.
    seq: u64,
    /// Where the next record goes.
    position: u64,
    /// The oldest lap whose records may not be in the synced data file: what the header
    /// says (replay starts there).
    oldest_needed: u64,
    /// A finished lap the flusher is to make durable in the data file.
    flush_requested: Option<u64>,
    /// The flusher is syncing the data file.
    flushing: bool,
    /// The flusher is to sync the data file without finishing a lap: written often, the
    /// data file's syncs stay short, so a lap's end does not hold the disk for long.
    trickle: bool,
    /// Journal bytes written since the flusher last started a sync.
    since_flush: u64,
    /// Set by a failed write or sync: the handle is done, redb reopens (and so replays).
    failed: bool,
    closing: bool,
    /// The data file was empty at open: the first sync syncs it instead of journaling, so
    /// no record is ever written while the data file's durable length is zero (which is
    /// how a journal whose data file was deleted is told apart, see [`recover`]).
    data_file_new: bool,
}

impl State {
    fn clear_pending(&mut self) {
        self.pending.clear();
        if self.pending.capacity() > PENDING_KEPT {
            // A large commit (bodies of megabytes) must not hold its size in memory for good.
            self.pending = Vec::new();
        }
    }
}

impl Journaled {
    /// Replay the journal into `main`, sync it, and start a new lap. `capacity` is the size
    /// of the journal file (at least 128 KiB); a commit larger than half of it syncs the data
    /// file instead.
    pub fn open(
        main: Box<dyn StorageBackend>,
        journal: Box<dyn StorageBackend>,
        capacity: u64,
    ) -> io::Result<(Self, Replayed)> {
        let capacity = capacity.max(RECORDS_START + (128 << 10));
        let half = (capacity - RECORDS_START) / 2;
        let Recovered {
            next_lap,
            replayed,
            data_file_new,
            ..
        } = recover(main.as_ref(), journal.as_ref())?;
        write_header(journal.as_ref(), next_lap, half)?;
        let len = journal.len()?;
        if len < capacity {
            // Written once, so a commit's sync never has to grow the file (which costs a
            // metadata write, a second device round trip).
            let zeros = vec![0u8; 1 << 20];
            let mut offset = len.max(RECORDS_START);
            while offset < capacity {
                let chunk = (capacity - offset).min(zeros.len() as u64) as usize;
                journal.write(offset, &zeros[..chunk])?;
                offset += chunk as u64;
            }
        }
        journal.sync_data()?;
        let state = State {
            pending: Vec::new(),
            lap: next_lap,
            seq: 0,
            position: half_start(next_lap, half),
            oldest_needed: next_lap,
            flush_requested: None,
            flushing: false,
            trickle: false,
            since_flush: 0,
            failed: false,
            closing: false,
            data_file_new,
        };
        let shared = Arc::new(Shared {
            main,
            journal,
            half,
            state: Mutex::new(state),
            changed: Condvar::new(),
            main_sync: Mutex::new(()),
            main_failed: AtomicBool::new(false),
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("outbox-flusher".to_owned())
                .spawn(move || shared.flush_laps())?
        };
        Ok((
            Self {
                shared,
                flusher: Mutex::new(Some(flusher)),
            },
            replayed,
        ))
    }

    fn stop_flusher(&self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.closing = true;
        }
        self.shared.changed.notify_all();
        if let Some(handle) = self.flusher.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = handle.join();
        }
    }
}

impl Drop for Journaled {
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// What [`recover`] found: the lap to start next (above every lap in the journal), the size
/// of a half the journal was written with (None for a new journal), what was replayed, and
/// whether the data file is empty (then nothing was replayed).
struct Recovered {
    next_lap: u64,
    written_half: Option<u64>,
    replayed: Replayed,
    data_file_new: bool,
}

/// Replay what the journal still needs into the data file and sync it.
fn recover(main: &dyn StorageBackend, journal: &dyn StorageBackend) -> io::Result<Recovered> {
    let mut replayed = Replayed::default();
    let data_file_new = main.len()? == 0;
    let Some((oldest, written_half)) = read_header(journal)? else {
        return Ok(Recovered {
            next_lap: 1,
            written_half: None,
            replayed,
            data_file_new,
        });
    };
    if data_file_new {
        // No record is written while the data file's durable length is zero (the first
        // sync after opening an empty data file syncs the data file, not the journal): a
        // record here means the data file was deleted or emptied after the journal was
        // written. Replaying over nothing would only make a file redb cannot open.
        let found = replay(
            journal,
            None,
            oldest,
            half_start(oldest, written_half),
            written_half,
        )?;
        if found.records > 0 {
            return Err(io::Error::other(format!(
                "the data file is missing or empty, but this journal still holds {} commit(s) \
                 of a data file that was not closed cleanly; put that data file back, or, if it \
                 was removed on purpose, remove the journal too (its commits belong to the \
                 removed file)",
                found.records
            )));
        }
    }
    // At most two laps are in use: the one being flushed and the one after it. They are
    // where the run that wrote them put them (its journal may have had another size); a lap
    // above both never matches a record of theirs.
    for lap in [oldest, oldest + 1] {
        let found = replay(
            journal,
            Some(main),
            lap,
            half_start(lap, written_half),
            written_half,
        )?;
        replayed.records += found.records;
        replayed.bytes += found.bytes;
        if found.records == 0 {
            break;
        }
    }
    if replayed.records > 0 {
        main.sync_data()?;
    }
    Ok(Recovered {
        next_lap: oldest + 2,
        written_half: Some(written_half),
        replayed,
        data_file_new,
    })
}

/// For a start with the journal off: replay what a journal left behind into the data file,
/// sync it, and mark every lap done, so the journal file can be removed.
pub fn retire(main: &dyn StorageBackend, journal: &dyn StorageBackend) -> io::Result<Replayed> {
    let recovered = recover(main, journal)?;
    if let Some(half) = recovered.written_half {
        write_header(journal, recovered.next_lap, half)?;
        journal.sync_data()?;
    }
    Ok(recovered.replayed)
}

fn half_start(lap: u64, half: u64) -> u64 {
    RECORDS_START + (lap % 2) * half
}

impl Shared {
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self
            .state
            .lock()
            .map_err(|_| io::Error::other("the journal's lock is poisoned"))?;
        if state.failed {
            return Err(io::Error::other(
                "an earlier journal write failed; the store must be reopened",
            ));
        }
        Ok(state)
    }

    /// The flusher thread: sync the data file after each finished lap, then move the header
    /// past that lap so its half can be used again.
    fn flush_laps(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        loop {
            if state.closing || state.failed {
                return;
            }
            let lap = state.flush_requested.take();
            if lap.is_none() && !state.trickle {
                state = match self.changed.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
                continue;
            }
            state.trickle = false;
            state.flushing = true;
            state.since_flush = 0;
            drop(state);
            // Every write of `lap` went to the data file before the request.
            let synced = self.sync_main();
            state = match self.state.lock() {
                Ok(state) => state,
                Err(_) => return,
            };
            state.flushing = false;
            let result = match lap {
                Some(lap) => synced.and_then(|()| self.advance(&mut state, lap + 1)),
                None => synced,
            };
            if result.is_err() {
                state.failed = true;
            }
            self.changed.notify_all();
        }
    }

    /// Sync the data file, one sync at a time; a failure is remembered for good.
    fn sync_main(&self) -> io::Result<()> {
        let _one_at_a_time = self
            .main_sync
            .lock()
            .map_err(|_| io::Error::other("the journal's lock is poisoned"))?;
        if self.main_failed.load(Ordering::Acquire) {
            return Err(io::Error::other("an earlier sync of the data file failed"));
        }
        let result = self.main.sync_data();
        if result.is_err() {
            self.main_failed.store(true, Ordering::Release);
        }
        result
    }

    /// Record in the header that laps before `oldest` are in the synced data file.
    fn advance(&self, state: &mut State, oldest: u64) -> io::Result<()> {
        if oldest <= state.oldest_needed {
            return Ok(());
        }
        if self.main_failed.load(Ordering::Acquire) {
            return Err(io::Error::other("an earlier sync of the data file failed"));
        }
        write_header(self.journal.as_ref(), oldest, self.half)?;
        self.journal.sync_data()?;
        state.oldest_needed = oldest;
        Ok(())
    }

    /// Start the next lap in the other half, once the lap that used it is flushed.
    fn next_lap<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
    ) -> io::Result<MutexGuard<'a, State>> {
        let next = state.lap + 1;
        // The other half holds lap `next - 2`: it must be in the synced data file first.
        while state.oldest_needed < next - 1 {
            if state.flush_requested.is_none() && !state.flushing {
                // Nothing in flight would ever flush that lap (not reached while the flusher
                // thread runs, since every finished lap is requested): flush here rather
                // than wait for good.
                self.sync_main()?;
                self.advance(&mut state, next - 1)?;
                break;
            }
            state = self
                .changed
                .wait(state)
                .map_err(|_| io::Error::other("the journal's lock is poisoned"))?;
            if state.failed {
                return Err(io::Error::other("the data file's sync failed"));
            }
        }
        state.flush_requested = Some(state.lap);
        state.lap = next;
        state.seq = 0;
        state.position = half_start(next, self.half);
        self.changed.notify_all();
        Ok(state)
    }

    fn sync<'a>(&'a self, mut state: MutexGuard<'a, State>) -> io::Result<MutexGuard<'a, State>> {
        if state.pending.is_empty() {
            return Ok(state);
        }
        let len = state.pending.len();
        let record_len = (RECORD_HEADER_LEN + len) as u64;
        if record_len > self.half || state.data_file_new {
            // Larger than a half, or the data file's first commit: the writes are in the
            // data file already, and syncing it makes them (and every lap so far) durable.
            self.sync_main()?;
            state.data_file_new = false;
            let oldest = state.lap + 1;
            self.advance(&mut state, oldest)?;
            state.flush_requested = None;
            state.lap = oldest;
            state.seq = 0;
            state.position = half_start(oldest, self.half);
            state.clear_pending();
            return Ok(state);
        }
        if state.position + record_len > half_start(state.lap, self.half) + self.half {
            state = self.next_lap(state)?;
        }
        let len_field = u32::try_from(len).map_err(|_| io::Error::other("record too large"))?;
        let header = record_header(state.lap, state.seq, len_field, &state.pending);
        self.journal.write(state.position, &header)?;
        self.journal
            .write(state.position + RECORD_HEADER_LEN as u64, &state.pending)?;
        self.journal.sync_data()?;
        state.position += record_len;
        state.seq += 1;
        state.clear_pending();
        state.since_flush += record_len;
        if state.since_flush >= self.half / TRICKLE_PARTS
            && !state.flushing
            && state.flush_requested.is_none()
        {
            state.trickle = true;
            self.changed.notify_all();
        }
        Ok(state)
    }
}

/// Mark the state failed when `result` is an error.
fn failing<T>(state: &mut State, result: io::Result<T>) -> io::Result<T> {
    if result.is_err() {
        state.failed = true;
    }
    result
}

impl StorageBackend for Journaled {
    fn len(&self) -> Result<u64, io::Error> {
        self.shared.main.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.shared.main.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.shared.state()?;
        let result = self.shared.main.set_len(len);
        failing(&mut state, result)?;
        state.pending.push(OP_SET_LEN);
        state.pending.extend_from_slice(&len.to_le_bytes());
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let state = self.shared.state()?;
        match self.shared.sync(state) {
            Ok(_) => Ok(()),
            Err(error) => {
                if let Ok(mut state) = self.shared.state.lock() {
                    state.failed = true;
                }
                self.shared.changed.notify_all();
                Err(error)
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.shared.state()?;
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("write too large"));
        let len = failing(&mut state, len)?;
        let result = self.shared.main.write(offset, data);
        failing(&mut state, result)?;
        state.pending.push(OP_WRITE);
        state.pending.extend_from_slice(&offset.to_le_bytes());
        state.pending.extend_from_slice(&len.to_le_bytes());
        state.pending.extend_from_slice(data);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        // A clean close leaves everything in the data file, so the journal holds nothing an
        // open must replay (and an older mfoundry could open the file).
        self.stop_flusher();
        let shared = &self.shared;
        let result = shared.state().and_then(|mut state| {
            shared.sync_main()?;
            let oldest = state.lap + 1;
            shared.advance(&mut state, oldest)
        });
        let closed = shared.journal.close().and(shared.main.close());
        result.and(closed)
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.shared.main.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.shared.main.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.shared.main.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.shared.main.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.shared.main.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.shared.main.query_lock_range(start, end)
    }
}

fn header_bytes(lap: u64, half: u64) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[..8].copy_from_slice(&HEADER_MAGIC);
    out[8..16].copy_from_slice(&lap.to_le_bytes());
    out[16..24].copy_from_slice(&half.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn write_header(journal: &dyn StorageBackend, lap: u64, half: u64) -> io::Result<()> {
    let copy = header_bytes(lap, half);
    let mut block = vec![0u8; RECORDS_START as usize];
    for offset in HEADER_COPIES {
        let offset = offset as usize;
        block[offset..offset + HEADER_LEN].copy_from_slice(&copy);
    }
    journal.write(0, &block)
}

/// The oldest needed lap and the size of a half, from the valid header copy with the higher
/// lap; None for a new journal.
fn read_header(journal: &dyn StorageBackend) -> io::Result<Option<(u64, u64)>> {
    let len = journal.len()?;
    let mut best: Option<(u64, u64)> = None;
    for offset in HEADER_COPIES {
        if offset + HEADER_LEN as u64 > len {
            continue;
        }
        let mut copy = [0u8; HEADER_LEN];
        journal.read(offset, &mut copy)?;
        let crc = u32::from_le_bytes(copy[24..].try_into().expect("4 bytes"));
        if copy[..8] != HEADER_MAGIC || crc32fast::hash(&copy[..24]) != crc {
            continue;
        }
        let lap = u64::from_le_bytes(copy[8..16].try_into().expect("8 bytes"));
        let half = u64::from_le_bytes(copy[16..24].try_into().expect("8 bytes"));
        if best.is_none_or(|(best_lap, _)| lap > best_lap) {
            best = Some((lap, half));
        }
    }
    if best.is_none() && len > 0 && !is_zero(journal, len)? {
        return Err(io::Error::other(
            "the journal file has no valid header, so it is not a journal mfoundry wrote; move it \
             away only if the data file was last closed cleanly (or STORE_JOURNAL was never on)",
        ));
    }
    Ok(best)
}

fn is_zero(journal: &dyn StorageBackend, len: u64) -> io::Result<bool> {
    let mut buffer = vec![0u8; len.min(RECORDS_START) as usize];
    journal.read(0, &mut buffer)?;
    Ok(buffer.iter().all(|&byte| byte == 0))
}

fn record_header(lap: u64, seq: u64, len: u32, payload: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    let mut out = [0u8; RECORD_HEADER_LEN];
    out[..4].copy_from_slice(&RECORD_MAGIC);
    out[4..12].copy_from_slice(&lap.to_le_bytes());
    out[12..20].copy_from_slice(&seq.to_le_bytes());
    out[20..24].copy_from_slice(&len.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[4..24]);
    hasher.update(payload);
    out[24..].copy_from_slice(&hasher.finalize().to_le_bytes());
    out
}

/// Write the records of `lap` into `main`, in order, up to the first that is missing, torn
/// or of another lap; with no `main`, only count them.
fn replay(
    journal: &dyn StorageBackend,
    main: Option<&dyn StorageBackend>,
    lap: u64,
    start: u64,
    half: u64,
) -> io::Result<Replayed> {
    let len = journal.len()?.min(start + half);
    let mut replayed = Replayed::default();
    let mut position = start;
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut payload = Vec::new();
    loop {
        if position + RECORD_HEADER_LEN as u64 > len {
            break;
        }
        journal.read(position, &mut header)?;
        let record_lap = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        let payload_len = u32::from_le_bytes(header[20..24].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[24..].try_into().expect("4 bytes"));
        let end = position + RECORD_HEADER_LEN as u64 + u64::from(payload_len);
        if header[..4] != RECORD_MAGIC || record_lap != lap || seq != replayed.records || end > len
        {
            break;
        }
        payload.resize(payload_len as usize, 0);
        journal.read(position + RECORD_HEADER_LEN as u64, &mut payload)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header[4..24]);
        hasher.update(&payload);
        if hasher.finalize() != crc {
            break;
        }
        if let Some(main) = main {
            apply(main, &payload)?;
        }
        replayed.records += 1;
        replayed.bytes += u64::from(payload_len);
        position = end;
    }
    Ok(replayed)
}

/// Apply a record's operations to the data file. A record whose checksum matched but whose
/// operations do not parse was not written by this code: an error, not a silent stop.
fn apply(main: &dyn StorageBackend, payload: &[u8]) -> io::Result<()> {
    let malformed = || io::Error::other("a journal record is malformed");
    let mut rest = payload;
    while let Some((&op, tail)) = rest.split_first() {
        match op {
            OP_WRITE => {
                let (offset, tail) = tail.split_at_checked(8).ok_or_else(malformed)?;
                let (len, tail) = tail.split_at_checked(4).ok_or_else(malformed)?;
                let offset = u64::from_le_bytes(offset.try_into().expect("8 bytes"));
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                let (data, tail) = tail.split_at_checked(len).ok_or_else(malformed)?;
                main.write(offset, data)?;
                rest = tail;
            }
            OP_SET_LEN => {
                let (len, tail) = tail.split_at_checked(8).ok_or_else(malformed)?;
                main.set_len(u64::from_le_bytes(len.try_into().expect("8 bytes")))?;
                rest = tail;
            }
            _ => return Err(malformed()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};
    use std::collections::HashMap;

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    /// A simulated disk of two files: writes land in a cache; a sync makes that file's cache
    /// durable; a crash keeps the durable bytes plus any subset of the unsynced writes, some
    /// of them torn at a 512-byte boundary.
    #[derive(Debug, Default)]
    struct Disk {
        files: [File; 2],
        operations: u64,
        crash_at: u64,
        image: Option<[Vec<u8>; 2]>,
        rng: u64,
        /// Syncs of the data file so far, and which one fails (0: none). A failed sync loses
        /// the unsynced writes but leaves them in the cache, marked clean, as Linux does: a
        /// later sync succeeds without them.
        main_syncs: u64,
        fail_main_sync: u64,
    }

    #[derive(Debug, Default, Clone)]
    struct File {
        cache: Vec<u8>,
        durable: Vec<u8>,
        unsynced: Vec<(u64, Vec<u8>)>,
    }

    impl Disk {
        fn random(&mut self) -> u64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            self.rng
        }

        /// Count an operation; at the chosen one, take the crash image first.
        fn tick(&mut self) {
            self.operations += 1;
            if self.operations == self.crash_at && self.image.is_none() {
                let mut image = [Vec::new(), Vec::new()];
                for (index, out) in image.iter_mut().enumerate() {
                    let file = self.files[index].clone();
                    let mut bytes = file.durable.clone();
                    for (offset, data) in &file.unsynced {
                        let keep = match self.random() % 4 {
                            0 | 1 => continue,
                            2 => data.len(),
                            _ => (self.random() as usize % data.len().max(1)) / 512 * 512,
                        };
                        let start = *offset as usize;
                        if bytes.len() < start + keep {
                            bytes.resize(start + keep, 0);
                        }
                        bytes[start..start + keep].copy_from_slice(&data[..keep]);
                    }
                    *out = bytes;
                }
                self.image = Some(image);
            }
        }
    }

    #[derive(Debug, Clone)]
    struct SimFile {
        disk: Arc<Mutex<Disk>>,
        index: usize,
    }

    impl StorageBackend for SimFile {
        fn len(&self) -> io::Result<u64> {
            Ok(self.disk.lock().expect("disk lock").files[self.index]
                .cache
                .len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let disk = self.disk.lock().expect("disk lock");
            let cache = &disk.files[self.index].cache;
            let start = offset as usize;
            let source = cache
                .get(start..start + out.len())
                .ok_or_else(|| io::Error::other("read past the end"))?;
            out.copy_from_slice(source);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            let mut disk = self.disk.lock().expect("disk lock");
            disk.tick();
            let file = &mut disk.files[self.index];
            file.cache.resize(len as usize, 0);
            // A length change is metadata: model it as durable only at the next sync.
            let durable_len = file.durable.len().min(len as usize);
            file.durable.truncate(durable_len);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            let mut disk = self.disk.lock().expect("disk lock");
            disk.tick();
            if self.index == 0 {
                disk.main_syncs += 1;
                if disk.main_syncs == disk.fail_main_sync {
                    disk.files[0].unsynced.clear();
                    return Err(io::Error::other("injected writeback error"));
                }
            }
            let file = &mut disk.files[self.index];
            let len = file.cache.len();
            file.durable.resize(len, 0);
            for (offset, data) in file.unsynced.drain(..) {
                let start = (offset as usize).min(len);
                let end = (offset as usize + data.len()).min(len);
                file.durable[start..end].copy_from_slice(&file.cache[start..end]);
            }
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut disk = self.disk.lock().expect("disk lock");
            disk.tick();
            let file = &mut disk.files[self.index];
            let start = offset as usize;
            if file.cache.len() < start + data.len() {
                file.cache.resize(start + data.len(), 0);
            }
            file.cache[start..start + data.len()].copy_from_slice(data);
            file.unsynced.push((offset, data.to_vec()));
            Ok(())
        }
    }

    /// The data file and the journal of a simulated disk.
    fn files(disk: &Arc<Mutex<Disk>>) -> (SimFile, SimFile) {
        let file = |index| SimFile {
            disk: Arc::clone(disk),
            index,
        };
        (file(0), file(1))
    }

    fn value(key: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (key as usize * 31 + i) as u8).collect()
    }

    fn open(disk: &Arc<Mutex<Disk>>, capacity: u64) -> (Database, Replayed) {
        let (main, journal) = files(disk);
        let (backend, replayed) =
            Journaled::open(Box::new(main), Box::new(journal), capacity).expect("journal opens");
        let database = Database::builder()
            .create_with_backend(backend)
            .expect("database opens");
        (database, replayed)
    }

    fn disk_with(files: [Vec<u8>; 2]) -> Arc<Mutex<Disk>> {
        Arc::new(Mutex::new(Disk {
            files: files.map(|bytes| File {
                cache: bytes.clone(),
                durable: bytes,
                unsynced: Vec::new(),
            }),
            crash_at: u64::MAX,
            rng: 1,
            ..Disk::default()
        }))
    }

    /// A new store on an empty simulated disk.
    fn new_store(capacity: u64) -> (Arc<Mutex<Disk>>, Database) {
        let disk = disk_with([Vec::new(), Vec::new()]);
        let (database, _) = open(&disk, capacity);
        (disk, database)
    }

    /// Commit one key with a value of `len` bytes; false when any step fails.
    fn commit_key(database: &Database, key: u64, len: usize) -> bool {
        let Ok(mut transaction) = database.begin_write() else {
            return false;
        };
        transaction
            .set_durability(Durability::Immediate)
            .expect("durability");
        let inserted = transaction
            .open_table(TABLE)
            .map_err(redb::Error::from)
            .and_then(|mut table| {
                table
                    .insert(key, value(key, len).as_slice())
                    .map(drop)
                    .map_err(redb::Error::from)
            });
        inserted.is_ok() && transaction.commit().is_ok()
    }

    /// What a power cut would leave: the synced bytes of both files.
    fn durable(disk: &Arc<Mutex<Disk>>) -> [Vec<u8>; 2] {
        let disk = disk.lock().expect("disk lock");
        [disk.files[0].durable.clone(), disk.files[1].durable.clone()]
    }

    /// Crash (keep the synced bytes only) and open again from what is left.
    fn crash_and_reopen(
        disk: &Arc<Mutex<Disk>>,
        database: Database,
        capacity: u64,
    ) -> (Database, Replayed) {
        let left = durable(disk);
        // The crashed process never closes anything.
        std::mem::forget(database);
        open(&disk_with(left), capacity)
    }

    fn assert_keys(database: &Database, keys: impl IntoIterator<Item = u64>, len: usize) {
        let read = database.begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        for key in keys {
            let found = table.get(key).expect("get").map(|v| v.value().to_vec());
            assert_eq!(found, Some(value(key, len)), "key {key}");
        }
    }

    /// After a clean close the journal holds nothing to replay; after a crash (the durable
    /// bytes only) it does, and the commit is back.
    #[test]
    fn a_clean_close_leaves_nothing_to_replay_and_a_crash_does() {
        let (disk, database) = new_store(256 << 10);
        assert!(commit_key(&database, 1, 500));
        drop(database);
        let disk = disk_with(durable(&disk));
        let (database, replayed) = open(&disk, 256 << 10);
        assert_eq!(replayed, Replayed::default());
        assert!(commit_key(&database, 2, 500));
        let (database, replayed) = crash_and_reopen(&disk, database, 256 << 10);
        assert!(
            replayed.records >= 1,
            "the commit of key 2 is replayed: {replayed:?}"
        );
        assert_keys(&database, [1, 2], 500);
    }

    /// A journal written with one size is replayed by a run configured with another.
    #[test]
    fn a_journal_of_another_size_is_still_replayed() {
        let (disk, database) = new_store(256 << 10);
        for key in 0..40 {
            assert!(commit_key(&database, key, 500));
        }
        let (database, replayed) = crash_and_reopen(&disk, database, 1 << 20);
        assert!(replayed.records >= 1, "{replayed:?}");
        assert_keys(&database, 0..40, 500);
    }

    /// A failed sync of the data file (its pages lost, a later sync "succeeding") must not
    /// let the header move past the laps that hold them: every acknowledged commit is still
    /// replayed from the journal.
    #[test]
    fn a_failed_sync_of_the_data_file_keeps_the_laps_it_needs() {
        let disk = disk_with([Vec::new(), Vec::new()]);
        disk.lock().expect("disk lock").fail_main_sync = 6;
        let (database, _) = open(&disk, 256 << 10);
        let acknowledged: Vec<u64> = (0..500)
            .take_while(|key| commit_key(&database, *key, 3000))
            .collect();
        assert!(
            disk.lock().expect("disk lock").main_syncs >= 6,
            "the failing sync was reached"
        );
        assert!(
            acknowledged.len() < 500,
            "a commit after the failure is refused"
        );
        let (database, _) = crash_and_reopen(&disk, database, 256 << 10);
        assert_keys(&database, acknowledged, 3000);
    }

    /// The same when the failing sync is the writer's own, for a commit larger than a half
    /// (its pages go straight to the data file): that commit fails, the handle refuses more,
    /// neither the failure nor the close moves the header, and the commits acknowledged
    /// before it, whose data-file pages the failed sync dropped, are replayed from the journal.
    #[test]
    fn a_failed_sync_for_a_commit_larger_than_a_half_keeps_what_was_acknowledged() {
        // Large enough that the small commits start no trickle sync (one per 512 KiB).
        let capacity = 16 << 20;
        let half = (capacity - RECORDS_START) / 2;
        let (disk, database) = new_store(capacity);
        // The store's creation synced the data file; the commits below are journaled only.
        let created = disk.lock().expect("disk lock").main_syncs;
        for key in 0..5 {
            assert!(commit_key(&database, key, 3000), "key {key}");
        }
        assert_eq!(
            disk.lock().expect("disk lock").main_syncs,
            created,
            "the keys are in the data file's cache only, not yet synced"
        );
        // The next sync of the data file fails; later ones succeed without its pages.
        disk.lock().expect("disk lock").fail_main_sync = created + 1;
        let mut transaction = database.begin_write().expect("write");
        transaction
            .set_durability(Durability::Immediate)
            .expect("durability");
        transaction
            .open_table(TABLE)
            .expect("table")
            .insert(100, value(100, half as usize + 10_000).as_slice())
            .expect("insert");
        assert!(
            transaction.commit().is_err(),
            "a commit whose sync of the data file failed is not acknowledged"
        );
        assert_eq!(
            disk.lock().expect("disk lock").main_syncs,
            created + 1,
            "the large commit synced the data file itself"
        );
        assert!(
            !commit_key(&database, 101, 10),
            "the handle refuses commits after a failed sync"
        );
        // A close after the failure must not move the header either.
        drop(database);
        let (database, replayed) = open(&disk_with(durable(&disk)), capacity);
        assert!(replayed.records >= 5, "{replayed:?}");
        assert_keys(&database, 0..5, 3000);
        let read = database.begin_read().expect("read");
        let table = read.open_table(TABLE).expect("table");
        assert!(table.get(100).expect("get").is_none(), "key 100 failed");
    }

    /// A data file deleted after a crash, its journal left behind: the open is refused with
    /// a reason, nothing is written into the new empty data file, and once the journal is
    /// removed too a fresh store opens.
    #[test]
    fn a_journal_whose_data_file_was_deleted_is_refused() {
        let (disk, database) = new_store(256 << 10);
        for key in 0..3 {
            assert!(commit_key(&database, key, 500));
        }
        let [_, journal] = durable(&disk);
        std::mem::forget(database);
        let disk = disk_with([Vec::new(), journal.clone()]);
        let (main, journal_file) = files(&disk);
        let error = retire(&main, &journal_file).expect_err("retiring it is refused too");
        assert!(
            error
                .to_string()
                .contains("the data file is missing or empty"),
            "{error}"
        );
        let error = Journaled::open(Box::new(main), Box::new(journal_file), 256 << 10)
            .expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("the data file is missing or empty"),
            "{error}"
        );
        let disk = disk.lock().expect("disk lock");
        assert!(disk.files[0].cache.is_empty(), "nothing replayed");
        assert_eq!(
            disk.files[1].cache, journal,
            "the journal is left as it was"
        );
        drop(disk);
        let (database, replayed) = open(&disk_with([Vec::new(), Vec::new()]), 256 << 10);
        assert_eq!(replayed, Replayed::default());
        assert!(commit_key(&database, 7, 500));
    }

    /// The rule that lets the check above refuse: no record is written while the data
    /// file's durable length is zero. A crash at every operation of a new store's first
    /// open and commits, then a reopen: the journal never refuses it, and once the store's
    /// creation has returned, redb opens it with every returned commit. (A crash inside
    /// redb's creation can leave a file redb does not recognise, with or without the
    /// journal; nothing was acknowledged by then.)
    #[test]
    fn a_new_store_crashed_at_any_point_is_never_refused() {
        const CAPACITY: u64 = 16 << 20;
        let run = |crash_at: u64| {
            let disk = disk_with([Vec::new(), Vec::new()]);
            disk.lock().expect("disk lock").crash_at = crash_at;
            // Large enough that no trickle sync (a flusher thread's, timed by the scheduler)
            // changes the count of operations from one run to the next.
            let (database, _) = open(&disk, CAPACITY);
            let created = disk.lock().expect("disk lock").operations;
            let mut acknowledged = Vec::new();
            for key in 0..3 {
                let committed = commit_key(&database, key, 500);
                if committed && disk.lock().expect("disk lock").image.is_none() {
                    acknowledged.push(key);
                }
            }
            let image = disk.lock().expect("disk lock").image.take();
            let operations = disk.lock().expect("disk lock").operations;
            std::mem::forget(database);
            (created, operations, image, acknowledged)
        };
        let (created, operations, _, _) = run(u64::MAX);
        assert!(
            operations > created,
            "{created} then {operations} operations"
        );
        for crash_at in 1..=operations {
            let (_, _, image, acknowledged) = run(crash_at);
            let Some(image) = image else {
                // Fewer operations this time: no crash to recover from.
                continue;
            };
            let (main, journal) = files(&disk_with(image));
            let (backend, _) = Journaled::open(Box::new(main), Box::new(journal), CAPACITY)
                .unwrap_or_else(|error| panic!("crash at operation {crash_at}: {error}"));
            if crash_at <= created {
                continue;
            }
            let database = Database::builder()
                .create_with_backend(backend)
                .unwrap_or_else(|error| panic!("crash at operation {crash_at}: {error}"));
            if !acknowledged.is_empty() {
                assert_keys(&database, acknowledged, 500);
            }
        }
    }

    /// A journal file that is not one (no valid header, not zeros) is refused with a reason,
    /// never replayed or overwritten.
    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let disk = disk_with([Vec::new(), b"not a journal".repeat(100)]);
        let (main, journal) = files(&disk);
        let error =
            Journaled::open(Box::new(main), Box::new(journal), 256 << 10).expect_err("refused");
        assert!(error.to_string().contains("no valid header"), "{error}");
        assert!(
            disk.lock().expect("disk lock").files[1]
                .cache
                .starts_with(b"not a journal")
        );
    }

    /// Crash at a random backend operation, many times over, each time recovering from what
    /// the crash left: every commit that returned is there, every removal that returned is
    /// gone, and whatever else is there is intact.
    #[test]
    fn every_returned_commit_survives_a_crash_at_any_operation() {
        let mut expected: HashMap<u64, Option<usize>> = HashMap::new();
        let mut files = [Vec::new(), Vec::new()];
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next_key = 0;
        let mut replays = 0;
        for round in 0..40 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let disk = disk_with(files.clone());
            disk.lock().expect("disk lock").rng = seed | 1;
            let (database, replayed) = open(&disk, 256 << 10);
            replays += replayed.records;
            {
                let read = database.begin_read().expect("read");
                if let Ok(table) = read.open_table(TABLE) {
                    for (key, state) in &expected {
                        let found = table.get(key).expect("get").map(|v| v.value().to_vec());
                        match state {
                            Some(len) => assert_eq!(
                                found.as_deref(),
                                Some(value(*key, *len).as_slice()),
                                "round {round}: key {key} was committed"
                            ),
                            None => {
                                assert!(found.is_none(), "round {round}: key {key} was removed")
                            }
                        }
                    }
                }
            }
            {
                let mut disk = disk.lock().expect("disk lock");
                let now = disk.operations;
                disk.crash_at = now + 1 + disk.random() % 3000;
            }
            let mut uncertain = Vec::new();
            for _ in 0..400 {
                let mut transaction = database.begin_write().expect("write");
                transaction
                    .set_durability(Durability::Immediate)
                    .expect("durability");
                let random = disk.lock().expect("disk lock").random();
                let mut changes = Vec::new();
                {
                    let mut table = transaction.open_table(TABLE).expect("table");
                    for _ in 0..(1 + random % 5) {
                        let len = 100 + (random as usize >> 8) % 3000;
                        table
                            .insert(next_key, value(next_key, len).as_slice())
                            .expect("insert");
                        changes.push((next_key, Some(len)));
                        next_key += 1;
                    }
                    // Remove one of the oldest keys, so pages are freed and reused.
                    let old = (next_key.saturating_sub(200)..next_key)
                        .find(|key| matches!(expected.get(key), Some(Some(_))));
                    if let Some(old) = old.filter(|_| !random.is_multiple_of(4)) {
                        table.remove(old).expect("remove");
                        changes.push((old, None));
                    }
                }
                let committed = transaction.commit().is_ok();
                if committed && disk.lock().expect("disk lock").image.is_none() {
                    expected.extend(changes);
                } else {
                    uncertain.extend(changes);
                    break;
                }
            }
            let image = disk.lock().expect("disk lock").image.take();
            let Some(image) = image else {
                // No crash in this round: a clean close.
                drop(database);
                files = durable(&disk);
                continue;
            };
            // Whatever the commit in flight did is allowed either way.
            for (key, _) in uncertain {
                expected.remove(&key);
            }
            std::mem::forget(database);
            files = image;
        }
        assert!(replays > 0, "the crashes must have left commits to replay");
    }
}
