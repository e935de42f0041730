//! Background upkeep next to delivery: retention (delivered and filtered messages, then old
//! audit records) and the periodic store verification. Each runs in bounded steps so the
//! writer is never held long, and stops at the next step once its token is cancelled.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::outbox::Outbox;

/// How often retention looks for old messages, at most (a short `RETENTION` looks more often:
/// a quarter of it, at least every second).
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Messages looked at per retention transaction (bounds how long it holds the writer).
const RETENTION_BATCH: usize = 1000;

/// Messages whose patient index entries one merge enters (bounds how long it holds the
/// writer: about 4,000 messages' tags, sorted, in one transaction).
const INDEX_MERGE_BATCH: usize = 4096;
/// How long the patient index merge waits when it caught up.
const INDEX_MERGE_INTERVAL: Duration = Duration::from_secs(1);

/// Audit records removed per pruning transaction.
const AUDIT_PRUNE_BATCH: usize = 10_000;

fn cutoff(age: Duration) -> i64 {
    crate::outbox::now_micros().saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX))
}

/// Enter the patient index's tag-ordered entries of the messages stored since the last merge
/// (ADR 0019), in bounded steps, every second and at once while more wait. Searches find
/// every stored message whether or not it was merged; merging keeps them fast.
pub async fn patient_index_task(outbox: Outbox, shutdown: CancellationToken) {
    loop {
        // An idle gateway commits nothing: the writer is asked only when messages wait.
        let behind = outbox
            .read(|snapshot| snapshot.patient_index_behind())
            .await
            .unwrap_or(true);
        let merged = if behind {
            outbox.merge_patient_index(INDEX_MERGE_BATCH).await
        } else {
            Ok((0, false))
        };
        let pause = match merged {
            // Let intake commits through between steps.
            Ok((_, true)) => Duration::from_millis(5),
            Ok((_, false)) => INDEX_MERGE_INTERVAL,
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "the patient index merge failed; trying again later");
                INDEX_MERGE_INTERVAL * 5
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Every `interval`, read every stored record through a snapshot and check it (see
/// [`crate::outbox::verify`]); damage is logged by table and key and its count kept for the
/// `mfoundry.store.verify.damaged` gauge.
pub async fn verify_task(outbox: Outbox, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
        let started = std::time::Instant::now();
        match outbox.read(|snapshot| snapshot.verify()).await {
            Ok(report) => {
                let stats = outbox.stats();
                stats
                    .verified_damaged
                    .store(report.damaged_count, std::sync::atomic::Ordering::Relaxed);
                let records: u64 = report.records.values().sum();
                if report.damaged_count == 0 && report.audit.is_intact() {
                    info!(
                        records,
                        unchecked = report.unchecked,
                        took_ms = started.elapsed().as_millis() as u64,
                        "store verified: every record intact"
                    );
                } else {
                    for what in &report.damaged {
                        error!(record = %what, "store verification: a stored record is damaged");
                    }
                    error!(
                        records,
                        damaged = report.damaged_count,
                        audit_problems = report.audit.problem_count,
                        "store verification found damage; run `mfoundry store verify` on a copy of DATA_DIR"
                    );
                }
            }
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "store verification could not read the store; trying again at the next interval");
            }
        }
    }
}

/// Remove delivered and filtered messages older than `retention`, in bounded steps; after
/// each full pass, audit records older than `audit_retention`.
pub async fn retention_task(
    outbox: Outbox,
    retention: Duration,
    audit_retention: Option<Duration>,
    shutdown: CancellationToken,
) {
    let interval = (retention / 4).clamp(Duration::from_secs(1), RETENTION_INTERVAL);
    let mut after = None;
    let mut removed_in_pass = 0u64;
    let mut damaged_in_pass = 0u64;
    loop {
        let pause = match outbox
            .retain(cutoff(retention), after, RETENTION_BATCH)
            .await
        {
            Ok(step) => {
                removed_in_pass += step.removed;
                damaged_in_pass += step.damaged;
                match step.resume_after {
                    Some(next) => {
                        after = Some(next);
                        // Let intake commits through between steps.
                        Duration::from_millis(10)
                    }
                    None => {
                        if removed_in_pass > 0 {
                            info!(removed = removed_in_pass, "retention removed old messages");
                        }
                        if damaged_in_pass > 0 {
                            warn!(
                                damaged = damaged_in_pass,
                                "retention stepped over damaged message records and kept them; run `mfoundry store verify` on a copy of DATA_DIR"
                            );
                        }
                        after = None;
                        removed_in_pass = 0;
                        damaged_in_pass = 0;
                        if let Some(age) = audit_retention {
                            prune_audit(&outbox, age).await;
                        }
                        interval
                    }
                }
            }
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "retention step failed; trying again later");
                interval
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Remove audit records older than `age`, in bounded transactions.
async fn prune_audit(outbox: &Outbox, age: Duration) {
    let mut removed = 0;
    loop {
        match outbox.prune_audit(cutoff(age), AUDIT_PRUNE_BATCH).await {
            Ok(0) => break,
            Ok(count) => {
                removed += count;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => {
                warn!(error = %crate::outbox::Chain(&error), "audit pruning failed; trying again later");
                break;
            }
        }
    }
    if removed > 0 {
        info!(removed, "audit records older than AUDIT_RETENTION removed");
    }
}
