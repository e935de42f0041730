//! The files of one store and the directory that holds them.
//!
//! Everything the outbox does to files (open, create, remove, rename, sync the directory)
//! goes through [`Storage`]. The gateway uses [`Directory`], the files in `DATA_DIR`; tests
//! put recording, failing or crashing files in memory under the very same code, so the
//! journal, the checks at open and recovery are tested as the gateway runs them.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

use redb::StorageBackend;
use redb::backends::FileBackend;

/// Which file of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StoreFile {
    /// The data file, `mfoundry.redb`.
    Data,
    /// The commit journal beside it, `mfoundry.redb-journal`.
    Journal,
    /// A data file being written in a new layout (`mfoundry.redb-upgrade`), renamed over the
    /// data file once complete.
    Upgrade,
}

impl StoreFile {
    /// Every file, data file first.
    pub const ALL: [Self; 3] = [Self::Data, Self::Journal, Self::Upgrade];
}

/// The files of one store (see the module documentation).
pub trait Storage: Send + Sync + Debug {
    /// How a file is named in messages (its path).
    fn name(&self, file: StoreFile) -> String;
    /// Whether the file exists.
    fn exists(&self, file: StoreFile) -> io::Result<bool>;
    /// Open the file for reading and writing, creating it empty when missing. Creating does
    /// not make its name durable: [`Storage::sync_directory`] does.
    fn open(&self, file: StoreFile) -> io::Result<Box<dyn StorageBackend>>;
    /// Remove the file.
    fn remove(&self, file: StoreFile) -> io::Result<()>;
    /// Replace `to` with `from`, atomically (not yet durable: see
    /// [`Storage::sync_directory`]).
    fn rename(&self, from: StoreFile, to: StoreFile) -> io::Result<()>;
    /// Create the directory when missing (and make its own name durable), then make its
    /// entries durable: files created or removed since.
    fn sync_directory(&self) -> io::Result<()>;
    /// Size of the file in bytes, `None` when it does not exist.
    fn size(&self, file: StoreFile) -> io::Result<Option<u64>>;

    /// Drop what the operating system caches of the file, so the next reads come from the
    /// disk. After a failed sync, Linux keeps the unwritten pages in its cache marked clean:
    /// reopened over that cache, redb would take a commit that never reached the disk for
    /// a durable one and build later commits on it (lost at the next power cut). Dropped,
    /// the reopen sees what the disk holds, as after a crash.
    fn drop_cache(&self, _file: StoreFile) -> io::Result<()> {
        Ok(())
    }

    /// The directory of spooled bodies ([`super::spool`]); `None` where bodies cannot be
    /// spooled (stores in memory): they are then stored whole.
    fn spool_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// The store's files in a directory: `<dir>/<name>` and `<dir>/<name>-journal`.
#[derive(Debug, Clone)]
pub struct Directory {
    data: PathBuf,
    journal: PathBuf,
    upgrade: PathBuf,
}

impl Directory {
    /// The store whose data file is `data` (its journal lies beside it).
    pub fn new(data: &Path) -> Self {
        let mut upgrade = data.file_name().unwrap_or_default().to_os_string();
        upgrade.push("-upgrade");
        Self {
            data: data.to_path_buf(),
            journal: journal_path(data),
            upgrade: data.with_file_name(upgrade),
        }
    }

    fn path(&self, file: StoreFile) -> &Path {
        match file {
            StoreFile::Data => &self.data,
            StoreFile::Journal => &self.journal,
            StoreFile::Upgrade => &self.upgrade,
        }
    }

    /// The directory holding the files (`.` for a bare file name).
    fn directory(&self) -> &Path {
        match self.data.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        }
    }
}

/// The journal file next to a data file: `mfoundry.redb` → `mfoundry.redb-journal`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push("-journal");
    path.with_file_name(name)
}

/// Make a directory's entries durable.
fn sync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

impl Storage for Directory {
    fn name(&self, file: StoreFile) -> String {
        self.path(file).display().to_string()
    }

    fn spool_dir(&self) -> Option<PathBuf> {
        Some(super::spool::dir_of(&self.data))
    }

    fn exists(&self, file: StoreFile) -> io::Result<bool> {
        self.path(file).try_exists()
    }

    fn open(&self, file: StoreFile) -> io::Result<Box<dyn StorageBackend>> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The store holds patients' messages: readable by its owner only.
            options.mode(0o600);
        }
        let file = options.open(self.path(file))?;
        let backend = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Box::new(backend))
    }

    fn remove(&self, file: StoreFile) -> io::Result<()> {
        std::fs::remove_file(self.path(file))
    }

    fn rename(&self, from: StoreFile, to: StoreFile) -> io::Result<()> {
        std::fs::rename(self.path(from), self.path(to))
    }

    fn sync_directory(&self) -> io::Result<()> {
        let directory = self.directory();
        if !directory.try_exists()? {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(directory)?;
            // The directory's own name lives in its parent: sync that too, or a power cut
            // could lose the directory with every commit in it.
            if let Some(parent) = directory.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                sync_dir(parent)?;
            }
        }
        sync_dir(directory)
    }

    fn size(&self, file: StoreFile) -> io::Result<Option<u64>> {
        match std::fs::metadata(self.path(file)) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    #[cfg(unix)]
    fn drop_cache(&self, file: StoreFile) -> io::Result<()> {
        let handle = match std::fs::File::open(self.path(file)) {
            Ok(handle) => handle,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        rustix::fs::fadvise(&handle, 0, None, rustix::fs::Advice::DontNeed).map_err(io::Error::from)
    }
}

/// A view of another store that never writes to it: what opening a store writes (a replay,
/// redb's repair, a new journal lap) is kept in memory, reads see it, syncs do nothing. The
/// files are still opened and locked for real, so a running gateway is refused. Used by
/// `mfoundry store verify`, which must leave a store as it found it (redb's own check
/// repairs what it can, and a failed repair would otherwise mark the file for good).
#[derive(Debug)]
pub struct Overlay {
    inner: std::sync::Arc<dyn Storage>,
    /// Files created or removed in the view (`Some(false)`: removed).
    names: std::sync::Mutex<std::collections::HashMap<StoreFile, bool>>,
}

impl Overlay {
    /// A write-nothing view of `inner`.
    pub fn new(inner: std::sync::Arc<dyn Storage>) -> Self {
        Self {
            inner,
            names: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn named(&self, file: StoreFile) -> Option<bool> {
        self.names
            .lock()
            .ok()
            .and_then(|names| names.get(&file).copied())
    }
}

impl Storage for Overlay {
    fn name(&self, file: StoreFile) -> String {
        self.inner.name(file)
    }

    fn exists(&self, file: StoreFile) -> io::Result<bool> {
        match self.named(file) {
            Some(exists) => Ok(exists),
            None => self.inner.exists(file),
        }
    }

    fn open(&self, file: StoreFile) -> io::Result<Box<dyn StorageBackend>> {
        let base = if self.exists(file)? && self.named(file).is_none() {
            Some(self.inner.open(file)?)
        } else {
            None
        };
        if let Ok(mut names) = self.names.lock() {
            names.insert(file, true);
        }
        Ok(Box::new(OverlayFile::new(base)))
    }

    fn remove(&self, file: StoreFile) -> io::Result<()> {
        if let Ok(mut names) = self.names.lock() {
            names.insert(file, false);
        }
        Ok(())
    }

    fn rename(&self, _from: StoreFile, _to: StoreFile) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this view writes nothing; a data file of format 1 is converted when mfoundry \
             serves it (start it once), then it can be verified",
        ))
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self, file: StoreFile) -> io::Result<Option<u64>> {
        self.inner.size(file)
    }

    fn drop_cache(&self, file: StoreFile) -> io::Result<()> {
        // Reading what the disk holds changes nothing on it.
        match self.named(file) {
            None => self.inner.drop_cache(file),
            Some(_) => Ok(()),
        }
    }
}

const OVERLAY_BLOCK: u64 = 4096;

/// One file of an [`Overlay`]: blocks written in memory over the file's own bytes.
#[derive(Debug)]
struct OverlayFile {
    base: Option<Box<dyn StorageBackend>>,
    state: std::sync::Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    len: u64,
    /// The base's length when opened: bytes beyond it (or beyond a later truncation) are
    /// zeros unless written.
    base_len: u64,
    blocks: std::collections::HashMap<u64, Vec<u8>>,
}

impl OverlayFile {
    fn new(base: Option<Box<dyn StorageBackend>>) -> Self {
        let len = base.as_ref().and_then(|base| base.len().ok()).unwrap_or(0);
        Self {
            base,
            state: std::sync::Mutex::new(OverlayState {
                len,
                base_len: len,
                blocks: std::collections::HashMap::new(),
            }),
        }
    }

    fn state(&self) -> io::Result<std::sync::MutexGuard<'_, OverlayState>> {
        self.state
            .lock()
            .map_err(|_| io::Error::other("the overlay's lock is poisoned"))
    }

    /// The current bytes of block `index`.
    fn block(&self, state: &OverlayState, index: u64) -> io::Result<Vec<u8>> {
        if let Some(block) = state.blocks.get(&index) {
            return Ok(block.clone());
        }
        let mut block = vec![0u8; OVERLAY_BLOCK as usize];
        let start = index * OVERLAY_BLOCK;
        if let Some(base) = &self.base
            && start < state.base_len
        {
            let end = (start + OVERLAY_BLOCK).min(state.base_len);
            base.read(start, &mut block[..(end - start) as usize])?;
        }
        Ok(block)
    }
}

impl StorageBackend for OverlayFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.state()?;
        if offset + out.len() as u64 > state.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the file",
            ));
        }
        let mut done = 0usize;
        while done < out.len() {
            let position = offset + done as u64;
            let index = position / OVERLAY_BLOCK;
            let within = (position % OVERLAY_BLOCK) as usize;
            let take = (OVERLAY_BLOCK as usize - within).min(out.len() - done);
            if let Some(block) = state.blocks.get(&index) {
                out[done..done + take].copy_from_slice(&block[within..within + take]);
            } else if position + take as u64 <= state.base_len
                && let Some(base) = &self.base
            {
                base.read(position, &mut out[done..done + take])?;
            } else {
                let block = self.block(&state, index)?;
                out[done..done + take].copy_from_slice(&block[within..within + take]);
            }
            done += take;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state()?;
        if len < state.len {
            // Bytes cut off read as zeros if the file grows again.
            state.base_len = state.base_len.min(len);
            let keep = len.div_ceil(OVERLAY_BLOCK);
            state.blocks.retain(|index, _| *index < keep);
            if !len.is_multiple_of(OVERLAY_BLOCK)
                && let Some(block) = state.blocks.get_mut(&(len / OVERLAY_BLOCK))
            {
                for byte in &mut block[(len % OVERLAY_BLOCK) as usize..] {
                    *byte = 0;
                }
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.state()?;
        let mut done = 0usize;
        while done < data.len() {
            let position = offset + done as u64;
            let index = position / OVERLAY_BLOCK;
            let within = (position % OVERLAY_BLOCK) as usize;
            let take = (OVERLAY_BLOCK as usize - within).min(data.len() - done);
            let mut block = self.block(&state, index)?;
            block[within..within + take].copy_from_slice(&data[done..done + take]);
            state.blocks.insert(index, block);
            done += take;
        }
        state.len = state.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        match &self.base {
            Some(base) => base.close(),
            None => Ok(()),
        }
    }

    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        match &self.base {
            Some(base) => base.try_lock_range(start, end),
            None => Err(redb::BackendError::Unsupported),
        }
    }

    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        match &self.base {
            Some(base) => base.unlock_range(start, end),
            None => Err(redb::BackendError::Unsupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_writes_nothing_and_reads_what_was_written_in_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let directory = std::sync::Arc::new(Directory::new(&root.path().join("mfoundry.redb")));
        directory.sync_directory().expect("created");
        let file = directory.open(StoreFile::Data).expect("opens");
        file.set_len(10_000).expect("length");
        file.write(0, &[7u8; 10_000]).expect("writes");
        drop(file);
        let overlay = Overlay::new(directory.clone());
        let view = overlay.open(StoreFile::Data).expect("opens");
        view.write(4090, b"overlay").expect("writes");
        view.set_len(20_000).expect("grows");
        let mut out = [0u8; 12];
        view.read(4088, &mut out).expect("reads");
        assert_eq!(&out, b"\x07\x07overlay\x07\x07\x07");
        let mut tail = [1u8; 4];
        view.read(15_000, &mut tail).expect("reads");
        assert_eq!(tail, [0; 4]);
        view.sync_data().expect("syncs nothing");
        let on_disk = std::fs::read(root.path().join("mfoundry.redb")).expect("reads");
        assert_eq!(on_disk, vec![7u8; 10_000], "the file is as it was");
        overlay
            .remove(StoreFile::Journal)
            .expect("removes in the view");
        assert!(!overlay.exists(StoreFile::Journal).expect("exists"));
    }

    #[test]
    fn the_journal_lies_beside_the_data_file() {
        assert_eq!(
            journal_path(Path::new("/data/mfoundry.redb")),
            PathBuf::from("/data/mfoundry.redb-journal")
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_new_directory_is_private_and_so_are_its_files() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let directory = Directory::new(&root.path().join("a/b/mfoundry.redb"));
        directory.sync_directory().expect("created");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&root.path().join("a/b")), 0o700);
        let file = directory.open(StoreFile::Data).expect("opens");
        file.write(0, b"x").expect("writes");
        assert_eq!(mode(&root.path().join("a/b/mfoundry.redb")), 0o600);
        assert_eq!(directory.size(StoreFile::Data).expect("size"), Some(1));
        assert_eq!(directory.size(StoreFile::Journal).expect("size"), None);
    }
}
