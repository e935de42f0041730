//! A redo journal under redb, so a commit costs one sequential fsync (`STORE_JOURNAL`,
//! ADR 0006, format in ADR 0007).
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
//! The journal and its data file name each other ([`crate::outbox::datafile`]): the journal's
//! header carries the store id, the data file's header the journal id it is bound to and the
//! lap up to which it was synced (written before each flush). [`recovery`] checks all of it
//! at every open and refuses, writing nothing, when the files do not belong together or
//! records are damaged; otherwise it replays the laps the header still needs, and a new lap
//! (with a new salt) begins. The data file then holds, as after a crash without the journal,
//! the last acknowledged commit plus perhaps pages of an unacknowledged one, which redb's own
//! recovery discards. The first sync of a new store syncs the data file instead of
//! journaling, so redb's first state is durable before any record exists.
//!
//! A clean close syncs the data file, moves the header past every lap and unbinds the data
//! file: the data file alone is then the whole state. Layout: [`format`].

mod format;
mod legacy;
mod recovery;
#[cfg(test)]
mod tests;

pub use format::{HeaderRead, JournalHeader, read_header};
pub use recovery::{Refusal, Replayed};

use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use redb::{BackendError, StorageBackend};

use super::datafile::DataFile;
use format::{OP_SET_LEN, OP_WRITE, RECORD_HEADER_LEN, RECORDS_START, half_start, record_header};
use recovery::Verdict;

/// Default size of the journal file; a commit larger than half of it syncs the data file
/// instead.
pub const DEFAULT_CAPACITY: u64 = 64 << 20;
/// Smallest journal accepted (smaller capacities are raised to it).
pub const MIN_CAPACITY: u64 = RECORDS_START + (128 << 10);
/// The flusher syncs the data file each time this fraction of a half has been journaled.
const TRICKLE_PARTS: u64 = 16;
/// Most pending-buffer capacity kept between commits.
const PENDING_KEPT: usize = 4 << 20;

/// How an open treats a journal it would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refuse, writing nothing.
    Strict,
    /// Replay what is safe (the records before any damage), start a new journal, and report
    /// what was given up (`mfoundry store recover --accept-loss`).
    AcceptLoss,
}

/// What an open did with the journal it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Written again into the data file.
    pub replayed: Replayed,
    /// Accepting loss: why the journal could not be replayed whole, and how many of its
    /// records were given up.
    pub lost: Option<(Refusal, u64)>,
}

/// Why a journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The files are not replayed as they are (see [`Refusal`]); nothing was written.
    #[error("{0}")]
    Refused(Refusal),
    /// Reading or writing a file failed.
    #[error("journal I/O error")]
    Io(#[from] io::Error),
}

/// A storage backend that journals redb's writes (see the module documentation).
#[derive(Debug)]
pub struct Journaled {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    main: DataFile,
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
    /// Set by a failed write or sync of the journal, at once (before any lock is released):
    /// the journal is never written or synced again in this handle.
    journal_failed: AtomicBool,
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
    /// The journal's header as last written; its `oldest_needed` is where replay starts.
    header: JournalHeader,
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
    /// redb's part of the data file was empty at open: the first sync syncs the data file
    /// instead of journaling, so redb's first state is durable before any record exists.
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

/// What the journal file holds, read without writing.
enum Found {
    /// Nothing (a new journal, or one that holds nothing any more).
    Nothing(Option<JournalHeader>),
    /// A header and what its laps hold.
    Laps(JournalHeader, recovery::Scan),
    /// Not readable as a journal.
    Unreadable,
}

fn inspect(journal: &dyn StorageBackend) -> io::Result<Found> {
    Ok(match format::read_header(journal)? {
        HeaderRead::Empty => Found::Nothing(None),
        // A journal of the first format is retired before a data file is converted; one
        // that still holds commits beside a converted data file is not this file's.
        HeaderRead::Legacy if legacy::holds_commits(journal)? => Found::Unreadable,
        HeaderRead::Legacy => Found::Nothing(None),
        HeaderRead::Unreadable => Found::Unreadable,
        HeaderRead::Valid(header) => {
            let scan = recovery::scan(journal, &header)?;
            Found::Laps(header, scan)
        }
    })
}

/// How many commits a journal holds that some data file may need (0 for none). Used before
/// a missing data file is created anew: a journal holding commits is refused then.
pub fn held_records(journal: &dyn StorageBackend) -> io::Result<Option<u64>> {
    Ok(match inspect(journal)? {
        Found::Nothing(_) => None,
        Found::Laps(_, scan) if !scan.holds_anything() => None,
        Found::Laps(_, scan) => Some(scan.records()),
        Found::Unreadable => Some(0),
    })
}

/// What [`decide`] chose: the header to continue from (`None`: start a new journal), the
/// records to replay per lap, and what was given up.
type Decision = (Option<JournalHeader>, [u64; 2], Option<(Refusal, u64)>);

/// Check the journal against the data file and decide; `Err` is a refusal under `policy`
/// Strict.
fn decide(main: &DataFile, found: &Found, policy: Policy) -> Result<Decision, JournalError> {
    let data = main.header();
    let started = main.started();
    let verdict = match found {
        Found::Nothing(_) => recovery::assess(&data, started, None),
        Found::Laps(header, scan) => recovery::assess(&data, started, Some((header, scan))),
        Found::Unreadable => Verdict::Refuse(Refusal::Unreadable),
    };
    match (verdict, found) {
        (Verdict::Replay, Found::Laps(header, scan)) => Ok((
            Some(*header),
            [scan.laps[0].records, scan.laps[1].records],
            None,
        )),
        (Verdict::Replay | Verdict::Fresh, _) => Ok((None, [0, 0], None)),
        (Verdict::Refuse(refusal), _) if policy == Policy::Strict => {
            Err(JournalError::Refused(refusal))
        }
        (Verdict::Refuse(refusal), Found::Laps(header, scan)) => {
            let counts = match refusal {
                // Only damage leaves records worth replaying: the ones before it.
                Refusal::Damaged { .. } => scan.safe_prefix(header.half),
                _ => [0, 0],
            };
            let kept = counts[0] + counts[1];
            let lost = scan.all_records().saturating_sub(kept);
            let continue_from = (kept > 0).then_some(*header);
            Ok((continue_from, counts, Some((refusal, lost))))
        }
        (Verdict::Refuse(refusal), _) => Ok((None, [0, 0], Some((refusal, 0)))),
    }
}

impl Journaled {
    /// Check the journal against the data file, replay what it holds, sync the data file,
    /// and start a new lap. `capacity` is the size of the journal file (raised to
    /// [`MIN_CAPACITY`]); a commit larger than half of it syncs the data file instead. A
    /// refusal (under [`Policy::Strict`]) writes nothing.
    pub fn open(
        main: DataFile,
        journal: Box<dyn StorageBackend>,
        capacity: u64,
        policy: Policy,
    ) -> Result<(Self, Recovered), JournalError> {
        let capacity = capacity.max(MIN_CAPACITY);
        let half = (capacity - RECORDS_START) / 2;
        let found = inspect(journal.as_ref())?;
        let (continue_from, counts, lost) = decide(&main, &found, policy)?;
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&super::datafile::random_id()?[..8]);
        let salt = u64::from_le_bytes(salt);
        let mut replayed = Replayed::default();
        let header = match (continue_from, &found) {
            (Some(previous), Found::Laps(_, scan)) => {
                // The data file first: the replayed laps and the header that says so are
                // synced together; then the journal moves past them.
                replayed = recovery::replay(journal.as_ref(), &main, &previous, scan, counts)?;
                let mut next = recovery::after_replay(&previous, half);
                next.salt = salt;
                main.update_header(|data| {
                    data.journal_id = next.journal_id;
                    data.flushed_lap = next.oldest_needed - 1;
                    data.flags |= crate::outbox::datafile::OPEN;
                })?;
                main.sync_and_mark()?;
                format::write_header(journal.as_ref(), &mut next)?;
                next
            }
            _ => {
                // A new journal (or a journal holding nothing): the journal first, then
                // the data file is bound to it.
                let data = main.header();
                let previous = match &found {
                    Found::Nothing(header) => *header,
                    Found::Laps(header, _) => Some(*header),
                    Found::Unreadable => None,
                };
                let keep_id =
                    previous.filter(|header| header.store_id == data.store_id && lost.is_none());
                let mut next = recovery::fresh_header(&data, previous.as_ref(), half)?;
                if let Some(kept) = keep_id {
                    next.journal_id = kept.journal_id;
                }
                next.salt = salt;
                format::write_header(journal.as_ref(), &mut next)?;
                journal.sync_data()?;
                main.update_header(|data| {
                    data.journal_id = next.journal_id;
                    data.flushed_lap = next.oldest_needed - 1;
                    data.flags |= crate::outbox::datafile::OPEN;
                })?;
                main.sync_and_mark()?;
                next
            }
        };
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
        let lap = header.oldest_needed;
        let state = State {
            pending: Vec::new(),
            lap,
            seq: 0,
            position: half_start(lap, half),
            header,
            flush_requested: None,
            flushing: false,
            trickle: false,
            since_flush: 0,
            failed: false,
            closing: false,
            // Until a sync proved redb's first state durable in the data file itself (the
            // header's flag), syncs go to the data file, never to the journal.
            data_file_new: !main.header().initialized(),
        };
        let shared = Arc::new(Shared {
            main,
            journal,
            half,
            state: Mutex::new(state),
            changed: Condvar::new(),
            main_sync: Mutex::new(()),
            main_failed: AtomicBool::new(false),
            journal_failed: AtomicBool::new(false),
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
            Recovered { replayed, lost },
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

/// For a start with the journal off: check the journal against the data file, replay what it
/// holds, sync, move its header past every lap and unbind the data file, so the journal can
/// be removed. A refusal (under [`Policy::Strict`]) writes nothing.
pub fn retire(
    main: &DataFile,
    journal: &dyn StorageBackend,
    policy: Policy,
) -> Result<Recovered, JournalError> {
    let found = inspect(journal)?;
    let (continue_from, counts, lost) = decide(main, &found, policy)?;
    let mut replayed = Replayed::default();
    if let (Some(previous), Found::Laps(_, scan)) = (continue_from, &found) {
        replayed = recovery::replay(journal, main, &previous, scan, counts)?;
        let mut next = recovery::after_replay(&previous, previous.half);
        main.update_header(|data| data.flushed_lap = next.oldest_needed - 1)?;
        main.sync_and_mark()?;
        format::write_header(journal, &mut next)?;
        journal.sync_data()?;
    }
    if main.header().bound() {
        main.update_header(|data| data.journal_id = [0; 16])?;
        main.sync_and_mark()?;
    }
    Ok(Recovered { replayed, lost })
}

/// A journal of the first format beside a data file of the first format: replay it into that
/// file, sync, and mark it done, before the data file is converted.
pub fn retire_legacy(
    main: &dyn StorageBackend,
    journal: &dyn StorageBackend,
) -> io::Result<Replayed> {
    legacy::retire(main, journal)
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
        let _unwinding = FailOnUnwind(self);
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
            // Every write of `lap` went to the data file before the request; the data file's
            // header says so in the same sync.
            let synced = self.sync_main(lap);
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

    /// Write or sync the journal, unless an earlier write or sync of it failed; a failure is
    /// remembered at once, for good.
    fn journal_io(&self, io: impl FnOnce(&dyn StorageBackend) -> io::Result<()>) -> io::Result<()> {
        if self.journal_failed.load(Ordering::Acquire) {
            return Err(io::Error::other("an earlier journal write or sync failed"));
        }
        let result = io(self.journal.as_ref());
        if result.is_err() {
            self.journal_failed.store(true, Ordering::Release);
            self.main.mark_failed();
        }
        result
    }

    /// Sync the data file, one sync at a time, first recording in its header that lap
    /// `flushed` is in it (when given); a failure is remembered for good. The header is
    /// written under the same lock as the sync: two header writes between syncs would put
    /// both copies at risk at once, and a torn sync could then roll the header back past the
    /// generation the journal already relies on.
    fn sync_main(&self, flushed: Option<u64>) -> io::Result<()> {
        let _one_at_a_time = self
            .main_sync
            .lock()
            .map_err(|_| io::Error::other("the journal's lock is poisoned"))?;
        if self.main_failed.load(Ordering::Acquire) {
            return Err(io::Error::other("an earlier sync of the data file failed"));
        }
        let result = match flushed {
            Some(lap) => self
                .main
                .update_header(|data| data.flushed_lap = data.flushed_lap.max(lap))
                .and_then(|()| self.main.sync_and_mark()),
            None => self.main.sync_and_mark(),
        };
        if result.is_err() {
            self.main_failed.store(true, Ordering::Release);
        }
        result
    }

    /// Record in the header that laps before `oldest` are in the synced data file.
    fn advance(&self, state: &mut State, oldest: u64) -> io::Result<()> {
        if oldest <= state.header.oldest_needed {
            return Ok(());
        }
        if state.failed {
            // A write or sync of the journal failed meanwhile (the writer's commit): never
            // sync that file again in this handle; the reopen replays.
            return Err(io::Error::other("an earlier journal write or sync failed"));
        }
        if self.main_failed.load(Ordering::Acquire) {
            return Err(io::Error::other("an earlier sync of the data file failed"));
        }
        let mut next = JournalHeader {
            oldest_needed: oldest,
            ..state.header
        };
        self.journal_io(|journal| {
            format::write_header(journal, &mut next)?;
            journal.sync_data()
        })?;
        state.header = next;
        Ok(())
    }

    /// Start the next lap in the other half, once the lap that used it is flushed.
    fn next_lap<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
    ) -> io::Result<MutexGuard<'a, State>> {
        let next = state.lap + 1;
        // The other half holds lap `next - 2`: it must be in the synced data file first.
        while state.header.oldest_needed < next - 1 {
            if state.flush_requested.is_none() && !state.flushing {
                // Nothing in flight would ever flush that lap (not reached while the flusher
                // thread runs, since every finished lap is requested): flush here rather
                // than wait for good.
                self.sync_main(Some(next - 2))?;
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

    /// Make everything so far durable in the data file itself and move the journal past the
    /// current lap (a commit larger than a half, the first commit of a new store, a close).
    fn sync_through<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
    ) -> io::Result<MutexGuard<'a, State>> {
        let lap = state.lap;
        self.sync_main(Some(lap))?;
        state.data_file_new = !self.main.header().initialized();
        self.advance(&mut state, lap + 1)?;
        state.flush_requested = None;
        state.lap = lap + 1;
        state.seq = 0;
        state.position = half_start(lap + 1, self.half);
        state.clear_pending();
        Ok(state)
    }

    fn sync<'a>(&'a self, mut state: MutexGuard<'a, State>) -> io::Result<MutexGuard<'a, State>> {
        if state.pending.is_empty() {
            return Ok(state);
        }
        let len = state.pending.len();
        let record_len = (RECORD_HEADER_LEN + len) as u64;
        if record_len > self.half || (state.data_file_new && !self.main.header().initialized()) {
            // Larger than a half, or the data file's creation (until redb's first state is
            // durable in the data file itself): the writes are in the data file already, and
            // syncing it makes them (and every lap so far) durable.
            // (A flush running beside it only ever moves the headers forward.)
            return self.sync_through(state);
        }
        if state.position + record_len > half_start(state.lap, self.half) + self.half {
            state = self.next_lap(state)?;
        }
        let len_field = u32::try_from(len).map_err(|_| io::Error::other("record too large"))?;
        let header = record_header(
            state.header.salt,
            state.lap,
            state.seq,
            len_field,
            &state.pending,
        );
        let position = state.position;
        let pending = &state.pending;
        self.journal_io(|journal| {
            journal.write(position, &header)?;
            journal.write(position + RECORD_HEADER_LEN as u64, pending)?;
            journal.sync_data()
        })?;
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

/// Marks the journal and the data file failed if a panic unwinds through the operation it
/// guards: a write or sync that panicked is as untrusted as one that failed, and the close
/// must neither sync again nor mark the data file closed cleanly.
struct FailOnUnwind<'a>(&'a Shared);

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.journal_failed.store(true, Ordering::Release);
            self.0.main_failed.store(true, Ordering::Release);
            self.0.main.mark_failed();
        }
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
        let _unwinding = FailOnUnwind(&self.shared);
        let mut state = self.shared.state()?;
        let result = self.shared.main.set_len(len);
        failing(&mut state, result)?;
        state.pending.push(OP_SET_LEN);
        state.pending.extend_from_slice(&len.to_le_bytes());
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let _unwinding = FailOnUnwind(&self.shared);
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
        let _unwinding = FailOnUnwind(&self.shared);
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
        // A clean close leaves everything in the data file and unbinds it, so the journal
        // holds nothing an open must replay and the data file alone is the whole state.
        self.stop_flusher();
        let shared = &self.shared;
        let result = if shared.journal_failed.load(Ordering::Acquire)
            || shared.main_failed.load(Ordering::Acquire)
        {
            Err(io::Error::other(
                "an earlier write or sync failed; the journal is replayed at the next open",
            ))
        } else {
            shared.state().and_then(|state| {
                let _state = shared.sync_through(state)?;
                shared
                    .main
                    .update_header(|data| data.journal_id = [0; 16])?;
                shared.main.sync_and_mark()
            })
        };
        if result.is_err() {
            // The data file's close must not mark it closed cleanly either.
            shared.main.mark_failed();
        }
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
