//! Batches (`FHS`/`BHS` … `BTS`/`FTS`) and files of messages: every message decided as a
//! single one would be, then all of them stored in **one commit** (all or none), then one
//! answer: a batch of ACKs mirroring the input (`batch_ack: per_message`) or one ACK for the
//! whole batch (`batch_ack: batch`, where one refused message refuses the batch: AR, nothing
//! queued). Trailer counts that differ from what was received are reported, and refuse the
//! batch unless `batch_count_mismatch: accept`.
//!
//! A batch refused whole is still recorded (each message stored as `REJECTED`, nothing
//! queued), as a refused single message is, so "what became of it" has an answer.

use std::net::SocketAddr;

use bytes::Bytes;

use super::{Decided, Decision, Ingest, Outcome, Reason, Reply, control_id_for_logs};
use crate::hl7::{
    AckCode, AckError, AckMode, Envelope, ErrorCode, Message, Verdict, build_ack, envelope_field,
    parse_envelope,
};
use crate::outbox::{Appended, BatchAppended, Disposition, FileMark, FileRecord, MessageId};

/// What a batch is answered with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchAck {
    /// A batch of ACKs mirroring the input: FHS/BHS, one ACK per message, BTS/FTS counts.
    #[default]
    PerMessage,
    /// One ACK for the whole batch (MSA-2 the batch's control id, BHS-11 else FHS-11).
    Batch,
}

/// What a trailer count (BTS-1, FTS-1) that differs from what was received means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CountMismatch {
    /// The batch is refused (AR), nothing queued.
    #[default]
    Reject,
    /// The batch is taken; the difference is logged and counted.
    Accept,
}

/// A listener's batch settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSettings {
    /// `batch_ack`.
    pub ack: BatchAck,
    /// `batch_count_mismatch`.
    pub count_mismatch: CountMismatch,
}

/// Where a batch came from.
#[derive(Clone, Copy, Debug)]
pub struct From<'a> {
    /// The connection's peer (a directory listener gives an unspecified address).
    pub peer: SocketAddr,
    /// The client certificate's identity (mTLS).
    pub identity: Option<&'a crate::tls::PeerIdentity>,
    /// Who authenticated otherwise (`token=<id>`, `file=<listener>`), for the audit record.
    pub sender: Option<&'a str>,
}

/// A message of a batch that was refused, for a directory listener's error folder.
#[derive(Clone, Debug)]
pub struct RefusedMessage {
    /// Its 1-based place in the batch.
    pub index: usize,
    /// MSH-10 as text.
    pub control_id: Option<String>,
    /// Why (mfoundry's words, rule names and places; never message text).
    pub reason: String,
    /// The message as received.
    pub bytes: Bytes,
}

/// What became of a batch.
#[derive(Clone, Debug)]
pub struct BatchOutcome {
    /// The answer to send (the batch of ACKs, or one ACK), its code the worst of the batch.
    pub outcome: Outcome,
    /// Messages in the batch (ACKs received inside it not counted).
    pub messages: usize,
    /// Messages stored as new and accepted.
    pub stored: usize,
    /// Messages found stored already (retransmissions).
    pub duplicates: usize,
    /// Messages refused, each with its reason (all of them when the batch was refused).
    pub refused: Vec<RefusedMessage>,
    /// Why the whole batch was refused (unreadable, counts, `batch_ack: batch`).
    pub batch_refusal: Option<String>,
    /// Trailer counts that differ from what was received.
    pub count_problems: Vec<String>,
    /// The file had been stored before (its mark was found): nothing was written.
    pub file_seen: Option<FileRecord>,
    /// Storing failed: nothing was stored, the sender must send it again.
    pub store_failed: bool,
    /// Storing failed for a batch of refused messages only: they are not recorded (the
    /// answer stands, but a directory listener keeps the file).
    pub not_recorded: bool,
}

/// One message of the batch, decided.
struct Item {
    /// Its group (batch) in the envelope.
    group: usize,
    decided: Box<Decided>,
}

impl Ingest {
    /// Decide, store (one commit) and answer a batch or a file of messages. `file`: the
    /// file's mark, written in the same commit (a directory listener).
    pub async fn handle_batch(
        &self,
        raw: Bytes,
        from: &From<'_>,
        file: Option<FileMark>,
    ) -> BatchOutcome {
        let received_at_micros = chrono::Utc::now().timestamp_micros();
        // One configuration decides the whole batch (a reload takes effect at the next one).
        let decider = self.current();
        let envelope = match parse_envelope(&raw) {
            Ok(envelope) => envelope,
            Err(error) => {
                return self.unreadable(&raw, format!("the batch cannot be read: {error}"));
            }
        };
        let decisions = super::off_runtime(&decider, || {
            let mut decisions = Vec::with_capacity(envelope.message_count());
            for (group, messages) in envelope.groups.iter().enumerate() {
                for message in &messages.messages {
                    decisions.push((group, decider.decide_frame(message.clone(), from.identity)));
                }
            }
            decisions
        });
        let mut items = Vec::with_capacity(decisions.len());
        for (index, (group, decision)) in decisions.into_iter().enumerate() {
            match decision {
                Decision::Decided(decided) => items.push(Item { group, decided }),
                Decision::Done(outcome) if outcome.reason == Some(Reason::UnreadableHeader) => {
                    return self.unreadable(
                        &raw,
                        format!(
                            "message {} of the batch has no readable MSH header",
                            index + 1
                        ),
                    );
                }
                // An ACK inside a batch is not acknowledged (as outside one).
                Decision::Done(_) => {}
            }
        }
        let count_problems: Vec<String> = envelope
            .count_problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !count_problems.is_empty() {
            tracing::warn!(
                listener = %decider.listener,
                problems = %count_problems.join("; "),
                accepted = self.batches.count_mismatch == CountMismatch::Accept,
                "batch trailer counts differ from what was received"
            );
        }
        let mut batch_refusal = None;
        if !count_problems.is_empty() && self.batches.count_mismatch == CountMismatch::Reject {
            batch_refusal = Some(format!(
                "the batch's counts differ from what was received ({}); fix the counts, or set batch_count_mismatch: accept",
                count_problems.join("; ")
            ));
        }
        if batch_refusal.is_none() && self.batches.ack == BatchAck::Batch {
            batch_refusal = items
                .iter()
                .enumerate()
                .find(|(_, item)| item.decided.verdict != Verdict::Accept)
                .map(|(index, item)| {
                    let why = item
                        .decided
                        .error
                        .as_ref()
                        .map_or("refused", |error| error.user_message.as_str());
                    format!(
                        "message {} of the batch was refused ({why}); with batch_ack: batch one refused message refuses the batch",
                        index + 1
                    )
                });
        }
        if let Some(refusal) = &batch_refusal {
            for item in &mut items {
                self.refuse_in_batch(&mut item.decided, refusal);
            }
        }
        let mut messages = Vec::with_capacity(items.len());
        for item in &mut items {
            messages.push(decider.new_message(
                &mut item.decided,
                received_at_micros,
                from.peer,
                from.identity,
                from.sender,
            ));
        }
        let routes: Vec<_> = messages
            .iter()
            .map(|message| message.record.routes.clone())
            .collect();
        // A refused file gets no mark: sent again once fixed or not, it is read again.
        let file = file.filter(|_| batch_refusal.is_none());
        let stored = self.outbox.append_batch(messages, file).await;
        let mut result = BatchOutcome {
            outcome: Outcome {
                reply: Reply::Ignore,
                control_id: batch_control_id(&envelope),
                reason: batch_refusal.as_ref().map(|_| Reason::BatchRefused),
                message_id: None,
            },
            messages: items.len(),
            stored: 0,
            duplicates: 0,
            refused: Vec::new(),
            batch_refusal,
            count_problems,
            file_seen: None,
            store_failed: false,
            not_recorded: false,
        };
        // Each message's ACK as it stands after storing.
        let mut acks: Vec<Option<Vec<u8>>> = Vec::with_capacity(items.len());
        match stored {
            Ok(BatchAppended::Stored(appended)) => {
                for ((item, appended), routes) in items.iter_mut().zip(appended).zip(&routes) {
                    match appended {
                        Appended::Stored { id } => {
                            result.outcome.message_id.get_or_insert(id);
                            if item.decided.verdict == Verdict::Accept {
                                result.stored += 1;
                                decider.count_routes(routes);
                            }
                            acks.push(item.decided.ack.take());
                        }
                        Appended::Duplicate { id, ack } => {
                            result.outcome.message_id.get_or_insert(id);
                            result.duplicates += 1;
                            acks.push(ack);
                        }
                    }
                }
            }
            Ok(BatchAppended::FileSeen(record)) => {
                result.outcome.message_id = record.first_message.map(MessageId);
                result.file_seen = Some(record);
                result.outcome.reason = Some(Reason::Duplicate);
                acks.extend(items.iter_mut().map(|item| item.decided.ack.take()));
            }
            Err(store_error) => {
                let accepted = items
                    .iter()
                    .any(|item| item.decided.verdict == Verdict::Accept);
                if accepted {
                    tracing::error!(error = %crate::outbox::Chain(&store_error), listener = %decider.listener, messages = items.len(), "batch could not be stored; answering with an error");
                    result.store_failed = true;
                    result.outcome.reason = Some(Reason::StoreFailed);
                } else {
                    result.not_recorded = true;
                    tracing::warn!(error = %crate::outbox::Chain(&store_error), "refused batch could not be recorded");
                }
                for item in &mut items {
                    if accepted && item.decided.verdict == Verdict::Accept {
                        self.fail_in_batch(&mut item.decided);
                    }
                    acks.push(item.decided.ack.take());
                }
            }
        }
        for (index, item) in items.iter().enumerate() {
            if item.decided.verdict != Verdict::Accept {
                result.refused.push(RefusedMessage {
                    index: index + 1,
                    control_id: item.decided.control_id.clone(),
                    reason: item
                        .decided
                        .error
                        .as_ref()
                        .map_or_else(|| "refused".to_owned(), |error| error.user_message.clone()),
                    bytes: item.decided.message.raw().clone(),
                });
            }
        }
        let code = if result.store_failed {
            AckCode::AE
        } else if !result.refused.is_empty() {
            AckCode::AR
        } else {
            AckCode::AA
        };
        let bytes = match self.batches.ack {
            BatchAck::PerMessage => {
                let mut by_group = vec![Vec::new(); envelope.groups.len()];
                for (item, ack) in items.iter().zip(acks) {
                    if let Some(ack) = ack {
                        by_group[item.group].push(ack);
                    }
                }
                envelope.reply(&by_group, &decider.stamper.stamp())
            }
            BatchAck::Batch => {
                let text = result
                    .batch_refusal
                    .clone()
                    .or_else(|| {
                        result.store_failed.then(|| {
                            "the batch could not be stored and was not accepted; send it again"
                                .to_owned()
                        })
                    })
                    .or_else(|| {
                        (!result.count_problems.is_empty()).then(|| {
                            format!(
                                "accepted; the batch's counts differ from what was received ({})",
                                result.count_problems.join("; ")
                            )
                        })
                    });
                self.batch_ack(&raw, &envelope, code, text)
            }
        };
        // Not stored, and a message asked for no error ACK (MSH-15/16): close the connection
        // so the sender's transport sees the failure, as for a single message.
        let unanswered_failure = result.store_failed
            && self.batches.ack == BatchAck::PerMessage
            && items.iter().any(|item| {
                item.decided.verdict == Verdict::Error && item.decided.reply_code.is_none()
            });
        result.outcome.reply = if unanswered_failure {
            Reply::Close
        } else {
            Reply::Ack { bytes, code }
        };
        result
    }

    /// A refusal of the whole batch before anything is decided: AR when its header can be
    /// read (nothing is stored), else the connection is closed as for an unreadable frame.
    fn unreadable(&self, raw: &Bytes, reason: String) -> BatchOutcome {
        let reply = match Message::parse(raw.clone()) {
            Ok(header) => {
                let error = AckError::new(ErrorCode::SegmentSequenceError, None, reason.clone());
                Reply::Ack {
                    bytes: build_ack(&header, AckCode::AR, Some(&error), &self.stamp()),
                    code: AckCode::AR,
                }
            }
            Err(_) => Reply::Close,
        };
        BatchOutcome {
            outcome: Outcome {
                reply,
                control_id: None,
                reason: Some(Reason::BatchRefused),
                message_id: None,
            },
            messages: 0,
            stored: 0,
            duplicates: 0,
            refused: Vec::new(),
            batch_refusal: Some(reason),
            count_problems: Vec::new(),
            file_seen: None,
            store_failed: false,
            not_recorded: false,
        }
    }

    /// One ACK for the whole batch, from its envelope (or its first message, for a file of
    /// bare messages).
    fn batch_ack(
        &self,
        raw: &Bytes,
        envelope: &Envelope,
        code: AckCode,
        text: Option<String>,
    ) -> Vec<u8> {
        let header = envelope.header_message(raw).or_else(|| {
            envelope
                .messages()
                .next()
                .and_then(|first| Message::parse(first.clone()).ok())
        });
        let Some(header) = header else {
            return Vec::new();
        };
        let error = text.map(|text| {
            let error_code = if code == AckCode::AA {
                ErrorCode::MessageAccepted
            } else if code == AckCode::AE {
                ErrorCode::ApplicationInternalError
            } else {
                ErrorCode::SegmentSequenceError
            };
            AckError::new(error_code, None, text)
        });
        build_ack(&header, code, error.as_ref(), &self.stamp())
    }

    /// Refuse a decided message because its batch is refused: nothing queued, stored as
    /// REJECTED (ERROR stays ERROR), its ACK an AR naming the batch's reason (or its own).
    fn refuse_in_batch(&self, decided: &mut Decided, refusal: &str) {
        decided.routes.clear();
        decided.copies.clear();
        decided.order_keys.clear();
        if decided.verdict == Verdict::Accept {
            decided.verdict = Verdict::Reject;
            decided.disposition = Disposition::Rejected;
            decided.reason = Some(Reason::BatchRefused);
            decided.error = Some(AckError::new(
                ErrorCode::ApplicationInternalError,
                None,
                refusal.to_owned(),
            ));
        }
        self.rebuild_ack(decided, Verdict::Reject);
    }

    /// The batch could not be stored: an accepted message's ACK becomes AE.
    fn fail_in_batch(&self, decided: &mut Decided) {
        decided.verdict = Verdict::Error;
        decided.reason = Some(Reason::StoreFailed);
        decided.error = Some(AckError::new(
            ErrorCode::ApplicationInternalError,
            None,
            "the batch could not be stored and was not accepted; send it again".to_owned(),
        ));
        self.rebuild_ack(decided, Verdict::Error);
    }

    fn rebuild_ack(&self, decided: &mut Decided, verdict: Verdict) {
        let mode: AckMode = decided.mode;
        decided.reply_code = mode.reply_code(verdict);
        decided.decided = mode.decided_code(verdict);
        decided.ack = decided.reply_code.map(|code| {
            build_ack(
                &decided.message,
                code,
                decided.error.as_ref(),
                &self.stamp(),
            )
        });
    }
}

impl Ingest {
    /// A fresh ACK stamp (the stamper does not change with a reload).
    fn stamp(&self) -> crate::hl7::AckStamp {
        self.current().stamper.stamp()
    }
}

/// BHS-11, else FHS-11, as text for logs (at most 64 characters).
fn batch_control_id(envelope: &Envelope) -> Option<String> {
    let from_segment = |segment: &Bytes| {
        let value = envelope_field(segment, 11);
        (!value.is_empty()).then(|| {
            String::from_utf8_lossy(value)
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect::<String>()
        })
    };
    envelope
        .groups
        .iter()
        .filter_map(|group| group.header.as_ref())
        .chain(envelope.file_header.as_ref())
        .find_map(from_segment)
        .or_else(|| {
            envelope
                .messages()
                .next()
                .and_then(|first| Message::parse(first.clone()).ok())
                .and_then(|message| control_id_for_logs(&message))
        })
}
