//! Every metric mfoundry emits, in one place, and the readers: the OTLP exporter and the
//! Prometheus pull reader (`METRICS_ADDR`, [`super::prometheus`]), on one meter provider.
//!
//! The exporter's configuration is the standard `OTEL_*` environment only, read by the
//! OpenTelemetry SDK:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) turns the exporter
//! on; `OTEL_EXPORTER_OTLP_PROTOCOL` chooses `grpc` or `http/protobuf` (default);
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` work as documented by OpenTelemetry. Without an endpoint there
//! is no exporter, no error and (nearly) no cost: instruments record into a no-op meter
//! (unless `METRICS_ADDR` asks for the pull reader: the provider is built when either reads).
//!
//! Counters that already exist for the admin API (listener, worker, outbox counters) are
//! exported as observable instruments read at each export ([`crate::gateway::observe`]), so
//! the hot path pays nothing extra for them. Histograms are recorded where the time is measured. Attributes are listener and
//! connector names, ACK codes, causes and outcomes: never patient data or control ids.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use super::prometheus::PullReader;

/// Frames with a message received, per listener (semantic convention).
pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// Time from a complete frame to its ACK being decided (validation, routing, the durable
/// commit), per listener and ACK code (semantic convention).
pub const PROCESS_DURATION: &str = "messaging.process.duration";
/// One delivery attempt, per connector and outcome (semantic convention).
pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// Messages delivered, per connector (semantic convention).
pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// One HTTP output request, per connector and status code (semantic convention).
pub const HTTP_CLIENT_DURATION: &str = "http.client.request.duration";
/// One PostgreSQL insert, per connector and outcome (semantic convention).
pub const DB_CLIENT_DURATION: &str = "db.client.operation.duration";
/// ACKs written, per listener and code.
pub const ACKS_SENT: &str = "mfoundry.acks.sent";
/// Frames refused before ingest, per listener and cause.
pub const FRAMES_REJECTED: &str = "mfoundry.frames.rejected";
/// Open MLLP connections, per listener.
pub const CONNECTIONS_ACTIVE: &str = "mfoundry.connections.active";
/// Entries in a connector's queue.
pub const QUEUE_DEPTH: &str = "mfoundry.queue.depth";
/// Age of the oldest entry in a connector's queue (0 when empty): the key alert.
pub const QUEUE_OLDEST_AGE: &str = "mfoundry.queue.oldest_age";
/// Entries in a connector's dead-letter queue.
pub const DLQ_SIZE: &str = "mfoundry.dlq.size";
/// Failed delivery attempts, per connector and outcome (`retry`, `dead_letter`).
pub const DELIVERY_FAILURES: &str = "mfoundry.delivery.failures";
/// Size of the data file.
pub const STORE_SIZE: &str = "mfoundry.store.size";
/// Outbox commits and failed commits (`outcome`).
pub const STORE_COMMITS: &str = "mfoundry.store.commits";
/// Stored records found damaged (failing their checksum) by a worker before delivery.
pub const STORE_DAMAGED: &str = "mfoundry.store.damaged";
/// Gauge: damaged records the last background verification found.
pub const STORE_VERIFY_DAMAGED: &str = "mfoundry.store.verify.damaged";
/// Times a bound was reached, per listener and cap (`max_connections`, `max_frame_size`).
pub const CAP_HITS: &str = "mfoundry.cap.hits";
/// Times intake waited for room in the outbox writer's bounded queue.
pub const OUTBOX_CHANNEL_FULL: &str = "mfoundry.outbox.channel_full";
/// Gauge: days until the MLLP listener's TLS certificate expires.
pub const TLS_CERTIFICATE_EXPIRY: &str = "mfoundry.tls.certificate.expiry";
/// Counter: TLS certificate reloads, by outcome (`ok`, `error`: the previous one stayed).
pub const TLS_RELOADS: &str = "mfoundry.tls.reloads";
/// Counter: configuration file reloads, by outcome (`ok`, `error`: the running
/// configuration stayed).
pub const CONFIG_RELOADS: &str = "mfoundry.config.reloads";

/// Every metric name, for the documentation test and the dashboard check.
pub const ALL: &[&str] = &[
    CONSUMED_MESSAGES,
    PROCESS_DURATION,
    OPERATION_DURATION,
    SENT_MESSAGES,
    HTTP_CLIENT_DURATION,
    DB_CLIENT_DURATION,
    ACKS_SENT,
    FRAMES_REJECTED,
    CONNECTIONS_ACTIVE,
    QUEUE_DEPTH,
    QUEUE_OLDEST_AGE,
    DLQ_SIZE,
    DELIVERY_FAILURES,
    STORE_SIZE,
    STORE_COMMITS,
    STORE_DAMAGED,
    STORE_VERIFY_DAMAGED,
    CAP_HITS,
    OUTBOX_CHANNEL_FULL,
    TLS_CERTIFICATE_EXPIRY,
    TLS_RELOADS,
    CONFIG_RELOADS,
];

/// Bucket bounds in seconds, from 50 µs (an intake commit on a fast disk) to 30 s (a slow
/// downstream).
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Attribute keys.
pub const LISTENER: &str = "mfoundry.listener";
/// Attribute key: connector name.
pub const CONNECTOR: &str = "mfoundry.connector";
/// Attribute key: ACK code.
pub const ACK_CODE: &str = "mfoundry.ack_code";
/// Attribute key: why (frames rejected).
pub const CAUSE: &str = "mfoundry.cause";
/// Attribute key: how an operation ended (`ok`, `retry`, `dead_letter`, `error`).
pub const OUTCOME: &str = "mfoundry.outcome";
/// Attribute key: which bound (cap hits).
pub const CAP: &str = "mfoundry.cap";

/// The histograms, recorded where the time is measured.
#[derive(Debug)]
pub struct Instruments {
    /// [`PROCESS_DURATION`].
    pub process: Histogram<f64>,
    /// [`OPERATION_DURATION`].
    pub operation: Histogram<f64>,
    /// [`HTTP_CLIENT_DURATION`].
    pub http: Histogram<f64>,
    /// [`DB_CLIENT_DURATION`].
    pub db: Histogram<f64>,
}

/// mfoundry's meter (the global provider's, set by [`init`]).
pub fn meter() -> Meter {
    opentelemetry::global::meter("mfoundry")
}

/// The histograms (created from the global meter on first use: [`init`] runs before).
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = meter();
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build()
        };
        Instruments {
            process: histogram(
                PROCESS_DURATION,
                "Time from a complete frame to its ACK decision, the durable commit included",
            ),
            operation: histogram(OPERATION_DURATION, "One delivery attempt"),
            http: histogram(HTTP_CLIENT_DURATION, "One HTTP output request"),
            db: histogram(DB_CLIENT_DURATION, "One PostgreSQL insert"),
        }
    })
}

/// Record a duration in seconds.
pub fn record(histogram: &Histogram<f64>, elapsed: Duration, attributes: &[KeyValue]) {
    histogram.record(elapsed.as_secs_f64(), attributes);
}

/// The installed provider, flushed and shut down by [`shutdown`].
static PROVIDER: OnceLock<SdkMeterProvider> = OnceLock::new();

/// The provider's pull reader, when `METRICS_ADDR` is on (read by [`scrape`]).
static PULL: OnceLock<PullReader> = OnceLock::new();

/// What [`init`] installed, for the startup log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// The OTLP exporter's protocol, when it is on.
    pub otlp: Option<String>,
    /// Whether a scrape can collect ([`scrape`]).
    pub pull: bool,
}

/// Install the meter provider when anything will read it: the OTLP exporter when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set (and
/// `OTEL_SDK_DISABLED` is not `true`), and the pull reader [`scrape`] uses when `pull`
/// (`METRICS_ADDR` is on). Both read the same instruments. Must run inside the Tokio runtime
/// (the gRPC client needs it) and before anything records. Returns what was installed, or an
/// error naming the variable at fault.
pub fn init(pull: bool) -> Result<Installed, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let otlp = (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"))
        && !std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim() == "true");
    if !otlp && !pull {
        return Ok(Installed::default());
    }
    let mut installed = Installed::default();
    let mut builder = SdkMeterProvider::builder();
    if otlp {
        let (reader, protocol) = otlp_reader()?;
        builder = builder.with_reader(reader);
        installed.otlp = Some(protocol);
    }
    if pull {
        let reader = PullReader::default();
        builder = builder.with_reader(reader.clone());
        let _ = PULL.set(reader);
        installed.pull = true;
    }
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("mfoundry");
    }
    let provider = builder.with_resource(resource.build()).build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    Ok(installed)
}

/// The OTLP exporter's periodic reader and its protocol, from the standard `OTEL_*` variables.
fn otlp_reader() -> Result<(PeriodicReader<opentelemetry_otlp::MetricExporter>, String), String> {
    crate::tls::install_crypto_provider();
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".to_owned());
    let protocol = protocol.trim().to_ascii_lowercase();
    use opentelemetry_otlp::{MetricExporter, WithExportConfig as _};
    let exporter = match protocol.as_str() {
        "grpc" => MetricExporter::builder().with_tonic().build(),
        "http/protobuf" => MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build(),
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported; use grpc or http/protobuf"
            ));
        }
    }
    .map_err(|error| format!("cannot build the OTLP metric exporter: {error}"))?;
    Ok((PeriodicReader::builder(exporter).build(), protocol))
}

/// Collect every instrument now and render it in Prometheus' text format (for
/// `METRICS_ADDR`). Runs the observable instruments' callbacks, which read the store: call it
/// off the async runtime. An error when [`init`] installed no pull reader, or after
/// [`shutdown`].
pub fn scrape() -> Result<String, String> {
    PULL.get()
        .ok_or_else(|| {
            "no metrics are collected in this process (METRICS_ADDR was off when it started)"
                .to_owned()
        })?
        .scrape()
}

/// Export what is pending and stop the exporter (on shutdown).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.force_flush() {
            tracing::warn!(error = %error, "the last metrics could not be exported");
        }
        let _ = provider.shutdown();
    }
}
