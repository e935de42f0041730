//! Outputs: one file each. An output delivers one message and says whether a failure is
//! worth retrying; ordering, retry, backoff and the dead-letter queue belong to the worker
//! ([`crate::delivery`]). Outputs know nothing of listeners or the outbox.

pub mod file;
pub mod http;
pub mod mllp;
pub mod postgres;

use crate::delivery::{Deliver, DeliveryError, Envelope};
use file::FileSpec;
use http::HttpSpec;
use mllp::MllpSpec;
use postgres::PostgresSpec;

/// One output's settings.
#[derive(Clone, Debug)]
pub enum OutputSpec {
    /// Forward over MLLP.
    Mllp(MllpSpec),
    /// Send to an HTTP endpoint.
    Http(HttpSpec),
    /// Write files.
    File(FileSpec),
    /// Insert rows into PostgreSQL.
    Postgres(PostgresSpec),
}

/// Every output kind (static dispatch: the worker matches on it).
#[derive(Debug)]
pub enum Output {
    /// `type: mllp`.
    Mllp(mllp::MllpOutput),
    /// `type: file`.
    File(file::FileOutput),
    /// `type: http`.
    Http(http::HttpOutput),
    /// `type: postgres`.
    Postgres(postgres::PostgresOutput),
}

impl Output {
    /// Build the output for a connector's settings.
    pub fn new(spec: &OutputSpec) -> Self {
        match spec {
            OutputSpec::Mllp(spec) => Self::Mllp(mllp::MllpOutput::new(spec.clone())),
            OutputSpec::File(spec) => Self::File(file::FileOutput::new(spec.clone())),
            OutputSpec::Http(spec) => Self::Http(http::HttpOutput::new(spec.clone())),
            OutputSpec::Postgres(spec) => {
                Self::Postgres(postgres::PostgresOutput::new(spec.clone()))
            }
        }
    }
}

impl Deliver for Output {
    fn kind(&self) -> &'static str {
        match self {
            Self::Mllp(_) => "mllp",
            Self::File(_) => "file",
            Self::Http(_) => "http",
            Self::Postgres(_) => "postgres",
        }
    }

    async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        match self {
            Self::Mllp(output) => output.deliver(envelope).await,
            Self::File(output) => output.deliver(envelope).await,
            Self::Http(output) => output.deliver(envelope).await,
            Self::Postgres(output) => output.deliver(envelope).await,
        }
    }
}
