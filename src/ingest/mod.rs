//! Ingest: the one place that decides what a frame gets back.
//!
//! A frame is parsed, checked, validated by the CEL rules, routed by the connector filters,
//! stored in the outbox, and answered. The answer follows the acknowledgement mode the sender
//! chose (MSH-15/16). A frame whose header cannot be read gets no guessed ACK: the connection
//! is closed. An empty frame (a keep-alive for some senders) and a received ACK are ignored.
//!
//! **Invariant:** an accepting ACK (AA/CA) is returned only after the outbox transaction
//! holding the message and its queue entries has committed. A storage error never yields
//! AA/CA: it yields AE/CE.
//!
//! **Invariant:** no message text reaches an ACK, a log line or an error string; reasons are
//! mfoundry's own words plus rule names and field locations.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::hl7::{
    AckCode, AckError, AckMode, AckStamper, Charset, ErrorCode, HeaderKind, Message, Verdict,
    build_ack,
};
use crate::outbox::{
    Appended, ConnectorId, Disposition, MessageRecord, NewMessage, Outbox, Route, RouteStatus,
    StoredCopy,
};
use crate::rules::{RuleSet, Validation};
use crate::transform::Transforms;

mod answer;
mod batch;
mod dicom;
mod header;
mod patient;

pub use answer::{Outcome, Reason, Reply};
pub use batch::{BatchAck, BatchOutcome, BatchSettings, CountMismatch, From, RefusedMessage};
pub use dicom::{
    DecidedObject, ObjectOutcome, ReceivedObject, SpooledObject, header_view,
    report_needs_whole_body, reprocessed_object_copy, stored_identifiers,
};
pub use header::header_fields;
use header::{ack_code_of, check_sender, control_id_for_logs, dedup_key};
pub use patient::{patient_values, reader as patient_reader};

/// What intake decided for one connector since start (stored messages only; retransmits are
/// not counted again).
#[derive(Debug)]
pub struct RouteCounters {
    /// The connector's outbox id.
    pub connector: ConnectorId,
    /// Messages queued for the connector.
    pub queued: std::sync::atomic::AtomicU64,
    /// Messages its filter did not take.
    pub filtered: std::sync::atomic::AtomicU64,
}

/// A connector the rule set routes to that the outbox does not know.
#[derive(Debug, thiserror::Error)]
#[error("the outbox has no connector named {0:?}")]
pub struct UnknownConnector(pub String);

/// Checks, validates, routes, stores and answers frames: a [`Decider`] and the outbox.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// What decides, shared by every clone (every connection of the listener) and replaced
    /// whole by a configuration reload: each frame or batch reads it once, so a message is
    /// decided by one configuration, never a mix.
    decider: Arc<std::sync::RwLock<Arc<Decider>>>,
    outbox: Outbox,
    /// How batches are answered and checked.
    batches: BatchSettings,
}

/// Everything intake decides before a frame is stored: the checks, the rules, the routes,
/// each connector's copy and the ACK. `mfoundry test` runs it alone (no port, no store).
#[derive(Debug, Clone)]
pub struct Decider {
    default_charset: Charset,
    stamper: Arc<dyn AckStamper>,
    rules: Arc<RuleSet>,
    /// Each routed connector's id and counters, in the order of the rule set's filters
    /// ([`RuleSet::filter_connectors`]), which is the order of its routes.
    routes: Arc<[Arc<RouteCounters>]>,
    /// The listener's name, stored with each message and bound as `inbound`.
    listener: Arc<str>,
    /// `tls_senders`: what each client certificate may send as.
    senders: Option<Arc<crate::tls::SenderMap>>,
    /// Each routed connector's name, in the order of `routes`.
    names: Arc<[Arc<str>]>,
    /// The connectors' transform steps (ADR 0009); `None`: no connector transforms.
    transforms: Option<Arc<Transforms>>,
    /// The configuration's hash, stored with each message (see [`MessageRecord::config`]).
    config: Option<[u8; 8]>,
    /// Per routed connector (the order of `routes`), whether its output sends HL7: a DICOM
    /// object it takes becomes an ORU^R01 (a Structured Report) or a dead letter.
    hl7_outputs: Arc<[bool]>,
}

/// What [`Decider::decide_frame`] gives.
#[derive(Debug)]
pub enum Decision {
    /// Answered without storing anything (an empty frame, an unreadable header, an ACK).
    Done(Outcome),
    /// Decided, to be stored.
    Decided(Box<Decided>),
}

/// A frame decided: everything but its storing.
#[derive(Debug)]
pub struct Decided {
    /// The parsed message.
    pub message: Message,
    /// MSH-10 for logs.
    pub control_id: Option<String>,
    /// Its MSH-15/MSH-16 acknowledgment mode.
    pub mode: AckMode,
    /// Accepted, rejected or in error.
    pub verdict: Verdict,
    /// Why, when not accepted.
    pub reason: Option<Reason>,
    /// The ERR details, when not accepted.
    pub error: Option<AckError>,
    /// What it is stored as.
    pub disposition: Disposition,
    /// One per routed connector, in the decider's order ([`Decider::connector_names`]).
    pub routes: Vec<Route>,
    /// The copies of the connectors that take it and transform it.
    pub copies: Vec<(ConnectorId, StoredCopy)>,
    /// The `order_by` keys of the connectors that take it and have one.
    pub order_keys: Vec<(ConnectorId, u64)>,
    /// The code sent, when an ACK is sent.
    pub reply_code: Option<AckCode>,
    /// The ACK sent, if any.
    pub ack: Option<Vec<u8>>,
    /// The code decided (sent or not).
    pub decided: AckCode,
}

/// A refusal: the code category, a short reason for logs and counters, and the ERR details.
pub(super) struct Refusal {
    pub(super) verdict: Verdict,
    pub(super) reason: Reason,
    pub(super) error: AckError,
}

impl Refusal {
    pub(super) fn reject(reason: Reason, error: AckError) -> Box<Self> {
        Box::new(Self {
            verdict: Verdict::Reject,
            reason,
            error,
        })
    }
}

impl Decider {
    /// Build a decider. `connector_id` gives the outbox id of each connector the rule set
    /// routes to (by name); a connector it does not know is an error naming it, so a route can
    /// never reach another connector's queue.
    pub fn new(
        default_charset: Charset,
        stamper: Arc<dyn AckStamper>,
        rules: Arc<RuleSet>,
        connector_id: impl Fn(&str) -> Option<ConnectorId>,
        listener: &str,
    ) -> Result<Self, UnknownConnector> {
        let routes = rules
            .filter_connectors()
            .map(|name| {
                let connector =
                    connector_id(name).ok_or_else(|| UnknownConnector(name.to_owned()))?;
                Ok(Arc::new(RouteCounters {
                    connector,
                    queued: std::sync::atomic::AtomicU64::new(0),
                    filtered: std::sync::atomic::AtomicU64::new(0),
                }))
            })
            .collect::<Result<_, _>>()?;
        let names = rules.filter_connectors().map(Arc::from).collect();
        Ok(Self {
            default_charset,
            stamper,
            rules,
            routes,
            listener: listener.into(),
            senders: None,
            names,
            transforms: None,
            config: None,
            hl7_outputs: Arc::from(Vec::new()),
        })
    }

    /// Say which connectors send HL7 (`sends_hl7(name)`): a DICOM object routed to one is
    /// delivered as an ORU^R01 when it is a Structured Report, else dead-lettered.
    #[must_use]
    pub fn with_hl7_outputs(mut self, sends_hl7: impl Fn(&str) -> bool) -> Self {
        self.hl7_outputs = self.names.iter().map(|name| sends_hl7(name)).collect();
        self
    }

    /// Store `sha256`'s first 8 bytes with each message: the configuration it was decided
    /// with.
    #[must_use]
    pub fn with_config(mut self, sha256: Option<[u8; 32]>) -> Self {
        self.config = sha256.map(|sha| {
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&sha[..8]);
            prefix
        });
        self
    }

    /// Transform each connector's copy with its steps.
    #[must_use]
    pub fn with_transforms(mut self, transforms: Arc<Transforms>) -> Self {
        self.transforms = Some(transforms);
        self
    }

    /// Check each message's MSH-3/MSH-4 against its connection's client certificate.
    #[must_use]
    pub fn with_senders(mut self, senders: Option<crate::tls::SenderMap>) -> Self {
        self.senders = senders.map(Arc::new);
        self
    }

    /// Count into `counters` (another listener's, or an earlier configuration's) for the
    /// connectors they have, so each connector's intake figures add up over every listener
    /// and every reload.
    #[must_use]
    pub fn with_route_counters(mut self, counters: &[Arc<RouteCounters>]) -> Self {
        self.routes = self
            .routes
            .iter()
            .map(|own| {
                counters
                    .iter()
                    .find(|shared| shared.connector == own.connector)
                    .unwrap_or(own)
                    .clone()
            })
            .collect();
        self
    }

    /// The intake counters of each routed connector.
    pub fn route_counters(&self) -> &[Arc<RouteCounters>] {
        &self.routes
    }

    /// The character set of messages whose MSH-18 is empty.
    pub fn default_charset(&self) -> Charset {
        self.default_charset
    }

    /// The routed connectors' names, in the order of [`Decided::routes`].
    pub fn connector_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|name| &**name)
    }

    /// Everything decided for `frame` before it would be stored: [`Decision::Done`] when the
    /// frame is answered without storing (empty, unreadable, an ACK).
    pub fn decide_frame(
        &self,
        frame: Bytes,
        identity: Option<&crate::tls::PeerIdentity>,
    ) -> Decision {
        if frame.iter().all(u8::is_ascii_whitespace) {
            return Decision::Done(Outcome::bare(Reply::Ignore, None, Reason::EmptyFrame));
        }
        let Ok(message) = Message::parse(frame) else {
            return Decision::Done(Outcome::bare(Reply::Close, None, Reason::UnreadableHeader));
        };
        let control_id = control_id_for_logs(&message);
        if message.kind() == HeaderKind::Message && message.header_component(9, 1) == b"ACK" {
            // ACKs are never acknowledged (two gateways would ping-pong forever).
            return Decision::Done(Outcome::bare(
                Reply::Ignore,
                control_id,
                Reason::AckReceived,
            ));
        }
        let mode = AckMode::of(&message);
        let mut routes = Vec::new();
        let mut copies = Vec::new();
        let mut order_keys = Vec::new();
        let (verdict, reason, error, disposition) = match self.decide(
            &message,
            identity,
            &mut routes,
            &mut copies,
            &mut order_keys,
        ) {
            Ok(disposition) => (Verdict::Accept, None, None, disposition),
            Err(refusal) => {
                // A rule that cannot be evaluated is refused like one that is false (AR:
                // a retry gets the same answer), but stored as ERROR (ADR 0010).
                let disposition = match (refusal.verdict, refusal.reason) {
                    (Verdict::Error, _) | (_, Reason::RuleError) => Disposition::Error,
                    _ => Disposition::Rejected,
                };
                (
                    refusal.verdict,
                    Some(refusal.reason),
                    Some(refusal.error),
                    disposition,
                )
            }
        };
        let reply_code = mode.reply_code(verdict);
        let ack =
            reply_code.map(|code| build_ack(&message, code, error.as_ref(), &self.stamper.stamp()));
        let decided = mode.decided_code(verdict);
        Decision::Decided(Box::new(Decided {
            message,
            control_id,
            mode,
            verdict,
            reason,
            error,
            disposition,
            routes,
            copies,
            order_keys,
            reply_code,
            ack,
            decided,
        }))
    }
}

impl Ingest {
    /// Build an ingest over a [`Decider`] made as [`Decider::new`] does.
    pub fn new(
        default_charset: Charset,
        stamper: Arc<dyn AckStamper>,
        rules: Arc<RuleSet>,
        outbox: Outbox,
        connector_id: impl Fn(&str) -> Option<ConnectorId>,
        listener: &str,
    ) -> Result<Self, UnknownConnector> {
        let decider = Decider::new(default_charset, stamper, rules, connector_id, listener)?;
        Ok(Self::with_decider(decider, outbox))
    }

    /// An ingest deciding with `decider` and storing in `outbox`.
    pub fn with_decider(decider: Decider, outbox: Outbox) -> Self {
        Self {
            decider: Arc::new(std::sync::RwLock::new(Arc::new(decider))),
            outbox,
            batches: BatchSettings::default(),
        }
    }

    /// The decider in force now.
    pub fn current(&self) -> Arc<Decider> {
        match self.decider.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Decide with `decider` from the next frame on, in every clone of this ingest (a
    /// configuration reload). Frames in hand finish with the one they started with.
    pub fn replace(&self, decider: Decider) {
        let mut current = match self.decider.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(decider);
    }

    /// Change the decider while building (before the ingest is shared).
    fn rebuilt(self, change: impl FnOnce(Decider) -> Decider) -> Self {
        let decider = change((*self.current()).clone());
        Self::with_decider(decider, self.outbox).with_batches(self.batches)
    }

    /// Answer and check batches this way.
    #[must_use]
    pub fn with_batches(mut self, batches: BatchSettings) -> Self {
        self.batches = batches;
        self
    }

    /// Transform each connector's copy with its steps before it is stored.
    #[must_use]
    pub fn with_transforms(self, transforms: Arc<Transforms>) -> Self {
        self.rebuilt(|decider| decider.with_transforms(transforms))
    }

    /// Count into another listener's route counters ([`Decider::with_route_counters`]).
    #[must_use]
    pub fn with_route_counters(self, counters: &[Arc<RouteCounters>]) -> Self {
        self.rebuilt(|decider| decider.with_route_counters(counters))
    }

    /// Whether `tls_senders` is set.
    pub fn has_senders(&self) -> bool {
        self.current().senders.is_some()
    }

    /// Whether `tls_senders` names this certificate; `None` without `tls_senders`.
    pub fn knows_sender(&self, identity: &crate::tls::PeerIdentity) -> Option<bool> {
        self.current()
            .senders
            .as_ref()
            .map(|senders| senders.knows(identity))
    }

    /// Check each message's MSH-3/MSH-4 against its connection's client certificate.
    #[must_use]
    pub fn with_senders(self, senders: Option<crate::tls::SenderMap>) -> Self {
        self.rebuilt(|decider| decider.with_senders(senders))
    }

    /// Intake counters of each routed connector (the connector id is in each).
    pub fn route_counters(&self) -> Vec<Arc<RouteCounters>> {
        self.current().routes.to_vec()
    }

    /// Decide, store and answer one frame from `peer`, whose client certificate (mTLS) named
    /// `identity`.
    pub async fn handle(
        &self,
        frame: Bytes,
        peer: SocketAddr,
        identity: Option<&crate::tls::PeerIdentity>,
    ) -> Outcome {
        self.handle_from(frame, peer, identity, None).await
    }

    /// [`Ingest::handle`] for a sender that authenticated otherwise (an HTTP bearer token):
    /// `sender` (`token=<id>`) is kept in the audit record where a certificate's identity
    /// would be.
    pub async fn handle_from(
        &self,
        frame: Bytes,
        peer: SocketAddr,
        identity: Option<&crate::tls::PeerIdentity>,
        sender: Option<&str>,
    ) -> Outcome {
        if crate::hl7::is_envelope(&frame) {
            let from = batch::From {
                peer,
                identity,
                sender,
            };
            return self.handle_batch(frame, &from, None).await.outcome;
        }
        let received_at_micros = chrono::Utc::now().timestamp_micros();
        let decider = self.current();
        let decided = off_runtime(&decider, || decider.decide_frame(frame, identity));
        let decided = match decided {
            Decision::Done(outcome) => return outcome,
            Decision::Decided(decided) => decided,
        };
        let mut decided = *decided;
        let new_message =
            decider.new_message(&mut decided, received_at_micros, peer, identity, sender);
        let decided_routes = new_message.record.routes.clone();
        let stored = self.outbox.append(new_message).await;
        let Decided {
            message,
            control_id,
            mode,
            verdict,
            reason,
            reply_code,
            ack,
            decided,
            ..
        } = decided;

        let reply = |ack: Option<Vec<u8>>| match ack.zip(reply_code) {
            Some((bytes, code)) => Reply::Ack { bytes, code },
            None => Reply::Suppressed { code: decided },
        };
        match stored {
            Ok(Appended::Stored { id }) => {
                decider.count_routes(&decided_routes);
                Outcome {
                    reply: reply(ack),
                    control_id,
                    reason,
                    message_id: Some(id),
                }
            }
            Ok(Appended::Duplicate { id, ack: original }) => {
                let code = original.as_deref().and_then(ack_code_of).unwrap_or(decided);
                Outcome {
                    reply: match original {
                        Some(bytes) => Reply::Ack { bytes, code },
                        None => Reply::Suppressed { code },
                    },
                    control_id,
                    reason: Some(Reason::Duplicate),
                    message_id: Some(id),
                }
            }
            Err(store_error) if verdict == Verdict::Accept => {
                tracing::error!(error = %crate::outbox::Chain(&store_error), control_id = control_id.as_deref().unwrap_or(""), "message could not be stored; answering with an error");
                let error = AckError::new(
                    ErrorCode::ApplicationInternalError,
                    None,
                    "the message could not be stored and was not accepted; send it again"
                        .to_owned(),
                );
                let reply = match mode.reply_code(Verdict::Error) {
                    Some(code) => Reply::Ack {
                        bytes: build_ack(&message, code, Some(&error), &decider.stamper.stamp()),
                        code,
                    },
                    // The sender asked for no error ACK, but this message is not stored: close
                    // the connection so its transport sees the failure instead of silence.
                    None => Reply::Close,
                };
                Outcome {
                    reply,
                    control_id,
                    reason: Some(Reason::StoreFailed),
                    message_id: None,
                }
            }
            Err(store_error) => {
                // A refused message stays refused; storing it was for the record only.
                tracing::warn!(error = %crate::outbox::Chain(&store_error), "refused message could not be recorded");
                Outcome {
                    reply: reply(ack),
                    control_id,
                    reason,
                    message_id: None,
                }
            }
        }
    }
}

impl Decider {
    /// What is stored for a decided message (its copies are moved out of `decided`).
    fn new_message(
        &self,
        decided: &mut Decided,
        received_at_micros: i64,
        peer: SocketAddr,
        identity: Option<&crate::tls::PeerIdentity>,
        sender: Option<&str>,
    ) -> NewMessage {
        let message = &decided.message;
        let record = MessageRecord {
            received_at_micros,
            peer: peer.to_string(),
            listener: self.listener.to_string(),
            header: header_fields(message),
            disposition: decided.disposition,
            reason: decided.error.as_ref().map(|error| match decided.reason {
                Some(reason) => format!("{reason}: {}", error.user_message),
                None => error.user_message.clone(),
            }),
            routes: decided.routes.clone(),
            ack_code: decided.decided.as_str().to_owned(),
            body_len: message.raw().len() as u64,
            // Kept so a retransmit of an accepted message gets this very ACK again.
            ack: if decided.verdict == Verdict::Accept {
                decided.ack.clone()
            } else {
                None
            },
            dedup_key: None,
            body_inline: false,
            config: self.config,
        };
        NewMessage {
            record,
            body: message.raw().clone(),
            dedup_key: (decided.verdict == Verdict::Accept).then(|| dedup_key(message)),
            tls_identity: identity
                .map(|identity| identity.audit_text().to_owned())
                .or_else(|| sender.map(str::to_owned)),
            copies: std::mem::take(&mut decided.copies),
            order_keys: std::mem::take(&mut decided.order_keys),
            patient: patient_values(message, self.default_charset),
            object: None,
            spool: None,
        }
    }

    /// Routes come one per connector, in the order of the decider's routes (see `decide`),
    /// or none for a refused message.
    fn count_routes(&self, routes: &[Route]) {
        use std::sync::atomic::Ordering;
        debug_assert!(
            routes.is_empty() || routes.len() == self.routes.len(),
            "one route per connector, or none"
        );
        for (route, counters) in routes.iter().zip(self.routes.iter()) {
            debug_assert_eq!(
                route.connector, counters.connector,
                "routes in connector order"
            );
            match route.status {
                RouteStatus::Queued => counters.queued.fetch_add(1, Ordering::Relaxed),
                RouteStatus::Filtered => counters.filtered.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Header checks, validation rules, routing, transforms. `routes` gets one entry per
    /// connector, `copies` one per connector that takes the message and transforms it.
    fn decide(
        &self,
        message: &Message,
        identity: Option<&crate::tls::PeerIdentity>,
        routes: &mut Vec<Route>,
        copies: &mut Vec<(ConnectorId, StoredCopy)>,
        order_keys: &mut Vec<(ConnectorId, u64)>,
    ) -> Result<Disposition, Box<Refusal>> {
        self.check_header(message)?;
        if let Some(senders) = &self.senders {
            check_sender(senders, message, identity)?;
        }
        let charset = message.charset(self.default_charset).charset();
        let evaluation = self.rules.evaluate(message, charset, &self.listener);
        match evaluation.validation {
            Validation::Passed => {}
            Validation::Failed {
                rule,
                message: text,
            } => {
                let mut error = AckError::new(
                    ErrorCode::ApplicationInternalError,
                    None,
                    format!("{text} (validation rule {rule})"),
                );
                error.application_code = Some(rule);
                return Err(Refusal::reject(Reason::RuleFailed, error));
            }
            Validation::Errored { subject, detail } => {
                tracing::warn!(rule = %subject, error = %detail, "a rule could not be evaluated; the message is refused (AR) and stored as ERROR");
                let mut error = AckError::new(
                    ErrorCode::ApplicationInternalError,
                    None,
                    format!("{subject} could not be evaluated for this message"),
                );
                error.diagnostic = Some(detail);
                error.application_code = Some(subject);
                return Err(Box::new(Refusal {
                    verdict: Verdict::Reject,
                    reason: Reason::RuleError,
                    error,
                }));
            }
        }
        debug_assert_eq!(
            evaluation.routes.len(),
            self.routes.len(),
            "the rule set gives one route per connector it was built with"
        );
        routes.extend(
            self.routes
                .iter()
                .zip(&evaluation.routes)
                .map(|(counters, &taken)| Route {
                    connector: counters.connector,
                    status: if taken {
                        RouteStatus::Queued
                    } else {
                        RouteStatus::Filtered
                    },
                }),
        );
        order_keys.extend(
            self.routes
                .iter()
                .zip(&evaluation.order_keys)
                .filter_map(|(counters, key)| key.map(|key| (counters.connector, key))),
        );
        if let Some(transforms) = &self.transforms {
            for (route, name) in routes.iter().zip(self.names.iter()) {
                if route.status != RouteStatus::Queued || !transforms.transforms(name) {
                    continue;
                }
                let copy = match transforms.apply(name, message, charset, &self.listener) {
                    Ok(Some(bytes)) => StoredCopy::Bytes(Bytes::from(bytes)),
                    Ok(None) => continue,
                    Err(failure) => {
                        // The failure names the step and the place, never message data.
                        tracing::warn!(connector = %name, error = %failure, "transform failed; this connector's copy goes to its dead-letter queue");
                        StoredCopy::Failed(failure.to_string())
                    }
                };
                copies.push((route.connector, copy));
            }
        }
        if routes
            .iter()
            .any(|route| route.status == RouteStatus::Queued)
        {
            Ok(Disposition::Routed)
        } else {
            Ok(Disposition::Unrouted)
        }
    }
}

/// Run `decide` where rules and transforms may take their time (bounded at load, ADR 0012):
/// never on a runtime thread other connections' tasks need, when the runtime has others to
/// hand them to.
pub(crate) fn off_runtime<T>(decider: &Decider, decide: impl FnOnce() -> T) -> T {
    off_runtime_if(false, decider, decide)
}

/// [`off_runtime`], also when `blocking` (the decision may read a spooled file).
pub(crate) fn off_runtime_if<T>(
    blocking: bool,
    decider: &Decider,
    decide: impl FnOnce() -> T,
) -> T {
    let evaluates = blocking || decider.rules.evaluates() || decider.transforms.is_some();
    let off_runtime = evaluates
        && tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
    if off_runtime {
        tokio::task::block_in_place(decide)
    } else {
        decide()
    }
}
