//! Logging setup, the in-process ring of recent log lines the admin API serves, the metrics
//! ([`metrics`]) and their Prometheus text form ([`prometheus`]).
//!
//! Log lines carry peers, sizes, control ids and counts; never message content.

pub mod metrics;
pub mod prometheus;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Lines kept for `GET /api/v1/logs`.
pub const LOG_RING_CAPACITY: usize = 1000;
/// Longest message or field value kept in the ring, in bytes.
const MAX_VALUE_LEN: usize = 1024;

/// One log line, as the admin API returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    /// RFC 3339 time.
    pub at: String,
    /// ERROR, WARN, INFO, DEBUG or TRACE.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message.
    pub message: String,
    /// The structured fields.
    pub fields: BTreeMap<String, String>,
}

/// The most recent log lines, oldest first, bounded.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: Mutex<VecDeque<LogLine>>,
}

impl LogRing {
    fn push(&self, line: LogLine) {
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() >= LOG_RING_CAPACITY {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }

    /// The newest `limit` lines, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<LogLine> {
        match self.lines.lock() {
            Ok(lines) => {
                let skip = lines.len().saturating_sub(limit);
                lines.iter().skip(skip).cloned().collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// The process's ring (empty until [`init`] ran).
pub fn log_ring() -> Arc<LogRing> {
    static RING: OnceLock<Arc<LogRing>> = OnceLock::new();
    Arc::clone(RING.get_or_init(|| Arc::new(LogRing::default())))
}

/// A layer that copies every event that passed the filter into the ring.
struct RingLayer(Arc<LogRing>);

impl<S: Subscriber> tracing_subscriber::Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut visitor = FieldCollector::default();
        event.record(&mut visitor);
        let metadata = event.metadata();
        self.0.push(LogLine {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level: metadata.level().to_string(),
            target: metadata.target().to_owned(),
            message: visitor.message,
            fields: visitor.fields,
        });
    }
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: BTreeMap<String, String>,
}

fn bounded(mut text: String) -> String {
    if text.len() > MAX_VALUE_LEN {
        let mut end = MAX_VALUE_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

impl Visit for FieldCollector {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.store(field, text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.store(field, value.to_owned());
    }
}

impl FieldCollector {
    fn store(&mut self, field: &Field, text: String) {
        if field.name() == "message" {
            self.message = bounded(text);
        } else if self.fields.len() < 32 {
            self.fields.insert(field.name().to_owned(), bounded(text));
        }
    }
}

/// Whether text logs get terminal colour codes: only on a terminal, and never with
/// `NO_COLOR` set to anything but empty (no-color.org). A file or a log collector gets
/// plain text.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Install the global subscriber: `RUST_LOG` filters (default `info`), `LOG_FORMAT` chooses
/// text or JSON lines, and every line that passes the filter is also kept in the ring. Logs go
/// to stderr so stdout stays free for command output.
pub fn init(format: LogFormat) {
    // OpenTelemetry's own messages from warn: a failed export shows, its start-up chatter
    // does not.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,opentelemetry=warn"));
    let ring = RingLayer(log_ring());
    // Dependencies log message content below info (the PostgreSQL driver logs every
    // insert's parameters at debug, the HTTP stack headers and frames at trace): whatever
    // RUST_LOG asks, only mfoundry's own lines, which never carry message content, go below
    // info. This filter is global, so such lines reach neither the output nor the ring.
    let no_content = tracing_subscriber::filter::filter_fn(|metadata| {
        *metadata.level() <= tracing::Level::INFO || metadata.target().starts_with("mfoundry")
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(no_content)
        .with(ring);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(colour(
                        std::io::IsTerminal::is_terminal(&std::io::stderr()),
                        std::env::var_os("NO_COLOR").as_deref(),
                    ))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some(std::ffi::OsStr::new("1"))));
        assert!(colour(true, Some(std::ffi::OsStr::new(""))));
    }

    #[test]
    fn the_ring_keeps_the_newest_lines() {
        let ring = LogRing::default();
        for index in 0..LOG_RING_CAPACITY + 5 {
            ring.push(LogLine {
                at: String::new(),
                level: "INFO".to_owned(),
                target: "t".to_owned(),
                message: index.to_string(),
                fields: BTreeMap::new(),
            });
        }
        let recent = ring.recent(3);
        let messages: Vec<&str> = recent.iter().map(|line| line.message.as_str()).collect();
        let last = LOG_RING_CAPACITY + 4;
        assert_eq!(
            messages,
            [
                (last - 2).to_string(),
                (last - 1).to_string(),
                last.to_string()
            ]
        );
        assert_eq!(ring.recent(usize::MAX).len(), LOG_RING_CAPACITY);
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_VALUE_LEN);
        let cut = bounded(text);
        assert!(cut.len() <= MAX_VALUE_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
