//! A `type: directory` listener entry's own keys: the folder, the names read, what becomes
//! of a file, and when a file counts as written ([`crate::file_intake`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::file_intake::{AfterStored, DirectorySettings};
use crate::yaml::Spanned;

/// The keys only a directory entry takes.
pub const DIRECTORY_KEYS: [&str; 8] = [
    "path",
    "pattern",
    "done",
    "delete",
    "error",
    "settle_time",
    "poll_interval",
    "max_file_size",
];

/// Defaults: every name, two seconds unchanged, a poll a second, 64 MiB.
const DEFAULT_PATTERN: &str = "*";
const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
const DEFAULT_POLL: Duration = Duration::from_secs(1);
const DEFAULT_MAX_FILE: u64 = 64 << 20;

/// Resolve a directory entry's keys; `problem(at_key, text)` reports one.
pub(super) fn resolve(
    keys: &[(&'static str, Spanned<String>)],
    mut problem: impl FnMut(Option<&Spanned<String>>, &str, String),
) -> Option<DirectorySettings> {
    let get = |key: &str| {
        keys.iter()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value)
    };
    let mut ok = true;
    let path = match get("path") {
        Some(path) if !path.value.trim().is_empty() => PathBuf::from(path.value.trim()),
        _ => {
            problem(
                None,
                "path",
                "a directory listener needs `path`, the folder it reads (e.g. /data/inbox/lab)"
                    .to_owned(),
            );
            return None;
        }
    };
    let pattern = get("pattern").map_or(DEFAULT_PATTERN.to_owned(), |pattern| {
        pattern.value.trim().to_owned()
    });
    if pattern.is_empty() || pattern.contains('/') {
        problem(get("pattern"), "pattern", "expected a file name pattern such as \"*.hl7\" (`*` any run of characters, `?` one; no folders)".to_owned());
        ok = false;
    }
    let delete = match get("delete").map(|value| value.value.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            problem(get("delete"), "delete", "expected true or false".to_owned());
            ok = false;
            false
        }
    };
    let done = get("done").map(|done| PathBuf::from(done.value.trim()));
    let after = match (done, delete) {
        (Some(_), true) => {
            problem(
                get("done"),
                "done",
                "set either `done` (a folder stored files move to) or `delete: true`, not both"
                    .to_owned(),
            );
            ok = false;
            AfterStored::Delete
        }
        (Some(done), false) => AfterStored::MoveTo(done),
        (None, true) => AfterStored::Delete,
        (None, false) => {
            problem(None, "done", "a directory listener needs `done` (the folder stored files move to, e.g. /data/inbox/lab/done) or `delete: true`".to_owned());
            ok = false;
            AfterStored::Delete
        }
    };
    let error = get("error").map_or_else(
        || path.join("error"),
        |error| PathBuf::from(error.value.trim()),
    );
    let mut duration = |key: &str, fallback: Duration, least: Duration| match get(key) {
        None => fallback,
        Some(value) => match crate::units::parse_duration(&value.value) {
            Ok(parsed) if parsed >= least => parsed,
            Ok(_) => {
                problem(Some(value), key, format!("must be at least {least:?}"));
                ok = false;
                fallback
            }
            Err(text) => {
                problem(Some(value), key, text);
                ok = false;
                fallback
            }
        },
    };
    let settle_time = duration("settle_time", DEFAULT_SETTLE, Duration::ZERO);
    let poll_interval = duration("poll_interval", DEFAULT_POLL, Duration::from_millis(10));
    let max_file_size = match get("max_file_size") {
        None => DEFAULT_MAX_FILE,
        Some(value) => match crate::units::parse_size(&value.value) {
            Ok(size) if (1024..=1 << 32).contains(&size) => size,
            Ok(_) => {
                problem(
                    Some(value),
                    "max_file_size",
                    "expected a size from 1KiB to 4GiB, e.g. 64MiB".to_owned(),
                );
                ok = false;
                DEFAULT_MAX_FILE
            }
            Err(text) => {
                problem(Some(value), "max_file_size", text);
                ok = false;
                DEFAULT_MAX_FILE
            }
        },
    };
    let inside = |folder: &PathBuf| folder == &path;
    if inside(&error) || matches!(&after, AfterStored::MoveTo(done) if inside(done)) {
        problem(
            None,
            "done",
            "`done` and `error` must be other folders than `path` (a subfolder of it is fine)"
                .to_owned(),
        );
        ok = false;
    }
    ok.then_some(DirectorySettings {
        path,
        pattern,
        after,
        error,
        settle_time,
        poll_interval,
        max_file_size,
    })
}
