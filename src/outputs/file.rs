//! `type: file`: one file per message, written atomically (temp file, fsync, rename, fsync of
//! the directory). Writing the same message again gives the same name and replaces the file
//! with the same bytes, so a retry or a redelivery after a crash is harmless.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use chrono::format::{Item, StrftimeItems};

use super::format::Format;

use crate::delivery::{DeliveryError, Envelope};

/// `type: file`.
#[derive(Clone, Debug)]
pub struct FileSpec {
    /// Directory files are written under.
    pub directory: PathBuf,
    /// File name, relative to the directory.
    pub filename: FileNameTemplate,
    /// What each file holds (`format`, default the HL7 bytes).
    pub format: Format,
}

/// Default file name: one directory per day, the message id first so names sort by arrival.
pub const DEFAULT_FILENAME: &str = "{received:%Y%m%d}/{entry}-{control_id}.hl7";

/// The keys a file connector takes.
pub const KEYS: [&str; 3] = ["directory", "filename", "format"];

impl FileSpec {
    /// Read a file connector's keys; `None` when a problem was recorded.
    pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<Self> {
        reader.require("directory", "for type file");
        let directory = reader.text("directory");
        let template = reader.text("filename");
        let filename =
            match FileNameTemplate::parse(template.as_deref().unwrap_or(DEFAULT_FILENAME)) {
                Ok(filename) => Some(filename),
                Err(problem) => {
                    reader.problem("filename", format!("`filename`: {problem}"));
                    None
                }
            };
        let format = Format::read(reader, &Format::FILE);
        Some(Self {
            directory: PathBuf::from(directory?),
            filename: filename?,
            format,
        })
    }
}

/// A parsed file-name template such as `{received:%Y%m%d}/{control_id}-{id}.hl7`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileNameTemplate {
    parts: Vec<Part>,
    source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
    Received(String),
}

/// A placeholder taken from the message's header or the delivery (never patient data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Id,
    ControlId,
    MsgType,
    Trigger,
    SendingApp,
    SendingFac,
    Connector,
    Instance,
    Entry,
}

/// The placeholders by name.
const FIELDS: &[(&str, Field)] = &[
    ("id", Field::Id),
    ("control_id", Field::ControlId),
    ("msg_type", Field::MsgType),
    ("trigger", Field::Trigger),
    ("sending_app", Field::SendingApp),
    ("sending_fac", Field::SendingFac),
    ("connector", Field::Connector),
    ("instance", Field::Instance),
    ("entry", Field::Entry),
];

/// What a `{...}` of a template (file names, NATS subjects) stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Placeholder {
    /// A header or delivery field.
    Field(Field),
    /// The receive time (UTC) in this `strftime` format.
    Received(String),
}

/// Read the placeholder `name` (between the braces): a known field, or `received:` with a
/// valid `strftime` format.
pub(super) fn placeholder(name: &str) -> Result<Placeholder, String> {
    if let Some(format) = name.strip_prefix("received:") {
        let valid = !format.is_empty()
            && StrftimeItems::new(format).all(|item| !matches!(item, Item::Error));
        if !valid {
            return Err(format!(
                "{{received:{format}}} is not a valid strftime format (e.g. %Y%m%d)"
            ));
        }
        return Ok(Placeholder::Received(format.to_owned()));
    }
    match FIELDS.iter().find(|(known, _)| *known == name) {
        Some((_, field)) => Ok(Placeholder::Field(*field)),
        None => {
            let known: Vec<&str> = FIELDS.iter().map(|(known, _)| *known).collect();
            Err(format!(
                "unknown placeholder {{{name}}}; use {} or received:<strftime>",
                known.join(", ")
            ))
        }
    }
}

/// The receive time of `envelope` (UTC) in the `strftime` `format`.
pub(super) fn received(envelope: &Envelope, format: &str) -> String {
    chrono::DateTime::from_timestamp_micros(envelope.record.received_at_micros)
        .unwrap_or_default()
        .format(format)
        .to_string()
}

impl FileNameTemplate {
    /// Parse and check a template: known placeholders only, a valid `strftime` format for
    /// `{received:...}`, a relative path that cannot leave the directory.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = template;
        let mut has_id = false;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest
                        .find('}')
                        .ok_or_else(|| format!("`{{` without `}}` in {template:?}"))?;
                    let name = &rest[1..end];
                    match placeholder(name)? {
                        Placeholder::Received(format) => {
                            if format.contains('/') {
                                return Err("a {received:...} format may not contain '/'; put the '/' outside the braces".to_owned());
                            }
                            parts.push(Part::Received(format));
                        }
                        Placeholder::Field(field) => {
                            has_id |= matches!(field, Field::Id | Field::Entry);
                            parts.push(Part::Field(field));
                        }
                    }
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let literal = &rest[..end];
                    if literal.contains('}') {
                        return Err(format!("`}}` without `{{` in {template:?}"));
                    }
                    parts.push(Part::Literal(literal.to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        let literal_path: String = parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.as_str(),
                _ => "x",
            })
            .collect();
        let path = Path::new(&literal_path);
        let plain = path
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
        if !plain || literal_path.ends_with('/') || literal_path.contains('\\') {
            return Err(format!(
                "{template:?} must be a relative file path without '..', '.', a leading '/' or a trailing '/'"
            ));
        }
        if !has_id {
            return Err(format!(
                "{template:?} must contain {{entry}} or {{id}}, so two messages never share a file name"
            ));
        }
        Ok(Self {
            parts,
            source: template.to_owned(),
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The relative path for a message. Header values are reduced to letters, digits, `-`,
    /// `_` and `.` (anything else becomes `_`), so a sender cannot steer the path.
    pub fn render(&self, envelope: &Envelope) -> PathBuf {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Received(format) => out.push_str(&sanitize(&received(envelope, format))),
                Part::Field(field) => out.push_str(&sanitize(&field.value(envelope))),
            }
        }
        // A DICOM object under the default name is a `.dcm` file.
        if self.source == DEFAULT_FILENAME
            && crate::dicom::is_dicom(&envelope.body)
            && let Some(stem) = out.strip_suffix(".hl7")
        {
            out = format!("{stem}.dcm");
        }
        PathBuf::from(out)
    }
}

impl Field {
    /// Its value for `envelope`, as it is (callers clean it for where it goes).
    pub(super) fn value(self, envelope: &Envelope) -> String {
        let header = &envelope.record.header;
        match self {
            Self::Id => envelope.message_id.to_string(),
            Self::ControlId => header.control_id.clone(),
            Self::MsgType => header.msg_type.clone(),
            Self::Trigger => header.trigger.clone(),
            Self::SendingApp => header.sending_app.clone(),
            Self::SendingFac => header.sending_fac.clone(),
            Self::Connector => envelope.connector.to_string(),
            Self::Instance => format!("{:016x}", envelope.instance_id),
            Self::Entry => envelope.seq.to_string(),
        }
    }
}

fn sanitize(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else if c == '.' {
                '.'
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// Writes each message to its own file.
#[derive(Debug)]
pub struct FileOutput {
    spec: FileSpec,
}

impl FileOutput {
    /// An output for `spec`.
    pub fn new(spec: FileSpec) -> Self {
        Self { spec }
    }

    /// Write the message durably under its templated name.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        let path = self
            .spec
            .directory
            .join(self.spec.filename.render(envelope));
        let body = self.spec.format.render(envelope)?;
        let id = envelope.message_id;
        tokio::task::spawn_blocking(move || write_atomically(&path, &body, id))
            .await
            .map_err(|error| DeliveryError::transient(format!("file write task failed: {error}")))?
            .map_err(|error| DeliveryError::transient(format!("cannot write the file: {error}")))
    }
}

/// Most files written with one flush ([`FileOutput::deliver_batch`]).
pub const BATCH: usize = 64;

impl FileOutput {
    /// Write several messages, each under its templated name, their data flushed together
    /// (see [`write_together`]), their renames in order, then one sync per folder. A message that cannot be
    /// rendered ends the batch there (the ones before it are written).
    pub async fn deliver_batch(
        &mut self,
        envelopes: &[Envelope],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut files = Vec::with_capacity(envelopes.len());
        let mut refused = None;
        for envelope in envelopes {
            let path = self
                .spec
                .directory
                .join(self.spec.filename.render(envelope));
            match self.spec.format.render(envelope) {
                Ok(body) => files.push((path, body, envelope.message_id)),
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        let count = files.len();
        let written = tokio::task::spawn_blocking(move || write_together(&files))
            .await
            .map_err(|error| DeliveryError::transient(format!("file write task failed: {error}")))
            .and_then(|written| {
                written.map_err(|error| {
                    DeliveryError::transient(format!("cannot write the files: {error}"))
                })
            });
        match written {
            Ok(()) => {
                let mut outcomes: Vec<Result<(), DeliveryError>> =
                    (0..count).map(|_| Ok(())).collect();
                outcomes.extend(refused.map(Err));
                outcomes
            }
            Err(error) => vec![Err(error)],
        }
    }
}

/// Write `files` durably: each to a temporary name, their data flushed (one `syncfs` per
/// folder where that is trusted, see [`syncfs_is_trusted`], else one sync per file), the
/// renames in order, then one sync per folder. On an error the temporary files not yet
/// renamed are removed (files already renamed stay: a resend writes them again under the
/// same name).
fn write_together(files: &[(std::path::PathBuf, bytes::Bytes, u64)]) -> std::io::Result<()> {
    let mut temporary: Vec<std::path::PathBuf> = Vec::with_capacity(files.len());
    let mut renamed = 0;
    let result = (|| {
        // Each folder opened before anything is written: `syncfs` reports the write errors
        // that happen after its descriptor was opened.
        let mut folders: Vec<(&Path, std::fs::File)> = Vec::new();
        let mut written = Vec::with_capacity(files.len());
        for (path, body, id) in files {
            let directory = path.parent().unwrap_or(Path::new("."));
            if !folders.iter().any(|(folder, _)| *folder == directory) {
                std::fs::create_dir_all(directory)?;
                folders.push((directory, std::fs::File::open(directory)?));
            }
            let file_name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = directory.join(format!(".{file_name}.{id}.tmp"));
            let mut file = std::fs::File::create(&name)?;
            temporary.push(name);
            file.write_all(body)?;
            written.push(file);
        }
        if folders.iter().all(|(_, folder)| syncfs_is_trusted(folder)) {
            // One flush of the file system for every file's data: far cheaper than a sync
            // per file.
            for (_, folder) in &folders {
                syncfs(folder)?;
            }
        } else {
            for file in &written {
                file.sync_data()?;
            }
        }
        drop(written);
        for ((path, _, _), name) in files.iter().zip(&temporary) {
            std::fs::rename(name, path)?;
            renamed += 1;
        }
        // The renames are durable once their folders are.
        for (_, folder) in &folders {
            folder.sync_all()?;
        }
        Ok(())
    })();
    for name in temporary.iter().skip(renamed) {
        let _ = std::fs::remove_file(name);
    }
    result
}

/// Whether one `syncfs` makes new files in `folder` durable and reports their write errors:
/// Linux 5.8 or later (`syncfs` reports write-back errors since then) on a local file
/// system whose `syncfs` writes the data (ext2/3/4, XFS, Btrfs, ZFS, tmpfs). Not on network
/// or FUSE file systems, nor elsewhere: each file is then synced on its own.
#[cfg(target_os = "linux")]
fn syncfs_is_trusted(folder: &std::fs::File) -> bool {
    const LOCAL: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0x2FC1_2FC1, 0x0102_1994];
    // `f_type`'s type differs between C libraries (musl, glibc); the magic numbers fit.
    #[allow(clippy::unnecessary_cast, trivial_numeric_casts)]
    let local = rustix::fs::fstatfs(folder).is_ok_and(|stat| LOCAL.contains(&(stat.f_type as i64)));
    local && kernel_reports_syncfs_errors()
}

#[cfg(not(target_os = "linux"))]
fn syncfs_is_trusted(_folder: &std::fs::File) -> bool {
    false
}

/// Linux 5.8 or later (read once).
#[cfg(target_os = "linux")]
fn kernel_reports_syncfs_errors() -> bool {
    static AT_LEAST_5_8: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AT_LEAST_5_8.get_or_init(|| {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|part| part.parse::<u32>().ok());
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        version >= (5, 8)
    })
}

#[cfg(target_os = "linux")]
fn syncfs(folder: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(folder).map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn syncfs(folder: &std::fs::File) -> std::io::Result<()> {
    folder.sync_all()
}

fn write_atomically(path: &Path, body: &[u8], id: u64) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = directory.join(format!(".{file_name}.{id}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(body)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, path)?;
        // The rename is durable only once the directory is.
        std::fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked_when_loaded() {
        assert!(FileNameTemplate::parse("{received:%Y%m%d}/{control_id}-{id}.hl7").is_ok());
        assert!(FileNameTemplate::parse("{id}.hl7").is_ok());
        for bad in [
            "{nope}-{id}.hl7",
            "../{id}.hl7",
            "/abs/{id}.hl7",
            "{control_id}.hl7",
            "{received:%Q}/{id}",
            "{received:%Y/%m}/{id}",
            "{id",
            "{id}}",
            "dir/{id}/",
        ] {
            assert!(
                FileNameTemplate::parse(bad).is_err(),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn header_values_cannot_steer_the_path() {
        assert_eq!(sanitize("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitize(".."), "_");
        assert_eq!(sanitize(""), "_");
        assert_eq!(sanitize("ABC-12_3.x"), "ABC-12_3.x");
        assert_eq!(sanitize("a/b\\c d"), "a_b_c_d");
    }
}
