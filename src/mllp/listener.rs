//! The MLLP listener: accepts connections, reads frames, answers each in order.
//!
//! One task per connection. A connection handles one frame at a time: read until a frame is
//! complete, hand it to [`Ingest`], write the reply, then read the next, so replies always
//! leave in the order frames arrived. Limits:
//! - `MAX_CONNECTIONS`: a permit is taken before a connection is served; without one the
//!   connection is closed at once (counted);
//! - `IDLE_TIMEOUT`: no frame bytes for this long close the connection (bytes outside frames
//!   do not keep it open);
//! - `FRAME_TIMEOUT`: a frame not finished this long after its start block closes the
//!   connection (slowloris guard);
//! - `WRITE_TIMEOUT`: an ACK that cannot be written in time closes the connection;
//! - `MAX_FRAME_SIZE`: a longer frame closes the connection; the read buffer never grows much
//!   past it.
//!
//! On shutdown the accept loop stops and connections close once they are between frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use opentelemetry::KeyValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::admission::{Admission, PeerSlot, Reserve, Throttle, accept_tls};
use super::codec::{FrameError, MllpCodec, frame};
use super::stats::{ListenerStats, ack_index, bump};

use crate::ingest::{Ingest, Reason, Reply};
use crate::telemetry::metrics::{ACK_CODE, LISTENER};
use crate::units::Cidr;

/// Settings of the MLLP listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerSettings {
    /// `LISTEN_ADDR`, Go syntax (`:2575` is every interface).
    pub listen_addr: String,
    /// `LISTENER_NAME`: names the listener in stored messages, rules (`inbound`) and logs.
    pub name: String,
    /// `MAX_CONNECTIONS`; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// `MAX_CONNECTIONS_PER_PEER`: most connections at once from one IP address; `None` is
    /// no per-peer limit.
    pub max_connections_per_peer: Option<usize>,
    /// `IDLE_TIMEOUT`: close a connection that sends nothing for this long; `None` never.
    pub idle_timeout: Option<Duration>,
    /// `FRAME_TIMEOUT`: a frame must be complete this long after its start block; `None` never.
    pub frame_timeout: Option<Duration>,
    /// `WRITE_TIMEOUT`: each ACK write must finish within this; `None` never.
    pub write_timeout: Option<Duration>,
    /// `KEEP_ALIVE_PERIOD`: TCP keep-alive probe period; `None` disables keep-alive.
    pub keep_alive_period: Option<Duration>,
    /// `MAX_FRAME_SIZE` in bytes, between the start and end blocks.
    pub max_frame_size: usize,
    /// `ALLOWED_PEERS`: when set, connections from other addresses are closed before a byte
    /// is read.
    pub allowed_peers: Option<Vec<Cidr>>,
    /// `MAX_FRAME_MEMORY` in bytes: the budget of every connection's frames together (see
    /// [`super::budget`]).
    pub max_frame_memory: usize,
    /// `BATCH_ACK` and `BATCH_COUNT_MISMATCH`: how batches are answered and checked.
    pub batches: crate::ingest::BatchSettings,
}

/// Bind `LISTEN_ADDR` (see [`crate::units::bind`]).
pub async fn bind(listen_addr: &str) -> std::io::Result<TcpListener> {
    crate::units::bind(listen_addr).await
}

/// Everything a connection task needs, shared.
#[derive(Debug)]
struct Shared {
    settings: ListenerSettings,
    ingest: Ingest,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    /// The listener's name as a metric attribute value.
    listener_name: opentelemetry::StringValue,
    /// TLS, when `TLS_CERT_FILE` is set: every connection is handshaken before a byte of
    /// HL7 is read.
    tls: Option<crate::tls::TlsServer>,
    /// `MAX_FRAME_MEMORY`, shared by every connection.
    budget: Arc<super::budget::FrameBudget>,
    /// A `type: dicom` listener's settings: its connections are DICOM associations.
    dicom: Option<super::dicom::DicomSettings>,
}

/// An MLLP listener ready to serve: its settings, the ingest its frames go to, its counters,
/// its TLS, and the token that stops it.
#[derive(Debug)]
pub struct Listener {
    shared: Arc<Shared>,
    /// Stops accepting alone, leaving the connections open (a listener replaced by a
    /// configuration reload); `shutdown` stops both.
    accepting: Option<CancellationToken>,
}

impl Listener {
    /// A listener handing frames to `ingest` and counting in `stats`; `shutdown` stops
    /// accepting and closes connections between frames.
    pub fn new(
        settings: ListenerSettings,
        ingest: Ingest,
        stats: Arc<ListenerStats>,
        tls: Option<crate::tls::TlsServer>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                tls,
                budget: super::budget::FrameBudget::new(
                    settings.max_frame_memory,
                    settings.max_frame_size,
                ),
                listener_name: opentelemetry::StringValue::from(settings.name.clone()),
                settings,
                ingest,
                stats,
                shutdown,
                dicom: None,
            }),
            accepting: None,
        }
    }

    /// Serve DICOM associations (C-ECHO, C-STORE) instead of MLLP: what an object holds in
    /// memory (up to `inline_object_size`; the rest is spooled) is covered by
    /// `max_frame_memory`.
    #[must_use]
    pub fn dicom(self, dicom: super::dicom::DicomSettings) -> Self {
        // `new` made the only handle on `shared`: nothing else holds it yet.
        let Shared {
            settings,
            ingest,
            stats,
            shutdown,
            listener_name,
            tls,
            ..
        } = match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared,
            Err(shared) => Shared {
                settings: shared.settings.clone(),
                ingest: shared.ingest.clone(),
                stats: Arc::clone(&shared.stats),
                shutdown: shared.shutdown.clone(),
                listener_name: shared.listener_name.clone(),
                tls: shared.tls.clone(),
                budget: Arc::clone(&shared.budget),
                dicom: None,
            },
        };
        Self {
            shared: Arc::new(Shared {
                budget: super::budget::FrameBudget::new(
                    settings.max_frame_memory,
                    // An object's head, and a spooled one's write stage and PDU.
                    dicom.inline_object_size.min(dicom.max_object_size)
                        + super::spooling::SPOOL_STAGE
                        + dicom.max_pdu_size as usize,
                ),
                settings,
                ingest,
                stats,
                shutdown,
                listener_name,
                tls,
                dicom: Some(dicom),
            }),
            accepting: self.accepting,
        }
    }

    /// Stop accepting (only) when `accepting` is cancelled: the connections stay open until
    /// their peers close them, or shutdown.
    #[must_use]
    pub fn accepting_until(mut self, accepting: CancellationToken) -> Self {
        self.accepting = Some(accepting);
        self
    }

    /// Accept connections on `listener` until shutdown. Connection tasks are spawned on
    /// `tracker` so the caller can wait for them to finish.
    pub async fn serve(self, listener: TcpListener, tracker: TaskTracker) {
        let shared = self.shared;
        let accepting = self.accepting.unwrap_or_else(|| shared.shutdown.clone());
        let permits = shared
            .settings
            .max_connections
            .map(|limit| Arc::new(Semaphore::new(limit)));
        // A flood of refused connections must not flood the log (and flush the admin API's
        // log ring): each kind of refusal is logged at most once a second, with the count of
        // those not logged since; the counters keep every one.
        let (mut denied_log, mut refused_log, mut failed_log, mut peer_log) = (
            Throttle::default(),
            Throttle::default(),
            Throttle::default(),
            Throttle::default(),
        );
        let per_peer: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
            Arc::default();
        // With mTLS and `tls_senders`, senders whose certificate an entry names get slots of
        // their own when MAX_CONNECTIONS are taken (see [`Reserve`]).
        let reserve = match (&shared.settings.max_connections, &shared.tls) {
            (Some(limit), Some(tls)) if tls.mutual() && shared.ingest.has_senders() => {
                Some(Reserve::new(*limit))
            }
            _ => None,
        };
        loop {
            let accepted = tokio::select! {
                () = shared.shutdown.cancelled() => break,
                () = accepting.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                // Show IPv4 peers of a dual-stack socket as 10.1.2.3, not [::ffff:10.1.2.3].
                Ok((stream, peer)) => (
                    stream,
                    SocketAddr::new(peer.ip().to_canonical(), peer.port()),
                ),
                Err(error) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning.
                    if let Some(not_logged) = failed_log.allow() {
                        warn!(error = %error, not_logged, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Some(allowed) = &shared.settings.allowed_peers
                && !allowed.iter().any(|range| range.contains(peer.ip()))
            {
                bump(&shared.stats.connections_denied, 1);
                if let Some(not_logged) = denied_log.allow() {
                    warn!(%peer, not_logged, "connection refused: the peer is not in ALLOWED_PEERS");
                }
                drop(stream);
                continue;
            }
            let admission = match &permits {
                None => Admission::Open(None),
                Some(permits) => match Arc::clone(permits).try_acquire_owned() {
                    Ok(permit) => Admission::Open(Some(permit)),
                    Err(_) => match reserve.as_ref().and_then(Reserve::probation) {
                        Some(probation) => probation,
                        None => {
                            bump(&shared.stats.connections_refused, 1);
                            if let Some(not_logged) = refused_log.allow() {
                                warn!(%peer, not_logged, "connection refused: MAX_CONNECTIONS reached");
                            }
                            drop(stream);
                            continue;
                        }
                    },
                },
            };
            // One address may hold at most MAX_CONNECTIONS_PER_PEER of the slots, so a
            // reconnecting peer cannot starve the others.
            let peer_slot = match shared.settings.max_connections_per_peer {
                None => None,
                Some(limit) => {
                    let mut counts = per_peer
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let count = counts.entry(peer.ip()).or_insert(0);
                    if *count >= limit {
                        drop(counts);
                        bump(&shared.stats.connections_refused, 1);
                        if let Some(not_logged) = peer_log.allow() {
                            warn!(%peer, not_logged, "connection refused: MAX_CONNECTIONS_PER_PEER reached for this address");
                        }
                        drop(stream);
                        continue;
                    }
                    *count += 1;
                    Some(PeerSlot {
                        counts: Arc::clone(&per_peer),
                        peer: peer.ip(),
                    })
                }
            };
            let on_probation = matches!(admission, Admission::Probation { .. });
            if !on_probation {
                bump(&shared.stats.connections_accepted, 1);
            }
            bump(&shared.stats.connections_active, 1);
            let shared = Arc::clone(&shared);
            tracker.spawn(async move {
                // The permit and the peer's slot live as long as the connection.
                let mut admission = admission;
                let _peer_slot = peer_slot;
                let _active = ActiveConnection(Arc::clone(&shared.stats));
                configure_socket(&stream, shared.settings.keep_alive_period, peer);
                match &shared.tls {
                    None => serve_connection(stream, peer, None, &shared).await,
                    Some(tls) => match accept_tls(tls, stream, on_probation).await {
                        Ok(stream) => {
                            let identity = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(<[_]>::first)
                                .and_then(crate::tls::PeerIdentity::from_certificate);
                            if let Admission::Probation { slots, permit } = admission {
                                // A reserved slot, for a known sender only.
                                let known = identity
                                    .as_ref()
                                    .and_then(|identity| shared.ingest.knows_sender(identity))
                                    .unwrap_or(false);
                                match (known, slots.try_acquire_owned()) {
                                    (true, Ok(slot)) => {
                                        drop(permit);
                                        admission = Admission::Open(Some(slot));
                                        bump(&shared.stats.connections_accepted, 1);
                                        info!(%peer, "MAX_CONNECTIONS reached; a known sender took a reserved slot");
                                    }
                                    _ => {
                                        bump(&shared.stats.connections_refused, 1);
                                        debug!(%peer, known, "connection refused: MAX_CONNECTIONS reached, and no reserved slot for this certificate");
                                        return;
                                    }
                                }
                            }
                            let _admission = admission;
                            serve_connection(stream, peer, identity, &shared).await;
                        }
                        Err(crate::tls::HandshakeError::Silent) => {
                            debug!(%peer, "connection closed before a TLS handshake began (a TCP probe)");
                        }
                        Err(crate::tls::HandshakeError::Failed(error)) => {
                            bump(&shared.stats.tls_handshake_failures, 1);
                            warn!(%peer, error = %error, "TLS handshake failed; connection closed before any HL7 was read");
                        }
                    },
                }
            });
        }
        debug!("listener stopped accepting");
    }
}

/// Serve one accepted (and handshaken) connection: MLLP frames, or a DICOM association.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    identity: Option<crate::tls::PeerIdentity>,
    shared: &Arc<Shared>,
) where
    S: super::association::Transport,
{
    match &shared.dicom {
        None => {
            Handler::new(stream, peer, identity, Arc::clone(shared))
                .run()
                .await;
        }
        Some(dicom) => {
            let context = super::association::Context {
                settings: dicom,
                listener: &shared.settings,
                ingest: &shared.ingest,
                stats: &shared.stats,
                budget: &shared.budget,
                shutdown: &shared.shutdown,
            };
            super::association::serve(stream, peer, identity, context).await;
        }
    }
}

/// Counts a connection as active until dropped (also when its task is cancelled).
struct ActiveConnection(Arc<ListenerStats>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why a connection ended.
enum Close {
    PeerClosed,
    Shutdown,
    IdleTimeout,
    FrameTimeout,
    Oversize(usize),
    Unreadable,
    NotStored,
    WriteFailed(String),
    ReadFailed(String),
    PeerClosedMidFrame(usize),
}

/// One connection: its stream, who is at the other end, and where its frame loop stands.
struct Handler<S> {
    stream: S,
    peer: SocketAddr,
    /// The client certificate's identity (mTLS).
    identity: Option<crate::tls::PeerIdentity>,
    shared: Arc<Shared>,
    codec: MllpCodec,
    buffer: BytesMut,
    /// When the frame being received began.
    frame_started: Option<Instant>,
    /// Last sign of a live sender: a frame answered, or frame bytes arriving. Bytes outside
    /// frames do not count, so a peer sending junk cannot hold its connection forever.
    last_activity: Instant,
    /// What this connection holds of `MAX_FRAME_MEMORY`.
    share: super::budget::Share,
}

impl<S> Handler<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(
        stream: S,
        peer: SocketAddr,
        identity: Option<crate::tls::PeerIdentity>,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            stream,
            peer,
            identity,
            codec: MllpCodec::new(shared.settings.max_frame_size),
            share: super::budget::Share::new(Arc::clone(&shared.budget)),
            shared,
            buffer: BytesMut::with_capacity(8 * 1024),
            frame_started: None,
            last_activity: Instant::now(),
        }
    }

    /// Serve frames until the connection ends, then say why.
    async fn run(mut self) {
        debug!(peer = %self.peer, "connection opened");
        let close = self.serve_frames().await;
        self.report(close);
    }

    fn report(&self, close: Close) {
        let peer = self.peer;
        let stats = &self.shared.stats;
        match close {
            Close::PeerClosed => debug!(%peer, "connection closed by peer"),
            Close::Shutdown => debug!(%peer, "connection closed for shutdown"),
            Close::IdleTimeout => {
                bump(&stats.idle_timeouts, 1);
                info!(%peer, "connection closed: IDLE_TIMEOUT reached with no data");
            }
            Close::FrameTimeout => {
                bump(&stats.frame_timeouts, 1);
                warn!(%peer, "connection closed: frame not completed within FRAME_TIMEOUT");
            }
            Close::Oversize(limit) => {
                bump(&stats.oversize_frames, 1);
                warn!(%peer, limit, "connection closed: frame exceeds MAX_FRAME_SIZE");
            }
            Close::Unreadable => {
                bump(&stats.unreadable_frames, 1);
                warn!(%peer, "connection closed: frame does not start with a readable MSH segment; no ACK sent");
            }
            Close::NotStored => {
                warn!(%peer, "connection closed: the message could not be stored and MSH-15/16 asked for no error ACK");
            }
            Close::WriteFailed(error) => {
                bump(&stats.write_failures, 1);
                warn!(%peer, error = %error, "connection closed: ACK could not be written");
            }
            Close::ReadFailed(error) => {
                warn!(%peer, error = %error, "connection closed: read failed")
            }
            Close::PeerClosedMidFrame(received) => {
                info!(%peer, received, "connection closed by peer in the middle of a frame; no ACK sent");
            }
        }
    }

    /// Answer frames in order until the connection ends.
    async fn serve_frames(&mut self) -> Close {
        loop {
            if let Some(close) = self.answer_buffered().await {
                return close;
            }
            if let Some(close) = self.read_more().await {
                return close;
            }
        }
    }

    /// Answer every complete frame already buffered, in order.
    async fn answer_buffered(&mut self) -> Option<Close> {
        let peer = self.peer;
        loop {
            let decoded = self.codec.decode(&mut self.buffer);
            report_discards(&mut self.codec, &self.shared.stats, peer);
            let frame_bytes = match decoded {
                Ok(Some(frame_bytes)) => frame_bytes,
                Ok(None) => {
                    if self.share.holds() && !self.codec.in_frame() {
                        // Between frames: the buffer's allocation (still as large as the
                        // frames it held, whatever its remaining capacity says) goes back,
                        // and the reservation with it. What is left is a few bytes after
                        // an end block.
                        let rest = self.buffer.split();
                        self.buffer = BytesMut::with_capacity(8 * 1024);
                        self.buffer.extend_from_slice(&rest);
                        self.share.release();
                    }
                    return None;
                }
                Err(FrameError::TooLarge { limit }) => return Some(Close::Oversize(limit)),
                Err(error) => return Some(Close::ReadFailed(error.to_string())),
            };
            self.frame_started = None;
            if let Some(close) = self.answer(frame_bytes).await {
                return Some(close);
            }
        }
    }

    /// Hand one frame to ingest and send what it decided.
    async fn answer(&mut self, frame_bytes: bytes::Bytes) -> Option<Close> {
        let peer = self.peer;
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        bump(&stats.frames_received, 1);
        let size = frame_bytes.len();
        let started = Instant::now();
        let outcome = shared
            .ingest
            .handle(frame_bytes, peer, self.identity.as_ref())
            .await;
        if let Reply::Ack { code, .. } | Reply::Suppressed { code } = &outcome.reply {
            crate::telemetry::metrics::record(
                &crate::telemetry::metrics::instruments().process,
                started.elapsed(),
                &[
                    KeyValue::new(LISTENER, shared.listener_name.clone()),
                    KeyValue::new(ACK_CODE, code.as_str()),
                ],
            );
        }
        let control_id = outcome.control_id.as_deref().unwrap_or("");
        match outcome.reply {
            Reply::Ack { bytes, code } => {
                debug!(%peer, control_id, size, code = %code, reason = outcome.reason.map_or("accepted", Reason::as_str), "frame answered");
                if let Err(error) =
                    write_ack(&mut self.stream, &bytes, shared.settings.write_timeout).await
                {
                    return Some(Close::WriteFailed(error));
                }
                bump(&stats.acks[ack_index(code)], 1);
                // Time spent deciding and writing is not the sender's idle time.
                self.last_activity = Instant::now();
            }
            Reply::Suppressed { code } => {
                debug!(%peer, control_id, size, code = %code, "no ACK sent: MSH-15 asks for none in this case");
                bump(&stats.suppressed_acks, 1);
            }
            Reply::Ignore if outcome.reason == Some(Reason::AckReceived) => {
                info!(%peer, control_id, "ACK received from a sender and ignored; ACKs are never acknowledged");
                bump(&stats.acks_received, 1);
            }
            Reply::Ignore => {
                debug!(%peer, "empty frame ignored");
                bump(&stats.empty_frames, 1);
            }
            Reply::Close if outcome.reason == Some(Reason::StoreFailed) => {
                return Some(Close::NotStored);
            }
            Reply::Close => return Some(Close::Unreadable),
        }
        None
    }

    /// Wait for more bytes within the idle and frame deadlines; `Some` when the connection
    /// ends instead.
    async fn read_more(&mut self) -> Option<Close> {
        let settings = &self.shared.settings;
        if self.codec.in_frame() {
            self.frame_started.get_or_insert_with(Instant::now);
            self.last_activity = Instant::now();
        } else if self.shared.shutdown.is_cancelled() {
            return Some(Close::Shutdown);
        }
        let idle_deadline = settings.idle_timeout.map(|idle| self.last_activity + idle);
        let frame_deadline = self
            .frame_started
            .zip(settings.frame_timeout)
            .map(|(started, limit)| started + limit);
        let deadline = match (idle_deadline, frame_deadline) {
            (Some(idle), Some(frame)) => Some(idle.min(frame)),
            (idle, frame) => idle.or(frame),
        };
        let expired = || {
            let frame_expired = frame_deadline.is_some_and(|at| Instant::now() >= at);
            if frame_expired {
                Close::FrameTimeout
            } else {
                Close::IdleTimeout
            }
        };
        // Checked before reading too: a peer whose bytes are always ready (junk) must still
        // meet its deadlines.
        if deadline.is_some_and(|at| Instant::now() >= at) {
            return Some(expired());
        }
        self.buffer.reserve(8 * 1024);
        // The buffer may have grown: its share of MAX_FRAME_MEMORY first, waiting (and
        // reading nothing) while others hold the budget.
        let capacity = self.buffer.capacity();
        let stats = &self.shared.stats;
        tokio::select! {
            biased;
            () = self.shared.shutdown.cancelled(), if !self.codec.in_frame() => return Some(Close::Shutdown),
            () = self.share.cover(capacity, || bump(&stats.memory_waits, 1)) => {}
            () = sleep_until_option(deadline) => return Some(expired()),
        }
        let between_frames = !self.codec.in_frame();
        let read = tokio::select! {
            biased;
            () = self.shared.shutdown.cancelled(), if between_frames => return Some(Close::Shutdown),
            read = self.stream.read_buf(&mut self.buffer) => read,
            () = sleep_until_option(deadline) => return Some(expired()),
        };
        let in_frame = self.codec.in_frame();
        match read {
            Ok(0) if in_frame => Some(Close::PeerClosedMidFrame(self.buffer.len())),
            Ok(0) => Some(Close::PeerClosed),
            Ok(_) => None,
            // A TLS peer that closes without close_notify (most MLLP senders do): between
            // frames that is an ordinary close, in a frame it is a cut-off frame.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Some(if in_frame {
                Close::PeerClosedMidFrame(self.buffer.len())
            } else {
                Close::PeerClosed
            }),
            Err(error) => Some(Close::ReadFailed(error.to_string())),
        }
    }
}

fn configure_socket(stream: &TcpStream, keep_alive: Option<Duration>, peer: SocketAddr) {
    let socket = socket2::SockRef::from(stream);
    if let Err(error) = socket.set_tcp_nodelay(true) {
        debug!(%peer, error = %error, "could not set TCP_NODELAY");
    }
    if let Some(period) = keep_alive {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(period)
            .with_interval(period);
        if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
            debug!(%peer, error = %error, "could not enable TCP keep-alive");
        }
    }
}

fn report_discards(codec: &mut MllpCodec, stats: &ListenerStats, peer: SocketAddr) {
    let discarded = codec.take_discarded();
    if discarded > 0 {
        bump(&stats.bytes_discarded, discarded);
        info!(%peer, bytes = discarded, "discarded bytes outside MLLP frames");
    }
    let missing = codec.take_missing_trailers();
    if missing > 0 {
        bump(&stats.missing_trailers, missing);
        debug!(%peer, count = missing, "end block not followed by carriage return");
    }
}

async fn sleep_until_option(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn write_ack<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ack: &[u8],
    write_timeout: Option<Duration>,
) -> Result<(), String> {
    let framed = frame(ack);
    let write = async {
        stream.write_all(&framed).await?;
        stream.flush().await
    };
    match write_timeout {
        Some(limit) => match tokio::time::timeout(limit, write).await {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(_) => Err("WRITE_TIMEOUT reached".to_owned()),
        },
        None => write.await.map_err(|error| error.to_string()),
    }
}
