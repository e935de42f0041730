//! Logging setup. Log lines carry peers, sizes, control ids and counts; never message content.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber: `RUST_LOG` filters (default `info`), `LOG_FORMAT` chooses
/// text or JSON lines. Logs go to stderr so stdout stays free for command output.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
