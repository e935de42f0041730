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
}

#[cfg(test)]
mod tests {
    use super::*;

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
