//! Opening a stopped server's data directory from the CLI (`dlq --offline`,
//! `audit --offline`).

use anyhow::Context;

use crate::outbox::{Chain, Outbox, OutboxOptions};

/// Open a stopped server's data directory, through its journal when it has one (a crash's
/// commits are replayed either way; a clean close leaves the journal empty).
pub(crate) async fn open_offline(
    data_dir: &std::path::Path,
) -> anyhow::Result<(Outbox, crate::outbox::WriterHandle)> {
    let path = data_dir.join(crate::outbox::FILE_NAME);
    let mut options = OutboxOptions::new(path.clone());
    options.dedup_window = None;
    let journal = crate::outbox::journal_path(&path);
    options.journal = journal
        .try_exists()
        .with_context(|| format!("cannot look for {}", journal.display()))?;
    options.keys = keys_from_environment()?;
    let opened = tokio::task::spawn_blocking(move || Outbox::open_existing(options))
        .await
        .context("open task failed")?;
    match opened {
        Ok(opened) => Ok(opened),
        Err(error) if error.is_in_use() => anyhow::bail!(
            "{} is in use by a running mfoundry; leave out --offline to go through its admin API",
            path.display()
        ),
        Err(error) => {
            Err(anyhow::anyhow!("{}", Chain(&error))).context("cannot open the data directory")
        }
    }
}

/// The store keys from `ENCRYPTION_KEY_FILE` and `ENCRYPTION_OLD_KEY_FILES`, as the gateway
/// reads them (plain when the first is unset or empty).
pub(crate) fn keys_from_environment() -> anyhow::Result<crate::outbox::crypt::Keys> {
    let variable = |name: &str| std::env::var(name).unwrap_or_default();
    let key_file = variable("ENCRYPTION_KEY_FILE");
    let old: Vec<std::path::PathBuf> = variable("ENCRYPTION_OLD_KEY_FILES")
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(std::path::PathBuf::from)
        .collect();
    if key_file.trim().is_empty() {
        anyhow::ensure!(
            old.is_empty(),
            "ENCRYPTION_OLD_KEY_FILES is set without ENCRYPTION_KEY_FILE; set the current key too"
        );
        return Ok(crate::outbox::crypt::Keys::plain());
    }
    crate::config::EncryptionSettings {
        key_file: std::path::PathBuf::from(key_file.trim()),
        old_key_files: old,
    }
    .load()
    .map_err(anyhow::Error::msg)
}
