//! The on-disk layout: tables, keys and value encodings.
//!
//! One file on purpose (its tests apart, in `schema/tests.rs`): it is the store's format,
//! and a reader checking a change to it (a field, a table, a revision) must see every table,
//! every record, the envelope and every revision's upgrade together, and how each value is
//! read and written through the store keys (which table and key it is sealed for). What
//! operates on the format lives elsewhere (the writer, snapshots, verification), and the
//! sealing itself in `crypt`.
//!
//! # The record envelope (format 2, ADR 0007)
//! Every stored value that is a record (and every body in `bodies`) is
//! `envelope (1) = 2 ‖ revision (1) ‖ crc32 (4, LE) ‖ payload`, the crc over the envelope and
//! revision bytes and the payload. The payload is the record's `postcard` encoding (for
//! `messages`, followed by the inline body; for `bodies`, the body itself). Reading checks
//! the crc first: a mismatch is [`StoreError::Damaged`], never a misread record or an
//! altered body served as the message.
//!
//! The revision names the record's fields ([`Record::REVISION`]). Adding a field is a new
//! revision plus one [`Record::upgrade`] arm that reads the older one, so records of every
//! earlier revision stay readable next to new ones and nothing is rewritten.
//!
//! Format 1 (before the envelope) wrote `1 ‖ postcard`, without a checksum, and bodies in
//! `bodies` raw. Those records are still read (as revision 1, unchecked); a message record
//! in format 1 means its body in `bodies` is raw too. `meta["format_version"]` is 2 once a
//! file was opened by a build that writes envelopes: older builds refuse it. Format 3 adds
//! the `copies` table (ADR 0009); a file of format 2 becomes format 3 at open, nothing
//! rewritten. Format 4 writes queue and dead-letter entries of revision 3 (their
//! `order_key`, ADR 0015), which builds of format 3 cannot read: a file becomes format 4 at
//! open, and they refuse it. Format 5 writes message records of revision 2 (the hash of the
//! configuration that decided the message, ADR 0016) the same way. Format 6 adds the
//! `patients` and `index_keys` tables (the patient index, ADR 0019): builds of format 5
//! would store and remove messages without their index entries, so they refuse it. Format 7
//! adds the `objects` table (the DICOM object index, ADR 0020) for the same reason. Format 8
//! adds the `spool` and `spool_files` tables (where spooled bodies are, ADR 0020): builds
//! of format 7 would not find those bodies, nor remove their files.

use std::borrow::Cow;

use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::crypt::{Keys, Place};

/// Layout version of the whole file, stored in `meta`.
pub const FORMAT_VERSION: u64 = 8;
/// The envelope byte of format 1 (no checksum).
const LEGACY_ENVELOPE: u8 = 1;
/// The envelope byte of format 2.
const ENVELOPE: u8 = 2;
/// Envelope, revision and crc.
const ENVELOPE_LEN: usize = 6;

/// A record stored in the envelope: its revision, and how to read older ones.
pub trait Record: Serialize + DeserializeOwned {
    /// The revision of this record's fields. A change of fields is a new revision.
    const REVISION: u8;

    /// Read a payload of an older revision (revision 1 is the layout of format 1).
    fn upgrade(revision: u8, payload: &[u8]) -> Result<Self, StoreError> {
        if revision == 1 && Self::REVISION == 1 {
            return postcard::from_bytes(payload)
                .map_err(|error| StoreError::Encoding(error.to_string()));
        }
        Err(StoreError::Encoding(format!(
            "record revision {revision} is not known to this mfoundry"
        )))
    }
}

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

/// `(message id, connector id, entry seq) → copy`: what one queue entry of a connector with
/// transform steps delivers (ADR 0009). Intake writes the first entry's (its seq is the
/// message id) in the intake commit; reprocessing writes the new entry's; a replay to the
/// same connector moves it with the entry. `envelope(0) ‖ bytes`, or `envelope(1) ‖ reason`
/// when a step failed (that entry is never delivered). Absent: the entry delivers the
/// received bytes. The message id first, so retention removes a message's copies by range.
pub const COPIES: TableDefinition<(u64, u32, u64), &[u8]> = TableDefinition::new("copies");

/// `seq → hash ‖ AuditRecord`: the hash-chained audit trail (see [`super::audit`]).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// `SHA-256 of a file's bytes → FileRecord`: the files a directory listener stored, written in
/// the commit that stores their messages, so a file read again (after a crash between that
/// commit and the file's move) is recognised whatever the retransmit window is
/// ([ADR 0014](../../docs/adr/0014-batches-and-file-marks.md)). Values hold no message data
/// and are not sealed; retention removes marks older than `RETENTION`.
pub const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");

/// `(tag, message id) → ""` for every patient value of a message, and
/// `(0, message id) → tag ‖ tag ‖ …` (the message's tags, 8 bytes each, little-endian, so
/// they can be removed with it). Neither holds patient data: tags are keyed hashes (see
/// [`super::patients`], ADR 0019). Not sealed.
pub const PATIENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("patients");
/// `name → secret`: `patient_index`, the index key of a store without an encryption key.
pub const INDEX_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("index_keys");

/// A file a directory listener stored: the value of [`FILES`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// When its commit was written.
    pub stored_at_micros: i64,
    /// The listener that read it.
    pub listener: String,
    /// Its size in bytes.
    pub size: u64,
    /// How many messages it held (stored, or found stored already).
    pub messages: u32,
    /// The first message stored from it, if any.
    pub first_message: Option<u64>,
}

impl Record for FileRecord {
    const REVISION: u8 = 1;
}

/// What became of a message at intake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// Accepted and queued for at least one connector.
    Routed,
    /// Accepted, but no connector's filter took it.
    Unrouted,
    /// Refused (AR/CR): a header check or a validation rule failed.
    Rejected,
    /// A rule could not be evaluated (answered AR/CR with ERR-3 207, ADR 0010); kept so
    /// nothing is lost.
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

/// A connector's id in the store: given when its name is first registered, never reused.
/// Stored as the plain `u32` it wraps (the record encoding is unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectorId(pub u32);

impl std::fmt::Display for ConnectorId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// A stored message's id: given at commit from the message counter, increasing, never
/// reused (ADR 0007), starting at 1; the default, 0, is [`UNKNOWN_MESSAGE`]. Stored as the
/// plain `u64` it wraps.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MessageId(pub u64);

impl std::fmt::Display for MessageId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// A queue entry's place in its connector's queue and dead-letter queue. Seqs come from the
/// message counter (an entry made at intake has its message's id as its seq; a replayed one
/// a fresh number), so they are never reused either. Stored as the plain `u64` it wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl std::fmt::Display for Seq {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl From<MessageId> for Seq {
    /// The entry intake makes for a message takes the message's id.
    fn from(id: MessageId) -> Self {
        Self(id.0)
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
    pub connector: ConnectorId,
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
    /// The configuration the message was decided with: the first 8 bytes of its file's
    /// SHA-256 (the audit trail's `config.reload` records have it whole). `None` without a
    /// configuration file, or for a message stored before revision 2.
    pub config: Option<[u8; 8]>,
}

/// A queue entry: which message, and its delivery state (revision 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueueEntry {
    /// The message to deliver.
    pub message_id: MessageId,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, µs since the epoch (0: now).
    pub next_attempt_micros: i64,
    /// Last delivery error, if any.
    pub last_error: Option<String>,
    /// For an entry put back from a dead-letter queue: the entry it was first (connector
    /// and seq), so a runbook can follow a message through replays.
    pub origin: Option<EntryRef>,
    /// Earlier lives of this entry, oldest first: each dead letter it was replayed from.
    pub history: Vec<PastEntry>,
    /// The connector's `order_by` key, hashed (never the value: it may be patient data),
    /// computed once at intake; entries with the same key are delivered in order. `None`:
    /// the connector has no `order_by` (or the entry predates it).
    pub order_key: Option<u64>,
}

/// An entry by connector and seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    /// Connector id.
    pub connector: ConnectorId,
    /// Seq in that connector's queue.
    pub seq: Seq,
}

/// One earlier life of a queue entry: a dead letter it was replayed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PastEntry {
    /// The dead letter (connector and seq).
    pub entry: EntryRef,
    /// Attempts it had.
    pub attempts: u32,
    /// Why it was given up on (mfoundry's words).
    pub reason: String,
    /// When, µs since the epoch.
    pub failed_at_micros: i64,
}

/// Most earlier lives kept with an entry (the oldest go first).
pub const MAX_HISTORY: usize = 16;

/// A dead-letter entry (revision 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DlqEntry {
    /// The message.
    pub message_id: MessageId,
    /// Delivery attempts made before giving up.
    pub attempts: u32,
    /// Why: the output's reason (mfoundry's words, never message content).
    pub reason: String,
    /// When it was moved here, µs since the epoch.
    pub failed_at_micros: i64,
    /// What the downstream system answered, in its own words (an ACK's MSA and ERR
    /// segments, the first 1 KiB of an HTTP body): it can hold patient data, so only roles
    /// that may read message bodies see it, and it is never logged.
    pub downstream: Option<String>,
    /// The entry it was first, when it was replayed before (see [`QueueEntry::origin`]).
    pub origin: Option<EntryRef>,
    /// Its earlier lives, oldest first.
    pub history: Vec<PastEntry>,
    /// Its queue entry's `order_key`, kept for a replay (and `on_dead_letter: hold_key`).
    pub order_key: Option<u64>,
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

/// Wrap `payload` in an envelope of `revision`.
fn seal(revision: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_LEN + payload.len());
    out.push(ENVELOPE);
    out.push(revision);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    let crc = checksum(&out);
    out[2..6].copy_from_slice(&crc.to_le_bytes());
    out
}

fn checksum(sealed: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&sealed[..2]);
    hasher.update(&sealed[ENVELOPE_LEN..]);
    hasher.finalize()
}

/// An opened envelope: the revision and payload, and whether a checksum vouched for them.
struct Opened<'a> {
    revision: u8,
    payload: &'a [u8],
    checked: bool,
}

fn open(bytes: &[u8]) -> Result<Opened<'_>, StoreError> {
    match bytes.split_first() {
        Some((&ENVELOPE, _)) if bytes.len() >= ENVELOPE_LEN => {
            let stored = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
            if checksum(bytes) != stored {
                return Err(StoreError::Damaged(
                    "its checksum does not match its bytes".to_owned(),
                ));
            }
            Ok(Opened {
                revision: bytes[1],
                payload: &bytes[ENVELOPE_LEN..],
                checked: true,
            })
        }
        Some((&ENVELOPE, _)) => Err(StoreError::Damaged("it is truncated".to_owned())),
        Some((&LEGACY_ENVELOPE, payload)) => Ok(Opened {
            revision: 1,
            payload,
            checked: false,
        }),
        Some((version, _)) => Err(StoreError::Encoding(format!(
            "record version {version} is not known to this mfoundry"
        ))),
        None => Err(StoreError::Encoding("empty record".to_owned())),
    }
}

/// The message id a queue or dead-letter entry shows when the entry itself is damaged and
/// its message cannot be known (real ids start at 1).
pub const UNKNOWN_MESSAGE: MessageId = MessageId(0);

/// Whether reading a record failed because its stored bytes were changed after they were
/// written (a checksum that does not match, a truncated record). A record that passes its
/// checksum but does not decode (a revision this build does not know) is not damage: it is
/// never stepped over or replaced.
pub fn is_damage(error: &StoreError) -> bool {
    matches!(error, StoreError::Damaged(_))
}

/// Decode a record, or stand in `placeholder(why)` for one whose bytes are damaged (see
/// [`is_damage`]); other errors pass.
pub fn decode_or<T: Record>(
    keys: &Keys,
    place: Place,
    bytes: &[u8],
    placeholder: impl FnOnce(String) -> T,
) -> Result<T, StoreError> {
    match decode(keys, place, bytes) {
        Err(error) if is_damage(&error) => Ok(placeholder(damage_detail(&error))),
        other => other,
    }
}

/// What is wrong with a damaged record, in a few words (see [`is_damage`]).
pub fn damage_detail(error: &StoreError) -> String {
    match error {
        StoreError::Damaged(what) => what.clone(),
        other => other.to_string(),
    }
}

/// What a damaged queue entry is read as: its message unknown, the damage in `last_error`.
pub fn damaged_queue_entry(why: String) -> QueueEntry {
    QueueEntry {
        message_id: UNKNOWN_MESSAGE,
        last_error: Some(format!("the queue entry itself is damaged ({why})")),
        ..QueueEntry::default()
    }
}

/// What a damaged dead-letter entry is read as: its message unknown, the damage as reason.
pub fn damaged_dead_letter(why: String) -> DlqEntry {
    DlqEntry {
        message_id: UNKNOWN_MESSAGE,
        reason: format!(
            "the dead-letter entry itself is damaged ({why}); its message is unknown. Purge it, and run `mfoundry store verify`"
        ),
        ..DlqEntry::default()
    }
}

/// The queue entry stored under `(connector, seq)`, or [`damaged_queue_entry`] for one whose
/// bytes are damaged.
pub fn read_queue_entry(
    keys: &Keys,
    (connector, seq): (u32, u64),
    bytes: &[u8],
) -> Result<QueueEntry, StoreError> {
    decode_or(
        keys,
        Place::Queue(connector, seq),
        bytes,
        damaged_queue_entry,
    )
}

/// The dead letter stored under `(connector, seq)`, or [`damaged_dead_letter`] for one whose
/// bytes are damaged.
pub fn read_dead_letter(
    keys: &Keys,
    (connector, seq): (u32, u64),
    bytes: &[u8],
) -> Result<DlqEntry, StoreError> {
    decode_or(keys, Place::Dlq(connector, seq), bytes, damaged_dead_letter)
}

/// Encode a record in the envelope, sealed for `place` when the store has a key.
pub fn encode<T: Record>(keys: &Keys, place: Place, record: &T) -> Result<Vec<u8>, StoreError> {
    Ok(keys.seal(place, encode_plain(record)?))
}

/// A record in its envelope, not sealed (the audit chain hashes these bytes).
pub fn encode_plain<T: Record>(record: &T) -> Result<Vec<u8>, StoreError> {
    let payload =
        postcard::to_stdvec(record).map_err(|error| StoreError::Encoding(error.to_string()))?;
    Ok(seal(T::REVISION, &payload))
}

/// Decode a record written by [`encode`] (or by format 1), checking its checksum.
pub fn decode<T: Record>(keys: &Keys, place: Place, bytes: &[u8]) -> Result<T, StoreError> {
    decode_plain(&keys.open(place, bytes)?)
}

/// Decode a record in its envelope, not sealed.
pub fn decode_plain<T: Record>(bytes: &[u8]) -> Result<T, StoreError> {
    let opened = open(bytes)?;
    if opened.revision == T::REVISION && opened.checked {
        return postcard::from_bytes(opened.payload)
            .map_err(|error| StoreError::Encoding(error.to_string()));
    }
    T::upgrade(opened.revision, opened.payload)
}

/// Encode a `messages` value: the record, then the inline body if any.
pub fn encode_message(
    keys: &Keys,
    id: u64,
    record: &MessageRecord,
    inline_body: Option<&[u8]>,
) -> Result<Vec<u8>, StoreError> {
    let mut payload =
        postcard::to_stdvec(record).map_err(|error| StoreError::Encoding(error.to_string()))?;
    if let Some(body) = inline_body {
        payload.extend_from_slice(body);
    }
    Ok(keys.seal(Place::Message(id), seal(MessageRecord::REVISION, &payload)))
}

/// Encode a body stored apart, in `bodies`.
pub fn encode_body(keys: &Keys, id: u64, body: &[u8]) -> Vec<u8> {
    keys.seal(Place::Body(id), seal(0, body))
}

/// A decoded `messages` value.
#[derive(Debug)]
pub struct DecodedMessage<'a> {
    /// The record.
    pub record: MessageRecord,
    /// The body, when stored inline (owned when the value was sealed).
    pub inline: Option<Cow<'a, [u8]>>,
    /// Whether a checksum vouched for it (false for records of format 1).
    pub checked: bool,
}

/// Decode a `messages` value, checking its checksum (and opening its seal).
pub fn decode_message_checked<'a>(
    keys: &Keys,
    id: u64,
    bytes: &'a [u8],
) -> Result<DecodedMessage<'a>, StoreError> {
    let plain = keys.open(Place::Message(id), bytes)?;
    let (record, checked, offset, len) = {
        let opened = open(&plain)?;
        let (record, body): (MessageRecord, &[u8]) = match opened.revision {
            MessageRecord::REVISION => postcard::take_from_bytes(opened.payload)
                .map_err(|error| StoreError::Encoding(error.to_string()))?,
            older => revisions::take_message_record(older, opened.payload)?,
        };
        (record, opened.checked, plain.len() - body.len(), body.len())
    };
    let inline = record.body_inline.then(|| tail(plain, offset, len));
    Ok(DecodedMessage {
        record,
        inline,
        checked,
    })
}

/// The last `len` bytes of `value` from `offset`, borrowed when `value` is.
fn tail(value: Cow<'_, [u8]>, offset: usize, len: usize) -> Cow<'_, [u8]> {
    match value {
        Cow::Borrowed(bytes) => Cow::Borrowed(&bytes[offset..offset + len]),
        Cow::Owned(mut bytes) => {
            bytes.drain(..offset);
            bytes.truncate(len);
            Cow::Owned(bytes)
        }
    }
}

/// The record of a `messages` value, without its body.
pub fn decode_message_record(
    keys: &Keys,
    id: u64,
    bytes: &[u8],
) -> Result<MessageRecord, StoreError> {
    decode_message_checked(keys, id, bytes).map(|decoded| decoded.record)
}

/// The body stored apart for `message` (a `bodies` value), checked: raw for a record of
/// format 1, in an envelope otherwise.
pub fn decode_body<'a>(
    keys: &Keys,
    id: u64,
    message: &DecodedMessage<'_>,
    bytes: &'a [u8],
) -> Result<Cow<'a, [u8]>, StoreError> {
    let plain = keys.open(Place::Body(id), bytes)?;
    if !message.checked {
        // Format 1 stored the body raw (sealed since, by a rekey).
        return Ok(plain);
    }
    let (offset, len) = {
        let opened = open(&plain)?;
        if !opened.checked {
            return Err(StoreError::Damaged(
                "its envelope is not of format 2".to_owned(),
            ));
        }
        (plain.len() - opened.payload.len(), opened.payload.len())
    };
    Ok(tail(plain, offset, len))
}

/// A connector's copy of a message (see [`COPIES`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredCopy {
    /// The transformed bytes it delivers.
    Bytes(bytes::Bytes),
    /// A step failed at intake: nothing to deliver, for this reason.
    Failed(String),
}

/// Encode a copy for [`COPIES`] under `(message, connector, seq)`.
pub fn encode_copy(keys: &Keys, place: (u64, u32, u64), copy: &StoredCopy) -> Vec<u8> {
    let plain = match copy {
        StoredCopy::Bytes(bytes) => seal(0, bytes),
        StoredCopy::Failed(reason) => seal(1, reason.as_bytes()),
    };
    keys.seal(Place::Copy(place.0, place.1, place.2), plain)
}

/// Decode a value of [`COPIES`] stored under `(message, connector, seq)`, checking its
/// checksum.
pub fn decode_copy(
    keys: &Keys,
    place: (u64, u32, u64),
    bytes: &[u8],
) -> Result<StoredCopy, StoreError> {
    let plain = keys.open(Place::Copy(place.0, place.1, place.2), bytes)?;
    let opened = open(&plain)?;
    match opened.revision {
        0 => Ok(StoredCopy::Bytes(bytes::Bytes::copy_from_slice(
            opened.payload,
        ))),
        1 => Ok(StoredCopy::Failed(
            String::from_utf8_lossy(opened.payload).into_owned(),
        )),
        other => Err(StoreError::Encoding(format!(
            "copy revision {other} is not known to this mfoundry"
        ))),
    }
}

/// Check a body stored apart (see [`decode_body`]).
pub fn check_body(
    keys: &Keys,
    id: u64,
    message: &DecodedMessage<'_>,
    bytes: &[u8],
) -> Result<(), StoreError> {
    decode_body(keys, id, message, bytes).map(|_| ())
}

impl Record for DeliveryRecord {
    const REVISION: u8 = 1;
}

impl Record for MessageRecord {
    const REVISION: u8 = 2;

    fn upgrade(revision: u8, payload: &[u8]) -> Result<Self, StoreError> {
        revisions::take_message_record(revision, payload).map(|(record, _)| record)
    }
}

/// Read a counter from `meta`, 0 when absent.
pub fn read_meta(
    table: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, StoreError> {
    Ok(table.get(name)?.map(|value| value.value()).unwrap_or(0))
}

mod revisions;
#[cfg(test)]
mod tests;
