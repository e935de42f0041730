//! Every metric mfoundry emits, in one place, and the OTLP exporter.
//!
//! Configuration is the standard `OTEL_*` environment only, read by the OpenTelemetry SDK:
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) turns the exporter
//! on; `OTEL_EXPORTER_OTLP_PROTOCOL` chooses `grpc` or `http/protobuf` (default);
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` work as documented by OpenTelemetry. Without an endpoint there
//! is no exporter, no error and (nearly) no cost: instruments record into a no-op meter.
//!
//! Counters that already exist for the admin API (listener, worker, outbox counters) are
//! exported as observable instruments read at each export, so the hot path pays nothing extra
//! for them. Histograms are recorded where the time is measured. Attributes are listener and
//! connector names, ACK codes, causes and outcomes: never patient data or control ids.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::admin::AdminState;

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

fn meter() -> Meter {
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

/// Install the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set. Must run inside the Tokio runtime (the gRPC
/// client needs it) and before anything records. Returns a description for the startup log,
/// or an error naming the variable at fault.
pub fn init() -> Result<Option<String>, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        return Ok(None);
    }
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim() == "true") {
        return Ok(None);
    }
    crate::outputs::http::install_crypto_provider();
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
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("mfoundry");
    }
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    Ok(Some(protocol))
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

/// Observations: a value and its attributes.
type Points<T> = Vec<(T, Vec<KeyValue>)>;
/// Picks observations from one listener's counters.
type PickListener = fn(&crate::mllp::StatsSnapshot, &str, &mut Points<u64>);
/// Reads observations from the gateway's state.
type ReadState<T> = Box<dyn Fn(&AdminState, &mut Points<T>) + Send + Sync>;

/// A callback that observes what `read` finds in the state while the gateway still holds it.
fn observe_state<T: Copy + Send + Sync + 'static>(
    state: &Arc<AdminState>,
    read: ReadState<T>,
) -> impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<T>) + Send + Sync + 'static {
    let weak = Arc::downgrade(state);
    move |observer| {
        let Some(state) = weak.upgrade() else { return };
        let mut out = Vec::new();
        read(&state, &mut out);
        for (value, attributes) in out {
            observer.observe(value, &attributes);
        }
    }
}

/// Register the observable instruments over the gateway's counters and its outbox. Each is
/// read at export time; the queue figures are one read transaction per export. The callbacks
/// hold the state weakly: once the gateway drops it at shutdown (its outbox handle with it),
/// they observe nothing and the outbox writer can stop.
pub fn register(state: &Arc<AdminState>) {
    let meter = meter();
    let weak = Arc::downgrade(state);
    // Each listener's counters, as (value, attributes) pairs chosen by `pick`.
    let listeners = move |pick: PickListener| {
        let mut out = Vec::new();
        if let Some(state) = weak.upgrade() {
            for listener in &state.listeners {
                pick(&listener.stats.snapshot(), &listener.name, &mut out);
            }
        }
        out
    };
    let listeners = Arc::new(listeners);
    let counter =
        |name: &'static str, unit: &'static str, description: &'static str, pick: PickListener| {
            let read = Arc::clone(&listeners);
            let _ = meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(description)
                .with_callback(move |observer| {
                    for (value, attributes) in read(pick) {
                        observer.observe(value, &attributes);
                    }
                })
                .build();
        };
    counter(
        CONSUMED_MESSAGES,
        "{message}",
        "Frames received by the MLLP listener",
        |stats, name, out| {
            out.push((
                stats.frames_received,
                vec![KeyValue::new(LISTENER, name.to_owned())],
            ));
        },
    );
    counter(
        ACKS_SENT,
        "{ack}",
        "ACKs written, by code",
        |stats, name, out| {
            for (index, code) in ["AA", "AE", "AR", "CA", "CE", "CR"].iter().enumerate() {
                out.push((
                    stats.acks[index],
                    vec![
                        KeyValue::new(LISTENER, name.to_owned()),
                        KeyValue::new(ACK_CODE, *code),
                    ],
                ));
            }
        },
    );
    counter(
        FRAMES_REJECTED,
        "{frame}",
        "Frames refused or cut off before an ACK, by cause",
        |stats, name, out| {
            for (cause, value) in [
                ("unreadable_header", stats.unreadable_frames),
                ("oversize", stats.oversize_frames),
                ("frame_timeout", stats.frame_timeouts),
                ("idle_timeout", stats.idle_timeouts),
                ("write_failed", stats.write_failures),
                ("tls_handshake", stats.tls_handshake_failures),
                ("peer_not_allowed", stats.connections_denied),
            ] {
                out.push((
                    value,
                    vec![
                        KeyValue::new(LISTENER, name.to_owned()),
                        KeyValue::new(CAUSE, cause),
                    ],
                ));
            }
        },
    );
    counter(
        CAP_HITS,
        "{event}",
        "Times a bound was reached",
        |stats, name, out| {
            for (cap, value) in [
                ("max_connections", stats.connections_refused),
                ("max_frame_size", stats.oversize_frames),
            ] {
                out.push((
                    value,
                    vec![
                        KeyValue::new(LISTENER, name.to_owned()),
                        KeyValue::new(CAP, cap),
                    ],
                ));
            }
        },
    );
    let read = Arc::clone(&listeners);
    let _ = meter
        .u64_observable_gauge(CONNECTIONS_ACTIVE)
        .with_unit("{connection}")
        .with_description("Open MLLP connections")
        .with_callback(move |observer| {
            for (value, attributes) in read(|stats, name, out| {
                out.push((
                    stats.connections_active,
                    vec![KeyValue::new(LISTENER, name.to_owned())],
                ));
            }) {
                observer.observe(value, &attributes);
            }
        })
        .build();

    // Per connector and store-wide figures.
    let gauge = |name: &'static str,
                 unit: &'static str,
                 description: &'static str,
                 read: ReadState<f64>| {
        let _ = meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(observe_state(state, read))
            .build();
    };
    let sum = |name: &'static str,
               unit: &'static str,
               description: &'static str,
               read: ReadState<u64>| {
        let _ = meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(description)
            .with_callback(observe_state(state, read))
            .build();
    };
    sum(
        SENT_MESSAGES,
        "{message}",
        "Messages delivered",
        Box::new(|state, out| {
            for connector in &state.connectors {
                if let Some(worker) = &connector.worker {
                    out.push((
                        worker.stats().delivered.load(Relaxed),
                        vec![KeyValue::new(CONNECTOR, connector.name.clone())],
                    ));
                }
            }
        }),
    );
    sum(
        DELIVERY_FAILURES,
        "{attempt}",
        "Failed delivery attempts",
        Box::new(|state, out| {
            for connector in &state.connectors {
                if let Some(worker) = &connector.worker {
                    for (outcome, value) in [
                        ("retry", worker.stats().retries.load(Relaxed)),
                        ("dead_letter", worker.stats().dead_lettered.load(Relaxed)),
                    ] {
                        out.push((
                            value,
                            vec![
                                KeyValue::new(CONNECTOR, connector.name.clone()),
                                KeyValue::new(OUTCOME, outcome),
                            ],
                        ));
                    }
                }
            }
        }),
    );
    sum(
        STORE_COMMITS,
        "{transaction}",
        "Outbox transactions",
        Box::new(|state, out| {
            let stats = state.outbox.stats();
            out.push((
                stats.commits.load(Relaxed),
                vec![KeyValue::new(OUTCOME, "ok")],
            ));
            out.push((
                stats.failed_batches.load(Relaxed),
                vec![KeyValue::new(OUTCOME, "error")],
            ));
        }),
    );
    sum(
        STORE_DAMAGED,
        "{record}",
        "Stored records found damaged (failing their checksum); never delivered",
        Box::new(|state, out| {
            out.push((state.outbox.stats().damaged.load(Relaxed), Vec::new()));
        }),
    );
    gauge(
        STORE_VERIFY_DAMAGED,
        "{record}",
        "Damaged records the last background verification found (STORE_VERIFY_INTERVAL)",
        Box::new(|state, out| {
            out.push((
                state.outbox.stats().verified_damaged.load(Relaxed) as f64,
                Vec::new(),
            ));
        }),
    );
    sum(
        OUTBOX_CHANNEL_FULL,
        "{event}",
        "Times intake waited for room in the outbox writer's queue",
        Box::new(|state, out| {
            out.push((state.outbox.stats().channel_full.load(Relaxed), Vec::new()));
        }),
    );
    gauge(
        STORE_SIZE,
        "By",
        "Size of the data file",
        Box::new(|state, out| {
            if let Some(size) = state.outbox.file_size() {
                out.push((size as f64, Vec::new()));
            }
        }),
    );
    gauge(
        TLS_CERTIFICATE_EXPIRY,
        "d",
        "Days until the listener's TLS certificate expires",
        Box::new(|state, out| {
            for listener in &state.listeners {
                if let Some(tls) = &listener.tls {
                    out.push((
                        tls.days_left(),
                        vec![KeyValue::new(LISTENER, listener.name.clone())],
                    ));
                }
            }
        }),
    );
    sum(
        TLS_RELOADS,
        "{reload}",
        "TLS certificate reloads (error: the new files were refused and the previous certificate stayed)",
        Box::new(|state, out| {
            for listener in &state.listeners {
                if let Some(tls) = &listener.tls {
                    for (outcome, value) in [
                        ("ok", tls.reloads.load(Relaxed)),
                        ("error", tls.failures.load(Relaxed)),
                    ] {
                        out.push((
                            value,
                            vec![
                                KeyValue::new(LISTENER, listener.name.clone()),
                                KeyValue::new(OUTCOME, outcome),
                            ],
                        ));
                    }
                }
            }
        }),
    );
    // Queue figures: one snapshot per export (at most one a second), shared by the gauges.
    let queues = Arc::new(QueueGauges::default());
    for (name, unit, description, pick) in [
        (
            QUEUE_DEPTH,
            "{message}",
            "Entries in the connector's queue",
            QueueFigure::Depth,
        ),
        (
            QUEUE_OLDEST_AGE,
            "s",
            "Age of the oldest queued message (0 when the queue is empty)",
            QueueFigure::OldestAge,
        ),
        (
            DLQ_SIZE,
            "{message}",
            "Entries in the connector's dead-letter queue",
            QueueFigure::Dlq,
        ),
    ] {
        let queues = Arc::clone(&queues);
        gauge(
            name,
            unit,
            description,
            Box::new(move |state, out| {
                for (connector, figures) in queues.figures(state) {
                    let value = match pick {
                        QueueFigure::Depth => figures.0 as f64,
                        QueueFigure::OldestAge => figures.1,
                        QueueFigure::Dlq => figures.2 as f64,
                    };
                    out.push((value, vec![KeyValue::new(CONNECTOR, connector)]));
                }
            }),
        );
    }
}

#[derive(Clone, Copy)]
enum QueueFigure {
    Depth,
    OldestAge,
    Dlq,
}

/// (depth, oldest age in seconds, DLQ size) per connector, read at most once per second.
type QueueFigures = Vec<(String, (u64, f64, u64))>;

#[derive(Default)]
struct QueueGauges {
    cache: std::sync::Mutex<Option<(std::time::Instant, QueueFigures)>>,
}

impl QueueGauges {
    fn figures(&self, state: &AdminState) -> QueueFigures {
        let Ok(mut cache) = self.cache.lock() else {
            return Vec::new();
        };
        if let Some((at, figures)) = cache.as_ref()
            && at.elapsed() < Duration::from_secs(1)
        {
            return figures.clone();
        }
        let figures = read_queues(state).unwrap_or_default();
        *cache = Some((std::time::Instant::now(), figures.clone()));
        figures
    }
}

fn read_queues(state: &AdminState) -> Result<QueueFigures, crate::outbox::StoreError> {
    let snapshot = state.outbox.snapshot()?;
    let now = crate::outbox::now_micros();
    state
        .connectors
        .iter()
        .map(|connector| {
            let figures = snapshot.queue_figures(connector.id, now)?;
            Ok((
                connector.name.clone(),
                (
                    figures.depth,
                    figures.oldest_age_secs.unwrap_or(0.0),
                    figures.dead_letters,
                ),
            ))
        })
        .collect()
}
