//! Batches: outputs that make many messages durable with one step (`file`, `postgres`,
//! `nats`) take the entries at the head of the queue that are due, up to their batch limit
//! (ADR 0014); a batch that stops at a failure leaves the rest of it to be sent one at a
//! time, so the one at fault gets its own outcome.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, info};

use super::marks::mark_and_count;
use super::{Deliver, Envelope, Worker, record_operation};
use crate::outbox::{Pending, StoreError};

impl<O: Deliver> Worker<O> {
    /// How many entries at the head of `batch` go out together: those that can be sent now
    /// (due, readable, not after a failed batch), up to the output's batch limit; 0 or 1:
    /// one at a time. Never with `min_interval` (it spaces single sends).
    pub(super) fn ready_for_batch(&self, batch: &std::collections::VecDeque<Pending>) -> usize {
        let limit = self.output.batch_limit();
        if limit <= 1 || self.settings.min_interval.is_some() || batch.len() < 2 {
            return 0;
        }
        let now = crate::outbox::now_micros();
        batch
            .iter()
            .take(limit)
            .take_while(|pending| {
                pending.damage.is_none()
                    && pending.transform_failure.is_none()
                    && pending.record.is_some()
                    && pending.body.is_some()
                    && pending.entry.next_attempt_micros <= now
                    && self.retry_at.is_none_or(|(seq, _)| seq != pending.seq)
                    && self.single_until.is_none_or(|until| pending.seq > until)
            })
            .count()
    }

    /// Deliver `entries` (ready, see [`Self::ready_for_batch`]) as one batch and record the
    /// delivered ones with one mark, committed while the next is sent. Returns how many
    /// were delivered, from the first; after a failure the rest of the batch goes one at a
    /// time, so its outcome is found and recorded as for a single message.
    pub(super) async fn attempt_batch(&mut self, entries: &[Pending]) -> Result<usize, StoreError> {
        let connector = self.settings.connector;
        let envelopes: Vec<Envelope> = entries
            .iter()
            .filter_map(|pending| {
                Some(Envelope {
                    instance_id: self.outbox.instance_id(),
                    message_id: pending.entry.message_id.0,
                    seq: pending.seq.0,
                    connector: Arc::clone(&self.settings.name),
                    record: pending.record.clone()?,
                    body: pending.body.clone()?,
                    attempt: pending.entry.attempts.saturating_add(1),
                    default_charset: self.settings.default_charset,
                })
            })
            .collect();
        // Marks in hand go to the writer now: a batch can take long, and they must not wait
        // for it.
        self.hand_over_marks().await?;
        self.last_send = Some(tokio::time::Instant::now());
        let started = tokio::time::Instant::now();
        self.stats.delivering.store(true, Ordering::Relaxed);
        let outcomes = self.output.deliver_batch(&envelopes).await;
        self.stats.delivering.store(false, Ordering::Relaxed);
        self.settle_mark().await?;
        let share = started.elapsed() / u32::try_from(outcomes.len().max(1)).unwrap_or(1);
        let mut delivered = Vec::with_capacity(outcomes.len());
        for (envelope, outcome) in envelopes.iter().zip(&outcomes) {
            record_operation(&self.settings.name, share, outcome);
            if outcome.is_err() {
                break;
            }
            delivered.push((crate::outbox::Seq(envelope.seq), envelope.attempt));
        }
        if delivered.len() < envelopes.len() {
            // Find the one at fault: the rest of this batch goes one at a time.
            self.single_until = envelopes.last().map(|last| crate::outbox::Seq(last.seq));
            if let Some(Err(error)) = outcomes.last() {
                debug!(connector = %self.settings.name, delivered = delivered.len(), of = envelopes.len(), reason = %error, "a batch stopped; the rest of it goes one at a time");
            }
        }
        let count = delivered.len();
        if count > 0 {
            let (outbox, stats) = (self.outbox.clone(), Arc::clone(&self.stats));
            self.marking = Some(tokio::spawn(async move {
                mark_and_count(&outbox, connector, delivered, &stats).await
            }));
            if let Some((since, failures)) = self.failing.take() {
                let backlog = self.outbox.depth(connector).queued;
                info!(connector = %self.settings.name, failing_for_secs = since.elapsed().as_secs(), failed_attempts = failures, backlog, "connector recovered: delivering again");
            }
        }
        Ok(count)
    }
}
