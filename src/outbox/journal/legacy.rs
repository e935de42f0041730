//! The first journal format (`MFJRNL01`, before ADR 0007), kept only to upgrade a `DATA_DIR`
//! whose journal still holds commits: they are written into the plain redb data file of that
//! time, and the journal is marked as holding nothing, before the data file is converted.
//!
//! That format: header copies at 0 and 512 (`magic ‖ oldest needed lap ‖ size of a half ‖
//! crc32`), records from 4096 in two halves, `MFJR ‖ lap ‖ seq ‖ len ‖ crc32 ‖ ops`, the crc
//! unsalted; a lap ends at its first record that is missing, torn, out of sequence or of
//! another lap.

use std::io;

use redb::StorageBackend;

use super::format::{LEGACY_MAGIC, apply};
use super::recovery::Replayed;

const RECORDS_START: u64 = 4096;
const HEADER_LEN: usize = 28;
const RECORD_MAGIC: [u8; 4] = *b"MFJR";
const RECORD_HEADER_LEN: usize = 28;

/// The oldest needed lap and the size of a half, from the valid copy with the higher lap.
fn read_header(journal: &dyn StorageBackend) -> io::Result<Option<(u64, u64)>> {
    let len = journal.len()?;
    let mut best: Option<(u64, u64)> = None;
    for offset in [0u64, 512] {
        if offset + HEADER_LEN as u64 > len {
            continue;
        }
        let mut copy = [0u8; HEADER_LEN];
        journal.read(offset, &mut copy)?;
        let crc = u32::from_le_bytes([copy[24], copy[25], copy[26], copy[27]]);
        if copy[..8] != LEGACY_MAGIC || crc32fast::hash(&copy[..24]) != crc {
            continue;
        }
        let lap = u64::from_le_bytes(copy[8..16].try_into().map_err(io::Error::other)?);
        let half = u64::from_le_bytes(copy[16..24].try_into().map_err(io::Error::other)?);
        if best.is_none_or(|(best_lap, _)| lap > best_lap) {
            best = Some((lap, half));
        }
    }
    Ok(best)
}

fn write_header(journal: &dyn StorageBackend, lap: u64, half: u64) -> io::Result<()> {
    let mut copy = [0u8; HEADER_LEN];
    copy[..8].copy_from_slice(&LEGACY_MAGIC);
    copy[8..16].copy_from_slice(&lap.to_le_bytes());
    copy[16..24].copy_from_slice(&half.to_le_bytes());
    let crc = crc32fast::hash(&copy[..24]);
    copy[24..].copy_from_slice(&crc.to_le_bytes());
    let mut block = vec![0u8; RECORDS_START as usize];
    block[..HEADER_LEN].copy_from_slice(&copy);
    block[512..512 + HEADER_LEN].copy_from_slice(&copy);
    journal.write(0, &block)
}

fn replay_lap(
    journal: &dyn StorageBackend,
    main: Option<&dyn StorageBackend>,
    lap: u64,
    half: u64,
) -> io::Result<Replayed> {
    let start = RECORDS_START + (lap % 2) * half;
    let len = journal.len()?.min(start + half);
    let mut replayed = Replayed::default();
    let mut position = start;
    let mut header = [0u8; RECORD_HEADER_LEN];
    let mut payload = Vec::new();
    while position + RECORD_HEADER_LEN as u64 <= len {
        journal.read(position, &mut header)?;
        let field = |range: std::ops::Range<usize>| -> u64 {
            let mut bytes = [0u8; 8];
            bytes[..range.len()].copy_from_slice(&header[range]);
            u64::from_le_bytes(bytes)
        };
        let (record_lap, seq, payload_len) = (field(4..12), field(12..20), field(20..24));
        let crc = field(24..28) as u32;
        let end = position + RECORD_HEADER_LEN as u64 + payload_len;
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
        replayed.bytes += payload_len;
        position = end;
    }
    Ok(replayed)
}

/// Whether a journal of the first format still holds commits.
pub fn holds_commits(journal: &dyn StorageBackend) -> io::Result<bool> {
    let Some((oldest, half)) = read_header(journal)? else {
        return Ok(false);
    };
    Ok(replay_lap(journal, None, oldest, half)?.records > 0
        || replay_lap(journal, None, oldest + 1, half)?.records > 0)
}

/// Write what a journal of the first format holds into `main` (a plain redb file), sync it,
/// and mark every lap done (synced), so the journal holds nothing any more.
pub fn retire(main: &dyn StorageBackend, journal: &dyn StorageBackend) -> io::Result<Replayed> {
    let Some((oldest, half)) = read_header(journal)? else {
        return Ok(Replayed::default());
    };
    let mut replayed = Replayed::default();
    for lap in [oldest, oldest + 1] {
        let found = replay_lap(journal, Some(main), lap, half)?;
        replayed.records += found.records;
        replayed.bytes += found.bytes;
        if found.records == 0 {
            break;
        }
    }
    main.sync_data()?;
    write_header(journal, oldest + 2, half)?;
    journal.sync_data()?;
    Ok(replayed)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Write a first-format journal with `records` (each a list of writes) in lap 1.
    pub fn journal_with(journal: &dyn StorageBackend, writes: &[(u64, Vec<u8>)]) {
        let half = 64 << 10;
        journal.set_len(RECORDS_START + 2 * half).expect("length");
        write_header(journal, 1, half).expect("header");
        let mut position = RECORDS_START + half;
        for (seq, (offset, data)) in writes.iter().enumerate() {
            let mut payload = vec![super::super::format::OP_WRITE];
            payload.extend_from_slice(&offset.to_le_bytes());
            payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
            payload.extend_from_slice(data);
            let mut header = [0u8; RECORD_HEADER_LEN];
            header[..4].copy_from_slice(&RECORD_MAGIC);
            header[4..12].copy_from_slice(&1u64.to_le_bytes());
            header[12..20].copy_from_slice(&(seq as u64).to_le_bytes());
            header[20..24].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header[4..24]);
            hasher.update(&payload);
            header[24..].copy_from_slice(&hasher.finalize().to_le_bytes());
            journal.write(position, &header).expect("record");
            journal
                .write(position + RECORD_HEADER_LEN as u64, &payload)
                .expect("payload");
            position += (RECORD_HEADER_LEN + payload.len()) as u64;
        }
    }

    #[test]
    fn a_first_format_journal_is_replayed_then_holds_nothing() {
        let journal = redb::backends::InMemoryBackend::new();
        let main = redb::backends::InMemoryBackend::new();
        main.set_len(4096).expect("length");
        journal_with(&journal, &[(0, b"redb".to_vec()), (100, b"page".to_vec())]);
        assert!(holds_commits(&journal).expect("reads"));
        let replayed = retire(&main, &journal).expect("retires");
        assert_eq!(replayed.records, 2);
        let mut out = [0u8; 4];
        main.read(100, &mut out).expect("reads");
        assert_eq!(&out, b"page");
        assert!(!holds_commits(&journal).expect("reads"));
    }
}
