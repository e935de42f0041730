//! Outputs: one file each. An output delivers one message and says whether a failure is
//! worth retrying; ordering, retry, backoff and the dead-letter queue belong to the worker
//! ([`crate::delivery`]). Outputs know nothing of listeners or the outbox.

pub mod file;
pub mod mllp;

use crate::config::connectors::OutputSpec;
use crate::delivery::{Deliver, DeliveryError, Envelope};

/// Every output kind (static dispatch: the worker matches on it).
#[derive(Debug)]
pub enum Output {
    /// `type: mllp`.
    Mllp(mllp::MllpOutput),
    /// `type: file`.
    File(file::FileOutput),
    /// An output kind this build cannot run yet: every message waits in its queue.
    Unavailable(&'static str),
}

impl Output {
    /// Build the output for a connector's settings.
    pub fn new(spec: &OutputSpec) -> Self {
        match spec {
            OutputSpec::Mllp(spec) => Self::Mllp(mllp::MllpOutput::new(spec.clone())),
            OutputSpec::File(spec) => Self::File(file::FileOutput::new(spec.clone())),
            OutputSpec::Http(_) => Self::Unavailable("http"),
            OutputSpec::Postgres(_) => Self::Unavailable("postgres"),
        }
    }
}

impl Deliver for Output {
    fn kind(&self) -> &'static str {
        match self {
            Self::Mllp(_) => "mllp",
            Self::File(_) => "file",
            Self::Unavailable(kind) => kind,
        }
    }

    async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        match self {
            Self::Mllp(output) => output.deliver(envelope).await,
            Self::File(output) => output.deliver(envelope).await,
            Self::Unavailable(kind) => Err(DeliveryError::transient(format!(
                "the {kind} output is not available in this build yet; the message waits in its queue"
            ))),
        }
    }
}
