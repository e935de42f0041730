//! `GET /api/v1/stats`: listeners, connectors and the store at a glance.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;
use super::AuthErrors;
use super::Shared;
use crate::admin::auth::{Caller, Role};
use crate::outbox::QueueFigures;

/// Counters and gauges of the whole gateway.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Seconds since start.
    pub uptime_secs: u64,
    /// When this process started (RFC 3339, UTC): every counter (received, accepted,
    /// delivered, failed, commits …) counts since then and starts again at zero with each
    /// restart; depths, ages and sizes are as of now.
    pub counters_since: String,
    /// One per listener.
    pub listeners: Vec<ListenerStatsView>,
    /// One per configured connector.
    pub connectors: Vec<ConnectorStatsView>,
    /// Connectors no longer in the configuration whose queue or dead-letter queue still
    /// holds entries (kept in the store until the connector is added back, or its dead
    /// letters are purged).
    #[serde(default)]
    pub orphaned_connectors: Vec<OrphanedConnectorView>,
    /// The outbox.
    pub store: StoreStatsView,
    /// The admin API's tokens.
    pub admin_tokens: AdminTokensStatsView,
    /// Configuration reloads (SIGHUP, or the file changing).
    pub configuration: ConfigurationStatsView,
}

/// A connector removed from the configuration, with what it left in the store.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrphanedConnectorView {
    /// Connector name.
    pub name: String,
    /// Entries in its queue now (delivered when it is added back).
    pub queue_depth: u64,
    /// Age of its oldest queued entry, seconds.
    pub oldest_queued_age_secs: Option<f64>,
    /// Entries in its dead-letter queue now.
    pub dlq_size: u64,
}

/// Configuration reloads since start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConfigurationStatsView {
    /// New files put in force.
    pub reloads: u64,
    /// New files refused; the running configuration stayed (the log has every problem).
    pub reload_failures: u64,
    /// When the last refusal was (RFC 3339), if any.
    pub last_failure_at: Option<String>,
    /// How many problems it had.
    pub last_failure_problems: Option<u64>,
}

/// The admin API's tokens and the reloads of `ADMIN_TOKENS_FILE`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdminTokensStatsView {
    /// Tokens known now.
    pub tokens: u64,
    /// Changes of `ADMIN_TOKENS_FILE` taken since start.
    pub reloads: u64,
    /// Changes refused since start (the previous tokens stayed; the log says why).
    pub reload_failures: u64,
}

/// A listener's counters since start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListenerStatsView {
    /// Listener name.
    pub name: String,
    /// Connections open now.
    pub connections_active: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections refused (MAX_CONNECTIONS).
    pub connections_refused: u64,
    /// Frames received.
    pub received: u64,
    /// Answered AA or CA.
    pub accepted: u64,
    /// Answered AR or CR.
    pub rejected: u64,
    /// Answered AE or CE.
    pub errors: u64,
    /// Frames without a readable header, frames over MAX_FRAME_SIZE, frame timeouts.
    pub unreadable: u64,
    /// TLS handshakes that failed (bad or missing client certificate, timeout, protocol).
    pub tls_handshake_failures: u64,
    /// Connections closed at once because the peer is not in ALLOWED_PEERS.
    pub connections_denied: u64,
    /// The listener's certificate, when TLS is on.
    pub tls: Option<TlsStatsView>,
}

/// The listener's TLS certificate and its reloads.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TlsStatsView {
    /// When the certificate in use expires (RFC 3339, UTC).
    pub certificate_expires_at: String,
    /// Days until then (negative once expired).
    pub certificate_days_left: f64,
    /// Certificates loaded after start (SIGHUP or a file change).
    pub reloads: u64,
    /// Reload attempts refused (the previous certificate stayed in use).
    pub reload_failures: u64,
}

/// A connector's state: intake counters since start, queue and DLQ now, delivery since start.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectorStatsView {
    /// Connector name.
    pub name: String,
    /// Output kind.
    pub kind: String,
    /// Delivery paused by an operator (or `paused: true`).
    pub paused: bool,
    /// Waiting for a retry time.
    pub backing_off: bool,
    /// Messages its filter took since start.
    pub queued: u64,
    /// Messages its filter did not take since start.
    pub filtered: u64,
    /// Entries in its queue now.
    pub queue_depth: u64,
    /// Age of the oldest queued message, seconds (absent when the queue is empty).
    pub oldest_queued_age_secs: Option<f64>,
    /// Messages delivered since start.
    pub delivered: u64,
    /// Failed delivery attempts since start (retried or dead-lettered).
    pub failed: u64,
    /// Entries in its dead-letter queue now.
    pub dlq_size: u64,
    /// What it is doing, the first that holds: `paused` (by an operator or the
    /// configuration); `retrying` (the message at the head of its queue failed and waits
    /// for its next attempt); `stalled` (messages wait, the oldest for more than 10 s, and
    /// nothing was delivered for 10 s: a downstream that does not answer); `failing` (its
    /// newest dead letter is less than 15 minutes old and nothing was delivered since);
    /// `delivering`; `idle` (nothing queued).
    #[serde(default)]
    pub state: String,
    /// When it last delivered (RFC 3339; absent when not since start).
    #[serde(default)]
    pub last_delivered_at: Option<String>,
    /// Failed attempts of the message at the head of its queue.
    #[serde(default)]
    pub head_attempts: u32,
    /// Why the last attempt at the head of its queue failed, or, for a failing connector,
    /// why its newest dead letter was given up, as the downstream said it (operator and
    /// admin only: it can hold patient data).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// The last errors quote downstream systems, which can hold patient data: showing them is a
/// PHI view. Each token's first view of a set of errors is written to the audit trail
/// before the answer (the connectors, never the text); the overview's polls of the same
/// errors are not written again.
async fn audit_errors_shown(
    state: &crate::admin::AdminState,
    caller: &Caller,
    connectors: &[ConnectorStatsView],
) -> Result<(), ApiError> {
    use std::hash::{Hash, Hasher};
    let shown: Vec<(&str, &str)> = connectors
        .iter()
        .filter_map(|c| {
            c.last_error
                .as_deref()
                .map(|error| (c.name.as_str(), error))
        })
        .collect();
    if shown.is_empty() {
        return Ok(());
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    shown.hash(&mut hasher);
    let fingerprint = hasher.finish();
    let seen = state
        .errors_shown
        .lock()
        .map(|seen| seen.get(&caller.token_id) == Some(&fingerprint))
        .unwrap_or(false);
    if seen {
        return Ok(());
    }
    let names: Vec<&str> = shown.iter().map(|(name, _)| *name).collect();
    let event = crate::outbox::audit::AuditEvent::Admin {
        token_id: caller.token_id.clone(),
        action: "stats.last_errors".to_owned(),
        target: format!("the last errors of {}", names.join(", ")),
        outcome: "ok".to_owned(),
    };
    state.gateway.outbox.audit(event).await?;
    if let Ok(mut seen) = state.errors_shown.lock() {
        seen.insert(caller.token_id.clone(), fingerprint);
    }
    Ok(())
}

/// How long a queue may wait with nothing delivered before its connector counts as stalled.
pub const STALLED_AFTER_SECS: f64 = 10.0;
/// How long a connector counts as failing after a dead letter with no delivery since.
pub const FAILING_FOR_SECS: f64 = 15.0 * 60.0;

/// What the state of a connector is read from.
struct Signals<'a> {
    paused: bool,
    backing_off: bool,
    figures: &'a QueueFigures,
    /// Seconds since the last delivery (since start when none).
    since_delivery_secs: f64,
    /// Seconds since the newest dead letter failed, when it failed after the last delivery.
    dead_letter_age_secs: Option<f64>,
}

/// A connector's state (see [`ConnectorStatsView::state`]).
fn connector_state(signals: &Signals<'_>) -> &'static str {
    let figures = signals.figures;
    if signals.paused {
        "paused"
    } else if signals.backing_off || figures.head_attempts > 0 {
        "retrying"
    } else if figures.depth > 0
        && figures
            .oldest_age_secs
            .is_some_and(|age| age > STALLED_AFTER_SECS)
        && signals.since_delivery_secs > STALLED_AFTER_SECS
    {
        "stalled"
    } else if signals
        .dead_letter_age_secs
        .is_some_and(|age| age < FAILING_FOR_SECS)
    {
        "failing"
    } else if figures.depth > 0 {
        "delivering"
    } else {
        "idle"
    }
}

/// Outbox figures.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreStatsView {
    /// Messages stored now.
    pub messages: u64,
    /// Size of the data file, bytes.
    pub file_bytes: u64,
    /// Transactions committed since start.
    pub commits: u64,
    /// Transactions that failed since start.
    pub failed_commits: u64,
}

/// Counters per listener and connector, queue depths, DLQ sizes.
#[utoipa::path(get, path = "/api/v1/stats", tag = "stats", security(("bearer" = [])),
    responses((status = 200, description = "Stats", body = Stats), AuthErrors))]
pub async fn stats(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Stats>, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let configured = state.gateway.connectors();
    let ids: Vec<crate::outbox::ConnectorId> = configured.iter().map(|c| c.id).collect();
    let orphaned = state.gateway.orphaned();
    let orphaned_ids: Vec<crate::outbox::ConnectorId> = orphaned.iter().map(|o| o.1).collect();
    let now = crate::outbox::now_micros();
    let (messages, per_connector, per_orphan) = state
        .gateway
        .outbox
        .read(move |snapshot| {
            let figures = |ids: Vec<crate::outbox::ConnectorId>| {
                ids.into_iter()
                    .map(|id| snapshot.queue_figures(id, now))
                    .collect::<Result<Vec<_>, _>>()
            };
            Ok((
                snapshot.message_count()?,
                figures(ids)?,
                figures(orphaned_ids)?,
            ))
        })
        .await?;
    let orphaned_connectors = orphaned
        .into_iter()
        .zip(per_orphan)
        .filter(|(_, figures)| !figures.is_empty())
        .map(|((name, _), figures)| OrphanedConnectorView {
            name,
            queue_depth: figures.depth,
            oldest_queued_age_secs: figures.oldest_age_secs,
            dlq_size: figures.dead_letters,
        })
        .collect();
    let listeners = state
        .gateway
        .listeners()
        .iter()
        .map(|listener| {
            let stats = listener.stats.snapshot();
            ListenerStatsView {
                name: listener.name.clone(),
                connections_active: stats.connections_active,
                connections_accepted: stats.connections_accepted,
                connections_refused: stats.connections_refused,
                received: stats.frames_received,
                accepted: stats.acks[0] + stats.acks[3],
                rejected: stats.acks[2] + stats.acks[5],
                errors: stats.acks[1] + stats.acks[4],
                unreadable: stats.unreadable_frames + stats.oversize_frames + stats.frame_timeouts,
                tls_handshake_failures: stats.tls_handshake_failures,
                connections_denied: stats.connections_denied,
                tls: listener.tls.as_ref().map(|tls| {
                    let not_after = tls.not_after.load(Relaxed);
                    TlsStatsView {
                        certificate_expires_at: chrono::DateTime::from_timestamp(not_after, 0)
                            .map(|time| time.to_rfc3339())
                            .unwrap_or_default(),
                        certificate_days_left: (tls.days_left() * 100.0).round() / 100.0,
                        reloads: tls.reloads.load(Relaxed),
                        reload_failures: tls.failures.load(Relaxed),
                    }
                }),
            }
        })
        .collect();
    let uptime = state.gateway.started.elapsed();
    let connectors: Vec<ConnectorStatsView> = configured
        .iter()
        .zip(per_connector)
        .map(|(connector, figures)| {
            let (queued, filtered) = connector
                .intake
                .as_ref()
                .map(|c| (c.queued.load(Relaxed), c.filtered.load(Relaxed)))
                .unwrap_or_default();
            let worker = connector.worker.as_ref();
            let paused = worker.is_some_and(|w| w.is_paused());
            let backing_off = worker.is_some_and(|w| w.stats().backing_off.load(Relaxed));
            let last_delivered =
                worker.map_or(0, |w| w.stats().last_delivered_micros.load(Relaxed));
            // Since the last delivery, or since start when none yet.
            let since_delivery_secs = if last_delivered > 0 {
                (now - last_delivered).max(0) as f64 / 1e6
            } else {
                uptime.as_secs_f64()
            };
            let dead_letter_age_secs = figures
                .newest_dead_letter
                .as_ref()
                .filter(|(failed_at, _)| *failed_at > last_delivered)
                .map(|(failed_at, _)| (now - failed_at).max(0) as f64 / 1e6);
            let state = connector_state(&Signals {
                paused,
                backing_off,
                figures: &figures,
                since_delivery_secs,
                dead_letter_age_secs,
            });
            let last_error = match state {
                "failing" => figures
                    .newest_dead_letter
                    .as_ref()
                    .map(|(_, reason)| reason.clone()),
                _ => figures.head_error.clone(),
            };
            ConnectorStatsView {
                name: connector.name.clone(),
                kind: connector.kind.to_owned(),
                paused,
                backing_off,
                state: state.to_owned(),
                last_delivered_at: (last_delivered > 0)
                    .then(|| chrono::DateTime::from_timestamp_micros(last_delivered))
                    .flatten()
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                head_attempts: figures.head_attempts,
                last_error: last_error.filter(|_| caller.role >= Role::Operator),
                queued,
                filtered,
                queue_depth: figures.depth,
                oldest_queued_age_secs: figures.oldest_age_secs,
                delivered: worker.map_or(0, |w| w.stats().delivered.load(Relaxed)),
                failed: worker.map_or(0, |w| {
                    w.stats().retries.load(Relaxed) + w.stats().dead_lettered.load(Relaxed)
                }),
                dlq_size: figures.dead_letters,
            }
        })
        .collect();
    audit_errors_shown(&state, &caller, &connectors).await?;
    let outbox_stats = state.gateway.outbox.stats();
    let counters_since = chrono::Utc::now()
        - chrono::Duration::from_std(uptime).unwrap_or_else(|_| chrono::Duration::zero());
    Ok(Json(Stats {
        uptime_secs: uptime.as_secs(),
        counters_since: counters_since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        listeners,
        connectors,
        orphaned_connectors,
        store: StoreStatsView {
            messages,
            file_bytes: state.gateway.outbox.file_size().unwrap_or(0),
            commits: outbox_stats.commits.load(Relaxed),
            failed_commits: outbox_stats.failed_batches.load(Relaxed),
        },
        admin_tokens: AdminTokensStatsView {
            tokens: state.tokens.len() as u64,
            reloads: state.tokens.reloads.load(Relaxed),
            reload_failures: state.tokens.reload_failures.load(Relaxed),
        },
        configuration: {
            let counts = &state.gateway.reloads;
            let last = counts
                .last_refusal
                .lock()
                .ok()
                .and_then(|last| last.clone());
            ConfigurationStatsView {
                reloads: counts.applied.load(Relaxed),
                reload_failures: counts.refused.load(Relaxed),
                last_failure_problems: last.as_ref().map(|(_, problems)| *problems as u64),
                last_failure_at: last.map(|(at, _)| at),
            }
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(depth: u64, oldest: Option<f64>, head_attempts: u32) -> QueueFigures {
        QueueFigures {
            depth,
            oldest_age_secs: oldest,
            head_attempts,
            ..QueueFigures::default()
        }
    }

    fn state(
        paused: bool,
        backing_off: bool,
        figures: &QueueFigures,
        since_delivery_secs: f64,
        dead_letter_age_secs: Option<f64>,
    ) -> &'static str {
        connector_state(&Signals {
            paused,
            backing_off,
            figures,
            since_delivery_secs,
            dead_letter_age_secs,
        })
    }

    #[test]
    fn a_connector_state_is_the_worst_that_holds() {
        let busy = figures(5, Some(60.0), 0);
        assert_eq!(state(true, true, &busy, 60.0, Some(1.0)), "paused");
        assert_eq!(state(false, true, &busy, 60.0, None), "retrying");
        assert_eq!(
            state(false, false, &figures(5, Some(60.0), 2), 60.0, None),
            "retrying"
        );
        assert_eq!(state(false, false, &busy, 60.0, Some(1.0)), "stalled");
        // Delivering lately, or only young messages waiting: not stalled.
        assert_eq!(state(false, false, &busy, 1.0, None), "delivering");
        assert_eq!(
            state(false, false, &figures(5, Some(2.0), 0), 60.0, None),
            "delivering"
        );
        // A recent dead letter with nothing delivered since: failing, for 15 minutes.
        let empty = figures(0, None, 0);
        assert_eq!(state(false, false, &empty, 60.0, Some(30.0)), "failing");
        assert_eq!(state(false, false, &empty, 60.0, Some(3600.0)), "idle");
        assert_eq!(state(false, false, &empty, 60.0, None), "idle");
    }
}
