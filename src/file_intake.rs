//! Directory intake: files of HL7 messages (one message, many, or a batch) dropped in a folder.
//!
//! Every poll the folder is listed; a file is read only when its name matches `pattern`, it
//! is not hidden (`.name`) nor a partial (`*.tmp`, `*.part`, `*.partial`, `*.filepart`), and
//! its size and modification time have not changed for `settle_time` (so a file still being
//! written is never read; writers that write under another name and rename when done are
//! read at the next poll after the settle time). Ready files are read oldest first.
//!
//! A file is read whole and handed to [`Ingest::handle_batch`]: every message is decided,
//! then all of them are stored **in one commit together with the file's SHA-256**, and only
//! then is the file moved to `done` (or deleted). After a crash between the commit and the
//! move the file is read again, its mark is found, nothing is stored twice, and it is moved.
//! A file that cannot be read as HL7, or whose batch is refused, goes to the `error` folder
//! with `<name>.reason.txt`; messages refused one by one (`batch_ack: per_message`) are
//! written to `<name>.refused.hl7` there with the same reason file, and the file itself is
//! done. A file that could not be stored stays where it is and is tried again.
//!
//! Logs name files by the first 12 hex digits of their SHA-256, never by name (a name may
//! carry patient data); the reason files, beside the data, carry the name.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::hl7::AckCode;
use crate::ingest::{BatchOutcome, From, Ingest};
use crate::mllp::ListenerStats;
use crate::outbox::FileMark;

/// What becomes of a file once its messages are stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterStored {
    /// Moved into this folder (`done:`).
    MoveTo(PathBuf),
    /// Deleted (`delete: true`).
    Delete,
}

/// A directory listener's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectorySettings {
    /// `path`: the folder read.
    pub path: PathBuf,
    /// `pattern`: the file names read (`*` any run of characters, `?` one).
    pub pattern: String,
    /// `done` or `delete`.
    pub after: AfterStored,
    /// `error`: where files that cannot be taken go, with a reason file.
    pub error: PathBuf,
    /// `settle_time`: how long size and modification time must stay the same.
    pub settle_time: Duration,
    /// `poll_interval`: how often the folder is listed.
    pub poll_interval: Duration,
    /// `max_file_size`: larger files go to `error` unread.
    pub max_file_size: u64,
}

/// Names never read, whatever the pattern: hidden files and partial uploads.
const PARTIAL_SUFFIXES: [&str; 4] = [".tmp", ".part", ".partial", ".filepart"];

/// Whether `name` matches `pattern` (`*` any run, `?` one character; case-sensitive).
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with one backtrack point.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Whether a file of this name is a candidate at all.
fn readable_name(pattern: &str, name: &str) -> bool {
    !name.starts_with('.')
        && !PARTIAL_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
        && matches_pattern(pattern, name)
}

/// A file seen at a poll: what it looked like, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    size: u64,
    modified: Option<SystemTime>,
    since: Instant,
}

/// One directory listener.
#[derive(Debug)]
pub struct DirectoryListener {
    settings: DirectorySettings,
    ingest: Ingest,
    stats: Arc<ListenerStats>,
    name: String,
    seen: std::collections::HashMap<PathBuf, Seen>,
    /// Files that could not be moved after they were taken (a read-only folder, a full
    /// disk): left alone until they change or [`STUCK_RETRY`] has passed, so they are not
    /// read and stored again at every poll.
    stuck: std::collections::HashMap<PathBuf, Seen>,
}

/// How long a file that could not be moved is left alone before it is tried again.
const STUCK_RETRY: Duration = Duration::from_secs(60);

impl DirectoryListener {
    /// Check the folders (created when missing, so a first start works) and build it.
    pub fn new(
        settings: DirectorySettings,
        ingest: Ingest,
        stats: Arc<ListenerStats>,
        name: String,
    ) -> Result<Self, String> {
        if !settings.path.is_dir() {
            return Err(format!(
                "path {} is not a folder that can be read; create it, or correct path",
                settings.path.display()
            ));
        }
        let mut folders = vec![("error", &settings.error)];
        if let AfterStored::MoveTo(done) = &settings.after {
            folders.push(("done", done));
        }
        for (key, folder) in folders {
            std::fs::create_dir_all(folder).map_err(|error| {
                format!("cannot create {key} folder {}: {error}", folder.display())
            })?;
        }
        Ok(Self {
            settings,
            ingest,
            stats,
            name,
            seen: std::collections::HashMap::new(),
            stuck: std::collections::HashMap::new(),
        })
    }

    /// Poll until `shutdown`; the file in hand is finished first (its messages are stored and
    /// it is moved, or it stays for the next start).
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let ready = self.poll();
            for path in ready {
                if shutdown.is_cancelled() {
                    return;
                }
                self.take(&path).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
    }

    /// List the folder; the files that have settled, oldest first.
    fn poll(&mut self) -> Vec<PathBuf> {
        let entries = match std::fs::read_dir(&self.settings.path) {
            Ok(entries) => entries,
            Err(error) => {
                warn!(listener = %self.name, error = %error, "the folder cannot be listed; trying again at the next poll");
                return Vec::new();
            }
        };
        let now = Instant::now();
        let mut present = std::collections::HashSet::new();
        let mut ready = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !readable_name(&self.settings.pattern, &name.to_string_lossy()) {
                continue;
            }
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            let path = entry.path();
            present.insert(path.clone());
            let current = Seen {
                size: metadata.len(),
                modified: metadata.modified().ok(),
                since: now,
            };
            if let Some(stuck) = self.stuck.get(&path) {
                let unchanged = stuck.size == current.size && stuck.modified == current.modified;
                if unchanged && now.duration_since(stuck.since) < STUCK_RETRY {
                    continue;
                }
                self.stuck.remove(&path);
            }
            let seen = self.seen.entry(path.clone()).or_insert(current);
            if seen.size != current.size || seen.modified != current.modified {
                *seen = current;
                continue;
            }
            if now.duration_since(seen.since) >= self.settings.settle_time {
                ready.push((current.modified, path));
            }
        }
        self.seen.retain(|path, _| present.contains(path));
        self.stuck.retain(|path, _| present.contains(path));
        ready.sort();
        ready.into_iter().map(|(_, path)| path).collect()
    }

    /// Read, store and move one file.
    async fn take(&mut self, path: &Path) {
        let Some(expected) = self.seen.remove(path) else {
            return;
        };
        self.stats.count_request();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if expected.size > self.settings.max_file_size {
            let reason = format!(
                "the file is {} bytes, larger than max_file_size ({} bytes); split it, or raise max_file_size",
                expected.size, self.settings.max_file_size
            );
            warn!(listener = %self.name, size = expected.size, "a file larger than max_file_size goes to the error folder unread");
            if let Err(error) = blocking(|| self.to_error(path, &name, None, &reason, &[])) {
                self.stuck(
                    path,
                    expected,
                    "a refused file could not be moved to the error folder",
                    &error,
                );
            }
            self.stats.count_answer(AckCode::AR, true);
            return;
        }
        // Read whole, and only if it is still what settled (size and time, before and after).
        let read = blocking(|| read_settled(path, &expected));
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            // Changed since it settled: still being written after all.
            Ok(None) => return,
            Err(error) => {
                warn!(listener = %self.name, error = %error, "a file cannot be read; trying again at the next poll");
                return;
            }
        };
        let (bytes, sha256) = blocking(move || {
            let sha256: [u8; 32] = Sha256::digest(&bytes).into();
            (bytes, sha256)
        });
        let digest = hex(&sha256);
        let short = digest[..12].to_owned();
        let mark = FileMark {
            sha256,
            size: expected.size,
            listener: self.name.clone(),
        };
        let sender = format!("file={}", self.name);
        let from = From {
            peer: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            identity: None,
            sender: Some(&sender),
        };
        let outcome = self
            .ingest
            .handle_batch(bytes::Bytes::from(bytes), &from, Some(mark))
            .await;
        if outcome.store_failed || outcome.not_recorded {
            error!(listener = %self.name, file = %short, "the file's messages could not be stored; it stays in the folder and is tried again");
            self.stats.count_answer(AckCode::AE, true);
            return;
        }
        // Replaced since it was read (a writer reusing its name): what is there now was not
        // read; it stays, and is read as a new file.
        if !blocking(|| still_settled(path, &expected)) {
            warn!(listener = %self.name, file = %short, "the file changed after it was read; its new content stays in the folder and is read again");
            return;
        }
        let details = Details {
            name: &name,
            digest: &digest,
            size: expected.size,
            listener: &self.name,
        };
        if let Some(refusal) = &outcome.batch_refusal {
            warn!(listener = %self.name, file = %short, reason = %refusal, "file refused; moved to the error folder with a reason file");
            let moved =
                blocking(|| self.to_error(path, &name, Some(&details), refusal, &outcome.refused));
            if let Err(error) = moved {
                self.stuck(
                    path,
                    expected,
                    "a refused file could not be moved to the error folder",
                    &error,
                );
            }
            if outcome.messages == 0 {
                self.stats.count_unreadable();
            } else {
                self.stats.count_answer(AckCode::AR, true);
            }
            return;
        }
        if !outcome.refused.is_empty()
            && let Err(error) = blocking(|| self.write_refused(&details, &outcome))
        {
            // The file stays (it is stored and marked: read again, nothing is stored twice)
            // until the refused messages can be written beside it.
            self.stuck(path, expected, "the refused messages of a file could not be written to the error folder; the file stays", &error);
            return;
        }
        if let Some(record) = &outcome.file_seen {
            info!(listener = %self.name, file = %short, messages = record.messages, "file read again after its messages were stored (a crash before it was moved, or the same file dropped again): nothing stored twice");
        } else {
            info!(listener = %self.name, file = %short, messages = outcome.messages, stored = outcome.stored, duplicates = outcome.duplicates, refused = outcome.refused.len(), "file stored");
        }
        self.stats.count_answer(
            if outcome.refused.is_empty() {
                AckCode::AA
            } else {
                AckCode::AR
            },
            true,
        );
        if let Err(error) = blocking(|| self.finish(path, &name)) {
            self.stuck(path, expected, "the file's messages are stored but it could not be moved or deleted; it will be recognised and not stored twice", &error);
        }
    }

    /// Leave a file alone until it changes or [`STUCK_RETRY`] has passed.
    fn stuck(&mut self, path: &Path, seen: Seen, what: &str, error: &std::io::Error) {
        error!(listener = %self.name, error = %error, retry_in = ?STUCK_RETRY, "{what}");
        self.stuck.insert(
            path.to_path_buf(),
            Seen {
                since: Instant::now(),
                ..seen
            },
        );
    }

    /// Move a stored file to `done` (or delete it).
    fn finish(&self, path: &Path, name: &str) -> std::io::Result<()> {
        match &self.settings.after {
            AfterStored::Delete => std::fs::remove_file(path),
            AfterStored::MoveTo(done) => move_into(path, done, name).map(|_| ()),
        }?;
        sync_folder(&self.settings.path);
        Ok(())
    }

    /// Move a file to the error folder with its reason file.
    fn to_error(
        &self,
        path: &Path,
        name: &str,
        details: Option<&Details<'_>>,
        reason: &str,
        refused: &[crate::ingest::RefusedMessage],
    ) -> std::io::Result<()> {
        let target = move_into(path, &self.settings.error, name)?;
        let target_name = target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.to_owned());
        let text = reason_text(details, name, reason, refused);
        if let Err(error) = publish(
            &self.settings.error,
            &format!("{target_name}.reason.txt"),
            text.as_bytes(),
        ) {
            error!(listener = %self.name, error = %error, "a reason file could not be written to the error folder");
        }
        sync_folder(&self.settings.path);
        Ok(())
    }

    /// The messages refused one by one, and why, in the error folder.
    fn write_refused(&self, details: &Details<'_>, outcome: &BatchOutcome) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for refused in &outcome.refused {
            bytes.extend_from_slice(&refused.bytes);
            if !refused.bytes.ends_with(b"\r") {
                bytes.push(b'\r');
            }
            bytes.push(b'\n');
        }
        let written = publish(
            &self.settings.error,
            &format!("{}.refused.hl7", details.name),
            &bytes,
        )?;
        let base = written
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = reason_text(
            Some(details),
            details.name,
            &format!(
                "{} of {} messages were refused and are in {base}; the others were stored",
                outcome.refused.len(),
                outcome.messages
            ),
            &outcome.refused,
        );
        publish(
            &self.settings.error,
            &format!("{base}.reason.txt"),
            text.as_bytes(),
        )?;
        Ok(())
    }
}

/// What a reason file says about its file.
struct Details<'a> {
    name: &'a str,
    digest: &'a str,
    size: u64,
    listener: &'a str,
}

fn reason_text(
    details: Option<&Details<'_>>,
    name: &str,
    reason: &str,
    refused: &[crate::ingest::RefusedMessage],
) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(text, "file: {name}");
    if let Some(details) = details {
        let _ = writeln!(text, "size: {} bytes", details.size);
        let _ = writeln!(text, "sha256: {}", details.digest);
        let _ = writeln!(text, "listener: {}", details.listener);
    }
    let _ = writeln!(
        text,
        "time: {}",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let _ = writeln!(text, "reason: {reason}");
    for message in refused {
        let _ = writeln!(
            text,
            "message {} (MSH-10 {}): {}",
            message.index,
            message.control_id.as_deref().unwrap_or("(empty)"),
            message.reason
        );
    }
    text
}

/// Run blocking file work where it does not hold up the connections' tasks (another runtime
/// thread takes them over), when the runtime has other threads.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

/// Whether `path` is still what settled: same size and modification time.
fn still_settled(path: &Path, expected: &Seen) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| {
        metadata.len() == expected.size && metadata.modified().ok() == expected.modified
    })
}

/// Read a file whole if it is, before and after the read, what settled; `None` when it
/// changed.
fn read_settled(path: &Path, expected: &Seen) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let before = file.metadata()?;
    if before.len() != expected.size || before.modified().ok() != expected.modified {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(expected.size).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    let after = file.metadata()?;
    let same = bytes.len() as u64 == expected.size
        && after.len() == expected.size
        && after.modified().ok() == expected.modified;
    Ok(same.then_some(bytes))
}

/// `name`, or `name.1`, `name.2` … : the `suffix`-th choice.
fn numbered(folder: &Path, name: &str, suffix: usize) -> PathBuf {
    if suffix == 0 {
        folder.join(name)
    } else {
        folder.join(format!("{name}.{suffix}"))
    }
}

/// Write `bytes` (synced) into `folder` under `name`, or `name.1` … when taken: written under
/// a hidden temporary name, then linked to the first free name (never over another file).
fn publish(folder: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    let temporary = folder.join(format!(".{name}.{}.writing", std::process::id()));
    let mut file = std::fs::File::create(&temporary)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| link_free(&temporary, folder, name));
    let _ = std::fs::remove_file(&temporary);
    let target = written?;
    sync_folder(folder);
    Ok(target)
}

/// Give `source` a second name in `folder`: the first free one of `name`, `name.1` …
/// (a hard link never replaces a file). Where hard links are not available, a rename to a
/// name found free.
fn link_free(source: &Path, folder: &Path, name: &str) -> std::io::Result<PathBuf> {
    for suffix in 0..10_000 {
        let target = numbered(folder, name, suffix);
        match std::fs::hard_link(source, &target) {
            Ok(()) => return Ok(target),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) if error.raw_os_error() == Some(EXDEV) => return Err(error),
            Err(_) if target.exists() => {}
            Err(_) => {
                std::fs::rename(source, &target)?;
                // The source's name is gone; a later removal of it finds nothing.
                return Ok(target);
            }
        }
    }
    Err(std::io::Error::other(format!(
        "{name}: ten thousand files of that name are there already"
    )))
}

/// `EXDEV`: a link or rename across file systems.
const EXDEV: i32 = 18;

/// Move `path` into `folder` under `name`, or `name.1`, `name.2` … when taken; across file
/// systems by a synced copy. If the original cannot be removed, the copy is removed again (so
/// a file is never in both places). Returns where it went.
fn move_into(path: &Path, folder: &Path, name: &str) -> std::io::Result<PathBuf> {
    let target = match link_free(path, folder, name) {
        Ok(target) => target,
        Err(error) if error.raw_os_error() == Some(EXDEV) => {
            let bytes = std::fs::read(path)?;
            publish(folder, name, &bytes)?
        }
        Err(error) => return Err(error),
    };
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        let _ = std::fs::remove_file(&target);
        return Err(error);
    }
    sync_folder(folder);
    Ok(target)
}

fn sync_folder(folder: &Path) {
    if let Ok(directory) = std::fs::File::open(folder) {
        let _ = directory.sync_all();
    }
}

use crate::admin::auth::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_a_shell() {
        for (pattern, name, expected) in [
            ("*.hl7", "a.hl7", true),
            ("*.hl7", "a.hl7.tmp", false),
            ("*.hl7", "a.HL7", false),
            ("*", "anything", true),
            ("lab_??.txt", "lab_01.txt", true),
            ("lab_??.txt", "lab_1.txt", false),
            ("*a*b", "xxaxxb", true),
            ("*a*b", "xxaxxbc", false),
            ("", "", true),
        ] {
            assert_eq!(
                matches_pattern(pattern, name),
                expected,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn hidden_and_partial_files_are_never_read() {
        assert!(!readable_name("*", ".hidden"));
        assert!(!readable_name("*", "upload.hl7.part"));
        assert!(!readable_name("*", "upload.tmp"));
        assert!(readable_name("*", "upload.hl7"));
    }

    #[test]
    fn moving_never_overwrites() {
        let folder = tempfile::tempdir().expect("temporary folder");
        let inbox = folder.path().join("in");
        let done = folder.path().join("done");
        std::fs::create_dir_all(&inbox).expect("inbox");
        std::fs::create_dir_all(&done).expect("done");
        for round in 0..3 {
            let path = inbox.join("a.hl7");
            std::fs::write(&path, format!("{round}")).expect("write");
            move_into(&path, &done, "a.hl7").expect("moves");
        }
        let mut names: Vec<String> = std::fs::read_dir(&done)
            .expect("lists")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["a.hl7", "a.hl7.1", "a.hl7.2"]);
    }
}
