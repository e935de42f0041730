//! How a connection gets into an MLLP listener, beyond `MAX_CONNECTIONS` itself: the slots
//! reserved for known certificates and the handshakes on probation for them, the per-peer
//! count of `MAX_CONNECTIONS_PER_PEER`, and the throttle that turns a flood of refusals into a
//! log line a second. The accept loop in `listener.rs` decides with these; the connection's
//! frame loop never sees them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// How a connection got in.
pub(super) enum Admission {
    /// A slot of MAX_CONNECTIONS (or none: no limit), held (never read) while connected.
    Open(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>),
    /// MAX_CONNECTIONS were taken: handshaking for a reserved slot (see [`Reserve`]).
    Probation {
        /// The reserved slots, one of which a known certificate takes.
        slots: Arc<Semaphore>,
        /// This handshake's place among those on probation.
        permit: tokio::sync::OwnedSemaphorePermit,
    },
}

/// Slots kept for senders whose client certificate `tls_senders` names, taken only when
/// MAX_CONNECTIONS are: an eighth of MAX_CONNECTIONS (at least one), on top of it. A
/// connection that finds the listener full is handshaken (at most four times as many at once,
/// each within [`PROBATION_HANDSHAKE`]); a known certificate gets a reserved slot, anything
/// else is closed and counted as refused. So a flood of connections from elsewhere (or from
/// senders without a known certificate) cannot keep known senders out.
pub(super) struct Reserve {
    slots: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
}

/// Longest handshake of a connection on probation for a reserved slot.
const PROBATION_HANDSHAKE: Duration = Duration::from_secs(2);

impl Reserve {
    pub(super) fn new(max_connections: usize) -> Self {
        let slots = (max_connections / 8).max(1);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            handshakes: Arc::new(Semaphore::new(slots.saturating_mul(4))),
        }
    }

    /// A handshake on probation, when one may start.
    pub(super) fn probation(&self) -> Option<Admission> {
        let permit = Arc::clone(&self.handshakes).try_acquire_owned().ok()?;
        (self.slots.available_permits() > 0).then(|| Admission::Probation {
            slots: Arc::clone(&self.slots),
            permit,
        })
    }
}

/// The TLS handshake, shorter on probation.
pub(super) async fn accept_tls(
    tls: &crate::tls::TlsServer,
    stream: tokio::net::TcpStream,
    on_probation: bool,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, crate::tls::HandshakeError> {
    if !on_probation {
        return tls.accept(stream).await;
    }
    tokio::time::timeout(PROBATION_HANDSHAKE, tls.accept(stream))
        .await
        .unwrap_or_else(|_| {
            Err(crate::tls::HandshakeError::Failed(format!(
                "no handshake within {PROBATION_HANDSHAKE:?} (a connection waiting for a reserved slot)"
            )))
        })
}

/// At most one log line a second for one kind of event; counts the ones it holds back.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some(held back since the last line)` when a line may be logged now.
    pub(super) fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// One connection of a peer counted against `MAX_CONNECTIONS_PER_PEER`; given back on drop.
pub(super) struct PeerSlot {
    /// Connections per address, shared by the listener's slots.
    pub(super) counts: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    /// The address this slot counts for.
    pub(super) peer: std::net::IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}
