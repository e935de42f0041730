//! Wiring and lifecycle: bind the listener, serve until told to stop, then drain.
//!
//! Start order: bind (so a port clash fails before anything else runs) → serve. Stop order:
//! stop accepting → let connections finish the frame in hand → wait for their tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Settings;
use crate::hl7::{AckStamper, SystemStamper};
use crate::ingest::Ingest;
use crate::mllp::{self, ListenerStats, StatsSnapshot};

/// How long connections get to finish the frame in hand once shutdown starts.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// A running gateway.
#[derive(Debug)]
pub struct RunningApp {
    local_addr: SocketAddr,
    stats: Arc<ListenerStats>,
    /// Cancelled to stop accepting and close idle connections.
    shutdown: CancellationToken,
    /// Tracks the accept loop and every connection task.
    tracker: TaskTracker,
}

impl RunningApp {
    /// Bind and start serving with ACKs stamped by the system clock.
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        Self::start_with_stamper(settings, Arc::new(SystemStamper::default())).await
    }

    /// Bind and start serving with the given ACK stamper (tests use a fixed one).
    pub async fn start_with_stamper(
        settings: Settings,
        stamper: Arc<dyn AckStamper>,
    ) -> anyhow::Result<Self> {
        let listen_addr = settings.listener.listen_addr.clone();
        let listener = mllp::bind(&listen_addr)
            .await
            .with_context(|| format!("cannot listen on LISTEN_ADDR={listen_addr}"))?;
        let local_addr = listener
            .local_addr()
            .context("listener has no local address")?;
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ingest = Ingest::new(settings.default_charset, stamper);
        tracker.spawn(mllp::serve(
            listener,
            settings.listener.clone(),
            ingest,
            Arc::clone(&stats),
            shutdown.clone(),
            tracker.clone(),
        ));
        info!(addr = %local_addr, max_frame_size = settings.listener.max_frame_size, "listening for MLLP");
        Ok(Self {
            local_addr,
            stats,
            shutdown,
            tracker,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Listener counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Stop accepting, let connections finish the frame in hand, and wait for them (at most
    /// `grace`). Returns false when some connection was still busy at the deadline.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tracker.close();
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            warn!(
                busy = self.tracker.len(),
                "shutdown grace period ended with connections still receiving a frame"
            );
        }
        let stats = self.stats.snapshot();
        info!(
            connections = stats.connections_accepted,
            frames = stats.frames_received,
            "stopped"
        );
        finished
    }
}

/// Serve until SIGTERM or SIGINT, then drain.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = RunningApp::start(settings).await?;
    crate::shutdown::wait_for_signal().await;
    info!("shutdown requested; finishing frames in progress");
    app.shutdown(DRAIN_GRACE).await;
    Ok(())
}
