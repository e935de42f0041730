//! The journal on a simulated disk of two files: crashes at any operation, unsynced writes
//! kept or torn, failed syncs, and files that do not belong together.

use super::*;
use crate::outbox::datafile::{DataFile, Layout, read_layout};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};

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

/// The data file as the open finds it: created when new, opened otherwise.
fn data_file(main: SimFile) -> DataFile {
    match read_layout(&main).expect("layout") {
        Layout::New => {
            let data = DataFile::create(Box::new(main)).expect("creates");
            data.inner().sync_data().expect("syncs");
            data
        }
        Layout::Current(header) => DataFile::open(Box::new(main), header).expect("opens"),
        other => panic!("unexpected layout {other:?}"),
    }
}

fn try_open(
    disk: &Arc<Mutex<Disk>>,
    capacity: u64,
    policy: Policy,
) -> Result<(Journaled, Recovered), JournalError> {
    let (main, journal) = files(disk);
    Journaled::open(data_file(main), Box::new(journal), capacity, policy)
}

fn open(disk: &Arc<Mutex<Disk>>, capacity: u64) -> (Database, Replayed) {
    let (backend, recovered) = try_open(disk, capacity, Policy::Strict).expect("journal opens");
    let database = Database::builder()
        .create_with_backend(backend)
        .expect("database opens");
    (database, recovered.replayed)
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
    let mut keys = keys.into_iter().peekable();
    if keys.peek().is_none() {
        return;
    }
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

/// A data file deleted after a crash, its journal left behind: the journal says it holds
/// commits (so the open refuses to create a new data file beside it), a new data file beside
/// it is refused as another store's, nothing is written, and accepting the loss starts anew.
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
    assert!(
        held_records(&journal_file).expect("reads").unwrap_or(0) >= 3,
        "the journal holds the three commits"
    );
    let data = data_file(main);
    let before = durable(&disk);
    let error = retire(&data, &journal_file, Policy::Strict).expect_err("retiring is refused");
    assert!(
        matches!(error, JournalError::Refused(Refusal::Foreign { .. })),
        "{error}"
    );
    let error = Journaled::open(data, Box::new(journal_file), 256 << 10, Policy::Strict)
        .expect_err("refused");
    assert!(error.to_string().contains("of another store"), "{error}");
    assert_eq!(durable(&disk), before, "a refusal writes nothing");
    let (_, recovered) = try_open(&disk, 256 << 10, Policy::AcceptLoss).expect("accepting loss");
    let (refusal, records) = recovered.lost.expect("the loss is reported");
    assert!(matches!(refusal, Refusal::Foreign { .. }));
    assert!(records >= 3, "{records}");
}

/// A crash at every operation of a new store's first open and commits, then a reopen: it is
/// never refused, redb always opens it (a creation cut short is discarded, since nothing in
/// it was ever committed), and every returned commit is there.
#[test]
fn a_new_store_crashed_at_any_point_is_never_refused() {
    const CAPACITY: u64 = 16 << 20;
    let run = |crash_at: u64| {
        let disk = disk_with([Vec::new(), Vec::new()]);
        disk.lock().expect("disk lock").crash_at = crash_at;
        // Large enough that no trickle sync (a flusher thread's, timed by the scheduler)
        // changes the count of operations from one run to the next.
        let (database, _) = open(&disk, CAPACITY);
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
        (operations, image, acknowledged)
    };
    let (operations, _, _) = run(u64::MAX);
    for crash_at in 1..=operations {
        let (_, image, acknowledged) = run(crash_at);
        let Some(image) = image else {
            // Fewer operations this time: no crash to recover from.
            continue;
        };
        let disk = disk_with(image);
        let (backend, _) = try_open(&disk, CAPACITY, Policy::Strict)
            .unwrap_or_else(|error| panic!("crash at operation {crash_at}: {error}"));
        let database = Database::builder()
            .create_with_backend(backend)
            .unwrap_or_else(|error| panic!("crash at operation {crash_at}: {error}"));
        assert_keys(&database, acknowledged, 500);
    }
}

/// A journal file that is not one (no valid header, not zeros) is refused with a reason,
/// never replayed or overwritten.
#[test]
fn a_file_that_is_not_a_journal_is_refused() {
    let disk = disk_with([Vec::new(), b"not a journal".repeat(100)]);
    let error = try_open(&disk, 256 << 10, Policy::Strict).expect_err("refused");
    assert!(error.to_string().contains("no valid header"), "{error}");
    assert!(
        disk.lock().expect("disk lock").files[1]
            .cache
            .starts_with(b"not a journal")
    );
}

/// Where the records of lap `lap` lie in a journal: (position, total length) of each valid
/// record, read with the journal's current header.
fn record_positions(journal: &[u8], lap: u64) -> (JournalHeader, Vec<(u64, u64)>) {
    let disk = disk_with([Vec::new(), journal.to_vec()]);
    let (_, file) = files(&disk);
    let HeaderRead::Valid(header) = format::read_header(&file).expect("reads") else {
        panic!("a valid header")
    };
    let mut position = format::half_start(lap, header.half);
    let mut out = Vec::new();
    loop {
        let mut bytes = [0u8; RECORD_HEADER_LEN];
        if position as usize + RECORD_HEADER_LEN > journal.len() {
            break;
        }
        bytes.copy_from_slice(&journal[position as usize..position as usize + RECORD_HEADER_LEN]);
        let Some(record) = format::RecordHeader::parse(&bytes) else {
            break;
        };
        if record.lap != lap {
            break;
        }
        out.push((position, record.total_len()));
        position += record.total_len();
    }
    (header, out)
}

/// A store that crashed with `commits` journaled commits: its durable files.
fn crashed_with_commits(commits: u64) -> [Vec<u8>; 2] {
    let (disk, database) = new_store(16 << 20);
    for key in 0..commits {
        assert!(commit_key(&database, key, 700));
    }
    std::mem::forget(database);
    durable(&disk)
}

/// A damaged record in the middle of a lap, with intact records after it: the open refuses
/// and writes nothing (the later records would be dropped silently otherwise); accepting the
/// loss replays the records before the damage.
#[test]
fn a_damaged_record_in_the_middle_of_a_lap_is_refused() {
    let [data, mut journal] = crashed_with_commits(6);
    let (header, records) = record_positions(&journal, {
        let disk = disk_with([Vec::new(), journal.clone()]);
        let (_, file) = files(&disk);
        let HeaderRead::Valid(header) = format::read_header(&file).expect("reads") else {
            panic!("header")
        };
        header.oldest_needed
    });
    assert!(records.len() >= 5, "{records:?} ({header:?})");
    // Flip a byte inside record 2's payload.
    let (position, _) = records[2];
    journal[position as usize + RECORD_HEADER_LEN + 3] ^= 0x40;
    let disk = disk_with([data, journal]);
    let before = durable(&disk);
    let error = try_open(&disk, 16 << 20, Policy::Strict).expect_err("refused");
    let text = error.to_string();
    assert!(
        text.contains("damaged") && text.contains("record 2") && text.contains("--accept-loss"),
        "{text}"
    );
    assert_eq!(durable(&disk), before, "a refusal writes nothing");
    let (_, recovered) = try_open(&disk, 16 << 20, Policy::AcceptLoss).expect("accepting loss");
    assert_eq!(
        recovered.replayed.records, 2,
        "the records before the damage"
    );
    let (refusal, lost) = recovered.lost.expect("reported");
    assert!(matches!(refusal, Refusal::Damaged { .. }));
    // Given up: the intact records after the damaged one.
    assert_eq!(lost, records.len() as u64 - 3);
}

/// The last record torn (a crash while it was written) is the ordinary end of a lap, not
/// damage: the open replays the records before it.
#[test]
fn a_torn_last_record_is_the_end_of_the_journal() {
    let [data, mut journal] = crashed_with_commits(4);
    let oldest = {
        let disk = disk_with([Vec::new(), journal.clone()]);
        let (_, file) = files(&disk);
        let HeaderRead::Valid(header) = format::read_header(&file).expect("reads") else {
            panic!("header")
        };
        header.oldest_needed
    };
    let (_, records) = record_positions(&journal, oldest);
    let (position, len) = *records.last().expect("a record");
    for byte in &mut journal[(position + len / 2) as usize..(position + len) as usize] {
        *byte = 0;
    }
    let disk = disk_with([data, journal]);
    let (_, recovered) = try_open(&disk, 16 << 20, Policy::Strict).expect("opens");
    assert_eq!(recovered.replayed.records, records.len() as u64 - 1);
}

/// Files that do not belong together are refused before anything is written: a data file
/// restored from an older backup beside a newer journal, a journal beside a data file that
/// was closed cleanly before the journal's commits, and a data file bound to a journal that
/// is missing.
#[test]
fn files_of_different_times_are_refused() {
    const CAPACITY: u64 = 256 << 10;
    // A data file backed up early (synced up to an early lap)...
    let (disk, database) = new_store(CAPACITY);
    assert!(commit_key(&database, 0, 500));
    drop(database);
    let early = durable(&disk);
    // ... and the same store later, crashed after many laps.
    let disk = disk_with(early.clone());
    let (database, _) = open(&disk, CAPACITY);
    for key in 1..400 {
        assert!(commit_key(&database, key, 2000), "key {key}");
    }
    std::mem::forget(database);
    let [_, late_journal] = durable(&disk);
    let mixed = disk_with([early[0].clone(), late_journal]);
    let before = durable(&mixed);
    let error = try_open(&mixed, CAPACITY, Policy::Strict).expect_err("refused");
    assert!(
        matches!(
            error,
            JournalError::Refused(Refusal::Mismatched { .. } | Refusal::DataOlder { .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("backup"), "{error}");
    assert_eq!(durable(&mixed), before, "a refusal writes nothing");

    // A data file bound to a journal that is gone.
    let (disk, database) = new_store(CAPACITY);
    assert!(commit_key(&database, 0, 500));
    std::mem::forget(database);
    let [data, _] = durable(&disk);
    let missing = disk_with([data, Vec::new()]);
    let error = try_open(&missing, CAPACITY, Policy::Strict).expect_err("refused");
    assert!(
        matches!(error, JournalError::Refused(Refusal::JournalMissing)),
        "{error}"
    );
    assert!(
        error.to_string().contains("Put the journal back"),
        "{error}"
    );
}

/// After a clean close the data file is unbound and holds everything: removing the journal
/// then loses nothing and is not refused.
#[test]
fn after_a_clean_close_the_data_file_alone_is_the_state() {
    let (disk, database) = new_store(256 << 10);
    for key in 0..20 {
        assert!(commit_key(&database, key, 900));
    }
    drop(database);
    let [data, _] = durable(&disk);
    let (database, replayed) = open(&disk_with([data, Vec::new()]), 256 << 10);
    assert_eq!(replayed, Replayed::default());
    assert_keys(&database, 0..20, 900);
}

/// The journal's header copies are written alternately in two blocks, so a write torn by a
/// crash leaves the previous copy whole. A synced copy damaged later leaves an older header
/// that no longer matches the records: the open refuses (writing nothing) rather than replay
/// laps the header says are done or skip ones it needs.
#[test]
fn a_damaged_header_copy_falls_back_to_the_older_one_or_is_refused() {
    let [data, mut journal] = crashed_with_commits(3);
    let disk = disk_with([Vec::new(), journal.clone()]);
    let (_, file) = files(&disk);
    let HeaderRead::Valid(header) = format::read_header(&file).expect("reads") else {
        panic!("header")
    };
    let block = (header.generation % 2) as usize * 4096;
    journal[block + 20] ^= 0xFF;
    let (_, file) = files(&disk_with([Vec::new(), journal.clone()]));
    let HeaderRead::Valid(older) = format::read_header(&file).expect("reads") else {
        panic!("the other copy is valid")
    };
    assert_eq!(older.generation, header.generation - 1);
    let damaged = disk_with([data, journal]);
    let before = durable(&damaged);
    let error = try_open(&damaged, 16 << 20, Policy::Strict).expect_err("refused");
    assert!(error.to_string().contains("damaged"), "{error}");
    assert_eq!(durable(&damaged), before, "a refusal writes nothing");
}
