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
