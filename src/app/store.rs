//! The store subsystem: the outbox in `DATA_DIR` and its writer thread.

use std::sync::Arc;

use anyhow::Context;
use tracing::warn;

use crate::config::Settings;
use crate::outbox::{Outbox, OutboxOptions, Storage, WriterHandle};

/// The open outbox and its writer thread.
#[derive(Debug)]
pub(super) struct Store {
    /// The handle every subsystem clones; this one is dropped last.
    pub(super) outbox: Outbox,
    writer: WriterHandle,
}

impl Store {
    /// Open the outbox (off the runtime: it reads and may repair files) with `connectors`
    /// known by name, and start its writer.
    pub(super) async fn open(
        settings: &Settings,
        connectors: Vec<String>,
        storage: Option<Arc<dyn Storage>>,
    ) -> anyhow::Result<Self> {
        let mut options = OutboxOptions::new(settings.outbox_path());
        options.dedup_window = settings.dedup_window;
        options.dedup_max_entries = settings.dedup_max_entries;
        options.journal = settings.store_journal;
        options.keys = settings.store_keys()?;
        // The patient index is built from the bodies when it is not built with the index
        // key in use (ADR 0019): the gateway's open does it before it serves.
        options.patient_fields = Some(crate::ingest::patient_reader(settings.default_charset));
        if let Some(storage) = storage {
            options.storage = storage;
        }
        let path = settings.outbox_path();
        let (outbox, writer) =
            tokio::task::spawn_blocking(move || Outbox::open(options, &connectors))
                .await
                .context("outbox open task failed")?
                .with_context(|| {
                    format!("cannot open the outbox in DATA_DIR ({})", path.display())
                })?;
        Ok(Self { outbox, writer })
    }

    /// Stop the writer once it has answered what is queued, and join it. When the drain was
    /// `cut_short`, connections or workers may still hold outbox handles: the writer is told
    /// to stop, so what was queued before is committed and answered and anything later gets
    /// an error (never AA), and the data file is closed cleanly.
    pub(super) async fn shutdown(self, cut_short: bool) {
        if cut_short && let Err(error) = self.outbox.stop().await {
            warn!(error = %crate::outbox::Chain(&error), "the outbox writer was already stopped");
        }
        drop(self.outbox);
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
}
