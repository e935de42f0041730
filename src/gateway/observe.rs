//! The observable instruments over the gateway's state: listener, worker and outbox counters
//! and the queues, read at each export (names and descriptions in
//! [`crate::telemetry::metrics`]), so the hot path pays nothing extra for them.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use opentelemetry::KeyValue;

use super::Gateway;
use crate::telemetry::metrics::*;

/// Observations: a value and its attributes.
type Points<T> = Vec<(T, Vec<KeyValue>)>;
/// Picks observations from one listener's counters.
type PickListener = fn(&crate::mllp::StatsSnapshot, &str, &mut Points<u64>);
/// Reads observations from the gateway's state.
type ReadState<T> = Box<dyn Fn(&Gateway, &mut Points<T>) + Send + Sync>;

/// A callback that observes what `read` finds in the state while the gateway still holds it.
fn observe_state<T: Copy + Send + Sync + 'static>(
    state: &Arc<Gateway>,
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
pub fn register(state: &Arc<Gateway>) {
    let meter = meter();
    let weak = Arc::downgrade(state);
    // Each listener's counters, as (value, attributes) pairs chosen by `pick`.
    let listeners = move |pick: PickListener| {
        let mut out = Vec::new();
        if let Some(state) = weak.upgrade() {
            for listener in state.listeners().iter() {
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
        "Frames (MLLP) and posted messages (HTTP) received by the listener",
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
                ("max_frame_memory", stats.memory_waits),
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
        .with_description("Open connections of the listener (MLLP or HTTP)")
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
            for connector in state.connectors().iter() {
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
            for connector in state.connectors().iter() {
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
            for listener in state.listeners().iter() {
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
            for listener in state.listeners().iter() {
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
    sum(
        CONFIG_RELOADS,
        "{reload}",
        "Configuration file reloads (error: the file was refused and the running configuration stayed)",
        Box::new(|state, out| {
            for (outcome, value) in [
                ("ok", state.reloads.applied.load(Relaxed)),
                ("error", state.reloads.refused.load(Relaxed)),
            ] {
                out.push((value, vec![KeyValue::new(OUTCOME, outcome)]));
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
    fn figures(&self, state: &Gateway) -> QueueFigures {
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

fn read_queues(state: &Gateway) -> Result<QueueFigures, crate::outbox::StoreError> {
    let snapshot = state.outbox.snapshot()?;
    let now = crate::outbox::now_micros();
    // Orphaned connectors (removed from the configuration) too, while they hold entries:
    // what they hold still needs someone's attention.
    let configured = state.connectors();
    let orphaned = state.orphaned();
    configured
        .iter()
        .map(|connector| (connector.name.clone(), connector.id, true))
        .chain(orphaned.into_iter().map(|(name, id)| (name, id, false)))
        .filter_map(|(name, id, configured)| {
            let figures = match snapshot.queue_figures(id, now) {
                Ok(figures) => figures,
                Err(error) => return Some(Err(error)),
            };
            (configured || !figures.is_empty()).then(|| {
                Ok((
                    name,
                    (
                        figures.depth,
                        figures.oldest_age_secs.unwrap_or(0.0),
                        figures.dead_letters,
                    ),
                ))
            })
        })
        .collect()
}
