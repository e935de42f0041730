//! Recovery at open: find what the journal still holds, check that it belongs to this data
//! file and is whole, and only then write it into the data file. A refusal writes nothing.
//!
//! What "whole" means: records of a lap are written one after another and each is synced
//! before the next is written, so after a crash a lap ends at its first record that is torn
//! or missing, and nothing valid of that lap lies beyond it. A valid record further on means
//! a record in the middle was damaged afterwards. A new lap starts only when the next record
//! does not fit in the rest of the half, so an older lap that ends early while the next lap
//! has records lost its tail. Either way the later records cannot be replayed without the
//! lost ones, and dropping them silently would drop acknowledged commits: the open refuses,
//! and `mfoundry store recover --accept-loss` replays what comes before the damage.

use std::fmt;
use std::io;

use redb::StorageBackend;

use super::format::{
    JournalHeader, RECORD_HEADER_LEN, RecordHeader, apply, find_magic, half_start,
};
use crate::outbox::datafile::DataHeader;

/// Records and payload bytes written into the data file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Records written again into the data file.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// What one lap holds.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct LapScan {
    pub lap: u64,
    /// Valid records from the lap's start, in order.
    pub records: u64,
    pub bytes: u64,
    /// Where the valid records end.
    pub end: u64,
    /// Size of record 0 (header included), if any.
    pub first_len: Option<u64>,
    /// The seq of a valid record of this lap after the first invalid one.
    pub later_valid: Option<u64>,
    /// How many valid records of this lap lie after the first invalid one.
    pub later_records: u64,
}

/// What the laps a header still needs hold.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Scan {
    pub laps: [LapScan; 2],
    /// Records of the lap after those two exist (the header fell behind its records).
    pub beyond: bool,
}

impl Scan {
    /// Valid records in the needed laps (up to any damage).
    pub fn records(&self) -> u64 {
        self.laps[0].records + self.laps[1].records
    }

    /// Valid records in the needed laps, those beyond damage included.
    pub fn all_records(&self) -> u64 {
        self.records() + self.laps[0].later_records + self.laps[1].later_records
    }

    /// Whether the journal holds anything the data file may need (records, or damage).
    pub fn holds_anything(&self) -> bool {
        self.records() > 0 || self.laps.iter().any(|lap| lap.later_valid.is_some()) || self.beyond
    }

    /// How many records of each lap a replay may write: all of them when the journal is
    /// whole; accepting a loss, only what comes before the damage (the newer lap depends on
    /// every record of the older one; records of a lap beyond mean the older laps were
    /// flushed already, and replaying what is left of them would undo later commits).
    pub fn safe_prefix(&self, half: u64) -> [u64; 2] {
        let [older, newer] = &self.laps;
        if self.beyond {
            return [0, 0];
        }
        if older.later_valid.is_some() || self.older_ends_early(half) {
            return [older.records, 0];
        }
        [older.records, newer.records]
    }

    fn older_ends_early(&self, half: u64) -> bool {
        let [older, newer] = &self.laps;
        newer.first_len.is_some_and(|first| {
            older.end + first <= half_start(older.lap, half).saturating_add(half)
        })
    }

    /// What is damaged, if anything. `half` is the size of a half.
    pub fn damage(&self, half: u64) -> Option<String> {
        let [older, newer] = &self.laps;
        if let Some(seq) = older.later_valid {
            return Some(format!(
                "lap {} ends at record {}, but its record {seq} further on is intact: records \
                 in between are damaged",
                older.lap, older.records
            ));
        }
        if let Some(seq) = newer.later_valid {
            return Some(format!(
                "lap {} ends at record {}, but its record {seq} further on is intact: records \
                 in between are damaged",
                newer.lap, newer.records
            ));
        }
        if self.older_ends_early(half) {
            return Some(format!(
                "lap {} ends early (after {} records) although lap {} follows it: the end of \
                 lap {} is damaged or missing",
                older.lap, older.records, newer.lap, older.lap
            ));
        }
        if self.beyond {
            return Some(format!(
                "records of lap {} exist although the header still needs lap {}: the header \
                 is older than the records",
                older.lap + 2,
                older.lap
            ));
        }
        None
    }
}

/// Read lap `lap` from its half, without writing anything.
pub(super) fn scan_lap(
    journal: &dyn StorageBackend,
    header: &JournalHeader,
    lap: u64,
) -> io::Result<LapScan> {
    let start = header.half_start(lap);
    let len = journal.len()?.min(start.saturating_add(header.half));
    let mut scan = LapScan {
        lap,
        end: start,
        ..LapScan::default()
    };
    let mut position = start;
    let mut bytes = [0u8; RECORD_HEADER_LEN];
    let mut payload = Vec::new();
    while let Some(record) = read_record(
        journal,
        header.salt,
        position,
        len,
        &mut bytes,
        &mut payload,
    )? {
        if record.lap != lap || record.seq != scan.records {
            break;
        }
        if scan.records == 0 {
            scan.first_len = Some(record.total_len());
        }
        scan.records += 1;
        scan.bytes += u64::from(record.len);
        position += record.total_len();
        scan.end = position;
    }
    let (first, count) = search_after(journal, header.salt, lap, scan.records, position, len)?;
    scan.later_valid = first;
    scan.later_records = count;
    Ok(scan)
}

/// The valid record at `position` (magic, bounds and checksum), reading its payload into
/// `payload`; `None` when there is none.
fn read_record(
    journal: &dyn StorageBackend,
    salt: u64,
    position: u64,
    len: u64,
    bytes: &mut [u8; RECORD_HEADER_LEN],
    payload: &mut Vec<u8>,
) -> io::Result<Option<RecordHeader>> {
    if position + RECORD_HEADER_LEN as u64 > len {
        return Ok(None);
    }
    journal.read(position, bytes)?;
    let Some(record) = RecordHeader::parse(bytes) else {
        return Ok(None);
    };
    if position + record.total_len() > len {
        return Ok(None);
    }
    payload.resize(record.len as usize, 0);
    journal.read(position + RECORD_HEADER_LEN as u64, payload)?;
    Ok(record.matches(salt, payload).then_some(record))
}

/// Look past a lap's end for valid records of the same lap with later seqs: the first one's
/// seq, and how many there are.
fn search_after(
    journal: &dyn StorageBackend,
    salt: u64,
    lap: u64,
    next_seq: u64,
    from: u64,
    len: u64,
) -> io::Result<(Option<u64>, u64)> {
    const CHUNK: u64 = 1 << 20;
    let mut chunk_start = from.saturating_add(1);
    let mut buffer = Vec::new();
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut payload = Vec::new();
    let mut first = None;
    let mut count = 0;
    let mut seen_up_to = 0;
    while chunk_start + RECORD_HEADER_LEN as u64 <= len {
        // Chunks overlap by a record header, so a magic on a boundary is seen.
        let chunk_end = (chunk_start + CHUNK + RECORD_HEADER_LEN as u64).min(len);
        buffer.resize((chunk_end - chunk_start) as usize, 0);
        journal.read(chunk_start, &mut buffer)?;
        for found in find_magic(&buffer) {
            let position = chunk_start + found as u64;
            if position < seen_up_to {
                continue;
            }
            if let Some(record) =
                read_record(journal, salt, position, len, &mut header, &mut payload)?
                && record.lap == lap
                && record.seq >= next_seq
            {
                first.get_or_insert(record.seq);
                count += 1;
                seen_up_to = position + record.total_len();
            }
        }
        chunk_start += CHUNK;
    }
    Ok((first, count))
}

/// Read the two laps `header` still needs, and look for a lap beyond them.
pub(super) fn scan(journal: &dyn StorageBackend, header: &JournalHeader) -> io::Result<Scan> {
    let oldest = header.oldest_needed;
    let older = scan_lap(journal, header, oldest)?;
    let newer = scan_lap(journal, header, oldest + 1)?;
    // Lap oldest + 2 would reuse the older lap's half: only once the header moved past it.
    let start = header.half_start(oldest + 2);
    let len = journal.len()?.min(start.saturating_add(header.half));
    let mut bytes = [0u8; RECORD_HEADER_LEN];
    let mut payload = Vec::new();
    let beyond = matches!(
        read_record(journal, header.salt, start, len, &mut bytes, &mut payload)?,
        Some(record) if record.lap == oldest + 2 && record.seq == 0
    );
    Ok(Scan {
        laps: [older, newer],
        beyond,
    })
}

/// Write the first `counts[i]` records of each scanned lap into `main`, in order.
pub(super) fn replay(
    journal: &dyn StorageBackend,
    main: &dyn StorageBackend,
    header: &JournalHeader,
    scan: &Scan,
    counts: [u64; 2],
) -> io::Result<Replayed> {
    let mut replayed = Replayed::default();
    for (lap, count) in scan.laps.iter().zip(counts) {
        let start = header.half_start(lap.lap);
        let len = journal.len()?.min(start.saturating_add(header.half));
        let mut position = start;
        let mut bytes = [0u8; RECORD_HEADER_LEN];
        let mut payload = Vec::new();
        for _ in 0..count.min(lap.records) {
            let record = read_record(
                journal,
                header.salt,
                position,
                len,
                &mut bytes,
                &mut payload,
            )?
            .ok_or_else(|| io::Error::other("a journal record changed while replaying"))?;
            apply(main, &payload)?;
            replayed.records += 1;
            replayed.bytes += u64::from(record.len);
            position += record.total_len();
        }
    }
    Ok(replayed)
}

/// Why a journal is not replayed into a data file as they are. Each names the way out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The data file is bound to a journal, and the journal is missing or empty.
    JournalMissing,
    /// The data file is missing or empty beside a journal holding commits.
    DataMissing {
        /// Records the journal holds.
        records: u64,
    },
    /// The journal holds commits of another store.
    Foreign {
        /// Records it holds.
        records: u64,
    },
    /// The data file was closed cleanly or bound to another journal, yet this journal holds
    /// commits of the same store (files of different times side by side).
    Mismatched {
        /// Records it holds.
        records: u64,
    },
    /// The data file is older than the journal expects (restored from a backup alone).
    DataOlder {
        /// The lap the data file was synced to.
        flushed: u64,
        /// The oldest lap the journal needs.
        needed: u64,
    },
    /// The journal is older than the data file (restored from a backup alone).
    JournalOlder {
        /// The lap the data file was synced to.
        flushed: u64,
        /// The oldest lap the journal needs.
        needed: u64,
    },
    /// Records in the journal are damaged.
    Damaged {
        /// What.
        what: String,
    },
    /// The journal file is not one mfoundry wrote (or both header copies are damaged).
    Unreadable,
}

const RECOVER: &str = "`mfoundry store recover --accept-loss` opens the data file as it is, \
                       reports what is lost and records it in the audit trail";

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::JournalMissing => write!(
                formatter,
                "the data file was last used with a commit journal and not closed cleanly, but \
                 the journal (mfoundry.redb-journal) is missing or empty: commits may exist only \
                 there. Put the journal back beside the data file; if it is lost, {RECOVER}"
            ),
            Self::DataMissing { records } => write!(
                formatter,
                "the data file is missing or empty, but the journal still holds {records} \
                 commit(s) of a data file that was not closed cleanly. Put that data file back; \
                 if it was removed on purpose, remove the journal too (its commits belong to \
                 the removed file)"
            ),
            Self::Foreign { records } => write!(
                formatter,
                "the journal holds {records} commit(s) of another store, not of this data file \
                 (files of two DATA_DIRs mixed?). Put back this data file's own journal, or \
                 move the foreign one away; {RECOVER}"
            ),
            Self::Mismatched { records } => write!(
                formatter,
                "the journal holds {records} commit(s) that this data file does not expect (the \
                 data file and the journal come from different times, e.g. one restored from a \
                 backup alone). Restore both from the same backup; {RECOVER}"
            ),
            Self::DataOlder { flushed, needed } => write!(
                formatter,
                "the data file is older than its journal (synced up to lap {flushed}, the \
                 journal expects lap {}): it was restored from a backup without the journal. \
                 Restore the journal from the same backup, or remove it to start from the \
                 backup as it is; {RECOVER}",
                needed.saturating_sub(1)
            ),
            Self::JournalOlder { flushed, needed } => write!(
                formatter,
                "the journal is older than the data file (the data file was synced up to lap \
                 {flushed}, the journal still needs lap {needed}): replaying it would undo \
                 later commits. Restore both files from the same backup, or remove the journal \
                 if the data file is the newer state; {RECOVER}"
            ),
            Self::Damaged { what } => write!(
                formatter,
                "the journal is damaged: {what}. The later records cannot be replayed without \
                 the damaged ones; {RECOVER} (the records before the damage are replayed)"
            ),
            Self::Unreadable => write!(
                formatter,
                "the journal file has no valid header, so it is not a journal this mfoundry \
                 wrote (or it is damaged); move it away only if the data file was last closed \
                 cleanly or STORE_JOURNAL was never on; {RECOVER}"
            ),
        }
    }
}

/// What recovery decided for a data file and its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing in the journal is needed: start a new journal for this data file.
    Fresh,
    /// Replay the scanned laps.
    Replay,
    /// Refuse (or, accepting loss, open the data file as it is).
    Refuse(Refusal),
}

/// Decide what to do with `journal` (its header and scan) beside a data file with `data`
/// (`started`: redb's first state is in it).
pub(super) fn assess(
    data: &DataHeader,
    started: bool,
    journal: Option<(&JournalHeader, &Scan)>,
) -> Verdict {
    let Some((header, scan)) = journal else {
        return if data.bound() {
            Verdict::Refuse(Refusal::JournalMissing)
        } else {
            Verdict::Fresh
        };
    };
    let records = scan.records();
    let holds = scan.holds_anything();
    if data.store_id != header.store_id {
        return if holds {
            Verdict::Refuse(Refusal::Foreign { records })
        } else if data.bound() {
            Verdict::Refuse(Refusal::JournalMissing)
        } else {
            Verdict::Fresh
        };
    }
    if !data.bound() || data.journal_id != header.journal_id {
        return if holds {
            Verdict::Refuse(Refusal::Mismatched { records })
        } else if data.bound() {
            Verdict::Refuse(Refusal::JournalMissing)
        } else {
            Verdict::Fresh
        };
    }
    let (flushed, needed) = (data.flushed_lap, header.oldest_needed);
    if flushed.saturating_add(1) < needed {
        return Verdict::Refuse(Refusal::DataOlder { flushed, needed });
    }
    if flushed > needed.saturating_add(1) {
        return Verdict::Refuse(Refusal::JournalOlder { flushed, needed });
    }
    if let Some(what) = scan.damage(header.half) {
        return Verdict::Refuse(Refusal::Damaged { what });
    }
    if holds && !started {
        return Verdict::Refuse(Refusal::Damaged {
            what: "it holds commits of a data file whose first state was never synced".to_owned(),
        });
    }
    Verdict::Replay
}

/// A header for a journal with nothing to replay, bound to `data`'s store.
pub(super) fn fresh_header(
    data: &DataHeader,
    previous: Option<&JournalHeader>,
    half: u64,
) -> io::Result<JournalHeader> {
    let id = crate::outbox::datafile::random_id()?;
    Ok(JournalHeader {
        generation: previous.map_or(0, |header| header.generation),
        journal_id: id,
        store_id: data.store_id,
        salt: 0,
        // Above every lap of a previous journal in the file, so none of its records is
        // ever taken for one of the new journal's (the salt differs too).
        oldest_needed: previous.map_or(1, |header| header.oldest_needed + 2),
        half,
    })
}

/// The journal header that follows a replay: every replayed lap is in the synced data file.
pub(super) fn after_replay(header: &JournalHeader, half: u64) -> JournalHeader {
    JournalHeader {
        oldest_needed: header.oldest_needed + 2,
        half,
        ..*header
    }
}
