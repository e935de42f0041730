//! The audit trail: one record per received message and per admin action, hash chained.
//!
//! Record `n` is stored under key `n` as `hash(32 bytes) ‖ encoded record`, where the encoded
//! record carries the hash of record `n - 1` (zeros for the first) and
//! `hash = SHA-256("mfoundry-audit-v1" ‖ n as 8 big-endian bytes ‖ encoded record)`.
//! Changing a record breaks its own hash; removing or reordering records breaks the chain
//! (the next record names a different predecessor, or the keys leave a gap). Removing the newest
//! records leaves a valid shorter chain, so [`verify`] also checks that every stored message
//! has its receive record.
//!
//! With a store key the whole value is sealed (ADR 0011); the hash is over the plain record,
//! so a rekey leaves the chain as it was.
//!
//! Receive records are written in the same transaction as the message they describe: a
//! message that is on disk has its audit record. Records never carry message content or
//! patient fields: peers, listener, control id, message type, ACK code, token ids.

use std::collections::HashSet;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;
use super::crypt::{Keys, Place};
use super::schema::{self, MessageRecord};

/// Domain separation for the chain's hash.
const HASH_DOMAIN: &[u8] = b"mfoundry-audit-v1";
/// Most problems a verification lists (it still counts them all).
const MAX_PROBLEMS: usize = 100;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditEvent {
    /// A message was received and answered.
    Received {
        /// The stored message (the original's id for a retransmit).
        message_id: u64,
        /// True for a retransmit answered with the original's ACK.
        duplicate: bool,
        /// Remote address.
        peer: String,
        /// The client certificate's identity, when the connection used mTLS.
        tls_identity: Option<String>,
        /// Listener name.
        listener: String,
        /// MSH-10.
        control_id: String,
        /// MSH-9 as `type^trigger`.
        message_type: String,
        /// The ACK code decided (AA, AR, AE, CA …).
        ack_code: String,
    },
    /// An operator did something through the admin API.
    Admin {
        /// The token's id (never the token).
        token_id: String,
        /// What (`dlq.replay`, `message.read`, `connector.pause` …).
        action: String,
        /// On what (`connector lab seq 42`, `message 17`).
        target: String,
        /// How it went (`replayed 3`, `ok`, `not found`).
        outcome: String,
    },
}

/// One record of the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, µs since the Unix epoch.
    pub at_micros: i64,
    /// Hash of the previous record (zeros for the first one ever written).
    pub prev_hash: [u8; 32],
    /// What happened.
    pub event: AuditEvent,
}

impl schema::Record for AuditRecord {
    const REVISION: u8 = 1;
}

/// The chain's position: the next seq and the hash of the newest record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub next_seq: u64,
    pub last_hash: [u8; 32],
}

impl Head {
    /// Read the newest record of the table (an empty table starts at seq 0, zero hash).
    pub(super) fn load(
        keys: &Keys,
        table: &impl ReadableTable<u64, &'static [u8]>,
    ) -> Result<Self, StoreError> {
        match table.last()? {
            Some((key, value)) => {
                let plain = keys.open(Place::Audit(key.value()), value.value())?;
                let (hash, _) = split(&plain)?;
                Ok(Self {
                    next_seq: key.value().saturating_add(1),
                    last_hash: hash,
                })
            }
            None => Ok(Self {
                next_seq: 0,
                last_hash: [0; 32],
            }),
        }
    }
}

/// Encode the record for `seq` chained after `head`; returns the stored value and advances
/// `head`.
pub(super) fn chain(
    keys: &Keys,
    head: &mut Head,
    at_micros: i64,
    event: AuditEvent,
) -> Result<(u64, Vec<u8>), StoreError> {
    let record = AuditRecord {
        at_micros,
        prev_hash: head.last_hash,
        event,
    };
    let encoded = schema::encode_plain(&record)?;
    let seq = head.next_seq;
    let hash = hash(seq, &encoded);
    let mut value = Vec::with_capacity(32 + encoded.len());
    value.extend_from_slice(&hash);
    value.extend_from_slice(&encoded);
    head.next_seq = seq.saturating_add(1);
    head.last_hash = hash;
    Ok((seq, keys.seal(Place::Audit(seq), value)))
}

fn hash(seq: u64, encoded: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(HASH_DOMAIN);
    hasher.update(seq.to_be_bytes());
    hasher.update(encoded);
    hasher.finalize().into()
}

fn split(value: &[u8]) -> Result<([u8; 32], &[u8]), StoreError> {
    if value.len() < 33 {
        return Err(StoreError::Encoding("audit record too short".to_owned()));
    }
    let (hash, encoded) = value.split_at(32);
    let mut stored = [0u8; 32];
    stored.copy_from_slice(hash);
    Ok((stored, encoded))
}

/// Decode the value stored under `seq` (without checking its hash).
pub fn decode(keys: &Keys, seq: u64, value: &[u8]) -> Result<AuditRecord, StoreError> {
    let plain = keys.open(Place::Audit(seq), value)?;
    let (_, encoded) = split(&plain)?;
    schema::decode_plain(encoded)
}

/// The result of checking the whole trail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Records read.
    pub records: u64,
    /// Seq of the oldest record, if any.
    pub first_seq: Option<u64>,
    /// Seq of the newest record, if any.
    pub last_seq: Option<u64>,
    /// Problems found (at most 100 listed; `problem_count` counts them all).
    pub problems: Vec<String>,
    /// Number of problems found.
    pub problem_count: u64,
}

impl Verification {
    /// True when the chain is intact.
    pub fn is_intact(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }
}

/// Check every record's hash, the chain between them, that seqs have no gap and start at
/// `first_expected` (0, or where pruning left the trail), and that every stored message
/// received after the trail's oldest record has a receive record.
pub(super) fn verify(
    keys: &Keys,
    audit: &impl ReadableTable<u64, &'static [u8]>,
    messages: &impl ReadableTable<u64, &'static [u8]>,
    first_expected: u64,
) -> Result<Verification, StoreError> {
    let mut report = Verification::default();
    let mut previous: Option<(u64, [u8; 32])> = None;
    let mut audited = HashSet::new();
    let mut first_message: Option<u64> = None;
    for entry in audit.iter()? {
        let (key, value) = entry?;
        let seq = key.value();
        report.records += 1;
        report.first_seq.get_or_insert(seq);
        report.last_seq = Some(seq);
        let plain = match keys.open(Place::Audit(seq), value.value()) {
            Ok(plain) => plain,
            Err(error) => {
                report.problem(format!("record {seq}: unreadable ({error})"));
                previous = None;
                continue;
            }
        };
        let Ok((stored, encoded)) = split(&plain) else {
            report.problem(format!("record {seq}: too short to hold a hash"));
            previous = None;
            continue;
        };
        if hash(seq, encoded) != stored {
            report.problem(format!(
                "record {seq}: content does not match its hash (changed)"
            ));
        }
        let record: AuditRecord = match schema::decode_plain(encoded) {
            Ok(record) => record,
            Err(error) => {
                report.problem(format!("record {seq}: unreadable ({error})"));
                previous = Some((seq, stored));
                continue;
            }
        };
        match previous {
            Some((previous_seq, previous_hash)) => {
                if seq != previous_seq + 1 {
                    report.problem(format!(
                        "records {}..{} are missing (removed)",
                        previous_seq + 1,
                        seq - 1
                    ));
                }
                if record.prev_hash != previous_hash {
                    report.problem(format!(
                        "record {seq}: does not follow record {previous_seq} (removed or reordered)"
                    ));
                }
            }
            None if seq == 0 && record.prev_hash != [0; 32] => {
                report.problem("record 0: names a predecessor although it is the first".to_owned());
            }
            None if report.records == 1 && seq > first_expected => {
                // Pruning moves the start in `meta`; anything else missing at the start was
                // removed.
                report.problem(format!(
                    "records {first_expected}..{} are missing (removed)",
                    seq - 1
                ));
            }
            None => {}
        }
        if let AuditEvent::Received { message_id, .. } = record.event {
            audited.insert(message_id);
            first_message.get_or_insert(message_id);
        }
        previous = Some((seq, stored));
    }
    if let Some(first) = first_message {
        let mut missing = 0u64;
        let mut example = None;
        for entry in messages.range(first..)? {
            let (key, _) = entry?;
            let id = key.value();
            if !audited.contains(&id) {
                missing += 1;
                example.get_or_insert(id);
            }
        }
        if let Some(id) = example {
            report.problem(format!(
                "{missing} stored message(s) have no receive record, e.g. message {id} (records removed)"
            ));
        }
    } else if let Some(entry) = messages.first()? {
        report.problem(format!(
            "no receive record at all, but messages are stored (e.g. message {}): records removed",
            entry.0.value()
        ));
    }
    Ok(report)
}

/// When a stored record was written (without checking its hash).
pub(super) fn written_at(keys: &Keys, seq: u64, value: &[u8]) -> Result<i64, StoreError> {
    Ok(decode(keys, seq, value)?.at_micros)
}

/// The receive record for a stored (or retransmitted) message.
pub(super) fn received(
    message_id: u64,
    duplicate: bool,
    record: &MessageRecord,
    ack_code: &str,
    tls_identity: Option<&str>,
) -> AuditEvent {
    AuditEvent::Received {
        message_id,
        duplicate,
        peer: record.peer.clone(),
        tls_identity: tls_identity.map(str::to_owned),
        listener: record.listener.clone(),
        control_id: record.header.control_id.clone(),
        message_type: format!("{}^{}", record.header.msg_type, record.header.trigger),
        ack_code: ack_code.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(action: &str) -> AuditEvent {
        AuditEvent::Admin {
            token_id: "ops".to_owned(),
            action: action.to_owned(),
            target: "connector lab".to_owned(),
            outcome: "ok".to_owned(),
        }
    }

    #[test]
    fn chained_records_name_their_predecessor() {
        let mut head = Head {
            next_seq: 0,
            last_hash: [0; 32],
        };
        let keys = Keys::plain();
        let (seq0, value0) = chain(&keys, &mut head, 1, admin("a")).expect("chains");
        let (seq1, value1) = chain(&keys, &mut head, 2, admin("b")).expect("chains");
        assert_eq!((seq0, seq1), (0, 1));
        let (hash0, _) = split(&value0).expect("splits");
        let record1 = decode(&keys, 1, &value1).expect("decodes");
        assert_eq!(record1.prev_hash, hash0);
        assert_eq!(head.last_hash, split(&value1).expect("splits").0);
        // The seq is part of the hash: the same record under another key does not verify.
        let (_, encoded) = split(&value1).expect("splits");
        assert_ne!(hash(0, encoded), hash(1, encoded));
    }
}
