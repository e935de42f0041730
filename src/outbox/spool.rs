//! Spooled bodies (ADR 0020, amending ADR 0002): a DICOM object larger than its listener's
//! `inline_object_size` is written to a file of its own while it arrives, instead of being
//! held in memory, and the store keeps only where it is.
//!
//! The files live in the spool directory beside the data file (`mfoundry.redb-spool/`), one
//! per body, named by a random 128-bit id (`<32 hex digits>.obj`). A file is complete and
//! synced (file, then directory) before the transaction that stores its message is
//! committed, and that transaction writes the `spool` table's entry (message id → file id,
//! length, SHA-256 of the data set) with the message's record and queue entries: a file is
//! either named by a committed entry or an orphan. Orphans (a crash between the file and
//! the commit, a store that failed, a body removed by retention whose file could not be
//! deleted) are removed when the store is opened. Retention removes the entry in its
//! transaction and the file once that transaction is committed.
//!
//! A file is `"MFSPOOL1" ‖ store instance id (8, BE) ‖ file id (16, BE)`, then frames of
//! `length (4, LE) ‖ crc32 (4, LE) ‖ chunk`: each chunk is `0x01 ‖ up to 256 KiB of the
//! body`, sealed like every stored value (ADR 0011) under the place `spool-file (id, index)`
//! when the store has a key; the crc covers the file id and the chunk's index before the
//! chunk, so a chunk moved within or between files is damage, sealed or not. The reader
//! checks every frame's crc, the chunks' order and the total length, and refuses a file
//! that ends early or goes on. Files are created with mode 0600.
//!
//! The sweep at open removes only this store's files (its instance id in their header) and
//! files too short to have a header; another store's files are left, with a warning.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use super::crypt::{Keys, Place};
use super::schema::Record;

/// How much of a spooled body views read (the message view, reprocess, the patient index
/// rebuild): an object's identifiers are in its first bytes.
pub const VIEW_HEAD: usize = 16 << 20;

/// `message id → encoded SpoolRef` (format 8).
pub const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");
/// `file id → message id`: which message a file is the body of (format 8; ids only, no
/// patient data). A request retried after a commit that did reach the disk finds its file
/// here and is answered as stored, never stored twice under one file.
pub const SPOOL_FILES: TableDefinition<u128, u64> = TableDefinition::new("spool_files");

const MAGIC: &[u8; 8] = b"MFSPOOL1";
const HEADER_LEN: usize = 8 + 8 + 16;
/// Body bytes per chunk.
const CHUNK: usize = 256 << 10;
/// The first byte of a chunk's plain value.
const CHUNK_MARK: u8 = 1;
/// The file name's ending.
const EXTENSION: &str = "obj";

/// Where a spooled body is: its file, its length and the SHA-256 of its data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolRef {
    /// The file's id.
    pub file: u128,
    /// The body's length in bytes.
    pub len: u64,
    /// SHA-256 of the body from `hashed_from` on (a DICOM object's data set).
    pub digest: [u8; 32],
}

impl Record for SpoolRef {
    const REVISION: u8 = 1;
}

/// The spool directory of one store.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    keys: Keys,
    /// The store's instance id, written into every file (what the sweep removes).
    store: u64,
}

impl Spool {
    /// The spool directory `dir` (see [`dir_of`]), created (with its name made durable)
    /// when missing.
    pub fn open(dir: PathBuf, keys: Keys, store: u64) -> io::Result<Self> {
        let spool = Self { dir, keys, store };
        if !spool.dir.try_exists()? {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(&spool.dir)?;
            if let Some(parent) = spool.dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(spool)
    }

    /// The spool directory `dir` as it is, to read (nothing created: `store verify`).
    pub fn reading(dir: PathBuf, keys: Keys) -> Self {
        Self {
            dir,
            keys,
            store: 0,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, file: u128) -> PathBuf {
        self.dir.join(format!("{file:032x}.{EXTENSION}"))
    }

    /// Start a spooled body; the digest covers the bytes from `hashed_from` on.
    pub fn create(&self, hashed_from: usize) -> io::Result<SpoolWriter> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|error| io::Error::other(error.to_string()))?;
        let id = u128::from_be_bytes(id);
        let path = self.path(id);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&path)?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.store.to_be_bytes());
        header.extend_from_slice(&id.to_be_bytes());
        let written = file.write_all(&header);
        let writer = SpoolWriter {
            id,
            path,
            dir: self.dir.clone(),
            file: Some(file),
            keys: self.keys.clone(),
            buffer: Vec::with_capacity(CHUNK),
            index: 0,
            len: 0,
            hashed_from: hashed_from as u64,
            hash: Sha256::new(),
        };
        written?;
        Ok(writer)
    }

    /// The whole body.
    pub fn read(&self, reference: &SpoolRef) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(usize::try_from(reference.len).unwrap_or(0));
        self.read_into(reference, u64::MAX, &mut |chunk| {
            out.extend_from_slice(chunk)
        })?;
        Ok(out)
    }

    /// At most the first `max` bytes of the body (whole chunks are checked).
    pub fn read_head(&self, reference: &SpoolRef, max: usize) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        self.read_into(reference, max as u64, &mut |chunk| {
            out.extend_from_slice(chunk);
        })?;
        out.truncate(max);
        Ok(out)
    }

    /// Read the whole body, a chunk at a time, checking it (`store verify`).
    pub fn check(&self, reference: &SpoolRef) -> Result<(), StoreError> {
        self.read_into(reference, u64::MAX, &mut |_| {})
    }

    /// The body, a chunk at a time, to `sink` (up to `max` bytes, whole chunks).
    pub fn read_into(
        &self,
        reference: &SpoolRef,
        max: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), StoreError> {
        let damaged = |what: String| StoreError::Damaged(format!("its spooled file {what}"));
        let path = self.path(reference.file);
        let file = File::open(&path).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                damaged(format!("{} is missing", path.display()))
            } else {
                StoreError::from(error)
            }
        })?;
        let mut reader = BufReader::with_capacity(CHUNK + 64, file);
        let mut header = [0u8; HEADER_LEN];
        read_exact_or(&mut reader, &mut header).map_err(|_| damaged("has no header".to_owned()))?;
        if &header[..8] != MAGIC || header[16..] != reference.file.to_be_bytes() {
            return Err(damaged("is not the one its record names".to_owned()));
        }
        let (high, low) = halves(reference.file);
        let mut total = 0u64;
        let mut index = 0u64;
        loop {
            if total >= max && total < reference.len {
                return Ok(());
            }
            let cut = |error: io::Error| {
                if error.kind() == io::ErrorKind::UnexpectedEof {
                    damaged("ends inside a chunk".to_owned())
                } else {
                    StoreError::from(error)
                }
            };
            let mut frame = [0u8; 8];
            match read_exact_or(&mut reader, &mut frame).map_err(cut)? {
                false if total == reference.len => return Ok(()),
                false => {
                    return Err(damaged(format!(
                        "ends early ({total} of {} bytes)",
                        reference.len
                    )));
                }
                true => {}
            }
            if total == reference.len {
                return Err(damaged("goes on past its length".to_owned()));
            }
            let length = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
            if length > CHUNK + 1 + super::crypt::OVERHEAD {
                return Err(damaged(format!("has a chunk of {length} bytes")));
            }
            let mut stored = vec![0u8; length];
            if !read_exact_or(&mut reader, &mut stored).map_err(cut)? {
                return Err(damaged("ends inside a chunk".to_owned()));
            }
            if chunk_crc(reference.file, index, &stored) != crc {
                return Err(damaged(format!("fails its checksum at chunk {index}")));
            }
            let plain = self
                .keys
                .open(Place::SpoolChunk(high, low, index), &stored)
                .map_err(|error| damaged(format!("chunk {index}: {}", detail(&error))))?;
            let Some((&CHUNK_MARK, body)) = plain.split_first() else {
                return Err(damaged(format!("chunk {index} is not a chunk")));
            };
            total += body.len() as u64;
            if total > reference.len {
                return Err(damaged("goes on past its length".to_owned()));
            }
            sink(body);
            index += 1;
        }
    }

    /// Delete a body's file (its entry is gone); a failure is logged and left to the
    /// orphan sweep at the next open.
    pub fn remove(&self, file: u128) {
        let path = self.path(file);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "a spooled file could not be removed; the next start removes it");
            }
        }
    }

    /// Remove this store's files that no entry names (`referenced`): what a crash, a failed
    /// store or a failed removal left. Only `<id>.obj` files are looked at; one written by
    /// another store (another instance id in its header) is left and counted. Returns
    /// (removed, another store's).
    pub fn sweep(&self, referenced: &HashSet<u128>) -> io::Result<(usize, usize)> {
        let mut removed = 0;
        let mut foreign = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|name| name.strip_suffix(&format!(".{EXTENSION}")))
                .filter(|id| id.len() == 32)
                .and_then(|id| u128::from_str_radix(id, 16).ok())
            else {
                continue;
            };
            if referenced.contains(&id) || !entry.file_type()?.is_file() {
                continue;
            }
            let mut header = [0u8; HEADER_LEN];
            let whole = match File::open(entry.path())
                .and_then(|mut file| read_exact_or(&mut file, &mut header))
            {
                Ok(whole) => whole,
                // Cut before its header was whole: a crash right after it was created.
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => false,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                // Not readable (another user's, a failing disk): not known to be ours.
                Err(_) => {
                    foreign += 1;
                    continue;
                }
            };
            let ours =
                !whole || (&header[..8] == MAGIC && header[8..16] == self.store.to_be_bytes());
            if !ours {
                foreign += 1;
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok((removed, foreign))
    }

    /// Whether a body's file is there.
    pub fn exists(&self, file: u128) -> bool {
        self.path(file).exists()
    }

    /// Copy a body into a new file sealed with `keys` (`store rekey`); the old file stays
    /// until its store is replaced.
    pub fn reseal(&self, reference: &SpoolRef, keys: &Keys) -> Result<SpoolRef, StoreError> {
        let target = Self {
            dir: self.dir.clone(),
            keys: keys.clone(),
            store: self.store,
        };
        let mut writer = target.create(0)?;
        // Chunk by chunk: a large body is never held whole.
        let mut written = Ok(());
        self.read_into(reference, u64::MAX, &mut |chunk| {
            if written.is_ok() {
                written = writer.write(chunk);
            }
        })?;
        written?;
        let mut spooled = writer.finish()?;
        spooled.keep();
        Ok(SpoolRef {
            digest: reference.digest,
            ..spooled.reference
        })
    }
}

/// The spool directory of the store whose data file is `data`.
pub fn dir_of(data: &Path) -> PathBuf {
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push("-spool");
    data.with_file_name(name)
}

/// A frame's crc: of the file id and the chunk's index, then the stored chunk.
fn chunk_crc(file: u128, index: u64, stored: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&file.to_be_bytes());
    hasher.update(&index.to_le_bytes());
    hasher.update(stored);
    hasher.finalize()
}

fn halves(file: u128) -> (u64, u64) {
    ((file >> 64) as u64, file as u64)
}

fn detail(error: &StoreError) -> String {
    match error {
        StoreError::Damaged(detail) => detail.clone(),
        other => other.to_string(),
    }
}

/// Fill `buffer`; false when the reader was at its end, an error when it ended part way.
fn read_exact_or(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A body being written. Dropped before [`SpoolWriter::finish`], its file is removed.
pub struct SpoolWriter {
    id: u128,
    path: PathBuf,
    dir: PathBuf,
    file: Option<File>,
    keys: Keys,
    buffer: Vec<u8>,
    index: u64,
    len: u64,
    hashed_from: u64,
    hash: Sha256,
}

impl std::fmt::Debug for SpoolWriter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SpoolWriter")
            .field("file", &format_args!("{:032x}", self.id))
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl SpoolWriter {
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append body bytes.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let skip = self.hashed_from.saturating_sub(self.len);
        let hashed = usize::try_from(skip).map_or(&[][..], |skip| bytes.get(skip..).unwrap_or(&[]));
        self.hash.update(hashed);
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = CHUNK - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut plain = Vec::with_capacity(self.buffer.len() + 1);
        plain.push(CHUNK_MARK);
        plain.extend_from_slice(&self.buffer);
        self.buffer.clear();
        let (high, low) = halves(self.id);
        let stored = self
            .keys
            .seal(Place::SpoolChunk(high, low, self.index), plain);
        self.index += 1;
        let mut frame = Vec::with_capacity(8 + stored.len());
        frame.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        frame.extend_from_slice(&chunk_crc(self.id, self.index - 1, &stored).to_le_bytes());
        frame.extend_from_slice(&stored);
        match self.file.as_mut() {
            Some(file) => file.write_all(&frame),
            None => Err(io::Error::other("the spooled file is closed")),
        }
    }

    /// Write what is buffered and make the file durable (file, then directory).
    pub fn finish(mut self) -> io::Result<Spooled> {
        self.flush_chunk()?;
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("the spooled file is closed"))?;
        file.sync_all()?;
        drop(file);
        sync_dir(&self.dir)?;
        let hash = std::mem::take(&mut self.hash);
        Ok(Spooled {
            reference: SpoolRef {
                file: self.id,
                len: self.len,
                digest: hash.finalize().into(),
            },
            path: std::mem::take(&mut self.path),
            kept: false,
        })
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A complete, durable spooled body. Dropped without [`Spooled::keep`] (no message names
/// it), its file is removed.
#[derive(Debug)]
pub struct Spooled {
    /// Where it is.
    pub reference: SpoolRef,
    path: PathBuf,
    kept: bool,
}

impl Spooled {
    /// A committed message names it (or may: a failed commit may have reached the disk;
    /// the next open's sweep removes the file if not): the file stays.
    pub fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(keys: Keys) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().expect("in the test");
        let spool =
            Spool::open(dir_of(&dir.path().join("mfoundry.redb")), keys, 42).expect("in the test");
        (dir, spool)
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn written(spool: &Spool, body: &[u8], hashed_from: usize) -> SpoolRef {
        let mut writer = spool.create(hashed_from).expect("in the test");
        for part in body.chunks(7_001) {
            writer.write(part).expect("in the test");
        }
        let mut spooled = writer.finish().expect("in the test");
        spooled.keep();
        spooled.reference
    }

    fn keyed() -> Keys {
        Keys::new(
            crate::outbox::crypt::StoreKey::from_bytes(&[7; 32]),
            Vec::new(),
        )
    }

    #[test]
    fn a_body_reads_back_whole_and_by_its_head_plain_and_sealed() {
        for keys in [Keys::plain(), keyed()] {
            let (_dir, spool) = spool(keys);
            let data = body(CHUNK * 2 + 12_345);
            let reference = written(&spool, &data, 300);
            assert_eq!(reference.len, data.len() as u64);
            assert_eq!(
                reference.digest,
                <[u8; 32]>::from(Sha256::digest(&data[300..]))
            );
            assert_eq!(spool.read(&reference).expect("in the test"), data);
            assert_eq!(
                spool.read_head(&reference, 1000).expect("in the test"),
                data[..1000]
            );
            let empty = written(&spool, &[], 0);
            assert_eq!(spool.read(&empty).expect("in the test"), Vec::<u8>::new());
        }
    }

    #[test]
    fn a_sealed_file_holds_no_plain_bytes_of_the_body() {
        let (_dir, spool) = spool(keyed());
        let data = b"PATIENT^SECRET".repeat(1000);
        let reference = written(&spool, &data, 0);
        let raw = std::fs::read(spool.path(reference.file)).expect("in the test");
        assert!(!raw.windows(14).any(|window| window == b"PATIENT^SECRET"));
    }

    #[test]
    fn a_changed_truncated_or_extended_file_is_damage_never_other_bytes() {
        for keys in [Keys::plain(), keyed()] {
            let (_dir, spool) = spool(keys);
            let data = body(2 * CHUNK + 5000);
            let reference = written(&spool, &data, 0);
            let path = spool.path(reference.file);
            let original = std::fs::read(&path).expect("in the test");
            // The first two chunks swapped (both full, so their frames are as long).
            let frame = u32::from_le_bytes(
                original[HEADER_LEN..HEADER_LEN + 4]
                    .try_into()
                    .expect("in the test"),
            ) as usize
                + 8;
            let mut swapped = original[..HEADER_LEN].to_vec();
            swapped.extend_from_slice(&original[HEADER_LEN + frame..HEADER_LEN + 2 * frame]);
            swapped.extend_from_slice(&original[HEADER_LEN..HEADER_LEN + frame]);
            swapped.extend_from_slice(&original[HEADER_LEN + 2 * frame..]);
            let mut flipped = original.clone();
            flipped[HEADER_LEN + 100] ^= 1;
            let mut extended = original.clone();
            extended.extend_from_slice(&original[HEADER_LEN..HEADER_LEN + 50]);
            for broken in [
                swapped,
                flipped,
                original[..original.len() - 10].to_vec(),
                original[..HEADER_LEN + 8 + CHUNK + 1 + 9].to_vec(),
                extended,
            ] {
                std::fs::write(&path, &broken).expect("in the test");
                assert!(matches!(
                    spool.read(&reference),
                    Err(StoreError::Damaged(_))
                ));
            }
            std::fs::remove_file(&path).expect("in the test");
            assert!(matches!(
                spool.read(&reference),
                Err(StoreError::Damaged(_))
            ));
        }
    }

    #[test]
    fn unfinished_and_unkept_files_are_removed_and_the_sweep_keeps_only_the_named() {
        let (_dir, spool) = spool(Keys::plain());
        let mut writer = spool.create(0).expect("in the test");
        writer.write(&body(10)).expect("in the test");
        drop(writer);
        let writer = spool.create(0).expect("in the test");
        drop(writer.finish().expect("in the test"));
        assert_eq!(
            std::fs::read_dir(spool.dir()).expect("in the test").count(),
            0
        );
        let kept = written(&spool, &body(10), 0);
        let orphan = written(&spool, &body(10), 0);
        // A file cut before its header, another store's file, and a file not named as
        // spooled files are.
        let cut = spool.dir().join(format!("{:032x}.obj", 7u128));
        std::fs::write(&cut, b"MFSP").expect("in the test");
        let other = Spool {
            store: 43,
            ..spool.clone()
        };
        let foreign = written(&other, &body(10), 0);
        std::fs::write(spool.dir().join("stray.tmp"), b"x").expect("in the test");
        let swept = spool
            .sweep(&HashSet::from([kept.file]))
            .expect("in the test");
        assert_eq!(swept, (2, 1));
        assert!(spool.read(&kept).is_ok());
        assert!(spool.read(&orphan).is_err());
        assert!(!cut.exists());
        assert!(other.read(&foreign).is_ok(), "another store's file is left");
        assert!(spool.dir().join("stray.tmp").exists());
    }

    #[test]
    fn a_reseal_writes_a_new_file_under_the_new_key() {
        let (_dir, spool) = spool(Keys::plain());
        let data = body(CHUNK + 1);
        let reference = written(&spool, &data, 0);
        let keys = keyed();
        let resealed = spool.reseal(&reference, &keys).expect("in the test");
        assert_ne!(resealed.file, reference.file);
        assert_eq!(resealed.digest, reference.digest);
        let sealed = Spool {
            keys,
            ..spool.clone()
        };
        assert_eq!(sealed.read(&resealed).expect("in the test"), data);
    }
}
