//! The journal file's layout (format 2, ADR 0007). All integers are little-endian.
//!
//! - Bytes `0..8192`: the header, two copies, one at 0 and one at 4096 (separate 4 KiB
//!   blocks), written alternately so a torn write leaves the other whole:
//!   `magic "MFJRNL02" (8) ‖ generation (8) ‖ journal id (16) ‖ store id (16) ‖ salt (8) ‖
//!   oldest needed lap (8) ‖ size of a half (8) ‖ crc32 (4)`. The valid copy with the higher
//!   generation counts.
//! - Then two halves of records: `magic "MFJ2" (4) ‖ lap (8) ‖ seq (8) ‖ len (4) ‖ crc32 (4) ‖
//!   payload (len)`, lap `l` in half `l % 2`, seq counting from 0 in each lap. The crc covers
//!   the salt, lap, seq, len and the payload: the salt is drawn anew at every open, so a
//!   record of an earlier run (or of another journal) can never pass for a new one.
//! - A payload is a list of operations on the data file (offsets as redb sees it):
//!   `1 ‖ offset (8) ‖ len (4) ‖ bytes` (a write) or `2 ‖ len (8)` (a new length).

use std::io;

use redb::StorageBackend;

/// Where the records start.
pub(super) const RECORDS_START: u64 = 8192;
const BLOCK: u64 = 4096;
const HEADER_MAGIC: [u8; 8] = *b"MFJRNL02";
/// The magic of the first journal format (before ADR 0007).
pub(super) const LEGACY_MAGIC: [u8; 8] = *b"MFJRNL01";
const HEADER_LEN: usize = 76;
const RECORD_MAGIC: [u8; 4] = *b"MFJ2";
pub(super) const RECORD_HEADER_LEN: usize = 28;
pub(super) const OP_WRITE: u8 = 1;
pub(super) const OP_SET_LEN: u8 = 2;

/// What the journal's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct JournalHeader {
    /// Counts header writes; the copy with the higher value is the current one.
    pub generation: u64,
    /// This journal's identity (the data file names it while bound to it).
    pub journal_id: [u8; 16],
    /// The store (data file) whose commits it holds.
    pub store_id: [u8; 16],
    /// Mixed into every record's checksum; new at every open.
    pub salt: u64,
    /// The oldest lap whose records may not be in the synced data file.
    pub oldest_needed: u64,
    /// Size of each half of the record area, as the run that wrote it had it.
    pub half: u64,
}

impl JournalHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&HEADER_MAGIC);
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..32].copy_from_slice(&self.journal_id);
        out[32..48].copy_from_slice(&self.store_id);
        out[48..56].copy_from_slice(&self.salt.to_le_bytes());
        out[56..64].copy_from_slice(&self.oldest_needed.to_le_bytes());
        out[64..72].copy_from_slice(&self.half.to_le_bytes());
        let crc = crc32fast::hash(&out[..72]);
        out[72..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; HEADER_LEN]) -> Option<Self> {
        let crc = u32::from_le_bytes(bytes[72..].try_into().ok()?);
        if bytes[..8] != HEADER_MAGIC || crc32fast::hash(&bytes[..72]) != crc {
            return None;
        }
        let header = Self {
            generation: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            journal_id: bytes[16..32].try_into().ok()?,
            store_id: bytes[32..48].try_into().ok()?,
            salt: u64::from_le_bytes(bytes[48..56].try_into().ok()?),
            oldest_needed: u64::from_le_bytes(bytes[56..64].try_into().ok()?),
            half: u64::from_le_bytes(bytes[64..72].try_into().ok()?),
        };
        // Values no writer produces (a checksum is no proof against a buggy or hostile
        // writer): the arithmetic on them must never overflow.
        let sane = header.half > 0
            && header.half <= MAX_HALF
            && header.oldest_needed <= MAX_LAP
            && header.generation < u64::MAX / 2;
        sane.then_some(header)
    }

    /// Where lap `lap` starts.
    pub(super) fn half_start(&self, lap: u64) -> u64 {
        half_start(lap, self.half)
    }
}

/// The largest half a header may name (far above any `STORE_JOURNAL_CAPACITY`).
const MAX_HALF: u64 = 1 << 44;
/// The highest lap a header may name (a lap per microsecond would take thousands of years).
const MAX_LAP: u64 = 1 << 60;

/// Where lap `lap` starts in a journal with halves of `half` bytes.
pub(super) fn half_start(lap: u64, half: u64) -> u64 {
    RECORDS_START + (lap % 2) * half
}

/// What the start of a journal file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// Nothing yet (an empty file, or zeros): a new journal.
    Empty,
    /// A valid header.
    Valid(JournalHeader),
    /// A journal of the first format (before ADR 0007).
    Legacy,
    /// Bytes that are not a journal mfoundry wrote, or both header copies damaged.
    Unreadable,
}

/// Read the header: the valid copy with the higher generation.
pub fn read_header(journal: &dyn StorageBackend) -> io::Result<HeaderRead> {
    let len = journal.len()?;
    if len == 0 {
        return Ok(HeaderRead::Empty);
    }
    let mut best: Option<JournalHeader> = None;
    let mut legacy = false;
    for block in 0..2 {
        let offset = block * BLOCK;
        if offset + HEADER_LEN as u64 > len {
            continue;
        }
        let mut copy = [0u8; HEADER_LEN];
        journal.read(offset, &mut copy)?;
        legacy |= copy[..8] == LEGACY_MAGIC;
        if let Some(header) = JournalHeader::decode(&copy)
            && best.is_none_or(|best| header.generation > best.generation)
        {
            best = Some(header);
        }
    }
    // The first format kept its copies at 0 and 512.
    if best.is_none() && len >= 520 {
        let mut magic = [0u8; 8];
        journal.read(512, &mut magic)?;
        legacy |= magic == LEGACY_MAGIC;
    }
    Ok(match best {
        Some(header) => HeaderRead::Valid(header),
        None if legacy => HeaderRead::Legacy,
        None if is_zero(journal, len.min(RECORDS_START))? => HeaderRead::Empty,
        None => HeaderRead::Unreadable,
    })
}

fn is_zero(journal: &dyn StorageBackend, len: u64) -> io::Result<bool> {
    let mut buffer = vec![0u8; len as usize];
    journal.read(0, &mut buffer)?;
    Ok(buffer.iter().all(|&byte| byte == 0))
}

/// Write the next generation of `header` into the block of the older copy (no sync).
pub fn write_header(journal: &dyn StorageBackend, header: &mut JournalHeader) -> io::Result<()> {
    header.generation += 1;
    let offset = (header.generation % 2) * BLOCK;
    journal.write(offset, &header.encode())
}

/// A record's header for `payload`.
pub(super) fn record_header(
    salt: u64,
    lap: u64,
    seq: u64,
    len: u32,
    payload: &[u8],
) -> [u8; RECORD_HEADER_LEN] {
    let mut out = [0u8; RECORD_HEADER_LEN];
    out[..4].copy_from_slice(&RECORD_MAGIC);
    out[4..12].copy_from_slice(&lap.to_le_bytes());
    out[12..20].copy_from_slice(&seq.to_le_bytes());
    out[20..24].copy_from_slice(&len.to_le_bytes());
    let crc = record_crc(salt, &out[4..24], payload);
    out[24..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn record_crc(salt: u64, fields: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(fields);
    hasher.update(payload);
    hasher.finalize()
}

/// A record's header fields, unchecked.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecordHeader {
    pub lap: u64,
    pub seq: u64,
    pub len: u32,
    crc: u32,
    fields: [u8; 20],
}

impl RecordHeader {
    /// Parse a header; `None` when the magic is not there.
    pub(super) fn parse(bytes: &[u8; RECORD_HEADER_LEN]) -> Option<Self> {
        if bytes[..4] != RECORD_MAGIC {
            return None;
        }
        let mut fields = [0u8; 20];
        fields.copy_from_slice(&bytes[4..24]);
        Some(Self {
            lap: u64::from_le_bytes(bytes[4..12].try_into().ok()?),
            seq: u64::from_le_bytes(bytes[12..20].try_into().ok()?),
            len: u32::from_le_bytes(bytes[20..24].try_into().ok()?),
            crc: u32::from_le_bytes(bytes[24..28].try_into().ok()?),
            fields,
        })
    }

    /// Whether `payload` is this record's, under `salt`.
    pub(super) fn matches(&self, salt: u64, payload: &[u8]) -> bool {
        record_crc(salt, &self.fields, payload) == self.crc
    }

    /// Bytes from the record's start to its end.
    pub(super) fn total_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Finds the record magic in a buffer (for the search past a damaged record).
pub(super) fn find_magic(haystack: &[u8]) -> memchr::memmem::FindIter<'_, 'static> {
    memchr::memmem::find_iter(haystack, &RECORD_MAGIC)
}

/// Apply a record's operations to the data file. A record whose checksum matched but whose
/// operations do not parse was not written by this code: an error, not a silent stop.
pub(super) fn apply(main: &dyn StorageBackend, payload: &[u8]) -> io::Result<()> {
    let malformed = || io::Error::other("a journal record is malformed");
    let mut rest = payload;
    while let Some((&op, tail)) = rest.split_first() {
        match op {
            OP_WRITE => {
                let (offset, tail) = tail.split_at_checked(8).ok_or_else(malformed)?;
                let (len, tail) = tail.split_at_checked(4).ok_or_else(malformed)?;
                let offset = u64::from_le_bytes(offset.try_into().map_err(|_| malformed())?);
                let len = u32::from_le_bytes(len.try_into().map_err(|_| malformed())?) as usize;
                let (data, tail) = tail.split_at_checked(len).ok_or_else(malformed)?;
                main.write(offset, data)?;
                rest = tail;
            }
            OP_SET_LEN => {
                let (len, tail) = tail.split_at_checked(8).ok_or_else(malformed)?;
                main.set_len(u64::from_le_bytes(len.try_into().map_err(|_| malformed())?))?;
                rest = tail;
            }
            _ => return Err(malformed()),
        }
    }
    Ok(())
}
