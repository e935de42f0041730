//! Older revisions of the queue and dead-letter entries, and how each is read as today's:
//! revision 1 (format 1, and format 2 before revision 2) lacks `origin` and `history`,
//! revision 2 lacks `order_key` (keyed lanes). Message records of revision 1 lack `config`.

use serde::Deserialize;

use super::{
    Disposition, DlqEntry, EntryRef, HeaderFields, MessageId, MessageRecord, PastEntry, QueueEntry,
    Record, Route,
};
use crate::outbox::StoreError;

#[derive(Deserialize)]
struct QueueEntryV1 {
    message_id: u64,
    attempts: u32,
    next_attempt_micros: i64,
    last_error: Option<String>,
}

#[derive(Deserialize)]
struct QueueEntryV2 {
    message_id: MessageId,
    attempts: u32,
    next_attempt_micros: i64,
    last_error: Option<String>,
    origin: Option<EntryRef>,
    history: Vec<PastEntry>,
}

#[derive(Deserialize)]
struct DlqEntryV1 {
    message_id: u64,
    attempts: u32,
    reason: String,
    failed_at_micros: i64,
}

#[derive(Deserialize)]
struct DlqEntryV2 {
    message_id: MessageId,
    attempts: u32,
    reason: String,
    failed_at_micros: i64,
    downstream: Option<String>,
    origin: Option<EntryRef>,
    history: Vec<PastEntry>,
}

#[derive(Deserialize)]
struct MessageRecordV1 {
    received_at_micros: i64,
    peer: String,
    listener: String,
    header: HeaderFields,
    disposition: Disposition,
    reason: Option<String>,
    routes: Vec<Route>,
    ack_code: String,
    body_len: u64,
    ack: Option<Vec<u8>>,
    dedup_key: Option<[u8; 32]>,
    body_inline: bool,
}

/// A message record of an older revision at the start of `payload`, read as today's, and
/// what follows it (the inline body).
pub(super) fn take_message_record(
    revision: u8,
    payload: &[u8],
) -> Result<(MessageRecord, &[u8]), StoreError> {
    match revision {
        1 => {
            let (old, rest): (MessageRecordV1, &[u8]) = postcard::take_from_bytes(payload)
                .map_err(|error| StoreError::Encoding(error.to_string()))?;
            let record = MessageRecord {
                received_at_micros: old.received_at_micros,
                peer: old.peer,
                listener: old.listener,
                header: old.header,
                disposition: old.disposition,
                reason: old.reason,
                routes: old.routes,
                ack_code: old.ack_code,
                body_len: old.body_len,
                ack: old.ack,
                dedup_key: old.dedup_key,
                body_inline: old.body_inline,
                config: None,
            };
            Ok((record, rest))
        }
        _ => Err(StoreError::Encoding(format!(
            "message record revision {revision} is not known to this mfoundry"
        ))),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(payload).map_err(|error| StoreError::Encoding(error.to_string()))
}

impl Record for QueueEntry {
    const REVISION: u8 = 3;

    fn upgrade(revision: u8, payload: &[u8]) -> Result<Self, StoreError> {
        match revision {
            1 => {
                let old: QueueEntryV1 = decode(payload)?;
                Ok(Self {
                    message_id: MessageId(old.message_id),
                    attempts: old.attempts,
                    next_attempt_micros: old.next_attempt_micros,
                    last_error: old.last_error,
                    origin: None,
                    history: Vec::new(),
                    order_key: None,
                })
            }
            2 => {
                let old: QueueEntryV2 = decode(payload)?;
                Ok(Self {
                    message_id: old.message_id,
                    attempts: old.attempts,
                    next_attempt_micros: old.next_attempt_micros,
                    last_error: old.last_error,
                    origin: old.origin,
                    history: old.history,
                    order_key: None,
                })
            }
            other => Err(StoreError::Encoding(format!(
                "queue entry revision {other} is not known to this mfoundry"
            ))),
        }
    }
}

impl Record for DlqEntry {
    const REVISION: u8 = 3;

    fn upgrade(revision: u8, payload: &[u8]) -> Result<Self, StoreError> {
        match revision {
            1 => {
                let old: DlqEntryV1 = decode(payload)?;
                Ok(Self {
                    message_id: MessageId(old.message_id),
                    attempts: old.attempts,
                    reason: old.reason,
                    failed_at_micros: old.failed_at_micros,
                    downstream: None,
                    origin: None,
                    history: Vec::new(),
                    order_key: None,
                })
            }
            2 => {
                let old: DlqEntryV2 = decode(payload)?;
                Ok(Self {
                    message_id: old.message_id,
                    attempts: old.attempts,
                    reason: old.reason,
                    failed_at_micros: old.failed_at_micros,
                    downstream: old.downstream,
                    origin: old.origin,
                    history: old.history,
                    order_key: None,
                })
            }
            other => Err(StoreError::Encoding(format!(
                "dead-letter entry revision {other} is not known to this mfoundry"
            ))),
        }
    }
}
