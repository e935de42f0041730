//! MLLP: the codec (framing), the listener (limits, timeouts) and a client.
//!
//! Nothing here knows HL7 beyond handing frames to [`crate::ingest`] and writing back what it
//! decides.

mod admission;
pub mod budget;
mod client;
mod codec;
mod listener;

pub use client::{ClientError, MllpClient};
pub use codec::{END_BLOCK, FrameError, MllpCodec, START_BLOCK, TRAILER, frame};
pub use listener::{Listener, ListenerSettings, ListenerStats, StatsSnapshot, bind};
