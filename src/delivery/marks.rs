//! The delivered marks of a FIFO worker (ADR 0003 and its amendments): committed while the
//! next entry is sent, those of quick sends about 16 at a time, always in queue order, and
//! all of them before any other outcome is recorded, before a wait and before the queue is
//! read again. A connector's `delivered` count moves when its mark is committed.

use std::sync::Arc;

use super::{Deliver, DeliveryStats, MARK_GROUP, Worker};
use crate::outbox::{ConnectorId, Outbox, Seq, StoreError};

impl<O: Deliver> Worker<O> {
    /// Wait until every delivered entry's mark is committed (or failed): the one on its way,
    /// then those that waited for it.
    pub(super) async fn settle_mark(&mut self) -> Result<(), StoreError> {
        if let Err(error) = self.settle_in_flight().await {
            // Still queued: delivered again, in order, after the queue is read again.
            self.unmarked.clear();
            return Err(error);
        }
        if self.unmarked.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.unmarked);
        mark_and_count(&self.outbox, self.settings.connector, entries, &self.stats)
            .await
            .map(|_| ())
    }

    /// Wait for the mark on its way to the writer, if any.
    pub(super) async fn settle_in_flight(&mut self) -> Result<(), StoreError> {
        match self.marking.take() {
            None => Ok(()),
            Some(marking) => match marking.await {
                Ok(marked) => marked.map(|_| ()),
                Err(failed) => Err(StoreError::Encoding(format!(
                    "recording a delivery failed: {failed}"
                ))),
            },
        }
    }

    /// Record `seq` as delivered while the next entry is sent: its mark goes to the writer
    /// now when no other is being committed and it need not `linger`; otherwise it waits
    /// with the others delivered meanwhile, and they go together once that commit is done
    /// and one is sent without lingering (or [`MARK_GROUP`] of them wait). Marks are
    /// committed in queue order.
    pub(super) async fn mark_delivered(
        &mut self,
        seq: Seq,
        attempts: u32,
        linger: bool,
    ) -> Result<(), StoreError> {
        self.unmarked.push((seq, attempts));
        let committing = self
            .marking
            .as_ref()
            .is_some_and(|marking| !marking.is_finished());
        if (committing || linger) && self.unmarked.len() < MARK_GROUP {
            return Ok(());
        }
        self.hand_over_marks().await
    }

    /// [`hand_over`] this worker's marks in hand. (While a send borrows the output, call
    /// [`hand_over`] with the fields instead.)
    pub(super) async fn hand_over_marks(&mut self) -> Result<(), StoreError> {
        hand_over(
            &mut self.marking,
            &mut self.unmarked,
            &self.outbox,
            self.settings.connector,
            &self.stats,
        )
        .await
    }
}

/// Send the marks in hand to the writer as one request, after the one being committed (so
/// marks stay in queue order). A failed commit drops them: they are still queued and are
/// sent again, in order.
pub(super) async fn hand_over(
    marking: &mut Option<tokio::task::JoinHandle<Result<usize, StoreError>>>,
    unmarked: &mut Vec<(Seq, u32)>,
    outbox: &Outbox,
    connector: ConnectorId,
    stats: &Arc<DeliveryStats>,
) -> Result<(), StoreError> {
    if let Some(in_flight) = marking.take() {
        let settled = match in_flight.await {
            Ok(marked) => marked.map(|_| ()),
            Err(failed) => Err(StoreError::Encoding(format!(
                "recording a delivery failed: {failed}"
            ))),
        };
        if let Err(error) = settled {
            unmarked.clear();
            return Err(error);
        }
    }
    if unmarked.is_empty() {
        return Ok(());
    }
    let entries = std::mem::take(unmarked);
    let (outbox, stats) = (outbox.clone(), Arc::clone(stats));
    *marking = Some(tokio::spawn(async move {
        mark_and_count(&outbox, connector, entries, &stats).await
    }));
    Ok(())
}

/// Mark `entries` delivered and, once that is committed, count them in `delivered` (so the
/// count never runs ahead of the store).
pub(super) async fn mark_and_count(
    outbox: &Outbox,
    connector: ConnectorId,
    entries: Vec<(Seq, u32)>,
    stats: &DeliveryStats,
) -> Result<usize, StoreError> {
    let count = entries.len() as u64;
    let marked = outbox.mark_delivered_many(connector, entries).await?;
    stats.count_delivered(count);
    Ok(marked)
}
