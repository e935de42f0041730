//! Outputs: one file each. An output delivers one message and says whether a failure is
//! worth retrying; ordering, retry, backoff and the dead-letter queue belong to the worker
//! ([`crate::delivery`]). Outputs know nothing of listeners or the outbox.

pub mod dicom;
pub mod egress;
pub mod file;
pub mod format;
pub mod http;
pub mod mllp;
pub mod nats;
pub mod postgres;
pub mod settings;
pub mod stowrs;

use crate::delivery::{Deliver, DeliveryError, Envelope};
use file::FileSpec;
use http::HttpSpec;
use mllp::MllpSpec;
use postgres::PostgresSpec;

/// Kinds of connector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum ConnectorKind {
    /// Forward over MLLP.
    Mllp,
    /// POST to an HTTP endpoint.
    Http,
    /// Write files into a directory.
    File,
    /// Insert into a PostgreSQL table.
    Postgres,
    /// Publish to NATS JetStream.
    Nats,
    /// Send DICOM objects by C-STORE.
    Dicom,
    /// Send DICOM objects by DICOMweb STOW-RS.
    Stowrs,
}

impl ConnectorKind {
    /// Every kind, in the order the documentation lists them.
    pub const ALL: [Self; 7] = [
        Self::Mllp,
        Self::Http,
        Self::File,
        Self::Postgres,
        Self::Nats,
        Self::Dicom,
        Self::Stowrs,
    ];

    /// The name used in the YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Mllp => "mllp",
            Self::Http => "http",
            Self::File => "file",
            Self::Postgres => "postgres",
            Self::Nats => "nats",
            Self::Dicom => "dicom",
            Self::Stowrs => "stowrs",
        }
    }
}

/// The keys a connector of `kind` takes for its output (besides the keys every connector
/// has and its delivery settings).
pub fn keys(kind: ConnectorKind) -> &'static [&'static str] {
    match kind {
        ConnectorKind::Mllp => &mllp::KEYS,
        ConnectorKind::Http => &http::KEYS,
        ConnectorKind::File => &file::KEYS,
        ConnectorKind::Postgres => &postgres::KEYS,
        ConnectorKind::Nats => &nats::KEYS,
        ConnectorKind::Dicom => &dicom::KEYS,
        ConnectorKind::Stowrs => &stowrs::KEYS,
    }
}

/// Read a connector's output keys with `reader`; `None` when a problem was recorded.
pub fn read_spec(kind: ConnectorKind, reader: &mut settings::Reader<'_, '_>) -> Option<OutputSpec> {
    match kind {
        ConnectorKind::Mllp => MllpSpec::read(reader).map(OutputSpec::Mllp),
        ConnectorKind::Http => HttpSpec::read(reader).map(OutputSpec::Http),
        ConnectorKind::File => FileSpec::read(reader).map(OutputSpec::File),
        ConnectorKind::Postgres => PostgresSpec::read(reader).map(OutputSpec::Postgres),
        ConnectorKind::Nats => nats::NatsSpec::read(reader).map(OutputSpec::Nats),
        ConnectorKind::Dicom => dicom::DicomSpec::read(reader).map(OutputSpec::Dicom),
        ConnectorKind::Stowrs => stowrs::read(reader).map(OutputSpec::Http),
    }
}

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
    /// Publish to NATS JetStream.
    Nats(nats::NatsSpec),
    /// Send DICOM objects by C-STORE.
    Dicom(dicom::DicomSpec),
}

impl OutputSpec {
    /// Every `host:port` the output connects to (none for files); `Err` when one cannot
    /// be read (so `EGRESS_ALLOW` cannot vouch for it).
    pub fn destinations(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, u16)>, String> {
        let unreadable =
            |what: &str| format!("EGRESS_ALLOW cannot read the destination of `{what}`");
        match self {
            Self::Mllp(spec) => spec
                .destination()
                .map(|destination| vec![destination])
                .ok_or_else(|| unreadable("host")),
            Self::Http(spec) => egress::url_destination(&spec.url)
                .map(|destination| vec![destination])
                .ok_or_else(|| unreadable("url")),
            Self::File(_) => Ok(Vec::new()),
            Self::Postgres(spec) => postgres::postgres_config(&spec.dsn, lookup)
                .map(|config| postgres::destinations(&config))
                .map_err(|_| unreadable("dsn")),
            Self::Nats(spec) => spec.destinations().ok_or_else(|| unreadable("url")),
            Self::Dicom(spec) => spec
                .destination()
                .map(|destination| vec![destination])
                .ok_or_else(|| unreadable("host")),
        }
    }

    /// Connect only where `allow` permits (`EGRESS_ALLOW`).
    pub fn restrict(&mut self, allow: &std::sync::Arc<egress::EgressAllow>) {
        let allow = Some(std::sync::Arc::clone(allow));
        match self {
            Self::Mllp(spec) => spec.egress = allow,
            Self::Http(spec) => spec.egress = allow,
            Self::Postgres(spec) => spec.egress = allow,
            Self::Nats(spec) => spec.egress = allow,
            Self::Dicom(spec) => spec.egress = allow,
            Self::File(_) => {}
        }
    }

    /// Whether the output sends HL7 v2 (MLLP, HTTP, PostgreSQL, a file with an HL7 format):
    /// a DICOM object it takes is delivered as an ORU^R01 (a Structured Report) or
    /// dead-lettered at intake. DICOM, STOW-RS, NATS and `format: dicom` files carry objects.
    pub fn sends_hl7(&self) -> bool {
        match self {
            Self::Mllp(_) | Self::Postgres(_) => true,
            Self::Http(spec) => !spec.stow,
            Self::File(spec) => spec.format != format::Format::Dicom,
            Self::Nats(_) | Self::Dicom(_) => false,
        }
    }

    /// What the output sends of a connector's copy.
    pub fn format(&self) -> format::Format {
        match self {
            Self::Mllp(_) | Self::Dicom(_) => format::Format::Hl7,
            Self::Http(spec) => spec.format,
            Self::File(spec) => spec.format,
            Self::Postgres(spec) => spec.format,
            Self::Nats(spec) => spec.format,
        }
    }
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
    /// `type: nats`.
    Nats(nats::NatsOutput),
    /// `type: dicom`.
    Dicom(dicom::DicomOutput),
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
            OutputSpec::Nats(spec) => Self::Nats(nats::NatsOutput::new(spec.clone())),
            OutputSpec::Dicom(spec) => Self::Dicom(dicom::DicomOutput::new(spec.clone())),
        }
    }
}

impl Output {
    /// An HL7 output (MLLP, HTTP, PostgreSQL) cannot deliver a DICOM object: a permanent
    /// failure naming the connector's type (the entry goes to its dead-letter queue).
    fn refuse_object(&self, envelope: &Envelope) -> Option<DeliveryError> {
        let kind = match self {
            Self::Mllp(_) => "mllp",
            Self::Http(output) if !output.is_stow() => "http",
            Self::Postgres(_) => "postgres",
            Self::Http(_) | Self::File(_) | Self::Nats(_) | Self::Dicom(_) => return None,
        };
        crate::dicom::is_dicom(&envelope.body).then(|| {
            DeliveryError::permanent(format!(
                "a DICOM object cannot be delivered by this connector (type {kind} sends HL7); leave objects out with a filter (`dicom.sop_instance_uid == \"\"`)"
            ))
        })
    }
}

impl Deliver for Output {
    fn kind(&self) -> &'static str {
        match self {
            Self::Mllp(_) => "mllp",
            Self::File(_) => "file",
            Self::Http(output) if output.is_stow() => "stowrs",
            Self::Http(_) => "http",
            Self::Postgres(_) => "postgres",
            Self::Nats(_) => "nats",
            Self::Dicom(_) => "dicom",
        }
    }

    async fn deliver(&mut self, envelope: &Envelope) -> Result<(), DeliveryError> {
        if let Some(refusal) = self.refuse_object(envelope) {
            return Err(refusal);
        }
        match self {
            Self::Mllp(output) => output.deliver(envelope).await,
            Self::File(output) => output.deliver(envelope).await,
            Self::Http(output) => output.deliver(envelope).await,
            Self::Postgres(output) => output.deliver(envelope).await,
            Self::Nats(output) => output.deliver(envelope).await,
            Self::Dicom(output) => output.deliver(envelope).await,
        }
    }

    fn batch_limit(&self) -> usize {
        match self {
            Self::File(_) => file::BATCH,
            Self::Postgres(_) => postgres::BATCH,
            Self::Nats(_) => nats::BATCH,
            // One at a time, each waiting for its answer.
            Self::Mllp(_) | Self::Http(_) | Self::Dicom(_) => 1,
        }
    }

    async fn deliver_batch(&mut self, envelopes: &[Envelope]) -> Vec<Result<(), DeliveryError>> {
        if envelopes
            .iter()
            .any(|envelope| self.refuse_object(envelope).is_some())
        {
            // Rare (a filter let objects through): each on its own, so the objects fail
            // and the messages beside them are delivered.
            return crate::delivery::one_at_a_time(self, envelopes).await;
        }
        match self {
            Self::File(output) => output.deliver_batch(envelopes).await,
            Self::Postgres(output) => output.deliver_batch(envelopes).await,
            Self::Nats(output) => output.deliver_batch(envelopes).await,
            Self::Mllp(_) | Self::Http(_) | Self::Dicom(_) => {
                crate::delivery::one_at_a_time(self, envelopes).await
            }
        }
    }
}
