//! DICOM objects at intake (ADR 0020): read the received data set, route it with the
//! connectors' filters (`dicom` and the header view's `msh`/`pid`), store it, and say what
//! the C-STORE response must be. Success only after the commit.

use std::net::SocketAddr;

use bytes::Bytes;

use super::{Decider, Ingest, off_runtime_if, patient_values};
use crate::dicom::dataset::{self, Syntax};
use crate::dicom::dimse;
use crate::dicom::{Identifiers, object};
use crate::hl7::{Charset, Message};
use crate::outbox::{
    Appended, ConnectorId, Disposition, MessageRecord, NewMessage, ObjectKey, Route, RouteStatus,
    StoredCopy,
};
use crate::rules::Validation;

/// One object received by C-STORE: the file to store (mfoundry's Part 10 meta, built from
/// the request, then the data set as received).
pub struct ReceivedObject {
    /// The Part 10 file: [`crate::dicom::object::part10_prefix`] and the data set; only its
    /// head (the first `inline_object_size` bytes) when the object is spooled.
    pub file: Vec<u8>,
    /// The whole file, written to the store's spool as it arrived (an object larger than
    /// the listener's `inline_object_size`).
    pub spooled: Option<SpooledObject>,
    /// Where the data set starts in `file`.
    pub data_start: usize,
    /// The request's AffectedSOPClassUID.
    pub sop_class: String,
    /// The request's AffectedSOPInstanceUID.
    pub sop_instance: String,
    /// The presentation context's transfer syntax.
    pub transfer_syntax: String,
    /// The association's calling AE title.
    pub calling_ae: String,
    /// Its called AE title.
    pub called_ae: String,
}

impl std::fmt::Debug for ReceivedObject {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReceivedObject")
            .field("bytes", &self.file.len())
            .field("sop_class", &self.sop_class)
            .field("sop_instance", &self.sop_instance)
            .field("transfer_syntax", &self.transfer_syntax)
            .field("calling_ae", &self.calling_ae)
            .finish_non_exhaustive()
    }
}

/// A received object's file in the spool, and the spool.
#[derive(Debug)]
pub struct SpooledObject {
    /// The file, removed when dropped unless kept.
    pub file: crate::outbox::spool::Spooled,
    /// The spool it is in (to read a report back).
    pub spool: std::sync::Arc<crate::outbox::spool::Spool>,
}

/// The largest spooled Structured Report read back whole to build its ORU^R01.
const MAX_SPOOLED_REPORT: u64 = 64 << 20;

impl ReceivedObject {
    /// The data set, as received (its head, when spooled).
    pub fn data_set(&self) -> &[u8] {
        self.file.get(self.data_start..).unwrap_or_default()
    }

    /// SHA-256 of the whole data set.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest;
        match &self.spooled {
            Some(spooled) => spooled.file.reference.digest,
            None => sha2::Sha256::digest(self.data_set()).into(),
        }
    }

    /// The whole Part 10 file, read back from the spool when spooled (a Structured Report
    /// to map); an error names why it cannot be.
    fn whole_file(&self) -> Result<std::borrow::Cow<'_, [u8]>, String> {
        let Some(spooled) = &self.spooled else {
            return Ok(std::borrow::Cow::Borrowed(&self.file));
        };
        let len = spooled.file.reference.len;
        if len > MAX_SPOOLED_REPORT {
            return Err(format!(
                "a Structured Report of {len} bytes is larger than the {} MiB mapped to ORU^R01",
                MAX_SPOOLED_REPORT >> 20
            ));
        }
        spooled
            .spool
            .read(&spooled.file.reference)
            .map(std::borrow::Cow::Owned)
            .map_err(|error| format!("the spooled report could not be read back: {error}"))
    }
}

/// What became of an object: the C-STORE status to answer and what to log.
#[derive(Debug, PartialEq, Eq)]
pub struct ObjectOutcome {
    /// The C-STORE-RSP status.
    pub status: u16,
    /// The error comment (mfoundry's words, no object content), for a failure.
    pub comment: String,
    /// The stored message, when there is one.
    pub message_id: Option<u64>,
    /// Whether it was stored before (a re-store of the same bytes).
    pub duplicate: bool,
}

impl ObjectOutcome {
    fn failed(status: u16, comment: impl Into<String>) -> Self {
        Self {
            status,
            comment: comment.into(),
            message_id: None,
            duplicate: false,
        }
    }
}

/// Read a received object: its identifiers and its header view; `Err` is the response.
fn read(object: &ReceivedObject) -> Result<Identifiers, ObjectOutcome> {
    let Some(syntax) = Syntax::of(&object.transfer_syntax) else {
        return Err(ObjectOutcome::failed(
            dimse::CANNOT_UNDERSTAND,
            "transfer syntax not readable",
        ));
    };
    // A spooled object's identifiers are read from its head.
    let parse = if object.spooled.is_some() {
        dataset::parse_head
    } else {
        dataset::parse
    };
    let set = parse(object.data_set(), syntax)
        .map_err(|error| ObjectOutcome::failed(dimse::CANNOT_UNDERSTAND, error.to_string()))?;
    if set.count(dataset::SOP_CLASS_UID) > 1 || set.count(dataset::SOP_INSTANCE_UID) > 1 {
        return Err(ObjectOutcome::failed(
            dimse::CANNOT_UNDERSTAND,
            "SOP Class or Instance UID given twice",
        ));
    }
    let mut identifiers = Identifiers::read(&set, &object.sop_class, &object.sop_instance);
    // The stored file's meta was written from the request: the data set must agree.
    if !crate::dicom::is_uid(&identifiers.sop_instance_uid)
        || !crate::dicom::is_uid(&identifiers.sop_class_uid)
    {
        return Err(ObjectOutcome::failed(
            dimse::CANNOT_UNDERSTAND,
            "SOP Class or Instance UID is not a UID",
        ));
    }
    if identifiers.sop_instance_uid != object.sop_instance
        || identifiers.sop_class_uid != object.sop_class
    {
        return Err(ObjectOutcome::failed(
            dimse::DATA_SET_DOES_NOT_MATCH,
            "SOP Class or Instance UID differs from the request's",
        ));
    }
    identifiers.calling_ae.clone_from(&object.calling_ae);
    identifiers.called_ae.clone_from(&object.called_ae);
    identifiers
        .transfer_syntax
        .clone_from(&object.transfer_syntax);
    Ok(identifiers)
}

/// A receive time as HL7's `YYYYMMDDHHMMSS` (UTC).
fn hl7_time(received_at_micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(received_at_micros)
        .unwrap_or_default()
        .format("%Y%m%d%H%M%S")
        .to_string()
}

/// A DICOM object's header view, parsed (it is built to parse).
pub fn header_view(identifiers: &Identifiers, received_at_micros: i64) -> Option<Message> {
    let received = hl7_time(received_at_micros);
    Message::parse(Bytes::from(identifiers.header_message(&received))).ok()
}

/// The identifiers of a stored object's body, or of its head (`None`: not a readable DICOM
/// object).
pub fn stored_identifiers(body: &[u8]) -> Option<Identifiers> {
    let stored = object::read_part10(body)?;
    let set = dataset::parse_head(stored.data_set, Syntax::of(&stored.transfer_syntax)?).ok()?;
    let mut identifiers = Identifiers::read(&set, &stored.sop_class, &stored.sop_instance);
    identifiers.transfer_syntax = stored.transfer_syntax;
    Some(identifiers)
}

/// The patient values of a stored body, HL7 or DICOM (the index rebuild).
pub(super) fn object_patient_values(
    body: &[u8],
) -> Option<Vec<(crate::outbox::patients::IndexField, String)>> {
    if !object::is_dicom(body) {
        return None;
    }
    let identifiers = stored_identifiers(body)?;
    let view = header_view(&identifiers, 0)?;
    Some(patient_values(&view, Charset::UTF_8))
}

/// One route per connector, the `order_by` keys, and the copies of connectors that
/// transform.
type Routed = (
    Vec<Route>,
    Vec<(ConnectorId, u64)>,
    Vec<(ConnectorId, StoredCopy)>,
);

impl Decider {
    /// Route an object: every connector's filter with `dicom` bound (validation rules are
    /// for HL7 and not applied). `Err`: a filter could not be evaluated.
    fn route_object(
        &self,
        view: &Message,
        identifiers: &Identifiers,
        object: &ReceivedObject,
        received: &str,
    ) -> Result<Routed, String> {
        let evaluation = self
            .rules
            .evaluate_object(view, &self.listener, identifiers);
        if let Validation::Errored { subject, detail } = evaluation.validation {
            return Err(format!("{subject} could not be evaluated: {detail}"));
        }
        let routes: Vec<Route> = self
            .routes
            .iter()
            .zip(&evaluation.routes)
            .map(|(counters, &taken)| Route {
                connector: counters.connector,
                status: if taken {
                    RouteStatus::Queued
                } else {
                    RouteStatus::Filtered
                },
            })
            .collect();
        let order_keys = self
            .routes
            .iter()
            .zip(&evaluation.order_keys)
            .filter_map(|(counters, key)| key.map(|key| (counters.connector, key)))
            .collect();
        // What each connector that takes the object delivers: an HL7 output gets the ORU^R01
        // of a Structured Report (through its transform steps, if any) or, for another
        // object, a dead letter with the reason; a DICOM output the object itself, unless
        // it has HL7 transform steps, which cannot edit an object.
        let mut copies = Vec::new();
        let mut oru: Option<Result<Bytes, String>> = None;
        for (index, (route, name)) in routes.iter().zip(self.names.iter()).enumerate() {
            if route.status != RouteStatus::Queued {
                continue;
            }
            let transforms = self
                .transforms
                .as_ref()
                .filter(|transforms| transforms.transforms(name));
            let copy = if self.hl7_outputs.get(index).copied().unwrap_or(false) {
                let oru = oru
                    .get_or_insert_with(|| {
                        let file = object.whole_file()?;
                        report_oru(identifiers, &file, &object.digest(), received)
                    })
                    .clone();
                hl7_copy(
                    oru,
                    transforms.map(|transforms| &**transforms),
                    name,
                    &self.listener,
                    self.default_charset,
                )
            } else if transforms.is_some() {
                StoredCopy::Failed(format!(
                    "connector {name} transforms HL7 messages; a DICOM object cannot be transformed (leave objects out with a filter such as `dicom.sop_instance_uid == \"\"`)"
                ))
            } else {
                continue;
            };
            if let StoredCopy::Failed(reason) = &copy {
                tracing::warn!(connector = %name, sop_instance_uid = %identifiers.sop_instance_uid, reason = %reason, "this connector's copy of a DICOM object goes to its dead-letter queue");
            }
            copies.push((route.connector, copy));
        }
        Ok((routes, order_keys, copies))
    }
}

/// An object decided: everything but its storing.
#[derive(Debug)]
pub struct DecidedObject {
    /// What it is.
    pub identifiers: Identifiers,
    /// Its header view.
    pub view: Message,
    /// Routed, unrouted, or ERROR (a filter could not be evaluated).
    pub disposition: Disposition,
    /// One per connector (none for ERROR).
    pub routes: Vec<Route>,
    /// The `order_by` keys.
    pub order_keys: Vec<(ConnectorId, u64)>,
    /// What each connector with its own copy delivers (an ORU^R01, a dead letter).
    pub copies: Vec<(ConnectorId, StoredCopy)>,
    /// Why, for ERROR.
    pub reason: Option<String>,
}

impl Decider {
    /// Everything decided for a received object before it would be stored; `Err` is the
    /// C-STORE answer of an object that is refused (unreadable, UIDs that do not agree).
    /// `mfoundry test` runs it alone.
    pub fn decide_object(
        &self,
        object: &ReceivedObject,
        received_at_micros: i64,
    ) -> Result<DecidedObject, ObjectOutcome> {
        let identifiers = read(object)?;
        let Some(view) = header_view(&identifiers, received_at_micros) else {
            return Err(ObjectOutcome::failed(
                dimse::CANNOT_UNDERSTAND,
                "identifiers not readable",
            ));
        };
        let received = hl7_time(received_at_micros);
        let decided = match self.route_object(&view, &identifiers, object, &received) {
            Ok((routes, order_keys, copies)) => {
                let disposition = if routes
                    .iter()
                    .any(|route| route.status == RouteStatus::Queued)
                {
                    Disposition::Routed
                } else {
                    Disposition::Unrouted
                };
                DecidedObject {
                    identifiers,
                    view,
                    disposition,
                    routes,
                    order_keys,
                    copies,
                    reason: None,
                }
            }
            Err(reason) => {
                tracing::warn!(sop_instance_uid = %identifiers.sop_instance_uid, error = %reason, "a filter could not be evaluated for a DICOM object; it is refused and stored as ERROR");
                DecidedObject {
                    identifiers,
                    view,
                    disposition: Disposition::Error,
                    routes: Vec::new(),
                    order_keys: Vec::new(),
                    copies: Vec::new(),
                    reason: Some(reason),
                }
            }
        };
        Ok(decided)
    }
}

impl ReceivedObject {
    /// An object as a DICOM Part 10 file holds it, with mfoundry's meta instead of the
    /// file's, as a listener would have stored it (`mfoundry test`). The calling AE title
    /// is the file's SourceApplicationEntityTitle (the AE that wrote it), else `calling_ae`.
    pub fn from_file(bytes: &[u8], calling_ae: &str, called_ae: &str) -> Option<Self> {
        let stored = object::read_part10(bytes)?;
        let calling_ae = Some(stored.source_ae.trim())
            .filter(|source| {
                !source.is_empty()
                    && source.len() <= 16
                    && source
                        .bytes()
                        .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'\\')
            })
            .unwrap_or(calling_ae);
        let file = object::part10_prefix(
            &stored.sop_class,
            &stored.sop_instance,
            &stored.transfer_syntax,
            calling_ae,
        );
        let data_start = file.len();
        let mut file = file;
        file.extend_from_slice(stored.data_set);
        Some(Self {
            file,
            data_start,
            sop_class: stored.sop_class,
            sop_instance: stored.sop_instance,
            transfer_syntax: stored.transfer_syntax,
            calling_ae: calling_ae.to_owned(),
            called_ae: called_ae.to_owned(),
            spooled: None,
        })
    }
}

impl Ingest {
    /// Where objects larger than a listener's `inline_object_size` are spooled (`None`: a
    /// store in memory, which holds them whole).
    pub fn spool(&self) -> Option<std::sync::Arc<crate::outbox::spool::Spool>> {
        self.outbox.spool().cloned()
    }

    /// Read, route and store one object from `peer`; the outcome's status is the C-STORE
    /// response. Success (0x0000) only once the object and its queue entries are committed,
    /// or when the same bytes were stored before.
    pub async fn handle_object(
        &self,
        object: ReceivedObject,
        peer: SocketAddr,
        identity: Option<&crate::tls::PeerIdentity>,
    ) -> ObjectOutcome {
        let received_at_micros = chrono::Utc::now().timestamp_micros();
        let decider = self.current();
        // A spooled report is read back from its file to be mapped.
        let decided = match off_runtime_if(object.spooled.is_some(), &decider, || {
            decider.decide_object(&object, received_at_micros)
        }) {
            Ok(decided) => decided,
            Err(outcome) => return outcome,
        };
        let DecidedObject {
            identifiers,
            view,
            disposition,
            routes,
            order_keys,
            copies,
            reason,
        } = decided;
        let accepted = disposition != Disposition::Error;
        let key = accepted.then(|| ObjectKey {
            listener: decider.listener.to_string(),
            sop_instance_uid: identifiers.sop_instance_uid.clone(),
            digest: object.digest(),
        });
        let mut spooled = object.spooled;
        let spool = spooled.as_ref().map(|spooled| spooled.file.reference);
        let body = if spooled.is_some() {
            Vec::new()
        } else {
            object.file
        };
        let body_len = spool.map_or(body.len() as u64, |spool| spool.len);
        let record = MessageRecord {
            received_at_micros,
            peer: peer.to_string(),
            listener: decider.listener.to_string(),
            header: super::header_fields(&view),
            disposition,
            reason: reason.clone(),
            routes: routes.clone(),
            ack_code: if accepted { "AA" } else { "AR" }.to_owned(),
            body_len,
            ack: None,
            dedup_key: None,
            body_inline: false,
            config: decider.config,
        };
        let new_message = NewMessage {
            record,
            body: Bytes::from(body),
            dedup_key: None,
            tls_identity: identity.map(|identity| identity.audit_text().to_owned()),
            copies,
            order_keys,
            patient: patient_values(&view, Charset::UTF_8),
            object: key,
            spool,
        };
        // From here the store decides what becomes of the spooled file: named by the
        // commit, removed after it (a duplicate's), or left to the sweep at the next open
        // (a commit that failed, which may still have reached the disk). Marked before the
        // append, so a task dropped while it waits never removes a file a commit names.
        if let Some(spooled) = spooled.as_mut() {
            spooled.file.keep();
        }
        drop(spooled);
        let appended = self.outbox.append(new_message).await;
        match appended {
            Ok(Appended::Stored { id }) if accepted => {
                decider.count_routes(&routes);
                ObjectOutcome {
                    status: dimse::SUCCESS,
                    comment: String::new(),
                    message_id: Some(id.0),
                    duplicate: false,
                }
            }
            Ok(Appended::Duplicate { id, .. }) => ObjectOutcome {
                status: dimse::SUCCESS,
                comment: String::new(),
                message_id: Some(id.0),
                duplicate: true,
            },
            Ok(Appended::Stored { id }) => ObjectOutcome {
                status: PROCESSING_FAILURE,
                comment: "a routing filter could not be evaluated".to_owned(),
                message_id: Some(id.0),
                duplicate: false,
            },
            Err(error) => {
                tracing::error!(error = %crate::outbox::Chain(&error), sop_instance_uid = %identifiers.sop_instance_uid, "DICOM object could not be stored; answering out of resources");
                // Nothing is recorded: the sender may try again (a refused object too, whose
                // refusal could not be kept).
                ObjectOutcome::failed(
                    dimse::OUT_OF_RESOURCES,
                    "could not be stored; send it again",
                )
            }
        }
    }
}

/// MSH-10 of a report's ORU: `SR` and 16 hex digits of the SHA-256 of the SOP Instance UID
/// and the data set's SHA-256 (18 characters, within v2.5.1's 20; the same object gives the
/// same id, a corrected one another).
fn oru_control_id(identifiers: &Identifiers, digest: &[u8; 32]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(identifiers.sop_instance_uid.as_bytes());
    hash.update(digest);
    let digest = hash.finalize();
    format!("SR{}", data_encoding::HEXUPPER.encode(&digest[..8]))
}

/// The ORU^R01 of a report (`file` its stored Part 10 file), or why there is none.
fn report_oru(
    identifiers: &Identifiers,
    file: &[u8],
    digest: &[u8; 32],
    received: &str,
) -> Result<Bytes, String> {
    if !crate::dicom::sr::is_report(&identifiers.sop_class_uid) {
        return Err(
            crate::dicom::sr::SrError::NotAReport(identifiers.sop_class_uid.clone()).to_string(),
        );
    }
    crate::dicom::sr::oru(file, &oru_control_id(identifiers, digest), received)
        .map(Bytes::from)
        .map_err(|error| error.to_string())
}

/// What a connector that sends HL7 delivers for an object: the report's ORU through its
/// transform steps, or a failed copy naming why.
fn hl7_copy(
    oru: Result<Bytes, String>,
    transforms: Option<&crate::transform::Transforms>,
    name: &str,
    listener: &str,
    default_charset: Charset,
) -> StoredCopy {
    match (oru, transforms) {
        (Err(reason), _) => StoredCopy::Failed(reason),
        (Ok(oru), None) => StoredCopy::Bytes(oru),
        (Ok(oru), Some(transforms)) => {
            transform_oru(transforms, name, oru, listener, default_charset)
        }
    }
}

/// Whether `head`, the first bytes of a stored body of `body_len` bytes, is a Structured
/// Report cut short that is small enough to be read whole and mapped (reprocess).
pub fn report_needs_whole_body(head: &[u8], body_len: u64) -> bool {
    (head.len() as u64) < body_len
        && body_len <= MAX_SPOOLED_REPORT
        && stored_identifiers(head)
            .is_some_and(|identifiers| crate::dicom::sr::is_report(&identifiers.sop_class_uid))
}

/// What connector `name` delivers when a stored object (`body`, its Part 10 file) is
/// reprocessed to it: for an output that sends HL7, the report's ORU^R01 (as built at
/// intake, through the connector's current transform steps) or a failed copy naming why;
/// for one that carries objects, the object itself (`None`), unless the connector
/// transforms HL7 (a failed copy).
pub fn reprocessed_object_copy(
    body: &[u8],
    received_at_micros: i64,
    sends_hl7: bool,
    transforms: &crate::transform::Transforms,
    name: &str,
    listener: &str,
    default_charset: Charset,
) -> Option<StoredCopy> {
    let transforms = Some(transforms).filter(|transforms| transforms.transforms(name));
    if !sends_hl7 {
        return transforms.map(|_| {
            StoredCopy::Failed(format!(
                "connector {name} transforms HL7 messages; a DICOM object cannot be transformed"
            ))
        });
    }
    let oru = match (stored_identifiers(body), object::read_part10(body)) {
        (Some(identifiers), Some(stored)) => {
            use sha2::Digest;
            let digest: [u8; 32] = sha2::Sha256::digest(stored.data_set).into();
            let received = hl7_time(received_at_micros);
            report_oru(&identifiers, body, &digest, &received)
        }
        _ => Err("the stored DICOM object cannot be read".to_owned()),
    };
    Some(hl7_copy(oru, transforms, name, listener, default_charset))
}

/// A connector's transform steps applied to a report's ORU.
fn transform_oru(
    transforms: &crate::transform::Transforms,
    name: &str,
    oru: Bytes,
    listener: &str,
    default_charset: Charset,
) -> StoredCopy {
    let Ok(message) = Message::parse(oru.clone()) else {
        return StoredCopy::Failed("the report's ORU^R01 could not be read back".to_owned());
    };
    let charset = message.charset(default_charset).charset();
    match transforms.apply(name, &message, charset, listener) {
        Ok(Some(bytes)) => StoredCopy::Bytes(Bytes::from(bytes)),
        Ok(None) => StoredCopy::Bytes(oru),
        Err(failure) => StoredCopy::Failed(failure.to_string()),
    }
}

/// C-STORE "Processing failure".
const PROCESSING_FAILURE: u16 = 0x0110;
