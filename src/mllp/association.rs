//! A DICOM association on a `type: dicom` listener's connection (ADR 0020): negotiation,
//! C-ECHO, and C-STORE answered only after the object is committed.
//!
//! Limits, all checked before bytes are read into memory: a PDU longer than the maximum this
//! side announced is refused from its header; a command set is at most
//! [`dimse::MAX_COMMAND_LEN`]; an object's data set grows only up to `max_object_size` (the
//! rest of an oversized object is read and discarded, and the request answered 0xC000), and
//! is covered by the listener's share of `max_frame_memory`. `idle_timeout` closes an idle
//! association, `frame_timeout` bounds the arrival of one object, `write_timeout` each
//! answer. Logs name the peer, AE titles and SOP Instance UIDs, never object content.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::dicom::{DicomSettings, choose_transfer_syntax};
use super::spooling::{SPOOL_STAGE, Spooling};
use crate::dicom::dataset;
use crate::dicom::dimse::{self, Command};
use crate::dicom::object::{self, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION};
use crate::dicom::pdu::{self, AssociateAc, ContextAnswer, PduType, Rejection};
use crate::ingest::{Ingest, ReceivedObject, SpooledObject};

/// Longest A-ASSOCIATE-RQ read (hundreds of presentation contexts fit).
const MAX_ASSOCIATE_RQ: u32 = 1024 * 1024;
/// How long a new connection may take to send its A-ASSOCIATE-RQ (the ARTIM timer).
const ASSOCIATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection an association runs on: TCP or TLS over TCP.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// Acknowledge the next segments at once. A sender writes a command and its data set
    /// as two PDUs; with Nagle's algorithm on its side, the second waits for the ACK of the
    /// first, which delayed ACKs would hold back 40 ms per object. Linux turns quick ACKs
    /// off again by itself, so this is asked before every read.
    fn quickack(&self);
}

impl Transport for tokio::net::TcpStream {
    fn quickack(&self) {
        let _ = socket2::SockRef::from(self).set_tcp_quickack(true);
    }
}

impl Transport for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn quickack(&self) {
        Transport::quickack(self.get_ref().0);
    }
}

/// Everything an association needs from its listener.
#[derive(Debug)]
pub(super) struct Context<'a> {
    pub(super) settings: &'a DicomSettings,
    pub(super) listener: &'a super::ListenerSettings,
    pub(super) ingest: &'a Ingest,
    pub(super) stats: &'a super::ListenerStats,
    pub(super) budget: &'a Arc<super::budget::FrameBudget>,
    pub(super) shutdown: &'a tokio_util::sync::CancellationToken,
}

/// Why an association ended.
#[derive(Debug)]
enum End {
    Released,
    Aborted,
    PeerClosed,
    Shutdown,
    IdleTimeout,
    ObjectTimeout,
    Rejected(Rejection),
    Protocol(String),
    Io(String),
}

/// Serve one association on `stream` until it ends.
pub(super) async fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    identity: Option<crate::tls::PeerIdentity>,
    context: Context<'_>,
) where
    S: Transport,
{
    let mut association = Association {
        stream: &mut stream,
        peer,
        identity,
        context: &context,
        contexts: Vec::new(),
        peer_max_pdu: 0,
        calling_ae: String::new(),
        called_ae: String::new(),
    };
    let end = association.run().await;
    let calling_ae = association.calling_ae.clone();
    match end {
        End::Released => debug!(%peer, calling_ae, "association released"),
        End::PeerClosed => debug!(%peer, calling_ae, "connection closed by the peer"),
        End::Aborted => info!(%peer, calling_ae, "association aborted by the peer"),
        End::Shutdown => debug!(%peer, calling_ae, "association aborted for shutdown"),
        End::IdleTimeout => {
            context
                .stats
                .idle_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            info!(%peer, calling_ae, "association closed: idle_timeout reached with no data");
        }
        End::ObjectTimeout => {
            context
                .stats
                .frame_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(%peer, calling_ae, "association aborted: an object did not arrive within frame_timeout; nothing of it was stored");
        }
        End::Rejected(rejection) => {
            context
                .stats
                .connections_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(%peer, calling_ae, called_ae = %association.called_ae, %rejection, "association rejected");
        }
        End::Protocol(problem) => {
            context
                .stats
                .unreadable_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(%peer, calling_ae, problem, "association aborted: protocol error");
        }
        End::Io(error) => warn!(%peer, calling_ae, error, "association ended: connection failed"),
    }
}

struct Association<'a, 'c, S> {
    stream: &'a mut S,
    peer: SocketAddr,
    identity: Option<crate::tls::PeerIdentity>,
    context: &'a Context<'c>,
    /// Accepted presentation contexts: id, abstract syntax, transfer syntax.
    contexts: Vec<(u8, String, String)>,
    peer_max_pdu: u32,
    calling_ae: String,
    called_ae: String,
}

/// What one read of a PDU gave.
enum Read {
    Pdu(PduType, Vec<u8>),
    End(End),
}

impl<S> Association<'_, '_, S>
where
    S: Transport,
{
    async fn run(&mut self) -> End {
        match self
            .read_pdu(MAX_ASSOCIATE_RQ, Some(ASSOCIATE_TIMEOUT), None, false)
            .await
        {
            Read::Pdu(PduType::AssociateRq, body) => {
                if let Err(end) = self.negotiate(&body).await {
                    return end;
                }
            }
            Read::Pdu(..) => {
                return self
                    .abort(End::Protocol(
                        "the first PDU is not an A-ASSOCIATE-RQ".to_owned(),
                    ))
                    .await;
            }
            Read::End(end) => return end,
        }
        self.serve_messages().await
    }

    /// Write and flush within `write_timeout` (over TLS the bytes may wait in the session
    /// until the flush).
    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        let stream = &mut *self.stream;
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        let written = match self.context.listener.write_timeout {
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| End::Io("write_timeout reached".to_owned()))?,
            None => write.await,
        };
        written.map_err(|error| End::Io(error.to_string()))
    }

    /// Close the connection, within `write_timeout` (a few seconds without one).
    async fn close(&mut self) {
        let limit = self
            .context
            .listener
            .write_timeout
            .unwrap_or(Duration::from_secs(5));
        let _ = tokio::time::timeout(limit, self.stream.shutdown()).await;
    }

    async fn abort(&mut self, end: End) -> End {
        let _ = self.write(&pdu::abort(0)).await;
        self.close().await;
        end
    }

    /// Read one PDU whose body is at most `limit` bytes: its header within `timeout` (idle),
    /// its body within `body_timeout` (default `frame_timeout`), or until shutdown when
    /// `stop_on_shutdown` (between messages).
    async fn read_pdu(
        &mut self,
        limit: u32,
        timeout: Option<Duration>,
        body_timeout: Option<Duration>,
        stop_on_shutdown: bool,
    ) -> Read {
        match self.read_header(timeout, stop_on_shutdown).await {
            Ok(header) => self.read_body(header, limit, body_timeout).await,
            Err(end) => Read::End(end),
        }
    }

    /// A PDU header within `timeout`, or until shutdown when `stop_on_shutdown`.
    async fn read_header(
        &mut self,
        timeout: Option<Duration>,
        stop_on_shutdown: bool,
    ) -> Result<[u8; pdu::HEADER_LEN], End> {
        let mut header = [0u8; pdu::HEADER_LEN];
        self.stream.quickack();
        let read = async { self.stream.read_exact(&mut header).await };
        let shutdown = self.context.shutdown.clone();
        let result = tokio::select! {
            () = shutdown.cancelled(), if stop_on_shutdown => {
                return Err(self.abort(End::Shutdown).await);
            }
            result = sleep_or(timeout, read) => result,
        };
        match result {
            None => Err(self.abort(End::IdleTimeout).await),
            Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(End::PeerClosed)
            }
            Some(Err(error)) => Err(End::Io(error.to_string())),
            Some(Ok(_)) => Ok(header),
        }
    }

    /// The body of the PDU `header` announces, refused above `limit` before anything is
    /// allocated, within `body_timeout` (default `frame_timeout`).
    async fn read_body(
        &mut self,
        header: [u8; pdu::HEADER_LEN],
        limit: u32,
        body_timeout: Option<Duration>,
    ) -> Read {
        let (kind, length) = match pdu::header(&header, limit) {
            Ok(parsed) => parsed,
            Err(error) => return Read::End(self.abort(End::Protocol(error.to_string())).await),
        };
        // The length was checked against `limit` before this allocation.
        let mut body = vec![0u8; length as usize];
        let read = self.stream.read_exact(&mut body);
        let body_timeout = body_timeout
            .or(self.context.listener.frame_timeout)
            .or(Some(ASSOCIATE_TIMEOUT));
        match sleep_or(body_timeout, read).await {
            None => Read::End(self.abort(End::ObjectTimeout).await),
            Some(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Read::End(End::PeerClosed)
            }
            Some(Err(error)) => Read::End(End::Io(error.to_string())),
            Some(Ok(_)) => Read::Pdu(kind, body),
        }
    }

    /// [`Self::read_pdu`] with one limit for the header and the body together (`None`: no
    /// limit but `frame_timeout`'s for the body).
    async fn read_pdu_within(&mut self, limit: u32, within: Option<Duration>) -> Read {
        let Some(within) = within else {
            return self.read_pdu(limit, None, None, false).await;
        };
        let deadline = Instant::now() + within;
        let header_read = self.read_header(Some(within), false).await;
        let header = match header_read {
            Ok(header) => header,
            Err(end) => return Read::End(end),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.read_body(header, limit, Some(left)).await
    }

    /// Answer the A-ASSOCIATE-RQ: accept the contexts we take, or reject the association.
    async fn negotiate(&mut self, body: &[u8]) -> Result<(), End> {
        let request = match pdu::parse_associate_rq(body) {
            Ok(request) => request,
            Err(error) => return Err(self.abort(End::Protocol(error.to_string())).await),
        };
        self.calling_ae.clone_from(&request.calling_ae);
        self.called_ae.clone_from(&request.called_ae);
        let settings = self.context.settings;
        let rejection = if request.application_context != pdu::APPLICATION_CONTEXT {
            Some(Rejection::APPLICATION_CONTEXT)
        } else if request.called_ae != settings.ae_title {
            Some(Rejection::CALLED_AE)
        } else if settings
            .allowed_callers
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&request.calling_ae))
        {
            Some(Rejection::CALLING_AE)
        } else {
            None
        };
        if let Some(rejection) = rejection {
            let _ = self.write(&pdu::encode_associate_rj(rejection)).await;
            return Err(End::Rejected(rejection));
        }
        let answers: Vec<ContextAnswer> = request
            .contexts
            .iter()
            .map(|proposed| {
                let supported = proposed.abstract_syntax == pdu::VERIFICATION
                    || settings.accepts_class(&proposed.abstract_syntax);
                let chosen = choose_transfer_syntax(&proposed.transfer_syntaxes);
                match (supported, chosen) {
                    (false, _) => ContextAnswer {
                        id: proposed.id,
                        result: 3,
                        transfer_syntax: dataset::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
                    },
                    (true, None) => ContextAnswer {
                        id: proposed.id,
                        result: 4,
                        transfer_syntax: dataset::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
                    },
                    (true, Some(syntax)) => ContextAnswer {
                        id: proposed.id,
                        result: 0,
                        transfer_syntax: syntax.to_owned(),
                    },
                }
            })
            .collect();
        self.contexts = answers
            .iter()
            .filter(|answer| answer.result == 0)
            .filter_map(|answer| {
                let proposed = request
                    .contexts
                    .iter()
                    .find(|context| context.id == answer.id)?;
                Some((
                    answer.id,
                    proposed.abstract_syntax.clone(),
                    answer.transfer_syntax.clone(),
                ))
            })
            .collect();
        self.peer_max_pdu = request.max_pdu;
        let ac = AssociateAc {
            called_ae: request.called_ae.clone(),
            calling_ae: request.calling_ae.clone(),
            contexts: answers,
            max_pdu: settings.max_pdu_size,
            implementation_class: IMPLEMENTATION_CLASS_UID.to_owned(),
            implementation_version: IMPLEMENTATION_VERSION.to_owned(),
        };
        self.write(&pdu::encode_associate_ac(&ac)).await?;
        self.context.stats.count_request();
        debug!(peer = %self.peer, calling_ae = %request.calling_ae, accepted = self.contexts.len(), proposed = request.contexts.len(), "association accepted");
        Ok(())
    }

    /// Commands and their data sets until the association ends.
    async fn serve_messages(&mut self) -> End {
        loop {
            let (command, context_id, leftover) = match self.read_command().await {
                Ok(read) => read,
                Err(end) => return end,
            };
            let Some((_, abstract_syntax, transfer_syntax)) = self
                .contexts
                .iter()
                .find(|(id, ..)| *id == context_id)
                .cloned()
            else {
                return self
                    .abort(End::Protocol(
                        "a command on a presentation context that was not accepted".to_owned(),
                    ))
                    .await;
            };
            let answer = match command.field {
                dimse::C_ECHO_RQ if command.has_data_set() || !leftover.is_empty() => {
                    return self
                        .abort(End::Protocol("a C-ECHO with a data set".to_owned()))
                        .await;
                }
                dimse::C_ECHO_RQ if abstract_syntax == pdu::VERIFICATION => {
                    dimse::response(&command, dimse::C_ECHO_RSP, dimse::SUCCESS, "")
                }
                dimse::C_ECHO_RQ => dimse::response(
                    &command,
                    dimse::C_ECHO_RSP,
                    dimse::SOP_CLASS_NOT_SUPPORTED,
                    "C-ECHO on a storage context",
                ),
                dimse::C_STORE_RQ if command.has_data_set() => {
                    // What the request itself says about the object, checked before a byte
                    // of its data set is kept.
                    let refusal = if abstract_syntax == pdu::VERIFICATION
                        || command.sop_class != abstract_syntax
                        || !self.context.settings.accepts_class(&command.sop_class)
                    {
                        Some((
                            dimse::SOP_CLASS_NOT_SUPPORTED,
                            "SOP class not accepted on this presentation context",
                        ))
                    } else if !crate::dicom::is_uid(&command.sop_instance) {
                        Some((
                            dimse::CANNOT_UNDERSTAND,
                            "AffectedSOPInstanceUID missing or not a UID",
                        ))
                    } else {
                        None
                    };
                    let store = Store {
                        command: &command,
                        context_id,
                        transfer_syntax,
                        leftover,
                        refusal,
                    };
                    match self.store(store).await {
                        Ok(answer) => answer,
                        Err(end) => return end,
                    }
                }
                other => {
                    return self
                        .abort(End::Protocol(format!(
                            "DIMSE command 0x{other:04x} is not served here"
                        )))
                        .await;
                }
            };
            for pdu in pdu::encode_pdata(context_id, true, &answer, self.peer_max_pdu) {
                if let Err(end) = self.write(&pdu).await {
                    return end;
                }
            }
        }
    }

    /// The next command: its fragments (all on one context, up to MAX_COMMAND_LEN), its
    /// context, and any data set fragments that came in the same PDU after it (senders may
    /// pack both into one P-DATA-TF).
    async fn read_command(&mut self) -> Result<(Command, u8, Vec<Fragment>), End> {
        let max_pdu = self.context.settings.max_pdu_size;
        let idle = self.context.listener.idle_timeout;
        let mut command_bytes = Vec::new();
        let mut context_id = None;
        let mut leftover = Vec::new();
        loop {
            let first = command_bytes.is_empty();
            match self.read_pdu(max_pdu, idle, None, first).await {
                Read::End(end) => return Err(end),
                Read::Pdu(PduType::PData, body) => {
                    let items = match pdu::pdvs(&body) {
                        Ok(items) => items,
                        Err(error) => {
                            return Err(self.abort(End::Protocol(error.to_string())).await);
                        }
                    };
                    let mut complete = false;
                    for item in items {
                        if complete {
                            let ended = leftover
                                .last()
                                .is_some_and(|fragment: &Fragment| fragment.last);
                            if item.command || Some(item.context) != context_id || ended {
                                return Err(self
                                    .abort(End::Protocol(
                                        "a fragment after a command that is not its data set"
                                            .to_owned(),
                                    ))
                                    .await);
                            }
                            leftover.push(Fragment {
                                last: item.last,
                                data: item.data.to_vec(),
                            });
                            continue;
                        }
                        if !item.command || context_id.is_some_and(|id| id != item.context) {
                            return Err(self
                                .abort(End::Protocol(
                                    "a command's fragments are out of place".to_owned(),
                                ))
                                .await);
                        }
                        context_id = Some(item.context);
                        if command_bytes.len() + item.data.len() > dimse::MAX_COMMAND_LEN {
                            return Err(self
                                .abort(End::Protocol("a command set is too long".to_owned()))
                                .await);
                        }
                        command_bytes.extend_from_slice(item.data);
                        complete = item.last;
                    }
                    if complete {
                        break;
                    }
                }
                Read::Pdu(PduType::ReleaseRq, _) if first => {
                    let _ = self.write(&pdu::release_rp()).await;
                    self.close().await;
                    return Err(End::Released);
                }
                Read::Pdu(PduType::Abort, _) => return Err(End::Aborted),
                Read::Pdu(other, _) => {
                    return Err(self
                        .abort(End::Protocol(format!("unexpected {other:?} PDU")))
                        .await);
                }
            }
        }
        let Some(command) = dimse::parse(&command_bytes) else {
            return Err(self
                .abort(End::Protocol("a command set is not readable".to_owned()))
                .await);
        };
        Ok((command, context_id.unwrap_or_default(), leftover))
    }

    /// Receive a C-STORE's data set and store it (or discard it, when refused or too large):
    /// the response's command set.
    async fn store(&mut self, store: Store<'_>) -> Result<Vec<u8>, End> {
        let Store {
            command,
            context_id,
            transfer_syntax,
            leftover,
            mut refusal,
        } = store;
        let settings = self.context.settings;
        let max_pdu = settings.max_pdu_size;
        let deadline = self
            .context
            .listener
            .frame_timeout
            .map(|limit| Instant::now() + limit);
        let idle = self.context.listener.idle_timeout;
        // The next read's limit: the idle timeout, and what is left of frame_timeout.
        let next_limit = || {
            let left = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
            match (idle, left) {
                (Some(idle), Some(left)) => Some(idle.min(left)),
                (idle, left) => idle.or(left),
            }
        };
        let mut share = super::budget::Share::new(Arc::clone(self.context.budget));
        // The stored file is built in place: mfoundry's meta first, then the data set as it
        // arrives, so the object is never copied.
        let mut file = if refusal.is_none() {
            object::part10_prefix(
                &command.sop_class,
                &command.sop_instance,
                &transfer_syntax,
                &self.calling_ae,
            )
        } else {
            Vec::new()
        };
        let data_start = file.len();
        let mut received = 0usize;
        let mut pending = leftover;
        let mut last = pending.iter().any(|fragment| fragment.last);
        let mut oversized = false;
        // Beyond inline_object_size the object goes to the spool as it arrives; `file`
        // keeps its head (ADR 0020).
        let spool = self.context.ingest.spool();
        let mut spooling = Spooling::default();
        // A store in memory (tests) spools nothing: objects are held whole, up to what the
        // memory budget was sized for.
        let max_object_size = if spool.is_some() {
            settings.max_object_size
        } else {
            settings.max_object_size.min(settings.inline_object_size)
        };
        loop {
            for fragment in pending.drain(..) {
                received = received.saturating_add(fragment.data.len());
                if refusal.is_some() || oversized || spooling.failed {
                    continue;
                }
                if received > max_object_size {
                    // Read to the end and discarded: the object is answered, not stored.
                    oversized = true;
                    file = Vec::new();
                    spooling = Spooling::default();
                    share.release();
                    continue;
                }
                let head_room = settings.inline_object_size.saturating_sub(file.len());
                if let Some(spool) = &spool
                    && spooling.writer.is_none()
                    && fragment.data.len() > head_room
                {
                    file = spooling.start(spool, file, data_start).await;
                    if spooling.failed {
                        continue;
                    }
                }
                // Spooling keeps only the head in `file`, and holds a write stage besides.
                let (kept, stage) = if spooling.writer.is_some() {
                    (
                        &fragment.data[..head_room.min(fragment.data.len())],
                        SPOOL_STAGE,
                    )
                } else {
                    (&fragment.data[..], 0)
                };
                let covered =
                    share.cover(file.capacity().max(file.len() + kept.len()) + stage, || {
                        debug!("waiting for max_frame_memory before receiving more of an object");
                    });
                match next_limit() {
                    Some(limit) => {
                        if tokio::time::timeout(limit, covered).await.is_err() {
                            return Err(self.abort(End::ObjectTimeout).await);
                        }
                    }
                    None => covered.await,
                }
                // Grown by an eighth at a time, not doubled: the file's memory stays close to
                // its size, which max_frame_memory covers.
                if file.capacity() - file.len() < kept.len() {
                    file.reserve_exact(kept.len().max(file.len() / 8));
                }
                file.extend_from_slice(kept);
                if spooling.writer.is_some() {
                    spooling.push(&fragment.data).await;
                }
            }
            if last {
                break;
            }
            let limit = next_limit();
            if limit.is_some_and(|left| left.is_zero()) {
                return Err(self.abort(End::ObjectTimeout).await);
            }
            // One limit for the whole PDU: its header and body together.
            let body = match self.read_pdu_within(max_pdu, limit).await {
                Read::End(End::IdleTimeout) => return Err(End::ObjectTimeout),
                Read::End(end) => return Err(end),
                Read::Pdu(PduType::PData, body) => body,
                Read::Pdu(PduType::Abort, _) => return Err(End::Aborted),
                Read::Pdu(other, _) => {
                    return Err(self
                        .abort(End::Protocol(format!(
                            "unexpected {other:?} PDU within a data set"
                        )))
                        .await);
                }
            };
            let items = match pdu::pdvs(&body) {
                Ok(items) => items,
                Err(error) => return Err(self.abort(End::Protocol(error.to_string())).await),
            };
            for item in items {
                if item.command || item.context != context_id || last {
                    return Err(self
                        .abort(End::Protocol("a data set fragment out of place".to_owned()))
                        .await);
                }
                last = item.last;
                pending.push(Fragment {
                    last: item.last,
                    data: item.data.to_vec(),
                });
            }
        }
        if oversized {
            self.context
                .stats
                .oversize_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance_uid = %command.sop_instance, limit = max_object_size, "object refused: larger than max_object_size; nothing was stored");
            refusal = Some((
                dimse::CANNOT_UNDERSTAND,
                "object larger than max_object_size",
            ));
        }
        let spooled = match (&spool, spooling.writer.is_some() || spooling.failed) {
            (Some(spool), true) if refusal.is_none() && !oversized => {
                match spooling.finish().await {
                    Some(file) => Some(SpooledObject {
                        file,
                        spool: Arc::clone(spool),
                    }),
                    None => {
                        warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance_uid = %command.sop_instance, "object not stored: its spooled file could not be written; answering out of resources");
                        self.context
                            .stats
                            .count_answer(crate::hl7::AckCode::AE, true);
                        return Ok(dimse::response(
                            command,
                            dimse::C_STORE_RSP,
                            dimse::OUT_OF_RESOURCES,
                            "could not be stored; send it again",
                        ));
                    }
                }
            }
            _ => None,
        };
        if let Some((status, comment)) = refusal {
            self.context
                .stats
                .count_answer(crate::hl7::AckCode::AR, true);
            if !oversized {
                warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance_uid = %command.sop_instance, status = format_args!("0x{status:04X}"), reason = comment, "object refused; nothing was stored");
            }
            return Ok(dimse::response(
                command,
                dimse::C_STORE_RSP,
                status,
                comment,
            ));
        }
        let object = ReceivedObject {
            file,
            spooled,
            data_start,
            sop_class: command.sop_class.clone(),
            sop_instance: command.sop_instance.clone(),
            transfer_syntax,
            calling_ae: self.calling_ae.clone(),
            called_ae: self.called_ae.clone(),
        };
        let outcome = self
            .context
            .ingest
            .handle_object(object, self.peer, self.identity.as_ref())
            .await;
        drop(share);
        if outcome.status == dimse::SUCCESS {
            self.context
                .stats
                .count_answer(crate::hl7::AckCode::AA, true);
            debug!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance_uid = %command.sop_instance, message_id = outcome.message_id, duplicate = outcome.duplicate, "object stored");
        } else {
            self.context
                .stats
                .count_answer(crate::hl7::AckCode::AE, true);
            warn!(peer = %self.peer, calling_ae = %self.calling_ae, sop_instance_uid = %command.sop_instance, status = format_args!("0x{:04X}", outcome.status), reason = %outcome.comment, "object not stored");
        }
        Ok(dimse::response(
            command,
            dimse::C_STORE_RSP,
            outcome.status,
            &outcome.comment,
        ))
    }
}

/// A data set fragment received.
struct Fragment {
    last: bool,
    data: Vec<u8>,
}

/// One C-STORE to receive: the request, its context, what came with the command, and why it
/// is refused (decided from the request alone), if it is.
struct Store<'a> {
    command: &'a Command,
    context_id: u8,
    transfer_syntax: String,
    leftover: Vec<Fragment>,
    refusal: Option<(u16, &'static str)>,
}

/// `future` within `limit` (`None`: no limit); `None` when the limit passed.
async fn sleep_or<F: std::future::Future>(limit: Option<Duration>, future: F) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}
