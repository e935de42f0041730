//! The on-disk layout: tables, keys and value encodings.
//!
//! Every value that is a struct is encoded as one version byte followed by its `postcard`
//! encoding, so a later format can be read next to this one. `meta["format_version"]` names
//! the layout of the whole file.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Layout version of the whole file, stored in `meta`.
pub const FORMAT_VERSION: u64 = 1;
/// Version byte in front of every encoded record.
const RECORD_VERSION: u8 = 1;

/// `name → value`: `format_version`, `instance_id` (random, set when the file is created),
/// `next_connector_id`, and `next_message_id`, a floor for
/// new ids written only by whatever deletes the newest messages (new ids are otherwise one
/// past the newest message key, so commits need not touch this table).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `message id → MessageRecord`, followed by the received bytes when the body is at most
/// [`INLINE_BODY_MAX`] bytes (see [`encode_message`]).
pub const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// `message id → received bytes`, for bodies larger than [`INLINE_BODY_MAX`] (an ORU with an
/// embedded PDF), so scans over `messages` stay cheap.
pub const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Largest body stored inline in its `messages` value. Inline saves a table per commit for
/// ordinary messages; every table a commit touches costs a root update.
pub const INLINE_BODY_MAX: usize = 16 * 1024;
/// `connector name → connector id`; ids are never reused.
pub const CONNECTORS: TableDefinition<&str, u32> = TableDefinition::new("connectors");
/// `(connector id, queue seq) → QueueEntry`. A range scan over one connector id yields its
/// queue in commit order (FIFO). A message's first queue entries use its id as the seq.
/// Whatever re-queues an entry later must take a fresh id above every message id and raise
/// `meta["next_message_id"]` past it in the same transaction, or a later message would get
/// the same seq.
pub const QUEUE: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("queue");
/// `(connector id, seq) → DlqEntry`: messages a connector gave up on, with the reason. The seq
/// is the queue seq the entry had, so the DLQ lists in the order the queue held them.
pub const DLQ: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("dlq");
/// `(message id, connector id) → DeliveryRecord`: what became of a message at a connector after
/// intake (delivered, dead-lettered, purged, re-queued). Absent means still in its first
/// queue entry (or filtered: see the message's routes). Read by retention and the history view.
pub const DELIVERIES: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("deliveries");

/// `seq → hash ‖ AuditRecord`: the hash-chained audit trail (see [`super::audit`]).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// What became of a message at intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// Accepted and queued for at least one connector.
    Routed,
    /// Accepted, but no connector's filter took it.
    Unrouted,
    /// Refused (AR/CR): a header check or a validation rule failed.
    Rejected,
    /// A rule could not be evaluated (AE/CE); kept so nothing is lost.
    Error,
}

impl Disposition {
    /// Upper-case name, as shown to operators.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Routed => "ROUTED",
            Self::Unrouted => "UNROUTED",
            Self::Rejected => "REJECTED",
            Self::Error => "ERROR",
        }
    }
}

/// What a connector's filter decided for a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RouteStatus {
    /// The filter matched: a queue entry exists.
    Queued,
    /// The filter did not match: recorded, never silent.
    Filtered,
}

/// One connector's decision for a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Connector id (see the `connectors` table).
    pub connector: u32,
    /// Queued or filtered.
    pub status: RouteStatus,
}

/// Header fields kept next to the message for search without parsing the body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderFields {
    /// MSH-9.1
    pub msg_type: String,
    /// MSH-9.2
    pub trigger: String,
    /// MSH-9.3
    pub structure: String,
    /// MSH-10
    pub control_id: String,
    /// MSH-3
    pub sending_app: String,
    /// MSH-4
    pub sending_fac: String,
    /// MSH-5
    pub receiving_app: String,
    /// MSH-6
    pub receiving_fac: String,
    /// MSH-12
    pub version: String,
    /// MSH-11
    pub processing_id: String,
}

/// A stored message, without its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Receive time, microseconds since the Unix epoch.
    pub received_at_micros: i64,
    /// Remote address of the sender.
    pub peer: String,
    /// Name of the listener that received it.
    pub listener: String,
    /// Parsed header fields.
    pub header: HeaderFields,
    /// What became of it.
    pub disposition: Disposition,
    /// Why, for anything but ROUTED/UNROUTED: a check or rule name and mfoundry's reason.
    pub reason: Option<String>,
    /// One decision per configured connector.
    pub routes: Vec<Route>,
    /// ACK code that was decided (AA, CA, AR …).
    pub ack_code: String,
    /// Length of the body in bytes.
    pub body_len: u64,
    /// The ACK sent for an accepted message (replayed to retransmits); None otherwise or when
    /// MSH-15/16 asked for none.
    pub ack: Option<Vec<u8>>,
    /// The retransmit key, when the message was accepted and dedup is on.
    pub dedup_key: Option<[u8; 32]>,
    /// True when the body follows the record in the `messages` value; false when it is in
    /// `bodies`. Set by the writer.
    pub body_inline: bool,
}

/// A queue entry: which message, and its delivery state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The message to deliver.
    pub message_id: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, µs since the epoch (0: now).
    pub next_attempt_micros: i64,
    /// Last delivery error, if any.
    pub last_error: Option<String>,
}

/// A dead-letter entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// The message.
    pub message_id: u64,
    /// Delivery attempts made before giving up.
    pub attempts: u32,
    /// Why: the output's reason (never message content).
    pub reason: String,
    /// When it was moved here, µs since the epoch.
    pub failed_at_micros: i64,
}

/// The state of a message at one connector after intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Queued again (a DLQ replay, possibly to another connector).
    Queued,
    /// The output confirmed it.
    Delivered,
    /// In the connector's dead-letter queue.
    DeadLettered,
    /// Removed from the dead-letter queue by an operator without delivery.
    Purged,
}

impl DeliveryStatus {
    /// Upper-case name, as shown to operators.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Delivered => "DELIVERED",
            Self::DeadLettered => "DEAD_LETTERED",
            Self::Purged => "PURGED",
        }
    }
}

/// The latest delivery state of a message at one connector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The state.
    pub status: DeliveryStatus,
    /// When it changed, µs since the epoch.
    pub at_micros: i64,
    /// Attempts made (for the delivery that reached this state).
    pub attempts: u32,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Entries of this message this connector still holds (queue and dead-letter queue). A
    /// message can be queued twice for one connector (a replay next to its first entry), so
    /// the status alone cannot tell retention when a connector is done with it.
    pub held: u32,
}

/// Encode a record: version byte, then postcard.
pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![RECORD_VERSION];
    let body =
        postcard::to_stdvec(record).map_err(|error| StoreError::Encoding(error.to_string()))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a record written by [`encode`].
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|error| StoreError::Encoding(error.to_string()))
        }
        Some((version, _)) => Err(StoreError::Encoding(format!(
            "record version {version} is not known to this mfoundry"
        ))),
        None => Err(StoreError::Encoding("empty record".to_owned())),
    }
}

/// Encode a `messages` value: the record, then the inline body if any.
pub fn encode_message(
    record: &MessageRecord,
    inline_body: Option<&[u8]>,
) -> Result<Vec<u8>, StoreError> {
    let mut out = encode(record)?;
    if let Some(body) = inline_body {
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Decode a `messages` value: the record and, if stored inline, the body.
pub fn decode_message(bytes: &[u8]) -> Result<(MessageRecord, Option<&[u8]>), StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => {
            let (record, body): (MessageRecord, &[u8]) = postcard::take_from_bytes(rest)
                .map_err(|error| StoreError::Encoding(error.to_string()))?;
            let inline = record.body_inline.then_some(body);
            Ok((record, inline))
        }
        Some((version, _)) => Err(StoreError::Encoding(format!(
            "record version {version} is not known to this mfoundry"
        ))),
        None => Err(StoreError::Encoding("empty record".to_owned())),
    }
}

/// Read a counter from `meta`, 0 when absent.
pub fn read_meta(
    table: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, StoreError> {
    Ok(table.get(name)?.map(|value| value.value()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_a_version_byte() {
        let entry = QueueEntry {
            message_id: 7,
            attempts: 2,
            next_attempt_micros: 99,
            last_error: Some("timeout".to_owned()),
        };
        let bytes = encode(&entry).expect("encodes");
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<QueueEntry>(&bytes).expect("decodes"), entry);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(decode::<QueueEntry>(&future).is_err());
        assert!(decode::<QueueEntry>(&[]).is_err());
    }
}
