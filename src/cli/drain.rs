//! `mfoundry bench --drain CONNECTOR...`: delivery measured next to intake. Before the load
//! the bench reads each named connector's counters from the admin API; after it, it waits
//! until each has delivered what the load queued for it, and reports delivered messages per
//! second from the first send to the last delivery, and the delivery latency (received to
//! delivered) of those messages, read from their delivery records.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::client::{AdminClient, ApiArgs};
use crate::admin::api::{MessagePage, Stats};

/// How often the counters are read while waiting.
const POLL: Duration = Duration::from_millis(20);
/// Messages read per page for the latencies.
const PAGE: usize = 500;

/// What one connector did with the load.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrainReport {
    /// The connector.
    pub connector: String,
    /// Messages the load queued for it.
    pub queued: u64,
    /// Of those, delivered before the wait ended.
    pub delivered: u64,
    /// First send to the last delivery (or to the end of the wait), seconds.
    pub elapsed_secs: f64,
    /// Delivered messages per second over `elapsed_secs`.
    pub per_second: f64,
    /// `per_second` divided by the intake rate of the same run.
    pub ratio_to_intake: f64,
    /// Received to delivered, milliseconds, over the delivered messages of the load.
    pub latency_ms: LatencyMs,
    /// False when the wait ended before everything was delivered (no progress for the
    /// bench's `--timeout`).
    pub drained: bool,
}

/// Delivery latency percentiles, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
}

/// The named connectors' counters before the load.
#[derive(Debug)]
pub struct DrainWatch {
    client: AdminClient,
    /// `(name, delivered, queued)` before the load.
    baselines: Vec<(String, u64, u64)>,
    /// When the load started: wall clock (to find its messages) and monotonic.
    started_at: chrono::DateTime<chrono::Utc>,
    started: Instant,
}

/// Each named connector's `(delivered, queued, depth)` now; an unknown name is an error
/// naming the known ones.
async fn counters(
    client: &AdminClient,
    names: &[String],
) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let stats: Stats = client.get("/api/v1/stats", &[] as &[(&str, &str)]).await?;
    names
        .iter()
        .map(|name| {
            let connector = stats
                .connectors
                .iter()
                .find(|connector| &connector.name == name)
                .with_context(|| {
                    let known: Vec<&str> =
                        stats.connectors.iter().map(|c| c.name.as_str()).collect();
                    format!(
                        "--drain {name}: the gateway has no such connector; known: {}",
                        known.join(", ")
                    )
                })?;
            Ok((name.clone(), connector.delivered, connector.queued))
        })
        .collect()
}

impl DrainWatch {
    /// Read the counters of `names` through the admin API at `api` (just before the load).
    pub async fn start(api: &ApiArgs, names: &[String]) -> anyhow::Result<Self> {
        let client = AdminClient::new(api).context("--drain reads the gateway's admin API")?;
        let baselines = counters(&client, names).await?;
        Ok(Self {
            client,
            baselines,
            started_at: chrono::Utc::now(),
            started: Instant::now(),
        })
    }

    /// After the load: wait until every connector delivered what the load queued for it (or
    /// made no progress for `patience`), then measure. `intake_per_second`: the load's rate.
    pub async fn finish(
        self,
        intake_per_second: f64,
        patience: Duration,
    ) -> anyhow::Result<Vec<DrainReport>> {
        let names: Vec<String> = self.baselines.iter().map(|b| b.0.clone()).collect();
        let mut done: Vec<Option<(Duration, u64, u64)>> = vec![None; names.len()];
        let mut last_progress = (Instant::now(), 0u64);
        loop {
            let now = counters(&self.client, &names).await?;
            let mut total = 0;
            for ((slot, base), current) in done.iter_mut().zip(&self.baselines).zip(&now) {
                let delivered = current.1.saturating_sub(base.1);
                let queued = current.2.saturating_sub(base.2);
                total += delivered;
                if slot.is_none() && delivered >= queued {
                    *slot = Some((self.started.elapsed(), delivered, queued));
                }
            }
            if done.iter().all(Option::is_some) {
                break;
            }
            if total > last_progress.1 {
                last_progress = (Instant::now(), total);
            } else if last_progress.0.elapsed() > patience {
                for ((slot, base), current) in done.iter_mut().zip(&self.baselines).zip(&now) {
                    if slot.is_none() {
                        *slot = Some((
                            self.started.elapsed(),
                            current.1.saturating_sub(base.1),
                            current.2.saturating_sub(base.2),
                        ));
                    }
                }
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let mut reports = Vec::with_capacity(names.len());
        for (name, outcome) in names.iter().zip(done) {
            let (elapsed, delivered, queued) = outcome.unwrap_or_default();
            let per_second = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
            reports.push(DrainReport {
                connector: name.clone(),
                queued,
                delivered,
                elapsed_secs: elapsed.as_secs_f64(),
                per_second,
                ratio_to_intake: per_second / intake_per_second.max(1e-9),
                latency_ms: self.latencies(name).await?,
                drained: delivered >= queued,
            });
        }
        Ok(reports)
    }

    /// Received to delivered of the messages received since the load started and delivered
    /// by `connector`, from their records (millisecond resolution).
    async fn latencies(&self, connector: &str) -> anyhow::Result<LatencyMs> {
        let from = self
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut millis: Vec<f64> = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut query: Vec<(&str, String)> = vec![
                ("from", from.clone()),
                ("connector", connector.to_owned()),
                ("status", "DELIVERED".to_owned()),
                ("limit", PAGE.to_string()),
            ];
            if let Some(before) = before {
                query.push(("before", before.to_string()));
            }
            let page: MessagePage = self.client.get("/api/v1/messages", &query).await?;
            for message in &page.messages {
                let delivered = message
                    .connectors
                    .iter()
                    .find(|state| state.connector == connector)
                    .and_then(|state| state.at.as_deref());
                if let (Ok(received), Some(Ok(delivered))) = (
                    chrono::DateTime::parse_from_rfc3339(&message.received_at),
                    delivered.map(chrono::DateTime::parse_from_rfc3339),
                ) {
                    let gap = delivered.signed_duration_since(received);
                    millis.push(gap.num_microseconds().unwrap_or(0) as f64 / 1000.0);
                }
            }
            match page.next_before {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        millis.sort_by(f64::total_cmp);
        let at = |quantile| super::bench::percentile(&millis, quantile);
        Ok(LatencyMs {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: millis.last().copied().unwrap_or(0.0),
        })
    }
}
