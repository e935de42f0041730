//! An object being spooled while it arrives (ADR 0020, decision 10): its file in the
//! store's spool, written a megabyte at a time off the async runtime.

use std::sync::Arc;

use crate::outbox::spool::{Spool, SpoolWriter, Spooled};

/// Bytes gathered before each write to the spool (the listener's memory budget reserves
/// them besides an object's head).
pub const SPOOL_STAGE: usize = 1 << 20;

/// An object being spooled: its file, the bytes waiting to be written (off the runtime, a
/// megabyte at a time), and whether a write failed (the rest is then read and discarded,
/// and the object answered out of resources).
#[derive(Default)]
pub(super) struct Spooling {
    pub(super) writer: Option<SpoolWriter>,
    staged: Vec<u8>,
    pub(super) failed: bool,
}

impl Spooling {
    /// Open a file in `spool` and write `head` (what was received so far) to it; the head
    /// is handed back, to be kept in memory.
    pub(super) async fn start(
        &mut self,
        spool: &Arc<Spool>,
        head: Vec<u8>,
        data_start: usize,
    ) -> Vec<u8> {
        let spool = Arc::clone(spool);
        let done = tokio::task::spawn_blocking(move || {
            let written = spool.create(data_start).and_then(|mut writer| {
                writer.write(&head)?;
                Ok(writer)
            });
            (head, written)
        })
        .await;
        match done {
            Ok((head, Ok(writer))) => {
                self.writer = Some(writer);
                head
            }
            Ok((head, Err(error))) => {
                self.fail(&error.to_string());
                head
            }
            Err(error) => {
                self.fail(&error.to_string());
                Vec::new()
            }
        }
    }

    /// Add bytes, writing them once a stage is full.
    pub(super) async fn push(&mut self, bytes: &[u8]) {
        self.staged.extend_from_slice(bytes);
        if self.staged.len() >= SPOOL_STAGE {
            self.write().await;
        }
    }

    async fn write(&mut self) {
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let staged = std::mem::take(&mut self.staged);
        let done = tokio::task::spawn_blocking(move || {
            let written = writer.write(&staged);
            (writer, staged, written)
        })
        .await;
        match done {
            Ok((writer, mut staged, Ok(()))) => {
                staged.clear();
                self.staged = staged;
                self.writer = Some(writer);
            }
            Ok((_, _, Err(error))) => self.fail(&error.to_string()),
            Err(error) => self.fail(&error.to_string()),
        }
    }

    fn fail(&mut self, error: &str) {
        // Dropped, the writer removes its file.
        self.writer = None;
        self.staged = Vec::new();
        self.failed = true;
        tracing::error!(
            error,
            "an object could not be written to the spool directory"
        );
    }

    /// Write the rest and make the file durable; `None` when any write failed.
    pub(super) async fn finish(mut self) -> Option<Spooled> {
        self.write().await;
        let writer = self.writer.take()?;
        match tokio::task::spawn_blocking(move || writer.finish()).await {
            Ok(Ok(spooled)) => Some(spooled),
            Ok(Err(error)) => {
                self.fail(&error.to_string());
                None
            }
            Err(error) => {
                self.fail(&error.to_string());
                None
            }
        }
    }
}
