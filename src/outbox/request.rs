//! Requests to the writer thread. Each operation is a variant that carries its own reply: a
//! channel of exactly its result type, and the slot the transaction fills before the commit.
//! The answer is sent only after the commit returned, so "stored" is never heard early, and
//! no caller can receive another operation's kind of answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::audit::AuditEvent;
use super::{
    Appended, BatchAppended, ConnectorId, FileMark, MessageId, NewMessage, OutboxStats, Retained,
    Seq, StoreError, StoredCopy,
};

/// The receiving end of a [`Reply`].
pub(super) type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

/// Where the writer answers one request.
#[derive(Debug)]
pub(super) struct Reply<T> {
    sender: oneshot::Sender<Result<T, StoreError>>,
    /// Filled by the transaction; sent once it committed.
    outcome: Option<T>,
}

impl<T> Reply<T> {
    pub(super) fn new() -> (Self, Answer<T>) {
        let (sender, answer) = oneshot::channel();
        (
            Self {
                sender,
                outcome: None,
            },
            answer,
        )
    }

    /// What the operation did, to be sent once the transaction commits.
    pub(super) fn set(&mut self, outcome: T) {
        self.outcome = Some(outcome);
    }

    fn send(self, result: Result<T, StoreError>) {
        // The caller may have gone (a dropped future): nothing to tell.
        let _ = self.sender.send(result);
    }

    fn committed(self) {
        match self.outcome {
            Some(outcome) => {
                let _ = self.sender.send(Ok(outcome));
            }
            None => {
                let _ = self.sender.send(Err(StoreError::Encoding(
                    "the operation was not applied in its transaction".to_owned(),
                )));
            }
        }
    }
}

/// Who did an admin operation, for the audit record written in its transaction (the outcome
/// is filled in from what the operation did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    /// The token's id (`cli` for the offline commands).
    pub token_id: String,
    /// What (`dlq.replay`, `dlq.purge`).
    pub action: String,
    /// On what (`connector lab`).
    pub target: String,
}

/// One operation for the writer, with its reply.
#[derive(Debug)]
pub(super) enum Request {
    /// Store a new message and queue it for the connectors its filters chose.
    Append {
        message: Box<NewMessage>,
        /// Its patient index tags.
        tags: Vec<super::patients::Tag>,
        reply: Reply<Appended>,
    },
    /// Store several messages in one transaction, all or none, and the file they came from.
    AppendBatch {
        messages: Vec<NewMessage>,
        /// Each message's patient index tags.
        tags: Vec<Vec<super::patients::Tag>>,
        file: Option<FileMark>,
        reply: Reply<BatchAppended>,
    },
    /// A connector's output confirmed the queue entry: remove it, record DELIVERED. Answers
    /// false when the entry was not there.
    Delivered {
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        reply: Reply<bool>,
    },
    /// A connector's output confirmed several queue entries at once (a batch): remove each,
    /// record DELIVERED. Answers how many were there.
    DeliveredMany {
        connector: ConnectorId,
        entries: Vec<(Seq, u32)>,
        reply: Reply<usize>,
    },
    /// A delivery attempt failed and will be retried: update the queue entry.
    Retry {
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        next_attempt_micros: i64,
        error: String,
        reply: Reply<bool>,
    },
    /// Give up on a queue entry: move it to the connector's dead-letter queue, with the
    /// downstream system's own words when it answered.
    DeadLetter {
        connector: ConnectorId,
        seq: Seq,
        attempts: u32,
        reason: String,
        downstream: Option<String>,
        reply: Reply<bool>,
    },
    /// Put dead-letter entries back at the tail of a connector's queue, in order, and audit
    /// it, all in one transaction; answers each new seq (`None`: not in the dead-letter queue).
    Replay {
        connector: ConnectorId,
        seqs: Vec<Seq>,
        to: ConnectorId,
        audit: Option<AuditContext>,
        reply: Reply<Vec<Option<Seq>>>,
    },
    /// Queue stored messages again for a connector, each with the copy its current transform
    /// gave (ADR 0009), and audit it, in one transaction; answers each new seq (`None`: the
    /// message is not stored).
    Reprocess {
        items: Vec<(MessageId, Option<StoredCopy>)>,
        to: ConnectorId,
        audit: Option<AuditContext>,
        reply: Reply<Vec<Option<Seq>>>,
    },
    /// Remove dead-letter entries without delivering them, and audit it, in one transaction;
    /// answers for each whether it was there.
    Purge {
        connector: ConnectorId,
        seqs: Vec<Seq>,
        audit: Option<AuditContext>,
        reply: Reply<Vec<bool>>,
    },
    /// Append an admin action to the audit trail; answers its seq.
    Audit {
        event: AuditEvent,
        reply: Reply<u64>,
    },
    /// Remove up to `max` of the oldest audit records written before `cutoff_micros` (never
    /// the newest record, which carries the chain forward); answers how many.
    PruneAudit {
        cutoff_micros: i64,
        max: usize,
        reply: Reply<u64>,
    },
    /// Remove old messages that every connector is done with.
    Retain {
        cutoff_micros: i64,
        after: Option<MessageId>,
        max_scan: usize,
        reply: Reply<Retained>,
    },
    /// Enter the patient index tags of up to `max` messages not yet merged into the
    /// tag-ordered entries; answers how many, and whether more wait.
    MergeIndex {
        max: usize,
        reply: Reply<(usize, bool)>,
    },
    /// Give each connector name an id (names seen before keep theirs); answers them all.
    Register {
        names: Vec<String>,
        reply: Reply<std::collections::HashMap<String, ConnectorId>>,
    },
    /// Commit what was queued before this request, then stop: later requests are answered
    /// [`StoreError::WriterGone`], and the database is closed before the answer.
    Stop { reply: Reply<()> },
}

impl Request {
    /// Whether this operation stores a received message.
    pub(super) fn is_append(&self) -> bool {
        matches!(self, Self::Append { .. } | Self::AppendBatch { .. })
    }

    /// Body bytes this operation writes (for the batch's byte cap).
    pub(super) fn body_len(&self) -> usize {
        match self {
            Self::Append { message, .. } => message.body.len(),
            Self::AppendBatch { messages, .. } => {
                messages.iter().map(|message| message.body.len()).sum()
            }
            _ => 0,
        }
    }

    /// Answer with what the committed transaction did.
    pub(super) fn committed(self, stats: &OutboxStats) {
        match self {
            Self::Append { reply, .. } => {
                match &reply.outcome {
                    Some(Appended::Duplicate { .. }) => {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Appended::Stored { .. }) => {
                        stats.records.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
                reply.committed();
            }
            Self::AppendBatch { reply, .. } => {
                if let Some(BatchAppended::Stored(appended)) = &reply.outcome {
                    for appended in appended {
                        let counter = match appended {
                            Appended::Duplicate { .. } => &stats.duplicates,
                            Appended::Stored { .. } => &stats.records,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                reply.committed();
            }
            Self::Delivered { reply, .. }
            | Self::Retry { reply, .. }
            | Self::DeadLetter { reply, .. } => reply.committed(),
            Self::Purge { reply, .. } => reply.committed(),
            Self::DeliveredMany { reply, .. } => reply.committed(),
            Self::Replay { reply, .. } | Self::Reprocess { reply, .. } => reply.committed(),
            Self::Audit { reply, .. } | Self::PruneAudit { reply, .. } => reply.committed(),
            Self::Retain { reply, .. } => reply.committed(),
            Self::MergeIndex { reply, .. } => reply.committed(),
            Self::Register { reply, .. } => reply.committed(),
            Self::Stop { reply } => reply.committed(),
        }
    }

    /// Answer with an error: the transaction holding this request did not commit.
    pub(super) fn failed(self, error: &Arc<StoreError>) {
        let error = || StoreError::CommitFailed {
            source: Arc::clone(error),
        };
        match self {
            Self::Append { reply, .. } => reply.send(Err(error())),
            Self::AppendBatch { reply, .. } => reply.send(Err(error())),
            Self::Delivered { reply, .. }
            | Self::Retry { reply, .. }
            | Self::DeadLetter { reply, .. } => reply.send(Err(error())),
            Self::Purge { reply, .. } => reply.send(Err(error())),
            Self::DeliveredMany { reply, .. } => reply.send(Err(error())),
            Self::Replay { reply, .. } | Self::Reprocess { reply, .. } => reply.send(Err(error())),
            Self::Audit { reply, .. } | Self::PruneAudit { reply, .. } => reply.send(Err(error())),
            Self::Retain { reply, .. } => reply.send(Err(error())),
            Self::MergeIndex { reply, .. } => reply.send(Err(error())),
            Self::Register { reply, .. } => reply.send(Err(error())),
            Self::Stop { reply } => reply.send(Err(error())),
        }
    }

    /// Answer that the writer is gone (after a stop).
    pub(super) fn gone(self) {
        match self {
            Self::Append { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::AppendBatch { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::Delivered { reply, .. }
            | Self::Retry { reply, .. }
            | Self::DeadLetter { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::Purge { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::DeliveredMany { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::Replay { reply, .. } | Self::Reprocess { reply, .. } => {
                reply.send(Err(StoreError::WriterGone))
            }
            Self::Audit { reply, .. } | Self::PruneAudit { reply, .. } => {
                reply.send(Err(StoreError::WriterGone))
            }
            Self::Retain { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::MergeIndex { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::Register { reply, .. } => reply.send(Err(StoreError::WriterGone)),
            Self::Stop { reply } => reply.send(Err(StoreError::WriterGone)),
        }
    }
}
