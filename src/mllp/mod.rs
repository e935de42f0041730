//! MLLP: the codec (framing), the listener (limits, timeouts) and a client; the same
//! listener serves DICOM associations for `type: dicom` listeners ([`DicomSettings`]).
//!
//! Nothing here knows HL7 beyond handing frames to [`crate::ingest`] and writing back what it
//! decides.

mod admission;
mod association;
pub mod budget;
mod client;
mod codec;
mod dicom;
mod listener;
mod spooling;
mod stats;

pub use client::{ClientError, MllpClient, connect_stream, is_quiet, quickack};
pub use codec::{END_BLOCK, FrameError, MllpCodec, START_BLOCK, TRAILER, frame};
pub use dicom::{DicomSettings, STORAGE_CLASS_ROOT, read_pdu};
pub use listener::{Listener, ListenerSettings, bind};
pub use stats::{ListenerStats, StatsSnapshot};
