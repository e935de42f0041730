//! What each listener counts (MLLP, HTTP and DICOM listeners alike): connections, frames
//! or objects, answers by code, timeouts, refusals. Read with [`ListenerStats::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

use crate::hl7::AckCode;

/// Counters of what the listener saw. Read them with [`ListenerStats::snapshot`].
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub(super) tls_handshake_failures: AtomicU64,
    pub(super) connections_denied: AtomicU64,
    pub(super) connections_accepted: AtomicU64,
    pub(super) connections_active: AtomicU64,
    pub(super) connections_refused: AtomicU64,
    pub(super) frames_received: AtomicU64,
    pub(super) bytes_discarded: AtomicU64,
    pub(super) missing_trailers: AtomicU64,
    pub(super) empty_frames: AtomicU64,
    pub(super) acks_received: AtomicU64,
    pub(super) unreadable_frames: AtomicU64,
    pub(super) oversize_frames: AtomicU64,
    pub(super) idle_timeouts: AtomicU64,
    pub(super) frame_timeouts: AtomicU64,
    pub(super) write_failures: AtomicU64,
    pub(super) acks: [AtomicU64; 6],
    pub(super) suppressed_acks: AtomicU64,
    pub(super) memory_waits: AtomicU64,
}

/// A copy of [`ListenerStats`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections served.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_active: u64,
    /// TLS handshakes that failed or timed out (nothing was read from those connections).
    pub tls_handshake_failures: u64,
    /// Connections closed at once because the peer is not in `ALLOWED_PEERS`.
    pub connections_denied: u64,
    /// Connections closed at once because `MAX_CONNECTIONS` was reached.
    pub connections_refused: u64,
    /// Complete frames read.
    pub frames_received: u64,
    /// Bytes outside frames, discarded.
    pub bytes_discarded: u64,
    /// End blocks not followed by `0x0D`.
    pub missing_trailers: u64,
    /// Frames with no content, ignored.
    pub empty_frames: u64,
    /// Frames that were themselves ACKs, ignored (ACKs are never acknowledged).
    pub acks_received: u64,
    /// Frames without a readable header; each closed its connection.
    pub unreadable_frames: u64,
    /// Frames over `MAX_FRAME_SIZE`; each closed its connection.
    pub oversize_frames: u64,
    /// Times a connection waited for `MAX_FRAME_MEMORY` before reading or deciding a frame.
    pub memory_waits: u64,
    /// Connections closed by `IDLE_TIMEOUT`.
    pub idle_timeouts: u64,
    /// Connections closed by `FRAME_TIMEOUT`.
    pub frame_timeouts: u64,
    /// ACK writes that failed or timed out.
    pub write_failures: u64,
    /// ACKs sent, by code: AA, AE, AR, CA, CE, CR.
    pub acks: [u64; 6],
    /// ACKs decided but not sent because MSH-15 asked for none.
    pub suppressed_acks: u64,
}

impl StatsSnapshot {
    /// ACKs sent with `code`.
    pub fn acks_sent(&self, code: AckCode) -> u64 {
        self.acks[ack_index(code)]
    }
}

pub(super) fn ack_index(code: AckCode) -> usize {
    match code {
        AckCode::AA => 0,
        AckCode::AE => 1,
        AckCode::AR => 2,
        AckCode::CA => 3,
        AckCode::CE => 4,
        AckCode::CR => 5,
    }
}

pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl ListenerStats {
    /// A message received by another kind of listener (HTTP): one frame.
    pub fn count_request(&self) {
        bump(&self.frames_received, 1);
    }

    /// A connection another kind of listener (HTTP) accepted: open until
    /// [`ListenerStats::count_closed`].
    pub fn count_opened(&self) {
        bump(&self.connections_accepted, 1);
        bump(&self.connections_active, 1);
    }

    /// A connection counted by [`ListenerStats::count_opened`] ended.
    pub fn count_closed(&self) {
        self.connections_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection another kind of listener (HTTP) closed at once: its limit was reached.
    pub fn count_refused(&self) {
        bump(&self.connections_refused, 1);
    }

    /// The answer another kind of listener (HTTP) gave a frame: its ACK code, sent or not.
    pub fn count_answer(&self, code: AckCode, sent: bool) {
        if sent {
            bump(&self.acks[ack_index(code)], 1);
        } else {
            bump(&self.suppressed_acks, 1);
        }
    }

    /// A frame another kind of listener (HTTP) could not read a header from.
    pub fn count_unreadable(&self) {
        bump(&self.unreadable_frames, 1);
    }

    /// A TLS handshake another kind of listener (HTTP) saw fail.
    pub fn count_handshake_failure(&self) {
        bump(&self.tls_handshake_failures, 1);
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_accepted: read(&self.connections_accepted),
            connections_active: read(&self.connections_active),
            tls_handshake_failures: read(&self.tls_handshake_failures),
            connections_denied: read(&self.connections_denied),
            connections_refused: read(&self.connections_refused),
            frames_received: read(&self.frames_received),
            bytes_discarded: read(&self.bytes_discarded),
            missing_trailers: read(&self.missing_trailers),
            empty_frames: read(&self.empty_frames),
            acks_received: read(&self.acks_received),
            unreadable_frames: read(&self.unreadable_frames),
            oversize_frames: read(&self.oversize_frames),
            memory_waits: read(&self.memory_waits),
            idle_timeouts: read(&self.idle_timeouts),
            frame_timeouts: read(&self.frame_timeouts),
            write_failures: read(&self.write_failures),
            acks: std::array::from_fn(|index| read(&self.acks[index])),
            suppressed_acks: read(&self.suppressed_acks),
        }
    }
}
