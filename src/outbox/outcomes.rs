//! What becomes of queue entries, recorded through the writer: delivered (one or a batch),
//! a failed attempt to retry, a dead letter, a replay, a reprocessing, a purge. The
//! delivery workers and the dead-letter commands call these; intake, retention and the
//! audit trail are in the handle's own module.

use super::request::{Reply, Request};
use super::{AuditContext, ConnectorId, MessageId, Outbox, Seq, StoreError, StoredCopy};

impl Outbox {
    /// Record that `connector` delivered its queue entry `seq` after `attempts` attempts: the
    /// entry leaves the queue. False when the entry was not there.
    pub async fn mark_delivered(
        &self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::Delivered {
            connector,
            seq,
            attempts,
            reply,
        };
        self.submit(request, answer).await
    }

    /// [`Outbox::mark_delivered`] for several entries of `connector` (`(seq, attempts)`, a
    /// batch its output delivered together), in one request: they leave the queue in the
    /// same commit. Answers how many were there.
    pub async fn mark_delivered_many(
        &self,
        connector: ConnectorId,
        entries: Vec<(Seq, u32)>,
    ) -> Result<usize, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::DeliveredMany {
            connector,
            entries,
            reply,
        };
        self.submit(request, answer).await
    }

    /// Record a failed attempt that will be retried at `next_attempt_micros`. False when the
    /// entry was not there.
    pub async fn record_failure(
        &self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        next_attempt_micros: i64,
        error: String,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::Retry {
            connector,
            seq,
            attempts,
            next_attempt_micros,
            error,
            reply,
        };
        self.submit(request, answer).await
    }

    /// Move a queue entry to its connector's dead-letter queue. False when it was not there.
    pub async fn dead_letter(
        &self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        reason: String,
    ) -> Result<bool, StoreError> {
        self.dead_letter_with(connector, seq, attempts, reason, None)
            .await
    }

    /// [`Outbox::dead_letter`], keeping what the downstream system answered in its own words
    /// (shown only to roles that may read message bodies; never logged).
    pub async fn dead_letter_with(
        &self,
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        reason: String,
        downstream: Option<String>,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::DeadLetter {
            connector,
            seq,
            attempts,
            reason,
            downstream,
            reply,
        };
        self.submit(request, answer).await
    }

    /// Put dead-letter entry `seq` of `connector` back at the tail of the queue of `to`
    /// (default: the same connector). Returns its new queue seq, or `None` when the entry was
    /// not in the dead-letter queue.
    pub async fn replay(
        &self,
        connector: ConnectorId,
        seq: Seq,
        to: Option<ConnectorId>,
    ) -> Result<Option<Seq>, StoreError> {
        let answers = self.replay_many(connector, &[seq], to).await?;
        Ok(answers.into_iter().next().flatten())
    }

    /// Replay several dead-letter entries of `connector`, in the order given: their new queue
    /// entries keep that order. One transaction. One answer per seq: the new seq, or `None`
    /// when it was not there.
    pub async fn replay_many(
        &self,
        connector: ConnectorId,
        seqs: &[Seq],
        to: Option<ConnectorId>,
    ) -> Result<Vec<Option<Seq>>, StoreError> {
        self.replay_audited(connector, seqs, to, None).await
    }

    /// [`Outbox::replay_many`] with its audit record (the outcome filled in) written in the
    /// same transaction.
    pub async fn replay_audited(
        &self,
        connector: ConnectorId,
        seqs: &[Seq],
        to: Option<ConnectorId>,
        audit: Option<AuditContext>,
    ) -> Result<Vec<Option<Seq>>, StoreError> {
        let to = to.unwrap_or(connector);
        if !self.registered(to) {
            return Err(StoreError::UnknownConnector(to));
        }
        let (reply, answer) = Reply::new();
        let request = Request::Replay {
            connector,
            seqs: seqs.to_vec(),
            to,
            audit,
            reply,
        };
        self.submit(request, answer).await
    }

    /// Queue stored messages again for `to`, each with the copy its current transform gave
    /// (`None`: `to` delivers the received bytes; a failed copy goes straight to its
    /// dead-letter queue), in one transaction with `audit`. One answer per message: the new
    /// seq, or `None` when it is not stored.
    pub async fn reprocess(
        &self,
        items: Vec<(MessageId, Option<StoredCopy>)>,
        to: ConnectorId,
        audit: Option<AuditContext>,
    ) -> Result<Vec<Option<Seq>>, StoreError> {
        if !self.registered(to) {
            return Err(StoreError::UnknownConnector(to));
        }
        let (reply, answer) = Reply::new();
        let request = Request::Reprocess {
            items,
            to,
            audit,
            reply,
        };
        self.submit(request, answer).await
    }

    /// Purge several dead-letter entries of `connector` in one transaction; one answer per
    /// seq (false: not there).
    pub async fn purge_many(
        &self,
        connector: ConnectorId,
        seqs: &[Seq],
    ) -> Result<Vec<bool>, StoreError> {
        self.purge_audited(connector, seqs, None).await
    }

    /// [`Outbox::purge_many`] with its audit record written in the same transaction.
    pub async fn purge_audited(
        &self,
        connector: ConnectorId,
        seqs: &[Seq],
        audit: Option<AuditContext>,
    ) -> Result<Vec<bool>, StoreError> {
        let (reply, answer) = Reply::new();
        let request = Request::Purge {
            connector,
            seqs: seqs.to_vec(),
            audit,
            reply,
        };
        self.submit(request, answer).await
    }

    /// Remove dead-letter entry `seq` of `connector` without delivering it. False when it was
    /// not there.
    pub async fn purge(&self, connector: ConnectorId, seq: Seq) -> Result<bool, StoreError> {
        let answers = self.purge_many(connector, &[seq]).await?;
        Ok(answers.into_iter().next().unwrap_or(false))
    }
}
