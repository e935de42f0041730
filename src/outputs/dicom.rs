//! `type: dicom`: send each stored DICOM object by C-STORE (a Storage SCU) over a kept
//! association, and judge the response status (ADR 0020).
//!
//! - `0x0000` is delivered, and so is `0xB0xx` (stored with a warning, logged);
//! - `0xA7xx` (out of resources) and a transient association rejection are retried;
//! - `0xA9xx`, `0xCxxx`, any other failure status, a permanent rejection and a presentation
//!   context the peer refuses for the object's SOP class and transfer syntax go to the
//!   dead-letter queue;
//! - a broken connection, an A-ABORT or no response within `response_timeout` drop the
//!   association and are retried.
//!
//! The association is kept between objects and proposes every (SOP class, transfer syntax)
//! the connector has sent so far: an object of a pair it has not negotiated releases it and
//! opens one that adds the pair. A kept association the peer closed while idle is replaced
//! without costing an attempt. The object is sent in the transfer syntax it was received in,
//! never converted. Each new association is checked with a C-ECHO (when the peer accepts
//! Verification) before an object is sent on it.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::delivery::{DeliveryError, Envelope};
use crate::dicom::dimse::{self, Command, StatusClass};
use crate::dicom::object::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, read_part10};
use crate::dicom::pdu::{self, AssociateRq, PduType, ProposedContext};
use crate::mllp::{ClientError, read_pdu};
use crate::tls::ClientStream;

/// `type: dicom`.
#[derive(Clone, Debug)]
pub struct DicomSpec {
    /// `host:port`.
    pub addr: String,
    /// `ae_title`: the peer's (called) AE title.
    pub called_ae: String,
    /// `calling_ae_title`: mfoundry's AE title towards it.
    pub calling_ae: String,
    /// Connection (and TLS handshake) timeout.
    pub connect_timeout: Duration,
    /// How long to wait for the association's acceptance and each response.
    pub response_timeout: Duration,
    /// TLS, when on.
    pub tls: Option<std::sync::Arc<crate::tls::TlsClient>>,
    /// `EGRESS_ALLOW`, when set.
    pub egress: Option<std::sync::Arc<super::egress::EgressAllow>>,
}

impl DicomSpec {
    /// `host` and `port` of [`Self::addr`].
    pub fn destination(&self) -> Option<(String, u16)> {
        let (host, port) = self.addr.rsplit_once(':')?;
        Some((host.trim_matches(['[', ']']).to_owned(), port.parse().ok()?))
    }
}

/// The keys a DICOM connector takes.
pub const KEYS: [&str; 11] = [
    "host",
    "port",
    "ae_title",
    "calling_ae_title",
    "connect_timeout",
    "response_timeout",
    "tls",
    "tls_server_name",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

/// The longest PDU mfoundry receives from a peer (responses are small).
const MAX_RECEIVE_PDU: u32 = 64 * 1024;

impl DicomSpec {
    /// Read a DICOM connector's keys; `None` when a problem was recorded.
    pub fn read(reader: &mut super::settings::Reader<'_, '_>) -> Option<Self> {
        let problems_before = reader.problems.len();
        reader.require("host", "for type dicom (the peer's name or address)");
        reader.require("ae_title", "for type dicom (the peer's AE title)");
        let host = reader.text("host").unwrap_or_default();
        let port = match reader.text("port").map(|port| port.trim().parse::<u16>()) {
            Some(Ok(port)) if port > 0 => port,
            Some(_) => {
                reader.problem("port", "`port` must be a number from 1 to 65535");
                0
            }
            None => 104,
        };
        let mut title = |key: &str, default: Option<&str>| {
            let value = reader
                .text(key)
                .map(|value| value.trim().to_owned())
                .or(default.map(str::to_owned))?;
            let valid = !value.is_empty()
                && value.len() <= 16
                && value
                    .bytes()
                    .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'\\');
            if !valid {
                reader.problem(
                    key,
                    format!(
                        "`{key}` is an AE title: 1 to 16 printable ASCII characters, no backslash"
                    ),
                );
            }
            Some(value)
        };
        let called_ae = title("ae_title", None).unwrap_or_default();
        let calling_ae = title("calling_ae_title", Some("MFOUNDRY")).unwrap_or_default();
        let connect_timeout = reader.duration("connect_timeout", Duration::from_secs(10));
        let response_timeout = reader.duration("response_timeout", Duration::from_secs(60));
        let (addr, tls) = reader.peer(&host, port);
        (reader.problems.len() == problems_before).then_some(Self {
            addr,
            called_ae,
            calling_ae,
            connect_timeout,
            response_timeout,
            tls,
            egress: None,
        })
    }
}

/// An open association.
#[derive(Debug)]
struct Association {
    stream: ClientStream,
    /// Accepted contexts: id, abstract syntax, transfer syntax.
    accepted: Vec<(u8, String, String)>,
    /// What was proposed and refused (or not answered): abstract syntax, transfer syntax.
    refused: Vec<(String, String)>,
    /// The peer's maximum PDU (0: none).
    peer_max_pdu: u32,
    next_message_id: u16,
}

/// A DICOM peer.
#[derive(Debug)]
pub struct DicomOutput {
    spec: DicomSpec,
    association: Option<Association>,
    /// The (SOP class, transfer syntax) pairs sent lately, least recently used first: what
    /// an association proposes.
    wanted: Vec<(String, String)>,
}

/// Why an exchange failed.
enum Failure {
    /// Drop the association (aborted); retry.
    Reset(String),
    /// Keep the association; retry.
    Retry(String, Option<String>),
    /// The dead-letter queue (with the peer's words, when it gave some).
    Refused(String, Option<String>),
}

impl Failure {
    fn reason(self) -> String {
        match self {
            Self::Reset(reason) | Self::Retry(reason, _) | Self::Refused(reason, _) => reason,
        }
    }
}

/// Most presentation contexts one association proposes (the protocol allows 128).
const MAX_CONTEXTS: usize = 64;
/// How long an A-RELEASE or an A-ABORT may take before the connection is closed anyway.
const CLOSE_LIMIT: Duration = Duration::from_secs(5);

impl DicomOutput {
    /// An output for `spec`; associates on first use.
    pub fn new(spec: DicomSpec) -> Self {
        Self {
            spec,
            association: None,
            wanted: Vec::new(),
        }
    }

    /// Send one object and judge its response.
    pub async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        let Some(object) = read_part10(&envelope.body) else {
            return Err(DeliveryError::permanent(
                "a dicom connector sends DICOM objects; this is an HL7 message (leave HL7 out with a filter such as `dicom.sop_instance_uid != \"\"`)",
            ));
        };
        let pair = (object.sop_class.clone(), object.transfer_syntax.clone());
        let result = self
            .exchange(&pair, &object.sop_instance, object.data_set)
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Reset(reason)) => {
                if let Some(mut association) = self.association.take() {
                    abort(&mut association).await;
                }
                Err(DeliveryError::transient(reason))
            }
            Err(Failure::Retry(reason, peer)) => {
                Err(DeliveryError::transient(reason).with_downstream(peer))
            }
            Err(Failure::Refused(reason, peer)) => {
                Err(DeliveryError::permanent(reason).with_downstream(peer))
            }
        }
    }

    /// C-ECHO on an association of its own: whether the peer answers Verification (a
    /// check of the connector's peer, e.g. before sending after an outage).
    pub async fn echo(&mut self) -> Result<(), String> {
        let verification = [(
            pdu::VERIFICATION.to_owned(),
            crate::dicom::dataset::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
        )];
        let mut association = self
            .associate(&verification)
            .await
            .map_err(Failure::reason)?;
        let Some((context, ..)) = association.accepted.first().cloned() else {
            abort(&mut association).await;
            return Err("the peer does not accept Verification (C-ECHO)".to_owned());
        };
        let command = Command {
            field: dimse::C_ECHO_RQ,
            sop_class: pdu::VERIFICATION.to_owned(),
            message_id: 1,
            data_set_type: dimse::NO_DATA_SET,
            ..Command::default()
        };
        let answer = self
            .request(&mut association, context, &command, None)
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                abort(&mut association).await;
                return Err(failure.reason());
            }
        };
        release(&mut association).await;
        if answer.status == dimse::SUCCESS {
            Ok(())
        } else {
            Err(format!("C-ECHO answered 0x{:04X}", answer.status))
        }
    }

    async fn exchange(
        &mut self,
        pair: &(String, String),
        sop_instance: &str,
        data_set: &[u8],
    ) -> Result<(), Failure> {
        if let Some(association) = self.association.as_mut()
            && !crate::mllp::is_quiet(&mut association.stream)
        {
            tracing::debug!(addr = %self.spec.addr, "kept DICOM association is closed or dirty; associating again");
            self.association = None;
        }
        let matches = |(sop, syntax): (&String, &String)| (sop, syntax) == (&pair.0, &pair.1);
        if let Some(association) = &self.association
            && association
                .refused
                .iter()
                .any(|(sop, syntax)| matches((sop, syntax)))
        {
            return Err(refused_context(pair));
        }
        // Most recently used last: the pairs proposed are the recent ones.
        self.wanted.retain(|wanted| wanted != pair);
        self.wanted.push(pair.clone());
        if self.wanted.len() > MAX_CONTEXTS {
            self.wanted.remove(0);
        }
        let negotiated = self.association.as_ref().is_some_and(|association| {
            association
                .accepted
                .iter()
                .any(|(_, sop, syntax)| matches((sop, syntax)))
        });
        if !negotiated {
            if let Some(mut old) = self.association.take() {
                release(&mut old).await;
            }
            // This object's pair first: a peer that takes only its first few contexts takes
            // the one needed now.
            let mut proposal = vec![pair.clone()];
            proposal.extend(
                self.wanted
                    .iter()
                    .rev()
                    .filter(|wanted| *wanted != pair)
                    .cloned(),
            );
            // Verification too: each new association is checked with a C-ECHO before an
            // object is sent on it (the output's health check).
            proposal.push((
                pdu::VERIFICATION.to_owned(),
                crate::dicom::dataset::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            ));
            let mut association = self.associate(&proposal).await?;
            if let Err(failure) = self.verify(&mut association).await {
                abort(&mut association).await;
                return Err(failure);
            }
            self.association = Some(association);
        }
        let Some(mut association) = self.association.take() else {
            return Err(Failure::Reset("not associated".to_owned()));
        };
        let Some(context) = association
            .accepted
            .iter()
            .find(|(_, sop, syntax)| matches((sop, syntax)))
            .map(|(id, ..)| *id)
        else {
            self.association = Some(association);
            return Err(refused_context(pair));
        };
        association.next_message_id = association.next_message_id.wrapping_add(1).max(1);
        let command = Command {
            field: dimse::C_STORE_RQ,
            sop_class: pair.0.clone(),
            sop_instance: sop_instance.to_owned(),
            message_id: association.next_message_id,
            data_set_type: 0x0000,
            ..Command::default()
        };
        let answer = self
            .request(&mut association, context, &command, Some(data_set))
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                // The association's state is unknown: it is aborted, never reused.
                abort(&mut association).await;
                return Err(failure);
            }
        };
        self.association = Some(association);
        let status = answer.status;
        // The peer's ErrorComment is its own words (it may name the patient): kept where
        // body readers see it, never in the reason.
        let peer = (!answer.error_comment.is_empty()).then(|| answer.error_comment.clone());
        match dimse::classify(status) {
            StatusClass::Success => Ok(()),
            StatusClass::Warning => {
                tracing::info!(addr = %self.spec.addr, sop_instance_uid = sop_instance, status = format_args!("0x{status:04X}"), "the peer stored the object with a warning");
                Ok(())
            }
            StatusClass::Retry => Err(Failure::Retry(
                format!("the peer answered 0x{status:04X} (out of resources)"),
                peer,
            )),
            StatusClass::Refused => Err(Failure::Refused(
                format!("the peer refused the object: 0x{status:04X}"),
                peer,
            )),
        }
    }

    /// C-ECHO on a new association, when the peer accepted Verification: a peer that does
    /// not answer it is not sent an object (the failure is retried).
    async fn verify(&self, association: &mut Association) -> Result<(), Failure> {
        let Some(context) = association
            .accepted
            .iter()
            .find(|(_, sop, _)| sop == pdu::VERIFICATION)
            .map(|(id, ..)| *id)
        else {
            return Ok(());
        };
        association.next_message_id = association.next_message_id.wrapping_add(1).max(1);
        let command = Command {
            field: dimse::C_ECHO_RQ,
            sop_class: pdu::VERIFICATION.to_owned(),
            message_id: association.next_message_id,
            data_set_type: dimse::NO_DATA_SET,
            ..Command::default()
        };
        let answer = self.request(association, context, &command, None).await?;
        if answer.status == dimse::SUCCESS {
            Ok(())
        } else {
            Err(Failure::Reset(format!(
                "the peer answered C-ECHO with 0x{:04X}; no object sent",
                answer.status
            )))
        }
    }

    /// Open an association proposing `pairs` (one context each).
    async fn associate(&self, pairs: &[(String, String)]) -> Result<Association, Failure> {
        let resolved = match (&self.spec.egress, self.spec.destination()) {
            (Some(allow), Some((host, port))) => {
                Some(allow.resolve(&host, port).await.map_err(Failure::Reset)?)
            }
            _ => None,
        };
        let mut stream = crate::mllp::connect_stream(
            &self.spec.addr,
            resolved.as_deref(),
            self.spec.tls.as_deref(),
            self.spec.connect_timeout,
        )
        .await
        .map_err(|error| Failure::Reset(describe(&error)))?;
        let contexts: Vec<ProposedContext> = pairs
            .iter()
            .zip((1u8..=255).step_by(2))
            .map(|((sop, syntax), id)| ProposedContext {
                id,
                abstract_syntax: sop.clone(),
                transfer_syntaxes: vec![syntax.clone()],
            })
            .collect();
        let request = AssociateRq {
            called_ae: self.spec.called_ae.clone(),
            calling_ae: self.spec.calling_ae.clone(),
            application_context: pdu::APPLICATION_CONTEXT.to_owned(),
            contexts: contexts.clone(),
            max_pdu: MAX_RECEIVE_PDU,
            implementation_class: IMPLEMENTATION_CLASS_UID.to_owned(),
        };
        let limit = self.spec.response_timeout;
        write(
            &mut stream,
            &pdu::encode_associate_rq(&request, IMPLEMENTATION_VERSION),
            limit,
        )
        .await
        .map_err(Failure::Reset)?;
        crate::mllp::quickack(&stream);
        let (kind, body) = timed(limit, read_pdu(&mut stream, 1 << 20)).await?;
        match kind {
            PduType::AssociateAc => {
                let ac = pdu::parse_associate_ac(&body).map_err(|error| {
                    Failure::Reset(format!("the peer's A-ASSOCIATE-AC: {error}"))
                })?;
                if ac.max_pdu != 0 && ac.max_pdu < pdu::MIN_PEER_PDU {
                    return Err(Failure::Reset(format!(
                        "the peer announced a maximum PDU of {} bytes, below the {} mfoundry sends in",
                        ac.max_pdu,
                        pdu::MIN_PEER_PDU
                    )));
                }
                let mut accepted = Vec::new();
                let mut refused = Vec::new();
                for proposed in &contexts {
                    let syntax = proposed.transfer_syntaxes[0].clone();
                    // Accepted only as proposed: a peer answering another transfer syntax
                    // would decode the object wrongly. No answer counts as a refusal.
                    let answer = ac.contexts.iter().find(|answer| answer.id == proposed.id);
                    match answer {
                        Some(answer) if answer.result == 0 && answer.transfer_syntax == syntax => {
                            accepted.push((proposed.id, proposed.abstract_syntax.clone(), syntax));
                        }
                        _ => refused.push((proposed.abstract_syntax.clone(), syntax)),
                    }
                }
                Ok(Association {
                    stream,
                    accepted,
                    refused,
                    peer_max_pdu: ac.max_pdu,
                    next_message_id: 0,
                })
            }
            PduType::AssociateRj => {
                let rejection = pdu::parse_associate_rj(&body)
                    .map_err(|error| Failure::Reset(error.to_string()))?;
                let reason = format!(
                    "{rejection} (called {:?} as {:?})",
                    self.spec.called_ae, self.spec.calling_ae
                );
                // The presentation layer's refusals (congestion, a local limit) pass.
                Err(if rejection.transient() || rejection.source == 3 {
                    Failure::Reset(reason)
                } else {
                    Failure::Refused(reason, None)
                })
            }
            PduType::Abort => Err(Failure::Reset(
                "the peer aborted the association request".to_owned(),
            )),
            other => Err(Failure::Reset(format!(
                "the peer answered the association request with {other:?}"
            ))),
        }
    }

    /// Send a command (and its data set) on `context`; read the response command.
    async fn request(
        &self,
        association: &mut Association,
        context: u8,
        command: &Command,
        data_set: Option<&[u8]>,
    ) -> Result<Command, Failure> {
        let max = association.peer_max_pdu;
        let limit = self.spec.response_timeout;
        let encoded = dimse::encode(command);
        let command_pdus = pdu::encode_pdata(context, true, &encoded, max);
        let data_pdus = data_set
            .into_iter()
            .flat_map(|data_set| pdu::encode_pdata(context, false, data_set, max));
        // Each PDU is written within the response timeout: a peer that stops reading does
        // not hold the queue.
        for pdu in command_pdus.chain(data_pdus) {
            write(&mut association.stream, &pdu, limit)
                .await
                .map_err(Failure::Reset)?;
        }
        let mut response = Vec::new();
        loop {
            crate::mllp::quickack(&association.stream);
            let (kind, body) =
                timed(limit, read_pdu(&mut association.stream, MAX_RECEIVE_PDU)).await?;
            match kind {
                PduType::PData => {
                    let items =
                        pdu::pdvs(&body).map_err(|error| Failure::Reset(error.to_string()))?;
                    let mut last = false;
                    for item in items {
                        if !item.command
                            || item.context != context
                            || last
                            || response.len() + item.data.len() > dimse::MAX_COMMAND_LEN
                        {
                            return Err(Failure::Reset(
                                "the peer's response is not a command on the request's context"
                                    .to_owned(),
                            ));
                        }
                        response.extend_from_slice(item.data);
                        last = item.last;
                    }
                    if last {
                        break;
                    }
                }
                PduType::Abort => {
                    return Err(Failure::Reset(
                        "the peer aborted the association".to_owned(),
                    ));
                }
                PduType::ReleaseRq => {
                    let _ = write(&mut association.stream, &pdu::release_rp(), CLOSE_LIMIT).await;
                    return Err(Failure::Reset(
                        "the peer released the association before answering".to_owned(),
                    ));
                }
                other => {
                    return Err(Failure::Reset(format!(
                        "unexpected {other:?} from the peer"
                    )));
                }
            }
        }
        let answer = dimse::parse(&response)
            .ok_or_else(|| Failure::Reset("the peer's response is not readable".to_owned()))?;
        if answer.responding_to != command.message_id || answer.field != command.field | 0x8000 {
            return Err(Failure::Reset(
                "the peer answered another request (message id or command); association dropped"
                    .to_owned(),
            ));
        }
        Ok(answer)
    }
}

/// The failure of an object whose (SOP class, transfer syntax) the peer does not accept.
fn refused_context(pair: &(String, String)) -> Failure {
    Failure::Refused(
        format!(
            "the peer does not accept SOP class {} in transfer syntax {} (presentation context refused)",
            pair.0, pair.1
        ),
        None,
    )
}

/// A-RELEASE: ask, wait a little for the answer, close.
async fn release(association: &mut Association) {
    if write(&mut association.stream, &pdu::release_rq(), CLOSE_LIMIT)
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(CLOSE_LIMIT, read_pdu(&mut association.stream, 1024)).await;
    }
    let _ = tokio::time::timeout(CLOSE_LIMIT, association.stream.shutdown()).await;
}

/// A-ABORT (an association whose state is unknown), then close.
async fn abort(association: &mut Association) {
    let _ = write(&mut association.stream, &pdu::abort(0), CLOSE_LIMIT).await;
    let _ = tokio::time::timeout(CLOSE_LIMIT, association.stream.shutdown()).await;
}

/// Write and flush within `limit`.
async fn write(stream: &mut ClientStream, bytes: &[u8], limit: Duration) -> Result<(), String> {
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match tokio::time::timeout(limit, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("the connection failed: {error}")),
        Err(_) => Err(format!(
            "the peer did not take the data within response_timeout ({limit:?}); association dropped"
        )),
    }
}

async fn timed<T>(
    limit: Duration,
    read: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, read).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(reason)) => Err(Failure::Reset(reason)),
        Err(_) => Err(Failure::Reset(format!(
            "no answer within response_timeout ({limit:?}); association dropped"
        ))),
    }
}

fn describe(error: &ClientError) -> String {
    error.to_string()
}
