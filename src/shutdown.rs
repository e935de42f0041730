//! Signals that stop the gateway, and SIGHUP, which reloads it.
//!
//! The handlers are installed once, before serving, so a second signal during the drain is
//! seen even if it arrives before anyone waits for it, and a SIGHUP sent right after startup
//! is never its default action (which ends the process).

use tracing::warn;

/// SIGTERM and SIGINT (Ctrl-C).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Install the handlers.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(terminate), Ok(interrupt)) => Some((terminate, interrupt)),
                _ => {
                    warn!("cannot install signal handlers; falling back to Ctrl-C only");
                    None
                }
            };
            Self { streams }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolve on the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((terminate, interrupt)) = self.streams.as_mut() {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP (reload), installed when created: from then on a SIGHUP waits for [`Hangups::recv`]
/// instead of ending the process.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    stream: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Install the handler (inside a runtime).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let stream = signal(SignalKind::hangup()).ok();
            if stream.is_none() {
                warn!("cannot install the SIGHUP handler; reload by changing the files instead");
            }
            Self { stream }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolve on the next SIGHUP (never, where there is none).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(stream) = self.stream.as_mut() {
            stream.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }
}
